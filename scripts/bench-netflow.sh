#!/usr/bin/env bash
# bench-netflow.sh - podflow's NetFlow/IPFIX collector (`podflow server --netflow-listen`:
# listener, decoders, attribution, per-interval aggregation, the embedded store) against
# nfcapd (which writes its files), on the same replayed export streams, in one run.
#
#   scripts/bench-netflow.sh            full run (~6 min): v9, IPFIX and v5 at rising rates
#   scripts/bench-netflow.sh --smoke    < 60 s: small captures, v9 at one rate
#   scripts/bench-netflow.sh --cluster  a cluster's stream (~7 min): v9 and IPFIX from the 60
#                                       nodes of a 4,000-pod cluster, its inventory loaded
#   scripts/bench-netflow.sh --cluster --smoke   the same, 10 nodes, 500 pods, one rate
#
# --cluster: the stream and its inventory come from the repo's own generator
# (crates/netflow/examples/cluster_stream.rs: pod <-> pod, pod <-> Service and backends,
# pod <-> internet and an S3 range, the same connections repeating on every loop as
# long-lived ones do every active timeout); podflow server runs with --inventory and
# --cloud-ranges of the generated files. After the DUR-second points, one steady point
# per version (STEADY datagrams/s, 50000, for STEADY_DUR seconds, 30; STEADY= skips
# them): podflow's start and its last interval's write are fixed costs that a 5-second
# point charges to 5 seconds of stream, where a cluster's stream lasts. Last lines:
# netflow_cluster_${DUR}s_cpu_ratio over the DUR-second points both received
# losslessly, then netflow_cluster_cpu_ratio=<podflow CPU s per record / nfcapd CPU s per
# record it kept> over the steady points podflow received losslessly (equal to the CPU
# ratio where nfcapd did too; without such points, over the DUR-second ones).
#
# The export captures come from the repo's own generator
# (crates/netflow/examples/cluster_stream.rs; `--distinct BENCH_FLOWS` for the worst
# case: one exporter's BENCH_FLOWS records, each of its own public address pair, in v5,
# v9 and IPFIX; without `--distinct`, the cluster's stream). This script then, inside a
# network namespace of its own (only its loopback is used), replays each capture with
# tcpreplay at each rate into nfcapd, then into podflow, and reads each collector's CPU
# time: nfcapd's utime+stime from /proc/PID/stat over the replay; podflow's over its whole
# life (start, replay, and the last interval's attribution and store write at SIGTERM),
# from /usr/bin/time.
#
# Per point it prints: offered datagrams/s (tcpreplay's rate), datagrams sent, and per
# collector: datagrams received (podflow: its /metrics; nfcapd: sent - kernel receive
# buffer drops), flow records received and lost, CPU seconds and the kernel's part of them. Last line:
#   netflow_v9_cpu_ratio=<podflow CPU s / nfcapd CPU s>
# over the v9 points both collectors received losslessly (the same work for both; all
# v9 points if there is none).
#
# Env knobs: BENCH_FLOWS (300000), DUR (seconds per point, 5), RATES_V9, RATES_IPFIX,
# RATES_V5 (datagrams/s; "top" = tcpreplay --topspeed; set empty to skip), CAPTURES (a folder holding
# distinct_v9.pcap etc. and distinct_results.txt from an earlier run: skips generation),
# OUT (results folder), PODFLOW_ARGS (extra flags for podflow server, e.g. "--interval 1s"),
# CARGO_TARGET_DIR.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
SMOKE=0
CLUSTER=0
for a in "$@"; do
	case "$a" in
	--smoke) SMOKE=1 ;;
	--cluster) CLUSTER=1 ;;
	*) echo "usage: $0 [--cluster] [--smoke]" >&2; exit 2 ;;
	esac
done

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (network namespace, tcpreplay)"
for c in ip tcpreplay nfcapd ss awk cargo getconf pgrep; do
	command -v "$c" >/dev/null 2>&1 || die "$c not found (apt-get install -y iproute2 tcpreplay nfdump procps; cargo from rustup)"
done
[ -x /usr/bin/time ] || die "/usr/bin/time not found (apt-get install -y time)"

if [ $CLUSTER = 1 ]; then
	if [ $SMOKE = 1 ]; then
		NODES=${NODES:-10}; PODS=${PODS:-500}; DUR=${DUR:-2}
		RATES_V9=${RATES_V9-"20000"}; RATES_IPFIX=${RATES_IPFIX-""}; STEADY=${STEADY-""}
	else
		NODES=${NODES:-60}; PODS=${PODS:-4000}; DUR=${DUR:-5}
		RATES_V9=${RATES_V9-"25000 50000 100000 150000 top"}
		RATES_IPFIX=${RATES_IPFIX-"50000 100000 150000 top"}
		STEADY=${STEADY-50000}
	fi
	RATES_V5=""
	BENCH_FLOWS="cluster of $NODES nodes, $PODS pods"
