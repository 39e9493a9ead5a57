//! The admin listener and the APIs for operators and app backends, on the real binary:
//! metrics scraped after a call, rooms listed and closed (revoking live TURN allocations),
//! peers kicked, and ICE servers minted over HTTPS with an API key.

use std::net::SocketAddr;

use serde_json::{Value, json};
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::error_code::ErrorCodeAttribute;
use stun::message::{
    CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter, METHOD_ALLOCATE, METHOD_REFRESH, Message,
    MessageType, Method, Setter,
};
use stun::textattrs::TextAttribute;
use switchboard::signaling::protocol::{IceServer, ServerMsg};
use tokio::net::UdpSocket;

use crate::harness::{DEADLINE, Event, TestServer, peer_id};

const API_KEY: &str = "backend-key-0123456789";

fn config() -> String {
    format!(
        "[turn]\nallow_peers = [\"127.0.0.0/8\"]\ngrace_period_s = 60\n[api]\nkeys = [\"{API_KEY}\"]\n"
    )
}

/// A TURN client over UDP that speaks just enough (Allocate, Refresh) to watch a revocation.
struct RawTurn {
    socket: UdpSocket,
    server: SocketAddr,
    username: String,
    password: String,
    realm: String,
    nonce: String,
}

impl RawTurn {
    async fn new(server: SocketAddr, entry: &IceServer) -> RawTurn {
        RawTurn {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
            username: entry.username.clone().expect("username"),
            password: entry.credential.clone().expect("credential"),
            realm: String::new(),
            nonce: String::new(),
        }
    }

    async fn exchange(&self, method: Method, attrs: Vec<Box<dyn Setter>>, auth: bool) -> Message {
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(stun::agent::TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
        ];
        setters.extend(attrs);
        if auth {
            setters.push(Box::new(TextAttribute::new(
                ATTR_USERNAME,
                self.username.clone(),
            )));
            setters.push(Box::new(TextAttribute::new(ATTR_REALM, self.realm.clone())));
            setters.push(Box::new(TextAttribute::new(ATTR_NONCE, self.nonce.clone())));
            setters.push(Box::new(
                stun::integrity::MessageIntegrity::new_long_term_integrity(
                    self.username.clone(),
                    self.realm.clone(),
                    self.password.clone(),
                ),
            ));
        }
        let mut request = Message::new();
        request.build(&setters).unwrap();
        self.socket
            .send_to(&request.raw, self.server)
            .await
            .unwrap();
        let mut buf = vec![0u8; 1500];
        let n = tokio::time::timeout(DEADLINE, self.socket.recv(&mut buf))
            .await
            .expect("TURN answer in time")
            .unwrap();
        let mut answer = Message::new();
        answer.raw = buf[..n].to_vec();
        answer.decode().unwrap();
        answer
    }

    fn code(answer: &Message) -> Option<u16> {
        if answer.typ.class == CLASS_SUCCESS_RESPONSE {
            return None;
        }
        let mut code = ErrorCodeAttribute::default();
        code.get_from(answer).expect("an error code");
        Some(code.code.0)
    }

    /// Allocates (after the 401 that brings realm and nonce); `Err(code)` on refusal.
    async fn allocate(&mut self) -> Result<(), u16> {
        let transport = || -> Vec<Box<dyn Setter>> {
            vec![Box::new(turn::proto::reqtrans::RequestedTransport {
                protocol: turn::proto::PROTO_UDP,
            })]
        };
        let challenge = self.exchange(METHOD_ALLOCATE, transport(), false).await;
        assert_eq!(Self::code(&challenge), Some(401));
        self.realm = TextAttribute::get_from_as(&challenge, ATTR_REALM)
            .unwrap()
            .text;
        self.nonce = TextAttribute::get_from_as(&challenge, ATTR_NONCE)
            .unwrap()
            .text;
        let answer = self.exchange(METHOD_ALLOCATE, transport(), true).await;
        Self::code(&answer).map_or(Ok(()), Err)
    }

    async fn refresh(&self) -> Result<(), u16> {
        let lifetime: Vec<Box<dyn Setter>> = vec![Box::new(turn::proto::lifetime::Lifetime(
            std::time::Duration::from_secs(600),
        ))];
        let answer = self.exchange(METHOD_REFRESH, lifetime, true).await;
        Self::code(&answer).map_or(Ok(()), Err)
    }
}

