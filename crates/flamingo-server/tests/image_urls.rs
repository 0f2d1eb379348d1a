//! Image URLs through the real binary, against a hand-written HTTP server on loopback inside the
//! test: off by default; with loopback allowed only for the test server's own address (127.0.0.2,
//! via `server.image_url_allow_private`) the PNG gives the same output as base64; redirects to
//! forbidden addresses, wrong content types, huge sizes, huge image headers, slow and endless
//! bodies are refused within generous bounds; at most `image_url_max_concurrent` fetches run at
//! once; metrics count fetches by outcome and refusals by reason.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{data_url, image_b64, image_bytes, timed, Reply, Server};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The address the test image server listens on: loopback, but not 127.0.0.1, so a server
/// that allows exactly this address still refuses the rest of loopback.
const ALLOWED_IP: &str = "127.0.0.2";

#[derive(Default)]
struct Stats {
    /// Requests served by the allowed listener, and by the forbidden ones (127.0.0.1, ::1).
    hits: AtomicUsize,
    forbidden_hits: AtomicUsize,
    concurrent: AtomicUsize,
    max_concurrent: AtomicUsize,
    /// `/slow` responses still being written.
    slow_open: AtomicUsize,
    endless_bytes: AtomicUsize,
}

struct ImageServer {
    /// `http://127.0.0.2:PORT`
    base: String,
    /// A listener on 127.0.0.1 (forbidden in these tests) and one on [::1].
    lo_port: u16,
    v6_port: Option<u16>,
    stats: Arc<Stats>,
}

