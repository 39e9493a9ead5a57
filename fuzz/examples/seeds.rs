//! Writes the seed corpora under `fuzz/corpus/<target>/` (`seed-*` files; run.sh keeps what a
//! run finds elsewhere): `cargo run --example seeds` in `fuzz/`. Deterministic: the same
//! files every time, signed with the fuzz targets' fixed credentials and nonces.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use switchboard_fuzz::{
    self as f, METHOD_ALLOCATE, METHOD_BINDING, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION,
    METHOD_REFRESH, METHOD_SEND, record,
};

/// RFC 5769 section 2: the test vectors, as the RFC prints them in hex.
const RFC5769: [(&str, &str); 4] = [
    (
        "rfc5769-2.1-request",
        "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74\
         002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020000800149aeaa70cbfd8cb56\
         781ef2b5b2d3f249c1b571a280280004e57a3bcf",
    ),
    (
        "rfc5769-2.2-ipv4-response",
        "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000080001a147e112a643\
         000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96",
    ),
    (
        "rfc5769-2.3-ipv6-response",
        "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000140002a1470113a9fa\
         a5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275bfe3ed4180280004c8fb0b4c",
    ),
    (
        "rfc5769-2.4-long-term-request",
        "000100602112a44278ad3433c6ad72c029da412e00060012e3839ee38388e383aae38383e382afe382b90000\
         0015001c662f2f3439396b39353464364f4c33346f4c394653547679363473410014000b6578616d706c652e6f726700\
         00080014f67024656dd64a3e02b8e0712e85c9a28ca89666",
    ),
];

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

struct Out {
    dir: PathBuf,
}

impl Out {
    fn target(&self, name: &str) -> Target {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        // Seeds this program wrote before go; nothing else in the folder is touched.
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
            {
                std::fs::remove_file(path).unwrap();
            }
        }
        Target { dir }
    }
}

struct Target {
    dir: PathBuf,
}

impl Target {
    fn put(&self, name: &str, bytes: impl AsRef<[u8]>) {
        std::fs::write(self.dir.join(format!("seed-{name}")), bytes).unwrap();
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// ChannelData on `number` carrying `payload`, padded to 4 bytes when `pad`.
fn channel_data(number: u16, payload: &[u8], pad: bool) -> Vec<u8> {
    let mut b = number.to_be_bytes().to_vec();
    b.extend((payload.len() as u16).to_be_bytes());
    b.extend(payload);
    while pad && !b.len().is_multiple_of(4) {
        b.push(0);
    }
    b
}

/// A client's WebSocket frame: masked with a fixed key.
fn ws(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut b = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n @ 0..=125 => b.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            b.push(0x80 | 126);
            b.extend((n as u16).to_be_bytes());
        }
        n => {
            b.push(0x80 | 127);
            b.extend((n as u64).to_be_bytes());
        }
    }
    b.extend(mask);
    b.extend(payload.iter().enumerate().map(|(i, x)| x ^ mask[i % 4]));
    b
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Out {
        dir: root.join("corpus"),
    };
    let clients = f::clients();
    let udp = f::udp_transport;
    let peer = addr("203.0.113.5:4000");
    let peer6 = addr("[2001:db8::5]:4000");
    // The relayed addresses of the clients that allocate first in stun_auth (0, then 1) and
    // turn_stream (0, 1, 2): the fake binder hands out 50000, 50002, 50004.
    let relayed = |i: u16| addr(&format!("127.0.0.1:{}", 50000 + 2 * i));
    let lifetime = |s: u32| f::raw_attribute(0x000D, &s.to_be_bytes());

