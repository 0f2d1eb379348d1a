#!/usr/bin/env bash
# Proxy run: flamingo-server behind nginx (configured from docker/nginx.conf) on loopback, driven
# by flamingo-loadtest. Fails unless
#   1. no request is lost (no response / reset / timeout / malformed JSON / malformed SSE /
#      stream without its final event) and every answer is a success or a documented error
#      status (400/401/413/422/429/503/504) of the documented shape;
#   2. overload (an open-loop rate >= 2x what the server sustains, sent at >= 2x what the overloaded
#      server serves, against a second server with a
#      tiny queue) is answered with 429/503 + Retry-After, not timeouts;
#   3. the server's RSS after the run is <= 1.1x its RSS after warm-up (both less the bytes its
#      bounded prefix cache holds, from /metrics);
#   4. tokens stream through nginx unbuffered: median time to first token via nginx minus direct
#      is < 5 ms at low load (sequential streams, direct and via nginx alternating in rounds of 4
#      identical requests so that machine noise hits both sides alike; medians of the pooled
#      samples).
#
#   scripts/proxy-run.sh                 # long soak (12,000 requests at concurrency 16)
#   SHORT=1 scripts/proxy-run.sh         # CI form (2,000 requests, about 1-2 minutes)
#
# Environment (all optional):
#   SHORT=1               CI form
#   REQUESTS, CONCURRENCY main run size (default 2000/16 short, 12000/16 soak)
#   SERVER_BIN            default target/release/flamingo-server (built if missing)
#   LOADTEST_BIN          default target/release/flamingo-loadtest (built if missing)
#   SERVER_ARGS           extra flags for the server (default: none = tiny fixture model)
#   SERVER_ENV            environment for both servers (default MALLOC_ARENA_MAX=2, as in the
#                         Docker images: with glibc's default of 8 arenas per core the RSS grows
#                         ~30% over 10k requests from arena fragmentation before it levels off;
#                         with 2 arenas it is flat after warm-up, so the RSS check can see leaks)
#   OVERLOAD_SERVER_ENV   FLAMINGO_* settings giving the overload server a tiny queue
#                         (default FLAMINGO_LIMITS_MAX_QUEUE=2 FLAMINGO_LIMITS_MAX_BATCH_SIZE=4)
#   NGINX_CONF            default docker/nginx.conf (e.g. a variant with buffering on, to see
#                         the streaming check fail)
#   OUT_DIR               reports, plots and logs (default target/proxy-run/<short|soak>)
#   KEEP_WORK=1           keep the temporary nginx prefix/logs
# Loopback only, bounded in requests and time; all processes it starts are stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SHORT=${SHORT:-0}
if [[ $SHORT == 1 ]]; then
  MODE=short
  REQUESTS=${REQUESTS:-2000}
  OVERLOAD_SECONDS=${OVERLOAD_SECONDS:-8}
  TTFT_STREAMS=${TTFT_STREAMS:-80}
  DEADLINE=${DEADLINE:-180}
else
  MODE=soak
  REQUESTS=${REQUESTS:-12000}
  OVERLOAD_SECONDS=${OVERLOAD_SECONDS:-30}
  TTFT_STREAMS=${TTFT_STREAMS:-96}
  DEADLINE=${DEADLINE:-1800}
fi
CONCURRENCY=${CONCURRENCY:-16}
WARMUP=${WARMUP:-600}
TTFT_ROUND=4
SERVER_BIN=${SERVER_BIN:-target/release/flamingo-server}
LOADTEST_BIN=${LOADTEST_BIN:-target/release/flamingo-loadtest}
SERVER_ARGS=${SERVER_ARGS:-}
SERVER_ENV=${SERVER_ENV-MALLOC_ARENA_MAX=2}
OVERLOAD_SERVER_ENV=${OVERLOAD_SERVER_ENV:-FLAMINGO_LIMITS_MAX_QUEUE=2 FLAMINGO_LIMITS_MAX_BATCH_SIZE=4}
NGINX_CONF=${NGINX_CONF:-docker/nginx.conf}
OUT_DIR=${OUT_DIR:-target/proxy-run/$MODE}
START_TIME=$SECONDS

log() { printf '== [%4ds] %s\n' $((SECONDS - START_TIME)) "$*"; }
die() { printf 'proxy-run: %s\n' "$*" >&2; exit 1; }

