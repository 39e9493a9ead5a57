//! TURN load generator: N allocations with REST credentials, then ChannelData at
//! fixed rates (open loop) or flat out, over UDP with `sendmmsg`/`recvmmsg`.
//!
//! Modes:
//! - `relay`: client 2k's peer is client 2k+1's relayed address and back (every
//!   packet crosses the server twice, or once if it forwards internally);
//! - `echo`: every client's peer is an echo socket of this tool (client ↔ external peer).
//!
//! Prints one JSON line per phase on stdout and a human summary on stderr.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use mio::{Events, Interest, Poll, Token};
use serde_json::json;
use switchboard::mmsg::{RecvBatch, SendBatch};
use switchboard_bench::percentiles::Latency;
use switchboard_bench::procstat::{self, Sample, round3};
use switchboard_bench::turnc::{self, Conn, Request, TurnClient};

#[derive(Parser, Debug)]
#[command(about = "TURN load generator (UDP, REST credentials, ChannelData)")]
struct Args {
    /// The TURN server's UDP address.
    #[arg(long, default_value = "127.0.0.1:3478")]
    server: SocketAddr,
    /// The shared REST secret (coturn `static-auth-secret`, Switchboard `turn.secrets`).
    #[arg(long)]
    secret: String,
    /// How many allocations (clients); even in relay mode.
    #[arg(long, default_value_t = 100)]
    allocations: usize,
    #[arg(long, value_enum, default_value_t = Mode::Relay)]
    mode: Mode,
    /// Offered load per step, total packets per second over all clients; 0 is flat out.
    #[arg(long, value_delimiter = ',', default_value = "20000")]
    rates: Vec<u64>,
    /// Length of each step (sending), in seconds.
    #[arg(long, default_value_t = 8.0)]
    step_secs: f64,
    /// Time after each step to collect late packets, in seconds.
    #[arg(long, default_value_t = 1.0)]
    drain_secs: f64,
    /// ChannelData payload bytes (at least 16).
    #[arg(long, default_value_t = 120)]
    size: usize,
    /// Sending/receiving threads (relay pairs stay on one thread).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The server's PID: CPU per relayed packet and RSS are read from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The core the server is pinned to: its busy time (softirq included) per packet is reported.
    #[arg(long)]
    server_core: Option<usize>,
    /// A name for the server under test, copied into the output.
    #[arg(long, default_value = "server")]
    label: String,
    /// Local addresses the clients bind to, round robin (e.g. 127.0.0.2,127.0.0.3).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    sources: Vec<IpAddr>,
    /// Address of the echo peer (echo mode).
    #[arg(long, default_value = "127.0.0.1")]
    echo_ip: IpAddr,
    /// Only set the allocations up (measures allocations/s and RSS per allocation).
    #[arg(long)]
    setup_only: bool,
    /// No TURN: --server is `udp-forward`, and every packet names its destination
    /// (the pair's socket) in its payload. The reference ceiling, relay mode only.
    #[arg(long)]
    forwarder: bool,
    /// TURN over TCP (RFC 6062 framing) instead of UDP; relays stay UDP.
    #[arg(long)]
    tcp: bool,
    /// TURN over TLS (implies the TCP framing; the certificate is not checked).
    #[arg(long)]
    tls: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Mode {
    Relay,
    Echo,
}

const CHANNEL: u16 = 0x4000;
const SOCKET_BUFFER: usize = 4 << 20;

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.mode == Mode::Relay && args.allocations % 2 == 1 {
        bail!("--allocations must be even in relay mode (clients relay in pairs)");
    }
    if args.size < 16 || args.size > 1400 {
        bail!("--size must be between 16 and 1400 bytes");
    }
    if args.tls {
        args.tcp = true;
    }
    if args.tcp && args.forwarder {
        bail!("--forwarder is UDP only");
    }
    let tls = args
        .tls
        .then(|| switchboard::tls::probe_client_config(b"stun.turn"));
    let stop = Arc::new(AtomicBool::new(false));
    let echo = match args.mode {
        Mode::Echo => Some(start_echo(args.echo_ip, Arc::clone(&stop))?),
        Mode::Relay => None,
    };

    let mut clients = Vec::with_capacity(args.allocations);
    for i in 0..args.allocations {
        let (user, pass) = turnc::rest_credentials(
            &args.secret,
            &format!("bench{i}"),
            Duration::from_secs(7200),
        );
        let ip = args.sources[i % args.sources.len()];
        clients.push(
            TurnClient::new(
                ip,
                args.server,
                user,
                pass,
                SOCKET_BUFFER,
                args.tcp,
                tls.as_ref(),
            )
            .with_context(|| format!("client {i} on {ip}"))?,
        );
    }

