//! Several instances of the real binary sharing rooms through a real Redis (Debian's
//! `redis-server`, started here on a Unix socket in a temporary directory).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard::signaling::protocol::ServerMsg;

use crate::dialects::{next_text, sio_raw};
use crate::harness::{self, DEADLINE, TestServer, peer_id};
use crate::prereq::Prereq;
use crate::raw_turn::{RawTurn, turn_entry};

/// A redis-server of the test's own, gone with it.
struct Redis {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        harness::need(Prereq::Redis);
        let dir = harness::temp_dir();
        let socket = dir.path().join("redis.sock");
        let child = Redis::spawn(dir.path(), &socket);
        Redis {
            child,
            socket,
            _dir: dir,
        }
    }

    /// A redis-server on `socket`, once it accepts connections; it keeps nothing on disk.
    fn spawn(dir: &std::path::Path, socket: &std::path::Path) -> Child {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(socket)
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(dir);
        let (child, lines) = spawn_logging(command);
        wait_line(&lines, "ready to accept connections");
        child
    }

    /// Stops it and starts an empty one on the same socket, as a restart without
    /// persistence leaves it.
    fn restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let dir = self.socket.parent().expect("socket dir").to_owned();
        self.child = Redis::spawn(&dir, &self.socket);
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process whose standard output's lines (lowercased) arrive on the receiver.
fn spawn_logging(mut command: Command) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line.to_ascii_lowercase());
        }
    });
    (child, rx)
}

/// Waits for a line containing `needle` (lowercase).
fn wait_line(lines: &std::sync::mpsc::Receiver<String>, needle: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return,
            Ok(_) => {}
            Err(_) => panic!("redis never printed {needle:?}"),
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Redis processes on TCP ports of loopback (Sentinel and Cluster need addresses), killed
/// when the test ends.
struct TcpRedis {
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl TcpRedis {
    fn new() -> TcpRedis {
        harness::need(Prereq::Redis);
        TcpRedis {
            children: Vec::new(),
            dir: harness::temp_dir(),
        }
    }

    /// Starts `redis-server` on a free port with `args`; returns the port and its output.
    fn server(&mut self, args: &[&str]) -> (u16, std::sync::mpsc::Receiver<String>) {
        let port = free_port();
        let dir = self.dir.path().join(format!("node-{port}"));
        std::fs::create_dir_all(&dir).expect("node dir");
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir)
            .args(args);
        let (child, lines) = spawn_logging(command);
        self.children.push(child);
        wait_line(&lines, "ready to accept connections");
        (port, lines)
    }

    /// A Sentinel watching the master on `master` as `m` (quorum 1, down after 1 s).
    fn sentinel(&mut self, master: u16) -> (u16, std::sync::mpsc::Receiver<String>) {
        let port = free_port();
        let conf = self.dir.path().join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor m 127.0.0.1 {master} 1\n\
                 sentinel down-after-milliseconds m 1000\nsentinel failover-timeout m 5000\n"
            ),
        )
        .expect("sentinel.conf");
        let mut command = Command::new("redis-server");
        command.arg(&conf).arg("--sentinel");
        let (child, lines) = spawn_logging(command);
        self.children.push(child);
        (port, lines)
    }

    /// Kills the `i`th process started.
    fn kill(&mut self, i: usize) {
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
    }
}

