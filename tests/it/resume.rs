//! Resuming a native peer whose socket dropped (`join {resume: true}`, then `resume` on a new
//! socket): the same peer id and room, the messages it missed in order and none twice, the
//! room seeing no leave or join; the place lost after `signaling.resume_grace_s`, or when the
//! messages it would need are gone, and then the room told.

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Client, DEADLINE, TestServer};

/// The next text frame, as JSON (with the `seq` the typed messages leave out).
async fn recv_json(client: &mut Client) -> Value {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let frame = tokio::time::timeout_at(deadline, client.ws.next())
            .await
            .expect("a message in time");
        match frame {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(Message::Close(frame))) => panic!("closed: {frame:?}"),
            Some(Ok(_)) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
}

/// Joins `room`, asking to be resumable; returns the socket and its welcome.
async fn resumable(server: &TestServer, room: &str, name: &str) -> (Client, Value) {
    let mut client = server.client().await;
    client
        .send(json!({"type": "join", "room": room, "name": name, "resume": true}))
        .await;
    let welcome = recv_json(&mut client).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["resume_token"].as_str().map(str::len), Some(32));
    (client, welcome)
}

async fn signal(client: &mut Client, to: &Value, n: u32) {
    client
        .send(json!({"type": "signal", "to": to, "payload": {"n": n}}))
        .await;
}

/// A ping answered with a pong and nothing before it: nothing else was on its way.
async fn nothing_else(client: &mut Client) {
    client.send(json!({"type": "ping"})).await;
    assert_eq!(recv_json(client).await, json!({"type": "pong"}));
}

