//! Signaling's counters, bumped by every dialect as things happen, and read into metric
//! families at scrape time with the live gauges each dialect reports.

use crate::metrics::{ByLabel, Counter, Family, Label};

use super::protocol::ErrorCode;

crate::labels! {
    /// Which limit refused a connection or a message; named after its config key.
    pub Refusal {
        Origin => "allowed_origins",
        MaxConnections => "max_connections",
        MaxConnectionsPerIp => "max_connections_per_ip",
        ShuttingDown => "shutting_down",
        MessagesPerSecond => "messages_per_second",
        MaxMessageBytes => "max_message_bytes",
        JoinTimeout => "join_timeout_s",
        SendQueue => "send_queue",
        RoomCapacity => "room_capacity",
        MaxRooms => "max_rooms",
        /// Messages over their room's budget, dropped (every dialect).
        RoomMessages => "room_messages_per_s",
        /// Refused plain-WebSocket logins on one socket (probing names).
        FailedLogins => "failed_logins",
        /// engine.io transports over a source's or the server's budget (`sio`).
        SocketioSessions => "socketio_sessions",
        /// A second namespace connect on one engine.io session (`sio`).
        SocketioSecondConnect => "socketio_second_connect",
        /// HTTP connections, refused at accept, before TLS (`http::admission`).
        HttpMaxConnections => "https.max_connections",
        HttpMaxConnectionsPerSource => "https.max_connections_per_source",
        /// Closed with no complete request within `https.request_timeout_s` of accept.
        HttpRequestTimeout => "https.request_timeout_s",
    }
}

/// Counters of the signaling side that every dialect shares; each dialect keeps its own
/// `DialectStats` and reports them in its `Counts`.
#[derive(Debug, Default)]
pub struct SignalingMetrics {
    pub errors: ByLabel<ErrorCode>,
    pub refusals: ByLabel<Refusal>,
    /// Peers disconnected and rooms closed through the admin API.
    pub kicked: Counter,
}

/// What one dialect counts: sockets accepted, joins (logins), and its client messages by
/// the type they arrived as (`M`, the dialect's own label set; `invalid` for what did not
/// parse).
#[derive(Debug)]
pub struct DialectStats<M: Label> {
    pub connections: Counter,
    pub joins: Counter,
    pub messages: ByLabel<M>,
}

impl<M: Label> Default for DialectStats<M> {
    fn default() -> Self {
        DialectStats {
            connections: Counter::default(),
            joins: Counter::default(),
            messages: ByLabel::default(),
        }
    }
}

impl<M: Label> DialectStats<M> {
    /// These counters with the dialect's gauges: `rooms` is `None` for a dialect without rooms.
    pub fn counts(&self, rooms: Option<usize>, peers: usize) -> Counts {
        Counts {
            rooms,
            peers,
            connections: self.connections.get(),
            joins: self.joins.get(),
            messages: self.messages.iter().map(|(m, n)| (m.as_str(), n)).collect(),
        }
    }
}

/// One dialect right now: its gauges and its counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Rooms with a member; `None` for a dialect without rooms.
    pub rooms: Option<usize>,
    /// Peers in a room (logged in, for the plain-WebSocket dialect).
    pub peers: usize,
    pub connections: u64,
    pub joins: u64,
    /// Client messages by type, zeros included.
    pub messages: Vec<(&'static str, u64)>,
}

impl SignalingMetrics {
    /// The signaling families: these counters, open connections, and each dialect's
    /// counts under its name. Message types that several dialects share (`join`,
    /// `invalid`) are one sample, the sum.
    pub fn families(&self, open: usize, counts: &[(&'static str, Counts)]) -> Vec<Family> {
        let mut connections =
            Family::counter("signaling_connections", "Signaling sockets accepted.");
        let mut rooms = Family::gauge("signaling_rooms", "Rooms with at least one peer.");
        let mut peers = Family::gauge(
            "signaling_peers",
            "Peers in a room (logged in, for the plain-WebSocket dialect).",
        );
        let mut joins = Family::counter(
            "signaling_joins",
            "Successful joins (logins for the plain-WebSocket dialect).",
        );
        let mut by_type: Vec<(&'static str, u64)> = Vec::new();
        for (dialect, c) in counts {
            let label = || vec![("dialect", *dialect)];
            connections = connections.labelled(label(), c.connections);
            if let Some(n) = c.rooms {
                rooms = rooms.labelled(label(), n);
            }
            peers = peers.labelled(label(), c.peers);
            joins = joins.labelled(label(), c.joins);
            for &(kind, n) in &c.messages {
                match by_type.iter_mut().find(|(k, _)| *k == kind) {
                    Some((_, sum)) => *sum += n,
                    None => by_type.push((kind, n)),
                }
            }
        }
        let messages = by_type.into_iter().fold(
            Family::counter("signaling_messages", "Client messages received, by type."),
            |family, (kind, n)| family.labelled(vec![("type", kind)], n),
        );
        vec![
            Family::gauge(
                "signaling_open_connections",
                "Open signaling sockets, all dialects.",
            )
            .value(open),
            connections,
            rooms,
            peers,
            joins,
            messages,
            Family::counter(
                "signaling_errors",
                "Error replies sent to clients, by code.",
            )
            .by("code", &self.errors),
            Family::counter(
                "signaling_refusals",
                "Connections and messages refused by a limit.",
            )
            .by("limit", &self.refusals),
            Family::counter(
                "signaling_admin_kicks",
                "Peers disconnected through the admin API.",
            )
            .value(self.kicked.get()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::encode;

    crate::labels! {
        pub A { Join => "join", Invalid => "invalid" }
    }
    crate::labels! {
        pub B { Login => "login", Invalid => "invalid" }
    }

    #[test]
    fn each_dialect_is_labelled_by_name_and_shared_message_types_are_summed() {
        let (a, b) = (DialectStats::<A>::default(), DialectStats::<B>::default());
        a.connections.inc();
        a.messages.inc(A::Invalid);
        a.messages.inc(A::Join);
        b.messages.add(B::Invalid, 2);
        b.joins.inc();
        let counts = [("one", a.counts(Some(3), 4)), ("two", b.counts(None, 1))];
        let text = encode(SignalingMetrics::default().families(5, &counts));
        for line in [
            "signaling_connections_total{dialect=\"one\"} 1",
            "signaling_connections_total{dialect=\"two\"} 0",
            "signaling_rooms{dialect=\"one\"} 3",
            "signaling_peers{dialect=\"two\"} 1",
            "signaling_joins_total{dialect=\"two\"} 1",
            "signaling_messages_total{type=\"join\"} 1",
            "signaling_messages_total{type=\"invalid\"} 3",
            "signaling_messages_total{type=\"login\"} 0",
        ] {
            let line = format!("switchboard_{line}");
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(
            !text.contains("signaling_rooms{dialect=\"two\"}"),
            "a dialect without rooms has no rooms gauge"
        );
    }
}
