#!/usr/bin/env bash
# Stage what the GPU machine needs into .gpu/ (git-ignored through .git/info/exclude; the device tool
# carries it with `carry: [".gpu"]`; working tree + carried paths must stay under 64 MiB):
#   .gpu/bin/bench_model.xz, flamingo-server.xz      stripped CUDA builds (scripts/cuda/build.sh), xz
#   .gpu/whl/*.whl                                   the PyTorch reference's pure-Python packages
#                                                     (cp312 / manylinux_2_28 where binary)
#
#   scripts/cuda/stage.sh                  # binaries from /work/target-cuda/stripped
#   STAGE_SERVER=0 scripts/cuda/stage.sh   # leave the server out (saves its size)
#   STAGE_NUMPY=0 scripts/cuda/stage.sh    # leave numpy out (15 MiB; only needed if the GPU
#                                          # machine's python has none — transformers imports it)
set -euo pipefail
cd "$(dirname "$0")/../.."

CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-cuda}
SRC=$CARGO_TARGET_DIR/stripped
DEST=.gpu
PIP=${PIP:-pip}

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >> "$exclude"

rm -rf "$DEST"
mkdir -p "$DEST/bin" "$DEST/whl"
bins=(bench_model)
[[ ${STAGE_SERVER:-1} == 1 ]] && bins+=(flamingo-server)
# xz-compressed (the embedded PTX and the static GGUF kernels compress well); gpu-bench.sh unpacks
# them with python's lzma, so the GPU machine needs no xz binary.
for b in "${bins[@]}"; do
  [[ -f $SRC/$b ]] || { echo "missing $SRC/$b — run scripts/cuda/build.sh first" >&2; exit 1; }
  xz -T0 -6 -c "$SRC/$b" > "$DEST/bin/$b.xz"
done

# Pinned: the reference's own stack. Generic: installed on the GPU machine only when missing there.
pinned=(transformers==4.28.1 huggingface_hub==0.14.1 open-flamingo==0.0.2 open-clip-torch==2.16.0
        einops==0.6.1 einops-exts==0.0.4)
generic=(ftfy==6.3.1 wcwidth regex tqdm pyyaml requests urllib3 idna certifi charset-normalizer packaging
         filelock typing_extensions fsspec)
[[ ${STAGE_NUMPY:-1} == 1 ]] && generic+=(numpy)
"$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 -d "$DEST/whl" "${pinned[@]}" "${generic[@]}"

tree_bytes=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
gpu_bytes=$(du -sb "$DEST" | cut -f1)
ls -la "$DEST/bin"; du -sh "$DEST/bin" "$DEST/whl"
total=$(( tree_bytes + gpu_bytes ))
printf 'working tree %.1f MiB + .gpu %.1f MiB = %.1f MiB (limit 64 MiB)\n' \
  "$(echo "$tree_bytes/1048576" | bc -l)" "$(echo "$gpu_bytes/1048576" | bc -l)" "$(echo "$total/1048576" | bc -l)"
if (( total >= 64 * 1024 * 1024 )); then
  echo "OVER the 64 MiB carry limit: try STAGE_SERVER=0 and/or STAGE_NUMPY=0" >&2
  exit 1
fi
