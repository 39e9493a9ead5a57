//! The TURN state machine driven as data: fake relays, a virtual clock.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};

use stun::agent::TransactionId;
use stun::error_code::ErrorCodeAttribute;
use stun::message::{MessageType, Method};
use turn::proto::PROTO_TCP;
use turn::proto::channum::ChannelNumber;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;

use super::*;
use crate::model::Space;

const SIO: Space = Space::new("sio");
const WS: Space = Space::new("ws");

#[derive(Default)]
struct FakeBinder {
    next_port: AtomicU16,
    /// Relays told to send with don't-fragment.
    dont_fragment: AtomicUsize,
    /// Whether don't-fragment fails, as on a platform without it.
    no_dont_fragment: AtomicBool,
}

impl RelayBinder for FakeBinder {
    type Relay = ();
    fn bind(&self, ipv6: bool, choice: PortChoice) -> std::io::Result<((), SocketAddr)> {
        let port = match choice {
            PortChoice::Exactly(p) => p,
            PortChoice::Even | PortChoice::Any => self.next_port.fetch_add(2, Ordering::Relaxed),
        };
        let ip: IpAddr = if ipv6 {
            "::1".parse().unwrap()
        } else {
            "127.0.0.1".parse().unwrap()
        };
        Ok(((), SocketAddr::new(ip, port)))
    }

    fn dont_fragment(&self, _relay: &()) -> std::io::Result<()> {
        if self.no_dont_fragment.load(Ordering::Relaxed) {
            return Err(std::io::ErrorKind::Unsupported.into());
        }
        self.dont_fragment.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

const SECRET: &str = "s3cret";
const REALM: &str = "sb";
const UNIX: u64 = 1_800_000_000;

struct Fixture {
    core: Core<FakeBinder>,
    members: Arc<Mutex<HashSet<(Scope, PeerId)>>>,
    t0: Instant,
}

fn fixture() -> Fixture {
    fixture_with(|_| {})
}

fn fixture_with(tweak: impl FnOnce(&mut CoreConfig)) -> Fixture {
    fixture_with_policy(
        tweak,
        PeerPolicy::new(vec![], vec![], vec![], vec![]).with_relays(
            ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            RELAY_PORTS,
        ),
    )
}

/// An address of the server's own, not special-purpose: relays are advertised on it (1:1 NAT),
/// and a TURN listener is on its port 3478.
const OWN: &str = "198.51.99.7";

/// The relay port range of the fixtures (the fake binder counts up from 50000).
const RELAY_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

fn own_policy() -> PeerPolicy {
    PeerPolicy::new(
        vec![],
        vec![],
        vec![format!("{OWN}:3478").parse().unwrap()],
        vec![OWN.parse().unwrap()],
    )
    .with_relays([OWN.parse().unwrap()], RELAY_PORTS)
}

/// Relays advertised on [`OWN`], with its policy.
fn fixture_own() -> Fixture {
    fixture_with_policy(|c| c.external_ip = Some(OWN.parse().unwrap()), own_policy())
}

fn fixture_with_policy(tweak: impl FnOnce(&mut CoreConfig), policy: PeerPolicy) -> Fixture {
    let mut config = CoreConfig {
        realm: REALM.into(),
        secrets: vec![Secret::new(SECRET.into())],
        static_users: vec![("alice".into(), Secret::new("pw".into()))],
        external_ip: None,
        max_allocations_per_credential: 10,
        max_allocations_per_room: 10,
        max_allocations_per_source: 50,
        max_allocations: 100,
        source_prefix_v6: 64,
        challenges_per_source_s: 1000,
        fence: false,
        fence_room_credentials: false,
        max_allocation_bytes_per_s: 0,
        max_room_bytes_per_s: 0,
    };
    tweak(&mut config);
    let members: Arc<Mutex<HashSet<(Scope, PeerId)>>> = Arc::default();
    let m = Arc::clone(&members);
    let membership: Membership =
        Arc::new(move |r, p| m.lock().unwrap().contains(&(r.clone(), p.clone())));
    let core = Core::new(
        config,
        NonceKey::new(b"n", 600),
        policy,
        FakeBinder {
            next_port: AtomicU16::new(50000),
            ..FakeBinder::default()
        },
        membership,
    );
    Fixture {
        core,
        members,
        t0: Instant::now(),
    }
}

fn tuple(port: u16) -> FiveTuple {
    FiveTuple {
        client: SocketAddr::new("198.51.99.1".parse().unwrap(), port),
        server: "198.51.99.2:3478".parse().unwrap(),
        transport: Transport::Udp,
    }
}

/// A credential: username and password.
struct Cred(String, String);

fn rest(expires: u64, user: &str) -> Cred {
    let username = format!("{expires}:{user}");
    let password = auth::rest_password(&Secret::new(SECRET.into()), &username);
    Cred(username, password)
}

fn request(
    method: Method,
    tid: TransactionId,
    attrs: Vec<Box<dyn Setter>>,
    auth: Option<(&Cred, &str)>,
) -> Vec<u8> {
    request_with_trailer(method, tid, attrs, auth, vec![])
}

/// A request with `trailer` between MESSAGE-INTEGRITY and FINGERPRINT, as an on-path
/// attacker can append it without the key.
fn request_with_trailer(
    method: Method,
    tid: TransactionId,
    attrs: Vec<Box<dyn Setter>>,
    auth: Option<(&Cred, &str)>,
    trailer: Vec<Box<dyn Setter>>,
) -> Vec<u8> {
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(tid),
        Box::new(MessageType::new(method, CLASS_REQUEST)),
    ];
    setters.extend(attrs);
    if let Some((cred, nonce)) = auth {
        setters.push(Box::new(TextAttribute::new(ATTR_USERNAME, cred.0.clone())));
        setters.push(Box::new(TextAttribute::new(ATTR_REALM, REALM.into())));
        setters.push(Box::new(TextAttribute::new(ATTR_NONCE, nonce.into())));
        let key = auth::long_term_key(&cred.0, REALM, &cred.1);
        setters.push(Box::new(stun::integrity::MessageIntegrity(key)));
    }
    setters.extend(trailer);
    setters.push(Box::new(stun::fingerprint::FINGERPRINT));
    let mut m = Message::new();
    m.build(&setters).unwrap();
    m.raw
}

fn udp() -> Box<dyn Setter> {
    Box::new(RequestedTransport {
        protocol: turn::proto::PROTO_UDP,
    })
}

fn peer(addr: &str) -> Box<dyn Setter> {
    let a: SocketAddr = addr.parse().unwrap();
    Box::new(PeerAddress {
        ip: a.ip(),
        port: a.port(),
    })
}

fn decode(bytes: &[u8]) -> Message {
    let mut m = Message::new();
    m.raw = bytes.to_vec();
    m.decode().unwrap();
    stun::fingerprint::FINGERPRINT
        .check(&m)
        .expect("responses carry FINGERPRINT");
    m
}

fn reply_of(h: Handled<()>) -> Vec<u8> {
    match h {
        Handled::Reply(r) | Handled::Allocated(r, _) => r,
        _ => panic!("expected a reply"),
    }
}

/// The error code of a response, or `None` for success.
fn code(bytes: &[u8]) -> Option<u16> {
    let m = decode(bytes);
    if m.typ.class == CLASS_SUCCESS_RESPONSE {
        return None;
    }
    assert_eq!(m.typ.class, CLASS_ERROR_RESPONSE);
    let mut e = ErrorCodeAttribute::default();
    e.get_from(&m).unwrap();
    Some(e.code.0)
}

fn nonce_of(bytes: &[u8]) -> String {
    TextAttribute::get_from_as(&decode(bytes), ATTR_NONCE)
        .unwrap()
        .text
}

impl Fixture {
    fn send(&self, t: FiveTuple, bytes: &[u8]) -> Handled<()> {
        self.send_at(Duration::ZERO, t, bytes)
    }

    fn send_at(&self, after: Duration, t: FiveTuple, bytes: &[u8]) -> Handled<()> {
        let handled = self
            .core
            .handle_stun(self.t0 + after, UNIX + after.as_secs(), t, bytes);
        self.core.assert_index_matches_table();
        handled
    }

    /// A fresh nonce for `t`, from an unauthenticated Allocate.
    fn nonce(&self, t: FiveTuple) -> String {
        let r = reply_of(self.send(
            t,
            &request(METHOD_ALLOCATE, TransactionId::new(), vec![udp()], None),
        ));
        assert_eq!(code(&r), Some(401));
        nonce_of(&r)
    }

    /// CreatePermission for `peers`; the error code, or `None` for success.
    fn permit(&self, t: FiveTuple, cred: &Cred, peers: &[&str]) -> Option<u16> {
        let nonce = self.nonce(tuple(t.client.port() + 1000));
        let attrs = peers.iter().map(|p| peer(p)).collect();
        code(&reply_of(self.send(
            t,
            &request(
                METHOD_CREATE_PERMISSION,
                TransactionId::new(),
                attrs,
                Some((cred, &nonce)),
            ),
        )))
    }

    /// ChannelBind of `number` to `peer`; the error code, or `None` for success.
    fn bind(&self, t: FiveTuple, cred: &Cred, number: u16, peer_addr: &str) -> Option<u16> {
        let nonce = self.nonce(tuple(t.client.port() + 1000));
        let attrs: Vec<Box<dyn Setter>> = vec![Box::new(ChannelNumber(number)), peer(peer_addr)];
        code(&reply_of(self.send(
            t,
            &request(
                METHOD_CHANNEL_BIND,
                TransactionId::new(),
                attrs,
                Some((cred, &nonce)),
            ),
        )))
    }

    fn refusals(&self, class: &str) -> u64 {
        let counts = self.core.stats.policy_refusals.snapshot();
        counts
            .iter()
            .find(|(c, _)| *c == class)
            .map_or(0, |(_, n)| *n)
    }

