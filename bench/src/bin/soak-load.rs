//! Soak load (bench/soak.sh): a realistic mix held against one server for a long time,
//! the server's RSS, open fds, allocations, rooms and peers sampled all along, and a
//! verdict at the end.
//!
//! The mix:
//! - churn: `rooms` × `peers-per-room` slots; each runs one peer after another over native
//!   WSS signaling: join, offer to the peers already there (answer, candidates), live for a
//!   random lifetime, leave (a `leave` then a close, a close, a dropped connection, or a
//!   `leave` and a new join on the same socket). In a `turn-share` of the slots every peer
//!   allocates, over the slot's transport (UDP, TCP or TLS), with the credential of its
//!   `welcome`, and then in turn releases the allocation before leaving, refreshes it while
//!   it stays, or just leaves: the server must then free the relay within the grace period
//!   (checked: the stream is closed and the relay port answers with ICMP port unreachable).
//! - media: `media-pairs` rooms of two peers over one transport each (UDP, TCP, TLS in
//!   turn), relay to relay over bound channels, `media-rate` ChannelData per second each
//!   way, refreshed; every lost packet is counted.
//! - expiry: `expiry-slots` peers that allocate and never refresh, stay until the
//!   allocation's lifetime (600 s) has passed and check that it is gone (runs of 620 s
//!   or more only).
//! - a config reload (a config swapped in, then SIGHUP) every `reload-secs`: the two configs
//!   differ in credential TTL and secret order, and every `welcome` after a reload must
//!   show the new TTL.
//!
//! Writes `samples.jsonl` (one line per sample), `summary.json` (the checks) and
//! `soak.svg` (the plot) into `--out`, prints the verdict on stderr and exits 1 when a
//! check fails.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_bench::aturn::{self, Transport, TurnConn, TurnError};
use switchboard_bench::procstat;
use switchboard_bench::wss::{self, Ws};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
#[command(about = "Soak load: signaling churn, TURN allocations and relayed media, with a verdict")]
struct Args {
    /// The HTTPS listener (WSS signaling at /ws).
    #[arg(long, default_value = "127.0.0.1:28443")]
    https: SocketAddr,
    /// The admin listener (/metrics, on loopback: no token).
    #[arg(long, default_value = "127.0.0.1:29478")]
    admin: SocketAddr,
    /// PEM certificate to trust (the server's self-signed one).
    #[arg(long)]
    ca: PathBuf,
    /// The server's PID: RSS from /proc/PID/status, fds from /proc/PID/fd; SIGHUP for reloads.
    #[arg(long)]
    server_pid: u32,
    /// How long the mix runs, in seconds.
    #[arg(long, default_value_t = 3600.0)]
    secs: f64,
    /// Churn rooms.
    #[arg(long, default_value_t = 200)]
    rooms: usize,
    /// Peers per churn room (slots, each replaced when it leaves).
    #[arg(long, default_value_t = 2)]
    peers_per_room: usize,
    /// A churn peer's lifetime in seconds: MIN,MAX (uniform).
    #[arg(long, value_delimiter = ',', default_value = "20,180")]
    life: Vec<f64>,
    /// The share of churn slots whose peers allocate a relay.
    #[arg(long, default_value_t = 0.5)]
    turn_share: f64,
    /// Rooms of two peers relaying media to each other (one transport each, in turn).
    #[arg(long, default_value_t = 15)]
    media_pairs: usize,
    /// ChannelData packets per second per allocation.
    #[arg(long, default_value_t = 50)]
    media_rate: u64,
    /// ChannelData payload bytes.
    #[arg(long, default_value_t = 160)]
    media_size: usize,
    /// A media pair's lifetime in seconds: MIN,MAX (uniform).
    #[arg(long, value_delimiter = ',', default_value = "120,600")]
    media_life: Vec<f64>,
    /// Peers whose allocation is left to expire (each needs 640 s of the run left to start).
    #[arg(long, default_value_t = 4)]
    expiry_slots: usize,
    /// Seconds between refreshes of allocations that are refreshed.
    #[arg(long, default_value_t = 30.0)]
    refresh_secs: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 60.0)]
    sample_secs: f64,
    /// The share of the run that is warm-up (at least one sample), left out of the checks.
    #[arg(long, default_value_t = 0.2)]
    warmup: f64,
    /// Seconds between reloads (0: none).
    #[arg(long, default_value_t = 240.0)]
    reload_secs: f64,
    /// The config file the server runs with; reloads replace it with the next of `--reload-configs`.
    #[arg(long)]
    config: PathBuf,
    /// Configs to alternate between on reloads (the first is the one the server started with).
    #[arg(long, value_delimiter = ',')]
    reload_configs: Vec<PathBuf>,
    /// The server's log: its reload lines are counted, and any ERROR line fails the run.
    #[arg(long)]
    server_log: Option<PathBuf>,
    /// The server's `turn.grace_period_s`.
    #[arg(long, default_value_t = 5)]
    grace_secs: u64,
    /// Seconds after the clients stopped (grace period included) for the server to get back to idle.
    #[arg(long, default_value_t = 30.0)]
    settle_secs: f64,
    /// Local addresses the clients connect from, round robin.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8,127.0.0.9"
    )]
    sources: Vec<IpAddr>,
    /// RSS and fds may stray this share from their post-warm-up median...
    #[arg(long, default_value_t = 0.05)]
    tolerance: f64,
    /// ...or this many KiB of RSS, whichever is more...
    #[arg(long, default_value_t = 2048)]
    rss_floor_kb: u64,
    /// ...or this many fds, whichever is more.
    #[arg(long, default_value_t = 8)]
    fd_floor: u64,
    /// The fds that no connection or relay socket explains may stray this many from their
    /// idle count.
    #[arg(long, default_value_t = 8)]
    other_fds_slack: u64,
    /// Relayed packets that may be lost, as a share of those sent.
    #[arg(long, default_value_t = 0.001)]
    loss_tolerance: f64,
    /// Self-test of the verdict: when the run ends, the peers and allocations of that moment
    /// stay open through the final check instead of leaving. The run must then fail.
    #[arg(long)]
    leak: bool,
    /// Where samples.jsonl and summary.json go.
    #[arg(long)]
    out: PathBuf,
}

/// A small PRNG (SplitMix64); the mix needs variety, not cryptography.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo).max(0.0) * self.unit()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A failure a client saw: its kind (the error counters' key) and what happened.
#[derive(Debug)]
struct Fail {
    kind: &'static str,
    detail: String,
}

type Res<T> = std::result::Result<T, Fail>;

fn fail(kind: &'static str, detail: impl std::fmt::Display) -> Fail {
    Fail {
        kind,
        detail: detail.to_string(),
    }
}

trait OrFail<T> {
    fn or_fail(self, kind: &'static str, what: &str) -> Res<T>;
}

impl<T, E: std::fmt::Display> OrFail<T> for std::result::Result<T, E> {
    fn or_fail(self, kind: &'static str, what: &str) -> Res<T> {
        self.map_err(|e| fail(kind, format!("{what}: {e}")))
    }
}

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// What the clients did, counted.
        #[derive(Default)]
        struct Counters { $($name: AtomicU64,)* }
        impl Counters {
            fn json(&self) -> serde_json::Map<String, Value> {
                let mut m = serde_json::Map::new();
                $(m.insert(stringify!($name).into(), json!(self.$name.load(Ordering::Relaxed)));)*
                m
            }
        }
    };
}

counters!(
    joins,
    leaves,
    signals_sent,
    signals_received,
    unknown_peer_races,
    ice_pushes,
    allocations,
    allocations_udp,
    allocations_tcp,
    allocations_tls,
    refreshes,
    releases,
    permissions,
    channel_binds,
    revokes_verified,
    revokes_port_reused,
    expiries_verified,
    media_sessions,
    media_sent,
    media_received,
    media_received_udp,
    media_received_tcp,
    media_received_tls,
    media_lost,
    reloads,
);

#[derive(Default)]
struct Stats {
    c: Counters,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    first_errors: Mutex<Vec<String>>,
    /// The largest relay delay since the last sample, in microseconds.
    max_delay_us: AtomicU64,
}

impl Stats {
    fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn error(&self, f: &Fail, epoch: Instant) {
        *self
            .errors
            .lock()
            .expect("errors lock")
            .entry(f.kind)
            .or_default() += 1;
        let mut first = self.first_errors.lock().expect("errors lock");
        if first.len() < 20 {
            let line = format!(
                "{:.1} s: {}: {}",
                epoch.elapsed().as_secs_f64(),
                f.kind,
                f.detail
            );
            eprintln!("soak: client error at {line}");
            first.push(line);
        }
    }

    fn error_total(&self) -> u64 {
        self.errors.lock().expect("errors lock").values().sum()
    }

    fn json(&self) -> Value {
        let mut m = self.c.json();
        m.insert(
            "errors".into(),
            json!(*self.errors.lock().expect("errors lock")),
        );
        m.insert("error_total".into(), json!(self.error_total()));
        Value::Object(m)
    }
}

