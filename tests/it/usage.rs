//! Live usage in the admin API: while a call runs, what each member sent by signaling and
//! what its TURN allocation relayed each way (bytes, packets, time held), per peer and per
//! room; after the allocation closed, the room and the peer still show what it used.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::UdpSocket;

use switchboard::turn::probe::Client;

use crate::fence::{credential, member, service};
use crate::harness::{TestServer, peer_id};
use crate::turn::turn_config;

fn room<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room"] == name)
        .unwrap_or_else(|| panic!("room {name} listed in {body}"))
}

fn peer<'a>(room: &'a Value, id: &str) -> &'a Value {
    room["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("peer {id} listed in {room}"))
}

async fn recv_exactly(socket: &UdpSocket, len: usize) {
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
        .await
        .expect("the relayed datagram arrives")
        .unwrap();
    assert_eq!(n, len);
}

#[tokio::test]
async fn the_admin_api_shows_a_calls_usage_while_it_runs_and_after_an_allocation_closed() {
    let server = TestServer::start(&turn_config(""));
    let (mut ann_ws, ann_welcome) = member(&server, "usage").await;
    let (mut bob_ws, bob_welcome) = member(&server, "usage").await;
    let (_other_ws, _) = member(&server, "elsewhere").await;
    ann_ws.recv().await; // peer_joined
    let (ann_id, bob_id) = (peer_id(&ann_welcome), peer_id(&bob_welcome));

    // Signaling: three messages from Ann, one from Bob.
    for _ in 0..3 {
        ann_ws
            .send(json!({"type": "signal", "to": bob_id, "payload": {"sdp": "x"}}))
            .await;
        bob_ws.recv().await;
    }
    bob_ws
        .send(json!({"type": "signal", "to": ann_id, "payload": {"sdp": "y"}}))
        .await;
    ann_ws.recv().await;

    // TURN: Ann relays 5 payloads of 100 bytes to a peer (Send indications), which answers
    // with 2 of 40 (Data indications).
    let (username, password) = credential(&ann_welcome);
    let mut ann = Client::new(server.listener("turn_udp"), &username, &password)
        .await
        .unwrap();
    let relayed = ann.allocate().await.expect("Ann allocates");
    let far = service("127.0.0.1").await;
    let far_addr = far.local_addr().unwrap();
    ann.permit(far_addr).await.unwrap();
    for _ in 0..5 {
        ann.send(far_addr, &[1u8; 100]).await.unwrap();
        recv_exactly(&far, 100).await;
    }
    for _ in 0..2 {
        far.send_to(&[2u8; 40], relayed).await.unwrap();
        let (_, data) = ann.recv().await.unwrap();
        assert_eq!(data.len(), 40);
    }

    let (status, body) = server.admin("GET", "/api/v1/rooms", true).await;
    assert_eq!(status, 200, "{body}");
    let usage = room(&body, "usage");
    let ann_view = peer(usage, ann_id.as_str());
    assert_eq!(ann_view["messages"], 3, "{ann_view}");
    assert_eq!(ann_view["allocations"], 1);
    assert_eq!(ann_view["to_peer"], json!({"bytes": 500, "packets": 5}));
    assert_eq!(ann_view["to_client"], json!({"bytes": 80, "packets": 2}));
    assert_eq!(ann_view["relayed_bytes"], 580);
    assert!(ann_view["allocation_seconds"].as_f64().unwrap() > 0.0);
    let bob_view = peer(usage, bob_id.as_str());
    assert_eq!(bob_view["messages"], 1);
    assert_eq!(bob_view["allocations"], 0);
    assert_eq!(bob_view["to_peer"], json!({"bytes": 0, "packets": 0}));
    // The room adds its members up.
    assert_eq!(usage["messages"], 4);
    assert_eq!(usage["allocations"], 1);
    assert_eq!(usage["to_peer"], json!({"bytes": 500, "packets": 5}));
    assert_eq!(usage["relayed_bytes"], 580);
    // Times are Unix seconds, and durations since then.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for view in [usage, ann_view, bob_view] {
        let since = view["since"].as_u64().expect("since");
        assert!(since <= now && since + 60 > now, "{view}");
        assert!(view["duration_s"].as_u64().expect("duration_s") < 60);
    }
    // Nothing of this call shows in another room.
    let elsewhere = room(&body, "elsewhere");
    assert_eq!(
        (
            elsewhere["messages"].as_u64(),
            elsewhere["relayed_bytes"].as_u64()
        ),
        (Some(0), Some(0))
    );

    // The allocation closes: its usage stays the peer's and the room's.
    ann.release().await;
    server.wait_log("allocation closed");
    let (_, body) = server.admin("GET", "/api/v1/peers", true).await;
    let ann_view = body["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == ann_id.as_str())
        .cloned()
        .expect("Ann listed");
    assert_eq!(ann_view["room"], "usage");
    assert_eq!(ann_view["allocations"], 0);
    assert_eq!(ann_view["to_peer"], json!({"bytes": 500, "packets": 5}));
    assert_eq!(ann_view["to_client"], json!({"bytes": 80, "packets": 2}));
    let (_, body) = server.admin("GET", "/api/v1/rooms", true).await;
    let usage = room(&body, "usage");
    assert_eq!(
        (
            usage["allocations"].as_u64(),
            usage["relayed_bytes"].as_u64()
        ),
        (Some(0), Some(580))
    );

    // Ann leaves: her messages stay the room's.
    drop(ann_ws);
    bob_ws.recv().await; // peer_left
    let (_, body) = server.admin("GET", "/api/v1/rooms", true).await;
    let usage = room(&body, "usage");
    assert_eq!(usage["peers"].as_array().unwrap().len(), 1);
    assert_eq!(usage["messages"], 4);
    assert_eq!(usage["relayed_bytes"], 580);

    // The room closes; a new one of the same name starts from nothing, although Ann's
    // closed allocation is still on record (as hers).
    drop(bob_ws);
    while server.wait_log("left")["closed"] != true {}
    let (_carol_ws, _) = member(&server, "usage").await;
    let (_, body) = server.admin("GET", "/api/v1/rooms", true).await;
    let usage = room(&body, "usage");
    assert_eq!(usage["peers"].as_array().unwrap().len(), 1, "{usage}");
    assert_eq!(
        (usage["messages"].as_u64(), usage["relayed_bytes"].as_u64()),
        (Some(0), Some(0)),
        "{usage}"
    );
}
