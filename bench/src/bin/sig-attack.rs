//! Signaling and HTTPS under attack: what one hostile, unauthenticated client costs the
//! server, and whether a legitimate pair is still served meanwhile (issue 16, items 1-6).
//! Each scenario prints one human line on stderr and one JSON line on stdout, and the tool
//! exits non-zero when it fails.
//!
//! Throughout every attack a legitimate pair, from its own source address, opens two fresh
//! native `/ws` sockets every 200 ms, joins them to a fresh room (join -> `welcome`, each)
//! and relays a signal A -> B every 50 ms, four per pair. PASS: every socket of the pair
//! connected and welcomed in under 1 s, every relay in under 100 ms, no failure of the
//! pair, no signaling socket left open on the server once everyone has gone, and the
//! attack held to what the server promises where the scenario can tell (`contained`).
//! The server's RSS is read from `/proc` before, at its peak during, and after; its open
//! sockets and file descriptors from the admin listener's `/metrics`.
//!
//! - `sio-oversize`: socket.io over WebSocket, after joining a room, one
//!   `42["message",[0,0,0,...]]` frame of up to 60 MiB, again and again.
//! - `https-held`: connections to the HTTPS port that stay silent after TCP accept, or
//!   send the HTTP/2 preface after TLS and nothing more, or open HTTP/2, make one request
//!   and stay idle (answering pings); each reconnects when the server closes it.
//! - `sio-slot-leak`: engine.io polling handshakes, each followed by one POST of `40` and
//!   `1` (connect, then close), many times.
//! - `ping-flood`: a native `/ws` client writing tiny ping frames as fast as it can, with a
//!   binary frame now and then; it reconnects when closed.
//! - `source-network`: many addresses of one network (an IPv6 /64) each opening `/ws`
//!   sockets that join and stay.
//! - `slow-reader`: a member that never reads while the other member of its room sends it
//!   large signals; once it is evicted, again in a new room.
//! - `half-message`: clients that begin a fragmented text message, never finish it, and
//!   send a ping every second.
//!
//! The attacker speaks WebSocket, HTTP/1.1 and HTTP/2 frame by frame (the small codecs at
//! the end of this file), so that it can send what no well-behaved client library would.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use switchboard_bench::percentiles::Latency;
use switchboard_bench::procstat;
use switchboard_bench::wss::tcp_from;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

#[derive(Parser, Debug, Clone)]
#[command(about = "Signaling and HTTPS under attack, beside a legitimate pair")]
struct Args {
    /// The HTTPS listener: the legitimate pair's, and by default the attacker's.
    #[arg(long, default_value = "127.0.0.1:18443")]
    server: SocketAddr,
    /// Where the attacker connects when not to --server (the server's IPv6 address).
    #[arg(long)]
    attack_server: Option<SocketAddr>,
    /// The server's certificate (PEM): the self-signed one in its state_dir.
    #[arg(long)]
    ca: PathBuf,
    /// The server's admin listener, for /metrics.
    #[arg(long, default_value = "127.0.0.1:9478")]
    admin: SocketAddr,
    /// The server's PID, for its RSS.
    #[arg(long)]
    server_pid: u32,
    /// A name for the server under test, copied into the output.
    #[arg(long, default_value = "server")]
    label: String,
    /// The legitimate pair's source address.
    #[arg(long, default_value = "127.0.0.2")]
    legit_source: IpAddr,
    /// The attacker's source address (`source-network` uses its own).
    #[arg(long, default_value = "127.0.0.3")]
    attack_source: IpAddr,
    /// Seconds between the server closing the last socket after the attack and the last
    /// RSS reading.
    #[arg(long, default_value_t = 2.0)]
    settle_secs: f64,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug, Clone)]
enum Scenario {
    /// socket.io: after joining a room, one `42["message",[0,0,...]]` frame of --bytes.
    SioOversize {
        #[arg(long, default_value_t = 100)]
        attempts: usize,
        #[arg(long, default_value_t = 60 << 20)]
        bytes: usize,
        /// Attempts per second (0: one after the other, as fast as they go).
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
    },
    /// Connections to the HTTPS port that make no request, or one and then idle.
    HttpsHeld {
        #[arg(long, value_enum)]
        mode: Held,
        /// Connections in flight at once; each reconnects when the server closes it.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// New connections per second, at most.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        #[arg(long, default_value_t = 20.0)]
        secs: f64,
        /// The most the server should hold at once (https.max_connections_per_source).
        #[arg(long)]
        expect_cap: Option<usize>,
    },
    /// engine.io polling handshakes, each followed by a POST of `40` then `1`.
    SioSlotLeak {
        #[arg(long, default_value_t = 2000)]
        cycles: usize,
        /// Keep-alive connections making them.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Cycles per second, all connections together (0: as fast as they go).
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
    },
    /// Ping frames as fast as the socket takes them, and a binary frame now and then.
    PingFlood {
        #[arg(long, default_value_t = 15.0)]
        secs: f64,
        /// A binary frame after every this many pings (0: none).
        #[arg(long, default_value_t = 100_000)]
        binary_every: u64,
    },
    /// Many addresses of one network, each opening /ws sockets that join and stay.
    SourceNetwork {
        /// The network the addresses are taken from (every address in it must be bindable).
        #[arg(long, default_value = "2001:db8:1::/64")]
        network: String,
        #[arg(long, default_value_t = 1000)]
        addresses: usize,
        #[arg(long, default_value_t = 2)]
        per_address: usize,
        /// Seconds the sockets that were let in are held.
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// The most sockets the server should let the whole network hold.
        #[arg(long)]
        expect_cap: Option<usize>,
    },
    /// A member that never reads while its room sends it large signals.
    SlowReader {
        #[arg(long, default_value_t = 15.0)]
        secs: f64,
        /// Bytes of each signal (under signaling.max_message_bytes).
        #[arg(long, default_value_t = 60_000)]
        bytes: usize,
    },
    /// Clients that begin a fragmented message, never finish it, and keep sending pings.
    HalfMessage {
        #[arg(long, default_value_t = 40)]
        clients: usize,
        #[arg(long, default_value_t = 60_000)]
        fragment_bytes: usize,
        #[arg(long, default_value_t = 1000)]
        ping_ms: u64,
        #[arg(long, default_value_t = 65.0)]
        secs: f64,
        /// Seconds within which the server should close every one of them.
        #[arg(long)]
        expect_close_s: Option<f64>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Held {
    /// TCP only; nothing is sent.
    Silent,
    /// TLS, then `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n` and nothing more.
    Preface,
    /// HTTP/2: preface, settings, one GET /healthz, then idle (pings answered).
    H2Idle,
}

/// The pass conditions of the legitimate pair.
const JOIN_LIMIT: Duration = Duration::from_secs(1);
const RELAY_LIMIT: Duration = Duration::from_millis(100);
/// The pair's rhythm: a fresh pair every 200 ms, a signal every 50 ms, four per pair.
const PAIR_PERIOD: Duration = Duration::from_millis(200);
const RELAY_PERIOD: Duration = Duration::from_millis(50);
const RELAYS_PER_PAIR: u32 = 4;
/// Pairs still running when the next is due that make the pair skip a turn (a failure).
const PAIRS_IN_FLIGHT: usize = 10;
/// A connection the server closes within this long after it was opened was refused.
const REFUSED_WITHIN: Duration = Duration::from_millis(500);

fn main() -> Result<()> {
    let args = Args::parse();
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(args))?;
    runtime.shutdown_background();
    println!("{}", report.json);
    if !report.pass {
        eprintln!("error: {}", report.verdict);
        std::process::exit(1);
    }
    Ok(())
}

/// Thousands of sockets need more than the usual 1,024 descriptors.
fn raise_fd_limit() {
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// What the run printed, and whether it passed.
struct Report {
    json: Value,
    pass: bool,
    verdict: String,
}

/// What an attack did, and what the attacker got.
struct Attack {
    /// The attack's size, for people ("100 x 60 MiB socket.io messages").
    size: String,
    /// What the attacker got, for people.
    got: String,
    /// The attack's parameters and outcome, for programs.
    json: Value,
    /// Whether the server held the attacker to what it promises; `None` where the
    /// scenario cannot tell.
    contained: Option<bool>,
}

/// What every part of the run shares.
struct Ctx {
    args: Args,
    attack_server: SocketAddr,
    /// TLS offering HTTP/1.1 (WebSocket upgrades, engine.io polling).
    http1: TlsConnector,
    /// TLS offering h2.
    h2: TlsConnector,
    /// The legitimate pair's TLS.
    ws: Connector,
    /// Makes room names unique to this run.
    run: String,
}

impl Ctx {
    fn new(args: Args) -> Result<Ctx> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in load_certs(&args.ca)? {
            roots.add(cert)?;
        }
        let roots = Arc::new(roots);
        let config = |alpn: &[&[u8]]| -> Result<Arc<rustls::ClientConfig>> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(Arc::clone(&roots))
                .with_no_client_auth();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(config))
        };
        Ok(Ctx {
            attack_server: args.attack_server.unwrap_or(args.server),
            http1: TlsConnector::from(config(&[b"http/1.1"])?),
            h2: TlsConnector::from(config(&[b"h2"])?),
            ws: Connector::Rustls(config(&[])?),
            run: format!("{:x}", std::process::id()),
            args,
        })
    }

    /// A TLS connection of the attacker's from `source`; `Err` carries how the server
    /// refused it.
    async fn attack_tls(
        &self,
        source: IpAddr,
        connector: &TlsConnector,
    ) -> Result<std::result::Result<Tls, String>> {
        let tcp = tcp_from(source, self.attack_server)
            .await
            .context("connecting")?;
        Ok(connector
            .connect(localhost(), tcp)
            .await
            .map_err(|e| format!("closed before TLS ({})", io_kind(&e))))
    }

    /// A WebSocket of the attacker's from `source` at `path`; `Err` carries how the
    /// server refused it.
    async fn attack_ws(
        &self,
        source: IpAddr,
        path: &str,
    ) -> Result<std::result::Result<RawWs, String>> {
        let mut tls = match self.attack_tls(source, &self.http1).await? {
            Ok(tls) => tls,
            Err(refused) => return Ok(Err(refused)),
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        if let Err(e) = put(&mut tls, request.as_bytes()).await {
            return Ok(Err(format!("closed at the upgrade ({})", io_kind(&e))));
        }
        let mut buf = Vec::new();
        let response = match read_response(&mut tls, &mut buf).await {
            Ok(response) => response,
            Err(e) => return Ok(Err(format!("closed at the upgrade ({})", classify(&e)))),
        };
        if response.status != 101 {
            return Ok(Err(refused_with(&response)));
        }
        Ok(Ok(Frames { io: tls, buf }))
    }
}

