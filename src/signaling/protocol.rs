//! The native signaling protocol: JSON text frames over `wss://HOST/ws`.
//!
//! `ClientMsg` and `ServerMsg` are the native dialect's wire types. The identifiers they
//! carry (`RoomId`, `PeerId`) live in `crate::model`, shared with TURN; they are re-exported here.
//! The protocol is documented, one example per message, in `docs/protocol.md`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

pub use crate::model::{
    IceServer, MAX_NAME_LEN, MAX_ROOM_LEN, PeerId, PeerInfo, RoomId, check_name,
};
pub use crate::tokens::Roles;

fn default_roles() -> Roles {
    Roles::DEFAULT
}

/// An opaque signal payload (SDP or ICE candidate), kept as the JSON text the sender
/// wrote: the server forwards it without parsing it into a tree or serializing it again.
#[derive(Debug, Clone)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// The payload parsed (for clients and tests; the server never needs it).
    pub fn value(&self) -> Value {
        serde_json::from_str(self.0.get()).unwrap_or(Value::Null)
    }

    /// The JSON text as received.
    pub fn as_json(&self) -> &str {
        self.0.get()
    }

    /// The JSON text, without a copy.
    pub fn into_json(self) -> String {
        Box::<str>::from(self.0).into()
    }
}

impl From<Value> for Payload {
    fn from(v: Value) -> Payload {
        Payload(RawValue::from_string(v.to_string()).expect("a Value is valid JSON"))
    }
}

/// Equal when the JSON values are equal, whatever the whitespace.
impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.0.get() == other.0.get() || self.value() == other.value()
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Through a `Value`, so that it also works inside internally tagged enums; the hot
/// path (`decode` of a `signal`) borrows the raw text instead.
impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        Value::deserialize(d).map(Payload::from)
    }
}

/// Messages a client sends.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Enter a room, creating it if needed; `token` is a join token from the application
    /// (needed where `tokens.require` says so).
    Join {
        room: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Ask for a `resume_token`: if the socket drops, a new one may take this peer's
        /// place (`resume`) within `signaling.resume_grace_s`, the room seeing nothing.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        resume: bool,
    },
    /// Take the place of a peer whose socket dropped: `token` is its latest
    /// `resume_token`, `last_seq` the `seq` of the last message it received.
    Resume { token: String, last_seq: u64 },
    /// A resumable peer has received every message up to `seq`: the server may forget them.
    Ack { seq: u64 },
    /// Put another peer out of the room (a join token's `kick` role).
    Kick { peer_id: PeerId },
    /// Forward an opaque payload (SDP or ICE candidate) to another member of the room.
    Signal { to: PeerId, payload: Payload },
    /// Leave the current room; the socket stays open and may join again.
    Leave,
    /// Application-level keepalive; answered with `pong`.
    Ping,
}

/// Messages the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// The answer to a successful `join`.
    Welcome {
        peer_id: PeerId,
        room: RoomId,
        /// The other members, in order of arrival.
        peers: Vec<PeerInfo>,
        ice_servers: Vec<IceServer>,
        /// Seconds the credentials in `ice_servers` stay valid, when they expire.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ice_ttl_s: Option<u64>,
        /// What this peer may do (its join token's roles; open rooms: publish, no kick).
        #[serde(default = "default_roles")]
        roles: Roles,
        /// For a join that asked to be resumable: what `resume` takes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_token: Option<String>,
    },
    /// The answer to a successful `resume`: the peer's place as it is now. The messages it
    /// missed follow, in order, with their `seq`.
    Resumed {
        peer_id: PeerId,
        room: RoomId,
        peers: Vec<PeerInfo>,
        ice_servers: Vec<IceServer>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ice_ttl_s: Option<u64>,
        #[serde(default = "default_roles")]
        roles: Roles,
        /// What the next `resume` takes (each token is good once).
        resume_token: String,
    },
    /// Fresh credentials, pushed before the previous ones expire.
    IceServers {
        ice_servers: Vec<IceServer>,
        ice_ttl_s: u64,
    },
    PeerJoined {
        peer: PeerInfo,
    },
    PeerLeft {
        peer_id: PeerId,
    },
    Signal {
        from: PeerId,
        payload: Payload,
    },
    Pong,
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl ServerMsg {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> ServerMsg {
        ServerMsg::Error {
            code,
            message: message.into(),
        }
    }
}