    if args.forwarder {
        if args.mode != Mode::Relay {
            bail!("--forwarder measures relay mode only");
        }
        let peers: Vec<SocketAddr> = (0..clients.len()).map(|i| clients[i ^ 1].local).collect();
        run_steps(&args, clients, &peers)?;
        return Ok(());
    }
    let rss_before = args.server_pid.and_then(procstat::process_rss_kb);
    let allocate_time =
        turnc::drive(&mut clients, |_, _| Some(Request::Allocate)).context("allocating")?;
    let peers: Vec<SocketAddr> = (0..clients.len())
        .map(|i| match echo {
            Some((addr, _)) => addr,
            None => clients[i ^ 1].relayed.expect("allocated"),
        })
        .collect();
    turnc::drive(&mut clients, |i, _| Some(Request::Permission(peers[i])))
        .context("creating permissions")?;
    turnc::drive(&mut clients, |i, _| {
        Some(Request::ChannelBind(CHANNEL, peers[i]))
    })
    .context("binding channels")?;
    let rss_after = args.server_pid.and_then(procstat::process_rss_kb);
    let allocs_per_s = args.allocations as f64 / allocate_time.as_secs_f64();
    let rss_per_alloc = match (rss_before, rss_after) {
        (Some(b), Some(a)) => Some(round3((a as f64 - b as f64) / args.allocations as f64)),
        _ => None,
    };
    println!(
        "{}",
        json!({
            "tool": "turn-load", "phase": "setup", "label": args.label,
            "mode": format!("{:?}", args.mode).to_lowercase(),
            "allocations": args.allocations,
            "allocate_s": round3(allocate_time.as_secs_f64()),
            "allocations_per_s": allocs_per_s.round(),
            "server_rss_before_kb": rss_before, "server_rss_after_kb": rss_after,
            "server_rss_per_allocation_kb": rss_per_alloc,
        })
    );
    eprintln!(
        "{}: {} allocations in {:.3} s ({allocs_per_s:.0}/s); server RSS {:?} -> {:?} KiB ({:?} KiB per allocation)",
        args.label,
        args.allocations,
        allocate_time.as_secs_f64(),
        rss_before,
        rss_after,
        rss_per_alloc
    );
    if args.setup_only {
        stop.store(true, Ordering::Relaxed);
        return Ok(());
    }

    run_steps(&args, clients, &peers)?;
    stop.store(true, Ordering::Relaxed);
    if let Some((_, handle)) = echo {
        let _ = handle.join();
    }
    Ok(())
}

/// What one thread counted in one step.
#[derive(Default)]
struct StepCount {
    sent: u64,
    received: u64,
    late: u64,
    latency: Latency,
}

fn run_steps(args: &Args, clients: Vec<TurnClient>, peers: &[SocketAddr]) -> Result<()> {
    let threads = args.threads.clamp(1, clients.len().max(1));
    // Relay pairs stay on one thread, so that sender and receiver share a step clock.
    let mut groups: Vec<Vec<(TurnClient, Vec<u8>)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, c) in clients.into_iter().enumerate() {
        let packet = packet_for(args.size, peers[i], args.tcp);
        groups[(i / 2) % threads].push((c, packet));
    }
    let barrier = Arc::new(Barrier::new(threads + 1));
    let (tx, rx) = mpsc::channel::<StepCount>();
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for group in groups {
        let barrier = Arc::clone(&barrier);
        let tx = tx.clone();
        let rates: Vec<u64> = args.rates.iter().map(|r| r / threads as u64).collect();
        let (step, drain) = (
            Duration::from_secs_f64(args.step_secs),
            Duration::from_secs_f64(args.drain_secs),
        );
        handles.push(std::thread::spawn(move || {
            worker(group, &rates, step, drain, t0, &barrier, &tx)
        }));
    }
    drop(tx);
    for &rate in &args.rates {
        barrier.wait();
        let start = Sample::take(args.server_pid, args.server_core);
        barrier.wait();
        let end = Sample::take(args.server_pid, args.server_core);
        barrier.wait();
        let mut total = StepCount::default();
        for _ in 0..threads {
            let c = rx.recv().context("a sender thread died")?;
            total.sent += c.sent;
            total.received += c.received;
            total.late += c.late;
            total.latency.add(&c.latency);
        }
        report(args, rate, &total, &end.usage_since(&start));
    }
    for h in handles {
        h.join().expect("sender thread")?;
    }
    Ok(())
}