fn turn_entry(welcome: &ServerMsg) -> IceServer {
    let ServerMsg::Welcome { ice_servers, .. } = welcome else {
        panic!("not a welcome: {welcome:?}")
    };
    ice_servers
        .iter()
        .find(|s| s.urls.iter().any(|u| u.starts_with("turn:")))
        .cloned()
        .expect("a TURN entry")
}

/// `name{labels} value` of a scrape, by name and the labels given.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
    match found.map(|s| &s.value) {
        Some(prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v)) => *v,
        Some(prometheus_parse::Value::Untyped(v)) => *v,
        other => panic!("no sample {name}{labels:?}: {other:?}"),
    }
}

#[tokio::test]
async fn metrics_after_a_call_parse_as_prometheus_text() {
    let server = TestServer::start(&config());
    let mut a = server.client().await;
    let mut b = server.client().await;
    let welcome_a = a.join("metrics-room", None).await;
    let welcome_b = b.join("metrics-room", None).await;
    a.recv().await; // peer_joined
    a.send(json!({"type": "signal", "to": peer_id(&welcome_b), "payload": {"sdp": "x"}}))
        .await;
    b.recv().await;
    a.send(json!({"type": "signal", "to": "0123", "payload": {}}))
        .await;
    a.recv_error().await;
    let mut turn = RawTurn::new(server.listener("turn_udp"), &turn_entry(&welcome_a)).await;
    turn.allocate().await.expect("allocation");
    let _ = welcome_b;

    let addr = server.listener("admin");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (status, head, body) =
        crate::harness::http_get(&mut tcp, &addr.to_string(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("application/openmetrics-text"),
        "{head}"
    );
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text");
    assert_eq!(
        sample(
            &scrape,
            "switchboard_signaling_joins_total",
            &[("dialect", "native")]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &scrape,
            "switchboard_signaling_peers",
            &[("dialect", "native")]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &scrape,
            "switchboard_signaling_rooms",
            &[("dialect", "native")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &scrape,
            "switchboard_signaling_messages_total",
            &[("type", "signal")]
        ),
        2.0
    );
    assert_eq!(
        sample(
            &scrape,
            "switchboard_signaling_errors_total",
            &[("code", "unknown_peer")]
        ),
        1.0
    );
    assert_eq!(
        sample(&scrape, "switchboard_signaling_open_connections", &[]),
        2.0
    );
    assert_eq!(sample(&scrape, "switchboard_turn_allocations", &[]), 1.0);
    assert_eq!(
        sample(
            &scrape,
            "switchboard_turn_allocations_created_total",
            &[("transport", "udp")]
        ),
        1.0
    );
    // The first Allocate of a client is a challenge, not a failure.
    let failures: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "switchboard_turn_auth_failures_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(failures, 0.0);
    assert!(sample(&scrape, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(sample(&scrape, "process_open_fds", &[]) > 5.0);
    // Labels are bounded: no room name, peer id or user name ever shows up.
    assert!(!body.contains("metrics-room"), "{body}");
    assert!(!body.contains(peer_id(&welcome_a).as_str()));
}

#[tokio::test]
async fn closing_a_room_disconnects_its_peers_and_revokes_their_allocations() {
    let server = TestServer::start(&config());
    let mut a = server.client().await;
    let mut b = server.client().await;
    let mut bystander = server.client().await;
    let welcome_a = a.join("doomed", Some("Ann")).await;
    b.join("doomed", None).await;
    bystander.join("elsewhere", None).await;
    let mut turn = RawTurn::new(server.listener("turn_udp"), &turn_entry(&welcome_a)).await;
    turn.allocate().await.expect("allocation");
    turn.refresh().await.expect("a live allocation refreshes");

    let (status, body) = server.admin("GET", "/api/v1/rooms", false).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "unauthorized");

    let (status, body) = server.admin("GET", "/api/v1/rooms", true).await;
    assert_eq!(status, 200, "{body}");
    let doomed = body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room"] == "doomed")
        .cloned()
        .expect("the room is listed");
    assert_eq!(doomed["peers"].as_array().unwrap().len(), 2);
    assert_eq!(doomed["allocations"], 1);
    assert_eq!(doomed["peers"][0]["name"], "Ann");
    assert_eq!(doomed["peers"][0]["allocations"], 1);

    let (status, body) = server.admin("DELETE", "/api/v1/rooms/doomed", true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"room": "doomed", "peers_disconnected": 2, "allocations_revoked": 1})
    );
    for client in [&mut a, &mut b] {
        let (code, reason) = client.recv_close().await;
        assert_eq!(
            (code, reason.as_str()),
            (1008, "closed by the server operator")
        );
    }
    // The allocation is gone at once, not after turn.grace_period_s...
    assert_eq!(server.wait_log("allocation closed")["reason"], "revoked");
    // ...so the TURN client's next refresh fails (its credential is refused first: the
    // peer is no longer in the room)...
    assert_eq!(turn.refresh().await, Err(401));
    // ...and the credential cannot make a new allocation either.
    let mut again = RawTurn::new(server.listener("turn_udp"), &turn_entry(&welcome_a)).await;
    assert_eq!(again.allocate().await, Err(401));
    // Other rooms are untouched.
    bystander.send(json!({"type": "ping"})).await;
    assert_eq!(bystander.recv().await, ServerMsg::Pong);
    let (status, body) = server.admin("DELETE", "/api/v1/rooms/doomed", true).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("unknown_room")));
}

