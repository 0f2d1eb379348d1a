//! End to end: the real `flamingo-server` (its default, bundled tiny model) + the
//! `flamingo-eval` CLI on the synthetic dataset in `tests/eval-data/`: both tasks, 0 and 2
//! shots, concurrency 4, then a resumed run that must send nothing.
//!
//! Needs `target/release/flamingo-server` (`cargo build --release -p flamingo-server`).
//! `FLAMINGO_SERVER_BIN` overrides the server path (it gets the same arguments).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// `target/release/flamingo-server`, found by walking up from this test executable
/// (`target/release/deps/pipeline-*`).
fn server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("FLAMINGO_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let release = exe
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "release"))
        .unwrap_or_else(|| panic!("{} is not under a target/release directory", exe.display()));
    release.join(format!("flamingo-server{}", std::env::consts::EXE_SUFFIX))
}

/// Kills the server when the test ends, panics included.
struct ServerGuard {
    child: Child,
    log: PathBuf,
}

impl ServerGuard {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text[text
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| i >= start)
            .unwrap_or(0)..]
            .to_string()
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Status code of `GET path`, or None if the server is not accepting connections yet.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1)?.parse().ok()
}

fn start_server(tmp: &Path) -> (ServerGuard, u16) {
    let bin = server_binary();
    assert!(
        bin.is_file(),
        "flamingo-server binary not found at {}: build it first with `cargo build --release -p flamingo-server` \
         (or point FLAMINGO_SERVER_BIN at a server)",
        bin.display()
    );
    let port = free_port();
    let log = tmp.join("server.log");
    let out = std::fs::File::create(&log).expect("server log");
    let child = Command::new(&bin)
        .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup log"))
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let mut guard = ServerGuard { child, log };
    let t0 = Instant::now();
    loop {
        if http_status(port, "/ready") == Some(200) {
            return (guard, port);
        }
        if let Ok(Some(status)) = guard.child.try_wait() {
            panic!(
                "flamingo-server exited early ({status}); log:\n{}",
                guard.log_tail()
            );
        }
        if t0.elapsed() > READY_TIMEOUT {
            panic!(
                "flamingo-server not ready after {READY_TIMEOUT:?}; log:\n{}",
                guard.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs the CLI; returns its stdout summary line as JSON.
fn run_eval(port: u16, out_dir: &Path, server: &ServerGuard) -> Value {
    let data = workspace_root().join("tests/eval-data");
    let d = |f: &str| data.join(f).to_string_lossy().into_owned();
    let output = Command::new(env!("CARGO_BIN_EXE_flamingo-eval"))
        .args(["--url", &format!("http://127.0.0.1:{port}")])
        .args([
            "--tasks",
            "coco,vqav2",
            "--shots",
            "0,2",
            "--seeds",
            "7",
            "--concurrency",
            "4",
        ])
        .args([
            "--query-set-size",
            "0",
            "--out-dir",
            &out_dir.to_string_lossy(),
        ])
        .args([
            "--coco-karpathy-json",
            &d("dataset_coco.json"),
            "--coco-images",
            &d(""),
        ])
        .args([
            "--vqa-train-questions",
            &d("v2_OpenEnded_mscoco_train2014_questions.json"),
        ])
        .args([
            "--vqa-train-annotations",
            &d("v2_mscoco_train2014_annotations.json"),
        ])
        .args([
            "--vqa-train-images",
            &d("images"),
            "--vqa-images",
            &d("images"),
        ])
        .args([
            "--vqa-questions",
            &d("v2_OpenEnded_mscoco_val2014_questions.json"),
        ])
        .args([
            "--vqa-annotations",
            &d("v2_mscoco_val2014_annotations.json"),
        ])
        .args(["--vqa-image-template", "img_{image_id}.png"])
        .output()
        .expect("running flamingo-eval");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "flamingo-eval failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
        output.status,
        server.log_tail()
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("summary line is not JSON ({e}): {stdout}"))
}

#[test]
fn full_pipeline_against_real_server_and_resume() {
    let tmp = std::env::temp_dir().join(format!("flamingo-eval-pipeline-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("tmp dir");
    let (server, port) = start_server(&tmp);
    let out_dir = tmp.join("out");

    // 4 COCO test images + 12 VQA val questions, at 0 and 2 shots.
    let expected_items = (4 + 12) * 2;
    let first = run_eval(port, &out_dir, &server);
    assert_eq!(first["answered"], expected_items, "{first}");
    assert_eq!(first["failed"], 0, "{first}");
    assert!(
        first["requests_sent"].as_u64().unwrap() >= expected_items,
        "{first}"
    );

    let results: Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("results.json")).expect("results.json"),
    )
    .expect("results.json is JSON");
    let table = results["table"].as_array().expect("table");
    for task in ["coco", "vqav2"] {
        for shots in [0, 2] {
            let cell = table
                .iter()
                .find(|c| c["task"] == task && c["shots"] == shots)
                .unwrap_or_else(|| panic!("no {task} {shots}-shot cell in {table:?}"));
            assert_eq!(cell["complete"], true, "{cell}");
            let score = cell["mean"].as_f64().expect("a score");
            assert!((0.0..=100.0 * 10.0).contains(&score), "{cell}");
            let jsonl = out_dir.join(format!("predictions/{task}_{shots}shot_seed7.jsonl"));
            let lines = std::fs::read_to_string(&jsonl)
                .expect("predictions jsonl")
                .lines()
                .count();
            assert_eq!(
                lines,
                if task == "coco" { 4 } else { 12 },
                "{}",
                jsonl.display()
            );
        }
    }
    let md = std::fs::read_to_string(out_dir.join("results.md")).expect("results.md");
    assert!(md.contains("| 0 |") && md.contains("| 2 |"), "{md}");
    assert!(
        md.contains("coco CIDEr") && md.contains("vqav2 VQA accuracy"),
        "{md}"
    );

    // Resuming finds everything answered and sends no request.
    let second = run_eval(port, &out_dir, &server);
    assert_eq!(second["requests_sent"], 0, "{second}");
    assert_eq!(second["skipped"], expected_items, "{second}");
    assert_eq!(second["answered"], 0, "{second}");

    drop(server);
    let _ = std::fs::remove_dir_all(&tmp);
}