impl Drop for TcpRedis {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An instance of the cluster on `redis`, called `id`, with `extra` TOML merged in.
fn instance(redis: &Redis, id: &str, extra: &str) -> TestServer {
    instance_at(&redis.url(), id, extra)
}

/// An instance of the cluster whose `cluster.redis_url` is `url`.
fn instance_at(url: &str, id: &str, extra: &str) -> TestServer {
    let mut config: toml::Table = toml::from_str(&format!(
        "[turn]\nsecrets = [\"cluster-test-secret-0123456789\"]\n\
         [cluster]\nredis_url = \"{url}\"\ninstance_id = \"{id}\"\n\
         heartbeat_interval_ms = 200\nheartbeat_ttl_ms = 1000\ntimeout_ms = 400\n"
    ))
    .expect("cluster TOML");
    for (key, value) in toml::from_str::<toml::Table>(extra).expect("extra TOML") {
        match (config.get_mut(&key), value) {
            (Some(toml::Value::Table(section)), toml::Value::Table(more)) => section.extend(more),
            (_, value) => {
                config.insert(key, value);
            }
        }
    }
    let server = TestServer::start(&toml::to_string(&config).expect("TOML"));
    server.wait_log("cluster: connected to Redis, rooms in step");
    server
}

fn signal_text(msg: &ServerMsg) -> (String, String) {
    match msg {
        ServerMsg::Signal { from, payload } => (
            from.to_string(),
            serde_json::to_string(payload).expect("payload"),
        ),
        other => panic!("expected a signal, got {other:?}"),
    }
}

/// Two peers of one room on different instances see each other join, talk, and leave.
#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt install redis-server)"
)]
async fn a_room_spans_instances() {
    let redis = Redis::start();
    let a = instance(&redis, "a", "");
    let b = instance(&redis, "b", "");

    let mut alice = a.client().await;
    let welcome = alice.join("across", Some("alice")).await;
    let alice_id = peer_id(&welcome);
    let mut bob = b.client().await;
    let welcome = bob.join("across", Some("bob")).await;
    let bob_id = peer_id(&welcome);
    match &welcome {
        ServerMsg::Welcome { peers, .. } => {
            assert_eq!(peers.len(), 1, "{peers:?}");
            assert_eq!(peers[0].id, alice_id);
            assert_eq!(peers[0].name.as_deref(), Some("alice"));
        }
        _ => unreachable!(),
    }
    match alice.recv().await {
        ServerMsg::PeerJoined { peer } => {
            assert_eq!(peer.id, bob_id);
            assert_eq!(peer.name.as_deref(), Some("bob"));
        }
        other => panic!("expected peer_joined, got {other:?}"),
    }

    bob.send(json!({"type": "signal", "to": alice_id, "payload": {"sdp": "offer"}}))
        .await;
    let (from, payload) = signal_text(&alice.recv().await);
    assert_eq!(from, bob_id.to_string());
    assert_eq!(payload, r#"{"sdp":"offer"}"#);
    alice
        .send(json!({"type": "signal", "to": bob_id, "payload": {"sdp": "answer"}}))
        .await;
    let (from, _) = signal_text(&bob.recv().await);
    assert_eq!(from, alice_id.to_string());

    // Each instance lists the whole room.
    for server in [&a, &b] {
        let (status, rooms) = server.admin("GET", "/api/v1/rooms", true).await;
        assert_eq!(status, 200);
        let text = rooms.to_string();
        assert!(
            text.contains(alice_id.as_str()) && text.contains(bob_id.as_str()),
            "{text}"
        );
    }

    bob.send(json!({"type": "leave"})).await;
    match alice.recv().await {
        ServerMsg::PeerLeft { peer_id } => assert_eq!(peer_id, bob_id),
        other => panic!("expected peer_left, got {other:?}"),
    }
}

/// 50 joins to a room of 4, spread over three instances at once: exactly 4 welcomes.
#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt install redis-server)"
)]
async fn capacity_holds_across_instances() {
    let redis = Redis::start();
    let servers = [
        instance(&redis, "a", "[signaling]\nroom_capacity = 4\n"),
        instance(&redis, "b", "[signaling]\nroom_capacity = 4\n"),
        instance(&redis, "c", "[signaling]\nroom_capacity = 4\n"),
    ];
    let mut clients = Vec::new();
    for i in 0..50 {
        clients.push(servers[i % 3].client().await);
    }
    let joins = clients.iter_mut().map(|client| async move {
        client.send(json!({"type": "join", "room": "small"})).await;
        match client.recv().await {
            ServerMsg::Welcome { .. } => true,
            ServerMsg::Error { code, .. } => {
                let code = serde_json::to_value(code).unwrap();
                assert_eq!(code, "room_full");
                false
            }
            other => panic!("expected welcome or error, got {other:?}"),
        }
    });
    let welcomed = futures_util::future::join_all(joins)
        .await
        .into_iter()
        .filter(|w| *w)
        .count();
    assert_eq!(welcomed, 4);
}

