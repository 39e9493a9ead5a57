//! An async TURN client over UDP, TCP or TLS for long-lived clients (the soak test):
//! Allocate (with a requested lifetime), Refresh, CreatePermission, ChannelBind and
//! ChannelData, with answers matched by transaction id while ChannelData keeps arriving.
//!
//! One reader task per connection counts the ChannelData that arrives (and its delay,
//! from a timestamp the sender put in the payload) and hands each answer to the request
//! waiting for it; on a stream it also notices when the server closes the connection.
//! Requests over UDP are retransmitted (0.5, 1, 2 s); over a stream they are sent once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::error_code::ErrorCodeAttribute;
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter,
    METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_DATA, METHOD_REFRESH,
    Message, MessageType, Method, Setter,
};
use stun::textattrs::TextAttribute;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, WriteHalf};
use tokio::net::{TcpSocket, UdpSocket};
use tokio::sync::{oneshot, watch};

/// How long a request may go unanswered (UDP: over all its retransmissions).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting (TCP, and the TLS handshake) or one stream write may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How a client reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

#[derive(Debug)]
pub enum TurnError {
    /// No answer in time (or a connect or write that took too long).
    Timeout,
    /// An error response: its code and reason.
    Refused(u16, String),
    /// The server closed the stream.
    Closed,
    Io(std::io::Error),
    Malformed,
}

impl std::fmt::Display for TurnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TurnError::Timeout => write!(f, "no answer in time"),
            TurnError::Refused(code, reason) => write!(f, "refused with {code} {reason}"),
            TurnError::Closed => write!(f, "the server closed the connection"),
            TurnError::Io(e) => write!(f, "{e}"),
            TurnError::Malformed => write!(f, "an answer that is not valid STUN"),
        }
    }
}

impl std::error::Error for TurnError {}

impl From<std::io::Error> for TurnError {
    fn from(e: std::io::Error) -> Self {
        TurnError::Io(e)
    }
}

/// A request, as plain data (the `stun` setters are built when it is sent).
#[derive(Clone, Copy, Debug)]
pub enum Req {
    /// A UDP relay, with the requested lifetime (none: the server's default).
    Allocate(Option<Duration>),
    /// Zero deletes the allocation.
    Refresh(Duration),
    Permission(SocketAddr),
    ChannelBind(u16, SocketAddr),
}

/// What arrived from the server besides answers; shared with whoever reads the counts.
#[derive(Default)]
pub struct Inbound {
    pub channel_data: AtomicU64,
    pub data_indications: AtomicU64,
    /// The largest delay seen since the last `take_max_delay_us` (payloads carry their send time).
    pub max_delay_us: AtomicU64,
}

impl Inbound {
    pub fn take_max_delay_us(&self) -> u64 {
        self.max_delay_us.swap(0, Ordering::Relaxed)
    }
}

