//! `Host`: what every dialect's sockets share, and all they see of the server: the live
//! signaling settings, the TURN handle, the connection limiter, the counters, the shutdown
//! token and task tracker, and the membership check of every dialect. Built after the
//! dialects (it holds their membership check) and before they are mounted.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::bans::{Bans, KeptOut};
use super::limits::ConnectionLimiter;
use super::protocol::ErrorCode;
use super::signal::Signals;
use super::stats::SignalingMetrics;
use crate::config::{Config, SignalingConfig};
use crate::model::{IceServer, PeerId, RoomId, Scope};
use crate::sync::Locked;
use crate::tokens::{Grant, Refusal};
use crate::turn::{Membership, Turn};

/// The signaling settings that a reload (SIGHUP) replaces while every connection stays:
/// limits, ICE servers, addresses for `ipaddr`.
#[derive(Debug)]
pub struct Live {
    pub signaling: SignalingConfig,
    /// The HTTP connection limits and deadlines (`http::admission`).
    pub https: crate::config::HttpsConfig,
    /// The proxies whose word about the client is taken (`https.trusted_proxies`).
    pub proxies: std::sync::Arc<crate::forwarded::Proxies>,
    /// ICE servers from the config, handed to every peer as they are.
    pub static_ice_servers: Vec<IceServer>,
    /// Public addresses from the config (`turn.public_host`, `turn.external_ip`), for `ipaddr`.
    pub public_addresses: Vec<String>,
    /// How long a room closed by the operator refuses joins (`admin.closed_room_s`).
    pub closed_room: std::time::Duration,
    /// How long a kicked peer's source may not come back (`admin.kicked_peer_s`).
    pub kicked_peer: std::time::Duration,
    /// Join tokens: which rooms need one, and the keys that check them (`[tokens]`).
    pub tokens: crate::tokens::Verifier,
}

impl Live {
    pub fn new(config: &Config) -> Live {
        Live {
            signaling: config.signaling.clone(),
            https: config.https.clone(),
            proxies: std::sync::Arc::new(crate::forwarded::Proxies::new(
                &config.https.trusted_proxies,
                config.https.proxy_protocol,
            )),
            static_ice_servers: crate::turn::ice::configured(config),
            public_addresses: config
                .turn
                .public_host
                .iter()
                .cloned()
                .chain(config.turn.external_ip.map(|ip| ip.to_string()))
                .collect(),
            closed_room: std::time::Duration::from_secs(config.admin.closed_room_s),
            kicked_peer: std::time::Duration::from_secs(config.admin.kicked_peer_s),
            tokens: config.tokens.verifier(),
        }
    }
}

