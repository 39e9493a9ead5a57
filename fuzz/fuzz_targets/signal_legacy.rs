//! The plain-WebSocket ("legacy") dialect's decoding of a client's text frame
//! (`signaling::legacy::Frame`, `string`, `raw`), as its session reads one: the type and
//! name as strings, and the relayed values forwarded as written inside the frames the
//! session writes for the other user, which must read back as one JSON object carrying
//! exactly those values (`legacy::relayed`, which `Session::relay` writes them with).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use switchboard::signaling::calls::Kind;
use switchboard::signaling::legacy::{self, Frame};
use switchboard::signaling::protocol;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let frame: Frame = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(_) => {
            // The slower path, for the error message.
            let _ = serde_json::from_str::<Value>(text);
            return;
        }
    };
    let kind = legacy::string(frame.kind).unwrap_or_default();
    let name = legacy::string(frame.name);
    if kind == "login" {
        if let Some(name) = &name {
            let _ = protocol::check_name(name);
        }
        return;
    }
    // The name the offer is signed with is the sender's, which any login took: any string
    // (here the one the frame names).
    let Some(target) = name else { return };
    let relayed = [Kind::Offer, Kind::Answer, Kind::Candidate]
        .map(|kind| (kind.as_str(), legacy::relayed(kind, &frame, &target)));
    for (kind, text) in relayed {
        // JSON, checked as a browser's `JSON.parse` reads it: the grammar of RFC 8259, which
        // lets a string escape an unpaired surrogate (`"\udfee"`); serde_json's `Value`
        // refuses those, so the frame is read with the values left as their text.
        let back: Relayed = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("a relayed {kind} frame is not JSON: {e}: {text}"));
        assert_eq!(back.kind, kind);
        let sent = match kind {
            "offer" => back.offer,
            "answer" => back.answer,
            _ => back.candidate,
        };
        let written = match kind {
            "offer" => frame.offer,
            "answer" => frame.answer,
            _ => frame.candidate,
        };
        assert_eq!(
            sent.map(RawValue::get).unwrap_or("null"),
            legacy::raw(written),
            "a relayed value changed on its way"
        );
    }
});

/// A frame the session writes, as the other user's client reads it.
#[derive(Deserialize)]
struct Relayed<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow, default)]
    offer: Option<&'a RawValue>,
    #[serde(borrow, default)]
    answer: Option<&'a RawValue>,
    #[serde(borrow, default)]
    candidate: Option<&'a RawValue>,
}
