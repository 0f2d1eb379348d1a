#!/usr/bin/env python3
"""Final table of the GPU benchmark (scripts/cuda/gpu-bench.sh): parses bench_model's text output, the
reference's and the bandwidth probe's JSON, and compares

  * our batch-1 decode time per token with the bandwidth floor: bytes of weights one decode step must
    read (OpenFlamingo-9B shape, bf16) / measured device bandwidth; target floor/ours >= 70 %;
  * our decode throughput at 32 concurrent sequences with the PyTorch reference's; target >= 3x.

  python3 scripts/cuda/summarize.py --bandwidth bw.json --ours bench_model.txt --ref reference.json
  python3 scripts/cuda/summarize.py --explain        # just print the byte count
"""
import argparse
import json
import re
import sys

# OpenFlamingo-9B (crates/flamingo-model/src/config.rs: openflamingo_9b)
H, INTER, LAYERS, VOCAB = 4096, 11008, 32, 32003
XATTN_BLOCKS, FF_MULT = 8, 4  # before every 4th decoder layer
BYTES = 2  # bf16


def decode_weight_bytes(h=H, inter=INTER, layers=LAYERS, vocab=VOCAB, xattn=XATTN_BLOCKS, ff_mult=FF_MULT):
    """Weights one decode step reads (per step, independent of batch size). v1 semantics: a generated
    token sees no image (media locations come from the new token alone), so the gated xattn block
    skips its attention branch (norm, to_q, to_kv, to_out) and runs only the gated feed-forward."""
    parts = {
        "llama attention q,k,v,o (32 x 4 x h^2)": layers * 4 * h * h,
        "llama MLP gate,up,down (32 x 3 x h x 11008)": layers * 3 * h * inter,
        "llama RMSNorm scales (32 x 2 + 1)": (2 * layers + 1) * h,
        "lm_head (32003 x h)": vocab * h,
        "xattn FF: LayerNorm + h->4h + 4h->h (8 blocks)": xattn * (2 * h + 2 * ff_mult * h * h + 2),
        "token embedding row (1 per sequence)": h,
    }
    return {k: v * BYTES for k, v in parts.items()}


def kv_bytes(ctx, h=H, layers=LAYERS):
    """Self-attention KV cache one sequence's decode step reads at context length ctx (not in the floor)."""
    return layers * 2 * h * ctx * BYTES


def parse_ours(text):
    out = {"decode": {}}
    m = re.search(r"load=([\d.]+)s", text)
    if m:
        out["load_s"] = float(m.group(1))
    m = re.search(r"image encode \(1 image\): ([\d.]+) ms", text)
    if m:
        out["encode_ms"] = float(m.group(1))
    m = re.search(r"of which ViT ([\d.]+) ms, resampler ([\d.]+) ms", text)
    if m:
        out["vit_ms"], out["resampler_ms"] = float(m.group(1)), float(m.group(2))
    m = re.search(r"prefill \(1 image \+ (\d+) tokens\): ([\d.]+) ms", text)
    if m:
        out["prompt_len"], out["prefill_ms"] = int(m.group(1)), float(m.group(2))
    for m in re.finditer(r"decode batch\s+(\d+): ([\d.]+) ms/step, ([\d.]+) tokens/s", text):
        out["decode"][m.group(1)] = {"ms_per_step": float(m.group(2)), "tokens_per_s": float(m.group(3))}
    m = re.search(r"decode per token at step ~10: ([\d.]+) ms, at step ~(\d+): ([\d.]+) ms", text)
    if m:
        out["step10_ms"], out["late_step"], out["late_ms"] = float(m.group(1)), int(m.group(2)), float(m.group(3))
    m = re.search(r"peak RSS: (\d+) MiB", text)
    if m:
        out["peak_rss_mib"] = int(m.group(1))
    return out