pub struct Host {
    live: ArcSwap<Live>,
    /// `None` when `turn.enabled` is false.
    pub turn: Option<Arc<Turn>>,
    pub limiter: Arc<ConnectionLimiter>,
    /// Signaling counters for `/metrics`.
    pub metrics: SignalingMetrics,
    /// Cancelled on SIGINT/SIGTERM; every task watches it.
    pub shutdown: CancellationToken,
    /// Every connection and socket task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// The signal of every native and plain-WebSocket socket task, so shutdown reaches them.
    pub signals: Arc<Signals>,
    /// Whether a peer is still in a scope, asked of every dialect.
    membership: Membership,
    /// Rooms the operator closed and sources it kicked, until when they are kept out.
    bans: std::sync::Mutex<Bans>,
    /// Set by a drain: no new sockets, joins or allocations; the calls here run on.
    draining: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("live", &self.live)
            .field("turn", &self.turn.is_some())
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl Host {
    pub fn new(
        live: Live,
        turn: Option<Arc<Turn>>,
        membership: Membership,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Host {
        let s = &live.signaling;
        Host {
            limiter: Arc::new(ConnectionLimiter::with_v6_prefix(
                s.max_connections,
                s.max_connections_per_ip,
                s.source_prefix_v6,
            )),
            live: ArcSwap::from_pointee(live),
            turn,
            metrics: SignalingMetrics::default(),
            shutdown,
            tasks,
            signals: Arc::default(),
            membership,
            bans: std::sync::Mutex::default(),
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Starts draining: no new sockets, joins or TURN allocations here (so a load balancer,
    /// told by `/readyz`, sends new users elsewhere); the calls here run on.
    pub fn start_drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
        if let Some(turn) = &self.turn {
            turn.drain();
        }
    }

    /// Whether this instance is draining.
    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The live settings; a reload may replace them between two calls.
    ///
    /// A cheap snapshot for the per-message paths: no reference count is touched (arc-swap's
    /// guard), so sockets on different cores do not contend on one counter. Do not hold it
    /// across an `.await`; clone what must live longer.
    pub fn live(&self) -> arc_swap::Guard<Arc<Live>> {
        self.live.load()
    }

    /// Replaces the live settings and applies the new connection limits. Room limits are
    /// each dialect's (`Dialect::set_limits`). Open connections keep their per-socket
    /// settings (rate, timeouts) until they reconnect.
    pub fn set_live(&self, live: Live) {
        let s = &live.signaling;
        self.limiter
            .set_limits(s.max_connections, s.max_connections_per_ip);
        self.live.store(Arc::new(live));
    }

    /// The operator closed `room` (every dialect's room of that name): joins are refused for
    /// `admin.closed_room_s` from `now`.
    pub fn room_closed(&self, room: &RoomId, now: Instant) {
        let until = now + self.live().closed_room;
        self.bans.locked().close_room(room, until, now);
    }

    /// The operator kicked a peer of `scope` whose client was `client`: peers from its source
    /// (its address, or its IPv6 network of `signaling.source_prefix_v6` bits) may not enter
    /// `scope` for `admin.kicked_peer_s` from `now`.
    pub fn peer_kicked(&self, scope: &Scope, client: IpAddr, now: Instant) {
        let live = self.live();
        let source = crate::limiter::source(client, live.signaling.source_prefix_v6);
        let until = now + live.kicked_peer;
        self.bans.locked().kick(scope, source, until, now);
    }

    /// Whether a peer whose client is `client` is kept out of `scope` by the operator's
    /// actions at `now`: a closed room, or a kick of a peer from the same source.
    pub fn kept_out(&self, scope: &Scope, client: IpAddr, now: Instant) -> Option<KeptOut> {
        let source = crate::limiter::source(client, self.live().signaling.source_prefix_v6);
        self.bans.locked().check(scope, source, now)
    }

    /// What `token` (or none) lets its holder do in `room`, by the live `[tokens]`: `None` for
    /// an open room joined without a token.
    ///
    /// # Errors
    /// The code and message of the refusal.
    pub fn check_token(
        &self,
        room: &RoomId,
        token: Option<&str>,
    ) -> Result<Option<Grant>, (ErrorCode, &'static str)> {
        let checked = self
            .live()
            .tokens
            .check(room, token, crate::clock::unix_now());
        checked.map_err(|refusal| {
            let code = match refusal {
                Refusal::Required => ErrorCode::TokenRequired,
                Refusal::Invalid => ErrorCode::TokenInvalid,
                Refusal::Expired => ErrorCode::TokenExpired,
                Refusal::RoomMismatch => ErrorCode::TokenRoomMismatch,
            };
            (code, refusal.message())
        })
    }

    /// The ICE servers for `peer` in `scope` (its dialect and room), and how long their
    /// credentials last; `room_allocations` is its join token's `allocations`, which its
    /// credential carries; `request_host` is the host the browser used to reach us.
    pub fn ice_servers_for(
        &self,
        peer: &PeerId,
        scope: &Scope,
        room_allocations: Option<u32>,
        request_host: &str,
    ) -> (Vec<IceServer>, Option<u64>) {
        let mut servers = self.live().static_ice_servers.clone();
        let Some(turn) = &self.turn else {
            return (servers, None);
        };
        servers.extend(turn.ice_servers(scope, peer, room_allocations, request_host));
        (servers, Some(turn.credential_ttl_s()))
    }

    /// `peer` joined `scope` from `client`: with the room fence (`turn.fence`), the others of
    /// its room may reach that address.
    pub fn announce_client(&self, scope: &Scope, peer: &PeerId, client: IpAddr) {
        if let Some(turn) = self.turn.as_ref().filter(|t| t.fenced()) {
            turn.announce(scope, peer, &[client]);
        }
    }

    /// `peer` of `scope` sent `payload` (JSON text) to its room: with the room fence, the
    /// addresses of the ICE candidates (and SDP connection lines) in it become reachable to
    /// the others of its room.
    pub fn announce_signal(&self, scope: &Scope, peer: &PeerId, payload: &str) {
        let Some(turn) = self.turn.as_ref().filter(|t| t.fenced()) else {
            return;
        };
        let mut ips = Vec::new();
        super::sdp::addresses_in(payload, &mut ips);
        if !ips.is_empty() {
            turn.announce(scope, peer, &ips);
        }
    }

    /// A peer left `scope` (its room, or the plain-WebSocket dialect): its TURN allocations
    /// close after the grace period unless it is back.
    pub fn peer_left(&self, scope: &Scope, peer: &PeerId) {
        if let Some(turn) = &self.turn {
            let membership = Arc::clone(&self.membership);
            let (s, p) = (scope.clone(), peer.clone());
            turn.peer_left(scope.clone(), peer.clone(), move || membership(&s, &p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(toml: &str) -> Host {
        let config = Config::from_toml(toml, "t").unwrap();
        Host::new(
            Live::new(&config),
            None,
            Arc::new(|_: &Scope, _: &PeerId| false),
            CancellationToken::new(),
            TaskTracker::new(),
        )
    }

    /// One host may hold a whole /64: its addresses share one count by default.
    #[test]
    fn ipv6_clients_are_counted_per_network_of_the_configured_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let by_64 = host("[signaling]\nmax_connections_per_ip = 1\n");
        let _first = by_64.limiter.try_acquire(ip("2001:db8:1:2::1")).unwrap();
        assert!(by_64.limiter.try_acquire(ip("2001:db8:1:2::ffff")).is_err());
        let _other = by_64.limiter.try_acquire(ip("2001:db8:1:3::1")).unwrap();

        let by_128 = host("[signaling]\nmax_connections_per_ip = 1\nsource_prefix_v6 = 128\n");
        let _first = by_128.limiter.try_acquire(ip("2001:db8:1:2::1")).unwrap();
        let _second = by_128
            .limiter
            .try_acquire(ip("2001:db8:1:2::ffff"))
            .unwrap();
    }

    /// A closed room refuses joins for `admin.closed_room_s`, a kicked peer's source (its
    /// IPv6 network) for `admin.kicked_peer_s`; 0 keeps nobody out.
    #[test]
    fn operator_actions_keep_out_for_the_configured_times() {
        let room = RoomId::parse("shut").unwrap();
        let scope = Scope::native(room.clone());
        let (client, now) = ("2001:db8:1:2::1".parse().unwrap(), Instant::now());
        let neighbour: IpAddr = "2001:db8:1:2::99".parse().unwrap();
        let host_ = host("[admin]\nclosed_room_s = 10\nkicked_peer_s = 20\n");
        host_.peer_kicked(&scope, client, now);
        assert_eq!(
            host_.kept_out(&scope, neighbour, now),
            Some(KeptOut::Kicked(20))
        );
        host_.room_closed(&room, now);
        assert_eq!(
            host_.kept_out(&scope, "192.0.2.1".parse().unwrap(), now),
            Some(KeptOut::RoomClosed(10))
        );
        let later = now + std::time::Duration::from_secs(11);
        assert_eq!(
            host_.kept_out(&scope, client, later),
            Some(KeptOut::Kicked(9))
        );
        let after = now + std::time::Duration::from_secs(21);
        assert_eq!(host_.kept_out(&scope, client, after), None);

        let open = host("[admin]\nclosed_room_s = 0\nkicked_peer_s = 0\n");
        open.room_closed(&room, now);
        open.peer_kicked(&scope, client, now);
        assert_eq!(open.kept_out(&scope, client, now), None);
    }
}
