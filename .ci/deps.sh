#!/usr/bin/env bash
# Installs what the tests and benchmarks need: Go modules, and Debian packages
# (swaks, postfix for smtp-source/smtp-sink, unbound, dnsmasq, dnsperf) when
# run as root. As a normal user it says what is missing instead.
set -euo pipefail
cd "$(dirname "$0")/.."
go mod download
need=()
for pair in qemu-arm-static:qemu-user-static swaks:swaks smtp-source:postfix unbound:unbound dnsmasq:dnsmasq-base dnsperf:dnsperf; do
	cmd=${pair%%:*} pkg=${pair##*:}
	command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
	echo "missing Debian packages: ${need[*]}" >&2
	echo "run as root, or: sudo apt-get install -y ${need[*]}" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# postfix asks debconf questions at install; answer them so the install is
# unattended and the system instance does nothing (tests run their own).
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
