//! Routing decided as data: allocations in no table, fake sinks, buffers laid out as the
//! server's receive slots and stream frames are (`HEADROOM` before the payload).

use std::time::Duration;

use stun::attributes::{ATTR_DATA, ATTR_XOR_PEER_ADDRESS};
use stun::message::{CLASS_INDICATION, METHOD_DATA, Message, MessageType};

use super::*;
use crate::turn::allocation::{CHANNEL_LIFETIME, PERMISSION_LIFETIME};
use crate::turn::budget::{BandwidthLimit, Direction};
use crate::turn::core::FiveTuple;
use crate::turn::policy::Reach;
use crate::turn::wire::{CHANNEL_HEADER, HEADROOM, Kind};

/// A relay whose way back to its client is a name, once granted.
#[derive(Debug)]
struct FakeRelay(Option<Sink>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Sink(&'static str);

impl Relay for FakeRelay {
    type Sink = Sink;
    fn client(&self) -> Option<&Sink> {
        self.0.as_ref()
    }
}

const TRANSPORTS: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];
/// A peer on the Internet.
const PEER: &str = "203.0.113.5:4000";
const PAYLOAD: &[u8] = b"hello";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A granted allocation of the client at `client` over `transport`, relayed at `relayed`,
/// whose sink is named `sink`.
fn allocation(
    transport: Transport,
    client: &str,
    relayed: &str,
    sink: Option<&'static str>,
    now: Instant,
) -> Arc<Allocation<FakeRelay>> {
    let tuple = FiveTuple {
        client: addr(client),
        server: addr("198.51.100.1:3478"),
        transport,
    };
    let relay = FakeRelay(sink.map(Sink));
    Arc::new(Allocation::detached(tuple, addr(relayed), relay, now))
}

/// ChannelData on `number` as a receive slot or a stream frame holds it: the header at
/// `HEADROOM`, then the payload, then room for padding (garbage, to see it zeroed).
/// Returns the buffer and the payload's range.
fn channel_data_buf(number: u16, payload: &[u8]) -> (Vec<u8>, Range<usize>) {
    let mut buf = vec![0xAA; HEADROOM + CHANNEL_HEADER + payload.len() + 3];
    buf[HEADROOM..HEADROOM + 2].copy_from_slice(&number.to_be_bytes());
    buf[HEADROOM + 2..HEADROOM + 4].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    let start = HEADROOM + CHANNEL_HEADER;
    buf[start..start + payload.len()].copy_from_slice(payload);
    (buf, start..start + payload.len())
}

/// A datagram from a peer as a relay's receive slot holds it: the payload at `HEADROOM`.
fn peer_buf(payload: &[u8]) -> (Vec<u8>, Range<usize>) {
    let mut buf = vec![0xAA; HEADROOM + payload.len() + 3];
    buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(payload);
    (buf, HEADROOM..HEADROOM + payload.len())
}

/// The lookup of relayed addresses among `table`.
fn among(
    table: &[Arc<Allocation<FakeRelay>>],
) -> impl FnOnce(&SocketAddr) -> Option<Arc<Allocation<FakeRelay>>> + '_ {
    |relayed| table.iter().find(|a| a.relayed == *relayed).cloned()
}

/// The peer address (as encoded: an IPv4 address in IPv6 form stays so) and the data of a
/// Data indication.
fn data_indication(bytes: &[u8]) -> (SocketAddr, Vec<u8>) {
    let mut m = Message::new();
    m.raw = bytes.to_vec();
    m.decode().expect("a whole STUN message");
    assert_eq!(m.typ, MessageType::new(METHOD_DATA, CLASS_INDICATION));
    let peer = m.get(ATTR_XOR_PEER_ADDRESS).expect("XOR-PEER-ADDRESS");
    let peer = wire::decode_xor_addr(&peer, &m.transaction_id.0).expect("an address");
    (peer, m.get(ATTR_DATA).unwrap())
}