fn load_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .with_context(|| format!("failed to read the certificate {}", path.display()))?
        .map(|c| c.with_context(|| format!("bad certificate in {}", path.display())))
        .collect()
}

/// The name every attacker connection verifies: the self-signed certificate has it
/// whichever address the server is reached at.
fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("a valid DNS name")
}

async fn run(args: Args) -> Result<Report> {
    let ctx = Arc::new(Ctx::new(args)?);
    let pid = ctx.args.server_pid;
    // One pair first: the server's TLS and pools are warm before the baseline, and a
    // server that cannot serve a pair at all is not worth attacking.
    let warm = Arc::new(Mutex::new(LegitStats::default()));
    pair_cycle(&ctx, &format!("warm-{}", ctx.run), &warm)
        .await
        .context("a legitimate pair failed before the attack")?;
    let before = rss_kb(pid)?;
    let metrics_before = scrape(ctx.args.admin).await.ok();
    let observer = Observer::start(Arc::clone(&ctx));
    let attack = match ctx.args.scenario.clone() {
        Scenario::SioOversize {
            attempts,
            bytes,
            rate,
        } => sio_oversize(&ctx, attempts, bytes, rate).await,
        Scenario::HttpsHeld {
            mode,
            connections,
            rate,
            secs,
            expect_cap,
        } => {
            let held = HeldArgs {
                mode,
                connections,
                rate,
                secs,
                expect_cap,
            };
            https_held(&ctx, held).await
        }
        Scenario::SioSlotLeak {
            cycles,
            concurrency,
            rate,
        } => sio_slot_leak(&ctx, cycles, concurrency, rate).await,
        Scenario::PingFlood { secs, binary_every } => ping_flood(&ctx, secs, binary_every).await,
        Scenario::SourceNetwork {
            network,
            addresses,
            per_address,
            secs,
            expect_cap,
        } => {
            let net = NetworkArgs {
                network,
                addresses,
                per_address,
                secs,
                expect_cap,
            };
            source_network(&ctx, net).await
        }
        Scenario::SlowReader { secs, bytes } => slow_reader(&ctx, secs, bytes).await,
        Scenario::HalfMessage {
            clients,
            fragment_bytes,
            ping_ms,
            secs,
            expect_close_s,
        } => {
            let half = HalfArgs {
                clients,
                fragment_bytes,
                ping: Duration::from_millis(ping_ms),
                secs,
                expect_close_s,
            };
            half_message(&ctx, half).await
        }
    };
    let (legit, peak) = observer.stop()?;
    let attack = attack?;
    let peak = peak.max(before);
    let at_end = rss_kb(pid)?;
    // Every socket of the attack and of the pair is closed on this side by now: the server
    // should count none open soon.
    let (open_after, closed_in) = wait_closed(ctx.args.admin).await;
    tokio::time::sleep(Duration::from_secs_f64(ctx.args.settle_secs)).await;
    let after = rss_kb(pid)?;
    let metrics_after = scrape(ctx.args.admin).await.ok();
    let fds = |m: &Option<BTreeMap<String, f64>>| {
        m.as_ref()
            .and_then(|m| m.get("process_open_fds"))
            .map(|v| *v as u64)
    };
    let (fds_before, fds_after) = (fds(&metrics_before), fds(&metrics_after));

    let scenario = scenario_name(&ctx.args.scenario);
    let served = legit.failures == 0
        && legit.cycles > 0
        && legit.arrive.max_us() < us(JOIN_LIMIT)
        && legit.relay.max_us() < us(RELAY_LIMIT);
    let contained = match (attack.contained, open_after) {
        (Some(false), _) | (_, Some(1..)) => Some(false),
        (Some(true), _) => Some(true),
        (None, _) => None,
    };
    let pass = served && contained != Some(false);
    let verdict = if pass {
        "PASS".to_owned()
    } else {
        let mut why = Vec::new();
        if !served {
            why.push("the legitimate pair was not served as promised".to_owned());
        }
        if contained == Some(false) {
            why.push("the attack was not contained".to_owned());
        }
        format!("FAIL ({})", why.join("; "))
    };
    let mb = |kb: u64| kb as f64 * 1024.0 / 1e6;
    eprintln!(
        "{} {scenario}: {}: RSS {:.1} -> peak {:.1} -> {:.1} MB, fds {} -> {}; attacker got {}; \
         legitimate pair: {} pairs, connect p50 {} max {} ms, join p50 {} p99 {} max {} ms, \
         relay p50 {} p99 {} max {} ms, {} failed{}: {verdict}",
        ctx.args.label,
        attack.size,
        mb(before),
        mb(peak),
        mb(after),
        fds_before.map_or("?".into(), |n| n.to_string()),
        fds_after.map_or("?".into(), |n| n.to_string()),
        attack.got,
        legit.cycles,
        ms(legit.connect.quantile_us(0.5)),
        ms(legit.connect.max_us()),
        ms(legit.join.quantile_us(0.5)),
        ms(legit.join.quantile_us(0.99)),
        ms(legit.join.max_us()),
        ms(legit.relay.quantile_us(0.5)),
        ms(legit.relay.quantile_us(0.99)),
        ms(legit.relay.max_us()),
        legit.failures,
        legit
            .first_failure
            .as_ref()
            .map_or(String::new(), |f| format!(" (first: {f})")),
    );
    let json = json!({
        "tool": "sig-attack", "scenario": scenario, "server": ctx.args.label,
        "attack": attack.json, "size": attack.size, "got": attack.got,
        "rss_before_kb": before, "rss_peak_kb": peak, "rss_end_kb": at_end, "rss_after_kb": after,
        "fds_before": fds_before, "fds_after": fds_after,
        "open_after": open_after, "closed_in_s": closed_in.as_secs_f64(),
        "legit": legit.json(),
        "contained": contained, "pass": pass,
    });
    Ok(Report {
        json,
        pass,
        verdict: format!("{scenario}: {verdict}"),
    })
}

fn scenario_name(scenario: &Scenario) -> String {
    match scenario {
        Scenario::SioOversize { .. } => "sio-oversize".into(),
        Scenario::HttpsHeld { mode, .. } => match mode {
            Held::Silent => "https-held-silent".into(),
            Held::Preface => "https-held-preface".into(),
            Held::H2Idle => "https-held-h2-idle".into(),
        },
        Scenario::SioSlotLeak { .. } => "sio-slot-leak".into(),
        Scenario::PingFlood { .. } => "ping-flood".into(),
        Scenario::SourceNetwork { .. } => "source-network".into(),
        Scenario::SlowReader { .. } => "slow-reader".into(),
        Scenario::HalfMessage { .. } => "half-message".into(),
    }
}