def fmt(v, spec=".1f", unit=""):
    return "n/a" if v is None else f"{v:{spec}}{unit}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bandwidth")
    ap.add_argument("--ours")
    ap.add_argument("--ref")
    ap.add_argument("--json", help="write the summary here")
    ap.add_argument("--explain", action="store_true")
    args = ap.parse_args()

    parts = decode_weight_bytes()
    total = sum(parts.values())
    print("Bytes of weights read per decode step (bf16, OpenFlamingo-9B, v1 decode semantics):")
    for k, v in parts.items():
        print(f"  {k:<52} {v / 1e9:8.3f} GB")
    print(f"  {'total':<52} {total / 1e9:8.3f} GB")
    print(f"  (not counted: self-attention KV cache, {kv_bytes(80) / 1e6:.0f} MB per sequence at 80 tokens; "
          f"skipped xattn attention weights; the vision tower and resampler, which decode does not run)")
    if args.explain:
        return

    def load_json(path):
        try:
            with open(path) as f:
                return json.load(f)
        except Exception as e:
            print(f"  ({path}: {e})")
            return {}

    bw = load_json(args.bandwidth) if args.bandwidth else {}
    ref = load_json(args.ref) if args.ref else {}
    ours = {}
    if args.ours:
        try:
            ours = parse_ours(open(args.ours).read())
        except Exception as e:
            print(f"  ({args.ours}: {e})")

    gbps = bw.get("gbps_median")
    floor_ms = total / (gbps * 1e9) * 1e3 if gbps else None
    o_dec, r_dec = ours.get("decode", {}), ref.get("decode", {})
    ours_b1 = o_dec.get("1", {}).get("ms_per_step")
    eff = floor_ms / ours_b1 if floor_ms and ours_b1 else None
    o32 = o_dec.get("32", {}).get("tokens_per_s")
    r32 = r_dec.get("32", {}).get("tokens_per_s")
    speedup = o32 / r32 if o32 and r32 else None

    print()
    print(f"Device: {bw.get('device') or ref.get('device') or '?'}")
    print(f"Memory bandwidth (D2D copy, read+write): {fmt(gbps, '.0f', ' GB/s')}"
          f" (read-only reduction {fmt(bw.get('read_gbps_median'), '.0f', ' GB/s')})")
    print()
    print(f"{'metric':<40} {'ours (candle)':>16} {'reference (torch)':>18} {'ours/ref':>9}")
    rows = [
        ("image encode, 1 image (ms)", ours.get("encode_ms"), ref.get("encode_ms"), False),
        ("  ViT-L/14 (ms)", ours.get("vit_ms"), ref.get("vit_ms"), False),
        ("  resampler (ms)", ours.get("resampler_ms"), ref.get("resampler_ms"), False),
        ("prefill 1 image + 64 tokens (ms)", ours.get("prefill_ms"), ref.get("prefill_ms"), False),
    ]
    for b in sorted({*o_dec, *r_dec}, key=int):
        rows.append((f"decode batch {b}: ms/step", o_dec.get(b, {}).get("ms_per_step"),
                     r_dec.get(b, {}).get("ms_per_step"), False))
        rows.append((f"decode batch {b}: tokens/s", o_dec.get(b, {}).get("tokens_per_s"),
                     r_dec.get(b, {}).get("tokens_per_s"), True))
    for name, o, r, higher_better in rows:
        ratio = None
        if o and r:
            ratio = o / r if higher_better else r / o  # >1 = ours is better
        print(f"{name:<40} {fmt(o):>16} {fmt(r):>18} {fmt(ratio, '.2f', 'x'):>9}")
    if "step10_ms" in ours:
        print(f"ours, batch-1 decode ms/token at step ~10 / ~{ours['late_step']}: "
              f"{ours['step10_ms']:.2f} / {ours['late_ms']:.2f}")
    if "load_s" in ours:
        print(f"ours, random 9B init on the device: {ours['load_s']:.1f} s")
    print()
    ok_eff = eff is not None and eff >= 0.70
    ok_speed = speedup is not None and speedup >= 3.0
    print(f"Bandwidth floor per decode step: {total / 1e9:.2f} GB / {fmt(gbps, '.0f', ' GB/s')} = "
          f"{fmt(floor_ms, '.2f', ' ms')}")
    print(f"[{'PASS' if ok_eff else 'FAIL'}] batch-1 decode: ours {fmt(ours_b1, '.2f', ' ms/token')}, "
          f"floor/ours = {fmt(eff * 100 if eff else None, '.0f', ' %')} (target >= 70 %)")
    print(f"[{'PASS' if ok_speed else 'FAIL'}] 32 concurrent: ours {fmt(o32, '.0f', ' tok/s')} vs reference "
          f"{fmt(r32, '.0f', ' tok/s')} = {fmt(speedup, '.2f', 'x')} (target >= 3x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"weight_bytes_per_step": total, "bandwidth_gbps": gbps, "floor_ms": floor_ms,
                       "ours": ours, "reference": ref, "bandwidth": bw, "floor_over_ours": eff,
                       "speedup_32": speedup, "pass_bandwidth": ok_eff, "pass_speedup": ok_speed}, f, indent=1)
    sys.exit(0)


if __name__ == "__main__":
    main()
