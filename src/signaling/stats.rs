//! Signaling's counters, bumped by every dialect as things happen, and read into metric
//! families at scrape time with the live gauges each dialect reports.

use crate::metrics::{ByLabel, Counter, Family};

use super::protocol::ErrorCode;

crate::labels! {
    /// The signaling protocol a socket speaks.
    pub DialectKind {
        Native => "native",
        PlainWs => "plain_ws",
        SocketIo => "socketio",
    }
}

crate::labels! {
    /// Client messages, by the `type` (or socket.io event) they arrived as.
    pub MessageType {
        Join => "join",
        Signal => "signal",
        Leave => "leave",
        Ping => "ping",
        Login => "login",
        Offer => "offer",
        Answer => "answer",
        Candidate => "candidate",
        CreateOrJoin => "create_or_join",
        Message => "message",
        StartCall => "start_call",
        WebrtcOffer => "webrtc_offer",
        WebrtcAnswer => "webrtc_answer",
        WebrtcIceCandidate => "webrtc_ice_candidate",
        Ipaddr => "ipaddr",
        Invalid => "invalid",
    }
}

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
    }
}

/// Counters of the signaling side, shared by every dialect.
#[derive(Debug, Default)]
pub struct SignalingMetrics {
    pub connections: ByLabel<DialectKind>,
    pub joins: ByLabel<DialectKind>,
    pub messages: ByLabel<MessageType>,
    pub errors: ByLabel<ErrorCode>,
    pub refusals: ByLabel<Refusal>,
    /// Peers disconnected and rooms closed through the admin API.
    pub kicked: Counter,
}

/// Rooms and peers of one dialect right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub rooms: usize,
    pub peers: usize,
}

impl SignalingMetrics {
    /// The signaling families: these counters, open connections, and each dialect's counts.
    pub fn families(&self, open: usize, counts: &[(DialectKind, Counts)]) -> Vec<Family> {
        let mut rooms = Family::gauge("signaling_rooms", "Rooms with at least one peer.");
        let mut peers = Family::gauge(
            "signaling_peers",
            "Peers in a room (logged in, for the plain-WebSocket dialect).",
        );
        for &(kind, c) in counts {
            use crate::metrics::Label;
            if kind.has_rooms() {
                rooms = rooms.labelled(vec![("dialect", kind.as_str())], c.rooms);
            }
            peers = peers.labelled(vec![("dialect", kind.as_str())], c.peers);
        }
        vec![
            Family::gauge(
                "signaling_open_connections",
                "Open signaling sockets, all dialects.",
            )
            .value(open),
            Family::counter("signaling_connections", "Signaling sockets accepted.")
                .by("dialect", &self.connections),
            rooms,
            peers,
            Family::counter(
                "signaling_joins",
                "Successful joins (logins for the plain-WebSocket dialect).",
            )
            .by("dialect", &self.joins),
            Family::counter("signaling_messages", "Client messages received, by type.")
                .by("type", &self.messages),
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

impl DialectKind {
    /// Whether the dialect has rooms (the plain-WebSocket one only logs users in).
    pub fn has_rooms(self) -> bool {
        !matches!(self, DialectKind::PlainWs)
    }
}
