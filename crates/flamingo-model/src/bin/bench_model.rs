//! Model benchmark (not a test): image encode time, prefill tokens/s, decode tokens/s at batch
//! 1/4/16 and peak memory, for the bundled fixture, a "medium" random config and the
//! OpenFlamingo-9B shape (random weights; optionally fewer LLaMA layers so it fits in RAM).
//!
//! cargo run --release -p flamingo-model --bin bench_model -- [fixture|medium|9b|dir:PATH]
//!     [--dtype f32|f16|bf16] [--device cpu|cuda] [--batches 1,4,16] [--llama-layers N] [--quant q8_0|q4k]
//!     [--long N (steps of the early/late per-token check; 0 skips it)] [--reps N] [--encode-only]
//!     [--decode-only (one encode, no prefill timing, each decode timing repeated --reps times)]
//! cargo run --release -p flamingo-model --bin bench_model -- preprocess [--reps N] FILE...

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use flamingo_model::engine::{Engine, Event, GenerationParams, SequenceRequest};
use flamingo_model::tokenizer::FlamingoTokenizer;
use flamingo_model::{preprocess, Flamingo, FlamingoConfig, LoadOptions, ModelPaths};

fn medium() -> FlamingoConfig {
    let mut cfg = FlamingoConfig::openflamingo_9b();
    cfg.vision.width = 384;
    cfg.vision.layers = 6;
    cfg.vision.heads = 6;
    cfg.llama.hidden_size = 512;
    cfg.llama.num_hidden_layers = 8;
    cfg.llama.num_attention_heads = 8;
    cfg.llama.intermediate_size = 1376;
    cfg.cross_attn_every_n_layers = 2;
    cfg
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// One request end to end as the reference's `generate` does it: decode + preprocess the images,
/// tokenize, encode images, prefill, greedy decode up to `max_new` tokens (stop on <|endofchunk|>).
fn one_request(
    model: &Arc<Flamingo>,
    tok: &FlamingoTokenizer,
    prompt: &str,
    images: &[Vec<u8>],
    max_new: usize,
) -> BoxResult<Vec<u32>> {
    let pixels: Vec<Vec<f32>> = images
        .iter()
        .map(|b| {
            preprocess::preprocess(b, &preprocess::ImageLimits::default(), &model.pixel_spec())
        })
        .collect::<Result<_, _>>()?;
    let mut engine = Engine::new(model.clone());
    let refs: Vec<&[f32]> = pixels.iter().map(Vec::as_slice).collect();
    let latents = engine.encode_images(&refs)?;
    let params = GenerationParams {
        max_new_tokens: max_new,
        stop_tokens: vec![tok.end_of_chunk_id],
        ..Default::default()
    };
    engine.add(SequenceRequest {
        tokens: tok.encode(prompt)?,
        images: Some(Tensor::stack(&latents, 0)?),
        image_keys: Vec::new(),
        params,
    })?;
    let mut out = Vec::new();
    while !engine.is_empty() {
        for e in engine.step()? {
            if let Event::Token { token, .. } = e {
                out.push(token.id);
            }
        }
    }
    Ok(out)
}

/// Same prompts as scripts/bench_reference.py, for a side-by-side comparison.
fn requests_mode(dir: &std::path::Path, repeats: usize, batch: usize) -> BoxResult<()> {
    let paths = ModelPaths::from_dir(dir)?;
    let model = Arc::new(Flamingo::load(&paths, &LoadOptions::default())?);
    let tok = FlamingoTokenizer::from_file(&paths.tokenizer)?;
    let img = |n: &str| std::fs::read(dir.join("images").join(format!("{n}.png")));
    let cases = [
        ("caption_1img", "<image>Output:", vec![img("gradient")?]),
        (
            "two_shot_3img",
            "<image>Output:A red and green gradient.<|endofchunk|><image>Output:A checker board.<|endofchunk|><image>Output:",
            vec![img("gradient")?, img("checker")?, img("stripes")?],
        ),
    ];
    for (name, prompt, images) in &cases {
        one_request(&model, &tok, prompt, images, 20)?;
        let mut times = Vec::new();
        let mut tokens = Vec::new();
        for _ in 0..repeats {
            let t = Instant::now();
            tokens = one_request(&model, &tok, prompt, images, 20)?;
            times.push(t.elapsed().as_secs_f64());
        }
        let min = times.iter().copied().fold(f64::MAX, f64::min);
        println!(
            "ours {name}: median {:.0} ms over {repeats} (min {:.0}), {} new tokens: {tokens:?}",
            median(times) * 1e3,
            min * 1e3,
            tokens.len()
        );
    }
    // Throughput with `batch` concurrent caption requests in one continuous batch.
    let (_, prompt, images) = &cases[0];
    let t = Instant::now();
    let pixels = preprocess::preprocess(
        &images[0],
        &preprocess::ImageLimits::default(),
        &model.pixel_spec(),
    )?;
    let mut engine = Engine::new(model.clone());
    let params = GenerationParams {
        max_new_tokens: 20,
        stop_tokens: vec![tok.end_of_chunk_id],
        ..Default::default()
    };
    for _ in 0..batch {
        // Each request encodes its own image, as separate clients would without the server's cache.
        let latents = engine.encode_images(&[&pixels])?;
        engine.add(SequenceRequest {
            tokens: tok.encode(prompt)?,
            images: Some(Tensor::stack(&latents, 0)?),
            image_keys: Vec::new(),
            params: params.clone(),
        })?;
    }
    let mut n = 0;
    while !engine.is_empty() {
        n += engine
            .step()?
            .iter()
            .filter(|e| matches!(e, Event::Token { .. }))
            .count();
    }
    let dt = t.elapsed().as_secs_f64();
    println!(
        "ours batched: {batch} concurrent, {n} tokens in {dt:.2} s = {:.1} tokens/s",
        n as f64 / dt
    );
    Ok(())
}

/// Max |logit − f32 logit| over every position of the 2-shot prompt (3 images), per weight format.
fn precision_mode(dir: &std::path::Path) -> BoxResult<()> {
    use flamingo_model::linear::Quantization;
    let paths = ModelPaths::from_dir(dir)?;
    let tok = FlamingoTokenizer::from_file(&paths.tokenizer)?;
    let spec = flamingo_model::resolve_config(&paths, &LoadOptions::default())?.pixels;
    let prompt = tok.encode(
        "<image>Output:A red and green gradient.<|endofchunk|><image>Output:A checker board.<|endofchunk|><image>Output:",
    )?;
    let pixels: Vec<Vec<f32>> = ["gradient", "checker", "stripes"]
        .iter()
        .map(|n| {
            let bytes = std::fs::read(dir.join("images").join(format!("{n}.png")))?;
            Ok(preprocess::preprocess(
                &bytes,
                &preprocess::ImageLimits::default(),
                &spec,
            )?)
        })
        .collect::<BoxResult<_>>()?;
    let logits = |dtype: DType, quant: Option<Quantization>| -> BoxResult<Tensor> {
        let opts = LoadOptions {
            dtype,
            ..Default::default()
        };
        let model = Arc::new(Flamingo::load_with(&paths, &opts, quant)?);
        let refs: Vec<&[f32]> = pixels.iter().map(Vec::as_slice).collect();
        let latents = Engine::new(model.clone()).encode_images(&refs)?;
        Ok(model.score_prompt(&prompt, Some(&Tensor::stack(&latents, 0)?))?)
    };
    let reference = logits(DType::F32, None)?;
    let scale = reference.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    println!("f32 logits: max |logit| = {scale:.3}");
    for (name, dtype, quant) in [
        ("f16", DType::F16, None),
        ("bf16", DType::BF16, None),
        ("q8_0", DType::F32, Some(Quantization::Q8_0)),
        ("q4k", DType::F32, Some(Quantization::Q4K)),
    ] {
        let diff = (logits(dtype, quant)? - &reference)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        println!(
            "{name}: max |logit - f32 logit| = {diff:.4} over {} positions",
            prompt.len()
        );
    }
    Ok(())
}

/// The CPU attention kernel alone: decode steps of `batch` sequences with 80 cached positions.
fn attention_mode() -> BoxResult<()> {
    use flamingo_model::kernels::attention::{
        causal_attention, AttnShape, HostKv, RopeTables, SeqAttn,
    };
    let shape = AttnShape {
        heads: 8,
        kv_heads: 8,
        head_dim: 64,
    };
    let width = 512;
    let rope = RopeTables {
        cos: vec![0.5; 4096 * 32],
        sin: vec![0.5; 4096 * 32],
        half: 32,
    };
    {
        let q = Tensor::randn(0f32, 1.0, (1, 6, 257, 64), &Device::Cpu)?;
        flamingo_model::nn::attention(&q, &q, &q, 0.125, None)?;
        let t = Instant::now();
        for _ in 0..20 {
            flamingo_model::nn::attention(&q, &q, &q, 0.125, None)?;
        }
        println!(
            "vision attention 6x257x64: {:.2} ms",
            t.elapsed().as_secs_f64() / 20.0 * 1e3
        );
    }
    for batch in [1usize, 4, 16] {
        let mut caches = vec![HostKv::default(); batch];
        let prefill = vec![0.01f32; 80 * 3 * width];
        for c in caches.iter_mut() {
            let mut seqs = [SeqAttn {
                start: 0,
                len: 80,
                cache: c,
            }];
            let mut out = vec![0f32; 80 * width];
            causal_attention(&prefill, &mut seqs, shape, &rope, 0.125, &mut out);
        }
        let x = vec![0.01f32; batch * 3 * width];
        let mut out = vec![0f32; batch * width];
        let reps = 200;
        let t = Instant::now();
        for _ in 0..reps {
            let mut seqs: Vec<SeqAttn> = caches
                .iter_mut()
                .enumerate()
                .map(|(i, c)| SeqAttn {
                    start: i,
                    len: 1,
                    cache: c,
                })
                .collect();
            causal_attention(&x, &mut seqs, shape, &rope, 0.125, &mut out);
        }
        println!(
            "attention batch {batch}: {:.1} us/call",
            t.elapsed().as_secs_f64() / reps as f64 * 1e6
        );
    }
    Ok(())
}

/// One projection at a time: candle's gemm against the packed kernel in each weight dtype.
/// `linear [N K]`: candle's matmul against the packed kernel per shape (the fastest of 10 calls,
/// which is the least disturbed by other tenants of a shared machine).
fn linear_mode(only: Option<(usize, usize)>) -> BoxResult<()> {
    use flamingo_model::kernels::{PackedMatrix, WeightDtype};
    let dev = Device::Cpu;
    let time = |f: &mut dyn FnMut() -> BoxResult<()>| -> BoxResult<f64> {
        f()?;
        let mut fastest = f64::INFINITY;
        for _ in 0..10 {
            let t = Instant::now();
            f()?;
            fastest = fastest.min(t.elapsed().as_secs_f64());
        }
        Ok(fastest * 1e3)
    };
    let shapes = [
        (1536usize, 384usize),
        (384, 1536),
        (1024, 384),
        (32003, 512),
        (1376, 512),
        (512, 1376),
        (1152, 384),
        (4096, 4096),
    ];
    for (n, k) in shapes.into_iter().filter(|s| only.is_none_or(|o| o == *s)) {
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let packed: Vec<PackedMatrix> = [WeightDtype::F32, WeightDtype::F16, WeightDtype::BF16]
            .into_iter()
            .map(|d| PackedMatrix::new(&wv, n, k, d))
            .collect();
        for m in [1usize, 4, 16, 64, 257] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            let xv = x.flatten_all()?.to_vec1::<f32>()?;
            let candle = time(&mut || {
                x.matmul(&w.t()?)?;
                Ok(())
            })?;
            let mut out = vec![0f32; m * n];
            let ours: Vec<f64> = packed
                .iter()
                .map(|p| {
                    time(&mut || {
                        p.matmul(&xv, m, None, &mut out);
                        Ok(())
                    })
                })
                .collect::<BoxResult<_>>()?;
            let gflops = |ms: f64| 2.0 * (m * n * k) as f64 / ms / 1e6;
            println!(
                "n={n} k={k} m={m}: candle {candle:.3} ms ({:.0} GFLOP/s) | packed f32 {:.3} ms ({:.0} GFLOP/s, {:.1} GB/s) f16 {:.3} ms bf16 {:.3} ms",
                gflops(candle),
                ours[0],
                gflops(ours[0]),
                (n * k * 4) as f64 / ours[0] / 1e6,
                ours[1],
                ours[2]
            );
        }
    }
    Ok(())
}

