//! A small TURN client for `switchboard doctor` and the tests: a STUN Binding over UDP or a
//! stream, and, over UDP or TCP, Allocate, CreatePermission, ChannelBind, Send indications,
//! ChannelData, Data indications and release. Every failure says which step failed and with
//! which STUN error code.

use std::net::SocketAddr;
use std::time::Duration;

use stun::attributes::{ATTR_DATA, ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::error_code::ErrorCodeAttribute;
use stun::message::{
    BINDING_REQUEST, CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter,
    METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_DATA, METHOD_REFRESH,
    METHOD_SEND, Message, MessageType, Method, Setter,
};
use stun::textattrs::TextAttribute;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Mutex;

/// How long one request may go unanswered.
const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {} s", TIMEOUT.as_secs())]
    Timeout,
    #[error("refused with {code} {reason}")]
    Refused { code: u16, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the answer is not valid STUN")]
    Malformed,
}

fn build(
    method: Method,
    class: stun::message::MessageClass,
    attrs: Vec<Box<dyn Setter>>,
) -> Message {
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(stun::agent::TransactionId::new()),
        Box::new(MessageType::new(method, class)),
    ];
    setters.extend(attrs);
    setters.push(Box::new(stun::fingerprint::FINGERPRINT));
    let mut m = Message::new();
    m.build(&setters)
        .expect("building a STUN message cannot fail");
    m
}

fn decode(bytes: &[u8]) -> Result<Message, ProbeError> {
    let mut m = Message::new();
    m.raw = bytes.to_vec();
    m.decode().map_err(|_| ProbeError::Malformed)?;
    Ok(m)
}

fn mapped(answer: &Message) -> Result<SocketAddr, ProbeError> {
    let mut addr = stun::xoraddr::XorMappedAddress::default();
    addr.get_from(answer).map_err(|_| ProbeError::Malformed)?;
    Ok(SocketAddr::new(addr.ip, addr.port))
}

fn refusal(answer: &Message) -> Result<(), ProbeError> {
    if answer.typ.class == CLASS_SUCCESS_RESPONSE {
        return Ok(());
    }
    let mut code = ErrorCodeAttribute::default();
    code.get_from(answer).map_err(|_| ProbeError::Malformed)?;
    Err(ProbeError::Refused {
        code: code.code.0,
        reason: String::from_utf8_lossy(&code.reason).into_owned(),
    })
}

/// A UDP socket on the wildcard address of `server`'s family.
async fn bind_for(server: SocketAddr) -> std::io::Result<UdpSocket> {
    let any = if server.is_ipv4() {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    };
    UdpSocket::bind(any).await
}

/// A STUN Binding over UDP; returns the address the server saw.
///
/// # Errors
/// No answer, or not a success.
pub async fn binding_udp(server: SocketAddr) -> Result<SocketAddr, ProbeError> {
    let socket = bind_for(server).await?;
    let request = build(BINDING_REQUEST.method, CLASS_REQUEST, vec![]);
    socket.send_to(&request.raw, server).await?;
    let mut buf = vec![0u8; 1500];
    let n = tokio::time::timeout(TIMEOUT, socket.recv(&mut buf))
        .await
        .map_err(|_| ProbeError::Timeout)??;
    let answer = decode(&buf[..n])?;
    refusal(&answer)?;
    mapped(&answer)
}

/// A STUN Binding over a TCP or TLS stream; returns the address the server saw.
///
/// # Errors
/// No answer, or not a success.
pub async fn binding_stream<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<SocketAddr, ProbeError> {
    let request = build(BINDING_REQUEST.method, CLASS_REQUEST, vec![]);
    let exchange = async {
        stream.write_all(&request.raw).await?;
        stream.flush().await?;
        let mut head = [0u8; 20];
        stream.read_exact(&mut head).await?;
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let mut whole = head.to_vec();
        whole.resize(20 + len, 0);
        stream.read_exact(&mut whole[20..]).await?;
        Ok::<_, std::io::Error>(whole)
    };
    let bytes = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| ProbeError::Timeout)??;
    let answer = decode(&bytes)?;
    refusal(&answer)?;
    mapped(&answer)
}

/// How a `Client` reaches the server.
enum Conn {
    Udp(UdpSocket),
    /// Framed STUN/ChannelData; the lock keeps a request and its answer together.
    Tcp(Mutex<TcpStream>),
}

/// One allocation over UDP or TCP with long-term credentials.
pub struct Client {
    conn: Conn,
    server: SocketAddr,
    username: String,
    password: String,
    realm: String,
    nonce: String,
}

impl Client {
    /// # Errors
    /// No local UDP socket can be bound.
    pub async fn new(
        server: SocketAddr,
        username: &str,
        password: &str,
    ) -> Result<Client, ProbeError> {
        Client::new_on(bind_for(server).await?, server, username, password)
    }

    /// A client on a socket the caller bound (say, to a chosen source address).
    ///
    /// # Errors
    /// None today; kept fallible like `new`.
    pub fn new_on(
        socket: UdpSocket,
        server: SocketAddr,
        username: &str,
        password: &str,
    ) -> Result<Client, ProbeError> {
        Ok(Client {
            conn: Conn::Udp(socket),
            server,
            username: username.to_owned(),
            password: password.to_owned(),
            realm: String::new(),
            nonce: String::new(),
        })
    }

