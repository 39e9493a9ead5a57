//! One TURN client must never hurt the others: a TCP client that stops reading, connections
//! that never allocate or stop halfway through a frame, and more connections than allowed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use switchboard::turn::probe::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use crate::harness::{DEADLINE, TestServer};
use crate::raw_turn::{RawTurn, turn_entry};
use crate::turn::{rest_credential, turn_config};

async fn udp_client(server: &TestServer, user: &str) -> (Client, SocketAddr) {
    let (username, password) = rest_credential(600, user);
    let mut client = Client::new(server.listener("turn_udp"), &username, &password)
        .await
        .unwrap();
    let relayed = client.allocate().await.expect("UDP allocation");
    (client, relayed)
}

async fn tcp_client(server: &TestServer, user: &str) -> (Client, SocketAddr) {
    let (username, password) = rest_credential(600, user);
    let mut client = Client::connect_tcp(server.listener("turn_tcp"), &username, &password)
        .await
        .unwrap();
    let relayed = client.allocate().await.expect("TCP allocation");
    (client, relayed)
}

/// A TCP client that will not read, and a UDP client whose channel 0x4000 sends to it
/// relay to relay.
async fn stalled_and_feeder(server: &TestServer) -> (Client, Client) {
    let (stalled, stalled_relay) = tcp_client(server, "stalled").await;
    let (feeder, feeder_relay) = udp_client(server, "feeder").await;
    stalled.permit(feeder_relay).await.unwrap();
    feeder.bind_channel(0x4000, stalled_relay).await.unwrap();
    (stalled, feeder)
}

/// Waits until the server closes `tcp` (EOF or reset), whatever it sent before.
async fn closed_by_server(tcp: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(DEADLINE, async {
        while let Ok(n) = tcp.read(&mut buf).await
            && n > 0
        {}
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: the server did not close the connection"));
}

/// Item 1: a TCP client that never reads, fed relay to relay from a UDP allocation at
/// 5,000 packets/s, must not slow the UDP listener for anyone else: an unrelated UDP
/// client's packets through the same listener all arrive, and soon.
#[tokio::test]
async fn a_tcp_client_that_does_not_read_does_not_stall_the_udp_listener() {
    let server = TestServer::start(&turn_config(""));
    let (stalled, feeder) = stalled_and_feeder(&server).await;
    // The unrelated pair: a UDP client and a peer socket.
    let (bystander, _) = udp_client(&server, "bystander").await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    bystander.permit(peer.local_addr().unwrap()).await.unwrap();

    let flooding = Arc::new(AtomicBool::new(true));
    let flood = {
        let flooding = Arc::clone(&flooding);
        tokio::spawn(async move {
            // 50 packets every 10 ms: 5,000 packets/s of 1,000 bytes, until told to stop.
            let payload = [0xAB; 1000];
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while flooding.load(Ordering::Relaxed) {
                tick.tick().await;
                for _ in 0..50 {
                    feeder.send_channel(0x4000, &payload).await.unwrap();
                }
            }
        })
    };
    // 300 packets at 100/s while the flood goes on (long enough to fill every buffer
    // between the server and the stalled client many times over), each stamped with
    // its sequence number and send time.
    let peer_addr = peer.local_addr().unwrap();
    let t0 = Instant::now();
    let sending = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for i in 0..300u32 {
            tick.tick().await;
            let mut packet = i.to_be_bytes().to_vec();
            packet.extend_from_slice(&(t0.elapsed().as_micros() as u64).to_be_bytes());
            bystander.send(peer_addr, &packet).await.unwrap();
        }
        bystander
    });
    let mut received = vec![false; 300];
    let mut worst = Duration::ZERO;
    let mut buf = [0u8; 64];
    while received.iter().any(|r| !r) {
        let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), peer.recv(&mut buf)).await
        else {
            break;
        };
        assert_eq!(n, 12);
        let i = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        let sent = Duration::from_micros(u64::from_be_bytes(buf[4..12].try_into().unwrap()));
        received[i] = true;
        worst = worst.max(t0.elapsed() - sent);
    }
    let _bystander = sending.await.unwrap();
    flooding.store(false, Ordering::Relaxed);
    flood.await.unwrap();
    let lost = received.iter().filter(|r| !**r).count();
    println!("bystander: {lost} of 300 lost, worst one-way latency {worst:?}");
    assert_eq!(
        lost, 0,
        "the bystander lost packets (worst latency {worst:?})"
    );
    // A stall would show as seconds; loopback under this load takes milliseconds.
    assert!(worst < Duration::from_secs(1), "worst latency {worst:?}");
    // The stalled client's queue overflowed (or it was cut off): the load was real.
    let dropped = server
        .metric("switchboard_turn_stream_queue_drops_total", &[])
        .await;
    let cut = server
        .metric(
            "switchboard_turn_stream_closes_total",
            &[("reason", "write_stalled")],
        )
        .await;
    assert!(dropped + cut > 0.0, "the stalled client never fell behind");
    drop(stalled);
}

