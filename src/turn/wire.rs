//! Bytes on the wire: telling STUN from ChannelData, framing them on streams,
//! and the hot-path encodings (ChannelData, Data indication) written in place
//! into caller-owned buffers without allocating.
//!
//! Control messages are parsed and built with the `stun` crate; this module
//! only adds what it lacks: several XOR-PEER-ADDRESS attributes per request,
//! and allocation-free data framing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use stun::message::{MAGIC_COOKIE, Message, MessageType, Setter};

pub const STUN_HEADER: usize = 20;
pub const CHANNEL_HEADER: usize = 4;
/// The longest frame a stream can announce: a STUN header with the largest length that
/// is a multiple of 4 (ChannelData tops out at 4 + 65536 with padding).
pub const MAX_STREAM_FRAME: usize = STUN_HEADER + 0xFFFC;
/// Room to leave in front of relayed payloads for the largest header we prepend:
/// a Data indication with an IPv6 XOR-PEER-ADDRESS (20 + 24 + 4 bytes).
pub const HEADROOM: usize = 48;

/// What a packet from a client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stun,
    ChannelData { number: u16, len: usize },
    Other,
}

/// Classifies a datagram (or a complete stream frame) by its first bytes (RFC 7983).
pub fn classify(b: &[u8]) -> Kind {
    if b.len() >= STUN_HEADER && b[0] & 0xC0 == 0 && b[4..8] == MAGIC_COOKIE.to_be_bytes() {
        return Kind::Stun;
    }
    if b.len() >= CHANNEL_HEADER && b[0] & 0xC0 == 0x40 {
        let number = u16::from_be_bytes([b[0], b[1]]);
        let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
        if CHANNEL_HEADER + len <= b.len() {
            return Kind::ChannelData { number, len };
        }
    }
    Kind::Other
}

/// On a stream, the length of the frame that starts with these 4 bytes, or `None`
/// when they start neither STUN nor ChannelData (the stream is then unusable).
pub fn stream_frame_len(head: [u8; 4]) -> Option<usize> {
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    match head[0] & 0xC0 {
        0x00 if len.is_multiple_of(4) => Some(STUN_HEADER + len),
        0x40 => Some(CHANNEL_HEADER + len.div_ceil(4) * 4),
        _ => None,
    }
}

/// Writes a ChannelData header into `buf[start - 4..start]` for the `len` bytes at
/// `buf[start..]`, zero-pads to 4 bytes when `pad`, and returns the frame's range.
pub fn channel_data_in_place(
    buf: &mut [u8],
    start: usize,
    len: usize,
    number: u16,
    pad: bool,
) -> std::ops::Range<usize> {
    let head = start - CHANNEL_HEADER;
    buf[head..head + 2].copy_from_slice(&number.to_be_bytes());
    buf[head + 2..start].copy_from_slice(&(len as u16).to_be_bytes());
    let mut end = start + len;
    if pad {
        while !(end - head).is_multiple_of(4) {
            buf[end] = 0;
            end += 1;
        }
    }
    head..end
}

