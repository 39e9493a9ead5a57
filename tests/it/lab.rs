//! Calls across the NAT lab (network namespaces, as root): symmetric and cone
//! NAT, a corporate network that lets only TCP 443 out, and controls that prove
//! the lab is real. Each test builds its own lab and checks that nothing of it
//! remains afterwards; the tests take turns, since browsers need the CPU.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use switchboard::lab::{self, Lab, LabSpec, Nat};

use crate::bidi::Firefox;
use crate::cdp::{Browser, Page};
use crate::harness::{in_netns, need, spawn_in_netns, temp_dir};
use crate::prereq::Prereq;

static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const SERVER: &str = "11.11.0.10";

/// A lab for one test; fails the test when this machine cannot build one (see `need`).
fn start_lab(
    name: &str,
    nat: [Nat; 2],
    needs_browser: bool,
) -> (MutexGuard<'static, ()>, Lab, tempfile::TempDir) {
    start_cluster_lab(name, nat, needs_browser, 1)
}

/// A lab with `instances` Switchboards (more than one share rooms through Redis).
fn start_cluster_lab(
    name: &str,
    nat: [Nat; 2],
    needs_browser: bool,
    instances: usize,
) -> (MutexGuard<'static, ()>, Lab, tempfile::TempDir) {
    need(Prereq::Netns);
    if needs_browser {
        need(Prereq::Chromium);
    }
    if instances > 1 {
        need(Prereq::Redis);
    }
    let guard = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = temp_dir();
    let lab = Lab::up(LabSpec {
        name: name.to_owned(),
        nat,
        binary: env!("CARGO_BIN_EXE_switchboard").into(),
        dir: dir.path().to_owned(),
        server_toml: String::new(),
        instances,
    })
    .unwrap_or_else(|e| panic!("lab {name} could not be built: {e}"));
    (guard, lab, dir)
}

/// Tears the lab down and checks that none of its namespaces or processes remain.
fn finish(lab: Lab) {
    let name = lab.spec.name.clone();
    drop(lab);
    assert!(
        lab::namespaces(&name).is_empty(),
        "namespaces of lab {name} remain"
    );
    assert!(
        lab::processes(&name).is_empty(),
        "processes of lab {name} remain"
    );
}

/// The address `server` sees for `socket`, by STUN Binding.
fn mapped(socket: &std::net::UdpSocket, server: SocketAddr) -> SocketAddr {
    mapped_from(socket, server).0
}

/// The address `server` sees for `socket`, by STUN Binding, and where the answer came from.
fn mapped_from(socket: &std::net::UdpSocket, server: SocketAddr) -> (SocketAddr, SocketAddr) {
    use stun::message::{BINDING_REQUEST, Getter, Message};
    let mut request = Message::new();
    request
        .build(&[
            Box::new(stun::agent::TransactionId::new()),
            Box::new(BINDING_REQUEST),
        ])
        .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket.send_to(&request.raw, server).unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = socket
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("a Binding response from {server}: {e}"));
    let mut response = Message::new();
    response.raw = buf[..n].to_vec();
    response.decode().unwrap();
    let mut addr = stun::xoraddr::XorMappedAddress::default();
    addr.get_from(&response).unwrap();
    (SocketAddr::new(addr.ip, addr.port), from)
}

#[test]
#[cfg_attr(
    not(has_netns),
    ignore = "needs root, ip and iptables (apt install iproute2 iptables)"
)]
fn symmetric_nat_maps_per_destination_and_cone_nat_does_not() {
    let (_turn, lab, _dir) = start_lab("sbn", [Nat::Symmetric, Nat::Cone], false);
    let servers: [SocketAddr; 2] = [
        "11.11.0.10:3478".parse().unwrap(),
        "11.11.0.11:3478".parse().unwrap(),
    ];
    let probe = move || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        servers.map(|s| mapped(&socket, s))
    };
    let symmetric = in_netns(&lab.ns("c1"), probe);
    assert_eq!(symmetric[0].ip().to_string(), "11.11.0.21");
    assert_ne!(
        symmetric[0].port(),
        symmetric[1].port(),
        "symmetric NAT: {symmetric:?}"
    );
    let cone = in_netns(&lab.ns("c2"), probe);
    assert_eq!(cone[0].ip().to_string(), "11.11.0.22");
    assert_eq!(cone[0].port(), cone[1].port(), "cone NAT: {cone:?}");
    finish(lab);
}