/// `preprocess [--reps N] FILE...`: decode, resize + crop and normalise per image (best of N,
/// one thread), as `preprocess::preprocess` does them. Where `FILE.ref.rgb` exists (the
/// reference's 224x224 uint8 crop, raw RGB) the max abs difference of our crop is printed too.
fn preprocess_mode(args: &[String]) -> BoxResult<()> {
    let reps: usize = match args.iter().position(|a| a == "--reps") {
        Some(i) => args
            .get(i + 1)
            .and_then(|r| r.parse().ok())
            .ok_or("--reps N")?,
        None => 20,
    };
    let files: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| *a != "--reps" && (*i == 0 || args[i - 1] != "--reps"))
        .map(|(_, a)| a)
        .collect();
    let (limits, spec) = (
        preprocess::ImageLimits::default(),
        preprocess::PixelSpec::CLIP_224,
    );
    println!(
        "{:<24}{:>9}{:>13}{:>11}{:>9}{:>10}  (ms, best of {reps})",
        "file", "decode", "resize+crop", "normalise", "total", "vs ref"
    );
    for file in files {
        let bytes = std::fs::read(file)?;
        let mut best = [f64::INFINITY; 4];
        let mut crop = None;
        for _ in 0..reps {
            let t0 = Instant::now();
            let source = preprocess::decode_source(&bytes, &limits)?;
            let t1 = Instant::now();
            let c = source.resize_and_crop(&spec);
            let t2 = Instant::now();
            std::hint::black_box(preprocess::normalize(&c, &spec));
            let t3 = Instant::now();
            let times = [t1 - t0, t2 - t1, t3 - t2, t3 - t0].map(|d| d.as_secs_f64() * 1e3);
            for (b, t) in best.iter_mut().zip(times) {
                *b = b.min(t);
            }
            crop = Some(c);
        }
        let crop = crop.ok_or("--reps 0")?;
        let vs_ref = match std::fs::read(format!("{file}.ref.rgb")) {
            Ok(r) if r.len() == crop.as_raw().len() => {
                let diff = r.iter().zip(crop.as_raw()).map(|(a, b)| a.abs_diff(*b));
                format!("max {}", diff.max().unwrap_or(0))
            }
            _ => "-".into(),
        };
        let name = std::path::Path::new(file)
            .file_name()
            .map_or(file.clone(), |n| n.to_string_lossy().into());
        println!(
            "{name:<24}{:>9.2}{:>13.2}{:>11.2}{:>9.2}{vs_ref:>10}",
            best[0], best[1], best[2], best[3]
        );
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("attention") => attention_mode(),
        Some("linear") => {
            let dim = |i: usize| args.get(i).and_then(|d| d.parse().ok());
            linear_mode(dim(1).zip(dim(2)))
        }
        Some("precision") => {
            let dir = args
                .get(1)
                .ok_or("usage: bench_model precision MODEL_DIR")?;
            precision_mode(std::path::Path::new(dir))
        }
        Some("preprocess") => preprocess_mode(&args[1..]),
        Some("requests") => {
            let dir = args
                .get(1)
                .ok_or("usage: bench_model requests MODEL_DIR [REPEATS] [BATCH]")?;
            let repeats = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(5);
            let batch = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(16);
            requests_mode(std::path::Path::new(dir), repeats, batch)
        }
        _ => model_mode(&args),
    }
}

