#!/bin/sh
# Starts the compose file's Postgres with client rules written from the two
# networks' subnets: Norn's roles only from the internal network; an app's
# role (named like its database, `samerole`) only to its own database; the
# server's own databases and Norn's never from the app network.
set -eu
: "${NORN_INTERNAL_SUBNET:?}" "${NORN_APPS_SUBNET:?}"
# NORN_HBA_FILE and --rules-only: .ci/compose-db-rules.sh checks the rules
# against a real server without this image.
hba=${NORN_HBA_FILE:-/var/lib/postgresql/norn_hba.conf}
cat > "$hba" <<HBA
local   all       all                                          trust
host    all       norn,norn_provisioner  $NORN_INTERNAL_SUBNET  scram-sha-256
host    all       norn,norn_provisioner  all                    reject
host    norn,postgres,template0,template1  all  all             reject
host    samerole  all                    $NORN_INTERNAL_SUBNET  scram-sha-256
host    samerole  all                    $NORN_APPS_SUBNET      scram-sha-256
host    all       all                    all                    reject
HBA
chmod 644 "$hba"
[ "${1:-}" != --rules-only ] || exit 0
exec docker-entrypoint.sh postgres -c hba_file="$hba" -c password_encryption=scram-sha-256
