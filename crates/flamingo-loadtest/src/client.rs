//! Sends one request and records what happened ([`Record`]); the rules for how it counts are in
//! `outcome.rs`.

use futures::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use serde_json::Value;
use std::time::{Duration, Instant};

use crate::outcome::{classify, Body, Class, Observed, StreamResult, Transport};
use crate::sse::{EventKind, SseParser, StreamChecker};
use crate::workload::{Kind, Request};

/// Whether the response carried the request id the contract promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestId {
    /// Echoed (when we sent one) or present (when we did not).
    Ok,
    Missing,
    /// We sent one and got a different one back (a proxy overwrote it).
    Mismatch,
    /// No response to check.
    NotApplicable,
}

/// One finished request.
#[derive(Debug, Clone)]
pub struct Record {
    pub index: u64,
    pub kind: Kind,
    /// Seconds from the start of the run to the moment the request was sent.
    pub sent_at: f64,
    /// Seconds from sending to the end of the exchange (last byte, hang-up, or error).
    pub latency: f64,
    /// Seconds from sending to the first token event (streams only).
    pub ttft: Option<f64>,
    pub status: Option<u16>,
    pub class: Class,
    pub tokens: u64,
    pub request_id: RequestId,
    /// Human-readable cause for lost requests and failures (sampled into the report).
    pub detail: Option<String>,
    /// Open-loop mode: how late the request was sent relative to its schedule (client-side
    /// saturation shows up here instead of silently lowering the offered rate).
    pub send_delay: f64,
}

/// Mutable state of an exchange in flight; lives outside the future so that a timeout still
/// knows how far the request got.
struct State {
    status: Option<u16>,
    transport: Transport,
    retry_after: bool,
    body: Body,
    ttft: Option<Duration>,
    request_id: RequestId,
    detail: Option<String>,
}

pub fn build_client(concurrency: usize, api_key: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = api_key {
        let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
            .expect("API key is a valid header value");
        v.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        // Keep one idle connection per worker so steady-state runs do not reconnect.
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        // Targets are explicit URLs (loopback or a proxy under test); an HTTP(S)_PROXY variable
        // in the environment must not silently reroute the traffic.
        .no_proxy()
        .build()
        .expect("reqwest client builds")
}

pub async fn execute(
    client: &reqwest::Client,
    base_url: &str,
    req: &Request,
    timeout: Duration,
    run_start: Instant,
    send_delay: f64,
) -> Record {
    let started = Instant::now();
    let mut st = State {
        status: None,
        transport: Transport::Complete,
        retry_after: false,
        body: Body::None,
        ttft: None,
        request_id: RequestId::NotApplicable,
        detail: None,
    };
    if tokio::time::timeout(timeout, exchange(client, base_url, req, started, &mut st))
        .await
        .is_err()
    {
        st.transport = Transport::Timeout;
        st.detail = Some(format!("no complete answer within {timeout:?}"));
    }
    let latency = started.elapsed();
    let tokens = match &st.body {
        Body::Stream(s) => s.tokens,
        _ => 0,
    };
    let observed = Observed {
        status: st.status,
        transport: st.transport,
        retry_after: st.retry_after,
        body: st.body,
    };
    let class = classify(req.kind, &observed);
    let detail = match class {
        Class::Lost(_) | Class::Failure(_) => st.detail.or_else(|| Some(format!("{observed:?}"))),
        _ => None,
    };
    Record {
        index: req.index,
        kind: req.kind,
        sent_at: started.duration_since(run_start).as_secs_f64(),
        latency: latency.as_secs_f64(),
        ttft: st.ttft.map(|d| d.as_secs_f64()),
        status: observed.status,
        class,
        tokens,
        request_id: st.request_id,
        detail,
        send_delay,
    }
}

async fn exchange(
    client: &reqwest::Client,
    base_url: &str,
    req: &Request,
    started: Instant,
    st: &mut State,
) {
    let url = format!("{}{}", base_url.trim_end_matches('/'), req.path);
    let mut rb = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .body(req.body.clone());
    if req.stream.is_some() {
        rb = rb.header(ACCEPT, "text/event-stream");
    }
    if let Some(id) = &req.request_id {
        rb = rb.header("x-request-id", id);
    }
    let resp = match rb.send().await {
        Ok(r) => r,
        Err(e) => {
            st.transport = if e.is_connect() {
                Transport::Connect(e.to_string())
            } else {
                Transport::NoResponse(error_chain(&e))
            };
            st.detail = Some(error_chain(&e));
            return;
        }
    };
    let status = resp.status().as_u16();
    st.status = Some(status);
    st.retry_after = resp.headers().contains_key(RETRY_AFTER);
    let echoed = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    st.request_id = match (echoed, &req.request_id) {
        (None, _) => RequestId::Missing,
        (Some(got), Some(sent)) if got != sent => RequestId::Mismatch,
        _ => RequestId::Ok,
    };
    let is_sse = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));

    if status == 200 && req.stream.is_some() && is_sse {
        read_stream(resp, req, started, st).await;
        return;
    }
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => {
            st.transport = Transport::BodyBroken(error_chain(&e));
            st.detail = Some(error_chain(&e));
            return;
        }
    };
    if status == 200 && req.stream.is_some() {
        st.body = Body::NotEventStream;
        return;
    }
    st.body = match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => Body::Json {
            shape_ok: shape_ok(req.path, status, &v),
        },
        Err(e) => {
            st.detail = Some(format!(
                "status {status}, body not JSON ({e}): {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ));
            Body::BadJson(e.to_string())
        }
    };
}

