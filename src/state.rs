//! `AppState`: the one place where state shared by handlers and tasks lives.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, SignalingConfig};
use crate::signaling::hub::Hub;
use crate::signaling::limits::ConnectionLimiter;
use crate::signaling::protocol::{IceServer, PeerId, RoomId};

#[derive(Debug)]
pub struct AppState {
    pub signaling: SignalingConfig,
    pub hub: Hub,
    pub limiter: Arc<ConnectionLimiter>,
    /// ICE servers from the config, handed to every peer as they are.
    pub static_ice_servers: Vec<IceServer>,
    /// Cancelled on SIGINT/SIGTERM; every task watches it.
    pub shutdown: CancellationToken,
    /// Every connection and socket task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// True once every configured listener is bound and served, false again on shutdown.
    ready: AtomicBool,
}

impl AppState {
    pub fn new(config: &Config, shutdown: CancellationToken) -> AppState {
        let s = &config.signaling;
        AppState {
            signaling: s.clone(),
            hub: Hub::new(s.room_capacity, s.max_rooms),
            limiter: Arc::new(ConnectionLimiter::new(
                s.max_connections,
                s.max_connections_per_ip,
            )),
            static_ice_servers: config
                .ice_servers
                .iter()
                .map(|c| IceServer {
                    urls: c.urls.clone(),
                    username: c.username.clone(),
                    credential: c.credential.as_ref().map(|s| s.expose().to_owned()),
                })
                .collect(),
            shutdown,
            tasks: TaskTracker::new(),
            ready: AtomicBool::new(false),
        }
    }

    /// The ICE servers for `peer` in `room`, and how long their credentials last.
    pub fn ice_servers_for(&self, _peer: &PeerId, _room: &RoomId) -> (Vec<IceServer>, Option<u64>) {
        (self.static_ice_servers.clone(), None)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.shutdown.is_cancelled()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}