    fn allocate(&self, t: FiveTuple, cred: &Cred) -> Vec<u8> {
        let nonce = self.nonce(t);
        reply_of(self.send(
            t,
            &request(
                METHOD_ALLOCATE,
                TransactionId::new(),
                vec![udp()],
                Some((cred, &nonce)),
            ),
        ))
    }
}

#[test]
fn binding_answers_with_the_mapped_address() {
    let f = fixture();
    let t = tuple(4000);
    let r = reply_of(f.send(
        t,
        &request(METHOD_BINDING, TransactionId::new(), vec![], None),
    ));
    let m = decode(&r);
    let mut mapped = stun::xoraddr::XorMappedAddress::default();
    mapped.get_from(&m).unwrap();
    assert_eq!(SocketAddr::new(mapped.ip, mapped.port), t.client);
}

#[test]
fn allocate_challenge_then_success_with_relayed_address_and_lifetime() {
    let f = fixture();
    let t = tuple(4000);
    let challenge = reply_of(f.send(
        t,
        &request(METHOD_ALLOCATE, TransactionId::new(), vec![udp()], None),
    ));
    assert_eq!(code(&challenge), Some(401));
    let m = decode(&challenge);
    assert_eq!(
        TextAttribute::get_from_as(&m, ATTR_REALM).unwrap().text,
        REALM
    );
    let r = f.allocate(t, &rest(UNIX + 600, "bob"));
    assert_eq!(code(&r), None);
    let m = decode(&r);
    let mut relayed = RelayedAddress::default();
    relayed.get_from(&m).unwrap();
    assert_eq!(relayed.ip, "127.0.0.1".parse::<IpAddr>().unwrap());
    let mut lifetime = Lifetime::default();
    lifetime.get_from(&m).unwrap();
    assert_eq!(lifetime.0, Duration::from_secs(600));
    assert!(m.contains(ATTR_MESSAGE_INTEGRITY));
    assert_eq!(f.core.allocation_count(), 1);
}

#[test]
fn retransmitted_allocate_gets_the_same_answer_and_a_new_one_gets_437() {
    let f = fixture();
    let t = tuple(4000);
    let cred = rest(UNIX + 600, "bob");
    let nonce = f.nonce(t);
    let req = request(
        METHOD_ALLOCATE,
        TransactionId::new(),
        vec![udp()],
        Some((&cred, &nonce)),
    );
    let first = reply_of(f.send(t, &req));
    let again = reply_of(f.send(t, &req));
    assert_eq!(first, again);
    let other = request(
        METHOD_ALLOCATE,
        TransactionId::new(),
        vec![udp()],
        Some((&cred, &nonce)),
    );
    assert_eq!(code(&reply_of(f.send(t, &other))), Some(437));
}

#[test]
fn credential_refusals() {
    let f = fixture();
    let t = tuple(4000);
    // Wrong password.
    let wrong = Cred(rest(UNIX + 600, "bob").0, "nope".into());
    assert_eq!(code(&f.allocate(t, &wrong)), Some(401));
    // Expired REST credential.
    assert_eq!(code(&f.allocate(t, &rest(UNIX - 1, "bob"))), Some(401));
    // Unknown static user, and a known one.
    assert_eq!(
        code(&f.allocate(t, &Cred("carol".into(), "pw".into()))),
        Some(401)
    );
    assert_eq!(
        code(&f.allocate(t, &Cred("alice".into(), "pw".into()))),
        None
    );
    // Wrong realm.
    let f = fixture();
    let nonce = f.nonce(t);
    let cred = rest(UNIX + 600, "bob");
    let key = auth::long_term_key(&cred.0, "other", &cred.1);
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        udp(),
        Box::new(TextAttribute::new(ATTR_USERNAME, cred.0.clone())),
        Box::new(TextAttribute::new(ATTR_REALM, "other".into())),
        Box::new(TextAttribute::new(ATTR_NONCE, nonce)),
        Box::new(stun::integrity::MessageIntegrity(key)),
    ];
    let mut m = Message::new();
    m.build(&setters).unwrap();
    assert_eq!(code(&reply_of(f.send(t, &m.raw))), Some(401));
}

#[test]
fn stale_and_foreign_nonces_get_438_with_a_fresh_nonce() {
    let f = fixture();
    let t = tuple(4000);
    let nonce = f.nonce(t);
    let cred = rest(UNIX + 10_000, "bob");
    let req = request(
        METHOD_ALLOCATE,
        TransactionId::new(),
        vec![udp()],
        Some((&cred, &nonce)),
    );
    let r = reply_of(f.send_at(Duration::from_secs(601), t, &req));
    assert_eq!(code(&r), Some(438));
    assert_ne!(nonce_of(&r), nonce);
    let req = request(
        METHOD_ALLOCATE,
        TransactionId::new(),
        vec![udp()],
        Some((&cred, "0000000000000000deadbeefdeadbeef")),
    );
    assert_eq!(code(&reply_of(f.send(t, &req))), Some(438));
}

#[test]
fn peer_credentials_need_a_live_membership_for_new_allocations_only() {
    let f = fixture();
    let room = RoomId::parse("r").unwrap();
    let scope = Scope::native(room.clone());
    let peer_id = PeerId::random();
    let username = auth::peer_username(UNIX + 60, &scope, &peer_id);
    let cred = Cred(
        username.clone(),
        auth::rest_password(&Secret::new(SECRET.into()), &username),
    );
    let t = tuple(4000);
    assert_eq!(code(&f.allocate(t, &cred)), Some(401), "not a member yet");
    f.members
        .lock()
        .unwrap()
        .insert((scope.clone(), peer_id.clone()));
    assert_eq!(code(&f.allocate(t, &cred)), None);
    // Past the credential's expiry, the member may still refresh its allocation...
    let later = Duration::from_secs(120);
    let nonce = TextAttribute::get_from_as(
        &decode(&reply_of(f.send_at(
            later,
            tuple(4001),
            &request(METHOD_ALLOCATE, TransactionId::new(), vec![udp()], None),
        ))),
        ATTR_NONCE,
    )
    .unwrap()
    .text;
    let refresh = request(
        METHOD_REFRESH,
        TransactionId::new(),
        vec![],
        Some((&cred, &nonce)),
    );
    assert_eq!(code(&reply_of(f.send_at(later, t, &refresh))), None);
    // ...but not allocate anew.
    let alloc = request(
        METHOD_ALLOCATE,
        TransactionId::new(),
        vec![udp()],
        Some((&cred, &nonce)),
    );
    assert_eq!(
        code(&reply_of(f.send_at(later, tuple(4002), &alloc))),
        Some(401)
    );
    // Once the peer has left, refreshing fails too, and its allocations can be closed.
    f.members.lock().unwrap().clear();
    let refresh = request(
        METHOD_REFRESH,
        TransactionId::new(),
        vec![],
        Some((&cred, &nonce)),
    );
    assert_eq!(code(&reply_of(f.send_at(later, t, &refresh))), Some(401));
    assert_eq!(
        f.core.close_peer(
            &Scope::native(room.clone()),
            &peer_id,
            CloseReason::PeerLeft,
            Instant::now()
        ),
        1
    );
    assert_eq!(f.core.allocation_count(), 0);
}

#[test]
fn another_credential_on_the_same_allocation_gets_441() {
    let f = fixture();
    let t = tuple(4000);
    f.allocate(t, &rest(UNIX + 600, "bob"));
    let nonce = f.nonce(tuple(4001));
    let other = rest(UNIX + 600, "eve");
    let req = request(
        METHOD_REFRESH,
        TransactionId::new(),
        vec![],
        Some((&other, &nonce)),
    );
    assert_eq!(code(&reply_of(f.send(t, &req))), Some(441));
}

#[test]
fn unsupported_transport_gets_442_and_missing_transport_400() {
    let f = fixture();
    let t = tuple(4000);
    let nonce = f.nonce(t);
    let cred = rest(UNIX + 600, "bob");
    let tcp: Box<dyn Setter> = Box::new(RequestedTransport {
        protocol: PROTO_TCP,
    });
    assert_eq!(
        code(&reply_of(f.send(
            t,
            &request(
                METHOD_ALLOCATE,
                TransactionId::new(),
                vec![tcp],
                Some((&cred, &nonce))
            )
        ))),
        Some(442)
    );
    assert_eq!(
        code(&reply_of(f.send(
            t,
            &request(
                METHOD_ALLOCATE,
                TransactionId::new(),
                vec![],
                Some((&cred, &nonce))
            )
        ))),
        Some(400)
    );
}

#[test]
fn permissions_channels_and_policy() {
    let f = fixture();
    let t = tuple(4000);
    let cred = rest(UNIX + 600, "bob");
    f.allocate(t, &cred);
    let nonce = f.nonce(tuple(4001));
    let auth = Some((&cred, nonce.as_str()));
    let perm = |peers: Vec<Box<dyn Setter>>| {
        code(&reply_of(f.send(
            t,
            &request(METHOD_CREATE_PERMISSION, TransactionId::new(), peers, auth),
        )))
    };
    assert_eq!(perm(vec![peer("8.8.8.8:1"), peer("1.1.1.1:2")]), None);
    assert_eq!(
        perm(vec![peer("8.8.4.4:1"), peer("10.0.0.1:2")]),
        Some(403),
        "one refused peer refuses all"
    );
    assert_eq!(perm(vec![peer("[::ffff:127.0.0.1]:9")]), Some(403));
    assert_eq!(perm(vec![peer("[2606:4700::1]:9")]), Some(443));
    assert_eq!(perm(vec![]), Some(400));
    let a = f.core.get(&t).unwrap();
    assert!(
        a.state
            .lock()
            .unwrap()
            .is_permitted(f.t0, "1.1.1.1:9".parse().unwrap())
    );
    assert!(
        !a.state
            .lock()
            .unwrap()
            .is_permitted(f.t0, "8.8.4.4:1".parse().unwrap())
    );

    let bind = |n: u16, p: &str| {
        let attrs: Vec<Box<dyn Setter>> = vec![Box::new(ChannelNumber(n)), peer(p)];
        code(&reply_of(f.send(
            t,
            &request(METHOD_CHANNEL_BIND, TransactionId::new(), attrs, auth),
        )))
    };
    assert_eq!(bind(0x4000, "9.9.9.9:7"), None);
    assert_eq!(bind(0x4000, "9.9.9.9:8"), Some(400));
    assert_eq!(bind(0x3000, "9.9.9.9:8"), Some(400));
    assert_eq!(bind(0x8000, "9.9.9.9:8"), Some(400));
    assert_eq!(bind(0x4001, "0.0.0.0:8"), Some(403));
    assert_eq!(
        a.state.lock().unwrap().channel_peer(f.t0, 0x4000),
        Some("9.9.9.9:7".parse().unwrap())
    );
}

#[test]
fn relayed_addresses_of_live_allocations_are_allowed_peers() {
    let f = fixture();
    let (ta, tb) = (tuple(4000), tuple(4001));
    let cred = rest(UNIX + 600, "bob");
    f.allocate(ta, &cred);
    f.allocate(tb, &cred);
    let b_relayed = f.core.get(&tb).unwrap().relayed;
    assert!(
        b_relayed.ip().is_loopback(),
        "the fake relay is on loopback, which policy denies"
    );
    let nonce = f.nonce(tuple(4002));
    let req = request(
        METHOD_CREATE_PERMISSION,
        TransactionId::new(),
        vec![peer(&b_relayed.to_string())],
        Some((&cred, &nonce)),
    );
    assert_eq!(code(&reply_of(f.send(ta, &req))), None);
}

