#!/usr/bin/env bash
# g8-fs restart under a reader: the slowest read a reader in a loop sees
# across a restart of g8-fs (killed, started again with its FUSE connection
# from the fd store, tools/fsrestartbench) and across a crash (started
# again after g8-fs.service's RestartSec=, as Restart=always does), beside
# the slowest read of the same reader over as long a window without a
# restart, median of FSRESTART_BENCH_RUNS (default 5) runs. About 30 s.
# Prints markdown rows: | benchmark | g8 | baseline | ratio | target |
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
if [ "$(id -u)" != 0 ]; then
	echo "| fs restart | skipped: needs root | | | |"
	exit 0
fi
BIN=${BIN:-$PWD/bin}
[ -x "$BIN/g8-fs" ] || { mkdir -p "$BIN"; CGO_ENABLED=0 go build -o "$BIN/" ./cmd/g8-fs; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/fsrestartbench" ./tools/fsrestartbench
# systemd's time span: a bare number is seconds.
restart_sec=$(sed -n 's/^RestartSec=//p' units/g8-fs.service)
[[ $restart_sec == *[a-z] ]] || restart_sec+=s
"$tmp/fsrestartbench" --g8-fs "$BIN/g8-fs" --runs "${FSRESTART_BENCH_RUNS:-5}" --restart-sec "$restart_sec"
