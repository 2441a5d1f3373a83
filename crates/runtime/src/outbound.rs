//! Where a document may make the server connect: fetching `http(s)` documents and
//! BasicHTTP `<send>`s go only to public addresses, unless the configuration allows more
//! (`http.outbound_allow`). So a document cannot make the server probe its own network
//! (its loopback, private ranges, link-local metadata services) without the operator's
//! say-so.
//!
//! The check is made on the addresses a name resolves to, as the connection is made (a
//! name that resolves to a private address is refused, whatever it is called), on
//! address literals in URLs, and on every redirect.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The outbound policy: public addresses, plus what the configuration allows.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    /// Address ranges allowed besides the public ones.
    nets: Vec<IpNet>,
    /// Host names allowed whatever they resolve to: exact, or `*.suffix`.
    hosts: Vec<String>,
    /// `*`: anything goes.
    any: bool,
}

impl OutboundPolicy {
    /// A policy from configuration entries: an address (`127.0.0.1`, `::1`), a range
    /// (`10.0.0.0/8`), a host name (`api.example.com`) or a domain (`*.example.com`), or
    /// `*` for anything.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<OutboundPolicy, String> {
        let mut p = OutboundPolicy::default();
        for e in entries {
            let e = e.as_ref().trim();
            if e == "*" {
                p.any = true;
            } else if let Ok(net) = e.parse::<IpNet>() {
                p.nets.push(net);
            } else if let Ok(ip) = e.parse::<IpAddr>() {
                p.nets.push(IpNet::from(ip));
            } else if is_host_pattern(e) {
                p.hosts.push(e.to_ascii_lowercase());
            } else {
                return Err(format!(
                    "\"{e}\" is not an address, a range, a host name or *.domain"
                ));
            }
        }
        Ok(p)
    }

    /// A policy that allows everything (for embedders that check elsewhere).
    pub fn allow_all() -> OutboundPolicy {
        OutboundPolicy {
            any: true,
            ..OutboundPolicy::default()
        }
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.any || is_public(ip) || self.nets.iter().any(|n| n.contains(&ip))
    }

    fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.any
            || self.hosts.iter().any(|p| match p.strip_prefix("*.") {
                Some(domain) => host.ends_with(&format!(".{domain}")),
                None => *p == host,
            })
    }

    /// Checks a URL before a request (or a redirect) to it: an address literal must be
    /// allowed; a name is checked when it is resolved.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) if !self.allows_ip(ip.into()) => Err(refused(url.as_str())),
            Some(url::Host::Ipv6(ip)) if !self.allows_ip(ip.into()) => Err(refused(url.as_str())),
            None => Err(format!("{url} has no host")),
            _ => Ok(()),
        }
    }

    /// [`OutboundPolicy::check_url`] of a URL given as text.
    pub fn check(&self, target: &str) -> Result<(), String> {
        let url = reqwest::Url::parse(target).map_err(|e| format!("{target}: {e}"))?;
        self.check_url(&url)
    }

    /// A client builder that enforces the policy on names and redirects (check address
    /// literals with [`OutboundPolicy::check`] before a request: reqwest resolves no
    /// name for them).
    pub fn client_builder(self: &Arc<Self>) -> reqwest::ClientBuilder {
        let redirects = self.clone();
        reqwest::Client::builder()
            .dns_resolver(Guard(self.clone()))
            .redirect(reqwest::redirect::Policy::custom(move |a| {
                if let Err(e) = redirects.check_url(a.url()) {
                    a.error(e)
                } else if a.previous().len() >= 10 {
                    a.error("too many redirects")
                } else {
                    a.follow()
                }
            }))
    }
}

fn refused(target: &str) -> String {
    format!(
        "{target}: refused by the outbound policy (not a public address; allow it with http.outbound_allow)"
    )
}

fn is_host_pattern(e: &str) -> bool {
    let name = e.strip_prefix("*.").unwrap_or(e);
    !name.is_empty()
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// Whether an address is on the public internet: not loopback, private, link-local,
/// shared (CGNAT), unspecified, multicast or broadcast.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// The resolver the policy's clients use: it drops the addresses the policy refuses.
struct Guard(Arc<OutboundPolicy>);

impl Resolve for Guard {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = if policy.allows_host(&host) {
                addrs
            } else {
                addrs
                    .into_iter()
                    .filter(|a| policy.allows_ip(a.ip()))
                    .collect()
            };
            if allowed.is_empty() {
                return Err(refused(&host).into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        s.parse().unwrap()
    }

    #[test]
    fn only_public_addresses_by_default() {
        let p = OutboundPolicy::default();
        for refused in [
            "http://127.0.0.1:8080/x",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            assert!(p.check_url(&url(refused)).is_err(), "{refused}");
        }
        for ok in [
            "http://93.184.216.34/",
            "https://[2606:4700::1]/",
            "https://example.com/",
        ] {
            assert!(p.check_url(&url(ok)).is_ok(), "{ok}");
        }
    }

    #[test]
    fn the_configuration_allows_more() {
        let p =
            OutboundPolicy::parse(&["127.0.0.1", "10.0.0.0/8", "*.corp.example", "db.internal"])
                .unwrap();
        assert!(p.check_url(&url("http://127.0.0.1:9/")).is_ok());
        assert!(p.check_url(&url("http://10.9.9.9/")).is_ok());
        assert!(p.check_url(&url("http://192.168.0.1/")).is_err());
        assert!(p.allows_host("api.corp.example") && p.allows_host("DB.internal."));
        assert!(!p.allows_host("corp.example.evil") && !p.allows_host("other.internal"));
        assert!(
            OutboundPolicy::parse(&["*"])
                .unwrap()
                .check_url(&url("http://[::1]/"))
                .is_ok()
        );
        assert!(OutboundPolicy::parse(&["not a host!"]).is_err());
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_a_refused_address_is_refused() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let p = Arc::new(OutboundPolicy::default());
        let client = p.client_builder().build().unwrap();
        let e = client.get("http://localhost:9/").send().await.unwrap_err();
        assert!(format!("{e:?}").contains("outbound policy"), "{e:?}");
    }
}
