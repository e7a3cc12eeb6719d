//! Who a request counts against.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use actix_web::dev::ServiceRequest;

use crate::config::TrustedProxies;

/// A client of the quota: an address, an API key's name, or an access token's subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientId {
    Address(IpAddr),
    Key(Arc<str>),
    Subject(Arc<str>),
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientId::Address(addr) => write!(f, "ip:{addr}"),
            ClientId::Key(name) => write!(f, "key:{name}"),
            ClientId::Subject(sub) => write!(f, "sub:{sub}"),
        }
    }
}

impl ClientId {
    /// The address a request comes from: the peer, or, when the peer is a trusted proxy, the
    /// last address of `X-Forwarded-For` (read from the right, as proxies append) that is not a
    /// trusted proxy itself. Anything a client wrote to the left of that is not believed.
    pub fn of(req: &ServiceRequest, trusted: &TrustedProxies) -> Option<Self> {
        let peer = req.peer_addr()?.ip();
        if !trusted.contains(peer) {
            return Some(ClientId::Address(peer));
        }
        let mut client = peer;
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>();
        for hop in forwarded.iter().rev().flat_map(|v| v.rsplit(',')) {
            let Some(addr) = parse_hop(hop.trim()) else {
                break;
            };
            client = addr;
            if !trusted.contains(addr) {
                break;
            }
        }
        Some(ClientId::Address(client))
    }
}

/// An address of `X-Forwarded-For`: bare, or with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies(list.iter().map(|p| p.parse().expect("a block")).collect())
    }

    fn client(peer: &str, forwarded: &[&str], trusted: &TrustedProxies) -> String {
        let mut req = TestRequest::default().peer_addr(peer.parse().expect("a peer"));
        for value in forwarded {
            req = req.append_header(("x-forwarded-for", *value));
        }
        ClientId::of(&req.to_srv_request(), trusted)
            .expect("a peer")
            .to_string()
    }

    #[test]
    fn a_forwarded_address_counts_only_behind_a_trusted_proxy() {
        let trusted = proxies(&["10.0.0.0/8"]);
        for (peer, forwarded, expected) in [
            // Not from a proxy: the header is the client's own words.
            ("203.0.113.9:1000", &["198.51.100.1"][..], "ip:203.0.113.9"),
            ("10.0.0.2:1000", &["198.51.100.1"][..], "ip:198.51.100.1"),
            // A client's own X-Forwarded-For is to the left of what the proxy appended.
            (
                "10.0.0.2:1000",
                &["1.1.1.1, 198.51.100.1"][..],
                "ip:198.51.100.1",
            ),
            // Through two proxies of ours.
            (
                "10.0.0.2:1000",
                &["198.51.100.1, 10.0.0.3"][..],
                "ip:198.51.100.1",
            ),
            (
                "10.0.0.2:1000",
                &["198.51.100.1", "10.0.0.3:443"][..],
                "ip:198.51.100.1",
            ),
            (
                "10.0.0.2:1000",
                &["[2001:db8::1]:443"][..],
                "ip:2001:db8::1",
            ),
            // Nothing believable: the proxy itself.
            ("10.0.0.2:1000", &[][..], "ip:10.0.0.2"),
            ("10.0.0.2:1000", &["garbage"][..], "ip:10.0.0.2"),
        ] {
            assert_eq!(
                client(peer, forwarded, &trusted),
                expected,
                "{peer} {forwarded:?}"
            );
        }
    }
}