# --- processes we start, stopped on exit ------------------------------------------------------
PIDS=()
WORK=$(mktemp -d /tmp/flamingo-proxy-run.XXXXXX)
# nginx workers run as `nobody` when the master is root: they must reach the temp dirs in here.
chmod 755 "$WORK"
# shellcheck source=scripts/lib/loopback.sh
. scripts/lib/loopback.sh  # (the working directory is the repository root)
cleanup() {
  local rc=$?
  stop_pids "${PIDS[@]}"
  if [[ ${KEEP_WORK:-0} == 1 || $rc != 0 ]]; then
    # Keep what explains a failure next to the reports.
    { mkdir -p "$OUT_DIR/logs" && cp -r "$WORK"/. "$OUT_DIR/logs/"; } 2>/dev/null || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- prerequisites ----------------------------------------------------------------------------
ensure_nginx
command -v curl >/dev/null || die "curl is required"
command -v python3 >/dev/null || die "python3 is required (scripts/proxy_run_check.py)"

if [[ ! -x $SERVER_BIN || ! -x $LOADTEST_BIN ]]; then
  log "building flamingo-server and flamingo-loadtest (release)"
  cargo build --release -p flamingo-server -p flamingo-loadtest
fi
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/rss.txt "$OUT_DIR"/*.json "$OUT_DIR"/*.jsonl "$OUT_DIR"/*.svg "$OUT_DIR"/*.txt "$OUT_DIR"/*.md

# --- helpers ----------------------------------------------------------------------------------

# start_server NAME PORT "VAR=value ..." ARGS...: background server (extra environment from the
# third argument), waits until it is ready; pid in LAST_PID.
start_server() {
  local name=$1 port=$2 envs=$3; shift 3
  # shellcheck disable=SC2086  # envs is a list of VAR=value words
  env $envs "$SERVER_BIN" --host 127.0.0.1 --port "$port" "$@" >"$WORK/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  LAST_PID=$pid
  for _ in $(seq 600); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$port/ready" 2>/dev/null; then return 0; fi
    kill -0 "$pid" 2>/dev/null || { tail -20 "$WORK/$name.log" >&2; die "$name exited during startup"; }
    sleep 0.1
  done
  tail -20 "$WORK/$name.log" >&2
  die "$name not ready after 60 s"
}

# start_nginx NAME LISTEN_PORT UPSTREAM_PORT: nginx from docker/nginx.conf, loopback variant.
start_nginx() {
  local name=$1 listen=$2 upstream=$3 prefix="$WORK/$1"
  mkdir -p "$prefix"
  sed -e "/# loopback: listen/ s|listen [^;]*;|listen 127.0.0.1:$listen;|" \
      -e "/# loopback: upstream/ s|server [^;]*;|server 127.0.0.1:$upstream;|" \
      -e "/# loopback: \(pid\|temp\)/ s|/tmp/|$prefix/|" \
      -e "/# loopback: error_log/ s|/dev/stderr|$prefix/error.log|" \
      -e "/# loopback: access_log/ s|/dev/stdout|$prefix/access.log|" \
      "$NGINX_CONF" >"$prefix/nginx.conf"
  # Every tagged line must have been rewritten: nothing may point at compose names, the
  # container's /tmp or the container's stdio.
  local tagged rewritten
  tagged=$(grep -c ';[[:space:]]*# loopback:' "$NGINX_CONF")
  rewritten=$(grep ';[[:space:]]*# loopback:' "$prefix/nginx.conf" | grep -c -e "127.0.0.1:" -e "$prefix/")
  [[ $tagged == "$rewritten" ]] || die "$NGINX_CONF: $rewritten of $tagged '# loopback:' lines rewritten"
  "$NGINX" -t -q -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log" \
    || die "nginx -t failed for $prefix/nginx.conf"
  "$NGINX" -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log" -g 'daemon off;' &
  PIDS+=("$!")
  for _ in $(seq 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$listen/health" 2>/dev/null && return 0
    sleep 0.1
  done
  cat "$prefix/error.log" >&2 || true
  die "nginx $name not answering on $listen"
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# The server's RSS less what its bounded prefix cache holds (flamingo_prefix_cache_bytes): the
# cache fills up to its bound during a run by design, and the check below looks for leaks.
leak_rss_kb() {
  local cache
  cache=$(curl -fsS "$1/metrics" 2>/dev/null | awk '$1 == "flamingo_prefix_cache_bytes" {printf "%d", $2 / 1024}')
  echo $(( $(rss_kb "$2") - ${cache:-0} ))
}

# loadtest NAME ARGS...: one load-tool run, report in $OUT_DIR/NAME.json, per-request samples in
# NAME.jsonl, plot in NAME.svg (not for QUIET=1 runs). The pass/fail decision is made by
# proxy_run_check.py from all reports, so a failing run does not stop here.
loadtest() {
  local name=$1; shift
  local rc=0 extra=()
  [[ ${QUIET:-0} == 1 ]] || extra=(--plot "$OUT_DIR/$name.svg")
  "$LOADTEST_BIN" --no-progress --images-dir tests/fixtures/tiny-openflamingo/images \
    --label "$name" --out "$OUT_DIR/$name.json" --samples-out "$OUT_DIR/$name.jsonl" \
    "${extra[@]}" "$@" >"$OUT_DIR/$name.txt" 2>&1 || rc=$?
  if [[ $rc -ge 2 ]]; then cat "$OUT_DIR/$name.txt" >&2; die "load tool error in $name"; fi
  [[ ${QUIET:-0} == 1 ]] || sed -n '1,3p' "$OUT_DIR/$name.txt" | sed 's/^/   /'
}

budget() {
  (( SECONDS - START_TIME < DEADLINE )) || die "over the ${DEADLINE}s budget before: $1"
}

# --- the run ----------------------------------------------------------------------------------
S_PORT=$(free_port); N_PORT=$(free_port)
log "mode $MODE: server :$S_PORT, nginx :$N_PORT, $REQUESTS requests at concurrency $CONCURRENCY"
# shellcheck disable=SC2086  # SERVER_ARGS is a list of flags
start_server server "$S_PORT" "$SERVER_ENV" $SERVER_ARGS
SERVER_PID=$LAST_PID
# RSS every second for the whole run (seconds since start, kB): shows a leak as a slope.
( while [[ -r /proc/$SERVER_PID/status ]]; do
    echo "$((SECONDS - START_TIME)) $(rss_kb "$SERVER_PID")"; sleep 1
  done ) >"$OUT_DIR/rss.txt" 2>/dev/null &
PIDS+=("$!")
start_nginx nginx "$N_PORT" "$S_PORT"
DIRECT=http://127.0.0.1:$S_PORT
PROXY=http://127.0.0.1:$N_PORT

log "warm-up: $WARMUP requests via nginx"
loadtest warmup --url "$PROXY" -n "$WARMUP" -c "$CONCURRENCY" --seed 11
RSS_WARM=$(leak_rss_kb "$DIRECT" "$SERVER_PID")

budget "ttft"
ROUNDS=$(( (TTFT_STREAMS + TTFT_ROUND - 1) / TTFT_ROUND ))
log "time to first token: $((ROUNDS * TTFT_ROUND)) sequential streams each direct and via nginx, alternating in rounds of $TTFT_ROUND"
for i in $(seq "$ROUNDS"); do
  # Same seed on both sides: round i sends the same requests direct and via nginx.
  TTFT_ARGS=(-c 1 -n "$TTFT_ROUND" --mix generate_stream=1 --min-tokens 32 --max-tokens 32 --seed "$i")
  QUIET=1 loadtest "ttft-direct-$i" --url "$DIRECT" "${TTFT_ARGS[@]}"
  QUIET=1 loadtest "ttft-nginx-$i" --url "$PROXY" "${TTFT_ARGS[@]}"
done

budget "main run"
log "main run: $REQUESTS requests, mixed workload, via nginx"
loadtest main --url "$PROXY" -n "$REQUESTS" -c "$CONCURRENCY" --timeout 120 --seed 1
RSS_AFTER=$(leak_rss_kb "$DIRECT" "$SERVER_PID")

budget "overload"
SUSTAINED=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["throughput"]["requests_per_s"])' "$OUT_DIR/main.json")
RATE=$(python3 -c 'import sys; print(max(50.0, round(3 * float(sys.argv[1]), 1)))' "$SUSTAINED")
O_PORT=$(free_port); ON_PORT=$(free_port)
log "overload: second server ($OVERLOAD_SERVER_ENV) at $RATE req/s open loop (3x the sustained $SUSTAINED req/s) for ${OVERLOAD_SECONDS}s via nginx"
# shellcheck disable=SC2086
start_server overload "$O_PORT" "$SERVER_ENV $OVERLOAD_SERVER_ENV" $SERVER_ARGS
start_nginx nginx-overload "$ON_PORT" "$O_PORT"
loadtest overload --url "http://127.0.0.1:$ON_PORT" --rate "$RATE" --duration "$OVERLOAD_SECONDS" \
  --timeout 60 --mix generate=3,generate_stream=3,chat=1,chat_stream=1,fewshot=1 --seed 3

# Server logs: a panic is a failure whatever the statuses said.
PANICS=$(cat "$WORK"/server.log "$WORK"/overload.log | grep -c -i 'panicked' || true)
cp "$WORK"/server.log "$WORK"/overload.log "$OUT_DIR/" 2>/dev/null || true

log "checks"
python3 scripts/proxy_run_check.py --dir "$OUT_DIR" --mode "$MODE" \
  --rss-warm-kb "$RSS_WARM" --rss-after-kb "$RSS_AFTER" --panics "$PANICS" \
  --elapsed $((SECONDS - START_TIME)) --deadline "$DEADLINE"