#[test]
fn own_addresses_are_no_peers_but_their_live_relays_are() {
    let f = fixture_own();
    let (ta, tb) = (tuple(4000), tuple(4001));
    let cred = rest(UNIX + 600, "bob");
    f.allocate(ta, &cred);
    f.allocate(tb, &cred);
    let b_relayed = f.core.get(&tb).unwrap().relayed.to_string();
    assert!(b_relayed.starts_with(OWN), "{b_relayed}");
    // A local service on another port of the relay address, and the TURN listener.
    let service = format!("{OWN}:5353");
    assert_eq!(f.permit(ta, &cred, &[&service]), Some(403));
    assert_eq!(f.bind(ta, &cred, 0x4000, &service), Some(403));
    assert_eq!(f.permit(ta, &cred, &[&format!("{OWN}:3478")]), Some(403));
    assert_eq!(
        (f.refusals("own_address"), f.refusals("own_socket")),
        (2, 1)
    );
    // The other allocation's relayed address is a peer.
    assert_eq!(f.permit(ta, &cred, &[&b_relayed]), None);
    assert_eq!(f.bind(ta, &cred, 0x4001, &b_relayed), None);
}

#[test]
fn a_live_relay_is_a_peer_for_the_relays_of_its_ip_only() {
    let f = fixture();
    let (ta, tb) = (tuple(4000), tuple(4001));
    let cred = rest(UNIX + 600, "bob");
    f.allocate(ta, &cred);
    f.allocate(tb, &cred);
    let b_relayed = f.core.get(&tb).unwrap().relayed;
    assert_eq!(f.permit(ta, &cred, &[&b_relayed.to_string()]), None);
    let a = f.core.get(&ta).unwrap();
    let is_relay = |p: &SocketAddr| f.core.relay_at(p, None);
    let passes = |port| {
        let peer = SocketAddr::new(b_relayed.ip(), port);
        a.state.lock().unwrap().passes(f.t0, peer, is_relay)
    };
    // Data from the relay passes; from any other port of its IP (the listener, a local service) not.
    assert!(passes(b_relayed.port()));
    assert!(!passes(3478));
    assert!(!passes(b_relayed.port() + 1));
    // A channel to the relay is as narrow.
    assert_eq!(f.bind(tb, &cred, 0x4000, &a.relayed.to_string()), None);
    let b = f.core.get(&tb).unwrap();
    let from_a_ip = SocketAddr::new(a.relayed.ip(), 3478);
    assert!(!b.state.lock().unwrap().passes(f.t0, from_a_ip, is_relay));
    assert!(b.state.lock().unwrap().passes(f.t0, a.relayed, is_relay));
}

/// A Send indication to `peer` with `data`.
fn send_indication(peer_addr: &str, data: &[u8]) -> Vec<u8> {
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(METHOD_SEND, CLASS_INDICATION)),
        peer(peer_addr),
        Box::new(turn::proto::data::Data(data.to_vec())),
    ];
    let mut m = Message::new();
    m.build(&setters).unwrap();
    m.raw
}

#[test]
fn send_indications_reach_exactly_what_data_may_come_from() {
    let f = fixture_own();
    let (ta, tb) = (tuple(4000), tuple(4001));
    let cred = rest(UNIX + 600, "bob");
    f.allocate(ta, &cred);
    f.allocate(tb, &cred);
    let b_relayed = f.core.get(&tb).unwrap().relayed.to_string();
    assert_eq!(f.permit(ta, &cred, &[&b_relayed]), None);
    // The permission for the other relay does not reach the TURN listener or a local service.
    for target in [format!("{OWN}:3478"), format!("{OWN}:5353")] {
        let sent = f.send(ta, &send_indication(&target, b"hi"));
        assert!(matches!(sent, Handled::Nothing), "{target}");
    }
    assert_eq!(f.core.stats.no_permission.get(), 2);
    let sent = f.send(ta, &send_indication(&b_relayed, b"hi"));
    assert!(matches!(sent, Handled::Send { .. }));
}

/// Browsers release relays they have already signalled (Chromium keeps one per network),
/// and the other side still asks for a permission to one. Firefox keeps one permission
/// per IP: a permission to any relay of the server, even a released one, must reach the
/// live relays on that IP, and a 403 would make Firefox give up on the whole IP.
#[test]
fn a_permission_to_one_relay_reaches_every_live_relay_of_its_ip() {
    let f = fixture_own();
    let (ta, tb, tc) = (tuple(4000), tuple(4001), tuple(4002));
    let cred = rest(UNIX + 600, "bob");
    for t in [ta, tb, tc] {
        f.allocate(t, &cred);
    }
    let b_relayed = f.core.get(&tb).unwrap().relayed.to_string();
    let c_relayed = f.core.get(&tc).unwrap().relayed.to_string();
    f.core.close(&tb, CloseReason::Refresh, Instant::now());
    // Permission for the released relay only (as Firefox asks): success.
    assert_eq!(f.permit(ta, &cred, &[&b_relayed]), None);
    assert_eq!(f.bind(ta, &cred, 0x4000, &b_relayed), None);
    // Sends reach the live relay on the same IP, not the released one.
    let sent = f.send(ta, &send_indication(&c_relayed, b"hi"));
    assert!(matches!(sent, Handled::Send { .. }));
    let sent = f.send(ta, &send_indication(&b_relayed, b"hi"));
    assert!(matches!(sent, Handled::Nothing));
    // Nor a local service or listener on that IP, which stay refused outright.
    for other in [format!("{OWN}:3478"), format!("{OWN}:5353")] {
        let sent = f.send(ta, &send_indication(&other, b"hi"));
        assert!(matches!(sent, Handled::Nothing), "{other}");
        assert_eq!(f.permit(ta, &cred, &[&other]), Some(403), "{other}");
    }
    assert_eq!(f.core.stats.no_permission.get(), 3);
}

#[test]
fn a_reload_applies_the_new_peer_lists_to_live_permissions_and_channels() {
    let f = fixture();
    let t = tuple(4000);
    let cred = rest(UNIX + 600, "bob");
    f.allocate(t, &cred);
    let config = || (**f.core.config.load()).clone();
    let cidr = |c: &str| c.parse::<Cidr>().unwrap();
    f.core
        .reconfigure(config(), vec![cidr("10.0.0.0/8")], vec![]);
    assert_eq!(
        f.permit(t, &cred, &["1.1.1.1:1", "8.8.8.8:1", "10.0.0.1:5"]),
        None
    );
    assert_eq!(f.bind(t, &cred, 0x4000, "10.0.0.2:6"), None);
    assert_eq!(f.bind(t, &cred, 0x4001, "1.1.1.1:7"), None);
    // 10/8 is no longer allowed and 8.8.8.0/24 is denied: gone at once, not at expiry.
    f.core
        .reconfigure(config(), vec![], vec![cidr("8.8.8.0/24")]);
    let a = f.core.get(&t).unwrap();
    let state = a.state.lock().unwrap();
    let permitted = |p: &str| state.is_permitted(f.t0, p.parse().unwrap());
    assert!(permitted("1.1.1.1:1"));
    assert!(!permitted("8.8.8.8:1"));
    assert!(!permitted("10.0.0.1:5"));
    assert!(!permitted("10.0.0.2:6"));
    assert_eq!(state.channel_peer(f.t0, 0x4000), None);
    assert!(state.channel_peer(f.t0, 0x4001).is_some());
    let revoked = &f.core.stats.policy_revocations;
    assert_eq!(
        (
            revoked.get(Revocation::Permission),
            revoked.get(Revocation::Channel)
        ),
        (3, 1)
    );
}

#[test]
fn a_relay_that_goes_away_is_out_of_reach_at_once() {
    let f = fixture();
    let (ta, tb) = (tuple(4000), tuple(4001));
    let cred = rest(UNIX + 600, "bob");
    f.allocate(ta, &cred);
    f.allocate(tb, &cred);
    let b_relayed = f.core.get(&tb).unwrap().relayed;
    assert_eq!(f.bind(ta, &cred, 0x4000, &b_relayed.to_string()), None);
    let is_relay = |p: &SocketAddr| f.core.relay_at(p, None);
    let a = f.core.get(&ta).unwrap();
    assert!(a.state.lock().unwrap().passes(f.t0, b_relayed, is_relay));
    f.core.close(&tb, CloseReason::Refresh, Instant::now());
    // Its port may be bound by anything now: nothing passes to or from it.
    assert!(!a.state.lock().unwrap().passes(f.t0, b_relayed, is_relay));
    let sent = f.send(ta, &send_indication(&b_relayed.to_string(), b"hi"));
    assert!(matches!(sent, Handled::Nothing));
}

#[test]
fn permissions_are_capped_per_request_and_per_allocation_with_508() {
    let f = fixture();
    let t = tuple(4000);
    let cred = rest(UNIX + 600, "bob");
    f.allocate(t, &cred);
    let addrs: Vec<String> = (0..=crate::turn::allocation::MAX_PERMISSIONS)
        .map(|i| format!("8.8.{}.{}:9", i / 256, i % 256))
        .collect();
    let peers: Vec<&str> = addrs.iter().map(String::as_str).collect();
    assert_eq!(
        f.permit(t, &cred, &peers[..=MAX_PEERS_PER_REQUEST]),
        Some(508)
    );
    let limits = &f.core.stats.permission_refusals;
    assert_eq!(limits.get(PermissionLimit::PeersPerRequest), 1);
    let (fill, last) = peers.split_at(crate::turn::allocation::MAX_PERMISSIONS);
    for chunk in fill.chunks(MAX_PEERS_PER_REQUEST) {
        assert_eq!(f.permit(t, &cred, chunk), None);
    }
    // Full: a new peer is refused, by CreatePermission and by ChannelBind; refreshing is fine.
    assert_eq!(f.permit(t, &cred, last), Some(508));
    assert_eq!(f.bind(t, &cred, 0x4000, last[0]), Some(508));
    assert_eq!(f.permit(t, &cred, &fill[..3]), None);
    assert_eq!(f.bind(t, &cred, 0x4000, fill[0]), None);
    assert_eq!(limits.get(PermissionLimit::PerAllocation), 2);
}