/// One sender's 10,000 signals to a peer on another instance arrive in order, each once.
#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt install redis-server)"
)]
async fn signals_across_instances_keep_their_order() {
    let redis = Redis::start();
    let fast = "[signaling]\nmessages_per_second = 100000\nmessage_burst = 100000\n";
    let a = instance(&redis, "a", fast);
    let b = instance(&redis, "b", fast);
    let mut alice = a.client().await;
    let alice_id = peer_id(&alice.join("order", None).await);
    let mut bob = b.client().await;
    let bob_id = peer_id(&bob.join("order", None).await);
    assert!(matches!(alice.recv().await, ServerMsg::PeerJoined { .. }));

    const N: usize = 10_000;
    let send = async {
        for i in 0..N {
            alice
                .send(json!({"type": "signal", "to": bob_id, "payload": {"n": i}}))
                .await;
        }
    };
    let receive = async {
        for i in 0..N {
            let (from, payload) = signal_text(&bob.recv().await);
            assert_eq!(from, alice_id.to_string());
            assert_eq!(payload, format!(r#"{{"n":{i}}}"#));
        }
    };
    tokio::join!(send, receive);
}

/// An instance killed with SIGKILL leaves every room within the heartbeat's lifetime.
#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt install redis-server)"
)]
async fn a_killed_instance_leaves_its_rooms() {
    let redis = Redis::start();
    let a = instance(&redis, "a", "");
    let mut b = instance(&redis, "b", "");
    let mut alice = a.client().await;
    alice.join("survive", None).await;
    let mut bob = b.client().await;
    let bob_id = peer_id(&bob.join("survive", None).await);
    assert!(matches!(alice.recv().await, ServerMsg::PeerJoined { .. }));

    let killed = Instant::now();
    b.signal("KILL");
    b.wait_exit();
    match alice.recv().await {
        ServerMsg::PeerLeft { peer_id } => assert_eq!(peer_id, bob_id),
        other => panic!("expected peer_left, got {other:?}"),
    }
    // The heartbeat lives 1 s and is looked for every 200 ms.
    let took = killed.elapsed();
    assert!(
        took < Duration::from_millis(2_500),
        "peer_left after {took:?}"
    );
    let (_, rooms) = a.admin("GET", "/api/v1/rooms", true).await;
    assert!(!rooms.to_string().contains(bob_id.as_str()), "{rooms}");
}

/// Redis gone: a join is refused with `unavailable` and the instance is not ready; peers
/// of one instance keep talking.
#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt install redis-server)"
)]
async fn without_redis_joins_wait_and_local_peers_keep_talking() {
    let mut redis = Redis::start();
    let a = instance(&redis, "a", "");
    let mut alice = a.client().await;
    let alice_id = peer_id(&alice.join("local", None).await);
    let mut bob = a.client().await;
    let bob_id = peer_id(&bob.join("local", None).await);
    assert!(matches!(alice.recv().await, ServerMsg::PeerJoined { .. }));

    redis.child.kill().unwrap();
    redis.child.wait().unwrap();
    a.wait_log("cluster: lost the connection to Redis; reconnecting");
    let (status, _, _) = a.https_get("/readyz").await;
    assert_eq!(status, 503);
    let mut carol = a.client().await;
    carol.send(json!({"type": "join", "room": "local"})).await;
    let (code, _) = carol.recv_error().await;
    assert_eq!(code, "unavailable");
    bob.send(json!({"type": "signal", "to": alice_id, "payload": 1}))
        .await;
    let (from, _) = signal_text(&alice.recv().await);
    assert_eq!(from, bob_id.to_string());
}

/// A TURN client whose requests land on another instance keeps its nonce; a credential from
/// one instance relays on another while its peer is in its room, and stops when it leaves.
#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt install redis-server)"
)]
async fn turn_works_from_any_instance_while_the_peer_is_in_its_room() {
    let redis = Redis::start();
    let quick = "[turn]\ngrace_period_s = 0\n";
    let a = instance(&redis, "a", quick);
    let b = instance(&redis, "b", quick);
    let mut alice = a.client().await;
    let welcome = alice.join("relay", None).await;
    // Bob joins on b after alice: b knows her when her credential arrives there.
    let mut bob = b.client().await;
    bob.join("relay", None).await;
    let mut turn = RawTurn::new(a.listener("turn_udp"), &turn_entry(&welcome)).await;
    turn.allocate()
        .await
        .expect("allocation on the instance that minted the credential");

    turn.set_server(b.listener("turn_udp"));
    assert_eq!(turn.allocate_once().await, Ok(()), "the nonce from a, at b");
    turn.refresh().await.expect("refresh at b");

    alice.send(json!({"type": "leave"})).await;
    let closed = b.wait_log("allocation closed");
    assert_eq!(closed["reason"], "peer_left", "{closed}");
    // The allocation is gone and the credential with it: its peer is in no room.
    assert_eq!(turn.refresh().await, Err(401));
}

