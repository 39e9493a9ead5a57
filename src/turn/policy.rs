//! Which peer addresses a relay may send to: pure checks, no sockets.
//!
//! By default every special-purpose range (private, loopback, link-local,
//! multicast, documentation, ...) is refused, in every IPv6 form that embeds an
//! IPv4 address, as are the server's own sockets. `allow_peers` and
//! `deny_peers` override the defaults; a live relayed address of this server
//! is always allowed, so relay-to-relay calls work.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

/// An IP network such as `10.0.0.0/8` or `fc00::/7`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("expected an IP network such as \"10.0.0.0/8\", got {s:?}"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("prefix length in {s:?} must be 0..={max}"))?,
        };
        Ok(Cidr { net, prefix })
    }
}

/// The default deny list, each range with the class reported when it refuses.
const DEFAULT_DENY: &[(&str, &str)] = &[
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link_local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "reserved"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b::/96", "nat64"),
    ("100::/64", "discard"),
    ("2001:db8::/32", "documentation"),
    ("fc00::/7", "private"),
    ("fe80::/10", "link_local"),
    ("fec0::/10", "site_local"),
    ("ff00::/8", "multicast"),
];

/// Why a peer address was refused; `class` is a bounded label for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub class: &'static str,
}

#[derive(Debug, Clone)]
pub struct PeerPolicy {
    default_deny: Vec<(Cidr, &'static str)>,
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    /// The server's own sockets; an unspecified IP stands for every address the server advertises.
    own: Vec<SocketAddr>,
    own_ips: Vec<IpAddr>,
}

impl PeerPolicy {
    /// `own` are the server's listener sockets, `own_ips` its relay and external addresses.
    pub fn new(
        allow: Vec<Cidr>,
        deny: Vec<Cidr>,
        own: Vec<SocketAddr>,
        own_ips: Vec<IpAddr>,
    ) -> PeerPolicy {
        let default_deny = DEFAULT_DENY
            .iter()
            .map(|(c, class)| (c.parse().expect("valid built-in range"), *class))
            .collect();
        PeerPolicy {
            default_deny,
            allow,
            deny,
            own,
            own_ips: own_ips.into_iter().map(normalize).collect(),
        }
    }

    /// The same policy with other configured lists (a reload).
    pub fn with_lists(&self, allow: Vec<Cidr>, deny: Vec<Cidr>) -> PeerPolicy {
        PeerPolicy {
            allow,
            deny,
            ..self.clone()
        }
    }

    /// Checks `peer`; `is_relay` says whether it is a live relayed address of this server.
    ///
    /// # Errors
    /// The address is refused; the error names its class.
    pub fn check(&self, peer: SocketAddr, is_relay: bool) -> Result<(), Refused> {
        if is_relay {
            return Ok(());
        }
        let ip = normalize(peer.ip());
        if self.is_own_socket(ip, peer.port()) {
            return Err(Refused {
                class: "own_socket",
            });
        }
        if self.allow.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        if self.deny.iter().any(|c| c.contains(ip)) {
            return Err(Refused {
                class: "configured",
            });
        }
        match self.default_deny.iter().find(|(c, _)| c.contains(ip)) {
            Some((_, class)) => Err(Refused { class }),
            None => Ok(()),
        }
    }

    fn is_own_socket(&self, ip: IpAddr, port: u16) -> bool {
        self.own.iter().any(|own| {
            own.port() == port && {
                let own_ip = normalize(own.ip());
                own_ip == ip
                    || (own_ip.is_unspecified() && (self.own_ips.contains(&ip) || ip.is_loopback()))
            }
        })
    }
}

/// IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible (`::a.b.c.d`) addresses become IPv4.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let seg = v6.segments();
            // IPv4-compatible: 96 zero bits then the IPv4 address; `::` and `::1` stay IPv6.
            if seg[..6].iter().all(|s| *s == 0) && !(seg[6] == 0 && seg[7] <= 1) {
                let [a, b] = seg[6].to_be_bytes();
                let [c, d] = seg[7].to_be_bytes();
                return IpAddr::V4(Ipv4Addr::new(a, b, c, d));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PeerPolicy {
        PeerPolicy::new(
            vec![],
            vec![],
            vec![
                "0.0.0.0:3478".parse().unwrap(),
                "203.0.114.9:5349".parse().unwrap(),
            ],
            vec!["198.51.99.7".parse().unwrap()],
        )
    }

    fn refused(p: &PeerPolicy, addr: &str) -> Option<&'static str> {
        p.check(addr.parse().unwrap(), false).err().map(|r| r.class)
    }

