//! What the fuzz targets share: the sans-IO TURN core set up as the unit tests of
//! `turn::core` set it up (fake relays, a clock the input moves, fixed secrets), clients with
//! valid credentials, and checks of what the core and the router hand back: replies answer
//! the request's method and transaction, a success to an authenticated request is signed
//! with the key of the credential it named, a Binding maps the client's own address, data
//! goes only to permitted peers and reaches a client framed around the bytes it carried.
//!
//! Everything is deterministic: the same input takes the same path on every run, so a
//! crash found once reproduces from its file.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use stun::attributes::{
    ATTR_MESSAGE_INTEGRITY, ATTR_NONCE, ATTR_REALM, ATTR_USERNAME, ATTR_XOR_RELAYED_ADDRESS,
};
use stun::error_code::ErrorCodeAttribute;
use stun::message::Getter;
pub use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, MAGIC_COOKIE,
    METHOD_ALLOCATE, METHOD_BINDING, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH,
    METHOD_SEND, Message, MessageType, Method, Setter,
};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use switchboard::config::Secret;
use switchboard::model::{PeerId, RoomId, Scope};
use switchboard::turn::auth::{self, NonceKey};
use switchboard::turn::core::{
    Core, CoreConfig, FiveTuple, Handled, PortChoice, RelayBinder, Transport,
};
use switchboard::turn::policy::{self, PeerPolicy, Reach};
use switchboard::turn::route::{self, Relay, Route};
use switchboard::turn::wire::{self, CHANNEL_HEADER, HEADROOM, Kind};

macro_rules! trace {
    ($($arg:tt)*) => {
        if tracing() {
            eprintln!($($arg)*);
        }
    };
}

/// The unix time a run starts at (nonces are issued and checked against the clock's).
pub const UNIX: u64 = 1_800_000_000;
pub const REALM: &str = "fuzz.example";
pub const SECRET: &str = "fuzz-secret";
pub const NONCE_SECRET: &[u8] = b"fuzz-nonces";
/// The server socket every client talks to.
pub const SERVER: &str = "192.0.2.1:3478";

/// The fuzzed server's clocks, moving together: the monotonic one (lifetimes of
/// allocations, permissions, channels) and the unix one (nonces, credential expiry).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    elapsed: Duration,
}

impl Clock {
    /// The clock at the start of a run: now, and `UNIX`.
    pub fn start() -> Clock {
        Clock {
            start: Instant::now(),
            elapsed: Duration::ZERO,
        }
    }

    pub fn now(&self) -> Instant {
        self.start + self.elapsed
    }

    pub fn unix(&self) -> u64 {
        UNIX + self.elapsed.as_secs()
    }

    /// Moves on to `secs` after the start; never back, as a monotonic clock goes.
    pub fn advance_to(&mut self, secs: u64) {
        self.elapsed = self.elapsed.max(Duration::from_secs(secs));
    }
}

/// A relay handle as the server's: the way back to its client, known once granted.
#[derive(Debug)]
pub struct FakeRelay {
    pub client: OnceLock<Sink>,
}

/// A client's way back: its index among `Client`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sink(pub usize);

impl Relay for FakeRelay {
    type Sink = Sink;
    fn client(&self) -> Option<&Sink> {
        self.client.get()
    }
}

/// Binds nothing: relays on loopback, ports handed out in order (as the core's tests do).
pub struct FakeBinder {
    next_port: AtomicU16,
}

impl RelayBinder for FakeBinder {
    type Relay = FakeRelay;
    fn bind(&self, ipv6: bool, choice: PortChoice) -> std::io::Result<(FakeRelay, SocketAddr)> {
        let port = match choice {
            // The odd half of a reserved pair: refused when it would wrap.
            PortChoice::Exactly(p) => p,
            PortChoice::Even | PortChoice::Any => self.next_port.fetch_add(2, Ordering::Relaxed),
        };
        if port == 0 || port > 65000 {
            return Err(std::io::ErrorKind::AddrInUse.into());
        }
        let ip: IpAddr = if ipv6 {
            "::1".parse().unwrap()
        } else {
            "127.0.0.1".parse().unwrap()
        };
        let relay = FakeRelay {
            client: OnceLock::new(),
        };
        Ok((relay, SocketAddr::new(ip, port)))
    }

