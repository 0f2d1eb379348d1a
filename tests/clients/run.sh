#!/usr/bin/env bash
# Runs the unmodified client libraries (openai, huggingface_hub), curl and the README's client
# examples against the real server binary with the bundled tiny model.
#
#   tests/clients/run.sh              # builds nothing: needs target/release/flamingo-server
#   SERVER_BIN=/path/to/flamingo-server tests/clients/run.sh
#   PYTEST_ARGS="-k hf" tests/clients/run.sh
#
# The virtual environment lives in target/clients-venv (git-ignored) and is reused while
# requirements.txt is unchanged. Everything it starts is stopped on exit; bounded in time.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SERVER_BIN=${SERVER_BIN:-$ROOT/target/release/flamingo-server}
VENV=$ROOT/target/clients-venv
LIMIT_S=${LIMIT_S:-600}

[ -x "$SERVER_BIN" ] || { echo "no server binary at $SERVER_BIN (cargo build --release -p flamingo-server)" >&2; exit 2; }
command -v curl >/dev/null || { echo "curl is needed" >&2; exit 2; }

stamp=$(sha256sum tests/clients/requirements.txt | cut -c1-16)
if [ ! -f "$VENV/.stamp-$stamp" ]; then
  echo "== clients: venv + pinned clients"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  timeout 300 "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/clients/requirements.txt
  touch "$VENV/.stamp-$stamp"
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# start NAME [ENV=VALUE...]: the server on a port of its choosing; sets URL_<NAME>.
start() {
  local name=$1; shift
  local log=$WORK/$name.log
  env $(env | grep -o '^FLAMINGO_[A-Z_]*' | sed 's/^/-u /') RUST_LOG=info "$@" \
    "$SERVER_BIN" --host 127.0.0.1 --port 0 >/dev/null 2>"$log" &
  PIDS+=($!)
  local addr="" i
  for i in $(seq 1 300); do
    [ -f "$log" ] && addr=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -o 'listening.*addr=[0-9.]*:[0-9]*' | grep -o '[0-9.]*:[0-9]*$' | head -1 || true)
    [ -n "$addr" ] && break
    kill -0 "${PIDS[-1]}" 2>/dev/null || { echo "server $name exited:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$addr" ] || { echo "server $name did not listen in 30 s:" >&2; cat "$log" >&2; exit 1; }
  for i in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/ready")" = 200 ] && break
    sleep 0.1
  done
  printf -v "URL_$name" 'http://%s' "$addr"
  echo "== clients: server $name at http://$addr"
}

start open
start keyed FLAMINGO_SERVER_API_KEYS='["k1"]'

echo "== clients: pytest"
status=0
FLAMINGO_URL=$URL_open FLAMINGO_KEYED_URL=$URL_keyed FLAMINGO_KEY=k1 \
  timeout "$LIMIT_S" "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/clients ${PYTEST_ARGS:-} || status=$?

# The spec against the server with a tool we did not write: no 5xx, every response and stream
# event matches its documented schema, every request the schema refuses is refused. Not checked:
# that every schema-valid request is accepted (positive_data_acceptance), since some are refused
# for what no schema states: an image's base64 content, the model's vocabulary and context,
# best_of equal to n, or an integer sent as 4.0.
echo "== clients: schemathesis"
(cd "$WORK" && timeout 300 "$VENV/bin/schemathesis" run "$ROOT/openapi.yaml" -u "$URL_open" \
  -n 50 --generation-deterministic --exclude-checks positive_data_acceptance \
  --request-timeout 30 --suppress-health-check all) || status=1

if [ $status -ne 0 ]; then
  for f in "$WORK"/*.log; do echo "--- $f (tail)"; tail -n 30 "$f"; done
fi
if grep -l "panicked" "$WORK"/*.log >/dev/null 2>&1; then
  echo "a server panicked:" >&2; grep -h -A3 panicked "$WORK"/*.log >&2; status=1
fi
exit $status
