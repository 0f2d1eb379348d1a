#!/usr/bin/env python3
"""PyTorch reference timing (open-flamingo 0.0.2 `Flamingo.generate`) on a model folder in the release
layout (e.g. the medium random model written by make_medium_openflamingo.py). Not part of CI.

Prompts: 1-image caption `<image>Output:` and a 2-shot prompt with 3 images; 20 greedy tokens, f32.
Prints per-request latency (preprocess + generate) and the best batched throughput (one batch-N generate).
With --serve it loads the model once and then runs one case per line read from stdin (`caption_1img`,
`two_shot_3img` or `batched`), answering each with one JSON line, so that scripts/bench_vs_reference.py
can alternate it with our server request by request.

  <ref-venv>/bin/python scripts/bench_reference.py --model-dir /work/medium/medium-openflamingo --threads 2
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import open_clip
import torch
from PIL import Image
from safetensors.torch import load_file
from open_flamingo import create_model_and_transforms
from open_flamingo.src.helpers import PerceiverResampler

CAPTION = "<image>Output:"
TWO_SHOT = ("<image>Output:A red and green gradient.<|endofchunk|><image>Output:A checker board.<|endofchunk|>"
            "<image>Output:")


def load(model_dir):
    of_cfg = json.load(open(os.path.join(model_dir, "openflamingo_config.json")))
    mcfg = json.load(open(os.path.join(model_dir, "vision", "open_clip_config.json")))["model_cfg"]
    tmp = tempfile.mkdtemp()
    try:
        with open(os.path.join(tmp, of_cfg["clip_vision_encoder_path"] + ".json"), "w") as f:
            json.dump(mcfg, f)
        open_clip.add_model_config(tmp)
        llama = os.path.join(model_dir, of_cfg["lang_encoder_path"])
        model, processor, tokenizer = create_model_and_transforms(
            clip_vision_encoder_path=of_cfg["clip_vision_encoder_path"], clip_vision_encoder_pretrained=None,
            lang_encoder_path=llama, tokenizer_path=llama,
            cross_attn_every_n_layers=of_cfg["cross_attn_every_n_layers"], use_local_files=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    pc = of_cfg["perceiver"]
    if (pc["depth"], pc["num_latents"]) != (6, 64) or of_cfg["vis_dim"] != model.perceiver.latents.shape[1]:
        model.perceiver = PerceiverResampler(dim=of_cfg["vis_dim"], depth=pc["depth"], dim_head=pc["dim_head"],
                                             heads=pc["heads"], num_latents=pc["num_latents"], ff_mult=pc["ff_mult"])
    model.vision_encoder.load_state_dict(load_file(os.path.join(model_dir, "vision", "open_clip_model.safetensors")))
    res = model.load_state_dict(torch.load(os.path.join(model_dir, "checkpoint.pt"), map_location="cpu"), strict=False)
    assert not res.unexpected_keys
    base = model.lang_encoder.config.vocab_size - 3 if model.lang_encoder.lm_head.weight.shape[0] > 32000 else 32000
    with torch.no_grad():
        model.lang_encoder.lm_head.weight[len(tokenizer) - 3:] = 0.0
    model.eval()
    tokenizer.padding_side = "left"
    return model, processor, tokenizer


def request(model, processor, tokenizer, prompt, image_paths, batch=1, max_new_tokens=20):
    images = [processor(Image.open(p)) for p in image_paths]
    vision_x = torch.stack(images)[None, :, None].repeat(batch, 1, 1, 1, 1, 1)
    enc = tokenizer([prompt] * batch, return_tensors="pt", padding="longest")
    with torch.inference_mode():
        out = model.generate(vision_x=vision_x, lang_x=enc["input_ids"], attention_mask=enc["attention_mask"],
                             max_new_tokens=max_new_tokens, num_beams=1)
    return out[:, enc["input_ids"].shape[1]:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--serve", action="store_true", help="answer cases named on stdin, one JSON line each")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, processor, tokenizer = load(args.model_dir)
    img = lambda n: os.path.join(args.model_dir, "images", n + ".png")
    cases = {"caption_1img": (CAPTION, [img("gradient")]),
             "two_shot_3img": (TWO_SHOT, [img("gradient"), img("checker"), img("stripes")])}
    if args.serve:
        for name, (prompt, paths) in cases.items():
            request(model, processor, tokenizer, prompt, paths)  # warm-up
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            name = line.strip()
            prompt, paths = cases["caption_1img" if name == "batched" else name]
            batch = args.batch if name == "batched" else 1
            t = time.perf_counter()
            out = request(model, processor, tokenizer, prompt, paths, batch=batch)
            dt = time.perf_counter() - t
            print(json.dumps({"case": name, "seconds": dt, "tokens": out[0].tolist(), "generated": out.numel()}),
                  flush=True)
        return
    results = {}
    for name, (prompt, paths) in cases.items():
        request(model, processor, tokenizer, prompt, paths)  # warm-up
        times, tokens = [], None
        for _ in range(args.repeats):
            t = time.perf_counter()
            tokens = request(model, processor, tokenizer, prompt, paths)
            times.append(time.perf_counter() - t)
        results[name] = {"median_s": statistics.median(times), "tokens": tokens[0].tolist()}
        print(f"reference {name}: median {statistics.median(times) * 1e3:.0f} ms over {args.repeats} "
              f"(min {min(times) * 1e3:.0f}), {tokens.shape[1]} new tokens: {tokens[0].tolist()}")
    prompt, paths = cases["caption_1img"]
    t = time.perf_counter()
    out = request(model, processor, tokenizer, prompt, paths, batch=args.batch)
    dt = time.perf_counter() - t
    n = out.numel()
    print(f"reference batched generate: batch {args.batch}, {n} tokens in {dt:.2f} s = {n / dt:.1f} tokens/s")
    results["batched"] = {"batch": args.batch, "tokens_per_s": n / dt}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