elif [ $SMOKE = 1 ]; then
	BENCH_FLOWS=${BENCH_FLOWS:-20000}; DUR=${DUR:-2}
	RATES_V9=${RATES_V9-"20000"}; RATES_IPFIX=${RATES_IPFIX-""}; RATES_V5=${RATES_V5-""}
else
	# set but empty (RATES_V5=) = skip that version
	BENCH_FLOWS=${BENCH_FLOWS:-300000}; DUR=${DUR:-5}
	RATES_V9=${RATES_V9-"25000 50000 100000 150000 200000 top"}
	RATES_IPFIX=${RATES_IPFIX-"50000 100000 150000 top"}
	RATES_V5=${RATES_V5-"100000 top"}
fi
STEADY=${STEADY:-}; STEADY_DUR=${STEADY_DUR:-30}
OUT=${OUT:-$(mktemp -d /tmp/podflow-bench-netflow.XXXXXX)}
mkdir -p "$OUT"
NS=pfnf-bench
HTTP_PORT=9190
# Both collectors write to tmpfs (the same storage for both; nfcapd's files at 100k
# datagrams/s for 30 s are ~6 GB)
PF_DATA=/dev/shm/podflow-bench-netflow
NF_DATA=/dev/shm/podflow-bench-nfcapd
PORT=2055
HZ=$(getconf CLK_TCK)

# ------------------------------------------------------------- cleanup (also on failure)
PIDS=()
alive() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1; [[ -n $st && $st != Z* ]]; }
stop_pid() {                  # stop_pid PID: TERM, then KILL after 5 s; forget it
	local pid=$1 i
	if alive "$pid"; then
		kill -TERM "$pid" 2>/dev/null
		for i in $(seq 50); do alive "$pid" || break; sleep 0.1; done
		alive "$pid" && kill -KILL "$pid" 2>/dev/null
	fi
	wait "$pid" 2>/dev/null || true
	local keep=() p
	for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
	PIDS=("${keep[@]}")
}
cleanup() {
	trap - EXIT INT TERM
	local p
	for p in "${PIDS[@]}"; do stop_pid "$p"; done
	if ip netns list 2>/dev/null | grep -qw "$NS"; then
		# only processes inside our own namespace (started by this script)
		for p in $(ip netns pids "$NS" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
		sleep 0.2
		ip netns del "$NS" 2>/dev/null
	fi
	rm -rf "$NF_DATA" "$PF_DATA"
	log "cleanup done (collectors stopped, namespace $NS deleted); results in $OUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() {                  # wait_for SECONDS CMD... (every 0.1 s)
	local i; local t=$1; shift
	for ((i = 0; i < t * 10; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
	return 1
}

# ------------------------------------------------------------- build podflow
log "building podflow (cargo build --release -p podflow)"
(cd "$REPO" && cargo build -q --release -p podflow) || die "build failed"
PODFLOW=${CARGO_TARGET_DIR:-$REPO/target}/release/podflow
[ -x "$PODFLOW" ] || die "no podflow binary at $PODFLOW"

# ------------------------------------------------------------- export captures
declare -A NPK FPL PCAP
if [ $CLUSTER = 1 ]; then
	CAP=${CAPTURES:-$OUT/cluster}
	if [ ! -s "$CAP/results.txt" ]; then
		log "generating the cluster stream ($NODES nodes, $PODS pods) into $CAP"
		(cd "$REPO" && cargo run -q --release -p podflow-netflow --example cluster_stream -- "$CAP" "$NODES" "$PODS") \
			>"$OUT/generate.log" 2>&1 || { cat "$OUT/generate.log" >&2; die "cluster_stream failed"; }
	fi
	for v in 9 10; do
		case $v in 9) n=cluster_v9 ;; 10) n=cluster_ipfix ;; esac
		PCAP[$v]=$CAP/$n.pcap
		line=$(grep "^$n.pcap: " "$CAP/results.txt" | tail -1)
		NPK[$v]=$(awk '{print $2}' <<<"$line")
		FPL[$v]=$(awk '{for (i = 1; i <= NF; i++) if ($i == "carrying") print $(i + 1)}' <<<"$line")
		[ -n "${NPK[$v]}" ] && [ -n "${FPL[$v]}" ] && [ -s "${PCAP[$v]}" ] || die "no capture for $n in $CAP"
	done
	PODFLOW_ARGS="--inventory $CAP/inventory.yaml --cloud-ranges $CAP/cloud ${PODFLOW_ARGS:-}"
else
CAP=${CAPTURES:-$OUT/distinct}
if [ ! -s "$CAP/distinct_results.txt" ]; then
	log "generating the worst case's captures ($BENCH_FLOWS distinct pairs) into $CAP"
	(cd "$REPO" && cargo run -q --release -p podflow-netflow --example cluster_stream -- --distinct "$BENCH_FLOWS" "$CAP") \
		>"$OUT/generate.log" 2>&1 || { cat "$OUT/generate.log" >&2; die "cluster_stream --distinct failed"; }
fi
for v in 5 9 10; do
	case $v in 5) n=distinct_v5 ;; 9) n=distinct_v9 ;; 10) n=distinct_ipfix ;; esac
	PCAP[$v]=$CAP/$n.pcap
	line=$(grep "^$n.pcap: " "$CAP/distinct_results.txt" | tail -1)
	NPK[$v]=$(awk '{print $2}' <<<"$line")
	FPL[$v]=$(awk '{for (i = 1; i <= NF; i++) if ($i == "carrying") print $(i + 1)}' <<<"$line")
	[ -n "${NPK[$v]}" ] && [ -n "${FPL[$v]}" ] && [ -s "${PCAP[$v]}" ] || die "no capture for $n in $CAP"