/// ChannelData as a client gets it: `number`, the payload, and zeros to 4 bytes when padded.
fn channel_frame(number: u16, payload: &[u8], padded: bool) -> Vec<u8> {
    let mut frame = number.to_be_bytes().to_vec();
    frame.extend((payload.len() as u16).to_be_bytes());
    frame.extend(payload);
    while padded && !frame.len().is_multiple_of(4) {
        frame.push(0);
    }
    frame
}

#[test]
fn channel_data_goes_out_of_the_relay_to_the_channel_peer_over_any_client_transport() {
    let t0 = Instant::now();
    for transport in TRANSPORTS {
        let stats = Stats::default();
        let a = allocation(
            transport,
            "192.0.2.1:5000",
            "198.51.100.1:50000",
            Some("a"),
            t0,
        );
        a.state
            .lock()
            .unwrap()
            .bind_channel(t0, 0x4000, addr(PEER), Reach::AnyPort)
            .unwrap();
        let (mut buf, payload) = channel_data_buf(0x4000, PAYLOAD);
        let before = buf.clone();
        let route = channel_data(
            Some(Arc::clone(&a)),
            t0,
            0x4000,
            &mut buf,
            payload.clone(),
            among(&[]),
            &stats,
        );
        let Route::ToPeer {
            allocation,
            peer,
            payload: out,
        } = route
        else {
            panic!("{transport:?}: expected ToPeer, got {route:?}");
        };
        assert!(Arc::ptr_eq(&allocation, &a), "out of its own relay");
        assert_eq!(peer, addr(PEER));
        assert_eq!(out, payload, "the payload alone, unframed");
        assert_eq!(&buf[out], PAYLOAD);
        assert_eq!(buf, before, "nothing written");
        assert_eq!(a.state.locked().budget.to_peer.bytes, PAYLOAD.len() as u64);
        assert_eq!(stats.no_permission.get(), 0);
        assert_eq!(stats.relay_to_relay.get(), 0);
    }
}

#[test]
fn channel_data_on_an_unknown_channel_is_dropped_and_counted() {
    let t0 = Instant::now();
    let stats = Stats::default();
    let a = allocation(
        Transport::Udp,
        "192.0.2.1:5000",
        "198.51.100.1:50000",
        Some("a"),
        t0,
    );
    a.state
        .lock()
        .unwrap()
        .bind_channel(t0, 0x4000, addr(PEER), Reach::AnyPort)
        .unwrap();
    let (mut buf, payload) = channel_data_buf(0x4001, PAYLOAD);
    let route = channel_data(
        Some(Arc::clone(&a)),
        t0,
        0x4001,
        &mut buf,
        payload,
        among(&[]),
        &stats,
    );
    assert!(
        matches!(route, Route::Drop(Dropped::NoChannel)),
        "{route:?}"
    );
    assert_eq!(stats.no_permission.get(), 1);
    assert_eq!(a.state.locked().budget.to_peer.bytes, 0, "nothing relayed");
}

#[test]
fn channel_data_to_a_peer_whose_permission_expired_is_dropped_and_counted() {
    let t0 = Instant::now();
    let stats = Stats::default();
    let a = allocation(
        Transport::Tcp,
        "192.0.2.1:5000",
        "198.51.100.1:50000",
        Some("a"),
        t0,
    );
    a.state
        .lock()
        .unwrap()
        .bind_channel(t0, 0x4000, addr(PEER), Reach::AnyPort)
        .unwrap();
    // The channel lives on; the permission it installed does not.
    let later = t0 + PERMISSION_LIFETIME + Duration::from_secs(1);
    assert!(later < t0 + CHANNEL_LIFETIME);
    let (mut buf, payload) = channel_data_buf(0x4000, PAYLOAD);
    let route = channel_data(
        Some(Arc::clone(&a)),
        later,
        0x4000,
        &mut buf,
        payload,
        among(&[]),
        &stats,
    );
    assert!(
        matches!(route, Route::Drop(Dropped::NoChannel)),
        "{route:?}"
    );
    assert_eq!(stats.no_permission.get(), 1);
    assert_eq!(a.state.locked().budget.to_peer.bytes, 0);
}