/// The socket.io dialect's rooms span instances too: the codelab's "create or join" on two
/// instances, then messages both ways.
#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt install redis-server)"
)]
async fn socketio_rooms_span_instances() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let redis = Redis::start();
    let a = instance(&redis, "a", "");
    let b = instance(&redis, "b", "");
    let mut first = sio_raw(&a, None).await;
    let mut second = sio_raw(&b, None).await;
    /// The next socket.io event frame (`42[...]`), skipping engine.io pings and the rest.
    async fn event(c: &mut harness::Client, name: &str) -> String {
        loop {
            let text = next_text(c).await;
            if text.starts_with(&format!(r#"42["{name}""#)) {
                return text;
            }
        }
    }
    let create = Message::text(r#"42["create or join","codelab"]"#);
    first.ws.send(create.clone()).await.unwrap();
    event(&mut first, "created").await;
    second.ws.send(create).await.unwrap();
    event(&mut second, "joined").await;
    event(&mut first, "join").await;
    event(&mut first, "ready").await;

    first
        .ws
        .send(Message::text(r#"42["message",{"from":"a"}]"#))
        .await
        .unwrap();
    assert_eq!(
        event(&mut second, "message").await,
        r#"42["message",{"from":"a"}]"#
    );
    second
        .ws
        .send(Message::text(r#"42["message","got it"]"#))
        .await
        .unwrap();
    assert_eq!(
        event(&mut first, "message").await,
        r#"42["message","got it"]"#
    );
}

/// Closing a room or kicking a peer through any instance reaches its peers on every instance.
#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt install redis-server)"
)]
async fn the_admin_api_of_any_instance_closes_and_kicks_everywhere() {
    let redis = Redis::start();
    let a = instance(&redis, "a", "");
    let b = instance(&redis, "b", "");
    let mut alice = a.client().await;
    alice.join("shut", None).await;
    let mut bob = b.client().await;
    bob.join("shut", None).await;
    let (status, body) = b.admin("DELETE", "/api/v1/rooms/shut", true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["peers_disconnected"], 2, "{body}");
    for client in [&mut alice, &mut bob] {
        let (code, reason) = client.recv_close().await;
        assert_eq!(
            (code, reason.as_str()),
            (1008, "closed by the server operator")
        );
    }

    // Closed on every instance, not only the one whose API was asked.
    a.wait_log("room closed by the operator through another instance");
    let mut again = a.client().await;
    again.send(json!({"type": "join", "room": "shut"})).await;
    assert_eq!(again.recv_error().await.0, "room_closed");

    // Dave, on b, sees carol join: b knows her when its API is asked.
    let mut dave = b.client().await;
    dave.join("kick", None).await;
    let mut carol = a.client().await;
    let welcome = carol.join("kick", None).await;
    let carol_id = peer_id(&welcome);
    assert!(matches!(dave.recv().await, ServerMsg::PeerJoined { .. }));
    let mut turn = RawTurn::new(a.listener("turn_udp"), &turn_entry(&welcome)).await;
    turn.allocate().await.expect("carol's allocation on a");
    let (status, body) = b
        .admin(
            "DELETE",
            &format!("/api/v1/peers/{}", carol_id.as_str()),
            true,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (code, _) = carol.recv_close().await;
    assert_eq!(code, 1008);
    // Her allocation on a is revoked at once, and her source is kept out on both instances.
    assert_eq!(a.wait_log("allocation closed")["reason"], "revoked");
    for server in [&a, &b] {
        server.wait_log("peer kicked by the operator, told through the cluster");
    }
    for server in [&a, &b] {
        let mut back = server.client().await;
        back.send(json!({"type": "join", "room": "kick"})).await;
        assert_eq!(back.recv_error().await.0, "kicked");
    }
}

/// Redis restarted empty: each instance registers its peers again, and the rooms are whole.
#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt install redis-server)"
)]
async fn rooms_are_rebuilt_from_the_instances_when_redis_restarts_empty() {
    let mut redis = Redis::start();
    let a = instance(&redis, "a", "");
    let b = instance(&redis, "b", "");
    let mut alice = a.client().await;
    let alice_id = peer_id(&alice.join("again", None).await);
    let mut bob = b.client().await;
    let bob_id = peer_id(&bob.join("again", None).await);

    redis.restart();
    for server in [&a, &b] {
        server.wait_log("cluster: lost the connection to Redis; reconnecting");
        server.wait_log("cluster: connected to Redis, rooms in step");
    }
    let mut carol = a.client().await;
    match carol.join("again", None).await {
        ServerMsg::Welcome { peers, .. } => {
            let ids: Vec<_> = peers.iter().map(|p| p.id.clone()).collect();
            assert!(ids.contains(&alice_id) && ids.contains(&bob_id), "{ids:?}");
        }
        _ => unreachable!(),
    }
    // And the two still reach each other.
    bob.send(json!({"type": "signal", "to": alice_id, "payload": "still here"}))
        .await;
    loop {
        if let ServerMsg::Signal { from, .. } = alice.recv().await {
            assert_eq!(from, bob_id);
            break;
        }
    }
}

/// Two Chromium call pages on different instances call each other: directly, and relay-only
/// with each page's relay on its own instance (relay to relay across instances). The
/// instances relay from distinct loopback addresses, and each lets its relay reach the
/// other's, as instances on their own hosts would.
#[test]
#[cfg_attr(
    not(all(has_redis, has_chromium)),
    ignore = "needs redis-server (apt install redis-server); needs chromium (apt install chromium)"
)]
fn browsers_on_different_instances_call_each_other() {
    use crate::cdp::Browser;

    harness::need(Prereq::Chromium);
    let redis = Redis::start();
    let a = instance(
        &redis,
        "a",
        "[turn]\nrelay_ip = \"127.0.0.2\"\nallow_peers = [\"127.0.0.3/32\"]\n",
    );
    let b = instance(
        &redis,
        "b",
        "[turn]\nrelay_ip = \"127.0.0.3\"\nallow_peers = [\"127.0.0.2/32\"]\n",
    );
    let browser = Browser::launch(&[], &[]);
    let timeout = Duration::from_secs(60);
    for (room, query, path) in [
        ("span", "?autojoin", "host"),
        ("span-relay", "?relay=udp&autojoin", "relay"),
    ] {
        let first = browser.open(&format!("https://{}/r/{room}{query}", a.https));
        let second = browser.open(&format!("https://{}/r/{room}{query}", b.https));
        let connected = format!(
            "s => s.phase === 'joined' && s.peers.length === 1 \
             && s.peers[0].connectionState === 'connected' && s.peers[0].framesDecoded > 0 \
             && s.peers[0].candidateType === '{path}'"
        );
        let (one, two) = match (
            first.try_wait_for_state(&connected, timeout),
            second.try_wait_for_state(&connected, timeout),
        ) {
            (Ok(one), Ok(two)) => (one, two),
            (one, two) => panic!("{room}: no call; first page: {one:#?}\nsecond page: {two:#?}"),
        };
        assert_eq!(one["peers"][0]["id"], two["peerId"]);
        assert_eq!(two["peers"][0]["id"], one["peerId"]);
        first.close();
        second.close();
    }
}

