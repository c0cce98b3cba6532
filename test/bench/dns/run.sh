#!/usr/bin/env bash
# DNS benchmark: cache-hit queries/s of mxbox's resolver, Unbound (1 thread,
# forwarding) and dnsmasq (--cache-rr incl. MX) with dnsperf, same query file,
# same Go test upstream; RSS with 50,000 cached names; an outage run (warm,
# kill the upstream, let TTLs expire, expect 100% NOERROR from stale).
# Loopback only (127.0.0.1), every run bounded to a few seconds.
#
#   test/bench/dns/run.sh     # from anywhere in the repo; about a minute
#   DURATION=5 ROUNDS=5 MXBOX_GOMAXPROCS=1 test/bench/dns/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."

DURATION=${DURATION:-3}    # seconds per measured dnsperf run
ROUNDS=${ROUNDS:-3}        # interleaved qps rounds; the median is reported
NAMES=${NAMES:-50000}      # names in the upstream zone (and the RSS run)
HOT=${HOT:-10000}          # names the skewed query file draws from
BASE=${BASE_PORT:-15300}
UP=$BASE MX=$((BASE + 1)) UB=$((BASE + 2)) DM=$((BASE + 3)) UP2=$((BASE + 10)) MX2=$((BASE + 11))

need=()
command -v dnsperf >/dev/null || need+=(dnsperf)
command -v unbound >/dev/null || need+=(unbound)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
if ((${#need[@]})); then
	if [[ $(id -u) == 0 ]]; then
		apt-get install -y "${need[@]}" >/dev/null || { apt-get update >/dev/null && apt-get install -y "${need[@]}" >/dev/null; }
	else
		echo "missing ${need[*]}: run as root or install them" >&2
		exit 1
	fi
fi

W=$(mktemp -d /tmp/mxbox-dnsbench.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	[[ -n "${KEEP:-}" ]] || rm -rf "$W"
}
trap cleanup EXIT

go build -o "$W/dnsbench" ./test/bench/dns
B=$W/dnsbench

wait_port() { # wait until a DNS server answers on 127.0.0.1:$1
	for _ in $(seq 100); do
		if dnsperf -s 127.0.0.1 -p "$1" -d <(echo "n0.bench.test A") -n 1 -t 1 2>/dev/null | grep -q 'Queries completed: *1 '; then return 0; fi
		sleep 0.1
	done
	echo "server on port $1 did not come up" >&2
	exit 1
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# perf LABEL PORT FILE [extra dnsperf args]: prints qps, appends a result line
perf() {
	local label=$1 port=$2 file=$3
	shift 3
	dnsperf -s 127.0.0.1 -p "$port" -d "$file" -l "$DURATION" -c 4 -T 1 -q 200 -t 2 "$@" >"$W/$label.out" 2>&1 || true
	awk '/Queries per second/ {printf "%.0f\n", $4}' "$W/$label.out"
}
warm() { dnsperf -s 127.0.0.1 -p "$1" -d "$2" -n 1 -c 4 -T 1 -q 100 -t 3 >"$W/warm-$1.out" 2>&1 || true; }

"$B" queries -hot "$HOT" -n 100000 >"$W/queries.txt"
sort -u "$W/queries.txt" >"$W/distinct.txt"
"$B" names -names "$NAMES" -type A >"$W/all-a.txt"

"$B" upstream -addr "127.0.0.1:$UP" -names "$NAMES" -ttl 3600 2>"$W/upstream.log" &
pids+=($!)
wait_port "$UP"

# --- mxbox ---------------------------------------------------------------
GOMAXPROCS=${MXBOX_GOMAXPROCS:-2} "$B" mxbox -listen "127.0.0.1:$MX" -forward "127.0.0.1:$UP" -cache 64M 2>"$W/mxbox.log" &
MXPID=$!
pids+=($MXPID)
wait_port "$MX"
mx_rss0=$(rss_kb $MXPID)

# --- unbound: one thread, forwarding, no validation ----------------------
cat >"$W/unbound.conf" <<EOF
server:
    interface: 127.0.0.1
    port: $UB
    num-threads: 1
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "$W"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 0
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "iterator"
    msg-cache-size: 64m
    rrset-cache-size: 128m
    serve-expired: yes
    minimal-responses: yes
    qname-minimisation: no
    num-queries-per-thread: 1024
    # test. is an RFC 6761 special-use name that unbound answers NXDOMAIN by
    # default; the benchmark zone lives under it.
    local-zone: "test." nodefault
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@$UP
EOF
unbound -c "$W/unbound.conf" -d >"$W/unbound.log" 2>&1 &
UBPID=$!
pids+=($UBPID)
wait_port "$UB"
ub_rss0=$(rss_kb $UBPID)

# --- dnsmasq: cache A, AAAA and MX ---------------------------------------
dnsmasq -k --no-resolv --no-hosts --no-poll --bind-interfaces --listen-address=127.0.0.1 --port="$DM" \
	--server="127.0.0.1#$UP" --cache-size=200000 --cache-rr=A,AAAA,MX --dns-forward-max=1000 \
	--pid-file= --user=root --group=root --log-facility="$W/dnsmasq.log" &
DMPID=$!
pids+=($DMPID)
wait_port "$DM"
dm_rss0=$(rss_kb $DMPID)

# --- cache-hit qps: warm with every distinct query, then measure ----------
for p in $MX $UB $DM; do warm "$p" "$W/distinct.txt"; done
# The machine is shared: interleave the three servers for ROUNDS rounds and
# report each one's median, so a noisy moment does not pick the winner.
mx_all=() ub_all=() dm_all=()
for _ in $(seq "$ROUNDS"); do
	mx_all+=("$(perf mxbox "$MX" "$W/queries.txt")")
	ub_all+=("$(perf unbound "$UB" "$W/queries.txt")")
	dm_all+=("$(perf dnsmasq "$DM" "$W/queries.txt")")
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {printf "%.0f", v[int((NR + 1) / 2)]}'; }
mx_qps=$(median "${mx_all[@]}") ub_qps=$(median "${ub_all[@]}") dm_qps=$(median "${dm_all[@]}")
mx_noerr=$(awk '/NOERROR/ {print $4, $5}' "$W/mxbox.out")

# --- RSS with 50,000 cached names (A) -------------------------------------
for p in $MX $UB $DM; do warm "$p" "$W/all-a.txt"; done
mx_rss=$(rss_kb $MXPID) ub_rss=$(rss_kb $UBPID) dm_rss=$(rss_kb $DMPID)

# --- outage: short TTLs, warm, kill the upstream, let TTLs expire ---------
"$B" upstream -addr "127.0.0.1:$UP2" -names "$NAMES" -ttl 2 2>"$W/upstream2.log" &
UP2PID=$!
pids+=($UP2PID)
wait_port "$UP2"
"$B" mxbox -listen "127.0.0.1:$MX2" -forward "127.0.0.1:$UP2" -cache 64M 2>"$W/mxbox2.log" &
pids+=($!)
wait_port "$MX2"
warm "$MX2" "$W/distinct.txt"
kill "$UP2PID"
sleep 3 # every 2 s TTL has expired
dnsperf -s 127.0.0.1 -p "$MX2" -d "$W/queries.txt" -l "$DURATION" -c 4 -T 1 -q 200 -t 3 -e >"$W/outage.out" 2>&1 || true
out_sent=$(awk '/Queries sent/ {print $3}' "$W/outage.out")
out_done=$(awk '/Queries completed/ {print $3}' "$W/outage.out")
out_codes=$(grep 'Response codes' "$W/outage.out" | sed 's/.*codes: *//')
out_qps=$(awk '/Queries per second/ {print $4}' "$W/outage.out")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
cat <<EOF

== DNS benchmark ($(nproc) cores, dnsperf -c 4 -T 1 -q 200, ${DURATION}s per run, median of $ROUNDS, query file: 100000 lines,
   Zipf(1.1) over $HOT names, 50% A / 25% AAAA / 25% MX; upstream: Go authoritative server on loopback)
cache-hit qps   mxbox   ${mx_qps}  (GOMAXPROCS=${MXBOX_GOMAXPROCS:-2}; runs: ${mx_all[*]}; NOERROR ${mx_noerr})
                unbound ${ub_qps}  (1 thread; runs: ${ub_all[*]})
                dnsmasq ${dm_qps}  (runs: ${dm_all[*]})
ratio           mxbox/unbound $(ratio "$mx_qps" "$ub_qps")   mxbox/dnsmasq $(ratio "$mx_qps" "$dm_qps")
RSS (MiB)       start -> with $NAMES names cached (+ the qps working set)
                mxbox   $(mb "$mx_rss0") -> $(mb "$mx_rss")   (resolver share $(mb $((mx_rss - mx_rss0))))
                unbound $(mb "$ub_rss0") -> $(mb "$ub_rss")
                dnsmasq $(mb "$dm_rss0") -> $(mb "$dm_rss")
outage          upstream killed, TTLs (2 s) expired: sent ${out_sent}, completed ${out_done}, ${out_qps} qps
                response codes: ${out_codes}
EOF