async fn read_stream(resp: reqwest::Response, req: &Request, started: Instant, st: &mut State) {
    let protocol = req.stream.expect("stream request");
    let mut parser = SseParser::new();
    let mut checker = StreamChecker::new(protocol);
    let mut result = StreamResult {
        tokens: 0,
        finished: false,
        error: None,
        malformed: None,
        hung_up: false,
    };
    let mut body = resp.bytes_stream();
    'read: while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                st.transport = Transport::BodyBroken(error_chain(&e));
                st.detail = Some(format!(
                    "stream broke after {} tokens: {}",
                    checker.tokens,
                    error_chain(&e)
                ));
                break;
            }
        };
        let events = match parser.feed(&chunk) {
            Ok(evs) => evs,
            Err(m) => {
                result.malformed = Some(m);
                break;
            }
        };
        for ev in events {
            match checker.on_event(&ev) {
                Ok(EventKind::Token) | Ok(EventKind::Final) if st.ttft.is_none() => {
                    st.ttft = Some(started.elapsed());
                }
                Ok(_) => {}
                Err(m) => {
                    result.malformed = Some(format!("{m}: {:?}", truncate(&ev.data, 200)));
                    break 'read;
                }
            }
        }
        if req.disconnect && checker.tokens > 0 && !checker.terminated() {
            // Hang up mid-stream: dropping `body` closes the connection.
            result.hung_up = true;
            break;
        }
    }
    if result.malformed.is_none() && !result.hung_up && checker.terminated() && parser.has_partial()
    {
        result.malformed = Some("bytes after the final event".into());
    }
    if let Some(m) = &result.malformed {
        st.detail = Some(m.clone());
    } else if !checker.terminated() && !result.hung_up && st.detail.is_none() {
        st.detail = Some(format!(
            "stream ended after {} tokens without its final event",
            checker.tokens
        ));
    }
    result.tokens = checker.tokens;
    result.finished = checker.finished;
    result.error = checker.error.clone();
    st.body = Body::Stream(result);
}