    fn dont_fragment(&self, _relay: &FakeRelay) -> std::io::Result<()> {
        Ok(())
    }
}

/// The core under test, and every reply it sent (`Deref` to the core).
pub struct FuzzCore {
    core: Core<FakeBinder>,
    /// The core answers a transaction id it has answered for an allocation with the same
    /// bytes again, whatever the request.
    sent: Mutex<Sent>,
}

/// The replies sent to each 5-tuple, by transaction id.
type Sent = HashMap<(FiveTuple, [u8; 12]), Vec<Vec<u8>>>;

impl std::ops::Deref for FuzzCore {
    type Target = Core<FakeBinder>;
    fn deref(&self) -> &Core<FakeBinder> {
        &self.core
    }
}

impl FuzzCore {
    /// Notes a reply sent to `tuple`; returns whether the same bytes were sent to it before.
    fn sent_before(&self, tuple: FiveTuple, reply: &Message) -> bool {
        let mut sent = self.sent.lock().unwrap();
        let replies = sent.entry((tuple, reply.transaction_id.0)).or_default();
        if replies.contains(&reply.raw) {
            return true;
        }
        replies.push(reply.raw.clone());
        false
    }
}

/// A core with the fuzz secrets, a static user `alice`/`pw`, quotas small enough to be hit,
/// and the documentation ranges 203.0.113.0/24 and 2001:db8::/32 allowed as peers.
pub fn core() -> FuzzCore {
    let config = CoreConfig {
        realm: REALM.into(),
        secrets: vec![Secret::new(SECRET.into())],
        static_users: vec![("alice".into(), Secret::new("pw".into()))],
        external_ip: None,
        max_allocations_per_credential: 3,
        max_allocations_per_room: 4,
        max_allocations_per_source: 5,
        max_allocations: 8,
        source_prefix_v6: 64,
        challenges_per_source_s: 20,
        fence: false,
        fence_room_credentials: false,
        // Small budgets, so that inputs reach the drops and the room shares.
        max_allocation_bytes_per_s: 8000,
        max_room_bytes_per_s: 12_000,
    };
    let allow = vec![
        "203.0.113.0/24".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ];
    // The fake binder's relays: loopback, from port 50000 up.
    let policy = PeerPolicy::new(allow, vec![], vec![SERVER.parse().unwrap()], vec![]).with_relays(
        ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
        49152..=65535,
    );
    let core = Core::new(
        config,
        NonceKey::new(NONCE_SECRET, 600),
        policy,
        FakeBinder {
            next_port: AtomicU16::new(50000),
        },
        // Every peer is in its room: peer credentials work as long as they are valid.
        Arc::new(|_: &Scope, _: &PeerId| true),
    );
    FuzzCore {
        core,
        sent: Mutex::default(),
    }
}

/// A client of the fuzzed server: its 5-tuple and its credential.
#[derive(Debug, Clone)]
pub struct Client {
    pub tuple: FiveTuple,
    pub username: String,
    pub key: Vec<u8>,
    /// The nonce the server gave it last (at first, the one it would give at the start).
    pub nonce: String,
}

impl Client {
    /// Takes the nonce of a 401 or 438 `reply`, as a client does before it signs again.
    pub fn learn_nonce(&mut self, reply: &[u8]) {
        if let Some(nonce) = nonce_of(reply) {
            self.nonce = nonce;
        }
    }
}

/// The long-term key of `username` on the fuzzed server, computed apart from the core's own
/// lookup: the static user's password, else the REST password of the one secret.
fn key_of(username: &str) -> Vec<u8> {
    let password = if username == "alice" {
        "pw".to_owned()
    } else {
        auth::rest_password(&Secret::new(SECRET.into()), username)
    };
    auth::long_term_key(username, REALM, &password)
}

