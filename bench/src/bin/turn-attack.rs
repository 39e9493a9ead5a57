//! TURN under attack: what one hostile client costs the server, and whether everyone
//! else is still served meanwhile. Each scenario prints one JSON line on stdout.
//!
//! - `flood`: unauthenticated Allocates from many source ports (a new socket every few
//!   requests), at a fixed rate; the server's RSS before, at its peak and after, and a
//!   legitimate client allocating from another address all along.
//! - `stalled`: many TCP connections that send nothing (or half a frame) and never
//!   allocate; the server's RSS per connection, and how long a legitimate TCP client
//!   then takes to allocate.
//! - `slow-reader`: a TCP client that never reads, fed relay to relay at a fixed rate
//!   from a UDP allocation, beside an unrelated UDP client relaying to a peer; that
//!   client's loss and latency with and without the stalled one.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::json;
use switchboard::turn::probe::Client;
use switchboard_bench::percentiles::Latency;
use switchboard_bench::procstat;
use switchboard_bench::turnc::rest_credentials;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

#[derive(Parser, Debug, Clone)]
#[command(about = "TURN under attack: floods, stalled connections, a client that does not read")]
struct Args {
    /// The TURN server (UDP and TCP on the same port).
    #[arg(long, default_value = "127.0.0.1:3478")]
    server: SocketAddr,
    /// The shared REST secret, for the legitimate clients.
    #[arg(long)]
    secret: String,
    /// The server's PID, for its RSS.
    #[arg(long)]
    server_pid: u32,
    /// A name for the server under test, copied into the output.
    #[arg(long, default_value = "server")]
    label: String,
    /// The legitimate clients' source address (not the attacker's).
    #[arg(long, default_value = "127.0.0.2")]
    legit_source: IpAddr,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug, Clone)]
enum Scenario {
    /// Unauthenticated Allocates from many source ports.
    Flood {
        #[arg(long, default_value_t = 200_000)]
        requests: usize,
        /// Distinct source ports (sockets), each sending requests/ports requests.
        #[arg(long, default_value_t = 20_000)]
        ports: usize,
        #[arg(long, default_value_t = 20.0)]
        secs: f64,
        /// Seconds after the flood before the last RSS reading.
        #[arg(long, default_value_t = 5.0)]
        settle_secs: f64,
    },
    /// TCP connections that never allocate.
    Stalled {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Connections per source address (127.0.1.1, 127.0.1.2, ...), under the per-source limit.
        #[arg(long, default_value_t = 250)]
        per_source: usize,
        /// Every other connection sends a STUN header announcing 500 bytes, then nothing.
        #[arg(long)]
        half_frames: bool,
        /// Seconds to wait for the server to take the connections before reading its RSS.
        #[arg(long, default_value_t = 2.0)]
        settle_secs: f64,
    },
    /// A TCP client that never reads, fed relay to relay.
    SlowReader {
        /// Packets per second toward the client that does not read (1,000 bytes each).
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let out = runtime.block_on(async {
        match &args.scenario {
            Scenario::Flood {
                requests,
                ports,
                secs,
                settle_secs,
            } => flood(&args, *requests, *ports, *secs, *settle_secs).await,
            Scenario::Stalled {
                connections,
                per_source,
                half_frames,
                settle_secs,
            } => stalled(&args, *connections, *per_source, *half_frames, *settle_secs).await,
            Scenario::SlowReader { rate, secs } => slow_reader(&args, *rate, *secs).await,
        }
    })?;
    println!("{out}");
    Ok(())
}

fn rss_kb(pid: u32) -> Result<u64> {
    procstat::process_rss_kb(pid).context("the server is gone")
}

fn credential(args: &Args, name: &str) -> (String, String) {
    rest_credentials(&args.secret, name, Duration::from_secs(600))
}

/// A legitimate UDP client on `legit_source`.
async fn legit_udp(args: &Args, name: &str) -> Result<Client> {
    let socket = UdpSocket::bind((args.legit_source, 0)).await?;
    let (user, pass) = credential(args, name);
    Ok(Client::new_on(socket, args.server, &user, &pass)?)
}

/// Allocates and releases, over and over until `stop`, timing each allocation.
async fn keep_allocating(args: &Args, stop: Arc<AtomicBool>) -> Result<(Latency, u64)> {
    let mut latency = Latency::new();
    let mut failures = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let mut client = legit_udp(args, "legit").await?;
        let t0 = Instant::now();
        match client.allocate().await {
            Ok(_) => {
                latency.record_us(t0.elapsed().as_micros() as u64);
                client.release().await;
            }
            Err(_) => failures += 1,
        }
    }
    Ok((latency, failures))
}

