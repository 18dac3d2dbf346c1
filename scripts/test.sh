#!/usr/bin/env bash
# Installs what podflow's tests need on a fresh Debian machine, then runs them.
# Run as root: the integration tests create network namespaces and read conntrack.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: run as root (the tests create network namespaces); e.g. sudo $0" >&2
  exit 1
fi

need=()
for pkg_cmd in conntrack:conntrack nftables:nft iptables:iptables iproute2:ip prometheus:promtool coreutils:stdbuf util-linux:nsenter openssl:openssl nfdump:nfdump softflowd:softflowd tcpreplay:tcpreplay chromium:chromium chromium-driver:chromedriver python3:python3 python3-pip:pip; do
  pkg=${pkg_cmd%%:*}; cmd=${pkg_cmd#*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# A real ClickHouse engine (chdb, in process) for the ClickHouse store's tests.
if ! python3 -c 'import chdb, lz4, clickhouse_cityhash' >/dev/null 2>&1; then
  echo "installing chdb (ClickHouse in process) for the ClickHouse tests"
  pip install -q --no-deps chdb-core==26.9.0 lz4 clickhouse-cityhash
fi

cargo test --workspace --locked --no-fail-fast "$@"
