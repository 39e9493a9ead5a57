//! `[turn]`: the STUN/TURN listeners, relay addresses and ports, credentials, quotas
//! and peer lists.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid, Secret};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    pub enabled: bool,
    pub realm: String,
    pub udp_listen: Vec<SocketAddr>,
    pub tcp_listen: Vec<SocketAddr>,
    pub tls_listen: Vec<SocketAddr>,
    /// The IPv4 address relay sockets bind to; unset means the address of the default route.
    pub relay_ip: Option<IpAddr>,
    /// The IPv6 address for IPv6 relays; unset means no IPv6 relays.
    pub relay_ipv6: Option<IpAddr>,
    /// The public address advertised in XOR-RELAYED-ADDRESS behind 1:1 NAT (cloud VMs).
    pub external_ip: Option<IpAddr>,
    pub min_port: u16,
    pub max_port: u16,
    /// Host name in the `turn:`/`turns:`/`stun:` URLs; unset means the host the browser used.
    pub public_host: Option<String>,
    pub credential_ttl_s: u64,
    /// REST secrets: the first mints, all are accepted. Unset means one is generated.
    pub secrets: Vec<Secret>,
    pub static_users: Vec<StaticUser>,
    pub grace_period_s: u64,
    /// Serve TURN on the HTTPS port too (TLS, and plain TCP), for networks that allow only 443.
    pub on_https_port: bool,
    /// Allocations per signaling peer in its room (whatever the expiry of the credentials it
    /// is handed), and per credential for room, REST and static credentials. The key keeps
    /// its name (and coturn's `user-quota` maps to it).
    pub max_allocations_per_credential: usize,
    /// Allocations per room of one dialect (native and socket.io rooms are separate).
    pub max_allocations_per_room: usize,
    /// Allocations per client IPv4 address or IPv6 network (of `source_prefix_v6` bits).
    pub max_allocations_per_source: usize,
    pub max_allocations: usize,
    /// TURN connections over TCP and TLS (the HTTPS port's included), in total and per source.
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    /// IPv6 sources are counted per network of this prefix length.
    pub source_prefix_v6: u8,
    /// Seconds a TCP/TLS connection may stay open without a successful Allocate.
    pub allocate_timeout_s: u64,
    /// Answers to unauthenticated TURN requests per second per source address.
    pub challenges_per_source_s: u32,
    /// CIDR lists that override the built-in deny list of special-purpose peer addresses.
    pub allow_peers: Vec<String>,
    pub deny_peers: Vec<String>,
    /// "room": a room member's allocation reaches only addresses other members of its room
    /// are known by (the TURN core's room fence); "off": any address the peer lists allow.
    pub fence: FenceMode,
    /// The fence applies to room credentials (`switchboard credentials`, the ice-servers API)
    /// too: they reach only addresses the room's members are known by.
    pub fence_room_credentials: bool,
    /// Bytes per second one allocation may relay each way (0: no limit).
    pub max_allocation_bytes_per_s: u64,
    /// Bytes per second the allocations of one room may relay each way together, shared
    /// fairly between them (0: no limit).
    pub max_room_bytes_per_s: u64,
}

/// The least bandwidth budget: 64 kbit/s, one audio stream with its overhead.
const MIN_BYTES_PER_S: u64 = 8000;

/// `turn.fence`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FenceMode {
    /// The default of a config that does not say (an upgrade changes nothing); the shipped
    /// configs say "room".
    #[default]
    Off,
    Room,
}

keys!(TurnConfig in "turn" {
    enabled: Restart,
    // `Core::reconfigure` keeps the running realm, external address and IPv6 prefix
    // (live counts are keyed by it); the listeners, relay binder, grace period and stream
    // limits are set up once, at start.
    realm: Restart,
    udp_listen: Restart,
    tcp_listen: Restart,
    tls_listen: Restart,
    relay_ip: Restart,
    relay_ipv6: Restart,
    external_ip: Restart,
    min_port: Restart,
    max_port: Restart,
    // A reload gives the TURN core, the `TurnOffer` and the stream limits these.
    public_host: Live,
    credential_ttl_s: Live,
    secrets: Live,
    static_users: Live,
    grace_period_s: Restart,
    on_https_port: Restart,
    max_allocations_per_credential: Live,
    max_allocations_per_room: Live,
    max_allocations_per_source: Live,
    max_allocations: Live,
    max_connections: Live,
    max_connections_per_source: Live,
    source_prefix_v6: Restart,
    allocate_timeout_s: Restart,
    challenges_per_source_s: Live,
    allow_peers: Live,
    deny_peers: Live,
    // Allocations are fenced (or not) from their start.
    fence: Restart,
    fence_room_credentials: Restart,
    // The sweep sets every allocation's rates each second from the core's config.
    max_allocation_bytes_per_s: Live,
    max_room_bytes_per_s: Live,
});

