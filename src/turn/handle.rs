//! `Turn`: the one handle the rest of Switchboard holds on the running TURN server.
//!
//! It mints the ICE servers a peer or a backend is handed, schedules and revokes a peer's
//! or a room's allocations, reports usage and metrics, applies a reload, and serves TURN
//! connections that arrive on the HTTPS port. Nothing outside `turn/` reaches into the
//! core, the allocation table or the 5-tuples.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::auth::NonceKey;
use super::core::{CloseReason, Core, CoreConfig, FiveTuple, Membership, Transport};
use super::ice::TurnOffer;
use super::policy::{Cidr, PeerPolicy};
use super::server::{Admitted, Stream, StreamLimits, TurnServer, UdpRelayBinder};
use super::usage::{Account, Usage};
use crate::config::{Config, Secret};
use crate::model::{IceServer, PeerId, RoomId, Scope};
use crate::net;
use crate::secrets;
use crate::tls::TlsMaterial;

/// How long a TURN nonce stays valid.
const NONCE_LIFETIME_S: u64 = 600;

/// The running TURN server and what peers are told about it.
pub struct Turn {
    server: Arc<TurnServer>,
    /// Replaced by a reload (secret rotation, credential lifetime, public host).
    offer: ArcSwap<TurnOffer>,
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("offer", &self.offer)
            .finish_non_exhaustive()
    }
}

fn now_unix() -> u64 {
    crate::clock::unix_now()
}

impl Turn {
    /// The STUN and TURN entries for `peer` in `scope`, with a credential that lasts
    /// `credential_ttl_s` from now and carries the allocations its room may hold when a join
    /// token said; `request_host` is the host the client used to reach us.
    pub fn ice_servers(
        &self,
        scope: &Scope,
        peer: &PeerId,
        room_allocations: Option<u32>,
        request_host: &str,
    ) -> Vec<IceServer> {
        self.offer
            .load()
            .ice_servers(now_unix(), scope, peer, room_allocations, request_host)
    }

    /// The STUN and TURN entries with a room credential (for a backend) lasting `ttl_s`.
    pub fn room_ice_servers(
        &self,
        room: &RoomId,
        ttl_s: u64,
        request_host: &str,
    ) -> Vec<IceServer> {
        self.offer
            .load()
            .room_ice_servers(now_unix(), ttl_s, room, request_host)
    }

    /// How long a peer's credential lasts (`turn.credential_ttl_s`, live).
    pub fn credential_ttl_s(&self) -> u64 {
        self.offer.load().ttl_s
    }

    /// A peer left `scope`: its allocations there close after the grace period, unless
    /// `still_member` says it is back by then.
    pub fn peer_left(
        &self,
        scope: Scope,
        peer: PeerId,
        still_member: impl Fn() -> bool + Send + 'static,
    ) {
        self.server.peer_left(scope, peer, still_member);
    }

    /// `peer` of `scope` is known by `ips` (its signaling connection's address, the addresses in
    /// the ICE candidates it sent): with `turn.fence`, the others of its room may reach them.
    pub fn announce(&self, scope: &Scope, peer: &PeerId, ips: &[IpAddr]) {
        self.server.core.announce(scope, peer, ips);
    }

    /// Whether the room fence is on (`turn.fence`): the signaling announces addresses only then.
    pub fn fenced(&self) -> bool {
        self.server.core.fenced()
    }

    /// Refuses new allocations from now on (a drain); the live ones run until they end.
    pub fn drain(&self) {
        self.server.core.drain();
    }

    /// Live allocations.
    pub fn allocation_count(&self) -> usize {
        self.server.core.allocation_count()
    }

    /// Closes every allocation scoped to a room of that name (any dialect, and room
    /// credentials) now; returns how many.
    pub fn revoke_room(&self, room: &RoomId) -> usize {
        self.server
            .core
            .close_room(room, CloseReason::Revoked, std::time::Instant::now())
    }

    /// Closes `peer`'s allocations in `scope` now; returns how many.
    pub fn revoke_peer(&self, scope: &Scope, peer: &PeerId) -> usize {
        self.server
            .core
            .close_peer(scope, peer, CloseReason::Revoked, std::time::Instant::now())
    }

    /// Tells `closing` of every allocation that closes, with its usage (the webhooks).
    pub fn on_close(&self, closing: Arc<dyn super::Closing>) {
        self.server.core.on_close(closing);
    }

    /// What each account's allocations used, live and recently closed ones, for the admin
    /// API.
    pub fn usage(&self) -> HashMap<Account, Usage> {
        self.server.core.usage(std::time::Instant::now())
    }

    /// The TURN metric families.
    pub fn metrics(&self) -> Vec<crate::metrics::Family> {
        self.server.metrics()
    }