/// An unauthenticated Allocate (REQUESTED-TRANSPORT UDP); the transaction id is patched per send.
fn allocate_request() -> [u8; 28] {
    let mut m = [0u8; 28];
    m[0..2].copy_from_slice(&0x0003u16.to_be_bytes());
    m[2..4].copy_from_slice(&8u16.to_be_bytes());
    m[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    m[20..22].copy_from_slice(&0x0019u16.to_be_bytes());
    m[22..24].copy_from_slice(&4u16.to_be_bytes());
    m[24] = 17;
    m
}

async fn flood(
    args: &Args,
    requests: usize,
    ports: usize,
    secs: f64,
    settle_secs: f64,
) -> Result<serde_json::Value> {
    let pid = args.server_pid;
    let before = rss_kb(pid)?;
    let stop = Arc::new(AtomicBool::new(false));
    let legit = tokio::spawn({
        let stop = Arc::clone(&stop);
        let args = args.clone();
        async move { keep_allocating(&args, stop).await }
    });
    // The flood on its own thread: plain non-blocking sockets, paced in 10 ms ticks.
    let server = args.server;
    let flooder = std::thread::spawn(move || -> Result<(usize, f64)> {
        let per_port = requests.div_ceil(ports).max(1);
        let ticks = (secs * 100.0).max(1.0) as usize;
        let per_tick = requests.div_ceil(ticks);
        let mut request = allocate_request();
        let (mut sent, mut port, mut on_port) = (0usize, 0usize, 0usize);
        let mut socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        socket.set_nonblocking(true)?;
        let t0 = Instant::now();
        for tick in 0..ticks {
            let due = t0 + Duration::from_millis(10 * tick as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            for _ in 0..per_tick.min(requests - sent) {
                if on_port == per_port && port + 1 < ports {
                    socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
                    socket.set_nonblocking(true)?;
                    port += 1;
                    on_port = 0;
                }
                request[8..20].copy_from_slice(&(sent as u128).to_be_bytes()[4..]);
                let _ = socket.send_to(&request, server);
                sent += 1;
                on_port += 1;
            }
        }
        Ok((sent, t0.elapsed().as_secs_f64()))
    });
    let mut peak = before;
    while !flooder.is_finished() {
        peak = peak.max(rss_kb(pid)?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (sent, took) = flooder.join().expect("flood thread")?;
    peak = peak.max(rss_kb(pid)?);
    let at_end = rss_kb(pid)?;
    tokio::time::sleep(Duration::from_secs_f64(settle_secs)).await;
    let after = rss_kb(pid)?;
    stop.store(true, Ordering::Relaxed);
    let (latency, failures) = legit.await??;
    eprintln!(
        "{}: flood of {sent} unauthenticated Allocates from {ports} ports in {took:.1} s: RSS {before} -> peak {peak} -> {after} KiB; \
         legitimate allocations {} ok (p50 {} us, max {} us), {failures} failed",
        args.label,
        latency.count(),
        latency.quantile_us(0.5),
        latency.max_us()
    );
    Ok(json!({
        "scenario": "flood", "server": args.label, "requests": sent, "ports": ports, "secs": took,
        "rss_before_kb": before, "rss_peak_kb": peak, "rss_end_kb": at_end, "rss_after_kb": after,
        "legit_ok": latency.count(), "legit_failed": failures,
        "legit_p50_us": latency.quantile_us(0.5), "legit_max_us": latency.max_us(),
    }))
}

async fn connect_from(source: IpAddr, to: SocketAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    Ok(socket.connect(to).await?)
}

async fn stalled(
    args: &Args,
    connections: usize,
    per_source: usize,
    half_frames: bool,
    settle_secs: f64,
) -> Result<serde_json::Value> {
    let pid = args.server_pid;
    // One allocation first, so the server's pools are warm before the baseline.
    let mut warm = legit_udp(args, "warm").await?;
    warm.allocate().await?;
    let before = rss_kb(pid)?;
    let mut held = Vec::with_capacity(connections);
    for i in 0..connections {
        let n = i / per_source.max(1);
        let source = IpAddr::from([127, 0, 1 + (n / 250) as u8, 1 + (n % 250) as u8]);
        let mut tcp = connect_from(source, args.server).await?;
        if half_frames && i % 2 == 1 {
            let mut head = [0u8; 20];
            head[..4].copy_from_slice(&[0x00, 0x01, 0x01, 0xF4]);
            head[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
            tcp.write_all(&head).await?;
        }
        held.push(tcp);
    }
    tokio::time::sleep(Duration::from_secs_f64(settle_secs)).await;
    let with = rss_kb(pid)?;
    let (user, pass) = credential(args, "legit");
    let t0 = Instant::now();
    let mut client = Client::connect_tcp(args.server, &user, &pass).await?;
    let allocated = client.allocate().await;
    let took = t0.elapsed();
    if let Err(e) = &allocated {
        bail!(
            "a legitimate TCP client could not allocate beside {connections} stalled connections: {e}"
        );
    }
    let per = (with.saturating_sub(before) * 1024) / connections.max(1) as u64;
    eprintln!(
        "{}: {connections} stalled TCP connections{}: RSS {before} -> {with} KiB ({per} bytes each); \
         a legitimate TCP client allocated in {} ms",
        args.label,
        if half_frames {
            " (half with half a frame)"
        } else {
            ""
        },
        took.as_millis()
    );
    drop(held);
    Ok(json!({
        "scenario": "stalled", "server": args.label, "connections": connections,
        "half_frames": half_frames, "rss_before_kb": before, "rss_with_kb": with,
        "bytes_per_connection": per, "legit_allocate_ms": took.as_secs_f64() * 1e3,
    }))
}

/// The bystander: `count` packets at 100/s through its own UDP allocation to a peer;
/// returns (lost, worst one-way latency).
async fn bystander(args: &Args, count: u32) -> Result<(u32, Duration)> {
    let mut client = legit_udp(args, "bystander").await?;
    client.allocate().await?;
    let peer = UdpSocket::bind((args.legit_source, 0)).await?;
    let peer_addr = peer.local_addr()?;
    client.permit(peer_addr).await?;
    let t0 = Instant::now();
    let sending = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for i in 0..count {
            tick.tick().await;
            let mut packet = i.to_be_bytes().to_vec();
            packet.extend_from_slice(&(t0.elapsed().as_micros() as u64).to_be_bytes());
            client.send(peer_addr, &packet).await?;
        }
        anyhow::Ok(client)
    });
    let mut received = vec![false; count as usize];
    let mut worst = Duration::ZERO;
    let mut buf = [0u8; 64];
    while received.iter().any(|r| !r) {
        let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(3), peer.recv(&mut buf)).await
        else {
            break;
        };
        if n != 12 {
            continue;
        }
        let i = u32::from_be_bytes(buf[..4].try_into()?) as usize;
        let sent = Duration::from_micros(u64::from_be_bytes(buf[4..12].try_into()?));
        received[i] = true;
        worst = worst.max(t0.elapsed().saturating_sub(sent));
    }
    sending.await??.release().await;
    let lost = received.iter().filter(|r| !**r).count() as u32;
    Ok((lost, worst))
}

async fn slow_reader(args: &Args, rate: u64, secs: f64) -> Result<serde_json::Value> {
    let count = (secs * 100.0) as u32;
    let (base_lost, base_worst) = bystander(args, count).await?;
    // The stalled client (TCP, reads nothing once set up) and its feeder (UDP).
    let (user, pass) = credential(args, "stalled");
    let mut stalled = Client::connect_tcp(args.server, &user, &pass).await?;
    let stalled_relay = stalled.allocate().await?;
    let mut feeder = legit_udp(args, "feeder").await?;
    let feeder_relay = feeder.allocate().await?;
    stalled.permit(feeder_relay).await?;
    feeder.bind_channel(0x4000, stalled_relay).await?;
    let flooding = Arc::new(AtomicBool::new(true));
    let flood = tokio::spawn({
        let flooding = Arc::clone(&flooding);
        async move {
            let payload = [0xAB; 1000];
            let per_tick = (rate / 100).max(1);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while flooding.load(Ordering::Relaxed) {
                tick.tick().await;
                for _ in 0..per_tick {
                    feeder.send_channel(0x4000, &payload).await?;
                }
            }
            anyhow::Ok(())
        }
    });
    let (lost, worst) = bystander(args, count).await?;
    flooding.store(false, Ordering::Relaxed);
    flood.await??;
    drop(stalled);
    eprintln!(
        "{}: bystander over {secs} s at 100 packets/s: alone {base_lost} lost (worst {} ms); \
         beside a TCP client that does not read, fed {rate} packets/s: {lost} lost (worst {} ms)",
        args.label,
        base_worst.as_millis(),
        worst.as_millis()
    );
    Ok(json!({
        "scenario": "slow-reader", "server": args.label, "rate": rate, "packets": count,
        "alone_lost": base_lost, "alone_worst_ms": base_worst.as_secs_f64() * 1e3,
        "lost": lost, "worst_ms": worst.as_secs_f64() * 1e3,
    }))
}
