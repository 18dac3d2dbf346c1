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
for pkg_cmd in conntrack:conntrack nftables:nft iptables:iptables iproute2:ip prometheus:promtool coreutils:stdbuf util-linux:nsenter openssl:openssl nfdump:nfdump softflowd:softflowd tcpreplay:tcpreplay chromium:chromium chromium-driver:chromedriver python3:python3 python3-pip:pip podman:podman faketime:faketime; do
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

# The deployment tests (crates/podflow/tests/deploy.rs): Helm v4's library to lint and
# render the chart, Kubernetes' schemas to validate it, Grafana's dashboard model.
if ! python3 -c 'import helm_python, kubernetes_validate, jsonschema, yaml, grafana_foundation_sdk' >/dev/null 2>&1; then
  echo "installing helm-python-sdk, kubernetes-validate, grafana-foundation-sdk for the deployment tests"
  pip install -q helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 jsonschema PyYAML 'grafana-foundation-sdk==1769699998!10.1.0'
fi

# The failpoints feature lets the fault tests kill `podflow server` at exact steps of a
# write (crates/podflow/tests/pipeline.rs); inert unless PODFLOW_FAILPOINTS is set.
cargo test --workspace --locked --no-fail-fast --features podflow/failpoints "$@"
