//! Proxy headers: what the ASGI scope's `scheme` and `client` are, given the connection
//! and, from a trusted proxy, `X-Forwarded-Proto` / `X-Forwarded-For` (uvicorn's
//! `--proxy-headers` with `--forwarded-allow-ips`, the node's `ProxyHeaders` message).
//!
//! Rules (uvicorn's `ProxyHeadersMiddleware`): the headers count only when the peer that
//! connected is trusted (`*` trusts every peer). `X-Forwarded-Proto` `http`/`https`
//! (or `ws`/`wss`, read as their HTTP scheme) replaces the scheme. `X-Forwarded-For` is
//! read from the right: the client is the first address that is not itself a trusted
//! proxy (all trusted, or `*`: the leftmost); its port is unknown, 0. Without a trusted
//! peer the scheme is the connection's (`https` under TLS) and the client the peer.
//! Pure: `main.rs` stores the trust once (`set`), `http.rs` calls `resolve` per request
//! with a visitor of the request's headers (whatever parsed them).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::OnceLock;

static TRUST: OnceLock<Trust> = OnceLock::new();

/// Who may set the proxy headers: `*`, addresses, or networks (`10.0.0.0/8`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Trust {
    all: bool,
    nets: Vec<(IpAddr, u8)>,
    literals: Vec<String>, // anything else, compared as written (uvicorn's rule too)
}

impl Trust {
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Trust {
        let mut t = Trust::default();
        for item in items.iter().flat_map(|s| s.as_ref().split(',')).map(str::trim).filter(|s| !s.is_empty()) {
            if item == "*" {
                t.all = true;
                continue;
            }
            let (addr, bits) = item.split_once('/').unwrap_or((item, ""));
            match addr.parse::<IpAddr>() {
                Ok(ip) => {
                    let ip = canonical(ip);
                    let max = if ip.is_ipv4() { 32 } else { 128 };
                    let bits = if bits.is_empty() { Some(max) } else { bits.parse::<u8>().ok().filter(|b| *b <= max) };
                    match bits {
                        Some(bits) => t.nets.push((ip, bits)),
                        None => t.literals.push(item.to_string()),
                    }
                }
                Err(_) => t.literals.push(item.to_string()),
            }
        }
        t
    }

    pub fn trusts(&self, host: &str) -> bool {
        if self.all {
            return true;
        }
        match host.parse::<IpAddr>() {
            Ok(ip) => {
                let ip = canonical(ip);
                self.nets.iter().any(|(net, bits)| within(ip, *net, *bits))
            }
            Err(_) => self.literals.iter().any(|l| l == host),
        }
    }
}

/// `::ffff:a.b.c.d` (a dual-stack listener's IPv4 peer) is `a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn within(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (a, b, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    let shift = width - bits as u32;
    shift >= width || (a >> shift) == (b >> shift)
}

/// The node's `ProxyHeaders`: the first one counts (sent before any Listen).
pub fn set(trust: Trust) {
    let _ = TRUST.set(trust);
}

/// Calls its argument with each (name, value) of a request's headers, names lowercase.
pub type Headers<'h> = &'h dyn Fn(&mut dyn FnMut(&[u8], &[u8]));

/// The scope's (scheme, client host, client port) for one request on a connection whose
/// own scheme is `scheme` ("http", or "https" under TLS).
pub fn resolve<'a>(scheme: &'static str, peer_ip: &'a str, peer_port: u16, headers: Headers) -> (&'static str, Cow<'a, str>, u16) {
    decide(TRUST.get(), scheme, peer_ip, peer_port, headers)
}

