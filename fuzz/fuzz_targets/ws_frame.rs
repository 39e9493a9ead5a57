//! The WebSocket frame reader of the signaling endpoints (`signaling::frame::Decoder`),
//! fed as `signaling::socket` feeds it: bytes appended as they are read, then every
//! message that has become whole taken out, until it asks for more or refuses.
//!
//! Input: `[limit][piece][bytes…]`: `limit` picks the message size limit (16, 125, 1024 or
//! 64 KiB), `piece` the size of each read (0: all at once).
//!
//! Checks: messages within the limit, the reader never waits for a frame the limit refuses,
//! close codes and reasons fit a control frame, and the same bytes read in pieces or all at
//! once give the same messages and the same refusal (TCP cuts a stream anywhere).

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard::signaling::frame::{self, Decoder, Incoming, MAX_HEADER, Violation};

fuzz_target!(|data: &[u8]| {
    let [limit, piece, bytes @ ..] = data else {
        return;
    };
    let max = [16, 125, 1024, 64 * 1024][usize::from(limit & 3)];
    let piece = usize::from(*piece);
    let in_pieces = read(bytes, max, piece);
    let at_once = read(bytes, max, 0);
    assert_eq!(
        in_pieces, at_once,
        "reads of {piece} bytes decode otherwise than one read"
    );
});

/// What a reader of `bytes` in reads of `piece` bytes (0: one read) takes out: the messages,
/// then the refusal that ends the socket, if any.
fn read(bytes: &[u8], max: usize, piece: usize) -> (Vec<Incoming>, Option<Violation>) {
    let piece = if piece == 0 {
        bytes.len().max(1)
    } else {
        piece
    };
    let mut decoder = Decoder::new(max);
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    for read in bytes.chunks(piece) {
        buf.extend_from_slice(read);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(message)) => {
                    check(&message, max);
                    messages.push(message);
                }
                Ok(None) => {
                    // The reader reserves what the next frame still needs: never more than a
                    // frame the limit allows (a control frame, up to 125 bytes, whatever it is).
                    if let Some(n) = decoder.frame_len(&buf) {
                        assert!(n > buf.len(), "a whole frame left in the buffer");
                        assert!(
                            n <= max.max(125) + MAX_HEADER,
                            "a frame over the limit is waited for"
                        );
                    }
                    break;
                }
                Err(violation) => {
                    assert!(matches!(violation.close_code(), 1002 | 1007 | 1009));
                    let body = frame::close_body(violation.close_code(), violation.reason());
                    assert!(
                        body.len() <= 125,
                        "a close reason too long for a control frame"
                    );
                    return (messages, Some(violation));
                }
            }
        }
    }
    (messages, None)
}

/// One message as the socket takes it: within the limit, and what the server writes back
/// for it (a pong, a close reason quoting it) is a well-formed frame.
fn check(message: &Incoming, max: usize) {
    match message {
        Incoming::Text(text) => {
            assert!(text.len() <= max, "a message over the limit");
            // A reason made of client text is clipped on a character boundary.
            let body = frame::close_body(1000, text.as_str());
            assert!(body.len() <= 125);
            assert!(std::str::from_utf8(&body[2..]).is_ok());
            check_header(frame::OP_TEXT, text.len());
        }
        Incoming::Binary(n) => assert!(*n <= max, "a message over the limit"),
        Incoming::Ping(payload) => {
            assert!(payload.len() <= 125, "a ping longer than a control frame");
            check_header(frame::OP_PONG, payload.len());
        }
        Incoming::Pong => {}
        Incoming::Close(code) => {
            if let Some(code) = *code {
                assert!(matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999));
            }
        }
    }
}

/// The header of the server's own frame of `len` bytes says `len`.
fn check_header(opcode: u8, len: usize) {
    let (h, n) = frame::header(opcode, len);
    assert_eq!(h[0], 0x80 | opcode);
    let said = match h[1] {
        126 => usize::from(u16::from_be_bytes([h[2], h[3]])),
        127 => usize::try_from(u64::from_be_bytes(h[2..10].try_into().unwrap())).unwrap(),
        short => usize::from(short),
    };
    assert_eq!(said, len);
    assert_eq!(
        n,
        match len {
            0..=125 => 2,
            126..=0xFFFF => 4,
            _ => 10,
        }
    );
}
