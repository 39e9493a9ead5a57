//! What the server reads of the session descriptions peers exchange, as plain data: whether
//! one offers to send media (a join token without the `publish` role may not).
//!
//! The payloads are the clients' own JSON; the server never rewrites them.

use serde_json::Value;

/// Whether any string in `payload` (a signal's JSON, however the client nests its session
/// description) is an SDP with an audio or video section that sends: `a=sendrecv` or
/// `a=sendonly`, or no direction at all (RFC 8866: sendrecv), in a section not rejected
/// (port 0).
pub fn payload_sends_media(payload: &Value) -> bool {
    match payload {
        Value::String(s) => sdp_sends_media(s),
        Value::Array(items) => items.iter().any(payload_sends_media),
        Value::Object(fields) => fields.values().any(payload_sends_media),
        _ => false,
    }
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

/// Whether the SDP `text` has an audio or video section that sends (see `payload_sends_media`).
pub fn sdp_sends_media(text: &str) -> bool {
    // Any text with media sections counts, whatever precedes them: a browser that parses it
    // is the judge, not its first line.
    let mut session = None;
    // The current media section: whether it carries media that may be sent, and its direction.
    let mut section: Option<(bool, Option<Direction>)> = None;
    let sends = |media: bool, dir: Option<Direction>, session: Option<Direction>| {
        media && dir.or(session).unwrap_or(Direction::Sends) == Direction::Sends
    };
    for line in text.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            if let Some((media, dir)) = section.take()
                && sends(media, dir, session)
            {
                return true;
            }
            let mut fields = m.split(' ');
            let kind = fields.next().unwrap_or("");
            let port = fields.next().unwrap_or("0");
            let media = matches!(kind, "audio" | "video") && port != "0";
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

    #[test]
    fn no_direction_is_sendrecv_and_the_session_level_applies_to_sections_without_one() {
        assert!(sdp_sends_media(&sdp("m=video 9 RTP/AVP 96\r\n")));
        assert!(!sdp_sends_media(&sdp(
            "a=recvonly\r\nm=video 9 RTP/AVP 96\r\n"
        )));
        assert!(sdp_sends_media(&sdp(
            "a=recvonly\r\nm=video 9 RTP/AVP 96\r\na=sendonly\r\n"
        )));
        // Data channels and rejected sections send no media.
        assert!(!sdp_sends_media(&sdp(
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
        )));
        assert!(!sdp_sends_media(&sdp(
            "m=audio 0 RTP/AVP 0\r\na=sendrecv\r\n"
        )));
        // The last section counts too, with \n line ends.
        assert!(sdp_sends_media(
            "v=0\nm=audio 9 RTP/AVP 0\na=recvonly\nm=video 9 RTP/AVP 96\na=sendonly\n"
        ));
        assert!(!sdp_sends_media("not an sdp a=sendrecv"));
    }
}
