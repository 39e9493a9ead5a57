//! The native protocol's sessions: admission, then decode, apply limits, hand to the hub.
//!
//! `admit` is the check every dialect makes before upgrading (origin, connection counts).
//! `Session` is the native protocol as a `conn::Handler`: it enforces the message limits
//! (size, rate, join timeout) and turns every refusal into a coded `error` or a close
//! frame with a reason; `conn` runs the socket (frames, keepalive, outbox).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use super::conn::{Conn, Handler, Reply};
use super::frame::CLOSE_POLICY;
use super::gate::Gate;
use super::hub::Outbox;
use super::limits::{ConnectionGuard, ConnectionRefused};
use super::protocol::{self, ClientMsg, ErrorCode, PeerId, PeerInfo, RoomId, ServerMsg};
use super::room::{JoinError, RouteError};
use super::socket::{Socket, Upgrade};
use super::stats::{DialectKind, MessageType, Refusal};
use crate::model::Scope;
use crate::state::AppState;

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
    app.metrics.connections.inc(DialectKind::Native);
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

struct Session {
    app: Arc<AppState>,
    peer_id: PeerId,
    /// The host the browser used to reach us, for TURN URLs.
    request_host: String,
    outbox: Outbox,
    room: Option<RoomId>,
    gate: Gate,
    /// Outside a room: the join timeout. In a room: when fresh TURN credentials are
    /// pushed (four fifths of their lifetime).
    due: Instant,
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
    let (conn, outbox) = Conn::new(&app, socket);
    let mut session = Session {
        app: Arc::clone(&app),
        peer_id,
        request_host,
        outbox,
        room: None,
        gate: Gate::new(&cfg, std::time::Instant::now()),
        due: Instant::now() + cfg.join_timeout(),
    };
    conn.serve(&mut session).await;
}

/// What to send back to the client itself after one message.
enum Answer {
    None,
    Msg(ServerMsg),
    Error(ErrorCode, String),
    Close(ErrorCode, String, u16, &'static str),
}

impl Session {
    /// The frames for an answer, with errors counted and logged.
    fn reply(&self, answer: Answer) -> Reply {
        match answer {
            Answer::None => Reply::None,
            Answer::Msg(msg) => Reply::Send(protocol::encode(&msg)),
            Answer::Error(code, message) => {
                self.app.metrics.errors.inc(code);
                debug!(?code, %message, "refused client message");
                Reply::Send(protocol::encode(&ServerMsg::error(code, message)))
            }
            Answer::Close(code, message, close_code, reason) => {
                self.app.metrics.errors.inc(code);
                warn!(?code, %message, "closing client");
                let frame = protocol::encode(&ServerMsg::error(code, message));
                Reply::Close(Some(frame), close_code, reason)
            }
        }
    }
}

impl Handler for Session {
    fn text(&mut self, text: &str) -> Reply {
        let answer = self.handle_text(text);
        self.reply(answer)
    }

    fn binary(&mut self) -> Reply {
        self.reply(Answer::Error(
            ErrorCode::BadRequest,
            "binary frames are not supported; send JSON text frames".to_owned(),
        ))
    }

    fn next_deadline(&self) -> Option<Instant> {
        Some(self.due)
    }

    fn deadline(&mut self) -> Reply {
        if self.room.is_none() {
            let timeout_s = self.app.live().signaling.join_timeout_s;
            self.app.metrics.refusals.inc(Refusal::JoinTimeout);
            self.app.metrics.errors.inc(ErrorCode::JoinTimeout);
            let err = ServerMsg::error(
                ErrorCode::JoinTimeout,
                format!("no join within {timeout_s} s"),
            );
            return Reply::Close(Some(protocol::encode(&err)), CLOSE_POLICY, "join timeout");
        }
        self.due = Instant::now() + self.refresh_interval();
        self.fresh_ice_servers()
            .map_or(Reply::None, |msg| Reply::Send(protocol::encode(&msg)))
    }

