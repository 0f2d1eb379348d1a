#!/usr/bin/env python3
"""PyTorch reference timing for the GPU benchmark: open_flamingo 0.0.2's own model classes (Flamingo,
PerceiverResampler, GatedCrossAttentionBlock via FlamingoLMMixin) around transformers 4.28.1's
LlamaForCausalLM (LLaMA-7B config) and open_clip 2.16's ViT-L-14, with random weights (no checkpoint,
no tokenizer: everything is built from configs, in the target dtype directly on the target device).

Same workload as `bench_model 9b` (crates/flamingo-model/src/bin/bench_model.rs):
  * image encode: 1 image through `Flamingo._encode_vision_x` (ViT-L/14 + resampler), also split;
  * prefill: 1 image + 64 tokens (BOS, <image>, 62 text tokens) through the language model, with the
    image already encoded (the `use_cached_vision_x` path), use_cache=True;
  * decode: `Flamingo.generate` (greedy, HF KV cache) at each batch size B with B copies of the
    prompt and image, N+2 new tokens; a forward pre-hook on the language model timestamps each of
    generate's forwards (after a device sync), and decode ms/step is the mean time between the
    forwards of tokens 2..N+2 (so image encode, prefill and the first step are excluded);
    tokens/s = B / (ms/step). `<|endofchunk|>` (the eos that Flamingo.generate passes) is set to an
    id that cannot be produced, so no sequence stops early.

  python3 scripts/cuda/reference_bench.py --device cuda --dtype bf16 --batches 1,8,32 --json out.json
  /work/venvs/ref/bin/python scripts/cuda/reference_bench.py --tiny --device cpu     # smoke test
"""
import argparse
import json
import statistics
import sys
import time
import types


def _keep_transformers_428_importable():
    """transformers 4.28 checks `tokenizers<0.14` at import if tokenizers is installed, and imports
    accelerate's internals if accelerate is installed; a newer system copy of either breaks the import.
    Neither is needed to build a model from a config, so hide them (find_spec -> None)."""
    for name in ("tokenizers", "accelerate"):
        if name not in sys.modules:
            sys.modules[name] = None


def _torchvision_or_stub():
    """open_clip 2.16 imports torchvision (transforms for preprocessing, FrozenBatchNorm2d for ResNet
    towers) at package import; the ViT-L-14 forward uses neither. If no working torchvision is
    installed, provide inert stand-ins for the names it imports."""
    try:
        import torchvision  # noqa: F401
        import torchvision.transforms  # noqa: F401
        return "torchvision " + torchvision.__version__
    except Exception as e:  # missing, or built for another torch
        for m in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[m]
        reason = f"{type(e).__name__}: {e}"

    class _Dummy:
        def __init__(self, *a, **k):
            pass

        def __call__(self, *a, **k):
            raise RuntimeError("torchvision stub: preprocessing is not available")

    def public_dummy(attr):  # any other public name
        if attr.startswith("_"):
            raise AttributeError(attr)
        return _Dummy

    def mod(name, **attrs):
        m = types.ModuleType(name)
        m.__file__ = __file__
        m.__dict__.update(attrs)
        m.__getattr__ = public_dummy
        sys.modules[name] = m
        return m

    names = ["Normalize", "Compose", "RandomResizedCrop", "ToTensor", "Resize", "CenterCrop",
             "InterpolationMode", "ColorJitter", "Grayscale", "RandomHorizontalFlip"]
    tf = mod("torchvision.transforms", **{n: _Dummy for n in names})
    tf.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic", BILINEAR="bilinear", NEAREST="nearest")
    tff = mod("torchvision.transforms.functional")
    tf.functional = tff
    misc = mod("torchvision.ops.misc", FrozenBatchNorm2d=_Dummy)
    ops = mod("torchvision.ops", misc=misc)
    mod("torchvision", transforms=tf, ops=ops, __version__="0.0-stub")
    return f"torchvision stub ({reason})"


