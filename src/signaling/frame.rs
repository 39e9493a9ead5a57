//! WebSocket framing (RFC 6455 section 5) for the server side, as plain data in, data out.
//!
//! The decoder takes the bytes read from a client so far and hands out whole messages:
//! it unmasks, joins fragments, answers nothing itself, and turns every violation into
//! the close code the RFC asks for. The encoder writes the header of an unmasked frame;
//! the payload is written after it as is, so a relayed message is never copied into a
//! frame buffer. No I/O here: `socket` does the reading and writing.
//!
//! Why not tungstenite on the server: its read and write buffers grow to the largest
//! frame a socket ever carried and keep that size while the socket idles, which is
//! 7 KiB per connection after a 3 KB offer and answer. Here the buffers shrink back once
//! a large message is through (see `socket`).

use axum::extract::ws::Utf8Bytes;
use bytes::{Buf, Bytes, BytesMut};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Close codes the server sends (RFC 6455 section 7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// A data type the endpoint does not accept (binary frames here).
pub const CLOSE_UNSUPPORTED: u16 = 1003;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// The longest frame header: 2 bytes, an 8-byte length and a 4-byte mask.
pub const MAX_HEADER: usize = 14;

/// One complete message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(Utf8Bytes),
    /// A binary message, of this many bytes; no dialect here uses them.
    Binary(usize),
    /// A ping to answer with a pong carrying the same bytes.
    Ping(Bytes),
    Pong,
    /// The client closes, with its status code if it sent one.
    Close(Option<u16>),
}

/// A client that broke the protocol: the socket is closed with `close_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    Protocol(&'static str),
    /// A text message (or a close reason) that is not UTF-8.
    NotUtf8,
    /// A message larger than the transport limit.
    TooBig,
}

impl Violation {
    /// The close code (RFC 6455 section 7.4.1).
    pub fn close_code(self) -> u16 {
        match self {
            Violation::Protocol(_) => 1002,
            Violation::NotUtf8 => 1007,
            Violation::TooBig => 1009,
        }
    }

    /// The close reason: short, as it must fit a control frame.
    pub fn reason(self) -> &'static str {
        match self {
            Violation::Protocol(why) => why,
            Violation::NotUtf8 => "text is not valid UTF-8",
            Violation::TooBig => "message too large",
        }
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Header bytes, then payload bytes.
    header_len: usize,
    payload_len: usize,
}

/// Parses the header at the start of `buf`; `None` until all of it has arrived.
fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, Violation> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(Violation::Protocol(
            "reserved bits set without an extension",
        ));
    }
    if b1 & 0x80 == 0 {
        return Err(Violation::Protocol("client frames must be masked"));
    }
    let (len, ext) = match b1 & 0x7F {
        126 => (None, 2),
        127 => (None, 8),
        n => (Some(u64::from(n)), 0),
    };
    let header_len = 2 + ext + 4;
    if buf.len() < header_len {
        return Ok(None);
    }
    let len = len.unwrap_or_else(|| {
        let mut n = [0u8; 8];
        n[8 - ext..].copy_from_slice(&buf[2..2 + ext]);
        u64::from_be_bytes(n)
    });
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    if opcode & 0x08 != 0 && (!fin || len > 125) {
        return Err(Violation::Protocol(
            "control frames must be whole and short",
        ));
    }
    // A control frame between fragments does not count against the message's size.
    let payload_len = usize::try_from(len)
        .ok()
        .filter(|&n| opcode & 0x08 != 0 || n <= max_payload)
        .ok_or(Violation::TooBig)?;
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[2 + ext..header_len]);
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        header_len,
        payload_len,
    }))
}

/// XORs `data` with the client's mask (RFC 6455 section 5.3).
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// Joins frames into messages; holds only a fragmented message in progress.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// A fragmented message so far: whether it is text, and its bytes.
    partial: Option<(bool, Vec<u8>)>,
}

