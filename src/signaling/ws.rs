//! One task per WebSocket: decode, apply limits, hand to the hub, encode.
//!
//! This is the only code that sees a WebSocket. It enforces the per-connection
//! limits (origin, connection counts, frame size, message rate, join timeout,
//! keepalive) and turns every refusal into a coded `error` or a close frame
//! with a reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{Instrument, debug, info, info_span, warn};

use super::direct::Direct;
use super::frame::{Incoming, OP_PING, OP_PONG, OP_TEXT};
use super::hub::{Evict, Eviction, OUTBOX_CAPACITY, Outbox};
use super::limits::{ConnectionGuard, ConnectionRefused, TokenBucket};
use super::protocol::{self, ClientMsg, ErrorCode, PeerId, PeerInfo, RoomId, ServerMsg};
use super::room::{JoinError, RouteError};
use super::socket::{ReadError, Socket, Upgrade};
use crate::metrics::{Dialect, MessageType, Refusal};
use crate::state::AppState;

/// Close codes (RFC 6455 section 7.4.1).
pub(super) const CLOSE_NORMAL: u16 = 1000;
pub(super) const CLOSE_GOING_AWAY: u16 = 1001;
pub(super) const CLOSE_POLICY: u16 = 1008;
pub(super) const CLOSE_TOO_BIG: u16 = 1009;

/// How long one frame may take to reach a client before it counts as dead.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET /ws`: checks origin and connection limits, then upgrades.
pub async fn upgrade(
    State(app): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    ws: Upgrade,
) -> Response {
    let admitted = match admit(&app, remote, &headers, &uri) {
        Ok(a) => a,
        Err(refused) => return *refused,
    };
    let tasks = app.tasks.clone();
    app.metrics.connections.inc(Dialect::Native);
    ws.on_upgrade(move |socket| {
        let peer_id = PeerId::random();
        let span = info_span!("ws", %remote, peer_id = %peer_id, room = tracing::field::Empty);
        tasks.track_future(
            run(app, socket, peer_id, admitted.request_host, admitted.guard).instrument(span),
        )
    })
}

/// A connection that passed the checks every signaling dialect shares.
pub struct Admitted {
    pub guard: ConnectionGuard,
    /// The host the browser used, without the port: TURN URLs point at the same name.
    pub request_host: String,
}

/// The checks before any WebSocket upgrade: origin, shutdown, connection limits.
///
/// # Errors
/// The refusal to send instead of upgrading.
pub fn admit(
    app: &AppState,
    remote: SocketAddr,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> Result<Admitted, Box<Response>> {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    if !origin_allowed(origin, host, &app.live().signaling.allowed_origins) {
        warn!(%remote, origin = origin.unwrap_or(""), "websocket origin refused");
        app.metrics.refusals.inc(Refusal::Origin);
        return Err(Box::new(refusal(
            StatusCode::FORBIDDEN,
            "origin_refused",
            "this origin may not open the signaling socket (see signaling.allowed_origins)",
        )));
    }
    if app.shutdown.is_cancelled() {
        app.metrics.refusals.inc(Refusal::ShuttingDown);
        return Err(Box::new(refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        )));
    }
    let guard = app.limiter.try_acquire(remote.ip()).map_err(|limit| {
        app.metrics.refusals.inc(match limit {
            ConnectionRefused::Total => Refusal::MaxConnections,
            ConnectionRefused::PerIp => Refusal::MaxConnectionsPerIp,
        });
        let (status, message) = match limit {
            ConnectionRefused::Total => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the server has too many connections (signaling.max_connections)",
            ),
            ConnectionRefused::PerIp => (
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address (signaling.max_connections_per_ip)",
            ),
        };
        warn!(%remote, ?limit, "websocket connection refused");
        Box::new(refusal(status, "too_many_connections", message))
    })?;
    let request_host = host
        .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
        .map_or_else(|| "localhost".to_owned(), |a| a.host().to_owned());
    Ok(Admitted {
        guard,
        request_host,
    })
}

/// The transport frame limit. The message limit is enforced on the decoded text, so that an
/// oversized message gets a coded error; this only stops runaway frames.
///
/// Buffers are small: signaling messages are a few KB and a server holds thousands of
/// idle sockets. tungstenite's 128 KiB defaults cost ~100 KiB of RSS per connection, a
/// 4 KiB read buffer ~6 KiB more than this one; larger messages still pass (the read
/// buffer grows to the frame, read 1 KiB at a time).
pub fn limit_frames(app: &AppState, ws: WebSocketUpgrade) -> WebSocketUpgrade {
    let transport_limit = app.live().signaling.max_message_bytes * 2;
    ws.max_message_size(transport_limit)
        .max_frame_size(transport_limit)
        .read_buffer_size(1024)
        .write_buffer_size(0)
}

