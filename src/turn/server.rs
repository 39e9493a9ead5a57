//! TURN I/O: UDP, TCP and TLS listeners, relay sockets, and the data path.
//!
//! Every listener runs its own receive loop; every allocation runs one task
//! that reads its relay socket. On UDP both read with `recvmmsg` and write with
//! `sendmmsg` (one syscall per batch, not per packet), into a per-thread scratch
//! batch whose slots leave headroom for framing in place: no per-packet allocation.
//! Where each data packet goes and how it is framed (to a peer, to a client, relay to
//! relay, or dropped) is `turn::route`'s decision; this module only carries it out.
//! A UDP listener on a wildcard address learns each datagram's destination: it is the
//! `server` of the 5-tuple, and everything toward that client leaves from it, since a
//! NAT (or the client) drops an answer from another address of a multi-homed host.
//! The data path takes no lock shared by all clients: it finds allocations in the core's
//! lock-free index and takes an allocation's own mutex briefly, never across an await;
//! its counters are per thread. It never waits for a client: a TCP/TLS client's frames
//! go into its bounded `Outbox`, which its own writer task drains.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use tokio::io::Interest;
use tokio::net::{TcpListener, UdpSocket};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::core::{
    Allocation, CloseReason, Core, FiveTuple, Handled, PortChoice, RelayBinder, Stats, Transport,
};
use super::route::{self, Relay, Route};
use super::stats::{ConnectionLimit, StreamClose};
pub use super::stream::Stream;
use super::stream::{FrameError, Frames, Outbox, WRITE_DEADLINE, WriterEnd};
use super::wire::{self, CHANNEL_HEADER, HEADROOM, Kind};
use crate::limiter::{ConnectionGuard, ConnectionLimiter, ConnectionRefused};
use crate::metrics::Label;
use crate::mmsg::{self, RecvBatch, SendBatch};
use crate::model::{PeerId, Scope};
use crate::sync::Locked;

/// Largest UDP payload we relay.
const MAX_PAYLOAD: usize = 65_535;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// At the connection limit, a newcomer closes the oldest connection that has gone this
/// long without allocating (a real client allocates within a few round trips).
const EVICT_AFTER: Duration = Duration::from_secs(2);

/// Limits on TURN connections over TCP and TLS.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    /// IPv6 sources are counted per network of this prefix length.
    pub source_prefix_v6: u8,
    /// A connection that has not allocated within this is closed.
    pub allocate_timeout: Duration,
}

/// Binds relay sockets on a configured IP in a configured port range.
pub struct UdpRelayBinder {
    pub ipv4: IpAddr,
    pub ipv6: Option<IpAddr>,
    pub ports: (u16, u16),
}

impl RelayBinder for UdpRelayBinder {
    type Relay = RelaySocket;

    fn bind(&self, ipv6: bool, choice: PortChoice) -> std::io::Result<(RelaySocket, SocketAddr)> {
        let ip = if ipv6 {
            self.ipv6.ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::Unsupported, "no IPv6 relay address")
            })?
        } else {
            self.ipv4
        };
        let bind = |port: u16| -> std::io::Result<(RelaySocket, SocketAddr)> {
            let socket = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
            socket.set_nonblocking(true)?;
            let local = socket.local_addr()?;
            let relay = RelaySocket {
                socket: UdpSocket::from_std(socket)?,
                client: OnceLock::new(),
            };
            Ok((relay, local))
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

    fn dont_fragment(&self, relay: &RelaySocket) -> std::io::Result<()> {
        crate::net::set_dont_fragment(&relay.socket, relay.socket.local_addr()?.is_ipv6())
    }
}

/// An allocation's relay socket and, once the allocation is granted, the way back to its client.
pub struct RelaySocket {
    pub socket: UdpSocket,
    client: OnceLock<ClientSink>,
}

impl Relay for RelaySocket {
    type Sink = ClientSink;

    #[inline]
    fn client(&self) -> Option<&ClientSink> {
        self.client.get()
    }
}