/// The clients of the fuzz targets: REST, static and peer credentials, over UDP, TCP and
/// TLS, one from IPv6.
pub fn clients() -> Vec<Client> {
    let server: SocketAddr = SERVER.parse().unwrap();
    let rest = format!("{}:fuzz", UNIX + 3600);
    let peer = PeerId::parse("5f0c1a9e8b7d4c3e2a1f0e9d8c7b6a59").unwrap();
    let room = RoomId::parse("room").unwrap();
    let peer_user = auth::peer_username(UNIX + 3600, &Scope::native(room), &peer);
    let secret = Secret::new(SECRET.into());
    let specs: [(&str, Transport, String, String); 4] = [
        (
            "198.51.100.10:40000",
            Transport::Udp,
            rest.clone(),
            auth::rest_password(&secret, &rest),
        ),
        (
            "198.51.100.11:40001",
            Transport::Tcp,
            "alice".into(),
            "pw".into(),
        ),
        (
            "198.51.100.12:40002",
            Transport::Tls,
            peer_user.clone(),
            auth::rest_password(&secret, &peer_user),
        ),
        (
            "[2001:db8::10]:40003",
            Transport::Udp,
            rest.clone(),
            auth::rest_password(&secret, &rest),
        ),
    ];
    let nonces = NonceKey::new(NONCE_SECRET, 600);
    specs
        .into_iter()
        .map(|(addr, transport, username, password)| {
            let client: SocketAddr = addr.parse().unwrap();
            Client {
                tuple: FiveTuple {
                    client,
                    server,
                    transport,
                },
                key: auth::long_term_key(&username, REALM, &password),
                nonce: nonces.issue(UNIX, client.ip()),
                username,
            }
        })
        .collect()
}

/// The STUN message in `body` made well framed (cookie, a length that fits) and signed as
/// `client` signs: USERNAME, REALM, NONCE, MESSAGE-INTEGRITY, FINGERPRINT. `None` when
/// its attributes do not decode (the caller sends the bytes as they are).
pub fn sign(body: &[u8], client: &Client) -> Option<Vec<u8>> {
    if body.len() < 20 {
        return None;
    }
    let len = (body.len() - 20).min(0xFFFF) & !3;
    let mut raw = body[..20 + len].to_vec();
    raw[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    raw[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    let mut m = Message::new();
    m.raw = raw;
    m.decode().ok()?;
    let attrs: [Box<dyn Setter>; 5] = [
        Box::new(TextAttribute::new(ATTR_USERNAME, client.username.clone())),
        Box::new(TextAttribute::new(ATTR_REALM, REALM.into())),
        Box::new(TextAttribute::new(ATTR_NONCE, client.nonce.clone())),
        Box::new(stun::integrity::MessageIntegrity(client.key.clone())),
        Box::new(stun::fingerprint::FINGERPRINT),
    ];
    for a in &attrs {
        if a.add_to(&mut m).is_err() {
            break;
        }
    }
    Some(m.raw)
}

/// A request of `method` with `attrs` and a transaction id from `tid`, unsigned.
pub fn request(method: Method, tid: u8, attrs: Vec<Box<dyn Setter>>) -> Vec<u8> {
    message(MessageType::new(method, CLASS_REQUEST), tid, attrs)
}

/// An indication of `method` with `attrs`, unsigned.
pub fn indication(method: Method, tid: u8, attrs: Vec<Box<dyn Setter>>) -> Vec<u8> {
    message(MessageType::new(method, CLASS_INDICATION), tid, attrs)
}

fn message(typ: MessageType, tid: u8, attrs: Vec<Box<dyn Setter>>) -> Vec<u8> {
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(stun::agent::TransactionId([tid; 12])),
        Box::new(typ),
    ];
    setters.extend(attrs);
    let mut m = Message::new();
    m.build(&setters).expect("a request builds");
    m.raw
}

/// The REQUESTED-TRANSPORT of UDP.
pub fn udp_transport() -> Box<dyn Setter> {
    Box::new(turn::proto::reqtrans::RequestedTransport {
        protocol: turn::proto::PROTO_UDP,
    })
}

/// An XOR-PEER-ADDRESS.
pub fn peer_address(addr: SocketAddr) -> Box<dyn Setter> {
    Box::new(turn::proto::peeraddr::PeerAddress {
        ip: addr.ip(),
        port: addr.port(),
    })
}

/// A CHANNEL-NUMBER.
pub fn channel_number(n: u16) -> Box<dyn Setter> {
    Box::new(turn::proto::channum::ChannelNumber(n))
}

/// DATA.
pub fn data(bytes: &[u8]) -> Box<dyn Setter> {
    Box::new(turn::proto::data::Data(bytes.to_vec()))
}

/// Any attribute, as raw type and value.
pub fn raw_attribute(typ: u16, value: &[u8]) -> Box<dyn Setter> {
    struct Raw(u16, Vec<u8>);
    impl Setter for Raw {
        fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
            m.add(stun::attributes::AttrType(self.0), &self.1);
            Ok(())
        }
    }
    Box::new(Raw(typ, value.to_vec()))
}