/// `switchboard doctor` says whether Redis answers and which instances are alive.
#[test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt install redis-server)"
)]
fn doctor_sees_the_cluster() {
    let mut redis = Redis::start();
    let a = instance(&redis, "a", "");
    let _b = instance(&redis, "b", "");
    let doctor = |server: &TestServer| {
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["doctor", "--config"])
            .arg(server.config_path())
            .output()
            .expect("run switchboard doctor");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let report = doctor(&a);
    assert!(
        report.contains("[ ok ] cluster: Redis answers; instances alive: a, b (this one: a)"),
        "{report}"
    );
    redis.child.kill().unwrap();
    redis.child.wait().unwrap();
    let report = doctor(&a);
    assert!(
        report.contains("[FAIL] cluster: Redis (cluster.redis_url) does not answer"),
        "{report}"
    );
}

/// A redis client of the test's own, to look at or change what the instances share.
async fn redis_conn(redis: &Redis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test's redis")
}

/// A sender's last messages arrive before its `peer_left`, and a peer that leaves may join
/// again at once.
#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt install redis-server)"
)]
async fn last_messages_precede_the_leave_and_a_rejoin_works_at_once() {
    let redis = Redis::start();
    let fast = "[signaling]\nmessages_per_second = 100000\nmessage_burst = 100000\n";
    let a = instance(&redis, "a", fast);
    let b = instance(&redis, "b", fast);
    let mut alice = a.client().await;
    let alice_id = peer_id(&alice.join("bye", None).await);
    let mut bob = b.client().await;
    let bob_id = peer_id(&bob.join("bye", None).await);
    assert!(matches!(alice.recv().await, ServerMsg::PeerJoined { .. }));

    for i in 0..1_000 {
        alice
            .send(json!({"type": "signal", "to": bob_id, "payload": i}))
            .await;
    }
    alice.send(json!({"type": "leave"})).await;
    alice.send(json!({"type": "join", "room": "bye"})).await;
    for i in 0..1_000 {
        let (from, payload) = signal_text(&bob.recv().await);
        assert_eq!((from, payload), (alice_id.to_string(), i.to_string()));
    }
    match bob.recv().await {
        ServerMsg::PeerLeft { peer_id } => assert_eq!(peer_id, alice_id),
        other => panic!("expected peer_left, got {other:?}"),
    }
    match alice.recv().await {
        ServerMsg::Welcome { peers, .. } => assert_eq!(peers.len(), 1, "{peers:?}"),
        other => panic!("expected a welcome, got {other:?}"),
    }
    match bob.recv().await {
        ServerMsg::PeerJoined { peer } => assert_eq!(peer.id, alice_id),
        other => panic!("expected peer_joined, got {other:?}"),
    }
}

