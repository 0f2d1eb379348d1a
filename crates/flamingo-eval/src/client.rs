//! HTTP client for `POST {url}/generate` with retries: 429/503 wait for `Retry-After`,
//! connection errors and 5xx back off exponentially; other statuses fail the item.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// The request parameter that names the tokens ending generation (replacing the server's
/// default end tokens). v1 generates with `eos_token_id = <|endofchunk|>` only.
pub const STOP_TOKEN_IDS: &str = "stop_token_ids";

#[derive(Serialize)]
struct GenerateRequest<'a> {
    inputs: &'a str,
    images: &'a [String],
    parameters: RequestParameters<'a>,
}

#[derive(Serialize)]
struct RequestParameters<'a> {
    #[serde(flatten)]
    gen: &'a GenParams,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_token_ids: Option<&'a [u32]>,
}

#[derive(Deserialize)]
struct GenerateResponse {
    generated_text: String,
}

/// Which tokens end generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopRule {
    /// Send nothing: the server's default end tokens (`</s>` and `<|endofchunk|>`).
    ServerDefault,
    /// These token ids.
    Ids(Vec<u32>),
    /// These tokens, by text; their ids are read from the server.
    Tokens(Vec<String>),
}

/// A generated text and whether the server ended it by v1's rule (`stop_token_ids` sent and
/// accepted). Without it the server also stops at `</s>`, where v1 would have gone on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    pub text: String,
    pub v1_stop: bool,
}

/// Whether a 422 body refuses the stop-token parameter itself (an older server: unknown field).
fn refuses_stop_param(status: u16, body: &str) -> bool {
    status == 422 && body.contains(STOP_TOKEN_IDS)
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
    /// Which tokens end generation.
    stop_rule: StopRule,
    /// `stop_rule` as ids, resolved once at the first request (None: the server's default).
    stop_ids: tokio::sync::OnceCell<Option<Vec<u32>>>,
    /// Set once the server has refused `stop_token_ids`; later requests go without it.
    stop_refused: AtomicBool,
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
            stop_rule: StopRule::ServerDefault,
            stop_ids: tokio::sync::OnceCell::new(),
            stop_refused: AtomicBool::new(false),
        })
    }

    pub fn with_stop_rule(mut self, rule: StopRule) -> Self {
        self.stop_rule = rule;
        self
    }

    /// The ids sent as `stop_token_ids`, looked up on the server at the first request (so a
    /// fully recorded run sends nothing). A failed lookup falls back to the server's default.
    async fn stop_ids(&self) -> Option<&[u32]> {
        self.stop_ids
            .get_or_init(|| async {
                match &self.stop_rule {
                    StopRule::ServerDefault => None,
                    StopRule::Ids(ids) => Some(ids.clone()),
                    StopRule::Tokens(texts) => match self.token_ids(texts).await {
                        Ok(ids) => {
                            eprintln!("stop tokens {texts:?} = ids {ids:?}");
                            Some(ids)
                        }
                        Err(e) => {
                            eprintln!(
                                "warning: cannot find the ids of {texts:?} ({e:#}); generating with \
                                 the server's default end tokens (predictions marked v1_stop: false)"
                            );
                            None
                        }
                    },
                }
            })
            .await
            .as_deref()
            .filter(|_| !self.stop_refused())
    }

    /// Whether the server refused `stop_token_ids` (so predictions follow its default rule).
    pub fn stop_refused(&self) -> bool {
        self.stop_refused.load(Ordering::Relaxed)
    }

    /// The ids of special tokens given by their text (e.g. `<|endofchunk|>`), read from the
    /// server's own tokenization: a one-token request with `decoder_input_details` lists the
    /// prompt's tokens with their ids. Fails if a text is not a single token there.
    pub async fn token_ids(&self, texts: &[String]) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(texts.len());
        for text in texts {
            let body = serde_json::json!({"inputs": text, "parameters": {
                "max_new_tokens": 1, "details": true, "decoder_input_details": true}});
            self.requests.fetch_add(1, Ordering::Relaxed);
            let mut req = self.http.post(&self.url).json(&body);
            if let Some(key) = &self.api_key {
                req = req.bearer_auth(key);
            }
            let resp = req.send().await.context("token id probe")?;
            let status = resp.status();
            let v: serde_json::Value = resp.json().await.context("token id probe response")?;
            if !status.is_success() {
                bail!("token id probe for {text:?}: server answered {status}: {v}");
            }
            let prefill = v["details"]["prefill"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let found: Vec<u32> = prefill
                .iter()
                .filter(|t| t["text"].as_str() == Some(text))
                .filter_map(|t| t["id"].as_u64().and_then(|i| u32::try_from(i).ok()))
                .collect();
            match found.as_slice() {
                [id] => ids.push(*id),
                _ => bail!(
                    "{text:?} is not one token in the server's prompt tokens: {}",
                    serde_json::Value::Array(prefill)
                ),
            }
        }
        Ok(ids)
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
    ) -> Result<Generated> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.requests.fetch_add(1, Ordering::Relaxed);
            let stop = self.stop_ids().await;
            let body = GenerateRequest {
                inputs,
                images,
                parameters: RequestParameters {
                    gen: params,
                    stop_token_ids: stop,
                },
            };
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
                        return Ok(Generated {
                            text: parsed.generated_text,
                            v1_stop: stop.is_some(),
                        });
                    }
                    let retry_after =
                        parse_retry_after(resp.headers().get(reqwest::header::RETRY_AFTER));
                    let text = resp.text().await.unwrap_or_default();
                    if stop.is_some() && refuses_stop_param(status.as_u16(), &text) {
                        // Fallback: this server cannot be told v1's stop rule. Go on with its
                        // default (`</s>` also ends generation) and mark the predictions.
                        if !self.stop_refused.swap(true, Ordering::Relaxed) {
                            eprintln!(
                                "warning: the server refuses `{STOP_TOKEN_IDS}` ({}); generating \
                                 with its default end tokens, which also stop at </s> where v1 \
                                 would go on (predictions are marked v1_stop: false)",
                                truncate(&text, 200)
                            );
                        }
                        continue;
                    }
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
    fn request_body_carries_the_stop_tokens_only_when_set() {
        let gen = GenParams {
            max_new_tokens: 5,
            num_beams: 3,
            length_penalty: -2.0,
        };
        let with = serde_json::to_value(RequestParameters {
            gen: &gen,
            stop_token_ids: Some(&[32000]),
        })
        .unwrap();
        assert_eq!(
            with,
            serde_json::json!({"max_new_tokens": 5, "num_beams": 3, "length_penalty": -2.0,
                "stop_token_ids": [32000]})
        );
        let without = serde_json::to_value(RequestParameters {
            gen: &gen,
            stop_token_ids: None,
        })
        .unwrap();
        assert!(without.get(STOP_TOKEN_IDS).is_none());
        let refusal = r#"{"error":"unknown field `stop_token_ids`, expected one of ...","error_type":"validation"}"#;
        assert!(refuses_stop_param(422, refusal));
        assert!(!refuses_stop_param(422, r#"{"error":"too many tokens"}"#));
        assert!(!refuses_stop_param(400, refusal));
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert!(backoff(1) < backoff(2));
        assert_eq!(backoff(30), MAX_WAIT);
    }
}