done
fi

# ------------------------------------------------------------- the namespace
ip netns del "$NS" 2>/dev/null
ip netns add "$NS" || die "ip netns add $NS"
ip -n "$NS" link set lo up
# tcpreplay onto lo towards 127.0.0.1 is otherwise dropped as a martian / local source
ip netns exec "$NS" sysctl -qw net.ipv4.conf.lo.accept_local=1 net.ipv4.conf.lo.route_localnet=1
in_ns() { ip netns exec "$NS" "$@"; }
udp_bound() { in_ns ss -Hlun "sport = :$PORT" | grep -q .; }
rcvbuf_errors() { in_ns awk '/^Udp:/ {getline; print $6}' /proc/net/snmp; }
cpu_ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat" 2>/dev/null || echo 0; }
sys_ticks() { awk '{sub(/^.*\) /, ""); print $13}' "/proc/$1/stat" 2>/dev/null || echo 0; }
metrics() {                   # podflow's /metrics, fetched inside the namespace
	in_ns bash -c "exec 3<>/dev/tcp/127.0.0.1/$HTTP_PORT && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && cat <&3"
}

RESULTS=$OUT/results.txt
: >"$RESULTS"
say() { echo "$*" | tee -a "$RESULTS"; }
say "# bench-netflow $(date -Is) $(nproc) CPUs; $(uname -r); BENCH_FLOWS=$BENCH_FLOWS, ${DUR}s per point; generator tcpreplay on lo in netns $NS"
say "# nfcapd $(nfcapd -V 2>&1 | head -1 | awk '{print $NF}') -B 16777216 to tmpfs; podflow server --netflow-listen, embedded store on tmpfs ${PODFLOW_ARGS:-(defaults: 10 s intervals, SO_RCVBUF 32 MiB forced, one socket per core)}"
for v in 9 10 5; do [ -n "${PCAP[$v]:-}" ] && say "# $(basename "${PCAP[$v]}"): ${NPK[$v]} datagrams, ${FPL[$v]} flow records per loop"; done
printf -v HDR '%-6s %7s %9s %9s | %-44s | %-44s | %s' ver target offered/s sent \
	"nfcapd: recv_dgrams records lost cpu_s sys_s" "podflow: recv_dgrams records lost cpu_s sys_s" ratio
say "$HDR"

