#!/usr/bin/env bash
# SMTP acceptance benchmark: mxbox against Postfix from Debian, same run, same
# load, same filesystem. Run by `make bench`; see README-bench-smtp.md.
#
# Load: Postfix's smtp-source, MSGS messages of MSG_BYTES payload over SESSIONS
# concurrent SMTP sessions (each session sends its share of messages over one
# connection, -d). Both servers relay for 127.0.0.0/8 to a smarthost/relayhost
# on a loopback port nothing listens on, so every message stays queued.
#
# Both spools live on a fresh ext4 filesystem on a loop device made for this
# run, so that device's "sectors written" counts only the server under test
# (the machine may be busy with other work). Without loop devices (not root,
# or a container without /dev/loop*) the spools go to a temp dir and the
# device counter includes whatever else writes to that disk.
#
# Measured per server: msg/s (wall time of smtp-source), device bytes written
# per message (block device sectors x 512, after syncfs), the server
# processes' write_bytes from /proc/PID/io, and for mxbox its peak RSS
# (VmHWM). Targets (issue 2): >= 3x Postfix's rate, <= 64 MB RSS, <= 8 KB
# written per 4 KB message. Exit status 0 when the benchmark ran, even if a
# target is missed (the summary says so); non-zero when it could not run.
#
# Environment: MSGS (20000), SESSIONS (20), MSG_BYTES (4096), KEEP=1 keeps the
# work dir (logs, configs, the loop image) for a look afterwards, MXBOX_SRC=DIR
# builds mxbox from another source tree (e.g. a scratch copy with a change to
# measure) instead of this repository.
#
# Network: everything is on 127.0.0.1, on free high ports picked at run time.
set -euo pipefail

MSGS=${MSGS:-20000}
SESSIONS=${SESSIONS:-20}
MSG_BYTES=${MSG_BYTES:-4096}
TARGET_RATIO=3
TARGET_RSS_MB=64
TARGET_WRITE_KB=8

REPO=$(cd "$(dirname "$0")/../../.." && pwd)
WORK=$(mktemp -d /tmp/mxbox-bench-smtp.XXXXXX)
chmod 755 "$WORK" # Postfix services run as user postfix below it
MNT=$WORK/mnt
LOOPDEV=
MXPID=
SAMPLER=
LOADPID=
PFCONF=$WORK/postfix-conf
PF_STARTED=
PF_MASTER=

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