/// `bench_model [fixture|medium|9b|DIR] [--dtype ..] [--device ..] [--quant ..] ...`: image
/// encode, prefill, decode at several batch sizes, and decode cost over a long generation.
fn model_mode(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let which = args.first().map(String::as_str).unwrap_or("fixture");
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    // The requested dtype, not the model's activation dtype (f32 on the CPU whatever is asked).
    let dtype = match flag("--dtype").as_deref() {
        Some("f16") => DType::F16,
        Some("bf16") => DType::BF16,
        _ => DType::F32,
    };
    let device = match flag("--device").as_deref() {
        Some("cuda") => Device::new_cuda(0)?,
        _ => Device::Cpu,
    };
    let started = Instant::now();
    let model = Arc::new(load_model(which, dtype, &flag, &device)?);
    let cfg = model.config().clone();
    println!(
        "model={which} dtype={dtype:?} vit={}x{} llama={}x{} (xattn every {}) vocab={} load={:.2}s threads={}",
        cfg.vision.width,
        cfg.vision.layers,
        cfg.llama.hidden_size,
        cfg.llama.num_hidden_layers,
        cfg.cross_attn_every_n_layers,
        cfg.vocab_size(),
        started.elapsed().as_secs_f64(),
        candle_core::utils::get_num_threads()
    );
    let bench = Bench {
        model,
        device,
        reps: flag("--reps").and_then(|r| r.parse().ok()).unwrap_or(5),
        decode_only: args.iter().any(|a| a == "--decode-only"),
    };
    let latents = bench.image_encode()?;
    if args.iter().any(|a| a == "--encode-only") {
        return Ok(());
    }
    let prompt = bench.prefill(&latents)?;
    let batches: Vec<usize> = flag("--batches")
        .map(|b| b.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4, 16]);
    bench.decode(&prompt, &latents, &batches)?;
    let long = flag("--long")
        .and_then(|v| v.parse().ok())
        .unwrap_or(200usize);
    bench.long_decode(&prompt, &latents, long)?;
    println!("peak RSS: {:.0} MiB", peak_rss_mib());
    Ok(())
}

