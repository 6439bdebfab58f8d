#!/usr/bin/env bash
# g8-ac under floods (issue 16), each figure beside the same controller
# quiet in the same run, median of ACFLOOD_RUNS runs (default 3):
#  - pending-node flood: 150 IPv4 sources (127.16/16) and 150 addresses of
#    one IPv6 /64, round after round, each request claiming a new machine
#    (bench/acload flood), 130 requests/s together (issue 16's attack:
#    3,000 in 23 s), while an enrolled node heartbeats every 200 ms
#    (bench/acload heartbeats: p50/p95 latency) and an operator runs
#    `g8-ac node list` (time of one run);
#  - one node's certificate hammering the events endpoint (one connection
#    posting 1000-event batches; bench/acload hammer), while another node
#    heartbeats: its latency, and the hammering node's accepted events/s.
# Everything runs in a private network namespace (root: unshare -n), where
# the /64 is made local. The load generators run on the same (shared)
# machine as the controller: their CPU counts against it too. Its load
# average is printed.
# Prints markdown rows: | benchmark | g8 | baseline | ratio | target |
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
BIN=${BIN:-$PWD/bin}
RUNS=${ACFLOOD_RUNS:-3}
[ -x "$BIN/g8-ac" ] || { mkdir -p "$BIN"; go build -o "$BIN/" ./cmd/g8-ac; }
if [ "$(id -u)" != 0 ]; then
	echo "| bench/acflood.sh | skipped: needs root (a network namespace) | | | |"
	exit 0
fi
if [ -z "${ACFLOOD_IN_NS:-}" ]; then
	exec env ACFLOOD_IN_NS=1 unshare -n bash "$0" "$@"
fi
ip link set lo up
ip -6 route add local 2001:db8:16::/64 dev lo
sysctl -qw net.ipv6.ip_nonlocal_bind=1

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
go build -o "$tmp/acload" ./bench/acload
ac=$BIN/g8-ac
load=$(cut -d' ' -f1 /proc/loadavg)

# fig FILE KEY prints a figure of acload's "key value" output.
fig() { awk -v k="$2" '$1==k{print $2}' "$1"; }
# listtime prints the seconds one `g8-ac node list` takes.
listtime() {
	local s e
	s=$(date +%s.%N); "$ac" node list --data "$1" >/dev/null; e=$(date +%s.%N)
	awk -v s="$s" -v e="$e" 'BEGIN{printf "%.3f\n", e-s}'
}
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

for run in $(seq "$RUNS"); do
	d=$tmp/ac$run
	"$ac" init --data "$d" --name 127.0.0.1,::1 >/dev/null
	"$ac" ca --data "$d" >"$tmp/ca.pem"
	"$ac" node add --data "$d" --mac 52:54:00:16:00:01 --approve >/dev/null
	"$ac" node add --data "$d" --mac 52:54:00:16:00:02 --approve >/dev/null
	"$ac" serve --data "$d" --listen "[::]:8443" 2>"$tmp/ac$run.log" &
	pids+=($!)
	for _ in $(seq 100); do grep -q msg=serving "$tmp/ac$run.log" && break; sleep 0.1; done
	url=https://127.0.0.1:8443
	mkdir -p "$tmp/n1" "$tmp/n2"
	"$tmp/acload" enrol --url $url --ca "$tmp/ca.pem" --mac 52:54:00:16:00:01 --out "$tmp/n1"
	"$tmp/acload" enrol --url $url --ca "$tmp/ca.pem" --mac 52:54:00:16:00:02 --out "$tmp/n2"
	hb() { "$tmp/acload" heartbeats --url $url --ca "$tmp/ca.pem" --cert "$tmp/n1/node.pem" --key "$tmp/n1/node.key" --duration 8s; }

	# Quiet.
	hb >"$tmp/quiet$run"
	for _ in 1 2 3; do listtime "$d"; done | median >"$tmp/list-quiet$run"

	# Pending-node flood: IPv4 and IPv6 sources at once.
	"$tmp/acload" flood --url $url --ca "$tmp/ca.pem" --v4 127.16.0.0/16 --sources 150 --requests 10 --rate 65 --duration 12s >"$tmp/flood4-$run" &
	f4=$!
	"$tmp/acload" flood --url "https://[::1]:8443" --ca "$tmp/ca.pem" --v4 "" --v6 2001:db8:16::/64 --sources 150 --requests 10 --rate 65 --duration 12s >"$tmp/flood6-$run" &
	f6=$!
	sleep 1
	hb >"$tmp/flood$run"
	for _ in 1 2 3; do listtime "$d"; done | median >"$tmp/list-flood$run"
	wait $f4 $f6
	"$ac" node list --data "$d" --json | grep -o '"state": *"pending"' | wc -l >"$tmp/pending$run"

	# One node hammering the events endpoint, the other heartbeating.
	"$tmp/acload" hammer --url $url --ca "$tmp/ca.pem" --cert "$tmp/n2/node.pem" --key "$tmp/n2/node.key" --connections 1 --duration 10s >"$tmp/hammer$run" &
	h=$!
	sleep 1
	hb >"$tmp/hammerhb$run"
	wait $h
	"$ac" events --data "$d" 52:54:00:16:00:02 | wc -l >"$tmp/held$run"
	kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
done

# med PREFIX KEY: the median over the runs of a figure.
med() { for run in $(seq "$RUNS"); do fig "$tmp/$1$run" "$2"; done | median; }
medf() { for run in $(seq "$RUNS"); do cat "$tmp/$1$run"; done | median; }
row() { awk -v n="$1" -v g="$2" -v b="$3" -v u="$4" -v t="$5" 'BEGIN{printf "| %s | %s %s | %s %s | %.2f | %s |\n", n, g, u, b, u, (b>0 ? g/b : 0), t}'; }
for k in p50_ms p95_ms; do
	row "g8-ac heartbeat $k during a pending-node flood (300 sources, IPv4 + one IPv6 /64; load $load) vs quiet" "$(med flood "$k")" "$(med quiet "$k")" ms "≤ 3 (flood/quiet)"
done
row "g8-ac node list during the flood vs quiet (median of $RUNS)" "$(medf list-flood)" "$(medf list-quiet)" s "≤ 3"
for run in $(seq "$RUNS"); do
	s=0; for f in flood4-$run flood6-$run; do s=$((s + $(fig "$tmp/$f" sent))); done; echo $s
done | median >"$tmp/sent"
echo "| pending nodes after 12 s of flood ($(cat "$tmp/sent") unlock requests claiming new machines; median of $RUNS) | $(medf pending) | budget 100 + 2/s = 124 | | ≤ budget |"
for k in p50_ms p95_ms; do
	row "g8-ac heartbeat $k of a node while another hammers the events endpoint vs quiet" "$(med hammerhb "$k")" "$(med quiet "$k")" ms "≤ 3 (hammered/quiet)"
done
echo "| events stored per second by one node hammering over one connection (1000-event batches; median of $RUNS) | $(med hammer events_per_s) | issue 16.2 before: ~37,000 (100k in 2.7 s) | | bounded by --node-rate |"
echo "| events the hammering node holds afterwards | $(medf held) | --node-events 10000 | | = quota |"