/// Machine-readable error codes; the `message` next to them is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Invalid JSON, an unknown `type`, or a missing or mistyped field.
    BadRequest,
    /// The room name is not 1–64 characters of `[A-Za-z0-9_-]`.
    BadRoom,
    /// The display name is too long or has control characters.
    BadName,
    /// The room already holds `room_capacity` peers.
    RoomFull,
    /// The server already holds `max_rooms` rooms.
    TooManyRooms,
    /// The message needs a joined room.
    NotJoined,
    /// The socket is already in a room; `leave` first.
    AlreadyJoined,
    /// No peer with that id is in the sender's room.
    UnknownPeer,
    /// More messages than `messages_per_second` allows; the message was dropped.
    RateLimited,
    /// No `join` within `join_timeout_s`; the socket is closed.
    JoinTimeout,
    /// A frame above `max_message_bytes`; the socket is closed.
    MessageTooLarge,
    /// The server or this address has too many connections.
    TooManyConnections,
    /// The server is shutting down.
    ShuttingDown,
    /// Plain-WebSocket dialect: the message needs a logged-in user.
    NotLoggedIn,
    /// Plain-WebSocket dialect: nobody of that name is logged in.
    UnknownName,
    /// The operator closed this room a short while ago (`admin.closed_room_s`).
    RoomClosed,
    /// The operator kicked a peer from this source out of this room a short while ago
    /// (`admin.kicked_peer_s`).
    Kicked,
    /// The instances of a cluster share rooms through Redis, which cannot be reached now:
    /// a join that needs it is refused; try again shortly.
    Unavailable,
    /// The room needs a join token (`tokens.require`) and the join had none.
    TokenRequired,
    /// The join token is not one a configured key signed, or its claims are malformed.
    TokenInvalid,
    /// The join token's `exp` has passed.
    TokenExpired,
    /// The join token is for another room (plain-WebSocket dialect: another name).
    TokenRoomMismatch,
    /// The peer's join token does not give it that right (`kick`, `publish`).
    Forbidden,
    /// The room relayed more messages than its budget allows (`signaling.room_messages_per_s`
    /// or its join token's `messages_per_s`); the message was dropped.
    RoomBusy,
    /// The place `resume` asked for is gone (unknown or used token, the grace period over,
    /// or messages it missed no longer held): join again.
    ResumeFailed,
}

impl crate::metrics::Label for ErrorCode {
    const ALL: &'static [ErrorCode] = &[
        ErrorCode::BadRequest,
        ErrorCode::BadRoom,
        ErrorCode::BadName,
        ErrorCode::RoomFull,
        ErrorCode::TooManyRooms,
        ErrorCode::NotJoined,
        ErrorCode::AlreadyJoined,
        ErrorCode::UnknownPeer,
        ErrorCode::RateLimited,
        ErrorCode::JoinTimeout,
        ErrorCode::MessageTooLarge,
        ErrorCode::TooManyConnections,
        ErrorCode::ShuttingDown,
        ErrorCode::NotLoggedIn,
        ErrorCode::UnknownName,
        ErrorCode::RoomClosed,
        ErrorCode::Kicked,
        ErrorCode::Unavailable,
        ErrorCode::TokenRequired,
        ErrorCode::TokenInvalid,
        ErrorCode::TokenExpired,
        ErrorCode::TokenRoomMismatch,
        ErrorCode::Forbidden,
        ErrorCode::RoomBusy,
        ErrorCode::ResumeFailed,
    ];
    fn index(self) -> usize {
        self as usize
    }
    fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadRoom => "bad_room",
            ErrorCode::BadName => "bad_name",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::UnknownPeer => "unknown_peer",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::JoinTimeout => "join_timeout",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::NotLoggedIn => "not_logged_in",
            ErrorCode::UnknownName => "unknown_name",
            ErrorCode::RoomClosed => "room_closed",
            ErrorCode::Kicked => "kicked",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::TokenRequired => "token_required",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenRoomMismatch => "token_room_mismatch",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RoomBusy => "room_busy",
            ErrorCode::ResumeFailed => "resume_failed",
        }
    }
}

