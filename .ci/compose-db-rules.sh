#!/usr/bin/env bash
# Checks the client rules docker-compose.yml's Postgres runs with
# (infra/postgres/start.sh) against a real server: the two compose networks
# are stood in for by an address of each subnet on the loopback interface
# (a client connecting to one of them comes from it). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)}
internal=10.213.0.77 apps=10.213.1.77 port=55778
dir=$(mktemp -d)
added=()
cleanup() {
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  for a in "${added[@]}"; do ip addr del "$a/32" dev lo 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
for a in $internal $apps; do
  if ! ip -4 addr show dev lo | grep -q " $a/"; then ip addr add "$a/32" dev lo; added+=("$a"); fi
done
chown postgres: "$dir"
runuser -u postgres -- "$PGBIN/initdb" -D "$dir/data" -U norn --auth=trust >/dev/null
NORN_HBA_FILE="$dir/hba.conf" NORN_INTERNAL_SUBNET=10.213.0.0/24 NORN_APPS_SUBNET=10.213.1.0/24 \
  sh infra/postgres/start.sh --rules-only
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
  -o "-c listen_addresses=0.0.0.0 -p $port -k $dir -c hba_file=$dir/hba.conf" start >/dev/null
sql() { psql -h "$dir" -p $port -U norn -d postgres -v ON_ERROR_STOP=1 -q "$@"; }
sql -c "ALTER ROLE norn PASSWORD 'norn-pw'"
POSTGRES_PASSWORD=norn-pw sql -f infra/postgres/provisioner.sql
sql -c "CREATE DATABASE norn" -c "CREATE ROLE app_a LOGIN PASSWORD 'a-pw'" \
    -c "CREATE DATABASE app_a OWNER app_a" -c "CREATE DATABASE app_b"
fails=0
expect() { # expect ok|refused <from> <role> <password> <database>
  local got=refused
  PGPASSWORD=$4 PGCONNECT_TIMEOUT=5 psql "host=$2 port=$port user=$3 dbname=$5" -Atc 'select 1' >/dev/null 2>&1 && got=ok
  if [ "$got" != "$1" ]; then echo "compose db rules: $3 from $2 to $5: $got, want $1" >&2; fails=1; fi
}
expect ok      $internal norn             norn-pw norn
expect ok      $internal norn_provisioner norn-pw postgres
expect ok      $internal app_a            a-pw    app_a
expect ok      $apps     app_a            a-pw    app_a
expect refused $apps     norn             norn-pw norn
expect refused $apps     norn             norn-pw postgres
expect refused $apps     norn_provisioner norn-pw postgres
expect refused $apps     app_a            a-pw    app_b
expect refused $apps     app_a            a-pw    norn
expect refused $apps     app_a            a-pw    postgres
expect refused 127.0.0.1 app_a            a-pw    app_a
[ $fails = 0 ] && echo "compose db rules: ok"
exit $fails