struct Ctx {
    args: Args,
    epoch: Instant,
    url: String,
    ws_tls: Connector,
    turn_tls: Arc<rustls::ClientConfig>,
    stats: Stats,
    stop: watch::Receiver<bool>,
    /// The credential TTL the running config gives, and when it last changed.
    ttl: Mutex<(u64, Instant)>,
    /// Every relayed address handed out, and when (a freed port may be handed out again).
    relays: Mutex<HashMap<SocketAddr, Instant>>,
    /// The checks that a departed peer's relay was freed, running on their own.
    checks: Mutex<JoinSet<()>>,
    /// `--leak`: what stays open through the final check.
    held: Mutex<Vec<Box<dyn std::any::Any + Send>>>,
    seeds: AtomicU64,
}

impl Ctx {
    fn rng(&self) -> Rng {
        let n = self.seeds.fetch_add(1, Ordering::Relaxed);
        Rng::new(
            n.wrapping_mul(0xA24B_AED4_963E_E407)
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos() as u64,
        )
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    fn source(&self, i: usize) -> IpAddr {
        self.args.sources[i % self.args.sources.len()]
    }

    fn error(&self, f: &Fail) {
        self.stats.error(f, self.epoch);
    }

    /// A TTL that is not the running config's, seen more than 3 s after a reload, means
    /// the reload did not apply.
    fn check_ttl(&self, ttl: Option<u64>) -> Res<()> {
        let (expected, since) = *self.ttl.lock().expect("ttl lock");
        match ttl {
            Some(t) if t != expected && since.elapsed() > Duration::from_secs(3) => Err(fail(
                "reload_not_applied",
                format!(
                    "ice_ttl_s {t}, but the config in place since {:.0} s ago says {expected}",
                    since.elapsed().as_secs_f64()
                ),
            )),
            _ => Ok(()),
        }
    }

    fn handed_out(&self, relayed: SocketAddr) {
        self.relays
            .lock()
            .expect("relays lock")
            .insert(relayed, Instant::now());
    }

    fn handed_out_since(&self, relayed: SocketAddr, since: Instant) -> bool {
        self.relays
            .lock()
            .expect("relays lock")
            .get(&relayed)
            .is_some_and(|t| *t > since)
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The TURN credential and servers of a `welcome` or `ice_servers` message.
#[derive(Clone, Debug)]
struct Creds {
    username: String,
    credential: String,
    servers: HashMap<Transport, SocketAddr>,
}

impl Creds {
    fn parse(ice_servers: &Value) -> Option<Creds> {
        let entry = ice_servers
            .as_array()?
            .iter()
            .find(|s| s["username"].is_string())?;
        let mut servers = HashMap::new();
        for url in entry["urls"].as_array()? {
            let url = url.as_str()?;
            let (scheme, rest) = url.split_once(':')?;
            let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
            let Ok(addr) = addr.parse::<SocketAddr>() else {
                continue;
            };
            let transport = match (scheme, query) {
                ("turn", "transport=udp") => Transport::Udp,
                ("turn", "transport=tcp") => Transport::Tcp,
                ("turns", "transport=tcp") => Transport::Tls,
                _ => continue,
            };
            servers.entry(transport).or_insert(addr);
        }
        Some(Creds {
            username: entry["username"].as_str()?.to_owned(),
            credential: entry["credential"].as_str()?.to_owned(),
            servers,
        })
    }
}

/// How a peer leaves.
#[derive(Clone, Copy, Debug)]
enum Leave {
    /// `leave`, then a close handshake.
    Message,
    /// A close handshake.
    Close,
    /// The TCP connection dropped, no close frame.
    Drop,
    /// `leave`, and the socket joins again for the next peer.
    Rejoin,
}

const LEAVES: [Leave; 4] = [Leave::Message, Leave::Close, Leave::Drop, Leave::Rejoin];

/// One peer's signaling: its socket and what it knows of the room.
struct Sig {
    ws: Ws,
    id: String,
    others: Vec<String>,
    creds: Creds,
    /// Peers an offer went to, and when their answer is due.
    expect_answer: HashMap<String, Instant>,
    departed: HashSet<String>,
    /// Relayed addresses the other peers sent as candidates.
    relays: HashMap<String, SocketAddr>,
}

const SDP_BYTES: usize = 1500;

impl Sig {
    async fn join(ctx: &Ctx, source: IpAddr, room: &str, reuse: Option<Ws>) -> Res<Sig> {
        let mut ws = match reuse {
            Some(ws) => ws,
            None => tokio::time::timeout(
                Duration::from_secs(10),
                wss::connect(&ctx.url, ctx.args.https, source, Some(ctx.ws_tls.clone())),
            )
            .await
            .map_err(|_| fail("connect_failed", "no connection in 10 s"))?
            .or_fail("connect_failed", "connect")?,
        };
        ws.send(Message::text(
            json!({"type": "join", "room": room}).to_string(),
        ))
        .await
        .or_fail("unexpected_close", "sending join")?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let msg = tokio::time::timeout_at(deadline, ws.next())
                .await
                .map_err(|_| fail("join_failed", format!("no welcome in 10 s ({room})")))?;
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(frame))) => {
                    return Err(fail(
                        "unexpected_close",
                        format!("closed at join: {frame:?}"),
                    ));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(fail("unexpected_close", format!("at join: {e}"))),
                None => return Err(fail("unexpected_close", "closed at join")),
            };
            let v: Value = serde_json::from_str(text.as_str()).or_fail("join_failed", "JSON")?;
            match v["type"].as_str() {
                Some("welcome") => {
                    ctx.check_ttl(v["ice_ttl_s"].as_u64())?;
                    let creds = Creds::parse(&v["ice_servers"])
                        .ok_or_else(|| fail("join_failed", format!("no TURN entry: {text}")))?;
                    let others = v["peers"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|p| p["id"].as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    ctx.stats.add(&ctx.stats.c.joins, 1);
                    return Ok(Sig {
                        ws,
                        id: v["peer_id"].as_str().unwrap_or_default().to_owned(),
                        others,
                        creds,
                        expect_answer: HashMap::new(),
                        departed: HashSet::new(),
                        relays: HashMap::new(),
                    });
                }
                // A late answer to the previous peer's signal on a reused socket.
                Some("error") if v["code"] == "unknown_peer" => {}
                Some("error") => return Err(fail("join_failed", text.as_str())),
                _ => {}
            }
        }
    }

    async fn send(&mut self, text: String) -> Res<()> {
        self.ws
            .send(Message::text(text))
            .await
            .or_fail("unexpected_close", "sending")
    }

    async fn signal(&mut self, ctx: &Ctx, to: &str, payload: Value) -> Res<()> {
        ctx.stats.add(&ctx.stats.c.signals_sent, 1);
        self.send(json!({"type": "signal", "to": to, "payload": payload}).to_string())
            .await
    }

    async fn candidates(&mut self, ctx: &Ctx, to: &str) -> Res<()> {
        for n in 0..2 {
            let c = json!({"candidate": {"candidate": format!("candidate:{n} 1 udp 2122260223 192.0.2.{n} 5000{n} typ host generation 0"), "sdpMid": "0", "sdpMLineIndex": 0}});
            self.signal(ctx, to, c).await?;
        }
        Ok(())
    }

    /// An offer and two candidates; the answer is due within 10 s.
    async fn offer_to(&mut self, ctx: &Ctx, to: &str) -> Res<()> {
        let sdp = "o".repeat(SDP_BYTES);
        self.signal(
            ctx,
            to,
            json!({"description": {"type": "offer", "sdp": sdp}}),
        )
        .await?;
        self.candidates(ctx, to).await?;
        self.expect_answer
            .insert(to.to_owned(), Instant::now() + Duration::from_secs(10));
        Ok(())
    }

    async fn relay_candidate(&mut self, ctx: &Ctx, to: &str, relayed: SocketAddr) -> Res<()> {
        let c = format!(
            "candidate:9 1 udp 16777215 {} {} typ relay raddr 0.0.0.0 rport 0 generation 0",
            relayed.ip(),
            relayed.port()
        );
        self.signal(
            ctx,
            to,
            json!({"candidate": {"candidate": c, "sdpMid": "0", "sdpMLineIndex": 0}}),
        )
        .await
    }

    /// Handles what the socket read: answers offers, notes answers, relay candidates,
    /// departures and renewed credentials.
    async fn handle(
        &mut self,
        ctx: &Ctx,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Res<()> {
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(frame))) => {
                return Err(fail(
                    "unexpected_close",
                    format!("the server closed the socket: {frame:?}"),
                ));
            }
            Some(Ok(_)) => return Ok(()),
            Some(Err(e)) => return Err(fail("unexpected_close", format!("socket: {e}"))),
            None => return Err(fail("unexpected_close", "the socket ended")),
        };
        let v: Value = serde_json::from_str(text.as_str()).or_fail("signal_error", "JSON")?;
        match v["type"].as_str().unwrap_or("") {
            "signal" => {
                ctx.stats.add(&ctx.stats.c.signals_received, 1);
                let from = v["from"].as_str().unwrap_or_default().to_owned();
                let p = &v["payload"];
                match p["description"]["type"].as_str() {
                    Some("offer") => {
                        let sdp = "a".repeat(SDP_BYTES);
                        self.signal(
                            ctx,
                            &from,
                            json!({"description": {"type": "answer", "sdp": sdp}}),
                        )
                        .await?;
                        self.candidates(ctx, &from).await?;
                    }
                    Some("answer") => {
                        self.expect_answer.remove(&from);
                    }
                    _ => {
                        let c = p["candidate"]["candidate"].as_str().unwrap_or_default();
                        if c.contains(" typ relay ") {
                            let f: Vec<&str> = c.split(' ').collect();
                            if let (Some(ip), Some(port)) = (f.get(4), f.get(5))
                                && let Ok(addr) = format!("{ip}:{port}").parse()
                            {
                                self.relays.insert(from, addr);
                            }
                        }
                    }
                }
            }
            "peer_left" => {
                let id = v["peer_id"].as_str().unwrap_or_default().to_owned();
                self.expect_answer.remove(&id);
                self.departed.insert(id);
            }
            "ice_servers" => {
                ctx.stats.add(&ctx.stats.c.ice_pushes, 1);
                ctx.check_ttl(v["ice_ttl_s"].as_u64())?;
                self.creds = Creds::parse(&v["ice_servers"]).ok_or_else(|| {
                    fail("signal_error", format!("ice_servers without TURN: {text}"))
                })?;
            }
            "error" => {
                // A signal to a peer that left while it was on its way: the server told
                // `peer_left` first, and refuses the signal.
                if v["code"] == "unknown_peer" && !self.departed.is_empty() {
                    ctx.stats.add(&ctx.stats.c.unknown_peer_races, 1);
                } else {
                    return Err(fail("signal_error", text.as_str()));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn check_answers(&self) -> Res<()> {
        let now = Instant::now();
        match self.expect_answer.iter().find(|(_, due)| **due < now) {
            Some((peer, _)) => Err(fail(
                "signal_timeout",
                format!("no answer from {peer} in 10 s"),
            )),
            None => Ok(()),
        }
    }

    /// Leaves; returns the socket for `Leave::Rejoin`.
    async fn leave(mut self, ctx: &Ctx, how: Leave) -> Res<Option<Ws>> {
        ctx.stats.add(&ctx.stats.c.leaves, 1);
        match how {
            Leave::Message | Leave::Rejoin => {
                self.send(json!({"type": "leave"}).to_string()).await?;
                if let Leave::Rejoin = how {
                    return Ok(Some(self.ws));
                }
                close(self.ws).await;
            }
            Leave::Close => close(self.ws).await,
            Leave::Drop => drop(self.ws),
        }
        Ok(None)
    }
}

/// A close handshake, given two seconds.
async fn close(mut ws: Ws) {
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// What a churn peer does with its allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Released (Refresh with lifetime 0) before leaving.
    Release,
    /// Kept as it is; leaving revokes it.
    Revoke,
    /// Refreshed every `refresh-secs` while the peer stays, then revoked by leaving.
    Refresh,
}

const FATES: [Fate; 3] = [Fate::Release, Fate::Revoke, Fate::Refresh];

async fn turn_conn(
    ctx: &Ctx,
    creds: &Creds,
    transport: Transport,
    source: IpAddr,
) -> Res<TurnConn> {
    let server = *creds
        .servers
        .get(&transport)
        .ok_or_else(|| fail("alloc_failed", format!("no {} URL", transport.name())))?;
    TurnConn::connect(
        transport,
        server,
        source,
        Some(Arc::clone(&ctx.turn_tls)),
        &creds.username,
        &creds.credential,
        ctx.epoch,
    )
    .await
    .or_fail(
        "alloc_failed",
        &format!("connecting over {}", transport.name()),
    )
}

/// Connects and allocates; returns the relayed address and the granted lifetime.
async fn allocate(
    ctx: &Ctx,
    creds: &Creds,
    transport: Transport,
    source: IpAddr,
) -> Res<(TurnConn, SocketAddr, Duration)> {
    let conn = turn_conn(ctx, creds, transport, source).await?;
    let (relayed, lifetime) = conn.allocate(None).await.or_fail(
        "alloc_failed",
        &format!("Allocate over {}", transport.name()),
    )?;
    ctx.handed_out(relayed);
    let c = &ctx.stats.c;
    ctx.stats.add(&c.allocations, 1);
    let by_transport = match transport {
        Transport::Udp => &c.allocations_udp,
        Transport::Tcp => &c.allocations_tcp,
        Transport::Tls => &c.allocations_tls,
    };
    ctx.stats.add(by_transport, 1);
    Ok((conn, relayed, lifetime))
}

async fn refresh(ctx: &Ctx, conn: &TurnConn) -> Res<()> {
    conn.refresh(Duration::from_secs(600)).await.or_fail(
        "refresh_failed",
        &format!("Refresh over {}", conn.transport.name()),
    )?;
    ctx.stats.add(&ctx.stats.c.refreshes, 1);
    Ok(())
}

async fn release(ctx: &Ctx, conn: &TurnConn) -> Res<()> {
    conn.refresh(Duration::ZERO).await.or_fail(
        "release_failed",
        &format!("release over {}", conn.transport.name()),
    )?;
    ctx.stats.add(&ctx.stats.c.releases, 1);
    Ok(())
}

/// Checks on its own that the relay of a peer that left at `left` is freed within the
/// grace period (and 3 s): a stream is closed by the server, and the relay port closes.
fn check_freed(ctx: &Arc<Ctx>, conn: TurnConn, relayed: SocketAddr, left: Instant) {
    let c = Arc::clone(ctx);
    ctx.checks.lock().expect("checks lock").spawn(async move {
        let within = Duration::from_secs(c.args.grace_secs + 3);
        let deadline = left + within;
        let transport = conn.transport;
        // Over UDP the server cannot see the client go: only its state is left to check.
        // The socket stays bound until then, so that the kernel does not give its port to a
        // new client of ours, whose Allocate would meet this allocation (441).
        if transport != Transport::Udp {
            let wait = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(wait, conn.wait_closed()).await.is_err() {
                c.error(&fail(
                    "revoke_not_freed",
                    format!(
                        "{} allocation {relayed}: its connection is still open {} s after the peer left",
                        transport.name(),
                        within.as_secs()
                    ),
                ));
                return;
            }
        }
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        if aturn::udp_port_closes(relayed, IpAddr::from([127, 0, 0, 1]), wait).await {
            c.stats.add(&c.stats.c.revokes_verified, 1);
        } else if c.handed_out_since(relayed, left) {
            // The port was freed and given to a newer allocation of ours.
            c.stats.add(&c.stats.c.revokes_port_reused, 1);
        } else {
            c.error(&fail(
                "revoke_not_freed",
                format!(
                    "{} allocation {relayed}: its relay port still open {} s after the peer left",
                    transport.name(),
                    within.as_secs()
                ),
            ));
        }
        drop(conn);
    });
}

fn hold(ctx: &Ctx, what: Box<dyn std::any::Any + Send>) {
    ctx.held.lock().expect("held lock").push(what);
}

/// Which churn peers allocate, and how. `turn-share` of the slots, evenly spread, have
/// every one of their peers allocate, each slot over one transport (UDP, TCP and TLS in
/// turn across slots), its peers taking the fates in turn; the other slots never do. So
/// the number of allocations and of TURN connections, and the server's fds with them,
/// stays level while allocations come and go.
struct TurnPlan {
    /// The transport of this slot's allocations, if it allocates.
    transport: Option<Transport>,
    /// Allocations made in this slot (plus a per-slot offset): the next fate.
    made: usize,
}

impl TurnPlan {
    fn new(index: usize, share: f64) -> TurnPlan {
        let before = |i: usize| (i as f64 * share.clamp(0.0, 1.0)).floor() as usize;
        TurnPlan {
            transport: (before(index + 1) > before(index))
                .then(|| Transport::ALL[before(index) % 3]),
            made: index,
        }
    }

    /// What the next peer does: no allocation, or a transport and a fate.
    fn next(&mut self) -> Option<(Transport, Fate)> {
        let transport = self.transport?;
        self.made += 1;
        Some((transport, FATES[self.made % 3]))
    }
}

/// One slot of a churn room: peer after peer until the run stops.
async fn churn_slot(ctx: Arc<Ctx>, room: usize, slot: usize) {
    let mut rng = ctx.rng();
    let index = room * ctx.args.peers_per_room + slot;
    let source = ctx.source(index);
    let mut plan = TurnPlan::new(index, ctx.args.turn_share);
    let room = format!("soak-{room}");
    let (lo, hi) = (ctx.args.life[0], ctx.args.life[1]);
    // Spread the first joins, and the first leaves over a whole lifetime.
    tokio::time::sleep(Duration::from_secs_f64(rng.range(0.0, lo.min(5.0)))).await;
    let mut first = true;
    let mut reuse = None;
    while !ctx.stopping() {
        let life = if first {
            rng.range(lo.min(5.0), hi)
        } else {
            rng.range(lo, hi)
        };
        first = false;
        let turn = plan.next();
        match churn_peer(&ctx, &mut rng, source, &room, reuse.take(), life, turn).await {
            Ok(ws) => reuse = ws,
            Err(f) => {
                ctx.error(&f);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn churn_peer(
    ctx: &Arc<Ctx>,
    rng: &mut Rng,
    source: IpAddr,
    room: &str,
    reuse: Option<Ws>,
    life: f64,
    plan: Option<(Transport, Fate)>,
) -> Res<Option<Ws>> {
    let mut stop = ctx.stop.clone();
    let mut sig = Sig::join(ctx, source, room, reuse).await?;
    for peer in sig.others.clone() {
        sig.offer_to(ctx, &peer).await?;
    }
    let mut turn = None;
    if let Some((transport, fate)) = plan {
        let (conn, relayed, _) = allocate(ctx, &sig.creds, transport, source).await?;
        conn.permit(SocketAddr::from(([127, 0, 0, 254], 9)))
            .await
            .or_fail("permission_failed", "CreatePermission")?;
        ctx.stats.add(&ctx.stats.c.permissions, 1);
        turn = Some((conn, relayed, fate));
    }
    let end = tokio::time::Instant::now() + Duration::from_secs_f64(life);
    let period = Duration::from_secs_f64(ctx.args.refresh_secs.max(1.0));
    let mut refresh_at = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let refreshing = matches!(turn, Some((_, _, Fate::Refresh)));
    loop {
        tokio::select! {
            msg = sig.ws.next() => sig.handle(ctx, msg).await?,
            _ = refresh_at.tick(), if refreshing => {
                if let Some((conn, ..)) = &turn {
                    refresh(ctx, conn).await?;
                }
            }
            () = async {
                match &turn {
                    Some((conn, ..)) => conn.wait_closed().await,
                    None => std::future::pending().await,
                }
            } => return Err(fail("turn_closed", "the server closed a TURN connection while its peer stayed")),
            _ = check.tick() => sig.check_answers()?,
            () = tokio::time::sleep_until(end) => break,
            () = stopped(&mut stop) => break,
        }
    }
    if ctx.stopping() && ctx.args.leak {
        hold(ctx, Box::new(sig.ws));
        if let Some((conn, ..)) = turn {
            hold(ctx, Box::new(conn));
        }
        return Ok(None);
    }
    if let Some((conn, _, Fate::Release)) = &turn {
        release(ctx, conn).await?;
    }
    let mut how = LEAVES[rng.below(LEAVES.len())];
    // A peer back in its room within the grace period keeps its relays (the server's
    // reconnect rule), and a rejoin keeps the peer id: only a peer with no relay left to
    // revoke rejoins.
    let revoked = matches!(turn, Some((_, _, Fate::Revoke | Fate::Refresh)));
    if let Leave::Rejoin = how
        && (ctx.stopping() || revoked)
    {
        how = Leave::Message;
    }
    let ws = sig.leave(ctx, how).await?;
    let left = Instant::now();
    match turn {
        Some((conn, relayed, Fate::Revoke | Fate::Refresh)) => {
            check_freed(ctx, conn, relayed, left)
        }
        Some((conn, ..)) => drop(conn),
        None => {}
    }
    Ok(ws)
}

/// A room of two peers relaying media to each other over `transport`, pair after pair.
async fn media_slot(ctx: Arc<Ctx>, k: usize) {
    let mut rng = ctx.rng();
    let transport = Transport::ALL[k % 3];
    tokio::time::sleep(Duration::from_secs_f64(rng.range(0.0, 3.0))).await;
    let mut generation = 0usize;
    while !ctx.stopping() {
        if let Err(f) = media_pair(&ctx, &mut rng, k, transport, generation).await {
            ctx.error(&f);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        generation += 1;
    }
}

const CHANNEL: u16 = 0x4000;

async fn media_pair(
    ctx: &Arc<Ctx>,
    rng: &mut Rng,
    k: usize,
    transport: Transport,
    generation: usize,
) -> Res<()> {
    let mut stop = ctx.stop.clone();
    let room = format!("media-{k}");
    let (src_a, src_b) = (ctx.source(2 * k), ctx.source(2 * k + 1));
    let mut a = Sig::join(ctx, src_a, &room, None).await?;
    let mut b = Sig::join(ctx, src_b, &room, None).await?;
    let a_id = a.id.clone();
    let b_id = b.id.clone();
    // The newcomer offers, as the call page does.
    b.offer_to(ctx, &a_id).await?;
    let (ta, ra, _) = allocate(ctx, &a.creds, transport, src_a).await?;
    let (tb, rb, _) = allocate(ctx, &b.creds, transport, src_b).await?;
    a.relay_candidate(ctx, &b_id, ra).await?;
    b.relay_candidate(ctx, &a_id, rb).await?;
    // Each side learns the other's relayed address from signaling.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(a.relays.contains_key(&b_id)
        && b.relays.contains_key(&a_id)
        && b.expect_answer.is_empty())
    {
        tokio::select! {
            msg = a.ws.next() => a.handle(ctx, msg).await?,
            msg = b.ws.next() => b.handle(ctx, msg).await?,
            () = tokio::time::sleep_until(deadline) => {
                return Err(fail("signal_timeout", "the media pair's negotiation took over 10 s"));
            }
        }
    }
    let (peer_of_a, peer_of_b) = (a.relays[&b_id], b.relays[&a_id]);
    for (conn, peer) in [(&ta, peer_of_a), (&tb, peer_of_b)] {
        conn.bind_channel(CHANNEL, peer).await.or_fail(
            "channel_bind_failed",
            &format!("ChannelBind over {}", transport.name()),
        )?;
        ctx.stats.add(&ctx.stats.c.channel_binds, 1);
    }
    ctx.stats.add(&ctx.stats.c.media_sessions, 1);

    let (lo, hi) = (ctx.args.media_life[0], ctx.args.media_life[1]);
    let life = if generation == 0 {
        rng.range(lo.min(10.0), hi)
    } else {
        rng.range(lo, hi)
    };
    let end = tokio::time::Instant::now() + Duration::from_secs_f64(life);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(
        1.0 / ctx.args.media_rate.max(1) as f64,
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let period = Duration::from_secs_f64(ctx.args.refresh_secs.max(1.0));
    let mut refresh_at = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    // Channel bindings last 10 minutes and their permissions 5: bound again every 4.
    let rebind_period = Duration::from_secs(240);
    let mut rebind =
        tokio::time::interval_at(tokio::time::Instant::now() + rebind_period, rebind_period);
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let (mut sent_a, mut sent_b) = (0u64, 0u64);
    let mut outcome = Ok(());
    loop {
        let step: Res<bool> = tokio::select! {
            _ = tick.tick() => async {
                ta.send_channel(CHANNEL, &aturn::media_payload(sent_a, ctx.epoch, ctx.args.media_size))
                    .await.or_fail("relay_send_failed", "ChannelData")?;
                sent_a += 1;
                tb.send_channel(CHANNEL, &aturn::media_payload(sent_b, ctx.epoch, ctx.args.media_size))
                    .await.or_fail("relay_send_failed", "ChannelData")?;
                sent_b += 1;
                Ok(false)
            }.await,
            _ = refresh_at.tick() => async {
                refresh(ctx, &ta).await?;
                refresh(ctx, &tb).await?;
                Ok(false)
            }.await,
            _ = rebind.tick() => async {
                for (conn, peer) in [(&ta, peer_of_a), (&tb, peer_of_b)] {
                    conn.bind_channel(CHANNEL, peer).await
                        .or_fail("channel_bind_failed", "ChannelBind (again)")?;
                    ctx.stats.add(&ctx.stats.c.channel_binds, 1);
                }
                Ok(false)
            }.await,
            msg = a.ws.next() => a.handle(ctx, msg).await.map(|()| false),
            msg = b.ws.next() => b.handle(ctx, msg).await.map(|()| false),
            () = ta.wait_closed() => Err(fail("turn_closed", format!("{} media connection closed by the server", transport.name()))),
            () = tb.wait_closed() => Err(fail("turn_closed", format!("{} media connection closed by the server", transport.name()))),
            _ = check.tick() => {
                ctx.stats.max_delay_us.fetch_max(ta.inbound.take_max_delay_us().max(tb.inbound.take_max_delay_us()), Ordering::Relaxed);
                b.check_answers().map(|()| false)
            }
            () = tokio::time::sleep_until(end) => Ok(true),
            () = stopped(&mut stop) => Ok(true),
        };
        match step {
            Ok(false) => {}
            Ok(true) => break,
            Err(f) => {
                outcome = Err(f);
                break;
            }
        }
    }
    // What is still on its way arrives, then every packet not received is lost.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let got_b = received(&tb);
    let got_a = received(&ta);
    let lost = sent_a.saturating_sub(got_b) + sent_b.saturating_sub(got_a);
    ctx.stats.add(&ctx.stats.c.media_sent, sent_a + sent_b);
    ctx.stats.add(&ctx.stats.c.media_received, got_a + got_b);
    let by_transport = match transport {
        Transport::Udp => &ctx.stats.c.media_received_udp,
        Transport::Tcp => &ctx.stats.c.media_received_tcp,
        Transport::Tls => &ctx.stats.c.media_received_tls,
    };
    ctx.stats.add(by_transport, got_a + got_b);
    ctx.stats.add(&ctx.stats.c.media_lost, lost);
    if lost > 0 {
        eprintln!(
            "soak: media pair {k} ({}): {lost} of {} packets lost",
            transport.name(),
            sent_a + sent_b
        );
    }
    outcome?;
    if ctx.stopping() && ctx.args.leak {
        for held in [
            Box::new(a.ws) as Box<dyn std::any::Any + Send>,
            Box::new(b.ws),
            Box::new(ta),
            Box::new(tb),
        ] {
            hold(ctx, held);
        }
        return Ok(());
    }
    // One side releases, the other just leaves (its relay is revoked), alternately.
    let (releaser, kept, kept_relayed) = if generation.is_multiple_of(2) {
        (ta, tb, rb)
    } else {
        (tb, ta, ra)
    };
    release(ctx, &releaser).await?;
    drop(releaser);
    let how = |r: &mut Rng| match LEAVES[r.below(LEAVES.len())] {
        Leave::Rejoin => Leave::Message,
        other => other,
    };
    let (how_a, how_b) = (how(rng), how(rng));
    a.leave(ctx, how_a).await?;
    b.leave(ctx, how_b).await?;
    check_freed(ctx, kept, kept_relayed, Instant::now());
    Ok(())
}

fn received(conn: &TurnConn) -> u64 {
    conn.inbound.channel_data.load(Ordering::Relaxed)
}

/// The lifetime an Allocate without LIFETIME gets: the server's default, which is also
/// its shortest (RFC 8656 raises shorter requests to it).
const ALLOCATION_LIFETIME: Duration = Duration::from_secs(600);
/// How much of the run an expiry peer needs left to start: the lifetime, the 3 s the
/// server has to free it, and room for joining and the check.
const EXPIRY_NEEDS: Duration = Duration::from_secs(615);
/// When the expiry slots start, the first at this and each 2 s after the one before:
/// in the shortest run that has room for them (11 minutes) all of them run once.
const EXPIRY_START: Duration = Duration::from_secs(5);

/// Whether a run of `secs` has room for expiry slot `k`'s first peer.
fn expiry_fits(secs: f64, k: usize) -> bool {
    let start = EXPIRY_START + Duration::from_secs(2 * k as u64);
    Duration::from_secs_f64(secs) >= start + EXPIRY_NEEDS
}

/// A peer whose allocation is never refreshed: it stays past the allocation's lifetime and
/// checks that the allocation is gone, then leaves; again while the run has time for it.
async fn expiry_slot(ctx: Arc<Ctx>, k: usize) {
    let transport = [Transport::Udp, Transport::Tcp, Transport::Tls][k % 3];
    let run_end = ctx.epoch + Duration::from_secs_f64(ctx.args.secs);
    tokio::time::sleep(EXPIRY_START + Duration::from_secs(2 * k as u64)).await;
    while !ctx.stopping() && run_end.saturating_duration_since(Instant::now()) >= EXPIRY_NEEDS {
        if let Err(f) = expiry_peer(&ctx, k, transport).await {
            ctx.error(&f);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn expiry_peer(ctx: &Arc<Ctx>, k: usize, transport: Transport) -> Res<()> {
    let mut stop = ctx.stop.clone();
    let source = ctx.source(k);
    let mut sig = Sig::join(ctx, source, &format!("expiry-{k}"), None).await?;
    let (conn, relayed, lifetime) = allocate(ctx, &sig.creds, transport, source).await?;
    if lifetime != ALLOCATION_LIFETIME {
        return Err(fail(
            "alloc_failed",
            format!(
                "granted {} s, not the default {} s",
                lifetime.as_secs(),
                ALLOCATION_LIFETIME.as_secs()
            ),
        ));
    }
    let allocated = tokio::time::Instant::now();
    let expired = allocated + lifetime + Duration::from_secs(3);
    loop {
        tokio::select! {
            msg = sig.ws.next() => sig.handle(ctx, msg).await?,
            () = conn.wait_closed() => {
                if allocated.elapsed() + Duration::from_secs(2) < lifetime {
                    return Err(fail("turn_closed", format!("{} allocation closed {:.0} s into its {} s lifetime", transport.name(), allocated.elapsed().as_secs_f64(), lifetime.as_secs())));
                }
                // Closed with its allocation, as it should be: checked below.
                break;
            }
            () = tokio::time::sleep_until(expired) => break,
            () = stopped(&mut stop) => {
                // The run ends first: this one leaves like any other.
                let left = Instant::now();
                sig.leave(ctx, Leave::Close).await?;
                check_freed(ctx, conn, relayed, left);
                return Ok(());
            }
        }
    }
    // A stream is closed with its allocation. Over UDP a Refresh finds no allocation
    // (437); it is signed with the peer's latest credential, since the one that made the
    // allocation has expired by now (and an expired credential gets a 401 unless there is
    // an allocation to refresh).
    let gone = match transport {
        Transport::Udp => {
            conn.set_credential(&sig.creds.username, &sig.creds.credential);
            match conn.refresh(ALLOCATION_LIFETIME).await {
                Err(TurnError::Refused(437, _)) => true,
                Ok(()) => false,
                Err(e) => {
                    return Err(fail(
                        "expiry_not_freed",
                        format!("udp allocation {relayed}: the Refresh after expiry: {e}"),
                    ));
                }
            }
        }
        _ => conn.is_closed(),
    };
    let port_closed = aturn::udp_port_closes(
        relayed,
        IpAddr::from([127, 0, 0, 1]),
        Duration::from_secs(1),
    )
    .await
        || ctx.handed_out_since(relayed, Instant::now() - Duration::from_secs(30));
    if !gone || !port_closed {
        return Err(fail(
            "expiry_not_freed",
            format!(
                "{} allocation {relayed} still there 3 s after its {} s lifetime",
                transport.name(),
                lifetime.as_secs()
            ),
        ));
    }
    ctx.stats.add(&ctx.stats.c.expiries_verified, 1);
    drop(conn);
    sig.leave(ctx, Leave::Message).await?;
    Ok(())
}

/// The `credential_ttl_s` a config file sets.
fn config_ttl(path: &std::path::Path) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "credential_ttl_s").then(|| v.trim().parse().ok())?
        })
        .with_context(|| format!("{}: no credential_ttl_s", path.display()))
}

/// Every `reload-secs`: the next config replaces the live one, then SIGHUP.
async fn reloader(ctx: Arc<Ctx>) -> Result<()> {
    let n = ctx.args.reload_configs.len();
    if ctx.args.reload_secs <= 0.0 || n < 2 {
        return Ok(());
    }
    let mut stop = ctx.stop.clone();
    let period = Duration::from_secs_f64(ctx.args.reload_secs);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut next = 1;
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stop) => return Ok(()),
            _ = tick.tick() => {}
        }
        let source = &ctx.args.reload_configs[next % n];
        let ttl = config_ttl(source)?;
        let tmp = ctx.args.config.with_extension("toml.new");
        std::fs::copy(source, &tmp)?;
        std::fs::rename(&tmp, &ctx.args.config)?;
        *ctx.ttl.lock().expect("ttl lock") = (ttl, Instant::now());
        // SAFETY: kill has no memory preconditions; the PID is the server this script started.
        if unsafe { libc::kill(ctx.args.server_pid as libc::pid_t, libc::SIGHUP) } != 0 {
            anyhow::bail!(
                "SIGHUP to {}: {}",
                ctx.args.server_pid,
                std::io::Error::last_os_error()
            );
        }
        ctx.stats.add(&ctx.stats.c.reloads, 1);
        eprintln!(
            "soak: {:.0} s: reload {} ({}, credential_ttl_s = {ttl})",
            ctx.epoch.elapsed().as_secs_f64(),
            ctx.stats.c.reloads.load(Ordering::Relaxed),
            source.display()
        );
        next += 1;
    }
}

/// The admin listener's /metrics, as series ("name{labels}") and values.
async fn scrape(admin: SocketAddr) -> Result<BTreeMap<String, f64>> {
    let mut tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(admin),
    )
    .await
    .context("connecting to the admin listener")??;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut body))
        .await
        .context("reading /metrics")??;
    let (head, body) = body.split_once("\r\n\r\n").context("an HTTP answer")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "/metrics: {}",
        head.lines().next().unwrap_or("")
    );
    anyhow::ensure!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "/metrics: chunked"
    );
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect())
}

