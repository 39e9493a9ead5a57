//! Join tokens in every dialect: a room that needs one refuses a join without it, with coded
//! errors; a valid token names the peer, sets the room's capacity and gives its roles; keys
//! rotate on reload; `switchboard token` mints tokens the server takes.

use serde_json::{Value, json};
use switchboard::clock::unix_now;
use switchboard::config::{Secret, TokenKeyConfig};
use switchboard::signaling::protocol::{PeerInfo, ServerMsg};
use switchboard::tokens::{Claims, Signer};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::dialects::next_text;
use crate::harness::{Client, TestServer, peer_id};

const SECRET: &str = "a-secret-of-more-than-32-bytes-for-tests";

/// Rooms starting with `clinic-` need a token signed by the key `app`.
fn config(secret: &str) -> String {
    format!(
        r#"
        [admin]
        kicked_peer_s = 0
        [tokens]
        require = "prefixes"
        prefixes = ["clinic-"]
        [[tokens.keys]]
        id = "app"
        secret = "{secret}"
        "#
    )
}

fn signer(secret: &str) -> Signer {
    TokenKeyConfig {
        id: "app".into(),
        algorithm: "HS256".into(),
        secret: Some(Secret::new(secret.into())),
        public_key: None,
    }
    .signer()
    .unwrap()
}

fn claims(room: &str, sub: &str) -> Claims {
    Claims {
        room: room.into(),
        sub: Some(sub.into()),
        exp: unix_now() + 600,
        nbf: None,
        aud: None,
        capacity: None,
        allocations: None,
        messages_per_s: None,
        publish: None,
        kick: None,
    }
}

fn token(room: &str, sub: &str) -> String {
    signer(SECRET).mint(&claims(room, sub))
}

async fn join_with(
    c: &mut Client,
    room: &str,
    name: Option<&str>,
    token: Option<&str>,
) -> ServerMsg {
    c.send(json!({"type": "join", "room": room, "name": name, "token": token}))
        .await;
    c.recv().await
}

fn welcome_parts(msg: &ServerMsg) -> (Vec<PeerInfo>, Value) {
    match msg {
        ServerMsg::Welcome { peers, roles, .. } => {
            (peers.clone(), serde_json::to_value(roles).unwrap())
        }
        other => panic!("expected a welcome, got {other:?}"),
    }
}

