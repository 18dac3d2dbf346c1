#!/usr/bin/env bash
# Dump benchmark: podflow's dump + decode + delta against `conntrack -L > /dev/null` on the
# same table (filled with batched netlink inserts in a namespace this creates), in one run.
# Last line: conntrack_dump_ratio_<size>=<podflow seconds / conntrack-tools seconds>.
#   scripts/bench-conntrack.sh                 # 100k and 1M entries
#   scripts/bench-conntrack.sh --sizes 20000   # smoke size (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --locked -p podflow-conntrack --bench dump -- "$@"