    // Requests of every method the server takes, as clients send them.
    let allocate = f::request(METHOD_ALLOCATE, 1, vec![udp()]);
    let allocate_even = f::request(
        METHOD_ALLOCATE,
        2,
        vec![udp(), f::raw_attribute(0x0018, &[0x80])],
    );
    let allocate_df = f::request(
        METHOD_ALLOCATE,
        3,
        vec![udp(), f::raw_attribute(0x001A, &[])],
    );
    let allocate_v6 = f::request(
        METHOD_ALLOCATE,
        4,
        vec![udp(), f::raw_attribute(0x0017, &[2, 0, 0, 0])],
    );
    let allocate_dual = f::request(
        METHOD_ALLOCATE,
        5,
        vec![udp(), f::raw_attribute(0x8000, &[2, 0, 0, 0])],
    );
    let allocate_token = f::request(
        METHOD_ALLOCATE,
        6,
        vec![udp(), f::raw_attribute(0x0022, &[1, 2, 3, 4, 5, 6, 7, 8])],
    );
    let binding = f::request(METHOD_BINDING, 7, vec![]);
    let binding_unknown = f::request(
        METHOD_BINDING,
        8,
        vec![f::raw_attribute(0x0003, &[0, 0, 0, 6])],
    );
    let permit = |tid, p| f::request(METHOD_CREATE_PERMISSION, tid, vec![f::peer_address(p)]);
    let bind = |tid, n, p| {
        f::request(
            METHOD_CHANNEL_BIND,
            tid,
            vec![f::channel_number(n), f::peer_address(p)],
        )
    };
    let refresh = |tid, s| f::request(METHOD_REFRESH, tid, vec![lifetime(s)]);
    let send =
        |tid, p, d: &[u8]| f::indication(METHOD_SEND, tid, vec![f::peer_address(p), f::data(d)]);
    let signed = |m: &[u8], c: usize| f::sign(m, &clients[c]).unwrap();

    // stun_unauth: one datagram from client 0 (or 3), which signs with the nonce the server
    // would give it.
    let t = out.target("stun_unauth");
    for (name, h) in RFC5769 {
        t.put(name, hex(h));
    }
    t.put("allocate", &allocate);
    t.put("allocate-signed", signed(&allocate, 0));
    t.put("allocate-even-port-signed", signed(&allocate_even, 0));
    t.put("allocate-dont-fragment-signed", signed(&allocate_df, 0));
    t.put("allocate-ipv6-signed", signed(&allocate_v6, 0));
    t.put(
        "allocate-additional-family-signed",
        signed(&allocate_dual, 0),
    );
    t.put(
        "allocate-reservation-token-signed",
        signed(&allocate_token, 0),
    );
    t.put("binding", &binding);
    t.put("binding-unknown-attribute", &binding_unknown);
    t.put("refresh-signed", signed(&refresh(9, 600), 0));
    t.put("create-permission-signed", signed(&permit(10, peer), 0));
    t.put("channel-bind-signed", signed(&bind(11, 0x4000, peer), 0));
    t.put("send-indication", send(12, peer, b"hello"));
    t.put("channel-data", channel_data(0x4000, b"hello", false));