impl std::fmt::Debug for RelaySocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelaySocket")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// The way back to a client: its UDP listener socket, or its stream's outbox.
#[derive(Clone)]
pub enum ClientSink {
    Udp(UdpSink),
    Stream(Outbox),
}

/// A UDP listener as the way back to one client.
#[derive(Clone)]
pub struct UdpSink {
    socket: Arc<UdpSocket>,
    /// The address the client sends to, which answers must leave from, when the
    /// listener is bound to a wildcard address; `None` when it is bound to one address.
    from: Option<IpAddr>,
}

impl ClientSink {
    /// Sends (UDP) or queues (stream) whole frames for `client` at once, never waiting;
    /// false when they were dropped (a full socket or queue).
    fn deliver(&self, bytes: &[u8], client: SocketAddr) -> bool {
        match self {
            ClientSink::Udp(udp) => send_now(&udp.socket, bytes, client, udp.from).is_ok(),
            ClientSink::Stream(outbox) => outbox.push(bytes.to_vec()),
        }
    }
}

pub type TurnCore = Core<UdpRelayBinder>;

/// The TURN server: the core plus the tasks that feed it.
pub struct TurnServer {
    pub(super) core: Arc<TurnCore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    grace: Duration,
    /// TCP/TLS connections, per source and in total.
    connections: Arc<ConnectionLimiter>,
    allocate_timeout: Duration,
    /// TCP/TLS connections without an allocation yet, oldest first, by when they started
    /// (and a sequence number); each with the token that closes it.
    unallocated: Arc<Mutex<Unallocated>>,
    next_connection: AtomicU64,
}

impl TurnServer {
    pub fn new(
        core: TurnCore,
        tasks: TaskTracker,
        shutdown: CancellationToken,
        grace: Duration,
        limits: StreamLimits,
    ) -> Arc<TurnServer> {
        let server = Arc::new(TurnServer {
            core: Arc::new(core),
            tasks,
            shutdown,
            grace,
            connections: Arc::new(ConnectionLimiter::with_v6_prefix(
                limits.max_connections,
                limits.max_connections_per_source,
                limits.source_prefix_v6,
            )),
            allocate_timeout: limits.allocate_timeout,
            unallocated: Arc::default(),
            next_connection: AtomicU64::new(0),
        });
        server.tasks.spawn(Arc::clone(&server).sweep_loop());
        server
    }