/// A channel to a relay of the server whose allocation is gone carries nothing: its port
/// may be bound by anything local now.
#[test]
fn channel_data_to_a_released_relay_is_dropped_and_counted() {
    let t0 = Instant::now();
    let stats = Stats::default();
    let a = allocation(
        Transport::Udp,
        "192.0.2.1:5000",
        "198.51.100.1:50000",
        Some("a"),
        t0,
    );
    a.state
        .lock()
        .unwrap()
        .bind_channel(t0, 0x4000, addr("198.51.100.1:50002"), Reach::Relays)
        .unwrap();
    let (mut buf, payload) = channel_data_buf(0x4000, PAYLOAD);
    let route = channel_data(
        Some(Arc::clone(&a)),
        t0,
        0x4000,
        &mut buf,
        payload,
        among(&[]),
        &stats,
    );
    assert!(
        matches!(route, Route::Drop(Dropped::NoPermission)),
        "{route:?}"
    );
    assert_eq!(stats.no_permission.get(), 1);
    assert_eq!(a.state.locked().budget.to_peer.bytes, 0);
}

#[test]
fn channel_data_on_a_five_tuple_without_an_allocation_is_dropped_and_counted() {
    let stats = Stats::default();
    let (mut buf, payload) = channel_data_buf(0x4000, PAYLOAD);
    let route = channel_data::<FakeRelay>(
        None,
        Instant::now(),
        0x4000,
        &mut buf,
        payload,
        among(&[]),
        &stats,
    );
    assert!(
        matches!(route, Route::Drop(Dropped::NoAllocation)),
        "{route:?}"
    );
    assert_eq!(stats.no_permission.get(), 1);
}

#[test]
fn peer_data_on_a_channel_is_channel_data_padded_toward_stream_clients_only() {
    let t0 = Instant::now();
    let mut state = AllocState::new(t0, CHANNEL_LIFETIME);
    state
        .bind_channel(t0, 0x4001, addr(PEER), Reach::AnyPort)
        .unwrap();
    for transport in TRANSPORTS {
        let stats = Stats::default();
        let (mut buf, payload) = peer_buf(PAYLOAD);
        let frame = peer_data(
            &mut state,
            t0,
            transport,
            addr(PEER),
            &mut buf,
            payload,
            |_| RelayAt::Nothing,
            &stats,
        )
        .expect("permitted");
        let padded = transport != Transport::Udp;
        assert_eq!(pads(transport), padded);
        assert_eq!(
            buf[frame.clone()],
            channel_frame(0x4001, PAYLOAD, padded),
            "{transport:?}"
        );
        assert_eq!(
            frame.start,
            HEADROOM - CHANNEL_HEADER,
            "the header in the headroom"
        );
        assert_eq!(
            wire::classify(&buf[frame]),
            Kind::ChannelData {
                number: 0x4001,
                len: PAYLOAD.len()
            }
        );
    }
}

#[test]
fn peer_data_without_a_channel_is_a_data_indication_from_the_peer() {
    let t0 = Instant::now();
    let v6_peer = "[2001:db8::7]:4000";
    let mut state = AllocState::new(t0, CHANNEL_LIFETIME);
    state.permit(t0, addr(PEER), Reach::AnyPort).unwrap();
    state.permit(t0, addr(v6_peer), Reach::AnyPort).unwrap();
    for peer in [PEER, v6_peer] {
        for transport in TRANSPORTS {
            let stats = Stats::default();
            let (mut buf, payload) = peer_buf(PAYLOAD);
            let frame = peer_data(
                &mut state,
                t0,
                transport,
                addr(peer),
                &mut buf,
                payload,
                |_| RelayAt::Nothing,
                &stats,
            )
            .expect("permitted");
            assert_eq!(
                frame.len() % 4,
                0,
                "a STUN message, padded on every transport"
            );
            assert_eq!(
                data_indication(&buf[frame]),
                (addr(peer), PAYLOAD.to_vec()),
                "{peer} over {transport:?}"
            );
        }
    }
}