/// A media payload of `len` bytes (at least 16): a sequence number and the send time in
/// microseconds since `epoch`, then filler.
pub fn media_payload(seq: u64, epoch: Instant, len: usize) -> Vec<u8> {
    let mut p = vec![0xA5; len.max(16)];
    p[..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(&(epoch.elapsed().as_micros() as u64).to_be_bytes());
    p
}

trait AsyncIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncIo for T {}
type Io = Box<dyn AsyncIo>;

enum Wire {
    Udp(Arc<UdpSocket>),
    Stream(tokio::sync::Mutex<WriteHalf<Io>>),
}

struct Auth {
    username: String,
    password: String,
    realm: Option<String>,
    nonce: Option<String>,
}

type Pending = Arc<Mutex<HashMap<[u8; 12], oneshot::Sender<Message>>>>;

/// One client connection to the TURN server, holding at most one allocation.
pub struct TurnConn {
    pub transport: Transport,
    pub local: SocketAddr,
    wire: Wire,
    auth: Mutex<Auth>,
    pending: Pending,
    closed: watch::Receiver<bool>,
    pub inbound: Arc<Inbound>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for TurnConn {
    fn drop(&mut self) {
        // The reader holds the socket (UDP) or the read half (streams): without it the
        // connection closes once `wire` goes too.
        self.reader.abort();
    }
}

impl TurnConn {
    /// Connects from `source` (port chosen by the kernel). `tls` is needed for `Transport::Tls`;
    /// the server is verified as its IP address. `epoch` is what media payload times count from.
    ///
    /// # Errors
    /// The socket cannot be bound, or the connection or the TLS handshake fails.
    pub async fn connect(
        transport: Transport,
        server: SocketAddr,
        source: IpAddr,
        tls: Option<Arc<rustls::ClientConfig>>,
        username: &str,
        password: &str,
        epoch: Instant,
    ) -> Result<TurnConn, TurnError> {
        let pending: Pending = Arc::default();
        let inbound = Arc::new(Inbound::default());
        let (closed_tx, closed) = watch::channel(false);
        let (wire, local, reader) = match transport {
            Transport::Udp => {
                let socket = UdpSocket::bind(SocketAddr::new(source, 0)).await?;
                socket.connect(server).await?;
                let local = socket.local_addr()?;
                let socket = Arc::new(socket);
                let reader = tokio::spawn(read_udp(
                    Arc::clone(&socket),
                    Arc::clone(&pending),
                    Arc::clone(&inbound),
                    epoch,
                    closed_tx,
                ));
                (Wire::Udp(socket), local, reader)
            }
            Transport::Tcp | Transport::Tls => {
                let socket = if server.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                socket.bind(SocketAddr::new(source, 0))?;
                let tcp = tokio::time::timeout(IO_TIMEOUT, socket.connect(server))
                    .await
                    .map_err(|_| TurnError::Timeout)??;
                tcp.set_nodelay(true)?;
                let local = tcp.local_addr()?;
                let io: Io = if transport == Transport::Tls {
                    let config = tls.ok_or_else(|| {
                        TurnError::Io(std::io::Error::other("TURN over TLS needs a TLS config"))
                    })?;
                    let name = rustls::pki_types::ServerName::IpAddress(server.ip().into());
                    let connector = tokio_rustls::TlsConnector::from(config);
                    let stream = tokio::time::timeout(IO_TIMEOUT, connector.connect(name, tcp))
                        .await
                        .map_err(|_| TurnError::Timeout)??;
                    Box::new(stream)
                } else {
                    Box::new(tcp)
                };
                let (read, write) = tokio::io::split(io);
                let reader = tokio::spawn(read_stream(
                    read,
                    Arc::clone(&pending),
                    Arc::clone(&inbound),
                    epoch,
                    closed_tx,
                ));
                (Wire::Stream(tokio::sync::Mutex::new(write)), local, reader)
            }
        };
        Ok(TurnConn {
            transport,
            local,
            wire,
            auth: Mutex::new(Auth {
                username: username.to_owned(),
                password: password.to_owned(),
                realm: None,
                nonce: None,
            }),
            pending,
            closed,
            inbound,
            reader,
        })
    }

    /// Signs the next requests with another credential (a fresh one the server pushed).
    pub fn set_credential(&self, username: &str, password: &str) {
        let mut auth = self.auth.lock().expect("auth lock");
        auth.username = username.to_owned();
        auth.password = password.to_owned();
    }

    /// Whether the server closed the stream (never, on UDP).
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Waits until the server closes the stream (forever, on UDP).
    pub async fn wait_closed(&self) {
        let mut closed = self.closed.clone();
        if closed.wait_for(|c| *c).await.is_err() {
            // Only when this connection is being dropped.
            std::future::pending::<()>().await;
        }
    }

    /// Allocates a UDP relay; returns the relayed address and the granted lifetime.
    ///
    /// # Errors
    /// Refused, unanswered, or the connection failed.
    pub async fn allocate(
        &self,
        lifetime: Option<Duration>,
    ) -> Result<(SocketAddr, Duration), TurnError> {
        let answer = self.request(Req::Allocate(lifetime)).await?;
        let mut relayed = turn::proto::relayaddr::RelayedAddress::default();
        relayed
            .get_from(&answer)
            .map_err(|_| TurnError::Malformed)?;
        let mut granted = turn::proto::lifetime::Lifetime::default();
        granted
            .get_from(&answer)
            .map_err(|_| TurnError::Malformed)?;
        Ok((SocketAddr::new(relayed.ip, relayed.port), granted.0))
    }

    /// # Errors
    /// Refused (437: no such allocation), unanswered, or the connection failed.
    pub async fn refresh(&self, lifetime: Duration) -> Result<(), TurnError> {
        self.request(Req::Refresh(lifetime)).await.map(|_| ())
    }

    /// # Errors
    /// Refused, unanswered, or the connection failed.
    pub async fn permit(&self, peer: SocketAddr) -> Result<(), TurnError> {
        self.request(Req::Permission(peer)).await.map(|_| ())
    }

    /// # Errors
    /// Refused, unanswered, or the connection failed.
    pub async fn bind_channel(&self, number: u16, peer: SocketAddr) -> Result<(), TurnError> {
        self.request(Req::ChannelBind(number, peer))
            .await
            .map(|_| ())
    }

    /// Sends `payload` on a bound channel (padded to four bytes on a stream).
    ///
    /// # Errors
    /// The socket fails, or a stream write takes longer than 5 s.
    pub async fn send_channel(&self, number: u16, payload: &[u8]) -> Result<(), TurnError> {
        let mut frame = Vec::with_capacity(4 + payload.len() + 3);
        frame.extend_from_slice(&number.to_be_bytes());
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        frame.extend_from_slice(payload);
        if self.transport != Transport::Udp {
            frame.resize(frame.len().next_multiple_of(4), 0);
        }
        self.send_raw(&frame).await
    }

    async fn send_raw(&self, bytes: &[u8]) -> Result<(), TurnError> {
        match &self.wire {
            Wire::Udp(socket) => {
                socket.send(bytes).await?;
            }
            Wire::Stream(write) => {
                if self.is_closed() {
                    return Err(TurnError::Closed);
                }
                let mut w = write.lock().await;
                tokio::time::timeout(IO_TIMEOUT, async {
                    w.write_all(bytes).await?;
                    w.flush().await
                })
                .await
                .map_err(|_| TurnError::Timeout)??;
            }
        }
        Ok(())
    }

    /// Sends `req` (authenticated once the server has told its realm and nonce; a 401 or 438
    /// with a fresh nonce is answered once more) and returns the success answer.
    ///
    /// # Errors
    /// An error answer, no answer, or the connection failed.
    pub async fn request(&self, req: Req) -> Result<Message, TurnError> {
        let mut tries = 0;
        loop {
            let message = self.build(req);
            let answer = self.transact(&message).await?;
            if answer.typ.class == CLASS_SUCCESS_RESPONSE {
                return Ok(answer);
            }
            if answer.typ.class != CLASS_ERROR_RESPONSE {
                return Err(TurnError::Malformed);
            }
            let mut code = ErrorCodeAttribute::default();
            code.get_from(&answer).map_err(|_| TurnError::Malformed)?;
            let text = |attr| TextAttribute::get_from_as(&answer, attr).map(|t| t.text);
            if matches!(code.code.0, 401 | 438)
                && tries < 2
                && let Ok(nonce) = text(ATTR_NONCE)
            {
                let mut auth = self.auth.lock().expect("auth lock");
                // A 401 to a request that was already signed is a credential the server no
                // longer takes: one more try with the same nonce only repeats it.
                if code.code.0 == 401 && auth.nonce.as_deref() == Some(nonce.as_str()) {
                    drop(auth);
                    return Err(refused(&code));
                }
                if let Ok(realm) = text(ATTR_REALM) {
                    auth.realm = Some(realm);
                }
                auth.nonce = Some(nonce);
                tries += 1;
                continue;
            }
            return Err(refused(&code));
        }
    }

    fn build(&self, req: Req) -> Message {
        let (method, mut attrs): (Method, Vec<Box<dyn Setter>>) = match req {
            Req::Allocate(lifetime) => {
                let mut a: Vec<Box<dyn Setter>> =
                    vec![Box::new(turn::proto::reqtrans::RequestedTransport {
                        protocol: turn::proto::PROTO_UDP,
                    })];
                if let Some(l) = lifetime {
                    a.push(Box::new(turn::proto::lifetime::Lifetime(l)));
                }
                (METHOD_ALLOCATE, a)
            }
            Req::Refresh(l) => (
                METHOD_REFRESH,
                vec![Box::new(turn::proto::lifetime::Lifetime(l))],
            ),
            Req::Permission(peer) => (
                METHOD_CREATE_PERMISSION,
                vec![Box::new(turn::proto::peeraddr::PeerAddress {
                    ip: peer.ip(),
                    port: peer.port(),
                })],
            ),
            Req::ChannelBind(number, peer) => (
                METHOD_CHANNEL_BIND,
                vec![
                    Box::new(turn::proto::channum::ChannelNumber(number)),
                    Box::new(turn::proto::peeraddr::PeerAddress {
                        ip: peer.ip(),
                        port: peer.port(),
                    }),
                ],
            ),
        };
        let auth = self.auth.lock().expect("auth lock");
        if let (Some(realm), Some(nonce)) = (&auth.realm, &auth.nonce) {
            attrs.push(Box::new(TextAttribute::new(
                ATTR_USERNAME,
                auth.username.clone(),
            )));
            attrs.push(Box::new(TextAttribute::new(ATTR_REALM, realm.clone())));
            attrs.push(Box::new(TextAttribute::new(ATTR_NONCE, nonce.clone())));
            attrs.push(Box::new(
                stun::integrity::MessageIntegrity::new_long_term_integrity(
                    auth.username.clone(),
                    realm.clone(),
                    auth.password.clone(),
                ),
            ));
        }
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(stun::agent::TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
        ];
        setters.extend(attrs);
        setters.push(Box::new(stun::fingerprint::FINGERPRINT));
        let mut m = Message::new();
        m.build(&setters)
            .expect("building a STUN message cannot fail");
        m
    }

    /// Sends `message` and waits for the answer with its transaction id.
    async fn transact(&self, message: &Message) -> Result<Message, TurnError> {
        let id = message.transaction_id.0;
        let (tx, mut rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        let result = async {
            self.send_raw(&message.raw).await?;
            let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
            let mut rto = Duration::from_millis(500);
            let mut closed = self.closed.clone();
            loop {
                let wait = match self.wire {
                    Wire::Udp(_) => rto.min(deadline - tokio::time::Instant::now()),
                    Wire::Stream(_) => deadline - tokio::time::Instant::now(),
                };
                tokio::select! {
                    biased;
                    answer = &mut rx => return answer.map_err(|_| TurnError::Closed),
                    // The reader hands over every answer it read before it notes the close:
                    // an answer followed by the close (a release over a stream) is an answer.
                    _ = closed.wait_for(|c| *c) => return rx.try_recv().map_err(|_| TurnError::Closed),
                    () = tokio::time::sleep(wait) => {}
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(TurnError::Timeout);
                }
                self.send_raw(&message.raw).await?;
                rto *= 2;
            }
        }
        .await;
        self.pending.lock().expect("pending lock").remove(&id);
        result
    }
}

fn refused(code: &ErrorCodeAttribute) -> TurnError {
    TurnError::Refused(
        code.code.0,
        String::from_utf8_lossy(&code.reason).into_owned(),
    )
}

/// Hands one datagram or frame from the server to whoever waits for it.
fn dispatch(bytes: &[u8], pending: &Pending, inbound: &Inbound, epoch: Instant) {
    if bytes.len() >= 4 && bytes[0] & 0xC0 == 0x40 {
        let len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        let payload = &bytes[4..(4 + len).min(bytes.len())];
        if payload.len() >= 16 {
            let sent = u64::from_be_bytes(payload[8..16].try_into().expect("8 bytes"));
            let now = epoch.elapsed().as_micros() as u64;
            inbound
                .max_delay_us
                .fetch_max(now.saturating_sub(sent), Ordering::Relaxed);
        }
        inbound.channel_data.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut m = Message::new();
    m.raw = bytes.to_vec();
    if m.decode().is_err() {
        return;
    }
    if m.typ.class == CLASS_INDICATION && m.typ.method == METHOD_DATA {
        inbound.data_indications.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let waiting = pending
        .lock()
        .expect("pending lock")
        .remove(&m.transaction_id.0);
    if let Some(tx) = waiting {
        let _ = tx.send(m);
    }
}

/// Reads datagrams until aborted; holds `_closed` so that waiting for a close waits for ever.
async fn read_udp(
    socket: Arc<UdpSocket>,
    pending: Pending,
    inbound: Arc<Inbound>,
    epoch: Instant,
    _closed: watch::Sender<bool>,
) {
    let mut buf = vec![0u8; 2048];
    loop {
        match socket.recv(&mut buf).await {
            Ok(n) => dispatch(&buf[..n], &pending, &inbound, epoch),
            // An ICMP error from an earlier send (the server gone): nothing to read here.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn read_stream(
    read: tokio::io::ReadHalf<Io>,
    pending: Pending,
    inbound: Arc<Inbound>,
    epoch: Instant,
    closed: watch::Sender<bool>,
) {
    let mut read = BufReader::new(read);
    let mut frame = Vec::with_capacity(2048);
    loop {
        frame.resize(4, 0);
        if read.read_exact(&mut frame[..4]).await.is_err() {
            break;
        }
        let len = usize::from(u16::from_be_bytes([frame[2], frame[3]]));
        let total = if frame[0] & 0xC0 == 0x40 {
            4 + len.next_multiple_of(4)
        } else {
            20 + len
        };
        frame.resize(total, 0);
        if read.read_exact(&mut frame[4..]).await.is_err() {
            break;
        }
        dispatch(&frame, &pending, &inbound, epoch);
    }
    // Wakes every request waiting on this connection.
    let _ = closed.send(true);
}

/// Whether the UDP port at `relayed` is closed within `within`: datagrams to a closed
/// port draw an ICMP port unreachable, which a connected socket reads as "connection
/// refused"; an open relay drops them silently (no permission for `source`).
pub async fn udp_port_closes(relayed: SocketAddr, source: IpAddr, within: Duration) -> bool {
    let Ok(socket) = UdpSocket::bind(SocketAddr::new(source, 0)).await else {
        return false;
    };
    if socket.connect(relayed).await.is_err() {
        return false;
    }
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 64];
    while tokio::time::Instant::now() < deadline {
        if let Err(e) = socket.send(b"soak probe").await
            && e.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        match tokio::time::timeout(Duration::from_millis(250), socket.recv(&mut buf)).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return true,
            _ => {}
        }
    }
    false
}