/// The sum of a metric's series.
fn total(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name))
        .map(|(_, v)| v)
        .sum()
}

/// A metric's non-zero series by the value of its one label.
fn by_label(m: &BTreeMap<String, f64>, name: &str) -> BTreeMap<String, f64> {
    m.iter()
        .filter(|(k, v)| k.split('{').next() == Some(name) && **v != 0.0)
        .map(|(k, v)| {
            let label = k
                .split_once('{')
                .map(|(_, l)| l.trim_end_matches('}').to_owned())
                .unwrap_or_default();
            (label, *v)
        })
        .collect()
}

fn fd_count(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// The metrics a sample reads (without the `switchboard_` prefix).
const METRICS: [&str; 22] = [
    "turn_allocations",
    "signaling_open_connections",
    "turn_stream_connections",
    "signaling_rooms",
    "signaling_peers",
    "turn_allocations_created_total",
    "turn_allocations_closed_total",
    "turn_relayed_packets_total",
    "turn_auth_failures_total",
    "turn_no_permission_drops_total",
    "signaling_joins_total",
    "turn_quota_refusals_total",
    "turn_permission_refusals_total",
    "turn_protocol_refusals_total",
    "turn_connection_refusals_total",
    "turn_malformed_total",
    "turn_relay_send_failures_total",
    "turn_challenge_drops_total",
    "turn_stream_queue_drops_total",
    "turn_stream_closes_total",
    "signaling_errors_total",
    "signaling_refusals_total",
];

/// One sample: the server from /proc and /metrics, the clients' counters.
async fn sample(ctx: &Ctx, phase: &str) -> Result<Value> {
    let pid = ctx.args.server_pid;
    let rss = procstat::process_rss_kb(pid).context("the server is gone")?;
    let fds = fd_count(pid).context("the server is gone")?;
    let m = scrape(ctx.args.admin).await?;
    // A metric that is not there would read as zero, and pass for idle or error-free.
    for name in METRICS {
        anyhow::ensure!(
            m.keys()
                .any(|k| k.split('{').next() == Some(&format!("switchboard_{name}"))),
            "/metrics has no switchboard_{name}"
        );
    }
    let sb = |n: &str| total(&m, &format!("switchboard_{n}"));
    let by = |n: &str| by_label(&m, &format!("switchboard_{n}"));
    let (allocations, signaling, streams) = (
        sb("turn_allocations"),
        sb("signaling_open_connections"),
        sb("turn_stream_connections"),
    );
    Ok(json!({
        "phase": phase,
        "t_s": procstat::round3(ctx.epoch.elapsed().as_secs_f64()),
        "rss_kb": rss,
        "fds": fds,
        // What no connection or relay socket explains (each allocation holds one relay
        // socket; its TCP/TLS connection is among the stream connections): at the idle count
        // all along, unless fds leak.
        "fds_other": fds as f64 - allocations - signaling - streams,
        "allocations": allocations,
        "rooms": sb("signaling_rooms"),
        "peers": sb("signaling_peers"),
        "signaling_connections": signaling,
        "turn_stream_connections": streams,
        "server": {
            "allocations_created": sb("turn_allocations_created_total"),
            "allocations_closed": by("turn_allocations_closed_total"),
            "relayed_packets": sb("turn_relayed_packets_total"),
            "auth_failures": by("turn_auth_failures_total"),
            "no_permission_drops": sb("turn_no_permission_drops_total"),
            "signaling_joins": sb("signaling_joins_total"),
            // Each of these is an error (unknown_peer aside: see `server_errors`).
            "quota_refusals": by("turn_quota_refusals_total"),
            "permission_refusals": by("turn_permission_refusals_total"),
            "protocol_refusals": by("turn_protocol_refusals_total"),
            "connection_refusals": by("turn_connection_refusals_total"),
            "malformed": sb("turn_malformed_total"),
            "relay_send_failures": sb("turn_relay_send_failures_total"),
            "challenge_drops": sb("turn_challenge_drops_total"),
            "stream_queue_drops": sb("turn_stream_queue_drops_total"),
            "stream_closes": by("turn_stream_closes_total"),
            "signaling_errors": by("signaling_errors_total"),
            "signaling_refusals": by("signaling_refusals_total"),
        },
        "clients": ctx.stats.json(),
        "max_relay_delay_ms": ctx.stats.max_delay_us.swap(0, Ordering::Relaxed) as f64 / 1000.0,
    }))
}

fn brief(s: &Value) -> String {
    format!(
        "{:>5.0} s {:<6} RSS {:>6.1} MiB, {:>4} fds, {:>3} allocations, {:>3} rooms, {:>3} peers, {} client errors",
        s["t_s"].as_f64().unwrap_or(0.0),
        s["phase"].as_str().unwrap_or(""),
        s["rss_kb"].as_f64().unwrap_or(0.0) / 1024.0,
        s["fds"],
        s["allocations"],
        s["rooms"],
        s["peers"],
        s["clients"]["error_total"]
    )
}

struct Samples {
    file: std::fs::File,
    all: Vec<Value>,
}

impl Samples {
    fn push(&mut self, s: Value) -> Result<()> {
        use std::io::Write;
        writeln!(self.file, "{s}")?;
        eprintln!("soak: {}", brief(&s));
        self.all.push(s);
        Ok(())
    }
}

/// A sample every `sample-secs` until the last half period of the run (the run's last
/// sample is taken as it ends, before the clients stop).
async fn sampler(ctx: Arc<Ctx>, samples: Arc<tokio::sync::Mutex<Samples>>) -> Result<()> {
    let mut stop = ctx.stop.clone();
    let period = Duration::from_secs_f64(ctx.args.sample_secs);
    let last = Duration::from_secs_f64(ctx.args.secs).saturating_sub(period / 2);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stop) => return Ok(()),
            _ = tick.tick() => {}
        }
        if ctx.epoch.elapsed() >= last {
            return Ok(());
        }
        let s = sample(&ctx, "run").await?;
        samples.lock().await.push(s)?;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Whether every post-warm-up value of `key` stays within the band around their median.