/// Redis emptied under running instances (FLUSHALL: the connections stay, the change counter
/// starts again): each instance notices, starts over, and the rooms are whole again.
#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt install redis-server)"
)]
async fn redis_emptied_under_running_instances_is_noticed_and_rebuilt() {
    let redis = Redis::start();
    let a = instance(&redis, "a", "");
    let b = instance(&redis, "b", "");
    let mut alice = a.client().await;
    let alice_id = peer_id(&alice.join("flushed", None).await);
    let mut bob = b.client().await;
    let bob_id = peer_id(&bob.join("flushed", None).await);

    let mut conn = redis_conn(&redis).await;
    let () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    for server in [&a, &b] {
        server.wait_log(
            "cluster: this instance was taken for dead (or Redis lost its keys); starting over",
        );
        server.wait_log("cluster: connected to Redis, rooms in step");
    }
    let mut carol = a.client().await;
    match carol.join("flushed", None).await {
        ServerMsg::Welcome { peers, .. } => {
            let ids: Vec<_> = peers.iter().map(|p| p.id.clone()).collect();
            assert!(ids.contains(&alice_id) && ids.contains(&bob_id), "{ids:?}");
        }
        _ => unreachable!(),
    }
}

/// A record of a peer Redis holds for this instance with no socket behind it (a leave that
/// never reached Redis) is removed by the periodic reconciliation, and its room freed.
#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt install redis-server)"
)]
async fn a_member_with_no_socket_behind_it_is_removed() {
    let redis = Redis::start();
    let a = instance(&redis, "a", "[signaling]\nroom_capacity = 2\n");
    let mut conn = redis_conn(&redis).await;
    let ghosts = [
        "0123456789abcdef0123456789abcdef",
        "fedcba9876543210fedcba9876543210",
    ];
    let mut pipe = redis::pipe();
    for ghost in ghosts {
        pipe.cmd("HSET")
            .arg("{switchboard}:m:a")
            .arg(format!("native {ghost}"))
            .arg("haunted")
            .ignore()
            .cmd("HSET")
            .arg("{switchboard}:r:native:haunted")
            .arg(ghost)
            .arg(r#"{"i":"a","n":null,"s":0,"t":""}"#)
            .ignore();
    }
    pipe.cmd("SADD")
        .arg("{switchboard}:rooms:native")
        .arg("haunted")
        .ignore();
    let () = pipe.query_async(&mut conn).await.unwrap();
    let mut alice = a.client().await;
    alice.send(json!({"type": "join", "room": "haunted"})).await;
    let (code, _) = alice.recv_error().await;
    assert_eq!(code, "room_full", "the ghosts hold both places");

    let repaired = a.wait_log("cluster: made Redis agree with this instance's peers");
    assert_eq!(repaired["peers"], 2, "{repaired}");
    alice.join("haunted", None).await;
}

/// A drained instance takes no new sockets or allocations and says it is not ready, lets
/// the call on it run on, and exits once it has ended; the other instance carries on.
#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt install redis-server)"
)]
async fn a_drained_instance_lets_its_calls_end_then_exits() {
    let redis = Redis::start();
    let mut a = instance(&redis, "a", "");
    let b = instance(&redis, "b", "");
    let mut alice = a.client().await;
    let welcome = alice.join("upgrade", None).await;
    let alice_id = peer_id(&welcome);
    let mut turn = RawTurn::new(a.listener("turn_udp"), &turn_entry(&welcome)).await;
    turn.allocate()
        .await
        .expect("an allocation before the drain");
    let mut bob = b.client().await;
    let bob_id = peer_id(&bob.join("upgrade", None).await);
    assert!(matches!(alice.recv().await, ServerMsg::PeerJoined { .. }));

    // The config with the admin listener's actual address (the server bound port 0).
    let mut config: toml::Table =
        toml::from_str(&std::fs::read_to_string(a.config_path()).unwrap()).unwrap();
    config["admin"]["listen"] = toml::Value::from(vec![a.listener("admin").to_string()]);
    let dir = harness::temp_dir();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["drain", "--config"])
        .arg(&path)
        .output()
        .expect("run switchboard drain");
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{answer}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(answer.contains(r#""draining":true"#), "{answer}");
    a.wait_log("draining: no new sockets, joins or allocations; waiting for the calls here to end");

    let (status, _, _) = a.https_get("/readyz").await;
    assert_eq!(status, 503);
    let (status, _, _) = b.https_get("/readyz").await;
    assert_eq!(status, 200);
    let mut late = RawTurn::new(a.listener("turn_udp"), &turn_entry(&welcome)).await;
    assert_eq!(late.allocate().await, Err(508));
    // The call goes on.
    bob.send(json!({"type": "signal", "to": alice_id, "payload": "still"}))
        .await;
    let (from, _) = signal_text(&alice.recv().await);
    assert_eq!(from, bob_id.to_string());

    drop(late);
    turn.release().await;
    alice.send(json!({"type": "leave"})).await;
    drop(alice);
    a.wait_log("drained: no calls left here, shutting down");
    assert!(a.wait_exit().success());
    match bob.recv().await {
        ServerMsg::PeerLeft { peer_id } => assert_eq!(peer_id, alice_id),
        other => panic!("expected peer_left, got {other:?}"),
    }
}

/// SIGUSR1 drains a lone instance too; a call that does not end is cut at
/// `server.drain_timeout_s`.
#[tokio::test]
async fn a_drain_ends_at_its_deadline() {
    let mut server = TestServer::start("[server]\ndrain_timeout_s = 1\n");
    let mut alice = server.client().await;
    alice.join("long-call", None).await;
    let mut late = server.client().await;
    let mut plain = {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("wss://{}/legacy", server.https);
        server
            .client_with(url.into_client_request().unwrap())
            .await
            .expect("plain-WebSocket connect")
    };
    server.signal("USR1");
    server.wait_log(
        "draining: no new sockets, joins or allocations; waiting for the calls here to end",
    );
    // A socket opened before the drain is refused at its join; a new one at its upgrade.
    late.send(json!({"type": "join", "room": "long-call"}))
        .await;
    let refused = late.recv_error().await;
    assert_eq!(refused.0, "shutting_down", "{refused:?}");
    // A plain-WebSocket socket opened before it is refused at its login.
    plain.send(json!({"type": "login", "name": "late"})).await;
    let refused: serde_json::Value = serde_json::from_str(&next_text(&mut plain).await).unwrap();
    assert_eq!(refused["code"], "shutting_down", "{refused}");
    server.wait_log("drain deadline (server.drain_timeout_s) reached, shutting down");
    assert!(server.wait_exit().success());
}

/// The plain-WebSocket dialect across instances: a name is unique in the whole cluster, and
/// an offer, its answer and candidates go between users on different instances (the answer
/// is allowed where it is sent because the offer reached that instance).
#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt install redis-server)"
)]
async fn plain_websocket_users_call_across_instances() {
    use serde_json::Value;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let redis = Redis::start();
    let a = instance(&redis, "a", "");
    let b = instance(&redis, "b", "");
    async fn login(server: &TestServer, name: &str) -> (harness::Client, Value) {
        let url = format!("wss://{}/legacy", server.https);
        let mut c = server
            .client_with(url.into_client_request().unwrap())
            .await
            .expect("plain-WebSocket connect");
        c.send(json!({"type": "login", "name": name})).await;
        let reply: Value = serde_json::from_str(&next_text(&mut c).await).unwrap();
        (c, reply)
    }
    async fn next(c: &mut harness::Client) -> Value {
        serde_json::from_str(&next_text(c).await).unwrap()
    }
    let (mut alice, ok) = login(&a, "alice").await;
    assert_eq!(ok["success"], true, "{ok}");
    let (mut bob, ok) = login(&b, "bob").await;
    assert_eq!(ok["success"], true, "{ok}");
    let (_twin, refused) = login(&b, "alice").await;
    assert_eq!(
        refused["success"], false,
        "the name is taken on the other instance: {refused}"
    );
    // Carol logs in on a after bob did on b: a knows bob's name once her login is done.
    let (_carol, ok) = login(&a, "carol").await;
    assert_eq!(ok["success"], true, "{ok}");

    alice
        .send(json!({"type": "offer", "name": "bob", "offer": {"sdp": "o"}}))
        .await;
    let offer = next(&mut bob).await;
    assert_eq!(
        (offer["type"].as_str(), offer["name"].as_str()),
        (Some("offer"), Some("alice")),
        "{offer}"
    );
    bob.send(json!({"type": "answer", "name": "alice", "answer": {"sdp": "a"}}))
        .await;
    let answer = next(&mut alice).await;
    assert_eq!(answer["type"], "answer", "{answer}");
    bob.send(json!({"type": "candidate", "name": "alice", "candidate": {"c": 1}}))
        .await;
    let candidate = next(&mut alice).await;
    assert_eq!(candidate["type"], "candidate", "{candidate}");
}