cleanup() {
	local rc=$?
	set +e
	[ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
	[ -n "$LOADPID" ] && kill "$LOADPID" 2>/dev/null && wait "$LOADPID" 2>/dev/null
	if [ -n "$MXPID" ] && kill -0 "$MXPID" 2>/dev/null; then
		kill -TERM "$MXPID"
		for _ in $(seq 50); do kill -0 "$MXPID" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$MXPID" 2>/dev/null
	fi
	if [ -n "$PF_STARTED" ]; then
		/usr/sbin/postfix -c "$PFCONF" stop >/dev/null 2>&1
		for _ in $(seq 50); do [ -n "$PF_MASTER" ] && kill -0 "$PF_MASTER" 2>/dev/null || break; sleep 0.2; done
		if [ -n "$PF_MASTER" ] && kill -0 "$PF_MASTER" 2>/dev/null; then
			# Children of our master only (never the system instance's), then it.
			pkill -KILL -P "$PF_MASTER" 2>/dev/null
			kill -KILL "$PF_MASTER" 2>/dev/null
		fi
	fi
	if [ $rc -ne 0 ]; then
		for f in "$WORK"/mxbox.log "$WORK"/postfix.log "$WORK"/smtp-source.*.err; do
			[ -s "$f" ] && { echo "--- tail of $f" >&2; tail -n 20 "$f" >&2; }
		done
	fi
	if mountpoint -q "$MNT" 2>/dev/null; then
		umount "$MNT" 2>/dev/null || { sleep 1; umount -l "$MNT"; }
	fi
	[ -n "$LOOPDEV" ] && losetup -d "$LOOPDEV" 2>/dev/null
	if [ "${KEEP:-0}" = 1 ]; then
		log "work dir kept: $WORK"
	else
		rm -rf "$WORK"
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- tools
need_postfix() {
	[ -x /usr/sbin/smtp-source ] && [ -x /usr/sbin/postfix ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		die "smtp-source/postfix missing: install Debian's postfix package (sudo apt-get install -y postfix) or run as root"
	fi
	log "installing postfix (for smtp-source and the peer benchmark)"
	export DEBIAN_FRONTEND=noninteractive
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	apt-get update -qq
	apt-get install -y -qq postfix >/dev/null
	[ -x /usr/sbin/smtp-source ] || die "apt-get installed postfix but /usr/sbin/smtp-source is missing"
}
need_postfix
[ "$(id -u)" -eq 0 ] || die "the Postfix peer needs root (its master runs services as the postfix user)"
for c in go findmnt lsblk awk; do command -v $c >/dev/null || die "$c not found"; done

# ---------------------------------------------------------------- ports
declare -A USED_PORTS
port_free() {
	local p=$1
	if command -v ss >/dev/null; then
		[ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ] || return 1
	fi
	! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null
}
pick_port() {
	local p
	for _ in $(seq 200); do
		p=$((20000 + RANDOM % 40000))
		[ -z "${USED_PORTS[$p]:-}" ] && port_free "$p" && { USED_PORTS[$p]=1; echo "$p"; return 0; }
	done
	die "no free loopback port found"
}

# ---------------------------------------------------------------- disk
# A dedicated ext4 on a loop device isolates the device counters.
setup_disk() {
	mkdir -p "$MNT"
	if command -v losetup >/dev/null && command -v mkfs.ext4 >/dev/null &&
		truncate -s 3G "$WORK/disk.img" &&
		LOOPDEV=$(losetup --find --show "$WORK/disk.img" 2>/dev/null); then
		# Eager inode-table and journal init: no lazy init writes during the run.
		mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$LOOPDEV" &&
			mount -t ext4 "$LOOPDEV" "$MNT" && chmod 755 "$MNT" && DISK_NOTE="ext4 on $LOOPDEV (dedicated, backed by $WORK/disk.img)" && return 0
		losetup -d "$LOOPDEV" 2>/dev/null
		LOOPDEV=
	fi
	rm -f "$WORK/disk.img"
	DISK_NOTE="temp dir on the host disk (no loop device): device counters include other writers"
	log "WARNING: $DISK_NOTE"
}

# Block device stat file for the filesystem holding $1.
dev_stat_file() {
	local src name
	src=$(findmnt -no SOURCE --target "$1" | head -1)
	[ -b "$src" ] || { echo ""; return; }
	name=$(lsblk -no KNAME "$src" 2>/dev/null | head -1)
	[ -n "$name" ] || name=$(basename "$(readlink -f "$src")")
	[ -r "/sys/class/block/$name/stat" ] && echo "/sys/class/block/$name/stat" || echo ""
}
sectors_written() { # $1 stat file; prints bytes written so far
	[ -n "$1" ] || { echo 0; return; }
	awk '{printf "%.0f\n", $7 * 512}' "$1"
}
settle_disk() { sync -f "$MNT" 2>/dev/null || sync; sleep 1; }

io_write_bytes() { awk '/^write_bytes:/ {print $2}' "/proc/$1/io" 2>/dev/null || echo 0; }

# ---------------------------------------------------------------- load
# run_load NAME PORT: runs smtp-source, sets LOAD_SECS to its wall time. It
# runs in the background so that INT/TERM reach the trap at once (bash defers
# traps until a foreground child exits).
run_load() {
	local name=$1 port=$2 t0 t1 rc
	t0=$(date +%s.%N)
	timeout 900 /usr/sbin/smtp-source -d -s "$SESSIONS" -m "$MSGS" -l "$MSG_BYTES" \
		-M bench.example -f sender@bench.example -t rcpt@relay.example \
		"127.0.0.1:$port" >"$WORK/smtp-source.$name.out" 2>"$WORK/smtp-source.$name.err" &
	LOADPID=$!
	rc=0
	wait "$LOADPID" || rc=$?
	LOADPID=
	t1=$(date +%s.%N)
	[ $rc -eq 0 ] || die "smtp-source against $name exited $rc: $(tail -n 3 "$WORK/smtp-source.$name.err")"
	LOAD_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
}

DEAD_PORT=$(pick_port)   # the unreachable smarthost / relayhost
setup_disk
STAT=$(dev_stat_file "$MNT")
[ -n "$STAT" ] || log "WARNING: no block device found for $MNT: device bytes not measured"

# ================================================================ mxbox
log "building mxbox"
(cd "${MXBOX_SRC:-$REPO}" && go build -trimpath -o "$WORK/mxbox" ./firmware/cmd/mxbox)
MXCMD=("$WORK/mxbox" serve)
MX_PORT=$(pick_port)
MXCFG=$WORK/mxbox.toml
cat >"$MXCFG" <<EOF
hostname = "mxbox.bench.example"
data_dir = "$MNT/mxbox"
log_level = "info"

[smtp]
listen = "127.0.0.1:$MX_PORT"
submission_listen = ""
relay_networks = ["127.0.0.0/8"]

[delivery]
smarthosts = ["127.0.0.1:$DEAD_PORT"]

[dns]
listen = ""

[web]
listen = ""
EOF
"$WORK/mxbox" config check "$MXCFG" >/dev/null || die "mxbox rejects the benchmark config"

log "starting mxbox on 127.0.0.1:$MX_PORT (smarthost 127.0.0.1:$DEAD_PORT, unreachable)"
# The log goes through a pipe to cat, so mxbox's own write_bytes count only
# its spool (cat writes the log file).
"${MXCMD[@]}" -config "$MXCFG" 2> >(exec cat >"$WORK/mxbox.log") &
MXPID=$!
for _ in $(seq 150); do
	grep -q 'mxbox started' "$WORK/mxbox.log" 2>/dev/null && break
	kill -0 "$MXPID" 2>/dev/null || die "mxbox exited at start"
	sleep 0.1
done
grep -q "service=smtp addr=127.0.0.1:$MX_PORT" "$WORK/mxbox.log" || die "mxbox did not report its smtp listener"

settle_disk
mx_dev0=$(sectors_written "$STAT")
mx_io0=$(io_write_bytes "$MXPID")
# Peak of each part of mxbox's RSS (VmHWM has only the total): anonymous
# memory (Go heap, Badger's memtables and caches) and file pages mapped by
# Badger's mmap'd value-log, WAL and table files (page cache, reclaimable).
(
	trap 'exit 0' TERM
	pa=0 pf=0
	while [ -r "/proc/$MXPID/status" ]; do
		read -r a f < <(awk '/^RssAnon:/ {a = $2} /^RssFile:/ {f = $2} END {print a + 0, f + 0}' "/proc/$MXPID/status" 2>/dev/null || echo "0 0")
		[ "$a" -gt "$pa" ] && pa=$a
		[ "$f" -gt "$pf" ] && pf=$f
		echo "$pa $pf" >"$WORK/rss-peaks"
		sleep 0.2
	done
) &
SAMPLER=$!
log "mxbox: sending $MSGS x $MSG_BYTES B over $SESSIONS sessions"
run_load mxbox "$MX_PORT"
mx_secs=$LOAD_SECS
mx_io1=$(io_write_bytes "$MXPID")
settle_disk
mx_dev1=$(sectors_written "$STAT")
mx_hwm_kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$MXPID/status")
mx_rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$MXPID/status")
kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null || true
SAMPLER=
read -r mx_anon_peak_kb mx_file_peak_kb <"$WORK/rss-peaks" || { mx_anon_peak_kb=0 mx_file_peak_kb=0; }
mx_rss_detail=$(awk '/^Rss(Anon|File|Shmem):/ {printf "%s %.1f MB  ", $1, $2 / 1024}' "/proc/$MXPID/status")
# Queue check through the daemon's admin API: the count on the summary line
# ("-- ... N messages, ...") and the number of listed messages (rows between
# the header and the summary).
"$WORK/mxbox" queue list -config "$MXCFG" >"$WORK/mxbox-queue.txt" || die "mxbox queue list failed"
mx_queued=$(awk '/^-- / {for (i = 1; i < NF; i++) if ($(i + 1) ~ /^messages/) q = $i} END {print q + 0}' "$WORK/mxbox-queue.txt")
mx_listed=$(awk 'NR > 1 && !/^-- / {n++} END {print n + 0}' "$WORK/mxbox-queue.txt")
kill -TERM "$MXPID"
for _ in $(seq 150); do kill -0 "$MXPID" 2>/dev/null || break; sleep 0.2; done
kill -0 "$MXPID" 2>/dev/null && die "mxbox did not stop on SIGTERM within 30 s"
wait "$MXPID" 2>/dev/null || true
MXPID=
mx_spool_du=$(du -sk "$MNT/mxbox/spool" | awk '{print $1}')

# ================================================================ Postfix
PF_PORT=$(pick_port)
PFQ=$MNT/postfix/queue
PFD=$MNT/postfix/data
. "$REPO/test/bench/lib/postfix.sh"
pf_write_config "$PFCONF" "$PFQ" "$PFD" "$PF_PORT" "[127.0.0.1]:$DEAD_PORT" "$WORK"

log "starting private Postfix on 127.0.0.1:$PF_PORT (relayhost [127.0.0.1]:$DEAD_PORT, unreachable)"
PF_STARTED=1
/usr/sbin/postfix -c "$PFCONF" start >"$WORK/postfix-start.log" 2>&1 ||
	die "postfix -c $PFCONF start failed: $(tail -n 5 "$WORK/postfix-start.log")"
for _ in $(seq 100); do
	[ -s "$PFQ/pid/master.pid" ] && PF_MASTER=$(tr -dc 0-9 <"$PFQ/pid/master.pid") && [ -n "$PF_MASTER" ] &&
		(exec 3<>"/dev/tcp/127.0.0.1/$PF_PORT") 2>/dev/null && break
	sleep 0.1
done
[ -n "$PF_MASTER" ] && kill -0 "$PF_MASTER" || die "private Postfix did not start (see $WORK/postfix.log)"

# write_bytes of our Postfix: master's /proc/PID/io includes its reaped
# children; add the live ones. postlogd is left out: it writes the log file,
# which is not on the spool filesystem (mxbox's log is left out the same way).
pf_io() {
	local sum pid comm
	sum=$(io_write_bytes "$PF_MASTER")
	for pid in $(pgrep -P "$PF_MASTER"); do
		comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
		[ "$comm" = postlogd ] && continue
		sum=$((sum + $(io_write_bytes "$pid")))
	done
	echo "$sum"
}
pf_postlogd_io() {
	local pid
	pid=$(pgrep -P "$PF_MASTER" -x postlogd | head -1)
	[ -n "$pid" ] && io_write_bytes "$pid" || echo 0
}
pf_queue_files() { find "$PFQ/incoming" "$PFQ/active" "$PFQ/deferred" "$PFQ/hold" "$PFQ/maildrop" -type f 2>/dev/null | wc -l; }

settle_disk
pf_dev0=$(sectors_written "$STAT")
pf_io0=$(pf_io)
pf_log0=$(pf_postlogd_io)
log "Postfix: sending $MSGS x $MSG_BYTES B over $SESSIONS sessions"
run_load postfix "$PF_PORT"
pf_secs=$LOAD_SECS
pf_io1=$(pf_io)
pf_log1=$(pf_postlogd_io)
settle_disk
pf_dev1=$(sectors_written "$STAT")
pf_files=$(pf_queue_files)
pf_postqueue=$(/usr/sbin/postqueue -c "$PFCONF" -p 2>/dev/null | tail -n 1 | awk '/Requests/ {print $(NF-1)}')
# Postfix is many processes sharing libraries: sum their PSS, not their RSS.
pf_pss_kb=0
for pid in "$PF_MASTER" $(pgrep -P "$PF_MASTER"); do
	pf_pss_kb=$((pf_pss_kb + $(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)))
done
/usr/sbin/postfix -c "$PFCONF" stop >/dev/null 2>&1 || true
for _ in $(seq 100); do kill -0 "$PF_MASTER" 2>/dev/null || break; sleep 0.2; done
PF_STARTED=
pf_queue_du=$(du -sk "$PFQ" | awk '{print $1}')

# ================================================================ report
f() { awk "BEGIN {printf \"$1\", ($2)}"; }
mx_rate=$(f %.0f "$MSGS / $mx_secs")
pf_rate=$(f %.0f "$MSGS / $pf_secs")
ratio=$(f %.2f "($MSGS / $mx_secs) / ($MSGS / $pf_secs)")
mx_rss_mb=$(f %.1f "$mx_hwm_kb / 1024")
mx_io_per=$(f %.0f "($mx_io1 - $mx_io0) / $MSGS")
pf_io_per=$(f %.0f "($pf_io1 - $pf_io0) / $MSGS")
if [ -n "$STAT" ]; then
	mx_dev_per=$(f %.0f "($mx_dev1 - $mx_dev0) / $MSGS")
	pf_dev_per=$(f %.0f "($pf_dev1 - $pf_dev0) / $MSGS")
else
	mx_dev_per=n/a pf_dev_per=n/a
fi
verdict() { if [ "$1" = 1 ]; then echo met; else echo MISSED; fi; }
ok_ratio=$(f %d "$ratio >= $TARGET_RATIO")
ok_rss=$(f %d "$mx_hwm_kb <= $TARGET_RSS_MB * 1024")
ok_write=$(f %d "$mx_io_per <= $TARGET_WRITE_KB * 1024")

cat <<EOF

== SMTP acceptance benchmark: $MSGS messages x $MSG_BYTES B payload, $SESSIONS concurrent sessions, fsync on
host:      $(nproc) cores, $(uname -r), $(/usr/sbin/postconf -h mail_version 2>/dev/null | sed 's/^/Postfix /'), $(go version | awk '{print $3}')
spool fs:  $DISK_NOTE
load:      smtp-source -d -s $SESSIONS -m $MSGS -l $MSG_BYTES 127.0.0.1:PORT

                               mxbox        Postfix
  wall time (s)          $(printf '%12s %14s' "$mx_secs" "$pf_secs")
  msg/s                  $(printf '%12s %14s' "$mx_rate" "$pf_rate")
  queued after run       $(printf '%12s %14s' "$mx_queued" "$pf_files")   (mxbox: stats; Postfix: queue files)
  queued, other count    $(printf '%12s %14s' "$mx_listed" "${pf_postqueue:-n/a}")   (mxbox: queue list; Postfix: postqueue -p)
  device B written/msg   $(printf '%12s %14s' "$mx_dev_per" "$pf_dev_per")   (block device sectors x 512, after syncfs)
  process write_bytes/msg$(printf '%12s %14s' "$mx_io_per" "$pf_io_per")   (/proc/PID/io; Postfix: all its processes but postlogd)
  memory (MB)            $(printf "%12s %14s" "$mx_rss_mb" "$(f %.1f "$pf_pss_kb / 1024")")   (mxbox: peak RSS, VmHWM; Postfix: PSS summed over its processes at the end)
  spool size (KB, du)    $(printf '%12s %14s' "$mx_spool_du" "$pf_queue_du")

  mxbox/Postfix rate ratio: $ratio
  Postfix log writer (postlogd) write_bytes/msg: $(f %.0f "($pf_log1 - $pf_log0) / $MSGS") (not counted above)
  mxbox VmRSS at end: $(f %.1f "$mx_rss_kb / 1024") MB ($mx_rss_detail)
  mxbox peak RssAnon $(f %.1f "$mx_anon_peak_kb / 1024") MB, peak RssFile $(f %.1f "$mx_file_peak_kb / 1024") MB (sampled every 0.2 s; RssFile = Badger's mmap'd files)

Targets (issue 2):
  rate >= ${TARGET_RATIO}x Postfix           $(printf '%-8s' "$ratio") $(verdict "$ok_ratio")
  mxbox peak RSS <= ${TARGET_RSS_MB} MB       $(printf '%-8s' "$mx_rss_mb") $(verdict "$ok_rss")
  written/msg <= ${TARGET_WRITE_KB} KB (write_bytes)  $(printf '%-8s' "$mx_io_per") $(verdict "$ok_write")
EOF

# A count that is off makes the run suspect: say so in the summary itself.
[ "$mx_queued" = "$MSGS" ] && [ "$mx_listed" = "$MSGS" ] ||
	echo "WARNING: mxbox queue holds $mx_queued (listed $mx_listed) messages, expected $MSGS"
[ "$pf_files" = "$MSGS" ] || echo "WARNING: Postfix has $pf_files queue files, expected $MSGS"