fn refusal(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"code": code, "message": message}).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Whether a browser page from `origin` may open the socket.
///
/// A missing `Origin` is allowed: only browsers send it, and other clients could forge it.
/// With an empty allow-list only the page's own origin (`https://` + `Host`) is allowed.
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else { return true };
    let origin = origin.trim_end_matches('/');
    if allowed.is_empty() {
        return host.is_some_and(|h| origin.eq_ignore_ascii_case(&format!("https://{h}")));
    }
    allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// What the read side asks the loop to do next.
enum Next {
    Continue,
    Close(u16, &'static str),
}

struct Session {
    app: Arc<AppState>,
    peer_id: PeerId,
    /// The host the browser used to reach us, for TURN URLs.
    request_host: String,
    outbox: Outbox,
    room: Option<RoomId>,
    bucket: TokenBucket,
    /// Messages refused in a row by the rate limit; too many closes the socket.
    strikes: u32,
}

async fn run(
    app: Arc<AppState>,
    socket: Socket,
    peer_id: PeerId,
    request_host: String,
    _guard: ConnectionGuard,
) {
    info!("connected");
    let cfg = app.live().signaling.clone();
    let (tx, mut rx) = mpsc::channel(OUTBOX_CAPACITY);
    let evict = Evict::under(&app.shutdown);
    // The transport limit: the message limit is checked on the text, for a coded error.
    let (mut reader, writer) = socket.split(cfg.max_message_bytes * 2);
    let direct = Arc::new(Direct::new(writer));
    let mut session = Session {
        app: Arc::clone(&app),
        peer_id,
        request_host,
        outbox: Outbox {
            tx,
            evict: evict.clone(),
            direct: Some(Arc::clone(&direct)),
        },
        room: None,
        bucket: TokenBucket::new(
            cfg.messages_per_second,
            cfg.message_burst,
            std::time::Instant::now(),
        ),
        strikes: 0,
    };
    let join_deadline = tokio::time::sleep(cfg.join_timeout());
    tokio::pin!(join_deadline);
    let mut ping =
        tokio::time::interval_at(Instant::now() + cfg.ping_interval(), cfg.ping_interval());
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    let mut was_joined = false;
    // Fresh TURN credentials are pushed when four fifths of their lifetime has passed.
    let refresh = tokio::time::sleep(Duration::from_secs(86_400 * 365));
    tokio::pin!(refresh);

    // Made once: a fresh `cancelled()` or `notified()` per wake-up would lock and
    // re-register a waiter. The eviction token also fires on shutdown.
    let evicted = evict.token().cancelled();
    tokio::pin!(evicted);
    let flush = direct.flush.notified();
    tokio::pin!(flush);
    let close: Option<(u16, &'static str)> = loop {
        tokio::select! {
            biased;
            () = &mut evicted => break Some(evicted_close(&app, evict.reason())),
            Some(frame) = rx.recv() => {
                let sent = {
                    let mut sink = direct.sink.lock().await;
                    let sent = unless_evicted(&evict, finish(sink.send(OP_TEXT, frame.as_bytes()))).await;
                    // Under the lock: only now may a sender write past this frame.
                    direct.unqueue_one();
                    sent
                };
                match sent {
                    Ok(()) => {}
                    Err(Stopped::Failed) => break None,
                    Err(Stopped::Evicted(why)) => break Some(evicted_close(&app, why)),
                }
            }
            () = &mut flush => {
                flush.set(direct.flush.notified());
                let flushed = {
                    let mut sink = direct.sink.lock().await;
                    let flushed = unless_evicted(&evict, finish(sink.flush())).await;
                    direct.flushed();
                    flushed
                };
                match flushed {
                    Ok(()) => {}
                    Err(Stopped::Failed) => break None,
                    Err(Stopped::Evicted(why)) => break Some(evicted_close(&app, why)),
                }
            }
            incoming = reader.next() => {
                let msg = match incoming {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break None,
                    Err(ReadError::Violation(v)) => {
                        debug!(reason = v.reason(), "websocket protocol violation");
                        break Some((v.close_code(), v.reason()));
                    }
                    Err(ReadError::Io(e)) => {
                        debug!(error = %e, "websocket read failed");
                        break None;
                    }
                };
                last_seen = Instant::now();
                let reply = match msg {
                    Incoming::Text(text) => session.handle_text(&text),
                    Incoming::Binary(_) => Reply::Error(ErrorCode::BadRequest, "binary frames are not supported; send JSON text frames".to_owned()),
                    Incoming::Ping(data) => {
                        if write(&direct, OP_PONG, &data).await.is_err() {
                            break None;
                        }
                        Reply::None
                    }
                    Incoming::Pong => Reply::None,
                    // The client closes: echo its status (RFC 6455 section 5.5.1).
                    Incoming::Close(code) => break Some((code.unwrap_or(CLOSE_NORMAL), "")),
                };
                match session.answer(&direct, reply).await {
                    Next::Continue => {}
                    Next::Close(code, reason) => break Some((code, reason)),
                }
            }
            () = &mut join_deadline, if session.room.is_none() => {
                app.metrics.refusals.inc(Refusal::JoinTimeout);
                app.metrics.errors.inc(ErrorCode::JoinTimeout);
                let err = ServerMsg::error(ErrorCode::JoinTimeout, format!("no join within {} s", cfg.join_timeout_s));
                let _ = send_msg(&direct, &err).await;
                break Some((CLOSE_POLICY, "join timeout"));
            }
            () = &mut refresh, if session.room.is_some() => {
                if let Some(msg) = session.fresh_ice_servers()
                    && send_msg(&direct, &msg).await.is_err()
                {
                    break None;
                }
                refresh.as_mut().reset(Instant::now() + session.refresh_interval());
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > cfg.idle_timeout() {
                    warn!(idle_s = last_seen.elapsed().as_secs(), "dropping unresponsive client");
                    break None;
                }
                if write(&direct, OP_PING, &[]).await.is_err() {
                    break None;
                }
            }
        }
        let joined = session.room.is_some();
        if was_joined && !joined {
            // The socket left its room: it gets a fresh join timeout.
            join_deadline
                .as_mut()
                .reset(Instant::now() + cfg.join_timeout());
        }
        if !was_joined && joined {
            refresh
                .as_mut()
                .reset(Instant::now() + session.refresh_interval());
        }
        was_joined = joined;
    };
    session.leave();
    if let Some((code, reason)) = close {
        let _ = finish(direct.sink.lock().await.close(Some(code), reason)).await;
        info!(code, reason, "disconnected");
    } else {
        info!("disconnected");
    }
}

/// The close frame for an evicted socket, logged and counted.
pub(super) fn evicted_close(app: &AppState, why: Option<Eviction>) -> (u16, &'static str) {
    match why {
        None => (CLOSE_GOING_AWAY, "server shutting down"),
        Some(Eviction::Overflow) => {
            warn!("send queue overflow, disconnecting slow client");
            app.metrics.refusals.inc(Refusal::SendQueue);
            (CLOSE_POLICY, "send queue overflow")
        }
        Some(Eviction::Kicked) => {
            info!("closed by the operator");
            (CLOSE_POLICY, "closed by the server operator")
        }
    }
}

/// The frame a read produced, or `None` when the connection is over (closed or failed).
pub(super) fn frame(incoming: Option<Result<Message, axum::Error>>) -> Option<Message> {
    match incoming {
        None | Some(Ok(Message::Close(_))) => None,
        Some(Err(e)) => {
            debug!(error = %e, "websocket read failed");
            None
        }
        Some(Ok(msg)) => Some(msg),
    }
}

/// Sends one message on a socket of the dialects served through axum's WebSocket.
pub(super) async fn send(socket: &mut WebSocket, msg: Message) -> Result<(), ()> {
    finish(socket.send(msg)).await
}

/// Why a write did not complete.
enum Stopped {
    Failed,
    /// Evicted (`None`: the server is shutting down) while the write waited.
    Evicted(Option<Eviction>),
}

/// A write that a client which stopped reading can block; when its queue overflows
/// meanwhile (or the server shuts down), it is dropped at once, not after the send timeout.
async fn unless_evicted(
    evict: &Evict,
    write: impl std::future::Future<Output = Result<(), ()>>,
) -> Result<(), Stopped> {
    tokio::select! {
        done = write => done.map_err(|()| Stopped::Failed),
        () = evict.token().cancelled() => Err(Stopped::Evicted(evict.reason())),
    }
}

/// Writes one frame through a shared write half, waiting for the lock.
async fn write(direct: &Direct, opcode: u8, payload: &[u8]) -> Result<(), ()> {
    finish(direct.sink.lock().await.send(opcode, payload)).await
}

/// Awaits a write or flush with the send timeout, logging a failure.
async fn finish<E: std::fmt::Display>(
    sending: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), ()> {
    let mut sending = std::pin::pin!(sending);
    // Nearly every write completes at once: only one that has to wait gets a timer.
    let done = match futures_util::poll!(sending.as_mut()) {
        std::task::Poll::Ready(result) => Ok(result),
        std::task::Poll::Pending => tokio::time::timeout(SEND_TIMEOUT, sending).await,
    };
    match done {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            debug!(error = %e, "websocket write failed");
            Err(())
        }
        Err(_) => {
            warn!("websocket write timed out");
            Err(())
        }
    }
}

