#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster for the tests on port ${PGPORT:-55432}:
# trust on loopback (user postgres), and — because app containers reach their
# databases at the app network's gateway — on every address, where only an
# app's own role may log in, with its password, to the database of its name
# (`samerole`); everything else from the network is rejected. initdb refuses to run as root, so as root the
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
cat > "$PGDATA/pg_hba.conf" <<'HBA'
local   all       all                 trust
host    all       all   127.0.0.1/32  trust
host    all       all   ::1/128       trust
host    all       postgres,norn_provisioner  0.0.0.0/0  reject
host    postgres,template0,template1  all    0.0.0.0/0  reject
host    samerole  all   0.0.0.0/0     scram-sha-256
host    all       all   0.0.0.0/0     reject
HBA
# DDL is logged: a test reads server.log to check that no app password
# reaches the server in a statement.
OPTS="-c listen_addresses=0.0.0.0 -p $PGPORT -k /tmp -c max_connections=400 -c log_statement=ddl"
[ "${PG_DURABLE:-0}" = 1 ] || OPTS="$OPTS -c fsync=off -c synchronous_commit=off"
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -o "$OPTS" start >/dev/null
echo "postgres running on 127.0.0.1:$PGPORT"
