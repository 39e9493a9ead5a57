//! Webhooks (`[webhooks]`): a receiver in this test (a real HTTP server) gets the events of a
//! real call through the real binary, checks every signature the way a receiving
//! application would (HMAC-SHA256 of `id.timestamp.body`, computed here, not with the
//! server's code), their order per room, and the allocation's totals against what the TURN
//! client sent; an endpoint that fails or refuses gets retries, then dead letters, counted.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use switchboard::turn::probe::Client;
use tokio::sync::Notify;

use crate::fence::{credential, member, service};
use crate::harness::{DEADLINE, TestServer, peer_id};
use crate::turn::turn_config;

/// 24 bytes, the Standard Webhooks form.
const KEY: [u8; 24] = *b"switchboard-webhook-key!";

fn secret() -> String {
    format!("whsec_{}", B64.encode(KEY))
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    id: String,
    timestamp: u64,
    signature: String,
    body: Vec<u8>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// Whether one of the signatures is HMAC-SHA256 of `id.timestamp.body` under `KEY`.
    fn signed(&self) -> bool {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &KEY);
        let mut signed = format!("{}.{}.", self.id, self.timestamp).into_bytes();
        signed.extend_from_slice(&self.body);
        let expected = B64.encode(ring::hmac::sign(&key, &signed).as_ref());
        self.signature
            .split(' ')
            .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
    }
}

/// A receiver: `/ok` answers 204 (503 to the first `fail_first` requests), `/refuse`
/// 400, `/fail` 500, `/hang` never.
#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<Received>>,
    fail_first: Mutex<usize>,
    arrived: Notify,
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    receiver.got.lock().unwrap().push(Received {
        path: path.clone(),
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp").parse().unwrap_or(0),
        signature: header("webhook-signature"),
        body: body.to_vec(),
    });
    receiver.arrived.notify_waiters();
    match path.as_str() {
        "ok" => {
            let mut fail = receiver.fail_first.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::NO_CONTENT
            }
        }
        "refuse" => StatusCode::BAD_REQUEST,
        "hang" => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl Receiver {
    async fn start(fail_first: usize) -> (Arc<Receiver>, String) {
        let receiver = Arc::new(Receiver {
            fail_first: Mutex::new(fail_first),
            ..Receiver::default()
        });
        let app = Router::new()
            .route("/{path}", post(receive))
            .with_state(Arc::clone(&receiver));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, base)
    }

    /// Waits until `enough` says the requests received so far suffice; returns them.
    async fn until(&self, what: &str, enough: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let arrived = self.arrived.notified();
            {
                let got = self.got.lock().unwrap();
                if enough(&got) {
                    return got.clone();
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, arrived).await.is_err() {
                panic!("{what}: got only {:#?}", self.got.lock().unwrap());
            }
        }
    }
}

fn config(urls: &[String], extra: &str) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    turn_config(&format!(
        "[webhooks]\nurls = [{}]\nsecrets = [\"{}\"]\n{extra}",
        urls.join(", "),
        secret()
    ))
}

/// The events accepted (the last attempt of each id), in the order they were delivered.
fn events(got: &[Received]) -> Vec<Value> {
    let mut seen: Vec<(String, Value)> = Vec::new();
    for r in got {
        seen.retain(|(id, _)| *id != r.id);
        seen.push((r.id.clone(), r.json()));
    }
    seen.into_iter().map(|(_, v)| v).collect()
}

