#!/usr/bin/env bash
# Multi-replica run on loopback: 3 flamingo-server replicas (tiny model) behind nginx configured
# from deploy/helm/flamingo-serve/files/nginx-affinity.conf (the chart's affinity proxy), driven
# by scripts/multi_replica.py with few-shot traffic that resends a fixed number of example-image
# sets (plus a query image from a pool).
#
#   phase 1 "affinity":    nginx `hash $flamingo_affinity consistent`, clients send x-flamingo-affinity
#   phase 2 "round-robin": the same config without the hash line (nginx's default round robin)
#      -> image-feature cache hit rate (server counters), throughput, p50/p99, per phase; each phase
#         starts from fresh replicas (empty caches) and runs the same concurrency ramp
#   phase 3 "failover":    affinity again; at 1/3 of the phase replica A is killed with SIGKILL, at
#         2/3 replica B gets SIGTERM (drains within FLAMINGO_SERVER_DRAIN_TIMEOUT_S); the client
#         retries a 429/503 once after Retry-After (as SDKs do)
#   then scripts/scaling_rule_check.py feeds the HPA/KEDA formula with the gauges sampled during
#   phases 1-2 (vllm:num_requests_waiting + vllm:num_requests_running per replica).
# Fails unless: 0 requests lost and 0 contract failures in every phase (only documented statuses,
# 429/503 with Retry-After, x-request-id echoed, 200 bodies with generated_text); the affinity hit
# rate is above round-robin's; the survivor answers 200 after the kill and the drain; no panic in
# the replicas' logs; and the run stays within DEADLINE.
#
#   SHORT=1 scripts/multi-replica-run.sh     # CI form (<= 90 s)
#   scripts/multi-replica-run.sh             # longer run (about 4 minutes)
# Environment: SHORT, STEP_S (seconds per concurrency step), STEPS (concurrency:seconds list),
# FAILOVER_S, CACHE_ENTRIES (per replica, default 48), SETS (24), SERVER_BIN, OUT_DIR, KEEP_WORK=1.
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SHORT=${SHORT:-0}
if [[ $SHORT == 1 ]]; then
  MODE=short; STEP_S=${STEP_S:-6}; FAILOVER_S=${FAILOVER_S:-15}; DEADLINE=${DEADLINE:-90}
else
  MODE=long; STEP_S=${STEP_S:-25}; FAILOVER_S=${FAILOVER_S:-45}; DEADLINE=${DEADLINE:-420}
fi
STEPS=${STEPS:-"2:$STEP_S,6:$STEP_S,16:$STEP_S"}
CACHE_ENTRIES=${CACHE_ENTRIES:-48}
SETS=${SETS:-24}
SHOTS=3
QUERIES=16
DRAIN_S=${DRAIN_S:-10}
SERVER_BIN=${SERVER_BIN:-target/release/flamingo-server}
OUT_DIR=${OUT_DIR:-target/multi-replica-run/$MODE}
CONF=deploy/helm/flamingo-serve/files/nginx-affinity.conf
PY=scripts/multi_replica.py
START_TIME=$SECONDS

log() { printf '== [%3ds] %s\n' $((SECONDS - START_TIME)) "$*"; }
die() { printf 'multi-replica-run: FAIL: %s\n' "$*" >&2; exit 1; }
budget() { (( SECONDS - START_TIME < DEADLINE )) || die "over the ${DEADLINE}s budget before: $1"; }