/// The server's UDP listener is the wildcard (as in the shipped config) on a host with two
/// public addresses. From one socket behind symmetric NAT, a Binding to each is answered,
/// from the address it was sent to (the NAT passes nothing else back), and so is Allocate.
#[test]
#[cfg_attr(
    not(has_netns),
    ignore = "needs root, ip and iptables (apt install iproute2 iptables)"
)]
fn both_server_addresses_answer_a_client_behind_symmetric_nat() {
    let (_turn, lab, dir) = start_lab("sbm", [Nat::Symmetric, Nat::Cone], false);
    let servers: [SocketAddr; 2] = [
        format!("{}:3478", lab::SERVER_IP).parse().unwrap(),
        format!("{}:3478", lab::SERVER_IP2).parse().unwrap(),
    ];
    let answers = in_netns(&lab.ns("c1"), move || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        servers.map(|s| {
            let (mapped, from) = mapped_from(&socket, s);
            (mapped.ip().to_string(), from)
        })
    });
    for (server, (mapped, from)) in servers.iter().zip(&answers) {
        assert_eq!(mapped, "11.11.0.21", "seen from {server}");
        assert_eq!(from, server, "the answer to {server} came from {from}");
    }

    let secret = std::fs::read_to_string(
        dir.path()
            .join("state")
            .join(switchboard::secrets::TURN_SECRET_FILE),
    )
    .expect("the lab's generated TURN secret");
    let username = format!("{}:lab", unix_now() + 600);
    let password = switchboard::turn::auth::rest_password(
        &switchboard::config::Secret::new(secret.trim().to_owned()),
        &username,
    );
    let relayed = in_netns(&lab.ns("c1"), move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let mut client =
                    switchboard::turn::probe::Client::new(servers[1], &username, &password)
                        .await
                        .unwrap();
                let relayed = client.allocate().await;
                client.release().await;
                relayed
            })
    })
    .unwrap_or_else(|e| panic!("Allocate through {}: {e}", servers[1]));
    assert_eq!(relayed.ip().to_string(), lab::SERVER_IP);
    finish(lab);
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Two pages, one per node, in `room` with `query` (and `autojoin`, so the pages join
/// without the lobby); waits until both satisfy `predicate`.
fn call(lab: &Lab, nodes: [&str; 2], room: &str, query: &str, predicate: &str) -> [Value; 2] {
    let query = if query.is_empty() {
        "?autojoin".to_owned()
    } else {
        format!("{query}&autojoin")
    };
    let url = format!("https://{SERVER}/r/{room}{query}");
    call_at(lab, nodes, [&url, &url], predicate)
}

/// Two pages, one per node, each opening its own URL; waits until both satisfy `predicate`.
fn call_at(lab: &Lab, nodes: [&str; 2], urls: [&str; 2], predicate: &str) -> [Value; 2] {
    let browsers = nodes.map(|node| Browser::launch(&["ip", "netns", "exec", &lab.ns(node)], &[]));
    let pages: Vec<Page<'_>> = browsers
        .iter()
        .zip(urls)
        .map(|(b, url)| b.open(url))
        .collect();
    let states: Vec<Result<Value, Value>> = pages
        .iter()
        .map(|p| p.try_wait_for_state(predicate, CALL_TIMEOUT))
        .collect();
    for page in pages {
        page.close();
    }
    match (&states[0], &states[1]) {
        (Ok(a), Ok(b)) => [a.clone(), b.clone()],
        _ => {
            let logs: Vec<String> = (1..=lab.spec.instances)
                .map(|k| {
                    let log = std::fs::read_to_string(lab.log_path(k)).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(30).collect();
                    format!("server {k} log (newest first):\n{}", tail.join("\n"))
                })
                .collect();
            panic!(
                "{nodes:?} never reached `{predicate}`:\n{states:#?}\n{}",
                logs.join("\n")
            )
        }
    }
}

const CONNECTED: &str = "s => s.phase === 'joined' && s.peers.length === 1 \
                         && s.peers[0].connectionState === 'connected' && s.peers[0].framesDecoded > 0";

fn peer(state: &Value) -> &Value {
    &state["peers"][0]
}

#[test]
#[cfg_attr(
    not(all(has_netns, has_chromium)),
    ignore = "needs root, ip and iptables (apt install iproute2 iptables); needs chromium (apt install chromium)"
)]
fn browsers_behind_symmetric_nat_connect_through_the_relay() {
    let (_turn, lab, _dir) = start_lab("sbs", [Nat::Symmetric, Nat::Symmetric], true);
    let [a, b] = call(&lab, ["c1", "c2"], "symmetric", "", CONNECTED);
    for s in [&a, &b] {
        let p = peer(s);
        assert!(
            p["candidateType"] == "relay" || p["remoteCandidateType"] == "relay",
            "no relay in the pair: {s:#}"
        );
    }
    finish(lab);
}