    // stun_auth: records; op low nibble 0 raw, 1 signed, 2 datagram, 3 from a peer, 4 clock
    // (seconds after the start), 5 close; high nibble the client.
    let t = out.target("stun_auth");
    for (name, h) in RFC5769 {
        t.put(name, record(0x00, &hex(h)));
    }
    t.put(
        "permission-channel-data-peer",
        [
            record(0x01, &permit(20, peer)),
            record(0x01, &bind(21, 0x4000, peer)),
            record(0x02, &channel_data(0x4000, b"to the peer", false)),
            record(0x03, b"\x00from the peer"),
            record(0x03, b"\x01from a peer without permission"),
            record(0x04, &400u16.to_be_bytes()),
            record(
                0x02,
                &channel_data(0x4000, b"after the permission expired", false),
            ),
        ]
        .concat(),
    );
    t.put(
        "relay-to-relay",
        [
            record(0x11, &permit(22, relayed(0))),
            record(0x01, &permit(23, relayed(1))),
            record(0x01, &bind(24, 0x4001, relayed(1))),
            record(
                0x02,
                &channel_data(0x4001, b"relayed to client 1 over TCP", false),
            ),
            record(
                0x12,
                &channel_data(0x4000, b"client 1 has no channel", true),
            ),
            record(0x03, b"\x04from client 1's relay"),
        ]
        .concat(),
    );
    t.put(
        "send-indication",
        [
            record(0x01, &permit(25, peer)),
            record(0x00, &send(26, peer, b"sent")),
            record(0x00, &send(27, addr("203.0.113.9:9"), b"no permission")),
        ]
        .concat(),
    );
    t.put(
        "refresh",
        [
            record(0x01, &refresh(28, 3600)),
            record(0x01, &refresh(28, 3600)),
            record(0x01, &refresh(29, 0)),
            record(0x01, &refresh(30, 600)),
        ]
        .concat(),
    );
    t.put(
        "peer-credential-even-port",
        [
            record(0x20, &allocate),
            record(0x21, &allocate_even),
            record(0x21, &permit(31, peer)),
            record(0x25, &[]),
            record(0x21, &allocate_token),
        ]
        .concat(),
    );
    t.put(
        "ipv6",
        [
            record(0x31, &allocate_v6),
            record(0x31, &permit(32, peer6)),
            record(0x31, &bind(33, 0x4002, peer6)),
            record(0x32, &channel_data(0x4002, b"to an IPv6 peer", false)),
            record(0x33, b"\x02from an IPv6 peer"),
            record(0x31, &refresh(34, 600)),
        ]
        .concat(),
    );
    t.put(
        "stale-nonce-and-expired-credential",
        [
            record(0x01, &refresh(40, 3600)),
            record(0x04, &700u16.to_be_bytes()),
            record(0x01, &refresh(41, 3600)),
            record(0x01, &refresh(42, 3600)),
            record(0x04, &3700u16.to_be_bytes()),
            record(0x01, &refresh(43, 600)),
            record(0x01, &refresh(44, 600)),
            record(0x31, &allocate),
            record(0x31, &allocate),
        ]
        .concat(),
    );
    t.put(
        "errors",
        [
            record(0x01, &allocate),
            record(0x01, &permit(35, addr("10.0.0.1:80"))),
            record(0x01, &bind(36, 0x3000, peer)),
            record(0x01, &binding_unknown),
            record(0x11, &allocate_dual),
            record(0x21, &allocate_df),
            record(0x05, &[]),
            record(0x01, &refresh(37, 600)),
        ]
        .concat(),
    );

    // turn_stream: [flags][piece][stream]; flags & 1 sets up client 1's channels 0x4000
    // (client 0, UDP), 0x4001 (client 2, TLS), 0x4002 (a peer).
    let t = out.target("turn_stream");
    let frames = [
        channel_data(0x4000, b"to client 0 over UDP", true),
        channel_data(0x4001, b"to client 2 over TLS", true),
        channel_data(0x4002, b"to the peer", true),
        channel_data(0x4003, b"no channel", true),
        binding.clone(),
    ]
    .concat();
    t.put("allocated-whole", [&[1, 0][..], &frames].concat());
    t.put("allocated-in-pieces", [&[1, 3][..], &frames].concat());
    let unallocated = [
        allocate.clone(),
        signed(&f::request(METHOD_ALLOCATE, 40, vec![udp()]), 1),
        channel_data(0x4000, b"no channel yet", true),
    ]
    .concat();
    t.put(
        "allocate-on-the-stream",
        [&[0, 7][..], &unallocated].concat(),
    );
    t.put(
        "too-large-before-allocating",
        [0, 0, 0x00, 0x01, 0xFF, 0xFC],
    );
    t.put("junk", [0, 0, 0xC0, 0, 0, 0]);

    // ws_frame: [limit][piece][frames]; limit 3 is 64 KiB.
    let t = out.target("ws_frame");
    let join = br#"{"type": "join", "room": "team-standup", "name": "Ann"}"#;
    t.put(
        "masked-text",
        [&[3, 0][..], &ws(true, 0x1, b"Hello")].concat(),
    );
    t.put("ping", [&[3, 0][..], &ws(true, 0x9, b"keepalive")].concat());
    t.put(
        "fragmented-with-ping",
        [
            &[3, 5][..],
            &ws(false, 0x1, b"{\"type\": "),
            &ws(true, 0x9, b""),
            &ws(false, 0x0, b"\"ping\""),
            &ws(true, 0x0, b"}"),
        ]
        .concat(),
    );
    t.put(
        "close",
        [&[3, 0][..], &ws(true, 0x8, b"\x03\xe8going away")].concat(),
    );
    t.put(
        "binary-and-pong",
        [&[3, 0][..], &ws(true, 0x2, &[0, 1, 2]), &ws(true, 0xA, b"")].concat(),
    );
    t.put(
        "long-text",
        [&[3, 0][..], &ws(true, 0x1, &join.repeat(3))].concat(),
    );
    t.put(
        "over-the-limit",
        [&[0, 0][..], &ws(true, 0x1, join)].concat(),
    );