impl Decoder {
    /// A decoder that refuses messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            partial: None,
        }
    }

    /// Whether a fragmented message has begun and not ended.
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    /// How many bytes `buf` must hold for its first frame to be complete, once its
    /// header has arrived: the reader reserves that much, so a large frame is read in
    /// one go. `None` while the header is incomplete (or invalid: `decode` says so).
    pub fn frame_len(&self, buf: &[u8]) -> Option<usize> {
        parse_header(buf, usize::MAX)
            .ok()
            .flatten()
            .map(|h| h.header_len.saturating_add(h.payload_len))
    }

    /// Takes frames from the front of `buf` until one completes a message; `None` when
    /// more bytes are needed. Control frames may arrive between a message's fragments.
    ///
    /// # Errors
    /// The violation to close the socket with; the buffer's state is then undefined.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, Violation> {
        loop {
            let so_far = self.partial.as_ref().map_or(0, |(_, b)| b.len());
            let Some(h) = parse_header(buf, self.max_message - so_far.min(self.max_message))?
            else {
                return Ok(None);
            };
            if buf.len() < h.header_len + h.payload_len {
                return Ok(None);
            }
            buf.advance(h.header_len);
            let mut payload = buf.split_to(h.payload_len);
            unmask(&mut payload, h.mask);
            if let Some(msg) = self.frame(h, payload)? {
                return Ok(Some(msg));
            }
        }
    }

    fn frame(&mut self, h: Header, payload: BytesMut) -> Result<Option<Incoming>, Violation> {
        match h.opcode {
            OP_TEXT | OP_BINARY => {
                if self.partial.is_some() {
                    return Err(Violation::Protocol("new message inside a fragmented one"));
                }
                let text = h.opcode == OP_TEXT;
                if h.fin {
                    return complete(text, payload.freeze()).map(Some);
                }
                self.partial = Some((text, payload.to_vec()));
                Ok(None)
            }
            OP_CONTINUATION => {
                let Some((text, mut so_far)) = self.partial.take() else {
                    return Err(Violation::Protocol("continuation frame without a message"));
                };
                so_far.extend_from_slice(&payload);
                if h.fin {
                    return complete(text, Bytes::from(so_far)).map(Some);
                }
                self.partial = Some((text, so_far));
                Ok(None)
            }
            // Whole and short: `parse_header` checked.
            OP_PING => Ok(Some(Incoming::Ping(payload.freeze()))),
            OP_PONG => Ok(Some(Incoming::Pong)),
            OP_CLOSE => close_status(&payload).map(|code| Some(Incoming::Close(code))),
            _ => Err(Violation::Protocol("unknown opcode")),
        }
    }
}

fn complete(text: bool, payload: Bytes) -> Result<Incoming, Violation> {
    if text {
        Utf8Bytes::try_from(payload)
            .map(Incoming::Text)
            .map_err(|_| Violation::NotUtf8)
    } else {
        Ok(Incoming::Binary(payload.len()))
    }
}

/// The status code of a close frame (section 5.5.1), checked against section 7.4.
fn close_status(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::Protocol("close frame with a one-byte body")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(Violation::Protocol("invalid close code"));
            }
            std::str::from_utf8(reason).map_err(|_| Violation::NotUtf8)?;
            Ok(Some(code))
        }
    }
}

