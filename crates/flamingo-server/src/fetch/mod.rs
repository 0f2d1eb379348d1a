//! Image URLs: `http(s)://` image payloads fetched by the server, off unless
//! `server.allow_image_urls` is set, guarded against server-side request forgery.
//!
//! * Which hosts: `server.image_url_mode = "allowlist"` (only `image_url_allowlist` hosts:
//!   `example.com` exactly, `*.example.com` its subdomains) or `"public"` (any host).
//! * Which addresses, whatever the host: only public unicast. Every address a name resolves to
//!   is classified ([`classify`]) and the request is refused when one of them is not public;
//!   the connection is then made to exactly those checked addresses (a `reqwest` resolver that
//!   returns only what it checked; no second lookup, so DNS rebinding cannot swap the address).
//!   IP-literal hosts are checked before the request. `server.image_url_allow_private` lists the
//!   private ranges (CIDRs) an operator trusts, e.g. an internal image store; cloud metadata,
//!   unspecified, multicast and broadcast addresses are refused even then.
//! * Redirects are followed by hand, at most `image_url_max_redirects`, each target checked as
//!   the first URL was. No proxy from the environment, no connection pool, no compression.
//! * Time: `image_url_connect_timeout_ms` (name lookup, TCP, TLS) and `image_url_timeout_ms`
//!   for the whole fetch of one image (redirects and body included), never past the request's
//!   deadline: 504.
//! * Size: `Content-Length` over the cap is refused before the body, and the body is counted
//!   while it streams (413 at the first byte over `image_url_max_bytes`). The content type
//!   must be `image/*` or `application/octet-stream` before any of the body is read, and the
//!   image header's dimensions are checked on the first bytes (413 for huge ones) before the
//!   rest is downloaded; decoding probes them again (`images::load_all`).
//! * At most `image_url_max_concurrent` fetches at once in the process; a fetch waits for a
//!   place until its request's deadline (504 after it).
//!
//! Errors name the image (`image N`, in `<image>` order) and at most [`MAX_URL_CHARS`] of the
//! URL: 422 for a refused or failed URL, 413 for a too large image, 504 for a timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flamingo_model::preprocess;
use futures::future::try_join_all;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, USER_AGENT};
use reqwest::Url;

use crate::config::{Limits, ServerConfig};
use crate::error::{ApiError, ErrorKind};
use crate::images;
use crate::metrics as m;

mod address;
mod policy;

pub use address::{classify, classify_v4, classify_v6, AddressClass, Cidr};
use policy::{refusal, GuardedResolver};
pub use policy::{Policy, Refusal};

/// Longest part of a URL quoted back in an error.
pub const MAX_URL_CHARS: usize = 120;
/// The image header is probed on the first bytes of a body, up to this many.
const EARLY_PROBE_BYTES: usize = 64 * 1024;

/// An `http://` or `https://` payload (any case), as opposed to base64 or a `data:` URL.
pub fn is_url(payload: &str) -> bool {
    let p = payload.trim_start().as_bytes();
    let starts =
        |prefix: &[u8]| p.len() >= prefix.len() && p[..prefix.len()].eq_ignore_ascii_case(prefix);
    starts(b"http://") || starts(b"https://")
}

// ---------------------------------------------------------------------------------------------
// Fetcher

pub struct Fetcher {
    client: reqwest::Client,
    policy: Arc<Policy>,
    slots: Arc<tokio::sync::Semaphore>,
    max_bytes: usize,
    timeout: Duration,
    max_redirects: usize,
    limits: Limits,
}

/// The byte cap of one fetched image: `server.image_url_max_bytes`, 0 = `limits.max_image_bytes`.
pub fn max_bytes(s: &ServerConfig, l: &Limits) -> usize {
    match s.image_url_max_bytes {
        0 => l.max_image_bytes,
        n => n as usize,
    }
}