    fn finish(&mut self) {
        self.leave();
    }
}

impl Session {
    fn handle_text(&mut self, text: &str) -> Answer {
        let metrics = &self.app.metrics;
        let checked = self.gate.check(
            text.len(),
            &self.app.live().signaling,
            std::time::Instant::now(),
        );
        if let Err(refused) = checked {
            metrics.refusals.inc(refused.limit());
            if refused.closes() {
                let (close_code, reason) = refused.close();
                return Answer::Close(refused.code(), refused.message(), close_code, reason);
            }
            return Answer::Error(refused.code(), refused.message());
        }
        let msg = protocol::decode(text);
        metrics.messages.inc(match &msg {
            Err(_) => MessageType::Invalid,
            Ok(ClientMsg::Join { .. }) => MessageType::Join,
            Ok(ClientMsg::Signal { .. }) => MessageType::Signal,
            Ok(ClientMsg::Leave) => MessageType::Leave,
            Ok(ClientMsg::Ping) => MessageType::Ping,
        });
        match msg {
            Err(message) => Answer::Error(ErrorCode::BadRequest, message),
            Ok(ClientMsg::Join { room, name }) => self.join(&room, name),
            Ok(ClientMsg::Signal { to, payload }) => {
                match self.app.hub.signal(&self.peer_id, &to, payload) {
                    Ok(()) => Answer::None,
                    Err(RouteError::NotJoined) => Answer::Error(
                        ErrorCode::NotJoined,
                        "join a room before sending signals".to_owned(),
                    ),
                    Err(RouteError::UnknownPeer) => {
                        Answer::Error(ErrorCode::UnknownPeer, format!("no peer {to} in this room"))
                    }
                }
            }
            Ok(ClientMsg::Leave) => {
                if self.room.is_none() {
                    return Answer::Error(ErrorCode::NotJoined, "not in a room".to_owned());
                }
                self.leave();
                // The socket left its room: it gets a fresh join timeout.
                self.due = Instant::now() + self.app.live().signaling.join_timeout();
                Answer::None
            }
            Ok(ClientMsg::Ping) => Answer::Msg(ServerMsg::Pong),
        }
    }

    fn join(&mut self, room: &str, name: Option<String>) -> Answer {
        if let Some(current) = &self.room {
            return Answer::Error(
                ErrorCode::AlreadyJoined,
                format!("already in room {current}; leave first"),
            );
        }
        let room_id = match RoomId::parse(room) {
            Ok(r) => r,
            Err(message) => return Answer::Error(ErrorCode::BadRoom, message),
        };
        if let Some(Err(message)) = name.as_deref().map(protocol::check_name) {
            return Answer::Error(ErrorCode::BadName, message);
        }
        let peer = PeerInfo {
            id: self.peer_id.clone(),
            name,
        };
        let (ice_servers, ice_ttl_s) = self.app.ice_servers_for(
            &self.peer_id,
            &Scope::Native(room_id.clone()),
            &self.request_host,
        );
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
                self.due = Instant::now() + self.refresh_interval();
                self.app.metrics.joins.inc(DialectKind::Native);
                Answer::None
            }
            Err(JoinError::RoomFull) => {
                self.app.metrics.refusals.inc(Refusal::RoomCapacity);
                Answer::Error(
                    ErrorCode::RoomFull,
                    format!(
                        "room {room_id} is full ({} peers)",
                        self.app.live().signaling.room_capacity
                    ),
                )
            }
            Err(JoinError::TooManyRooms) => {
                self.app.metrics.refusals.inc(Refusal::MaxRooms);
                Answer::Error(
                    ErrorCode::TooManyRooms,
                    "the server has too many rooms".to_owned(),
                )
            }
            Err(JoinError::AlreadyJoined) => Answer::Error(
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
            self.app.peer_left(&Scope::Native(left.room), &self.peer_id);
        }
    }

    /// How long until the next credential push: four fifths of the credential lifetime.
    fn refresh_interval(&self) -> Duration {
        self.app
            .turn
            .as_ref()
            .map_or(Duration::from_secs(86_400 * 365), |t| {
                Duration::from_secs(t.credential_ttl_s()) * 4 / 5
            })
    }

    /// Freshly minted ICE servers for the current room, when credentials expire.
    fn fresh_ice_servers(&self) -> Option<ServerMsg> {
        let room = self.room.as_ref()?;
        let (ice_servers, ttl) = self.app.ice_servers_for(
            &self.peer_id,
            &Scope::Native(room.clone()),
            &self.request_host,
        );
        Some(ServerMsg::IceServers {
            ice_servers,
            ice_ttl_s: ttl?,
        })
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