fn report(args: &Args, rate: u64, c: &StepCount, usage: &procstat::Usage) {
    let secs = usage.secs.max(1e-9);
    let loss = if c.sent == 0 {
        0.0
    } else {
        1.0 - c.received as f64 / c.sent as f64
    };
    let relayed_pps = c.received as f64 / secs;
    let per_packet_us = usage
        .server_cpu_s
        .filter(|_| c.received > 0)
        .map(|s| round3(s * 1e6 / c.received as f64));
    let core_per_packet_us = usage
        .server_core_s
        .filter(|_| c.received > 0)
        .map(|s| round3(s * 1e6 / c.received as f64));
    let rss = args.server_pid.and_then(procstat::process_rss_kb);
    let mut line = json!({
        "tool": "turn-load", "phase": "step", "label": args.label,
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "allocations": args.allocations, "size": args.size,
        "offered_pps": rate, "sent": c.sent, "received": c.received, "late": c.late,
        "sent_pps": (c.sent as f64 / secs).round(),
        "relayed_pps": relayed_pps.round(),
        "loss": (loss.max(0.0) * 1e6).round() / 1e6,
        "server_cpu_us_per_packet": per_packet_us,
        "server_core_us_per_packet": core_per_packet_us,
        "server_rss_kb": rss,
    });
    let obj = line.as_object_mut().expect("object");
    for (k, v) in c.latency.json().as_object().expect("object") {
        obj.insert(k.clone(), v.clone());
    }
    for (k, v) in usage.json().as_object().expect("object") {
        obj.insert(k.clone(), v.clone());
    }
    println!("{line}");
    eprintln!(
        "{} {:>5} offered {:>7}/s: relayed {:>7.0}/s, loss {:>7.3}%, p50 {} µs p99 {} µs p999 {} µs, server {:?} µs/pkt (core {:?}), CPU s: server {:?} tool {:.2} other {:.2}",
        args.label,
        format!("{:?}", args.mode).to_lowercase(),
        if rate == 0 {
            "max".to_string()
        } else {
            rate.to_string()
        },
        relayed_pps,
        loss * 100.0,
        c.latency.quantile_us(0.5),
        c.latency.quantile_us(0.99),
        c.latency.quantile_us(0.999),
        per_packet_us,
        core_per_packet_us,
        usage.server_cpu_s.map(round3),
        usage.tool_cpu_s,
        usage.other_cpu_s,
    );
}

/// Nanoseconds since `t0`, the clock stamped into every packet.
fn nanos(t0: Instant) -> u64 {
    t0.elapsed().as_nanos() as u64
}

/// A ChannelData packet of `size` payload bytes: the send time goes at 4..12 (written
/// per batch), the peer's IPv4 address and port at 16..22 (read by `udp-forward`).
fn packet_for(size: usize, peer: SocketAddr, tcp: bool) -> Vec<u8> {
    // On streams ChannelData is padded to a multiple of 4 bytes.
    let padded = if tcp { size.div_ceil(4) * 4 } else { size };
    let mut packet = vec![0u8; 4 + padded];
    turnc::channel_data_header(&mut packet, CHANNEL, size);
    if let SocketAddr::V4(v4) = peer {
        packet[16..20].copy_from_slice(&v4.ip().octets());
        packet[20..22].copy_from_slice(&v4.port().to_be_bytes());
    }
    packet
}

