//! The TURN server of the real binary, driven by independent clients: coturn's
//! `turnutils_*` tools and the webrtc-rs `turn` client.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use switchboard::config::Secret;
use switchboard::signaling::protocol::{IceServer, ServerMsg};
use switchboard::turn::auth::rest_password;
use switchboard::turn::probe::{Client, ProbeError};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use webrtc_util::Conn;

use crate::harness::{DEADLINE, TestServer, need};
use crate::prereq::Prereq;

const SECRET: &str = "it-secret-0123456789abcdef";

/// TURN with a known secret; loopback peers allowed, since every peer in a test is on loopback.
pub fn turn_config(extra: &str) -> String {
    format!("[turn]\nsecrets = [\"{SECRET}\"]\nallow_peers = [\"127.0.0.0/8\"]\n{extra}")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A REST credential minted the way a coturn backend would.
pub fn rest_credential(ttl: i64, user: &str) -> (String, String) {
    let username = format!("{}:{user}", unix_now() as i64 + ttl);
    let password = rest_password(&Secret::new(SECRET.into()), &username);
    (username, password)
}

async fn turn_client(server: SocketAddr, username: &str, password: &str) -> turn::client::Client {
    let conn = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    turn_client_on(conn, server, username, password).await
}

/// A webrtc-rs TURN client on `conn`, talking to `server`.
async fn turn_client_on(
    conn: UdpSocket,
    server: SocketAddr,
    username: &str,
    password: &str,
) -> turn::client::Client {
    let conn = Arc::new(conn);
    let client = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.to_owned(),
        password: password.to_owned(),
        realm: "switchboard".to_owned(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    client
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen in time"))
}

#[tokio::test]
async fn webrtc_rs_client_relays_both_ways_through_a_peer_socket() {
    let server = TestServer::start(&turn_config(""));
    let (username, password) = rest_credential(600, "it");
    let client = turn_client(server.listener("turn_udp"), &username, &password).await;
    let relay = within("allocation", client.allocate())
        .await
        .expect("allocate");
    let relayed = relay.local_addr().unwrap();
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");

    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut buf = [0u8; 1500];
    // Several rounds: the client starts with Send indications and moves to a channel.
    for round in 0..5u8 {
        let ping = [b'p', round];
        relay
            .send_to(&ping, peer_addr)
            .await
            .expect("send through relay");
        let (n, from) = within("peer receive", peer.recv_from(&mut buf))
            .await
            .unwrap();
        assert_eq!((&buf[..n], from), (&ping[..], relayed));
        let pong = [b'q', round];
        peer.send_to(&pong, relayed).await.unwrap();
        let (n, from) = within("client receive", relay.recv_from(&mut buf))
            .await
            .unwrap();
        assert_eq!((&buf[..n], from), (&pong[..], peer_addr));
    }
    relay.close().await.unwrap();
    client.close().await.unwrap();
}

/// Two allocations of this server talking to each other: ChannelData is handed from one
/// client to the other inside the server (framed as ChannelData or a Data indication,
/// whichever the receiver has bound), and arrives intact from the sender's relayed address.
#[tokio::test]
async fn relay_to_relay_traffic_arrives_intact_from_the_other_relay() {
    let server = TestServer::start(&turn_config(""));
    let turn = server.listener("turn_udp");
    let (user_a, pass_a) = rest_credential(600, "a");
    let (user_b, pass_b) = rest_credential(600, "b");
    let client_a = turn_client(turn, &user_a, &pass_a).await;
    let client_b = turn_client(turn, &user_b, &pass_b).await;
    let relay_a = within("allocation a", client_a.allocate()).await.unwrap();
    let relay_b = within("allocation b", client_b.allocate()).await.unwrap();
    let (addr_a, addr_b) = (relay_a.local_addr().unwrap(), relay_b.local_addr().unwrap());
    // B permits A's address (permissions are per IP) before A starts sending.
    let _ = relay_b.send_to(b"hello", addr_a).await;
    let mut buf = [0u8; 1500];
    for round in 0..8u8 {
        // Large enough that a misplaced header or offset would show.
        let ping: Vec<u8> = (0..200).map(|i| i as u8 ^ round).collect();
        relay_a.send_to(&ping, addr_b).await.expect("send a -> b");
        let (n, from) = within("b receives", relay_b.recv_from(&mut buf))
            .await
            .unwrap();
        assert_eq!((&buf[..n], from), (&ping[..], addr_a), "round {round}");
        let pong = [b'q', round, 0, 1, 2];
        relay_b.send_to(&pong, addr_a).await.expect("send b -> a");
        let (n, from) = loop {
            // A may first see B's unanswered "hello".
            let (n, from) = within("a receives", relay_a.recv_from(&mut buf))
                .await
                .unwrap();
            if &buf[..n] != b"hello" {
                break (n, from);
            }
        };
        assert_eq!((&buf[..n], from), (&pong[..], addr_b), "round {round}");
    }
    relay_a.close().await.unwrap();
    relay_b.close().await.unwrap();
    client_a.close().await.unwrap();
    client_b.close().await.unwrap();
}

/// A UDP socket that accepts datagrams from `server` only, as a NAT mapping does.
async fn connected_to(server: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(server).await.unwrap();
    socket
}

/// A host with two addresses (127.0.0.2 is on `lo` too) and a wildcard UDP listener:
/// everything toward a client leaves from the address that client sends to, which is all a
/// NAT (or a `connect()`ed socket, as here) lets through. STUN Binding, Allocate, a peer's
/// data through the relay task, and relay to relay between a client of each address.
#[tokio::test]
async fn a_wildcard_udp_listener_answers_from_the_address_each_client_sends_to() {
    use stun::message::{BINDING_REQUEST, Getter, Message};

    let server = TestServer::start(&turn_config("udp_listen = [\"0.0.0.0:0\"]\n"));
    let port = server.listener("turn_udp").port();
    let first = SocketAddr::from(([127, 0, 0, 1], port));
    let second = SocketAddr::from(([127, 0, 0, 2], port));

    let socket = connected_to(second).await;
    let mut request = Message::new();
    request
        .build(&[
            Box::new(stun::agent::TransactionId::new()),
            Box::new(BINDING_REQUEST),
        ])
        .unwrap();
    socket.send(&request.raw).await.unwrap();
    let mut buf = [0u8; 1500];
    let n = within("a Binding answer from 127.0.0.2", socket.recv(&mut buf))
        .await
        .unwrap();
    let mut response = Message::new();
    response.raw = buf[..n].to_vec();
    response.decode().unwrap();
    assert_eq!(response.transaction_id, request.transaction_id);
    let mut mapped = stun::xoraddr::XorMappedAddress::default();
    mapped.get_from(&response).unwrap();
    assert_eq!(
        SocketAddr::new(mapped.ip, mapped.port),
        socket.local_addr().unwrap()
    );

    let (user_a, pass_a) = rest_credential(600, "a");
    let (user_b, pass_b) = rest_credential(600, "b");
    let client_a = turn_client_on(connected_to(second).await, second, &user_a, &pass_a).await;
    let client_b = turn_client_on(connected_to(first).await, first, &user_b, &pass_b).await;
    let relay_a = within("allocation through 127.0.0.2", client_a.allocate())
        .await
        .expect("allocate through 127.0.0.2");
    let relay_b = within("allocation through 127.0.0.1", client_b.allocate())
        .await
        .expect("allocate through 127.0.0.1");
    let (addr_a, addr_b) = (relay_a.local_addr().unwrap(), relay_b.local_addr().unwrap());

    // A peer's answer comes back through A's relay task.
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    relay_a.send_to(b"ping", peer_addr).await.unwrap();
    let (n, from) = within("peer receives", peer.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!((&buf[..n], from), (&b"ping"[..], addr_a));
    peer.send_to(b"pong", addr_a).await.unwrap();
    let (n, from) = within("a receives from the peer", relay_a.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!((&buf[..n], from), (&b"pong"[..], peer_addr));

    // Relay to relay: the server hands B's data to A (and back) through the listener.
    let _ = relay_a.send_to(b"hello", addr_b).await;
    for round in 0..4u8 {
        relay_b
            .send_to(&[round], addr_a)
            .await
            .expect("send b -> a");
        let (n, from) = within("a receives from b", relay_a.recv_from(&mut buf))
            .await
            .unwrap();
        assert_eq!((&buf[..n], from), (&[round][..], addr_b), "round {round}");
        relay_a
            .send_to(&[round, 1], addr_b)
            .await
            .expect("send a -> b");
        let (n, from) = loop {
            // B may first see A's unanswered "hello".
            let (n, from) = within("b receives from a", relay_b.recv_from(&mut buf))
                .await
                .unwrap();
            if &buf[..n] != b"hello" {
                break (n, from);
            }
        };
        assert_eq!(
            (&buf[..n], from),
            (&[round, 1][..], addr_a),
            "round {round}"
        );
    }
    relay_a.close().await.unwrap();
    relay_b.close().await.unwrap();
    client_a.close().await.unwrap();
    client_b.close().await.unwrap();
}

#[tokio::test]
async fn wrong_and_expired_credentials_cannot_allocate() {
    let server = TestServer::start(&turn_config(""));
    let addr = server.listener("turn_udp");
    let (username, _) = rest_credential(600, "it");
    let client = turn_client(addr, &username, "not-the-password").await;
    assert!(within("refusal", client.allocate()).await.is_err());
    let (username, password) = rest_credential(-5, "it");
    let client = turn_client(addr, &username, &password).await;
    assert!(within("refusal", client.allocate()).await.is_err());
    server.wait_log("TURN credential no longer valid");
}

/// The TURN entry of a welcome.
fn turn_entry(welcome: &ServerMsg) -> IceServer {
    let ServerMsg::Welcome {
        ice_servers,
        ice_ttl_s,
        ..
    } = welcome
    else {
        panic!("not a welcome: {welcome:?}")
    };
    assert_eq!(*ice_ttl_s, Some(600));
    ice_servers
        .iter()
        .find(|s| s.urls.iter().any(|u| u.starts_with("turn:")))
        .cloned()
        .expect("a TURN entry")
}

#[tokio::test]
async fn welcome_credentials_work_until_the_peer_leaves() {
    let server = TestServer::start(&turn_config("grace_period_s = 0\n"));
    let mut ws = server.client().await;
    let welcome = ws.join("turn-room", None).await;
    let entry = turn_entry(&welcome);
    let udp = server.listener("turn_udp");
    let tls = server.listener("turn_tls");
    assert!(
        entry
            .urls
            .contains(&format!("turn:127.0.0.1:{}?transport=udp", udp.port())),
        "{:?}",
        entry.urls
    );
    assert!(
        entry
            .urls
            .contains(&format!("turns:127.0.0.1:{}?transport=tcp", tls.port())),
        "{:?}",
        entry.urls
    );
    let (username, password) = (entry.username.unwrap(), entry.credential.unwrap());

    let client = turn_client(udp, &username, &password).await;
    let relay = within("allocation", client.allocate())
        .await
        .expect("member may allocate");
    let relayed = relay.local_addr().unwrap();

    ws.send(json!({"type": "leave"})).await;
    // The departed peer's allocation is closed after the grace period...
    let closed = server.wait_log("allocation closed");
    assert_eq!(closed["relayed"], relayed.to_string());
    assert_eq!(closed["reason"], "peer_left");
    // ...and its credential no longer allocates.
    let again = turn_client(udp, &username, &password).await;
    assert!(within("refusal", again.allocate()).await.is_err());
}

/// Sends malformed and truncated STUN to the TURN listeners over UDP and TCP.
async fn send_garbage(server: &TestServer) {
    let udp_addr = server.listener("turn_udp");
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for junk in [
        &[][..],
        &[0x00],
        &[0x40, 0x00, 0xff, 0xff],
        &[0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42],
        &[0xff; 64],
    ] {
        udp.send_to(junk, udp_addr).await.unwrap();
    }
    let mut tcp = TcpStream::connect(server.listener("turn_tcp"))
        .await
        .unwrap();
    tcp.write_all(&[0x00, 0x01, 0x00, 0x07, 1, 2, 3, 4])
        .await
        .unwrap();
}

#[tokio::test]
async fn garbage_on_every_transport_is_dropped_and_service_continues() {
    let server = TestServer::start(&turn_config(""));
    send_garbage(&server).await;
    // The server still answers STUN Binding.
    let udp_addr = server.listener("turn_udp");
    let (username, password) = rest_credential(600, "it");
    let client = turn_client(udp_addr, &username, &password).await;
    let mapped = within("binding", client.send_binding_request())
        .await
        .expect("binding after garbage");
    assert_eq!(mapped.ip().to_string(), "127.0.0.1");
}

/// The same, seen by an independent client.
#[tokio::test]
#[cfg_attr(
    not(has_coturn),
    ignore = "needs coturn's turnutils_* and /etc/turnserver.conf (apt install coturn)"
)]
async fn garbage_is_dropped_and_coturns_stunclient_still_gets_answers() {
    let server = TestServer::start(&turn_config(""));
    send_garbage(&server).await;
    let port = server.listener("turn_udp").port().to_string();
    let out = stunclient(&["-p", &port, "127.0.0.1"]);
    assert!(out.contains("UDP reflexive addr: 127.0.0.1:"), "{out}");
}

/// Runs `turnutils_stunclient` and returns what it printed.
fn stunclient(args: &[&str]) -> String {
    need(Prereq::Coturn);
    let out = Command::new("turnutils_stunclient")
        .args(args)
        .output()
        .expect("run turnutils_stunclient");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Runs `turnutils_uclient` against an echo `turnutils_peer`; returns (exit code, output).
fn uclient(server: &TestServer, transport: &[&str], peer_ip: &str) -> (i32, String) {
    let port = if transport.contains(&"-S") {
        server.listener("turn_tls").port()
    } else if transport.contains(&"-t") {
        server.listener("turn_tcp").port()
    } else {
        server.listener("turn_udp").port()
    };
    uclient_on(port, transport, peer_ip)
}

/// Like `uclient`, against the given server port.
fn uclient_on(port: u16, transport: &[&str], peer_ip: &str) -> (i32, String) {
    need(Prereq::Coturn);
    let peer_port = free_udp_port();
    let mut peer = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &peer_port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start turnutils_peer");
    let port = port.to_string();
    let peer_port = peer_port.to_string();
    let mut args = vec![
        "-p", &port, "-W", SECRET, "-r", &peer_port, "-e", peer_ip, "-m", "4", "-n", "200", "-l",
        "120", "-z", "2", "-c", "-X",
    ];
    args.extend(transport);
    args.push("127.0.0.1");
    let out = Command::new("timeout")
        .arg("60")
        .arg("turnutils_uclient")
        .args(&args)
        .output()
        .expect("run turnutils_uclient");
    let _ = peer.kill();
    let _ = peer.wait();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// A free loopback UDP port below the relay's port range (49152 up by default). A peer
/// port inside it would be a relay address, which the policy opens to relay-to-relay
/// traffic even where loopback peers are refused: the denied-peer test would then see its
/// permission granted (about one run in three, with the kernel's ephemeral ports).
fn free_udp_port() -> u16 {
    const BELOW: u16 = 49152;
    let start = 20_000 + (std::process::id() % 20_000) as u16;
    (start..BELOW)
        .chain(1024..start)
        .find(|port| std::net::UdpSocket::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free UDP port below 49152")
}

/// The loss percentage `turnutils_uclient` reports.
fn lost_percent(out: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.contains("Total lost packets"))
        .unwrap_or_else(|| panic!("no loss line in:\n{out}"));
    let pct = line
        .split('(')
        .nth(1)
        .and_then(|s| s.split('%').next())
        .expect("a percentage");
    pct.parse().expect("a number")
}

#[test]
#[cfg_attr(
    not(has_coturn),
    ignore = "needs coturn's turnutils_* and /etc/turnserver.conf (apt install coturn)"
)]
fn coturn_uclient_relays_over_udp_tcp_and_tls_without_loss() {
    let server = TestServer::start(&turn_config(""));
    for (name, transport) in [
        ("udp", &[][..]),
        ("tcp", &["-t"][..]),
        ("tls", &["-t", "-S"][..]),
    ] {
        let (code, out) = uclient(&server, transport, "127.0.0.1");
        assert_eq!(code, 0, "{name}: turnutils_uclient failed:\n{out}");
        assert!(lost_percent(&out) < 1.0, "{name}: packets lost:\n{out}");
    }
}

#[test]
#[cfg_attr(
    not(has_coturn),
    ignore = "needs coturn's turnutils_* and /etc/turnserver.conf (apt install coturn)"
)]
fn coturn_uclient_gets_403_for_a_denied_peer() {
    // No allow_peers: loopback peers fall in the default deny list.
    let server = TestServer::start(&format!("[turn]\nsecrets = [\"{SECRET}\"]\n"));
    let (code, out) = uclient(&server, &[], "127.0.0.1");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("403"), "{out}");
    server.wait_log("peer address refused by policy");
}