    /// Applies a reloaded `config` (secrets already resolved: the first one mints):
    /// quotas, peer lists, static users, connection limits, credential lifetime, public host.
    pub fn reconfigure(&self, config: &Config, secrets: Vec<Secret>) {
        let t = &config.turn;
        self.server.core.reconfigure(
            core_config(config, secrets.clone()),
            cidrs(&t.allow_peers),
            cidrs(&t.deny_peers),
        );
        self.server
            .set_connection_limits(t.max_connections, t.max_connections_per_source);
        let offer = self.offer.load_full();
        self.offer.store(Arc::new(TurnOffer {
            public_host: t.public_host.clone(),
            secret: secrets[0].clone(),
            ttl_s: t.credential_ttl_s,
            ..(*offer).clone()
        }));
    }

    /// A place for a TURN connection that arrived on the HTTPS port, under TURN's own
    /// connection limits; `None` (counted) when a limit is reached.
    pub fn admit_shared(&self, client: SocketAddr) -> Option<Admitted> {
        self.server.admit(client)
    }

    /// Serves a TURN connection that arrived on the HTTPS port at `local` from `client`,
    /// inside TLS or not, until it closes.
    pub async fn serve_shared(
        &self,
        stream: Box<dyn Stream>,
        client: SocketAddr,
        local: SocketAddr,
        over_tls: bool,
        admitted: Admitted,
    ) {
        let tuple = FiveTuple {
            client,
            server: local,
            transport: if over_tls {
                Transport::Tls
            } else {
                Transport::Tcp
            },
        };
        Arc::clone(&self.server)
            .serve_connection(stream, tuple, admitted)
            .await;
    }
}

/// The TURN REST secrets: the configured ones, or the one generated into the state directory.
///
/// # Errors
/// The generated secret cannot be read or written.
pub fn load_secrets(config: &Config) -> anyhow::Result<Vec<Secret>> {
    Ok(if config.turn.secrets.is_empty() {
        vec![secrets::load_or_generate(
            &config.server.state_dir,
            secrets::TURN_SECRET_FILE,
        )?]
    } else {
        config.turn.secrets.clone()
    })
}

