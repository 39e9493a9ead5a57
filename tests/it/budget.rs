//! Bandwidth budgets (`turn.max_allocation_bytes_per_s`, `turn.max_room_bytes_per_s`): real
//! TURN clients send more than their budget through the real server, over UDP and TCP, and
//! what arrives is held to it, shared fairly in a room, and counted; a room beside it that
//! stays within its budget loses nothing.
//!
//! The rates are checked against the time the test measured the sending over, with the
//! bucket's burst as slack: no timing decides when to look, the server's own counters say
//! when every byte sent is accounted for (relayed or dropped).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard::turn::probe::Client;
use tokio::net::UdpSocket;

use crate::fence::{allocated, member, service};
use crate::harness::TestServer;
use crate::turn::{rest_credential, turn_config};

const PAYLOAD: usize = 1000;
/// The least burst of a bucket (`turn::budget`).
const BURST: f64 = 65_536.0;

/// Sends `count` payloads on channel 0x4000, one every `every`; returns how long it took.
async fn send_paced(client: &Client, count: usize, every: Duration) -> Duration {
    let start = Instant::now();
    let mut tick = tokio::time::interval(every);
    for _ in 0..count {
        tick.tick().await;
        client.send_channel(0x4000, &[7u8; PAYLOAD]).await.unwrap();
    }
    start.elapsed()
}

/// Counts what is already waiting on `sink`.
async fn drain(sink: &UdpSocket, counts: &Mutex<HashMap<SocketAddr, usize>>) {
    let mut buf = vec![0u8; 2048];
    while let Ok((n, from)) = sink.try_recv_from(&mut buf) {
        *counts.lock().unwrap().entry(from).or_default() += n;
    }
}

/// A metric summed over the client transports.
async fn over_transports(server: &TestServer, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for transport in ["udp", "tcp", "tls"] {
        let mut with = labels.to_vec();
        with.push(("transport", transport));
        total += server.metric(name, &with).await;
    }
    total
}

/// Waits until the server has relayed or dropped all `sent` payloads (of `PAYLOAD` bytes)
/// in `direction`; returns the payload bytes relayed and dropped. (Counted in packets: the
/// relayed bytes toward clients count their framing.)
async fn accounted(server: &TestServer, direction: &str, sent: usize) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let relayed = over_transports(
            server,
            "switchboard_turn_relayed_packets_total",
            &[("direction", direction)],
        )
        .await;
        let mut dropped = 0.0;
        let mut dropped_bytes = 0.0;
        for limit in ["max_allocation_bytes_per_s", "max_room_bytes_per_s"] {
            let labels = [("direction", direction), ("limit", limit)];
            dropped += server
                .metric("switchboard_turn_budget_drops_total", &labels)
                .await;
            dropped_bytes += server
                .metric("switchboard_turn_budget_dropped_bytes_total", &labels)
                .await;
        }
        if relayed + dropped >= sent as f64 {
            assert_eq!(relayed + dropped, sent as f64, "nothing counted twice");
            assert_eq!(dropped_bytes, dropped * PAYLOAD as f64);
            return (relayed * PAYLOAD as f64, dropped_bytes);
        }
        assert!(
            Instant::now() < deadline,
            "{direction}: {relayed} relayed and {dropped} dropped of {sent}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_room_over_its_budget_is_held_to_it_fairly_and_the_room_beside_it_loses_nothing() {
    const ROOM: f64 = 100_000.0;
    let server = TestServer::start(&turn_config(
        "fence = \"off\"\nmax_room_bytes_per_s = 100000\n",
    ));
    let (_ann_ws, ann_welcome) = member(&server, "busy").await;
    let (_bob_ws, bob_welcome) = member(&server, "busy").await;
    let (_carol_ws, carol_welcome) = member(&server, "calm").await;
    let ann = allocated(&server, &ann_welcome).await;
    let bob = allocated(&server, &bob_welcome).await;
    let carol = allocated(&server, &carol_welcome).await;
    let (busy, calm) = (service("127.0.0.2").await, service("127.0.0.3").await);
    for (client, sink) in [(&ann, &busy), (&bob, &busy), (&carol, &calm)] {
        client
            .bind_channel(0x4000, sink.local_addr().unwrap())
            .await
            .unwrap();
    }
    let counts = Arc::new(Mutex::new(HashMap::new()));
    let reader = {
        let counts = Arc::clone(&counts);
        let busy = Arc::new(busy);
        let sink = Arc::clone(&busy);
        (
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                loop {
                    let (n, from) = sink.recv_from(&mut buf).await.unwrap();
                    *counts.lock().unwrap().entry(from).or_default() += n;
                }
            }),
            busy,
        )
    };
    // Ann and Bob each send 500 kB/s, ten times the room's budget between them; Carol sends
    // 50 kB/s, half of her room's.
    let (flood, calm_count) = (750, 75);
    let (a, b, c) = tokio::join!(
        send_paced(&ann, flood, Duration::from_millis(2)),
        send_paced(&bob, flood, Duration::from_millis(2)),
        send_paced(&carol, calm_count, Duration::from_millis(20)),
    );
    let elapsed = a.max(b).max(c).as_secs_f64();
    let (relayed, dropped) = accounted(&server, "to_peer", 2 * flood + calm_count).await;
    reader.0.abort();
    drain(&reader.1, &counts).await;

    // Carol's room lost nothing.
    let mut got = 0;
    let mut buf = vec![0u8; 2048];
    while got < calm_count {
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), calm.recv_from(&mut buf))
            .await
            .expect("every payload of the calm room arrives")
            .unwrap();
        assert_eq!(n, PAYLOAD);
        got += 1;
    }
    // The busy room got its budget, not more, and not much less; shared about evenly.
    let counts = counts.lock().unwrap().clone();
    let total: usize = counts.values().sum();
    assert_eq!(relayed as usize, total + calm_count * PAYLOAD, "{counts:?}");
    // Each bucket starts full; until the first sweep weighs them (up to a second), the
    // first allocation has the whole room's rate and the second half of it.
    let ceiling = ROOM * (elapsed + 1.0) + 2.0 * BURST;
    assert!(
        (total as f64) <= ceiling,
        "{total} bytes in {elapsed:.2} s, more than {ceiling}"
    );
    assert!(
        (total as f64) >= ROOM * elapsed / 2.0,
        "{total} bytes in {elapsed:.2} s: the budget was not used"
    );
    assert_eq!(counts.len(), 2, "{counts:?}");
    eprintln!(
        "room budget {ROOM} B/s: {total} B in {elapsed:.2} s, by relay {counts:?}, {dropped} B dropped"
    );
    for (from, bytes) in &counts {
        assert!(
            *bytes * 4 >= total,
            "{from} got {bytes} of {total}: not a fair share"
        );
    }
    assert!(dropped > 0.0);
    let drops = server
        .metric(
            "switchboard_turn_budget_drops_total",
            &[("direction", "to_peer"), ("limit", "max_room_bytes_per_s")],
        )
        .await;
    assert_eq!(drops * PAYLOAD as f64, dropped);
}