impl Default for TurnConfig {
    fn default() -> Self {
        let both = |port: u16| {
            vec![
                SocketAddr::from(([0, 0, 0, 0], port)),
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
            ]
        };
        TurnConfig {
            enabled: true,
            realm: "switchboard".to_owned(),
            udp_listen: both(3478),
            tcp_listen: both(3478),
            tls_listen: both(5349),
            relay_ip: None,
            relay_ipv6: None,
            external_ip: None,
            min_port: 49152,
            max_port: 65535,
            public_host: None,
            credential_ttl_s: 600,
            secrets: Vec::new(),
            static_users: Vec::new(),
            grace_period_s: 5,
            on_https_port: true,
            max_allocations_per_credential: 32,
            max_allocations_per_room: 128,
            max_allocations_per_source: 256,
            max_allocations: 10_000,
            max_connections: 10_000,
            max_connections_per_source: 256,
            source_prefix_v6: 64,
            allocate_timeout_s: 20,
            challenges_per_source_s: 500,
            allow_peers: Vec::new(),
            deny_peers: Vec::new(),
            fence: FenceMode::Off,
            fence_room_credentials: false,
            max_allocation_bytes_per_s: 0,
            max_room_bytes_per_s: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticUser {
    pub username: String,
    pub password: Secret,
}

impl TurnConfig {
    pub fn credential_ttl(&self) -> Duration {
        Duration::from_secs(self.credential_ttl_s)
    }

    pub(super) fn validate(&self, invalid: Invalid<'_>) -> Result<(), ConfigError> {
        let t = self;
        if t.realm.is_empty() || t.realm.len() > 127 {
            return Err(invalid(
                "turn.realm",
                "expected 1 to 127 characters".to_owned(),
            ));
        }
        if t.min_port == 0 || t.min_port > t.max_port {
            return Err(invalid(
                "turn.min_port",
                format!(
                    "expected 1..=turn.max_port ({}), got {}",
                    t.max_port, t.min_port
                ),
            ));
        }
        if !(5..=86_400).contains(&t.credential_ttl_s) {
            return Err(invalid(
                "turn.credential_ttl_s",
                format!("expected 5..=86400 seconds, got {}", t.credential_ttl_s),
            ));
        }
        if !(1..=1_000_000).contains(&t.challenges_per_source_s) {
            return Err(invalid(
                "turn.challenges_per_source_s",
                format!(
                    "expected 1..=1000000 per second, got {}",
                    t.challenges_per_source_s
                ),
            ));
        }
        if !(1..=3600).contains(&t.allocate_timeout_s) {
            return Err(invalid(
                "turn.allocate_timeout_s",
                format!("expected 1..=3600 seconds, got {}", t.allocate_timeout_s),
            ));
        }
        if !(16..=128).contains(&t.source_prefix_v6) {
            return Err(invalid(
                "turn.source_prefix_v6",
                format!(
                    "expected a prefix length of 16..=128 (64 counts each subscriber's /64 once), got {}",
                    t.source_prefix_v6
                ),
            ));
        }
        if t.grace_period_s > 3600 {
            return Err(invalid(
                "turn.grace_period_s",
                format!("expected 0..=3600 seconds, got {}", t.grace_period_s),
            ));
        }
        for (key, value) in [
            (
                "turn.max_allocations_per_credential",
                t.max_allocations_per_credential,
            ),
            ("turn.max_allocations_per_room", t.max_allocations_per_room),
            (
                "turn.max_allocations_per_source",
                t.max_allocations_per_source,
            ),
            ("turn.max_allocations", t.max_allocations),
            ("turn.max_connections", t.max_connections),
            (
                "turn.max_connections_per_source",
                t.max_connections_per_source,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "expected at least 1".to_owned()));
            }
        }
        for (key, value) in [
            (
                "turn.max_allocation_bytes_per_s",
                t.max_allocation_bytes_per_s,
            ),
            ("turn.max_room_bytes_per_s", t.max_room_bytes_per_s),
        ] {
            if value != 0 && value < MIN_BYTES_PER_S {
                return Err(invalid(
                    key,
                    format!(
                        "expected 0 (no limit) or at least {MIN_BYTES_PER_S} bytes per second (one audio stream), got {value}"
                    ),
                ));
            }
        }
        for (key, ip, v6) in [
            ("turn.external_ip", t.external_ip, None),
            ("turn.relay_ip", t.relay_ip, Some(false)),
            ("turn.relay_ipv6", t.relay_ipv6, Some(true)),
        ] {
            let Some(ip) = ip else { continue };
            if ip.is_unspecified()
                || ip.is_multicast()
                || (key == "turn.external_ip" && ip.is_loopback())
            {
                return Err(invalid(
                    key,
                    format!("expected a unicast address of this host's network, got {ip}"),
                ));
            }
            if v6.is_some_and(|v6| v6 != ip.is_ipv6()) {
                let family = if v6 == Some(true) { "IPv6" } else { "IPv4" };
                return Err(invalid(
                    key,
                    format!("expected an {family} address, got {ip}"),
                ));
            }
        }
        for (key, list) in [
            ("turn.allow_peers", &t.allow_peers),
            ("turn.deny_peers", &t.deny_peers),
        ] {
            for (i, cidr) in list.iter().enumerate() {
                if let Err(message) = cidr.parse::<crate::model::Cidr>() {
                    return Err(invalid(&format!("{key}[{i}]"), message));
                }
            }
        }
        for (i, secret) in t.secrets.iter().enumerate() {
            if secret.expose().len() < 16 {
                return Err(invalid(
                    &format!("turn.secrets[{i}]"),
                    "expected at least 16 characters (generate one with `openssl rand -hex 32`)"
                        .to_owned(),
                ));
            }
        }
        Ok(())
    }
}
