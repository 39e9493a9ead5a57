//! A minimal TURN client (over UDP, TCP or TLS) for load generation: REST credentials, Allocate,
//! CreatePermission, ChannelBind, and ChannelData framing.
//!
//! Many clients are driven at once by [`drive`]: each sends its request, and the
//! responses are read as they arrive (one `mio` poll over all sockets), so set-up
//! is pipelined and "allocations per second" measures the server, not round trips.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use std::io::{Read, Write};

use mio::event::Source;
use mio::net::{TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Registry, Token};
use stun::agent::TransactionId;
use stun::error_code::ErrorCodeAttribute;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter, METHOD_ALLOCATE,
    METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, Message, MessageType, Method, Setter,
};
use stun::textattrs::{Nonce, Realm, Username};
use turn::proto::PROTO_UDP;
use turn::proto::channum::ChannelNumber;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;

/// coturn-style REST credentials (`use-auth-secret`): `<expiry>:<name>` and base64(HMAC-SHA1).
pub fn rest_credentials(secret: &str, name: &str, ttl: Duration) -> (String, String) {
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        + ttl;
    let username = format!("{}:{name}", expiry.as_secs());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let tag = ring::hmac::sign(&key, username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    (username, password)
}

/// What a client asks for next.
#[derive(Debug, Clone, Copy)]
pub enum Request {
    Allocate,
    Permission(SocketAddr),
    ChannelBind(u16, SocketAddr),
}

/// A client's connection to the server: a connected UDP socket, or a TCP stream with
/// what has been read of a frame not yet complete.
pub enum Conn {
    Udp(UdpSocket),
    Tcp {
        stream: TcpStream,
        inbuf: Vec<u8>,
    },
    /// TURN over TLS: frames inside records (the certificate is not checked).
    Tls {
        stream: TcpStream,
        tls: Box<rustls::ClientConnection>,
        inbuf: Vec<u8>,
    },
}

impl Conn {
    /// Writes a whole datagram or frame run. TCP frames are small and the socket buffer
    /// deep, so a full buffer is waited out rather than queued.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Udp(socket) => socket.send(bytes).map(|_| ()),
            Conn::Tcp { stream, .. } => {
                let mut at = 0;
                while at < bytes.len() {
                    match stream.write(&bytes[at..]) {
                        Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                        Ok(n) => at += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::yield_now()
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Conn::Tls { stream, tls, .. } => {
                // A record per frame, as coturn's own client sends them; one write for all.
                let mut at = 0;
                while at < bytes.len() {
                    let len = frame_len(&bytes[at..]).unwrap_or(bytes.len() - at);
                    tls.writer().write_all(&bytes[at..at + len])?;
                    at += len;
                }
                while tls.wants_write() {
                    match tls.write_tls(stream) {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::yield_now()
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
        }
    }

    /// Calls `each` with every complete message that has arrived (datagrams on UDP,
    /// STUN or ChannelData frames on TCP), until the socket would block.
    pub fn drain(&mut self, buf: &mut [u8], mut each: impl FnMut(&[u8])) -> std::io::Result<()> {
        match self {
            Conn::Udp(socket) => loop {
                match socket.recv(buf) {
                    Ok(n) => each(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e),
                }
            },
            Conn::Tcp { stream, inbuf } => loop {
                match stream.read(buf) {
                    Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => inbuf.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e),
                }
                let mut at = 0;
                while let Some(len) = frame_len(&inbuf[at..]) {
                    each(&inbuf[at..at + len]);
                    at += len;
                }
                inbuf.drain(..at);
            },
            Conn::Tls { stream, tls, inbuf } => loop {
                match tls.read_tls(stream) {
                    Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e),
                }
                tls.process_new_packets().map_err(std::io::Error::other)?;
                loop {
                    match tls.reader().read(buf) {
                        Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                        Ok(n) => inbuf.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                let mut at = 0;
                while let Some(len) = frame_len(&inbuf[at..]) {
                    each(&inbuf[at..at + len]);
                    at += len;
                }
                inbuf.drain(..at);
            },
        }
    }
}

/// The length of the complete stream frame at the start of `b`, if it is all there.
fn frame_len(b: &[u8]) -> Option<usize> {
    if b.len() < 4 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    let total = if b[0] & 0xC0 == 0x40 {
        4 + len.div_ceil(4) * 4
    } else {
        20 + len
    };
    (b.len() >= total).then_some(total)
}

impl Source for Conn {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> std::io::Result<()> {
        match self {
            Conn::Udp(s) => s.register(r, t, i),
            Conn::Tcp { stream, .. } => stream.register(r, t, i),
            Conn::Tls { stream, .. } => stream.register(r, t, i),
        }
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> std::io::Result<()> {
        match self {
            Conn::Udp(s) => s.reregister(r, t, i),
            Conn::Tcp { stream, .. } => stream.reregister(r, t, i),
            Conn::Tls { stream, .. } => stream.reregister(r, t, i),
        }
    }
    fn deregister(&mut self, r: &Registry) -> std::io::Result<()> {
        match self {
            Conn::Udp(s) => s.deregister(r),
            Conn::Tcp { stream, .. } => stream.deregister(r),
            Conn::Tls { stream, .. } => stream.deregister(r),
        }
    }
}

/// One TURN client on its own connection (UDP socket or TCP stream).
pub struct TurnClient {
    pub socket: Conn,
    pub local: SocketAddr,
    username: String,
    password: String,
    realm: Option<String>,
    nonce: Option<String>,
    pub relayed: Option<SocketAddr>,
    pending: Option<(Request, TransactionId, Vec<u8>)>,
    tries: u32,
}

impl TurnClient {
    /// A client on `local_ip` (port chosen by the kernel) talking to `server` over UDP,
    /// or over TCP when `tcp` (over TLS too when `tls` is set).
    ///
    /// # Errors
    /// The socket cannot be bound or connected.
    pub fn new(
        local_ip: IpAddr,
        server: SocketAddr,
        username: String,
        password: String,
        buffer_bytes: usize,
        tcp: bool,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<TurnClient> {
        let kind = if tcp {
            socket2::Type::STREAM
        } else {
            socket2::Type::DGRAM
        };
        let socket = socket2::Socket::new(socket2::Domain::for_address(server), kind, None)?;
        // Deep buffers: a generator must not drop what the server relayed.
        let _ = socket.set_recv_buffer_size(buffer_bytes);
        let _ = socket.set_send_buffer_size(buffer_bytes);
        socket.bind(&SocketAddr::new(local_ip, 0).into())?;
        socket.connect(&server.into())?;
        let (conn, local) = if let Some(config) = tls {
            // The handshake blocks; the connection is driven by the poll loop after it.
            socket.set_tcp_nodelay(true)?;
            let mut std: std::net::TcpStream = socket.into();
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let mut tls = Box::new(rustls::ClientConnection::new(Arc::clone(config), name)?);
            while tls.is_handshaking() {
                tls.complete_io(&mut std).context("TLS handshake")?;
            }
            std.set_nonblocking(true)?;
            let local = std.local_addr()?;
            let stream = TcpStream::from_std(std);
            (
                Conn::Tls {
                    stream,
                    tls,
                    inbuf: Vec::new(),
                },
                local,
            )
        } else if tcp {
            socket.set_nonblocking(true)?;
            socket.set_tcp_nodelay(true)?;
            let std: std::net::TcpStream = socket.into();
            let local = std.local_addr()?;
            let stream = TcpStream::from_std(std);
            (
                Conn::Tcp {
                    stream,
                    inbuf: Vec::new(),
                },
                local,
            )
        } else {
            socket.set_nonblocking(true)?;
            let std: std::net::UdpSocket = socket.into();
            let local = std.local_addr()?;
            (Conn::Udp(UdpSocket::from_std(std)), local)
        };
        Ok(TurnClient {
            socket: conn,
            local,
            username,
            password,
            realm: None,
            nonce: None,
            relayed: None,
            pending: None,
            tries: 0,
        })
    }

    fn build(&self, request: Request) -> Result<(TransactionId, Vec<u8>)> {
        let method: Method = match request {
            Request::Allocate => METHOD_ALLOCATE,
            Request::Permission(_) => METHOD_CREATE_PERMISSION,
            Request::ChannelBind(..) => METHOD_CHANNEL_BIND,
        };
        let tid = TransactionId::new();
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(tid),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
        ];
        match request {
            Request::Allocate => {
                setters.push(Box::new(RequestedTransport {
                    protocol: PROTO_UDP,
                }));
                setters.push(Box::new(Lifetime(Duration::from_secs(3600))));
            }
            Request::Permission(peer) => setters.push(Box::new(PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            })),
            Request::ChannelBind(number, peer) => {
                setters.push(Box::new(ChannelNumber(number)));
                setters.push(Box::new(PeerAddress {
                    ip: peer.ip(),
                    port: peer.port(),
                }));
            }
        }
        if let (Some(realm), Some(nonce)) = (&self.realm, &self.nonce) {
            setters.push(Box::new(Username::new(
                stun::attributes::ATTR_USERNAME,
                self.username.clone(),
            )));
            setters.push(Box::new(Realm::new(
                stun::attributes::ATTR_REALM,
                realm.clone(),
            )));
            setters.push(Box::new(Nonce::new(
                stun::attributes::ATTR_NONCE,
                nonce.clone(),
            )));
            setters.push(Box::new(MessageIntegrity::new_long_term_integrity(
                self.username.clone(),
                realm.clone(),
                self.password.clone(),
            )));
        }
        setters.push(Box::new(FINGERPRINT));
        let mut m = Message::new();
        m.build(&setters)?;
        Ok((tid, m.raw))
    }

    /// Sends `request` (authenticated once the server told us its realm and nonce).
    ///
    /// # Errors
    /// The request cannot be built or sent.
    pub fn start(&mut self, request: Request) -> Result<()> {
        let (tid, raw) = self.build(request)?;
        self.socket.send(&raw)?;
        self.pending = Some((request, tid, raw));
        self.tries = 0;
        Ok(())
    }

    fn resend(&mut self) -> Result<()> {
        if let Some((_, _, raw)) = &self.pending {
            self.tries += 1;
            self.socket.send(raw)?;
        }
        Ok(())
    }

    /// Reads what arrived; `Ok(true)` once the pending request succeeded.
    fn read(&mut self) -> Result<bool> {
        let mut buf = [0u8; 2048];
        let mut arrived = Vec::new();
        self.socket
            .drain(&mut buf, |msg| arrived.push(msg.to_vec()))
            .context("TURN client receive")?;
        for raw in arrived {
            let Some((request, tid, _)) = self.pending else {
                continue;
            };
            let mut m = Message::new();
            m.raw = raw;
            if m.decode().is_err() || m.transaction_id != tid {
                continue;
            }
            if m.typ.class == CLASS_SUCCESS_RESPONSE {
                if let Request::Allocate = request {
                    let mut relayed = RelayedAddress::default();
                    relayed.get_from(&m)?;
                    self.relayed = Some(SocketAddr::new(relayed.ip, relayed.port));
                }
                self.pending = None;
                return Ok(true);
            }
            if m.typ.class == CLASS_ERROR_RESPONSE {
                let mut code = ErrorCodeAttribute::default();
                code.get_from(&m)?;
                let fresh_nonce = Nonce::get_from_as(&m, stun::attributes::ATTR_NONCE).ok();
                match (code.code.0, fresh_nonce) {
                    // Unauthenticated first try, or a stale nonce: authenticate and go again.
                    (401 | 438, Some(nonce)) if self.tries < 3 => {
                        if let Ok(realm) = Realm::get_from_as(&m, stun::attributes::ATTR_REALM) {
                            self.realm = Some(realm.text);
                        }
                        self.nonce = Some(nonce.text);
                        let tries = self.tries + 1;
                        self.start(request)?;
                        self.tries = tries;
                    }
                    (code, _) => bail!(
                        "{request:?} from {} refused: {code} {}",
                        self.local,
                        String::from_utf8_lossy(&code_reason(&m))
                    ),
                }
            }
        }
        Ok(false)
    }
}

fn code_reason(m: &Message) -> Vec<u8> {
    let mut code = ErrorCodeAttribute::default();
    let _ = code.get_from(m);
    code.reason
}

/// Gives every client its request (`next(i)`, `None` to skip) and waits until all succeeded.
/// Returns how long that took.
///
/// # Errors
/// A request was refused, or went unanswered after retransmissions.
pub fn drive(
    clients: &mut [TurnClient],
    mut next: impl FnMut(usize, &TurnClient) -> Option<Request>,
) -> Result<Duration> {
    let started = Instant::now();
    let mut poll = Poll::new()?;
    let mut waiting: HashMap<usize, Instant> = HashMap::new();
    for (i, c) in clients.iter_mut().enumerate() {
        if let Some(request) = next(i, c) {
            poll.registry()
                .register(&mut c.socket, Token(i), Interest::READABLE)?;
            c.start(request)?;
            waiting.insert(i, Instant::now());
        }
    }
    let mut events = Events::with_capacity(1024);
    let mut rto = Duration::from_millis(500);
    let mut last_resend = Instant::now();
    while !waiting.is_empty() {
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        for event in &events {
            let i = event.token().0;
            if waiting.contains_key(&i) && clients[i].read()? {
                waiting.remove(&i);
            }
        }
        if last_resend.elapsed() >= rto {
            let total = clients.len();
            for (&i, _) in waiting.iter() {
                let c = &mut clients[i];
                if c.tries >= 6 {
                    return Err(anyhow!(
                        "{} of {total} requests unanswered (first: client {})",
                        waiting.len(),
                        c.local
                    ));
                }
                c.resend()?;
            }
            last_resend = Instant::now();
            rto = (rto * 2).min(Duration::from_secs(2));
        }
    }
    for c in clients.iter_mut() {
        let _ = poll.registry().deregister(&mut c.socket);
    }
    Ok(started.elapsed())
}

/// Frames `payload` (already placed at `buf[4..]`) as ChannelData on `channel`.
pub fn channel_data_header(buf: &mut [u8], channel: u16, payload_len: usize) {
    buf[..2].copy_from_slice(&channel.to_be_bytes());
    buf[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
}