/// Item 2: a relay task stuck on a client that does not read must not keep its relay
/// port after the allocation is gone.
#[tokio::test]
async fn a_released_allocation_frees_its_port_even_when_its_client_does_not_read() {
    let server = TestServer::start(&turn_config(""));
    let (client, relayed) = tcp_client(&server, "stalled").await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.permit(peer.local_addr().unwrap()).await.unwrap();
    // 30 MB toward a client that reads nothing: more than every buffer on the way holds.
    let payload = [0x5A; 1000];
    for _ in 0..30_000 {
        peer.send_to(&payload, relayed).await.unwrap();
    }
    client.release_without_reading().await.unwrap();
    // The port is free once the relay task has let go of its socket.
    let t0 = Instant::now();
    while std::net::UdpSocket::bind(relayed).is_err() {
        assert!(
            t0.elapsed() < DEADLINE,
            "relay port {relayed} still bound after the allocation was released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(client);
}

/// A release (Refresh with lifetime 0) over TCP is answered before the connection closes:
/// the connection ends with its allocation, and its writer used to be cancelled with the
/// success answer still queued, so TCP and TLS clients saw a close instead of a 200.
#[tokio::test]
async fn a_release_over_tcp_is_answered_before_the_connection_closes() {
    let server = TestServer::start(&turn_config(""));
    for i in 0..20 {
        let (client, _) = tcp_client(&server, &format!("leaving{i}")).await;
        client
            .refresh(Duration::ZERO)
            .await
            .unwrap_or_else(|e| panic!("release {i} over TCP not answered: {e}"));
    }
}

/// A STUN Binding request over a stream; returns whether it was answered.
async fn binding(tcp: &mut TcpStream) -> bool {
    switchboard::turn::probe::binding_stream(tcp).await.is_ok()
}

/// Item 3: a connection that never allocates is closed at `allocate_timeout_s`, however
/// busy it keeps itself with Binding requests.
#[tokio::test]
async fn a_connection_that_never_allocates_is_closed_at_the_deadline() {
    let server = TestServer::start(&turn_config("allocate_timeout_s = 1"));
    let mut tcp = TcpStream::connect(server.listener("turn_tcp"))
        .await
        .unwrap();
    let t0 = Instant::now();
    tokio::time::timeout(DEADLINE, async {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            if !binding(&mut tcp).await {
                break;
            }
        }
    })
    .await
    .expect("the server kept a connection that never allocated");
    println!("closed after {:?}", t0.elapsed());
    assert_eq!(
        server
            .metric(
                "switchboard_turn_stream_closes_total",
                &[("reason", "allocate_timeout")]
            )
            .await,
        1.0
    );
}

/// Item 3: a frame that stops halfway is cut off, and a large frame before any
/// allocation is refused at once.
#[tokio::test]
async fn a_frame_that_stops_halfway_is_cut_off() {
    let server = TestServer::start(&turn_config("allocate_timeout_s = 600"));
    let turn = server.listener("turn_tcp");
    // A STUN header announcing 1,000 bytes, then silence.
    let mut tcp = TcpStream::connect(turn).await.unwrap();
    let mut head = [0u8; 20];
    head[..4].copy_from_slice(&[0x00, 0x01, 0x03, 0xE8]);
    head[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    tcp.write_all(&head).await.unwrap();
    closed_by_server(&mut tcp, "a half frame").await;
    assert_eq!(
        server
            .metric(
                "switchboard_turn_stream_closes_total",
                &[("reason", "frame_stalled")]
            )
            .await,
        1.0
    );
    // A header announcing 65,532 bytes from a connection with no allocation.
    let mut tcp = TcpStream::connect(turn).await.unwrap();
    head[2..4].copy_from_slice(&0xFFFCu16.to_be_bytes());
    tcp.write_all(&head).await.unwrap();
    closed_by_server(&mut tcp, "a large frame before an allocation").await;
    assert_eq!(
        server
            .metric(
                "switchboard_turn_stream_closes_total",
                &[("reason", "malformed")]
            )
            .await,
        1.0
    );
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

/// Item 3: connections are capped per source address and in total, before any work; at
/// the total, a connection that has not allocated for a while makes room for a newcomer.
#[tokio::test]
async fn connections_are_capped_per_source_and_in_total_and_idle_ones_make_room() {
    let server = TestServer::start(&turn_config(
        "max_connections = 3\nmax_connections_per_source = 2\nallocate_timeout_s = 600",
    ));
    let turn = server.listener("turn_tcp");
    // Two allocated connections from 127.0.0.1: never evicted.
    let (a1, _) = tcp_client(&server, "a1").await;
    let (a2, _) = tcp_client(&server, "a2").await;
    let mut third = connect_from([127, 0, 0, 1], turn).await;
    closed_by_server(&mut third, "a third connection from one source").await;
    let mut idle = connect_from([127, 0, 0, 2], turn).await;
    assert!(binding(&mut idle).await, "another source is admitted");
    let server = &server;
    let refused = |limit: &'static str| async move {
        server
            .metric(
                "switchboard_turn_connection_refusals_total",
                &[("limit", limit)],
            )
            .await
    };
    assert_eq!(refused("max_connections_per_source").await, 1.0);
    // At the total: refused while the idle connection is young, then it makes room.
    let t0 = Instant::now();
    loop {
        let mut newcomer = connect_from([127, 0, 0, 3], turn).await;
        if binding(&mut newcomer).await {
            break;
        }
        assert!(
            t0.elapsed() < DEADLINE,
            "the idle connection never made room"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    closed_by_server(&mut idle, "the idle connection").await;
    assert!(refused("max_connections").await >= 1.0);
    assert_eq!(
        server
            .metric(
                "switchboard_turn_stream_closes_total",
                &[("reason", "evicted")]
            )
            .await,
        1.0
    );
    drop((a1, a2));
}

/// The server's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Item 3: stalled connections are cheap and do not keep anyone else from allocating.
#[tokio::test]
async fn two_thousand_stalled_connections_cost_little_and_block_nobody() {
    const N: usize = 2000;
    let server = TestServer::start(&turn_config("allocate_timeout_s = 600"));
    let turn = server.listener("turn_tcp");
    // Warm the server's allocator and task pools with one allocation first.
    let warm = tcp_client(&server, "warm").await;
    let before = rss_bytes(server.pid());
    let mut stalled = Vec::with_capacity(N);
    for i in 0..N {
        // Spread over sources: the per-source limit is not what this measures.
        let source = [127, 0, 1, (i / 200) as u8 + 1];
        let mut tcp = connect_from(source, turn).await;
        // One answered request, so the server has served this connection (its buffers
        // are there); then silence.
        assert!(binding(&mut tcp).await, "connection {i} was not served");
        stalled.push(tcp);
    }
    assert_eq!(
        server
            .metric("switchboard_turn_stream_connections", &[])
            .await,
        (N + 1) as f64
    );
    let grown = rss_bytes(server.pid()).saturating_sub(before);
    println!(
        "{N} stalled connections: RSS grew {} KiB ({} bytes each)",
        grown / 1024,
        grown / N as u64
    );
    let (_client, relayed) = tcp_client(&server, "legit").await;
    assert!(relayed.port() > 0);
    assert!(
        grown < (N as u64) * 8 * 1024,
        "{} bytes per stalled connection",
        grown / N as u64
    );
    drop((warm, stalled));
}

/// Item 11: a payload too large for a Data indication's 16-bit length is dropped, not
/// sent with a wrapped length that a stream client would read as the sender's own frames
/// (here a forged Data indication from an address of the sender's choosing).
#[tokio::test]
async fn a_payload_too_large_for_a_data_indication_is_dropped_not_wrapped() {
    use stun::message::{CLASS_INDICATION, METHOD_DATA, Message, MessageType, Setter};
    let server = TestServer::start(&turn_config(""));
    let (sender, sender_relay) = tcp_client(&server, "sender").await;
    let (receiver, receiver_relay) = tcp_client(&server, "receiver").await;
    // The receiver permits the sender without a channel: it gets Data indications.
    receiver.permit(sender_relay).await.unwrap();
    sender.bind_channel(0x4000, receiver_relay).await.unwrap();
    let mut forged = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(stun::agent::TransactionId::new()),
        Box::new(MessageType::new(METHOD_DATA, CLASS_INDICATION)),
        Box::new(turn::proto::peeraddr::PeerAddress {
            ip: "6.6.6.6".parse().unwrap(),
            port: 666,
        }),
        Box::new(turn::proto::data::Data(b"forged".to_vec())),
    ];
    forged.build(&setters).unwrap();
    // With a wrapped length, the receiver would read a 20-byte header, then the peer
    // address and DATA header and 12 payload bytes as a 28-byte frame, then this.
    let mut payload = vec![0u8; 65_520];
    payload[12..12 + forged.raw.len()].copy_from_slice(&forged.raw);
    sender.send_channel(0x4000, &payload).await.unwrap();
    sender.send_channel(0x4000, b"marker").await.unwrap();
    let (from, data) = receiver.recv().await.expect("a Data indication");
    assert_eq!((from, &data[..]), (sender_relay, &b"marker"[..]));
    assert_eq!(
        server
            .metric("switchboard_turn_unframeable_drops_total", &[])
            .await,
        1.0
    );
}

/// Item 13: one person who leaves and joins again gets a fresh peer id, and credential, every
/// time; the allocations left behind (kept for the grace period) still count against its
/// source address, so re-joining cannot take more than `max_allocations_per_source` relays.
#[tokio::test]
async fn rejoining_for_fresh_peer_ids_stops_at_the_source_quota() {
    let server = TestServer::start(&turn_config(
        "max_allocations_per_credential = 1\nmax_allocations_per_source = 3\ngrace_period_s = 60",
    ));
    let mut relays = Vec::new();
    for attempt in 0..4 {
        let mut ws = server.client().await;
        let welcome = ws.join("again", None).await;
        let mut turn = RawTurn::new(server.listener("turn_udp"), &turn_entry(&welcome)).await;
        let allocated = turn.allocate().await;
        if attempt < 3 {
            assert_eq!(allocated, Ok(()), "allocation {attempt}");
            // Each peer is at its own per-credential quota already.
            let mut second = RawTurn::new(server.listener("turn_udp"), &turn_entry(&welcome)).await;
            assert_eq!(second.allocate().await, Err(486));
        } else {
            assert_eq!(allocated, Err(486), "a fourth from one source");
        }
        relays.push(turn);
        // Leaves (the socket goes); its allocation stays for the grace period.
        drop(ws);
    }
    assert_eq!(
        server.wait_log("allocation refused by quota")["limit"],
        "max_allocations_per_credential"
    );
    for (limit, n) in [
        ("max_allocations_per_credential", 3.0),
        ("max_allocations_per_source", 1.0),
    ] {
        let refused = server
            .metric("switchboard_turn_quota_refusals_total", &[("quota", limit)])
            .await;
        assert_eq!(refused, n, "{limit}");
    }
    // The three granted relays are still there, their peers gone (within the grace period).
    let live = server.metric("switchboard_turn_allocations", &[]).await;
    assert_eq!(live, 3.0);
    drop(relays);
}

/// A TLS handshake that never completes holds a connection slot too: at the total, it is
/// evicted like an idle connection.
#[tokio::test]
async fn a_stalled_tls_handshake_makes_room_at_the_limit() {
    let server = TestServer::start(&turn_config(
        "max_connections = 1\nallocate_timeout_s = 600",
    ));
    let mut stalled = TcpStream::connect(server.listener("turn_tls"))
        .await
        .unwrap();
    // Holding the slot once the TLS listener has accepted it (else the newcomer could be
    // accepted first and take the slot without evicting anything).
    let t0 = Instant::now();
    while server
        .metric("switchboard_turn_stream_connections", &[])
        .await
        < 1.0
    {
        assert!(t0.elapsed() < DEADLINE, "the TLS listener never accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    loop {
        let mut newcomer = TcpStream::connect(server.listener("turn_tcp"))
            .await
            .unwrap();
        if binding(&mut newcomer).await {
            break;
        }
        assert!(
            t0.elapsed() < DEADLINE,
            "the stalled handshake never made room"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    closed_by_server(&mut stalled, "the stalled handshake").await;
    assert_eq!(
        server
            .metric(
                "switchboard_turn_stream_closes_total",
                &[("reason", "evicted")]
            )
            .await,
        1.0
    );
}

/// A TCP connection's slot under `max_connections_per_source` is held until the server has
/// let go of the socket: after a release, the writer may still be draining its queue to a
/// client that does not read, for up to its write deadline, and until then the connection
/// still counts. Before, the slot went back as soon as the allocation did, and a source
/// could hold more sockets than its limit.
#[tokio::test]
async fn a_released_connection_counts_until_its_writer_lets_go() {
    let server = TestServer::start(&turn_config("max_connections_per_source = 1"));
    let (stalled, feeder) = stalled_and_feeder(&server).await;
    // Fill every buffer between the server and the client, which never reads.
    let payload = [0xAB; 1000];
    let t0 = Instant::now();
    while server
        .metric("switchboard_turn_stream_queue_drops_total", &[])
        .await
        == 0.0
    {
        assert!(
            t0.elapsed() < DEADLINE,
            "the stalled client never fell behind"
        );
        for _ in 0..200 {
            feeder.send_channel(0x4000, &payload).await.unwrap();
        }
    }
    stalled.release_without_reading().await.unwrap();
    let t0 = Instant::now();
    while server.metric("switchboard_turn_allocations", &[]).await > 1.0 {
        assert!(t0.elapsed() < DEADLINE, "the release was not taken");
        tokio::task::yield_now().await;
    }
    // The writer still holds the socket: no second connection from this source.
    let mut second = connect_from([127, 0, 0, 1], server.listener("turn_tcp")).await;
    closed_by_server(&mut second, "a connection beside a writer still draining").await;
    // At the write deadline the writer lets go, and the slot comes back.
    let t0 = Instant::now();
    loop {
        let mut next = connect_from([127, 0, 0, 1], server.listener("turn_tcp")).await;
        if binding(&mut next).await {
            break;
        }
        assert!(t0.elapsed() < DEADLINE, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stalled);
}