async fn send_msg(direct: &Direct, msg: &ServerMsg) -> Result<(), ()> {
    write(direct, OP_TEXT, protocol::encode(msg).as_bytes()).await
}

/// What to send back to the client itself after one message.
enum Reply {
    None,
    Msg(ServerMsg),
    Error(ErrorCode, String),
    Close(ErrorCode, String, u16, &'static str),
}

impl Session {
    fn handle_text(&mut self, text: &str) -> Reply {
        let live = self.app.live();
        let max = live.signaling.max_message_bytes;
        let metrics = &self.app.metrics;
        if text.len() > max {
            metrics.refusals.inc(Refusal::MaxMessageBytes);
            return Reply::Close(
                ErrorCode::MessageTooLarge,
                format!(
                    "message of {} bytes exceeds the limit of {max} bytes",
                    text.len()
                ),
                CLOSE_TOO_BIG,
                "message too large",
            );
        }
        if !self.bucket.take(std::time::Instant::now()) {
            metrics.refusals.inc(Refusal::MessagesPerSecond);
            self.strikes += 1;
            // A client that keeps sending after errors worth two bursts is ignoring them.
            let cfg = &live.signaling;
            if self.strikes > 2 * cfg.message_burst.max(cfg.messages_per_second) {
                return Reply::Close(
                    ErrorCode::RateLimited,
                    "rate limit exceeded repeatedly".to_owned(),
                    CLOSE_POLICY,
                    "rate limit exceeded",
                );
            }
            return Reply::Error(
                ErrorCode::RateLimited,
                format!(
                    "more than {} messages per second; message dropped",
                    live.signaling.messages_per_second
                ),
            );
        }
        self.strikes = 0;
        let msg = protocol::decode(text);
        metrics.messages.inc(match &msg {
            Err(_) => MessageType::Invalid,
            Ok(ClientMsg::Join { .. }) => MessageType::Join,
            Ok(ClientMsg::Signal { .. }) => MessageType::Signal,
            Ok(ClientMsg::Leave) => MessageType::Leave,
            Ok(ClientMsg::Ping) => MessageType::Ping,
        });
        match msg {
            Err(message) => Reply::Error(ErrorCode::BadRequest, message),
            Ok(ClientMsg::Join { room, name }) => self.join(&room, name),
            Ok(ClientMsg::Signal { to, payload }) => {
                match self.app.hub.signal(&self.peer_id, &to, payload) {
                    Ok(()) => Reply::None,
                    Err(RouteError::NotJoined) => Reply::Error(
                        ErrorCode::NotJoined,
                        "join a room before sending signals".to_owned(),
                    ),
                    Err(RouteError::UnknownPeer) => {
                        Reply::Error(ErrorCode::UnknownPeer, format!("no peer {to} in this room"))
                    }
                }
            }
            Ok(ClientMsg::Leave) => {
                if self.room.is_none() {
                    return Reply::Error(ErrorCode::NotJoined, "not in a room".to_owned());
                }
                self.leave();
                Reply::None
            }
            Ok(ClientMsg::Ping) => Reply::Msg(ServerMsg::Pong),
        }
    }

