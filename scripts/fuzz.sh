#!/usr/bin/env bash
# Runs every fuzz target for a bounded time on the stable toolchain (no sanitizer: see
# ../shared/NOTES.md), starting from the committed seeds. Fails on any crash.
#   scripts/fuzz.sh [seconds per target, default 20]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# One target directory for every fuzz crate: the dependencies they share build once.
export CARGO_TARGET_DIR="$PWD/target/fuzz"
run() { # crate-dir target seed-dir
  local dir=$1 target=$2 seeds=$3 corpus
  corpus=$(mktemp -d)
  trap 'rm -rf "$corpus"' RETURN
  # A committed corpus (the minimized corpus of the target's long run, docs/reliability.md)
  # is replayed first: libFuzzer runs every input of it before mutating.
  if [ -f "$dir/corpora/$target.tar.gz" ]; then
    tar -xzf "$dir/corpora/$target.tar.gz" -C "$corpus"
  fi
  echo "-- fuzz $dir $target (${secs}s)"
  (cd "$dir" && cargo fuzz run --sanitizer none "$target" "$corpus" "$seeds" -- -max_total_time="$secs" -print_final_stats=1 2>&1 | tail -3)
}
run crates/conntrack/fuzz ctnetlink seeds/ctnetlink
run crates/probe/fuzz wire seeds/wire
run crates/probe/fuzz dns seeds/dns
run crates/inventory/fuzz list_yaml seeds/list_yaml
run crates/inventory/fuzz list_json seeds/list_json
run crates/enrich/fuzz config seeds/config
run crates/enrich/fuzz prices seeds/prices
run crates/enrich/fuzz cloud_ranges seeds/cloud_ranges
run crates/proto/fuzz batch seeds/batch
run crates/api/fuzz params seeds/params
for t in v5 v9 ipfix; do
  seeds=../tests/data/corpus/$t
  [ -d "crates/netflow/fuzz/$seeds" ] || seeds=$(mktemp -d)
  run crates/netflow/fuzz "$t" "$seeds"
done