/// Writes a Data indication (XOR-PEER-ADDRESS, DATA) in front of the `len` bytes at
/// `buf[start..]`, which must have `HEADROOM` bytes before it and 3 spare after it;
/// returns the message's range, or `None` when the payload is too large for a STUN
/// message's 16-bit length (more than 65,516 bytes from an IPv4 peer, 65,504 from IPv6):
/// such a payload cannot be framed, and a wrapped length would let a stream client read
/// the payload's bytes as further frames.
pub fn data_indication_in_place(
    buf: &mut [u8],
    start: usize,
    len: usize,
    peer: SocketAddr,
    tid: [u8; 12],
) -> Option<std::ops::Range<usize>> {
    let addr_len = if peer.is_ipv4() { 8 } else { 20 };
    let head = start - 4 - (4 + addr_len) - STUN_HEADER;
    let padded = len.div_ceil(4) * 4;
    let body = (4 + addr_len) + 4 + padded;
    if body > usize::from(u16::MAX) {
        return None;
    }
    let mut at = head;
    let mut put = |bytes: &[u8], at: &mut usize| {
        buf[*at..*at + bytes.len()].copy_from_slice(bytes);
        *at += bytes.len();
    };
    // Data indication: method 0x007, class indication -> 0x0017.
    put(&0x0017u16.to_be_bytes(), &mut at);
    put(&(body as u16).to_be_bytes(), &mut at);
    put(&MAGIC_COOKIE.to_be_bytes(), &mut at);
    put(&tid, &mut at);
    put(&0x0012u16.to_be_bytes(), &mut at);
    put(&(addr_len as u16).to_be_bytes(), &mut at);
    let mut value = [0u8; 20];
    encode_xor_addr(peer, &tid, &mut value);
    put(&value[..addr_len], &mut at);
    put(&0x0013u16.to_be_bytes(), &mut at);
    put(&(len as u16).to_be_bytes(), &mut at);
    debug_assert_eq!(at, start);
    let end = start + padded;
    buf[start + len..end].fill(0);
    Some(head..end)
}

/// Encodes an XOR address value (family, port, address) into `out`; returns its length.
pub fn encode_xor_addr(addr: SocketAddr, tid: &[u8; 12], out: &mut [u8; 20]) -> usize {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    out[0] = 0;
    out[2..4].copy_from_slice(&(addr.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[1] = 0x01;
            for (i, b) in ip.octets().iter().enumerate() {
                out[4 + i] = b ^ cookie[i];
            }
            8
        }
        IpAddr::V6(ip) => {
            out[1] = 0x02;
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&cookie);
            mask[4..].copy_from_slice(tid);
            for (i, b) in ip.octets().iter().enumerate() {
                out[4 + i] = b ^ mask[i];
            }
            20
        }
    }
}