    #[test]
    fn every_default_class_is_refused_in_every_form() {
        let p = policy();
        for (addr, class) in [
            ("0.0.0.0:9", "unspecified"),
            ("10.1.2.3:9", "private"),
            ("100.64.0.1:9", "shared"),
            ("127.0.0.1:9", "loopback"),
            ("169.254.1.1:9", "link_local"),
            ("172.16.0.1:9", "private"),
            ("172.31.255.255:9", "private"),
            ("192.0.0.8:9", "reserved"),
            ("192.0.2.1:9", "documentation"),
            ("192.88.99.1:9", "reserved"),
            ("192.168.1.1:9", "private"),
            ("198.18.0.1:9", "benchmarking"),
            ("198.51.100.1:9", "documentation"),
            ("203.0.113.1:9", "documentation"),
            ("224.0.0.1:9", "multicast"),
            ("255.255.255.255:9", "reserved"),
            ("[::]:9", "unspecified"),
            ("[::1]:9", "loopback"),
            ("[64:ff9b::1.2.3.4]:9", "nat64"),
            ("[100::1]:9", "discard"),
            ("[2001:db8::1]:9", "documentation"),
            ("[fd00::1]:9", "private"),
            ("[fe80::1]:9", "link_local"),
            ("[fec0::1]:9", "site_local"),
            ("[ff02::1]:9", "multicast"),
            // IPv4 hidden in IPv6 forms.
            ("[::ffff:127.0.0.1]:9", "loopback"),
            ("[::ffff:10.0.0.1]:9", "private"),
            ("[::127.0.0.1]:9", "loopback"),
            ("[::ffff:0.0.0.0]:9", "unspecified"),
        ] {
            assert_eq!(refused(&p, addr), Some(class), "{addr}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        let p = policy();
        for addr in [
            "8.8.8.8:53",
            "172.32.0.1:9",
            "[2606:4700::1111]:443",
            "[::ffff:1.1.1.1]:9",
        ] {
            assert_eq!(refused(&p, addr), None, "{addr}");
        }
    }

    #[test]
    fn own_sockets_are_refused() {
        let p = policy();
        assert_eq!(refused(&p, "198.51.99.7:3478"), Some("own_socket"));
        assert_eq!(refused(&p, "203.0.114.9:5349"), Some("own_socket"));
        assert_eq!(refused(&p, "203.0.114.9:5350"), None);
    }

    #[test]
    fn allow_and_deny_override_defaults_and_relays_always_pass() {
        let p = PeerPolicy::new(
            vec!["192.168.0.0/16".parse().unwrap()],
            vec!["8.8.8.0/24".parse().unwrap()],
            vec![],
            vec![],
        );
        assert_eq!(refused(&p, "192.168.1.5:9"), None);
        assert_eq!(refused(&p, "[::ffff:192.168.1.5]:9"), None);
        assert_eq!(refused(&p, "8.8.8.8:9"), Some("configured"));
        assert_eq!(refused(&p, "10.0.0.1:9"), Some("private"));
        assert!(p.check("127.0.0.1:50000".parse().unwrap(), true).is_ok());
    }

    #[test]
    fn cidr_parsing() {
        assert!(
            "10.0.0.0/8"
                .parse::<Cidr>()
                .unwrap()
                .contains("10.255.0.1".parse().unwrap())
        );
        assert!(
            "1.2.3.4"
                .parse::<Cidr>()
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains("9.9.9.9".parse().unwrap())
        );
        assert!(
            "::/0"
                .parse::<Cidr>()
                .unwrap()
                .contains("2001::1".parse().unwrap())
        );
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("ten/8".parse::<Cidr>().is_err());
    }
}