    async fn sweep_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    self.core.close_all(Instant::now());
                    return;
                }
                _ = tick.tick() => {
                    self.core.sweep(Instant::now());
                }
            }
        }
    }

    /// Closes the allocations of `peer` in `scope` after the grace period, unless it is back by then.
    pub fn peer_left(
        self: &Arc<Self>,
        scope: Scope,
        peer: PeerId,
        still_member: impl Fn() -> bool + Send + 'static,
    ) {
        // Most peers never allocate (their calls go direct): no timer for them. (An Allocate
        // that passed its membership check just before the leave and lands just after this
        // check lives out its lifetime, at most `turn`'s 3600 s, instead of the grace period.)
        if !self.core.has_peer(&scope, &peer) {
            self.core.forget(&scope, &peer);
            return;
        }
        let server = Arc::clone(self);
        self.tasks.spawn(async move {
            tokio::select! {
                () = server.shutdown.cancelled() => {}
                () = tokio::time::sleep(server.grace) => {
                    if !still_member() {
                        server
                            .core
                            .close_peer(&scope, &peer, CloseReason::PeerLeft, Instant::now());
                    }
                }
            }
        });
    }

    /// The TURN metric families.
    pub fn metrics(&self) -> Vec<crate::metrics::Family> {
        self.core
            .stats
            .families(self.core.allocation_count(), self.connections.total())
    }

    /// New connection limits for the connections that come next (a reload).
    pub fn set_connection_limits(&self, max_connections: usize, per_source: usize) {
        self.connections.set_limits(max_connections, per_source);
    }

    /// A place for a TCP/TLS connection from `client`, taken before any TLS work;
    /// `None` (counted) when a connection limit is reached. At the total limit, the
    /// oldest connection that has gone `EVICT_AFTER` without allocating (a TLS handshake
    /// that drags on included) makes room: a crowd of idle connections cannot keep a
    /// real client out.
    pub fn admit(&self, client: SocketAddr) -> Option<Admitted> {
        match self
            .connections
            .try_acquire_evicting(client.ip(), || self.evict_oldest_unallocated())
        {
            Ok(slot) => {
                let key = (
                    Instant::now(),
                    self.next_connection.fetch_add(1, Ordering::Relaxed),
                );
                let closed = self.shutdown.child_token();
                self.unallocated.locked().insert(key, closed.clone());
                Some(Admitted {
                    _slot: slot,
                    closed,
                    key,
                    unallocated: Arc::clone(&self.unallocated),
                })
            }
            Err(refused) => {
                let limit = match refused {
                    ConnectionRefused::Total => ConnectionLimit::Total,
                    ConnectionRefused::PerIp => ConnectionLimit::PerSource,
                };
                self.core.stats.connection_refusals.inc(limit);
                debug!(%client, limit = limit.as_str(), "TURN connection refused");
                None
            }
        }
    }

    /// Serves STUN/TURN on a bound UDP socket, a batch of datagrams per wake-up.
    pub async fn serve_udp(self: Arc<Self>, socket: UdpSocket) {
        let socket = Arc::new(socket);
        let Ok(local) = socket.local_addr() else {
            return;
        };
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                r = socket.readable() => if let Err(e) = r {
                    return warn!(error = %e, "TURN UDP socket failed");
                },
            }
            loop {
                match with_scratch(|s| self.udp_batch(&socket, local, s)) {
                    // A socket that never runs dry must not keep this worker from every
                    // other task: after tokio's budget of batches, yield.
                    Ok(_) => tokio::task::coop::consume_budget().await,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    // ICMP errors from earlier sends surface here on some kernels; keep serving.
                    Err(e) => debug!(error = %e, "TURN UDP receive error"),
                }
            }
        }
    }

    /// Receives one batch on a UDP listener and handles it without awaiting: what goes
    /// to stream clients is queued on their outboxes.
    ///
    /// On a wildcard listener, each datagram's 5-tuple names the address it was sent to,
    /// and everything toward that client leaves from it.
    fn udp_batch(
        &self,
        socket: &Arc<UdpSocket>,
        local: SocketAddr,
        s: &mut Scratch,
    ) -> std::io::Result<usize> {
        let got = socket.try_io(Interest::READABLE, || s.recv.recv(&**socket))?;
        let now = Instant::now();
        let wildcard = local.ip().is_unspecified();
        // Consecutive datagrams usually come from the same client: look it up once.
        let mut last: Option<(FiveTuple, Arc<Allocation<RelaySocket>>)> = None;
        for i in 0..got {
            let Some(client) = s.recv.source(i) else {
                continue;
            };
            let to = if wildcard {
                s.recv.destination(i)
            } else {
                None
            };
            let tuple = FiveTuple {
                client,
                server: SocketAddr::new(to.unwrap_or(local.ip()), local.port()),
                transport: Transport::Udp,
            };
            match wire::classify(s.recv.data(i)) {
                Kind::ChannelData { number, len } => {
                    let allocation = match &last {
                        Some((t, a)) if *t == tuple => Some(Arc::clone(a)),
                        _ => {
                            let found = self.core.get(&tuple);
                            if let Some(a) = &found {
                                last = Some((tuple, Arc::clone(a)));
                            }
                            found
                        }
                    };
                    let start = s.recv.headroom() + CHANNEL_HEADER;
                    match route::channel_data(
                        allocation,
                        now,
                        number,
                        s.recv.slot_mut(i),
                        start..start + len,
                        |relayed| self.core.by_relayed(relayed),
                        &self.core.stats,
                    ) {
                        Route::Drop(_) => {}
                        Route::ToPeer {
                            allocation,
                            peer,
                            payload,
                        } => s.out.push(Out {
                            via: Via::Relay(allocation),
                            slot: i,
                            range: payload,
                            dest: peer,
                        }),
                        Route::RelayToRelay { to, frame } => match to.relay.client() {
                            Some(ClientSink::Udp(sink)) => {
                                let (fd, from) = (sink.socket.as_raw_fd(), sink.from);
                                let dest = to.tuple.client;
                                s.out.push(Out {
                                    via: Via::Listener { fd, from, _to: to },
                                    slot: i,
                                    range: frame,
                                    dest,
                                });
                            }
                            Some(sink) => {
                                let bytes = &s.recv.slot(i)[frame];
                                self.forward(sink, bytes, to.tuple.client, to.tuple.transport);
                            }
                            None => {}
                        },
                    }
                }
                Kind::Stun => {
                    let sink = ClientSink::Udp(UdpSink {
                        socket: Arc::clone(socket),
                        from: to,
                    });
                    if let Some(reply) = self.on_stun(tuple, s.recv.data(i), &sink) {
                        // A reply the socket cannot take now is retransmitted for by the client.
                        let _ = send_now(socket, &reply, client, to);
                    }
                }
                Kind::Other => self.core.stats.malformed.inc(),
            }
        }
        s.flush(&self.core.stats);
        Ok(got)
    }

    /// Closes the oldest connection without an allocation, if it has waited `EVICT_AFTER`.
    fn evict_oldest_unallocated(&self) -> bool {
        let mut unallocated = self.unallocated.locked();
        let Some(entry) = unallocated.first_entry() else {
            return false;
        };
        if entry.key().0.elapsed() < EVICT_AFTER {
            return false;
        }
        entry.remove().cancel();
        self.core.stats.stream_closes.inc(StreamClose::Evicted);
        true
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
            // The limits come before any TLS work; a refused connection is just closed.
            let Some(admitted) = self.admit(client) else {
                continue;
            };
            crate::net::prepare_stream(&tcp);
            let tuple = move |transport| FiveTuple {
                client,
                server: local,
                transport,
            };
            let Some(acceptor) = tls.clone() else {
                let stream: Box<dyn Stream> = Box::new(tcp);
                let serve =
                    Arc::clone(&self).serve_connection(stream, tuple(Transport::Tcp), admitted);
                self.tasks.spawn(serve);
                continue;
            };
            let server = Arc::clone(&self);
            // The handshake's task ends when it is done, so its state is not kept for the
            // life of the connection.
            self.tasks.spawn(async move {
                let tcp = super::stream::record_buffer(tcp);
                let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                let done = tokio::select! {
                    () = admitted.closed.cancelled() => return,
                    done = handshake => done,
                };
                let Ok(Ok(stream)) = done else {
                    return debug!(%client, "TURN TLS handshake failed");
                };
                let stream: Box<dyn Stream> = Box::new(stream);
                let serve =
                    Arc::clone(&server).serve_connection(stream, tuple(Transport::Tls), admitted);
                server.tasks.spawn(serve);
            });
        }
    }

    /// Reads framed STUN/ChannelData from one stream until it closes, its allocation
    /// ends, or it breaks a deadline (no allocation within `allocate_timeout`, a frame
    /// that stops halfway, a write the client does not take); then its allocation goes.
    /// `admitted` is the connection's place under the connection limits (see `admit`).
    pub async fn serve_connection(
        self: Arc<Self>,
        stream: Box<dyn Stream>,
        tuple: FiveTuple,
        mut admitted: Admitted,
    ) {
        let (read, write) = tokio::io::split(stream);
        let closed = admitted.closed.clone();
        let (outbox, writer) = super::stream::outbox(write, tuple.transport == Transport::Tls);
        let sink = ClientSink::Stream(outbox);
        let core = Arc::clone(&self.core);
        let writer_closed = closed.clone();
        // The connection's slot goes back once neither half holds the socket: the reader
        // hands it over when it is done, and the writer, which may still be draining its
        // queue (the answer to a release) for up to its deadline, drops it when it ends.
        let (slot_tx, slot_rx) = tokio::sync::oneshot::channel::<Admitted>();
        self.tasks.spawn(async move {
            if writer.run(writer_closed).await == WriterEnd::Stalled {
                core.stats.stream_closes.inc(StreamClose::WriteStalled);
                debug!(client = %tuple.client, "TURN client does not read, closing");
            }
            drop(slot_rx.await);
        });
        let mut frames = Frames::new(read);
        let allocate_by = tokio::time::Instant::now() + self.allocate_timeout;
        let mut allocation: Option<Arc<Allocation<RelaySocket>>> = None;
        let mut allocation_ended = false;
        loop {
            let next = match &allocation {
                None => tokio::select! {
                    () = closed.cancelled() => break,
                    () = tokio::time::sleep_until(allocate_by) => {
                        self.core.stats.stream_closes.inc(StreamClose::AllocateTimeout);
                        debug!(client = %tuple.client, "no allocation in time, closing");
                        break;
                    }
                    next = frames.next() => next,
                },
                Some(a) => tokio::select! {
                    () = closed.cancelled() => break,
                    // The allocation is gone (released, expired, revoked): so is the connection,
                    // once the answer to a release has gone out.
                    () = a.closed.cancelled() => {
                        allocation_ended = true;
                        break;
                    }
                    next = frames.next() => next,
                },
            };
            let frame = match next {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    match e {
                        FrameError::Malformed | FrameError::TooLarge(_) => {
                            self.core.stats.malformed.inc();
                            self.core.stats.stream_closes.inc(StreamClose::Malformed);
                        }
                        FrameError::Stalled => {
                            self.core.stats.stream_closes.inc(StreamClose::FrameStalled);
                        }
                        FrameError::Truncated | FrameError::Io(_) => {}
                    }
                    debug!(client = %tuple.client, error = %e, "TURN stream closing");
                    break;
                }
            };
            // Relaying to another stream client waits for room in its queue: this
            // client's own reader stops, and TCP slows this client down, as a direct write
            // would. Nobody else waits; a client that stops reading is cut off at its
            // write deadline, and then the queue takes nothing and this goes on.
            if let Some((outbox, run, transport)) =
                self.handle_frame(frames.buf_mut(), frame, tuple, &sink)
            {
                let len = run.len();
                let allocation_closed = async {
                    match &allocation {
                        Some(a) => a.closed.cancelled().await,
                        None => std::future::pending().await,
                    }
                };
                let queued = tokio::select! {
                    () = closed.cancelled() => break,
                    () = allocation_closed => break,
                    // A receiver that reads, but slower than this client sends, holds it
                    // back at most this long per frame; then the frame is dropped.
                    queued = tokio::time::timeout(WRITE_DEADLINE, outbox.push_or_wait(run)) => {
                        queued.unwrap_or(false)
                    }
                };
                self.counted(queued, true, transport, len);
            }
            if allocation.is_none()
                && let Some(a) = self.core.get(&tuple)
            {
                frames.allocated();
                allocation = Some(a);
                admitted.allocated();
            }
        }
        match &sink {
            ClientSink::Stream(outbox) if allocation_ended => outbox.finish(),
            _ => closed.cancel(),
        }
        self.core
            .close(&tuple, CloseReason::TransportClosed, Instant::now());
        drop(frames);
        let _ = slot_tx.send(admitted);
    }

    /// Handles one stream frame at `buf[frame]` (with HEADROOM free bytes before it).
    /// Never waits: a peer gets a datagram now or a counted drop, a UDP client a datagram,
    /// and what goes to another stream client is returned for the caller to queue.
    fn handle_frame(
        &self,
        buf: &mut [u8],
        frame: Range<usize>,
        tuple: FiveTuple,
        sink: &ClientSink,
    ) -> Option<(Outbox, Vec<u8>, Transport)> {
        match wire::classify(&buf[frame.clone()]) {
            Kind::ChannelData { number, len } => {
                let start = frame.start + CHANNEL_HEADER;
                match route::channel_data(
                    self.core.get(&tuple),
                    Instant::now(),
                    number,
                    buf,
                    start..start + len,
                    |relayed| self.core.by_relayed(relayed),
                    &self.core.stats,
                ) {
                    Route::Drop(_) => {}
                    Route::ToPeer {
                        allocation,
                        peer,
                        payload,
                    } => match send_now(&allocation.relay.socket, &buf[payload], peer, None) {
                        Ok(_) => self.core.stats.to_peers.add(tuple.transport, 1, len),
                        Err(e) => {
                            self.core.stats.relay_send_failures.inc();
                            debug!(%peer, error = %e, "relay send failed");
                        }
                    },
                    Route::RelayToRelay { to, frame } => match to.relay.client() {
                        Some(ClientSink::Stream(outbox)) => {
                            return Some((outbox.clone(), buf[frame].to_vec(), to.tuple.transport));
                        }
                        Some(sink) => {
                            self.forward(sink, &buf[frame], to.tuple.client, to.tuple.transport);
                        }
                        None => {}
                    },
                }
            }
            Kind::Stun => {
                if let Some(reply) = self.on_stun(tuple, &buf[frame], sink)
                    && !sink.deliver(&reply, tuple.client)
                {
                    self.core.stats.stream_queue_drops.inc();
                }
            }
            Kind::Other => self.core.stats.malformed.inc(),
        }
        None
    }

    /// Runs a STUN message through the core; returns the reply to send, if any.
    fn on_stun(&self, tuple: FiveTuple, packet: &[u8], sink: &ClientSink) -> Option<Vec<u8>> {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match self.core.handle_stun(Instant::now(), unix, tuple, packet) {
            Handled::Reply(reply) => Some(reply),
            Handled::Allocated(reply, allocation) => {
                let _ = allocation.relay.client.set(sink.clone());
                self.tasks
                    .spawn(relay_loop(Arc::clone(&self.core), allocation));
                Some(reply)
            }
            Handled::Send {
                allocation,
                peer,
                data,
            } => {
                // Send indications are rare (browsers bind channels): the kernel path is fine.
                match send_now(&allocation.relay.socket, &data, peer, None) {
                    Ok(_) => self.core.stats.to_peers.add(tuple.transport, 1, data.len()),
                    Err(e) => {
                        self.core.stats.relay_send_failures.inc();
                        debug!(%peer, error = %e, "relay send failed");
                    }
                }
                None
            }
            Handled::Nothing => None,
        }
    }

    /// Sends relay-to-relay data to another allocation's client, never waiting.
    fn forward(&self, sink: &ClientSink, bytes: &[u8], client: SocketAddr, transport: Transport) {
        let delivered = sink.deliver(bytes, client);
        let stream = matches!(sink, ClientSink::Stream(_));
        self.counted(delivered, stream, transport, bytes.len());
    }

    /// Counts one frame relayed to a client, or dropped (a full stream queue, a full or
    /// refusing UDP socket).
    fn counted(&self, delivered: bool, stream: bool, transport: Transport, len: usize) {
        if delivered {
            self.core.stats.to_clients.add(transport, 1, len);
        } else if stream {
            self.core.stats.stream_queue_drops.inc();
        } else {
            self.core.stats.relay_send_failures.inc();
        }
    }
}