impl Fetcher {
    /// None when fetching is off (`server.allow_image_urls = false`).
    pub fn from_config(s: &ServerConfig, l: &Limits) -> Result<Option<Self>, String> {
        if !s.allow_image_urls {
            return Ok(None);
        }
        let policy = Arc::new(Policy::from_config(s)?);
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .connect_timeout(Duration::from_millis(s.image_url_connect_timeout_ms))
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| format!("building the image URL client: {e}"))?;
        Ok(Some(Self {
            client,
            policy,
            slots: Arc::new(tokio::sync::Semaphore::new(s.image_url_max_concurrent)),
            max_bytes: max_bytes(s, l),
            timeout: Duration::from_millis(s.image_url_timeout_ms),
            max_redirects: s.image_url_max_redirects,
            limits: l.clone(),
        }))
    }
}

/// A failed fetch: the metric outcome and the client's error.
struct Failed {
    outcome: &'static str,
    error: ApiError,
}

fn shorten(url: &str) -> String {
    match url.char_indices().nth(MAX_URL_CHARS) {
        Some((cut, _)) => format!("{}…", &url[..cut]),
        None => url.to_string(),
    }
}

fn refused(what: &str, url: &str, r: Refusal) -> Failed {
    metrics::counter!(m::IMAGE_FETCH_REFUSALS, "reason" => r.reason).increment(1);
    let kind = if r.reason == "too_large" {
        ErrorKind::PayloadTooLarge
    } else {
        ErrorKind::Validation
    };
    Failed {
        outcome: if r.reason == "too_large" {
            "too_large"
        } else {
            "refused"
        },
        error: ApiError::new(
            kind,
            format!(
                "{what}: image URL refused: {} (URL {})",
                r.message,
                shorten(url)
            ),
        ),
    }
}

fn failed(what: &str, url: &str, message: impl std::fmt::Display) -> Failed {
    Failed {
        outcome: "error",
        error: ApiError::validation(format!(
            "{what}: fetching the image URL failed: {message} (URL {})",
            shorten(url)
        )),
    }
}

fn timed_out(what: &str, url: &str, message: &str) -> Failed {
    Failed {
        outcome: "timeout",
        error: ApiError::new(
            ErrorKind::Timeout,
            format!("{what}: {message} (URL {})", shorten(url)),
        ),
    }
}

/// The refusal a resolver returned, if that is why a request failed; else the innermost cause.
fn explain(e: &reqwest::Error) -> Result<String, Refusal> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut last = e.to_string();
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refusal>() {
            return Err(r.clone());
        }
        last = s.to_string();
        source = s.source();
    }
    Ok(last)
}

/// Refuses URL payloads when fetching is off; otherwise fetches every URL payload (each
/// distinct URL once, concurrently). The result has the bytes at the URL payloads' indices.
pub async fn fetch_images(
    fetcher: Option<&Fetcher>,
    payloads: &[String],
    deadline: Instant,
) -> Result<Vec<Option<Vec<u8>>>, ApiError> {
    let urls: Vec<(usize, &str)> = payloads
        .iter()
        .enumerate()
        .filter(|(_, p)| is_url(p))
        .map(|(i, p)| (i, p.trim()))
        .collect();
    if urls.is_empty() {
        return Ok(Vec::new());
    }
    let Some(fetcher) = fetcher else {
        let (i, url) = urls[0];
        metrics::counter!(m::IMAGE_FETCH_REFUSALS, "reason" => "disabled").increment(1);
        metrics::counter!(m::IMAGE_FETCHES, "outcome" => "refused").increment(1);
        return Err(ApiError::validation(format!(
            "image {}: image URLs are not fetched by this server (server.allow_image_urls is off); \
             send the image as base64 or a data:image/...;base64, URL (URL {})",
            i + 1,
            shorten(url)
        )));
    };
    let mut first_index: HashMap<&str, usize> = HashMap::new();
    for &(i, url) in &urls {
        first_index.entry(url).or_insert(i);
    }
    let mut distinct: Vec<(usize, &str)> = first_index.iter().map(|(u, i)| (*i, *u)).collect();
    distinct.sort();
    let fetched =
        try_join_all(distinct.iter().map(|&(i, url)| async move {
            fetcher.fetch(i, url, deadline).await.map(|b| (url, b))
        }))
        .await?;
    let by_url: HashMap<&str, Vec<u8>> = fetched.into_iter().collect();
    let mut out: Vec<Option<Vec<u8>>> = vec![None; payloads.len()];
    for (i, url) in urls {
        out[i] = by_url.get(url).cloned();
    }
    Ok(out)
}