/// Two peers of a room on two instances; a third joins through `b` and both see it.
async fn a_room_across(
    a: &TestServer,
    b: &TestServer,
    room: &str,
) -> (harness::Client, harness::Client) {
    let mut alice = a.client().await;
    let alice_id = peer_id(&alice.join(room, None).await);
    let mut bob = b.client().await;
    let welcome = bob.join(room, None).await;
    match &welcome {
        ServerMsg::Welcome { peers, .. } => assert_eq!(peers.len(), 1, "{peers:?}"),
        _ => unreachable!(),
    }
    assert!(matches!(alice.recv().await, ServerMsg::PeerJoined { .. }));
    bob.send(json!({"type": "signal", "to": alice_id, "payload": {"sdp": "offer"}}))
        .await;
    let (from, _) = signal_text(&alice.recv().await);
    assert_eq!(from, peer_id(&welcome).to_string());
    (alice, bob)
}

/// `redis+sentinel://`: the instances use the master a Sentinel names and follow a failover
/// (master killed, replica promoted): they reconnect to the new master, re-register their
/// peers, and rooms keep spanning them.
#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt install redis-server)"
)]
async fn a_sentinel_failover_is_followed() {
    let mut redis = TcpRedis::new();
    let (master, _) = redis.server(&[]);
    let (_replica, replica_out) = redis.server(&["--replicaof", "127.0.0.1", &master.to_string()]);
    wait_line(&replica_out, "sync: finished with success");
    let (sentinel, sentinel_out) = redis.sentinel(master);
    wait_line(&sentinel_out, "+slave");
    let url = format!("redis+sentinel://127.0.0.1:{sentinel}/m");
    let a = instance_at(&url, "a", "");
    let b = instance_at(&url, "b", "");
    let (mut alice, mut bob) = a_room_across(&a, &b, "failover").await;

    redis.kill(0);
    wait_line(&sentinel_out, "+switch-master");
    for server in [&a, &b] {
        server.wait_log("cluster: lost the connection to Redis; reconnecting");
        server.wait_log("cluster: connected to Redis, rooms in step");
    }
    // The room is whole on the new master: a newcomer through b sees both.
    let mut carol = b.client().await;
    let welcome = carol.join("failover", None).await;
    match &welcome {
        ServerMsg::Welcome { peers, .. } => assert_eq!(peers.len(), 2, "{peers:?}"),
        other => panic!("expected welcome, got {other:?}"),
    }
    let carol_id = peer_id(&welcome);
    for peer in [&mut alice, &mut bob] {
        loop {
            match peer.recv().await {
                ServerMsg::PeerJoined { peer } if peer.id == carol_id => break,
                // A failover may show the others leave and come back once.
                ServerMsg::PeerLeft { .. } | ServerMsg::PeerJoined { .. } => {}
                other => panic!("expected peer_joined, got {other:?}"),
            }
        }
    }
    let (_, _) = a_room_across(&a, &b, "after").await;
}