#[test]
fn peer_data_from_an_ipv4_mapped_source_is_from_the_ipv4_peer() {
    let t0 = Instant::now();
    let mut state = AllocState::new(t0, CHANNEL_LIFETIME);
    state.permit(t0, addr(PEER), Reach::AnyPort).unwrap();
    let stats = Stats::default();
    let (mut buf, payload) = peer_buf(PAYLOAD);
    let mapped = addr("[::ffff:203.0.113.5]:4000");
    let frame = peer_data(
        &mut state,
        t0,
        Transport::Udp,
        mapped,
        &mut buf,
        payload,
        |_| RelayAt::Nothing,
        &stats,
    )
    .expect("the IPv4 peer's permission");
    assert_eq!(data_indication(&buf[frame]).0, addr(PEER));
}

#[test]
fn peer_data_without_a_permission_is_dropped_and_counted() {
    let t0 = Instant::now();
    let mut state = AllocState::new(t0, CHANNEL_LIFETIME);
    state
        .bind_channel(t0, 0x4001, addr(PEER), Reach::AnyPort)
        .unwrap();
    let later = t0 + PERMISSION_LIFETIME + Duration::from_secs(1);
    for (from, now) in [("203.0.113.6:4000", t0), (PEER, later)] {
        for transport in TRANSPORTS {
            let stats = Stats::default();
            let (mut buf, payload) = peer_buf(PAYLOAD);
            let before = buf.clone();
            let dropped = peer_data(
                &mut state,
                now,
                transport,
                addr(from),
                &mut buf,
                payload,
                |_| RelayAt::Nothing,
                &stats,
            );
            assert_eq!(
                dropped,
                Err(Dropped::NoPermission),
                "{from} over {transport:?}"
            );
            assert_eq!(stats.no_permission.get(), 1);
            assert_eq!(buf, before, "nothing written");
        }
    }
}

/// A permission for a relay address of the server lets data in from its live relays only
/// (a released relay's port may be bound by anything local).
#[test]
fn peer_data_on_a_relay_permission_comes_from_live_relays_only() {
    let t0 = Instant::now();
    let mut state = AllocState::new(t0, CHANNEL_LIFETIME);
    state
        .permit(t0, addr("127.0.0.1:50000"), Reach::Relays)
        .unwrap();
    let live = |a: &SocketAddr| {
        if a.port() == 50002 {
            RelayAt::Reachable
        } else {
            RelayAt::Nothing
        }
    };
    for (from, passes) in [("127.0.0.1:50002", true), ("127.0.0.1:50000", false)] {
        let stats = Stats::default();
        let (mut buf, payload) = peer_buf(PAYLOAD);
        let got = peer_data(
            &mut state,
            t0,
            Transport::Udp,
            addr(from),
            &mut buf,
            payload,
            live,
            &stats,
        );
        assert_eq!(got.is_ok(), passes, "{from}");
        assert_eq!(stats.no_permission.get(), u64::from(!passes));
    }
}