/// Decodes one client text frame.
///
/// # Errors
/// Returns a message for a `bad_request` error: invalid JSON, unknown type, or a bad field.
pub fn decode(text: &str) -> Result<ClientMsg, String> {
    /// The shape of almost every frame: decoded in one pass, the payload only validated.
    #[derive(Deserialize)]
    struct SignalFrame<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
        to: PeerId,
        #[serde(borrow)]
        payload: &'a RawValue,
    }
    if let Ok(frame) = serde_json::from_str::<SignalFrame>(text)
        && frame.kind == "signal"
    {
        return Ok(ClientMsg::Signal {
            to: frame.to,
            payload: Payload(frame.payload.to_owned()),
        });
    }
    // Everything else, and the precise error for a bad signal.
    serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            format!("invalid JSON: {e}")
        } else {
            format!("invalid message: {e}")
        }
    })
}

/// `frame` (a JSON object's text) with `"seq":n` added as its last field.
pub fn with_seq(mut frame: String, seq: u64) -> String {
    if frame.ends_with('}') {
        frame.pop();
        frame.push_str(",\"seq\":");
        frame.push_str(&seq.to_string());
        frame.push('}');
    }
    frame
}

/// Encodes one server message as a JSON text frame.
pub fn encode(msg: &ServerMsg) -> String {
    serde_json::to_string(msg).expect("server messages always serialize")
}