#[test]
fn a_send_to_a_listener_of_a_readmitted_own_address_is_refused() {
    let allow = vec![format!("{OWN}/32").parse().unwrap()];
    let f = fixture_with_policy(
        |c| c.external_ip = Some(OWN.parse().unwrap()),
        own_policy().with_lists(allow, vec![]),
    );
    let t = tuple(4000);
    let cred = rest(UNIX + 600, "bob");
    f.allocate(t, &cred);
    // allow_peers re-admits the address, and a permission opens it, but not its listener.
    assert_eq!(f.permit(t, &cred, &[&format!("{OWN}:5353")]), None);
    assert_eq!(f.permit(t, &cred, &[&format!("{OWN}:3478")]), Some(403));
    let listener = f.send(t, &send_indication(&format!("{OWN}:3478"), b"hi"));
    assert!(matches!(listener, Handled::Nothing));
    assert_eq!(f.refusals("own_socket"), 2);
    for port in [5353, 5354] {
        let service = f.send(t, &send_indication(&format!("{OWN}:{port}"), b"hi"));
        assert!(matches!(service, Handled::Send { .. }), "{port}");
    }
}

#[test]
fn refresh_zero_deletes_and_later_requests_get_437() {
    let f = fixture();
    let t = tuple(4000);
    let cred = rest(UNIX + 600, "bob");
    f.allocate(t, &cred);
    let nonce = f.nonce(tuple(4001));
    let zero: Box<dyn Setter> = Box::new(Lifetime(Duration::ZERO));
    let req = request(
        METHOD_REFRESH,
        TransactionId::new(),
        vec![zero],
        Some((&cred, &nonce)),
    );
    assert_eq!(code(&reply_of(f.send(t, &req))), None);
    assert_eq!(f.core.allocation_count(), 0);
    let req = request(
        METHOD_REFRESH,
        TransactionId::new(),
        vec![],
        Some((&cred, &nonce)),
    );
    assert_eq!(code(&reply_of(f.send(t, &req))), Some(437));
}

#[test]
fn lifetimes_are_capped_and_allocations_expire() {
    let f = fixture();
    let t = tuple(4000);
    let cred = rest(UNIX + 600, "bob");
    f.allocate(t, &cred);
    let nonce = f.nonce(tuple(4001));
    let long: Box<dyn Setter> = Box::new(Lifetime(Duration::from_secs(86_400)));
    let r = reply_of(f.send(
        t,
        &request(
            METHOD_REFRESH,
            TransactionId::new(),
            vec![long],
            Some((&cred, &nonce)),
        ),
    ));
    let mut lifetime = Lifetime::default();
    lifetime.get_from(&decode(&r)).unwrap();
    assert_eq!(lifetime.0, Duration::from_secs(3600));
    assert_eq!(f.core.sweep(f.t0 + Duration::from_secs(3599)), 0);
    assert_eq!(f.core.sweep(f.t0 + Duration::from_secs(3600)), 1);
    assert_eq!(f.core.allocation_count(), 0);
}

#[test]
fn quotas_answer_486_and_508() {
    let f = fixture_with(|c| {
        c.max_allocations_per_credential = 1;
        c.max_allocations = 2;
    });
    let cred = rest(UNIX + 600, "bob");
    assert_eq!(code(&f.allocate(tuple(4000), &cred)), None);
    assert_eq!(code(&f.allocate(tuple(4001), &cred)), Some(486));
    assert_eq!(
        code(&f.allocate(tuple(4002), &rest(UNIX + 600, "eve"))),
        None
    );
    assert_eq!(
        code(&f.allocate(tuple(4003), &rest(UNIX + 600, "mallory"))),
        Some(508)
    );
}

#[test]
fn malformed_and_truncated_input_is_counted_not_fatal() {
    let f = fixture();
    let t = tuple(4000);
    let good = request(METHOD_BINDING, TransactionId::new(), vec![], None);
    for n in [0, 1, 19, 20, 25, good.len() - 1] {
        assert!(
            matches!(f.send(t, &good[..n]), Handled::Nothing),
            "truncated to {n}"
        );
    }
    let mut corrupt = good.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xFF;
    assert!(
        matches!(f.send(t, &corrupt), Handled::Nothing),
        "bad FINGERPRINT"
    );
    assert!(f.core.stats.malformed.get() >= 6);
    // A response or an unknown method is not fatal either.
    let mut resp = good.clone();
    resp[0] = 0x01;
    resp[1] = 0x01;
    let _ = f.send(t, &resp);
    let unknown = request(
        stun::message::METHOD_CONNECT,
        TransactionId::new(),
        vec![],
        None,
    );
    assert_eq!(code(&reply_of(f.send(t, &unknown))), Some(400));
}

#[test]
fn send_indications_need_a_permission() {
    let f = fixture();
    let t = tuple(4000);
    let cred = rest(UNIX + 600, "bob");
    f.allocate(t, &cred);
    let send = |p: &str| {
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_SEND, CLASS_INDICATION)),
            peer(p),
            Box::new(turn::proto::data::Data(b"hi".to_vec())),
        ];
        let mut m = Message::new();
        m.build(&setters).unwrap();
        f.send(t, &m.raw)
    };
    assert!(matches!(send("8.8.8.8:53"), Handled::Nothing));
    f.core
        .get(&t)
        .unwrap()
        .state
        .lock()
        .unwrap()
        .permit(f.t0, "8.8.8.8:1".parse().unwrap(), Reach::AnyPort)
        .unwrap();
    match send("8.8.8.8:53") {
        Handled::Send { peer, data, .. } => {
            assert_eq!(peer, "8.8.8.8:53".parse::<SocketAddr>().unwrap());
            assert_eq!(data, b"hi");
        }
        _ => panic!("expected a send"),
    }
}

/// An attribute with raw bytes, for attributes whose setter hides its fields.
struct Raw(stun::attributes::AttrType, Vec<u8>);

impl Setter for Raw {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        m.add(self.0, &self.1);
        Ok(())
    }
}

#[test]
fn even_port_with_reservation_then_reservation_token() {
    let f = fixture();
    let cred = rest(UNIX + 600, "bob");
    let nonce = f.nonce(tuple(4000));
    let auth = Some((&cred, nonce.as_str()));
    let even: Box<dyn Setter> = Box::new(Raw(stun::attributes::ATTR_EVEN_PORT, vec![0x80]));
    let r = reply_of(f.send(
        tuple(4000),
        &request(
            METHOD_ALLOCATE,
            TransactionId::new(),
            vec![udp(), even],
            auth,
        ),
    ));
    assert_eq!(code(&r), None);
    let m = decode(&r);
    let mut relayed = RelayedAddress::default();
    relayed.get_from(&m).unwrap();
    assert_eq!(relayed.port % 2, 0);
    let token = m.get(stun::attributes::ATTR_RESERVATION_TOKEN).unwrap();
    let with_token = |t: Vec<u8>| -> Vec<Box<dyn Setter>> {
        vec![
            udp(),
            Box::new(Raw(stun::attributes::ATTR_RESERVATION_TOKEN, t)),
        ]
    };
    let r = reply_of(f.send(
        tuple(4001),
        &request(
            METHOD_ALLOCATE,
            TransactionId::new(),
            with_token(token.clone()),
            auth,
        ),
    ));
    assert_eq!(code(&r), None);
    let mut second = RelayedAddress::default();
    second.get_from(&decode(&r)).unwrap();
    assert_eq!(second.port, relayed.port + 1);
    // A token is good once.
    let r = reply_of(f.send(
        tuple(4002),
        &request(
            METHOD_ALLOCATE,
            TransactionId::new(),
            with_token(token),
            auth,
        ),
    ));
    assert_eq!(code(&r), Some(508));
}

#[test]
fn attributes_after_message_integrity_are_ignored() {
    let f = fixture();
    let t = tuple(4000);
    let cred = rest(UNIX + 600, "bob");
    let nonce = f.nonce(t);
    let auth = Some((&cred, nonce.as_str()));
    // An Allocate without LIFETIME gets the default, whatever is appended after the integrity.
    let long: Box<dyn Setter> = Box::new(Lifetime(Duration::from_secs(3600)));
    let r = reply_of(f.send(
        t,
        &request_with_trailer(
            METHOD_ALLOCATE,
            TransactionId::new(),
            vec![udp()],
            auth,
            vec![long],
        ),
    ));
    assert_eq!(
        code(&r),
        None,
        "MESSAGE-INTEGRITY verifies on the covered part"
    );
    let mut lifetime = Lifetime::default();
    lifetime.get_from(&decode(&r)).unwrap();
    assert_eq!(lifetime.0, Duration::from_secs(600));
    // A LIFETIME of zero appended to a Refresh does not delete the allocation...
    let zero: Box<dyn Setter> = Box::new(Lifetime(Duration::ZERO));
    let refresh = request_with_trailer(
        METHOD_REFRESH,
        TransactionId::new(),
        vec![],
        auth,
        vec![zero],
    );
    assert_eq!(code(&reply_of(f.send(t, &refresh))), None);
    assert_eq!(f.core.allocation_count(), 1);
    // ...and an appended XOR-PEER-ADDRESS gets no permission.
    let perm = request_with_trailer(
        METHOD_CREATE_PERMISSION,
        TransactionId::new(),
        vec![peer("8.8.8.8:1")],
        auth,
        vec![peer("1.1.1.1:1")],
    );
    assert_eq!(code(&reply_of(f.send(t, &perm))), None);
    let a = f.core.get(&t).unwrap();
    let state = a.state.lock().unwrap();
    assert!(state.is_permitted(f.t0, "8.8.8.8:1".parse().unwrap()));
    assert!(!state.is_permitted(f.t0, "1.1.1.1:1".parse().unwrap()));
    drop(state);
    assert_eq!(
        f.core
            .stats
            .protocol_refusals
            .get(ProtocolRule::AfterIntegrity),
        3
    );
}

/// The UNKNOWN-ATTRIBUTES of a response.
fn unknown_of(bytes: &[u8]) -> Vec<u16> {
    let mut u = stun::uattrs::UnknownAttributes(vec![]);
    u.get_from(&decode(bytes)).unwrap();
    u.0.iter().map(|t| t.value()).collect()
}

fn raw(typ: u16, value: &[u8]) -> Box<dyn Setter> {
    Box::new(Raw(stun::attributes::AttrType(typ), value.to_vec()))
}