impl Fetcher {
    /// One image, with its metrics.
    async fn fetch(&self, index: usize, url: &str, deadline: Instant) -> Result<Vec<u8>, ApiError> {
        let what = format!("image {}", index + 1);
        let waited =
            tokio::time::timeout_at(deadline.into(), self.slots.clone().acquire_owned()).await;
        let _permit = match waited {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(ApiError::internal("the image fetch slots are closed")),
            Err(_) => {
                metrics::counter!(m::IMAGE_FETCHES, "outcome" => "timeout").increment(1);
                return Err(ApiError::new(
                    ErrorKind::Timeout,
                    format!(
                        "{what}: the request passed its deadline waiting for an image fetch slot (server.image_url_max_concurrent)"
                    ),
                ));
            }
        };
        let started = Instant::now();
        let end = deadline.min(started + self.timeout);
        let result = match tokio::time::timeout_at(end.into(), self.fetch_inner(&what, url)).await {
            Ok(r) => r,
            Err(_) if end < deadline => Err(timed_out(
                &what,
                url,
                &format!(
                    "fetching the image URL took longer than server.image_url_timeout_ms ({} ms)",
                    self.timeout.as_millis()
                ),
            )),
            Err(_) => Err(timed_out(
                &what,
                url,
                "the request passed its deadline while fetching the image URL",
            )),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(f) => f.outcome,
        };
        metrics::counter!(m::IMAGE_FETCHES, "outcome" => outcome).increment(1);
        metrics::histogram!(m::IMAGE_FETCH_SECONDS).record(started.elapsed().as_secs_f64());
        match result {
            Ok(bytes) => {
                metrics::counter!(m::IMAGE_FETCH_BYTES).increment(bytes.len() as u64);
                tracing::debug!(
                    image = index + 1,
                    bytes = bytes.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "image URL fetched"
                );
                Ok(bytes)
            }
            Err(f) => {
                tracing::info!(image = index + 1, outcome, error = %f.error.message, "image URL not fetched");
                Err(f.error)
            }
        }
    }

    async fn fetch_inner(&self, what: &str, original: &str) -> Result<Vec<u8>, Failed> {
        let url = Url::parse(original).map_err(|e| {
            refused(
                what,
                original,
                refusal("invalid_url", format!("not a valid URL: {e}")),
            )
        })?;
        let (response, url) = self.follow_redirects(what, url).await?;
        let shown = url.as_str().to_string();
        if !response.status().is_success() {
            return Err(failed(
                what,
                &shown,
                format!("the server answered HTTP {}", response.status()),
            ));
        }
        check_content_type(&response).map_err(|r| refused(what, &shown, r))?;
        self.read_body(what, &shown, response).await
    }

    /// Requests `url`, following up to `max_redirects` redirects, each target checked against
    /// the policy before it is connected to. Returns the final response and its URL.
    async fn follow_redirects(
        &self,
        what: &str,
        mut url: Url,
    ) -> Result<(reqwest::Response, Url), Failed> {
        let mut hops = 0usize;
        loop {
            let shown = url.as_str().to_string();
            self.policy
                .check_url(&url)
                .map_err(|r| refused(what, &shown, r))?;
            let response = self
                .client
                .get(url.clone())
                .header(ACCEPT, "image/*")
                .header(
                    USER_AGENT,
                    concat!("flamingo-serve/", env!("CARGO_PKG_VERSION")),
                )
                .send()
                .await
                .map_err(|e| match explain(&e) {
                    Err(r) => refused(what, &shown, r),
                    Ok(_) if e.is_timeout() => timed_out(
                        what,
                        &shown,
                        "connecting took longer than server.image_url_connect_timeout_ms",
                    ),
                    Ok(cause) => failed(what, &shown, cause),
                })?;
            if !response.status().is_redirection() {
                return Ok((response, url));
            }
            let Some(location) = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
            else {
                return Err(failed(
                    what,
                    &shown,
                    format!("HTTP {} without a Location header", response.status()),
                ));
            };
            if hops >= self.max_redirects {
                return Err(refused(
                    what,
                    &shown,
                    refusal(
                        "too_many_redirects",
                        format!(
                            "more than server.image_url_max_redirects ({}) redirects",
                            self.max_redirects
                        ),
                    ),
                ));
            }
            url = url.join(location).map_err(|e| {
                refused(
                    what,
                    &shown,
                    refusal(
                        "invalid_url",
                        format!("the redirect target is not a valid URL: {e}"),
                    ),
                )
            })?;
            hops += 1;
        }
    }

