//! One small hostile request must not stall, starve or leak through the server: each test here
//! is an attack that worked before the hardening (issue 13), through the real binary. Times are
//! generous caps (the attacks took tens of seconds to minutes before), never tight figures.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{image_b64, timed, Server};

use serde_json::json;

fn host_port(s: &Server) -> String {
    s.base.trim_start_matches("http://").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_of_markdown_openers_is_refused_fast_and_health_keeps_answering() {
    timed(120, async {
        let s = Server::start().await;
        let body = json!({"inputs": "![".repeat(512 * 1024)});
        let mut worst = Duration::ZERO;
        let started = Instant::now();
        let work = async {
            let (a, b) = tokio::join!(s.post("/generate", &body), s.post("/generate", &body));
            a.assert_error(422, "validation");
            b.assert_error(422, "validation");
        };
        // Before: two such requests froze /health for 21 s and each took ~146 s.
        tokio::pin!(work);
        loop {
            tokio::select! {
                _ = &mut work => break,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    let t = Instant::now();
                    assert_eq!(s.get("/health").await.status, 200);
                    worst = worst.max(t.elapsed());
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        assert!(worst < Duration::from_secs(2), "/health took {worst:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_prompt_is_refused_by_size_before_tokenizing() {
    timed(120, async {
        let s = Server::start().await;
        let body = json!({"inputs": "a ".repeat(12 * 1024 * 1024)});
        let started = Instant::now();
        let r = s.post("/generate", &body).await;
        r.assert_error(422, "validation");
        assert!(r.text.contains("bytes"), "{}", r.text);
        // Before: 20 s and 3.3 GB to tokenize it first.
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
        // The same text on /tokenize meets the same bound.
        let started = Instant::now();
        let r = s.post("/tokenize", &body).await;
        r.assert_error(422, "validation");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_image_is_decoded_once_and_a_cached_one_not_at_all() {
    timed(120, async {
        let s = Server::start().await;
        let img = image_b64("rings");
        let body = json!({
            "inputs": format!("{}Output:", "<image>".repeat(16)),
            "images": vec![img; 16],
            "parameters": {"max_new_tokens": 1},
        });
        let before = s
            .metric("flamingo_images_decoded_total")
            .await
            .unwrap_or(0.0);
        let r = s.post("/generate", &body).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let after_first = s.metric("flamingo_images_decoded_total").await.unwrap();
        assert_eq!(after_first - before, 1.0, "16 copies, one decode");
        let r = s.post("/generate", &body).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let after_second = s.metric("flamingo_images_decoded_total").await.unwrap();
        assert_eq!(
            after_second, after_first,
            "features cached: no decode at all"
        );
    })
    .await
}

/// Slow-loris: connections that never finish their headers are closed after the header-read
/// timeout; past the connection cap new ones get a 503 at once; `/health` answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_timed_out_and_capped() {
    timed(60, async {
        let s = Server::start_with(&[
            ("FLAMINGO_SERVER_HEADER_READ_TIMEOUT_S", "2"),
            ("FLAMINGO_SERVER_MAX_CONNECTIONS", "8"),
        ])
        .await;
        let addr = host_port(&s);
        let mut held = Vec::new();
        for _ in 0..8 {
            let mut c = TcpStream::connect(&addr).unwrap();
            c.write_all(b"POST /generate HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            held.push(c);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The ninth is over the cap: answered 503 and closed.
        let mut extra = TcpStream::connect(&addr).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answer = String::new();
        let _ = extra.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
        // The held ones are closed by the header-read timeout.
        let started = Instant::now();
        for c in &mut held {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = Vec::new();
            let _ = c.read_to_end(&mut buf);
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(s.get("/health").await.status, 200);
        assert!(
            s.metric("flamingo_connections_refused_total")
                .await
                .unwrap_or(0.0)
                >= 1.0
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_do_not_hold_the_drain() {
    timed(60, async {
        let mut s = Server::start_with(&[("FLAMINGO_SERVER_DRAIN_TIMEOUT_S", "30")]).await;
        let addr = host_port(&s);
        let mut held = Vec::new();
        for _ in 0..5 {
            let mut c = TcpStream::connect(&addr).unwrap();
            c.write_all(b"POST /generate HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"inputs\":")
                .unwrap();
            held.push(c);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        s.sigterm();
        let status = s.wait_exit(Duration::from_secs(20)).await.expect("exits");
        assert!(status.success(), "{status:?}");
        // Before: the five held the drain for its whole 30 s.
        assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pre_stop_window_says_not_ready_but_still_serves() {
    timed(60, async {
        let mut s = Server::start_with(&[("FLAMINGO_SERVER_PRESTOP_S", "3")]).await;
        s.sigterm();
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.get("/ready").await.assert_error(503, "unavailable");
        let r = s
            .post(
                "/generate",
                &json!({"inputs": "Hi", "parameters": {"max_new_tokens": 2}}),
            )
            .await;
        assert_eq!(r.status, 200, "still serving in the window: {}", r.text);
        let status = s.wait_exit(Duration::from_secs(20)).await.expect("exits");
        assert!(status.success());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_memory_is_an_admission_criterion() {
    timed(60, async {
        let probe = Server::start().await;
        let line = probe
            .log()
            .lines()
            .find(|l| l.contains("admission budgets"))
            .expect("budgets logged")
            .to_string();
        let per_position: usize = line
            .split("kv_bytes_per_position=")
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("kv_bytes_per_position");
        drop(probe);
        // Room for ~60 positions of one row (the tiny model's context is 128).
        let budget = (per_position * 60).to_string();
        let s = Server::start_with(&[("FLAMINGO_LIMITS_MAX_KV_BYTES", budget.as_str())]).await;
        let ask = |n: u32, beams: u32| json!({"inputs": "Hello", "parameters": {"max_new_tokens": n, "num_beams": beams}});
        let r = s.post("/generate", &ask(100, 1)).await;
        r.assert_error(422, "validation");
        assert!(r.text.contains("max_kv_bytes"), "{}", r.text);
        let r = s.post("/generate", &ask(30, 4)).await;
        r.assert_error(422, "validation");
        assert!(r.text.contains("max_kv_bytes"), "{}", r.text);
        let r = s.post("/generate", &ask(5, 1)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        // Two that fit alone but not together both finish (one waits for the other).
        let long = ask(35, 1);
        let (a, b) = tokio::join!(s.post("/generate", &long), s.post("/generate", &long));
        assert_eq!((a.status.as_u16(), b.status.as_u16()), (200, 200), "{} {}", a.text, b.text);
        assert!(s.metric("flamingo_kv_reserved_bytes").await.is_some());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_content_length_is_refused_before_the_body() {
    timed(30, async {
        let s = Server::start().await;
        let mut c = TcpStream::connect(host_port(&s)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"POST /generate HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 67108864\r\nexpect: 100-continue\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = c.read(&mut buf).unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 413"), "{head:?}");

        // A client that sends the whole 64 MB anyway reads a 413, not a broken pipe.
        let mut c = TcpStream::connect(host_port(&s)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(b"POST /generate HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 67108864\r\n\r\n")
            .unwrap();
        let mut writer = c.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let chunk = vec![b' '; 1 << 20];
            (0..64).all(|_| writer.write_all(&chunk).is_ok())
        });
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer);
        let sent_all = sender.join().unwrap();
        let head = String::from_utf8_lossy(&answer);
        assert!(head.starts_with("HTTP/1.1 413"), "{head:?}");
        assert!(sent_all, "the body was read away, not cut with a reset");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hygiene_of_ids_errors_and_parameters() {
    timed(60, async {
        let s = Server::start_with(&[("FLAMINGO_SERVER_API_KEYS", "k1")]).await;
        let key = |r: reqwest::RequestBuilder| r.header("authorization", "Bearer k1");
        let valid = regex_like_request_id;
        // A hostile request id is replaced; a sane one is echoed.
        for (sent, echoed) in [
            ("a".repeat(300), false),
            ("a b".into(), false),
            ("req-1.A_b".into(), true),
        ] {
            let r = s
                .post_with(key(s.client.get(s.url("/info"))).header("x-request-id", &sent))
                .await;
            let got = r.header("x-request-id").unwrap_or_default().to_string();
            assert!(valid(&got), "{got:?}");
            assert_eq!(got == sent, echoed, "{sent:?} -> {got:?}");
        }
        // Echoed input is capped.
        let huge_role = json!({"messages": [{"role": "x".repeat(1_000_000), "content": "hi"}]});
        let r = s
            .post_with(key(s.client.post(s.url("/v1/chat/completions"))).json(&huge_role))
            .await;
        assert!(
            r.status.is_client_error() && r.text.len() < 4096,
            "{} bytes",
            r.text.len()
        );
        // /v1 names OpenAI's fields.
        let r = s
            .post_with(
                key(s.client.post(s.url("/v1/chat/completions"))).json(&json!({
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000})),
            )
            .await;
        r.assert_openai_error(422, "validation");
        assert_eq!(r.json["error"]["param"], "max_tokens", "{}", r.text);
        assert!(!r.text.contains("max_new_tokens"), "{}", r.text);
        // max_completion_tokens winning does not hide an out-of-range max_tokens.
        let r = s
            .post_with(key(s.client.post(s.url("/v1/chat/completions"))).json(&json!({
                "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 2, "max_tokens": 100000})))
            .await;
        r.assert_openai_error(422, "validation");
        assert_eq!(r.json["error"]["param"], "max_tokens", "{}", r.text);
        // Greedy (temperature 0) does not hide an out-of-range top_k / top_p.
        for (field, value) in [("top_k", json!(0)), ("top_p", json!(0.0))] {
            let mut body =
                json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 0});
            body[field] = value;
            let r = s
                .post_with(key(s.client.post(s.url("/v1/chat/completions"))).json(&body))
                .await;
            r.assert_openai_error(422, "validation");
            assert_eq!(r.json["error"]["param"], field, "{}", r.text);
        }
        // /v1 401s keep WWW-Authenticate.
        let r = s
            .post("/v1/chat/completions", &json!({"messages": []}))
            .await;
        r.assert_openai_error(401, "unauthorized");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        // Out-of-range values the spec refuses.
        for params in [
            json!({"best_of": 0}),
            json!({"typical_p": 1.5}),
            json!({"repetition_penalty": 1e-40}),
        ] {
            let r = s
                .post_with(
                    key(s.client.post(s.url("/generate")))
                        .json(&json!({"inputs": "x", "parameters": params})),
                )
                .await;
            r.assert_error(422, "validation");
        }
    })
    .await
}

fn regex_like_request_id(v: &str) -> bool {
    (1..=128).contains(&v.len())
        && v.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

#[test]
fn print_config_redacts_api_keys() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flamingo-server"))
        .arg("--print-config")
        .env("FLAMINGO_SERVER_API_KEYS", "secret123")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("secret123"), "{text}");
    assert!(text.contains("<redacted>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_in_a_request_whose_client_left_stop_decoding() {
    timed(60, async {
        let s = Server::start_with(&[("FLAMINGO_LIMITS_PREPROCESS_SLOTS", "1")]).await;
        // 16 distinct images; the client gives up at once.
        // One big picture under 16 different byte strings: 16 decodes of tens of ms each.
        let big = common::png_solid(5000, 4000, 7);
        let imgs: Vec<String> = (0..16)
            .map(|i| common::b64(&common::png_with_text(&big, &i.to_string())))
            .collect();
        let body = json!({"inputs": format!("{}Output:", "<image>".repeat(16)), "images": imgs, "parameters": {"max_new_tokens": 1}});
        let before = s.metric("flamingo_images_decoded_total").await.unwrap_or(0.0);
        let _ = tokio::time::timeout(
            Duration::from_millis(300),
            s.client.post(s.url("/generate")).json(&body).send(),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let decoded = s.metric("flamingo_images_decoded_total").await.unwrap_or(0.0) - before;
        assert!(decoded >= 1.0, "the request reached decoding before the client left");
        assert!(decoded < 16.0, "decoding went on for a client that left: {decoded}");
    })
    .await
}

/// Images encoded on the preprocessing thread (limits.encode_images_in_preprocessing) and
/// long prompts prefilled in small chunks give exactly the default server's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_worker_encoding_and_small_prefill_chunks_change_nothing() {
    timed(60, async {
        let body = json!({
            "inputs": "<image>Output:A checker.<|endofchunk|><image>Output:",
            "images": [image_b64("checker"), image_b64("rings")],
            "parameters": {"max_new_tokens": 8, "details": true},
        });
        let plain = Server::start().await.post("/generate", &body).await;
        assert_eq!(plain.status, 200, "{}", plain.text);
        let other = Server::start_with(&[
            ("FLAMINGO_LIMITS_ENCODE_IMAGES_IN_PREPROCESSING", "true"),
            ("FLAMINGO_LIMITS_MAX_PREFILL_CHUNK_TOKENS", "3"),
        ])
        .await;
        let r = other.post("/generate", &body).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["details"]["tokens"], plain.json["details"]["tokens"]);
        assert_eq!(r.json["generated_text"], plain.json["generated_text"]);
    })
    .await
}
