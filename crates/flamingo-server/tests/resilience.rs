//! Failure paths: the model worker dying mid-generation, and configuration mistakes that must
//! stop startup with a message naming the culprit.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{image_b64, timed, Server};
use serde_json::json;

/// The worker thread panics (test hook) at its third step: the request being generated gets an
/// error instead of hanging, `/ready` and `/health` turn 503, new generations are refused at once
/// with `Retry-After`, and the process itself keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs the test-hooks feature")]
async fn a_dead_worker_means_503_not_a_hang() {
    timed(60, async {
        let s = Server::start_with(&[("FLAMINGO_TEST_PANIC_AT_STEP", "3")]).await;
        let body = json!({"inputs": "<image>Output:", "images": [image_b64("checker")], "parameters": {"max_new_tokens": 20}});
        let started = Instant::now();
        let r = s.post("/generate", &body).await;
        assert!(started.elapsed() < Duration::from_secs(10), "answered promptly");
        r.assert_error(503, "unavailable");
        assert!(r.header("retry-after").is_some());

        let ready = s.get("/ready").await;
        ready.assert_error(503, "unavailable");
        assert!(ready.header("retry-after").is_some());
        // Liveness fails too, so an orchestrator restarts the process; /info shows no stale queue.
        s.get("/health").await.assert_error(503, "unavailable");
        let info = s.get("/info").await.json;
        assert_eq!(info["ready"], false);
        assert_eq!(info["queued"], 0);
        assert_eq!(info["active_sequences"], 0);

        s.post("/generate", &body).await.assert_error(503, "unavailable");
        s.post("/generate_stream", &body).await.assert_error(503, "unavailable");
        let chat = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3});
        s.post("/v1/chat/completions", &chat).await.assert_openai_error(503, "unavailable");
        assert_eq!(s.metric("flamingo_worker_alive").await, Some(0.0));
        assert!(s.log().contains("model worker died"), "the death is logged");
    })
    .await
}

/// A stream that has started gets an `event: error` when the worker dies under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs the test-hooks feature")]
async fn a_dead_worker_ends_a_started_stream_with_an_error_event() {
    timed(60, async {
        // Filter off: it would hold the random model's unspaced output until the end.
        let s = Server::start_with(&[
            ("FLAMINGO_TEST_PANIC_AT_STEP", "4"),
            ("FLAMINGO_FILTER_MODE", "off"),
        ])
        .await;
        let body = json!({"inputs": "Hello", "parameters": {"max_new_tokens": 30}});
        let mut sse = s.stream("/generate_stream", &body).await;
        assert_eq!(sse.status, 200);
        let events = sse.all().await;
        let last = events.last().expect("events");
        assert_eq!(last.event.as_deref(), Some("error"), "{events:?}");
        assert_eq!(last.json()["error_type"], "unavailable");
        assert!(
            events.len() >= 2,
            "tokens came before the error: {events:?}"
        );
    })
    .await
}

fn run_server(
    args: &[&str],
    env: &[(&str, &str)],
    cwd: Option<&std::path::Path>,
) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flamingo-server"));
    cmd.args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FLAMINGO_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().expect("run flamingo-server");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn configuration_mistakes_stop_startup_and_name_the_key() {
    let dir = std::env::temp_dir().join(format!("flamingo-resilience-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");

    std::fs::write(&file, "[limits]\nmax_qeue = 3\n").unwrap();
    let (code, _, err) = run_server(&["--config", file.to_str().unwrap()], &[], None);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("max_qeue"), "names the unknown key: {err}");

    std::fs::write(&file, "[sever]\nport = 1\n").unwrap();
    let (code, _, err) = run_server(&["--config", file.to_str().unwrap()], &[], None);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("sever"), "names the unknown section: {err}");

    std::fs::write(&file, "[model]\ndtype = \"f64\"\n").unwrap();
    let (code, _, err) = run_server(&["--config", file.to_str().unwrap()], &[], None);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("model.dtype"), "names the key: {err}");

    let (code, _, err) = run_server(
        &["--port", "0"],
        &[("FLAMINGO_LIMITS_MAX_BATCH_SIZE", "many")],
        None,
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("FLAMINGO_LIMITS_MAX_BATCH_SIZE"),
        "names the variable: {err}"
    );

    let (code, _, err) = run_server(
        &["--port", "0"],
        &[("FLAMINGO_SERVER_ALLOW_IMAGE_URLS", "true")],
        None,
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("server.allow_image_urls"), "{err}");

    let (code, _, err) = run_server(
        &["--port", "0", "--model-dir", "/nonexistent/model"],
        &[],
        None,
    );
    assert_eq!(code, Some(1), "a missing model fails the start: {err}");
    assert!(err.contains("/nonexistent/model"), "names the path: {err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `--print-config` shows the effective configuration; with nothing set it is
/// `config/default.toml`'s values, and flags and variables land in it.
#[test]
fn print_config_reflects_flags_and_environment() {
    let (code, out, err) = run_server(
        &["--print-config", "--port", "9999"],
        &[("FLAMINGO_LIMITS_MAX_QUEUE", "5")],
        None,
    );
    assert_eq!(code, Some(0), "{err}");
    let cfg: toml::Table = out.parse().expect("TOML");
    assert_eq!(cfg["server"]["port"].as_integer(), Some(9999));
    assert_eq!(cfg["limits"]["max_queue"].as_integer(), Some(5));
    assert_eq!(
        cfg["model"]["dir"].as_str(),
        Some("tests/fixtures/tiny-openflamingo")
    );
}

/// The bundled tiny model is found from any working directory (a fresh clone, `cargo run`
/// from elsewhere): relative model paths fall back to the source checkout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_with_the_default_model_from_any_directory() {
    timed(60, async {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flamingo-server"))
            .args(["--host", "127.0.0.1", "--port", "0"])
            .current_dir(std::env::temp_dir())
            .env_remove("FLAMINGO_MODEL_DIR")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let addr = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(a) = line.split("addr=").nth(1) {
                    return a.split_whitespace().next().map(str::to_string);
                }
            }
            None
        })
        .await
        .unwrap()
        .expect("listening line");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut ready = false;
        while Instant::now() < deadline {
            if client
                .get(format!("http://{addr}/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            ready,
            "ready with the default model from {}",
            std::env::temp_dir().display()
        );
    })
    .await
}