/// What a signal carried, and its `seq`.
fn n_and_seq(msg: &Value) -> (u64, u64) {
    assert_eq!(msg["type"], "signal", "{msg}");
    (
        msg["payload"]["n"].as_u64().unwrap(),
        msg["seq"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn a_dropped_peer_resumes_with_what_it_missed_in_order_and_the_room_sees_nothing() {
    let server = TestServer::start("");
    let (mut ann, ann_welcome) = resumable(&server, "resume", "Ann").await;
    let (mut bob, bob_welcome) = resumable(&server, "resume", "Bob").await;
    let (ann_id, bob_id) = (&ann_welcome["peer_id"], &bob_welcome["peer_id"]);
    let joined = recv_json(&mut ann).await;
    assert_eq!(
        (joined["type"].as_str(), joined["seq"].as_u64()),
        (Some("peer_joined"), Some(1))
    );
    signal(&mut bob, ann_id, 1).await;
    assert_eq!(n_and_seq(&recv_json(&mut ann).await), (1, 2));

    // Ann's socket drops without a leave; Bob goes on sending, and is told of nothing.
    drop(ann);
    server.wait_log("socket lost: the peer keeps its place for a resume");
    signal(&mut bob, ann_id, 2).await;
    signal(&mut bob, ann_id, 3).await;
    nothing_else(&mut bob).await;

    // A new socket takes her place over: same id, the two messages she missed, in order.
    let mut back = server.client().await;
    back.send(json!({"type": "resume", "token": ann_welcome["resume_token"], "last_seq": 2}))
        .await;
    let resumed = recv_json(&mut back).await;
    assert_eq!(resumed["type"], "resumed", "{resumed}");
    assert_eq!(&resumed["peer_id"], ann_id);
    assert_eq!(resumed["room"], "resume");
    assert_eq!(resumed["peers"], json!([{"id": bob_id, "name": "Bob"}]));
    assert!(resumed["ice_servers"].is_array());
    assert_ne!(resumed["resume_token"], ann_welcome["resume_token"]);
    assert_eq!(n_and_seq(&recv_json(&mut back).await), (2, 3));
    assert_eq!(n_and_seq(&recv_json(&mut back).await), (3, 4));
    nothing_else(&mut back).await;
    // Bob saw no leave and no join, and reaches her where she is now, and she him.
    nothing_else(&mut bob).await;
    signal(&mut bob, ann_id, 4).await;
    assert_eq!(n_and_seq(&recv_json(&mut back).await), (4, 5));
    signal(&mut back, bob_id, 9).await;
    let got = recv_json(&mut bob).await;
    assert_eq!(
        (&got["from"], got["payload"]["n"].as_u64()),
        (ann_id, Some(9))
    );

    // A token is good once.
    let mut again = server.client().await;
    again
        .send(json!({"type": "resume", "token": ann_welcome["resume_token"], "last_seq": 2}))
        .await;
    let error = recv_json(&mut again).await;
    assert_eq!(error["code"], "resume_failed", "{error}");
}

#[tokio::test]
async fn a_resume_takes_over_from_a_socket_the_server_still_thinks_alive() {
    let server = TestServer::start("");
    let (mut ann, ann_welcome) = resumable(&server, "takeover", "Ann").await;
    let (mut bob, _) = resumable(&server, "takeover", "Bob").await;
    let ann_id = &ann_welcome["peer_id"];
    recv_json(&mut ann).await; // peer_joined, seq 1
    signal(&mut bob, ann_id, 1).await; // seq 2, which the client says it did not get
    let mut back = server.client().await;
    back.send(json!({"type": "resume", "token": ann_welcome["resume_token"], "last_seq": 1}))
        .await;
    assert_eq!(recv_json(&mut back).await["type"], "resumed");
    assert_eq!(n_and_seq(&recv_json(&mut back).await), (1, 2));
    // The old socket is closed as replaced; the room saw nothing.
    let (code, reason) = ann.recv_close().await;
    assert_eq!(
        (code, reason.as_str()),
        (1000, "resumed on another connection")
    );
    nothing_else(&mut bob).await;
    signal(&mut bob, ann_id, 2).await;
    assert_eq!(n_and_seq(&recv_json(&mut back).await), (2, 3));
}

#[tokio::test]
async fn the_place_is_lost_to_a_gap_or_the_end_of_the_grace_and_then_the_room_is_told() {
    let server = TestServer::start("[signaling]\nresume_grace_s = 1\n");
    let (mut ann, ann_welcome) = resumable(&server, "grace", "Ann").await;
    let (mut bob, _) = resumable(&server, "grace", "Bob").await;
    let ann_id = &ann_welcome["peer_id"];
    recv_json(&mut ann).await; // seq 1
    signal(&mut bob, ann_id, 1).await;
    signal(&mut bob, ann_id, 2).await;
    recv_json(&mut ann).await;
    recv_json(&mut ann).await;
    // Acknowledged: forgotten. A resume from before the ack would miss them: refused, and
    // the live socket keeps the place.
    ann.send(json!({"type": "ack", "seq": 3})).await;
    nothing_else(&mut ann).await;
    let mut early = server.client().await;
    early
        .send(json!({"type": "resume", "token": ann_welcome["resume_token"], "last_seq": 1}))
        .await;
    assert_eq!(recv_json(&mut early).await["code"], "resume_failed");
    nothing_else(&mut ann).await;
    nothing_else(&mut bob).await;

    // Dropped, kept for the grace (the room told nothing meanwhile), then the room is told
    // she left.
    drop(ann);
    server.wait_log("socket lost: the peer keeps its place for a resume");
    nothing_else(&mut bob).await;
    let left = recv_json(&mut bob).await;
    assert_eq!(
        (&left["type"], &left["peer_id"]),
        (&json!("peer_left"), ann_id)
    );
    let mut late = server.client().await;
    late.send(json!({"type": "resume", "token": ann_welcome["resume_token"], "last_seq": 3}))
        .await;
    assert_eq!(recv_json(&mut late).await["code"], "resume_failed");
}

#[tokio::test]
async fn a_resumable_peer_that_closes_its_socket_leaves_at_once() {
    let server = TestServer::start("");
    let (mut ann, _) = resumable(&server, "closing", "Ann").await;
    let (mut bob, _) = resumable(&server, "closing", "Bob").await;
    recv_json(&mut ann).await; // peer_joined
    // A closed tab: the browser sends a close frame. That is a goodbye, not a lost network.
    ann.ws.close(None).await.unwrap();
    assert_eq!(recv_json(&mut bob).await["type"], "peer_left");
}

#[tokio::test]
async fn a_peer_that_did_not_ask_gets_no_token_no_seq_and_leaves_at_once() {
    let server = TestServer::start("");
    let mut ann = server.client().await;
    ann.send(json!({"type": "join", "room": "plain"})).await;
    let welcome = recv_json(&mut ann).await;
    assert!(welcome.get("resume_token").is_none(), "{welcome}");
    let (mut bob, _) = resumable(&server, "plain", "Bob").await;
    let joined = recv_json(&mut ann).await;
    assert!(joined.get("seq").is_none(), "{joined}");
    drop(ann);
    assert_eq!(recv_json(&mut bob).await["type"], "peer_left");
}

#[tokio::test]
async fn a_parked_peer_the_operator_kicks_is_gone_and_cannot_resume() {
    let server = TestServer::start("");
    let (mut ann, ann_welcome) = resumable(&server, "kicked", "Ann").await;
    let (mut bob, _) = resumable(&server, "kicked", "Bob").await;
    let ann_id = ann_welcome["peer_id"].as_str().unwrap().to_owned();
    recv_json(&mut ann).await; // peer_joined
    drop(ann);
    server.wait_log("socket lost: the peer keeps its place for a resume");
    let (status, body) = server
        .admin("DELETE", &format!("/api/v1/peers/{ann_id}"), true)
        .await;
    assert_eq!(status, 200, "{body}");
    let left = recv_json(&mut bob).await;
    assert_eq!(
        (left["type"].as_str(), left["peer_id"].as_str()),
        (Some("peer_left"), Some(ann_id.as_str()))
    );
    let mut back = server.client().await;
    back.send(json!({"type": "resume", "token": ann_welcome["resume_token"], "last_seq": 1}))
        .await;
    assert_eq!(recv_json(&mut back).await["code"], "resume_failed");
    nothing_else(&mut bob).await;
}