fn worker(
    mut clients: Vec<(TurnClient, Vec<u8>)>,
    rates: &[u64],
    step: Duration,
    drain: Duration,
    t0: Instant,
    barrier: &Barrier,
    tx: &mpsc::Sender<StepCount>,
) -> Result<()> {
    let mut poll = Poll::new()?;
    for (i, (c, _)) in clients.iter_mut().enumerate() {
        poll.registry()
            .register(&mut c.socket, Token(i), Interest::READABLE)?;
    }
    let mut events = Events::with_capacity(1024);
    let mut recv = RecvBatch::new(64, 2048, 0);
    let mut send = SendBatch::new();
    let mut run = Vec::new();
    let n = clients.len();
    let mut rr = 0usize;

    for &rate in rates {
        let mut count = StepCount::default();
        barrier.wait();
        let start = Instant::now();
        let start_ns = nanos(t0);
        let end = start + step;
        let mut ready: Vec<usize> = Vec::new();
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            // Open loop: send what is due by now (flat out: a batch per client).
            let due = if rate == 0 {
                (n * 8) as u64
            } else {
                ((now - start).as_nanos() as u64 * rate / 1_000_000_000).saturating_sub(count.sent)
            };
            if due > 0 {
                let stamp = nanos(t0).to_le_bytes();
                let per = (due.div_ceil(n as u64)).clamp(1, 64) as usize;
                let mut left = due as usize;
                let mut visited = 0;
                while left > 0 && visited < n {
                    let k = per.min(left);
                    let (c, packet) = &mut clients[rr];
                    packet[4..12].copy_from_slice(&stamp);
                    let got = match &mut c.socket {
                        Conn::Udp(socket) => send
                            .send(socket, std::iter::repeat_n((&packet[..], None), k))
                            .unwrap_or(0),
                        conn @ (Conn::Tcp { .. } | Conn::Tls { .. }) => {
                            run.clear();
                            for _ in 0..k {
                                run.extend_from_slice(packet);
                            }
                            conn.send(&run).map_or(0, |()| k)
                        }
                    };
                    count.sent += got as u64;
                    left -= k;
                    rr = (rr + 1) % n;
                    visited += 1;
                }
            }
            let timeout = if rate == 0 {
                Duration::ZERO
            } else {
                Duration::from_micros(200)
            };
            poll.poll(&mut events, Some(timeout))?;
            ready.extend(events.iter().map(|e| e.token().0));
            receive(
                &mut clients,
                &mut ready,
                &mut recv,
                &mut count,
                start_ns,
                t0,
            );
        }
        barrier.wait();
        let drain_end = Instant::now() + drain;
        while Instant::now() < drain_end {
            poll.poll(&mut events, Some(Duration::from_millis(20)))?;
            ready.extend(events.iter().map(|e| e.token().0));
            receive(
                &mut clients,
                &mut ready,
                &mut recv,
                &mut count,
                start_ns,
                t0,
            );
        }
        barrier.wait();
        let _ = tx.send(count);
    }
    Ok(())
}

/// Drains every ready socket (the poll is edge-triggered) and counts this step's packets.
fn receive(
    clients: &mut [(TurnClient, Vec<u8>)],
    ready: &mut Vec<usize>,
    recv: &mut RecvBatch,
    count: &mut StepCount,
    start_ns: u64,
    t0: Instant,
) {
    let mut on_packet = |d: &[u8], now: u64| {
        if d.len() < 12 || !(0x40..0x80).contains(&d[0]) {
            return;
        }
        let sent_at = u64::from_le_bytes(d[4..12].try_into().expect("8 bytes"));
        if sent_at >= start_ns {
            count.received += 1;
            count.latency.record_us(now.saturating_sub(sent_at) / 1000);
        } else {
            count.late += 1;
        }
    };
    let mut stream_buf = [0u8; 16 * 1024];
    for i in ready.drain(..) {
        match &mut clients[i].0.socket {
            Conn::Udp(socket) => {
                while let Ok(got) = recv.recv(socket) {
                    let now = nanos(t0);
                    for j in 0..got {
                        on_packet(recv.data(j), now);
                    }
                }
            }
            conn @ (Conn::Tcp { .. } | Conn::Tls { .. }) => {
                let _ = conn.drain(&mut stream_buf, |d| on_packet(d, nanos(t0)));
            }
        }
    }
}

/// The external peer of echo mode: sends every datagram back where it came from.
fn start_echo(
    ip: IpAddr,
    stop: Arc<AtomicBool>,
) -> Result<(SocketAddr, std::thread::JoinHandle<()>)> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(SocketAddr::new(ip, 0)),
        socket2::Type::DGRAM,
        None,
    )?;
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&SocketAddr::new(ip, 0).into())?;
    socket.set_nonblocking(true)?;
    let std: std::net::UdpSocket = socket.into();
    let addr = std.local_addr()?;
    let mut socket = mio::net::UdpSocket::from_std(std);
    let handle = std::thread::spawn(move || {
        let mut poll = Poll::new().expect("poll");
        poll.registry()
            .register(&mut socket, Token(0), Interest::READABLE)
            .expect("register");
        let mut events = Events::with_capacity(8);
        let mut recv = RecvBatch::new(64, 2048, 0);
        let mut send = SendBatch::new();
        while !stop.load(Ordering::Relaxed) {
            let _ = poll.poll(&mut events, Some(Duration::from_millis(100)));
            while let Ok(got) = recv.recv(&socket) {
                let back = (0..got).filter_map(|j| Some((recv.data(j), Some(recv.source(j)?))));
                let _ = send.send(&socket, back);
            }
        }
    });
    Ok((addr, handle))
}