    /// A client over a TCP connection to `server`.
    ///
    /// # Errors
    /// The connection cannot be made.
    pub async fn connect_tcp(
        server: SocketAddr,
        username: &str,
        password: &str,
    ) -> Result<Client, ProbeError> {
        let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(server))
            .await
            .map_err(|_| ProbeError::Timeout)??;
        tcp.set_nodelay(true)?;
        Ok(Client {
            conn: Conn::Tcp(Mutex::new(tcp)),
            server,
            username: username.to_owned(),
            password: password.to_owned(),
            realm: String::new(),
            nonce: String::new(),
        })
    }

    /// Sends one datagram or frame.
    async fn send_raw(&self, bytes: &[u8]) -> Result<(), ProbeError> {
        match &self.conn {
            Conn::Udp(socket) => {
                socket.send_to(bytes, self.server).await?;
            }
            Conn::Tcp(tcp) => tcp.lock().await.write_all(bytes).await?,
        }
        Ok(())
    }

    /// The next datagram or frame, whole.
    async fn recv_raw(&self) -> Result<Vec<u8>, ProbeError> {
        let next = async {
            match &self.conn {
                Conn::Udp(socket) => {
                    let mut buf = vec![0u8; 65_536];
                    let n = socket.recv(&mut buf).await?;
                    buf.truncate(n);
                    Ok(buf)
                }
                Conn::Tcp(tcp) => read_frame(&mut *tcp.lock().await).await,
            }
        };
        tokio::time::timeout(TIMEOUT, next)
            .await
            .map_err(|_| ProbeError::Timeout)?
    }

    /// Sends a request and waits for its answer. The attributes become bytes before the
    /// first await, so the future holds no `Setter` and is `Send`.
    fn request(
        &self,
        method: Method,
        attrs: Vec<Box<dyn Setter>>,
    ) -> impl Future<Output = Result<Message, ProbeError>> + Send + '_ {
        let request = self.signed(method, attrs);
        async move {
            self.send_raw(&request.raw).await?;
            loop {
                let Ok(answer) = decode(&self.recv_raw().await?) else {
                    // ChannelData from a peer, on a stream.
                    continue;
                };
                if answer.transaction_id == request.transaction_id {
                    return Ok(answer);
                }
            }
        }
    }

    /// A request with the credential attached once the server has sent its nonce.
    fn signed(&self, method: Method, mut attrs: Vec<Box<dyn Setter>>) -> Message {
        if !self.nonce.is_empty() {
            attrs.push(Box::new(TextAttribute::new(
                ATTR_USERNAME,
                self.username.clone(),
            )));
            attrs.push(Box::new(TextAttribute::new(ATTR_REALM, self.realm.clone())));
            attrs.push(Box::new(TextAttribute::new(ATTR_NONCE, self.nonce.clone())));
            attrs.push(Box::new(
                stun::integrity::MessageIntegrity::new_long_term_integrity(
                    self.username.clone(),
                    self.realm.clone(),
                    self.password.clone(),
                ),
            ));
        }
        build(method, CLASS_REQUEST, attrs)
    }

    /// Sends its next requests to `server`, keeping realm and nonce: another instance of a
    /// cluster, as DNS round robin or anycast would pick.
    pub fn set_server(&mut self, server: SocketAddr) {
        self.server = server;
    }

    /// One Allocate with the realm and nonce the client has, no retry: a 438 (a nonce this
    /// server does not take) is an error here.
    ///
    /// # Errors
    /// The server refuses or does not answer.
    pub async fn allocate_once(&mut self) -> Result<SocketAddr, ProbeError> {
        let udp: Vec<Box<dyn Setter>> = vec![Box::new(turn::proto::reqtrans::RequestedTransport {
            protocol: turn::proto::PROTO_UDP,
        })];
        let answer = self.request(METHOD_ALLOCATE, udp).await?;
        refusal(&answer)?;
        let mut relayed = turn::proto::relayaddr::RelayedAddress::default();
        relayed
            .get_from(&answer)
            .map_err(|_| ProbeError::Malformed)?;
        Ok(SocketAddr::new(relayed.ip, relayed.port))
    }

    /// Allocates a UDP relay; returns the relayed address.
    ///
    /// # Errors
    /// The server refuses (401 for a wrong credential, 486/508 for quotas) or does not answer.
    pub async fn allocate(&mut self) -> Result<SocketAddr, ProbeError> {
        let udp = || -> Vec<Box<dyn Setter>> {
            vec![Box::new(turn::proto::reqtrans::RequestedTransport {
                protocol: turn::proto::PROTO_UDP,
            })]
        };
        let challenge = self.request(METHOD_ALLOCATE, udp()).await?;
        if let Err(ProbeError::Refused { code: 401, .. }) = refusal(&challenge) {
            let text = |attr| TextAttribute::get_from_as(&challenge, attr).map(|t| t.text);
            self.realm = text(ATTR_REALM).map_err(|_| ProbeError::Malformed)?;
            self.nonce = text(ATTR_NONCE).map_err(|_| ProbeError::Malformed)?;
        }
        self.allocate_once().await
    }

    /// Permits `peer` to send to this allocation.
    ///
    /// # Errors
    /// The server refuses (403: the peer policy) or does not answer.
    pub async fn permit(&self, peer: SocketAddr) -> Result<(), ProbeError> {
        let attrs: Vec<Box<dyn Setter>> = vec![Box::new(turn::proto::peeraddr::PeerAddress {
            ip: peer.ip(),
            port: peer.port(),
        })];
        refusal(&self.request(METHOD_CREATE_PERMISSION, attrs).await?)
    }

    /// Sends `data` to `peer` through the relay (a Send indication).
    ///
    /// # Errors
    /// The local socket fails.
    pub async fn send(&self, peer: SocketAddr, data: &[u8]) -> Result<(), ProbeError> {
        let attrs: Vec<Box<dyn Setter>> = vec![
            Box::new(turn::proto::peeraddr::PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            }),
            Box::new(turn::proto::data::Data(data.to_vec())),
        ];
        let indication = build(METHOD_SEND, CLASS_INDICATION, attrs);
        self.send_raw(&indication.raw).await
    }

    /// Binds channel `number` to `peer`.
    ///
    /// # Errors
    /// The server refuses (403: the peer policy; 400: the binding rules) or does not answer.
    pub async fn bind_channel(&self, number: u16, peer: SocketAddr) -> Result<(), ProbeError> {
        let attrs: Vec<Box<dyn Setter>> = vec![
            Box::new(turn::proto::channum::ChannelNumber(number)),
            Box::new(turn::proto::peeraddr::PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            }),
        ];
        refusal(&self.request(METHOD_CHANNEL_BIND, attrs).await?)
    }

    /// Sends `data` on a bound channel (ChannelData).
    ///
    /// # Errors
    /// The local socket fails.
    pub async fn send_channel(&self, number: u16, data: &[u8]) -> Result<(), ProbeError> {
        let mut frame = Vec::with_capacity(4 + data.len() + 3);
        frame.extend_from_slice(&number.to_be_bytes());
        frame.extend_from_slice(&(data.len() as u16).to_be_bytes());
        frame.extend_from_slice(data);
        if let Conn::Tcp(_) = self.conn {
            // Streams pad ChannelData to 4 bytes.
            frame.resize(frame.len().next_multiple_of(4), 0);
        }
        self.send_raw(&frame).await
    }

    /// The next Data indication: who sent it through the relay, and what.
    ///
    /// # Errors
    /// Nothing arrives in time.
    pub async fn recv(&self) -> Result<(SocketAddr, Vec<u8>), ProbeError> {
        loop {
            let Ok(m) = decode(&self.recv_raw().await?) else {
                continue;
            };
            if m.typ.method != METHOD_DATA || m.typ.class != CLASS_INDICATION {
                continue;
            }
            let mut peer = turn::proto::peeraddr::PeerAddress::default();
            peer.get_from(&m).map_err(|_| ProbeError::Malformed)?;
            let (data, _) = m
                .get(ATTR_DATA)
                .map_err(|_| ProbeError::Malformed)
                .map(|d| (d, ()))?;
            return Ok((SocketAddr::new(peer.ip, peer.port), data));
        }
    }

    /// Refreshes the allocation for `lifetime` (zero releases it).
    ///
    /// # Errors
    /// The server refuses (437: no such allocation; 401: the credential is no longer valid).
    pub async fn refresh(&self, lifetime: Duration) -> Result<(), ProbeError> {
        let attrs: Vec<Box<dyn Setter>> = vec![Box::new(turn::proto::lifetime::Lifetime(lifetime))];
        refusal(&self.request(METHOD_REFRESH, attrs).await?)
    }

    /// Releases the allocation (Refresh with lifetime 0); errors are ignored.
    pub async fn release(&self) {
        let _ = self.refresh(Duration::ZERO).await;
    }

    /// Sends a Refresh with lifetime 0 and does not wait for (or read) the answer.
    ///
    /// # Errors
    /// The local socket fails.
    pub async fn release_without_reading(&self) -> Result<(), ProbeError> {
        let attrs: Vec<Box<dyn Setter>> =
            vec![Box::new(turn::proto::lifetime::Lifetime(Duration::ZERO))];
        self.send_raw(&self.signed(METHOD_REFRESH, attrs).raw).await
    }
}

/// Reads one STUN or ChannelData frame from a stream.
async fn read_frame(tcp: &mut TcpStream) -> Result<Vec<u8>, ProbeError> {
    let mut frame = vec![0u8; 4];
    tcp.read_exact(&mut frame).await?;
    let len = super::wire::stream_frame_len([frame[0], frame[1], frame[2], frame[3]])
        .ok_or(ProbeError::Malformed)?;
    frame.resize(len, 0);
    tcp.read_exact(&mut frame[4..]).await?;
    Ok(frame)
}