#[tokio::test]
async fn an_allocations_cap_holds_what_reaches_a_tcp_client() {
    const CAP: f64 = 50_000.0;
    let server = TestServer::start(&turn_config(
        "fence = \"off\"\nmax_allocation_bytes_per_s = 50000\n",
    ));
    let (username, password) = rest_credential(600, "tcp-user");
    let mut client = Client::connect_tcp(server.listener("turn_tcp"), &username, &password)
        .await
        .unwrap();
    let relayed_at = client.allocate().await.unwrap();
    let peer = service("127.0.0.2").await;
    client.permit(peer.local_addr().unwrap()).await.unwrap();
    // 500 kB/s from the peer toward the client, ten times its cap, for a second.
    let count = 500;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    for _ in 0..count {
        tick.tick().await;
        peer.send_to(&[9u8; PAYLOAD], relayed_at).await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (relayed, dropped) = accounted(&server, "to_client", count).await;
    // A full bucket, then the rate (a tenth of a second of slack for the last packets' way
    // through a loaded machine).
    let ceiling = CAP * (elapsed + 0.1) + BURST;
    assert!(relayed <= ceiling, "{relayed} bytes in {elapsed:.2} s");
    assert!(
        relayed >= CAP * elapsed / 2.0,
        "{relayed} bytes in {elapsed:.2} s"
    );
    eprintln!("allocation cap {CAP} B/s: {relayed} B in {elapsed:.2} s, {dropped} B dropped");
    assert!(dropped > 0.0);
    // And the client got exactly what was relayed.
    let mut got = 0.0;
    while got < relayed {
        let (from, data) = client.recv().await.expect("what was relayed arrives");
        assert_eq!(from, peer.local_addr().unwrap());
        got += data.len() as f64;
    }
    assert_eq!(got, relayed);
    let drops = server
        .metric(
            "switchboard_turn_budget_drops_total",
            &[
                ("direction", "to_client"),
                ("limit", "max_allocation_bytes_per_s"),
            ],
        )
        .await;
    assert_eq!(drops * PAYLOAD as f64, dropped);
}
