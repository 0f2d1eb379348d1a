//! Throughput and latency of the HTTP server at several concurrency levels: 1-image caption
//! requests (`<image>Output:`, greedy, 20 new tokens) through `POST /generate`, closed loop.
//!
//! `cargo run --release -p flamingo-server --bin bench_server` starts `flamingo-server` (the
//! binary next to this one) with the bundled tiny model on a free port; `--url` targets a running
//! server instead. Per level it prints requests/s, generated tokens/s, latency percentiles and
//! the server's own overhead per request, measured from its `x-timings` header as
//! `total - queue - model` (validation, tokenization, image decoding, HTTP and channel hops: all
//! the time a request spends in the server outside the model and the queue). Every request sends
//! a different image unless `--same-image`, so the vision tower runs for each (no cache hits).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Parser;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    about = "Benchmark flamingo-server: throughput and latency at several concurrency levels"
)]
struct Args {
    /// A running server; without it one is started (the bundled tiny model).
    #[arg(long)]
    url: Option<String>,
    /// Server binary to start (default: flamingo-server next to this binary).
    #[arg(long)]
    server_bin: Option<std::path::PathBuf>,
    /// Extra arguments for the started server (e.g. `--model-dir /models/of9b`).
    #[arg(long, allow_hyphen_values = true, num_args = 1..)]
    server_args: Vec<String>,
    /// Concurrency levels (closed loop: each client sends its next request when the last returns).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    concurrency: Vec<usize>,
    /// Requests per level (default: max(32, 4 x concurrency)).
    #[arg(long)]
    requests: Option<usize>,
    /// Untimed requests before each level.
    #[arg(long, default_value_t = 4)]
    warmup: usize,
    #[arg(long, default_value_t = 20)]
    max_new_tokens: u32,
    /// Send the same image every time (feature-cache hits after the first).
    #[arg(long)]
    same_image: bool,
    /// Side of the generated test images in pixels.
    #[arg(long, default_value_t = 256)]
    image_side: u32,
}

struct Spawned {
    child: Child,
    url: String,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(args: &Args, max_concurrency: usize) -> Result<Spawned, String> {
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("flamingo-server"),
    };
    let mut cmd = Command::new(&bin);
    cmd.args(["--host", "127.0.0.1", "--port", "0"])
        .args(&args.server_args)
        // Room for the largest level in one batch, so the levels measure batching, not queueing.
        .env(
            "FLAMINGO_LIMITS_MAX_BATCH_SIZE",
            max_concurrency.max(1).to_string(),
        )
        .env(
            "FLAMINGO_LIMITS_MAX_QUEUE",
            (4 * max_concurrency).max(16).to_string(),
        )
        .env("FLAMINGO_LIMITS_IMAGE_CACHE_ENTRIES", "256")
        .env("RUST_LOG", "warn,flamingo_server::server=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    // Keeps draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                if let Some(addr) = line
                    .split("addr=")
                    .nth(1)
                    .and_then(|a| a.split_whitespace().next())
                {
                    let _ = tx.send(addr.to_string());
                    sent = true;
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| "the server did not start listening".to_string())?;
    Ok(Spawned {
        child,
        url: format!("http://{addr}"),
    })
}

async fn wait_ready(client: &reqwest::Client, url: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        if client
            .get(format!("{url}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{url} not ready"))
}

/// A PNG of noise, different for every seed.
fn test_image(seed: u64, side: u32) -> String {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let img = image::RgbImage::from_fn(side, side, |_, _| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let b = (state >> 33).to_le_bytes();
        image::Rgb([b[0], b[1], b[2]])
    });
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("png");
    base64::engine::general_purpose::STANDARD.encode(png)
}

#[derive(Default, Clone, Copy)]
struct Sample {
    latency_ms: f64,
    tokens: u64,
    prepare_ms: f64,
    queue_ms: f64,
    model_ms: f64,
    total_ms: f64,
}

impl Sample {
    fn overhead_ms(&self) -> f64 {
        self.total_ms - self.queue_ms - self.model_ms
    }
}

fn parse_timings(h: &str) -> Option<(f64, f64, f64, f64)> {
    let get = |k: &str| {
        h.split(';')
            .find_map(|kv| kv.strip_prefix(&format!("{k}="))?.parse::<f64>().ok())
    };
    Some((get("prepare")?, get("queue")?, get("model")?, get("total")?))
}