    /// The body, bounded by `max_bytes` (the declared length is checked first, then every
    /// chunk), with the image header's dimensions probed as soon as the first bytes hold them.
    async fn read_body(
        &self,
        what: &str,
        shown: &str,
        mut response: reqwest::Response,
    ) -> Result<Vec<u8>, Failed> {
        let too_large = |size: String| {
            refusal(
                "too_large",
                format!(
                    "the image has {size} bytes, over server.image_url_max_bytes ({})",
                    self.max_bytes
                ),
            )
        };
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(n) = declared {
            if n > self.max_bytes as u64 {
                return Err(refused(what, shown, too_large(n.to_string())));
            }
        }
        let il = images::image_limits(&self.limits);
        let mut body: Vec<u8> = Vec::with_capacity(declared.unwrap_or(0) as usize);
        let mut probed = false;
        loop {
            let chunk = response
                .chunk()
                .await
                .map_err(|e| failed(what, shown, explain(&e).unwrap_or_else(|r| r.message)))?;
            let Some(chunk) = chunk else { break };
            if body.len() + chunk.len() > self.max_bytes {
                return Err(refused(
                    what,
                    shown,
                    too_large(format!("more than {}", self.max_bytes)),
                ));
            }
            body.extend_from_slice(&chunk);
            if !probed && body.len() <= EARLY_PROBE_BYTES {
                if let Err(e) = preprocess::probe(&body, &il) {
                    if e.is_too_large() {
                        return Err(refused(what, shown, refusal("too_large", e.to_string())));
                    }
                } else {
                    probed = true;
                }
            }
        }
        if body.is_empty() {
            return Err(failed(what, shown, "the body is empty"));
        }
        Ok(body)
    }
}

/// Only images (or untyped bytes, which decoding then judges) are read.
fn check_content_type(response: &reqwest::Response) -> Result<(), Refusal> {
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime.starts_with("image/") || mime == "application/octet-stream" {
        return Ok(());
    }
    Err(refusal(
        "content_type",
        format!(
            "the content type is `{}`, not image/* or application/octet-stream",
            content_type.chars().take(60).collect::<String>()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_payloads_are_recognised() {
        assert!(is_url("https://x/y.png"));
        assert!(is_url("  HTTP://x/y.png"));
        assert!(!is_url("data:image/png;base64,AAAA"));
        assert!(!is_url("iVBORw0KGgo"));
        assert!(!is_url("http:/"));
        assert_eq!(shorten(&"a".repeat(500)).chars().count(), MAX_URL_CHARS + 1);
    }

    #[tokio::test]
    async fn disabled_fetching_refuses_with_the_index() {
        let payloads = vec![
            "QQ==".to_string(),
            "https://example.com/cat.png".to_string(),
        ];
        let e = fetch_images(None, &payloads, Instant::now() + Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Validation);
        assert!(e.message.starts_with("image 2:"), "{}", e.message);
        assert!(
            e.message.contains("server.allow_image_urls"),
            "{}",
            e.message
        );
        // No URL payloads: nothing to do, with or without a fetcher.
        assert!(fetch_images(None, &payloads[..1], Instant::now())
            .await
            .unwrap()
            .is_empty());
    }
}
