//! The native signaling protocol's decoding (`signaling::protocol::decode`) of a client's
//! text frame, then what the native dialect does with the fields (room and name checks, the
//! join token checked against a key, whether a signal's SDP sends media), the signal
//! forwarded as the server writes it (`encode_signal`), and a round trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard::signaling::protocol::{self, ClientMsg, PeerId, RoomId, ServerMsg};
use switchboard::signaling::sdp;
use switchboard::tokens::{Key, KeySpec, Require, Verifier};

/// A verifier with one HMAC key: no token the fuzzer writes is signed by it, so any token
/// that passes is a forgery.
static VERIFIER: std::sync::LazyLock<Verifier> = std::sync::LazyLock::new(|| {
    let key = Key::new(KeySpec {
        id: "k",
        algorithm: "HS256",
        secret: Some("a fuzzing secret of at least 32 bytes"),
        public_key: None,
    })
    .unwrap();
    Verifier::new(vec![key], Require::All, None, 30)
});

/// The server's `signal` message as a client reads it, the payload left as its text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Forwarded<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    from: &'a str,
    #[serde(borrow)]
    payload: &'a RawValue,
}

fuzz_target!(|data: &[u8]| {
    // A text frame is UTF-8 (the frame reader refuses any other).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let msg = match protocol::decode(text) {
        Ok(msg) => msg,
        Err(message) => {
            // The error is sent back to the client in an `error` message.
            let error = ServerMsg::error(protocol::ErrorCode::BadRequest, message);
            let _ = protocol::encode(&error);
            return;
        }
    };
    match &msg {
        ClientMsg::Join {
            room, name, token, ..
        } => {
            if let Ok(room) = RoomId::parse(room) {
                let checked = VERIFIER.check(&room, token.as_deref(), 1_800_000_000);
                assert!(checked.is_err(), "a token no key signed passed: {token:?}");
            }
            if let Some(name) = name {
                let _ = protocol::check_name(name);
            }
        }
        ClientMsg::Kick { peer_id } => {
            let _ = PeerId::parse(peer_id.as_str());
        }
        ClientMsg::Resume { token, .. } => {
            let _ = token.len();
        }
        ClientMsg::Ack { .. } => {}
        ClientMsg::Signal { to, payload } => {
            let _ = sdp::payload_sends_media(&payload.value());
            // `to` is any string (a lookup key that finds no peer unless it is one); the
            // payload is forwarded as written, inside the server's `signal` message, whose
            // text must be JSON carrying exactly that payload (`1e400` included: JSON allows
            // it, JavaScript reads it as Infinity, so it is not checked as a number here).
            let _ = PeerId::parse(to.as_str());
            let from = PeerId::parse("0a1b2c3d4e5f60718293a4b5c6d7e8f9").unwrap();
            let forwarded = protocol::encode_signal(&from, payload.as_json());
            let back: Forwarded = serde_json::from_str(&forwarded)
                .unwrap_or_else(|e| panic!("a forwarded signal that does not parse: {e}"));
            assert_eq!(back.kind, "signal");
            assert_eq!(back.from, from.as_str());
            assert_eq!(
                back.payload.get(),
                payload.as_json(),
                "the payload changed on its way"
            );
        }
        ClientMsg::Leave | ClientMsg::Ping => {}
    }
    // What a client library would write for the same message decodes to it again.
    let again = serde_json::to_string(&msg).unwrap();
    let decoded =
        protocol::decode(&again).unwrap_or_else(|e| panic!("{again} does not decode again: {e}"));
    assert_eq!(decoded, msg);
});
