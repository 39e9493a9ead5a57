//! TURN I/O: UDP, TCP and TLS listeners, relay sockets, and the data path.
//!
//! Every listener runs its own receive loop; every allocation runs one task
//! that reads its relay socket. The data path takes the allocation table's
//! read lock and the allocation's own mutex for a lookup, never across an
//! await, and reuses one buffer per task: no per-packet allocation on UDP.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Mutex as AsyncMutex;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::core::{
    Allocation, CloseReason, Core, FiveTuple, Handled, PortChoice, RelayBinder, Stats, Transport,
};
use super::wire::{self, HEADROOM, Kind};
use crate::signaling::protocol::{PeerId, RoomId};

/// Largest UDP payload we relay.
const MAX_PAYLOAD: usize = 65_535;
/// A stream connection without an allocation is closed after this much silence.
const IDLE_WITHOUT_ALLOCATION: Duration = Duration::from_secs(60);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds relay sockets on a configured IP in a configured port range.
pub struct UdpRelayBinder {
    pub ipv4: IpAddr,
    pub ipv6: Option<IpAddr>,
    pub ports: (u16, u16),
}

impl RelayBinder for UdpRelayBinder {
    type Relay = UdpSocket;

    fn bind(&self, ipv6: bool, choice: PortChoice) -> std::io::Result<(UdpSocket, SocketAddr)> {
        let ip = if ipv6 {
            self.ipv6.ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::Unsupported, "no IPv6 relay address")
            })?
        } else {
            self.ipv4
        };
        let bind = |port: u16| -> std::io::Result<(UdpSocket, SocketAddr)> {
            let socket = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
            socket.set_nonblocking(true)?;
            let local = socket.local_addr()?;
            Ok((UdpSocket::from_std(socket)?, local))
        };
        let (lo, hi) = self.ports;
        if let PortChoice::Exactly(port) = choice {
            if !(lo..=hi).contains(&port) {
                return Err(std::io::Error::other("port outside the relay range"));
            }
            return bind(port);
        }
        let span = u32::from(hi - lo) + 1;
        let start = rand::rng().next_u32() % span;
        let mut last = None;
        // Random start, then a bounded linear probe: fast when the range is mostly free.
        for i in 0..span.min(512) {
            let port = lo + ((start + i) % span) as u16;
            if choice == PortChoice::Even && port % 2 == 1 {
                continue;
            }
            match bind(port) {
                Ok(pair) => return Ok(pair),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("relay port range exhausted")))
    }
}

/// The way back to a client: its UDP listener socket, or its stream's write half.
#[derive(Clone)]
pub enum ClientSink {
    Udp(Arc<UdpSocket>),
    Stream(Arc<AsyncMutex<WriteHalf<Box<dyn Stream>>>>),
}

/// A client stream (TCP or TLS over TCP).
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

impl ClientSink {
    async fn send(&self, bytes: &[u8], client: SocketAddr) -> std::io::Result<()> {
        match self {
            ClientSink::Udp(socket) => socket.send_to(bytes, client).await.map(|_| ()),
            ClientSink::Stream(writer) => writer.lock().await.write_all(bytes).await,
        }
    }

    fn pads(&self) -> bool {
        matches!(self, ClientSink::Stream(_))
    }
}

pub type TurnCore = Core<UdpRelayBinder>;

/// The TURN server: the core plus the tasks that feed it.
pub struct TurnServer {
    pub core: Arc<TurnCore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    grace: Duration,
}