fn steady(run: &[&Value], key: &str, tolerance: f64, floor: f64) -> (bool, Value) {
    let points: Vec<(f64, f64)> = run
        .iter()
        .filter_map(|s| Some((s["t_s"].as_f64()?, s[key].as_f64()?)))
        .collect();
    let values: Vec<f64> = points.iter().map(|(_, v)| *v).collect();
    let mid = median(values.clone());
    let band = (mid * tolerance).max(floor);
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let outside = values.iter().filter(|v| (**v - mid).abs() > band).count();
    let ok = !values.is_empty() && outside == 0;
    (
        ok,
        json!({"samples": values.len(), "median": mid, "band": band, "min": lo, "max": hi, "outside": outside,
               "trend_per_hour": procstat::round3(slope(&points) * 3600.0)}),
    )
}

/// The least-squares slope of `points` (per second): not judged, but a slow climb shows in it
/// before it leaves the band.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (mt, mv) = points
        .iter()
        .fold((0.0, 0.0), |(t, v), (pt, pv)| (t + pt / n, v + pv / n));
    let (cov, var) = points.iter().fold((0.0, 0.0), |(c, w), (t, v)| {
        (c + (t - mt) * (v - mv), w + (t - mt) * (t - mt))
    });
    if var > 0.0 { cov / var } else { 0.0 }
}