#[test]
fn unknown_comprehension_required_attributes_get_420_in_binding_requests() {
    let f = fixture();
    let t = tuple(4000);
    let binding = |attrs| {
        reply_of(f.send(
            t,
            &request(METHOD_BINDING, TransactionId::new(), attrs, None),
        ))
    };
    // CHANGE-REQUEST (RFC 5780) is not done here; 0x7F00 is nobody's.
    let r = binding(vec![
        raw(0x0003, &[0, 0, 0, 6]),
        raw(0x7F00, &[1]),
        raw(0x7F00, &[2]),
    ]);
    assert_eq!(code(&r), Some(420));
    assert_eq!(unknown_of(&r), [0x0003, 0x7F00]);
    assert!(!decode(&r).contains(ATTR_MESSAGE_INTEGRITY));
    // Unknown comprehension-optional attributes and ICE's own are fine.
    let r = binding(vec![
        raw(0xC057, &[0, 1, 0, 0]),
        Box::new(stun::textattrs::TextAttribute::new(
            stun::attributes::ATTR_SOFTWARE,
            "x".into(),
        )),
        raw(0x0024, &[0, 0, 0, 1]),
        raw(0x0025, &[]),
    ]);
    assert_eq!(code(&r), None);
    assert_eq!(
        f.core
            .stats
            .protocol_refusals
            .get(ProtocolRule::UnknownAttribute),
        1
    );
}

#[test]
fn unknown_comprehension_required_attributes_get_420_after_authentication() {
    let f = fixture();
    let t = tuple(4000);
    let cred = rest(UNIX + 600, "bob");
    // The first, unauthenticated request is challenged as usual.
    let r = reply_of(f.send(
        t,
        &request(
            METHOD_ALLOCATE,
            TransactionId::new(),
            vec![udp(), raw(0x7F00, &[])],
            None,
        ),
    ));
    assert_eq!(code(&r), Some(401));
    let nonce = nonce_of(&r);
    let r = reply_of(f.send(
        t,
        &request(
            METHOD_ALLOCATE,
            TransactionId::new(),
            vec![udp(), raw(0x7F00, &[])],
            Some((&cred, &nonce)),
        ),
    ));
    assert_eq!(code(&r), Some(420));
    assert_eq!(unknown_of(&r), [0x7F00]);
    let key = auth::long_term_key(&cred.0, REALM, &cred.1);
    stun::integrity::MessageIntegrity(key)
        .check(&mut decode(&r))
        .expect("the 420 is signed with the request's key");
    assert_eq!(f.core.allocation_count(), 0);
    // An unknown attribute on an allocation's later request refuses that request only.
    assert_eq!(code(&f.allocate(t, &cred)), None);
    let r = reply_of(f.send(
        t,
        &request(
            METHOD_CREATE_PERMISSION,
            TransactionId::new(),
            vec![peer("8.8.8.8:1"), raw(0x0027, &[0, 9, 0, 0])],
            Some((&cred, &nonce)),
        ),
    ));
    assert_eq!(code(&r), Some(420));
    assert!(
        !f.core
            .get(&t)
            .unwrap()
            .state
            .lock()
            .unwrap()
            .is_permitted(f.t0, "8.8.8.8:53".parse().unwrap())
    );
}

#[test]
fn send_indications_with_unknown_comprehension_required_attributes_are_dropped() {
    let f = fixture();
    let t = tuple(4000);
    f.allocate(t, &rest(UNIX + 600, "bob"));
    f.core
        .get(&t)
        .unwrap()
        .state
        .lock()
        .unwrap()
        .permit(f.t0, "8.8.8.8:53".parse().unwrap(), Reach::AnyPort)
        .unwrap();
    let send = |extra: Vec<Box<dyn Setter>>| {
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_SEND, CLASS_INDICATION)),
            peer("8.8.8.8:53"),
            Box::new(turn::proto::data::Data(b"hi".to_vec())),
        ];
        setters.extend(extra);
        let mut m = Message::new();
        m.build(&setters).unwrap();
        f.send(t, &m.raw)
    };
    assert!(matches!(send(vec![raw(0x7F00, &[])]), Handled::Nothing));
    assert!(matches!(send(vec![raw(0xFF00, &[])]), Handled::Send { .. }));
    assert_eq!(
        f.core
            .stats
            .protocol_refusals
            .get(ProtocolRule::UnknownInIndication),
        1
    );
}

#[test]
fn dont_fragment_is_honoured_on_the_relay_or_refused_with_420() {
    let f = fixture();
    let cred = rest(UNIX + 600, "bob");
    let nonce = f.nonce(tuple(4000));
    let auth = Some((&cred, nonce.as_str()));
    let allocate = |port, df: bool| {
        let mut attrs = vec![udp()];
        if df {
            attrs.push(Box::new(turn::proto::dontfrag::DontFragmentAttr));
        }
        reply_of(f.send(
            tuple(port),
            &request(METHOD_ALLOCATE, TransactionId::new(), attrs, auth),
        ))
    };
    let df = || f.core.binder.dont_fragment.load(Ordering::Relaxed);
    assert_eq!(code(&allocate(4000, false)), None);
    assert_eq!(df(), 0, "only on request");
    assert_eq!(code(&allocate(4001, true)), None);
    assert_eq!(df(), 1, "the relay was told");
    // Where the relay cannot, the attribute is treated as unknown (RFC 8656 section 7.2).
    f.core
        .binder
        .no_dont_fragment
        .store(true, Ordering::Relaxed);
    let r = allocate(4002, true);
    assert_eq!(code(&r), Some(420));
    assert_eq!(unknown_of(&r), [0x001A]);
    assert!(f.core.get(&tuple(4002)).is_none());
    assert_eq!(
        f.core
            .stats
            .protocol_refusals
            .get(ProtocolRule::DontFragmentUnsupported),
        1
    );
}

#[test]
fn lifetimes_below_the_default_get_the_default() {
    let f = fixture();
    let t = tuple(4000);
    let cred = rest(UNIX + 600, "bob");
    let nonce = f.nonce(t);
    let auth = Some((&cred, nonce.as_str()));
    let lifetime_of = |r: &[u8]| {
        let mut l = Lifetime::default();
        l.get_from(&decode(r)).unwrap();
        l.0
    };
    // LIFETIME=0 in an Allocate does not make a throwaway allocation.
    let zero: Box<dyn Setter> = Box::new(Lifetime(Duration::ZERO));
    let r = reply_of(f.send(
        t,
        &request(
            METHOD_ALLOCATE,
            TransactionId::new(),
            vec![udp(), zero],
            auth,
        ),
    ));
    assert_eq!(code(&r), None);
    assert_eq!(lifetime_of(&r), Duration::from_secs(600));
    assert_eq!(f.core.sweep(f.t0 + Duration::from_secs(1)), 0);
    assert_eq!(f.core.allocation_count(), 1);
    // A short Refresh gets the default too; zero still deletes.
    let short: Box<dyn Setter> = Box::new(Lifetime(Duration::from_secs(5)));
    let r = reply_of(f.send(
        t,
        &request(METHOD_REFRESH, TransactionId::new(), vec![short], auth),
    ));
    assert_eq!(lifetime_of(&r), Duration::from_secs(600));
    assert_eq!(f.core.sweep(f.t0 + Duration::from_secs(599)), 0);
    assert_eq!(f.core.allocation_count(), 1);
}

fn family(typ: u16, family: u8) -> Box<dyn Setter> {
    raw(typ, &[family, 0, 0, 0])
}

const RAF: u16 = 0x0017;
const AAF: u16 = 0x8000;

impl Fixture {
    /// Allocates on `tuple(port)` with REQUESTED-TRANSPORT and `attrs`.
    fn allocate_with(
        &self,
        port: u16,
        auth: Option<(&Cred, &str)>,
        attrs: Vec<Box<dyn Setter>>,
    ) -> Vec<u8> {
        let mut all = vec![udp()];
        all.extend(attrs);
        reply_of(self.send(
            tuple(port),
            &request(METHOD_ALLOCATE, TransactionId::new(), all, auth),
        ))
    }
}

#[test]
fn requested_address_family_with_a_reservation_token_gets_400() {
    let f = fixture();
    let cred = rest(UNIX + 600, "bob");
    let nonce = f.nonce(tuple(4000));
    let auth = Some((&cred, nonce.as_str()));
    // A live token, so that only the family makes the difference.
    let r = f.allocate_with(4000, auth, vec![raw(0x0018, &[0x80])]);
    let token = decode(&r)
        .get(stun::attributes::ATTR_RESERVATION_TOKEN)
        .unwrap();
    for family in [0x01, 0x02] {
        let attrs = vec![raw(0x0022, &token), raw(RAF, &[family, 0, 0, 0])];
        assert_eq!(code(&f.allocate_with(4001, auth, attrs)), Some(400));
    }
    assert_eq!(f.core.allocation_count(), 1);
    assert_eq!(
        f.core
            .stats
            .protocol_refusals
            .get(ProtocolRule::AddressFamily),
        2
    );
    // The token was not spent: without a family it is good.
    let r = f.allocate_with(4001, auth, vec![raw(0x0022, &token)]);
    assert_eq!(code(&r), None);
}

#[test]
fn additional_address_family_other_than_ipv6_or_in_bad_company_gets_400() {
    let f = fixture();
    let cred = rest(UNIX + 600, "bob");
    let nonce = f.nonce(tuple(4000));
    let auth = Some((&cred, nonce.as_str()));
    let r = f.allocate_with(4000, auth, vec![raw(0x0018, &[0x80])]);
    let token = decode(&r)
        .get(stun::attributes::ATTR_RESERVATION_TOKEN)
        .unwrap();
    let refused: Vec<Vec<Box<dyn Setter>>> = vec![
        vec![family(AAF, 0x01)],
        vec![family(AAF, 0x03)],
        vec![family(RAF, 0x01), family(AAF, 0x02)],
        vec![family(AAF, 0x02), raw(0x0018, &[0x80])],
        vec![family(AAF, 0x02), raw(0x0022, &token)],
    ];
    let n = refused.len() as u64;
    for attrs in refused {
        assert_eq!(code(&f.allocate_with(4001, auth, attrs)), Some(400));
    }
    assert_eq!(f.core.allocation_count(), 1);
    assert_eq!(
        f.core
            .stats
            .protocol_refusals
            .get(ProtocolRule::AddressFamily),
        n
    );
    // A family that does not exist is not supported.
    let r = f.allocate_with(4001, auth, vec![family(RAF, 0x03)]);
    assert_eq!(code(&r), Some(440));
}

#[test]
fn an_additional_ipv6_relay_is_refused_in_part_with_address_error_code() {
    let f = fixture();
    let cred = rest(UNIX + 600, "bob");
    let nonce = f.nonce(tuple(4000));
    let r = f.allocate_with(4000, Some((&cred, &nonce)), vec![family(AAF, 0x02)]);
    assert_eq!(code(&r), None);
    let m = decode(&r);
    let mut relayed = RelayedAddress::default();
    relayed.get_from(&m).unwrap();
    assert!(relayed.ip.is_ipv4(), "the IPv4 relay is granted");
    let error = m.get(stun::attributes::AttrType(0x8001)).unwrap();
    assert_eq!(&error[..4], &[0x02, 0, 4, 40], "IPv6: 440");
    assert_eq!(&error[4..], b"Address Family not Supported");
    assert_eq!(
        f.core
            .stats
            .protocol_refusals
            .get(ProtocolRule::AdditionalFamily),
        1
    );
}