#[tokio::test]
#[cfg_attr(
    not(has_coturn),
    ignore = "needs coturn's turnutils_* and /etc/turnserver.conf (apt install coturn)"
)]
async fn stun_binding_answers_on_udp() {
    let server = TestServer::start(&turn_config(""));
    let port = server.listener("turn_udp").port().to_string();
    let out = stunclient(&["-p", &port, "127.0.0.1"]);
    assert!(out.contains("UDP reflexive addr: 127.0.0.1:"), "{out}");
}

#[tokio::test]
async fn fresh_credentials_are_pushed_before_expiry_and_work() {
    let server = TestServer::start(&turn_config("credential_ttl_s = 5\n"));
    let mut ws = server.client().await;
    let welcome = ws.join("refresh", None).await;
    let ServerMsg::Welcome { ice_servers, .. } = &welcome else {
        unreachable!()
    };
    let first = ice_servers
        .iter()
        .find(|s| s.username.is_some())
        .unwrap()
        .clone();
    // Pushed at four fifths of the 5 s lifetime.
    let ServerMsg::IceServers {
        ice_servers,
        ice_ttl_s,
    } = ws.recv().await
    else {
        panic!("expected ice_servers")
    };
    assert_eq!(ice_ttl_s, 5);
    let fresh = ice_servers
        .iter()
        .find(|s| s.username.is_some())
        .unwrap()
        .clone();
    assert_ne!(
        fresh.username, first.username,
        "a new expiry means a new username"
    );
    let client = turn_client(
        server.listener("turn_udp"),
        &fresh.username.unwrap(),
        &fresh.credential.unwrap(),
    )
    .await;
    within("allocation", client.allocate())
        .await
        .expect("fresh credential allocates");
}

