# Shared pieces of the conntrack benchmarks (sourced by scripts/bench-agent.sh and
# scripts/bench-events.sh): root check, a namespace and sysctl changes that are undone on
# any exit, the ctload helper, CPU and memory of a process from /proc, medians.
# shellcheck shell=bash

CT_MAX=/proc/sys/net/netfilter/nf_conntrack_max
_ct_old_max=""
_ct_ns=()
_ct_pids=()
_ct_dirs=()

ct_cleanup() {
    # Never stop half way (set -e would: `wait` returns a killed process's status), so
    # no namespace is left behind.
    set +e
    local p ns d
    for p in "${_ct_pids[@]}"; do
        # Only a process that is still this script's child: a number of one that ended
        # may belong to someone else's process by now.
        [[ $(ps -o ppid= -p "$p" 2>/dev/null | tr -d ' ') == "$$" ]] || continue
        kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
    done
    # Callers take names by command substitution (a subshell, whose additions to _ct_ns
    # are lost): every name carries this script's pid ($$, the same in subshells).
    for ns in "${_ct_ns[@]}" $(ip netns list 2>/dev/null | awk -v s="-$$" '$1 ~ /^pf-/ && substr($1, length($1) - length(s) + 1) == s { print $1 }'); do
        ip netns del "$ns" 2>/dev/null
    done
    if [[ -n $_ct_old_max ]]; then echo "$_ct_old_max" >"$CT_MAX"; fi
    for d in "${_ct_dirs[@]}" /tmp/pf-bench."$$".*; do [[ -e $d ]] && rm -rf "$d"; done
}
trap ct_cleanup EXIT
trap 'exit 130' INT TERM

ct_need_root() {
    if [[ $(id -u) != 0 ]]; then
        echo "$0: needs root (network namespaces, conntrack)" >&2
        exit 1
    fi
    modprobe nf_conntrack 2>/dev/null || true
}

# ct_tmpdir: a temporary directory removed at exit (printed).
ct_tmpdir() {
    local d
    d=$(mktemp -d "/tmp/pf-bench.$$.XXXXXX")
    _ct_dirs+=("$d")
    echo "$d"
}

# ct_track PID: kill PID at exit if it still runs.
ct_track() { _ct_pids+=("$1"); }

# ct_netns NAME: creates namespace pf-NAME-$$ with loopback up, conntrack accounting and
# timestamps on; prints its name.
ct_netns() {
    local ns="pf-$1-$$"
    ip netns add "$ns"
    _ct_ns+=("$ns")
    ip netns exec "$ns" ip link set lo up
    ip netns exec "$ns" sysctl -qw net.netfilter.nf_conntrack_acct=1 \
        net.netfilter.nf_conntrack_timestamp=1 >/dev/null
    echo "$ns"
}

ct_netns_del() {
    ip netns del "$1" 2>/dev/null || true
}

# ct_raise_max N: raises the global nf_conntrack_max to at least N (restored at exit).
ct_raise_max() {
    local cur
    cur=$(cat "$CT_MAX")
    [[ -z $_ct_old_max ]] && _ct_old_max=$cur
    if ((cur < $1)); then echo "$1" >"$CT_MAX"; fi
}

# ct_build: builds the release podflow binary and the ctload example; sets PODFLOW,
# PODFLOW_AGENT (PODFLOW_AGENT_BIN when set: e.g. the image's static dist build), CTLOAD.
ct_build() {
    local root
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    (cd "$root" && cargo build --release --locked -q -p podflow &&
        cargo build --release --locked -q -p podflow-conntrack --example ctload) >&2
    local target=${CARGO_TARGET_DIR:-$root/target}
    PODFLOW=$target/release/podflow
    PODFLOW_AGENT=${PODFLOW_AGENT_BIN:-$target/release/podflow-agent}
    CTLOAD=$target/release/examples/ctload
}

# ct_cpu_ticks PID: user + system CPU of the process (all threads, also exited ones), in
# clock ticks.
ct_cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

ct_hz() { getconf CLK_TCK; }

# ct_mem_kb PID FIELD: VmRSS or VmHWM of the process, kB.
ct_mem_kb() {
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

# ct_median V1 V2 ...: the median (the middle value; the mean of the two middle ones).
ct_median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# ct_kv KEY TEXT: the value of KEY=value in TEXT.
ct_kv() {
    tr ' ' '\n' <<<"$2" | awk -F= -v k="$1" '$1 == k { print $2; exit }'
}