/// Decodes an XOR address attribute value; `None` when malformed.
pub fn decode_xor_addr(v: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match (v[1], v.len()) {
        (0x01, 8) => {
            let mut o = [0u8; 4];
            for i in 0..4 {
                o[i] = v[4 + i] ^ cookie[i];
            }
            IpAddr::V4(Ipv4Addr::from(o))
        }
        (0x02, 20) => {
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&cookie);
            mask[4..].copy_from_slice(tid);
            let mut o = [0u8; 16];
            for i in 0..16 {
                o[i] = v[4 + i] ^ mask[i];
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Every XOR-PEER-ADDRESS in a message, in order, with IPv4 addresses in IPv6
/// form turned into IPv4; `None` if any is malformed.
pub fn peer_addresses(msg: &Message) -> Option<Vec<SocketAddr>> {
    msg.attributes
        .0
        .iter()
        .filter(|a| a.typ == stun::attributes::ATTR_XOR_PEER_ADDRESS)
        .map(|a| {
            decode_xor_addr(&a.value, &msg.transaction_id.0)
                .map(|p| SocketAddr::new(super::policy::normalize(p.ip()), p.port()))
        })
        .collect()
}

/// Cuts `msg` after its first MESSAGE-INTEGRITY (or MESSAGE-INTEGRITY-SHA256): its attribute
/// list, raw bytes and header length then end where the HMAC ends. RFC 8489 section 14.5:
/// attributes after it, FINGERPRINT and MESSAGE-INTEGRITY-SHA256 aside, must be ignored, as
/// anyone on the path can append them. Check FINGERPRINT first; MESSAGE-INTEGRITY still
/// verifies on the cut message. Returns whether anything else than those two was cut.
pub fn cut_after_integrity(msg: &mut Message) -> bool {
    use stun::attributes::{
        ATTR_FINGERPRINT, ATTR_MESSAGE_INTEGRITY, ATTR_MESSAGE_INTEGRITY_SHA256,
    };
    let Some(at) =
        msg.attributes.0.iter().position(|a| {
            a.typ == ATTR_MESSAGE_INTEGRITY || a.typ == ATTR_MESSAGE_INTEGRITY_SHA256
        })
    else {
        return false;
    };
    let cut = msg.attributes.0.split_off(at + 1);
    if cut.is_empty() {
        return false;
    }
    let bytes: usize = cut
        .iter()
        .map(|a| 4 + usize::from(a.length).div_ceil(4) * 4)
        .sum();
    msg.length -= bytes as u32;
    msg.raw.truncate(STUN_HEADER + msg.length as usize);
    msg.write_length();
    cut.iter()
        .any(|a| a.typ != ATTR_FINGERPRINT && a.typ != ATTR_MESSAGE_INTEGRITY_SHA256)
}

/// The comprehension-required attributes (types below 0x8000) this server understands: those
/// of STUN (RFC 8489) and TURN (RFC 8656), and ICE's PRIORITY and USE-CANDIDATE (RFC 8445),
/// which a Binding request may carry. Left out on purpose, so that a request carrying them gets
/// 420: RFC 5780's CHANGE-REQUEST, RESPONSE-PORT and PADDING (the 420 tells a NAT-behaviour
/// client this server does not do them), RFC 6062's CONNECTION-ID (no TCP relays), and the
/// RFC 3489 attributes. DONT-FRAGMENT is honoured (`RelayBinder::dont_fragment`).
const UNDERSTOOD: &[u16] = &[
    0x0001, // MAPPED-ADDRESS
    0x0006, // USERNAME
    0x0008, // MESSAGE-INTEGRITY
    0x0009, // ERROR-CODE
    0x000A, // UNKNOWN-ATTRIBUTES
    0x000C, // CHANNEL-NUMBER
    0x000D, // LIFETIME
    0x0012, // XOR-PEER-ADDRESS
    0x0013, // DATA
    0x0014, // REALM
    0x0015, // NONCE
    0x0016, // XOR-RELAYED-ADDRESS
    0x0017, // REQUESTED-ADDRESS-FAMILY
    0x0018, // EVEN-PORT
    0x0019, // REQUESTED-TRANSPORT
    0x001A, // DONT-FRAGMENT
    0x001C, // MESSAGE-INTEGRITY-SHA256
    0x001D, // PASSWORD-ALGORITHM
    0x001E, // USERHASH
    0x0020, // XOR-MAPPED-ADDRESS
    0x0022, // RESERVATION-TOKEN
    0x0024, // PRIORITY
    0x0025, // USE-CANDIDATE
];

/// The most attributes a STUN message may carry here: the largest request a client needs
/// is a CreatePermission with its 16 peer addresses and the credential's five attributes.
pub const MAX_ATTRIBUTES: usize = 48;
/// The most unknown attributes a 420 lists (RFC 8489 leaves the number to the server).
const MAX_UNKNOWN_LISTED: usize = 16;

/// How many attributes the STUN message `b` carries, by walking their headers without
/// decoding them; `None` when they do not fit the message.
pub fn attribute_count(b: &[u8]) -> Option<usize> {
    let len = usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?]));
    let body = b.get(STUN_HEADER..STUN_HEADER + len)?;
    let (mut at, mut count) = (0, 0);
    while at < body.len() {
        let value = usize::from(u16::from_be_bytes([*body.get(at + 2)?, *body.get(at + 3)?]));
        at += 4 + value.div_ceil(4) * 4;
        count += 1;
    }
    (at == body.len()).then_some(count)
}

/// The comprehension-required attributes of `msg` that this server does not understand,
/// each once, in order, at most `MAX_UNKNOWN_LISTED` (RFC 8489 section 6.3.1: a request
/// carrying any gets 420 listing them).
pub fn unknown_required(msg: &Message) -> Vec<stun::attributes::AttrType> {
    let mut unknown: Vec<stun::attributes::AttrType> = Vec::new();
    for a in &msg.attributes.0 {
        let t = a.typ;
        if t.required() && !UNDERSTOOD.contains(&t.value()) && !unknown.contains(&t) {
            unknown.push(t);
            if unknown.len() == MAX_UNKNOWN_LISTED {
                break;
            }
        }
    }
    unknown
}

