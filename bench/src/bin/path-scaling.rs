//! Does anything on the TURN packet path serialise the cores? The real `turn::core::Core`
//! and `turn::route` decisions, without sockets: allocations made by real STUN requests
//! (Allocate with its 401 challenge, ChannelBind), then one thread per core pushes
//! ChannelData through the same calls the UDP listener makes per datagram (the 5-tuple's
//! allocation, the channel's peer, relay-to-relay lookup, the counters), each thread on its
//! own allocations, as SO_REUSEPORT receive loops would. What is shared by all threads is
//! what the design shares: the allocation table and the counters.
//!
//! It reports packets per second with 1 thread and with `--threads` threads; the ratio is
//! the scaling (the number of threads when nothing serialises). Sockets and the kernel
//! are left out on purpose: they scale per core by themselves (one socket and queue per
//! receive loop), and with them this 2-core machine could not separate the two.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use stun::agent::TransactionId;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter, METHOD_ALLOCATE, METHOD_CHANNEL_BIND, Message,
    MessageType, Method, Setter,
};
use stun::textattrs::{Nonce, Realm, Username};
use switchboard::config::Secret;
use switchboard::turn::auth::NonceKey;
use switchboard::turn::core::{
    Allocation, Core, CoreConfig, FiveTuple, Handled, Membership, PortChoice, RelayBinder,
    Transport,
};
use switchboard::turn::policy::PeerPolicy;
use switchboard::turn::route::{self, Relay, Route};
use switchboard::turn::wire::{CHANNEL_HEADER, HEADROOM};
use turn::proto::channum::ChannelNumber;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;

#[derive(Parser)]
#[command(about = "Scaling of the TURN packet path across threads (no sockets)")]
struct Args {
    /// Allocations in all (split evenly between the threads).
    #[arg(long, default_value_t = 1000)]
    allocations: usize,
    /// Threads of the parallel run (the reference run has one).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Runs per mode and thread count; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Which data paths to run (default: all).
    #[arg(long, value_enum)]
    mode: Vec<Mode>,
    /// Payload bytes per packet.
    #[arg(long, default_value_t = 120)]
    size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// ChannelData from a client to an external peer: table lookup by 5-tuple, channel, a
    /// miss in the relayed-address table, counters.
    ClientPeer,
    /// ChannelData from a client to another allocation's relayed address, handed to that
    /// allocation's client: two table lookups, both allocations' state, counters.
    RelayToRelay,
    /// A datagram from a peer on a relay: the allocation's state, framing, counters.
    PeerClient,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::ClientPeer => "client-peer",
            Mode::RelayToRelay => "relay-to-relay",
            Mode::PeerClient => "peer-client",
        }
    }
}

/// A relay with no socket: its client is always reachable.
struct FakeRelay;

impl Relay for FakeRelay {
    type Sink = ();
    fn client(&self) -> Option<&()> {
        Some(&())
    }
}

struct FakeBinder(AtomicU16);

impl RelayBinder for FakeBinder {
    type Relay = FakeRelay;
    fn bind(&self, _ipv6: bool, _port: PortChoice) -> std::io::Result<(FakeRelay, SocketAddr)> {
        let port = self.0.fetch_add(1, Ordering::Relaxed);
        Ok((FakeRelay, SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)))
    }
    fn dont_fragment(&self, _relay: &FakeRelay) -> std::io::Result<()> {
        Ok(())
    }
}

const REALM: &str = "bench";
const USER: &str = "bench";
const PASSWORD: &str = "bench";

type BenchCore = Core<FakeBinder>;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn core(allocations: usize) -> BenchCore {
    let config = CoreConfig {
        realm: REALM.into(),
        secrets: vec![Secret::new("unused".into())],
        static_users: vec![(USER.into(), Secret::new(PASSWORD.into()))],
        external_ip: None,
        max_allocations_per_credential: allocations,
        max_allocations_per_room: allocations,
        max_allocations_per_source: allocations,
        max_allocations: allocations,
        source_prefix_v6: 64,
        challenges_per_source_s: u32::MAX / 8,
        fence: false,
        fence_room_credentials: false,
        max_allocation_bytes_per_s: 0,
        max_room_bytes_per_s: 0,
    };
    let membership: Membership = Arc::new(|_, _| true);
    Core::new(
        config,
        NonceKey::new(b"path-scaling", 3600),
        PeerPolicy::new(vec![], vec![], vec![], vec![]),
        FakeBinder(AtomicU16::new(20000)),
        membership,
    )
}

fn client(i: usize) -> FiveTuple {
    FiveTuple {
        client: SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(198, 51, 99, 1)),
            u16::try_from(10000 + i).expect("fewer than 55,000 allocations"),
        ),
        server: "198.51.99.2:3478".parse().expect("address"),
        transport: Transport::Udp,
    }
}