# point VER PPS [SECS steady] -> one line; accumulates CPU per version and collector
# (a steady point, of SECS instead of DUR, into CPU_STEADY only)
declare -A CPU_ALL CPU_OK CPU_STEADY RECS_STEADY
point() {
	local v=$1 pps=$2 npk=${NPK[$1]} fpl=${FPL[$1]} pcap=${PCAP[$1]}
	local dur=${3:-$DUR} kind=${4:-}
	local loops rate
	if [ "$pps" = top ]; then
		loops=$(( (250000 * dur + npk - 1) / npk )); rate=--topspeed
	else
		loops=$(( (pps * dur + npk - 1) / npk )); rate=--pps=$pps
	fi
	[ "$loops" -lt 1 ] && loops=1
	local sent=$((loops * npk)) exp=$((loops * fpl)) coll offered="" row=()
	for coll in nfcapd podflow; do
		local lf=$OUT/$coll.log P
		if [ $coll = nfcapd ]; then
			rm -rf "$NF_DATA"; mkdir -p "$NF_DATA"
			ip netns exec "$NS" nfcapd -w "$NF_DATA" -b 127.0.0.1 -p $PORT -t 3600 -B 16777216 >"$lf" 2>&1 &
		else
			rm -rf "$PF_DATA"; mkdir -p "$PF_DATA"
			# shellcheck disable=SC2086
			ip netns exec "$NS" /usr/bin/time -f "cpu_s %U %S" -o "$OUT/podflow.time" \
				"$PODFLOW" server --netflow-listen 127.0.0.1:$PORT --listen 127.0.0.1:$HTTP_PORT \
				--grpc-listen 127.0.0.1:$((HTTP_PORT + 1)) --data-dir "$PF_DATA" ${PODFLOW_ARGS:-} >"$lf" 2>&1 &
		fi
		P=$!; PIDS+=("$P")   # ip netns exec execs the collector (podflow: /usr/bin/time): same PID
		wait_for 10 udp_bound || { cat "$lf" >&2; die "$coll did not bind 127.0.0.1:$PORT"; }
		local e0 e1 c0 c1 s0 s1
		e0=$(rcvbuf_errors); c0=$(cpu_ticks "$P"); s0=$(sys_ticks "$P")
		in_ns tcpreplay -q -i lo "$rate" --loop="$loops" "$pcap" >"$OUT/tcpreplay.log" 2>&1 ||
			{ cat "$OUT/tcpreplay.log" >&2; die "tcpreplay failed"; }
		sleep 2
		e1=$(rcvbuf_errors); c1=$(cpu_ticks "$P"); s1=$(sys_ticks "$P")
		local drops=$((e1 - e0)) got recv cpu sys
		if [ $coll = nfcapd ]; then
			stop_pid "$P"
			rm -rf "$NF_DATA"   # its files, in memory, before podflow's turn
			got=$(sed -n 's/.*Flows: \([0-9]*\),.*/\1/p' "$lf" | tail -1)
			recv=$((sent - drops))
			cpu=$(awk -v t=$((c1 - c0)) -v hz="$HZ" 'BEGIN {printf "%.2f", t / hz}')
			sys=$(awk -v t=$((s1 - s0)) -v hz="$HZ" 'BEGIN {printf "%.2f", t / hz}')
		else
			local m child
			m=$(metrics)
			got=$(awk '$1 == "podflow_netflow_records_total" {print $2}' <<<"$m")
			recv=$(awk '$1 == "podflow_netflow_datagrams_total" {print $2}' <<<"$m")
			# SIGTERM to podflow (time's child): it writes the last interval and exits.
			child=$(pgrep -P "$P" | head -1)
			[ -n "$child" ] && kill -TERM "$child"
			local i
			for i in $(seq 300); do alive "$P" || break; sleep 0.1; done
			stop_pid "$P"
			cpu=$(awk '$1 == "cpu_s" {printf "%.2f", $2 + $3}' "$OUT/podflow.time")
			sys=$(awk '$1 == "cpu_s" {printf "%.2f", $3}' "$OUT/podflow.time")
		fi
		[ -n "$got" ] && [ -n "$recv" ] && [ -n "$cpu" ] || { cat "$lf" >&2; die "$coll reported no totals"; }
		local lost=$((exp - got))
		[ -z "$offered" ] && offered=$(awk '/Rated:/ {for (i = 1; i <= NF; i++) if ($i == "pps" || $i == "pps,") print $(i - 1)}' "$OUT/tcpreplay.log" | head -1)
		row+=("$(printf '%10d %9d %7d %6s %5s' "$recv" "$got" "$lost" "$cpu" "$sys")")
		eval "local ${coll}_cpu=$cpu ${coll}_lost=$lost ${coll}_got=$got"
	done
	local ratio
	ratio=$(awk -v a="$podflow_cpu" -v b="$nfcapd_cpu" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "n/a"}')
	say "$(printf '%-6s %7s %9.0f %9d | nfcapd  %-42s | podflow %-42s | %s' "v$v" "$pps" "${offered:-0}" "$sent" "${row[0]}" "${row[1]}" "$ratio")${kind:+ (steady, ${dur} s)}"
	if [ "$kind" = steady ]; then
		# Per record kept: nfcapd losing a few of 45M records at a steady point does not
		# make it another workload (podflow must be lossless).
		if [ "$podflow_lost" = 0 ] && [ "$nfcapd_got" -gt 0 ]; then
			local c cpu_of got_of
			for c in nfcapd podflow; do
				cpu_of=${c}_cpu got_of=${c}_got
				CPU_STEADY[$v.$c]=$(awk -v a="${CPU_STEADY[$v.$c]:-0}" -v b="${!cpu_of}" 'BEGIN {print a + b}')
				RECS_STEADY[$v.$c]=$(awk -v a="${RECS_STEADY[$v.$c]:-0}" -v b="${!got_of}" 'BEGIN {print a + b}')
			done
		fi
		return
	fi
	CPU_ALL[$v.nfcapd]=$(awk -v a="${CPU_ALL[$v.nfcapd]:-0}" -v b="$nfcapd_cpu" 'BEGIN {print a + b}')
	CPU_ALL[$v.podflow]=$(awk -v a="${CPU_ALL[$v.podflow]:-0}" -v b="$podflow_cpu" 'BEGIN {print a + b}')
	if [ "$nfcapd_lost" = 0 ] && [ "$podflow_lost" = 0 ]; then
		CPU_OK[$v.nfcapd]=$(awk -v a="${CPU_OK[$v.nfcapd]:-0}" -v b="$nfcapd_cpu" 'BEGIN {print a + b}')
		CPU_OK[$v.podflow]=$(awk -v a="${CPU_OK[$v.podflow]:-0}" -v b="$podflow_cpu" 'BEGIN {print a + b}')
	fi
}