/// The header of an unmasked, final server frame carrying `len` payload bytes.
pub fn header(opcode: u8, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode;
    let n = match len {
        0..=125 => {
            h[1] = len as u8;
            2
        }
        126..=0xFFFF => {
            h[1] = 126;
            h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            h[1] = 127;
            h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    (h, n)
}

/// The body of a close frame: the code, then a reason of at most 123 bytes.
pub fn close_body(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(&reason.as_bytes()[..end]);
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with `mask`, FIN as given.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    fn text(s: &str) -> Vec<u8> {
        client_frame(true, OP_TEXT, s.as_bytes(), [1, 2, 3, 4])
    }

    fn decode_all(d: &mut Decoder, bytes: &[u8]) -> Result<Vec<Incoming>, Violation> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = d.decode(&mut buf)? {
            out.push(m);
        }
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
        Ok(out)
    }

    #[test]
    fn text_messages_of_each_length_encoding() {
        for len in [0, 1, 125, 126, 4000, 65_535, 65_536, 70_000] {
            let s = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let mut d = Decoder::new(100_000);
            let got = decode_all(&mut d, &text(&s)).unwrap();
            assert_eq!(got, vec![Incoming::Text(s.as_str().into())], "length {len}");
        }
    }

    #[test]
    fn arrives_byte_by_byte() {
        let mut bytes = text(&"a".repeat(300));
        bytes.extend(text("second"));
        let mut d = Decoder::new(1000);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            if let Some(want) = d.frame_len(&buf) {
                assert!(want <= bytes.len(), "at byte {i}");
            }
            while let Some(m) = d.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(
            got,
            vec![
                Incoming::Text("a".repeat(300).into()),
                Incoming::Text("second".into())
            ]
        );
    }

    #[test]
    fn frame_len_is_known_once_the_header_is() {
        let f = text(&"z".repeat(3000));
        let d = Decoder::new(10_000);
        assert_eq!(d.frame_len(&f[..3]), None);
        assert_eq!(d.frame_len(&f[..8]), Some(f.len()));
        assert_eq!(d.frame_len(&f), Some(f.len()));
    }

    #[test]
    fn fragments_join_with_control_frames_between() {
        let mut bytes = client_frame(false, OP_TEXT, b"hel", [9, 8, 7, 6]);
        bytes.extend(client_frame(true, OP_PING, b"p", [1, 1, 1, 1]));
        bytes.extend(client_frame(false, OP_CONTINUATION, b"lo ", [5, 5, 5, 5]));
        bytes.extend(client_frame(true, OP_CONTINUATION, b"world", [0, 0, 0, 0]));
        let got = decode_all(&mut Decoder::new(100), &bytes).unwrap();
        assert_eq!(
            got,
            vec![
                Incoming::Ping(Bytes::from_static(b"p")),
                Incoming::Text("hello world".into())
            ]
        );
    }

    /// A ping longer than what is left of a nearly full fragmented message is still a
    /// ping: control frames are not part of the message they interrupt.
    #[test]
    fn a_control_frame_does_not_count_against_the_message_it_interrupts() {
        let mut d = Decoder::new(100);
        let mut bytes = client_frame(false, OP_TEXT, &[b'a'; 95], [1, 2, 3, 4]);
        bytes.extend(client_frame(true, OP_PING, &[b'p'; 20], [4, 3, 2, 1]));
        bytes.extend(client_frame(true, OP_CONTINUATION, b"bcde", [0, 0, 0, 0]));
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Incoming::Ping(Bytes::from(vec![b'p'; 20])))
        );
        assert!(d.in_message());
        let text = "a".repeat(95) + "bcde";
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Some(Incoming::Text(text.into()))
        );
        assert!(!d.in_message());
    }

    #[test]
    fn binary_pong_and_close() {
        let mut bytes = client_frame(true, OP_BINARY, &[0, 159, 146, 150], [3, 3, 3, 3]);
        bytes.extend(client_frame(true, OP_PONG, b"", [0, 0, 0, 0]));
        bytes.extend(client_frame(
            true,
            OP_CLOSE,
            &close_body(1000, "bye"),
            [7; 4],
        ));
        bytes.extend(client_frame(true, OP_CLOSE, b"", [7; 4]));
        let got = decode_all(&mut Decoder::new(100), &bytes).unwrap();
        assert_eq!(
            got,
            vec![
                Incoming::Binary(4),
                Incoming::Pong,
                Incoming::Close(Some(1000)),
                Incoming::Close(None)
            ]
        );
    }

    #[test]
    fn violations_get_their_close_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            // Unmasked.
            (vec![0x81, 0x02, b'h', b'i'], 1002),
            // RSV1 without a negotiated extension.
            (client_frame(true, OP_TEXT | 0x40, b"hi", [1; 4]), 1002),
            (client_frame(true, 0x3, b"hi", [1; 4]), 1002),
            (client_frame(true, OP_CONTINUATION, b"hi", [1; 4]), 1002),
            (client_frame(false, OP_PING, b"hi", [1; 4]), 1002),
            (client_frame(true, OP_PING, &[0; 126], [1; 4]), 1002),
            (client_frame(true, OP_CLOSE, &[3], [1; 4]), 1002),
            (
                client_frame(true, OP_CLOSE, &close_body(1005, ""), [1; 4]),
                1002,
            ),
            (
                client_frame(true, OP_CLOSE, &[0x03, 0xE8, 0xFF], [1; 4]),
                1007,
            ),
            (client_frame(true, OP_TEXT, &[0xC3, 0x28], [1; 4]), 1007),
            (client_frame(true, OP_TEXT, &[b'a'; 101], [1; 4]), 1009),
            // An 8-byte length beyond any limit, refused before its payload arrives.
            (
                vec![0x81, 0xFF, 0x7F, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
                1009,
            ),
        ];
        for (bytes, code) in cases {
            let err = decode_all(&mut Decoder::new(100), &bytes).unwrap_err();
            assert_eq!(err.close_code(), code, "{bytes:x?}: {err:?}");
        }
        // New message while a fragmented one is open.
        let mut bytes = client_frame(false, OP_TEXT, b"a", [1; 4]);
        bytes.extend(client_frame(true, OP_TEXT, b"b", [1; 4]));
        assert_eq!(
            decode_all(&mut Decoder::new(100), &bytes).unwrap_err(),
            Violation::Protocol("new message inside a fragmented one")
        );
        // Fragments whose sum exceeds the limit.
        let mut bytes = client_frame(false, OP_TEXT, &[b'a'; 60], [1; 4]);
        bytes.extend(client_frame(true, OP_CONTINUATION, &[b'a'; 60], [1; 4]));
        assert_eq!(
            decode_all(&mut Decoder::new(100), &bytes).unwrap_err(),
            Violation::TooBig
        );
    }

    #[test]
    fn server_headers() {
        assert_eq!(header(OP_TEXT, 5), ([0x81, 5, 0, 0, 0, 0, 0, 0, 0, 0], 2));
        let (h, n) = header(OP_TEXT, 300);
        assert_eq!(&h[..n], &[0x81, 126, 0x01, 0x2C]);
        let (h, n) = header(OP_BINARY, 70_000);
        assert_eq!(&h[..n], &[0x82, 127, 0, 0, 0, 0, 0, 0x01, 0x11, 0x70]);
        assert_eq!(close_body(1008, "x"), vec![0x03, 0xF0, b'x']);
        let long = "é".repeat(100);
        let body = close_body(1000, &long);
        assert!(body.len() <= 125 && std::str::from_utf8(&body[2..]).is_ok());
    }
}