/// A request of `method`, authenticated when `nonce` is given.
fn request(method: Method, mut attrs: Vec<Box<dyn Setter>>, nonce: Option<&str>) -> Vec<u8> {
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(method, CLASS_REQUEST)),
    ];
    setters.append(&mut attrs);
    if let Some(nonce) = nonce {
        setters.push(Box::new(Username::new(
            stun::attributes::ATTR_USERNAME,
            USER.into(),
        )));
        setters.push(Box::new(Realm::new(
            stun::attributes::ATTR_REALM,
            REALM.into(),
        )));
        setters.push(Box::new(Nonce::new(
            stun::attributes::ATTR_NONCE,
            nonce.into(),
        )));
        setters.push(Box::new(MessageIntegrity::new_long_term_integrity(
            USER.into(),
            REALM.into(),
            PASSWORD.into(),
        )));
    }
    setters.push(Box::new(FINGERPRINT));
    let mut m = Message::new();
    m.build(&setters).expect("a request builds");
    m.raw
}

fn decoded(h: Handled<FakeRelay>) -> Result<Message> {
    let raw = match h {
        Handled::Reply(r) | Handled::Allocated(r, _) => r,
        _ => bail!("no reply"),
    };
    let mut m = Message::new();
    m.raw = raw;
    m.decode()?;
    Ok(m)
}

/// Allocates for `tuple` the way a client does (401, then authenticated); returns the
/// relayed address and the nonce.
fn allocate(core: &BenchCore, tuple: FiveTuple) -> Result<(SocketAddr, String)> {
    let udp = || -> Box<dyn Setter> {
        Box::new(RequestedTransport {
            protocol: turn::proto::PROTO_UDP,
        })
    };
    let now = Instant::now();
    let challenge = decoded(core.handle_stun(
        now,
        unix_now(),
        tuple,
        &request(METHOD_ALLOCATE, vec![udp()], None),
    ))?;
    let nonce = Nonce::get_from_as(&challenge, stun::attributes::ATTR_NONCE)
        .context("the 401 carries a nonce")?
        .text;
    let attrs: Vec<Box<dyn Setter>> = vec![udp(), Box::new(Lifetime(Duration::from_secs(3600)))];
    let reply = decoded(core.handle_stun(
        now,
        unix_now(),
        tuple,
        &request(METHOD_ALLOCATE, attrs, Some(&nonce)),
    ))?;
    if reply.typ.class != CLASS_SUCCESS_RESPONSE {
        bail!("Allocate refused");
    }
    let mut relayed = RelayedAddress::default();
    relayed.get_from(&reply)?;
    Ok((SocketAddr::new(relayed.ip, relayed.port), nonce))
}

fn channel_bind(
    core: &BenchCore,
    tuple: FiveTuple,
    nonce: &str,
    number: u16,
    peer: SocketAddr,
) -> Result<()> {
    let attrs: Vec<Box<dyn Setter>> = vec![
        Box::new(ChannelNumber(number)),
        Box::new(PeerAddress {
            ip: peer.ip(),
            port: peer.port(),
        }),
    ];
    let reply = decoded(core.handle_stun(
        Instant::now(),
        unix_now(),
        tuple,
        &request(METHOD_CHANNEL_BIND, attrs, Some(nonce)),
    ))?;
    if reply.typ.class != CLASS_SUCCESS_RESPONSE {
        bail!("ChannelBind to {peer} refused");
    }
    Ok(())
}

const CHANNEL: u16 = 0x4000;

/// An external peer of allocation `i`.
fn external_peer(i: usize) -> SocketAddr {
    let i = u16::try_from(i % 50_000).expect("small");
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 98, 1)), 10000 + i)
}

/// A core with `n` allocations, each with a channel: to an external peer, or (relay to
/// relay) to the relayed address of its pair's allocation, both ways.
fn setup(n: usize, mode: Mode) -> Result<(BenchCore, Vec<FiveTuple>)> {
    let core = core(n);
    let tuples: Vec<FiveTuple> = (0..n).map(client).collect();
    let mut made = Vec::with_capacity(n);
    for t in &tuples {
        made.push(allocate(&core, *t)?);
    }
    for (i, t) in tuples.iter().enumerate() {
        let nonce = &made[i].1;
        let peer = match mode {
            Mode::RelayToRelay => made[i ^ 1].0,
            Mode::ClientPeer | Mode::PeerClient => external_peer(i),
        };
        channel_bind(&core, *t, nonce, CHANNEL, peer)?;
    }
    Ok((core, tuples))
}

