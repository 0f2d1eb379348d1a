//! Our post-processing against v1's, on the same model outputs. The real `flamingo-server`
//! (bundled tiny model, content filter off so token ids are the model's) answers the harness's
//! own few-shot prompts on `tests/eval-data/` with `details`. `v1_reference_postprocess.py`
//! reproduces v1's eval post-processing on the generated token *ids* with the reference's saved
//! tokenizer (stop at the first `<|endofchunk|>`, `skip_special_tokens=True`, the caption / VQA
//! cut) and also gives the ids' text with the special tokens spelled out, which is what the
//! harness receives. Ours (`Task::postprocess`) on that text must equal v1's prediction. The
//! answers are also re-run with special tokens after them (a server that goes on past `</s>`,
//! pads, or shows `<|endofchunk|>` and more), so every special token is exercised.
//!
//! A second check compares the server's own `generated_text` with that text.
//!
//! Needs `target/release/flamingo-server` and `python3`. `FLAMINGO_SERVER_BIN` overrides the
//! server path.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flamingo_eval::client::image_base64;
use flamingo_eval::datasets;
use flamingo_eval::prompts::Templates;
use flamingo_eval::tasks::{self, Selection, Task};
use serde_json::{json, Value};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("FLAMINGO_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let release = exe
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "release"))
        .expect("the test runs from target/release");
    release.join(format!("flamingo-server{}", std::env::consts::EXE_SUFFIX))
}

