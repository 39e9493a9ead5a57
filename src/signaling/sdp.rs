//! What the server reads of the session descriptions and ICE candidates peers exchange, as
//! plain data: whether one offers to send media (a join token without the `publish` role may
//! not), and the addresses a peer announces (the room fence, `turn.fence`, lets the others of
//! its room reach them).
//!
//! The payloads are the clients' own JSON; the server never rewrites them.

use std::net::IpAddr;

use serde_json::Value;

/// Addresses read from one message, at most.
pub const MAX_ADDRESSES: usize = 16;

/// The IP addresses in ICE candidates (`candidate:…`, alone or as an SDP `a=candidate:` line:
/// the connection address and the related address) and SDP connection lines (`c=IN IP4 …`)
/// in a payload's JSON text, wherever the client put them; at most `MAX_ADDRESSES`, the
/// unspecified addresses and host names (mDNS `.local` candidates) left out.
///
/// Read from the text as it is, with no parse: a candidate's line ends at the end of its
/// JSON string or at an escape (the `\r\n` between SDP lines). A client that hides its
/// addresses behind JSON escapes only hides its own.
pub fn addresses_in(json: &str, out: &mut Vec<IpAddr>) {
    for (marker, connection) in [("candidate:", false), ("c=IN ", true)] {
        let mut rest = json;
        while let Some(at) = rest.find(marker) {
            let after = &rest[at + marker.len()..];
            let end = after.find(['"', '\\', '\n', '\r']).unwrap_or(after.len());
            let line = &after[..end];
            if connection {
                // c=IN IP4 192.0.2.1 (a multicast TTL or count after a slash is cut)
                if let Some(address) = line.split_ascii_whitespace().nth(1) {
                    push(address.split('/').next().unwrap_or(""), out);
                }
            } else {
                // foundation component transport priority address port typ type [raddr a rport p]
                let mut fields = line.split_ascii_whitespace();
                if let Some(address) = fields.nth(4) {
                    push(address, out);
                }
                if let Some(related) = fields.skip_while(|f| *f != "raddr").nth(1) {
                    push(related, out);
                }
            }
            if out.len() >= MAX_ADDRESSES {
                return;
            }
            rest = &after[end..];
        }
    }
}

fn push(address: &str, out: &mut Vec<IpAddr>) {
    if let Ok(ip) = address.parse::<IpAddr>()
        && !ip.is_unspecified()
        && !out.contains(&ip)
        && out.len() < MAX_ADDRESSES
    {
        out.push(ip);
    }
}

/// Whether a peer that may only receive (a join token with `publish: false`) may send this
/// payload (JSON text): not when it cannot be read (it might hide anything), nor when any SDP
/// in it sends media (`payload_sends_media`).
pub fn receive_only_allows(payload: &str) -> bool {
    serde_json::from_str::<Value>(payload).is_ok_and(|v| !payload_sends_media(&v))
}

/// How deep JSON text inside strings is read (`"{\"sdp\": …}"`, as some tutorials send it).
const NESTED_JSON: u8 = 3;

/// Whether any string in `payload` (a signal's JSON, however the client nests its session
/// description: in objects, arrays, keys, or JSON text inside a string) is an SDP with an
/// audio or video section that sends: `a=sendrecv` or `a=sendonly`, or no direction at all
/// (RFC 8866: sendrecv).
pub fn payload_sends_media(payload: &Value) -> bool {
    sends_within(payload, NESTED_JSON)
}

fn sends_within(payload: &Value, nested: u8) -> bool {
    match payload {
        Value::String(s) => string_sends(s, nested),
        Value::Array(items) => items.iter().any(|v| sends_within(v, nested)),
        Value::Object(fields) => fields
            .iter()
            .any(|(k, v)| string_sends(k, nested) || sends_within(v, nested)),
        _ => false,
    }
}

fn string_sends(s: &str, nested: u8) -> bool {
    if sdp_sends_media(s) {
        return true;
    }
    let t = s.trim_start();
    // JSON text inside the string; text too deep to read counts as sending.
    if t.starts_with(['{', '[', '"']) {
        return match serde_json::from_str::<Value>(t) {
            Ok(inner) if nested == 0 => {
                !matches!(inner, Value::Null | Value::Bool(_) | Value::Number(_))
            }
            Ok(inner) => sends_within(&inner, nested - 1),
            Err(_) => false,
        };
    }
    false
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Sends,
    DoesNotSend,
}

fn direction(line: &str) -> Option<Direction> {
    match line {
        "a=sendrecv" | "a=sendonly" => Some(Direction::Sends),
        "a=recvonly" | "a=inactive" => Some(Direction::DoesNotSend),
        _ => None,
    }
}

