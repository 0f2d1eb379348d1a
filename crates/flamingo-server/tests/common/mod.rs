//! Black-box harness: starts the real `flamingo-server` binary on 127.0.0.1 with the bundled tiny
//! model and a port of its own choosing (`--port 0`, read back from its log, so parallel tests and
//! other servers on the machine never collide), and kills it on drop.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

pub const MODEL_ID: &str = "openflamingo-9b";
pub const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/tiny-openflamingo"
);

/// Bytes of a fixture image (`checker`, `gradient`, `rings`, `stripes`).
pub fn image_bytes(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURE}/images/{name}.png"))
        .unwrap_or_else(|e| panic!("fixture image {name}: {e}"))
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn image_b64(name: &str) -> String {
    b64(&image_bytes(name))
}

/// CRC-32 (IEEE) as PNG chunks use it.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One PNG chunk: length, type, data, CRC.
pub fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

/// A valid PNG signature and IHDR (correct CRC) claiming `w` x `h` 8-bit RGB pixels.
pub fn png_signature_and_ihdr(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    png
}

/// The same pixels under other bytes (a `tEXt` chunk after IHDR): another image-cache key.
pub fn png_with_text(png: &[u8], text: &str) -> Vec<u8> {
    let mut out = png[..33].to_vec();
    out.extend(png_chunk(b"tEXt", format!("Comment\0{text}").as_bytes()));
    out.extend_from_slice(&png[33..]);
    out
}

/// A PNG of one colour (shade `seed`), `w` x `h`: distinct bytes per size and seed.
pub fn png_solid(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb([seed, 255 - seed, seed / 2]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}

pub fn data_url(b64: &str) -> String {
    format!("data:image/png;base64,{b64}")
}

/// Runs a test body with a hard time limit, so a hang fails instead of blocking CI.
pub async fn timed<F: Future<Output = ()>>(seconds: u64, body: F) {
    if tokio::time::timeout(Duration::from_secs(seconds), body)
        .await
        .is_err()
    {
        panic!("test exceeded {seconds} s");
    }
}

/// Sum of the samples of `name` (with any labels) in Prometheus text; None if absent.
pub fn parse_metric(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

pub struct Reply {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `{"error": "...", "error_type": kind}` with this status.
    pub fn assert_error(&self, status: u16, kind: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        assert!(
            self.json["error"].as_str().is_some_and(|m| !m.is_empty()),
            "error message in {}",
            self.text
        );
        assert_eq!(self.json["error_type"], kind, "{}", self.text);
    }

    /// `{"error": {"message", "type": kind, ...}}` with this status.
    pub fn assert_openai_error(&self, status: u16, kind: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        let e = &self.json["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error message in {}",
            self.text
        );
        assert_eq!(e["type"], kind, "{}", self.text);
    }

    /// `generated_text` of a 200 answer.
    pub fn generated_text(&self) -> &str {
        assert_eq!(self.status, 200, "{}", self.text);
        self.json["generated_text"]
            .as_str()
            .unwrap_or_else(|| panic!("no generated_text in {}", self.text))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// The `event:` field; None for plain `data:` events.
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", self.data))
    }
}

/// An event stream read as it arrives; dropping it closes the connection.
pub struct SseStream {
    pub status: reqwest::StatusCode,
    response: Option<reqwest::Response>,
    buf: String,
    raw: String,
    ready: std::collections::VecDeque<SseEvent>,
}

impl SseStream {
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            let chunk = match self.response.as_mut()?.chunk().await {
                Ok(Some(c)) => c,
                _ => {
                    self.response = None;
                    continue;
                }
            };
            let text = String::from_utf8_lossy(&chunk).replace("\r\n", "\n");
            self.raw.push_str(&text);
            self.buf.push_str(&text);
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = None;
                let mut data: Vec<&str> = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if !data.is_empty() {
                    self.ready.push_back(SseEvent {
                        event,
                        data: data.join("\n"),
                    });
                }
            }
        }
    }

    /// Every (remaining) event until the server closes the stream.
    pub async fn all(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }

    /// Everything received so far, byte for byte (keep-alive comments included).
    pub fn raw_text(&self) -> String {
        self.raw.clone()
    }
}

pub struct Server {
    child: Option<Child>,
    pub base: String,
    log: PathBuf,
    pub client: reqwest::Client,
}

fn log_path() -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    std::env::temp_dir().join(format!(
        "flamingo-server-test-{}-{n}.log",
        std::process::id()
    ))
}

impl Server {
    /// Default configuration, waits for `/ready`.
    pub async fn start() -> Server {
        Self::start_with(&[]).await
    }

    /// With `FLAMINGO_*` environment settings, waits for `/ready`.
    pub async fn start_with(env: &[(&str, &str)]) -> Server {
        let s = Self::spawn(&[], env);
        s.wait_ready().await;
        s
    }

    /// Spawns with extra flags and settings and waits only until it listens.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Server {
        let log = log_path();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flamingo-server"));
        cmd.args(["--host", "127.0.0.1", "--port", "0"]).args(args);
        // The tests' own environment must not configure the server under test.
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("FLAMINGO_")) {
            cmd.env_remove(k);
        }
        cmd.env("RUST_LOG", "info").envs(env.iter().copied());
        let file = std::fs::File::create(&log).expect("log file");
        cmd.stdout(Stdio::null()).stderr(file);
        let child = cmd.spawn().expect("spawning flamingo-server");
        let mut server = Server {
            child: Some(child),
            base: String::new(),
            log,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = server.log();
            if let Some(addr) = text
                .lines()
                .find(|l| l.contains("listening"))
                .and_then(|l| l.split("addr=").nth(1))
            {
                let addr = addr.split_whitespace().next().unwrap_or(addr);
                server.base = format!("http://{addr}");
                break;
            }
            if let Some(status) = server.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("flamingo-server exited with {status} before listening:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "flamingo-server did not listen within 30 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.client.get(self.url("/ready")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "not ready within 30 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    async fn reply(r: reqwest::Response) -> Reply {
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            json,
            text,
        }
    }

    pub async fn post_with(&self, req: reqwest::RequestBuilder) -> Reply {
        Self::reply(req.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.post_with(self.client.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.post_with(self.client.post(self.url(path)).json(body))
            .await
    }

    pub async fn generate_text(&self, body: &Value) -> String {
        self.post("/generate", body)
            .await
            .generated_text()
            .to_string()
    }

    /// Starts a streaming request; read it with `next`/`all`.
    pub async fn stream(&self, path: &str, body: &Value) -> SseStream {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("stream request");
        let status = r.status();
        SseStream {
            status,
            response: Some(r),
            buf: String::new(),
            raw: String::new(),
            ready: Default::default(),
        }
    }

    pub async fn metric(&self, name: &str) -> Option<f64> {
        parse_metric(&self.get("/metrics").await.text, name)
    }

    pub async fn active_sequences(&self) -> u64 {
        self.get("/info").await.json["active_sequences"]
            .as_u64()
            .unwrap_or(u64::MAX)
    }

    /// Polls `check` every 20 ms until it holds or `within` passes.
    pub async fn eventually<F, Fut>(&self, within: Duration, mut check: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        loop {
            if check().await {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of our own child process.
        let rc = unsafe { libc::kill(self.pid() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig}) failed");
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.as_mut()?.try_wait().ok().flatten() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("--- flamingo-server log tail ({}) ---", self.log.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
