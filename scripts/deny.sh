#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (advisories, licences, bans, sources; policy in
# deny.toml), offline: the RustSec advisory database comes from the snapshot in
# deny/advisory-db.tar.gz. Fails on any violation.
#   scripts/deny.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deny >/dev/null 2>&1 || cargo install cargo-deny --locked
# cargo-deny keeps each database in a git checkout named after its URL (this name is
# the default RustSec URL's) and reads the snapshot's date from its HEAD commit.
db=target/advisory-dbs/advisory-db-3157b0e258782691
rm -rf "$db"
mkdir -p "$db"
tar -xzf deny/advisory-db.tar.gz -C "$db"
date=$(cat deny/advisory-db.date)
(
  cd "$db"
  git init -q
  git add -A
  GIT_AUTHOR_DATE=$date GIT_COMMITTER_DATE=$date git -c user.name=podflow -c user.email=ci@podflow.invalid \
    commit -q -m "RustSec advisory-db snapshot of $date"
)
# `--offline` reads crates from cargo's cache: fetch every platform's first (a new
# machine's build has only downloaded this one's).
cargo fetch --locked
cargo deny --offline check --show-stats advisories bans licenses sources