#[test]
fn a_payload_too_large_for_a_data_indication_passes_only_on_a_channel() {
    let t0 = Instant::now();
    let big = vec![7u8; 65_517];
    let mut state = AllocState::new(t0, CHANNEL_LIFETIME);
    state.permit(t0, addr(PEER), Reach::AnyPort).unwrap();
    let stats = Stats::default();
    let (mut buf, payload) = peer_buf(&big);
    let dropped = peer_data(
        &mut state,
        t0,
        Transport::Udp,
        addr(PEER),
        &mut buf,
        payload.clone(),
        |_| RelayAt::Nothing,
        &stats,
    );
    assert_eq!(dropped, Err(Dropped::Unframeable));
    assert_eq!(stats.unframeable.get(), 1);
    assert_eq!(stats.no_permission.get(), 0);

    state
        .bind_channel(t0, 0x4001, addr(PEER), Reach::AnyPort)
        .unwrap();
    let frame = peer_data(
        &mut state,
        t0,
        Transport::Udp,
        addr(PEER),
        &mut buf,
        payload,
        |_| RelayAt::Nothing,
        &stats,
    )
    .expect("ChannelData holds it");
    assert_eq!(frame.len(), CHANNEL_HEADER + big.len());
    assert_eq!(stats.unframeable.get(), 1);
}

/// Two allocations of this server: A's client sends on channel 0x4000 to B's relayed
/// address; B has permitted A's relayed address, with channel 0x4005 when `b_channel`.
fn relay_pair(
    from: Transport,
    to: Transport,
    b_channel: bool,
    t0: Instant,
) -> (Arc<Allocation<FakeRelay>>, Arc<Allocation<FakeRelay>>) {
    let a = allocation(from, "192.0.2.1:5000", "198.51.100.1:50000", Some("a"), t0);
    let b = allocation(to, "192.0.2.2:6000", "198.51.100.1:50002", Some("b"), t0);
    a.state
        .lock()
        .unwrap()
        .bind_channel(t0, 0x4000, b.relayed, Reach::Relays)
        .unwrap();
    let mut state = b.state.lock().unwrap();
    if b_channel {
        state
            .bind_channel(t0, 0x4005, a.relayed, Reach::Relays)
            .unwrap();
    } else {
        state.permit(t0, a.relayed, Reach::Relays).unwrap();
    }
    drop(state);
    (a, b)
}

/// The pairs of client transports relayed between.
const PAIRS: [(Transport, Transport); 4] = [
    (Transport::Udp, Transport::Udp),
    (Transport::Udp, Transport::Tcp),
    (Transport::Tls, Transport::Udp),
    (Transport::Tcp, Transport::Tls),
];

#[test]
fn relay_to_relay_goes_to_the_other_client_framed_as_its_relay_would_frame_it() {
    let t0 = Instant::now();
    for b_channel in [true, false] {
        for (from, to) in PAIRS {
            let stats = Stats::default();
            let (a, b) = relay_pair(from, to, b_channel, t0);
            let table = [Arc::clone(&a), Arc::clone(&b)];
            let (mut buf, payload) = channel_data_buf(0x4000, PAYLOAD);
            let route = channel_data(
                Some(Arc::clone(&a)),
                t0,
                0x4000,
                &mut buf,
                payload,
                among(&table),
                &stats,
            );
            let case = format!("{from:?} to {to:?}, channel at B: {b_channel}");
            let Route::RelayToRelay { to: other, frame } = route else {
                panic!("{case}: expected RelayToRelay, got {route:?}");
            };
            assert!(Arc::ptr_eq(&other, &b), "{case}");
            assert_eq!(other.relay.client(), Some(&Sink("b")), "{case}");
            // What B's relay makes of the same datagram from A's relayed address.
            let (mut relayed, payload) = peer_buf(PAYLOAD);
            let mut state = b.state.lock().unwrap();
            let expected = peer_data(
                &mut state,
                t0,
                to,
                a.relayed,
                &mut relayed,
                payload,
                |_| RelayAt::Reachable,
                &stats,
            )
            .expect("permitted");
            drop(state);
            if b_channel {
                assert_eq!(
                    buf[frame.clone()],
                    channel_frame(0x4005, PAYLOAD, to != Transport::Udp),
                    "{case}"
                );
                assert_eq!(buf[frame], relayed[expected], "{case}");
            } else {
                assert_eq!(
                    data_indication(&buf[frame.clone()]),
                    (a.relayed, PAYLOAD.to_vec()),
                    "{case}"
                );
                assert_eq!(frame.len(), expected.len(), "{case}");
            }
            assert_eq!(stats.relay_to_relay.get(), 1, "{case}");
            assert_eq!(stats.no_permission.get(), 0, "{case}");
            assert_eq!(
                a.state.locked().budget.to_peer.bytes,
                PAYLOAD.len() as u64,
                "{case}"
            );
        }
    }
}

