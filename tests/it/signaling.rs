//! The native signaling protocol against the real binary over real TLS.

use serde_json::json;
use switchboard::signaling::protocol::{PeerInfo, ServerMsg};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::harness::{TestServer, peer_id};

#[tokio::test]
async fn join_lists_peers_relays_signals_both_ways_and_reports_leaves() {
    let server = TestServer::start("");
    let mut a = server.client().await;
    let wa = a.join("room-1", Some("Ann")).await;
    let ServerMsg::Welcome { peers, room, .. } = &wa else {
        unreachable!()
    };
    assert!(peers.is_empty());
    assert_eq!(room.as_str(), "room-1");
    let id_a = peer_id(&wa);

    let mut b = server.client().await;
    let wb = b.join("room-1", Some("Bob")).await;
    let id_b = peer_id(&wb);
    assert_ne!(id_a, id_b);
    let ServerMsg::Welcome { peers, .. } = &wb else {
        unreachable!()
    };
    assert_eq!(
        peers,
        &vec![PeerInfo {
            id: id_a.clone(),
            name: Some("Ann".into())
        }]
    );
    assert_eq!(
        a.recv().await,
        ServerMsg::PeerJoined {
            peer: PeerInfo {
                id: id_b.clone(),
                name: Some("Bob".into())
            }
        }
    );

    let offer = json!({"description": {"type": "offer", "sdp": "v=0\r\n"}});
    a.send(json!({"type": "signal", "to": id_b, "payload": offer}))
        .await;
    assert_eq!(
        b.recv().await,
        ServerMsg::Signal {
            from: id_a.clone(),
            payload: offer.into()
        }
    );
    let candidate = json!({"candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"}});
    b.send(json!({"type": "signal", "to": id_a, "payload": candidate}))
        .await;
    assert_eq!(
        a.recv().await,
        ServerMsg::Signal {
            from: id_b.clone(),
            payload: candidate.into()
        }
    );

    // An explicit leave is reported, and the socket may join again.
    b.send(json!({"type": "leave"})).await;
    assert_eq!(
        a.recv().await,
        ServerMsg::PeerLeft {
            peer_id: id_b.clone()
        }
    );
    let again = b.join("room-1", None).await;
    let id_b2 = peer_id(&again);
    assert!(matches!(a.recv().await, ServerMsg::PeerJoined { peer } if peer.id == id_b2));

    // A dropped connection is reported too.
    drop(b);
    assert_eq!(a.recv().await, ServerMsg::PeerLeft { peer_id: id_b2 });

    a.send(json!({"type": "ping"})).await;
    assert_eq!(a.recv().await, ServerMsg::Pong);
}

#[tokio::test]
async fn full_room_is_refused_and_the_socket_stays_usable() {
    let server = TestServer::start("[signaling]\nroom_capacity = 2\n");
    let mut a = server.client().await;
    a.join("small", None).await;
    let mut b = server.client().await;
    b.join("small", None).await;
    let mut c = server.client().await;
    c.send(json!({"type": "join", "room": "small"})).await;
    let (code, message) = c.recv_error().await;
    assert_eq!(code, "room_full");
    assert!(message.contains("small"), "{message}");
    // The refused socket can still join elsewhere.
    c.join("other", None).await;
}

#[tokio::test]
async fn bad_input_gets_coded_errors_without_closing() {
    let server = TestServer::start("");
    let mut a = server.client().await;

    a.send_text("{not json".into()).await;
    let (code, message) = a.recv_error().await;
    assert_eq!(code, "bad_request");
    assert!(message.contains("invalid JSON"), "{message}");

    a.send(json!({"type": "teleport"})).await;
    let (code, message) = a.recv_error().await;
    assert_eq!(code, "bad_request");
    assert!(message.contains("teleport"), "{message}");

    a.send(json!({"type": "join", "room": "no spaces allowed"}))
        .await;
    assert_eq!(a.recv_error().await.0, "bad_room");
    a.send(json!({"type": "join", "room": "x".repeat(65)}))
        .await;
    assert_eq!(a.recv_error().await.0, "bad_room");

    a.send(json!({"type": "signal", "to": "0123", "payload": {}}))
        .await;
    assert_eq!(a.recv_error().await.0, "not_joined");
    a.send(json!({"type": "leave"})).await;
    assert_eq!(a.recv_error().await.0, "not_joined");

    a.join("r", None).await;
    a.send(json!({"type": "signal", "to": "00000000000000000000000000000000", "payload": {}}))
        .await;
    assert_eq!(a.recv_error().await.0, "unknown_peer");
    a.send(json!({"type": "join", "room": "r2"})).await;
    assert_eq!(a.recv_error().await.0, "already_joined");

    // Still usable after all that.
    a.send(json!({"type": "ping"})).await;
    assert_eq!(a.recv().await, ServerMsg::Pong);
}