/// TCP/TLS connections without an allocation yet, oldest first, by when they were admitted
/// (and a sequence number); each with the token that closes it.
type Unallocated = BTreeMap<(Instant, u64), CancellationToken>;

/// A TCP/TLS connection's place: its slot under the connection limits, the token that
/// closes it, and, until it allocates, its entry among the connections eviction may
/// close. Dropping it gives both back.
pub struct Admitted {
    _slot: ConnectionGuard,
    closed: CancellationToken,
    key: (Instant, u64),
    unallocated: Arc<Mutex<Unallocated>>,
}

impl Admitted {
    /// The connection has an allocation: no longer one eviction may close.
    fn allocated(&mut self) {
        self.unallocated.locked().remove(&self.key);
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.allocated();
    }
}

/// The socket a batched datagram leaves by.
enum Via {
    Relay(Arc<Allocation<RelaySocket>>),
    /// The UDP listener of `to`'s client (relay to relay): its socket's descriptor and the
    /// address to send from, copied out of `to`'s sink, which `to` keeps open until the
    /// batch is sent. Not a clone of the sink, whose reference count every core would write.
    Listener {
        fd: RawFd,
        from: Option<IpAddr>,
        _to: Arc<Allocation<RelaySocket>>,
    },
}

impl Via {
    /// The local address to send from, on a wildcard listener.
    fn from(&self) -> Option<IpAddr> {
        match self {
            Via::Relay(_) => None,
            Via::Listener { from, .. } => *from,
        }
    }
}

