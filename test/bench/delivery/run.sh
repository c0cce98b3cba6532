#!/usr/bin/env bash
# Delivery benchmark: mxbox against Postfix from Debian, same run, same sink
# (Postfix's smtp-sink on 127.0.0.2), 4 KB messages. Run by `make bench`.
#
#   drain       a queue of DRAIN_N (20000) messages, upstream up: msg/s until empty
#   pass        PASS_N (20000) sent with smtp-source over 20 sessions while the
#               upstream is up: msg/s end to end (first byte in to queue empty)
#   recovery    upstream down, REC_N (1000) queued, upstream up: seconds to the
#               first and the last delivery (Postfix: capped at REC_CAP s)
#   scale       drain rate with BIG_N (1000000) queued vs SMALL_N (10000),
#               over the first SCALE_SECS (60) s, and mxbox peak RSS
#
# PHASES (default "drain pass recovery scale") picks phases; e.g.
# PHASES="pass" PASS_N=20000 bash test/bench/delivery/run.sh for one figure.
#
# Postfix runs as a private instance (postfix -c DIR) on its own loopback
# port, config dir and queue dir; the system's Postfix config is not touched.
# Network: 127.0.0.1 / 127.0.0.2 only, free high ports picked at run time.
# Exit 0 when it ran (targets missed are reported), non-zero when it could not.
set -euo pipefail

DRAIN_N=${DRAIN_N:-20000}
PASS_N=${PASS_N:-20000}
REC_N=${REC_N:-1000}
REC_CAP=${REC_CAP:-60}
SMALL_N=${SMALL_N:-10000}
BIG_N=${BIG_N:-1000000}
SCALE_SECS=${SCALE_SECS:-60}
SIZE=4096
SINK_IP=127.0.0.2
PHASES=${PHASES:-drain pass recovery scale}
want() { [[ " $PHASES " == *" $1 "* ]]; }

