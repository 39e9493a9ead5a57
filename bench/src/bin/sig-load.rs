//! Signaling load generator: N WebSocket connections (ws:// or wss://) in rooms of
//! two, a burst of realistic negotiations (join, ~3 KB offer, ~3 KB answer, 10
//! candidates each way), then a sustained phase at a fixed total message rate
//! (open loop). Speaks Switchboard's native protocol, the plain-WebSocket tutorial
//! dialect (login/offer/answer/candidate) and the socket.io room dialect, so the
//! same tool measures Switchboard and the Node servers on the same wire protocol;
//! `echo` talks to a WebSocket echo server (the reference ceiling).
//!
//! Prints one JSON line per phase on stdout and a human summary on stderr.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_bench::percentiles::Latency;
use switchboard_bench::procstat::{self, Sample, round3};
use switchboard_bench::wss::{self, Ws};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
#[command(about = "Signaling load generator (native, plain-WebSocket and socket.io dialects)")]
struct Args {
    /// ws:// or wss:// URL of the socket endpoint (native: /ws, plain: /legacy, socketio: /socket.io/).
    #[arg(long)]
    url: String,
    /// Where the second socket of each pair connects (another instance of a cluster); by
    /// default `--url`. With it, every message crosses from one instance to the other.
    #[arg(long)]
    peer_url: Option<String>,
    #[arg(long, value_enum, default_value_t = Dialect::Native)]
    dialect: Dialect,
    /// Pairs of connections (each pair is one room): 2 × pairs sockets.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Sustained phase: total messages per second over all connections (0: skip).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Sustained phase length in seconds.
    #[arg(long, default_value_t = 8.0)]
    secs: f64,
    /// PEM certificate to trust for wss:// (Switchboard's self-signed one).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Local addresses to connect from, round robin (spreads per-IP limits and ports).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    sources: Vec<IpAddr>,
    /// Connections opened at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long)]
    server_core: Option<usize>,
    #[arg(long, default_value = "server")]
    label: String,
    /// Bytes of each offer and answer.
    #[arg(long, default_value_t = 3000)]
    sdp_bytes: usize,
    /// Room names are this and the pair's number (several generators on one cluster need
    /// different ones).
    #[arg(long, default_value = "r")]
    room_prefix: String,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Dialect {
    Native,
    Plain,
    Socketio,
    Echo,
}

const CANDIDATES: usize = 10;

/// Shared counters and histograms.
#[derive(Default)]
struct Shared {
    joined: AtomicUsize,
    /// From a join's send to its welcome.
    join: Mutex<Latency>,
    negotiated: AtomicUsize,
    negotiation: Mutex<Latency>,
    sent: AtomicU64,
    received: AtomicU64,
    relay: Mutex<Latency>,
    /// Relayed messages slower than `SLOW_US`: when each was sent (ns since t0) and its
    /// latency, the first `SLOW_KEPT`; where outliers sit in time says what causes them.
    slow: Mutex<Vec<(u64, u64)>>,
    /// Set when the sustained phase ends: no more sends, but every connection stays open
    /// until what is in flight has arrived. Closing 10,000 connections while the last
    /// messages travelled delayed them by 20-100 ms (the generator and the server both busy
    /// with the closes), which the step reported as its maximum relay latency. A flag the
    /// tickers read, not a phase: a phase change wakes every task at once, and that alone
    /// kept this generator busy ~10 ms.
    draining: AtomicBool,
    errors: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    fn error(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().expect("lock");
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }
}

/// Phases every connection task follows, driven by the main task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd)]
enum Phase {
    Connect,
    Join,
    Negotiate,
    Sustain,
    Stop,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

/// The sustained phase's first message leaves this long after the phase starts, so that
/// every connection task has woken and armed its ticker first: 10,000 tasks waking at once
/// kept this generator busy ~10 ms, and the first messages' latency showed it.
const SETTLE: Duration = Duration::from_millis(50);

/// A relayed message this slow is listed in the output (`slow`) with its send time.
const SLOW_US: u64 = 10_000;
const SLOW_KEPT: usize = 64;

/// The socket address and whether TLS is used, of a ws:// or wss:// URL.
fn endpoint(url: &str) -> Result<(SocketAddr, bool)> {
    let url: tokio_tungstenite::tungstenite::http::Uri = url.parse().context("a URL")?;
    let host = url.host().context("the URL has no host")?.to_string();
    let tls = url.scheme_str() == Some("wss");
    let port = url.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let ip: IpAddr = if host == "localhost" {
        IpAddr::from([127, 0, 0, 1])
    } else {
        host.parse()
            .context("the URL's host must be an IP address or localhost")?
    };
    Ok((SocketAddr::new(ip, port), tls))
}

fn nanos(t0: Instant) -> u64 {
    t0.elapsed().as_nanos() as u64
}

async fn run(args: Args) -> Result<()> {
    let args = Arc::new(args);
    let (server, tls) = endpoint(&args.url)?;
    let peer_server = match &args.peer_url {
        Some(url) => endpoint(url).context("--peer-url")?.0,
        None => server,
    };
    let connector = if tls {
        let ca = args
            .ca
            .as_deref()
            .context("wss:// needs --ca (the server's certificate)")?;
        Some(Connector::Rustls(Arc::new(wss::client_tls(ca)?)))
    } else {
        None
    };
    let n = args.pairs * 2;
    let shared = Arc::new(Shared::default());
    let t0 = Instant::now();
    let (phase_tx, phase_rx) = watch::channel(Phase::Connect);
    let rss_start = args.server_pid.and_then(procstat::process_rss_kb);

    // Connect everything (bounded concurrency).
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut connecting = tokio::task::JoinSet::new();
    for i in 0..n {
        let (args, connector, gate) = (Arc::clone(&args), connector.clone(), Arc::clone(&gate));
        connecting.spawn(async move {
            let _permit = gate.acquire().await;
            let t = Instant::now();
            let source = args.sources[i % args.sources.len()];
            // The second of each pair (odd `i`) on the peer instance, if there is one.
            let (url, to) = match &args.peer_url {
                Some(peer_url) if i % 2 == 1 => (peer_url.as_str(), peer_server),
                _ => (args.url.as_str(), server),
            };
            let ws = wss::connect(url, to, source, connector).await;
            (i, ws.map(|ws| (ws, t.elapsed())))
        });
    }
    let mut sockets: Vec<Option<Ws>> = (0..n).map(|_| None).collect();
    let mut connect_lat = Latency::new();
    let mut connect_failures = 0usize;
    while let Some(r) = connecting.join_next().await {
        let (i, ws) = r?;
        match ws {
            Ok((ws, took)) => {
                connect_lat.record_us(took.as_micros() as u64);
                sockets[i] = Some(ws);
            }
            Err(e) => {
                connect_failures += 1;
                shared.error(format!("connect {i}: {e:#}"));
            }
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let rss_connected = args.server_pid.and_then(procstat::process_rss_kb);
    emit(
        &args,
        "connect",
        json!({"connections": n - connect_failures, "failures": connect_failures,
               "secs": round3(connect_secs), "connect": connect_lat.json(),
               "server_rss_before_kb": rss_start, "server_rss_kb": rss_connected}),
        format!(
            "{} connected in {connect_secs:.2} s ({connect_failures} failed), connect p50 {} µs p99 {} µs",
            n - connect_failures,
            connect_lat.quantile_us(0.5),
            connect_lat.quantile_us(0.99)
        ),
    );
    if connect_failures > 0 {
        bail!(
            "{connect_failures} connections failed; first: {:?}",
            shared.first_error.lock().expect("lock")
        );
    }

    // One task per connection from here on.
    let pair_start: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.pairs).map(|_| AtomicU64::new(0)).collect());
    let pair_done: Arc<Vec<AtomicUsize>> =
        Arc::new((0..args.pairs).map(|_| AtomicUsize::new(0)).collect());
    let mut tasks = tokio::task::JoinSet::new();
    for (i, ws) in sockets.into_iter().enumerate() {
        let conn = Conn {
            i,
            ws: ws.expect("connected"),
            args: Arc::clone(&args),
            shared: Arc::clone(&shared),
            phase: phase_rx.clone(),
            t0,
            pair_start: Arc::clone(&pair_start),
            pair_done: Arc::clone(&pair_done),
        };
        tasks.spawn(conn.run());
    }

    // Join: everyone joins (first of each pair, then second).
    let started = Instant::now();
    let _ = phase_tx.send(Phase::Join);
    wait_for(&shared.joined, n, Duration::from_secs(60), &shared, "joins").await?;
    let secs = started.elapsed().as_secs_f64();
    let joins = std::mem::take(&mut *shared.join.lock().expect("lock"));
    emit(
        &args,
        "join",
        json!({"joins": n, "secs": round3(secs), "latency": joins.json()}),
        format!(
            "{n} joins in {secs:.2} s (the second of each pair after the first): p50 {} µs p99 {} µs max {} µs",
            joins.quantile_us(0.5),
            joins.quantile_us(0.99),
            joins.max_us()
        ),
    );

    // Negotiation burst: every pair at once.
    let before = Sample::take(args.server_pid, args.server_core);
    let started = Instant::now();
    let _ = phase_tx.send(Phase::Negotiate);
    let pairs = if args.dialect == Dialect::Echo {
        0
    } else {
        args.pairs
    };
    wait_for(
        &shared.negotiated,
        pairs,
        Duration::from_secs(120),
        &shared,
        "negotiations",
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    let usage = Sample::take(args.server_pid, args.server_core).usage_since(&before);
    let rss_negotiated = args.server_pid.and_then(procstat::process_rss_kb);
    let per_conn = match (rss_start, rss_negotiated) {
        (Some(a), Some(b)) => Some(round3((b as f64 - a as f64) / n as f64)),
        _ => None,
    };
    let neg = std::mem::take(&mut *shared.negotiation.lock().expect("lock"));
    emit(
        &args,
        "negotiate",
        json!({"pairs": pairs, "secs": round3(secs), "latency": neg.json(),
               "server_rss_kb": rss_negotiated, "server_rss_per_connection_kb": per_conn,
               "usage": usage.json()}),
        format!(
            "{pairs} negotiations in {secs:.2} s: p50 {} µs p99 {} µs max {} µs; server RSS {:?} KiB ({:?} KiB per connection)",
            neg.quantile_us(0.5),
            neg.quantile_us(0.99),
            neg.max_us(),
            rss_negotiated,
            per_conn
        ),
    );

    // Sustained phase at a fixed total rate.
    if args.rate > 0 {
        let before = Sample::take(args.server_pid, args.server_core);
        let (s0, r0) = (
            shared.sent.load(Ordering::Relaxed),
            shared.received.load(Ordering::Relaxed),
        );
        *shared.relay.lock().expect("lock") = Latency::new();
        shared.slow.lock().expect("lock").clear();
        let sustain_at = nanos(t0);
        let _ = phase_tx.send(Phase::Sustain);
        tokio::time::sleep(Duration::from_secs_f64(args.secs)).await;
        shared.draining.store(true, Ordering::Relaxed);
        let usage = Sample::take(args.server_pid, args.server_core).usage_since(&before);
        // Late messages: give the last ones a moment, with every connection still open.
        let sent = shared.sent.load(Ordering::Relaxed) - s0;
        let deadline = Instant::now() + Duration::from_secs(2);
        while shared.received.load(Ordering::Relaxed) - r0 < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = phase_tx.send(Phase::Stop);
        let received = shared.received.load(Ordering::Relaxed) - r0;
        let relay = std::mem::take(&mut *shared.relay.lock().expect("lock"));
        // [ms into the phase when sent, latency in ms]
        let slow: Vec<[f64; 2]> = shared
            .slow
            .lock()
            .expect("lock")
            .iter()
            .map(|&(at, us)| {
                let into = at.saturating_sub(sustain_at) as f64 / 1e6;
                [into.round(), us as f64 / 1e3]
            })
            .collect();
        let per_msg = usage
            .server_cpu_s
            .filter(|_| received > 0)
            .map(|s| round3(s * 1e6 / received as f64));
        let per_msg_core = usage
            .server_core_s
            .filter(|_| received > 0)
            .map(|s| round3(s * 1e6 / received as f64));
        // The kernel's part (receive, send and its loopback delivery, wake-ups): the floor
        // that no server's own code can go below.
        let per_msg_system = usage
            .server_system_s
            .filter(|_| received > 0)
            .map(|s| round3(s * 1e6 / received as f64));
        emit(
            &args,
            "sustain",
            json!({"offered_msgs_per_s": args.rate, "sent": sent, "received": received,
                   "relayed_msgs_per_s": (received as f64 / usage.secs).round(),
                   "latency": relay.json(), "slow": slow,
                   "server_cpu_us_per_msg": per_msg, "server_core_us_per_msg": per_msg_core,
                   "server_system_us_per_msg": per_msg_system,
                   "server_rss_kb": args.server_pid.and_then(procstat::process_rss_kb),
                   "usage": usage.json()}),
            format!(
                "sustained {} msg/s offered: {:.0} relayed/s, {sent} sent {received} received, relay p50 {} µs p99 {} µs max {} µs, server {:?} µs/msg (core {:?}, kernel {:?}), CPU s: server {:?} tool {:.2} other {:.2}",
                args.rate,
                received as f64 / usage.secs,
                relay.quantile_us(0.5),
                relay.quantile_us(0.99),
                relay.max_us(),
                per_msg,
                per_msg_core,
                per_msg_system,
                usage.server_cpu_s.map(round3),
                usage.tool_cpu_s,
                usage.other_cpu_s
            ),
        );
    }
    let _ = phase_tx.send(Phase::Stop);
    tasks.shutdown().await;
    let errors = shared.errors.load(Ordering::Relaxed);
    if errors > 0 {
        eprintln!(
            "{errors} errors; first: {:?}",
            shared.first_error.lock().expect("lock")
        );
    }
    Ok(())
}

fn emit(args: &Args, phase: &str, fields: Value, human: String) {
    let mut line = json!({"tool": "sig-load", "phase": phase, "label": args.label,
        "dialect": format!("{:?}", args.dialect).to_lowercase(), "pairs": args.pairs,
        "tls": args.url.starts_with("wss")});
    if let (Some(o), Value::Object(f)) = (line.as_object_mut(), fields) {
        o.extend(f);
    }
    println!("{line}");
    eprintln!("{} {}: {human}", args.label, phase);
}

async fn wait_for(
    counter: &AtomicUsize,
    target: usize,
    limit: Duration,
    shared: &Shared,
    what: &str,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    while counter.load(Ordering::Relaxed) < target {
        if Instant::now() > deadline {
            bail!(
                "only {} of {target} {what} completed in {limit:?}; errors: {} (first: {:?})",
                counter.load(Ordering::Relaxed),
                shared.errors.load(Ordering::Relaxed),
                shared.first_error.lock().expect("lock")
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// One connection's task: its half of the negotiation, then its share of the sustained rate.
struct Conn {
    i: usize,
    ws: Ws,
    args: Arc<Args>,
    shared: Arc<Shared>,
    phase: watch::Receiver<Phase>,
    t0: Instant,
    pair_start: Arc<Vec<AtomicU64>>,
    pair_done: Arc<Vec<AtomicUsize>>,
}

/// What a connection learned from the server.
#[derive(Default)]
struct Negotiation {
    /// When the join was sent.
    join_sent: Option<Instant>,
    joined: bool,
    /// The other side: native peer id, or plain login name.
    peer: Option<String>,
    got_answer: bool,
    candidates: usize,
    offered: bool,
    done: bool,
}

impl Conn {
    fn pair(&self) -> usize {
        self.i / 2
    }

    /// The second of a pair offers (the newcomer, as the call page does).
    fn offers(&self) -> bool {
        self.i % 2 == 1
    }

    fn name(i: usize) -> String {
        format!("u{i}")
    }

    async fn run(mut self) {
        if let Err(e) = self.drive().await {
            self.shared.error(format!("connection {}: {e:#}", self.i));
        }
    }

    async fn send(&mut self, text: String) -> Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// A message to the other side of the pair in this dialect; `body` is JSON text.
    /// Built with `format!` from pre-serialized parts: during the burst the generator,
    /// not the server, must not be what limits the pace.
    fn to_peer(&self, peer: &str, kind: &str, body: &str) -> String {
        let peer = serde_json::to_string(peer).expect("a string serializes");
        match self.args.dialect {
            Dialect::Native => match kind {
                "offer" | "answer" => format!(
                    r#"{{"type":"signal","to":{peer},"payload":{{"description":{{"type":"{kind}","sdp":{body}}}}}}}"#
                ),
                _ => format!(r#"{{"type":"signal","to":{peer},"payload":{{"candidate":{body}}}}}"#),
            },
            Dialect::Plain => format!(r#"{{"type":"{kind}","name":{peer},"{kind}":{body}}}"#),
            Dialect::Socketio => format!(r#"42["message",{{"type":"{kind}","{kind}":{body}}}]"#),
            Dialect::Echo => format!(r#"{{"type":"{kind}","{kind}":{body}}}"#),
        }
    }

    fn join_message(&self) -> String {
        let room = format!("{}{}", self.args.room_prefix, self.pair());
        match self.args.dialect {
            Dialect::Native => json!({"type": "join", "room": room}).to_string(),
            Dialect::Plain => json!({"type": "login", "name": Self::name(self.i)}).to_string(),
            Dialect::Socketio => format!("42{}", json!(["create or join", room])),
            Dialect::Echo => "{}".into(),
        }
    }

    async fn drive(&mut self) -> Result<()> {
        if self.args.dialect == Dialect::Socketio {
            // Engine.IO open packet, then the socket.io namespace connect.
            self.expect_text(|t| t.starts_with('0')).await?;
            self.send("40".into()).await?;
            self.expect_text(|t| t.starts_with("40")).await?;
        }
        self.until(Phase::Join).await;
        // The first of a pair joins first, so that the second is the newcomer.
        if self.offers() {
            while self.shared.joined.load(Ordering::Relaxed) < self.args.pairs {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let join = self.join_message();
        let mut neg = Negotiation {
            join_sent: Some(Instant::now()),
            ..Negotiation::default()
        };
        self.send(join).await?;
        if self.args.dialect == Dialect::Plain || self.args.dialect == Dialect::Socketio {
            // Peers are addressed by name (plain) or by room (socket.io).
            neg.peer = Some(Self::name(self.i ^ 1));
        }
        if self.args.dialect == Dialect::Echo {
            neg.joined = true;
            neg.done = true;
            self.shared.joined.fetch_add(1, Ordering::Relaxed);
        }
        let sdp = serde_json::to_string(&"a".repeat(self.args.sdp_bytes))?;
        let mut ticker: Option<tokio::time::Interval> = None;
        let mut template: Option<(String, String)> = None;
        loop {
            let phase = *self.phase.borrow();
            if phase == Phase::Stop {
                return Ok(());
            }
            if phase >= Phase::Negotiate && self.offers() && !neg.offered && neg.peer.is_some() {
                neg.offered = true;
                self.pair_start[self.pair()].store(nanos(self.t0), Ordering::Relaxed);
                let msg = self.to_peer(neg.peer.as_deref().unwrap_or(""), "offer", &sdp);
                self.send(msg).await?;
            }
            if phase == Phase::Sustain && ticker.is_none() {
                let per_conn = self.args.rate as f64 / (self.args.pairs * 2) as f64;
                let period = Duration::from_secs_f64(1.0 / per_conn.max(1e-3));
                // Spread the connections' phases over one period.
                let offset = period.mul_f64((self.i as f64 * 0.618_034) % 1.0);
                let first = tokio::time::Instant::now() + SETTLE + offset;
                let mut t = tokio::time::interval_at(first, period);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                ticker = Some(t);
            }
            tokio::select! {
                changed = self.phase.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                _ = async { ticker.as_mut().expect("ticker").tick().await }, if ticker.is_some() => {
                    if self.shared.draining.load(Ordering::Relaxed) {
                        continue;
                    }
                    if template.is_none() {
                        // Built once: the generator must stay cheaper than the servers it loads.
                        let peer = neg.peer.clone().unwrap_or_default();
                        let body = json!({
                            "candidate": "candidate:842163049 1 udp 1677729535 203.0.113.7 61000 typ srflx raddr 10.0.0.2 rport 61000 generation 0",
                            "sdpMid": "0", "sdpMLineIndex": 0, "ts": 0});
                        let msg = self.to_peer(&peer, "candidate", &body.to_string());
                        let at = msg.find("\"ts\":0").context("template")?;
                        template = Some((msg[..at].to_string(), msg[at + 6..].to_string()));
                    }
                    let (head, tail) = template.as_ref().expect("template");
                    let msg = format!("{head}\"ts\":{}{tail}", nanos(self.t0));
                    self.send(msg).await?;
                    self.shared.sent.fetch_add(1, Ordering::Relaxed);
                }
                msg = self.ws.next() => {
                    let Some(msg) = msg else { bail!("server closed the connection") };
                    match msg? {
                        Message::Text(text) => self.on_text(text.as_str(), &mut neg, &sdp).await?,
                        Message::Close(frame) => bail!("server closed the connection: {frame:?}"),
                        _ => {}
                    }
                }
            }
        }
    }

    async fn expect_text(&mut self, want: impl Fn(&str) -> bool) -> Result<()> {
        while let Some(msg) = self.ws.next().await {
            if let Message::Text(t) = msg?
                && want(t.as_str())
            {
                return Ok(());
            }
        }
        bail!("connection closed during the handshake")
    }

    async fn until(&mut self, phase: Phase) {
        while *self.phase.borrow() < phase {
            if self.phase.changed().await.is_err() {
                return;
            }
        }
    }

    async fn on_text(&mut self, text: &str, neg: &mut Negotiation, sdp: &str) -> Result<()> {
        // Sustained-phase messages carry a timestamp: find it without a full parse.
        if let Some(at) = text.find("\"ts\":") {
            let digits: String = text[at + 5..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(ts) = digits.parse::<u64>() {
                let us = nanos(self.t0).saturating_sub(ts) / 1000;
                self.shared.relay.lock().expect("lock").record_us(us);
                if us >= SLOW_US {
                    let mut slow = self.shared.slow.lock().expect("lock");
                    if slow.len() < SLOW_KEPT {
                        slow.push((ts, us));
                    }
                }
                self.shared.received.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        if let Some(kind) = quick_kind(self.args.dialect, text) {
            return self.on_kind(kind, Value::Null, neg, sdp).await;
        }
        let value: Value = match self.args.dialect {
            Dialect::Socketio => {
                if text == "2" {
                    // Engine.IO ping.
                    return self.send("3".into()).await;
                }
                let Some(body) = text.strip_prefix("42") else {
                    return Ok(());
                };
                serde_json::from_str(body)?
            }
            _ => serde_json::from_str(text)?,
        };
        let (kind, body) = self.classify(&value);
        if kind == "error" {
            bail!("server error: {text}");
        }
        self.on_kind(&kind, body, neg, sdp).await
    }

    async fn on_kind(
        &mut self,
        kind: &str,
        body: Value,
        neg: &mut Negotiation,
        sdp: &str,
    ) -> Result<()> {
        match kind {
            "joined" => {
                if !neg.joined {
                    neg.joined = true;
                    self.shared.joined.fetch_add(1, Ordering::Relaxed);
                    if let Some(sent) = neg.join_sent {
                        let us = sent.elapsed().as_micros() as u64;
                        self.shared.join.lock().expect("lock").record_us(us);
                    }
                }
                if let Some(peer) = body.as_str() {
                    neg.peer = Some(peer.to_string());
                }
            }
            "peer" => {
                if let Some(peer) = body.as_str() {
                    neg.peer = Some(peer.to_string());
                }
            }
            "offer" => {
                let peer = neg.peer.clone().unwrap_or_default();
                let answer = self.to_peer(&peer, "answer", sdp);
                self.send(answer).await?;
                for c in 0..CANDIDATES {
                    let msg = self.to_peer(&peer, "candidate", &CANDIDATE_JSON[c]);
                    self.send(msg).await?;
                }
            }
            "answer" => {
                neg.got_answer = true;
                let peer = neg.peer.clone().unwrap_or_default();
                for c in 0..CANDIDATES {
                    let msg = self.to_peer(&peer, "candidate", &CANDIDATE_JSON[c]);
                    self.send(msg).await?;
                }
                self.check_done(neg);
            }
            "candidate" => {
                neg.candidates += 1;
                self.check_done(neg);
            }
            _ => {}
        }
        Ok(())
    }

    /// Reduces a server message of any dialect to (what it is, its useful value).
    fn classify(&self, v: &Value) -> (String, Value) {
        match self.args.dialect {
            Dialect::Native => match v["type"].as_str().unwrap_or("") {
                "welcome" => {
                    // The newcomer learns the first peer's id from the welcome's peer list.
                    let peer = v["peers"]
                        .get(0)
                        .and_then(|p| p["id"].as_str())
                        .map(str::to_string);
                    (
                        "joined".into(),
                        peer.map(Value::from).unwrap_or(Value::Null),
                    )
                }
                "peer_joined" => ("peer".into(), v["peer"]["id"].clone()),
                "signal" => {
                    let p = &v["payload"];
                    if let Some(kind) = p["description"]["type"].as_str() {
                        (kind.into(), Value::Null)
                    } else {
                        ("candidate".into(), Value::Null)
                    }
                }
                other => (other.into(), Value::Null),
            },
            Dialect::Plain => match v["type"].as_str().unwrap_or("") {
                "login" => ("joined".into(), Value::Null),
                other => (other.into(), Value::Null),
            },
            Dialect::Socketio => match v[0].as_str().unwrap_or("") {
                "created" | "joined" => ("joined".into(), Value::Null),
                "full" => ("error".into(), Value::Null),
                "message" => (v[1]["type"].as_str().unwrap_or("").into(), Value::Null),
                other => (other.into(), Value::Null),
            },
            Dialect::Echo => ("echo".into(), Value::Null),
        }
    }

    fn check_done(&self, neg: &mut Negotiation) {
        let complete = neg.candidates >= CANDIDATES && (!self.offers() || neg.got_answer);
        if complete && !neg.done {
            neg.done = true;
            let pair = self.pair();
            // The second side to finish completes the pair.
            if self.pair_done[pair].fetch_add(1, Ordering::Relaxed) == 1 {
                let start = self.pair_start[pair].load(Ordering::Relaxed);
                let us = nanos(self.t0).saturating_sub(start) / 1000;
                self.shared.negotiation.lock().expect("lock").record_us(us);
                self.shared.negotiated.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The negotiation's host candidates, serialized once.
static CANDIDATE_JSON: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    (0..CANDIDATES)
        .map(|n| {
            json!({"candidate": format!("candidate:{n} 1 udp 2122260223 192.0.2.{n} 5{n:04} typ host generation 0 ufrag abcd network-id 1"),
                   "sdpMid": "0", "sdpMLineIndex": 0})
            .to_string()
        })
        .collect()
});

/// What a relayed offer, answer or candidate is, read off the text without parsing it
/// (a 3 KB offer parsed into a `Value` per message slowed the generator in the burst);
/// `None` for everything else, which is parsed.
fn quick_kind(dialect: Dialect, text: &str) -> Option<&'static str> {
    let kind = match dialect {
        Dialect::Native => {
            if !text.starts_with(r#"{"type":"signal""#) {
                return None;
            }
            if text.contains(r#""description":{"type":"offer""#) {
                "offer"
            } else if text.contains(r#""description":{"type":"answer""#) {
                "answer"
            } else {
                "candidate"
            }
        }
        Dialect::Plain => {
            let at = text.find(r#""type":""#)? + 8;
            let rest = &text[at..];
            let kind = &rest[..rest.find('"')?];
            ["offer", "answer", "candidate"]
                .into_iter()
                .find(|k| *k == kind)?
        }
        Dialect::Socketio | Dialect::Echo => return None,
    };
    Some(kind)
}
