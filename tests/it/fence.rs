//! The room fence (`turn.fence = "room"`, the default): a member's TURN credential reaches
//! only addresses the other members of its room are known by. On loopback every signaling
//! client comes from 127.0.0.1, so the services here listen on other loopback addresses
//! (127.0.0.2, 127.0.0.3), which only a candidate can announce.

use std::time::Duration;

use serde_json::json;
use switchboard::signaling::protocol::ServerMsg;
use switchboard::turn::probe::{Client, ProbeError};
use tokio::net::UdpSocket;

use crate::harness::{Client as Ws, TestServer, peer_id};
use crate::turn::turn_config;

/// The TURN username and password in a welcome.
pub(crate) fn credential(welcome: &ServerMsg) -> (String, String) {
    let ServerMsg::Welcome { ice_servers, .. } = welcome else {
        panic!("not a welcome: {welcome:?}");
    };
    let turn = ice_servers
        .iter()
        .find(|s| s.urls.iter().any(|u| u.starts_with("turn:")))
        .expect("a TURN entry");
    (
        turn.username.clone().unwrap(),
        turn.credential.clone().unwrap(),
    )
}

/// A UDP service on `ip`: what reaches it through the relay is what the test reads.
pub(crate) async fn service(ip: &str) -> UdpSocket {
    UdpSocket::bind((ip, 0)).await.unwrap()
}

/// Whether `data` reaches `target` through `client`'s relay: its permission, then a Send.
async fn reaches(client: &Client, target: &UdpSocket) -> Result<(), ProbeError> {
    let to = target.local_addr().unwrap();
    client.permit(to).await?;
    client.send(to, b"through the relay").await?;
    let mut buf = [0u8; 64];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), target.recv_from(&mut buf))
        .await
        .expect("the relayed datagram arrives")
        .unwrap();
    assert_eq!(&buf[..n], b"through the relay");
    Ok(())
}

pub(crate) async fn member(server: &TestServer, room: &str) -> (Ws, ServerMsg) {
    let mut ws = server.client().await;
    let welcome = ws.join(room, None).await;
    (ws, welcome)
}

pub(crate) async fn allocated(server: &TestServer, welcome: &ServerMsg) -> Client {
    let (username, password) = credential(welcome);
    let mut client = Client::new(server.listener("turn_udp"), &username, &password)
        .await
        .unwrap();
    client.allocate().await.expect("a member allocates");
    client
}

fn refused_403(result: Result<(), ProbeError>) -> bool {
    matches!(result, Err(ProbeError::Refused { code: 403, .. }))
}

#[tokio::test]
async fn a_member_credential_reaches_only_what_the_room_announced() {
    let server = TestServer::start(&turn_config(""));
    let (mut ann_ws, ann_welcome) = member(&server, "fenced").await;
    let (mut bob_ws, bob_welcome) = member(&server, "fenced").await;
    let ann = allocated(&server, &ann_welcome).await;

    // A service nobody in the room announced: 403, counted.
    let unannounced = service("127.0.0.2").await;
    assert!(refused_403(reaches(&ann, &unannounced).await));
    let counted = server
        .metric(
            "switchboard_turn_policy_refusals_total",
            &[("class", "outside_room")],
        )
        .await;
    assert_eq!(counted, 1.0);

    // Bob announces a candidate on 127.0.0.3 (as a browser trickles one): Ann reaches it.
    let announced = service("127.0.0.3").await;
    let port = announced.local_addr().unwrap().port();
    let candidate = format!("candidate:1 1 udp 2122260223 127.0.0.3 {port} typ host");
    bob_ws
        .send(json!({"type": "signal", "to": peer_id(&ann_welcome),
                     "payload": {"candidate": {"candidate": candidate, "sdpMid": "0"}}}))
        .await;
    assert!(matches!(ann_ws.recv().await, ServerMsg::PeerJoined { .. }));
    assert!(matches!(ann_ws.recv().await, ServerMsg::Signal { .. }));
    reaches(&ann, &announced)
        .await
        .expect("an announced address");
    // Ann announcing 127.0.0.2 herself opens nothing for her.
    ann_ws
        .send(json!({"type": "signal", "to": peer_id(&bob_welcome),
                     "payload": {"candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.2 9 typ host"}}}))
        .await;
    assert!(matches!(bob_ws.recv().await, ServerMsg::Signal { .. }));
    assert!(refused_403(reaches(&ann, &unannounced).await));

    // Bob's signal to nobody (refused) announces nothing.
    bob_ws
        .send(json!({"type": "signal", "to": "00000000000000000000000000000000",
                     "payload": {"candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.2 9 typ host"}}}))
        .await;
    assert_eq!(bob_ws.recv_error().await.0, "unknown_peer");
    assert!(refused_403(reaches(&ann, &unannounced).await));

    // A member of another room announcing it does not open it either.
    let (mut eve_ws, _) = member(&server, "elsewhere").await;
    let (_, mallory_welcome) = member(&server, "elsewhere").await;
    eve_ws
        .send(json!({"type": "signal", "to": peer_id(&mallory_welcome),
                     "payload": {"candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.2 9 typ host"}}}))
        .await;
    assert!(matches!(eve_ws.recv().await, ServerMsg::PeerJoined { .. }));
    assert!(refused_403(reaches(&ann, &unannounced).await));
}

/// The control: with `turn.fence = "off"`, the same credential reaches the service nobody
/// announced (what the fence is there to stop).
#[tokio::test]
async fn without_the_fence_a_member_credential_reaches_any_allowed_address() {
    let server = TestServer::start(&turn_config("fence = \"off\"\n"));
    let (_ann_ws, ann_welcome) = member(&server, "open").await;
    let (_bob_ws, _) = member(&server, "open").await;
    let ann = allocated(&server, &ann_welcome).await;
    let unannounced = service("127.0.0.2").await;
    reaches(&ann, &unannounced).await.expect("no fence");
}

/// Room credentials (`GET /api/v1/ice-servers`, `switchboard credentials`) are not fenced
/// unless `turn.fence_room_credentials`; then they reach what the room's members announced.
#[tokio::test]
async fn room_credentials_are_fenced_when_the_operator_says_so() {
    for fenced in [false, true] {
        let server = TestServer::start(&turn_config(&format!(
            "fence_room_credentials = {fenced}\n"
        )));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("--config")
            .arg(server.config_path())
            .args(["credentials", "--room", "shared", "--host", "127.0.0.1"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let servers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let turn = servers["iceServers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["username"].is_string())
            .unwrap()
            .clone();
        let mut client = Client::new(
            server.listener("turn_udp"),
            turn["username"].as_str().unwrap(),
            turn["credential"].as_str().unwrap(),
        )
        .await
        .unwrap();
        client.allocate().await.unwrap();
        let unannounced = service("127.0.0.2").await;
        let result = reaches(&client, &unannounced).await;
        assert_eq!(
            refused_403(result),
            fenced,
            "fence_room_credentials = {fenced}"
        );
    }
}