/// The text of `ServerMsg::Signal { from, payload }`, from the payload's JSON text (which
/// the sender's message was parsed from, so valid): written directly, byte for byte what
/// serde writes (a peer id is hex, so it needs no escaping).
pub fn encode_signal(from: &PeerId, payload: &str) -> String {
    const HEAD: &str = r#"{"type":"signal","from":""#;
    const MID: &str = r#"","payload":"#;
    let from = from.as_str();
    let mut text = String::with_capacity(HEAD.len() + from.len() + MID.len() + payload.len() + 1);
    text.push_str(HEAD);
    text.push_str(from);
    text.push_str(MID);
    text.push_str(payload);
    text.push('}');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_signal_from_borrowed_parts_is_the_signal_message_byte_for_byte() {
        let from = PeerId::random();
        let payload: Payload = serde_json::from_str(r#"{"sdp" : "v=0\r\n", "n":[1, 2]}"#).unwrap();
        let owned = ServerMsg::Signal {
            from: from.clone(),
            payload: serde_json::from_str(payload.as_json()).unwrap(),
        };
        assert_eq!(encode_signal(&from, payload.as_json()), encode(&owned));
    }

    #[test]
    fn error_code_metric_labels_match_the_wire_names() {
        use crate::metrics::Label;
        for (i, &code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code.index(), i);
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        }
    }

    #[test]
    fn a_signal_payload_is_forwarded_as_written() {
        let text = r#"{"to":"ab","payload":{"sdp" : "v=0\r\n", "n": [1, 2.50]},"type":"signal"}"#;
        let Ok(ClientMsg::Signal { to, payload }) = decode(text) else {
            panic!("not a signal");
        };
        assert_eq!(to.to_string(), "ab");
        assert_eq!(payload.as_json(), r#"{"sdp" : "v=0\r\n", "n": [1, 2.50]}"#);
        let out = encode(&ServerMsg::Signal { from: to, payload });
        assert_eq!(
            out,
            r#"{"type":"signal","from":"ab","payload":{"sdp" : "v=0\r\n", "n": [1, 2.50]}}"#
        );
        // Still parsed as a whole when it is not a well-formed signal.
        assert!(
            decode(r#"{"type":"signal","to":"ab","payload":}"#)
                .unwrap_err()
                .starts_with("invalid JSON")
        );
    }

    #[test]
    fn room_names_are_checked() {
        assert!(RoomId::parse("abc_DEF-123").is_ok());
        assert!(RoomId::parse(&"a".repeat(64)).is_ok());
        assert!(RoomId::parse(&"a".repeat(65)).is_err());
        assert!(RoomId::parse("").is_err());
        for bad in ["a b", "a/b", "é", "a.b", "<script>"] {
            assert!(RoomId::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn peer_ids_are_random_and_128_bit() {
        let a = PeerId::random();
        let b = PeerId::random();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn client_messages_decode() {
        assert_eq!(
            decode(r#"{"type":"join","room":"r1","name":"Ann"}"#).unwrap(),
            ClientMsg::Join {
                room: "r1".into(),
                name: Some("Ann".into()),
                token: None,
                resume: false,
            }
        );
        assert_eq!(
            decode(r#"{"type":"join","room":"r1"}"#).unwrap(),
            ClientMsg::Join {
                room: "r1".into(),
                name: None,
                token: None,
                resume: false,
            }
        );
        assert_eq!(
            decode(r#"{"type":"join","room":"r1","token":"a.b.c"}"#).unwrap(),
            ClientMsg::Join {
                room: "r1".into(),
                name: None,
                token: Some("a.b.c".into()),
                resume: false,
            }
        );
        assert_eq!(
            decode(r#"{"type":"join","room":"r1","resume":true}"#).unwrap(),
            ClientMsg::Join {
                room: "r1".into(),
                name: None,
                token: None,
                resume: true,
            }
        );
        assert_eq!(
            decode(r#"{"type":"resume","token":"t","last_seq":7}"#).unwrap(),
            ClientMsg::Resume {
                token: "t".into(),
                last_seq: 7
            }
        );
        assert_eq!(
            decode(r#"{"type":"ack","seq":3}"#).unwrap(),
            ClientMsg::Ack { seq: 3 }
        );
        assert_eq!(
            with_seq(r#"{"type":"pong"}"#.to_owned(), 12),
            r#"{"type":"pong","seq":12}"#
        );
        assert_eq!(
            decode(r#"{"type":"kick","peer_id":"ab"}"#).unwrap(),
            ClientMsg::Kick {
                peer_id: PeerId::test("ab")
            }
        );
        assert_eq!(
            decode(r#"{"type":"signal","to":"ab","payload":{"sdp":"v=0"}}"#).unwrap(),
            ClientMsg::Signal {
                to: PeerId::test("ab"),
                payload: json!({"sdp":"v=0"}).into()
            }
        );
        assert_eq!(decode(r#"{"type":"leave"}"#).unwrap(), ClientMsg::Leave);
        assert_eq!(decode(r#"{"type":"ping"}"#).unwrap(), ClientMsg::Ping);
    }

    #[test]
    fn bad_client_messages_are_explained() {
        assert!(decode("{not json").unwrap_err().starts_with("invalid JSON"));
        let unknown = decode(r#"{"type":"dance"}"#).unwrap_err();
        assert!(
            unknown.contains("unknown variant") && unknown.contains("dance"),
            "{unknown}"
        );
        let missing = decode(r#"{"type":"signal","to":"x"}"#).unwrap_err();
        assert!(missing.contains("payload"), "{missing}");
        assert!(decode(r#"{"room":"x"}"#).unwrap_err().contains("type"));
    }

    #[test]
    fn server_messages_encode_with_snake_case_tags() {
        let welcome = ServerMsg::Welcome {
            peer_id: PeerId::test("p1"),
            room: RoomId::parse("r").unwrap(),
            peers: vec![PeerInfo {
                id: PeerId::test("p0"),
                name: None,
            }],
            ice_servers: vec![],
            ice_ttl_s: None,
            roles: Roles::DEFAULT,
            resume_token: None,
        };
        let text = encode(&welcome);
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"type":"welcome","peer_id":"p1","room":"r","peers":[{"id":"p0"}],"ice_servers":[],
                   "roles":{"publish":true,"kick":false}})
        );
        let err = encode(&ServerMsg::error(ErrorCode::RoomFull, "full"));
        assert_eq!(
            err,
            r#"{"type":"error","code":"room_full","message":"full"}"#
        );
        assert_eq!(encode(&ServerMsg::Pong), r#"{"type":"pong"}"#);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("Ann").is_ok());
        assert!(check_name(&"x".repeat(65)).is_err());
        assert!(check_name("a\nb").is_err());
    }
}