fn log_lines(path: &std::path::Path) -> LogLines {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let reloaded = text
        .lines()
        .filter(|l| l.contains("configuration reloaded"))
        .count();
    let errors = text
        .lines()
        .filter(|l| l.contains(" ERROR "))
        .map(str::to_owned)
        .collect();
    let warnings = text
        .lines()
        .filter(|l| l.contains(" WARN "))
        .map(str::to_owned)
        .collect();
    (reloaded, errors, warnings)
}

/// Counters that must have moved for the run to mean anything, and whether each did.
fn exercised(ctx: &Ctx, fin: &Value, reloads_applied: u64) -> (bool, Value) {
    let c = &ctx.stats.c;
    let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
    let mut need: Vec<(&str, u64)> = vec![
        ("joins", get(&c.joins)),
        ("leaves", get(&c.leaves)),
        ("signals_received", get(&c.signals_received)),
        ("allocations_udp", get(&c.allocations_udp)),
        ("allocations_tcp", get(&c.allocations_tcp)),
        ("allocations_tls", get(&c.allocations_tls)),
        ("refreshes", get(&c.refreshes)),
        ("releases", get(&c.releases)),
        ("revokes_verified", get(&c.revokes_verified)),
        ("channel_binds", get(&c.channel_binds)),
        ("media_received_udp", get(&c.media_received_udp)),
        ("media_received_tcp", get(&c.media_received_tcp)),
        ("media_received_tls", get(&c.media_received_tls)),
        (
            "server_relayed_packets",
            fin["server"]["relayed_packets"].as_f64().unwrap_or(0.0) as u64,
        ),
        ("reloads_applied", reloads_applied),
    ];
    // Only runs with room for an allocation's whole lifetime can see one expire.
    let expiry = ctx.args.expiry_slots > 0 && expiry_fits(ctx.args.secs, 0);
    if expiry {
        need.push(("expiries_verified", get(&c.expiries_verified)));
    }
    let ok = need.iter().all(|(_, n)| *n > 0);
    let mut detail: serde_json::Map<String, Value> = need
        .into_iter()
        .map(|(k, n)| (k.to_owned(), json!(n)))
        .collect();
    if !expiry {
        detail.insert(
            "expiry".into(),
            json!(format!(
                "not exercised: needs --expiry-slots and a run of {} s or more",
                (EXPIRY_START + EXPIRY_NEEDS).as_secs()
            )),
        );
    }
    (ok, Value::Object(detail))
}

