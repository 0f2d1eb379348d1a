//! Operations: overload, deadlines, client disconnects, SIGTERM drain, API keys, CORS and the
//! informational routes.

mod common;

use std::time::{Duration, Instant};

use common::{image_b64, timed, Server, MODEL_ID};
use futures::future::join_all;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_gets_429_with_retry_after() {
    timed(120, async {
        let s = Server::start_with(&[
            ("FLAMINGO_LIMITS_MAX_QUEUE", "1"),
            ("FLAMINGO_LIMITS_MAX_BATCH_SIZE", "1"),
            ("FLAMINGO_LIMITS_MAX_BEAMS", "1"),
        ])
        .await;
        let body = json!({"inputs": "Hi", "parameters": {"max_new_tokens": 100}});
        let replies = join_all((0..40).map(|_| s.post("/generate", &body))).await;
        let (mut ok, mut busy) = (0, 0);
        for r in &replies {
            match r.status.as_u16() {
                200 => {
                    ok += 1;
                    assert!(r.json["generated_text"].is_string());
                }
                429 => {
                    busy += 1;
                    r.assert_error(429, "overloaded");
                    let retry = r.header("retry-after").expect("429 carries Retry-After");
                    assert!(
                        retry.parse::<u64>().is_ok_and(|v| v >= 1),
                        "Retry-After {retry}"
                    );
                }
                other => panic!("unexpected status {other}: {}", r.text),
            }
        }
        eprintln!("overload: {ok} answered, {busy} refused with 429");
        assert!(ok >= 1 && busy >= 1, "{ok} answered, {busy} refused");
        // The stream route refuses the same way, before streaming.
        let replies = join_all((0..20).map(|_| async {
            let r = s
                .client
                .post(s.url("/generate_stream"))
                .json(&body)
                .send()
                .await
                .expect("stream request");
            let status = r.status().as_u16();
            let retry = r.headers().get("retry-after").is_some();
            let _ = r.bytes().await;
            (status, retry)
        }))
        .await;
        assert!(
            replies
                .iter()
                .all(|(st, retry)| *st == 200 || (*st == 429 && *retry)),
            "{replies:?}"
        );
        assert!(
            s.eventually(Duration::from_secs(10), || async {
                s.active_sequences().await == 0
            })
            .await
        );
        let r = s
            .post(
                "/generate",
                &json!({"inputs": "Hi", "parameters": {"max_new_tokens": 3}}),
            )
            .await;
        assert_eq!(
            r.status, 200,
            "serves again once the queue drained: {}",
            r.text
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs the test-hooks feature")]
async fn requests_past_their_deadline_get_504() {
    timed(120, async {
        let s = Server::start_with(&[
            ("FLAMINGO_SERVER_REQUEST_TIMEOUT_S", "1"),
            ("FLAMINGO_LIMITS_MAX_BATCH_SIZE", "1"),
            ("FLAMINGO_LIMITS_MAX_BEAMS", "1"),
            SLOW_STEPS,
        ])
        .await;
        let body = json!({"inputs": "Hi", "parameters": {"max_new_tokens": 100}});
        // 30 x 100 tokens one at a time, at ≥ 2 ms a step, cannot all finish within a second
        // (the tiny model alone is fast enough to, so the steps are slowed down).
        let replies = join_all((0..30).map(|_| s.post("/generate", &body))).await;
        let mut timeouts = 0;
        for r in &replies {
            match r.status.as_u16() {
                200 => {}
                504 => {
                    r.assert_error(504, "timeout");
                    timeouts += 1;
                }
                other => panic!("unexpected status {other}: {}", r.text),
            }
        }
        eprintln!("deadline: {timeouts} of 30 requests got 504");
        assert!(timeouts >= 1, "some requests pass their 1 s deadline");
        assert!(
            s.eventually(Duration::from_secs(5), || async {
                let info = s.get("/info").await.json;
                info["active_sequences"] == 0 && info["queued"] == 0
            })
            .await,
            "expired work leaves the batch"
        );
        let r = s
            .post(
                "/generate",
                &json!({"inputs": "Hi", "parameters": {"max_new_tokens": 3}}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    })
    .await
}

/// Test hook (where the server has it): a pause after every model step, so generations are
/// reliably still running when the test acts on them.
const SLOW_STEPS: (&str, &str) = ("FLAMINGO_TEST_STEP_DELAY_MS", "2");
/// The random-weight model's output is one long unspaced "word": the content filter holds a
/// word's tokens (ids included) until it is complete, so a stream would show nothing until the
/// end. Disconnect tests need tokens as they are made.
const NO_FILTER: (&str, &str) = ("FLAMINGO_FILTER_MODE", "off");

/// Opens a 120-token stream, reads two events and drops the connection.
async fn disconnect_after_two_events(s: &Server) {
    let body = json!({"inputs": "Hi", "parameters": {"max_new_tokens": 120}});
    let mut sse = s.stream("/generate_stream", &body).await;
    assert_eq!(sse.status, 200, "stream status");
    for _ in 0..2 {
        let e = sse.next().await.expect("a token event");
        assert!(e.json()["generated_text"].is_null(), "still generating");
    }
    drop(sse);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs the test-hooks feature")]
async fn client_disconnect_frees_the_sequence() {
    timed(60, async {
        let s = Server::start_with(&[SLOW_STEPS, NO_FILTER]).await;
        disconnect_after_two_events(&s).await;
        assert!(
            s.eventually(Duration::from_secs(5), || async {
                s.active_sequences().await == 0
            })
            .await,
            "a disconnected stream leaves the batch"
        );
        let generated = s
            .metric("flamingo_generated_tokens_total")
            .await
            .unwrap_or(0.0);
        assert!(
            generated < 120.0,
            "generation stopped early ({generated} of 120 tokens)"
        );
        // Still serving.
        let r = s
            .post(
                "/generate",
                &json!({"inputs": "Hi", "parameters": {"max_new_tokens": 3}}),
            )
            .await;
        assert_eq!(r.status, 200);
    })
    .await
}

/// Sequences dropped because their client left: `flamingo_cancelled_total`, or
/// `flamingo_sequences_evicted_total{reason="client_gone"}` where the server names it so.
async fn cancelled(s: &Server) -> f64 {
    let text = s.get("/metrics").await.text;
    let old = common::parse_metric(&text, "flamingo_cancelled_total").unwrap_or(0.0);
    let new: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("flamingo_sequences_evicted_total{")
                && l.contains("reason=\"client_gone\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    old + new
}

/// Every disconnect that frees a sequence is counted (`flamingo_cancelled_total`, or
/// `flamingo_sequences_evicted_total{reason="client_gone"}`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs the test-hooks feature")]
async fn client_disconnects_are_counted_as_cancelled() {
    timed(60, async {
        let s = Server::start_with(&[SLOW_STEPS, NO_FILTER]).await;
        for _ in 0..3 {
            disconnect_after_two_events(&s).await;
            assert!(
                s.eventually(Duration::from_secs(5), || async {
                    s.active_sequences().await == 0
                })
                .await
            );
        }
        let generated = s
            .metric("flamingo_generated_tokens_total")
            .await
            .unwrap_or(0.0);
        assert!(
            generated < 360.0,
            "the streams were cut short ({generated} tokens)"
        );
        let c = cancelled(&s).await;
        eprintln!(
            "disconnects: {generated} tokens generated for 3 x 120 asked, {c} counted as cancelled"
        );
        assert!(
            c >= 3.0,
            "3 disconnected streams, but the cancellation counter says {c}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "test-hooks"), ignore = "needs the test-hooks feature")]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    timed(90, async {
        let mut s = Server::start_with(&[("FLAMINGO_SERVER_DRAIN_TIMEOUT_S", "20"), ("FLAMINGO_LIMITS_MAX_BATCH_SIZE", "1"),
            ("FLAMINGO_LIMITS_MAX_BEAMS", "1"), SLOW_STEPS]).await;
        let imgs = [image_b64("rings"), image_b64("stripes"), image_b64("checker")];
        let body = json!({"inputs": "<image><image><image>Output:", "images": imgs, "parameters": {"max_new_tokens": 100}});
        let mut inflight = Vec::new();
        for _ in 0..4 {
            let (client, url, body) = (s.client.clone(), s.url("/generate"), body.clone());
            inflight.push(tokio::spawn(async move {
                let r = client.post(url).json(&body).send().await.expect("in-flight request got an answer");
                let status = r.status().as_u16();
                (status, r.text().await.expect("in-flight body"))
            }));
        }
        assert!(
            s.eventually(Duration::from_secs(20), || async { s.active_sequences().await >= 1 }).await,
            "a request is generating"
        );
        let signalled = Instant::now();
        s.sigterm();

        // /ready turns 503 (or the listener is closed) while draining.
        let probe = reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(5)).build().unwrap();
        let mut saw_not_ready = false;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match probe.get(s.url("/ready")).send().await {
                Ok(r) if r.status() == 200 => tokio::time::sleep(Duration::from_millis(10)).await,
                Ok(r) => {
                    assert_eq!(r.status(), 503, "/ready while draining");
                    assert!(r.headers().get("retry-after").is_some());
                    saw_not_ready = true;
                    break;
                }
                Err(_) => {
                    saw_not_ready = true;
                    break;
                }
            }
        }
        assert!(saw_not_ready, "/ready kept answering 200 after SIGTERM");

        let mut completed = 0;
        for h in inflight {
            let (status, text) = h.await.expect("request task");
            match status {
                200 => {
                    completed += 1;
                    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON body");
                    assert!(v["generated_text"].is_string(), "{text}");
                }
                // Arrived after the signal: refused cleanly.
                503 => assert!(text.contains("unavailable"), "{text}"),
                other => panic!("in-flight request ended with {other}: {text}"),
            }
        }
        eprintln!("drain: {completed} of 4 in-flight requests completed");
        assert!(completed >= 1, "the in-flight request completed");
        let status = s.wait_exit(Duration::from_secs(25)).await.expect("the server exits after draining");
        assert_eq!(status.code(), Some(0), "exit status {status}");
        assert!(signalled.elapsed() < Duration::from_secs(20), "exited when the work was done, not at the drain timeout");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_the_api_but_not_the_probes() {
    timed(60, async {
        let s = Server::start_with(&[("FLAMINGO_SERVER_API_KEYS", r#"["k1", "k2"]"#)]).await;
        let body = json!({"inputs": "Hi", "parameters": {"max_new_tokens": 3}});
        s.post("/generate", &body)
            .await
            .assert_error(401, "unauthorized");
        let wrong = s
            .post_with(
                s.client
                    .post(s.url("/generate"))
                    .bearer_auth("nope")
                    .json(&body),
            )
            .await;
        wrong.assert_error(401, "unauthorized");
        let basic = s
            .post_with(
                s.client
                    .post(s.url("/generate"))
                    .header("authorization", "Basic azE6")
                    .json(&body),
            )
            .await;
        basic.assert_error(401, "unauthorized");
        for key in ["k1", "k2"] {
            let r = s
                .post_with(
                    s.client
                        .post(s.url("/generate"))
                        .bearer_auth(key)
                        .json(&body),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
        }
        let r = s
            .post_with(s.client.post(s.url("/generate_stream")).json(&body))
            .await;
        r.assert_error(401, "unauthorized");
        s.get("/v1/models")
            .await
            .assert_openai_error(401, "unauthorized");
        let chat = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3});
        s.post("/v1/chat/completions", &chat)
            .await
            .assert_openai_error(401, "unauthorized");
        let r = s
            .post_with(
                s.client
                    .post(s.url("/v1/chat/completions"))
                    .bearer_auth("k1")
                    .json(&chat),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        for public in [
            "/health",
            "/ready",
            "/metrics",
            "/openapi.yaml",
            "/",
            "/assets/app.js",
        ] {
            assert_eq!(s.get(public).await.status, 200, "{public} stays public");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_allows_the_configured_origin() {
    timed(60, async {
        let s = Server::start_with(&[
            ("FLAMINGO_SERVER_CORS_ORIGINS", r#"["http://example.test"]"#),
            ("FLAMINGO_SERVER_API_KEYS", r#"["k1"]"#),
        ])
        .await;
        let preflight = |origin: &'static str| {
            s.client
                .request(reqwest::Method::OPTIONS, s.url("/generate"))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "content-type,authorization",
                )
        };
        // The preflight carries no key and must still pass.
        let r = s.post_with(preflight("http://example.test")).await;
        assert!(r.status.is_success(), "preflight status {}", r.status);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("http://example.test")
        );
        let methods = r
            .header("access-control-allow-methods")
            .unwrap_or("")
            .to_ascii_uppercase();
        assert!(methods.contains("POST"), "allow-methods {methods}");
        let headers = r
            .header("access-control-allow-headers")
            .unwrap_or("")
            .to_ascii_lowercase();
        assert!(
            headers.contains("authorization") && headers.contains("content-type"),
            "allow-headers {headers}"
        );
        // Another origin gets no allow-origin.
        let r = s.post_with(preflight("http://evil.test")).await;
        assert_eq!(r.header("access-control-allow-origin"), None);
        // The actual request carries the header too, errors included.
        let body = json!({"inputs": "Hi", "parameters": {"max_new_tokens": 2}});
        let r = s
            .post_with(
                s.client
                    .post(s.url("/generate"))
                    .header("origin", "http://example.test")
                    .bearer_auth("k1")
                    .json(&body),
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("http://example.test")
        );
        let r = s
            .post_with(
                s.client
                    .post(s.url("/generate"))
                    .header("origin", "http://example.test")
                    .json(&body),
            )
            .await;
        assert_eq!(r.status, 401);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("http://example.test"),
            "a browser can read the 401"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_routes() {
    timed(60, async {
        let s = Server::start().await;
        let r = s.get("/health").await;
        assert_eq!(
            (r.status.as_u16(), &r.json),
            (200, &json!({"status": "ok"}))
        );
        let r = s.get("/ready").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json["status"], "ready");

        let info = s.get("/info").await.json;
        assert_eq!(info["model_id"], MODEL_ID);
        assert_eq!(info["dtype"], "f32");
        assert_eq!(info["device"], "cpu");
        assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(info["max_positions"], 128);
        let limits = &info["limits"];
        for key in [
            "max_batch_size",
            "max_queue",
            "max_input_tokens",
            "max_new_tokens",
            "max_images",
            "max_body_bytes",
        ] {
            assert!(
                limits[key].as_u64().is_some_and(|v| v > 0),
                "limits.{key} in {info}"
            );
        }
        assert_eq!(limits["max_new_tokens"], 512);
        assert_eq!(info["active_sequences"], 0);
        assert_eq!(info["queued"], 0);
        // Limits follow the environment.
        let tuned = Server::start_with(&[
            ("FLAMINGO_LIMITS_MAX_QUEUE", "7"),
            ("FLAMINGO_MODEL_DTYPE", "f32"),
        ])
        .await;
        assert_eq!(tuned.get("/info").await.json["limits"]["max_queue"], 7);
        drop(tuned);

        s.post(
            "/generate",
            &json!({"inputs": "Hi", "parameters": {"max_new_tokens": 3}}),
        )
        .await
        .generated_text();
        let m = s.get("/metrics").await;
        assert_eq!(m.status, 200);
        assert!(m
            .header("content-type")
            .unwrap_or("")
            .starts_with("text/plain"));
        assert!(m.text.contains("flamingo_requests_total"), "{}", m.text);
        assert!(m.text.contains("route=\"/generate\""), "{}", m.text);
        assert!(
            s.metric("flamingo_generated_tokens_total")
                .await
                .unwrap_or(0.0)
                >= 3.0
        );

        let r = s.get("/openapi.yaml").await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap_or("").contains("yaml"));
        assert!(
            r.text.contains("openapi:") && r.text.contains("/generate_stream"),
            "spec body"
        );

        let r = s.get("/").await;
        assert_eq!(r.status, 200);
        assert!(r
            .header("content-type")
            .unwrap_or("")
            .starts_with("text/html"));
        assert!(r.text.to_ascii_lowercase().contains("<html"));
        let r = s.get("/assets/app.js").await;
        assert_eq!(r.status, 200);
        assert!(
            r.header("content-type")
                .unwrap_or("")
                .contains("javascript"),
            "{:?}",
            r.header("content-type")
        );
        assert!(!r.text.is_empty());
        let r = s.get("/assets/style.css").await;
        assert_eq!(r.status, 200);
        assert!(r
            .header("content-type")
            .unwrap_or("")
            .starts_with("text/css"));
    })
    .await
}