/// The model to measure: the tiny fixture, a random model of the medium or 9B shape, or the
/// release files in a folder.
fn load_model(
    which: &str,
    dtype: DType,
    flag: &dyn Fn(&str) -> Option<String>,
    device: &Device,
) -> Result<Flamingo, Box<dyn std::error::Error>> {
    let opts = LoadOptions {
        dtype,
        device: device.clone(),
        media_rule: None,
    };
    let quant = match flag("--quant").as_deref() {
        Some("q8_0") => Some(flamingo_model::linear::Quantization::Q8_0),
        Some("q4k") => Some(flamingo_model::linear::Quantization::Q4K),
        _ => None,
    };
    Ok(match which {
        "fixture" => Flamingo::load_with(
            &ModelPaths::from_dir(std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/tiny-openflamingo"
            )))?,
            &opts,
            quant,
        )?,
        "medium" => Flamingo::random(&medium(), &opts, quant)?,
        "9b" => {
            let mut cfg = FlamingoConfig::openflamingo_9b();
            if let Some(n) = flag("--llama-layers") {
                cfg.llama.num_hidden_layers = n.parse()?;
            }
            Flamingo::random(&cfg, &opts, quant)?
        }
        dir => Flamingo::load_with(
            &ModelPaths::from_dir(std::path::Path::new(dir.trim_start_matches("dir:")))?,
            &opts,
            quant,
        )?,
    })
}