    fn join(&mut self, room: &str, name: Option<String>) -> Reply {
        if let Some(current) = &self.room {
            return Reply::Error(
                ErrorCode::AlreadyJoined,
                format!("already in room {current}; leave first"),
            );
        }
        let room_id = match RoomId::parse(room) {
            Ok(r) => r,
            Err(message) => return Reply::Error(ErrorCode::BadRoom, message),
        };
        if let Some(Err(message)) = name.as_deref().map(protocol::check_name) {
            return Reply::Error(ErrorCode::BadName, message);
        }
        let peer = PeerInfo {
            id: self.peer_id.clone(),
            name,
        };
        let (ice_servers, ice_ttl_s) =
            self.app
                .ice_servers_for(&self.peer_id, &room_id, &self.request_host);
        let welcome = |others: &[PeerInfo]| ServerMsg::Welcome {
            peer_id: self.peer_id.clone(),
            room: room_id.clone(),
            peers: others.to_vec(),
            ice_servers,
            ice_ttl_s,
        };
        match self
            .app
            .hub
            .join(peer, &room_id, self.outbox.clone(), welcome)
        {
            Ok(joined) => {
                tracing::Span::current().record("room", room_id.as_str());
                info!(
                    created = joined.created,
                    peers = joined.others.len() + 1,
                    "joined"
                );
                self.room = Some(room_id);
                self.app.metrics.joins.inc(Dialect::Native);
                Reply::None
            }
            Err(JoinError::RoomFull) => {
                self.app.metrics.refusals.inc(Refusal::RoomCapacity);
                Reply::Error(
                    ErrorCode::RoomFull,
                    format!(
                        "room {room_id} is full ({} peers)",
                        self.app.live().signaling.room_capacity
                    ),
                )
            }
            Err(JoinError::TooManyRooms) => {
                self.app.metrics.refusals.inc(Refusal::MaxRooms);
                Reply::Error(
                    ErrorCode::TooManyRooms,
                    "the server has too many rooms".to_owned(),
                )
            }
            Err(JoinError::AlreadyJoined) => Reply::Error(
                ErrorCode::AlreadyJoined,
                "already in a room; leave first".to_owned(),
            ),
        }
    }

