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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flamingo_model::preprocess;
use futures::future::try_join_all;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, USER_AGENT};
use reqwest::Url;

use crate::config::{ImageUrlMode, Limits, ServerConfig};
use crate::error::{ApiError, ErrorKind};
use crate::images;
use crate::metrics as m;

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
// Address classification

/// What an address is, for the fetch policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// Globally routable unicast: fetched.
    Public,
    /// Not public (loopback, private, link-local, CGNAT, documentation, ...): refused unless a
    /// range in `server.image_url_allow_private` holds it.
    Private(&'static str),
    /// Refused always (cloud metadata services, unspecified, multicast, broadcast).
    Never(&'static str),
}

fn v4_in(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn v6_in(ip: Ipv6Addr, net: [u16; 8], len: u32) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    u128::from(ip) & mask == u128::from(Ipv6Addr::from(net)) & mask
}

/// Cloud metadata endpoints: AWS/GCP/Azure/OpenStack/DigitalOcean/Oracle 169.254.169.254, AWS
/// ECS task metadata 169.254.170.2, Alibaba 100.100.100.200, Azure's wire server 168.63.129.16.
const METADATA_V4: [[u8; 4]; 4] = [
    [169, 254, 169, 254],
    [169, 254, 170, 2],
    [100, 100, 100, 200],
    [168, 63, 129, 16],
];

/// Classifies an IPv4 address (IANA special-purpose registry).
pub fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    use AddressClass::*;
    if METADATA_V4.contains(&ip.octets()) {
        return Never("a cloud metadata address");
    }
    if ip.is_unspecified() || v4_in(ip, [0, 0, 0, 0], 8) {
        return Never("an unspecified (\"this network\") address");
    }
    if ip.is_broadcast() {
        return Never("the broadcast address");
    }
    if v4_in(ip, [224, 0, 0, 0], 4) {
        return Never("a multicast address");
    }
    let table: [([u8; 4], u32, &'static str); 13] = [
        ([127, 0, 0, 0], 8, "a loopback address"),
        ([10, 0, 0, 0], 8, "a private address"),
        ([172, 16, 0, 0], 12, "a private address"),
        ([192, 168, 0, 0], 16, "a private address"),
        ([169, 254, 0, 0], 16, "a link-local address"),
        ([100, 64, 0, 0], 10, "a shared (CGNAT) address"),
        ([192, 0, 0, 0], 24, "an IETF protocol assignment address"),
        ([192, 0, 2, 0], 24, "a documentation address"),
        ([198, 51, 100, 0], 24, "a documentation address"),
        ([203, 0, 113, 0], 24, "a documentation address"),
        ([198, 18, 0, 0], 15, "a benchmarking address"),
        ([192, 88, 99, 0], 24, "a 6to4 relay anycast address"),
        ([240, 0, 0, 0], 4, "a reserved address"),
    ];
    for (net, len, what) in table {
        if v4_in(ip, net, len) {
            return Private(what);
        }
    }
    Public
}

/// Classifies an IPv6 address. Forms that embed an IPv4 address (mapped `::ffff:a.b.c.d`,
/// compatible `::a.b.c.d`, SIIT `::ffff:0:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4
/// `2002:aabb:ccdd::`) are classified by the embedded address; everything outside global
/// unicast `2000::/3` is refused.
pub fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    use AddressClass::*;
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return Never("a cloud metadata address");
    }
    if ip.is_unspecified() {
        return Never("an unspecified address");
    }
    if ip.is_loopback() {
        return Private("a loopback address");
    }
    if v6_in(ip, [0xff00, 0, 0, 0, 0, 0, 0, 0], 8) {
        return Never("a multicast address");
    }
    // IPv4-mapped, IPv4-translated (SIIT), NAT64 well-known prefix: the embedded address.
    if v6_in(ip, [0, 0, 0, 0, 0, 0xffff, 0, 0], 96)
        || v6_in(ip, [0, 0, 0, 0, 0xffff, 0, 0, 0], 96)
        || v6_in(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96)
    {
        return classify_v4(low32);
    }
    // IPv4-compatible (deprecated): never routed as IPv6; refused whatever it embeds.
    if v6_in(ip, [0, 0, 0, 0, 0, 0, 0, 0], 96) {
        return match classify_v4(low32) {
            Public => Private("an IPv4-compatible address"),
            other => other,
        };
    }
    // 6to4: the IPv4 address in bits 16..48.
    if v6_in(ip, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        return classify_v4(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    let table: [([u16; 8], u32, &'static str); 12] = [
        (
            [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
            48,
            "a local-use NAT64 address",
        ),
        ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "a discard-only address"),
        ([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "a Teredo address"),
        (
            [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
            32,
            "a documentation address",
        ),
        ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "a documentation address"),
        (
            [0x2001, 0x2, 0, 0, 0, 0, 0, 0],
            48,
            "a benchmarking address",
        ),
        (
            [0x2001, 0, 0, 0, 0, 0, 0, 0],
            23,
            "an IETF protocol assignment address",
        ),
        (
            [0xfc00, 0, 0, 0, 0, 0, 0, 0],
            7,
            "a unique local (private) address",
        ),
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "a link-local address"),
        ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "a site-local address"),
        ([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16, "an SRv6 SID address"),
        ([0x2000, 0, 0, 0, 0, 0, 0, 0], 3, ""),
    ];
    for (net, len, what) in table {
        if v6_in(ip, net, len) {
            return if what.is_empty() {
                Public
            } else {
                Private(what)
            };
        }
    }
    Private("a reserved address (not global unicast)")
}

pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// An address range from `server.image_url_allow_private`: `10.0.0.0/8`, `::1/128`, or a single
/// address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u32,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR range"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l
                .parse::<u32>()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(Self { net, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => v4_in(a, n.octets(), self.len),
            (IpAddr::V6(n), IpAddr::V6(a)) => v6_in(a, n.segments(), self.len),
            // `::ffff:127.0.0.1` is 127.0.0.1 for a v4 range.
            (IpAddr::V4(n), IpAddr::V6(a)) => a
                .to_ipv4_mapped()
                .is_some_and(|a| v4_in(a, n.octets(), self.len)),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Policy

/// Why a URL was refused: the metric label and the message.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

fn refusal(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`: strict subdomains of `example.com`.
    Subdomains(String),
}

#[derive(Debug, Clone)]
pub struct Policy {
    /// None: any host ("public" mode).
    allowlist: Option<Vec<HostPattern>>,
    allow_private: Vec<Cidr>,
    https_only: bool,
}

fn normalize_host(h: &str) -> String {
    h.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

impl Policy {
    pub fn from_config(s: &ServerConfig) -> Result<Self, String> {
        let allow_private = s
            .image_url_allow_private
            .iter()
            .map(|c| Cidr::parse(c))
            .collect::<Result<Vec<_>, _>>()?;
        let allowlist = match s.image_url_mode {
            ImageUrlMode::Public => None,
            ImageUrlMode::Allowlist => Some(
                s.image_url_allowlist
                    .iter()
                    .map(|h| {
                        let h = normalize_host(h);
                        match h.strip_prefix("*.") {
                            Some(rest) => HostPattern::Subdomains(rest.to_string()),
                            None => HostPattern::Exact(h),
                        }
                    })
                    .collect(),
            ),
        };
        Ok(Self {
            allowlist,
            allow_private,
            https_only: s.image_url_https_only,
        })
    }

    /// Ok when `ip` may be connected to.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        match classify(ip) {
            AddressClass::Public => Ok(()),
            AddressClass::Never(what) => Err(refusal(
                "forbidden_address",
                format!("{ip} is {what}, never fetched"),
            )),
            AddressClass::Private(what) => {
                if self.allow_private.iter().any(|c| c.contains(ip)) {
                    Ok(())
                } else {
                    Err(refusal(
                        "forbidden_address",
                        format!(
                            "{ip} is {what}, not fetched (server.image_url_allow_private does not include it)"
                        ),
                    ))
                }
            }
        }
    }

    /// Scheme, credentials, host allowlist, and the address when the host is an IP literal
    /// (names are checked when they are resolved).
    pub fn check_url(&self, url: &Url) -> Result<(), Refusal> {
        match url.scheme() {
            "https" => {}
            "http" if !self.https_only => {}
            "http" => {
                return Err(refusal(
                    "scheme",
                    "only https:// image URLs are fetched (server.image_url_https_only)",
                ))
            }
            other => {
                return Err(refusal(
                    "scheme",
                    format!("`{other}:` URLs are not fetched (http and https only)"),
                ))
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refusal(
                "credentials",
                "URLs with credentials (user:password@) are not fetched",
            ));
        }
        let host = normalize_host(
            url.host_str()
                .ok_or_else(|| refusal("scheme", "the URL has no host"))?,
        );
        if let Some(list) = &self.allowlist {
            let allowed = list.iter().any(|p| match p {
                HostPattern::Exact(h) => *h == host,
                HostPattern::Subdomains(d) => host
                    .strip_suffix(d.as_str())
                    .is_some_and(|head| head.ends_with('.') && head.len() > 1),
            });
            if !allowed {
                return Err(refusal(
                    "not_allowlisted",
                    format!("the host `{host}` is not in server.image_url_allowlist"),
                ));
            }
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.check_ip(ip)?;
        }
        Ok(())
    }
}

/// Resolves a name once, checks every address, and hands only those to the connector.
struct GuardedResolver {
    policy: Arc<Policy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| Box::new(refusal("dns", format!("cannot resolve `{host}`: {e}"))))?
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(refusal("dns", format!("`{host}` has no address"))) as _);
            }
            for a in &addrs {
                policy.check_ip(a.ip()).map_err(|r| {
                    Box::new(Refusal {
                        reason: r.reason,
                        message: format!("`{host}` resolves to {}: {}", a.ip(), r.message),
                    })
                })?;
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
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

    fn class(s: &str) -> AddressClass {
        classify(s.parse().unwrap())
    }

    #[test]
    fn public_addresses_are_public() {
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "169.253.255.255",
            "223.255.255.255",
            "11.0.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:200::1",
            "2400:cb00::1",
        ] {
            assert_eq!(class(a), AddressClass::Public, "{a}");
        }
    }

    #[test]
    fn private_and_special_v4() {
        let private = [
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("10.0.0.1", "private"),
            ("10.255.255.255", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "CGNAT"),
            ("100.127.255.255", "CGNAT"),
            ("192.0.0.8", "IETF"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("192.88.99.1", "6to4 relay"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.254", "reserved"),
        ];
        for (a, what) in private {
            match class(a) {
                AddressClass::Private(w) => assert!(w.contains(what), "{a}: {w}"),
                other => panic!("{a}: {other:?}"),
            }
        }
        let never = [
            ("169.254.169.254", "metadata"),
            ("169.254.170.2", "metadata"),
            ("100.100.100.200", "metadata"),
            ("168.63.129.16", "metadata"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
        ];
        for (a, what) in never {
            match class(a) {
                AddressClass::Never(w) => assert!(w.contains(what), "{a}: {w}"),
                other => panic!("{a}: {other:?}"),
            }
        }
    }

    #[test]
    fn private_and_special_v6_including_embedded_v4() {
        let private = [
            ("::1", "loopback"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("2001::1", "Teredo"),
            ("2001:2::1", "benchmarking"),
            ("2001:10::1", "IETF"),
            ("100::1", "discard"),
            ("64:ff9b:1::1", "local-use NAT64"),
            ("5f00::1", "SRv6"),
            ("4000::1", "reserved"),
            ("::1:0:0:1", "reserved"),
            // IPv4-mapped, -translated, -compatible, NAT64 and 6to4 forms of private addresses.
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:7f00:1", "loopback"),
            ("::ffff:10.1.2.3", "private"),
            ("::ffff:192.168.0.1", "private"),
            ("::ffff:0:127.0.0.1", "loopback"),
            ("::127.0.0.1", "loopback"),
            ("::10.0.0.1", "private"),
            ("::8.8.8.8", "IPv4-compatible"),
            ("64:ff9b::127.0.0.1", "loopback"),
            ("64:ff9b::a00:1", "private"),
            ("2002:7f00:1::", "loopback"),
            ("2002:c0a8:101::1", "private"),
            ("2002:a9fe:101::", "link-local"),
        ];
        for (a, what) in private {
            match class(a) {
                AddressClass::Private(w) => assert!(w.contains(what), "{a}: {w}"),
                other => panic!("{a}: {other:?}"),
            }
        }
        let never = [
            ("fd00:ec2::254", "metadata"),
            ("::ffff:169.254.169.254", "metadata"),
            ("::ffff:a9fe:a9fe", "metadata"),
            ("64:ff9b::169.254.169.254", "metadata"),
            ("2002:a9fe:a9fe::1", "metadata"),
            ("::169.254.169.254", "metadata"),
            ("::ffff:0:169.254.169.254", "metadata"),
            ("::", "unspecified"),
            ("::ffff:0.0.0.0", "unspecified"),
            ("ff02::1", "multicast"),
            ("ff05::1:3", "multicast"),
            ("::ffff:224.0.0.1", "multicast"),
            ("::ffff:255.255.255.255", "broadcast"),
        ];
        for (a, what) in never {
            match class(a) {
                AddressClass::Never(w) => assert!(w.contains(what), "{a}: {w}"),
                other => panic!("{a}: {other:?}"),
            }
        }
    }

    fn policy(mode: &str, allowlist: &[&str], private: &[&str]) -> Policy {
        let s = ServerConfig {
            allow_image_urls: true,
            image_url_mode: match mode {
                "public" => ImageUrlMode::Public,
                _ => ImageUrlMode::Allowlist,
            },
            image_url_allowlist: allowlist.iter().map(|s| s.to_string()).collect(),
            image_url_allow_private: private.iter().map(|s| s.to_string()).collect(),
            ..ServerConfig::default()
        };
        Policy::from_config(&s).unwrap()
    }

    fn check(p: &Policy, url: &str) -> Result<(), &'static str> {
        p.check_url(&Url::parse(url).unwrap()).map_err(|r| r.reason)
    }

    #[test]
    fn allow_private_ranges_never_cover_metadata() {
        let p = policy(
            "public",
            &[],
            &["127.0.0.1/32", "10.0.0.0/8", "fd00::/8", "169.254.0.0/16"],
        );
        assert!(p.check_ip("127.0.0.1".parse().unwrap()).is_ok());
        assert!(p.check_ip("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert!(p.check_ip("127.0.0.2".parse().unwrap()).is_err());
        assert!(p.check_ip("::1".parse().unwrap()).is_err());
        assert!(p.check_ip("10.9.8.7".parse().unwrap()).is_ok());
        assert!(p.check_ip("fd00::5".parse().unwrap()).is_ok());
        assert!(p.check_ip("169.254.1.1".parse().unwrap()).is_ok());
        assert!(p.check_ip("169.254.169.254".parse().unwrap()).is_err());
        assert!(p.check_ip("fd00:ec2::254".parse().unwrap()).is_err());
        assert!(p.check_ip("8.8.8.8".parse().unwrap()).is_ok());
        let all = policy("public", &[], &["0.0.0.0/0", "::/0"]);
        assert!(all.check_ip("192.168.0.1".parse().unwrap()).is_ok());
        assert!(all.check_ip("0.0.0.0".parse().unwrap()).is_err());
        assert!(all.check_ip("::".parse().unwrap()).is_err());
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("example.com").is_err());
        assert!(Cidr::parse("::/129").is_err());
    }

    #[test]
    fn urls_are_checked_by_scheme_host_and_literal_address() {
        let p = policy(
            "allowlist",
            &["images.example.com", "*.cdn.example.org", "127.0.0.1"],
            &[],
        );
        assert_eq!(check(&p, "https://images.example.com/a.png"), Ok(()));
        assert_eq!(check(&p, "http://IMAGES.example.com./a.png"), Ok(()));
        assert_eq!(check(&p, "https://a.cdn.example.org/x"), Ok(()));
        assert_eq!(
            check(&p, "https://cdn.example.org/x"),
            Err("not_allowlisted")
        );
        assert_eq!(
            check(&p, "https://evilcdn.example.org/x"),
            Err("not_allowlisted")
        );
        assert_eq!(check(&p, "https://example.com/x"), Err("not_allowlisted"));
        assert_eq!(
            check(&p, "https://images.example.com.evil.net/x"),
            Err("not_allowlisted")
        );
        assert_eq!(
            check(&p, "https://evil.net/images.example.com"),
            Err("not_allowlisted")
        );
        assert_eq!(
            check(&p, "https://images.example.com@evil.net/"),
            Err("credentials")
        );
        // Allowlisted but loopback: the address rule still applies.
        assert_eq!(
            check(&p, "http://127.0.0.1:9/x.png"),
            Err("forbidden_address")
        );
        assert_eq!(check(&p, "ftp://images.example.com/x"), Err("scheme"));
        assert_eq!(check(&p, "file:///etc/passwd"), Err("scheme"));
        let open = policy("public", &[], &[]);
        for bad in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:a9fe:a9fe]/latest/meta-data",
            "http://169.254.169.254/latest/meta-data",
            "http://[fd00:ec2::254]/",
            "http://0.0.0.0:8080/",
            "http://10.0.0.1/",
            "http://[fe80::1]/",
        ] {
            assert_eq!(check(&open, bad), Err("forbidden_address"), "{bad}");
        }
        assert_eq!(check(&open, "https://8.8.8.8/x.png"), Ok(()));
        assert_eq!(check(&open, "https://anything.example/x.png"), Ok(()));
        let https = ServerConfig {
            image_url_mode: ImageUrlMode::Public,
            image_url_https_only: true,
            ..ServerConfig::default()
        };
        let https = Policy::from_config(&https).unwrap();
        assert_eq!(check(&https, "http://example.com/x"), Err("scheme"));
        assert_eq!(check(&https, "https://example.com/x"), Ok(()));
    }

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
