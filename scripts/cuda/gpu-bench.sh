#!/usr/bin/env bash
# GPU benchmark, one call on the GPU machine (H100/H200, CUDA 13 / driver 580, PyTorch 2.11, no
# network, no Rust). Run in the repo root with the staged binaries and wheels in .gpu/
# (scripts/cuda/stage.sh here, then the device tool's `carry: [".gpu"]`):
#
#   bash scripts/cuda/gpu-bench.sh            # everything goes to $OUT/ (default ./out/gpu-bench)
#
# 1. device memory bandwidth (torch D2D copy, CUDA events)
# 2. ours: .gpu/bin/bench_model 9b --dtype bf16 --device cuda --batches 1,8,32 (random weights)
# 3. the PyTorch reference (open_flamingo 0.0.2 + transformers 4.28.1 + open_clip 2.16), same shape
# 4. table: batch-1 decode vs the bandwidth floor, batch-32 throughput vs the reference
#
# Each stage has its own timeout so the whole call stays under ~7 minutes (override with
# BW_TIMEOUT/OURS_TIMEOUT/REF_TIMEOUT); a failing stage is logged and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/../.."

OUT=${OUT:-$PWD/out/gpu-bench}
mkdir -p "$OUT"
LOG=$OUT/gpu-bench.log
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!
GPU_DIR=${GPU_DIR:-$PWD/.gpu}
PY=${PYTHON:-python3}
BATCHES=${BATCHES:-1,8,32}
SITE=${SITE_DIR:-/tmp/flamingo-bench-site}
BIN_DIR=${BIN_DIR:-/tmp/flamingo-bench-bin}  # unpacked binaries (the carried tree may be read-only)
mkdir -p "$BIN_DIR"
cp -f "$GPU_DIR"/bin/bench_model "$GPU_DIR"/bin/flamingo-server "$BIN_DIR"/ 2>/dev/null || true  # uncompressed copies, if staged so
T0=$(date +%s)
section() { echo; echo "=== $* [t=$(( $(date +%s) - T0 ))s]"; }
status=0

section "environment"
date -u
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.max.memory,power.limit --format=csv || status=1
nvidia-smi | head -12
"$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' || status=1
ls -la "$GPU_DIR" "$GPU_DIR"/bin 2>&1 | head -20

section "unpack binaries"
for f in "$GPU_DIR"/bin/*.xz; do
  [[ -e $f ]] || continue
  "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$f" "$BIN_DIR/$(basename "$f" .xz)" && chmod +x "$BIN_DIR/$(basename "$f" .xz)" || status=1
done
ls -la "$BIN_DIR"

section "python packages for the reference (wheels from $GPU_DIR/whl -> $SITE)"
"$PY" scripts/cuda/gpu_env.py install "$GPU_DIR/whl" "$SITE" || status=1
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}

section "CUDA libraries for the Rust binaries"
LIBS=$("$PY" scripts/cuda/gpu_env.py libdirs)
export LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
for b in bench_model flamingo-server; do
  [[ -x $BIN_DIR/$b ]] || continue
  echo "ldd $b:"; ldd "$BIN_DIR/$b" | grep -E 'cuda|cublas|curand|nvrtc|not found' | sed 's/^/  /'
done
if [[ -x $BIN_DIR/flamingo-server ]]; then
  timeout 20 "$BIN_DIR/flamingo-server" --help >/dev/null 2>&1 && echo "flamingo-server --help: ok" \
    || echo "flamingo-server --help: FAILED (rc $?)"
fi

section "1. device memory bandwidth"
timeout -k 5 "${BW_TIMEOUT:-60}" "$PY" scripts/cuda/bandwidth.py --gib 4 --json "$OUT/bandwidth.json" || { echo "bandwidth: rc $?"; status=1; }

OURS_ARGS=${OURS_ARGS:-9b --dtype bf16 --device cuda --batches $BATCHES}
section "2. ours: bench_model $OURS_ARGS"
if [[ -x $BIN_DIR/bench_model ]]; then
  # GPU memory in use, sampled every 0.5 s while ours runs (candle has no peak-memory counter)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/ours_gpu_mem_mib.txt" 2>/dev/null &
  SMI_PID=$!
  # shellcheck disable=SC2086
  RUST_BACKTRACE=1 timeout -k 5 "${OURS_TIMEOUT:-180}" "$BIN_DIR/bench_model" $OURS_ARGS 2>&1 | tee "$OUT/bench_model.txt"
  rc=${PIPESTATUS[0]}; (( rc == 0 )) || { echo "bench_model: rc $rc"; status=1; }
  kill "$SMI_PID" 2>/dev/null; wait "$SMI_PID" 2>/dev/null
  echo "ours: peak GPU memory in use (nvidia-smi, 0.5 s samples): $(sort -n "$OUT/ours_gpu_mem_mib.txt" | tail -1) MiB"
else
  echo "no bench_model in $GPU_DIR/bin (run scripts/cuda/stage.sh and carry .gpu)"; status=1
fi

section "3. reference: open_flamingo 0.0.2 / transformers 4.28.1 / open_clip 2.16, bf16"
timeout -k 5 "${REF_TIMEOUT:-190}" "$PY" scripts/cuda/reference_bench.py --device cuda --dtype bf16 \
  --batches "$BATCHES" --new-tokens 32 --json "$OUT/reference.json" || { echo "reference: rc $?"; status=1; }

section "4. summary"
"$PY" scripts/cuda/summarize.py --bandwidth "$OUT/bandwidth.json" --ours "$OUT/bench_model.txt" \
  --ref "$OUT/reference.json" --json "$OUT/summary.json" | tee "$OUT/summary.txt"
echo
echo "total $(( $(date +%s) - T0 )) s; outputs in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null
exit $status