fn rss_kb(pid: u32) -> Result<u64> {
    procstat::process_rss_kb(pid).context("the server is gone")
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn ms(us: u64) -> String {
    format!("{:.1}", us as f64 / 1000.0)
}

/// Polls the server's count of open signaling sockets until it is 0 (15 s at most): the
/// count then, and how long it took.
async fn wait_closed(admin: SocketAddr) -> (Option<u64>, Duration) {
    let t0 = Instant::now();
    let mut open = None;
    while t0.elapsed() < Duration::from_secs(15) {
        open = scrape(admin)
            .await
            .ok()
            .and_then(|m| m.get("switchboard_signaling_open_connections").copied())
            .map(|v| v as u64);
        if open == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (open, t0.elapsed())
}

// ---- The legitimate pair -------------------------------------------------------------

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the legitimate pair saw.
#[derive(Default)]
struct LegitStats {
    /// Pairs that went through (connect, join, four relays).
    cycles: u64,
    /// TCP, TLS and the WebSocket upgrade, per socket.
    connect: Latency,
    /// `join` sent -> `welcome` read, per socket.
    join: Latency,
    /// Both: from the connect to the `welcome`, per socket.
    arrive: Latency,
    /// A's signal sent -> B's read.
    relay: Latency,
    failures: u64,
    first_failure: Option<String>,
}

impl LegitStats {
    fn fail(&mut self, why: String) {
        self.failures += 1;
        self.first_failure.get_or_insert(why);
    }

    fn json(&self) -> Value {
        json!({
            "pairs": self.cycles, "failures": self.failures, "first_failure": self.first_failure,
            "connect": self.connect.json(), "join": self.join.json(),
            "arrive": self.arrive.json(), "relay": self.relay.json(),
            "joins": self.join.count(), "relays": self.relay.count(),
        })
    }
}

/// The legitimate pair and the RSS sampler, on a thread of their own so that an attack
/// that keeps the tool's main thread busy does not delay them.
struct Observer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<(LegitStats, u64)>>,
}

impl Observer {
    fn start(ctx: Arc<Ctx>) -> Observer {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let sampler = tokio::spawn(peak_rss(ctx.args.server_pid, Arc::clone(&stop)));
                    let stats = keep_pairing(&ctx, &stop).await;
                    let peak = sampler.await??;
                    Ok((stats, peak))
                })
            }
        });
        Observer { stop, thread }
    }

    /// Stops the pair (the pairs under way finish) and the sampler: what the pair saw, and
    /// the server's peak RSS.
    fn stop(self) -> Result<(LegitStats, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the observer thread panicked"))?
    }
}

