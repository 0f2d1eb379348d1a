#!/usr/bin/env python3
"""Device memory bandwidth: device-to-device copy_ of a large tensor, timed with CUDA events.
GB/s = 2 x bytes / time (each copy reads and writes the buffer once), 1 GB = 1e9 bytes.

  python3 scripts/cuda/bandwidth.py [--gib 4] [--iters 20] [--json out.json]
"""
import argparse
import json

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=4.0, help="size of the copied buffer")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()

    dev = torch.device("cuda")
    n = int(args.gib * 2**30) // 4
    src = torch.empty(n, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    nbytes = src.numel() * src.element_size()
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(args.iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    times.sort()
    best, med = times[0], times[len(times) // 2]
    res = {
        "device": torch.cuda.get_device_name(dev),
        "buffer_bytes": nbytes,
        "copy_ms_median": med * 1e3,
        "gbps_median": 2 * nbytes / med / 1e9,
        "gbps_best": 2 * nbytes / best / 1e9,
    }
    # A bf16 read-mostly kernel closer to what a GEMV does: sum of a large bf16 buffer.
    x = src.view(torch.bfloat16)
    for _ in range(3):
        x.sum(dtype=torch.float32)
    torch.cuda.synchronize()
    rt = []
    for _ in range(args.iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        x.sum(dtype=torch.float32)
        b.record()
        b.synchronize()
        rt.append(a.elapsed_time(b) / 1e3)
    rt.sort()
    res["read_gbps_median"] = nbytes / rt[len(rt) // 2] / 1e9
    print(f"device {res['device']}: copy of {nbytes / 2**30:.1f} GiB in {res['copy_ms_median']:.2f} ms -> "
          f"{res['gbps_median']:.0f} GB/s read+write (best {res['gbps_best']:.0f}); "
          f"read-only reduction {res['read_gbps_median']:.0f} GB/s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
