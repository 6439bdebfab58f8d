#!/usr/bin/env bash
# g8-sshd beside Debian's OpenSSH sshd, both on loopback, in one run:
# session setup (`ssh host true`, median of N, the two servers interleaved),
# `cat` of a 1 GiB file of random data to /dev/null, and scp of the same
# file down and up, each with the client's default cipher and with
# aes128-gcm@openssh.com. Both servers get their own ed25519 host key, the
# same authorized_keys, public key only, in-process
# SFTP (OpenSSH: internal-sftp). Prints markdown rows:
# | benchmark | g8 | baseline | ratio | target |
# Needs root (OpenSSH's sshd must start as root). Tunables: SSHD_BENCH_N
# (setup samples, default 20), SSHD_BENCH_MB (file size, default 1024),
# SSHD_BENCH_RUNS (transfers per row, g8 and OpenSSH interleaved; the
# median is printed; default 5). The "default cipher" rows name what the
# OpenSSH client negotiated with each server, and the load average before
# and after goes to stderr: on a shared machine the figures only mean
# something beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

if [ "$(id -u)" != 0 ]; then
	echo "| sshd | skipped: needs root | | | |"
	exit 0
fi
N=${SSHD_BENCH_N:-20}
MB=${SSHD_BENCH_MB:-1024}
RUNS=${SSHD_BENCH_RUNS:-5}

work=$(mktemp -d /tmp/g8-sshd-bench.XXXXXX)
chmod 755 "$work"
# Session setup is timed as a throwaway user whose shell is /bin/sh: root's
# startup files on the bench machine (bash sources ~/.bashrc for ssh
# commands) would otherwise dominate both servers' numbers alike.
user=g8bench$$
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	userdel "$user" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/home"
useradd -M -d "$work/home" -s /bin/sh -p '*' "$user"
chown "$user" "$work/home"

sshd_bin=${BIN:+$BIN/g8-sshd}
if [ -z "$sshd_bin" ] || [ ! -x "$sshd_bin" ]; then
	go build -o "$work/g8-sshd" ./cmd/g8-sshd
	sshd_bin=$work/g8-sshd
fi

mkdir -p "$work/g8" "$work/openssh" "$work/run" /run/sshd
ssh-keygen -q -t ed25519 -N '' -C g8 -f "$work/g8/ssh_host_ed25519_key"
ssh-keygen -q -t ed25519 -N '' -C openssh -f "$work/openssh/ssh_host_ed25519_key"
ssh-keygen -q -t ed25519 -N '' -C bench -f "$work/id"
cp "$work/id.pub" "$work/g8/authorized_keys"
cp "$work/id.pub" "$work/openssh/authorized_keys"

"$sshd_bin" --ssh-dir "$work/g8" --listen 127.0.0.1:0 --state-dir "$work/run" --users root,"$user" 2>"$work/g8.log" &
pids+=($!)

free_port() { # a loopback port nothing listens on
	local p
	while :; do
		p=$((20000 + RANDOM % 40000))
		ss -Hltn "sport = :$p" | grep -q . || { echo "$p"; return; }
	done
}
oport=$(free_port)
cat >"$work/openssh/config" <<EOF
Port $oport
ListenAddress 127.0.0.1
HostKey $work/openssh/ssh_host_ed25519_key
AuthorizedKeysFile $work/openssh/authorized_keys
PermitRootLogin prohibit-password
AllowUsers root $user
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
Subsystem sftp internal-sftp
EOF
/usr/sbin/sshd -D -e -f "$work/openssh/config" 2>"$work/openssh.log" &
pids+=($!)

for _ in $(seq 100); do
	[ -s "$work/run/sshd.json" ] && ss -ltn | grep -q "127.0.0.1:$oport " && break
	sleep 0.1
done
gport=$(grep -o '"127\.0\.0\.1:[0-9]*"' "$work/run/sshd.json" | head -1 | tr -dc 0-9. | sed 's/^127\.0\.0\.1//')
{
	echo "[127.0.0.1]:$gport $(cut -d' ' -f1,2 "$work/g8/ssh_host_ed25519_key.pub")"
	echo "[127.0.0.1]:$oport $(cut -d' ' -f1,2 "$work/openssh/ssh_host_ed25519_key.pub")"
} >"$work/known_hosts"

opts=(-F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$work/known_hosts"
	-o IdentitiesOnly=yes -o LogLevel=ERROR -i "$work/id")
