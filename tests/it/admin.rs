//! The admin listener and the APIs for operators and app backends, on the real binary:
//! metrics scraped after a call, rooms listed and closed (revoking live TURN allocations),
//! peers kicked, and ICE servers minted over HTTPS with an API key.

use futures_util::StreamExt;
use serde_json::{Value, json};
use switchboard::signaling::protocol::{IceServer, ServerMsg};

use crate::harness::{Event, TestServer, peer_id};
use crate::raw_turn::{RawTurn, turn_entry};

const API_KEY: &str = "backend-key-0123456789";

fn config() -> String {
    format!(
        "[turn]\nallow_peers = [\"127.0.0.0/8\"]\ngrace_period_s = 60\n[api]\nkeys = [\"{API_KEY}\"]\n"
    )
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

/// A socket whose client is `client` (the server trusts 127.0.0.1's `X-Forwarded-For`), at
/// `path` (`/ws` or `/legacy`).
async fn client_from(server: &TestServer, path: &str, client: &str) -> crate::harness::Client {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("wss://{}{path}", server.https);
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", client.parse().unwrap());
    server
        .client_with(request)
        .await
        .expect("websocket connect")
}

/// A kicked peer stays out of the room it was kicked from for `admin.kicked_peer_s`: the
/// call page reconnects on its own and got a new peer id, so a kick did nothing visible.
/// Kept out by its source (the IPv6 /64 of its client here), not by anything it could drop;
/// the same source may join other rooms, other sources that room; with 0 it may come back.
#[tokio::test]
async fn a_kicked_peer_is_kept_out_of_its_room_for_a_while() {
    let overrides = |secs: u32| {
        format!("[admin]\nkicked_peer_s = {secs}\n[https]\ntrusted_proxies = [\"127.0.0.1\"]\n")
    };
    let server = TestServer::start(&overrides(3600));
    let kick = |id: String| {
        let server = &server;
        async move {
            let (status, body) = server
                .admin("DELETE", &format!("/api/v1/peers/{id}"), true)
                .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    let mut a = client_from(&server, "/ws", "2001:db8:1:2::1").await;
    let mut b = client_from(&server, "/ws", "198.51.100.2").await;
    let welcome = a.join("kick", None).await;
    b.join("kick", None).await;
    kick(peer_id(&welcome).as_str().to_owned()).await;
    assert_eq!(
        a.recv_close().await,
        (1008, "closed by the server operator".to_owned())
    );

    let mut back = client_from(&server, "/ws", "2001:db8:1:2::77").await;
    back.send(json!({"type": "join", "room": "kick"})).await;
    let (code, message) = back.recv_error().await;
    assert_eq!(code, "kicked");
    assert!(message.contains("come back in"), "{message}");
    assert!(matches!(
        back.join("elsewhere", None).await,
        ServerMsg::Welcome { .. }
    ));
    let mut other = client_from(&server, "/ws", "198.51.100.3").await;
    assert!(matches!(
        other.join("kick", None).await,
        ServerMsg::Welcome { .. }
    ));

    // The plain-WebSocket dialect, which has no rooms: kept out of logging in.
    let mut user = client_from(&server, "/legacy", "192.0.2.9").await;
    user.send(json!({"type": "login", "name": "mallory"})).await;
    let ok = user.ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(ok.contains("\"success\":true"), "{ok}");
    let (_, peers) = server.admin("GET", "/api/v1/peers", true).await;
    let id = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "mallory")
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("mallory is not listed: {peers}"));
    kick(id).await;
    let mut again = client_from(&server, "/legacy", "192.0.2.9").await;
    again
        .send(json!({"type": "login", "name": "mallory"}))
        .await;
    assert_eq!(again.recv_error().await.0, "kicked");

    // With 0, a kicked peer may come back at once.
    let server = TestServer::start(&overrides(0));
    let mut a = client_from(&server, "/ws", "192.0.2.1").await;
    let welcome = a.join("kick", None).await;
    let (status, _) = server
        .admin(
            "DELETE",
            &format!("/api/v1/peers/{}", peer_id(&welcome).as_str()),
            true,
        )
        .await;
    assert_eq!(status, 200);
    let mut back = client_from(&server, "/ws", "192.0.2.1").await;
    assert!(matches!(
        back.join("kick", None).await,
        ServerMsg::Welcome { .. }
    ));
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

/// The OpenAPI description names every admin route and the ICE API.
#[test]
fn the_openapi_description_covers_every_route() {
    let doc = include_str!("../../docs/admin-api.yaml");
    for path in [
        "  /metrics:",
        "  /healthz:",
        "  /api/v1/rooms:",
        "  /api/v1/rooms/{room}:",
        "  /api/v1/peers/{peer}:",
        "  /api/v1/drain:",
        "  /api/v1/ice-servers:",
    ] {
        assert!(doc.contains(path), "{path} is not in docs/admin-api.yaml");
    }
}

/// An admin listener off loopback is warned about, and its `/metrics` needs the token like
/// the API (room and peer counts, traffic); on loopback `/metrics` stays open to a scraper.
#[tokio::test]
async fn metrics_off_loopback_need_the_admin_token() {
    let server = TestServer::start("[admin]\nlisten = [\"0.0.0.0:0\"]\n");
    let warning = server.wait_log(
        "the admin listener is reachable from other hosts (admin.listen): /metrics needs the admin token too; prefer a loopback address behind a firewall",
    );
    assert_eq!(warning["level"], "WARN");
    assert_eq!(server.admin("GET", "/metrics", false).await.0, 401);
    let (status, body) = server.admin("GET", "/metrics", true).await;
    assert_eq!(status, 200);
    assert!(body.as_str().unwrap().contains("switchboard_"), "{body}");
    assert_eq!(server.admin("GET", "/healthz", false).await.0, 200);

    let local = TestServer::start("");
    assert_eq!(local.admin("GET", "/metrics", false).await.0, 200);
}

/// A room the operator closes stays closed for `admin.closed_room_s`: the call page, which
/// reconnects on its own, used to be back in it within a second. Its members are closed
/// with the operator's reason (on which the page stops reconnecting); a new join gets
/// `room_closed`; other rooms are untouched.
#[tokio::test]
async fn a_room_closed_by_the_operator_refuses_joins_for_a_while() {
    let server = TestServer::start("[admin]\nclosed_room_s = 3600\n");
    let mut member = server.client().await;
    member.join("shut", None).await;
    assert_eq!(
        server.admin("DELETE", "/api/v1/rooms/shut", true).await.0,
        200
    );
    assert_eq!(
        member.recv_close().await,
        (1008, "closed by the server operator".to_owned())
    );
    let mut again = server.client().await;
    again.send(json!({"type": "join", "room": "shut"})).await;
    let (code, message) = again.recv_error().await;
    assert_eq!(code, "room_closed");
    assert!(message.contains("opens again in"), "{message}");
    let mut elsewhere = server.client().await;
    assert!(matches!(
        elsewhere.join("open", None).await,
        ServerMsg::Welcome { .. }
    ));

    // With 0, a closed room can be rejoined at once.
    let server = TestServer::start("[admin]\nclosed_room_s = 0\n");
    let mut member = server.client().await;
    member.join("shut", None).await;
    assert_eq!(
        server.admin("DELETE", "/api/v1/rooms/shut", true).await.0,
        200
    );
    let mut again = server.client().await;
    assert!(matches!(
        again.join("shut", None).await,
        ServerMsg::Welcome { .. }
    ));
}