/// Builds a response to `req` of `class` with `attrs`, then MESSAGE-INTEGRITY
/// (when `key` is given) and FINGERPRINT.
pub fn response(
    req: &Message,
    class: stun::message::MessageClass,
    attrs: Vec<Box<dyn Setter>>,
    key: Option<&[u8]>,
) -> Vec<u8> {
    let mut setters: Vec<Box<dyn Setter>> = Vec::with_capacity(attrs.len() + 4);
    setters.push(Box::new(req.transaction_id));
    setters.push(Box::new(MessageType::new(req.typ.method, class)));
    setters.extend(attrs);
    if let Some(key) = key {
        setters.push(Box::new(stun::integrity::MessageIntegrity(key.to_vec())));
    }
    setters.push(Box::new(stun::fingerprint::FINGERPRINT));
    let mut m = Message::new();
    m.build(&setters)
        .expect("response attributes always encode");
    m.raw
}

/// An ERROR-CODE attribute with the standard reason phrase.
pub fn error_code(code: u16) -> Box<dyn Setter> {
    Box::new(stun::error_code::ErrorCodeAttribute {
        code: stun::error_code::ErrorCode(code),
        reason: reason(code).to_vec(),
    })
}

/// An ADDRESS-ERROR-CODE attribute (RFC 8656 section 18.13): why the relay of one address
/// `family` (0x01 IPv4, 0x02 IPv6) of an Allocate was not made, with the standard reason phrase.
pub fn address_error_code(family: u8, code: u16) -> Box<dyn Setter> {
    struct AddressErrorCode(Vec<u8>);
    impl Setter for AddressErrorCode {
        fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
            m.add(stun::attributes::AttrType(0x8001), &self.0);
            Ok(())
        }
    }
    // Family, 13 reserved bits, the class in 3 bits, the number, then the reason.
    let mut value = vec![family, 0, (code / 100) as u8, (code % 100) as u8];
    value.extend_from_slice(reason(code));
    Box::new(AddressErrorCode(value))
}