/// What a STUN message is, for the checks: its transaction id, and whether it decodes with a
/// valid FINGERPRINT.
fn decoded(bytes: &[u8]) -> Message {
    let mut m = Message::new();
    m.raw = bytes.to_vec();
    m.decode()
        .unwrap_or_else(|e| panic!("the server sent a STUN message that does not decode: {e}"));
    stun::fingerprint::FINGERPRINT
        .check(&m)
        .expect("the server's FINGERPRINT is valid");
    m
}

/// Runs one STUN message of `client` through `core`, as `turn::server::on_stun` does, and
/// checks the result (`check_reply`; a new allocation is in the table under the client's
/// 5-tuple; a Send goes out of the client's own relay to a permitted peer). Returns the
/// reply, if any.
pub fn stun(
    core: &FuzzCore,
    clock: &Clock,
    client: usize,
    tuple: FiveTuple,
    bytes: &[u8],
) -> Option<Vec<u8>> {
    match core.handle_stun(clock.now(), clock.unix(), tuple, bytes) {
        Handled::Reply(reply) => {
            let m = check_reply(core, bytes, &reply, tuple);
            trace!("client {client}: reply {}", describe(&m));
            Some(reply)
        }
        Handled::Allocated(reply, allocation) => {
            let m = check_reply(core, bytes, &reply, tuple);
            trace!("client {client}: allocated {}", allocation.relayed);
            assert_eq!(m.typ.method, METHOD_ALLOCATE, "allocated by another method");
            assert_eq!(
                m.typ.class, CLASS_SUCCESS_RESPONSE,
                "allocated with an error"
            );
            let mut relayed = XorMappedAddress::default();
            relayed
                .get_from_as(&m, ATTR_XOR_RELAYED_ADDRESS)
                .expect("an Allocate success has XOR-RELAYED-ADDRESS");
            assert_eq!(
                SocketAddr::new(relayed.ip, relayed.port),
                allocation.relayed,
                "the relayed address told is not the allocation's"
            );
            assert_eq!(allocation.tuple, tuple);
            let live = core.get(&tuple).expect("a new allocation is in the table");
            assert!(Arc::ptr_eq(&live, &allocation));
            let _ = allocation.relay.client.set(Sink(client));
            Some(reply)
        }
        Handled::Send {
            allocation,
            peer,
            data,
        } => {
            trace!("client {client}: Send to {peer}, {} bytes", data.len());
            assert_eq!(
                allocation.tuple, tuple,
                "a Send through another client's relay"
            );
            assert_eq!(
                peer.is_ipv4(),
                allocation.relayed.is_ipv4(),
                "a Send across families"
            );
            let permission = allocation
                .state
                .lock()
                .unwrap()
                .permission(clock.now(), peer);
            assert!(
                permission.is_some(),
                "a Send to a peer without a permission"
            );
            assert!(
                permission != Some(Reach::Relays) || core.by_relayed(&peer).is_some(),
                "a Send to a relay address that is not a live relay"
            );
            assert!(data.len() <= bytes.len());
            None
        }
        Handled::Nothing => {
            trace!("client {client}: nothing");
            None
        }
    }
}