async fn error_code(c: &mut Client, room: &str, token: Option<&str>) -> String {
    match join_with(c, room, None, token).await {
        ServerMsg::Error { code, .. } => serde_json::to_value(code)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned(),
        other => panic!("expected an error for {room} with {token:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_room_that_needs_a_token_refuses_joins_without_a_valid_one() {
    let server = TestServer::start(&config(SECRET));
    let mut c = server.client().await;
    assert_eq!(error_code(&mut c, "clinic-7", None).await, "token_required");
    assert_eq!(
        error_code(&mut c, "clinic-7", Some("not-a-token")).await,
        "token_invalid"
    );
    let forged = signer(&"x".repeat(40)).mint(&claims("clinic-7", "Eve"));
    assert_eq!(
        error_code(&mut c, "clinic-7", Some(&forged)).await,
        "token_invalid"
    );
    let mut expired = claims("clinic-7", "Ann");
    expired.exp = unix_now() - 120;
    let expired = signer(SECRET).mint(&expired);
    assert_eq!(
        error_code(&mut c, "clinic-7", Some(&expired)).await,
        "token_expired"
    );
    assert_eq!(
        error_code(&mut c, "clinic-8", Some(&token("clinic-7", "Ann"))).await,
        "token_room_mismatch"
    );
    // The refusals changed nothing: the same socket joins with a valid token, as its
    // identity; a room outside the prefix stays open to anyone.
    let (peers, roles) = welcome_parts(
        &join_with(
            &mut c,
            "clinic-7",
            Some("ignored"),
            Some(&token("clinic-7", "Dr. Ada")),
        )
        .await,
    );
    assert!(peers.is_empty());
    assert_eq!(roles, json!({"publish": true, "kick": false}));
    let mut other = server.client().await;
    other.join("lobby", Some("anyone")).await;
    let mut patient = server.client().await;
    let (peers, _) = welcome_parts(
        &join_with(
            &mut patient,
            "clinic-7",
            None,
            Some(&token("clinic-*", "Bob")),
        )
        .await,
    );
    assert_eq!(peers.len(), 1);
    assert_eq!(
        peers[0].name.as_deref(),
        Some("Dr. Ada"),
        "the token's sub is the name"
    );
    match c.recv().await {
        ServerMsg::PeerJoined { peer } => assert_eq!(peer.name.as_deref(), Some("Bob")),
        other => panic!("expected peer_joined, got {other:?}"),
    }
    for code in [
        "token_required",
        "token_invalid",
        "token_expired",
        "token_room_mismatch",
    ] {
        let counted = server
            .metric("switchboard_signaling_errors_total", &[("code", code)])
            .await;
        assert!(counted >= 1.0, "{code}: {counted}");
    }
}

/// A token in the socket's URL counts for a join that carries none (clients that cannot
/// add fields to their join).
#[tokio::test]
async fn a_token_in_the_socket_url_counts_for_its_joins() {
    let server = TestServer::start(&config(SECRET));
    let url = format!("{}?token={}", server.ws_url(), token("clinic-1", "Ann"));
    let mut c = server
        .client_with(url.into_client_request().unwrap())
        .await
        .unwrap();
    welcome_parts(&join_with(&mut c, "clinic-1", None, None).await);
}

/// A token's `capacity` replaces the server's room capacity (4 here) for its join: higher
/// or lower.
#[tokio::test]
async fn a_token_capacity_sets_the_room_size_for_its_join() {
    let server = TestServer::start(&config(SECRET));
    let with_capacity = |room: &str, capacity: u32| {
        let mut c = claims(room, "p");
        c.capacity = Some(capacity);
        signer(SECRET).mint(&c)
    };
    let mut big = Vec::new();
    for _ in 0..6 {
        let mut c = server.client().await;
        welcome_parts(
            &join_with(
                &mut c,
                "clinic-class",
                None,
                Some(&with_capacity("clinic-class", 6)),
            )
            .await,
        );
        big.push(c);
    }
    let mut seventh = server.client().await;
    assert_eq!(
        error_code(
            &mut seventh,
            "clinic-class",
            Some(&with_capacity("clinic-class", 6))
        )
        .await,
        "room_full"
    );
    let mut small = Vec::new();
    for _ in 0..2 {
        let mut c = server.client().await;
        welcome_parts(
            &join_with(
                &mut c,
                "clinic-pair",
                None,
                Some(&with_capacity("clinic-pair", 2)),
            )
            .await,
        );
        small.push(c);
    }
    assert_eq!(
        error_code(
            &mut seventh,
            "clinic-pair",
            Some(&with_capacity("clinic-pair", 2))
        )
        .await,
        "room_full"
    );
}

/// Only a peer whose token has the `kick` role may put another out of the room; the kicked
/// peer's socket closes and the room is told it left.
#[tokio::test]
async fn a_peer_with_the_kick_role_puts_another_out() {
    let server = TestServer::start(&config(SECRET));
    let mut host_claims = claims("clinic-9", "Host");
    host_claims.kick = Some(true);
    let mut host = server.client().await;
    let (_, roles) = welcome_parts(
        &join_with(
            &mut host,
            "clinic-9",
            None,
            Some(&signer(SECRET).mint(&host_claims)),
        )
        .await,
    );
    assert_eq!(roles["kick"], true);
    let mut guest = server.client().await;
    let guest_welcome = join_with(
        &mut guest,
        "clinic-9",
        None,
        Some(&token("clinic-9", "Guest")),
    )
    .await;
    let guest_id = peer_id(&guest_welcome);
    let ServerMsg::PeerJoined { peer: host_sees } = host.recv().await else {
        panic!("expected peer_joined");
    };
    assert_eq!(host_sees.id, guest_id);
    let ServerMsg::Welcome { peers, .. } = &guest_welcome else {
        unreachable!()
    };
    let host_id = peers[0].id.clone();

    guest
        .send(json!({"type": "kick", "peer_id": host_id}))
        .await;
    assert_eq!(guest.recv_error().await.0, "forbidden");
    // Someone in another room is not reachable.
    let mut stranger = server.client().await;
    let stranger_id = peer_id(&stranger.join("lobby", None).await);
    host.send(json!({"type": "kick", "peer_id": stranger_id}))
        .await;
    assert_eq!(host.recv_error().await.0, "unknown_peer");

    host.send(json!({"type": "kick", "peer_id": guest_id}))
        .await;
    assert_eq!(guest.recv_close().await.0, 1008);
    match host.recv().await {
        ServerMsg::PeerLeft { peer_id } => assert_eq!(peer_id, guest_id),
        other => panic!("expected peer_left, got {other:?}"),
    }
}

const SENDS: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=sendrecv\r\n";

/// A token with `publish: false` may answer and offer receive-only, not send media.
#[tokio::test]
async fn a_peer_without_the_publish_role_may_only_receive() {
    let server = TestServer::start(&config(SECRET));
    let mut viewer_claims = claims("clinic-talk", "Viewer");
    viewer_claims.publish = Some(false);
    let mut viewer = server.client().await;
    let welcome = join_with(
        &mut viewer,
        "clinic-talk",
        None,
        Some(&signer(SECRET).mint(&viewer_claims)),
    )
    .await;
    let viewer_id = peer_id(&welcome);
    let (_, roles) = welcome_parts(&welcome);
    assert_eq!(roles["publish"], false);
    let mut speaker = server.client().await;
    let speaker_id = peer_id(
        &join_with(
            &mut speaker,
            "clinic-talk",
            None,
            Some(&token("clinic-talk", "Speaker")),
        )
        .await,
    );
    viewer.recv().await; // peer_joined

    let offer = json!({"description": {"type": "offer", "sdp": SENDS}});
    viewer
        .send(json!({"type": "signal", "to": speaker_id, "payload": offer}))
        .await;
    assert_eq!(viewer.recv_error().await.0, "forbidden");
    // Escaped as JSON allows, it is the same SDP.
    let escaped = json!({"type": "signal", "to": speaker_id, "payload": {"sdp": "X"}})
        .to_string()
        .replace(
            "\"X\"",
            &format!(
                "\"{}\"",
                SENDS
                    .replace("a=sendrecv", "a\\u003dsendrecv")
                    .replace("\r\n", "\\r\\n")
            ),
        );
    viewer.send_text(escaped).await;
    assert_eq!(viewer.recv_error().await.0, "forbidden");
    // A payload too deep to read (a browser reads it) might hide anything: refused.
    let deep = format!(
        r#"{{"type":"signal","to":"{speaker_id}","payload":{{"description":{},"junk":{}{}}}}}"#,
        json!({"type": "offer", "sdp": SENDS}),
        "[".repeat(200),
        "]".repeat(200)
    );
    viewer.send_text(deep).await;
    assert_eq!(viewer.recv_error().await.0, "forbidden");
    let recvonly = SENDS.replace("a=sendrecv", "a=recvonly");
    viewer
        .send(json!({"type": "signal", "to": speaker_id, "payload": {"description": {"type": "answer", "sdp": recvonly}}}))
        .await;
    match speaker.recv().await {
        ServerMsg::Signal { payload, .. } => {
            assert_eq!(payload.value()["description"]["sdp"], recvonly)
        }
        other => panic!("expected the receive-only answer, got {other:?}"),
    }
    // The speaker sends to the viewer.
    speaker
        .send(json!({"type": "signal", "to": viewer_id, "payload": offer}))
        .await;
    assert!(matches!(viewer.recv().await, ServerMsg::Signal { .. }));
}

/// The plain-WebSocket dialect's clients send no token in their messages: it comes in the
/// socket's URL, names the dialect's one room, `users`, and the only name it may log in as.
#[tokio::test]
async fn the_plain_websocket_dialect_takes_a_token_in_its_url() {
    let server = TestServer::start(&config(SECRET).replace(
        "require = \"prefixes\"\n        prefixes = [\"clinic-\"]",
        "require = \"all\"",
    ));
    let login = async |token: Option<String>, name: &str| -> Value {
        let query = token.map(|t| format!("?token={t}")).unwrap_or_default();
        let url = format!("wss://{}/legacy{query}", server.https);
        let mut c = server
            .client_with(url.into_client_request().unwrap())
            .await
            .expect("plain-WebSocket connect");
        c.send(json!({"type": "login", "name": name})).await;
        serde_json::from_str(&next_text(&mut c).await).unwrap()
    };
    assert_eq!(login(None, "alice").await["code"], "token_required");
    let alices = token("users", "alice");
    assert_eq!(
        login(Some(alices.clone()), "mallory").await["code"],
        "token_room_mismatch"
    );
    assert_eq!(
        login(Some(token("lobby", "alice")), "alice").await["code"],
        "token_room_mismatch"
    );
    assert_eq!(
        login(Some("x.y.z".into()), "alice").await["code"],
        "token_invalid"
    );
    let ok = login(Some(alices), "alice").await;
    assert_eq!(ok["success"], true, "{ok}");
}

/// A raw socket.io 4 client (Engine.IO 4 over WebSocket) whose connect packet carries
/// `auth` (socket.io-client 4's `auth` option), and whose URL may carry `?token=`
/// (socket.io-client 2's `query` option).
async fn sio_with(server: &TestServer, query: &str, auth: Option<Value>) -> Client {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let url = server.ws_url().replace(
        "/ws",
        &format!("/socket.io/?EIO=4&transport=websocket{query}"),
    );
    let mut c = server
        .client_with(url.into_client_request().unwrap())
        .await
        .unwrap();
    assert!(next_text(&mut c).await.starts_with('0'));
    let connect = auth.map_or("40".to_owned(), |a| format!("40{a}"));
    c.ws.send(Message::text(connect)).await.unwrap();
    while !next_text(&mut c).await.starts_with("40") {}
    c
}

/// The next socket.io event (`42[...]`) as its JSON array.
async fn sio_event(c: &mut Client) -> Value {
    loop {
        let text = next_text(c).await;
        if let Some(event) = text.strip_prefix("42") {
            return serde_json::from_str(event).unwrap();
        }
    }
}

#[tokio::test]
async fn socketio_clients_give_their_token_in_the_handshake() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let server = TestServer::start(&config(SECRET));
    let join = async |c: &mut Client, room: &str| {
        let event = json!(["create or join", room]).to_string();
        c.ws.send(Message::text(format!("42{event}")))
            .await
            .unwrap();
        loop {
            let event = sio_event(c).await;
            if event[0] != "ice_servers" && event[0] != "log" {
                return event;
            }
        }
    };
    let mut none = sio_with(&server, "", None).await;
    let refused = join(&mut none, "clinic-3").await;
    assert_eq!(refused[0], "switchboard_error", "{refused}");
    assert_eq!(refused[1]["code"], "token_required");
    let mut wrong = sio_with(
        &server,
        "",
        Some(json!({"token": token("clinic-4", "Ann")})),
    )
    .await;
    assert_eq!(
        join(&mut wrong, "clinic-3").await[1]["code"],
        "token_room_mismatch"
    );

    let mut v4 = sio_with(
        &server,
        "",
        Some(json!({"token": token("clinic-3", "Ann")})),
    )
    .await;
    assert_eq!(join(&mut v4, "clinic-3").await[0], "created");
    let query = format!("&token={}", token("clinic-3", "Bob"));
    let mut v2 = sio_with(&server, &query, None).await;
    assert_eq!(join(&mut v2, "clinic-3").await[0], "joined");
    // Open rooms stay open.
    let mut open = sio_with(&server, "", None).await;
    assert_eq!(join(&mut open, "lobby").await[0], "created");
    let (status, body) = server.admin("GET", "/api/v1/peers", true).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(names.contains(&"Ann") && names.contains(&"Bob"), "{body}");
}

/// A reload replaces the keys: a token of the old key no longer joins, one of the new does.
#[tokio::test]
async fn a_reload_rotates_the_keys() {
    let server = TestServer::start(&config(SECRET));
    let new_secret = "another-secret-of-more-than-32-bytes!!";
    server.reload(&config(new_secret));
    server.wait_log("configuration reloaded");
    let mut c = server.client().await;
    assert_eq!(
        error_code(&mut c, "clinic-1", Some(&token("clinic-1", "Ann"))).await,
        "token_invalid"
    );
    let fresh = signer(new_secret).mint(&claims("clinic-1", "Ann"));
    welcome_parts(&join_with(&mut c, "clinic-1", None, Some(&fresh)).await);
}

/// `switchboard token` signs with the config's key; what it prints joins.
#[tokio::test]
async fn the_token_command_mints_what_the_server_takes() {
    let server = TestServer::start(&config(SECRET));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("--config")
        .arg(server.config_path())
        .args([
            "token", "--room", "clinic-*", "--sub", "Dr. Who", "--ttl", "60", "--kick",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted = String::from_utf8(out.stdout).unwrap();
    let mut c = server.client().await;
    let (_, roles) =
        welcome_parts(&join_with(&mut c, "clinic-12", None, Some(minted.trim())).await);
    assert_eq!(roles["kick"], true);

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("--config")
        .arg(server.config_path())
        .args(["token", "--room", "clinic-1", "--key", "nope"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--key") && stderr.contains("nope"),
        "{stderr}"
    );
}

fn receive_only(room: &str, sub: &str) -> String {
    let mut c = claims(room, sub);
    c.publish = Some(false);
    signer(SECRET).mint(&c)
}

/// The tutorial dialects hold a receive-only token to it too: a socket.io `message` or
/// `webrtc_offer`, a plain-WebSocket `offer` or `answer`, whose SDP sends media is refused.
#[tokio::test]
async fn receive_only_tokens_hold_in_the_tutorial_dialects() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let server = TestServer::start(&config(SECRET).replace(
        "require = \"prefixes\"\n        prefixes = [\"clinic-\"]",
        "require = \"all\"",
    ));
    let mut viewer = sio_with(
        &server,
        "",
        Some(json!({"token": receive_only("clinic-5", "V")})),
    )
    .await;
    let join = json!(["create or join", "clinic-5"]).to_string();
    viewer
        .ws
        .send(Message::text(format!("42{join}")))
        .await
        .unwrap();
    loop {
        if sio_event(&mut viewer).await[0] == "created" {
            break;
        }
    }
    let mut speaker = sio_with(&server, "", Some(json!({"token": token("clinic-5", "S")}))).await;
    speaker
        .ws
        .send(Message::text(format!("42{join}")))
        .await
        .unwrap();
    loop {
        if sio_event(&mut speaker).await[0] == "joined" {
            break;
        }
    }
    // socket.io handles each event on a task of its own: each refusal is awaited before the
    // next event goes.
    for (event, data) in [
        ("message", json!({"type": "offer", "sdp": SENDS})),
        (
            "webrtc_offer",
            json!({"roomId": "clinic-5", "sdp": {"type": "offer", "sdp": SENDS}}),
        ),
    ] {
        let frame = json!([event, data]).to_string();
        viewer
            .ws
            .send(Message::text(format!("42{frame}")))
            .await
            .unwrap();
        loop {
            let next = sio_event(&mut viewer).await;
            if next[0] == "switchboard_error" {
                assert_eq!(next[1]["code"], "forbidden", "{event}: {next}");
                break;
            }
        }
    }
    // A receive-only answer goes through, and is the first message the speaker gets.
    let recvonly = SENDS.replace("a=sendrecv", "a=recvonly");
    let answer = json!(["message", {"type": "answer", "sdp": recvonly}]).to_string();
    viewer
        .ws
        .send(Message::text(format!("42{answer}")))
        .await
        .unwrap();
    loop {
        let got = sio_event(&mut speaker).await;
        if got[0] == "message" {
            assert_eq!(got[1]["type"], "answer", "{got}");
            break;
        }
    }

    let url = format!(
        "wss://{}/legacy?token={}",
        server.https,
        receive_only("users", "watcher")
    );
    let mut watcher = server
        .client_with(url.into_client_request().unwrap())
        .await
        .unwrap();
    watcher
        .send(json!({"type": "login", "name": "watcher"}))
        .await;
    assert_eq!(
        serde_json::from_str::<Value>(&next_text(&mut watcher).await).unwrap()["success"],
        true
    );
    watcher
        .send(json!({"type": "offer", "name": "someone", "offer": {"type": "offer", "sdp": SENDS}}))
        .await;
    let reply: Value = serde_json::from_str(&next_text(&mut watcher).await).unwrap();
    assert_eq!(reply["code"], "forbidden", "{reply}");
}

/// A token's `allocations` is its room's TURN allocation budget for its holder's
/// allocations (carried, signed, in its TURN credential); without one, the config's.
#[tokio::test]
async fn a_tokens_allocation_budget_replaces_the_rooms_quota() {
    let server = TestServer::start(&format!(
        "{}\n{}",
        config(SECRET),
        crate::turn::turn_config("max_allocations_per_room = 2\nfence = \"off\"\n")
    ));
    let allocations = |welcome: ServerMsg| {
        let server = &server;
        async move {
            let (username, password) = crate::fence::credential(&welcome);
            let mut granted = 0;
            loop {
                let mut client = switchboard::turn::probe::Client::new(
                    server.listener("turn_udp"),
                    &username,
                    &password,
                )
                .await
                .unwrap();
                match client.allocate().await {
                    Ok(_) => granted += 1,
                    Err(switchboard::turn::probe::ProbeError::Refused { code: 486, .. }) => {
                        return (username, granted);
                    }
                    Err(e) => panic!("{e:?}"),
                }
                // Kept open: each counts while it lives.
                std::mem::forget(client);
            }
        }
    };
    let mut budget = claims("clinic-9", "Ann");
    budget.allocations = Some(5);
    let mut ann = server.client().await;
    let welcome = join_with(
        &mut ann,
        "clinic-9",
        None,
        Some(&signer(SECRET).mint(&budget)),
    )
    .await;
    let (username, granted) = allocations(welcome).await;
    assert!(username.contains("+5@clinic-9"), "{username}");
    assert_eq!(granted, 5, "the token's budget");

    let mut bob = server.client().await;
    let welcome = join_with(
        &mut bob,
        "clinic-10",
        None,
        Some(&token("clinic-10", "Bob")),
    )
    .await;
    let (username, granted) = allocations(welcome).await;
    assert!(!username.contains('+'), "{username}");
    assert_eq!(granted, 2, "turn.max_allocations_per_room");
    let refused = server
        .metric(
            "switchboard_turn_quota_refusals_total",
            &[("quota", "max_allocations_per_room")],
        )
        .await;
    assert_eq!(refused, 2.0);
}

/// Sends `n` signals from `from` to `to`; how many `room_busy` errors came back (every
/// other signal reached `to`, in order, which the caller reads).
async fn signals_refused(
    from: &mut Client,
    to: &switchboard::signaling::protocol::PeerId,
    n: usize,
) -> usize {
    for i in 0..n {
        from.send(json!({"type": "signal", "to": to, "payload": {"n": i}}))
            .await;
    }
    // A ping answered after every refusal the server sent for them.
    from.send(json!({"type": "ping"})).await;
    let mut refused = 0;
    loop {
        match from.recv().await {
            ServerMsg::Pong => return refused,
            ServerMsg::Error { .. } => refused += 1,
            ServerMsg::PeerJoined { .. } | ServerMsg::Signal { .. } => {}
            other => panic!("{other:?}"),
        }
    }
}

/// `signaling.room_messages_per_s` holds each room to its budget, all members together;
/// a token's `messages_per_s` gives its room another.
#[tokio::test]
async fn a_rooms_message_budget_drops_what_is_over_it_and_a_token_sets_it() {
    let server = TestServer::start(&format!(
        "{}\n[signaling]\nroom_messages_per_s = 5\n",
        config(SECRET)
    ));
    // Two seconds' worth at once: 10 of 20 from Ann, then none of Bob's.
    let mut ann = server.client().await;
    let mut bob = server.client().await;
    let ann_id = peer_id(&ann.join("busy", None).await);
    let bob_id = peer_id(&bob.join("busy", None).await);
    let refused = signals_refused(&mut ann, &bob_id, 20).await;
    assert!((9..=10).contains(&refused), "{refused} refused");
    let refused_bob = signals_refused(&mut bob, &ann_id, 3).await;
    assert_eq!(refused_bob, 3, "the budget is the room's, not Ann's");
    let busy = server
        .metric(
            "switchboard_signaling_errors_total",
            &[("code", "room_busy")],
        )
        .await;
    assert_eq!(busy as usize, refused + 3);

    // A token's budget for its room: all 20 pass.
    let mut budget = claims("clinic-11", "Cy");
    budget.messages_per_s = Some(100);
    let mut cy = server.client().await;
    let mut dee = server.client().await;
    join_with(
        &mut cy,
        "clinic-11",
        None,
        Some(&signer(SECRET).mint(&budget)),
    )
    .await;
    let dee_id = peer_id(
        &join_with(
            &mut dee,
            "clinic-11",
            None,
            Some(&token("clinic-11", "Dee")),
        )
        .await,
    );
    assert_eq!(signals_refused(&mut cy, &dee_id, 20).await, 0);
    for i in 0..20 {
        match dee.recv().await {
            ServerMsg::Signal { payload, .. } => {
                assert_eq!(payload.as_json(), json!({"n": i}).to_string());
            }
            other => panic!("{other:?}"),
        }
    }
}
