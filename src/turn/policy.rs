//! Which peer addresses a relay may send to: pure checks, no sockets.
//!
//! By default every special-purpose range (private, loopback, link-local,
//! multicast, documentation, ...) is refused, in every IPv6 form that embeds an
//! IPv4 address: mapped and compatible forms are IPv4, and the IPv4 inside 6to4,
//! Teredo and NAT64 addresses must pass the IPv4 policy too. The server's own
//! sockets are refused, and so is every other port of its own addresses (loopback
//! included): a relay there would reach local services. `allow_peers` and
//! `deny_peers` override the defaults; `allow_peers` re-admits an own address but
//! not its listeners ([`Reach::OwnIp`]).
//!
//! The server's relayed addresses are always allowed, so relay-to-relay calls work:
//! a permission for one opens the relays on that IP that are live when data passes,
//! and no other port there ([`Reach::Relays`]). Permissions are per IP (RFC 8656),
//! and clients rely on it: Firefox asks once per IP, so a permission opening one relay
//! port would leave the peer's other relay candidates on the same server unreachable,
//! and a 403 for a relay its client has since released would make Firefox give up on
//! the whole IP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use crate::model::Cidr;

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
    // Local-use NAT64 (RFC 8215): the IPv4 behind it is some network of the operator's.
    ("64:ff9b:1::/48", "nat64"),
    ("100::/64", "discard"),
    ("2001:2::/48", "benchmarking"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
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

/// How much of an allowed peer's IP a permission may open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reach {
    /// Only the relayed addresses of this server on that IP that are live when data
    /// passes (the IP's other ports are the server's own, refused).
    Relays,
    /// Every port of an own address that `allow_peers` re-admits, but the server's listeners:
    /// a Send to it is checked again, as ChannelBind is.
    OwnIp,
    /// Every port of the IP (RFC 8656: permissions ignore ports).
    AnyPort,
}

#[derive(Debug, Clone)]
pub struct PeerPolicy {
    default_deny: Vec<(Cidr, &'static str)>,
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    /// The server's own sockets; an unspecified IP stands for every address the server advertises.
    own: Vec<SocketAddr>,
    /// The server's own addresses: relay and external addresses, and listeners bound to one IP.
    own_ips: Vec<IpAddr>,
    /// The addresses relayed addresses are advertised on, and their port range.
    relay_ips: Vec<IpAddr>,
    relay_ports: std::ops::RangeInclusive<u16>,
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
        let mut ips: Vec<IpAddr> = own_ips
            .into_iter()
            .chain(own.iter().map(SocketAddr::ip))
            .map(normalize)
            .filter(|ip| !ip.is_unspecified())
            .collect();
        ips.sort_unstable();
        ips.dedup();
        PeerPolicy {
            default_deny,
            allow,
            deny,
            own,
            own_ips: ips,
            relay_ips: Vec::new(),
            // No relay addresses yet: no address is a relay port.
            relay_ports: 0..=0,
        }
    }

    /// The same policy knowing where relayed addresses are: on `ips` (relay and external
    /// addresses), in `ports`.
    pub fn with_relays(
        self,
        ips: impl IntoIterator<Item = IpAddr>,
        ports: std::ops::RangeInclusive<u16>,
    ) -> PeerPolicy {
        PeerPolicy {
            relay_ips: ips.into_iter().map(normalize).collect(),
            relay_ports: ports,
            ..self
        }
    }