#[tokio::test]
async fn signals_never_cross_rooms() {
    let server = TestServer::start("");
    let mut a = server.client().await;
    a.join("r1", None).await;
    let mut b = server.client().await;
    let wb = b.join("r2", None).await;
    a.send(json!({"type": "signal", "to": peer_id(&wb), "payload": {"x": 1}}))
        .await;
    assert_eq!(a.recv_error().await.0, "unknown_peer");
    b.send(json!({"type": "ping"})).await;
    assert_eq!(b.recv().await, ServerMsg::Pong, "b received nothing from a");
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let server = TestServer::start("[signaling]\nmax_message_bytes = 1024\n");
    let mut a = server.client().await;
    a.join("r", None).await;
    a.send(json!({"type": "ping", "pad": "x".repeat(1500)}))
        .await;
    assert_eq!(a.recv_error().await.0, "message_too_large");
    assert_eq!(a.recv_close().await, (1009, "message too large".to_owned()));
}

#[tokio::test]
async fn rate_limit_answers_with_errors() {
    let server = TestServer::start("[signaling]\nmessages_per_second = 1\nmessage_burst = 2\n");
    let mut a = server.client().await;
    for _ in 0..6 {
        a.send(json!({"type": "ping"})).await;
    }
    assert_eq!(a.recv().await, ServerMsg::Pong);
    assert_eq!(a.recv().await, ServerMsg::Pong);
    let mut limited = 0;
    for _ in 0..4 {
        match a.recv().await {
            ServerMsg::Error { .. } => limited += 1,
            ServerMsg::Pong => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        limited >= 3,
        "only {limited} of 4 excess messages were limited"
    );
}

#[tokio::test]
async fn persistent_flooding_closes_the_socket() {
    let server = TestServer::start("[signaling]\nmessages_per_second = 1\nmessage_burst = 1\n");
    let mut a = server.client().await;
    for _ in 0..10 {
        a.send(json!({"type": "ping"})).await;
    }
    assert_eq!(
        a.recv_close().await,
        (1008, "rate limit exceeded".to_owned())
    );
}

#[tokio::test]
async fn foreign_origin_is_refused_and_own_origin_allowed() {
    let server = TestServer::start("");
    let mut request = server.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", HeaderValue::from_static("https://evil.example"));
    let err = server
        .client_with(request)
        .await
        .err()
        .expect("foreign origin refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 403);
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("origin_refused"), "{body}");
        }
        other => panic!("expected HTTP 403, got {other:?}"),
    }
    let mut request = server.ws_url().into_client_request().unwrap();
    let own = format!("https://{}", server.https);
    request
        .headers_mut()
        .insert("origin", HeaderValue::from_str(&own).unwrap());
    server
        .client_with(request)
        .await
        .expect("own origin allowed");
}

#[tokio::test]
async fn allow_list_admits_a_listed_origin() {
    let server =
        TestServer::start("[signaling]\nallowed_origins = [\"https://app.example.com\"]\n");
    let mut request = server.ws_url().into_client_request().unwrap();
    request.headers_mut().insert(
        "origin",
        HeaderValue::from_static("https://app.example.com"),
    );
    server
        .client_with(request)
        .await
        .expect("listed origin allowed");
}

#[tokio::test]
async fn connections_per_ip_are_limited() {
    let server = TestServer::start("[signaling]\nmax_connections_per_ip = 2\n");
    let _a = server.client().await;
    let b = server.client().await;
    let request = server.ws_url().into_client_request().unwrap();
    match server
        .client_with(request)
        .await
        .err()
        .expect("third refused")
    {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 429),
        other => panic!("expected HTTP 429, got {other:?}"),
    }
    // A closed connection frees its slot.
    drop(b);
    server.wait_log("disconnected");
    server.client().await;
}