#[test]
fn refresh_naming_the_other_address_family_gets_443() {
    let f = fixture();
    let t = tuple(4000);
    let cred = rest(UNIX + 600, "bob");
    f.allocate(t, &cred);
    let nonce = f.nonce(tuple(4001));
    let refresh = |attrs| {
        code(&reply_of(f.send(
            t,
            &request(
                METHOD_REFRESH,
                TransactionId::new(),
                attrs,
                Some((&cred, &nonce)),
            ),
        )))
    };
    let zero = || -> Box<dyn Setter> { Box::new(Lifetime(Duration::ZERO)) };
    assert_eq!(refresh(vec![family(RAF, 0x02), zero()]), Some(443));
    assert_eq!(
        f.core.allocation_count(),
        1,
        "a refused Refresh deletes nothing"
    );
    assert_eq!(refresh(vec![family(RAF, 0x01)]), None);
    assert_eq!(refresh(vec![family(RAF, 0x01), zero()]), None);
    assert_eq!(f.core.allocation_count(), 0);
    assert_eq!(
        f.core
            .stats
            .protocol_refusals
            .get(ProtocolRule::RefreshFamily),
        1
    );
}

/// A credential minted for `peer` in `scope`, as signaling hands it out.
fn peer_cred(scope: &Scope, peer: &PeerId, expires: u64) -> Cred {
    let username = auth::peer_username(expires, scope, peer);
    let password = auth::rest_password(&Secret::new(SECRET.into()), &username);
    Cred(username, password)
}

/// A client at `ip`, port `port`.
fn tuple_at(ip: &str, port: u16) -> FiveTuple {
    FiveTuple {
        client: SocketAddr::new(ip.parse().unwrap(), port),
        ..tuple(port)
    }
}

impl Fixture {
    /// `peer` joins `scope` and gets a fresh peer id.
    fn join(&self, scope: &Scope) -> PeerId {
        let peer = PeerId::random();
        self.members
            .lock()
            .unwrap()
            .insert((scope.clone(), peer.clone()));
        peer
    }

    /// An Allocate by `cred` with a fresh nonce for `t`.
    fn allocate_req(&self, cred: &Cred, t: FiveTuple) -> Vec<u8> {
        let nonce = self.nonce(t);
        request(
            METHOD_ALLOCATE,
            TransactionId::new(),
            vec![udp()],
            Some((cred, &nonce)),
        )
    }

    fn quota_refusals(&self, quota: Quota) -> u64 {
        self.core.stats.quota_refusals.get(quota)
    }

    /// An Allocate with EVEN-PORT and the R bit at `after`: the error code, or the token.
    fn reserve_at(&self, after: Duration, t: FiveTuple, cred: &Cred) -> Result<Vec<u8>, u16> {
        let nonce = self.nonce(t);
        let even: Box<dyn Setter> = Box::new(Raw(ATTR_EVEN_PORT, vec![0x80]));
        let attrs = vec![udp(), even];
        let req = request(
            METHOD_ALLOCATE,
            TransactionId::new(),
            attrs,
            Some((cred, &nonce)),
        );
        let r = reply_of(self.send_at(after, t, &req));
        match code(&r) {
            Some(c) => Err(c),
            None => Ok(decode(&r).get(ATTR_RESERVATION_TOKEN).unwrap()),
        }
    }

    /// An Allocate with `token` at `after`; the error code, or `None` for success.
    fn take_at(&self, after: Duration, t: FiveTuple, cred: &Cred, token: &[u8]) -> Option<u16> {
        let nonce = self.nonce(t);
        let attrs = vec![
            udp(),
            Box::new(Raw(ATTR_RESERVATION_TOKEN, token.to_vec())) as Box<dyn Setter>,
        ];
        let req = request(
            METHOD_ALLOCATE,
            TransactionId::new(),
            attrs,
            Some((cred, &nonce)),
        );
        code(&reply_of(self.send_at(after, t, &req)))
    }
}

#[test]
fn a_peer_counts_once_whatever_the_expiry_of_its_credentials() {
    let f = fixture_with(|c| c.max_allocations_per_credential = 2);
    let team = Scope::native(RoomId::parse("team").unwrap());
    let peer = f.join(&team);
    // The credential of the join, then the ones pushed at each refresh: new usernames.
    let creds: Vec<Cred> = (1..=3)
        .map(|n| peer_cred(&team, &peer, UNIX + 600 * n))
        .collect();
    assert_ne!(creds[0].0, creds[1].0);
    assert_eq!(code(&f.allocate(tuple(4000), &creds[0])), None);
    assert_eq!(code(&f.allocate(tuple(4001), &creds[1])), None);
    assert_eq!(code(&f.allocate(tuple(4002), &creds[2])), Some(486));
    assert_eq!(f.quota_refusals(Quota::Credential), 1);
    // Another peer of the room has its own count.
    let other = f.join(&team);
    let cred = peer_cred(&team, &other, UNIX + 600);
    assert_eq!(code(&f.allocate(tuple(4003), &cred)), None);
    // A closed allocation frees its slot for any credential of its peer.
    assert!(
        f.core
            .close(&tuple(4000), CloseReason::Refresh, Instant::now())
    );
    assert_eq!(code(&f.allocate(tuple(4002), &creds[2])), None);
    // Credentials a backend mints count by their whole username, as before: the backend chose
    // who shares one (one fixed user, or a bare `<expiry>`, may be all of its clients).
    let f = fixture_with(|c| c.max_allocations_per_credential = 1);
    assert_eq!(
        code(&f.allocate(tuple(4000), &rest(UNIX + 600, "app"))),
        None
    );
    assert_eq!(
        code(&f.allocate(tuple(4001), &rest(UNIX + 601, "app"))),
        None
    );
    assert_eq!(
        code(&f.allocate(tuple(4002), &rest(UNIX + 600, "app"))),
        Some(486)
    );
}

#[test]
fn allocations_per_source_count_ipv4_addresses_and_ipv6_networks() {
    let f = fixture_with(|c| c.max_allocations_per_source = 2);
    let team = Scope::native(RoomId::parse("team").unwrap());
    // One person joining again and again: a fresh peer id, and credential, every time.
    let fresh = || peer_cred(&team, &f.join(&team), UNIX + 600);
    // Two addresses of one /64 are one source.
    assert_eq!(
        code(&f.allocate(tuple_at("2001:db8:1:2::10", 4000), &fresh())),
        None
    );
    assert_eq!(
        code(&f.allocate(tuple_at("2001:db8:1:2::20", 4001), &fresh())),
        None
    );
    assert_eq!(
        code(&f.allocate(tuple_at("2001:db8:1:2:ffff::1", 4002), &fresh())),
        Some(486)
    );
    assert_eq!(f.quota_refusals(Quota::Source), 1);
    // Another /64 is another source.
    assert_eq!(
        code(&f.allocate(tuple_at("2001:db8:1:3::10", 4003), &fresh())),
        None
    );
    // IPv4 counts per address, with its IPv4-mapped form; REST users count the same.
    let v4 = "198.51.100.20";
    assert_eq!(
        code(&f.allocate(tuple_at(v4, 4004), &rest(UNIX + 600, "a"))),
        None
    );
    assert_eq!(
        code(&f.allocate(tuple_at(v4, 4005), &rest(UNIX + 600, "b"))),
        None
    );
    let mapped = tuple_at("::ffff:198.51.100.20", 4006);
    assert_eq!(code(&f.allocate(mapped, &rest(UNIX + 600, "c"))), Some(486));
    assert_eq!(
        code(&f.allocate(tuple_at("198.51.100.21", 4007), &fresh())),
        None
    );
    assert_eq!(f.quota_refusals(Quota::Source), 2);
    // Closing an allocation frees its source's slot.
    assert!(
        f.core
            .close(&tuple_at(v4, 4004), CloseReason::Refresh, Instant::now())
    );
    assert_eq!(code(&f.allocate(mapped, &rest(UNIX + 600, "c"))), None);
}

#[test]
fn even_port_reservations_count_until_taken_or_expired() {
    let f = fixture_with(|c| {
        c.max_allocations_per_credential = 3;
        c.max_allocations_per_source = 3;
    });
    let bob = rest(UNIX + 600, "bob");
    let token = f.reserve_at(Duration::ZERO, tuple(4000), &bob).unwrap();
    // The allocation and the reserved port: two of bob's three.
    assert_eq!(code(&f.allocate(tuple(4001), &bob)), None);
    assert_eq!(code(&f.allocate(tuple(4002), &bob)), Some(486));
    assert_eq!(f.quota_refusals(Quota::Credential), 1);
    // The source counts it too (another user from the same address).
    assert_eq!(
        code(&f.allocate(tuple(4003), &rest(UNIX + 600, "eve"))),
        Some(486)
    );
    assert_eq!(f.quota_refusals(Quota::Source), 1);
    // Taking the reservation moves its slot to the new allocation: still three.
    assert_eq!(f.take_at(Duration::ZERO, tuple(4004), &bob, &token), None);
    assert_eq!(code(&f.allocate(tuple(4002), &bob)), Some(486));
    // Closing one frees one.
    assert!(
        f.core
            .close(&tuple(4001), CloseReason::Refresh, Instant::now())
    );
    assert_eq!(code(&f.allocate(tuple(4002), &bob)), None);

    // A reservation needs a slot of its own: with one left, EVEN-PORT with R is refused...
    let f = fixture_with(|c| c.max_allocations = 2);
    assert_eq!(code(&f.allocate(tuple(4000), &bob)), None);
    assert_eq!(f.reserve_at(Duration::ZERO, tuple(4001), &bob), Err(508));
    assert_eq!(f.quota_refusals(Quota::Total), 1);
    // ...with two, it is granted and fills the server...
    assert!(
        f.core
            .close(&tuple(4000), CloseReason::Refresh, Instant::now())
    );
    let token = f.reserve_at(Duration::ZERO, tuple(4001), &bob).unwrap();
    let at = Duration::from_secs;
    let req = f.allocate_req(&bob, tuple(4002));
    assert_eq!(
        code(&reply_of(f.send_at(at(29), tuple(4002), &req))),
        Some(508)
    );
    // ...until the reservation expires unused: its slot is free and its token gone.
    assert_eq!(f.core.sweep(f.t0 + at(30)), 0);
    let req = f.allocate_req(&bob, tuple(4002));
    assert_eq!(code(&reply_of(f.send_at(at(30), tuple(4002), &req))), None);
    assert!(
        f.core
            .close(&tuple(4002), CloseReason::Refresh, Instant::now())
    );
    assert_eq!(f.take_at(at(30), tuple(4003), &bob, &token), Some(508));
    assert_eq!(f.core.allocation_count(), 1);
    // Expiry frees the slot even before the sweep has run.
    let f = fixture_with(|c| c.max_allocations = 2);
    f.reserve_at(Duration::ZERO, tuple(4000), &bob).unwrap();
    let req = f.allocate_req(&bob, tuple(4001));
    assert_eq!(
        code(&reply_of(f.send_at(at(29), tuple(4001), &req))),
        Some(508)
    );
    let req = f.allocate_req(&bob, tuple(4001));
    assert_eq!(code(&reply_of(f.send_at(at(30), tuple(4001), &req))), None);
}