#[test]
fn relay_to_relay_without_the_other_allocations_permission_is_dropped_and_counted() {
    let t0 = Instant::now();
    let stats = Stats::default();
    let a = allocation(
        Transport::Udp,
        "192.0.2.1:5000",
        "198.51.100.1:50000",
        Some("a"),
        t0,
    );
    let b = allocation(
        Transport::Udp,
        "192.0.2.2:6000",
        "198.51.100.1:50002",
        Some("b"),
        t0,
    );
    a.state
        .lock()
        .unwrap()
        .bind_channel(t0, 0x4000, b.relayed, Reach::Relays)
        .unwrap();
    let table = [Arc::clone(&a), Arc::clone(&b)];
    let (mut buf, payload) = channel_data_buf(0x4000, PAYLOAD);
    let route = channel_data(
        Some(Arc::clone(&a)),
        t0,
        0x4000,
        &mut buf,
        payload,
        among(&table),
        &stats,
    );
    assert!(
        matches!(route, Route::Drop(Dropped::NoPermission)),
        "{route:?}"
    );
    assert_eq!(stats.no_permission.get(), 1);
    assert_eq!(stats.relay_to_relay.get(), 0);
    // What the other side did not take, the sender did not relay.
    assert_eq!(a.state.locked().budget.to_peer.bytes, 0);
    assert_eq!(a.state.locked().budget.to_peer.packets, 0);
}

#[test]
fn relay_to_relay_to_an_allocation_not_granted_yet_is_dropped_and_counted() {
    let t0 = Instant::now();
    let stats = Stats::default();
    let (a, b) = relay_pair(Transport::Udp, Transport::Udp, true, t0);
    let pending = allocation(
        Transport::Udp,
        "192.0.2.2:6000",
        "198.51.100.1:50002",
        None,
        t0,
    );
    *pending.state.lock().unwrap() = b.state.lock().unwrap().clone();
    let table = [Arc::clone(&a), pending];
    let (mut buf, payload) = channel_data_buf(0x4000, PAYLOAD);
    let route = channel_data(
        Some(a),
        t0,
        0x4000,
        &mut buf,
        payload,
        among(&table),
        &stats,
    );
    assert!(
        matches!(route, Route::Drop(Dropped::NotGranted)),
        "{route:?}"
    );
    assert_eq!(stats.no_permission.get(), 1);
    assert_eq!(stats.relay_to_relay.get(), 0);
}

#[test]
fn relay_to_relay_too_large_for_a_data_indication_is_dropped_and_counted() {
    let t0 = Instant::now();
    let stats = Stats::default();
    let (a, b) = relay_pair(Transport::Udp, Transport::Tcp, false, t0);
    let table = [Arc::clone(&a), b];
    let big = vec![7u8; 65_517];
    let (mut buf, payload) = channel_data_buf(0x4000, &big);
    let route = channel_data(
        Some(a),
        t0,
        0x4000,
        &mut buf,
        payload,
        among(&table),
        &stats,
    );
    assert!(
        matches!(route, Route::Drop(Dropped::Unframeable)),
        "{route:?}"
    );
    assert_eq!(stats.unframeable.get(), 1);
    assert_eq!(stats.relay_to_relay.get(), 0);
}