/// The errors the server counted, from the final sample: every refusal, drop and forced
/// close but `unknown_peer` (a signal to a peer that just left: a race the clients allow)
/// and `stale_nonce` (a nonce past its lifetime: the client signs again with the new one).
fn server_errors(fin: &Value) -> BTreeMap<String, f64> {
    let mut errors = BTreeMap::new();
    let server = &fin["server"];
    for key in [
        "auth_failures",
        "quota_refusals",
        "permission_refusals",
        "protocol_refusals",
        "connection_refusals",
        "stream_closes",
        "signaling_errors",
        "signaling_refusals",
    ] {
        for (label, n) in server[key].as_object().into_iter().flatten() {
            if (key == "signaling_errors" && label.contains("unknown_peer"))
                || (key == "auth_failures" && label.contains("stale_nonce"))
            {
                continue;
            }
            errors.insert(format!("{key}{{{label}}}"), n.as_f64().unwrap_or(0.0));
        }
    }
    for key in [
        "malformed",
        "relay_send_failures",
        "challenge_drops",
        "stream_queue_drops",
    ] {
        let n = server[key].as_f64().unwrap_or(0.0);
        if n != 0.0 {
            errors.insert(key.to_owned(), n);
        }
    }
    errors
}

/// The server log's reload lines, ERROR lines and WARN lines.
type LogLines = (usize, Vec<String>, Vec<String>);

