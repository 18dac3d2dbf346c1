#!/usr/bin/env bash
# Probe cost: N responders in network namespaces (one process each), one prober probing
# all of them every 5 s (UDP burst, TCP connect, HTTP GET, ICMP; full-MTU UDP once a
# minute), all on one bridge. Measures, over the window, the CPU of the prober and of
# the responders (/proc/PID/task/*/schedstat, and utime+stime from /proc/PID/stat),
# their RSS, and the bytes on the prober's link.
#   scripts/bench-probe.sh [--sizes "10 50 100"] [--seconds 30] [--napi threaded|sender]
#       [--prober-args "..."]   (extra probe_node prober flags, e.g. "--udp-spacing-ms 0")
#
# --napi threaded (the default when ethtool is there): every veth end gets GRO and a
# threaded NAPI, so a packet's receive path runs in a kernel thread, as a real NIC's
# softirq does, instead of in the sending process; those threads' CPU is printed
# apart ("wire"). --napi sender: plain veth, the sender pays the other side's receive
# path too (an upper bound).
# Last line: probe_cpu_millicores_100_peers=<prober + all responders at 100 peers>.
# Run as root. Traffic stays inside the namespaces it creates (10.96.0.0/16).
set -euo pipefail
cd "$(dirname "$0")/.."

sizes="10 50 100"
secs=30
napi=threaded
prober_args=
command -v ethtool >/dev/null 2>&1 || napi=sender
while [ $# -gt 0 ]; do
  case $1 in
    --sizes) sizes=$2; shift 2 ;;
    --seconds) secs=$2; shift 2 ;;
    --napi) napi=$2; shift 2 ;;
    --prober-args) prober_args=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench-probe.sh: run as root (it creates network namespaces)" >&2; exit 1; }

# PROBE_NODE=/path/to/probe_node benchmarks that binary instead of building this tree's
# (to compare two builds back to back on the same machine).
if [ -n "${PROBE_NODE:-}" ]; then
  bin=$PROBE_NODE
else
  cargo build -q --release -p podflow-probe --example probe_node
  bin=$PWD/target/release/examples/probe_node
fi
tck=$(getconf CLK_TCK)
tag=pf-bp$$
pids=()
nss=()
work=$(mktemp -d)

cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for n in "${nss[@]:-}"; do [ -n "$n" ] && ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