/// With the room fence, ChannelData from one relay to another passes between allocations of
/// the same room only (or both unfenced): one of another room, or unfenced beside a fenced
/// one, is dropped and counted.
#[test]
fn relay_to_relay_crosses_no_room_fence() {
    let t0 = Instant::now();
    let fenced = |client: &str, relayed: &str, sink: &'static str, fence: Option<u64>| {
        let tuple = FiveTuple {
            client: addr(client),
            server: addr("198.51.100.1:3478"),
            transport: Transport::Udp,
        };
        let mut a = Allocation::detached(tuple, addr(relayed), FakeRelay(Some(Sink(sink))), t0);
        a.fence = fence;
        Arc::new(a)
    };
    for (a_fence, b_fence, passes) in [
        (Some(1), Some(1), true),
        (None, None, true),
        (Some(1), Some(2), false),
        (Some(1), None, false),
        (None, Some(2), false),
    ] {
        let stats = Stats::default();
        let a = fenced("192.0.2.1:5000", "198.51.100.1:50000", "a", a_fence);
        let b = fenced("192.0.2.2:6000", "198.51.100.1:50002", "b", b_fence);
        a.state
            .lock()
            .unwrap()
            .bind_channel(t0, 0x4000, b.relayed, Reach::Relays)
            .unwrap();
        b.state
            .lock()
            .unwrap()
            .permit(t0, a.relayed, Reach::Relays)
            .unwrap();
        let table = [Arc::clone(&a), Arc::clone(&b)];
        let (mut buf, payload) = channel_data_buf(0x4000, PAYLOAD);
        let route = channel_data(
            Some(a),
            t0,
            0x4000,
            &mut buf,
            payload,
            among(&table),
            &stats,
        );
        let case = format!("{a_fence:?} to {b_fence:?}");
        if passes {
            assert!(
                matches!(route, Route::RelayToRelay { .. }),
                "{case}: {route:?}"
            );
            assert_eq!(stats.fence_drops.get(), 0, "{case}");
        } else {
            assert!(
                matches!(route, Route::Drop(Dropped::Fenced)),
                "{case}: {route:?}"
            );
            assert_eq!(stats.fence_drops.get(), 1, "{case}");
        }
    }
}

/// Sets both directions of `a`'s budget to `rate` bytes per second, bound by `limit`.
fn cap(a: &Allocation<FakeRelay>, rate: u64, limit: BandwidthLimit, now: Instant) {
    a.state.locked().budget = crate::turn::budget::Budget::new(rate, limit, now);
}

/// A payload of the least burst (64 KiB less the room a stream frame needs): the first
/// passes a full bucket, the second finds it empty.
const BIG: usize = 65_000;

#[test]
fn channel_data_over_the_senders_budget_is_dropped_and_counted_by_limit() {
    let t0 = Instant::now();
    for transport in TRANSPORTS {
        let stats = Stats::default();
        let a = allocation(
            transport,
            "192.0.2.1:5000",
            "198.51.100.1:50000",
            Some("a"),
            t0,
        );
        a.state
            .locked()
            .bind_channel(t0, 0x4000, addr(PEER), Reach::AnyPort)
            .unwrap();
        cap(&a, 8000, BandwidthLimit::Room, t0);
        let payload = vec![7u8; BIG];
        let route = |now| {
            let (mut buf, range) = channel_data_buf(0x4000, &payload);
            channel_data(
                Some(Arc::clone(&a)),
                now,
                0x4000,
                &mut buf,
                range,
                among(&[]),
                &stats,
            )
        };
        assert!(matches!(route(t0), Route::ToPeer { .. }), "{transport:?}");
        let dropped = route(t0);
        assert!(
            matches!(
                dropped,
                Route::Drop(Dropped::OverBudget(Direction::ToPeer, BandwidthLimit::Room))
            ),
            "{transport:?}: {dropped:?}"
        );
        assert_eq!(
            stats
                .budget_drops
                .packets(Direction::ToPeer, BandwidthLimit::Room),
            1
        );
        assert_eq!(
            stats
                .budget_drops
                .bytes(Direction::ToPeer, BandwidthLimit::Room),
            BIG as u64
        );
        assert_eq!(stats.no_permission.get(), 0);
        // The rate refills it: 8,000 bytes a second, so BIG in a little over eight seconds.
        assert!(matches!(route(t0 + Duration::from_secs(8)), Route::Drop(_)));
        assert!(matches!(
            route(t0 + Duration::from_secs(9)),
            Route::ToPeer { .. }
        ));
        let state = a.state.locked();
        assert_eq!(state.budget.to_peer.packets, 2);
        assert_eq!(state.budget.to_peer.bytes, 2 * BIG as u64);
        assert_eq!(state.budget.to_client.bytes, 0);
    }
}