/// The checks of the verdict: name, pass, detail.
fn verdict(
    ctx: &Ctx,
    all: &[Value],
    idle: &Value,
    fin: &Value,
    helper_failure: Option<String>,
    log: Option<&LogLines>,
) -> Vec<(&'static str, bool, Value)> {
    let a = &ctx.args;
    let runs: Vec<&Value> = all.iter().filter(|s| s["phase"] == "run").collect();
    let warm_s = a.warmup * a.secs;
    let skip = runs
        .iter()
        .take_while(|s| s["t_s"].as_f64().unwrap_or(0.0) < warm_s)
        .count()
        .max(1);
    let post: Vec<&Value> = runs.iter().skip(skip).copied().collect();
    let (rss_ok, rss) = steady(&post, "rss_kb", a.tolerance, a.rss_floor_kb as f64);
    let (fds_ok, fds) = steady(&post, "fds", a.tolerance, a.fd_floor as f64);
    // The fds no connection or relay explains stay at their idle count (within the floor).
    let idle_other = idle["fds_other"].as_f64().unwrap_or(f64::NAN);
    let others: Vec<f64> = post
        .iter()
        .filter_map(|s| s["fds_other"].as_f64())
        .collect();
    let others_ok = others.len() == post.len()
        && others
            .iter()
            .all(|v| (v - idle_other).abs() <= a.other_fds_slack as f64);
    let c = &ctx.stats.c;
    let errors = ctx.stats.error_total();
    let (sent, lost) = (
        c.media_sent.load(Ordering::Relaxed),
        c.media_lost.load(Ordering::Relaxed),
    );
    let n = |k: &str| fin[k].as_f64().unwrap_or(f64::NAN);
    let leftovers_ok = n("allocations") == 0.0 && n("peers") == 0.0 && n("rooms") == 0.0;
    let (idle_fds, fin_fds) = (n_u64(idle, "fds"), n_u64(fin, "fds"));
    let reloads = c.reloads.load(Ordering::Relaxed);
    let reloads_applied = log.map_or(reloads, |(applied, ..)| *applied as u64);
    let (mix_ok, mix) = exercised(ctx, fin, reloads_applied);
    let server = server_errors(fin);
    let (made, created) = (
        c.allocations.load(Ordering::Relaxed),
        fin["server"]["allocations_created"].as_f64().unwrap_or(0.0) as u64,
    );
    let mut checks = vec![
        (
            "samples after warm-up",
            post.len() >= 2,
            json!({"warmup_s": warm_s, "post_warmup_samples": post.len(), "needed": 2}),
        ),
        ("RSS steady", rss_ok, rss),
        ("fds steady", fds_ok, fds),
        (
            "fds beyond connections and relays at idle",
            !post.is_empty() && others_ok,
            json!({"idle": idle_other, "min": others.iter().copied().fold(f64::INFINITY, f64::min),
                   "max": others.iter().copied().fold(f64::NEG_INFINITY, f64::max), "band": a.other_fds_slack}),
        ),
        ("the whole mix ran", mix_ok, mix),
        (
            "no client errors",
            errors == 0,
            ctx.stats.json()["errors"].clone(),
        ),
        (
            "no errors counted by the server",
            server.is_empty(),
            json!(server),
        ),
        (
            "server and clients count the same allocations",
            made == created,
            json!({"clients": made, "server": created}),
        ),
        (
            "relay loss within tolerance",
            sent > 0 && lost as f64 <= a.loss_tolerance * sent as f64,
            json!({"sent": sent, "lost": lost, "tolerance": a.loss_tolerance}),
        ),
        (
            "nothing left after the grace period",
            leftovers_ok,
            json!({"allocations": fin["allocations"], "peers": fin["peers"], "rooms": fin["rooms"]}),
        ),
        (
            "fds back to idle",
            fin_fds <= idle_fds,
            json!({"idle": idle_fds, "final": fin_fds}),
        ),
    ];
    if let Some(e) = helper_failure {
        checks.push(("sampler and reloader ran", false, json!(e)));
    }
    if let Some((reloaded, errors, _)) = log {
        checks.push((
            "every reload applied",
            *reloaded as u64 == reloads,
            json!({"sent": reloads, "applied": reloaded}),
        ));
        checks.push((
            "no ERROR in the server log",
            errors.is_empty(),
            json!(errors.iter().take(5).collect::<Vec<_>>()),
        ));
    }
    checks
}

fn n_u64(sample: &Value, key: &str) -> u64 {
    sample[key].as_u64().unwrap_or(u64::MAX)
}

/// A round step (1, 2 or 5 times a power of ten) that cuts `0..max` into 3 to 7 ticks.
fn tick_step(max: f64) -> f64 {
    let raw = max.max(1e-9) / 5.0;
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * power)
}