#[tokio::test]
async fn join_timeout_closes_idle_sockets() {
    let server = TestServer::start("[signaling]\njoin_timeout_s = 1\n");
    let mut a = server.client().await;
    assert_eq!(a.recv_error().await.0, "join_timeout");
    assert_eq!(a.recv_close().await, (1008, "join timeout".to_owned()));
}

#[tokio::test]
async fn dead_peer_is_dropped_and_the_room_told() {
    let server = TestServer::start("[signaling]\nping_interval_s = 1\nidle_timeout_s = 2\n");
    let mut a = server.client().await;
    a.join("r", None).await;
    let mut b = server.client().await;
    let wb = b.join("r", None).await;
    let ServerMsg::PeerJoined { .. } = a.recv().await else {
        panic!("expected peer_joined")
    };
    // b stops reading, so it never answers pings; a keeps answering them while it waits.
    let _frozen = b;
    assert_eq!(
        a.recv().await,
        ServerMsg::PeerLeft {
            peer_id: peer_id(&wb)
        }
    );
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_cleanly() {
    let mut server = TestServer::start("");
    let mut a = server.client().await;
    a.join("r", None).await;
    server.signal("TERM");
    assert_eq!(
        a.recv_close().await,
        (1001, "server shutting down".to_owned())
    );
    let status = server.wait_exit();
    assert!(status.success(), "exit status {status}");
}

/// Many signals from two senders at once arrive complete and, per sender, in order,
/// whether the server writes them straight into the recipient's socket or queues them.
#[tokio::test]
async fn concurrent_senders_keep_each_senders_order() {
    let server =
        TestServer::start("[signaling]\nmessages_per_second = 100000\nmessage_burst = 100000\n");
    let mut r = server.client().await;
    let wr = r.join("order", None).await;
    let to = peer_id(&wr);
    let mut senders = Vec::new();
    for name in ["a", "b"] {
        let mut c = server.client().await;
        c.join("order", Some(name)).await;
        r.recv().await; // peer_joined
        senders.push(c);
    }
    const N: u64 = 400;
    let sends = senders.into_iter().enumerate().map(|(s, mut c)| {
        let to = to.clone();
        tokio::spawn(async move {
            for i in 0..N {
                let pad = "x".repeat((i as usize * 37) % 3000);
                c.send(
                    json!({"type": "signal", "to": to, "payload": {"s": s, "i": i, "pad": pad}}),
                )
                .await;
            }
            c
        })
    });
    // The receiver reads while they send: a reader that stops would (rightly) be dropped
    // once the socket buffers and its 256-frame queue are full.
    let receive = async {
        let mut next = [0u64; 2];
        for _ in 0..2 * N {
            let ServerMsg::Signal { payload, .. } = r.recv().await else {
                panic!("expected a signal")
            };
            let v = payload.value();
            let (s, i) = (v["s"].as_u64().unwrap() as usize, v["i"].as_u64().unwrap());
            assert_eq!(i, next[s], "sender {s} out of order");
            next[s] += 1;
        }
        next
    };
    let (senders, next) = tokio::join!(futures_util::future::join_all(sends), receive);
    assert_eq!(next, [N, N]);
    drop(senders);
}

/// A recipient that stops reading is disconnected when its queue fills, its sender is not
/// slowed (it still gets answers at once), and the server does not buffer what the
/// recipient does not read (120 MB are sent to it).
#[tokio::test]
async fn a_reader_that_stops_reading_is_dropped_without_slowing_the_sender() {
    let server =
        TestServer::start("[signaling]\nmessages_per_second = 100000\nmessage_burst = 100000\n");
    let mut stalled = server.client().await;
    let ws = stalled.join("slow", None).await;
    let to = peer_id(&ws);
    let mut sender = server.client().await;
    sender.join("slow", None).await;
    let big = "y".repeat(60_000);
    // Far more than the socket buffers and the 256-frame queue hold; the sender gets
    // its pongs throughout, and peer_left once the stalled reader is dropped.
    let mut left = false;
    for i in 0..2_000 {
        sender
            .send(json!({"type": "signal", "to": to, "payload": {"i": i, "big": big}}))
            .await;
        if i % 100 == 0 {
            sender.send(json!({"type": "ping"})).await;
            loop {
                match sender.recv().await {
                    ServerMsg::Pong => break,
                    ServerMsg::PeerLeft { .. } => left = true,
                    ServerMsg::Error { code, .. } if left => {
                        assert_eq!(
                            code,
                            switchboard::signaling::protocol::ErrorCode::UnknownPeer
                        )
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        if left {
            break;
        }
    }
    assert!(left, "the stalled reader was never dropped");
    let evicted = server.wait_log("send queue overflow, disconnecting slow client");
    assert_eq!(evicted["span"]["peer_id"], to.as_str(), "{evicted}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    // The queue (256 frames of 60 KB) and the rest of the server fit well under this.
    assert!(
        rss_kib < 80 * 1024,
        "server RSS {rss_kib} KiB: unread frames are being buffered"
    );
    drop(stalled);
}

/// The native socket's own WebSocket framing against tungstenite's client: control frames,
/// fragments, binary and invalid text, and the close handshake.
#[tokio::test]
async fn websocket_framing_edges_against_an_independent_client() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};

    let server = TestServer::start("");
    let mut a = server.client().await;

    // A ping is answered with a pong carrying the same bytes.
    a.ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(std::time::Duration::from_secs(10), a.ws.next())
        .await
        .expect("pong in time");
    assert_eq!(
        pong.unwrap().unwrap(),
        Message::Pong(b"are you there".to_vec().into())
    );

    // A message in three fragments, a ping between them: one join.
    let join = json!({"type": "join", "room": "frames"}).to_string();
    let (one, rest) = join.split_at(5);
    let (two, three) = rest.split_at(7);
    let fragment = |data: &str, op: Data, fin: bool| {
        Message::Frame(Frame::message(
            data.as_bytes().to_vec(),
            OpCode::Data(op),
            fin,
        ))
    };
    a.ws.send(fragment(one, Data::Text, false)).await.unwrap();
    a.ws.send(Message::Ping(Vec::new().into())).await.unwrap();
    a.ws.send(fragment(two, Data::Continue, false))
        .await
        .unwrap();
    a.ws.send(fragment(three, Data::Continue, true))
        .await
        .unwrap();
    assert!(matches!(a.recv().await, ServerMsg::Welcome { .. }));

    // Binary gets a coded error and the socket stays.
    a.ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(a.recv_error().await.0, "bad_request");
    a.send(json!({"type": "ping"})).await;
    assert_eq!(a.recv().await, ServerMsg::Pong);

    // The client closes: the server answers with the same code.
    a.ws.send(Message::Close(Some(CloseFrame {
        code: 4000.into(),
        reason: "done".into(),
    })))
    .await
    .unwrap();
    assert_eq!(a.recv_close().await.0, 4000);

    // Text that is not UTF-8 closes with 1007, and the server keeps serving others.
    let mut b = server.client().await;
    b.ws.send(Message::Frame(Frame::message(
        vec![b'{', 0xC3, 0x28, b'}'],
        OpCode::Data(Data::Text),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(b.recv_close().await.0, 1007);
    let mut c = server.client().await;
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await, ServerMsg::Pong);

    // A plain GET on the socket's path says what it is.
    let (status, head, body) = server.https_get("/ws").await;
    assert_eq!(status, 426, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    assert!(body.contains("WebSocket endpoint"), "{body}");
}

/// On the plain ws:// listener the server takes the upgraded connection back from hyper as
/// a bare TCP stream; whatever hyper had already read past the request must not be lost. A
/// client here sends its first message in the same write as the upgrade request.
#[tokio::test]
async fn plain_listener_keeps_a_message_sent_right_behind_the_upgrade() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = TestServer::start("[signaling]\nlegacy_ws_listen = [\"127.0.0.1:0\"]\n");
    let mut tcp = tokio::net::TcpStream::connect(server.listener("legacy_ws"))
        .await
        .unwrap();
    let mut bytes = b"GET /legacy HTTP/1.1\r\nHost: switchboard\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    let login = br#"{"type":"login","name":"early"}"#;
    let mask = [0x12, 0x34, 0x56, 0x78];
    bytes.extend([0x81, 0x80 | login.len() as u8]);
    bytes.extend(mask);
    bytes.extend(login.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&bytes).await.unwrap();

    // The 101 answer, then one unmasked text frame: the login's answer.
    let mut got = Vec::new();
    let frame = tokio::time::timeout(crate::harness::DEADLINE, async {
        loop {
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
            let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            // A server frame: FIN+text, then a 7-bit length or 126 and a 16-bit one.
            let rest = &got[end + 4..];
            let (start, len) = match rest.get(1) {
                Some(126) if rest.len() >= 4 => {
                    (4, usize::from(u16::from_be_bytes([rest[2], rest[3]])))
                }
                Some(&n) if n < 126 => (2, usize::from(n)),
                _ => continue,
            };
            if rest.len() >= start + len {
                return (got[..end].to_vec(), rest[..start + len].to_vec());
            }
        }
    })
    .await
    .expect("the login is answered in time");
    let (head, rest) = frame;
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "the RFC 6455 accept key: {head}"
    );
    assert_eq!(rest[0], 0x81, "one unmasked text frame");
    let payload = &rest[if rest[1] == 126 { 4 } else { 2 }..];
    let answer: serde_json::Value = serde_json::from_slice(payload)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(payload)));
    assert_eq!(answer["type"], "login", "{answer}");
    assert_eq!(answer["success"], true, "{answer}");
}

/// Control frames are charged to the message budget like messages, and a batch of pings is
/// answered with one pong: 500 pings in one write got 500 awaited pong writes and never
/// met the rate limit before. Over the budget the client is closed as a text flood is.
#[tokio::test]
async fn a_ping_flood_is_charged_answered_once_per_batch_and_closed() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let server = TestServer::start("[signaling]\nmessages_per_second = 10\nmessage_burst = 10\n");
    let mut c = server.client().await;
    for _ in 0..500 {
        c.ws.feed(Message::Ping(Vec::new().into())).await.unwrap();
    }
    c.ws.flush().await.unwrap();
    let mut pongs = 0;
    let close = loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), c.ws.next())
            .await
            .expect("the server closes in time");
        match frame {
            Some(Ok(Message::Pong(_))) => pongs += 1,
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("dropped without a close frame: {e}"),
            None => panic!("dropped without a close frame"),
        }
    };
    let close = close.expect("a close frame with a reason");
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    assert_eq!(close.reason, "rate limit exceeded");
    // The burst (10) passes; a batch's pong is written after the batch, if the client stays.
    assert!(pongs <= 10, "{pongs} pongs");

    // Within the budget: 50 pings written at once are answered, by fewer than 50 pongs;
    // a message sent after them is answered after their pongs.
    let server = TestServer::start("");
    let mut c = server.client().await;
    for _ in 0..50 {
        c.ws.feed(Message::Ping(Vec::new().into())).await.unwrap();
    }
    c.ws.flush().await.unwrap();
    let mut pongs = 0;
    loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), c.ws.next())
            .await
            .expect("pongs in time");
        match frame {
            Some(Ok(Message::Pong(_))) => {
                pongs += 1;
                if pongs == 1 {
                    c.send(serde_json::json!({"type": "ping"})).await;
                }
            }
            Some(Ok(Message::Text(text))) => {
                assert!(text.contains("pong"), "{text}");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!((1..50).contains(&pongs), "{pongs} pongs for 50 pings");
}

/// A binary frame gets an error; a second one closes the socket (1003): each used to get
/// its own error reply, however many.
#[tokio::test]
async fn a_second_binary_frame_closes_the_socket() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let server = TestServer::start("");
    let mut c = server.client().await;
    c.ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(c.recv_error().await.0, "bad_request");
    c.ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let (code, reason) = c.recv_close().await;
    assert_eq!(
        (code, reason.as_str()),
        (1003, "binary frames are not supported")
    );
}

/// Refusals any client can cause are logged at most ten a second per kind, the next line
/// saying how many were left out, and the client's text in them is clipped: 100 upgrades
/// from a long foreign `Origin` used to write 100 warnings with the whole header each.
#[tokio::test]
async fn refusal_log_lines_are_throttled_and_clip_client_text() {
    let server = TestServer::start("");
    let origin = format!("https://{}.example", "x".repeat(1000));
    for _ in 0..100 {
        let mut request = server.ws_url().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_str(&origin).unwrap());
        assert!(server.client_with(request).await.is_err());
    }
    // A line logged after all of those, to count them by.
    assert_eq!(server.admin("GET", "/api/v1/rooms", false).await.0, 401);
    server.wait_log("admin API request without a valid token");
    let refused = server.logged("websocket origin refused");
    // 100 attempts take a few seconds at most: ten a second per second they span.
    assert!(
        !refused.is_empty() && refused.len() <= 50,
        "{} lines",
        refused.len()
    );
    for line in &refused {
        let logged = line["origin"].as_str().unwrap();
        assert!(logged.len() <= 130, "{logged}"); // 128 bytes, quoted
    }
}