#[test]
#[cfg_attr(
    not(all(has_netns, has_chromium)),
    ignore = "needs root, ip and iptables (apt install iproute2 iptables); needs chromium (apt install chromium)"
)]
fn relay_only_calls_over_udp_tcp_tls_and_from_the_corporate_network() {
    let (_turn, lab, _dir) = start_lab("sbr", [Nat::Symmetric, Nat::Symmetric], true);
    for transport in ["udp", "tcp", "tls"] {
        let [a, b] = call(
            &lab,
            ["c1", "c2"],
            &format!("relay-{transport}"),
            &format!("?relay={transport}"),
            CONNECTED,
        );
        for s in [&a, &b] {
            assert_eq!(peer(s)["candidateType"], "relay", "{s:#}");
            assert_eq!(peer(s)["relayProtocol"], transport, "{s:#}");
        }
    }
    // c3 may only open TCP connections to port 443: its relay is TURN over TLS on the HTTPS port.
    let [corporate, other] = call(&lab, ["c3", "c1"], "corporate", "?relay=tls", CONNECTED);
    assert_eq!(peer(&corporate)["relayProtocol"], "tls", "{corporate:#}");
    let url = peer(&corporate)["relayUrl"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        url.contains(&format!("{SERVER}:443")),
        "corporate relay URL {url:?}: {corporate:#}"
    );
    assert_eq!(peer(&other)["candidateType"], "relay", "{other:#}");
    finish(lab);
}

/// Firefox in a lab node calls Chromium in another, each opening its URL of the same
/// room; both states once connected.
fn firefox_calls_chromium_in(lab: &Lab, nodes: [&str; 2], urls: [&str; 2]) -> [Value; 2] {
    let cert = lab.certificate(1);
    let firefox = Firefox::launch_in(Some(&lab.ns(nodes[0])), &[&cert]);
    let chromium = Browser::launch(&["ip", "netns", "exec", &lab.ns(nodes[1])], &[]);
    let fox = firefox.open(urls[0]);
    let chrome = chromium.open(urls[1]);
    match (
        fox.try_wait_for_state(CONNECTED, CALL_TIMEOUT),
        chrome.try_wait_for_state(CONNECTED, CALL_TIMEOUT),
    ) {
        (Ok(a), Ok(b)) => {
            assert_eq!(peer(&a)["id"], b["peerId"], "{a:#}\n{b:#}");
            [a, b]
        }
        (a, b) => {
            let log = std::fs::read_to_string(lab.log_path(1)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "{nodes:?} at {urls:?}: no call; Firefox: {a:#?}\nChromium: {b:#?}\nserver log (newest first):\n{}",
                tail.join("\n")
            )
        }
    }
}

/// Firefox behind the lab's symmetric NAT calls Chromium behind the other, relay-only over
/// UDP; Firefox on the corporate network (only TCP to port 443 out) calls Chromium through
/// TURN over TLS on the HTTPS port. Firefox opens the page by the server's name (`srv.lab`,
/// in the lab's hosts files and on its certificate), as a deployment would: it takes no
/// TURN server over TLS named by an IP address, and the TURN URLs name the server as the
/// page does. Chromium opens it by address: inside the lab, it gathers nothing from TURN
/// servers named in the hosts file (its pages load by that name, though).
#[test]
#[cfg_attr(
    not(all(has_netns, has_chromium, has_firefox)),
    ignore = "needs root, ip and iptables (apt install iproute2 iptables); needs chromium (apt install chromium); needs firefox-esr and certutil (apt install firefox-esr libnss3-tools)"
)]
fn firefox_calls_chromium_behind_symmetric_nat_and_from_the_corporate_network() {
    need(Prereq::Firefox);
    let (_turn, lab, _dir) = start_lab("sbf", [Nat::Symmetric, Nat::Symmetric], true);
    let name = lab::server_name(1);
    let [fox, chrome] = firefox_calls_chromium_in(
        &lab,
        ["c1", "c2"],
        [
            &format!("https://{name}/r/fox-nat?relay=udp&autojoin"),
            &format!("https://{SERVER}/r/fox-nat?relay=udp&autojoin"),
        ],
    );
    for s in [&fox, &chrome] {
        assert_eq!(peer(s)["candidateType"], "relay", "{s:#}");
        assert_eq!(peer(s)["relayProtocol"], "udp", "{s:#}");
    }
    let [corporate, other] = firefox_calls_chromium_in(
        &lab,
        ["c3", "c1"],
        [
            &format!("https://{name}/r/fox-corporate?relay=tls&autojoin"),
            &format!("https://{SERVER}/r/fox-corporate?relay=tls&autojoin"),
        ],
    );
    for s in [&corporate, &other] {
        assert_eq!(peer(s)["candidateType"], "relay", "{s:#}");
        assert_eq!(peer(s)["relayProtocol"], "tls", "{s:#}");
    }
    // Firefox reports no relay URL; from c3 only TCP to port 443 passes, so its TLS relay is
    // the one on the HTTPS port, named srv.lab. Chromium's is on this server too.
    let url = peer(&other)["relayUrl"].as_str().unwrap_or_default();
    assert!(
        url.contains(&format!("{SERVER}:")),
        "Chromium's relay URL {url:?}: {other:#}"
    );
    finish(lab);
}