REPO=$(cd "$(dirname "$0")/../../.." && pwd)
WORK=$(mktemp -d /tmp/mxbox-bench-delivery.XXXXXX)
chmod 755 "$WORK"
MXPID= SINKPID= PF_STARTED=
PFCONF=$WORK/pf/etc PFQ=$WORK/pf/queue PFD=$WORK/pf/data

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }
cleanup() {
	local rc=$?
	set +e
	[ -n "$MXPID" ] && kill -TERM "$MXPID" 2>/dev/null && wait "$MXPID" 2>/dev/null
	[ -n "$SINKPID" ] && kill "$SINKPID" 2>/dev/null && wait "$SINKPID" 2>/dev/null
	[ -n "$PF_STARTED" ] && /usr/sbin/postfix -c "$PFCONF" stop >/dev/null 2>&1
	if [ "${KEEP:-0}" = 1 ]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" -eq 0 ] || die "needs root (Postfix's master and smtp-sink -u)"
for c in go jq curl /usr/sbin/postfix /usr/sbin/smtp-sink /usr/sbin/smtp-source; do command -v $c >/dev/null || die "$c not found"; done

declare -A USED
pick_port() {
	local p
	for _ in $(seq 200); do
		p=$((20000 + RANDOM % 40000))
		[ -z "${USED[$p]:-}" ] && ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && ! (exec 3<>"/dev/tcp/$SINK_IP/$p") 2>/dev/null &&
			{ USED[$p]=1; echo "$p"; return; }
	done
	die "no free port"
}
now() { date +%s.%N; }
f() { awk "BEGIN {printf \"$1\", ($2)}"; }

SINK_PORT=$(pick_port)
sink_up() {
	/usr/sbin/smtp-sink -u postfix "$SINK_IP:$SINK_PORT" 1000 >/dev/null 2>&1 &
	SINKPID=$!
	for _ in $(seq 50); do (exec 3<>"/dev/tcp/$SINK_IP/$SINK_PORT") 2>/dev/null && return; sleep 0.1; done
	die "smtp-sink did not start"
}
sink_down() { if [ -n "$SINKPID" ]; then kill "$SINKPID" 2>/dev/null || true; wait "$SINKPID" 2>/dev/null || true; fi; SINKPID=; }

log "building mxbox and benchtool"
(cd "$REPO" && go build -trimpath -o "$WORK/mxbox" ./firmware/cmd/mxbox && go build -trimpath -o "$WORK/benchtool" ./test/bench/delivery/benchtool)

# ---- mxbox ----
MXDATA=$WORK/mx MXPORT=$(pick_port)
mx_config() { # $1 data dir
	cat >"$WORK/mx.toml" <<EOF
hostname = "mxbox.bench.example"
data_dir = "$1"
log_level = "warn"
[smtp]
listen = "127.0.0.1:$MXPORT"
submission_listen = ""
relay_networks = ["127.0.0.0/8"]
[delivery]
smarthosts = ["$SINK_IP:$SINK_PORT"]
tls = "none"
concurrency = 20
hop_concurrency = 20
probe_interval = "1s"
connect_timeout = "2s"
[dns]
listen = ""
[web]
listen = ""
EOF
}
mx_start() {
	"$WORK/mxbox" serve -config "$WORK/mx.toml" 2>>"$WORK/mxbox.log" &
	MXPID=$!
	for _ in $(seq 600); do [ -S "$1/admin.sock" ] && mx_count >/dev/null 2>&1 && return; sleep 0.1; done
	die "mxbox did not start (see $WORK/mxbox.log)"
}
mx_stop() { kill -TERM "$MXPID"; wait "$MXPID" 2>/dev/null || true; MXPID=; }
mx_count() { curl -sf --unix-socket "$MXDATA/admin.sock" http://mxbox/v1/stats | jq -e .messages; }
mx_fresh() { rm -rf "$MXDATA"; mkdir -p "$MXDATA"; mx_config "$MXDATA"; }
# The fill skips per-commit fsync (preparation, not measured; Close syncs):
# 1,000,000 messages take ~75 s instead of ~6 min.
mx_fill() { "$WORK/benchtool" fill -dir "$MXDATA/spool" -n "$1" -size $SIZE -workers "${2:-512}" -nosync >&2; }
# wait_empty COUNTFN TIMEOUT: prints the time it became empty
wait_empty() {
	local end n
	end=$(f %.0f "$(date +%s) + $2")
	while [ "$(date +%s)" -lt "$end" ]; do
		n=$($1 2>/dev/null || echo -1)
		[ "$n" = 0 ] && { now; return; }
		sleep 0.1
	done
	die "queue not empty after $2 s ($n left)"
}
peak_anon=0 peak_file=0
sample_mem() { # $1 pid: track peak RssAnon and RssFile (kB)
	local a f
	read -r a f < <(awk '/^RssAnon:/ {a=$2} /^RssFile:/ {f=$2} END {print a+0, f+0}' "/proc/$1/status" 2>/dev/null || echo 0 0)
	[ "$a" -gt "$peak_anon" ] && peak_anon=$a
	[ "$f" -gt "$peak_file" ] && peak_file=$f
	true
}

# ---- Postfix (private instance) ----
. "$(dirname "$0")/../lib/postfix.sh"
PFPORT=$(pick_port) DEAD=$(pick_port)
pf_setup() { # $1 relayhost port, $2 defer_transports
	rm -rf "$WORK/pf"
	pf_write_config "$PFCONF" "$PFQ" "$PFD" "$PFPORT" "[$SINK_IP]:$1" "$WORK" "defer_transports = $2"
}
pf_start() {
	PF_STARTED=1
	/usr/sbin/postfix -c "$PFCONF" start >"$WORK/pf-start.log" 2>&1 || die "postfix start: $(tail -3 "$WORK/pf-start.log")"
	for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PFPORT") 2>/dev/null && return; sleep 0.1; done
	die "Postfix did not listen"
}
pf_stop() { /usr/sbin/postfix -c "$PFCONF" stop >/dev/null 2>&1 || true; PF_STARTED=; sleep 1; }
pf_count() { find "$PFQ/incoming" "$PFQ/active" "$PFQ/deferred" "$PFQ/maildrop" -type f 2>/dev/null | wc -l; }
source_to() { # port count
	timeout 900 /usr/sbin/smtp-source -d -s 20 -m "$2" -l $SIZE -M bench.example -f sender@bench.example \
		-t rcpt@relay.example "127.0.0.1:$1" >/dev/null 2>"$WORK/smtp-source.err" || die "smtp-source: $(tail -3 "$WORK/smtp-source.err")"
}
wait_count() { # fn n timeout
	local end=$(( $(date +%s) + $3 ))
	while [ "$(date +%s)" -lt "$end" ]; do [ "$($1 2>/dev/null || echo 0)" -ge "$2" ] && return; sleep 0.2; done
	die "queue did not reach $2"
}

mx_drain=- pf_drain=- mx_pass=- pf_pass=- mx_rec_first=- mx_rec_last=- pf_rec_first=- pf_rec_last=-
small_rate=- small_hwm=0 small_anon=0 small_file=0 big_rate=- big_hwm=0 big_anon=0 big_file=0
ratio() { if [[ $1 == - || $2 == - ]]; then echo -; else f %.2f "$1 / $2"; fi; }

# ======== 1. drain of DRAIN_N ========
if want drain; then
log "drain: mxbox, $DRAIN_N queued"
mx_fresh; mx_fill "$DRAIN_N"; sink_up
t0=$(now); mx_start "$MXDATA"
t1=$(wait_empty mx_count 600); mx_stop
mx_drain=$(f %.0f "$DRAIN_N / ($t1 - $t0)")

log "drain: Postfix, $DRAIN_N queued"
pf_setup "$SINK_PORT" smtp; pf_start
source_to "$PFPORT" "$DRAIN_N"; wait_count pf_count "$DRAIN_N" 300
postconf -c "$PFCONF" -e "defer_transports =" >/dev/null
t0=$(now); /usr/sbin/postfix -c "$PFCONF" reload >/dev/null 2>&1; /usr/sbin/postqueue -c "$PFCONF" -f
t1=$(wait_empty pf_count 900); pf_stop
pf_drain=$(f %.0f "$DRAIN_N / ($t1 - $t0)")
fi

# ======== 2. pass-through ========
if want pass; then
[ -n "$SINKPID" ] || sink_up
log "pass-through: mxbox, $PASS_N over 20 sessions"
mx_fresh; mx_start "$MXDATA"
t0=$(now); source_to "$MXPORT" "$PASS_N"; t1=$(wait_empty mx_count 600); mx_stop
mx_pass=$(f %.0f "$PASS_N / ($t1 - $t0)")
log "pass-through: Postfix"
pf_setup "$SINK_PORT" ""; pf_start
t0=$(now); source_to "$PFPORT" "$PASS_N"; t1=$(wait_empty pf_count 900); pf_stop
pf_pass=$(f %.0f "$PASS_N / ($t1 - $t0)")
fi

# ======== 3. recovery ========
if want recovery; then
log "recovery: mxbox, upstream down, $REC_N queued"
sink_down; mx_fresh; mx_start "$MXDATA"
source_to "$MXPORT" "$REC_N"
sleep 3 # attempts fail, next hop marked down, probe running; the backoff says 5 min
t0=$(now); sink_up; first=
while :; do
	n=$(mx_count); [ -z "$first" ] && [ "$n" -lt "$REC_N" ] && first=$(now)
	[ "$n" = 0 ] && break
	[ "$(f %d "$(now) - $t0 > 120")" = 1 ] && die "recovery: still $n queued after 120 s"
	sleep 0.05
done
t1=$(now); mx_stop
mx_rec_first=$(f %.2f "$first - $t0"); mx_rec_last=$(f %.2f "$t1 - $t0")
log "recovery: Postfix (capped at $REC_CAP s)"
sink_down; pf_setup "$SINK_PORT" ""; pf_start
source_to "$PFPORT" "$REC_N"; sleep 3
t0=$(now); sink_up; first= pf_rec_first=">$REC_CAP" pf_rec_last=">$REC_CAP"
while [ "$(f %d "$(now) - $t0 < $REC_CAP")" = 1 ]; do
	n=$(pf_count); [ -z "$first" ] && [ "$n" -lt "$REC_N" ] && first=$(now) && pf_rec_first=$(f %.2f "$first - $t0")
	[ "$n" = 0 ] && { pf_rec_last=$(f %.2f "$(now) - $t0"); break; }
	sleep 0.2
done
pf_stop
fi

# ======== 4. scale: drain rate with SMALL_N vs BIG_N queued ========
scale_run() { # n -> prints "rate peak_hwm_kb peak_anon_kb peak_file_kb"
	local n=$1 c0 c1 t0 t1 end
	mx_fresh
	log "scale: filling $n"
	local ft0; ft0=$(now); mx_fill "$n" 1024; log "scale: filled $n in $(f %.0f "$(now) - $ft0") s"
	peak_anon=0 peak_file=0
	mx_start "$MXDATA"
	c0=$(mx_count); t0=$(now); end=$(f %.0f "$(date +%s) + $SCALE_SECS")
	while [ "$(date +%s)" -lt "$end" ]; do
		sample_mem "$MXPID"; c1=$(mx_count); [ "$c1" = 0 ] && break; sleep 0.5
	done
	c1=$(mx_count); t1=$(now)
	local hwm; hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$MXPID/status")
	mx_stop
	echo "$(f %.0f "($c0 - $c1) / ($t1 - $t0)") $hwm $peak_anon $peak_file"
}
if want scale; then
[ -n "$SINKPID" ] || sink_up
read -r small_rate small_hwm small_anon small_file < <(scale_run "$SMALL_N")
read -r big_rate big_hwm big_anon big_file < <(scale_run "$BIG_N")
fi
sink_down

cat <<EOF

== Delivery benchmark: ${SIZE} B messages, smtp-sink on $SINK_IP, 20 connections (mxbox concurrency / Postfix default)
host:  $(nproc) cores, $(uname -r), $(postconf -h mail_version | sed 's/^/Postfix /'), $(go version | awk '{print $3}')

                                          mxbox      Postfix   ratio
  drain of $DRAIN_N queued (msg/s)   $(printf '%10s %12s %7s' "$mx_drain" "$pf_drain" "$(ratio "$mx_drain" "$pf_drain")")   target >= 2
  pass-through $PASS_N, 20 sess (msg/s) $(printf '%7s %12s %7s' "$mx_pass" "$pf_pass" "$(ratio "$mx_pass" "$pf_pass")")   target >= 2
  recovery, $REC_N queued: first (s)  $(printf '%10s %12s' "$mx_rec_first" "$pf_rec_first")   target <= 5
  recovery, $REC_N queued: last (s)   $(printf '%10s %12s' "$mx_rec_last" "$pf_rec_last")

  mxbox drain rate, first ${SCALE_SECS}s: $SMALL_N queued $small_rate msg/s, $BIG_N queued $big_rate msg/s, ratio $(ratio "$big_rate" "$small_rate") (target >= 0.8)
  mxbox peak RSS (VmHWM) with $BIG_N queued: $(f %.1f "$big_hwm / 1024") MB (target <= 96); peak RssAnon $(f %.1f "$big_anon / 1024") MB, peak RssFile $(f %.1f "$big_file / 1024") MB
  mxbox peak RSS (VmHWM) with $SMALL_N queued: $(f %.1f "$small_hwm / 1024") MB; peak RssAnon $(f %.1f "$small_anon / 1024") MB, peak RssFile $(f %.1f "$small_file / 1024") MB
  (VmHWM counts Badger's memory-mapped value-log pages the kernel can drop; anonymous RSS is the heap and stacks.)
EOF