now() { date +%s%N; }
# ms PORT: one `ssh true`, in milliseconds
ms() {
	local s e
	s=$(now)
	ssh "${opts[@]}" -p "$1" "$user@127.0.0.1" true
	e=$(now)
	echo $(((e - s) / 1000000))
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
row() { # name g8 baseline unit target higher-is-better
	awk -v n="$1" -v g="$2" -v b="$3" -v u="$4" -v t="$5" 'BEGIN {
		printf "| %s | %.1f %s | %.1f %s | %.2fx | %s |\n", n, g, u, b, u, (b > 0 ? g / b : 0), t }'
}

ms "$gport" >/dev/null # warm both (page cache)
ms "$oport" >/dev/null
: >"$work/g8.ms"
: >"$work/openssh.ms"
for _ in $(seq "$N"); do
	ms "$gport" >>"$work/g8.ms"
	ms "$oport" >>"$work/openssh.ms"
done
row "sshd: session setup (a process per connection), ssh host true as a /bin/sh user (median of $N)" "$(median <"$work/g8.ms")" "$(median <"$work/openssh.ms")" ms "<= 0.5x"

head -c "${MB}M" /dev/urandom >"$work/blob"
# mbps SECONDS-START: throughput of MB megabytes since start
mbps() { awk -v s="$1" -v e="$(now)" -v mb="$MB" 'BEGIN { printf "%.1f", mb * 1048576 / 1e6 / ((e - s) / 1e9) }'; }
cat_rate() { # PORT [cipher opts]
	local port=$1 s
	shift
	s=$(now)
	ssh "${opts[@]}" "$@" -p "$port" root@127.0.0.1 cat "$work/blob" >/dev/null
	mbps "$s"
}
scp_down() {
	local port=$1 s
	shift
	s=$(now)
	# scp cannot truncate /dev/null and says so; the copy is complete.
	scp -q "${opts[@]}" "$@" -P "$port" "root@127.0.0.1:$work/blob" /dev/null 2>&1 | grep -v 'ftruncate "/dev/null"' >&2 || true
	mbps "$s"
}
scp_up() {
	local port=$1 s
	shift
	s=$(now)
	scp -q "${opts[@]}" "$@" -P "$port" "$work/blob" "root@127.0.0.1:$work/blob.up"
	mbps "$s"
	rm -f "$work/blob.up"
}
# cipher PORT [cipher opts]: the cipher and MAC the client negotiates
negotiated_cipher() {
	local port=$1
	shift
	ssh -v "${opts[@]}" "$@" -p "$port" root@127.0.0.1 true 2>&1 |
		sed -n 's/.*kex: server->client cipher: \([^ ]*\) MAC: \([^ ]*\).*/\1 \2/p' | head -1 |
		sed 's/@openssh.com//g; s/ <implicit>//; s/ / + /'
}
echo "sshd bench: load average $(cut -d' ' -f1-3 /proc/loadavg) before the transfers" >&2
gcm=(-c aes128-gcm@openssh.com)
negotiated="g8-sshd $(negotiated_cipher "$gport"), OpenSSH $(negotiated_cipher "$oport")"
size="$((MB / 1024)) GiB"
[ "$MB" -lt 1024 ] && size="$MB MiB"
for kind in cat_rate scp_down scp_up; do
	case $kind in
	cat_rate) label="cat $size to /dev/null" ;;
	scp_down) label="scp $size down" ;;
	scp_up) label="scp $size up" ;;
	esac
	for cipher in default aes128-gcm; do
		c=()
		[ "$cipher" = default ] || c=("${gcm[@]}")
		: >"$work/g8.rate"
		: >"$work/openssh.rate"
		for _ in $(seq "$RUNS"); do
			$kind "$gport" "${c[@]}" >>"$work/g8.rate"
			echo >>"$work/g8.rate"
			$kind "$oport" "${c[@]}" >>"$work/openssh.rate"
			echo >>"$work/openssh.rate"
		done
		name=$cipher
		[ "$cipher" = default ] && name="default ($negotiated)"
		row "sshd: $label, $name cipher (MB/s, median of $RUNS)" "$(median <"$work/g8.rate")" "$(median <"$work/openssh.rate")" MB/s ">= 1.0x"
	done
done
echo "sshd bench: load average $(cut -d' ' -f1-3 /proc/loadavg) after" >&2
