//! A model of another shape, served by the real binary: `tests/fixtures/tiny-openflamingo-b`
//! (112 px images in 16 px patches, ImageNet mean/std, xattn before every 3rd layer, LLaMA in two
//! shards, base vocabulary 360). Image requests answer 200 with the reference's greedy tokens;
//! a model whose preprocessing cannot be served stops startup with the reason.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{b64, timed, Server};
use serde_json::{json, Value};

const FIXTURE_B: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/tiny-openflamingo-b"
);

fn goldens() -> Value {
    let text = std::fs::read_to_string(Path::new(FIXTURE_B).join("goldens.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn image_b64(name: &str) -> String {
    b64(&std::fs::read(Path::new(FIXTURE_B).join(format!("images/{name}.png"))).unwrap())
}

/// The server on `dir` (`--model-dir`), not yet known to be ready.
fn spawn_on(dir: &Path) -> Server {
    Server::spawn(&["--model-dir", dir.to_str().unwrap()], &[])
}

/// The reference's logits at each greedy step of a case, `[rows, steps, vocab]`.
fn step_logits(case: &str) -> Vec<Vec<Vec<f32>>> {
    let tensors = candle_core::safetensors::load(
        Path::new(FIXTURE_B).join("goldens.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    tensors[&format!("{case}.greedy_step_logits")]
        .to_vec3::<f32>()
        .unwrap()
}

/// `log_softmax(logits)[token]`, in f64.
fn logprob(logits: &[f32], token: usize) -> f64 {
    let max = logits.iter().fold(f64::MIN, |m, &l| m.max(f64::from(l)));
    let sum: f64 = logits.iter().map(|&l| (f64::from(l) - max).exp()).sum();
    f64::from(logits[token]) - max - sum.ln()
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// Every row of every golden case as its own request: status 200, exactly the reference's
/// greedy tokens (the server also stops at `</s>`, so the reference's tokens are cut after the
/// first `<|endofchunk|>` or `</s>`), and each token's logprob equal to the reference's
/// log-softmax at that step (within 2e-4: the logits agree to 1e-4), which also catches pixels
/// normalised with the wrong mean/std even where the argmax survives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_requests_get_the_reference_greedy_tokens() {
    timed(120, async {
        let s = spawn_on(Path::new(FIXTURE_B));
        s.wait_ready().await;
        let g = goldens();
        let info = s.get("/info").await;
        assert_eq!(info.status, 200, "{}", info.text);
        assert_eq!(
            info.json["architecture"]["image_size"], 112,
            "{}",
            info.text
        );
        assert_eq!(
            info.json["architecture"]["cross_attn_every_n_layers"], 3,
            "{}",
            info.text
        );
        let stops = [
            g["special_tokens"]["<|endofchunk|>"].as_u64().unwrap(),
            g["special_tokens"]["</s>"].as_u64().unwrap(),
        ];
        let mut with_images = 0;
        for case in g["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let prompts: Vec<&str> = match &case["prompt"] {
                Value::String(p) => vec![p.as_str()],
                Value::Array(a) => a.iter().map(|p| p.as_str().unwrap()).collect(),
                other => panic!("prompt {other}"),
            };
            let greedy = &case["greedy"];
            for (row, prompt) in prompts.iter().enumerate() {
                let n_images = prompt.matches("<image>").count();
                with_images += usize::from(n_images > 0);
                let images: Vec<String> = case["images"][row]
                    .as_array()
                    .unwrap()
                    .iter()
                    .take(n_images)
                    .map(|n| image_b64(n.as_str().unwrap()))
                    .collect();
                let body = json!({
                    "inputs": prompt,
                    "images": images,
                    "parameters": {
                        "max_new_tokens": greedy["max_new_tokens"],
                        "details": true,
                    },
                });
                let r = s.post("/generate", &body).await;
                assert_eq!(r.status, 200, "{name} row {row}: {}", r.text);
                let tokens = r.json["details"]["tokens"]
                    .as_array()
                    .unwrap_or_else(|| panic!("details.tokens in {}", r.text));
                let got: Vec<u64> = tokens.iter().map(|t| t["id"].as_u64().unwrap()).collect();
                let mut expected = ids(&greedy["new_token_ids"][row]);
                if let Some(i) = expected.iter().position(|t| stops.contains(t)) {
                    expected.truncate(i + 1);
                }
                assert_eq!(got, expected, "{name} row {row}: greedy tokens");
                let steps = &step_logits(name)[row];
                for (step, t) in tokens.iter().enumerate() {
                    let want = logprob(&steps[step], expected[step] as usize);
                    let have = t["logprob"].as_f64().unwrap();
                    assert!(
                        (have - want).abs() <= 2e-4,
                        "{name} row {row} step {step}: logprob {have}, reference {want}"
                    );
                }
            }
        }
        assert!(with_images >= 4, "image requests checked: {with_images}");
    })
    .await;
}

/// A copy of the fixture under the temp dir, with `edit` applied to one of its json files.
fn edited_copy(tag: &str, file: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("flamingo-other-shape-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(Path::new(FIXTURE_B), &dir);
    let path = dir.join(file);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Preprocessing the server cannot reproduce stops startup (non-zero exit, the reason in the
/// log) instead of failing every image request later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unservable_preprocessing_stops_startup() {
    timed(120, async {
        // (tag, file to edit, the edit, what the log must say)
        type Broken = (&'static str, &'static str, fn(&mut Value), &'static str);
        let cases: [Broken; 2] = [
            (
                "zero-std",
                "vision/open_clip_config.json",
                |v| v["preprocess_cfg"]["std"] = json!([0.229, 0.0, 0.225]),
                "std 0 is not a positive finite number",
            ),
            (
                "not-a-multiple",
                "vision/open_clip_config.json",
                |v| v["model_cfg"]["vision_cfg"]["image_size"] = json!(100),
                "image_size 100 is not a multiple of patch_size 16",
            ),
        ];
        for (tag, file, edit, message) in cases {
            let dir = edited_copy(tag, file, edit);
            // `image_preprocess` of openflamingo_config.json would override the vision config's.
            let of = dir.join("openflamingo_config.json");
            let mut v: Value =
                serde_json::from_str(&std::fs::read_to_string(&of).unwrap()).unwrap();
            v.as_object_mut().unwrap().remove("image_preprocess");
            std::fs::write(&of, v.to_string()).unwrap();
            let mut s = spawn_on(&dir);
            let status = s
                .wait_exit(Duration::from_secs(60))
                .await
                .unwrap_or_else(|| panic!("{tag}: the server kept running:\n{}", s.log()));
            assert!(!status.success(), "{tag}: exit status {status}");
            let log = s.log();
            assert!(
                log.contains(message),
                "{tag}: no `{message}` in the log:\n{log}"
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
    })
    .await;
}