/// Checks a reply of the server to `request` from `tuple`: it decodes with a valid
/// FINGERPRINT and answers the request's transaction; it is the reply sent before for that
/// transaction (a retransmission's), or a success or error response of the request's
/// method; an error has an ERROR-CODE; a Binding success maps the client's own address; any
/// other success proves the request's credential (MESSAGE-INTEGRITY under the key of its
/// USERNAME, which only a holder of the password could have signed with). Returns the
/// decoded reply.
fn check_reply(core: &FuzzCore, request: &[u8], reply: &[u8], tuple: FiveTuple) -> Message {
    let m = decoded(reply);
    // The core decoded the request, or it would not have replied.
    let mut req = Message::new();
    req.raw = request.to_vec();
    req.decode().expect("a request the core answered decodes");
    assert_eq!(req.typ.class, CLASS_REQUEST, "a reply to a non-request");
    assert_eq!(
        m.transaction_id, req.transaction_id,
        "a reply to another transaction"
    );
    if core.sent_before(tuple, &m) {
        // Checked when it was first sent: the request now may be anything with its id.
        return m;
    }
    assert_eq!(m.typ.method, req.typ.method, "a reply of another method");
    if m.typ.class == CLASS_ERROR_RESPONSE {
        let mut code = ErrorCodeAttribute::default();
        code.get_from(&m).expect("an error response has ERROR-CODE");
        assert!(
            (300..700).contains(&code.code.0),
            "an error code out of range: {}",
            code.code.0
        );
        return m;
    }
    assert_eq!(
        m.typ.class, CLASS_SUCCESS_RESPONSE,
        "a reply that is no response"
    );
    if m.typ.method == METHOD_BINDING {
        let mut mapped = XorMappedAddress::default();
        mapped
            .get_from(&m)
            .expect("a Binding success has XOR-MAPPED-ADDRESS");
        assert_eq!(
            SocketAddr::new(mapped.ip, mapped.port),
            tuple.client,
            "a Binding success that maps another address"
        );
        return m;
    }
    let username = TextAttribute::get_from_as(&req, ATTR_USERNAME)
        .expect("a success to a request without USERNAME")
        .text;
    assert!(
        m.contains(ATTR_MESSAGE_INTEGRITY),
        "a success without MESSAGE-INTEGRITY"
    );
    let mut signed = m.clone();
    stun::integrity::MessageIntegrity(key_of(&username))
        .check(&mut signed)
        .expect("a success signed with another key than the request's credential");
    m
}

/// Whether `SWITCHBOARD_FUZZ_TRACE` is set: then what the core and the router decide is
/// printed, to read what a seed or a reproducer does (`fuzz/target/.../stun_auth FILE`).
pub fn tracing() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SWITCHBOARD_FUZZ_TRACE").is_some())
}

/// A reply's type and error code, for the trace.
fn describe(m: &Message) -> String {
    let mut code = ErrorCodeAttribute::default();
    match code.get_from(m) {
        Ok(()) => format!("{} {}", m.typ, code.code.0),
        Err(_) => m.typ.to_string(),
    }
}

/// The NONCE of a 401 or 438 reply.
pub fn nonce_of(reply: &[u8]) -> Option<String> {
    let m = decoded(reply);
    TextAttribute::get_from_as(&m, ATTR_NONCE)
        .ok()
        .map(|t| t.text)
}