ticks() { # pid... -> summed utime+stime in ticks
  local t=0 p s
  for p in "$@"; do
    s=$(cut -d' ' -f14,15 "/proc/$p/stat" 2>/dev/null || echo "0 0")
    t=$((t + ${s% *} + ${s#* }))
  done
  echo $t
}
uticks() { cut -d' ' -f14 "/proc/$1/stat" 2>/dev/null || echo 0; } # user time only
cpu_ns() { # pid... -> summed on-CPU time of all their threads, ns (schedstat: exact)
  local t=0 p f
  for p in "$@"; do
    for f in /proc/"$p"/task/*/schedstat; do
      [ -r "$f" ] && t=$((t + $(cut -d' ' -f1 "$f" 2>/dev/null || echo 0)))
    done
  done
  echo $t
}
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
addr() { echo "10.96.$(( $1 / 250 + 1 )).$(( $1 % 250 + 1 ))"; }

result_100=
for n in $sizes; do
  pids=(); nss=()
  hub=$tag-hub-$n
  ip netns add "$hub"; nss+=("$hub")
  ip -n "$hub" link add br0 type bridge
  ip -n "$hub" link set br0 up
  # The bridge is the benchmark's wire: no netfilter on it (br_netfilter, when some
  # other test loaded it, would bill every probe packet a firewall pass).
  ip netns exec "$hub" sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 2>/dev/null || true
  mk() { # ns index address
    local ns=$1 i=$2 a=$3
    ip netns add "$ns"; nss+=("$ns")
    ip link add "pfb$i" netns "$hub" type veth peer name eth0 netns "$ns"
    ip -n "$hub" link set "pfb$i" master br0 up
    ip -n "$ns" addr add "$a/16" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    if [ "$napi" = threaded ]; then
      ip netns exec "$ns" sh -c 'ethtool -K eth0 gro on tso off >/dev/null && echo 1 > /sys/class/net/eth0/threaded'
      ip netns exec "$hub" sh -c "ethtool -K pfb$i gro on tso off >/dev/null && echo 1 > /sys/class/net/pfb$i/threaded"
    fi
  }
  napi_before=$(pgrep '^napi/' | sort || true)
  mk "$tag-p-$n" 0 10.96.0.1
  : > "$work/peers"
  for i in $(seq 1 "$n"); do
    a=$(addr "$i")
    mk "$tag-r$i-$n" "$i" "$a"
    echo "node-$i zone-$(( i % 3 )) $a" >> "$work/peers"
  done
  wire=$(comm -13 <(echo "$napi_before") <(pgrep '^napi/' | sort || true) | tr '\n' ' ')
  rpids=()
  for i in $(seq 1 "$n"); do
    ip netns exec "$tag-r$i-$n" "$bin" responder --bind "$(addr "$i")" --seconds $((secs + 30)) > /dev/null &
    rpids+=($!); pids+=($!)
  done
  sleep 1
  ip netns exec "$tag-p-$n" "$bin" prober --bind 10.96.0.1 --peers "$work/peers" --full-mesh-max 100000 --seconds $((secs + 20)) $prober_args > "$work/prober.out" &
  ppid=$!; pids+=($ppid)
  # Warm-up: the first round (with its full-MTU probe) falls in the first 5 s.
  sleep 6
  # The prober lives 14 s past the window: reading hundreds of schedstat files on a
  # loaded machine takes seconds, and a reading after it exited would be garbage.
  stats=/sys/class/net/eth0/statistics
  b0=$(ip netns exec "$tag-p-$n" sh -c "echo \$(( \$(cat $stats/tx_bytes) + \$(cat $stats/rx_bytes) ))")
  p0=$(ticks "$ppid"); r0=$(ticks "${rpids[@]}"); u0=$(uticks "$ppid")
  q0=$(cpu_ns "$ppid"); s0=$(cpu_ns "${rpids[@]}"); w0=$(cpu_ns $wire)
  sleep "$secs"
  p1=$(ticks "$ppid"); r1=$(ticks "${rpids[@]}"); u1=$(uticks "$ppid")
  q1=$(cpu_ns "$ppid"); s1=$(cpu_ns "${rpids[@]}"); w1=$(cpu_ns $wire)
  b1=$(ip netns exec "$tag-p-$n" sh -c "echo \$(( \$(cat $stats/tx_bytes) + \$(cat $stats/rx_bytes) ))")
  prss=$(rss_kb "$ppid")
  rrss=0; for p in "${rpids[@]}"; do rrss=$((rrss + $(rss_kb "$p"))); done
  wait "$ppid" || true
  # /proc/PID/stat counts whole ticks (1/CLK_TCK s), too coarse for a process that
  # runs a few ms a minute; schedstat has the exact on-CPU ns. Both are printed; the
  # result line uses schedstat.
  pst=$(awk -v t=$((p1 - p0)) -v k="$tck" -v s="$secs" 'BEGIN {printf "%.1f", t * 1000 / k / s}')
  rst=$(awk -v t=$((r1 - r0)) -v k="$tck" -v s="$secs" 'BEGIN {printf "%.1f", t * 1000 / k / s}')
  pu=$(awk -v t=$((u1 - u0)) -v k="$tck" -v s="$secs" 'BEGIN {printf "%.1f", t * 1000 / k / s}')
  pmf=$(awk -v t=$((q1 - q0)) -v s="$secs" 'BEGIN {printf "%.2f", t / 1e6 / s}')
  rmf=$(awk -v t=$((s1 - s0)) -v s="$secs" 'BEGIN {printf "%.2f", t / 1e6 / s}')
  wmf=$(awk -v t=$((w1 - w0)) -v s="$secs" 'BEGIN {printf "%.2f", t / 1e6 / s}')
  bps=$(( (b1 - b0) / secs ))
  echo "napi=$napi ($(echo $wire | wc -w) threads) peers=$n wire_napi_millicores=$wmf prober_millicores=$pmf responders_millicores_total=$rmf (stat ticks: $pst of which user $pu, $rst) prober_rss_kb=$prss responder_rss_kb_avg=$((rrss / n)) wire_bytes_per_sec=$bps ($(cat "$work/prober.out"))"
  if [ "$n" = 100 ]; then
    result_100=$(awk -v a="$pmf" -v b="$rmf" 'BEGIN {printf "%.1f", a + b}')
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for x in "${nss[@]}"; do ip netns del "$x" 2>/dev/null || true; done
  pids=(); nss=()
done
[ -n "$result_100" ] && echo "probe_cpu_millicores_100_peers=$result_100"