/// `switchboard lab up --instances 3`: browsers behind NAT on different instances call each
/// other relay-only, each through the relay of the instance it joined (the room spans
/// instances through Redis), over UDP and, from the corporate network, TLS on port 443.
#[test]
#[cfg_attr(
    not(all(has_netns, has_chromium, has_redis)),
    ignore = "needs root, ip and iptables (apt install iproute2 iptables); needs chromium (apt install chromium); needs redis-server (apt install redis-server)"
)]
fn a_call_crosses_instances_behind_nat() {
    let (_turn, lab, _dir) = start_cluster_lab("sbc", [Nat::Symmetric, Nat::Symmetric], true, 3);
    let (first, third) = (lab::server_ip(1), lab::server_ip(3));
    let [a, b] = call_at(
        &lab,
        ["c1", "c2"],
        [
            &format!("https://{first}/r/across?relay=udp&autojoin"),
            &format!("https://{third}/r/across?relay=udp&autojoin"),
        ],
        CONNECTED,
    );
    for (s, ip) in [(&a, &first), (&b, &third)] {
        assert_eq!(peer(s)["candidateType"], "relay", "{s:#}");
        let url = peer(s)["relayUrl"].as_str().unwrap_or_default();
        assert!(
            url.contains(&format!("{ip}:3478")),
            "the relay is not the joined instance's {ip}: {url:?} in {s:#}"
        );
    }
    assert_eq!(peer(&a)["id"], b["peerId"], "{a:#}\n{b:#}");
    let second = lab::server_ip(2);
    let [corporate, other] = call_at(
        &lab,
        ["c3", "c1"],
        [
            &format!("https://{second}/r/corporate?relay=tls&autojoin"),
            &format!("https://{first}/r/corporate?autojoin"),
        ],
        CONNECTED,
    );
    let url = peer(&corporate)["relayUrl"].as_str().unwrap_or_default();
    assert!(
        url.contains(&format!("{second}:443")),
        "corporate relay URL {url:?}: {corporate:#}"
    );
    // c1 (not relay-only) reaches the corporate peer's relay on the second instance.
    assert_eq!(peer(&other)["remoteCandidateType"], "relay", "{other:#}");
    finish(lab);
}

#[test]
#[cfg_attr(
    not(all(has_netns, has_chromium)),
    ignore = "needs root, ip and iptables (apt install iproute2 iptables); needs chromium (apt install chromium)"
)]
fn without_turn_symmetric_nat_fails_and_cone_nat_connects_directly() {
    {
        let (_turn, lab, _dir) = start_lab("sbf", [Nat::Symmetric, Nat::Symmetric], true);
        let failed = "s => s.peers.length === 1 && s.peers[0].everFailed";
        let states = call(&lab, ["c1", "c2"], "stun-only", "?ice=stun", failed);
        for s in &states {
            assert_eq!(
                peer(s)["everConnected"],
                false,
                "connected without a relay: {s:#}"
            );
        }
        finish(lab);
    }
    let (_turn, lab, _dir) = start_lab("sbc", [Nat::Cone, Nat::Cone], true);
    let [a, b] = call(&lab, ["c1", "c2"], "cone", "?ice=stun", CONNECTED);
    for s in [&a, &b] {
        assert_ne!(peer(s)["candidateType"], "relay", "{s:#}");
        assert_ne!(peer(s)["remoteCandidateType"], "relay", "{s:#}");
    }
    finish(lab);
}