/// The standard reason phrase of an error code.
fn reason(code: u16) -> &'static [u8] {
    match code {
        400 => b"Bad Request",
        401 => b"Unauthorized",
        403 => b"Forbidden",
        420 => b"Unknown Attribute",
        437 => b"Allocation Mismatch",
        438 => b"Stale Nonce",
        440 => b"Address Family not Supported",
        441 => b"Wrong Credentials",
        442 => b"Unsupported Transport Protocol",
        443 => b"Peer Address Family Mismatch",
        486 => b"Allocation Quota Reached",
        508 => b"Insufficient Capacity",
        _ => b"Server Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_stun_channel_data_and_junk() {
        let mut m = Message::new();
        m.build(&[
            Box::new(stun::message::BINDING_REQUEST),
            Box::new(stun::agent::TransactionId::new()),
        ])
        .unwrap();
        assert_eq!(classify(&m.raw), Kind::Stun);
        assert_eq!(
            classify(&[0x40, 0x00, 0x00, 0x02, 1, 2]),
            Kind::ChannelData {
                number: 0x4000,
                len: 2
            }
        );
        // Truncated ChannelData, junk and empty input are not mistaken for anything.
        assert_eq!(classify(&[0x40, 0x00, 0x00, 0x08, 1, 2]), Kind::Other);
        assert_eq!(classify(&[0x80, 1, 2, 3]), Kind::Other);
        assert_eq!(classify(&[]), Kind::Other);
        assert_eq!(classify(&m.raw[..19]), Kind::Other);
    }

    #[test]
    fn no_announced_frame_exceeds_the_maximum() {
        let longest = (0..=u16::MAX)
            .flat_map(|len| {
                let [a, b] = len.to_be_bytes();
                [[0x00, 0x01, a, b], [0x40, 0x00, a, b]]
            })
            .filter_map(stream_frame_len)
            .max();
        assert_eq!(longest, Some(MAX_STREAM_FRAME));
    }

    #[test]
    fn stream_frames_pad_channel_data() {
        assert_eq!(stream_frame_len([0x00, 0x01, 0x00, 0x08]), Some(28));
        assert_eq!(stream_frame_len([0x00, 0x01, 0x00, 0x07]), None);
        assert_eq!(stream_frame_len([0x40, 0x00, 0x00, 0x05]), Some(12));
        assert_eq!(stream_frame_len([0x40, 0x00, 0x00, 0x08]), Some(12));
        assert_eq!(stream_frame_len([0xC0, 0, 0, 0]), None);
    }

    #[test]
    fn xor_addresses_round_trip() {
        let tid = [7u8; 12];
        for a in ["1.2.3.4:5678", "[2001:db8::1]:443"] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut out = [0u8; 20];
            let n = encode_xor_addr(addr, &tid, &mut out);
            assert_eq!(decode_xor_addr(&out[..n], &tid), Some(addr));
        }
        assert_eq!(decode_xor_addr(&[0, 1, 0], &tid), None);
        assert_eq!(decode_xor_addr(&[0, 3, 0, 0, 1, 2, 3, 4], &tid), None);
    }

    #[test]
    fn data_indication_decodes_with_the_stun_crate() {
        let peer: SocketAddr = "[2001:db8::9]:3000".parse().unwrap();
        let mut buf = vec![0u8; HEADROOM + 8];
        buf[HEADROOM..HEADROOM + 5].copy_from_slice(b"hello");
        let range = data_indication_in_place(&mut buf, HEADROOM, 5, peer, [3; 12]).unwrap();
        let mut m = Message::new();
        m.raw = buf[range].to_vec();
        m.decode().unwrap();
        assert_eq!(
            m.typ,
            MessageType::new(stun::message::METHOD_DATA, stun::message::CLASS_INDICATION)
        );
        assert_eq!(peer_addresses(&m), Some(vec![peer]));
        assert_eq!(m.get(stun::attributes::ATTR_DATA).unwrap(), b"hello");
    }

    #[test]
    fn attributes_are_counted_without_decoding_and_a_bad_walk_is_none() {
        let mut m = Message::new();
        m.build(&[
            Box::new(stun::message::BINDING_REQUEST),
            Box::new(stun::agent::TransactionId::new()),
            Box::new(stun::textattrs::TextAttribute::new(
                stun::attributes::ATTR_SOFTWARE,
                "abcde".into(),
            )),
            Box::new(stun::fingerprint::FINGERPRINT),
        ])
        .unwrap();
        assert_eq!(attribute_count(&m.raw), Some(2));
        assert_eq!(
            attribute_count(&m.raw[..20]),
            None,
            "length beyond the bytes"
        );
        let mut bad = m.raw.clone();
        bad[22..24].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(attribute_count(&bad), None, "an attribute past the end");
        // 16,000 empty attributes: counted, cheaply.
        let mut many = vec![0u8; 20 + 4 * 16_000];
        many[2..4].copy_from_slice(&((4 * 16_000) as u16).to_be_bytes());
        assert_eq!(attribute_count(&many), Some(16_000));
    }

    #[test]
    fn payloads_too_large_for_a_data_indication_are_refused_not_wrapped() {
        for (peer, largest) in [("1.2.3.4:5", 65_516), ("[2001:db8::1]:5", 65_504)] {
            let peer: SocketAddr = peer.parse().unwrap();
            let mut buf = vec![0u8; HEADROOM + 65_540];
            let range = data_indication_in_place(&mut buf, HEADROOM, largest, peer, [1; 12])
                .expect("the largest payload that fits");
            let mut m = Message::new();
            m.raw = buf[range].to_vec();
            m.decode().expect("a whole message");
            assert_eq!(m.get(stun::attributes::ATTR_DATA).unwrap().len(), largest);
            for len in [largest + 1, 65_535] {
                assert_eq!(
                    data_indication_in_place(&mut buf, HEADROOM, len, peer, [1; 12]),
                    None,
                    "{len} bytes from {peer}"
                );
            }
        }
    }

    #[test]
    fn channel_data_in_place_pads_for_streams() {
        let mut buf = vec![0xAAu8; 16];
        buf[4..9].copy_from_slice(b"abcde");
        let r = channel_data_in_place(&mut buf, 4, 5, 0x4001, true);
        assert_eq!(
            &buf[r],
            &[
                0x40, 0x01, 0x00, 0x05, b'a', b'b', b'c', b'd', b'e', 0, 0, 0
            ]
        );
        let r = channel_data_in_place(&mut buf, 4, 5, 0x4001, false);
        assert_eq!(r, 0..9);
    }

    #[test]
    fn cutting_after_integrity_keeps_it_verifiable() {
        let key = stun::integrity::MessageIntegrity::new_short_term_integrity("pw".into());
        let lifetime = |s| {
            Box::new(turn::proto::lifetime::Lifetime(
                std::time::Duration::from_secs(s),
            ))
        };
        let mut m = Message::new();
        m.build(&[
            Box::new(stun::agent::TransactionId::new()),
            Box::new(stun::message::BINDING_REQUEST),
            lifetime(1),
            Box::new(key.clone()),
            lifetime(2),
            Box::new(stun::fingerprint::FINGERPRINT),
        ])
        .unwrap();
        let mut cut = Message::new();
        // Bytes after the message (a padded datagram) go too.
        cut.raw = [&m.raw[..], &[0u8; 4]].concat();
        cut.decode().unwrap();
        assert!(cut_after_integrity(&mut cut));
        let types: Vec<_> = cut.attributes.0.iter().map(|a| a.typ).collect();
        assert_eq!(
            types,
            [
                stun::attributes::ATTR_LIFETIME,
                stun::attributes::ATTR_MESSAGE_INTEGRITY
            ]
        );
        assert_eq!(cut.raw.len(), STUN_HEADER + 8 + 24);
        key.check(&mut cut)
            .expect("MESSAGE-INTEGRITY of the cut message");
        let mut again = Message::new();
        again.raw = cut.raw.clone();
        again.decode().expect("the cut message is well formed");
        // MESSAGE-INTEGRITY then FINGERPRINT is the normal case: cut, not reported.
        let mut m = Message::new();
        m.build(&[
            Box::new(stun::agent::TransactionId::new()),
            Box::new(stun::message::BINDING_REQUEST),
            Box::new(key.clone()),
            Box::new(stun::fingerprint::FINGERPRINT),
        ])
        .unwrap();
        assert!(!cut_after_integrity(&mut m));
        key.check(&mut m).unwrap();
    }

    /// RFC 5769 sections 2.2 and 2.3: responses with XOR-MAPPED-ADDRESS (IPv4, IPv6).
    const RFC5769_V4: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
        0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
        0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];
    const RFC5769_V6: [u8; 92] = [
        0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01,
        0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9,
        0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb,
        0x0b, 0x4c,
    ];

    #[test]
    fn rfc_5769_responses_decode_to_their_mapped_addresses() {
        for (bytes, expected) in [
            (&RFC5769_V4[..], "192.0.2.1:32853"),
            (
                &RFC5769_V6[..],
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
            ),
        ] {
            assert_eq!(classify(bytes), Kind::Stun);
            let mut m = Message::new();
            m.raw = bytes.to_vec();
            m.decode().unwrap();
            stun::fingerprint::FINGERPRINT
                .check(&m)
                .expect("FINGERPRINT of the sample");
            let key = stun::integrity::MessageIntegrity::new_short_term_integrity(
                "VOkJxbRl1RmTxUk/WvJxBt".into(),
            );
            key.check(&mut m).expect("MESSAGE-INTEGRITY of the sample");
            let value = m.get(stun::attributes::ATTR_XORMAPPED_ADDRESS).unwrap();
            let addr = decode_xor_addr(&value, &m.transaction_id.0).unwrap();
            assert_eq!(addr, expected.parse::<SocketAddr>().unwrap());
            let mut out = [0u8; 20];
            let n = encode_xor_addr(addr, &m.transaction_id.0, &mut out);
            assert_eq!(&out[..n], &value[..], "encoding reproduces the sample");
        }
    }
}
