//! The events webhooks carry, as plain data, and their JSON bodies:
//! `{"type": ..., "timestamp": <Unix seconds>, "data": {...}}`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::model::{PeerId, RoomId};
use crate::turn::usage::Usage;

/// Where a room or peer is: its dialect (`native`, `plain_ws`, `socketio`) and room (none in
/// the plain-WebSocket dialect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub dialect: &'static str,
    pub room: Option<RoomId>,
}

/// Something the application may want to hear of.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A room's first member joined.
    RoomStarted { place: Place },
    /// A room's last member left (or the operator closed it).
    RoomFinished {
        place: Place,
        duration: Duration,
        /// Messages its members sent, all of them.
        messages: u64,
    },
    PeerJoined {
        place: Place,
        peer: PeerId,
        name: Option<String>,
    },
    PeerLeft {
        place: Place,
        peer: PeerId,
        duration: Duration,
        messages: u64,
    },
    /// A TURN allocation of a peer's or a room's credentials closed, with what it relayed.
    AllocationClosed {
        place: Place,
        /// The peer whose credentials it was (none for room credentials).
        peer: Option<PeerId>,
        transport: &'static str,
        reason: &'static str,
        usage: Usage,
    },
}

impl Event {
    /// What its order is kept within: its dialect and room, or, without a room (the
    /// plain-WebSocket dialect), its peer.
    pub fn order_key(&self) -> (&'static str, &str) {
        let (place, peer) = match self {
            Event::RoomStarted { place } | Event::RoomFinished { place, .. } => (place, None),
            Event::PeerJoined { place, peer, .. } | Event::PeerLeft { place, peer, .. } => {
                (place, Some(peer))
            }
            Event::AllocationClosed { place, peer, .. } => (place, peer.as_ref()),
        };
        let within = match (&place.room, peer) {
            (Some(room), _) => room.as_str(),
            (None, Some(peer)) => peer.as_str(),
            (None, None) => "",
        };
        (place.dialect, within)
    }

    /// Its `type`, as `webhooks.events` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::RoomStarted { .. } => "room_started",
            Event::RoomFinished { .. } => "room_finished",
            Event::PeerJoined { .. } => "peer_joined",
            Event::PeerLeft { .. } => "peer_left",
            Event::AllocationClosed { .. } => "allocation_closed",
        }
    }

    /// The body posted, at `timestamp` (Unix seconds).
    pub fn to_json(&self, timestamp: u64) -> Vec<u8> {
        let data = match self {
            Event::RoomStarted { place } => place.json(),
            Event::RoomFinished {
                place,
                duration,
                messages,
            } => with(
                place.json(),
                json!({"duration_s": duration.as_secs(), "messages": messages}),
            ),
            Event::PeerJoined { place, peer, name } => {
                with(place.json(), json!({"peer": peer.as_str(), "name": name}))
            }
            Event::PeerLeft {
                place,
                peer,
                duration,
                messages,
            } => with(
                place.json(),
                json!({
                    "peer": peer.as_str(),
                    "duration_s": duration.as_secs(),
                    "messages": messages,
                }),
            ),
            Event::AllocationClosed {
                place,
                peer,
                transport,
                reason,
                usage,
            } => with(
                place.json(),
                json!({
                    "peer": peer.as_ref().map(PeerId::as_str),
                    "transport": transport,
                    "reason": reason,
                    "allocation_seconds": usage.held.as_millis() as f64 / 1000.0,
                    "to_peer": usage.to_peer,
                    "to_client": usage.to_client,
                }),
            ),
        };
        let body = json!({"type": self.kind(), "timestamp": timestamp, "data": data});
        serde_json::to_vec(&body).expect("JSON values serialize")
    }
}

impl Place {
    fn json(&self) -> Value {
        json!({"dialect": self.dialect, "room": self.room.as_ref().map(RoomId::as_str)})
    }
}

/// `base` with the fields of `more` added.
fn with(mut base: Value, more: Value) -> Value {
    if let (Value::Object(base), Value::Object(more)) = (&mut base, more) {
        base.extend(more);
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::usage::Flow;

    fn place() -> Place {
        Place {
            dialect: "native",
            room: Some(RoomId::parse("lobby").unwrap()),
        }
    }

    fn body(event: &Event) -> Value {
        serde_json::from_slice(&event.to_json(1_700_000_000)).unwrap()
    }

    #[test]
    fn a_rooms_events_share_an_order_key_a_roomless_peers_are_its_own() {
        let (a, b) = (
            PeerId::parse(&format!("{:032x}", 1)).unwrap(),
            PeerId::parse(&format!("{:032x}", 2)).unwrap(),
        );
        let joined = |place: Place, peer: &PeerId| Event::PeerJoined {
            place,
            peer: peer.clone(),
            name: None,
        };
        let started = Event::RoomStarted { place: place() };
        assert_eq!(started.order_key(), ("native", "lobby"));
        assert_eq!(joined(place(), &a).order_key(), started.order_key());
        assert_eq!(joined(place(), &b).order_key(), started.order_key());
        let closed = Event::AllocationClosed {
            place: place(),
            peer: None,
            transport: "udp",
            reason: "expired",
            usage: Usage::default(),
        };
        assert_eq!(closed.order_key(), started.order_key());
        let directory = || Place {
            dialect: "plain_ws",
            room: None,
        };
        assert_eq!(
            joined(directory(), &a).order_key(),
            ("plain_ws", a.as_str())
        );
        assert_ne!(
            joined(directory(), &a).order_key(),
            joined(directory(), &b).order_key()
        );
    }

    #[test]
    fn bodies_carry_type_time_and_the_events_data() {
        let peer = PeerId::parse(&format!("{:032x}", 1)).unwrap();
        assert_eq!(
            body(&Event::RoomStarted { place: place() }),
            json!({"type": "room_started", "timestamp": 1_700_000_000u64,
                   "data": {"dialect": "native", "room": "lobby"}})
        );
        assert_eq!(
            body(&Event::PeerLeft {
                place: Place {
                    dialect: "plain_ws",
                    room: None
                },
                peer: peer.clone(),
                duration: Duration::from_millis(61_900),
                messages: 7,
            })["data"],
            json!({"dialect": "plain_ws", "room": null, "peer": peer.as_str(),
                   "duration_s": 61, "messages": 7})
        );
        let usage = Usage {
            allocations: 0,
            to_peer: Flow {
                bytes: 500,
                packets: 5,
            },
            to_client: Flow {
                bytes: 80,
                packets: 2,
            },
            held: Duration::from_millis(2500),
            last_closed: None,
        };
        let closed = Event::AllocationClosed {
            place: place(),
            peer: Some(peer.clone()),
            transport: "udp",
            reason: "released",
            usage,
        };
        assert_eq!(closed.kind(), "allocation_closed");
        assert_eq!(
            body(&closed)["data"],
            json!({"dialect": "native", "room": "lobby", "peer": peer.as_str(),
                   "transport": "udp", "reason": "released", "allocation_seconds": 2.5,
                   "to_peer": {"bytes": 500, "packets": 5},
                   "to_client": {"bytes": 80, "packets": 2}})
        );
    }
}
