//! `[admin]`: the admin listener (Prometheus `/metrics`, the admin API) and its token.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid, Secret};

/// The admin listener: Prometheus `/metrics` and the admin API (plain HTTP).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Addresses of the admin listener; empty means none. Loopback by default.
    pub listen: Vec<SocketAddr>,
    /// Bearer token of the admin API; unset means one is generated into `server.state_dir`.
    pub token: Option<Secret>,
    /// Seconds a room closed through the admin API refuses joins (0: it can be rejoined
    /// at once), so that pages reconnecting on their own do not undo the close.
    pub closed_room_s: u64,
    /// Seconds a kicked peer's source (its address, or its IPv6 network) may not come back
    /// to the room it was kicked from (0: at once), for the same reason.
    pub kicked_peer_s: u64,
}

keys!(AdminConfig in "admin" {
    listen: Restart,
    token: Live,
    closed_room_s: Live,
    kicked_peer_s: Live,
});

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: vec!["127.0.0.1:9478".parse().expect("valid literal")],
            token: None,
            closed_room_s: 60,
            kicked_peer_s: 60,
        }
    }
}

impl AdminConfig {
    pub(super) fn validate(&self, invalid: Invalid<'_>) -> Result<(), ConfigError> {
        if let Some(token) = &self.token
            && token.expose().len() < 16
        {
            return Err(invalid(
                "admin.token",
                "expected at least 16 characters (or leave it unset to have one generated)"
                    .to_owned(),
            ));
        }
        for (key, secs) in [
            ("admin.closed_room_s", self.closed_room_s),
            ("admin.kicked_peer_s", self.kicked_peer_s),
        ] {
            if secs > 86_400 {
                return Err(invalid(
                    key,
                    format!("expected 0 to 86400 seconds, got {secs}"),
                ));
            }
        }
        Ok(())
    }
}