struct Bench {
    model: Arc<Flamingo>,
    device: Device,
    reps: usize,
    /// Only what decoding needs, each decode measurement repeated `reps` times.
    decode_only: bool,
}

impl Bench {
    /// Image encode (ViT + resampler): one image, 16 in one call, and the two stages apart.
    /// Returns one image's features for the prompts below.
    fn image_encode(&self) -> Result<Tensor, Box<dyn std::error::Error>> {
        let (model, reps, decode_only) = (&self.model, self.reps, self.decode_only);
        let engine = Engine::new(model.clone());
        let size = model.config().vision.image_size;
        let pixels: Vec<f32> = (0..3 * size * size)
            .map(|i| ((i % 97) as f32 / 48.0) - 1.0)
            .collect();
        let mut encode = Vec::new();
        let mut latents = None;
        for _ in 0..if decode_only { 1 } else { reps } {
            let t = Instant::now();
            latents = Some(engine.encode_images(&[&pixels])?.remove(0));
            encode.push(t.elapsed().as_secs_f64());
        }
        let latents = latents.expect("encoded").unsqueeze(0)?;
        println!(
            "image encode (1 image): {:.1} ms (fastest of {reps}: {:.1} ms)",
            median(encode.clone()) * 1e3,
            encode.iter().copied().fold(f64::INFINITY, f64::min) * 1e3
        );
        let many = if decode_only { 0 } else { 16 };
        let refs: Vec<&[f32]> = (0..many).map(|_| pixels.as_slice()).collect();
        let mut batched = Vec::new();
        for _ in 0..if decode_only { 0 } else { reps.div_ceil(2) } {
            let t = Instant::now();
            engine.encode_images(&refs)?;
            batched.push(t.elapsed().as_secs_f64() / many as f64);
        }
        if !batched.is_empty() {
            println!(
                "image encode ({many} images in one call): {:.1} ms per image (fastest {:.1} ms)",
                median(batched.clone()) * 1e3,
                batched.iter().copied().fold(f64::INFINITY, f64::min) * 1e3
            );
        }
        let px = Tensor::from_vec(pixels, (1, 3, size, size), &Device::Cpu)?;
        self.device.synchronize()?;
        let (mut vit, mut resampler) = (Vec::new(), Vec::new());
        for _ in 0..if decode_only { 1 } else { reps } {
            let t = Instant::now();
            let tokens = model.vision_tokens(&px)?;
            vit.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            model.resample(&tokens)?;
            resampler.push(t.elapsed().as_secs_f64());
        }
        println!(
            "  of which ViT {:.1} ms, resampler {:.1} ms",
            median(vit) * 1e3,
            median(resampler) * 1e3
        );
        Ok(latents)
    }