async fn peak_rss(pid: u32, stop: Arc<AtomicBool>) -> Result<u64> {
    let mut peak = 0;
    loop {
        peak = peak.max(rss_kb(pid)?);
        if stop.load(Ordering::Relaxed) {
            return Ok(peak);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh pair every `PAIR_PERIOD` until `stop`.
async fn keep_pairing(ctx: &Arc<Ctx>, stop: &AtomicBool) -> LegitStats {
    let stats = Arc::new(Mutex::new(LegitStats::default()));
    let mut tick = tokio::time::interval(PAIR_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pairs = JoinSet::new();
    let mut n = 0u64;
    loop {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        while pairs.try_join_next().is_some() {}
        if pairs.len() >= PAIRS_IN_FLIGHT {
            let why = format!("{PAIRS_IN_FLIGHT} pairs still under way when the next was due");
            stats.lock().expect("lock").fail(why);
            continue;
        }
        let (ctx, stats) = (Arc::clone(ctx), Arc::clone(&stats));
        let room = format!("legit-{}-{n}", ctx.run);
        n += 1;
        pairs.spawn(async move {
            let outcome =
                tokio::time::timeout(Duration::from_secs(10), pair_cycle(&ctx, &room, &stats))
                    .await;
            let mut stats = stats.lock().expect("lock");
            match outcome {
                Ok(Ok(())) => stats.cycles += 1,
                Ok(Err(e)) => stats.fail(format!("{e:#}")),
                Err(_) => stats.fail("a pair took over 10 s".into()),
            }
        });
    }
    while pairs.join_next().await.is_some() {}
    std::mem::take(&mut *stats.lock().expect("lock"))
}

/// One pair: two fresh sockets join `room`, then A signals B four times, 50 ms apart.
async fn pair_cycle(ctx: &Ctx, room: &str, stats: &Mutex<LegitStats>) -> Result<()> {
    let (a, b) = tokio::join!(legit_open(ctx), legit_open(ctx));
    let (mut a, connect_a) = a.context("A connecting")?;
    let (mut b, connect_b) = b.context("B connecting")?;
    let (_, join_a) = legit_join(&mut a, room).await.context("A joining")?;
    let (welcome, join_b) = legit_join(&mut b, room).await.context("B joining")?;
    {
        let mut stats = stats.lock().expect("lock");
        stats.connect.record_us(us(connect_a));
        stats.connect.record_us(us(connect_b));
        stats.join.record_us(us(join_a));
        stats.join.record_us(us(join_b));
        stats.arrive.record_us(us(connect_a + join_a));
        stats.arrive.record_us(us(connect_b + join_b));
    }
    let to = welcome["peer_id"]
        .as_str()
        .context("a welcome without peer_id")?
        .to_owned();
    let start = tokio::time::Instant::now();
    for n in 0..RELAYS_PER_PAIR {
        tokio::time::sleep_until(start + RELAY_PERIOD * n).await;
        let signal = json!({"type": "signal", "to": to, "payload": {"n": n}});
        let sent = Instant::now();
        a.send(Message::text(signal.to_string()))
            .await
            .context("A signalling")?;
        let got = legit_expect(&mut b, "signal", Duration::from_secs(2))
            .await
            .context("B waiting for A's signal")?;
        let took = sent.elapsed();
        if got["payload"]["n"] != json!(n) {
            bail!("B got signal {} when {n} was sent", got["payload"]["n"]);
        }
        stats.lock().expect("lock").relay.record_us(us(took));
    }
    let _ = a.close(None).await;
    let _ = b.close(None).await;
    Ok(())
}

async fn legit_open(ctx: &Ctx) -> Result<(Ws, Duration)> {
    let t0 = Instant::now();
    let opened = async {
        let tcp = tcp_from(ctx.args.legit_source, ctx.args.server).await?;
        let url = format!("wss://{}/ws", ctx.args.server);
        let (ws, _) =
            tokio_tungstenite::client_async_tls_with_config(url, tcp, None, Some(ctx.ws.clone()))
                .await?;
        anyhow::Ok(ws)
    };
    let ws = tokio::time::timeout(Duration::from_secs(5), opened)
        .await
        .context("no connection in 5 s")??;
    Ok((ws, t0.elapsed()))
}

async fn legit_join(ws: &mut Ws, room: &str) -> Result<(Value, Duration)> {
    let t0 = Instant::now();
    ws.send(Message::text(
        json!({"type": "join", "room": room}).to_string(),
    ))
    .await?;
    let welcome = legit_expect(ws, "welcome", Duration::from_secs(5)).await?;
    Ok((welcome, t0.elapsed()))
}

/// The next native message of `kind`; an `error` message or a close is an error.
async fn legit_expect(ws: &mut Ws, kind: &str, limit: Duration) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .with_context(|| format!("no {kind} in {limit:?}"))?;
        match msg {
            None => bail!("closed before {kind}"),
            Some(Err(e)) => return Err(e).with_context(|| format!("waiting for {kind}")),
            Some(Ok(Message::Text(text))) => {
                let v: Value = serde_json::from_str(text.as_str())?;
                match v["type"].as_str() {
                    Some(k) if k == kind => return Ok(v),
                    Some("error") => bail!("error {}: {}", v["code"], v["message"]),
                    _ => {}
                }
            }
            Some(Ok(Message::Close(frame))) => bail!("closed before {kind}: {frame:?}"),
            Some(Ok(_)) => {}
        }
    }
}

// ---- What the attacker got -----------------------------------------------------------

/// Outcomes by kind, counted.
#[derive(Default)]
struct Tally(Mutex<BTreeMap<String, u64>>);

impl Tally {
    fn add(&self, what: impl Into<String>) {
        *self.0.lock().expect("lock").entry(what.into()).or_default() += 1;
    }

    fn get(&self, what: &str) -> u64 {
        self.0.lock().expect("lock").get(what).copied().unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.0.lock().expect("lock").values().sum()
    }

    fn json(&self) -> Value {
        json!(*self.0.lock().expect("lock"))
    }

    /// "what x n, ..." with the most frequent first.
    fn summary(&self) -> String {
        let counts = self.0.lock().expect("lock");
        let mut counts: Vec<_> = counts.iter().collect();
        counts.sort_by(|a, b| b.1.cmp(a.1));
        counts
            .iter()
            .map(|(what, n)| format!("{what} x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The error kinds a client can tell apart, by name.
fn io_kind(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionReset => "reset".into(),
        ErrorKind::UnexpectedEof => "eof".into(),
        ErrorKind::BrokenPipe => "broken pipe".into(),
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::ConnectionAborted => "aborted".into(),
        ErrorKind::TimedOut => "timed out".into(),
        ErrorKind::AddrNotAvailable => "address not available".into(),
        kind => format!("{kind:?}").to_lowercase(),
    }
}

/// An error's I/O kind when it has one, else its text.
fn classify(e: &anyhow::Error) -> String {
    e.chain()
        .find_map(|cause| cause.downcast_ref::<std::io::Error>())
        .map_or_else(|| format!("{e:#}"), io_kind)
}

fn secs_summary(latency: &Latency) -> String {
    if latency.count() == 0 {
        return "-".into();
    }
    let (p50, max) = (latency.quantile_us(0.5), latency.max_us());
    if max < 1_000_000 {
        format!("p50 {} ms, max {} ms", ms(p50), ms(max))
    } else {
        format!(
            "p50 {:.1} s, max {:.1} s",
            p50 as f64 / 1e6,
            max as f64 / 1e6
        )
    }
}

fn secs_json(latency: &Latency) -> Value {
    json!({
        "count": latency.count(),
        "p50_s": latency.quantile_us(0.5) as f64 / 1e6,
        "max_s": latency.max_us() as f64 / 1e6,
    })
}

// ---- 1. socket.io oversized messages -------------------------------------------------

const SIO_WS: &str = "/socket.io/?EIO=4&transport=websocket";

/// Until a text message that `want`s, within `limit`.
async fn sio_expect(ws: &mut RawWs, want: impl Fn(&str) -> bool, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if want(&ws.text(left).await?) {
            return Ok(());
        }
    }
}

async fn sio_oversize(ctx: &Ctx, attempts: usize, bytes: usize, rate: f64) -> Result<Attack> {
    let pacer = (rate > 0.0).then(|| Pacer::new(rate));
    let tally = Tally::default();
    // From the frame's header to the server's answer, and what the server took meanwhile.
    let mut answered = Latency::new();
    let mut taken = Vec::new();
    let t0 = Instant::now();
    let t = Duration::from_secs(5);
    for i in 0..attempts {
        if let Some(pacer) = &pacer {
            pacer.wait().await;
        }
        let mut ws = match ctx.attack_ws(ctx.args.attack_source, SIO_WS).await? {
            Ok(ws) => ws,
            Err(refused) => {
                tally.add(format!("refused: {refused}"));
                continue;
            }
        };
        // engine.io's open packet, socket.io's connect, then a room.
        sio_expect(&mut ws, |m| m.starts_with('0'), t).await?;
        ws.send(OP_TEXT, b"40").await?;
        sio_expect(&mut ws, |m| m.starts_with("40"), t).await?;
        let join = format!(r#"42["create or join","atk-{}-{i}"]"#, ctx.run);
        ws.send(OP_TEXT, join.as_bytes()).await?;
        sio_expect(&mut ws, |m| m.contains(r#""created""#), t).await?;
        // One frame whose header announces all of it; the payload follows in chunks while
        // a reader watches for the server's answer.
        let (mut reader, mut writer) = ws.split();
        let t0 = Instant::now();
        let watcher = tokio::spawn(async move {
            let end = tokio::time::timeout(Duration::from_secs(10), reader.ending()).await;
            (
                end.unwrap_or_else(|_| "no answer in 10 s".into()),
                t0.elapsed(),
            )
        });
        let payload = SioPayload::new(bytes);
        let mut written = 0;
        if put(&mut writer, &frame_header(OP_TEXT, true, payload.len))
            .await
            .is_ok()
        {
            let mut chunk = Vec::with_capacity(256 << 10);
            while written < payload.len && !watcher.is_finished() {
                payload.chunk(written, 256 << 10, &mut chunk);
                let wrote = tokio::time::timeout(t, put(&mut writer, &chunk)).await;
                if !matches!(wrote, Ok(Ok(()))) {
                    break;
                }
                written += chunk.len();
            }
        }
        let (end, took) = watcher.await?;
        if written == payload.len {
            tally.add(format!("all {} bytes taken, then {end}", payload.len));
        } else {
            tally.add(end);
        }
        answered.record_us(us(took));
        taken.push(written);
    }
    taken.sort_unstable();
    let most = taken.last().copied().unwrap_or(0);
    let median = taken.get(taken.len() / 2).copied().unwrap_or(0);
    let mib = |n: usize| n as f64 / f64::from(1 << 20);
    let all_taken = tally
        .0
        .lock()
        .expect("lock")
        .keys()
        .any(|k| k.starts_with("all ") || k.starts_with("no answer"));
    Ok(Attack {
        size: format!(
            "{attempts} x {:.0} MiB socket.io messages in {:.2} s",
            mib(bytes).round(),
            t0.elapsed().as_secs_f64()
        ),
        got: format!(
            "{}; answered after {}; written before the close: median {:.2} MiB, most {:.2} MiB",
            tally.summary(),
            secs_summary(&answered),
            mib(median),
            mib(most)
        ),
        json: json!({
            "attempts": attempts, "bytes": bytes, "rate": rate, "outcomes": tally.json(),
            "answered": secs_json(&answered),
            "written_median_bytes": median, "written_most_bytes": most,
        }),
        contained: Some(!all_taken && tally.total() == attempts as u64),
    })
}

/// `42["message",[0,0,...,0]]` of about `len` bytes, made a chunk at a time.
struct SioPayload {
    len: usize,
}

impl SioPayload {
    const HEAD: &'static [u8] = b"42[\"message\",[";
    const TAIL: &'static [u8] = b"0]]";

    fn new(bytes: usize) -> SioPayload {
        // The head's length is even, so "0" falls on even offsets and "," on odd ones.
        let pairs = bytes.saturating_sub(Self::HEAD.len() + Self::TAIL.len()) / 2;
        SioPayload {
            len: Self::HEAD.len() + 2 * pairs + Self::TAIL.len(),
        }
    }

    /// Bytes `from..from + at_most` (masked) into `out`.
    fn chunk(&self, from: usize, at_most: usize, out: &mut Vec<u8>) {
        out.clear();
        let tail = self.len - Self::TAIL.len();
        for at in from..(from + at_most).min(self.len) {
            out.push(if at < Self::HEAD.len() {
                Self::HEAD[at]
            } else if at >= tail {
                Self::TAIL[at - tail]
            } else if at % 2 == 0 {
                b'0'
            } else {
                b','
            });
        }
        mask(out, from);
    }
}

// ---- 2. The HTTPS port held open -----------------------------------------------------

struct HeldArgs {
    mode: Held,
    connections: usize,
    rate: f64,
    secs: f64,
    expect_cap: Option<usize>,
}

/// What the held connections share.
#[derive(Default)]
struct Holding {
    tally: Tally,
    attempts: AtomicU64,
    now: AtomicUsize,
    most: AtomicUsize,
    /// From the connect to the server's close, of the connections the server held.
    held_for: Mutex<Latency>,
}

/// A connection counted as held while this lives.
struct Hold<'a>(&'a Holding);

impl Holding {
    fn hold(&self) -> Hold<'_> {
        let now = self.now.fetch_add(1, Ordering::AcqRel) + 1;
        self.most.fetch_max(now, Ordering::AcqRel);
        Hold(self)
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::AcqRel);
    }
}

/// New connections at most `rate` a second, whoever asks.
struct Pacer {
    next: Mutex<Instant>,
    period: Duration,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        Pacer {
            next: Mutex::new(Instant::now()),
            period: Duration::from_secs_f64(1.0 / rate.max(1e-3)),
        }
    }

    async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().expect("lock");
            let at = (*next).max(Instant::now());
            *next = at + self.period;
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

async fn https_held(ctx: &Arc<Ctx>, held: HeldArgs) -> Result<Attack> {
    let end = tokio::time::Instant::now() + Duration::from_secs_f64(held.secs);
    let state = Arc::new(Holding::default());
    let pacer = Arc::new(Pacer::new(held.rate));
    let mut slots = JoinSet::new();
    for _ in 0..held.connections {
        let (ctx, state, pacer) = (Arc::clone(ctx), Arc::clone(&state), Arc::clone(&pacer));
        let mode = held.mode;
        slots.spawn(async move {
            loop {
                pacer.wait().await;
                if tokio::time::Instant::now() >= end {
                    return;
                }
                state.attempts.fetch_add(1, Ordering::Relaxed);
                match tokio::time::timeout_at(end, hold_one(&ctx, mode, &state)).await {
                    Err(_) => state.tally.add("open at the end"),
                    Ok(Ok(outcome)) => state.tally.add(outcome),
                    Ok(Err(e)) => {
                        state.tally.add(classify(&e));
                        // A local failure (ports, descriptors): not a reason to spin.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    while slots.join_next().await.is_some() {}
    let attempts = state.attempts.load(Ordering::Relaxed);
    let most = state.most.load(Ordering::Relaxed);
    let held_for = std::mem::take(&mut *state.held_for.lock().expect("lock"));
    let what = match held.mode {
        Held::Silent => "silent TCP connections",
        Held::Preface => "TLS connections sending only the HTTP/2 preface",
        Held::H2Idle => "HTTP/2 connections idle after one request",
    };
    Ok(Attack {
        size: format!(
            "{attempts} {what} over {:.0} s, {} at a time",
            held.secs, held.connections
        ),
        got: format!(
            "{}; at most {most} held at once; held ones closed by the server after {}",
            state.tally.summary(),
            secs_summary(&held_for)
        ),
        json: json!({
            "mode": format!("{:?}", held.mode), "attempts": attempts, "connections": held.connections,
            "rate": held.rate, "secs": held.secs, "outcomes": state.tally.json(),
            "held_at_once_most": most, "held_for": secs_json(&held_for),
        }),
        contained: held.expect_cap.map(|cap| most <= cap),
    })
}

/// One connection, from its connect to the server's close: what happened.
async fn hold_one(ctx: &Ctx, mode: Held, state: &Holding) -> Result<String> {
    let t0 = Instant::now();
    let held_from = tokio::time::Instant::from_std(t0 + REFUSED_WITHIN);
    match mode {
        Held::Silent => {
            let mut tcp = tcp_from(ctx.args.attack_source, ctx.attack_server)
                .await
                .context("connecting")?;
            Ok(wait_close(&mut tcp, state, t0, held_from).await)
        }
        Held::Preface => {
            let mut tls = match ctx.attack_tls(ctx.args.attack_source, &ctx.h2).await? {
                Ok(tls) => tls,
                Err(refused) => return Ok(refused),
            };
            put(&mut tls, H2_PREFACE).await?;
            Ok(wait_close(&mut tls, state, t0, held_from).await)
        }
        Held::H2Idle => {
            let tls = match ctx.attack_tls(ctx.args.attack_source, &ctx.h2).await? {
                Ok(tls) => tls,
                Err(refused) => return Ok(refused),
            };
            h2_idle(tls, state, t0, held_from).await
        }
    }
}

/// Reads (and drops) what the server sends until it closes `io`; the connection counts as
/// held from `held_from` on.
async fn wait_close<S: AsyncRead + Unpin>(
    io: &mut S,
    state: &Holding,
    t0: Instant,
    held_from: tokio::time::Instant,
) -> String {
    let mut buf = vec![0u8; 4096];
    let mut hold = None;
    let end = loop {
        tokio::select! {
            read = io.read(&mut buf) => match read {
                Ok(0) => break "eof".to_owned(),
                Ok(_) => {}
                Err(e) => break io_kind(&e),
            },
            () = tokio::time::sleep_until(held_from), if hold.is_none() => {
                hold = Some(state.hold());
            }
        }
    };
    if hold.is_none() {
        return format!("closed at once ({end})");
    }
    state
        .held_for
        .lock()
        .expect("lock")
        .record_us(us(t0.elapsed()));
    format!("held, then closed ({end})")
}

/// HTTP/2: preface, empty settings, GET /healthz; then idle, answering settings and
/// pings, until the server closes the connection.
async fn h2_idle(
    mut tls: Tls,
    state: &Holding,
    t0: Instant,
    held_from: tokio::time::Instant,
) -> Result<String> {
    let mut hello = H2_PREFACE.to_vec();
    hello.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
    hello.extend(h2_frame(
        H2_HEADERS,
        H2_END_STREAM | H2_END_HEADERS,
        1,
        &hpack_get("/healthz"),
    ));
    put(&mut tls, &hello).await?;
    let (mut responded, mut goaway, mut hold) = (false, false, None);
    let mut buf = Vec::new();
    let end = loop {
        tokio::select! {
            frame = h2_next(&mut tls, &mut buf) => match frame {
                Ok(Some((kind, flags, stream, payload))) => match kind {
                    H2_SETTINGS if flags & H2_ACK == 0 => {
                        put(&mut tls, &h2_frame(H2_SETTINGS, H2_ACK, 0, &[])).await?;
                    }
                    H2_PING if flags & H2_ACK == 0 => {
                        put(&mut tls, &h2_frame(H2_PING, H2_ACK, 0, &payload)).await?;
                    }
                    H2_GOAWAY => goaway = true,
                    H2_DATA | H2_HEADERS if stream == 1 && flags & H2_END_STREAM != 0 => {
                        responded = true;
                    }
                    _ => {}
                },
                Ok(None) => break "eof".to_owned(),
                Err(e) => break classify(&e),
            },
            () = tokio::time::sleep_until(held_from), if hold.is_none() && responded => {
                hold = Some(state.hold());
            }
        }
    };
    if !responded {
        return Ok(format!("no response ({end})"));
    }
    if hold.is_none() {
        return Ok(format!("closed at once ({end})"));
    }
    state
        .held_for
        .lock()
        .expect("lock")
        .record_us(us(t0.elapsed()));
    Ok(format!(
        "held, then {}closed ({end})",
        if goaway { "GOAWAY, " } else { "" }
    ))
}

// ---- 3. socket.io slot leaks ---------------------------------------------------------

async fn sio_slot_leak(
    ctx: &Arc<Ctx>,
    cycles: usize,
    concurrency: usize,
    rate: f64,
) -> Result<Attack> {
    let pacer = Arc::new((rate > 0.0).then(|| Pacer::new(rate)));
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Tally::default());
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (ctx, next, tally) = (Arc::clone(ctx), Arc::clone(&next), Arc::clone(&tally));
        let pacer = Arc::clone(&pacer);
        workers.spawn(async move {
            let mut conn: Option<(Tls, Vec<u8>)> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cycles {
                    return;
                }
                if let Some(pacer) = pacer.as_ref() {
                    pacer.wait().await;
                }
                if conn.is_none() {
                    match ctx.attack_tls(ctx.args.attack_source, &ctx.http1).await {
                        Ok(Ok(tls)) => conn = Some((tls, Vec::new())),
                        Ok(Err(refused)) => {
                            tally.add(refused);
                            continue;
                        }
                        Err(e) => {
                            tally.add(classify(&e));
                            continue;
                        }
                    }
                }
                let (tls, buf) = conn.as_mut().expect("connected");
                match connect_then_close(tls, buf, i).await {
                    Ok((outcome, keep)) => {
                        tally.add(outcome);
                        if !keep {
                            conn = None;
                        }
                    }
                    Err(e) => {
                        tally.add(classify(&e));
                        conn = None;
                    }
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let took = t0.elapsed().as_secs_f64();
    // After all that, the attacker's address may still open a socket.io connection: its
    // slots were freed (signaling.max_connections_per_ip is far below the cycles).
    let probe = sio_probe(ctx).await;
    // Each cycle either went through or was refused its session (the address's budget).
    let ok = tally.get("connected and closed") + tally.get("handshake HTTP 429 too_many_sessions");
    Ok(Attack {
        size: format!("{cycles} polling handshakes, each with a POST of 40 then 1, in {took:.2} s"),
        got: format!(
            "{}; a new socket.io connection from its address afterwards: {}",
            tally.summary(),
            probe
                .as_ref()
                .map_or_else(|e| e.clone(), |()| "admitted".into())
        ),
        json: json!({
            "cycles": cycles, "concurrency": concurrency, "rate": rate, "secs": took,
            "outcomes": tally.json(),
            "probe_after": probe.as_ref().map_or_else(|e| e.clone(), |()| "admitted".into()),
        }),
        contained: Some(probe.is_ok() && ok == cycles as u64),
    })
}

/// One engine.io handshake and a POST of `40` (connect) and `1` (close) on `tls`: the
/// outcome, and whether the connection may be used again.
async fn connect_then_close(tls: &mut Tls, buf: &mut Vec<u8>, i: usize) -> Result<(String, bool)> {
    let get = format!(
        "GET /socket.io/?EIO=4&transport=polling&t=a{i} HTTP/1.1\r\nHost: localhost\r\n\r\n"
    );
    put(tls, get.as_bytes()).await?;
    let handshake = read_response(tls, buf).await?;
    let keep = !handshake.closes();
    if handshake.status != 200 {
        return Ok((format!("handshake {}", refused_with(&handshake)), keep));
    }
    let open: Value = handshake
        .body
        .strip_prefix(b"0")
        .and_then(|j| serde_json::from_slice(j).ok())
        .context("a handshake without an open packet")?;
    let sid = open["sid"].as_str().context("an open packet without sid")?;
    let post = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: text/plain;charset=UTF-8\r\nContent-Length: 4\r\n\r\n40\x1e1"
    );
    put(tls, post.as_bytes()).await?;
    let posted = read_response(tls, buf).await?;
    let keep = keep && !posted.closes();
    if posted.status != 200 {
        return Ok((format!("POST HTTP {}", posted.status), keep));
    }
    Ok(("connected and closed".into(), keep))
}

/// A refusal as `HTTP <status> <code>` (the code of the JSON body, when there is one).
fn refused_with(response: &Response) -> String {
    let code = serde_json::from_slice::<Value>(&response.body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    format!("HTTP {} {code}", response.status)
        .trim_end()
        .to_owned()
}

/// Whether the attacker's address can still open a socket.io connection (`Err`: why not).
/// A new session is refused while the address holds its whole session budget (twice
/// `max_connections_per_ip`), and a session its client left holds its slot until engine.io's
/// heartbeat gives up on it (45 s): it is tried again for up to 50 s.
async fn sio_probe(ctx: &Ctx) -> std::result::Result<(), String> {
    let t = Duration::from_secs(5);
    let retry_until = Instant::now() + Duration::from_secs(50);
    let mut ws = loop {
        match ctx.attack_ws(ctx.args.attack_source, SIO_WS).await {
            Ok(Ok(ws)) => break ws,
            Ok(Err(refused))
                if refused.ends_with("too_many_sessions") && Instant::now() < retry_until =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(refused)) => return Err(format!("refused: {refused}")),
            Err(e) => return Err(classify(&e)),
        }
    };
    let connected = async {
        sio_expect(&mut ws, |m| m.starts_with('0'), t).await?;
        ws.send(OP_TEXT, b"40").await?;
        sio_expect(&mut ws, |m| m.starts_with("40") || m.starts_with("44"), t).await?;
        // "44" is a connect error: the middleware refused it.
        anyhow::Ok(())
    };
    connected.await.map_err(|e| format!("{e:#}"))?;
    ws.send(OP_CLOSE, &1000u16.to_be_bytes())
        .await
        .map_err(|e| format!("{e:#}"))
}

// ---- 4. Ping flood -------------------------------------------------------------------

async fn ping_flood(ctx: &Ctx, secs: f64, binary_every: u64) -> Result<Attack> {
    const PINGS_PER_WRITE: usize = 1024;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let tally = Tally::default();
    let pongs = Arc::new(AtomicU64::new(0));
    let (mut pings, mut binaries, mut sockets) = (0u64, 0u64, 0u64);
    let batch = frame(OP_PING, true, b"").repeat(PINGS_PER_WRITE);
    let binary = frame(OP_BINARY, true, &[0xB1; 16]);
    let mut lasted = Latency::new();
    while Instant::now() < end {
        let mut ws = match ctx.attack_ws(ctx.args.attack_source, "/ws").await? {
            Ok(ws) => ws,
            Err(refused) => {
                tally.add(format!("refused: {refused}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        sockets += 1;
        let join = json!({"type": "join", "room": format!("atk-ping-{}-{sockets}", ctx.run)});
        ws.send(OP_TEXT, join.to_string().as_bytes()).await?;
        ws.expect("welcome", Duration::from_secs(5)).await?;
        let (mut reader, mut writer) = ws.split();
        let watcher = tokio::spawn({
            let pongs = Arc::clone(&pongs);
            async move {
                loop {
                    match reader.next().await {
                        Ok(Some(f)) if f.opcode == OP_PONG => {
                            pongs.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Some(f)) if f.opcode == OP_CLOSE => return f.close_text(),
                        Ok(Some(_)) => {}
                        Ok(None) => return "eof".to_owned(),
                        Err(e) => return classify(&e),
                    }
                }
            }
        });
        let t0 = Instant::now();
        let mut since_binary = 0;
        while !watcher.is_finished() && Instant::now() < end {
            let wrote =
                tokio::time::timeout(Duration::from_secs(2), put(&mut writer, &batch)).await;
            if !matches!(wrote, Ok(Ok(()))) {
                break;
            }
            pings += PINGS_PER_WRITE as u64;
            since_binary += PINGS_PER_WRITE as u64;
            if binary_every > 0 && since_binary >= binary_every {
                since_binary = 0;
                if put(&mut writer, &binary).await.is_err() {
                    break;
                }
                binaries += 1;
            }
        }
        if Instant::now() >= end && !watcher.is_finished() {
            tally.add("open at the end");
            watcher.abort();
        } else {
            let closed = tokio::time::timeout(Duration::from_secs(5), watcher).await;
            tally.add(match closed {
                Ok(Ok(how)) => how,
                _ => "no close in 5 s after the writes failed".into(),
            });
            lasted.record_us(us(t0.elapsed()));
        }
    }
    let pongs = pongs.load(Ordering::Relaxed);
    Ok(Attack {
        size: format!("{pings} pings and {binaries} binary frames over {secs:.0} s"),
        got: format!(
            "{pongs} pongs; {sockets} sockets: {}; each lasted {}",
            tally.summary(),
            secs_summary(&lasted)
        ),
        json: json!({
            "secs": secs, "pings": pings, "binaries": binaries, "binary_every": binary_every,
            "pongs": pongs, "sockets": sockets, "outcomes": tally.json(), "lasted": secs_json(&lasted),
        }),
        contained: None,
    })
}

// ---- 5. Many addresses of one network ------------------------------------------------

struct NetworkArgs {
    network: String,
    addresses: usize,
    per_address: usize,
    secs: f64,
    expect_cap: Option<usize>,
}

/// The `i`th address of `network` ("2001:db8:1::/64", "127.0.1.0/24"): scattered over an
/// IPv6 network's host bits, in order in an IPv4 one (from .1).
fn address_in(network: IpAddr, prefix: u8, i: usize) -> IpAddr {
    match network {
        IpAddr::V6(net) => {
            let host_bits = 128 - u32::from(prefix.min(128));
            let mask = if host_bits == 0 {
                0
            } else {
                u128::MAX >> (128 - host_bits)
            };
            let host =
                u128::from(splitmix64(i as u64)) | (u128::from(splitmix64(!(i as u64))) << 64);
            IpAddr::V6(Ipv6Addr::from(
                (u128::from(net) & !mask) | (host & mask).max(1),
            ))
        }
        IpAddr::V4(net) => {
            let host_bits = 32 - u32::from(prefix.min(32));
            let mask = if host_bits == 0 {
                0
            } else {
                u32::MAX >> (32 - host_bits)
            };
            let host = (i as u32 + 1) & mask;
            IpAddr::V4(Ipv4Addr::from((u32::from(net) & !mask) | host))
        }
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

async fn source_network(ctx: &Arc<Ctx>, net: NetworkArgs) -> Result<Attack> {
    let (network, prefix) = net
        .network
        .split_once('/')
        .context("--network must be ADDRESS/PREFIX")?;
    let network: IpAddr = network.parse().context("--network address")?;
    let prefix: u8 = prefix.parse().context("--network prefix")?;
    let end = tokio::time::Instant::now() + Duration::from_secs_f64(net.secs);
    let state = Arc::new(Holding::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut sockets = JoinSet::new();
    for i in 0..net.addresses {
        let source = address_in(network, prefix, i);
        for j in 0..net.per_address {
            let (ctx, state, gate) = (Arc::clone(ctx), Arc::clone(&state), Arc::clone(&gate));
            sockets.spawn(async move {
                let permit = gate.acquire_owned().await.expect("open semaphore");
                state.attempts.fetch_add(1, Ordering::Relaxed);
                let mut ws = match ctx.attack_ws(source, "/ws").await {
                    Ok(Ok(ws)) => ws,
                    Ok(Err(refused)) => return state.tally.add(refused),
                    Err(e) => return state.tally.add(classify(&e)),
                };
                let room = format!("atk-net-{}-{i}-{j}", ctx.run);
                let join = json!({"type": "join", "room": room}).to_string();
                let joined = async {
                    ws.send(OP_TEXT, join.as_bytes()).await?;
                    ws.expect("welcome", Duration::from_secs(5)).await
                };
                if let Err(e) = joined.await {
                    return state.tally.add(format!("not joined: {}", classify(&e)));
                }
                let _hold = state.hold();
                drop(permit);
                // Held until the end, unless the server closes it first.
                match tokio::time::timeout_at(end, ws.ending()).await {
                    Ok(how) => state
                        .tally
                        .add(format!("joined, then closed early ({how})")),
                    Err(_) => state.tally.add("joined and held"),
                }
            });
        }
    }
    while sockets.join_next().await.is_some() {}
    let attempts = state.attempts.load(Ordering::Relaxed);
    let most = state.most.load(Ordering::Relaxed);
    Ok(Attack {
        size: format!(
            "{attempts} /ws sockets from {} addresses of {}/{prefix}",
            net.addresses, network
        ),
        got: format!("{}; at most {most} open at once", state.tally.summary()),
        json: json!({
            "network": net.network, "addresses": net.addresses, "per_address": net.per_address,
            "secs": net.secs, "attempts": attempts, "outcomes": state.tally.json(),
            "open_at_once_most": most,
        }),
        contained: net.expect_cap.map(|cap| most <= cap),
    })
}

// ---- 6. Slow readers and half messages -----------------------------------------------

async fn slow_reader(ctx: &Ctx, secs: f64, bytes: usize) -> Result<Attack> {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let tally = Tally::default();
    let mut evicted_after = Latency::new();
    let (mut rounds, mut sent_total) = (0u64, 0u64);
    while Instant::now() < end {
        rounds += 1;
        let room = format!("atk-slow-{}-{rounds}", ctx.run);
        match stall_one(ctx, &room, bytes, end).await {
            Ok(round) => {
                sent_total += round.sent;
                if let Some(after) = round.evicted_after {
                    evicted_after.record_us(us(after));
                }
                tally.add(round.outcome);
            }
            Err(e) => {
                tally.add(format!("failed: {e:#}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let mb = sent_total as f64 / 1e6;
    let evictions = evicted_after.count();
    Ok(Attack {
        size: format!(
            "{rounds} rooms over {secs:.0} s, {mb:.0} MB of {bytes}-byte signals to a member that never reads"
        ),
        got: format!(
            "{}; evicted after {}",
            tally.summary(),
            secs_summary(&evicted_after)
        ),
        json: json!({
            "secs": secs, "bytes": bytes, "rounds": rounds, "sent_bytes": sent_total,
            "outcomes": tally.json(), "evicted_after": secs_json(&evicted_after),
        }),
        contained: Some(evictions > 0 && tally.get("not evicted by the end") <= 1),
    })
}

/// One round of `slow_reader`.
struct Stalled {
    outcome: String,
    sent: u64,
    evicted_after: Option<Duration>,
}

/// A member that stops reading once it is in `room`, and another that sends it signals
/// of `bytes` until the room is told it left (or `end`).
async fn stall_one(ctx: &Ctx, room: &str, bytes: usize, end: Instant) -> Result<Stalled> {
    let t = Duration::from_secs(5);
    let join = json!({"type": "join", "room": room}).to_string();
    let refused = |why: String| Stalled {
        outcome: format!("refused: {why}"),
        sent: 0,
        evicted_after: None,
    };
    let mut stalled = match ctx.attack_ws(ctx.args.attack_source, "/ws").await? {
        Ok(ws) => ws,
        Err(why) => return Ok(refused(why)),
    };
    stalled.send(OP_TEXT, join.as_bytes()).await?;
    let welcome = stalled
        .expect("welcome", t)
        .await
        .context("the stalled member joining")?;
    let to = welcome["peer_id"]
        .as_str()
        .context("a welcome without peer_id")?;
    // From here on `stalled` reads nothing.
    let mut sender = match ctx.attack_ws(ctx.args.attack_source, "/ws").await? {
        Ok(ws) => ws,
        Err(why) => return Ok(refused(why)),
    };
    sender.send(OP_TEXT, join.as_bytes()).await?;
    sender
        .expect("welcome", t)
        .await
        .context("the sender joining")?;
    let pad = "a".repeat(bytes.saturating_sub(80));
    let signal = json!({"type": "signal", "to": to, "payload": {"pad": pad}}).to_string();
    let signal = frame(OP_TEXT, true, signal.as_bytes());
    let (mut replies, mut writer) = sender.split();
    // The sender learns of the eviction as the room does: peer_left.
    let watcher = tokio::spawn(async move {
        loop {
            match replies.next().await {
                Ok(Some(f)) if f.opcode == OP_TEXT => {
                    let v: Value = serde_json::from_slice(&f.payload).unwrap_or_default();
                    if v["type"] == "peer_left" {
                        return "peer_left".to_owned();
                    }
                }
                Ok(Some(f)) if f.opcode == OP_CLOSE => {
                    return format!("sender {}", f.close_text());
                }
                Ok(Some(_)) => {}
                Ok(None) => return "sender closed (eof)".to_owned(),
                Err(e) => return format!("sender closed ({})", classify(&e)),
            }
        }
    });
    let t0 = Instant::now();
    let mut sent = 0u64;
    while !watcher.is_finished() && Instant::now() < end {
        let wrote = tokio::time::timeout(Duration::from_secs(1), put(&mut writer, &signal)).await;
        match wrote {
            Ok(Ok(())) => sent += signal.len() as u64,
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    if !watcher.is_finished() {
        watcher.abort();
        return Ok(Stalled {
            outcome: "not evicted by the end".into(),
            sent,
            evicted_after: None,
        });
    }
    let seen = watcher.await?;
    let evicted_after = t0.elapsed();
    // What the member that never read gets once it reads: the signals that reached its
    // socket, then the server's close.
    let got = tokio::time::timeout(t, stalled.ending())
        .await
        .unwrap_or_else(|_| "no close in 5 s".into());
    let _ = writer.shutdown().await;
    Ok(Stalled {
        outcome: format!("{seen}; the stalled member got {got}"),
        sent,
        evicted_after: Some(evicted_after),
    })
}

struct HalfArgs {
    clients: usize,
    fragment_bytes: usize,
    ping: Duration,
    secs: f64,
    expect_close_s: Option<f64>,
}

async fn half_message(ctx: &Arc<Ctx>, half: HalfArgs) -> Result<Attack> {
    let end = tokio::time::Instant::now() + Duration::from_secs_f64(half.secs);
    let tally = Arc::new(Tally::default());
    let closed_after = Arc::new(Mutex::new(Latency::new()));
    let mut clients = JoinSet::new();
    for i in 0..half.clients {
        let (ctx, tally, closed_after) = (
            Arc::clone(ctx),
            Arc::clone(&tally),
            Arc::clone(&closed_after),
        );
        let (fragment_bytes, ping) = (half.fragment_bytes, half.ping);
        clients.spawn(async move {
            let mut ws = match ctx.attack_ws(ctx.args.attack_source, "/ws").await {
                Ok(Ok(ws)) => ws,
                Ok(Err(refused)) => return tally.add(format!("refused: {refused}")),
                Err(e) => return tally.add(classify(&e)),
            };
            let room = format!("atk-half-{}-{i}", ctx.run);
            let join = json!({"type": "join", "room": room}).to_string();
            let joined = async {
                ws.send(OP_TEXT, join.as_bytes()).await?;
                ws.expect("welcome", Duration::from_secs(5)).await
            };
            if let Err(e) = joined.await {
                return tally.add(format!("not joined: {}", classify(&e)));
            }
            let mut fragment = br#"{"type":"signal","to":"nobody","payload":{"pad":""#.to_vec();
            fragment.resize(fragment_bytes.max(fragment.len()), b'a');
            let (mut reader, mut writer) = ws.split();
            if put(&mut writer, &frame(OP_TEXT, false, &fragment))
                .await
                .is_err()
            {
                return tally.add("closed before the fragment");
            }
            let t0 = Instant::now();
            let mut watcher = tokio::spawn(async move { reader.ending().await });
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + ping, ping);
            loop {
                tokio::select! {
                    how = &mut watcher => {
                        closed_after.lock().expect("lock").record_us(us(t0.elapsed()));
                        return tally.add(how.unwrap_or_else(|_| "reader failed".into()));
                    }
                    () = tokio::time::sleep_until(end) => {
                        watcher.abort();
                        return tally.add("open at the end");
                    }
                    _ = tick.tick() => {
                        // A failed write shows up as the server's close on the reader.
                        let _ = put(&mut writer, &frame(OP_PING, true, b"")).await;
                    }
                }
            }
        });
    }
    while clients.join_next().await.is_some() {}
    let closed_after = std::mem::take(&mut *closed_after.lock().expect("lock"));
    let contained = half.expect_close_s.map(|limit| {
        closed_after.count() == half.clients as u64 && closed_after.max_us() as f64 / 1e6 <= limit
    });
    Ok(Attack {
        size: format!(
            "{} clients with a {}-byte fragment begun, a ping every {} ms",
            half.clients,
            half.fragment_bytes,
            half.ping.as_millis()
        ),
        got: format!(
            "{}; closed after {} from the fragment",
            tally.summary(),
            secs_summary(&closed_after)
        ),
        json: json!({
            "clients": half.clients, "fragment_bytes": half.fragment_bytes,
            "ping_ms": half.ping.as_millis() as u64, "secs": half.secs,
            "outcomes": tally.json(), "closed_after": secs_json(&closed_after),
        }),
        contained,
    })
}

// ---- The attacker's codecs: WebSocket frames, HTTP/1.1, HTTP/2 -----------------------

type Tls = tokio_rustls::client::TlsStream<TcpStream>;
/// An attacker's WebSocket: frames read off a TLS stream, and written to it.
type RawWs = Frames<Tls>;

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
/// Every client frame is masked; the key need not be secret here.
const MASK: [u8; 4] = [0x5B, 0x1E, 0xC3, 0x77];

/// Writes all of `bytes` and flushes: a TLS stream may keep what it was given until then.
async fn put<W: AsyncWrite + Unpin>(io: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

/// The header of a masked client frame of `len` payload bytes.
fn frame_header(opcode: u8, fin: bool, len: usize) -> Vec<u8> {
    let mut header = vec![if fin { 0x80 } else { 0 } | opcode];
    match len {
        0..=125 => header.push(0x80 | len as u8),
        126..=0xFFFF => {
            header.push(0x80 | 126);
            header.extend((len as u16).to_be_bytes());
        }
        _ => {
            header.push(0x80 | 127);
            header.extend((len as u64).to_be_bytes());
        }
    }
    header.extend(MASK);
    header
}

/// Masks `payload`, which starts `offset` bytes into its frame's payload.
fn mask(payload: &mut [u8], offset: usize) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= MASK[(offset + i) % 4];
    }
}

/// A whole masked client frame.
fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = frame_header(opcode, fin, payload.len());
    let start = frame.len();
    frame.extend_from_slice(payload);
    mask(&mut frame[start..], 0);
    frame
}

/// A frame from the server.
struct Frame {
    opcode: u8,
    payload: Vec<u8>,
}

impl Frame {
    /// A close frame as people read it: "close 1009 message too large".
    fn close_text(&self) -> String {
        match self.payload.as_slice() {
            [a, b, reason @ ..] => format!(
                "close {} {}",
                u16::from_be_bytes([*a, *b]),
                String::from_utf8_lossy(reason)
            )
            .trim_end()
            .to_owned(),
            _ => "close (no code)".into(),
        }
    }
}

/// Frames from the server off `io`; `buf` holds what was read and not yet taken.
struct Frames<S> {
    io: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite> Frames<S> {
    fn split(self) -> (Frames<ReadHalf<S>>, WriteHalf<S>) {
        let (read, write) = tokio::io::split(self.io);
        (
            Frames {
                io: read,
                buf: self.buf,
            },
            write,
        )
    }
}

impl<S: AsyncWrite + Unpin> Frames<S> {
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<()> {
        put(&mut self.io, &frame(opcode, true, payload)).await?;
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> Frames<S> {
    /// The next frame, or `None` when the server has closed the connection.
    async fn next(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf)? {
                self.buf.drain(..used);
                return Ok(Some(frame));
            }
            self.buf.reserve(16 << 10);
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// The next text message within `limit`; a close is an error that names its code.
    async fn text(&mut self, limit: Duration) -> Result<String> {
        let next = async {
            loop {
                match self.next().await? {
                    Some(f) if f.opcode == OP_TEXT => return Ok(String::from_utf8(f.payload)?),
                    Some(f) if f.opcode == OP_CLOSE => bail!("{}", f.close_text()),
                    Some(_) => {}
                    None => bail!("closed (eof)"),
                }
            }
        };
        tokio::time::timeout(limit, next)
            .await
            .with_context(|| format!("no message in {limit:?}"))?
    }

    /// The next native message of `kind` within `limit`; an `error` message is an error.
    async fn expect(&mut self, kind: &str, limit: Duration) -> Result<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let text = self
                .text(deadline.saturating_duration_since(Instant::now()))
                .await?;
            let v: Value = serde_json::from_str(&text)?;
            match v["type"].as_str() {
                Some(k) if k == kind => return Ok(v),
                Some("error") => bail!("error {}: {}", v["code"], v["message"]),
                _ => {}
            }
        }
    }

    /// Reads until the server ends the connection: its close frame ("close 1008 reason"),
    /// "eof", or the error.
    async fn ending(&mut self) -> String {
        loop {
            match self.next().await {
                Ok(Some(f)) if f.opcode == OP_CLOSE => return f.close_text(),
                Ok(Some(_)) => {}
                Ok(None) => return "eof".into(),
                Err(e) => return classify(&e),
            }
        }
    }
}

/// A whole frame at the start of `buf` (server frames are unmasked, but a mask is undone),
/// and its length in `buf`; `None` until all of it has arrived.
fn parse_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let (len, mut at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(n) => (usize::from(u16::from_be_bytes([n[0], n[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(n) => (usize::try_from(u64::from_be_bytes(n.try_into()?))?, 10),
            None => return Ok(None),
        },
        n => (usize::from(n), 2),
    };
    let key = if b1 & 0x80 != 0 {
        let Some(key) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    let Some(payload) = buf.get(at..at + len) else {
        return Ok(None);
    };
    let mut payload = payload.to_vec();
    if let Some(key) = key {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Ok(Some((
        Frame {
            opcode: b0 & 0x0F,
            payload,
        },
        at + len,
    )))
}

/// An HTTP/1.1 response.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the server closes the connection after it.
    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Reads one HTTP/1.1 response off `io`; `buf` keeps whatever follows it.
async fn read_response<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> Result<Response> {
    async fn more<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> Result<()> {
        buf.reserve(16 << 10);
        if io.read_buf(buf).await? == 0 {
            return Err(std::io::Error::from(ErrorKind::UnexpectedEof).into());
        }
        Ok(())
    }
    let head_len = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > 64 << 10 {
            bail!("response headers over 64 KiB");
        }
        more(io, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    buf.drain(..head_len);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .context("a bad status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if status == 101 || status == 204 || status == 304 {
        return Ok(response);
    }
    if let Some(len) = response.header("content-length") {
        let len: usize = len.parse().context("a bad content-length")?;
        while buf.len() < len {
            more(io, buf).await?;
        }
        response.body = buf.drain(..len).collect();
    } else if response
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let line_end = loop {
                if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                more(io, buf).await?;
            };
            let size = std::str::from_utf8(&buf[..line_end])?;
            let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                .context("a bad chunk size")?;
            while buf.len() < line_end + 2 + size + 2 {
                more(io, buf).await?;
            }
            response
                .body
                .extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
    }
    Ok(response)
}

/// The server's metrics (`name{labels}` -> value) from its admin listener.
async fn scrape(admin: SocketAddr) -> Result<BTreeMap<String, f64>> {
    let mut tcp = TcpStream::connect(admin).await?;
    put(
        &mut tcp,
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await?;
    let mut buf = Vec::new();
    let response = read_response(&mut tcp, &mut buf).await?;
    if response.status != 200 {
        bail!("/metrics answered HTTP {}", response.status);
    }
    Ok(String::from_utf8_lossy(&response.body)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(name, v)| Some((name.to_owned(), v.parse().ok()?)))
        .collect())
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const H2_DATA: u8 = 0x0;
const H2_HEADERS: u8 = 0x1;
const H2_SETTINGS: u8 = 0x4;
const H2_PING: u8 = 0x6;
const H2_GOAWAY: u8 = 0x7;
const H2_ACK: u8 = 0x1;
const H2_END_STREAM: u8 = 0x1;
const H2_END_HEADERS: u8 = 0x4;

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend(stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A GET of `path` from localhost over https, in HPACK with no table and no Huffman.
fn hpack_get(path: &str) -> Vec<u8> {
    // :method GET and :scheme https from the static table; :path and :authority as
    // literals without indexing on the static table's names (4 and 1).
    let mut block = vec![0x82, 0x87, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend([0x01, 9]);
    block.extend_from_slice(b"localhost");
    block
}

/// The next HTTP/2 frame (type, flags, stream, payload), or `None` at the end; `buf` keeps
/// what was read and not yet taken, so this is cancel-safe.
async fn h2_next<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Option<(u8, u8, u32, Vec<u8>)>> {
    loop {
        if buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() >= 9 + len {
                let (kind, flags) = (buf[3], buf[4]);
                let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7FFF_FFFF;
                let payload = buf[9..9 + len].to_vec();
                buf.drain(..9 + len);
                return Ok(Some((kind, flags, stream, payload)));
            }
        }
        buf.reserve(16 << 10);
        if io.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}