async fn one(
    client: &reqwest::Client,
    url: &str,
    image: &str,
    max_new_tokens: u32,
) -> Result<Sample, String> {
    let body = json!({"inputs": "<image>Output:", "images": [image],
                      "parameters": {"max_new_tokens": max_new_tokens, "do_sample": false, "details": true}});
    let started = Instant::now();
    let r = client
        .post(format!("{url}/generate"))
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let timings = r
        .headers()
        .get("x-timings")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let v: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
    let latency_ms = started.elapsed().as_secs_f64() * 1e3;
    if !status.is_success() {
        return Err(format!("{status}: {v}"));
    }
    let (prepare_ms, queue_ms, model_ms, total_ms) = timings
        .as_deref()
        .and_then(parse_timings)
        .ok_or("no x-timings header (is this flamingo-server?)")?;
    let tokens = v["details"]["generated_tokens"].as_u64().unwrap_or(0);
    Ok(Sample {
        latency_ms,
        tokens,
        prepare_ms,
        queue_ms,
        model_ms,
        total_ms,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn sorted(v: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    v
}

struct Level {
    concurrency: usize,
    requests: usize,
    seconds: f64,
    samples: Vec<Sample>,
}

impl Level {
    fn throughput(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

async fn run_level(
    client: &reqwest::Client,
    url: &str,
    images: &Arc<Vec<String>>,
    concurrency: usize,
    requests: usize,
    max_new_tokens: u32,
) -> Result<Level, String> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, images, next) = (
            client.clone(),
            url.to_string(),
            images.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= requests {
                    return Ok::<_, String>(out);
                }
                out.push(one(&client, &url, &images[i % images.len()], max_new_tokens).await?);
            }
        }));
    }
    let mut samples = Vec::with_capacity(requests);
    for t in tasks {
        samples.extend(t.await.map_err(|e| e.to_string())??);
    }
    Ok(Level {
        concurrency,
        requests,
        seconds: started.elapsed().as_secs_f64(),
        samples,
    })
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let max_c = args.concurrency.iter().copied().max().unwrap_or(1);
    let spawned = match &args.url {
        Some(_) => None,
        None => Some(start_server(&args, max_c)?),
    };
    let url = args
        .url
        .clone()
        .or(spawned.as_ref().map(|s| s.url.clone()))
        .expect("a url");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    wait_ready(&client, &url).await?;
    let info: serde_json::Value = client
        .get(format!("{url}/info"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let per_level = |c: usize| args.requests.unwrap_or((4 * c).max(32));
    let total: usize = args
        .concurrency
        .iter()
        .map(|&c| per_level(c) + args.warmup)
        .sum();
    let images = Arc::new(if args.same_image {
        vec![test_image(0, args.image_side)]
    } else {
        (0..total as u64)
            .map(|i| test_image(i + 1, args.image_side))
            .collect::<Vec<_>>()
    });
    println!(
        "server {url}: model {} ({} on {}), max_batch_size {}, {} images {}x{}, {} new tokens, greedy",
        info["model_id"],
        info["dtype"].as_str().unwrap_or("?"),
        info["device"].as_str().unwrap_or("?"),
        info["limits"]["max_batch_size"],
        if args.same_image { "same image" } else { "distinct" },
        args.image_side,
        args.image_side,
        args.max_new_tokens
    );
    println!(
        "{:>5} {:>6} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "conc",
        "reqs",
        "req/s",
        "tok/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "queue50",
        "model50",
        "prep50",
        "ovh mean",
        "ovh p99"
    );
    let mut levels = Vec::new();
    let mut offset = 0;
    for &c in &args.concurrency {
        // Warm-up requests use their own images, so the timed ones still miss the cache.
        let warm = if args.same_image {
            images.clone()
        } else {
            Arc::new(
                images
                    .iter()
                    .skip(offset)
                    .take(args.warmup.max(1))
                    .cloned()
                    .collect::<Vec<_>>(),
            )
        };
        run_level(
            &client,
            &url,
            &warm,
            c.min(args.warmup.max(1)),
            args.warmup,
            args.max_new_tokens,
        )
        .await?;
        offset += args.warmup;
        let n = per_level(c);
        let level_images = if args.same_image {
            images.clone()
        } else {
            Arc::new(images.iter().skip(offset).take(n).cloned().collect())
        };
        offset += n;
        let level = run_level(&client, &url, &level_images, c, n, args.max_new_tokens).await?;
        let lat = sorted(level.samples.iter().map(|s| s.latency_ms));
        let ovh = sorted(level.samples.iter().map(Sample::overhead_ms));
        let tokens: u64 = level.samples.iter().map(|s| s.tokens).sum();
        println!(
            "{:>5} {:>6} {:>8.2} {:>8.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10.3} {:>10.3}",
            c,
            n,
            level.throughput(),
            tokens as f64 / level.seconds,
            percentile(&lat, 50.0),
            percentile(&lat, 90.0),
            percentile(&lat, 99.0),
            percentile(&sorted(level.samples.iter().map(|s| s.queue_ms)), 50.0),
            percentile(&sorted(level.samples.iter().map(|s| s.model_ms)), 50.0),
            percentile(&sorted(level.samples.iter().map(|s| s.prepare_ms)), 50.0),
            ovh.iter().sum::<f64>() / ovh.len() as f64,
            percentile(&ovh, 99.0),
        );
        levels.push(level);
    }
    let at = |c: usize| {
        levels
            .iter()
            .find(|l| l.concurrency == c)
            .map(Level::throughput)
    };
    if let (Some(t1), Some(t16)) = (at(1), at(16)) {
        println!("throughput(16) / throughput(1) = {:.2}", t16 / t1);
    }
    let all: Vec<Sample> = levels
        .iter()
        .flat_map(|l| l.samples.iter().copied())
        .collect();
    let ovh = sorted(all.iter().map(Sample::overhead_ms));
    let client_gap = sorted(all.iter().map(|s| s.latency_ms - s.total_ms));
    println!(
        "server overhead outside the model and queue (total - queue - model), all levels: mean {:.3} ms, p50 {:.3} ms, p99 {:.3} ms \
         (of which prepare p50 {:.3} ms); client-observed minus server total: p50 {:.3} ms",
        ovh.iter().sum::<f64>() / ovh.len().max(1) as f64,
        percentile(&ovh, 50.0),
        percentile(&ovh, 99.0),
        percentile(&sorted(all.iter().map(|s| s.prepare_ms)), 50.0),
        percentile(&client_gap, 50.0),
    );
    drop(spawned);
    Ok(())
}
