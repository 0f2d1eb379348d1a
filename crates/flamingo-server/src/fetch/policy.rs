//! Which URLs may be fetched: scheme, host (allowlist or public mode), literal addresses, and the
//! resolver that connects only to the addresses it checked.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

use super::address::{classify, AddressClass, Cidr};
use crate::config::{ImageUrlMode, ServerConfig};

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

pub(super) fn refusal(reason: &'static str, message: impl Into<String>) -> Refusal {
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
pub(super) struct GuardedResolver {
    pub(super) policy: Arc<Policy>,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