#[test]
fn a_reservation_taken_at_the_quota_is_taken_and_one_refused_stays() {
    let f = fixture_with(|c| c.max_allocations_per_credential = 2);
    let bob = rest(UNIX + 600, "bob");
    let token = f.reserve_at(Duration::ZERO, tuple(4000), &bob).unwrap();
    // bob is at its quota, yet may take its own reservation: it holds the slot.
    assert_eq!(f.take_at(Duration::ZERO, tuple(4001), &bob, &token), None);
    let f = fixture_with(|c| c.max_allocations_per_credential = 2);
    let token = f.reserve_at(Duration::ZERO, tuple(4000), &bob).unwrap();
    // Another user at its quota is refused, and the reservation stays for bob.
    let eve = rest(UNIX + 600, "eve");
    assert_eq!(
        code(&f.allocate(tuple_at("198.51.100.1", 4001), &eve)),
        None
    );
    assert_eq!(
        code(&f.allocate(tuple_at("198.51.100.1", 4002), &eve)),
        None
    );
    assert_eq!(
        f.take_at(Duration::ZERO, tuple_at("198.51.100.1", 4003), &eve, &token),
        Some(486)
    );
    assert_eq!(f.take_at(Duration::ZERO, tuple(4004), &bob, &token), None);
}

#[test]
fn each_dialect_has_its_own_rooms_for_the_per_room_quota() {
    let f = fixture_with(|c| c.max_allocations_per_room = 1);
    let team = RoomId::parse("team").unwrap();
    let native = Scope::native(team.clone());
    let sio = Scope::in_room(SIO, team.clone());
    let a = peer_cred(&native, &f.join(&native), UNIX + 600);
    let b = peer_cred(&sio, &f.join(&sio), UNIX + 600);
    assert_eq!(code(&f.allocate(tuple(4000), &a)), None);
    assert_eq!(
        code(&f.allocate(tuple(4001), &b)),
        None,
        "socket.io's team is another room"
    );
    // Each room of one name and dialect is full now.
    let c = peer_cred(&native, &f.join(&native), UNIX + 600);
    let d = peer_cred(&sio, &f.join(&sio), UNIX + 600);
    assert_eq!(code(&f.allocate(tuple(4002), &c)), Some(486));
    assert_eq!(code(&f.allocate(tuple(4003), &d)), Some(486));
    assert_eq!(f.quota_refusals(Quota::Room), 2);
    // A room credential counts with the native room of its name.
    let room_cred = {
        let username = auth::room_username(UNIX + 600, &team);
        let password = auth::rest_password(&Secret::new(SECRET.into()), &username);
        Cred(username, password)
    };
    assert_eq!(code(&f.allocate(tuple(4004), &room_cred)), Some(486));
    // The admin API closes a room by name: both dialects' allocations go.
    assert_eq!(
        f.core
            .close_room(&team, CloseReason::Revoked, Instant::now()),
        2
    );
    assert_eq!(code(&f.allocate(tuple(4002), &c)), None);
}

#[test]
fn a_native_room_named_like_the_plain_websocket_dialect_is_just_a_room() {
    let f = fixture_with(|c| c.max_allocations_per_room = 1);
    let legacy_name = Scope::native(RoomId::parse("_ws-legacy").unwrap());
    // A user logged in to the plain-WebSocket dialect...
    let user = f.join(&Scope::whole(WS));
    // ...whose peer id a native credential for the old pseudo-room names is refused: it is
    // checked against that native room, where this peer is not.
    let forged = peer_cred(&legacy_name, &user, UNIX + 600);
    assert_eq!(code(&f.allocate(tuple(4000), &forged)), Some(401));
    assert_eq!(f.core.stats.auth_failures.get(AuthFailure::NotInRoom), 1);
    // A native peer that joined the room of that name fills its per-room quota...
    let native = peer_cred(&legacy_name, &f.join(&legacy_name), UNIX + 600);
    assert_eq!(code(&f.allocate(tuple(4001), &native)), None);
    // ...which the plain-WebSocket users do not share: they have no per-room bucket at all.
    for port in [4002, 4003] {
        let cred = peer_cred(&Scope::whole(WS), &f.join(&Scope::whole(WS)), UNIX + 600);
        assert_eq!(code(&f.allocate(tuple(port), &cred)), None);
    }
    let own = peer_cred(&Scope::whole(WS), &user, UNIX + 600);
    assert_eq!(code(&f.allocate(tuple(4004), &own)), None);
    assert_eq!(f.quota_refusals(Quota::Room), 0);
    // The user's allocations close in its own scope, and only there.
    let any = RoomId::parse("anything").unwrap();
    assert!(f.core.has_peer(&Scope::whole(WS), &user));
    assert!(!f.core.has_peer(&Scope::native(any.clone()), &user));
    assert_eq!(
        f.core.close_peer(
            &Scope::native(any),
            &user,
            CloseReason::PeerLeft,
            Instant::now()
        ),
        0
    );
    assert_eq!(
        f.core.close_peer(
            &Scope::whole(WS),
            &user,
            CloseReason::PeerLeft,
            Instant::now()
        ),
        1
    );
    // The index forgets a peer with its last allocation.
    assert!(!f.core.has_peer(&Scope::whole(WS), &user));
    assert_eq!(
        f.core.close_peer(
            &Scope::whole(WS),
            &user,
            CloseReason::PeerLeft,
            Instant::now()
        ),
        0
    );
}

#[test]
fn unauthenticated_answers_are_limited_per_source_and_others_still_get_theirs() {
    let f = fixture_with(|c| c.challenges_per_source_s = 10);
    let burst = 10 * CHALLENGE_BURST_S as usize;
    let unauthenticated = || request(METHOD_ALLOCATE, TransactionId::new(), vec![udp()], None);
    // A flood from many ports of one address: the burst is answered, the rest is not.
    let answered = (0..burst * 3)
        .filter(|i| {
            matches!(
                f.send(tuple(1000 + *i as u16), &unauthenticated()),
                Handled::Reply(_)
            )
        })
        .count();
    assert_eq!(answered, burst);
    assert_eq!(f.core.stats.challenge_drops.get(), 2 * burst as u64);
    // Another source is answered, and the flooded one again at its rate.
    let other = FiveTuple {
        client: "203.0.113.77:4000".parse().unwrap(),
        ..tuple(4000)
    };
    assert_eq!(
        code(&reply_of(f.send(other, &unauthenticated()))),
        Some(401)
    );
    let later = Duration::from_millis(200);
    assert!(matches!(
        f.send_at(later, tuple(5000), &unauthenticated()),
        Handled::Reply(_)
    ));
}