#[test]
#[cfg_attr(
    not(all(has_netns, has_chromium)),
    ignore = "needs root, ip and iptables (apt install iproute2 iptables); needs chromium (apt install chromium)"
)]
fn an_unreachable_peer_address_does_not_close_the_allocation() {
    let (_turn, lab, _dir) = start_lab("sbu", [Nat::Symmetric, Nat::Symmetric], true);
    // Relaying to the clients' private addresses now fails at once (ENETUNREACH) instead of
    // vanishing in the sink; coturn 4.6 closes the whole allocation when that happens.
    let status = lab
        .command("srv", "ip")
        .args(["route", "add", "unreachable", "10.0.0.0/8"])
        .status()
        .unwrap();
    assert!(status.success());
    let [a, b] = call(&lab, ["c1", "c2"], "unreachable", "", CONNECTED);
    let log = std::fs::read_to_string(lab.spec.dir.join("switchboard.log")).unwrap();
    assert!(
        log.contains("relay send failed"),
        "no failed relay send was seen; the test proves nothing"
    );
    // The allocations that saw the failures carried the call.
    for s in [&a, &b] {
        let p = peer(s);
        assert!(
            p["candidateType"] == "relay" || p["remoteCandidateType"] == "relay",
            "{s:#}"
        );
    }
    finish(lab);
}

#[test]
#[cfg_attr(
    not(all(has_netns, has_coturn)),
    ignore = "needs root, ip and iptables (apt install iproute2 iptables); needs coturn's turnutils_* and /etc/turnserver.conf (apt install coturn)"
)]
fn coturn_uclient_relays_over_tcp_and_tls_from_behind_nat_and_the_corporate_network() {
    need(Prereq::Coturn);
    let (_turn, lab, dir) = start_lab("sbt", [Nat::Symmetric, Nat::Symmetric], false);
    let secret = std::fs::read_to_string(
        dir.path()
            .join("state")
            .join(switchboard::secrets::TURN_SECRET_FILE),
    )
    .expect("the lab's generated TURN secret");
    // -y: the clients relay to each other's relayed addresses, so no peer is needed.
    let runs: [(&str, &str, &[&str]); 4] = [
        ("tcp", "c1", &["-t", "-p", "3478"]),
        ("tls", "c1", &["-t", "-S", "-p", "5349"]),
        ("tls on 443", "c1", &["-t", "-S", "-p", "443"]),
        ("corporate, tls on 443", "c3", &["-t", "-S", "-p", "443"]),
    ];
    for (name, node, args) in runs {
        let out = lab
            .command(node, "timeout")
            .args([
                "60",
                "turnutils_uclient",
                "-y",
                "-W",
                secret.trim(),
                "-m",
                "2",
                "-n",
                "100",
                "-l",
                "120",
                "-z",
                "2",
                "-c",
            ])
            .args(args)
            .arg(SERVER)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}:\n{text}");
        assert!(
            text.contains("Total lost packets 0 (0.000000%)"),
            "{name}:\n{text}"
        );
    }
    finish(lab);
}

#[test]
#[cfg_attr(
    not(has_netns),
    ignore = "needs root, ip and iptables (apt install iproute2 iptables)"
)]
fn webrtc_rs_peers_behind_symmetric_nat_call_through_the_udp_relay() {
    use tokio::sync::oneshot;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;

    use crate::harness::{client_tls_for, connect_ws};
    use crate::webrtc_call::{answerer, offerer};

    let (_turn, lab, dir) = start_lab("sbw", [Nat::Symmetric, Nat::Symmetric], false);
    let tls = client_tls_for(
        &dir.path()
            .join("state")
            .join(switchboard::tls::GENERATED_CERT),
    );
    let url = format!("wss://{SERVER}/ws");
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let (joined_tx, joined_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel();
    let a = spawn_in_netns(&lab.ns("c1"), {
        let (tls, url) = (tls.clone(), url.clone());
        move || {
            runtime().block_on(async move {
                let ws = connect_ws(url.into_client_request().unwrap(), tls)
                    .await
                    .expect("signaling from c1");
                answerer(ws, "lab-webrtc-rs", joined_tx, stop_rx).await
            })
        }
    });
    joined_rx.blocking_recv().expect("c1 joined");
    let b = spawn_in_netns(&lab.ns("c2"), move || {
        runtime().block_on(async move {
            let ws = connect_ws(url.into_client_request().unwrap(), tls)
                .await
                .expect("signaling from c2");
            let result = offerer(ws, "lab-webrtc-rs").await;
            let _ = stop_tx.send(());
            result
        })
    });
    let (reply, b_types) = b.join().expect("c2 peer");
    let a_types = a.join().expect("c1 peer");
    assert_eq!(reply, "pong:ping");
    let relay = (RTCIceCandidateType::Relay, RTCIceCandidateType::Relay);
    assert_eq!((a_types, b_types), (relay, relay));
    finish(lab);
}