    // The dialects' messages, from docs/protocol.md and the tutorials' clients (tests/node).
    let t = out.target("signal_native");
    t.put("join", join);
    t.put(
        "signal",
        r#"{"type": "signal", "to": "5f0c1a9e8b7d4c3e2a1f0e9d8c7b6a59", "payload": {"description": {"type": "offer", "sdp": "v=0\r\n…"}}}"#,
    );
    t.put(
        "signal-candidate",
        r#"{"payload":{"candidate":{"candidate":"candidate:1 1 udp 2122260223 192.0.2.10 54321 typ host","sdpMid":"0","sdpMLineIndex":0}},"type":"signal","to":"0a1b2c3d4e5f60718293a4b5c6d7e8f9"}"#,
    );
    t.put("leave", r#"{"type": "leave"}"#);
    t.put("ping", r#"{"type": "ping"}"#);
    t.put(
        "bad",
        r#"{"type": "signal", "to": "nobody", "payload": 1e400}"#,
    );

    let t = out.target("signal_legacy");
    t.put("login", r#"{"type":"login","name":"alice"}"#);
    t.put(
        "offer",
        r#"{"type":"offer","name":"bob","offer":{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}}"#,
    );
    t.put(
        "answer",
        r#"{"type":"answer","name":"alice","answer":{"type":"answer","sdp":"v=0\r\n"}}"#,
    );
    t.put(
        "candidate",
        r#"{"type":"candidate","name":"bob","candidate":{"candidate":"candidate:1 1 udp 1 192.0.2.1 5000 typ host","sdpMid":"0"}}"#,
    );
    t.put("leave", r#"{"type":"leave","name":"bob"}"#);
    t.put("unknown", r#"{"type":"dance"}"#);
    t.put(
        "duplicate-keys",
        r#"{"type":"login","type":"offer","name":"a\u00e9"}"#,
    );

    let t = out.target("signal_sio");
    let sio = |packets: &[&[u8]]| packets.join(&0x1E);
    t.put(
        "connect-create-or-join",
        sio(&[b"40", br#"42["create or join","room1"]"#]),
    );
    t.put(
        "video-call",
        sio(&[
            br#"42["join","r2"]"#,
            br#"42["start_call","r2"]"#,
            br#"42["webrtc_offer",{"roomId":"r2","sdp":{"type":"offer","sdp":"v=0 offer"}}]"#,
            br#"42["webrtc_answer",{"roomId":"r2","sdp":{"type":"answer","sdp":"v=0 answer"}}]"#,
            br#"421["webrtc_ice_candidate",{"roomId":"r2","label":0,"candidate":"candidate:1 1 udp 1 192.0.2.1 5000 typ host"}]"#,
        ]),
    );
    t.put(
        "message-ipaddr-ping",
        sio(&[
            br#"42["message",{"type":"offer","sdp":"v=0"}]"#,
            br#"42["ipaddr"]"#,
            b"2",
            b"3probe",
            b"5",
        ]),
    );
    t.put(
        "binary-attachment",
        sio(&[
            br#"451-["message",{"_placeholder":true,"num":0}]"#,
            b"\x01\x02\x03",
        ]),
    );
    t.put(
        "namespace-and-disconnect",
        sio(&[br#"42/admin,["message","x"]"#, b"41"]),
    );

    // config_toml: the shipped files, and the bench's.
    let t = out.target("config_toml");
    let repo = root.parent().unwrap();
    t.put(
        "config.toml",
        std::fs::read(repo.join("config.toml")).unwrap(),
    );
    let bench = repo.join("bench/configs");
    let mut names: Vec<_> = std::fs::read_dir(&bench)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    names.sort();
    for path in names {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        t.put(&format!("bench-{name}"), std::fs::read(&path).unwrap());
    }
}