/// Does a parsed body have the fields the route promises for this status? `/v1` routes use the
/// OpenAI shapes, the TGI routes the flat ones.
fn shape_ok(path: &str, status: u16, v: &Value) -> bool {
    let s = |p: &str| v.pointer(p).is_some_and(|x| x.is_string());
    let openai = path.starts_with("/v1/");
    match (status == 200, openai) {
        (true, true) => {
            v.get("object").and_then(|o| o.as_str()) == Some("chat.completion")
                && s("/choices/0/message/content")
        }
        (true, false) => s("/generated_text"),
        (false, true) => s("/error/message") && s("/error/type"),
        (false, false) => s("/error") && s("/error_type"),
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// reqwest's Display hides the cause ("error sending request"); the chain says "connection
/// reset by peer", which is what a reader of the report needs.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn body_shapes() {
        let chat = "/v1/chat/completions";
        assert!(shape_ok("/generate", 200, &json!({"generated_text": "a"})));
        assert!(!shape_ok("/generate", 200, &json!({"text": "a"})));
        let ok = json!({"object": "chat.completion", "choices": [{"message": {"content": "x"}}]});
        assert!(shape_ok(chat, 200, &ok));
        assert!(!shape_ok(chat, 200, &json!({"generated_text": "a"})));
        let flat = json!({"error": "bad", "error_type": "validation"});
        let openai = json!({"error": {"message": "m", "type": "invalid_request"}});
        assert!(shape_ok("/generate_stream", 422, &flat));
        assert!(!shape_ok("/generate_stream", 422, &openai));
        assert!(shape_ok(chat, 400, &openai));
        assert!(!shape_ok(chat, 422, &flat));
    }

    /// A one-shot HTTP server on loopback answering every connection with `response` (then
    /// closing), or holding it open without answering when `response` is `None`.
    async fn canned(response: Option<&'static [u8]>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let _ = sock.read(&mut buf).await;
                    match response {
                        Some(r) => {
                            let _ = sock.write_all(r).await;
                            let _ = sock.shutdown().await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(5)).await,
                    }
                });
            }
        });
        url
    }

    fn req(kind: Kind, stream: Option<crate::sse::Protocol>) -> Request {
        Request {
            index: 0,
            kind,
            path: if stream.is_some() {
                "/generate_stream"
            } else {
                "/generate"
            },
            body: bytes::Bytes::from_static(b"{}"),
            stream,
            disconnect: kind == Kind::Disconnect,
            request_id: Some("rid-1".into()),
        }
    }

    async fn run(response: Option<&'static [u8]>, r: Request, timeout_ms: u64) -> Record {
        let url = canned(response).await;
        let client = build_client(1, None);
        execute(
            &client,
            &url,
            &r,
            Duration::from_millis(timeout_ms),
            Instant::now(),
            0.0,
        )
        .await
    }

    const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-request-id: rid-1\r\nconnection: close\r\n\r\n";
    const TOKEN: &str =
        "data: {\"index\":1,\"token\":{\"id\":5,\"text\":\"a\"},\"generated_text\":null}\n\n";
    const FINAL: &str = "data: {\"index\":2,\"token\":{\"id\":6,\"text\":\"b\"},\"generated_text\":\"ab\",\"details\":{\"finish_reason\":\"length\"}}\n\n";

    fn leak(s: String) -> &'static [u8] {
        Box::leak(s.into_boxed_str()).as_bytes()
    }

    #[tokio::test]
    async fn complete_stream_succeeds_with_ttft() {
        let resp = leak(format!("{SSE_HEAD}{TOKEN}{FINAL}"));
        let r = run(
            Some(resp),
            req(Kind::GenerateStream, Some(crate::sse::Protocol::Tgi)),
            2000,
        )
        .await;
        assert_eq!(r.class, Class::Success, "{r:?}");
        assert_eq!(r.tokens, 2);
        assert!(r.ttft.is_some());
        assert_eq!(r.request_id, RequestId::Ok);
    }

    #[tokio::test]
    async fn stream_without_final_event_is_lost() {
        let resp = leak(format!("{SSE_HEAD}{TOKEN}"));
        let r = run(
            Some(resp),
            req(Kind::GenerateStream, Some(crate::sse::Protocol::Tgi)),
            2000,
        )
        .await;
        assert_eq!(
            r.class,
            Class::Lost(crate::outcome::Lost::StreamWithoutFinalEvent)
        );
    }

    #[tokio::test]
    async fn hanging_up_mid_stream_is_a_disconnect() {
        let resp = leak(format!("{SSE_HEAD}{TOKEN}{TOKEN}"));
        let r = run(
            Some(resp),
            req(Kind::Disconnect, Some(crate::sse::Protocol::Tgi)),
            2000,
        )
        .await;
        assert_eq!(r.class, Class::Disconnected, "{r:?}");
    }

    #[tokio::test]
    async fn malformed_json_no_response_and_timeout_are_lost() {
        use crate::outcome::Lost;
        let bad = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\nx-request-id: rid-1\r\n\r\n{\"gen";
        let r = run(Some(bad), req(Kind::Generate, None), 2000).await;
        assert_eq!(r.class, Class::Lost(Lost::MalformedJson));
        let r = run(Some(b""), req(Kind::Generate, None), 2000).await;
        assert_eq!(r.class, Class::Lost(Lost::NoResponse), "{r:?}");
        let r = run(None, req(Kind::Generate, None), 200).await;
        assert_eq!(r.class, Class::Lost(Lost::Timeout));
    }

    #[tokio::test]
    async fn shedding_needs_retry_after_and_request_id_is_checked() {
        let body = r#"{"error":"queue full","error_type":"overloaded"}"#;
        let head = "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json";
        let shed = leak(format!(
            "{head}\r\nretry-after: 1\r\nx-request-id: rid-1\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ));
        let r = run(Some(shed), req(Kind::Generate, None), 2000).await;
        assert_eq!(r.class, Class::Shed, "{r:?}");
        let bare = leak(format!(
            "{head}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ));
        let r = run(Some(bare), req(Kind::Generate, None), 2000).await;
        assert_eq!(
            r.class,
            Class::Failure(crate::outcome::Failure::MissingRetryAfter)
        );
        assert_eq!(r.request_id, RequestId::Missing);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("▁▁▁", 2), "▁▁");
        assert_eq!(truncate("ab", 5), "ab");
    }
}