PIDS=()
WORK=$(mktemp -d /tmp/flamingo-multi-replica.XXXXXX)
chmod 755 "$WORK"
# shellcheck source=scripts/lib/loopback.sh
. scripts/lib/loopback.sh  # (the working directory is the repository root)
cleanup() {
  local rc=$?
  stop_pids "${PIDS[@]}"
  if [[ ${KEEP_WORK:-0} == 1 || $rc != 0 ]]; then
    { mkdir -p "$OUT_DIR/logs" && cp -r "$WORK"/. "$OUT_DIR/logs/"; } 2>/dev/null || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ensure_nginx
[[ $NGINX_INSTALLED == 1 ]] && START_TIME=$SECONDS   # the install is not part of the run's budget
command -v curl >/dev/null || die "curl is required"
if [[ ! -x $SERVER_BIN ]]; then
  log "building flamingo-server (release)"
  cargo build --release -p flamingo-server --bins
fi
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.json "$OUT_DIR"/*.md "$OUT_DIR"/*.txt


# start_replicas PHASE: 3 replicas (fresh caches), ports in RPORTS, pids in RPIDS.
start_replicas() {
  local phase=$1 i port
  RPORTS=(); RPIDS=()
  for i in 0 1 2; do
    port=$(free_port)
    # One compute thread per replica (one GPU each in production); small drain for the run.
    env MALLOC_ARENA_MAX=2 RAYON_NUM_THREADS=1 \
      FLAMINGO_LIMITS_IMAGE_CACHE_ENTRIES="$CACHE_ENTRIES" FLAMINGO_SERVER_DRAIN_TIMEOUT_S="$DRAIN_S" \
      "$SERVER_BIN" --host 127.0.0.1 --port "$port" >"$WORK/$phase-replica$i.log" 2>&1 &
    RPIDS+=("$!"); PIDS+=("$!"); RPORTS+=("$port")
  done
  for i in 0 1 2; do
    for _ in $(seq 300); do
      curl -fsS -o /dev/null "http://127.0.0.1:${RPORTS[$i]}/ready" 2>/dev/null && continue 2
      kill -0 "${RPIDS[$i]}" 2>/dev/null || { tail -20 "$WORK/$phase-replica$i.log" >&2; die "replica $i exited during startup"; }
      sleep 0.1
    done
    die "replica $i not ready after 30 s"
  done
}

# start_nginx PHASE BALANCE(hash|round-robin): the chart's affinity config, loopback variant.
start_nginx() {
  local phase=$1 balance=$2 prefix="$WORK/nginx-$1" servers="" p
  mkdir -p "$prefix"
  NPORT=$(free_port)
  for p in "${RPORTS[@]}"; do servers+="server 127.0.0.1:$p max_fails=1 fail_timeout=5s; "; done
  sed -e "s|__SERVERS__|$servers|" -e "s|__RESOLVER__||" -e "s|__LISTEN__|127.0.0.1:$NPORT|" \
      -e "/# loopback: \(pid\|temp\)/ s|/tmp/|$prefix/|" \
      -e "/# loopback: error_log/ s|/dev/stderr|$prefix/error.log|" \
      -e "/# loopback: access_log/ s|/dev/stdout|$prefix/access.log|" \
      "$CONF" >"$prefix/nginx.conf"
  if [[ $balance == round-robin ]]; then
    sed -i '/# loopback: balance/d' "$prefix/nginx.conf"
  fi
  grep -q '__[A-Z]*__' "$prefix/nginx.conf" && die "unfilled token in $prefix/nginx.conf"
  local tagged rewritten
  tagged=$(grep -c ';[[:space:]]*# loopback: \(pid\|temp\|error_log\|access_log\|listen\)' "$prefix/nginx.conf")
  rewritten=$(grep ';[[:space:]]*# loopback: \(pid\|temp\|error_log\|access_log\|listen\)' "$prefix/nginx.conf" \
    | grep -c -e "127.0.0.1:" -e "$prefix/")
  [[ $tagged == "$rewritten" && $tagged -gt 0 ]] || die "$rewritten of $tagged '# loopback:' lines rewritten"
  "$NGINX" -t -q -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log" || die "nginx -t ($phase)"
  "$NGINX" -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log" -g 'daemon off;' &
  NPID=$!; PIDS+=("$NPID")
  for _ in $(seq 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$NPORT/nginx-health" 2>/dev/null && return 0
    sleep 0.1
  done
  die "nginx ($phase) not answering"
}

replica_urls() { local p; for p in "${RPORTS[@]}"; do printf 'http://127.0.0.1:%s ' "$p"; done; }
replica_args() { local p; for p in "${RPORTS[@]}"; do printf -- '--replica http://127.0.0.1:%s ' "$p"; done; }

# run_phase NAME BALANCE STEPS EXTRA...: replicas + nginx, the load, cache counters, stop.
run_phase() {
  local name=$1 balance=$2 steps=$3; shift 3
  budget "$name"
  start_replicas "$name"
  start_nginx "$name" "$balance"
  log "$name: nginx :$NPORT ($balance) -> replicas ${RPORTS[*]}, steps $steps"
  # shellcheck disable=SC2046
  timeout $((DEADLINE + 30)) python3 "$PY" load --url "http://127.0.0.1:$NPORT" $(replica_args) \
    --images-dir "$WORK/images" --sets "$SETS" --shots "$SHOTS" --queries "$QUERIES" \
    --steps "$steps" --label "$name" --out "$OUT_DIR/$name.json" "$@" \
    || die "load client ($name)"
  # shellcheck disable=SC2046
  python3 "$PY" cache $(replica_urls) >"$OUT_DIR/cache-$name.json" 2>/dev/null || true
  cp "$WORK/nginx-$name/access.log" "$OUT_DIR/$name-access.log" 2>/dev/null || true
  stop_pids "${RPIDS[@]}" "$NPID"
}

log "mode $MODE: 3 replicas (image cache $CACHE_ENTRIES entries each), $SETS few-shot sets x $SHOTS images + $QUERIES query images"
python3 "$PY" images "$WORK/images" $((SETS * SHOTS + QUERIES))

run_phase affinity hash "$STEPS" --affinity
run_phase round-robin round-robin "$STEPS"

# Failover: kill -9 replica 0 at 1/3, SIGTERM replica 1 at 2/3 of the phase.
budget failover
start_replicas failover
start_nginx failover hash
K_AT=$((FAILOVER_S / 3)); T_AT=$((2 * FAILOVER_S / 3))
log "failover: nginx :$NPORT, kill -9 replica 0 (pid ${RPIDS[0]}) at ${K_AT}s, SIGTERM replica 1 (pid ${RPIDS[1]}) at ${T_AT}s"
# shellcheck disable=SC2046
timeout $((DEADLINE + 30)) python3 "$PY" load --url "http://127.0.0.1:$NPORT" $(replica_args) \
  --images-dir "$WORK/images" --sets "$SETS" --shots "$SHOTS" --queries "$QUERIES" \
  --steps "8:$FAILOVER_S" --affinity --retries 1 --label failover --out "$OUT_DIR/failover.json" \
  --event "$K_AT:kill -KILL ${RPIDS[0]}" --event "$T_AT:kill -TERM ${RPIDS[1]}" \
  || die "load client (failover)"
cp "$WORK/nginx-failover/access.log" "$OUT_DIR/failover-access.log" 2>/dev/null || true
# The drained replica must have exited by itself (exit 0) within its drain timeout.
DRAINED=1
for _ in $(seq $((DRAIN_S * 10 + 20))); do kill -0 "${RPIDS[1]}" 2>/dev/null || { DRAINED=0; break; }; sleep 0.1; done
DRAIN_RC=0; wait "${RPIDS[1]}" 2>/dev/null || DRAIN_RC=$?
[[ $DRAINED == 0 ]] || die "replica 1 still running ${DRAIN_S}s after SIGTERM"
log "replica 1 drained and exited with status $DRAIN_RC; $(grep -c 'drain' "$WORK/failover-replica1.log" || true) drain log lines"
[[ $DRAIN_RC == 0 ]] || die "replica 1 exited with $DRAIN_RC after SIGTERM (drain timeout or error)"
curl -fsS -o /dev/null "http://127.0.0.1:${RPORTS[2]}/ready" || die "survivor replica 2 not ready after the failover"
stop_pids "${RPIDS[2]}" "$NPID"

PANICS=$(cat "$WORK"/*-replica*.log | grep -c -i 'panicked' || true)
[[ $PANICS == 0 ]] || die "$PANICS panics in the replica logs"

log "results"
python3 "$PY" summary --dir "$OUT_DIR" --retries 1
python3 scripts/scaling_rule_check.py "$OUT_DIR/affinity.json" "$OUT_DIR/round-robin.json" \
  --current 3 --target "${SCALE_TARGET:-4}" | tee "$OUT_DIR/scaling.txt"
(( SECONDS - START_TIME <= DEADLINE )) || die "took $((SECONDS - START_TIME)) s, over the ${DEADLINE}s budget"
log "done in $((SECONDS - START_TIME)) s; reports in $OUT_DIR"