impl AsRawFd for Via {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Via::Relay(a) => a.relay.socket.as_raw_fd(),
            Via::Listener { fd, .. } => *fd,
        }
    }
}

/// A datagram to send: `range` of receive slot `slot`.
struct Out {
    via: Via,
    slot: usize,
    range: Range<usize>,
    dest: SocketAddr,
}

/// Datagrams per `recvmmsg` on the data path.
const BATCH: usize = 32;

/// One worker thread's buffers for the UDP data path, used only between awaits.
struct Scratch {
    recv: RecvBatch,
    send: SendBatch,
    out: Vec<Out>,
    frames: Vec<(usize, Range<usize>)>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        // Slots hold the largest datagram plus padding; pages a batch never touches stay unmapped.
        recv: RecvBatch::new(BATCH, MAX_PAYLOAD + 4, HEADROOM + CHANNEL_HEADER),
        send: SendBatch::new(),
        out: Vec::with_capacity(BATCH),
        frames: Vec::with_capacity(BATCH),
    });
}

fn with_scratch<T>(f: impl FnOnce(&mut Scratch) -> T) -> T {
    SCRATCH.with_borrow_mut(f)
}

impl Scratch {
    /// Sends the queued datagrams, one `sendmmsg` per socket; what a full socket refuses is dropped.
    fn flush(&mut self, stats: &Stats) {
        if self.out.is_empty() {
            return;
        }
        // Stable: a client's datagrams keep their order.
        self.out.sort_by_key(|o| o.via.as_raw_fd());
        let (mut to_peers, mut to_clients, mut failed) = ((0, 0), (0, 0), 0);
        let mut i = 0;
        while i < self.out.len() {
            let fd = self.out[i].via.as_raw_fd();
            let j = i + self.out[i..]
                .iter()
                .take_while(|o| o.via.as_raw_fd() == fd)
                .count();
            let group = &self.out[i..j];
            let recv = &self.recv;
            let sent = send_all(&mut self.send, &group[0].via, |k| {
                group[k..].iter().map(|o| {
                    (
                        &recv.slot(o.slot)[o.range.clone()],
                        Some(o.dest),
                        o.via.from(),
                    )
                })
            });
            failed += sent.dropped;
            let total = match group[0].via {
                Via::Relay(_) => &mut to_peers,
                Via::Listener { .. } => &mut to_clients,
            };
            total.0 += sent.packets;
            total.1 += sent.bytes;
            i = j;
        }
        self.out.clear();
        // This path serves the UDP listeners only.
        stats.to_peers.add(Transport::Udp, to_peers.0, to_peers.1);
        stats
            .to_clients
            .add(Transport::Udp, to_clients.0, to_clients.1);
        stats.relay_send_failures.add(failed as u64);
    }
}

