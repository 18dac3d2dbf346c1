#!/usr/bin/env bash
# Sizing past one machine (docs/sizing.md): simulated clusters of N nodes, each node's
# agent a gRPC stream of its own with realistic batches (crates/podflow/benches/data/
# sizing-node.conf), against one real `podflow server` per step, with the embedded
# store and with ClickHouse (chdb behind the store tests' front), up to saturation.
#   scripts/bench-sizing.sh                 100, 300, 1000, 2000, 5000 nodes (~20 min)
#   scripts/bench-sizing.sh --quick         50 and 200 nodes, 20 s windows (~4 min)
#   scripts/bench-sizing.sh --store sqlite  without ClickHouse (no chdb needed)
# Other flags go to the benchmark (--nodes, --seconds, --store, --profile FILE).
# Last line: server_obs_per_core=<observations stored per second of server CPU time,
# embedded store, at the largest step the server kept up with>.
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
while [ $# -gt 0 ]; do
	case $1 in
	--quick) args+=(--nodes 50,200 --seconds 20) ;;
	*) args+=("$1") ;;
	esac
	shift
done
# Two sockets per simulated agent in the benchmark and one in the server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec cargo bench -q --locked -p podflow --bench sizing -- "${args[@]}"