#[test]
fn a_relay_ip_of_another_host_is_refused_at_start() {
    let dir = crate::harness::temp_dir();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nstate_dir = \"{}\"\n[https]\nlisten = [\"127.0.0.1:0\"]\n[turn]\nudp_listen = [\"127.0.0.1:0\"]\ntcp_listen = []\ntls_listen = []\nrelay_ip = \"192.0.2.77\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("turn.relay_ip") && err.contains("192.0.2.77"),
        "{err}"
    );
}

#[tokio::test]
async fn a_failed_relay_send_is_dropped_and_the_allocation_keeps_working() {
    let server = TestServer::start(&turn_config(""));
    let (username, password) = rest_credential(600, "it");
    let client = turn_client(server.listener("turn_udp"), &username, &password).await;
    let relay = within("allocation", client.allocate())
        .await
        .expect("allocate");
    // The kernel refuses to send to port 0 (EINVAL): coturn 4.6 would close the allocation here.
    let _ = relay.send_to(b"lost", "127.0.0.1:0".parse().unwrap()).await;
    server.wait_log("relay send failed");
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    relay
        .send_to(b"still here", peer.local_addr().unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = within("peer receive", peer.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(
        (&buf[..n], from),
        (&b"still here"[..], relay.local_addr().unwrap())
    );
}

/// A STUN Binding request, which a TURN listener answers to whoever sent it.
fn binding_request() -> Vec<u8> {
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    request.extend_from_slice(b"local-probe!");
    request
}

/// Relay ports of the next tests: above the kernel's ephemeral range (to 60999), so a
/// local service bound to port 0 is outside it.
const HIGH_RELAY_PORTS: &str = "min_port = 61000\nmax_port = 65535\n";

/// With loopback, the harness's relay address, not in allow_peers: a permission for another
/// allocation's relayed address opens the live relays of that IP alone. A local service on
/// another port of the relay address, and the TURN listener, are reached by no Send
/// indication, and what they send to the relay never reaches the client.
#[tokio::test]
async fn the_relay_address_reaches_live_relays_not_local_services_or_listeners() {
    let server = TestServer::start(&format!(
        "[turn]\nsecrets = [\"{SECRET}\"]\n{HIGH_RELAY_PORTS}"
    ));
    let turn_udp = server.listener("turn_udp");
    let service = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let service_addr = service.local_addr().unwrap();
    let (username, password) = rest_credential(600, "it");
    let mut a = Client::new(turn_udp, &username, &password).await.unwrap();
    let mut b = Client::new(turn_udp, &username, &password).await.unwrap();
    let relay_a = within("allocation", a.allocate()).await.unwrap();
    let relay_b = within("allocation", b.allocate()).await.unwrap();
    assert_eq!(
        relay_a.ip(),
        service_addr.ip(),
        "the service is on the relay address"
    );
    within("permission", a.permit(relay_b)).await.unwrap();
    within("permission", b.permit(relay_a)).await.unwrap();
    let refused = within("permission", a.permit(service_addr)).await;
    assert!(
        matches!(refused, Err(ProbeError::Refused { code: 403, .. })),
        "{refused:?}"
    );
    a.send(service_addr, b"to the service").await.unwrap();
    a.send(turn_udp, &binding_request()).await.unwrap();
    service.send_to(b"from the service", relay_a).await.unwrap();
    // The relays hear each other, and nothing else first: the listener's answer to the
    // Binding request and the service's datagram reach relay A before B's.
    a.send(relay_b, b"a to b").await.unwrap();
    let heard = within("relay B hears A", b.recv()).await.unwrap();
    assert_eq!(heard, (relay_a, b"a to b".to_vec()));
    b.send(relay_a, b"b to a").await.unwrap();
    let heard = within("relay A hears B", a.recv()).await.unwrap();
    assert_eq!(heard, (relay_b, b"b to a".to_vec()));
    // The service heard nothing: the first datagram it reads is one sent after the others.
    let marker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    marker.send_to(b"marker", service_addr).await.unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = within("the marker", service.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf[..n], b"marker");
}

/// Firefox keeps one TURN permission per IP (RFC 8656: permissions ignore ports) and gives
/// up on an IP after a 403. Browsers release relays they have signalled (Chromium keeps one
/// per network): a permission asked for a released relay of this server must succeed and
/// reach the other relays on its IP, and a relay reached through a permission asked for
/// another one must answer. A local program on a released relay port is reached by nothing.
#[tokio::test]
async fn one_permission_per_ip_reaches_every_live_relay_even_asked_for_a_released_one() {
    let server = TestServer::start(&format!(
        "[turn]\nsecrets = [\"{SECRET}\"]\n{HIGH_RELAY_PORTS}"
    ));
    let turn_udp = server.listener("turn_udp");
    let (username, password) = rest_credential(600, "it");
    let mut clients = Vec::new();
    let mut relays = Vec::new();
    for _ in 0..3 {
        let mut c = Client::new(turn_udp, &username, &password).await.unwrap();
        relays.push(within("allocation", c.allocate()).await.unwrap());
        clients.push(c);
    }
    let [a, b, released] = &clients[..] else {
        unreachable!()
    };
    let (relay_a, relay_b, relay_released) = (relays[0], relays[1], relays[2]);
    released.release().await;
    // Whatever binds the released port now (here: this test) must not be reached. The
    // server closes the relay socket just after answering: bind once it has.
    let squatter = within("the released port", async {
        loop {
            match UdpSocket::bind(relay_released).await {
                Ok(socket) => break socket,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err(e) => panic!("bind {relay_released}: {e}"),
            }
        }
    })
    .await;
    // As Firefox: one permission for the IP, asked with the released relay's address.
    within("permission for a released relay", a.permit(relay_released))
        .await
        .expect("a success, not a 403 that would cut off the whole IP");
    within("permission", b.permit(relay_a)).await.unwrap();
    a.send(relay_released, b"to the released relay")
        .await
        .unwrap();
    squatter
        .send_to(b"from the released port", relay_a)
        .await
        .unwrap();
    // B, never named in A's permissions, is reached, and answers.
    a.send(relay_b, b"a to b").await.unwrap();
    let heard = within("relay B hears A", b.recv()).await.unwrap();
    assert_eq!(heard, (relay_a, b"a to b".to_vec()));
    b.send(relay_a, b"b to a").await.unwrap();
    let heard = within("relay A hears B", a.recv()).await.unwrap();
    assert_eq!(
        heard,
        (relay_b, b"b to a".to_vec()),
        "the squatter's datagram came first"
    );
    // The squatter heard nothing: the first datagram it reads is one sent after the others.
    let marker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    marker.send_to(b"marker", relay_released).await.unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = within("the marker", squatter.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf[..n], b"marker");
}

#[test]
#[cfg_attr(
    not(has_coturn),
    ignore = "needs coturn's turnutils_* and /etc/turnserver.conf (apt install coturn)"
)]
fn turn_shares_the_https_port_over_tls_and_plain_tcp() {
    let server = TestServer::start(&turn_config(""));
    for (name, transport) in [("tls", &["-t", "-S"][..]), ("tcp", &["-t"][..])] {
        let (code, out) = uclient_on(server.https.port(), transport, "127.0.0.1");
        assert_eq!(code, 0, "{name} on the HTTPS port:\n{out}");
        assert!(lost_percent(&out) < 1.0, "{name}: packets lost:\n{out}");
    }
}

#[tokio::test]
async fn welcome_offers_turns_on_the_https_port() {
    let server = TestServer::start(&turn_config(""));
    let mut ws = server.client().await;
    let entry = turn_entry(&ws.join("r443", None).await);
    let url = format!("turns:127.0.0.1:{}?transport=tcp", server.https.port());
    assert!(entry.urls.contains(&url), "{:?}", entry.urls);
    // HTTP on the shared port is unaffected.
    assert_eq!(server.https_get("/healthz").await.0, 200);
}