/// Builds the TURN core and starts a task per TURN listener.
///
/// # Errors
/// A relay address is not one of this host's, the TURN secret cannot be stored, or a
/// listener's address cannot be read.
pub fn start(
    config: &Config,
    membership: Membership,
    tls: &TlsMaterial,
    (udp, tcp, tls_listeners): (Vec<Vec<UdpSocket>>, Vec<TcpListener>, Vec<TcpListener>),
    https_addrs: &[SocketAddr],
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<Turn> {
    let t = &config.turn;
    let https_port = https_addrs
        .first()
        .map(SocketAddr::port)
        .context("no HTTPS listener")?;
    let mut own_sockets = https_addrs.to_vec();
    let secrets = load_secrets(config)?;
    let relay_ip = t.relay_ip.unwrap_or_else(net::default_relay_ip);
    for (key, ip) in [
        ("turn.relay_ip", Some(relay_ip)),
        ("turn.relay_ipv6", t.relay_ipv6),
    ] {
        if let Some(ip) = ip {
            std::net::UdpSocket::bind((ip, 0)).map_err(|e| {
                anyhow::anyhow!(
                    "cannot bind relay sockets on {ip} (config key `{key}`): {} (it must be an address of this host; \
                     behind 1:1 NAT set turn.external_ip to the public address instead)",
                    net::explain(&e, SocketAddr::new(ip, 0))
                )
            })?;
        }
    }
    for group in &udp {
        own_sockets.push(group[0].local_addr()?);
    }
    for l in tcp.iter().chain(&tls_listeners) {
        own_sockets.push(l.local_addr()?);
    }
    let mut own_ips: Vec<IpAddr> = [Some(relay_ip), t.relay_ipv6, t.external_ip]
        .into_iter()
        .flatten()
        .collect();
    // A wildcard listener answers on every address of the host: none of them is a peer.
    if own_sockets.iter().any(|a| a.ip().is_unspecified()) {
        match net::host_addresses() {
            Ok(addresses) => own_ips.extend(addresses),
            Err(e) => {
                warn!(error = %e, "cannot list this host's addresses; only the configured ones are refused as peers")
            }
        }
    }
    let policy = PeerPolicy::new(
        cidrs(&t.allow_peers),
        cidrs(&t.deny_peers),
        own_sockets,
        own_ips,
    )
    .with_relays(
        advertised_relay_ips(relay_ip, t.relay_ipv6, t.external_ip),
        t.min_port..=t.max_port,
    );
    let core_config = core_config(config, secrets.clone());
    let binder = UdpRelayBinder {
        ipv4: relay_ip,
        ipv6: t.relay_ipv6,
        ports: (t.min_port, t.max_port),
    };

    // A cluster's instances share the nonce key (derived from the TURN secret they share):
    // a client whose requests land on another instance is not answered 438 forever.
    let nonces = match secrets.first() {
        Some(secret) if config.cluster.enabled() => {
            NonceKey::shared(secret.expose().as_bytes(), NONCE_LIFETIME_S)
        }
        _ => NonceKey::random(NONCE_LIFETIME_S),
    };
    let core = Core::new(core_config, nonces, policy, binder, membership);
    let server = TurnServer::new(
        core,
        tasks.clone(),
        shutdown.clone(),
        Duration::from_secs(t.grace_period_s),
        StreamLimits {
            max_connections: t.max_connections,
            max_connections_per_source: t.max_connections_per_source,
            source_prefix_v6: t.source_prefix_v6,
            allocate_timeout: Duration::from_secs(t.allocate_timeout_s),
        },
    );
    info!(%relay_ip, external_ip = ?t.external_ip, ports = %format!("{}-{}", t.min_port, t.max_port), realm = %t.realm, "TURN relay");

    let first_port = |addrs: Vec<SocketAddr>| addrs.first().map(SocketAddr::port);
    let mut ports = (Vec::new(), Vec::new(), Vec::new());
    for group in udp {
        let addr = group[0].local_addr()?;
        info!(listener = "turn_udp", %addr, loops = group.len(), "listening");
        ports.0.push(addr);
        for socket in group {
            tasks.spawn(Arc::clone(&server).serve_udp(socket));
        }
    }
    for listener in tcp {
        let addr = listener.local_addr()?;
        info!(listener = "turn_tcp", %addr, "listening");
        ports.1.push(addr);
        tasks.spawn(Arc::clone(&server).serve_stream(listener, None));
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.turn_server_config());
    for listener in tls_listeners {
        let addr = listener.local_addr()?;
        info!(listener = "turn_tls", %addr, "listening");
        ports.2.push(addr);
        tasks.spawn(Arc::clone(&server).serve_stream(listener, Some(acceptor.clone())));
    }
    let offer = TurnOffer {
        public_host: t.public_host.clone(),
        udp_port: first_port(ports.0),
        tcp_port: first_port(ports.1),
        tls_port: first_port(ports.2),
        https_port: t.on_https_port.then_some(https_port),
        secret: secrets[0].clone(),
        ttl_s: t.credential_ttl_s,
    };
    Ok(Turn {
        server,
        offer: ArcSwap::from_pointee(offer),
    })
}

fn core_config(config: &Config, secrets: Vec<Secret>) -> CoreConfig {
    let t = &config.turn;
    CoreConfig {
        realm: t.realm.clone(),
        secrets,
        static_users: t
            .static_users
            .iter()
            .map(|u| (u.username.clone(), u.password.clone()))
            .collect(),
        external_ip: t.external_ip,
        max_allocations_per_credential: t.max_allocations_per_credential,
        max_allocations_per_room: t.max_allocations_per_room,
        max_allocations_per_source: t.max_allocations_per_source,
        max_allocations: t.max_allocations,
        source_prefix_v6: t.source_prefix_v6,
        challenges_per_source_s: t.challenges_per_source_s,
        fence: t.fence == crate::config::FenceMode::Room,
        fence_room_credentials: t.fence_room_credentials,
        max_allocation_bytes_per_s: t.max_allocation_bytes_per_s,
        max_room_bytes_per_s: t.max_room_bytes_per_s,
    }
}

fn cidrs(list: &[String]) -> Vec<Cidr> {
    list.iter()
        .map(|c| c.parse().expect("validated with the config"))
        .collect()
}

/// The addresses relayed addresses are advertised on: the external address replaces the
/// relay address of its family (1:1 NAT), as in XOR-RELAYED-ADDRESS.
fn advertised_relay_ips(
    relay_ip: IpAddr,
    relay_ipv6: Option<IpAddr>,
    external_ip: Option<IpAddr>,
) -> Vec<IpAddr> {
    [Some(relay_ip), relay_ipv6]
        .into_iter()
        .flatten()
        .map(|ip| match external_ip {
            Some(external) if external.is_ipv4() == ip.is_ipv4() => external,
            _ => ip,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_are_advertised_on_the_external_address_of_their_family() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            advertised_relay_ips(
                ip("10.0.0.5"),
                Some(ip("2001:db8::5")),
                Some(ip("203.0.113.5"))
            ),
            [ip("203.0.113.5"), ip("2001:db8::5")]
        );
        assert_eq!(
            advertised_relay_ips(ip("10.0.0.5"), None, None),
            [ip("10.0.0.5")]
        );
    }
}
