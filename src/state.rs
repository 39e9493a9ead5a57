//! `AppState`: what the HTTP routes outside the dialects, the admin API and `app` share: the
//! signaling `Host` (which is all the dialects see), the dialects themselves, the access
//! secrets and readiness.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use crate::config::{Config, Secret};
use crate::limiter::ConnectionLimiter;
use crate::signaling::dialect::Dialects;
use crate::signaling::host::{Host, Live};

/// The secrets a reload (SIGHUP) replaces: who may use the admin API and the ICE-server API.
#[derive(Debug)]
pub struct Access {
    /// Bearer token of the admin API (empty: the API refuses everyone).
    pub admin_token: Vec<Secret>,
    /// Keys of `GET /api/v1/ice-servers` (empty: the endpoint is off).
    pub api_keys: Vec<Secret>,
}

impl Access {
    /// The access secrets of `config`; `admin_token` is resolved by the caller (it may be generated).
    pub fn new(config: &Config, admin_token: Option<Secret>) -> Access {
        Access {
            admin_token: admin_token.into_iter().collect(),
            api_keys: config.api.keys.clone(),
        }
    }
}

#[derive(Debug)]
pub struct AppState {
    /// What every dialect's sockets share: live settings, TURN, limits, counters, shutdown.
    pub host: Arc<Host>,
    /// Every signaling dialect, with its rooms and peers.
    pub dialects: Dialects,
    access: ArcSwap<Access>,
    /// Open connections on the HTTPS and plain-HTTP listeners (`http::admission`).
    pub http_connections: Arc<ConnectionLimiter>,
    /// True once every configured listener is bound and served, false again on shutdown.
    ready: AtomicBool,
    /// The link to the other instances (`[cluster]`); while it is down the instance is not
    /// ready, so a load balancer sends new users elsewhere.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The webhooks (`[webhooks]`), when an endpoint is set.
    pub webhooks: Option<Arc<crate::webhooks::Webhooks>>,
}

impl AppState {
    pub fn new(
        host: Arc<Host>,
        dialects: Dialects,
        access: Access,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> AppState {
        let live = host.live();
        let http_connections = Arc::new(ConnectionLimiter::with_v6_prefix(
            live.https.max_connections,
            live.https.max_connections_per_source,
            live.signaling.source_prefix_v6,
        ));
        drop(live);
        AppState {
            http_connections,
            host,
            dialects,
            access: ArcSwap::from_pointee(access),
            ready: AtomicBool::new(false),
            cluster,
            webhooks: None,
        }
    }

    pub fn with_webhooks(mut self, webhooks: Option<Arc<crate::webhooks::Webhooks>>) -> AppState {
        self.webhooks = webhooks;
        self
    }

    /// The access secrets; a reload may replace them between two calls.
    pub fn access(&self) -> arc_swap::Guard<Arc<Access>> {
        self.access.load()
    }

    /// Replaces the live settings and the access secrets, and applies the new limits to
    /// rooms and connection counts.
    pub fn set_live(&self, live: Live, access: Access) {
        for dialect in self.dialects.iter() {
            dialect.set_limits(&live.signaling);
        }
        self.http_connections.set_limits(
            live.https.max_connections,
            live.https.max_connections_per_source,
        );
        self.host.set_live(live);
        self.access.store(Arc::new(access));
    }

    /// Every metric of the running server: signaling, TURN, process.
    pub fn metric_families(&self) -> Vec<crate::metrics::Family> {
        let counts = self.dialects.counts();
        let host = &self.host;
        let mut families = host.metrics.families(host.limiter.total(), &counts);
        if let Some(turn) = &host.turn {
            families.extend(turn.metrics());
        }
        if let Some(cluster) = &self.cluster {
            families.extend(cluster.metrics());
        }
        if let Some(webhooks) = &self.webhooks {
            families.extend(webhooks.metrics());
        }
        families.extend(crate::metrics::process::families());
        families
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && !self.host.shutdown.is_cancelled()
            && !self.host.draining()
            && self.cluster.as_ref().is_none_or(|c| c.is_up())
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}