/// Whether the SDP `text` has an audio or video section that sends (see `payload_sends_media`);
/// a line may end in `\n`, `\r\n` or `\r` alone.
pub fn sdp_sends_media(text: &str) -> bool {
    // Any text with media sections counts, whatever precedes them: a browser that parses it
    // is the judge, not its first line.
    let mut session = None;
    // The current media section: whether it carries media that may be sent, and its direction.
    let mut section: Option<(bool, Option<Direction>)> = None;
    let sends = |media: bool, dir: Option<Direction>, session: Option<Direction>| {
        media && dir.or(session).unwrap_or(Direction::Sends) == Direction::Sends
    };
    for line in text.split(['\r', '\n']).map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            if let Some((media, dir)) = section.take()
                && sends(media, dir, session)
            {
                return true;
            }
            // Whatever its port: a section of port 0 with a=bundle-only (RFC 8843) is live.
            let kind = m.split(' ').next().unwrap_or("");
            let media = matches!(kind, "audio" | "video");
            section = Some((media, None));
        } else if let Some(dir) = direction(line) {
            match &mut section {
                Some((_, d)) => *d = Some(dir),
                None => session = Some(dir),
            }
        }
    }
    section.is_some_and(|(media, dir)| sends(media, dir, session))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn addresses(payload: &Value) -> Vec<String> {
        let mut out = Vec::new();
        addresses_in(&payload.to_string(), &mut out);
        out.iter().map(ToString::to_string).collect()
    }

    /// The shapes the dialects' clients send: the call page's trickled candidate, the
    /// tutorials' `candidate` strings, and candidates inside an SDP.
    #[test]
    fn candidates_and_connection_lines_are_read_wherever_they_are() {
        let trickled = json!({"candidate": {"candidate":
            "candidate:842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx raddr 10.0.0.5 rport 46154 generation 0",
            "sdpMid": "0", "sdpMLineIndex": 0}});
        assert_eq!(addresses(&trickled), ["203.0.113.7", "10.0.0.5"]);
        let codelab = json!({"type": "candidate", "label": 0, "id": "0",
            "candidate": "candidate:1 1 UDP 2122 198.51.100.9 5000 typ relay raddr 0.0.0.0 rport 0"});
        assert_eq!(addresses(&codelab), ["198.51.100.9"]);
        let sdp = "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 9 RTP/AVP 0\r\nc=IN IP6 2001:db8::1/127\r\n\
                   a=candidate:1 1 udp 1 2001:db8::2 9 typ host\r\na=candidate:2 1 udp 1 abcd-1234.local 9 typ host\r\n";
        assert_eq!(
            addresses(&json!({"description": {"type": "offer", "sdp": sdp}})),
            // Candidates first, then connection lines.
            ["2001:db8::2", "192.0.2.1", "2001:db8::1"]
        );
        // Nothing else counts: an end-of-candidates null, garbage, a number.
        assert!(addresses(&json!({"candidate": null, "x": "candidate: 1 2", "n": 7})).is_empty());
        assert!(addresses(&json!({"media": {"camera": true}})).is_empty());
    }

    #[test]
    fn one_message_announces_a_bounded_number_of_addresses() {
        let many: Vec<String> = (0..100)
            .map(|i| format!("candidate:1 1 udp 1 10.0.{i}.1 9 typ host"))
            .collect();
        assert_eq!(addresses(&json!(many)).len(), MAX_ADDRESSES);
    }

    const HEAD: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

    fn sdp(body: &str) -> String {
        format!("{HEAD}{body}")
    }

    #[test]
    fn sections_that_send_are_found_however_the_description_is_nested() {
        let sends = sdp("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendrecv\r\n");
        let receives = sdp(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=inactive\r\n",
        );
        for wrap in [
            |s: &str| json!({"type": "offer", "sdp": s}),
            |s: &str| json!({"description": {"type": "answer", "sdp": s}}),
            |s: &str| json!([{"sdp": s}]),
        ] {
            assert!(payload_sends_media(&wrap(&sends)));
            assert!(!payload_sends_media(&wrap(&receives)));
        }
        assert!(!payload_sends_media(
            &json!({"candidate": "candidate:1 1 udp 1 192.0.2.1 9 typ host"})
        ));
    }

    /// What a receive-only peer might try: SDP as JSON text inside a string, in a key, or a
    /// payload nested too deep to read.
    #[test]
    fn hidden_descriptions_are_found_and_unreadable_payloads_refused() {
        let sends = sdp("m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendrecv\r\n");
        let as_text = json!({"type": "offer", "sdp": sends}).to_string();
        assert!(payload_sends_media(&json!({"description": as_text})));
        assert!(payload_sends_media(
            &json!({"x": json!({"description": as_text}).to_string()})
        ));
        let mut key = serde_json::Map::new();
        key.insert(sends.clone(), json!(1));
        assert!(payload_sends_media(&Value::Object(key)));
        let deep = format!(
            "{{\"description\":{{\"sdp\":{}}},\"junk\":{}{}}}",
            json!(sends),
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(!receive_only_allows(&deep));
        let receives = json!({"description": {"type": "answer",
            "sdp": sdp("m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\n")}});
        assert!(receive_only_allows(&receives.to_string()));
        assert!(receive_only_allows(
            r#"{"candidate": {"candidate": "candidate:1 1 udp 1 192.0.2.1 9 typ host"}}"#
        ));
    }

    #[test]
    fn no_direction_is_sendrecv_and_the_session_level_applies_to_sections_without_one() {
        assert!(sdp_sends_media(&sdp("m=video 9 RTP/AVP 96\r\n")));
        assert!(!sdp_sends_media(&sdp(
            "a=recvonly\r\nm=video 9 RTP/AVP 96\r\n"
        )));
        assert!(sdp_sends_media(&sdp(
            "a=recvonly\r\nm=video 9 RTP/AVP 96\r\na=sendonly\r\n"
        )));
        // Data channels send no media; a section of port 0 may be bundled (RFC 8843): it counts.
        assert!(!sdp_sends_media(&sdp(
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
        )));
        assert!(sdp_sends_media(&sdp(
            "m=audio 0 RTP/AVP 0\r\na=bundle-only\r\na=sendrecv\r\n"
        )));
        // `\r` alone ends a line too.
        assert!(sdp_sends_media("v=0\rm=video 9 RTP/AVP 96\ra=sendrecv\r"));
        // The last section counts too, with \n line ends.
        assert!(sdp_sends_media(
            "v=0\nm=audio 9 RTP/AVP 0\na=recvonly\nm=video 9 RTP/AVP 96\na=sendonly\n"
        ));
        assert!(!sdp_sends_media("not an sdp a=sendrecv"));
    }
}
