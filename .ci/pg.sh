#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster for the tests: 127.0.0.1:${PGPORT:-55432},
# trust auth, user postgres. initdb refuses to run as root, so as root the
# cluster belongs to the `postgres` OS user. PG_DURABLE=1 keeps Postgres'
# default durability (fsync, synchronous_commit) for benchmarks.
set -euo pipefail
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)}
PGPORT=${PGPORT:-55432}
PGDATA=${PGDATA:-/tmp/norn-ci-pg}
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if as_pg "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
  echo "postgres already running on $PGPORT"; exit 0
fi
rm -rf "$PGDATA"
mkdir -p "$PGDATA"
[ "$(id -u)" = 0 ] && chown postgres: "$PGDATA"
as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
OPTS="-h 127.0.0.1 -p $PGPORT -k /tmp -c max_connections=400"
[ "${PG_DURABLE:-0}" = 1 ] || OPTS="$OPTS -c fsync=off -c synchronous_commit=off"
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -o "$OPTS" start >/dev/null
echo "postgres running on 127.0.0.1:$PGPORT"