#[test]
fn peer_data_over_the_budget_toward_the_client_is_dropped_and_counted() {
    let t0 = Instant::now();
    let stats = Stats::default();
    let mut state = AllocState::new(t0, CHANNEL_LIFETIME);
    state.permit(t0, addr(PEER), Reach::AnyPort).unwrap();
    state
        .bind_channel(t0, 0x4000, addr(PEER), Reach::AnyPort)
        .unwrap();
    state.budget = crate::turn::budget::Budget::new(8000, BandwidthLimit::Allocation, t0);
    let payload = vec![7u8; BIG];
    let relay = |state: &mut AllocState| {
        let (mut buf, range) = peer_buf(&payload);
        peer_data(
            state,
            t0,
            Transport::Udp,
            addr(PEER),
            &mut buf,
            range,
            |_| RelayAt::Nothing,
            &stats,
        )
    };
    assert!(relay(&mut state).is_ok());
    assert_eq!(
        relay(&mut state),
        Err(Dropped::OverBudget(
            Direction::ToClient,
            BandwidthLimit::Allocation
        ))
    );
    assert_eq!(
        stats
            .budget_drops
            .packets(Direction::ToClient, BandwidthLimit::Allocation),
        1
    );
    assert_eq!(state.budget.to_client.packets, 1);
    assert_eq!(state.budget.to_client.bytes, BIG as u64);
    assert_eq!(state.budget.to_peer.bytes, 0);
}

#[test]
fn relay_to_relay_over_the_receivers_budget_is_dropped_and_not_charged_to_the_sender() {
    let t0 = Instant::now();
    let stats = Stats::default();
    let a = allocation(
        Transport::Udp,
        "192.0.2.1:5000",
        "198.51.100.1:50000",
        Some("a"),
        t0,
    );
    let b = allocation(
        Transport::Tcp,
        "192.0.2.2:6000",
        "198.51.100.1:50002",
        Some("b"),
        t0,
    );
    a.state
        .locked()
        .bind_channel(t0, 0x4000, b.relayed, Reach::Relays)
        .unwrap();
    b.state
        .locked()
        .permit(t0, a.relayed, Reach::Relays)
        .unwrap();
    cap(&b, 8000, BandwidthLimit::Room, t0);
    let table = [Arc::clone(&a), Arc::clone(&b)];
    let payload = vec![7u8; BIG];
    let route = || {
        let (mut buf, range) = channel_data_buf(0x4000, &payload);
        channel_data(
            Some(Arc::clone(&a)),
            t0,
            0x4000,
            &mut buf,
            range,
            among(&table),
            &stats,
        )
    };
    assert!(matches!(route(), Route::RelayToRelay { .. }));
    let dropped = route();
    assert!(
        matches!(
            dropped,
            Route::Drop(Dropped::OverBudget(
                Direction::ToClient,
                BandwidthLimit::Room
            ))
        ),
        "{dropped:?}"
    );
    assert_eq!(
        stats
            .budget_drops
            .packets(Direction::ToClient, BandwidthLimit::Room),
        1
    );
    assert_eq!(stats.relay_to_relay.get(), 1);
    // The sender relayed the first only; the receiver's client got the first only.
    assert_eq!(a.state.locked().budget.to_peer.packets, 1);
    assert_eq!(b.state.locked().budget.to_client.packets, 1);
    assert_eq!(b.state.locked().budget.to_client.bytes, BIG as u64);
}