def _version(dist):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return "?"


def median(xs):
    return statistics.median(xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--new-tokens", type=int, default=32, help="decode steps timed per batch size")
    ap.add_argument("--prompt-len", type=int, default=64, help="prompt tokens incl. BOS and <image>")
    ap.add_argument("--repeats", type=int, default=2, help="timed generate() calls per point (min is kept)")
    ap.add_argument("--tiny", action="store_true", help="small random config (CPU smoke test)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    import torch

    _keep_transformers_428_importable()
    tv = _torchvision_or_stub()
    import transformers
    import open_clip
    from transformers import LlamaConfig, LlamaForCausalLM
    from open_flamingo.src.flamingo import Flamingo
    from open_flamingo.src.flamingo_lm import FlamingoLMMixin
    from open_flamingo.src.utils import extend_instance

    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[args.dtype]
    device = torch.device(args.device)
    batches = [int(b) for b in args.batches.split(",") if b]
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def timed(fn):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - t, out

    print(f"torch {torch.__version__} (cuda {torch.version.cuda}), transformers {transformers.__version__}, "
          f"open_clip {_version('open_clip_torch')}, open_flamingo {_version('open_flamingo')}, {tv}", flush=True)
    if cuda:
        print(f"device: {torch.cuda.get_device_name(device)}", flush=True)

    # --- model, as open_flamingo's create_model_and_transforms builds it (minus tokenizer/checkpoints)
    clip_cfg = open_clip.get_model_config("ViT-L-14")
    llama_cfg = dict(vocab_size=32003,  # 32000 + <|endofchunk|>, <image>, <PAD> (resize_token_embeddings)
                     hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, rms_norm_eps=1e-6, max_position_embeddings=2048,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
    every = 4
    if args.tiny:
        clip_cfg["vision_cfg"].update(width=64, layers=2, head_width=32)
        clip_cfg["text_cfg"].update(width=64, heads=2, layers=1)
        clip_cfg["embed_dim"] = 64
        llama_cfg.update(hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=4)
        every = 2
    eoc_token_id, media_token_id = 32000, 32001
    impossible_eos = 10**9  # never generated: no early stop

    t0 = time.perf_counter()
    prev_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # like HF from_pretrained(torch_dtype=...): params created in dtype
    try:
        with torch.device(device):  # created on the device (a context manager: no per-op overhead later)
            clip = open_clip.model.CLIP(**clip_cfg)
            clip.visual.output_tokens = True
            lang = LlamaForCausalLM(LlamaConfig(**llama_cfg))
            extend_instance(lang, FlamingoLMMixin)
            lang.set_decoder_layers_attr_name("model.layers")
            model = Flamingo(clip, lang, eoc_token_id, media_token_id,
                             vis_dim=clip_cfg["vision_cfg"]["width"], cross_attn_every_n_layers=every)
    finally:
        torch.set_default_dtype(prev_dtype)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    model.eoc_token_id = impossible_eos
    sync()
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    n_text = sum(p.numel() for n, p in model.named_parameters() if n.startswith("vision_encoder.")
                 and not n.startswith("vision_encoder.visual."))
    print(f"built in {build_s:.1f}s: {n_params / 1e9:.3f} B params ({n_text / 1e6:.0f} M of them the unused "
          f"CLIP text tower), dtype {dtype}, xattn every {every}", flush=True)

    size = clip_cfg["vision_cfg"]["image_size"]
    gen = torch.Generator(device="cpu").manual_seed(0)
    image = torch.randn((1, 1, 1, 3, size, size), generator=gen).to(device=device, dtype=dtype)
    prompt = [1, media_token_id] + [100 + (i * 7) % 300 for i in range(args.prompt_len - 2)]
    res = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "dtype": args.dtype,
           "torch": torch.__version__, "transformers": transformers.__version__, "build_s": build_s,
           "params": n_params, "tiny": args.tiny, "prompt_len": args.prompt_len, "decode": {}}

    with torch.inference_mode():
        # image encode (ViT + resampler + conditioning the xattn layers), 1 image
        enc, vit, rs = [], [], []
        for i in range(4):
            dt, _ = timed(lambda: model._encode_vision_x(vision_x=image))
            x = image.reshape(1, 3, size, size)
            dv, toks = timed(lambda: model.vision_encoder.visual(x)[1])
            dr, _ = timed(lambda: model.perceiver(toks.reshape(1, 1, 1, *toks.shape[1:])))
            if i:  # first round is warm-up
                enc.append(dt), vit.append(dv), rs.append(dr)
        res["encode_ms"], res["vit_ms"], res["resampler_ms"] = (median(v) * 1e3 for v in (enc, vit, rs))
        print(f"image encode (1 image): {res['encode_ms']:.1f} ms (ViT {res['vit_ms']:.1f} ms, "
              f"resampler {res['resampler_ms']:.1f} ms)", flush=True)

        # prefill 1 image + prompt_len tokens (image already encoded, as in bench_model's score_prompt)
        ids = torch.tensor([prompt], device=device)
        mask = torch.ones_like(ids)
        model._encode_vision_x(vision_x=image)
        pre = []
        for i in range(4):
            dt, out = timed(lambda: model(vision_x=None, lang_x=ids, attention_mask=mask, use_cached_vision_x=True,
                                          clear_conditioned_layers=False, use_cache=True))
            if i:
                pre.append(dt)
        del out
        model.lang_encoder.clear_conditioned_layers()
        res["prefill_ms"] = median(pre) * 1e3
        print(f"prefill (1 image + {args.prompt_len} tokens): {res['prefill_ms']:.1f} ms = "
              f"{args.prompt_len / median(pre):.0f} tokens/s", flush=True)

        # decode through Flamingo.generate at each batch size; a pre-forward hook on the language model
        # timestamps every forward generate() makes (call 0 = prefill, then one per new token).
        stamps = []

        def stamp(_module, _args):
            sync()
            stamps.append(time.perf_counter())

        hook = model.lang_encoder.register_forward_pre_hook(stamp)
        n = args.new_tokens
        for b in batches:
            vx = image.expand(b, *image.shape[1:]).contiguous()
            lx = ids.expand(b, -1).contiguous()
            am = torch.ones_like(lx)

            def generate(new):
                stamps.clear()
                dt, out = timed(lambda: model.generate(vision_x=vx, lang_x=lx, attention_mask=am,
                                                       max_new_tokens=new, num_beams=1, do_sample=False))
                assert out.shape == (b, args.prompt_len + new), f"early stop? output {tuple(out.shape)}"
                assert len(stamps) == new, f"{len(stamps)} forwards for {new} tokens"
                # forwards 1..new-1 are decode steps; stamps[k+1]-stamps[k] is one whole step
                return dt, (stamps[-1] - stamps[1]) / (new - 2), stamps[1] - stamps[0]

            generate(4)  # warm-up (cuBLAS heuristics, allocator) at this batch size
            runs = [generate(2 + n) for _ in range(args.repeats)]
            total, step, first = min(runs, key=lambda r: r[1])
            res["decode"][str(b)] = {"ms_per_step": step * 1e3, "tokens_per_s": b / step,
                                     "generate_s": total, "prefill_step_ms": first * 1e3}
            print(f"decode batch {b:>2}: {step * 1e3:.1f} ms/step, {b / step:.1f} tokens/s "
                  f"(generate of {2 + n} new tokens incl. encode+prefill: {total:.2f}s)", flush=True)
            if cuda:
                torch.cuda.empty_cache()
        hook.remove()
    if cuda:
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        print(f"peak GPU memory allocated: {res['peak_mem_gib']:.1f} GiB", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