/// One panel of the plot: its title, its series (label, colour, the sample's key and the
/// divisor of its values), and the verdict's band (median and half-width), if it has one.
struct Panel {
    title: &'static str,
    series: Vec<(&'static str, &'static str, &'static str, f64)>,
    band: Option<(f64, f64)>,
}

/// The run as an SVG: RSS, fds, and allocations and peers against time, with the end of the
/// warm-up, the end of the run and, for RSS and fds, the band the verdict allows around the
/// post-warm-up median.
fn plot(samples: &[Value], checks: &[(&str, bool, Value)], args: &Args) -> String {
    use std::fmt::Write;
    const W: f64 = 720.0;
    const H: f64 = 210.0;
    const L: f64 = 64.0;
    const R: f64 = 130.0;
    const HEAD: f64 = 44.0;
    let (secs, warm_s) = (args.secs, args.warmup * args.secs);
    let band = |check: &str, scale: f64| {
        let d = &checks.iter().find(|(name, ..)| *name == check)?.2;
        Some((d["median"].as_f64()? / scale, d["band"].as_f64()? / scale))
    };
    let panels = [
        Panel {
            title: "RSS (MiB)",
            series: vec![("RSS", "#d62728", "rss_kb", 1024.0)],
            band: band("RSS steady", 1024.0),
        },
        Panel {
            title: "open fds (other: not a connection or relay socket)",
            series: vec![
                ("fds", "#1f77b4", "fds", 1.0),
                ("other fds", "#7f7f7f", "fds_other", 1.0),
            ],
            band: band("fds steady", 1.0),
        },
        Panel {
            title: "allocations, peers, TURN connections",
            series: vec![
                ("allocations", "#2ca02c", "allocations", 1.0),
                ("peers", "#9467bd", "peers", 1.0),
                ("TCP/TLS conns", "#ff7f0e", "turn_stream_connections", 1.0),
            ],
            band: None,
        },
    ];
    let (unit, per) = if secs >= 600.0 {
        ("min", 60.0)
    } else {
        ("s", 1.0)
    };
    let t = |s: &Value| s["t_s"].as_f64().unwrap_or(0.0) / per;
    let tmax = samples.iter().map(t).fold(secs / per, f64::max).max(1e-9);
    let xstep = tick_step(tmax);
    let verdict = checks.iter().all(|(_, ok, _)| *ok);
    let total_h = HEAD + H * panels.len() as f64;
    let mut out = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{total_h}' font-family='sans-serif' font-size='11'>\n<rect width='100%' height='100%' fill='white'/>\n"
    );
    let _ = writeln!(
        out,
        "<text x='{L}' y='18' font-size='13'>soak, {secs:.0} s: {}</text>\n<text x='{L}' y='34'>dashed: end of warm-up; dotted: clients stop; shaded: ±{:.0} % of the median after warm-up, or the floor</text>",
        if verdict { "PASS" } else { "FAIL" },
        args.tolerance * 100.0,
    );
    for (i, panel) in panels.iter().enumerate() {
        let top = HEAD + i as f64 * H;
        let (x0, x1, y0, y1) = (L, W - R, top + H - 36.0, top + 20.0);
        let high = samples
            .iter()
            .flat_map(|s| {
                panel
                    .series
                    .iter()
                    .filter_map(move |(_, _, key, scale)| Some(s[*key].as_f64()? / scale))
            })
            .fold(1.0, f64::max);
        let high = panel.band.map_or(high, |(mid, b)| high.max(mid + b)) * 1.05;
        let ystep = tick_step(high);
        let ymax = (high / ystep).ceil() * ystep;
        let px = |x: f64| x0 + (x1 - x0) * x / tmax;
        let py = |y: f64| y0 - (y0 - y1) * y / ymax;
        let _ = writeln!(
            out,
            "<text x='{x0}' y='{:.1}' font-size='12'>{}</text>",
            y1 - 6.0,
            panel.title
        );
        if let Some((mid, b)) = panel.band {
            let (lo, hi) = ((mid - b).max(0.0), mid + b);
            let (xa, xb) = (px(warm_s / per), px(secs / per));
            let _ = writeln!(
                out,
                "<rect x='{xa:.1}' y='{:.1}' width='{:.1}' height='{:.1}' fill='#d9d9d9' opacity='0.6'/><line x1='{xa:.1}' y1='{:.1}' x2='{xb:.1}' y2='{:.1}' stroke='#555' stroke-width='0.8'/>",
                py(hi),
                xb - xa,
                py(lo) - py(hi),
                py(mid),
                py(mid),
            );
        }
        let _ = writeln!(
            out,
            "<line x1='{x0}' y1='{y0}' x2='{x1}' y2='{y0}' stroke='black'/><line x1='{x0}' y1='{y0}' x2='{x0}' y2='{y1}' stroke='black'/>"
        );
        for k in 0..=(tmax / xstep).floor() as u32 {
            let fx = xstep * f64::from(k);
            let _ = writeln!(
                out,
                "<text x='{:.1}' y='{:.1}' text-anchor='middle'>{fx} {unit}</text>",
                px(fx),
                y0 + 14.0,
            );
        }
        for k in 0..=(ymax / ystep).round() as u32 {
            let fy = ystep * f64::from(k);
            let _ = writeln!(
                out,
                "<text x='{:.1}' y='{:.1}' text-anchor='end'>{fy}</text>",
                x0 - 4.0,
                py(fy) + 4.0,
            );
        }
        for (x, dash) in [(warm_s / per, "5 3"), (secs / per, "2 2")] {
            let _ = writeln!(
                out,
                "<line x1='{:.1}' y1='{y0}' x2='{:.1}' y2='{y1}' stroke='#555' stroke-dasharray='{dash}'/>",
                px(x),
                px(x)
            );
        }
        for (k, (label, color, key, scale)) in panel.series.iter().enumerate() {
            let points: Vec<String> = samples
                .iter()
                .filter_map(|s| {
                    let v = s[*key].as_f64()? / scale;
                    Some(format!("{:.1},{:.1}", px(t(s)), py(v)))
                })
                .collect();
            let _ = writeln!(
                out,
                "<polyline fill='none' stroke='{color}' stroke-width='1.6' points='{}'/>\n<text x='{:.1}' y='{:.1}' fill='{color}'>{label}</text>",
                points.join(" "),
                x1 + 6.0,
                y1 + 10.0 + 14.0 * k as f64
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

fn main() -> Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.life.len() == 2 && args.media_life.len() == 2,
        "--life and --media-life are MIN,MAX"
    );
    anyhow::ensure!(!args.sources.is_empty(), "--sources is empty");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let pass = runtime.block_on(run(args))?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    if !pass {
        std::process::exit(1);
    }
    Ok(())
}

async fn run(args: Args) -> Result<bool> {
    std::fs::create_dir_all(&args.out)?;
    let tls = Arc::new(wss::client_tls(&args.ca)?);
    let (stop_tx, stop) = watch::channel(false);
    let ttl = config_ttl(&args.config)?;
    let url = format!("wss://{}/ws", args.https);
    let ctx = Arc::new(Ctx {
        url,
        epoch: Instant::now(),
        ws_tls: Connector::Rustls(Arc::clone(&tls)),
        turn_tls: tls,
        stats: Stats::default(),
        stop,
        ttl: Mutex::new((ttl, Instant::now())),
        relays: Mutex::default(),
        checks: Mutex::new(JoinSet::new()),
        held: Mutex::default(),
        seeds: AtomicU64::new(1),
        args,
    });
    let samples = Arc::new(tokio::sync::Mutex::new(Samples {
        file: std::fs::File::create(ctx.args.out.join("samples.jsonl"))?,
        all: Vec::new(),
    }));
    let idle = sample(&ctx, "idle").await?;
    let idle_fds = idle["fds"].as_u64().unwrap_or(0);
    samples.lock().await.push(idle.clone())?;

    let mut clients = JoinSet::new();
    for room in 0..ctx.args.rooms {
        for slot in 0..ctx.args.peers_per_room {
            clients.spawn(churn_slot(Arc::clone(&ctx), room, slot));
        }
    }
    for k in 0..ctx.args.media_pairs {
        clients.spawn(media_slot(Arc::clone(&ctx), k));
    }
    for k in 0..ctx.args.expiry_slots {
        clients.spawn(expiry_slot(Arc::clone(&ctx), k));
    }
    let mut helpers = JoinSet::new();
    helpers.spawn(sampler(Arc::clone(&ctx), Arc::clone(&samples)));
    helpers.spawn(reloader(Arc::clone(&ctx)));

    let run_end = tokio::time::Instant::now() + Duration::from_secs_f64(ctx.args.secs);
    let mut helper_failure = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(run_end) => break,
            done = helpers.join_next() => match done {
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => { helper_failure = Some(format!("{e:#}")); break; }
                Some(Err(e)) => { helper_failure = Some(e.to_string()); break; }
                None => std::future::pending::<()>().await,
            },
        }
    }
    // The run's last sample, then stop: every client leaves (or, with --leak, holds on),
    // then the server settles.
    if helper_failure.is_none() {
        let s = sample(&ctx, "run").await?;
        samples.lock().await.push(s)?;
    }
    let _ = stop_tx.send(true);
    let stopped_at = Instant::now();
    eprintln!(
        "soak: {:.0} s: stopping the clients",
        ctx.epoch.elapsed().as_secs_f64()
    );
    let wait = Duration::from_secs(ctx.args.grace_secs + 30);
    if tokio::time::timeout(wait, async { while clients.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        ctx.error(&fail(
            "stuck_client",
            format!(
                "{} clients did not stop within {} s",
                clients.len(),
                wait.as_secs()
            ),
        ));
        clients.abort_all();
    }
    while let Some(r) = helpers.join_next().await {
        if let Ok(Err(e)) = r {
            helper_failure.get_or_insert(format!("{e:#}"));
        }
    }
    let mut checks = std::mem::take(&mut *ctx.checks.lock().expect("checks lock"));
    if tokio::time::timeout(wait, async { while checks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        checks.abort_all();
    }
    // Settle: at least the grace period, then until idle or `settle-secs`.
    let min_settle = Duration::from_secs(ctx.args.grace_secs + 1);
    let settle_end = stopped_at + Duration::from_secs_f64(ctx.args.settle_secs).max(min_settle);
    let last = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = sample(&ctx, "settle").await?;
        let idle_now = s["allocations"] == 0.0
            && s["peers"] == 0.0
            && s["rooms"] == 0.0
            && s["fds"].as_u64().unwrap_or(u64::MAX) <= idle_fds;
        if (idle_now && stopped_at.elapsed() >= min_settle) || Instant::now() >= settle_end {
            break s;
        }
        samples.lock().await.push(s)?;
    };
    let mut fin = last;
    fin["phase"] = json!("final");
    fin["settle_s"] = json!(procstat::round3(stopped_at.elapsed().as_secs_f64()));
    samples.lock().await.push(fin.clone())?;

    // The verdict.
    let all = samples.lock().await.all.clone();
    let log = ctx.args.server_log.as_deref().map(log_lines);
    let checks = verdict(&ctx, &all, &idle, &fin, helper_failure, log.as_ref());
    let a = &ctx.args;
    let log = log.map_or(Value::Null, |(reloaded, errors, warnings)| {
        json!({"reloads_applied": reloaded, "errors": errors.len(), "warnings": warnings.len(),
               "first_warnings": warnings.iter().take(5).collect::<Vec<_>>()})
    });
    let pass = checks.iter().all(|(_, ok, _)| *ok);
    eprintln!("soak: verdict: {}", if pass { "PASS" } else { "FAIL" });
    for (name, ok, detail) in &checks {
        eprintln!(
            "soak:   [{}] {name}: {detail}",
            if *ok { "ok" } else { "FAIL" }
        );
    }
    let first_errors = ctx.stats.first_errors.lock().expect("errors lock").clone();
    let summary = json!({
        "pass": pass,
        "checks": checks.iter().map(|(name, ok, detail)| json!({"check": name, "pass": ok, "detail": detail})).collect::<Vec<_>>(),
        "idle": idle,
        "final": fin,
        "clients": ctx.stats.json(),
        "first_errors": first_errors,
        "server_log": log,
        "settings": {
            "secs": a.secs, "rooms": a.rooms, "peers_per_room": a.peers_per_room, "life_s": a.life,
            "turn_share": a.turn_share, "media_pairs": a.media_pairs, "media_rate": a.media_rate,
            "media_size": a.media_size, "media_life_s": a.media_life, "expiry_slots": a.expiry_slots,
            "refresh_s": a.refresh_secs, "sample_s": a.sample_secs, "warmup": a.warmup,
            "reload_s": a.reload_secs, "grace_s": a.grace_secs, "tolerance": a.tolerance,
            "rss_floor_kb": a.rss_floor_kb, "fd_floor": a.fd_floor, "other_fds_slack": a.other_fds_slack, "loss_tolerance": a.loss_tolerance,
            "leak": a.leak,
        },
    });
    std::fs::write(
        a.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    std::fs::write(a.out.join("soak.svg"), plot(&all, &checks, a))?;
    // With --leak, what was held is let go only now.
    ctx.held.lock().expect("held lock").clear();
    Ok(pass)
}
