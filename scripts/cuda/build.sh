#!/usr/bin/env bash
# Build the CUDA binaries on a machine without a GPU (CUDA toolchain from scripts/cuda/install-toolkit.sh).
#
#   scripts/cuda/build.sh                 # bench_model + flamingo-server, sm_90 (H100/H200)
#   CUDA_COMPUTE_CAP=80 scripts/cuda/build.sh
#
# Output: $CARGO_TARGET_DIR/release/{bench_model,flamingo-server} (unstripped) and stripped copies
# in $CARGO_TARGET_DIR/stripped/. A separate target dir keeps the CPU builds in ./target untouched.
# The first build compiles candle's CUDA kernels (PTX + the static GGUF/MoE lib): ~15-30 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."

CUDA_WHEELS=${CUDA_WHEELS:-/work/cuda-wheels}
export CUDA_HOME=${CUDA_HOME:-$CUDA_WHEELS/cuda}
[[ -x $CUDA_HOME/bin/nvcc ]] || { echo "no nvcc in $CUDA_HOME/bin — run scripts/cuda/install-toolkit.sh first" >&2; exit 1; }
export CUDA_PATH=$CUDA_HOME
export PATH=$CUDA_HOME/bin:$PATH
# -lcudart (candle-kernels), -lcublas/-lcublasLt/-lcurand/-lnvrtc and -lcuda (cudarc dynamic-linking;
# libcuda comes from the link-time stub in lib64/stubs, the driver provides the real one at run time).
export LIBRARY_PATH=$CUDA_HOME/lib64:$CUDA_HOME/lib64/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-cuda}
NICE=${NICE:-nice -n 10}

echo "nvcc: $(nvcc --version | tail -2 | head -1)  compute cap: $CUDA_COMPUTE_CAP  target: $CARGO_TARGET_DIR"
start=$(date +%s)
# One invocation, so both binaries share one feature resolution and candle is compiled once.
$NICE cargo build --release -p flamingo-model -p flamingo-server \
  --features flamingo-model/cuda,flamingo-server/cuda --bin bench_model --bin flamingo-server
echo "build time: $(( $(date +%s) - start )) s"

mkdir -p "$CARGO_TARGET_DIR/stripped"
for b in bench_model flamingo-server; do
  strip -o "$CARGO_TARGET_DIR/stripped/$b" "$CARGO_TARGET_DIR/release/$b"
  size=$(stat -c %s "$CARGO_TARGET_DIR/stripped/$b")
  printf '%-16s %6.1f MiB stripped (%6.1f MiB unstripped)\n' "$b" "$(echo "$size/1048576" | bc -l)" \
    "$(echo "$(stat -c %s "$CARGO_TARGET_DIR/release/$b")/1048576" | bc -l)"
  (( size < 64 * 1024 * 1024 )) || echo "WARNING: $b is over 64 MiB stripped" >&2
  echo "ldd $b:"; LD_LIBRARY_PATH= ldd "$CARGO_TARGET_DIR/stripped/$b" | sed 's/^/  /'
done