    /// Prefill of 1 image + 64 tokens (fewer on a short context); returns the prompt.
    fn prefill(&self, latents: &Tensor) -> Result<Vec<u32>, Box<dyn std::error::Error>> {
        let model = &self.model;
        let prompt_len = 64.min(model.max_positions() / 2);
        let mut prompt: Vec<u32> = vec![1, model.image_token_id()];
        prompt.extend((0..prompt_len - 2).map(|i| 100 + (i as u32 * 7) % 300));
        let mut prefill = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let _ = model.score_prompt(&prompt, Some(latents))?;
            prefill.push(t.elapsed().as_secs_f64());
        }
        let p = median(prefill);
        println!(
            "prefill (1 image + {prompt_len} tokens): {:.1} ms = {:.0} tokens/s",
            p * 1e3,
            prompt_len as f64 / p
        );
        Ok(prompt)
    }

    /// Decode at several batch sizes: all sequences join, then steady decode steps are timed.
    fn decode(
        &self,
        prompt: &[u32],
        latents: &Tensor,
        batches: &[usize],
    ) -> Result<(), Box<dyn std::error::Error>> {
        let steps = 16.min(self.model.max_positions() - prompt.len() - 1);
        for &batch in batches {
            let mut runs = Vec::new();
            for _ in 0..if self.decode_only { self.reps } else { 1 } {
                let mut engine = self.engine_with(prompt, latents, batch, steps + 2)?;
                engine.step()?; // prefill
                self.device.synchronize()?;
                let t = Instant::now();
                let mut tokens = 0;
                for _ in 0..steps {
                    tokens += engine
                        .step()?
                        .iter()
                        .filter(|e| matches!(e, Event::Token { .. }))
                        .count();
                }
                self.device.synchronize()?;
                runs.push((t.elapsed().as_secs_f64(), tokens));
            }
            let (dt, tokens) = runs[runs.len() / 2];
            let fastest = runs.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
            println!(
                "decode batch {batch:>2}: {:.1} ms/step, {:.1} tokens/s (fastest of {}: {:.1} ms/step)",
                dt * 1e3 / steps as f64,
                tokens as f64 / dt,
                runs.len(),
                fastest * 1e3 / steps as f64
            );
        }
        Ok(())
    }

    /// Decode cost per token early vs late in a long generation (should be nearly flat).
    fn long_decode(
        &self,
        prompt: &[u32],
        latents: &Tensor,
        long: usize,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let long = long.min(self.model.max_positions().saturating_sub(prompt.len() + 1));
        if long <= 20 {
            return Ok(());
        }
        let mut engine = self.engine_with(prompt, latents, 1, long)?;
        engine.step()?;
        let mut per_step = Vec::new();
        while !engine.is_empty() {
            let t = Instant::now();
            engine.step()?;
            per_step.push(t.elapsed().as_secs_f64());
        }
        let early = median(per_step[..10].to_vec());
        let late = median(per_step[per_step.len() - 10..].to_vec());
        println!(
            "decode per token at step ~10: {:.2} ms, at step ~{long}: {:.2} ms",
            early * 1e3,
            late * 1e3
        );
        Ok(())
    }

    /// An engine holding `batch` greedy sequences of `prompt`, each to `max_new_tokens`.
    fn engine_with(
        &self,
        prompt: &[u32],
        latents: &Tensor,
        batch: usize,
        max_new_tokens: usize,
    ) -> Result<Engine, Box<dyn std::error::Error>> {
        let mut engine = Engine::new(self.model.clone());
        let params = GenerationParams {
            max_new_tokens,
            ..Default::default()
        };
        for _ in 0..batch {
            engine.add(SequenceRequest {
                tokens: prompt.to_vec(),
                images: Some(latents.clone()),
                image_keys: Vec::new(),
                params: params.clone(),
            })?;
        }
        Ok(engine)
    }
}