#[tokio::test]
async fn kicking_a_peer_tells_the_room_and_keeps_the_others() {
    let server = TestServer::start(&config());
    let mut a = server.client().await;
    let mut b = server.client().await;
    let welcome_a = a.join("kick", None).await;
    b.join("kick", None).await;
    a.recv().await; // peer_joined
    let id = peer_id(&welcome_a);
    let (status, body) = server
        .admin("DELETE", &format!("/api/v1/peers/{}", id.as_str()), true)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room"], "kick");
    assert!(matches!(a.next_event().await, Event::Closed(Some(f)) if u16::from(f.code) == 1008));
    assert_eq!(
        b.recv().await,
        ServerMsg::PeerLeft {
            peer_id: id.clone()
        }
    );
    let (status, _) = server
        .admin("DELETE", &format!("/api/v1/peers/{}", id.as_str()), true)
        .await;
    assert_eq!(status, 404);
    let (status, body) = server
        .admin("DELETE", "/api/v1/peers/not-an-id", true)
        .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_peer")));
}

#[tokio::test]
async fn ice_servers_api_mints_room_credentials_for_backends() {
    let server = TestServer::start(&config());
    let auth = format!("Bearer {API_KEY}");
    let (status, _, body) = server
        .https_request(
            "GET",
            "/api/v1/ice-servers?room=standup&ttl=300",
            &[("Authorization", &auth)],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["ttl"], 300);
    let servers: Vec<IceServer> = serde_json::from_value(answer["iceServers"].clone()).unwrap();
    let entry = servers
        .iter()
        .find(|s| s.urls.iter().any(|u| u.starts_with("turn:")))
        .expect("a TURN entry");
    assert!(
        entry
            .username
            .as_deref()
            .unwrap()
            .ends_with(":room:standup")
    );
    // The credential works with no signaling session at all...
    let mut turn = RawTurn::new(server.listener("turn_udp"), entry).await;
    turn.allocate().await.expect("a room credential allocates");
    // ...and is revoked with its room.
    let (status, body) = server.admin("DELETE", "/api/v1/rooms/standup", true).await;
    assert_eq!(
        (status, body["allocations_revoked"].as_u64()),
        (200, Some(1))
    );
    assert_eq!(turn.refresh().await, Err(437));

    for (headers, path, want) in [
        (vec![], "/api/v1/ice-servers?room=standup", 401),
        (
            vec![("Authorization", "Bearer wrong-key-0123456789")],
            "/api/v1/ice-servers?room=standup",
            401,
        ),
        (
            vec![("Authorization", auth.as_str())],
            "/api/v1/ice-servers",
            400,
        ),
        (
            vec![("Authorization", auth.as_str())],
            "/api/v1/ice-servers?room=a.b",
            400,
        ),
        (
            vec![("Authorization", auth.as_str())],
            "/api/v1/ice-servers?room=r&ttl=5",
            400,
        ),
    ] {
        let (status, _, body) = server.https_request("GET", path, &headers).await;
        assert_eq!(status, want, "{path}: {body}");
        let error: Value = serde_json::from_str(&body).expect("a JSON error");
        assert!(error["message"].is_string());
    }
}

#[tokio::test]
async fn ice_servers_api_is_off_without_keys() {
    let server = TestServer::start("");
    let (status, _, body) = server
        .https_request(
            "GET",
            "/api/v1/ice-servers?room=r",
            &[("Authorization", "Bearer x")],
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("api.keys"), "{body}");
}