    /// Whether `peer` could be a relayed address of this server: one of its relay
    /// addresses, in the relay port range, not a listener.
    pub fn is_relay_port(&self, peer: SocketAddr) -> bool {
        let ip = normalize(peer.ip());
        self.relay_ports.contains(&peer.port())
            && self.relay_ips.contains(&ip)
            && !self.is_own_socket(ip, peer.port())
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
    /// `Ok` says how much of the peer's IP a permission may open: a relayed address,
    /// live or released, opens at least the live relays of its IP.
    ///
    /// # Errors
    /// The address is refused; the error names its class.
    pub fn check(&self, peer: SocketAddr, is_relay: bool) -> Result<Reach, Refused> {
        self.check_general(peer).or_else(|refused| {
            if is_relay || self.is_relay_port(peer) {
                Ok(Reach::Relays)
            } else {
                Err(refused)
            }
        })
    }

    /// The reach a permission for `ip` has under this policy (a reload re-checks live
    /// permissions with it): whole-IP, or the relays on a relay address, or none.
    pub fn reach_of(&self, ip: IpAddr) -> Option<Reach> {
        let ip = normalize(ip);
        self.check_general(SocketAddr::new(ip, 0))
            .ok()
            .or_else(|| self.relay_ips.contains(&ip).then_some(Reach::Relays))
    }

    /// The policy for any peer, relays aside.
    fn check_general(&self, peer: SocketAddr) -> Result<Reach, Refused> {
        let ip = normalize(peer.ip());
        let reach = self.check_one(ip, peer.port())?;
        let IpAddr::V6(v6) = ip else {
            return Ok(reach);
        };
        // A relay to 6to4, Teredo or NAT64 reaches the IPv4 inside: it passes the IPv4 policy too.
        embedded_ipv4(v6, peer.port())
            .into_iter()
            .flatten()
            .try_fold(reach, |reach, inner| {
                Ok(reach.min(self.check_one(IpAddr::V4(*inner.ip()), inner.port())?))
            })
    }

    /// One address, as it is (no embedded address).
    fn check_one(&self, ip: IpAddr, port: u16) -> Result<Reach, Refused> {
        if self.is_own_socket(ip, port) {
            return Err(Refused {
                class: "own_socket",
            });
        }
        let own = ip.is_loopback() || self.own_ips.contains(&ip);
        let reach = if own { Reach::OwnIp } else { Reach::AnyPort };
        if self.allow.iter().any(|c| c.contains(ip)) {
            return Ok(reach);
        }
        if self.deny.iter().any(|c| c.contains(ip)) {
            return Err(Refused {
                class: "configured",
            });
        }
        if let Some((_, class)) = self.default_deny.iter().find(|(c, _)| c.contains(ip)) {
            return Err(Refused { class });
        }
        if own {
            return Err(Refused {
                class: "own_address",
            });
        }
        Ok(reach)
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

/// The IPv4 transport addresses an IPv6 address reaches through a transition mechanism:
/// 6to4 (`2002:AABB:CCDD::/48` reaches `A.B.C.D` on the same port), NAT64 (`64:ff9b::/96`,
/// and the local-use `64:ff9b:1::/48`, read as a /96 prefix: the last 32 bits), and Teredo
/// (`2001:0::/32`: the client at the inverted last 32 bits and the inverted port of
/// bits 80-95, and the server at bits 32-63 on the Teredo port).
pub fn embedded_ipv4(ip: Ipv6Addr, port: u16) -> [Option<std::net::SocketAddrV4>; 2] {
    let seg = ip.segments();
    let v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    let at = |hi, lo, port| Some(std::net::SocketAddrV4::new(v4(hi, lo), port));
    match seg {
        [0x2002, hi, lo, ..] => [at(hi, lo, port), None],
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] | [0x64, 0xff9b, 1, .., hi, lo] => {
            [at(hi, lo, port), None]
        }
        [0x2001, 0, server_hi, server_lo, _, mapped_port, hi, lo] => [
            at(!hi, !lo, !mapped_port),
            at(server_hi, server_lo, TEREDO_PORT),
        ],
        _ => [None, None],
    }
}

/// The UDP port of Teredo servers (RFC 4380).
const TEREDO_PORT: u16 = 3544;

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
    }

    fn check(p: &PeerPolicy, addr: &str) -> Result<Reach, Refused> {
        p.check(addr.parse().unwrap(), false)
    }

    #[test]
    fn own_addresses_are_refused_on_every_port_but_live_relays() {
        let p = policy();
        // The relay address, and a listener's address, on ports that are no listener's.
        assert_eq!(refused(&p, "198.51.99.7:9"), Some("own_address"));
        assert_eq!(refused(&p, "[::ffff:198.51.99.7]:53"), Some("own_address"));
        assert_eq!(refused(&p, "203.0.114.9:5350"), Some("own_address"));
        // A live relayed address passes, for the relays of its IP; a public peer opens its IP.
        let relay = "198.51.99.7:50000".parse().unwrap();
        assert_eq!(p.check(relay, true), Ok(Reach::Relays));
        assert_eq!(check(&p, "8.8.8.8:53"), Ok(Reach::AnyPort));
        // allow_peers re-admits own addresses, but never a listener.
        let p = PeerPolicy::new(
            vec![
                "198.51.99.0/24".parse().unwrap(),
                "127.0.0.0/8".parse().unwrap(),
            ],
            vec![],
            vec!["0.0.0.0:3478".parse().unwrap()],
            vec!["198.51.99.7".parse().unwrap()],
        );
        assert_eq!(check(&p, "198.51.99.7:9"), Ok(Reach::OwnIp));
        assert_eq!(check(&p, "127.0.0.1:9"), Ok(Reach::OwnIp));
        assert_eq!(check(&p, "198.51.99.8:9"), Ok(Reach::AnyPort));
        assert_eq!(refused(&p, "198.51.99.7:3478"), Some("own_socket"));
        assert_eq!(refused(&p, "127.0.0.1:3478"), Some("own_socket"));
    }