/// Allocates for `client` as a browser does: an unauthenticated Allocate, the 401 and its
/// nonce, then the signed Allocate. Panics when the server does not grant it.
pub fn allocate(core: &FuzzCore, clock: &Clock, clients: &mut [Client], i: usize) {
    let tuple = clients[i].tuple;
    let first = request(METHOD_ALLOCATE, 0xA0 + i as u8, vec![udp_transport()]);
    let challenge = stun(core, clock, i, tuple, &first).expect("a 401 with a nonce");
    clients[i].nonce = nonce_of(&challenge).expect("a NONCE in the 401");
    let second = request(METHOD_ALLOCATE, 0xB0 + i as u8, vec![udp_transport()]);
    let signed = sign(&second, &clients[i]).unwrap();
    stun(core, clock, i, tuple, &signed);
    assert!(
        core.get(&tuple).is_some(),
        "the fuzz credential of client {i} is not granted an allocation"
    );
}

/// Runs a signed request of `client` and expects a success response.
pub fn expect_success(core: &FuzzCore, clock: &Clock, client: &Client, i: usize, msg: &[u8]) {
    let signed = sign(msg, client).unwrap();
    let reply = stun(core, clock, i, client.tuple, &signed).expect("a reply");
    let m = decoded(&reply);
    assert_eq!(
        m.typ.class,
        CLASS_SUCCESS_RESPONSE,
        "a setup request refused: {}",
        describe(&m)
    );
}

/// A datagram as a receive slot holds it: `HEADROOM + CHANNEL_HEADER` free bytes before
/// it, and 4 after (a slot holds the largest datagram plus padding). Returns the buffer and
/// where the datagram starts.
pub fn slot(datagram: &[u8]) -> (Vec<u8>, usize) {
    let at = HEADROOM + CHANNEL_HEADER;
    let mut buf = vec![0xAA; at + datagram.len() + 4];
    buf[at..at + datagram.len()].copy_from_slice(datagram);
    (buf, at)
}

/// Routes ChannelData on `number` whose payload is `buf[payload]` from `tuple`, as the
/// server does for a datagram or a stream frame, and checks the decision.
pub fn channel_data(
    core: &FuzzCore,
    clock: &Clock,
    tuple: FiveTuple,
    number: u16,
    buf: &mut [u8],
    payload: Range<usize>,
) {
    let now = clock.now();
    let original = buf[payload.clone()].to_vec();
    match route::channel_data(
        core.get(&tuple),
        now,
        number,
        buf,
        payload.clone(),
        |relayed| core.by_relayed(relayed),
        &core.stats,
    ) {
        Route::Drop(why) => trace!("channel {number:#06x}: dropped, {why:?}"),
        Route::ToPeer {
            allocation,
            peer,
            payload: out,
        } => {
            trace!("channel {number:#06x}: to {peer}");
            assert_eq!(allocation.tuple, tuple, "out of another client's relay");
            assert_eq!(out, payload, "the payload goes out as it came");
            assert_eq!(peer.is_ipv4(), allocation.relayed.is_ipv4());
            let permission = allocation.state.lock().unwrap().permission(now, peer);
            assert!(
                permission.is_some(),
                "ChannelData to a peer without a permission"
            );
            assert_ne!(
                permission,
                Some(Reach::Relays),
                "ChannelData out to a relay address that is not a live relay"
            );
        }
        Route::RelayToRelay { to, frame } => {
            let (client, transport) = (to.tuple.client, to.tuple.transport);
            // Every client here talks to the one server socket.
            let other = FiveTuple {
                client,
                server: tuple.server,
                transport,
            };
            let other = core
                .get(&other)
                .expect("relayed to a client without an allocation");
            assert!(
                Arc::ptr_eq(&other, &to),
                "relayed to another allocation than its own"
            );
            assert!(
                other.relay.client().is_some(),
                "relayed to a client not granted yet"
            );
            let mine = core.get(&tuple).expect("relayed without an allocation");
            assert!(
                other.state.lock().unwrap().is_permitted(now, mine.relayed),
                "relayed to an allocation that has not permitted this one"
            );
            trace!("channel {number:#06x}: relay to relay, to {client} over {transport:?}");
            check_frame(&buf[frame], &original, transport);
        }
    }
}