/// `redis+cluster://`: with seed nodes that do not own the cluster's hash slot, the
/// instances find the node that does, and rooms span them.
#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt install redis-server)"
)]
async fn a_redis_cluster_is_used_through_the_node_that_owns_the_slot() {
    let mut redis = TcpRedis::new();
    // The bus port is given: by default it is the port + 10000, over 65535 for a port
    // from the upper part of the ephemeral range.
    let ports: Vec<u16> = (0..3)
        .map(|_| {
            let bus = free_port().to_string();
            let args = ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"];
            redis
                .server(&[&args[..], &["--cluster-port", &bus]].concat())
                .0
        })
        .collect();
    let mut create = Command::new("redis-cli");
    create.arg("--cluster").arg("create");
    for port in &ports {
        create.arg(format!("127.0.0.1:{port}"));
    }
    let out = create
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli --cluster create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Every node agrees the cluster is complete before the instances start.
    for port in &ports {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await
                .unwrap();
            if info.contains("cluster_state:ok") {
                break;
            }
            assert!(Instant::now() < deadline, "cluster never ok: {info}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The keys' hash tag {switchboard} is slot 616: the first node's (0-5460).
    let url = format!(
        "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
        ports[1], ports[2]
    );
    let a = instance_at(&url, "a", "");
    let b = instance_at(&url, "b", "");
    let (_alice, _bob) = a_room_across(&a, &b, "slotted").await;
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", ports[0])).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let instances: Vec<String> = redis::cmd("SMEMBERS")
        .arg("{switchboard}:instances")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(instances.len(), 2, "{instances:?}");
}
