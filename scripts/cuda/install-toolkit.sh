#!/usr/bin/env bash
# Install a CUDA 13.0 build toolchain from NVIDIA's PyPI wheels (no apt, no GPU needed) and
# assemble a CUDA_HOME-like tree that candle-kernels (cudaforge/nvcc) and cudarc (dynamic-linking)
# accept:  $CUDA_WHEELS/cuda/{bin/nvcc, include/, lib64/*.so, lib64/stubs/libcuda.so}
#
#   scripts/cuda/install-toolkit.sh            # -> /work/cuda-wheels/{venv,cuda}
#   CUDA_WHEELS=/somewhere scripts/cuda/install-toolkit.sh
#
# Versions are pinned to CUDA 13.0 on purpose: the GPU machine runs driver 580 (= CUDA 13.0), and
# PTX produced by a newer nvcc (13.1+) carries a PTX ISA the 580 driver cannot JIT
# (CUDA_ERROR_UNSUPPORTED_PTX_VERSION). The runtime libraries match PyTorch 2.11+cu130's pins, so
# the binaries can use the libs of the torch install on the GPU machine.
set -euo pipefail

CUDA_WHEELS=${CUDA_WHEELS:-/work/cuda-wheels}
VENV=${CUDA_VENV:-$CUDA_WHEELS/venv}
ROOT=${CUDA_ROOT_OUT:-$CUDA_WHEELS/cuda}
PYTHON=${PYTHON:-python3}

PKGS=(
  nvidia-cuda-nvcc==13.0.88     # bin/nvcc, bin/ptxas, bin/fatbinary, crt headers (some)
  nvidia-cuda-crt==13.0.88      # include/crt/* (split out of nvcc in 13.x)
  nvidia-nvvm==13.0.88          # nvvm/bin/cicc + libnvvm (nvcc's front end)
  nvidia-cuda-cccl==13.0.85     # thrust/cub/libcu++ (cuda/std/...) headers
  nvidia-cuda-runtime==13.0.96  # cuda_runtime.h, libcudart.so.13 (candle-kernels links cudart)
  nvidia-cuda-nvrtc==13.0.88    # libnvrtc.so.13
  nvidia-cublas==13.1.0.3       # libcublas.so.13, libcublasLt.so.13
  nvidia-curand==10.4.0.35      # libcurand.so.10
)

if [[ ! -x $VENV/bin/python ]]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q --no-deps "${PKGS[@]}"

SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# CUDA 13 wheels install under nvidia/cu13/ (12.x used nvidia/<component>/).
SRC=$SITE/nvidia/cu13
[[ -d $SRC ]] || { echo "expected $SRC (CUDA 13 wheel layout) — not found" >&2; exit 1; }

rm -rf "$ROOT"
mkdir -p "$ROOT/lib64/stubs"
# Whole directories that nvcc expects next to each other (bin/, nvvm/, include/) are symlinked,
# so nvcc's relative lookups (../nvvm/bin/cicc, ../include) resolve inside $ROOT.
ln -s "$SRC/bin" "$ROOT/bin"
ln -s "$SRC/include" "$ROOT/include"
[[ -d $SRC/nvvm ]] && ln -s "$SRC/nvvm" "$ROOT/nvvm"
# lib64: real .so files of the wheels plus the unversioned names `-lfoo` needs.
for so in "$SRC"/lib/*.so*; do
  ln -sf "$so" "$ROOT/lib64/$(basename "$so")"
done
for so in "$ROOT"/lib64/lib*.so.*; do
  base=$(basename "$so"); stem=${base%%.so.*}
  [[ -e $ROOT/lib64/$stem.so ]] || ln -s "$base" "$ROOT/lib64/$stem.so"
done

# libcuda.so (the driver API, linked by cudarc's `dynamic-linking`) is not in any wheel: it ships
# with the driver. For linking only, build a stub exporting every cu* symbol the Rust code can
# reference (taken from cudarc's driver bindings); at run time the real libcuda.so.1 of the GPU
# machine's driver is used (the stub's SONAME is libcuda.so.1).
find_cudarc() { ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys 2>/dev/null | sort -V | tail -1 || true; }
if [[ -z $(find_cudarc) ]] && command -v cargo >/dev/null; then
  (cd "$(dirname "$0")/../.." && cargo fetch -q) || true
fi
CUDARC_SYS=$(find_cudarc)
STUB_C=$ROOT/lib64/stubs/libcuda_stub.c
{
  echo '/* generated link-time stub for libcuda.so.1 — never loaded at run time */'
  if [[ -n $CUDARC_SYS ]]; then
    grep -rhoE '(\bfn cu[A-Za-z0-9_]+\(|load::<_F>\("cu[A-Za-z0-9_]+")' "$CUDARC_SYS" \
      | sed -E 's/^fn //; s/\($//; s/^load::<_F>\("//; s/"$//' | sort -u | sed 's/.*/void &(void) {}/'
  fi
} >"$STUB_C"
if [[ -z $CUDARC_SYS ]]; then
  echo "error: cudarc 0.19 sources not found (run 'cargo fetch' in the repo, then rerun)" >&2
  exit 1
fi
cc -shared -fPIC -o "$ROOT/lib64/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$STUB_C"

echo "CUDA wheels: $SITE/nvidia/cu13"
echo "CUDA_HOME:   $ROOT"
"$ROOT/bin/nvcc" --version | tail -2
ls "$ROOT/lib64"
