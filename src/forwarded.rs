//! Who the client is when it comes through a proxy the operator trusts (`https.trusted_proxies`),
//! as plain data in, data out: the PROXY protocol header (v1 or v2, HAProxy's) a trusted
//! proxy puts before the TLS handshake when `https.proxy_protocol` is on, and the
//! `X-Forwarded-For` header of a trusted proxy's HTTP requests.
//!
//! Nothing here is believed from anyone else: with no trusted proxies configured (the
//! default), every client is the address its TCP connection comes from.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

use crate::model::Cidr;

/// The longest PROXY header read: v1 is at most 107 bytes; v2 carries addresses and TLVs,
/// and proxies that send kilobytes of TLVs are not supported.
pub const MAX_PROXY_HEADER: usize = 1024;

/// The proxies whose word about the client is taken.
#[derive(Debug, Clone, Default)]
pub struct Proxies {
    trusted: Vec<Cidr>,
    /// Connections from a trusted proxy begin with a PROXY header.
    pub proxy_protocol: bool,
}

impl Proxies {
    /// `trusted` as the config holds them (checked there, so an entry that does not parse
    /// is skipped).
    pub fn new(trusted: &[String], proxy_protocol: bool) -> Proxies {
        Proxies {
            trusted: trusted.iter().filter_map(|c| c.parse().ok()).collect(),
            proxy_protocol,
        }
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(ip))
    }

    /// The client of a request that `peer`, a trusted proxy, forwarded: the rightmost
    /// `X-Forwarded-For` address that is not itself a trusted proxy (each proxy appends
    /// the address it got the request from, so what is left of that is the client's
    /// word). `peer` when the header is absent or unreadable. The port is unknown: 0.
    pub fn forwarded_client(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop.trim()) else {
                // Garbage from a hop we trust: stop believing the rest.
                return peer;
            };
            if !self.trusts(ip) {
                return SocketAddr::new(ip, 0);
            }
        }
        peer
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// What the start of a trusted proxy's connection says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// More bytes are needed.
    Incomplete,
    /// A header of this many bytes, naming the client (`None`: the proxy's own connection,
    /// a health check, or an address family other than IP).
    Complete(usize, Option<SocketAddr>),
}

/// Parses a PROXY protocol header (v1 text or v2 binary) at the start of `buf`.
///
/// # Errors
/// The bytes are not a PROXY header, or a longer one than `MAX_PROXY_HEADER`.
pub fn proxy_header(buf: &[u8]) -> Result<ProxyHeader, &'static str> {
    use ppp::{HeaderResult, PartialResult, v1, v2};

    let header = HeaderResult::parse(buf);
    if header.is_incomplete() {
        return if buf.len() >= MAX_PROXY_HEADER {
            Err("PROXY header too long")
        } else {
            Ok(ProxyHeader::Incomplete)
        };
    }
    match header {
        HeaderResult::V1(Ok(h)) => {
            let client = match h.addresses {
                v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Unknown => None,
            };
            Ok(ProxyHeader::Complete(h.header.len(), client))
        }
        HeaderResult::V2(Ok(h)) => {
            let client = match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                _ => None,
            };
            Ok(ProxyHeader::Complete(h.len(), client))
        }
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => Err("not a PROXY protocol header"),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop_of_a_trusted_proxy() {
        let p = Proxies::new(&["10.0.0.0/8".into(), "::1".into()], false);
        let peer: SocketAddr = "10.0.0.5:40000".parse().unwrap();
        let client = |xff: &[&str]| p.forwarded_client(peer, &headers(xff)).ip().to_string();
        assert_eq!(client(&["203.0.113.7"]), "203.0.113.7");
        // A client's own claim left of the real hop is not believed.
        assert_eq!(client(&["1.1.1.1, 203.0.113.7, 10.0.0.9"]), "203.0.113.7");
        assert_eq!(client(&["1.1.1.1", "203.0.113.7:5555"]), "203.0.113.7");
        assert_eq!(client(&["[2001:db8::1]:443"]), "2001:db8::1");
        // Nothing usable: the proxy itself.
        assert_eq!(client(&[]), "10.0.0.5");
        assert_eq!(client(&["10.0.0.7"]), "10.0.0.5");
        assert_eq!(client(&["1.1.1.1, bogus"]), "10.0.0.5");
        assert!(p.trusts("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!Proxies::default().trusts("10.1.1.1".parse().unwrap()));
    }

    #[test]
    fn proxy_headers_v1_and_v2() {
        let v1 = b"PROXY TCP4 198.51.100.4 10.0.0.1 5555 443\r\n\x16\x03\x01";
        assert_eq!(
            proxy_header(v1),
            Ok(ProxyHeader::Complete(
                v1.len() - 3,
                Some("198.51.100.4:5555".parse().unwrap())
            ))
        );
        assert_eq!(proxy_header(&v1[..20]), Ok(ProxyHeader::Incomplete));
        assert_eq!(
            proxy_header(b"PROXY UNKNOWN\r\n"),
            Ok(ProxyHeader::Complete(15, None))
        );
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend([
            0x21, 0x11, 0, 12, 192, 0, 2, 9, 10, 0, 0, 1, 0x1f, 0x90, 1, 187, 0x16,
        ]);
        assert_eq!(
            proxy_header(&v2),
            Ok(ProxyHeader::Complete(
                28,
                Some("192.0.2.9:8080".parse().unwrap())
            ))
        );
        assert_eq!(proxy_header(&v2[..20]), Ok(ProxyHeader::Incomplete));
        assert!(proxy_header(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").is_err());
        assert!(proxy_header(b"GET / HTTP/1.1\r\n").is_err());
    }
}