impl ImageServer {
    async fn start() -> ImageServer {
        let main = TcpListener::bind((ALLOWED_IP, 0))
            .await
            .expect("bind 127.0.0.2");
        let lo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let v6 = TcpListener::bind("[::1]:0").await.ok();
        let port = main.local_addr().unwrap().port();
        let lo_port = lo.local_addr().unwrap().port();
        let v6_port = v6.as_ref().map(|l| l.local_addr().unwrap().port());
        let stats = Arc::new(Stats::default());
        let ctx = Arc::new(Ctx {
            port,
            lo_port,
            stats: stats.clone(),
        });
        tokio::spawn(serve(main, ctx.clone(), false));
        tokio::spawn(serve(lo, ctx.clone(), true));
        if let Some(v6) = v6 {
            tokio::spawn(serve(v6, ctx, true));
        }
        ImageServer {
            base: format!("http://{ALLOWED_IP}:{port}"),
            lo_port,
            v6_port,
            stats,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

struct Ctx {
    port: u16,
    lo_port: u16,
    stats: Arc<Stats>,
}

async fn serve(listener: TcpListener, ctx: Arc<Ctx>, forbidden: bool) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            return;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let n = ctx.stats.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
            ctx.stats.max_concurrent.fetch_max(n, Ordering::SeqCst);
            if forbidden {
                ctx.stats.forbidden_hits.fetch_add(1, Ordering::SeqCst);
            } else {
                ctx.stats.hits.fetch_add(1, Ordering::SeqCst);
            }
            let _ = handle(conn, &ctx).await;
            ctx.stats.concurrent.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

fn head(status: &str, headers: &[(&str, String)]) -> Vec<u8> {
    let mut h = format!("HTTP/1.1 {status}\r\nconnection: close\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// The first 33 bytes of a PNG (signature + IHDR) claiming `w` x `h` pixels.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    common::png_signature_and_ihdr(w, h)
}

async fn handle(mut conn: TcpStream, ctx: &Ctx) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let target = text.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_string();
    let png = image_bytes("checker");
    let redirect = |to: String| head("302 Found", &[("location", to)]);
    match path.as_str() {
        "/checker.png" => {
            conn.write_all(&head(
                "200 OK",
                &[
                    ("content-type", "image/png".into()),
                    ("content-length", png.len().to_string()),
                ],
            ))
            .await?;
            conn.write_all(&png).await?;
        }
        // Served after a pause, so concurrent fetches overlap.
        "/delayed.png" => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            conn.write_all(&head(
                "200 OK",
                &[
                    ("content-type", "image/png; charset=binary".into()),
                    ("content-length", png.len().to_string()),
                ],
            ))
            .await?;
            conn.write_all(&png).await?;
        }
        "/octet" => {
            // No Content-Length: the body ends when the connection closes.
            conn.write_all(&head(
                "200 OK",
                &[("content-type", "application/octet-stream".into())],
            ))
            .await?;
            conn.write_all(&png).await?;
        }
        "/redirect-relative" => conn.write_all(&redirect("/checker.png".into())).await?,
        "/redirect-loopback" => {
            conn.write_all(&redirect(format!(
                "http://127.0.0.1:{}/checker.png",
                ctx.lo_port
            )))
            .await?
        }
        "/redirect-localhost" => {
            conn.write_all(&redirect(format!(
                "http://localhost:{}/checker.png",
                ctx.lo_port
            )))
            .await?
        }
        "/redirect-mapped" => {
            conn.write_all(&redirect(format!(
                "http://[::ffff:127.0.0.1]:{}/checker.png",
                ctx.lo_port
            )))
            .await?
        }
        "/redirect-metadata" => {
            conn.write_all(&redirect(
                "http://169.254.169.254/latest/meta-data/iam/security-credentials/".into(),
            ))
            .await?
        }
        "/redirect-file" => {
            conn.write_all(&redirect("file:///etc/passwd".into()))
                .await?
        }
        p if p.starts_with("/loop/") => {
            let n: u32 = p["/loop/".len()..].parse().unwrap_or(0);
            conn.write_all(&redirect(format!(
                "http://{ALLOWED_IP}:{}/loop/{}",
                ctx.port,
                n + 1
            )))
            .await?
        }
        "/text" => {
            let body = b"<html>not an image</html>";
            conn.write_all(&head(
                "200 OK",
                &[
                    ("content-type", "text/html".into()),
                    ("content-length", body.len().to_string()),
                ],
            ))
            .await?;
            conn.write_all(body).await?;
        }
        "/no-type" => {
            conn.write_all(&head(
                "200 OK",
                &[("content-length", png.len().to_string())],
            ))
            .await?;
            conn.write_all(&png).await?;
        }
        "/huge-length" => {
            conn.write_all(&head(
                "200 OK",
                &[
                    ("content-type", "image/png".into()),
                    ("content-length", "10000000000".into()),
                ],
            ))
            .await?;
            conn.write_all(&png).await?;
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        // A valid PNG header claiming 60000 x 60000 pixels, then nothing for 30 s: only a check
        // of the header on the first bytes refuses it before the fetch times out.
        "/huge-dims.png" => {
            conn.write_all(&head("200 OK", &[("content-type", "image/png".into())]))
                .await?;
            conn.write_all(&png_header(60_000, 60_000)).await?;
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        // The PNG's first bytes, then one byte every 100 ms, forever.
        "/slow.png" => {
            ctx.stats.slow_open.fetch_add(1, Ordering::SeqCst);
            let result = async {
                conn.write_all(&head("200 OK", &[("content-type", "image/png".into())]))
                    .await?;
                conn.write_all(&png[..64]).await?;
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    conn.write_all(b"\0").await?;
                    conn.flush().await?;
                }
            }
            .await;
            ctx.stats.slow_open.fetch_sub(1, Ordering::SeqCst);
            return result;
        }
        // As fast as the socket takes it, forever.
        "/endless" => {
            conn.write_all(&head(
                "200 OK",
                &[("content-type", "application/octet-stream".into())],
            ))
            .await?;
            let block = vec![7u8; 64 * 1024];
            loop {
                conn.write_all(&block).await?;
                ctx.stats
                    .endless_bytes
                    .fetch_add(block.len(), Ordering::SeqCst);
            }
        }
        _ => {
            conn.write_all(&head("404 Not Found", &[("content-length", "0".into())]))
                .await?
        }
    }
    conn.shutdown().await
}

fn generate_body(url: &str) -> Value {
    json!({"inputs": "<image>Output:", "images": [url],
           "parameters": {"max_new_tokens": 8, "do_sample": false}})
}

fn error_message(r: &Reply) -> String {
    r.json["error"]
        .as_str()
        .map(str::to_string)
        .or_else(|| r.json["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| r.text.clone())
}

/// `/generate` with one image URL: the error's status, kind, and that its message names the
/// image and contains every one of `words`.
async fn refused(s: &Server, url: &str, status: u16, kind: &str, words: &[&str]) -> String {
    let r = s.post("/generate", &generate_body(url)).await;
    r.assert_error(status, kind);
    let m = error_message(&r);
    assert!(m.starts_with("image 1:"), "{m}");
    for w in words {
        assert!(m.contains(w), "`{w}` not in: {m}");
    }
    m
}

/// Sum of the samples of `name` whose labels contain `label` (e.g. `outcome="ok"`).
fn labelled(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_urls_are_refused_by_default_without_a_connection() {
    timed(120, async {
        let img = ImageServer::start().await;
        let s = Server::start().await;
        let url = img.url("/checker.png");
        let m = refused(&s, &url, 422, "validation", &["server.allow_image_urls"]).await;
        assert!(m.contains("base64"), "{m}");
        // Chat image_url part and TGI markdown: the same refusal.
        let chat = s
            .post(
                "/v1/chat/completions",
                &json!({"messages": [{"role": "user", "content": [
                    {"type": "text", "text": "Output:"},
                    {"type": "image_url", "image_url": {"url": url}}]}], "max_tokens": 4}),
            )
            .await;
        chat.assert_openai_error(422, "validation");
        assert!(error_message(&chat).contains("server.allow_image_urls"));
        let md = s
            .post(
                "/generate",
                &json!({"inputs": format!("![]({url})Output:"), "parameters": {"max_new_tokens": 4}}),
            )
            .await;
        md.assert_error(422, "validation");
        // A long URL is not echoed whole.
        let long = format!("https://example.com/{}", "a".repeat(5000));
        let m = refused(&s, &long, 422, "validation", &["allow_image_urls"]).await;
        assert!(m.len() < 500, "{} chars: {m}", m.len());
        assert_eq!(img.stats.hits.load(Ordering::SeqCst), 0, "nothing fetched");
        let metrics = s.get("/metrics").await.text;
        assert!(
            labelled(
                &metrics,
                "flamingo_image_fetch_refusals_total",
                "reason=\"disabled\""
            ) >= 4.0,
            "{metrics}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_images_match_base64_and_every_guard_holds() {
    timed(240, async {
        let img = ImageServer::start().await;
        let s = Server::start_with(&[
            ("FLAMINGO_SERVER_ALLOW_IMAGE_URLS", "true"),
            ("FLAMINGO_SERVER_IMAGE_URL_MODE", "public"),
            ("FLAMINGO_SERVER_IMAGE_URL_ALLOW_PRIVATE", "127.0.0.2/32"),
            ("FLAMINGO_SERVER_IMAGE_URL_TIMEOUT_MS", "3000"),
            ("FLAMINGO_SERVER_IMAGE_URL_MAX_BYTES", "1048576"),
            ("FLAMINGO_SERVER_IMAGE_URL_MAX_REDIRECTS", "3"),
        ])
        .await;

        // The same output as the same bytes sent as base64 (greedy), on every route form.
        let expected = s
            .generate_text(&generate_body(&image_b64("checker")))
            .await;
        let t = Instant::now();
        let got = s.generate_text(&generate_body(&img.url("/checker.png"))).await;
        let url_ms = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(got, expected);
        let t = Instant::now();
        s.generate_text(&generate_body(&image_b64("checker"))).await;
        let b64_ms = t.elapsed().as_secs_f64() * 1e3;
        let metrics = s.get("/metrics").await.text;
        let fetch_sum =
            common::parse_metric(&metrics, "flamingo_image_fetch_duration_seconds_sum")
                .unwrap_or(0.0);
        let fetch_n =
            common::parse_metric(&metrics, "flamingo_image_fetch_duration_seconds_count")
                .unwrap_or(0.0);
        println!(
            "loopback PNG ({} bytes): fetch {:.2} ms mean over {fetch_n} fetches (histogram); request with URL {url_ms:.1} ms vs base64 {b64_ms:.1} ms",
            image_bytes("checker").len(),
            fetch_sum / fetch_n.max(1.0) * 1e3
        );
        for url in ["/octet", "/redirect-relative", "/delayed.png"] {
            assert_eq!(
                s.generate_text(&generate_body(&img.url(url))).await,
                expected,
                "{url}"
            );
        }
        let md = s
            .generate_text(&json!({"inputs": format!("![]({})Output:", img.url("/checker.png")),
                                   "parameters": {"max_new_tokens": 8}}))
            .await;
        assert_eq!(md, expected);
        let chat = |url: String| {
            json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "Output:"}]}], "max_tokens": 8})
        };
        let a = s.post("/v1/chat/completions", &chat(img.url("/checker.png"))).await;
        let b = s
            .post("/v1/chat/completions", &chat(data_url(&image_b64("checker"))))
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(
            a.json["choices"][0]["message"]["content"],
            b.json["choices"][0]["message"]["content"]
        );
        // Few-shot form: the same URL twice is fetched once.
        let before = img.stats.hits.load(Ordering::SeqCst);
        let fs = s
            .post(
                "/generate",
                &json!({"task": "caption",
                        "examples": [{"image": img.url("/checker.png"), "text": "A checker."}],
                        "query": {"image": img.url("/checker.png")},
                        "parameters": {"max_new_tokens": 4}}),
            )
            .await;
        assert_eq!(fs.status, 200, "{}", fs.text);
        assert_eq!(img.stats.hits.load(Ordering::SeqCst) - before, 1);

        // Forbidden addresses, directly and behind redirects (literal, name, mapped form).
        let lo = format!("http://127.0.0.1:{}/checker.png", img.lo_port);
        refused(&s, &lo, 422, "validation", &["127.0.0.1", "loopback"]).await;
        refused(&s, &img.url("/redirect-loopback"), 422, "validation", &["loopback", "image_url_allow_private"]).await;
        refused(&s, &img.url("/redirect-localhost"), 422, "validation", &["`localhost` resolves to", "loopback"]).await;
        refused(&s, &img.url("/redirect-mapped"), 422, "validation", &["loopback"]).await;
        if let Some(p) = img.v6_port {
            refused(&s, &format!("http://[::1]:{p}/checker.png"), 422, "validation", &["loopback"]).await;
        }
        refused(&s, &img.url("/redirect-metadata"), 422, "validation", &["169.254.169.254", "metadata"]).await;
        refused(&s, "http://169.254.169.254/latest/meta-data/", 422, "validation", &["metadata"]).await;
        refused(&s, "http://[fd00:ec2::254]/latest/meta-data/", 422, "validation", &["metadata"]).await;
        refused(&s, "http://[::ffff:169.254.169.254]/", 422, "validation", &["metadata"]).await;
        refused(&s, "http://10.1.2.3/x.png", 422, "validation", &["private"]).await;
        refused(&s, &img.url("/redirect-file"), 422, "validation", &["file:"]).await;
        refused(&s, &img.url("/loop/0"), 422, "validation", &["image_url_max_redirects"]).await;
        assert_eq!(
            img.stats.forbidden_hits.load(Ordering::SeqCst),
            0,
            "a forbidden listener was connected to"
        );

        // Content type, HTTP errors, sizes, header dimensions.
        refused(&s, &img.url("/text"), 422, "validation", &["text/html"]).await;
        refused(&s, &img.url("/no-type"), 422, "validation", &["content type"]).await;
        refused(&s, &img.url("/missing.png"), 422, "validation", &["HTTP 404"]).await;
        let t = Instant::now();
        refused(&s, &img.url("/huge-length"), 413, "payload_too_large", &["10000000000"]).await;
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let t = Instant::now();
        refused(&s, &img.url("/huge-dims.png"), 413, "payload_too_large", &["60000"]).await;
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

        // A body that trickles forever is cut by the total timeout (3 s), and its connection closed.
        let t = Instant::now();
        refused(&s, &img.url("/slow.png"), 504, "timeout", &["image_url_timeout_ms"]).await;
        let slow = t.elapsed();
        assert!(
            slow >= Duration::from_millis(2900) && slow < Duration::from_secs(10),
            "{slow:?}"
        );
        let closed = Instant::now();
        while img.stats.slow_open.load(Ordering::SeqCst) > 0 {
            assert!(closed.elapsed() < Duration::from_secs(10), "the slow fetch was not closed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // An endless body is cut at the byte cap (1 MiB).
        let t = Instant::now();
        refused(&s, &img.url("/endless"), 413, "payload_too_large", &["image_url_max_bytes"]).await;
        let endless = t.elapsed();
        assert!(endless < Duration::from_secs(10), "{endless:?}");
        println!(
            "slow body cut after {:.0} ms (timeout 3000 ms), connection closed {:.0} ms later; endless body cut after {:.0} ms, {} bytes sent",
            slow.as_secs_f64() * 1e3,
            closed.elapsed().as_secs_f64() * 1e3,
            endless.as_secs_f64() * 1e3,
            img.stats.endless_bytes.load(Ordering::SeqCst)
        );

        // Metrics by outcome and reason; the server still serves.
        let metrics = s.get("/metrics").await.text;
        let fetches = |o: &str| {
            labelled(&metrics, "flamingo_image_fetches_total", &format!("outcome=\"{o}\""))
        };
        let refusals = |r: &str| {
            labelled(&metrics, "flamingo_image_fetch_refusals_total", &format!("reason=\"{r}\""))
        };
        assert!(fetches("ok") >= 7.0, "{metrics}");
        assert!(fetches("refused") >= 12.0, "{metrics}");
        assert!(fetches("too_large") >= 3.0, "{metrics}");
        assert!(fetches("timeout") >= 1.0, "{metrics}");
        assert!(fetches("error") >= 1.0, "{metrics}");
        assert!(refusals("forbidden_address") >= 9.0, "{metrics}");
        assert!(refusals("too_many_redirects") >= 1.0, "{metrics}");
        assert!(refusals("content_type") >= 2.0, "{metrics}");
        assert!(refusals("too_large") >= 3.0, "{metrics}");
        assert!(refusals("scheme") >= 1.0, "{metrics}");
        assert!(
            common::parse_metric(&metrics, "flamingo_image_fetch_bytes_total").unwrap_or(0.0)
                >= 7.0 * image_bytes("checker").len() as f64
        );
        assert_eq!(s.generate_text(&generate_body(&image_b64("checker"))).await, expected);
        assert!(!s.log().contains("panicked"), "{}", s.log());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_mode_and_the_concurrency_cap() {
    timed(120, async {
        let img = ImageServer::start().await;
        let s = Server::start_with(&[
            ("FLAMINGO_SERVER_ALLOW_IMAGE_URLS", "true"),
            ("FLAMINGO_SERVER_IMAGE_URL_ALLOWLIST", ALLOWED_IP),
            ("FLAMINGO_SERVER_IMAGE_URL_ALLOW_PRIVATE", "127.0.0.0/8"),
            ("FLAMINGO_SERVER_IMAGE_URL_MAX_CONCURRENT", "1"),
        ])
        .await;
        let expected = s.generate_text(&generate_body(&image_b64("checker"))).await;
        assert_eq!(
            s.generate_text(&generate_body(&img.url("/checker.png")))
                .await,
            expected
        );
        // Loopback is allowed here, but 127.0.0.1 and localhost are not on the allowlist.
        refused(
            &s,
            &img.url("/redirect-loopback"),
            422,
            "validation",
            &["`127.0.0.1` is not in server.image_url_allowlist"],
        )
        .await;
        refused(
            &s,
            &img.url("/redirect-localhost"),
            422,
            "validation",
            &["`localhost` is not in server.image_url_allowlist"],
        )
        .await;
        assert_eq!(img.stats.forbidden_hits.load(Ordering::SeqCst), 0);
        // Four requests with two slow images each: one fetch at a time, all succeed.
        let body = json!({"inputs": "<image><image>Output:",
                          "images": [img.url("/delayed.png"), img.url("/delayed.png?2")],
                          "parameters": {"max_new_tokens": 2}});
        img.stats.max_concurrent.store(0, Ordering::SeqCst);
        let t = Instant::now();
        let replies = futures::future::join_all((0..4).map(|_| s.post("/generate", &body))).await;
        for r in &replies {
            assert_eq!(r.status, 200, "{}", r.text);
        }
        assert_eq!(img.stats.max_concurrent.load(Ordering::SeqCst), 1);
        // 8 fetches of >= 300 ms each, one at a time.
        assert!(
            t.elapsed() >= Duration::from_millis(2400),
            "{:?}",
            t.elapsed()
        );
    })
    .await;
}
