//! HTTP client for `POST {url}/generate` with retries: 429/503 wait for `Retry-After`,
//! connection errors and 5xx back off exponentially; other statuses fail the item.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Generation parameters sent with every request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenParams {
    pub max_new_tokens: u32,
    pub num_beams: u32,
    pub length_penalty: f64,
}

#[derive(Serialize)]
struct GenerateRequest<'a> {
    inputs: &'a str,
    images: &'a [String],
    parameters: &'a GenParams,
}

#[derive(Deserialize)]
struct GenerateResponse {
    generated_text: String,
}

/// Seconds to wait when a 429/503 carries no usable Retry-After.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Cap on any single wait, so a bogus header cannot stall the run.
const MAX_WAIT: Duration = Duration::from_secs(60);

pub struct Client {
    http: reqwest::Client,
    url: String,
    api_key: Option<String>,
    max_retries: u32,
    requests: AtomicU64,
}

impl Client {
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        timeout: Duration,
        max_retries: u32,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .context("building HTTP client")?;
        Ok(Self {
            http,
            url: format!("{}/generate", base_url.trim_end_matches('/')),
            api_key,
            max_retries,
            requests: AtomicU64::new(0),
        })
    }

    /// Polls `GET /ready` until it answers 200, so a wrong URL or a dead server fails fast
    /// instead of burning through the per-request retries.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let url = format!("{}/ready", self.url.trim_end_matches("/generate"));
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let last = match self
                .http
                .get(&url)
                .timeout(Duration::from_secs(10))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => format!("status {}", r.status()),
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                bail!("server at {url} not ready after {timeout:?} (last: {last})");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// HTTP requests sent so far, retries included.
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Sends one prompt; returns `generated_text`.
    pub async fn generate(
        &self,
        inputs: &str,
        images: &[String],
        params: &GenParams,
    ) -> Result<String> {
        let body = GenerateRequest {
            inputs,
            images,
            parameters: params,
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.requests.fetch_add(1, Ordering::Relaxed);
            let mut req = self.http.post(&self.url).json(&body);
            if let Some(key) = &self.api_key {
                req = req.bearer_auth(key);
            }
            let (wait, last_error) = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        let parsed: GenerateResponse =
                            resp.json().await.context("decoding /generate response")?;
                        return Ok(parsed.generated_text);
                    }
                    let retry_after =
                        parse_retry_after(resp.headers().get(reqwest::header::RETRY_AFTER));
                    let text = resp.text().await.unwrap_or_default();
                    let wait = match status.as_u16() {
                        429 | 503 => retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
                        500 | 502 | 504 => backoff(attempt),
                        // Client errors (422 prompt too long, 413 image too big...) will not heal.
                        _ => bail!("server answered {status}: {}", truncate(&text, 500)),
                    };
                    (wait, format!("status {status}: {}", truncate(&text, 300)))
                }
                Err(e) => (backoff(attempt), e.to_string()),
            };
            if attempt > self.max_retries {
                bail!("giving up after {attempt} attempts; last error: {last_error}");
            }
            tokio::time::sleep(wait.min(MAX_WAIT)).await;
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    (Duration::from_millis(250) * 2u32.saturating_pow(attempt.min(8))).min(MAX_WAIT)
}

/// `Retry-After` in (possibly fractional) seconds. HTTP dates are not used by the server.
fn parse_retry_after(v: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    let s = v?.to_str().ok()?.trim();
    let secs: f64 = s.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Reads an image file as standard base64 (what the API accepts).
pub async fn image_base64(path: &Path) -> Result<String> {
    let bytes = tokio::fs::read(path)
        .await
        .with_context(|| format!("reading image {}", path.display()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_parsing() {
        assert_eq!(
            parse_retry_after(Some(&HeaderValue::from_static("2"))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            parse_retry_after(Some(&HeaderValue::from_static("0.5"))),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after(Some(&HeaderValue::from_static("soon"))),
            None
        );
        assert_eq!(parse_retry_after(None), None);
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert!(backoff(1) < backoff(2));
        assert_eq!(backoff(30), MAX_WAIT);
    }
}
