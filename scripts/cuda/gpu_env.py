#!/usr/bin/env python3
"""GPU-machine helpers for scripts/cuda/gpu-bench.sh (no network there).

  gpu_env.py libdirs                 -> print a LD_LIBRARY_PATH fragment with the CUDA 13 libraries the
                                        Rust binaries need (from the pip nvidia-* packages of the torch
                                        install, else a system CUDA), report missing ones on stderr
  gpu_env.py install WHEELDIR TARGET -> unpack the reference's wheels into TARGET (for PYTHONPATH):
                                        the pinned ones always, generic dependencies only if this
                                        python cannot import them already
"""
import glob
import importlib.util
import os
import subprocess
import sys
import zipfile

NEEDED_LIBS = ["libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libnvrtc.so.13"]

# wheel name prefix (normalised) -> importable module; pinned = always installed (shadowing any copy)
PINNED = ["transformers", "huggingface_hub", "open_flamingo", "open_clip_torch", "einops", "einops_exts"]
IF_MISSING = {
    "ftfy": "ftfy", "wcwidth": "wcwidth", "regex": "regex", "tqdm": "tqdm", "pyyaml": "yaml",
    "requests": "requests", "urllib3": "urllib3", "idna": "idna", "certifi": "certifi",
    "charset_normalizer": "charset_normalizer", "packaging": "packaging", "filelock": "filelock",
    "typing_extensions": "typing_extensions", "fsspec": "fsspec", "numpy": "numpy",
}


def libdirs():
    cands = []
    for p in sys.path:
        if os.path.isdir(p):
            cands += sorted(glob.glob(os.path.join(p, "nvidia", "*", "lib")))
            cands += sorted(glob.glob(os.path.join(p, "nvidia", "*", "lib64")))
    cands += ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/x86_64-linux-gnu",
              "/usr/lib64"]
    here = os.path.join(os.getcwd(), ".gpu", "lib")
    cands.append(here)  # carried copies, if any, last
    found = {}
    for d in cands:
        for n in NEEDED_LIBS:
            if n not in found and os.path.exists(os.path.join(d, n)):
                found[n] = d
    missing = [n for n in NEEDED_LIBS if n not in found]
    if missing:  # last resort: a bounded walk of the usual install roots
        for root in ("/usr/local", "/opt", "/usr/lib", "/root", "/home"):
            for d, subdirs, files in os.walk(root):
                if d.count(os.sep) - root.count(os.sep) >= 7:
                    subdirs[:] = []
                for n in missing:
                    if n not in found and n in files:
                        found[n] = d
                if all(n in found for n in missing):
                    break
        missing = [n for n in NEEDED_LIBS if n not in found]
    if missing:
        print(f"gpu_env: not found: {' '.join(missing)}", file=sys.stderr)
    dirs = []
    for d in found.values():
        if d not in dirs:
            dirs.append(d)
    print(":".join(dirs))


def wheel_key(path):
    return os.path.basename(path).split("-")[0].lower().replace("-", "_").replace(".", "_")


def install(wheeldir, target):
    wheels = sorted(glob.glob(os.path.join(wheeldir, "*.whl")))
    chosen, skipped = [], []
    for w in wheels:
        key = wheel_key(w)
        if key in PINNED:
            chosen.append(w)
        elif key in IF_MISSING:
            (skipped if importlib.util.find_spec(IF_MISSING[key]) else chosen).append(w)
        else:
            chosen.append(w)
    os.makedirs(target, exist_ok=True)
    have_pip = importlib.util.find_spec("pip") is not None
    if chosen and have_pip:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--disable-pip-version-check", "--target", target, *chosen], check=True)
    else:
        for w in chosen:  # a wheel is a zip of site-packages content
            zipfile.ZipFile(w).extractall(target)
    print(f"installed into {target} ({'pip' if have_pip else 'unzip'}): "
          f"{' '.join(wheel_key(w) for w in chosen) or '-'}; already importable here: "
          f"{' '.join(wheel_key(w) for w in skipped) or '-'}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["libdirs"]:
        libdirs()
    elif sys.argv[1:2] == ["install"] and len(sys.argv) == 4:
        install(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