struct Server {
    child: Child,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Starts the server on a port of its choosing; returns it and its base URL.
fn start_server() -> (Server, String) {
    let bin = server_binary();
    assert!(
        bin.exists(),
        "{} is missing: cargo build --release -p flamingo-server",
        bin.display()
    );
    // One log per server: the two tests run side by side in this process.
    static SERVERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log = std::env::temp_dir().join(format!(
        "flamingo-eval-xcheck-{}-{n}.log",
        std::process::id()
    ));
    let mut cmd = Command::new(&bin);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FLAMINGO_")) {
        cmd.env_remove(k);
    }
    let child = cmd
        .current_dir(root())
        .args(["--host", "127.0.0.1", "--port", "0"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env("FLAMINGO_FILTER_MODE", "off")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawning the server");
    let mut server = Server { child, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&server.log).unwrap_or_default();
        if let Some(addr) = text
            .lines()
            .find(|l| l.contains("listening"))
            .and_then(|l| l.split("addr=").nth(1))
        {
            let addr: String = addr
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            return (server, format!("http://{addr}"));
        }
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!("the server exited with {status}:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "the server did not listen:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn without_specials(text: &str) -> String {
    flamingo_eval::prompts::SPECIAL_TOKENS
        .iter()
        .fold(text.to_string(), |t, s| t.replace(s, ""))
}

fn reference(items: &[Value]) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/v1_reference_postprocess.py");
    let tokenizer =
        root().join("tests/fixtures/tiny-openflamingo/openflamingo_tokenizer/tokenizer.json");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed for the v1 cross-check");
    let input = json!({"tokenizer": tokenizer, "items": items}).to_string();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the reference script failed");
    serde_json::from_slice(&out.stdout).expect("the reference's JSON")
}

/// (task, generated ids, server's generated_text) for the harness's prompts on the eval data.
async fn model_outputs() -> Vec<(Task, Vec<u64>, String)> {
    let (_server, url) = start_server();
    let http = reqwest::Client::new();
    let ready = Instant::now() + Duration::from_secs(60);
    while !http
        .get(format!("{url}/ready"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < ready, "the server did not get ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let data = root().join("tests/eval-data");
    let t = Templates::default();
    let coco = tasks::coco_data(
        datasets::load_karpathy(
            &data.join("dataset_coco.json"),
            &data,
            &["train".to_string()],
        )
        .unwrap(),
        datasets::load_karpathy(
            &data.join("dataset_coco.json"),
            &data,
            &["test".to_string()],
        )
        .unwrap(),
        &t,
    );
    let vqa_file = |f: &str| data.join(f);
    let vqa = tasks::vqa_data(
        datasets::load_vqa(
            &vqa_file("v2_OpenEnded_mscoco_train2014_questions.json"),
            &vqa_file("v2_mscoco_train2014_annotations.json"),
            &data.join("images"),
            "img_{image_id}.png",
        )
        .unwrap(),
        datasets::load_vqa(
            &vqa_file("v2_OpenEnded_mscoco_val2014_questions.json"),
            &vqa_file("v2_mscoco_val2014_annotations.json"),
            &data.join("images"),
            "img_{image_id}.png",
        )
        .unwrap(),
        &t,
    );

    // (task, server ids, server text) for every answer.
    let mut outputs: Vec<(Task, Vec<u64>, String)> = Vec::new();
    for data in [&coco, &vqa] {
        for (shots, seed) in [(0, 1), (2, 2), (2, 3)] {
            let sel = Selection {
                seed,
                num_samples: None,
                query_set_size: 0,
            };
            for job in tasks::build_jobs(data, shots, sel).unwrap() {
                let mut images = Vec::new();
                for p in &job.prompt.images {
                    images.push(image_base64(p).await.unwrap());
                }
                let body = json!({"inputs": job.prompt.text, "images": images,
                    "parameters": {"max_new_tokens": 24, "details": true}});
                let r: Value = http
                    .post(format!("{url}/generate"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let text = r["generated_text"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{r}"));
                let ids = r["details"]["tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["id"].as_u64().unwrap())
                    .collect();
                outputs.push((data.task, ids, text.to_string()));
            }
        }
    }
    assert!(outputs.len() >= 30, "{} outputs", outputs.len());

    outputs
}

struct Reference {
    prediction: String,
    text: String,
    decoded: String,
}

fn reference_of(cases: &[(Task, Vec<u64>)]) -> Vec<Reference> {
    let items: Vec<Value> = cases
        .iter()
        .map(|(task, ids)| json!({"task": task.name(), "ids": ids}))
        .collect();
    reference(&items)
        .into_iter()
        .map(|v| Reference {
            prediction: v["prediction"].as_str().unwrap().to_string(),
            text: v["text"].as_str().unwrap().to_string(),
            decoded: v["decoded"].as_str().unwrap().to_string(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postprocessing_agrees_with_v1_on_the_same_outputs() {
    let outputs = model_outputs().await;
    // The same answers with specials after them, as the reference tokenizer spells them
    // (ids: </s> 2, <|endofchunk|> 400, <image> 401, <PAD> 402).
    let tails: [&[u64]; 4] = [&[2], &[402, 402], &[2, 401, 400], &[400, 1, 358]];
    let mut cases: Vec<(Task, Vec<u64>)> = outputs
        .iter()
        .map(|(task, ids, _)| (*task, ids.clone()))
        .collect();
    for (i, (task, ids, _)) in outputs.iter().enumerate() {
        let mut ids = ids.clone();
        ids.extend_from_slice(tails[i % tails.len()]);
        cases.push((*task, ids));
    }
    let want = reference_of(&cases);
    let mut mismatches = Vec::new();
    for ((task, ids), want) in cases.iter().zip(&want) {
        let ours = task.postprocess(&want.text);
        if ours != want.prediction {
            mismatches.push(format!(
                "{}: ids {ids:?}, text {:?}: ours {ours:?}, v1 {:?}",
                task.name(),
                want.text,
                want.prediction
            ));
        }
    }
    let with_specials = outputs
        .iter()
        .filter(|(_, ids, _)| ids.iter().any(|i| !(3..400).contains(i)))
        .count();
    eprintln!(
        "{} cases ({} server answers, {with_specials} of them with special tokens), {} mismatches",
        cases.len(),
        outputs.len(),
        mismatches.len()
    );
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// The server's `generated_text` is the tokenizer's decoding of the tokens it generated (special
/// tokens aside: whether the server shows them or not, the harness removes them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fails today: flamingo-server drops or changes the text after byte-fallback tokens \
            that are not valid UTF-8 (the tokenizer decodes them as U+FFFD and goes on); \
            reported to the lead (issue 14). Run with --ignored."]
async fn server_text_is_the_decoding_of_its_tokens() {
    let outputs = model_outputs().await;
    let cases: Vec<(Task, Vec<u64>)> = outputs
        .iter()
        .map(|(task, ids, _)| (*task, ids.clone()))
        .collect();
    let want = reference_of(&cases);
    let mismatches: Vec<String> = outputs
        .iter()
        .zip(&want)
        .filter(|((_, _, text), want)| without_specials(text) != want.decoded)
        .map(|((_, ids, text), want)| {
            format!("ids {ids:?}: server {text:?}, tokenizer {:?}", want.decoded)
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} of {} differ:\n{}",
        mismatches.len(),
        outputs.len(),
        mismatches.join("\n")
    );
}