for pps in $RATES_V9; do point 9 "$pps"; done
for pps in $RATES_IPFIX; do point 10 "$pps"; done
for pps in $RATES_V5; do point 5 "$pps"; done
if [ $CLUSTER = 1 ] && [ -n "$STEADY" ]; then
	for v in 9 10; do point $v "$STEADY" "$STEADY_DUR" steady; done
fi

ratio_of() {                  # ratio_of VER -> podflow/nfcapd CPU over lossless points (else all)
	local v=$1 src=CPU_OK
	[ -n "${CPU_OK[$v.nfcapd]:-}" ] || src=CPU_ALL
	local -n m=$src
	awk -v a="${m[$v.podflow]:-0}" -v b="${m[$v.nfcapd]:-0}" 'BEGIN {if (b > 0) printf "%.3f", a / b; else print "nan"}'
}

if [ $CLUSTER = 1 ]; then
	# Both versions together: podflow/nfcapd CPU over every lossless v9 and IPFIX point.
	sum_of() { local -n m=$1; awk -v a="${m[9.$2]:-0}" -v b="${m[10.$2]:-0}" 'BEGIN {print a + b}'; }
	src=CPU_OK
	[ -n "${CPU_OK[9.nfcapd]:-}${CPU_OK[10.nfcapd]:-}" ] || src=CPU_ALL
	[ $src = CPU_ALL ] && log "no point lossless for both collectors: the ratio is over every point"
	for v in 9 10; do [ -n "${CPU_ALL[$v.nfcapd]:-}" ] && say "netflow_cluster_$([ $v = 9 ] && echo v9 || echo ipfix)_cpu_ratio=$(ratio_of $v)"; done
	short=$(awk -v a="$(sum_of $src podflow)" -v b="$(sum_of $src nfcapd)" 'BEGIN {if (b > 0) printf "%.3f", a / b; else print "nan"}')
	if [ -n "${CPU_STEADY[9.nfcapd]:-}${CPU_STEADY[10.nfcapd]:-}" ]; then
		# The last line: CPU per record at steady state (the per-interval work, start and
		# the last interval's write spread over a stream that lasts, as a cluster's does).
		[ -n "$RATES_V9$RATES_IPFIX" ] && say "netflow_cluster_${DUR}s_cpu_ratio=$short"
		say "netflow_cluster_cpu_ratio=$(awk -v a="$(sum_of CPU_STEADY podflow)" -v b="$(sum_of CPU_STEADY nfcapd)" \
			-v ra="$(sum_of RECS_STEADY podflow)" -v rb="$(sum_of RECS_STEADY nfcapd)" 'BEGIN {printf "%.3f", (a / ra) / (b / rb)}')"
	else
		[ -n "$STEADY" ] && log "no steady point lossless for podflow: the ratio is over the ${DUR}-second points"
		say "netflow_cluster_cpu_ratio=$short"
	fi
else
	[ -n "$RATES_IPFIX" ] && say "netflow_ipfix_cpu_ratio=$(ratio_of 10)"
	[ -n "$RATES_V5" ] && say "netflow_v5_cpu_ratio=$(ratio_of 5)"
	say "netflow_v9_cpu_ratio=$(ratio_of 9)"
fi
