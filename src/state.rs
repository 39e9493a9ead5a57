//! `AppState`: the one place where state shared by handlers and tasks lives.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use arc_swap::ArcSwap;

use crate::config::{Config, Secret, SignalingConfig};
use crate::model::Scope;
use crate::model::{IceServer, PeerId};
use crate::signaling::dialect::Dialects;
use crate::signaling::limits::ConnectionLimiter;
use crate::signaling::signal::Signals;
use crate::signaling::stats::SignalingMetrics;
use crate::turn::Turn;

/// The part of the configuration that a reload (SIGHUP) replaces while every connection
/// and allocation stays: limits, ICE servers, addresses for `ipaddr`, tokens and keys.
#[derive(Debug)]
pub struct Live {
    pub signaling: SignalingConfig,
    /// ICE servers from the config, handed to every peer as they are.
    pub static_ice_servers: Vec<IceServer>,
    /// Public addresses from the config (`turn.public_host`, `turn.external_ip`), for `ipaddr`.
    pub public_addresses: Vec<String>,
    /// Bearer token of the admin API (empty: the API refuses everyone).
    pub admin_token: Vec<Secret>,
    /// Keys of `GET /api/v1/ice-servers` (empty: the endpoint is off).
    pub api_keys: Vec<Secret>,
}

impl Live {
    /// The live settings of `config`; `admin_token` is resolved by the caller (it may be generated).
    pub fn new(config: &Config, admin_token: Option<Secret>) -> Live {
        Live {
            signaling: config.signaling.clone(),
            static_ice_servers: crate::turn::ice::configured(config),
            public_addresses: config
                .turn
                .public_host
                .iter()
                .cloned()
                .chain(config.turn.external_ip.map(|ip| ip.to_string()))
                .collect(),
            admin_token: admin_token.into_iter().collect(),
            api_keys: config.api.keys.clone(),
        }
    }
}

#[derive(Debug)]
pub struct AppState {
    live: ArcSwap<Live>,
    /// Every signaling dialect, with its rooms and peers.
    pub dialects: Dialects,
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
    /// True once every configured listener is bound and served, false again on shutdown.
    ready: AtomicBool,
}

impl AppState {
    pub fn new(
        live: Live,
        dialects: Dialects,
        turn: Option<Arc<Turn>>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> AppState {
        let s = &live.signaling;
        AppState {
            limiter: Arc::new(ConnectionLimiter::new(
                s.max_connections,
                s.max_connections_per_ip,
            )),
            live: ArcSwap::from_pointee(live),
            dialects,
            turn,
            metrics: SignalingMetrics::default(),
            shutdown,
            tasks,
            signals: Arc::default(),
            ready: AtomicBool::new(false),
        }
    }

    /// The live settings; a reload may replace them between two calls.
    ///
    /// A cheap snapshot for the per-message paths: no reference count is touched (arc-swap's
    /// guard), so sockets on different cores do not contend on one counter. Do not hold it
    /// across an `.await`; clone what must live longer.
    pub fn live(&self) -> arc_swap::Guard<Arc<Live>> {
        self.live.load()
    }

    /// Replaces the live settings and applies the new limits to rooms and connection counts.
    /// Open connections keep their per-socket settings (rate, timeouts) until they reconnect.
    pub fn set_live(&self, live: Live) {
        let s = &live.signaling;
        self.limiter
            .set_limits(s.max_connections, s.max_connections_per_ip);
        for dialect in self.dialects.iter() {
            dialect.set_limits(s);
        }
        self.live.store(Arc::new(live));
    }

    /// The ICE servers for `peer` in `scope` (its dialect and room), and how long their
    /// credentials last; `request_host` is the host the browser used to reach us.
    pub fn ice_servers_for(
        &self,
        peer: &PeerId,
        scope: &Scope,
        request_host: &str,
    ) -> (Vec<IceServer>, Option<u64>) {
        let mut servers = self.live().static_ice_servers.clone();
        let Some(turn) = &self.turn else {
            return (servers, None);
        };
        servers.extend(turn.ice_servers(scope, peer, request_host));
        (servers, Some(turn.credential_ttl_s()))
    }

    /// A peer left `scope` (its room, or the plain-WebSocket dialect): its TURN allocations
    /// close after the grace period unless it is back.
    pub fn peer_left(&self, scope: &Scope, peer: &PeerId) {
        if let Some(turn) = &self.turn {
            let membership = self.dialects.membership();
            let (s, p) = (scope.clone(), peer.clone());
            turn.peer_left(scope.clone(), peer.clone(), move || membership(&s, &p));
        }
    }

    /// Every metric of the running server: signaling, TURN, process.
    pub fn metric_families(&self) -> Vec<crate::metrics::Family> {
        let counts = self.dialects.counts();
        let mut families = self.metrics.families(self.limiter.total(), &counts);
        if let Some(turn) = &self.turn {
            families.extend(turn.metrics());
        }
        families.extend(crate::metrics::process::families());
        families
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.shutdown.is_cancelled()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}
