//! The socket.io dialect's decoding. `signaling::sio` has no decoder of its own: its handlers
//! take their arguments from socketioxide, which decodes engine.io packets, then socket.io
//! packets with the common parser, then each event's data into the type the handler asks
//! for. This target runs that chain with the limits `sio::layer` sets, then what the
//! handlers do with the data (room names, the size check, `roomId` and `sdp`), then what a
//! member of the room receives: the relayed text, emitted as `SioMember::deliver` emits it,
//! must read back as exactly what the sender wrote (the handlers relay it unparsed).
//!
//! Input: engine.io packets as a WebSocket client sends them, separated by 0x1E (the
//! separator of engine.io's polling payloads); after a binary event, the next pieces are
//! its attachments.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use socketioxide_core::Value;
use socketioxide_core::packet::{Packet, PacketData};
use socketioxide_core::parser::{Parse, ParseConfig, ParseError, ParserState};
use socketioxide_parser_common::CommonParser;
use switchboard::config::SignalingConfig;
use switchboard::model::RoomId;
use switchboard::signaling::gate::Gate;
use switchboard::signaling::sio::{FirstArg, Part, call_data};

/// `signaling.max_message_bytes` as the fuzz targets take it (the default is 64 KiB; a
/// smaller limit reaches the refusals with small inputs).
const MAX: usize = 1024;

fuzz_target!(|data: &[u8]| {
    // As `sio::layer` configures the parser.
    let config = ParseConfig {
        max_incoming_binary_buf_size: MAX,
        max_incoming_binaries: 1,
        ..ParseConfig::default()
    };
    let signaling = SignalingConfig {
        max_message_bytes: MAX,
        ..SignalingConfig::default()
    };
    let state = ParserState::default();
    let parser = CommonParser;
    for piece in data.split(|b| *b == 0x1E) {
        let waiting = state.partial_bin_packet.lock().unwrap().is_some();
        let decoded = if waiting {
            parser.decode_bin(&config, &state, bytes::Bytes::copy_from_slice(piece))
        } else {
            let Ok(text) = std::str::from_utf8(piece) else {
                return;
            };
            let packet = match engineioxide_core::Packet::parse(
                engineioxide_core::ProtocolVersion::V4,
                text.to_owned(),
            ) {
                Ok(engineioxide_core::Packet::Message(msg)) => msg,
                Ok(_) => continue,
                Err(_) => return,
            };
            parser.decode_str(&config, &state, packet)
        };
        let packet = match decoded {
            Ok(packet) => packet,
            Err(ParseError::NeedsMoreBinaryData) => continue,
            // socketioxide closes the socket.
            Err(_) => return,
        };
        match packet.inner {
            PacketData::Event(value, _) | PacketData::BinaryEvent(value, _) => {
                handle(parser, &signaling, value);
            }
            _ => {}
        }
    }
});

/// One event, as socketioxide hands it to the handler `sio::register` set for its name.
fn handle(parser: CommonParser, signaling: &SignalingConfig, mut value: Value) {
    let Ok(event) = parser.read_event(&value) else {
        return;
    };
    match event.to_owned().as_str() {
        // `Data<String>`: a room name.
        "create or join" | "join" | "start_call" => {
            if let Ok(room) = parser.decode_value::<String>(&mut value, true) {
                let _ = RoomId::parse(&room);
                let _ = serde_json::Value::from(room).to_string();
            }
        }
        // `Data<FirstArg>`, checked for size, then relayed as it came (`message`, the ICE
        // candidate) or its `sdp` (offer and answer), to the members of its `roomId`.
        event @ ("message" | "webrtc_offer" | "webrtc_answer" | "webrtc_ice_candidate") => {
            let Ok(FirstArg(data)) = parser.decode_value::<FirstArg>(&mut value, true) else {
                return;
            };
            if Gate::size(data.get().len(), signaling).is_err() {
                return;
            }
            let json = match event {
                "message" => data.get(),
                "webrtc_ice_candidate" => call(&data, Part::Whole),
                _ => call(&data, Part::Sdp),
            };
            delivered(parser, event, json);
        }
        _ => {}
    }
}

/// What `sio::relay` reads of a `webrtc_*` event: its room, checked as a room name, and
/// the JSON it relays.
fn call(data: &RawValue, part: Part) -> &str {
    let (room, json) = call_data(data, part);
    let _ = room.as_deref().map(RoomId::parse);
    json
}

/// What a member of the room receives when `json` is relayed to it as `event`: emitted as
/// `SioMember::deliver` emits it, then read as the member's client reads an event; it must
/// be `json` as the sender wrote it.
fn delivered(parser: CommonParser, event: &str, json: &str) {
    let data: &RawValue = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("relayed text that `deliver` drops: {e}: {json}"));
    let value = parser
        .encode_value(data, Some(event))
        .expect("a relayed event encodes");
    let Value::Str(text, None) = parser.encode(Packet::event("/", value)) else {
        panic!("a relayed event encoded with binary attachments");
    };
    let state = ParserState::default();
    let packet = parser
        .decode_str(&ParseConfig::default(), &state, text.clone())
        .unwrap_or_else(|e| panic!("a relayed event that does not decode: {e:?}: {text}"));
    let PacketData::Event(mut value, None) = packet.inner else {
        panic!("a relayed event decodes as another packet: {text}");
    };
    assert_eq!(parser.read_event(&value).ok(), Some(event));
    let FirstArg(back) = parser
        .decode_value::<FirstArg>(&mut value, true)
        .unwrap_or_else(|e| panic!("a relayed event's data does not decode: {e}: {text}"));
    assert_eq!(back.get(), json, "the relayed data changed on its way");
}