    fn leave(&mut self) {
        if self.room.take().is_some()
            && let Some(left) = self.app.hub.leave(&self.peer_id)
        {
            info!(room = %left.room, closed = left.closed, "left");
            self.app.peer_left(&left.room, &self.peer_id);
        }
    }

    /// How long until the next credential push: four fifths of the credential lifetime.
    fn refresh_interval(&self) -> Duration {
        self.app
            .turn
            .as_ref()
            .map_or(Duration::from_secs(86_400 * 365), |t| {
                Duration::from_secs(t.offer().ttl_s) * 4 / 5
            })
    }

    /// Freshly minted ICE servers for the current room, when credentials expire.
    fn fresh_ice_servers(&self) -> Option<ServerMsg> {
        let room = self.room.as_ref()?;
        let (ice_servers, ttl) = self
            .app
            .ice_servers_for(&self.peer_id, room, &self.request_host);
        Some(ServerMsg::IceServers {
            ice_servers,
            ice_ttl_s: ttl?,
        })
    }

    async fn answer(&self, socket: &Direct, reply: Reply) -> Next {
        let result = match reply {
            Reply::None => Ok(()),
            Reply::Msg(msg) => send_msg(socket, &msg).await,
            Reply::Error(code, message) => {
                self.app.metrics.errors.inc(code);
                debug!(?code, %message, "refused client message");
                send_msg(socket, &ServerMsg::error(code, message)).await
            }
            Reply::Close(code, message, close_code, reason) => {
                self.app.metrics.errors.inc(code);
                warn!(?code, %message, "closing client");
                let _ = send_msg(socket, &ServerMsg::error(code, message)).await;
                return Next::Close(close_code, reason);
            }
        };
        match result {
            Ok(()) => Next::Continue,
            Err(()) => Next::Close(CLOSE_GOING_AWAY, "write failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn default_allows_same_origin_and_originless_clients() {
        assert!(origin_allowed(
            Some("https://host:8443"),
            Some("host:8443"),
            &[]
        ));
        assert!(origin_allowed(
            Some("https://HOST:8443/"),
            Some("host:8443"),
            &[]
        ));
        assert!(origin_allowed(None, Some("host:8443"), &[]));
        assert!(!origin_allowed(
            Some("https://evil.example"),
            Some("host:8443"),
            &[]
        ));
        assert!(!origin_allowed(
            Some("http://host:8443"),
            Some("host:8443"),
            &[]
        ));
        assert!(!origin_allowed(Some("https://host:8443"), None, &[]));
    }

    #[test]
    fn allow_list_replaces_same_origin() {
        let list = vec!["https://app.example.com".to_owned()];
        assert!(origin_allowed(
            Some("https://app.example.com"),
            Some("x"),
            &list
        ));
        assert!(!origin_allowed(Some("https://x"), Some("x"), &list));
        let any = vec!["*".to_owned()];
        assert!(origin_allowed(Some("https://anything"), Some("x"), &any));
    }
}
