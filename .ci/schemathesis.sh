#!/usr/bin/env bash
# Hostile clients: schemathesis (from PyPI) against the API's own OpenAPI
# document, authenticated as admin, on every operation but /ws: no 5xx, and
# every answer fits the document (status codes, content types, schemas).
# The API runs alone (no worker: deploys only queue) on a fresh database of
# the CI cluster; the seed is fixed so that a red run can be replayed.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=4.32.5
VENV=/tmp/norn-tools/schemathesis-$VERSION
PGPORT=${PGPORT:-55432}
BIN=${CARGO_TARGET_DIR:-/tmp/norn-ci-target}/debug/norn-api

if [ ! -x "$VENV/bin/schemathesis" ]; then
  if ! python3 -c "import ensurepip" 2>/dev/null; then
    apt_get=(apt-get); [ "$(id -u)" = 0 ] || apt_get=(sudo apt-get)
    "${apt_get[@]}" install -y -q python3-venv >/dev/null \
      || { "${apt_get[@]}" update -q >/dev/null && "${apt_get[@]}" install -y -q python3-venv >/dev/null; }
  fi
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$VERSION"
fi

db="norn_schemathesis_$$"
psql -q -h 127.0.0.1 -p "$PGPORT" -U postgres -c "CREATE DATABASE $db" >/dev/null
work=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token="schemathesis-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
api_pid=""
cleanup() {
  [ -z "$api_pid" ] || kill "$api_pid" 2>/dev/null || true
  [ -z "$api_pid" ] || wait "$api_pid" 2>/dev/null || true
  psql -q -h 127.0.0.1 -p "$PGPORT" -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# One app registered at start (NORN_APPS_DIR), so the second pass below
# reads real answers: a spec with every part, cron state, previews, secrets.
mkdir -p "$work/apps/fuzzed"
cat >"$work/apps/fuzzed/infraspec.yaml" <<'SPEC'
name: fuzzed
repo: {url: "https://git.example.com/org/fuzzed.git", branch: main, autoDeploy: true}
processes:
  web: {port: 8080, health: {path: /health, timeout: 2s}}
  nightly: {command: "true", schedule: "0 3 * * *", cron: {overlap: replace}}
  echo: {command: cat, function: {timeout: 10s, warm: 1}}
services: {postgres: {database: fuzzed}}
deployPolicy: {timeouts: {build: 10m}}
previews: {enabled: true, ttl: 24h, max: 3}
env: {GREETING: hello}
secrets: [API_KEY]
SPEC

DATABASE_URL="postgres://postgres@127.0.0.1:$PGPORT/$db" \
NORN_SECRET_KEY="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
NORN_API_TOKEN="$token" \
NORN_WEBHOOK_SECRET="schemathesis-webhook-secret" \
NORN_PORT="$port" NORN_INGRESS_PORT=0 \
NORN_APPS_DIR="$work/apps" NORN_WORK_DIR="$work/work" NORN_SNAPSHOTS_DIR="$work/snapshots" \
NORN_NODE_NAME=schemathesis RUST_LOG=warn \
  "$BIN" >"$work/api.log" 2>&1 &
api_pid=$!

deadline=$((SECONDS + 60))
until curl -fs "http://127.0.0.1:$port/api/openapi.json" >/dev/null; do
  if [ $SECONDS -ge $deadline ] || ! kill -0 "$api_pid" 2>/dev/null; then
    echo "ci: the API for schemathesis did not come up:" >&2
    cat "$work/api.log" >&2
    exit 1
  fi
  sleep 0.2
done

checks=not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance
failed() { echo "ci: schemathesis failed ($1); the API's log:" >&2; tail -50 "$work/api.log" >&2; exit 1; }

# Every operation with generated (mostly hostile) input.
"$VENV/bin/schemathesis" run "http://127.0.0.1:$port/api/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks "$checks" --exclude-path /ws \
  --max-examples 30 --seed 1 --request-timeout 20 \
  || failed "every operation"

# The app's own operations with its real name, so answers carry real data
# (its spec, cron state, snapshots list, previews) checked against the schemas.
cat >"$work/schemathesis.toml" <<'TOML'
[parameters]
"path.id" = "fuzzed"
TOML
"$VENV/bin/schemathesis" --config-file "$work/schemathesis.toml" \
  run "http://127.0.0.1:$port/api/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks "$checks" --include-path-regex '^/api/apps' \
  --max-examples 10 --seed 1 --request-timeout 20 \
  || failed "the registered app"