    #[test]
    fn ipv4_inside_6to4_teredo_and_nat64_passes_the_ipv4_policy() {
        let p = policy();
        for (addr, class) in [
            // 6to4 of 10.0.0.1, 127.0.0.1 and the relay address.
            ("[2002:a00:1::1]:9", "private"),
            ("[2002:7f00:1:5::9]:9", "loopback"),
            ("[2002:c633:6307::1]:9", "own_address"),
            ("[2002:c633:6307::1]:3478", "own_socket"),
            // Teredo: client 10.0.0.1 (inverted); server 10.0.0.1 with a public client;
            // client at the relay address, its mapped port the listener's (inverted).
            ("[2001:0:4136:e378:8000:63bf:f5ff:fffe]:9", "private"),
            ("[2001:0:a00:1:8000:63bf:f7f7:f7f7]:9", "private"),
            ("[2001:0:4136:e378:8000:f269:39cc:9cf8]:9", "own_socket"),
            // Local-use NAT64, documentation (RFC 9637), benchmarking.
            ("[64:ff9b:1::808:808]:9", "nat64"),
            ("[64:ff9b:1:abcd::808:808]:9", "nat64"),
            ("[3fff::1]:9", "documentation"),
            ("[3fff:fff:ffff::1]:9", "documentation"),
            ("[2001:2::1]:9", "benchmarking"),
        ] {
            assert_eq!(refused(&p, addr), Some(class), "{addr}");
        }
        for addr in [
            "[2002:808:808::1]:9",
            "[2001:0:4136:e378:8000:63bf:f7f7:f7f7]:9",
            "[3fff:1000::1]:9",
            "[64:ff9b:0:1::a00:1]:9",
        ] {
            assert_eq!(check(&p, addr), Ok(Reach::AnyPort), "{addr}");
        }
        // Allowing NAT64 opens the public IPv4 behind it, not the private; the IPv4 lists apply.
        let p = PeerPolicy::new(
            vec![
                "64:ff9b::/96".parse().unwrap(),
                "64:ff9b:1::/48".parse().unwrap(),
            ],
            vec!["9.9.9.0/24".parse().unwrap()],
            vec![],
            vec![],
        );
        assert_eq!(check(&p, "[64:ff9b::808:808]:9"), Ok(Reach::AnyPort));
        assert_eq!(refused(&p, "[64:ff9b::a00:1]:9"), Some("private"));
        assert_eq!(refused(&p, "[64:ff9b:1:2::a00:1]:9"), Some("private"));
        assert_eq!(refused(&p, "[64:ff9b::909:909]:9"), Some("configured"));
        assert_eq!(refused(&p, "[2002:909:909::]:9"), Some("configured"));
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
        assert_eq!(
            p.check("127.0.0.1:50000".parse().unwrap(), true),
            Ok(Reach::Relays)
        );
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

    #[test]
    fn relay_ports_are_the_relay_addresses_in_the_relay_range_but_listeners() {
        let p = PeerPolicy::new(
            vec![],
            vec![],
            vec!["0.0.0.0:50001".parse().unwrap()],
            vec!["198.51.99.7".parse().unwrap()],
        )
        .with_relays(["198.51.99.7".parse().unwrap()], 50000..=50010);
        let relay_port = |a: &str| p.is_relay_port(a.parse().unwrap());
        assert!(relay_port("198.51.99.7:50000"));
        assert!(relay_port("[::ffff:198.51.99.7]:50010"));
        assert!(!relay_port("198.51.99.7:50001"), "a listener");
        assert!(!relay_port("198.51.99.7:50011"), "outside the range");
        assert!(!relay_port("198.51.99.8:50000"), "another address");
        let none = PeerPolicy::new(vec![], vec![], vec![], vec![]);
        assert!(!none.is_relay_port("198.51.99.7:50000".parse().unwrap()));
        // A released relay (not live) opens the relays of its IP; a local service does not.
        assert_eq!(
            p.check("198.51.99.7:50003".parse().unwrap(), false),
            Ok(Reach::Relays)
        );
        assert!(p.check("198.51.99.7:5353".parse().unwrap(), false).is_err());
        assert_eq!(
            p.reach_of("198.51.99.7".parse().unwrap()),
            Some(Reach::Relays)
        );
        assert_eq!(p.reach_of("8.8.8.8".parse().unwrap()), Some(Reach::AnyPort));
        assert_eq!(p.reach_of("10.0.0.1".parse().unwrap()), None);
    }
}
