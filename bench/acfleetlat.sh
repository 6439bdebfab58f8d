#!/usr/bin/env bash
# Whether a fleet's heartbeats make other requests wait (issue 14.3): one
# g8-ac on its SQLite file, then on a PostgreSQL started here (initdb into
# a temp dir, unix socket only, as bench/controllers.sh), each measured
# quiet (20 simulated nodes) and with ACFLEETLAT_NODES (default 2000)
# simulated nodes heartbeating every 10 s: a new node's first unlock
# (pending), the operator's approval, the approved node's unlock (key and
# certificate), the job round trip; p50 / p99 of each, heartbeating beside
# quiet, in the same run. Identities come from the acfleet cache
# (bench/acfleet.sh). Source: tools/acsessionbench/fleetlat.go. Needs root
# (PostgreSQL runs as the postgres user; without root, SQLite only).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
BIN=${BIN:-$PWD/bin}
[ -x "$BIN/g8-ac" ] || { mkdir -p "$BIN"; go build -o "$BIN/" ./cmd/g8-ac; }
tmp=$(mktemp -d)
PG=/usr/lib/postgresql/15/bin
cleanup() {
	[ -d "$tmp/pg" ] && runuser -u postgres -- "$PG/pg_ctl" -D "$tmp/pg" -m immediate stop >/dev/null 2>&1 || true
	rm -rf "$tmp"
}
trap cleanup EXIT
go build -o "$tmp/acsessionbench" ./tools/acsessionbench
db=()
if [ "$(id -u)" = 0 ] && [ -x "$PG/postgres" ]; then
	chown postgres "$tmp"
	runuser -u postgres -- "$PG/initdb" -D "$tmp/pg" -A trust -U postgres --no-sync >/dev/null
	runuser -u postgres -- "$PG/pg_ctl" -D "$tmp/pg" -o "-k $tmp -p 5432 -c listen_addresses=" -l "$tmp/pg.log" -w start >/dev/null
	runuser -u postgres -- "$PG/psql" -h "$tmp" -p 5432 -U postgres -qc "CREATE DATABASE g8ac" >/dev/null
	db=(--database "postgres://postgres@/g8ac?host=$tmp&port=5432")
else
	echo "| fleet latency, PostgreSQL | skipped: needs root and $PG (make deps) | | | |"
fi
"$tmp/acsessionbench" fleetlat --g8-ac "$BIN/g8-ac" --nodes "${ACFLEETLAT_NODES:-2000}" \
	--cache "${ACFLEET_CACHE:-/var/tmp/g8-acfleet}" "${db[@]}"