pub fn decide<'a>(trust: Option<&Trust>, scheme: &'static str, peer_ip: &'a str, peer_port: u16, headers: Headers) -> (&'static str, Cow<'a, str>, u16) {
    let Some(trust) = trust.filter(|t| t.trusts(peer_ip)) else { return (scheme, Cow::Borrowed(peer_ip), peer_port) };
    let mut scheme = scheme;
    let mut forwarded = String::new(); // every X-Forwarded-For, joined as one list
    headers(&mut |name, value| {
        if name.eq_ignore_ascii_case(b"x-forwarded-proto") {
            match String::from_utf8_lossy(value).trim().to_ascii_lowercase().as_str() {
                "http" | "ws" => scheme = "http",
                "https" | "wss" => scheme = "https",
                _ => {}
            }
        } else if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            if !forwarded.is_empty() {
                forwarded.push(',');
            }
            forwarded.push_str(&String::from_utf8_lossy(value));
        }
    });
    let forwarded: Vec<&str> = if forwarded.is_empty() { Vec::new() } else { forwarded.split(',').map(str::trim).collect() };
    let host = if trust.all {
        forwarded.first().copied()
    } else {
        forwarded.iter().rev().find(|h| !trust.trusts(h)).or(forwarded.first()).copied()
    };
    match host.filter(|h| !h.is_empty()) {
        Some(h) => (scheme, Cow::Owned(h.to_string()), 0),
        None => (scheme, Cow::Borrowed(peer_ip), peer_port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(trust: Option<&[&str]>, tls: bool, peer: &str, pairs: &[(&'static str, &'static str)]) -> (&'static str, String, u16) {
        let t = trust.map(Trust::parse);
        let each = |f: &mut dyn FnMut(&[u8], &[u8])| {
            for (k, v) in pairs {
                f(k.as_bytes(), v.as_bytes());
            }
        };
        let (s, h, p) = decide(t.as_ref(), if tls { "https" } else { "http" }, peer, 5555, &each);
        (s, h.into_owned(), p)
    }

    const PROXIED: &[(&str, &str)] = &[("x-forwarded-for", "203.0.113.7"), ("x-forwarded-proto", "https")];

    #[test]
    fn without_proxy_headers_the_connection_decides() {
        assert_eq!(run(None, false, "127.0.0.1", PROXIED), ("http", "127.0.0.1".into(), 5555));
        assert_eq!(run(None, true, "127.0.0.1", PROXIED), ("https", "127.0.0.1".into(), 5555));
    }

    #[test]
    fn a_trusted_peer_sets_scheme_and_client() {
        let trust: &[&str] = &["127.0.0.1"];
        assert_eq!(run(Some(trust), false, "127.0.0.1", PROXIED), ("https", "203.0.113.7".into(), 0));
        assert_eq!(run(Some(trust), true, "127.0.0.1", &[("x-forwarded-proto", "http")]), ("http", "127.0.0.1".into(), 5555));
        assert_eq!(run(Some(trust), false, "::ffff:127.0.0.1", PROXIED), ("https", "203.0.113.7".into(), 0));
        assert_eq!(run(Some(&["*"]), false, "198.51.100.1", PROXIED), ("https", "203.0.113.7".into(), 0));
    }

    #[test]
    fn an_untrusted_peer_is_ignored() {
        assert_eq!(run(Some(&["127.0.0.1"]), false, "198.51.100.1", PROXIED), ("http", "198.51.100.1".into(), 5555));
        assert_eq!(run(Some(&["10.0.0.0/8"]), true, "11.0.0.1", PROXIED), ("https", "11.0.0.1".into(), 5555));
    }

    #[test]
    fn forwarded_for_is_read_from_the_right_past_trusted_proxies() {
        let chain = &[("x-forwarded-for", "1.1.1.1, 2.2.2.2"), ("x-forwarded-for", "10.0.0.2")];
        assert_eq!(run(Some(&["127.0.0.1, 10.0.0.0/8"]), false, "127.0.0.1", chain).1, "2.2.2.2");
        assert_eq!(run(Some(&["127.0.0.1", "10.0.0.0/8", "2.2.2.2", "1.1.1.1"]), false, "127.0.0.1", chain).1, "1.1.1.1");
        assert_eq!(run(Some(&["*"]), false, "127.0.0.1", chain).1, "1.1.1.1");
    }

    #[test]
    fn odd_values_change_nothing() {
        let trust: &[&str] = &["127.0.0.1"];
        assert_eq!(run(Some(trust), false, "127.0.0.1", &[("x-forwarded-proto", "gopher"), ("x-forwarded-for", "")]), ("http", "127.0.0.1".into(), 5555));
        assert_eq!(run(Some(trust), false, "127.0.0.1", &[("x-forwarded-proto", " WSS ")]).0, "https");
        assert!(!Trust::parse(&["10.0.0.0/40"]).trusts("10.0.0.1")); // a bad prefix is a literal, not a network
        assert!(Trust::parse(&["::1, fd00::/8"]).trusts("fd12::1"));
        assert!(Trust::parse(&["0.0.0.0/0"]).trusts("8.8.8.8"));
    }
}
