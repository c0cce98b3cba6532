# Shared by the benchmark scripts: writes the config of a private Postfix
# instance (its own config, queue and data directories; the system instance in
# /etc/postfix and /var/spool/postfix is never touched), listening only on
# 127.0.0.1. Source this file, then:
#
#   pf_write_config CONF QUEUE DATA PORT RELAYHOST LOGDIR [EXTRA_MAIN_CF]
#
# RELAYHOST is e.g. "[127.0.0.1]:2525" (a loopback address, always).
# EXTRA_MAIN_CF is appended verbatim to main.cf (e.g. "defer_transports = smtp").
# Services run with chroot off: a private queue directory has no chroot jail.
pf_write_config() {
	local conf=$1 queue=$2 data=$3 port=$4 relayhost=$5 logdir=$6 extra=${7:-}
	mkdir -p "$conf" "$queue" "$data"
	chown postfix "$data"
	cat >"$conf/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $queue
data_directory = $data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.example
mydomain = bench.example
myorigin = \$myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = $relayhost
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_tls_security_level = none
smtp_tls_security_level = none
# mxbox does no client DNS lookups either.
smtpd_peername_lookup = no
biff = no
maillog_file = $logdir/postfix.log
maillog_file_prefixes = $logdir
$extra
EOF
	cat >"$conf/master.cf" <<EOF
127.0.0.1:$port inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
}