#[tokio::test]
async fn a_receiver_gets_a_calls_events_signed_in_order_with_the_relayed_totals() {
    let (receiver, base) = Receiver::start(1).await;
    // One lane: every event in one order, so nothing can come after the last one checked.
    let server = TestServer::start(&config(&[format!("{base}/ok")], "concurrency = 1\n"));
    let (mut ann_ws, ann_welcome) = member(&server, "hooks").await;
    let (mut bob_ws, bob_welcome) = member(&server, "hooks").await;
    ann_ws.recv().await; // peer_joined
    let (ann, bob) = (peer_id(&ann_welcome), peer_id(&bob_welcome));
    for _ in 0..2 {
        ann_ws
            .send(json!({"type": "signal", "to": bob, "payload": {"sdp": "x"}}))
            .await;
        bob_ws.recv().await;
    }

    // Ann relays 3 payloads of 100 bytes; the far end answers one of 40.
    let (username, password) = credential(&ann_welcome);
    let mut turn = Client::new(server.listener("turn_udp"), &username, &password)
        .await
        .unwrap();
    let relayed = turn.allocate().await.unwrap();
    let far = service("127.0.0.1").await;
    let far_addr = far.local_addr().unwrap();
    turn.permit(far_addr).await.unwrap();
    let mut buf = [0u8; 256];
    for _ in 0..3 {
        turn.send(far_addr, &[1u8; 100]).await.unwrap();
        far.recv_from(&mut buf).await.unwrap();
    }
    far.send_to(&[2u8; 40], relayed).await.unwrap();
    turn.recv().await.unwrap();
    turn.release().await;
    server.wait_log("allocation closed");
    drop(ann_ws);
    bob_ws.recv().await; // peer_left
    drop(bob_ws);

    // Then a room of its own, whose events come after: none of the call's came twice.
    let (_late, _) = member(&server, "later").await;
    let got = receiver
        .until("nine events", |got| events(got).len() >= 9)
        .await;
    assert_eq!(events(&got).len(), 9, "{got:#?}");
    let got: Vec<Received> = got
        .into_iter()
        .filter(|r| r.json()["data"]["room"] == "hooks")
        .collect();
    let now = switchboard::clock::unix_now();
    for r in &got {
        assert!(r.signed(), "a valid signature: {r:?}");
        assert!(r.timestamp <= now && r.timestamp + 60 > now, "{r:?}");
        assert_eq!(r.path, "ok");
    }
    // The first attempt got a 503: the retry carries the same id.
    assert_eq!(got[0].id, got[1].id);
    let ids: std::collections::HashSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 7, "one id per event");

    let events = events(&got);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "room_started",
            "peer_joined",
            "peer_joined",
            "allocation_closed",
            "peer_left",
            "peer_left",
            "room_finished"
        ]
    );
    let data: Vec<&Value> = events.iter().map(|e| &e["data"]).collect();
    assert_eq!(*data[0], json!({"dialect": "native", "room": "hooks"}));
    assert_eq!(data[1]["peer"], ann.as_str());
    assert_eq!(data[2]["peer"], bob.as_str());
    // What the TURN client sent and got, counted by the server.
    let closed = data[3];
    assert_eq!(
        (closed["peer"].as_str(), closed["room"].as_str()),
        (Some(ann.as_str()), Some("hooks"))
    );
    assert_eq!(
        (closed["transport"].as_str(), closed["reason"].as_str()),
        (Some("udp"), Some("refresh"))
    );
    assert_eq!(closed["to_peer"], json!({"bytes": 300, "packets": 3}));
    assert_eq!(closed["to_client"], json!({"bytes": 40, "packets": 1}));
    assert!(closed["allocation_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(
        (data[4]["peer"].as_str(), data[4]["messages"].as_u64()),
        (Some(ann.as_str()), Some(2))
    );
    assert_eq!(
        (data[5]["peer"].as_str(), data[5]["messages"].as_u64()),
        (Some(bob.as_str()), Some(0))
    );
    assert_eq!(data[6]["messages"], 2);
    assert!(data[6]["duration_s"].as_u64().unwrap() < 60);

    // The last answer may still be on its way to the server.
    server
        .wait_metric("switchboard_webhook_deliveries_total", &[], 9.0)
        .await;
    assert_eq!(
        server
            .metric("switchboard_webhook_retries_total", &[])
            .await,
        1.0
    );
}

#[tokio::test]
async fn events_an_endpoint_refuses_or_keeps_failing_are_given_up_and_counted() {
    let (receiver, base) = Receiver::start(0).await;
    let urls = [format!("{base}/refuse"), format!("{base}/fail")];
    let server = TestServer::start(&config(&urls, "max_attempts = 2\n"));
    // room_started and peer_joined, to each endpoint.
    let (_ws, _) = member(&server, "doomed").await;
    let got = receiver
        .until(
            "one attempt to /refuse and two to /fail, per event",
            |got| {
                let on = |p: &str| got.iter().filter(|r| r.path == p).count();
                on("refuse") == 2 && on("fail") == 4
            },
        )
        .await;
    assert!(got.iter().all(Received::signed));
    let dead = "switchboard_webhook_dead_letters_total";
    // The last attempt's answer may still be on its way to the server.
    server
        .wait_metric(dead, &[("reason", "attempts")], 2.0)
        .await;
    server
        .wait_metric(dead, &[("reason", "rejected")], 2.0)
        .await;
    assert_eq!(server.metric(dead, &[("reason", "queue_full")]).await, 0.0);
}

#[tokio::test]
async fn a_full_queue_drops_new_events_and_counts_them() {
    let (receiver, base) = Receiver::start(0).await;
    let server = TestServer::start(&config(
        &[format!("{base}/hang")],
        "max_queue = 1\ntimeout_s = 60\n",
    ));
    // Three events (two joins, the first starting the room): the first is in flight
    // (the endpoint never answers), one more fits the queue, one does not (whichever of
    // the first join's second event and the second join's came when the queue was full).
    let (_a, _) = member(&server, "busy").await;
    receiver
        .until("the first event", |got| !got.is_empty())
        .await;
    let (_b, _) = member(&server, "busy").await;
    server
        .wait_metric(
            "switchboard_webhook_dead_letters_total",
            &[("reason", "queue_full")],
            1.0,
        )
        .await;
    assert_eq!(server.metric("switchboard_webhook_queued", &[]).await, 1.0);
}