#[test]
fn a_message_with_thousands_of_attributes_is_dropped_before_it_is_decoded() {
    let f = fixture();
    // A Binding request carrying 16,000 distinct unknown comprehension-required attributes.
    let mut m = vec![0u8; 20 + 4 * 16_000];
    m[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
    m[2..4].copy_from_slice(&((4 * 16_000) as u16).to_be_bytes());
    m[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    for i in 0..16_000u16 {
        let at = 20 + 4 * usize::from(i);
        m[at..at + 2].copy_from_slice(&(0x4000 + i).to_be_bytes());
    }
    assert!(matches!(f.send(tuple(4000), &m), Handled::Nothing));
    assert_eq!(f.core.stats.malformed.get(), 1);
}

#[test]
fn binding_answers_share_the_per_source_limit() {
    let f = fixture_with(|c| c.challenges_per_source_s = 1);
    let binding = || {
        let mut m = Message::new();
        m.build(&[
            Box::new(stun::message::BINDING_REQUEST),
            Box::new(TransactionId::new()),
        ])
        .unwrap();
        m.raw
    };
    let answered = (0..10)
        .filter(|_| matches!(f.send(tuple(4000), &binding()), Handled::Reply(_)))
        .count();
    assert_eq!(answered, CHALLENGE_BURST_S as usize);
}

#[test]
fn a_closed_allocation_is_dropped_at_once_and_found_no_more() {
    let f = fixture();
    let t = tuple(4000);
    let cred = rest(UNIX + 600, "bob");
    f.allocate(t, &cred);
    let a = f.core.get(&t).expect("allocated");
    let relayed = a.relayed;
    let weak = Arc::downgrade(&a);
    drop(a);
    assert!(f.core.by_relayed(&relayed).is_some());
    assert!(f.core.close(&t, CloseReason::Refresh, Instant::now()));
    // Nothing keeps it (and so its relay socket and port) alive: not the data path's index.
    assert!(weak.upgrade().is_none());
    assert!(f.core.get(&t).is_none());
    assert!(f.core.by_relayed(&relayed).is_none());
    // The same 5-tuple allocates anew and is found as the new allocation.
    f.allocate(t, &cred);
    let again = f.core.get(&t).expect("allocated again");
    assert_ne!(again.relayed, relayed);
    assert!(Arc::ptr_eq(
        &again,
        &f.core
            .by_relayed(&again.relayed)
            .expect("by relayed address")
    ));
}

/// `turn.fence`: a member's allocation opens permissions and channels only to addresses the
/// other members of its room are known by (announced through signaling, or their TURN
/// client and relayed addresses); a member alone, or another room, opens nothing; what a
/// member is known by goes when it leaves. Credentials of no room are not fenced.
#[test]
fn with_the_fence_a_member_reaches_what_the_others_of_its_room_are_known_by_only() {
    let f = fixture_with(|c| c.fence = true);
    let team = Scope::native(RoomId::parse("team").unwrap());
    let other = Scope::native(RoomId::parse("other").unwrap());
    let (ann, bob, eve) = (f.join(&team), f.join(&team), f.join(&other));
    let ann_cred = peer_cred(&team, &ann, UNIX + 600);
    let ta = tuple(4000);
    assert_eq!(code(&f.allocate(ta, &ann_cred)), None);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();

    assert_eq!(f.permit(ta, &ann_cred, &["8.8.4.4:5000"]), Some(403));
    assert_eq!(f.refusals(FENCE_CLASS), 1);
    // Announced by Ann herself, or by a member of another room: still out.
    f.core.announce(&team, &ann, &[ip("8.8.4.4")]);
    f.core.announce(&other, &eve, &[ip("8.8.4.4")]);
    assert_eq!(f.permit(ta, &ann_cred, &["8.8.4.4:5000"]), Some(403));
    assert_eq!(f.bind(ta, &ann_cred, 0x4000, "8.8.4.4:5000"), Some(403));
    // Announced by Bob, of her room: any port of it.
    f.core.announce(&team, &bob, &[ip("8.8.4.4")]);
    assert_eq!(f.permit(ta, &ann_cred, &["8.8.4.4:6000"]), None);
    assert_eq!(f.bind(ta, &ann_cred, 0x4000, "8.8.4.4:5000"), None);
    // Bob's allocation makes his address as TURN sees it, and his relay, reachable.
    let bob_cred = peer_cred(&team, &bob, UNIX + 600);
    let tb = FiveTuple {
        client: "9.9.9.9:7000".parse().unwrap(),
        ..tuple(4001)
    };
    assert_eq!(code(&f.allocate(tb, &bob_cred)), None);
    let bob_relayed = f.core.get(&tb).unwrap().relayed.to_string();
    assert_eq!(
        f.permit(ta, &ann_cred, &["9.9.9.9:7001", &bob_relayed]),
        None
    );
    assert_eq!(f.refusals(FENCE_CLASS), 3);

    // Bob leaves: new permissions to his addresses are refused.
    f.core
        .close_peer(&team, &bob, CloseReason::PeerLeft, Instant::now());
    assert_eq!(f.permit(ta, &ann_cred, &["9.9.9.9:7001"]), Some(403));
    assert_eq!(f.permit(ta, &ann_cred, &["8.8.4.4:6000"]), Some(403));
    // Credentials of no room (REST, static) reach what the policy allows, as before.
    let rest_cred = rest(UNIX + 600, "app");
    assert_eq!(code(&f.allocate(tuple(4002), &rest_cred)), None);
    assert_eq!(f.permit(tuple(4002), &rest_cred, &["8.8.4.4:1"]), None);
}

/// Ann and Bob of room `team` and Eve of room `other`, each allocated (from ports 4000,
/// 4001, 4002): each one's 5-tuple, credential and allocation.
fn two_rooms_allocated(f: &Fixture) -> [(FiveTuple, Cred, Arc<Allocation<()>>); 3] {
    let team = Scope::native(RoomId::parse("team").unwrap());
    let other = Scope::native(RoomId::parse("other").unwrap());
    [(&team, 4000), (&team, 4001), (&other, 4002)].map(|(scope, port)| {
        let peer = f.join(scope);
        let (t, cred) = (tuple(port), peer_cred(scope, &peer, UNIX + 600));
        assert_eq!(code(&f.allocate(t, &cred)), None);
        (t, cred, f.core.get(&t).unwrap())
    })
}

/// With the fence, relays of different rooms on the server's own address do not reach each
/// other, even with a permission for that address: not by Send, not from the other relay
/// (ChannelData: `route`'s tests).
#[test]
fn with_the_fence_relays_of_other_rooms_are_out_of_reach() {
    let f = fixture_with(|c| c.fence = true);
    let [(ta, ann, a), (tb, bob, b), (te, eve, e)] = two_rooms_allocated(&f);
    // Bob's relay makes the relay address reachable to Ann: her permission covers Eve's relay
    // on the same address too (a permission is for an IP).
    assert_eq!(f.permit(ta, &ann, &[&b.relayed.to_string()]), None);
    assert_eq!(f.bind(ta, &ann, 0x4000, &e.relayed.to_string()), None);
    assert_eq!(f.bind(ta, &ann, 0x4001, &b.relayed.to_string()), None);
    assert_eq!(f.permit(tb, &bob, &[&a.relayed.to_string()]), None);
    // Eve's allocation has a permission for the relay address from a room member of hers...
    let other = Scope::native(RoomId::parse("other").unwrap());
    f.core
        .announce(&other, &PeerId::random(), &[a.relayed.ip()]);
    assert_eq!(f.permit(te, &eve, &[&a.relayed.to_string()]), None);

    let to_eve = f.send(ta, &send_indication(&e.relayed.to_string(), b"hi"));
    assert!(matches!(to_eve, Handled::Nothing));
    let to_bob = f.send(ta, &send_indication(&b.relayed.to_string(), b"hi"));
    assert!(matches!(to_bob, Handled::Send { .. }));
    // What Eve's relay receives from Ann's, and Ann's from Eve's, does not pass.
    let relay_of_room = |me: Option<u64>, p: &SocketAddr| f.core.relay_at(p, me);
    let e_state = e.state.lock().unwrap();
    assert!(!e_state.passes(f.t0, a.relayed, |p| relay_of_room(e.fence, p)));
    let b_state = b.state.lock().unwrap();
    assert!(b_state.passes(f.t0, a.relayed, |p| relay_of_room(b.fence, p)));
}

/// Both ways' rates of the allocation of `t`.
fn rates(f: &Fixture, t: FiveTuple) -> [u64; 2] {
    let a = f.core.get(&t).unwrap();
    let state = a.state.locked();
    [state.budget.to_peer.rate(), state.budget.to_client.rate()]
}

#[test]
fn a_rooms_budget_is_shared_between_its_allocations_and_weighed_again_each_second() {
    let f = fixture_with(|c| c.max_room_bytes_per_s = 900_000);
    let room = rest(UNIX + 600, "room:team");
    let (ta, tb, tc) = (tuple(4000), tuple(4001), tuple(4002));
    // A newcomer gets an even share at once; the ones before keep theirs until the sweep.
    f.allocate(ta, &room);
    assert_eq!(rates(&f, ta), [900_000; 2]);
    f.allocate(tb, &room);
    assert_eq!(rates(&f, tb), [450_000; 2]);
    f.allocate(tc, &room);
    assert_eq!(rates(&f, tc), [300_000; 2]);
    // Outside any room, no budget.
    let other = tuple(4003);
    f.allocate(other, &rest(UNIX + 600, "bob"));
    assert_eq!(rates(&f, other), [0; 2]);

    f.core.sweep(f.t0 + Duration::from_secs(1));
    for t in [ta, tb, tc] {
        assert_eq!(rates(&f, t), [300_000; 2], "idle: even shares");
    }
    // A wants more toward its peers (it had a packet dropped); B and C are idle: A gets what
    // they leave, and keeps its share toward its client.
    let a = f.core.get(&ta).unwrap();
    let now = f.t0 + Duration::from_secs(1);
    while a.state.locked().budget.to_peer.pass(now, 1200).is_ok() {}
    f.core.sweep(f.t0 + Duration::from_secs(2));
    let idle = 900_000 / 3 / 4;
    assert_eq!(rates(&f, ta), [900_000 - 2 * idle, 300_000]);
    assert_eq!(rates(&f, tb), [idle, 300_000]);
    assert_eq!(rates(&f, tc), [idle, 300_000]);
    // A reload changes the budget within a second.
    let mut config = f.core.config.load().as_ref().clone();
    config.max_room_bytes_per_s = 0;
    config.max_allocation_bytes_per_s = 100_000;
    f.core.reconfigure(config, vec![], vec![]);
    f.core.sweep(f.t0 + Duration::from_secs(3));
    for t in [ta, tb, tc, other] {
        assert_eq!(rates(&f, t), [100_000; 2]);
    }
}

#[test]
fn send_indications_over_the_budget_are_dropped_and_counted() {
    let f = fixture_with(|c| c.max_allocation_bytes_per_s = 8000);
    let t = tuple(4000);
    let cred = rest(UNIX + 600, "bob");
    f.allocate(t, &cred);
    assert_eq!(f.permit(t, &cred, &["8.8.8.8:4000"]), None);
    let big = vec![1u8; 60_000];
    let sent = f.send(t, &send_indication("8.8.8.8:4000", &big));
    assert!(matches!(sent, Handled::Send { .. }));
    let sent = f.send(t, &send_indication("8.8.8.8:4000", &big));
    assert!(matches!(sent, Handled::Nothing));
    let drops = &f.core.stats.budget_drops;
    assert_eq!(
        drops.packets(Direction::ToPeer, BandwidthLimit::Allocation),
        1
    );
    assert_eq!(
        drops.bytes(Direction::ToPeer, BandwidthLimit::Allocation),
        60_000
    );
    assert_eq!(
        f.core.get(&t).unwrap().state.locked().budget.to_peer.bytes,
        60_000
    );
}

/// With `allow_peers` re-admitting the server's own address (a media server on this host), a
/// permission there opens its ports but the listeners (`Reach::OwnIp`); the fence still keeps
/// relays of other rooms out: not by Send, not from their relay.
#[test]
fn with_the_fence_a_readmitted_own_address_still_keeps_other_rooms_relays_out() {
    let policy = PeerPolicy::new(
        vec![format!("{OWN}/32").parse().unwrap()],
        vec![],
        vec![format!("{OWN}:3478").parse().unwrap()],
        vec![OWN.parse().unwrap()],
    )
    .with_relays([OWN.parse().unwrap()], RELAY_PORTS);
    let f = fixture_with_policy(
        |c| {
            c.external_ip = Some(OWN.parse().unwrap());
            c.fence = true;
        },
        policy,
    );
    let [(ta, ann, a), (_, _, b), (_, _, e)] = two_rooms_allocated(&f);
    // Bob's relay made the address reachable to Ann, and allow_peers opens all of it.
    assert_eq!(f.permit(ta, &ann, &[&b.relayed.to_string()]), None);
    assert_eq!(
        a.state.locked().permission(f.t0, b.relayed),
        Some(Reach::OwnIp)
    );
    let media = format!("{OWN}:7000");
    for (to, reaches) in [
        (e.relayed.to_string(), false),
        (b.relayed.to_string(), true),
        (media.clone(), true),
    ] {
        let sent = f.send(ta, &send_indication(&to, b"hi"));
        assert_eq!(matches!(sent, Handled::Send { .. }), reaches, "to {to}");
    }
    let state = a.state.locked();
    let from = |p: &str| p.parse::<SocketAddr>().unwrap();
    let relay = |p: &SocketAddr| f.core.relay_at(p, a.fence);
    assert!(!state.passes(f.t0, e.relayed, relay), "from Eve's relay");
    assert!(state.passes(f.t0, b.relayed, relay), "from Bob's relay");
    assert!(
        state.passes(f.t0, from(&media), relay),
        "from the media server"
    );
}
