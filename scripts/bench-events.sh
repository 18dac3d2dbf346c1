#!/usr/bin/env bash
# Event storms: podflow's conntrack event reading against `conntrack -E > /dev/null`, in
# one run. In a namespace this creates, `ctload storm` creates and deletes entries with
# batched netlink CT_NEW / CT_DELETE messages (1000 a send), so the kernel sends one NEW and
# one DESTROY event per entry, without traffic. At each rate (entries/s; `max` = as fast as
# the generator goes) the two listeners run alternately, three rounds each, with the same
# socket buffer:
#   - podflow: `ctload events` (the crate's `Source` with events only, as the agent runs it,
#     minus the agent's pipeline), CPU of the process over the storm;
#   - `conntrack -E -b BUF > /dev/null`, CPU from /proc, ENOBUFS warnings from its stderr;
#   - the floor: `ctload events-floor`, a bare reader (recvmmsg and discard) of the same
#     groups, what the kernel's delivery costs any listener.
# Events lost: podflow counts exactly (generated − received, and overflows); conntrack -E
# only says it hit ENOBUFS (each warning is at least one lost event).
# Then the same with reliable delivery on (NETLINK_BROADCAST_ERROR + NETLINK_NO_ENOBUFS).
#   sudo scripts/bench-events.sh                                   # rates 25000,100000,max
#   sudo scripts/bench-events.sh --rates 50000,max --seconds 5 --buffer 16777216
# Last line: event_cpu_over_conntrack_e=<podflow CPU per event / conntrack -E's>, medians at
# the highest rate.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/conntrack-bench.sh
. scripts/lib/conntrack-bench.sh

rates="25000,100000,max"
seconds=5
rounds=3
buffer=$((16 << 20))
extra=""
while (($#)); do
    case $1 in
    --rates) rates=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --buffer) buffer=$2; shift 2 ;;
    --podflow-args) extra=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
ct_need_root
command -v conntrack >/dev/null || { echo "$0: needs conntrack (conntrack-tools)" >&2; exit 1; }
ct_build
hz=$(ct_hz)
tmp=$(ct_tmpdir)
ns=$(ct_netns events)
nsp=/run/netns/$ns

storm() { # storm RATE: runs the generator, prints its key=value line
    if [[ $1 == max ]]; then
        "$CTLOAD" storm --netns "$nsp" --seconds "$seconds"
    else
        "$CTLOAD" storm --netns "$nsp" --seconds "$seconds" --rate "$1"
    fi
}

run_reader() { # run_reader SUBCOMMAND RATE [ARGS]: prints "cpu_per_event lost overflows storm-line"
    local cmd=$1 rate=$2
    shift 2
    # shellcheck disable=SC2086
    "$CTLOAD" "$cmd" --netns "$nsp" --seconds $((seconds + 3)) --buffer "$buffer" $extra "$@" \
        >"$tmp/pf.out" 2>&1 &
    local pid=$!
    ct_track "$pid"
    local t=0
    until grep -q ready=1 "$tmp/pf.out" 2>/dev/null; do
        sleep 0.05; t=$((t + 1)); ((t < 200)) || { cat "$tmp/pf.out" >&2; return 1; }
    done
    local s
    s=$(storm "$rate")
    wait "$pid"
    local out
    out=$(tail -1 "$tmp/pf.out")
    local gen got cpu
    gen=$(ct_kv storm_events "$s")
    got=$(ct_kv events "$out")
    cpu=$(ct_kv cpu_s "$out")
    echo "$(awk -v c="$cpu" -v n="$got" 'BEGIN { printf "%.3e", c / (n > 0 ? n : 1) }') $((gen - got)) $(ct_kv overflows "$out") $s"
}

run_conntrack() { # run_conntrack RATE: prints "cpu_per_event enobufs_warnings storm-line"
    ip netns exec "$ns" conntrack -E -b "$buffer" >/dev/null 2>"$tmp/ct.err" &
    local pid=$!
    ct_track "$pid"
    sleep 0.5
    local c0 s c1
    c0=$(ct_cpu_ticks "$pid")
    s=$(storm "$1")
    sleep 2 # let it drain what is queued
    c1=$(ct_cpu_ticks "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    local gen warn
    gen=$(ct_kv storm_events "$s")
    warn=$(grep -c "ENOBUFS" "$tmp/ct.err" || true)
    echo "$(awk -v a="$c0" -v b="$c1" -v hz="$hz" -v n="$gen" 'BEGIN { printf "%.3e", (b - a) / hz / n }') $warn $s"
}

IFS=, read -ra list <<<"$rates"
last_ratio=""
for rate in "${list[@]}"; do
    pf=() ct=() fl=() pf_lost=() ct_warn=()
    for r in $(seq 1 "$rounds"); do
        read -r cpe lost ovf sline <<<"$(run_reader events "$rate")"
        echo "rate=$rate round=$r tool=podflow cpu_per_event_s=$cpe lost=$lost overflows=$ovf $sline"
        pf+=("$cpe") pf_lost+=("$lost")
        read -r cpe lost ovf sline <<<"$(run_reader events-floor "$rate")"
        echo "rate=$rate round=$r tool=floor cpu_per_event_s=$cpe lost=$lost overflows=$ovf $sline"
        fl+=("$cpe")
        read -r cpe warn sline <<<"$(run_conntrack "$rate")"
        echo "rate=$rate round=$r tool=conntrack-E cpu_per_event_s=$cpe enobufs_warnings=$warn $sline"
        ct+=("$cpe") ct_warn+=("$warn")
    done
    mp=$(ct_median "${pf[@]}")
    mc=$(ct_median "${ct[@]}")
    mf=$(ct_median "${fl[@]}")
    last_ratio=$(awk -v a="$mp" -v b="$mc" 'BEGIN { printf "%.3f", a / b }')
    floor_ratio=$(awk -v a="$mf" -v b="$mc" 'BEGIN { printf "%.3f", a / b }')
    echo "rate=$rate podflow_cpu_per_event_s=$mp conntrack_e_cpu_per_event_s=$mc floor_cpu_per_event_s=$mf ratio=$last_ratio floor_over_conntrack_e=$floor_ratio podflow_lost=$(IFS=/; echo "${pf_lost[*]}") conntrack_e_enobufs=$(IFS=/; echo "${ct_warn[*]}")"
done
# Reliable delivery at the highest rate: DESTROYs must all arrive.
rate=${list[-1]}
for r in $(seq 1 "$rounds"); do
    read -r cpe lost ovf sline <<<"$(run_reader events "$rate" --reliable)"
    echo "rate=$rate round=$r tool=podflow-reliable cpu_per_event_s=$cpe lost=$lost overflows=$ovf $sline"
done
# Without NEW events (DESTROY only): half the events.
for r in $(seq 1 "$rounds"); do
    read -r cpe lost ovf sline <<<"$(run_reader events "$rate" --no-new)"
    echo "rate=$rate round=$r tool=podflow-no-new cpu_per_event_s=$cpe destroys_short_of_entries=$((lost - $(ct_kv storm_entries "$sline"))) overflows=$ovf $sline"
done
echo "event_cpu_over_conntrack_e=$last_ratio"