/// Sends every datagram `from(k)` yields (the tail starting at `k`), skipping one that
/// the kernel refuses (say, an unreachable peer) and giving up on a full socket.
fn send_all<'a, I>(batch: &mut SendBatch, socket: &impl AsRawFd, from: impl Fn(usize) -> I) -> Sent
where
    I: ExactSizeIterator<Item = (&'a [u8], Option<SocketAddr>, Option<IpAddr>)>,
{
    let total = from(0).len();
    let mut k = 0;
    let mut sent = Sent::default();
    while k < total {
        match batch.send_from(socket, from(k)) {
            Ok(n) => {
                sent.bytes += from(k).take(n).map(|(d, ..)| d.len()).sum::<usize>();
                sent.packets += n;
                k += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                sent.dropped += total - k;
                break;
            }
            Err(e) => {
                debug!(peer = ?from(k).next().and_then(|(_, to, _)| to), error = %e, "relay send failed");
                sent.dropped += 1;
                k += 1;
            }
        }
    }
    sent
}

/// What `send_all` did.
#[derive(Default)]
struct Sent {
    packets: usize,
    bytes: usize,
    dropped: usize,
}

/// One datagram on a non-blocking socket, now, from the local address `from` when given
/// (a listener bound to a wildcard address). Not tokio's `try_send_to`: that refuses
/// with `WouldBlock` until the reactor has seen the socket writable once, which drops
/// the first packets of a fresh relay.
fn send_now(
    socket: &UdpSocket,
    data: &[u8],
    to: SocketAddr,
    from: Option<IpAddr>,
) -> std::io::Result<usize> {
    mmsg::send_one(socket, data, to, from)
}

/// Reads one allocation's relay socket and forwards permitted peer traffic to the client.
/// Never waits for the client: it only sends now (UDP) or queues (stream).
async fn relay_loop(core: Arc<TurnCore>, allocation: Arc<Allocation<RelaySocket>>) {
    // Set when the allocation was granted, before this task was spawned.
    let Some(sink) = allocation.relay.client.get().cloned() else {
        return;
    };
    loop {
        tokio::select! {
            () = allocation.closed.cancelled() => return,
            r = allocation.relay.socket.readable() => if r.is_err() {
                return;
            },
        }
        loop {
            match with_scratch(|s| relay_batch(&allocation, &sink, s, &core)) {
                Ok(()) => tokio::task::coop::consume_budget().await,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => debug!(error = %e, "relay receive error"),
            }
        }
    }
}

/// Receives one batch on a relay socket, frames each permitted datagram in place
/// (ChannelData when the peer has a channel, else a Data indication) and sends them on:
/// to a UDP client with one `sendmmsg`, to a stream client as one queued run.
fn relay_batch(
    allocation: &Allocation<RelaySocket>,
    sink: &ClientSink,
    s: &mut Scratch,
    core: &TurnCore,
) -> std::io::Result<()> {
    let stats = &core.stats;
    let socket = &allocation.relay.socket;
    let got = socket.try_io(Interest::READABLE, || s.recv.recv(socket))?;
    let now = Instant::now();
    let transport = allocation.tuple.transport;
    let start = s.recv.headroom();
    s.frames.clear();
    {
        let mut state = allocation.state.locked();
        for i in 0..got {
            let Some(from) = s.recv.source(i) else {
                continue;
            };
            let len = s.recv.data_len(i);
            let Ok(frame) = route::peer_data(
                &mut state,
                now,
                transport,
                from,
                s.recv.slot_mut(i),
                start..start + len,
                |relay| core.relay_at(relay, allocation.fence),
                stats,
            ) else {
                continue;
            };
            s.frames.push((i, frame));
        }
    }
    let client = allocation.tuple.client;
    let recv = &s.recv;
    match sink {
        // From the address the client talks to (the allocation's `tuple.server`).
        ClientSink::Udp(udp) => {
            let sent = send_all(&mut s.send, &*udp.socket, |k| {
                s.frames[k..]
                    .iter()
                    .map(|(i, r)| (&recv.slot(*i)[r.clone()], Some(client), udp.from))
            });
            stats
                .to_clients
                .add(Transport::Udp, sent.packets, sent.bytes);
            stats.relay_send_failures.add(sent.dropped as u64);
        }
        ClientSink::Stream(outbox) => {
            if s.frames.is_empty() {
                return Ok(());
            }
            let total = s.frames.iter().map(|(_, r)| r.len()).sum();
            let mut run = Vec::with_capacity(total);
            for (i, r) in &s.frames {
                run.extend_from_slice(&recv.slot(*i)[r.clone()]);
            }
            if outbox.push(run) {
                stats.to_clients.add(transport, s.frames.len(), total);
            } else {
                stats.stream_queue_drops.add(s.frames.len() as u64);
            }
        }
    }
    Ok(())
}