impl TurnServer {
    pub fn new(
        core: TurnCore,
        tasks: TaskTracker,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> Arc<TurnServer> {
        let server = Arc::new(TurnServer {
            core: Arc::new(core),
            tasks,
            shutdown,
            grace,
        });
        server.tasks.spawn(Arc::clone(&server).sweep_loop());
        server
    }

    async fn sweep_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    self.core.close_all();
                    return;
                }
                _ = tick.tick() => {
                    self.core.sweep(Instant::now());
                }
            }
        }
    }

    /// Closes the allocations of `peer` after the grace period, unless it is back in `room` by then.
    pub fn peer_left(
        self: &Arc<Self>,
        room: RoomId,
        peer: PeerId,
        still_member: impl Fn() -> bool + Send + 'static,
    ) {
        let server = Arc::clone(self);
        self.tasks.spawn(async move {
            tokio::select! {
                () = server.shutdown.cancelled() => {}
                () = tokio::time::sleep(server.grace) => {
                    if !still_member() {
                        server.core.close_peer(&room, &peer, CloseReason::PeerLeft);
                    }
                }
            }
        });
    }

    /// Serves STUN/TURN on a bound UDP socket.
    pub async fn serve_udp(self: Arc<Self>, socket: UdpSocket) {
        let socket = Arc::new(socket);
        let Ok(local) = socket.local_addr() else {
            return;
        };
        let sink = ClientSink::Udp(Arc::clone(&socket));
        let mut buf = vec![0u8; MAX_PAYLOAD];
        loop {
            let (n, client) = tokio::select! {
                () = self.shutdown.cancelled() => return,
                r = socket.recv_from(&mut buf) => match r {
                    Ok(pair) => pair,
                    Err(e) => {
                        // ICMP errors from earlier sends surface here on some kernels; keep serving.
                        debug!(error = %e, "TURN UDP receive error");
                        continue;
                    }
                },
            };
            let tuple = FiveTuple {
                client,
                server: local,
                transport: Transport::Udp,
            };
            self.handle_packet(&buf[..n], tuple, &sink).await;
        }
    }

    /// Serves STUN/TURN over TCP, or over TLS when `tls` is given.
    pub async fn serve_stream(self: Arc<Self>, listener: TcpListener, tls: Option<TlsAcceptor>) {
        let Ok(local) = listener.local_addr() else {
            return;
        };
        loop {
            let (tcp, client) = tokio::select! {
                () = self.shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(pair) => pair,
                    Err(e) => {
                        warn!(error = %e, "TURN accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let server = Arc::clone(&self);
            let tls = tls.clone();
            self.tasks.spawn(async move {
                let (stream, transport): (Box<dyn Stream>, _) = match tls {
                    None => (Box::new(tcp), Transport::Tcp),
                    Some(acceptor) => {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => (Box::new(s), Transport::Tls),
                            _ => return debug!(%client, "TURN TLS handshake failed"),
                        }
                    }
                };
                let tuple = FiveTuple {
                    client,
                    server: local,
                    transport,
                };
                server.serve_connection(stream, tuple).await;
            });
        }
    }

    /// Reads framed STUN/ChannelData from one stream until it closes; then its allocation goes.
    pub async fn serve_connection(self: Arc<Self>, stream: Box<dyn Stream>, tuple: FiveTuple) {
        let (mut reader, writer) = tokio::io::split(stream);
        let sink = ClientSink::Stream(Arc::new(AsyncMutex::new(writer)));
        let mut buf = vec![0u8; wire::MAX_STREAM_FRAME];
        loop {
            let idle = if self.core.get(&tuple).is_some() {
                Duration::from_secs(3700)
            } else {
                IDLE_WITHOUT_ALLOCATION
            };
            let head = tokio::select! {
                () = self.shutdown.cancelled() => break,
                r = tokio::time::timeout(idle, reader.read_exact(&mut buf[..4])) => r,
            };
            if !matches!(head, Ok(Ok(_))) {
                break;
            }
            let Some(len) = wire::stream_frame_len([buf[0], buf[1], buf[2], buf[3]]) else {
                Stats::bump(&self.core.stats.malformed);
                debug!(client = %tuple.client, "stream is not STUN or ChannelData, closing");
                break;
            };
            if reader.read_exact(&mut buf[4..len]).await.is_err() {
                break;
            }
            self.handle_packet(&buf[..len], tuple, &sink).await;
        }
        self.core.close(&tuple, CloseReason::TransportClosed);
    }

    async fn handle_packet(&self, packet: &[u8], tuple: FiveTuple, sink: &ClientSink) {
        match wire::classify(packet) {
            Kind::ChannelData { number, len } => {
                let Some(allocation) = self.core.get(&tuple) else {
                    return Stats::bump(&self.core.stats.no_permission);
                };
                let peer = allocation
                    .state
                    .lock()
                    .expect("allocation")
                    .channel_peer(Instant::now(), number);
                match peer {
                    Some(peer) => {
                        self.send_to_peer(&allocation, &packet[4..4 + len], peer)
                            .await
                    }
                    None => Stats::bump(&self.core.stats.no_permission),
                }
            }
            Kind::Stun => {
                let unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                match self.core.handle_stun(Instant::now(), unix, tuple, packet) {
                    Handled::Reply(reply) => self.reply(sink, &reply, tuple.client).await,
                    Handled::Allocated(reply, allocation) => {
                        self.tasks.spawn(relay_loop(allocation, sink.clone()));
                        self.reply(sink, &reply, tuple.client).await;
                    }
                    Handled::Send {
                        allocation,
                        peer,
                        data,
                    } => self.send_to_peer(&allocation, &data, peer).await,
                    Handled::Nothing => {}
                }
            }
            Kind::Other => Stats::bump(&self.core.stats.malformed),
        }
    }

    async fn reply(&self, sink: &ClientSink, bytes: &[u8], client: SocketAddr) {
        if let Err(e) = sink.send(bytes, client).await {
            debug!(%client, error = %e, "cannot answer TURN client");
        }
    }

    /// Relays to a peer. A failed send is counted and dropped; it never closes the allocation.
    async fn send_to_peer(
        &self,
        allocation: &Allocation<UdpSocket>,
        data: &[u8],
        peer: SocketAddr,
    ) {
        if let Err(e) = allocation.relay.send_to(data, peer).await {
            Stats::bump(&self.core.stats.relay_send_failures);
            debug!(%peer, error = %e, "relay send failed");
        }
    }
}

/// Reads one allocation's relay socket and forwards permitted peer traffic to the client.
async fn relay_loop(allocation: Arc<Allocation<UdpSocket>>, sink: ClientSink) {
    let mut buf = vec![0u8; HEADROOM + MAX_PAYLOAD + 4];
    let pad = sink.pads();
    loop {
        let (n, from) = tokio::select! {
            () = allocation.closed.cancelled() => return,
            r = allocation.relay.recv_from(&mut buf[HEADROOM..HEADROOM + MAX_PAYLOAD]) => match r {
                Ok(pair) => pair,
                Err(e) => {
                    debug!(error = %e, "relay receive error");
                    continue;
                }
            },
        };
        let from = SocketAddr::new(super::policy::normalize(from.ip()), from.port());
        let channel = {
            let now = Instant::now();
            let state = allocation.state.lock().expect("allocation");
            if !state.is_permitted(now, from.ip()) {
                continue;
            }
            state.channel_of(now, from)
        };
        let range = match channel {
            Some(number) => wire::channel_data_in_place(&mut buf, HEADROOM, n, number, pad),
            None => {
                let mut tid = [0u8; 12];
                rand::rng().fill_bytes(&mut tid);
                wire::data_indication_in_place(&mut buf, HEADROOM, n, from, tid)
            }
        };
        if let Err(e) = sink.send(&buf[range], allocation.tuple.client).await {
            debug!(client = %allocation.tuple.client, error = %e, "cannot forward to TURN client");
            if !matches!(sink, ClientSink::Udp(_)) {
                return;
            }
        }
    }
}
