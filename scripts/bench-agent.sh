#!/usr/bin/env bash
# Agent CPU per dump against the kernel's floor, in one run: a namespace this creates is
# filled with N idle ESTABLISHED entries (batched netlink inserts), then, alternating,
# three rounds of
#   - the real agent (`podflow-agent --interval 5s`) observing it (its server is an address in
#     127.0.0.0/8 nothing listens on: it buffers, and since nothing changes nothing is
#     sent), CPU per dump from /proc over >= 60 s after its first dump (the baseline), RSS
#     and peak (VmHWM);
#   - a bare reader (ctload floor: the same dump received and discarded, 5 s apart).
# Ratio = median over rounds of agent CPU per dump / floor CPU per dump.
#   sudo scripts/bench-agent.sh                          # 100k, 1M and 2M entries
#   sudo scripts/bench-agent.sh --sizes 100000 --seconds 60 --rounds 3
#   sudo scripts/bench-agent.sh --agent-args "--some-flag"   # extra agent flags
#   sudo PODFLOW_AGENT_BIN=target/x86_64-unknown-linux-gnu/dist/podflow-agent scripts/bench-agent.sh
#        # the agent image's binary (scripts/build-image.sh builds it)
# Last line: agent_cpu_over_floor_100k=<ratio> (the first size's label when 100k is not run).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/conntrack-bench.sh
. scripts/lib/conntrack-bench.sh

sizes="100000,1000000,2000000"
seconds=60
rounds=3
interval=5
agent_args=""
while (($#)); do
    case $1 in
    --sizes) sizes=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --interval) interval=$2; shift 2 ;;
    --agent-args) agent_args=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
ct_need_root
ct_build
hz=$(ct_hz)
port=$((20000 + $$ % 20000))

label() {
    local n=$1
    if ((n % 1000000 == 0)); then echo "$((n / 1000000))m"
    elif ((n % 1000 == 0)); then echo "$((n / 1000))k"
    else echo "$n"; fi
}

dumps_of() { # the agent's podflow_conntrack_dumps_total, or -1 when not up yet
    { curl -s --max-time 2 "http://127.0.0.1:$port/metrics" 2>/dev/null || true; } |
        awk '/^podflow_conntrack_dumps_total/ { print $2; f = 1 } END { if (!f) print -1 }'
}

wait_dump_after() { # waits until the agent has done more than $1 dumps; prints the count
    local d deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        d=$(dumps_of)
        d=${d%.*}
        if ((d > $1)); then echo "$d"; return 0; fi
        sleep 0.25
    done
    echo "timed out waiting for a dump" >&2
    return 1
}

# The agent's memory with an empty table (its base), once per binary: the agent-only
# `podflow-agent` and the multi-role `podflow agent` (the same code; the difference is the
# text each touches, file pages that count in RSS).
base_of() { # sets rss and hwm (kB) of the agent run as "$@", after its first dump
    local ns tmp apid
    ns=$(ct_netns agentbase)
    tmp=$(ct_tmpdir)
    # shellcheck disable=SC2086
    "$@" --server http://127.0.0.9:9 --node-name bench --listen "127.0.0.1:$port" \
        --data-dir "$tmp" --interval "${interval}s" --netns "/run/netns/$ns" $agent_args \
        >"$tmp/agent-base.log" 2>&1 &
    apid=$!
    ct_track "$apid"
    wait_dump_after 1 60 >/dev/null
    rss=$(ct_mem_kb "$apid" VmRSS)
    hwm=$(ct_mem_kb "$apid" VmHWM)
    kill "$apid"; wait "$apid" 2>/dev/null || true
    ct_netns_del "$ns"
}
base_of "$PODFLOW_AGENT"
base_rss=$rss base_hwm=$hwm
base_of "$PODFLOW" agent
multi_rss=$rss multi_hwm=$hwm
echo "agent_base_rss_kb=$base_rss agent_base_hwm_kb=$base_hwm (podflow-agent)"
echo "agent_base_rss_multi_kb=$multi_rss agent_base_hwm_multi_kb=$multi_hwm (podflow agent)"

tmp=$(ct_tmpdir)
first_label=""
first_ratio=""
IFS=, read -ra list <<<"$sizes"
for n in "${list[@]}"; do
    lbl=$(label "$n")
    ct_raise_max $((n + 200000))
    ns=$(ct_netns agentbench)
    fill=$("$CTLOAD" fill --netns "/run/netns/$ns" --n "$n")
    echo "size=$lbl $fill"
    ratios=() per_dump=() floors=() rss=() hwm=()
    for r in $(seq 1 "$rounds"); do
        rm -rf "${tmp:?}"/*
        # shellcheck disable=SC2086
        "$PODFLOW_AGENT" --server http://127.0.0.9:9 --node-name bench --listen "127.0.0.1:$port" \
            --data-dir "$tmp" --interval "${interval}s" --netns "/run/netns/$ns" $agent_args \
            >"$tmp/agent.log" 2>&1 &
        apid=$!
        ct_track "$apid"
        # Start right after the first dump (the baseline, which inserts every connection).
        d0=$(wait_dump_after 0 $((120 + n / 20000)))
        c0=$(ct_cpu_ticks "$apid")
        sleep "$seconds"
        dc=$(dumps_of)
        d1=$(wait_dump_after "${dc%.*}" $((interval * 4 + n / 20000)))
        c1=$(ct_cpu_ticks "$apid")
        rss+=("$(ct_mem_kb "$apid" VmRSS)")
        hwm+=("$(ct_mem_kb "$apid" VmHWM)")
        kill "$apid"; wait "$apid" 2>/dev/null || true
        cpd=$(awk -v a="$c0" -v b="$c1" -v d=$((d1 - d0)) -v hz="$hz" 'BEGIN { printf "%.4f", (b - a) / hz / d }')
        k=$(( seconds / interval ))
        fl=$("$CTLOAD" floor --netns "/run/netns/$ns" --dumps "$((k < 3 ? 3 : k))" --interval-ms $((interval * 1000)))
        fcpd=$(ct_kv floor_cpu_per_dump_s "$fl")
        ratio=$(awk -v a="$cpd" -v b="$fcpd" 'BEGIN { printf "%.3f", a / b }')
        echo "size=$lbl round=$r agent_dumps=$((d1 - d0)) agent_cpu_per_dump_s=$cpd floor_cpu_per_dump_s=$fcpd ratio=$ratio rss_kb=${rss[-1]} hwm_kb=${hwm[-1]} $fl"
        ratios+=("$ratio") per_dump+=("$cpd") floors+=("$fcpd")
    done
    med=$(ct_median "${ratios[@]}")
    mrss=$(ct_median "${rss[@]}")
    mhwm=$(ct_median "${hwm[@]}")
    per_conn=$(awk -v r="$mrss" -v b="$base_rss" -v n="$n" 'BEGIN { printf "%.1f", (r - b) * 1024 / n }')
    echo "size=$lbl agent_cpu_per_dump_s=$(ct_median "${per_dump[@]}") floor_cpu_per_dump_s=$(ct_median "${floors[@]}") agent_cpu_over_floor=$med rss_kb=$mrss hwm_kb=$mhwm bytes_per_conn_over_base=$per_conn"
    if [[ -z $first_label || $lbl == 100k ]]; then first_label=$lbl first_ratio=$med; fi
    ct_netns_del "$ns"
done
echo "agent_cpu_over_floor_${first_label}=$first_ratio"
