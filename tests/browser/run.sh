#!/usr/bin/env bash
# Browser test of the web demo: starts flamingo-server, drives the page in headless Chromium.
#
#   tests/browser/run.sh            # real server: target/release/flamingo-server (build it first:
#                                   #   cargo build --release -p flamingo-server)
#   MOCK=1 tests/browser/run.sh     # development only: tests/browser/mock-server.mjs instead
#
# Env: OUT_DIR (screenshots + server log, default target/browser-test), PORT (default: a free one),
#      FLAMINGO_SERVER_BIN (default target/release/flamingo-server), FLAMINGO_SERVER_ARGS (extra
#      arguments), READY_TIMEOUT_S (default 180), CHROMIUM (default /usr/bin/chromium),
#      LONG_MAX_NEW_TOKENS (default 100).
# Needs node >= 20, npm, and Debian's chromium (apt-get install -y chromium).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"

OUT_DIR="${OUT_DIR:-$ROOT/target/browser-test}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
export OUT_DIR

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [[ ! -x "$CHROMIUM" ]]; then
  echo "run.sh: $CHROMIUM not found (apt-get install -y chromium, or set CHROMIUM)" >&2
  exit 2
fi
export CHROMIUM

if [[ ! -f "$HERE/node_modules/playwright-core/package.json" ]]; then
  (cd "$HERE" && npm ci --no-audit --no-fund)
fi

PORT="${PORT:-$(node -e "const s=require('net').createServer();s.listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})")}"
BASE="http://127.0.0.1:$PORT"
SERVER_LOG="$OUT_DIR/server.log"

SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

TEST_ARGS=()
if [[ "${MOCK:-0}" == "1" ]]; then
  echo "run.sh: MOCK=1, using the development mock server (not the real binary)"
  node "$HERE/mock-server.mjs" --host 127.0.0.1 --port "$PORT" >"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  TEST_ARGS+=(--mock)
else
  BIN="${FLAMINGO_SERVER_BIN:-$ROOT/target/release/flamingo-server}"
  if [[ ! -x "$BIN" ]]; then
    echo "run.sh: $BIN not found; build it with: cargo build --release -p flamingo-server" >&2
    exit 2
  fi
  # The tiny random model writes space-less gibberish, which the output filter (rightly) holds
  # back until a word ends, so nothing would stream; the streaming UI is what this test checks.
  # The filter itself is tested end to end in crates/flamingo-server/tests.
  export FLAMINGO_FILTER_MODE="${FLAMINGO_FILTER_MODE:-off}"
  # shellcheck disable=SC2086  # FLAMINGO_SERVER_ARGS is split on purpose
  "$BIN" --host 127.0.0.1 --port "$PORT" ${FLAMINGO_SERVER_ARGS:-} >"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
fi
echo "run.sh: server pid $SERVER_PID on $BASE (log: $SERVER_LOG)"

READY_TIMEOUT_S="${READY_TIMEOUT_S:-180}"
if ! node -e '
  const [base, pid, timeout] = process.argv.slice(1);
  const deadline = Date.now() + Number(timeout) * 1000;
  (async () => {
    for (;;) {
      try { process.kill(Number(pid), 0); } catch { console.error("run.sh: server exited before it was ready"); process.exit(1); }
      try { const r = await fetch(base + "/ready"); if (r.ok) process.exit(0); } catch {}
      if (Date.now() > deadline) { console.error("run.sh: server not ready after " + timeout + " s"); process.exit(1); }
      await new Promise((r) => setTimeout(r, 250));
    }
  })();' "$BASE" "$SERVER_PID" "$READY_TIMEOUT_S"; then
  echo "---- server log (tail) ----" >&2
  tail -n 40 "$SERVER_LOG" >&2 || true
  exit 1
fi
echo "run.sh: server ready"

status=0
node "$HERE/demo.test.mjs" "$BASE" "${TEST_ARGS[@]}" || status=$?
if [[ $status -ne 0 ]]; then
  echo "---- server log (tail) ----" >&2
  tail -n 40 "$SERVER_LOG" >&2 || true
fi
echo "run.sh: screenshots in $OUT_DIR"
exit $status