/// Pushes packets for the allocations of `mine` in turn until `stop`; returns how many.
fn pump(core: &BenchCore, mine: &[FiveTuple], mode: Mode, size: usize, stop: &AtomicBool) -> u64 {
    let mut buf = vec![0u8; HEADROOM + CHANNEL_HEADER + size + 4];
    let start = HEADROOM + CHANNEL_HEADER;
    let allocations: Vec<Arc<Allocation<FakeRelay>>> =
        mine.iter().filter_map(|t| core.get(t)).collect::<Vec<_>>();
    let mut sent = 0u64;
    let mut delivered = 0u64;
    // A receive loop takes the time once per batch.
    const BATCH: usize = 32;
    'run: loop {
        for chunk in 0..mine.len().div_ceil(BATCH) {
            let now = Instant::now();
            let range = chunk * BATCH..((chunk + 1) * BATCH).min(mine.len());
            for i in range {
                match mode {
                    Mode::ClientPeer | Mode::RelayToRelay => {
                        let route = route::channel_data(
                            core.get(&mine[i]),
                            now,
                            CHANNEL,
                            &mut buf,
                            start..start + size,
                            |relayed| core.by_relayed(relayed),
                            &core.stats,
                        );
                        match route {
                            Route::ToPeer { payload, .. } => {
                                core.stats.to_peers.add(Transport::Udp, 1, payload.len());
                                delivered += 1;
                            }
                            Route::RelayToRelay { frame, .. } => {
                                core.stats.to_clients.add(Transport::Udp, 1, frame.len());
                                delivered += 1;
                            }
                            Route::Drop(_) => {}
                        }
                    }
                    Mode::PeerClient => {
                        let a = &allocations[i];
                        let framed = route::peer_data(
                            &mut a.state.lock().expect("not poisoned"),
                            now,
                            Transport::Udp,
                            external_peer(i + offset_of(mine)),
                            &mut buf,
                            start..start + size,
                            |relay| core.relay_at(relay, None),
                            &core.stats,
                        );
                        if let Ok(frame) = framed {
                            core.stats.to_clients.add(Transport::Udp, 1, frame.len());
                            delivered += 1;
                        }
                    }
                }
                sent += 1;
            }
            if stop.load(Ordering::Relaxed) {
                break 'run;
            }
        }
    }
    assert_eq!(sent, delivered, "every packet is routed");
    sent
}

/// The index of the first allocation of `mine` (tuples are numbered by client port).
fn offset_of(mine: &[FiveTuple]) -> usize {
    mine.first()
        .map_or(0, |t| usize::from(t.client.port()) - 10000)
}

/// Packets per second of `threads` threads, each on its own slice of the allocations.
fn run(core: &BenchCore, tuples: &[FiveTuple], mode: Mode, threads: usize, args: &Args) -> f64 {
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(threads + 1);
    let per = tuples.len() / threads;
    let (total, elapsed) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let mine = &tuples[t * per..(t + 1) * per];
                let (stop, barrier) = (&stop, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    pump(core, mine, mode, args.size, stop)
                })
            })
            .collect();
        barrier.wait();
        let began = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(args.seconds));
        stop.store(true, Ordering::Relaxed);
        let total: u64 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
        (total, began.elapsed())
    });
    total as f64 / elapsed.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.allocations < 2 * args.threads || args.allocations % 2 != 0 {
        bail!("--allocations must be even and at least twice --threads");
    }
    let modes = if args.mode.is_empty() {
        vec![Mode::ClientPeer, Mode::RelayToRelay, Mode::PeerClient]
    } else {
        args.mode.clone()
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "# {} allocations, {}-byte payloads, {} s per run, median of {}; {} cores here",
        args.allocations, args.size, args.seconds, args.repeats, cores
    );
    println!(
        "mode            1 thread pkt/s   {} threads pkt/s   scaling",
        args.threads
    );
    for mode in modes {
        let (core, tuples) = setup(args.allocations, mode)?;
        let mut one = Vec::new();
        let mut many = Vec::new();
        for _ in 0..args.repeats {
            one.push(run(&core, &tuples, mode, 1, &args));
            many.push(run(&core, &tuples, mode, args.threads, &args));
        }
        let (one, many) = (median(one), median(many));
        println!(
            "{:<15} {:>15.0} {:>17.0} {:>9.2}",
            mode.name(),
            one,
            many,
            many / one
        );
        println!(
            "{{\"scenario\":\"path-scaling-{}\",\"allocations\":{},\"threads\":{},\"one_pps\":{:.0},\"many_pps\":{:.0},\"scaling\":{:.3}}}",
            mode.name(),
            args.allocations,
            args.threads,
            one,
            many,
            many / one
        );
    }
    Ok(())
}
