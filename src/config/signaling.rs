//! `[signaling]`: room and connection limits, timeouts, allowed origins, and the
//! plain-WebSocket and socket.io dialects.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalingConfig {
    pub room_capacity: usize,
    pub max_rooms: usize,
    pub max_connections: usize,
    /// Connections per client IPv4 address or IPv6 network of `source_prefix_v6` bits.
    pub max_connections_per_ip: usize,
    /// The IPv6 prefix length one client is counted by (a /64 is one subscriber's network,
    /// and one host may hold all of it).
    pub source_prefix_v6: u8,
    pub max_message_bytes: usize,
    pub messages_per_second: u32,
    pub message_burst: u32,
    /// Messages per second one room may relay, all its members together (0: no budget);
    /// a join token's `messages_per_s` replaces it for its room.
    pub room_messages_per_s: u32,
    pub join_timeout_s: u64,
    /// Seconds a native peer that asked to be resumable keeps its place after its socket
    /// drops, for a new socket to `resume` it (0: none; peers leave at once).
    pub resume_grace_s: u64,
    pub ping_interval_s: u64,
    pub idle_timeout_s: u64,
    /// Origins allowed to open `/ws`; empty means the page's own origin, `"*"` means any.
    pub allowed_origins: Vec<String>,
    /// Path of the plain-WebSocket dialect (login/offer/answer/candidate/leave) on the HTTPS
    /// listener; `routes::check_extra` decides what the router can mount.
    pub legacy_path: String,
    /// Plain `ws://` listeners for that dialect only, for old clients that hard-code one; empty means off.
    pub legacy_ws_listen: Vec<SocketAddr>,
    /// Room capacity of the socket.io dialect (the tutorials allow 2).
    pub socketio_room_capacity: usize,
    /// Send the codelab's `log` events (server log lines) to socket.io clients.
    pub socketio_log: bool,
}

keys!(SignalingConfig in "signaling" {
    // `AppState::set_live` swaps these in; each connection reads them as it needs them.
    room_capacity: Live,
    max_rooms: Live,
    max_connections: Live,
    max_connections_per_ip: Live,
    // The connection limiter counts by it from the start.
    source_prefix_v6: Restart,
    max_message_bytes: Live,
    messages_per_second: Live,
    message_burst: Live,
    // The registries apply it to the next message.
    room_messages_per_s: Live,
    join_timeout_s: Live,
    resume_grace_s: Live,
    ping_interval_s: Live,
    idle_timeout_s: Live,
    allowed_origins: Live,
    // The router is built once, at start.
    legacy_path: Restart,
    legacy_ws_listen: Restart,
    socketio_room_capacity: Live,
    socketio_log: Live,
});

impl Default for SignalingConfig {
    fn default() -> Self {
        SignalingConfig {
            room_capacity: 4,
            max_rooms: 10_000,
            max_connections: 10_000,
            max_connections_per_ip: 50,
            source_prefix_v6: 64,
            max_message_bytes: 64 * 1024,
            messages_per_second: 20,
            message_burst: 60,
            room_messages_per_s: 0,
            join_timeout_s: 30,
            resume_grace_s: 30,
            ping_interval_s: 15,
            idle_timeout_s: 45,
            allowed_origins: Vec::new(),
            legacy_path: "/legacy".to_owned(),
            legacy_ws_listen: Vec::new(),
            socketio_room_capacity: 2,
            socketio_log: false,
        }
    }
}

impl SignalingConfig {
    pub fn join_timeout(&self) -> Duration {
        Duration::from_secs(self.join_timeout_s)
    }
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_s)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_s)
    }

    pub(super) fn validate(&self, invalid: Invalid<'_>) -> Result<(), ConfigError> {
        let s = self;
        let ranges: [(&str, u64, u64, u64); 14] = [
            (
                "signaling.room_messages_per_s",
                u64::from(s.room_messages_per_s),
                0,
                u64::from(crate::tokens::MAX_MESSAGES_PER_S),
            ),
            ("signaling.room_capacity", s.room_capacity as u64, 2, 64),
            (
                "signaling.socketio_room_capacity",
                s.socketio_room_capacity as u64,
                2,
                64,
            ),
            ("signaling.max_rooms", s.max_rooms as u64, 1, 10_000_000),
            (
                "signaling.max_connections",
                s.max_connections as u64,
                1,
                10_000_000,
            ),
            (
                "signaling.max_connections_per_ip",
                s.max_connections_per_ip as u64,
                1,
                10_000_000,
            ),
            (
                "signaling.max_message_bytes",
                s.max_message_bytes as u64,
                1024,
                16 * 1024 * 1024,
            ),
            (
                "signaling.messages_per_second",
                u64::from(s.messages_per_second),
                1,
                1_000_000,
            ),
            (
                "signaling.message_burst",
                u64::from(s.message_burst),
                1,
                1_000_000,
            ),
            (
                "signaling.source_prefix_v6",
                u64::from(s.source_prefix_v6),
                16,
                128,
            ),
            ("signaling.join_timeout_s", s.join_timeout_s, 1, 3600),
            ("signaling.resume_grace_s", s.resume_grace_s, 0, 3600),
            ("signaling.ping_interval_s", s.ping_interval_s, 1, 3600),
            ("signaling.idle_timeout_s", s.idle_timeout_s, 1, 3600),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(invalid(key, format!("expected {min}..={max}, got {value}")));
            }
        }
        if s.idle_timeout_s <= s.ping_interval_s {
            return Err(invalid(
                "signaling.idle_timeout_s",
                format!(
                    "must be greater than signaling.ping_interval_s ({}), got {}",
                    s.ping_interval_s, s.idle_timeout_s
                ),
            ));
        }
        for (i, origin) in s.allowed_origins.iter().enumerate() {
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            let ok = origin == "*"
                || host.is_some_and(|h| !h.is_empty() && !h.contains(['/', ' ', '*']));
            if !ok {
                return Err(invalid(
                    &format!("signaling.allowed_origins[{i}]"),
                    format!(
                        "expected \"*\" or an origin such as \"https://example.com:8443\", got {origin:?}"
                    ),
                ));
            }
        }
        crate::routes::check_extra(&s.legacy_path)
            .map_err(|message| invalid("signaling.legacy_path", message))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::super::tests::refused;

    #[test]
    fn a_legacy_path_on_another_route_is_refused_by_its_key() {
        for path in [
            "/diag",
            "/api/v1/ice-servers",
            "/ws",
            "/static/x",
            "/socket.io",
            "/x/:id",
        ] {
            let err = refused(&format!("[signaling]\nlegacy_path = \"{path}\"\n"));
            assert!(err.contains("signaling.legacy_path"), "{path}: {err}");
        }
        assert!(Config::from_toml("[signaling]\nlegacy_path = \"/plain\"\n", "t").is_ok());
    }
}