/// Frames a datagram from `from` for the allocation of `tuple`, as a relay task does,
/// and checks the frame.
pub fn peer_data(
    core: &FuzzCore,
    clock: &Clock,
    tuple: FiveTuple,
    from: SocketAddr,
    payload: &[u8],
) {
    let Some(a) = core.get(&tuple) else { return };
    let mut buf = vec![0xAA; HEADROOM + payload.len() + 3];
    buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(payload);
    let range = HEADROOM..HEADROOM + payload.len();
    let mut state = a.state.lock().unwrap();
    match route::peer_data(
        &mut state,
        clock.now(),
        tuple.transport,
        from,
        &mut buf,
        range,
        |relay| core.relay_at(relay, None),
        &core.stats,
    ) {
        Ok(frame) => {
            let from_ip = SocketAddr::new(policy::normalize(from.ip()), from.port());
            let permission = state.permission(clock.now(), from_ip);
            assert!(
                permission != Some(Reach::Relays) || core.by_relayed(&from_ip).is_some(),
                "data taken from a relay address that is not a live relay"
            );
            trace!(
                "from {from}: {} bytes framed for {}",
                frame.len(),
                tuple.client
            );
            check_frame(&buf[frame], payload, tuple.transport);
        }
        Err(why) => trace!("from {from}: dropped, {why:?}"),
    }
}

/// A frame for a client: ChannelData (padded over streams) or a Data indication, carrying
/// `payload`.
fn check_frame(frame: &[u8], payload: &[u8], transport: Transport) {
    match wire::classify(frame) {
        Kind::ChannelData { number, len } => {
            assert!(
                (0x4000..=0x7FFF).contains(&number),
                "a channel number out of range"
            );
            assert_eq!(
                &frame[4..4 + len],
                payload,
                "ChannelData carries the payload"
            );
            let padded = route::pads(transport);
            let expected = if padded {
                (4 + len).div_ceil(4) * 4
            } else {
                4 + len
            };
            assert_eq!(
                frame.len(),
                expected,
                "ChannelData padded only over streams"
            );
        }
        Kind::Stun => {
            let m = decoded_plain(frame);
            let data = m
                .get(stun::attributes::ATTR_DATA)
                .expect("a Data indication has DATA");
            assert_eq!(data, payload, "the Data indication carries the payload");
        }
        Kind::Other => panic!("a frame for a client is neither ChannelData nor STUN"),
    }
}

fn decoded_plain(bytes: &[u8]) -> Message {
    let mut m = Message::new();
    m.raw = bytes.to_vec();
    m.decode()
        .unwrap_or_else(|e| panic!("a Data indication that does not decode: {e}"));
    assert_eq!(
        m.raw.len(),
        20 + m.length as usize,
        "a Data indication of its exact length"
    );
    m
}

/// Reads `data` as a sequence of records `[op][len hi][len lo][body]` (the body cut at the
/// end of the input). The fuzz targets that take several messages use it.
pub fn records(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let [op, hi, lo, rest @ ..] = data else {
            return None;
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
        let (body, next) = rest.split_at(len);
        data = next;
        Some((*op, body))
    })
}

/// Encodes one record for `records` (the seeds use it).
pub fn record(op: u8, body: &[u8]) -> Vec<u8> {
    let mut r = vec![op];
    r.extend((body.len() as u16).to_be_bytes());
    r.extend(body);
    r
}

/// Whether `bytes` is a STUN message, ChannelData or other, by the server's own rule.
pub fn kind(bytes: &[u8]) -> Kind {
    wire::classify(bytes)
}
