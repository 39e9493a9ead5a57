//! The plain-WebSocket dialect of the "login / offer / answer / candidate / leave"
//! tutorial, for old clients: users log in with a name and call each other by name.
//!
//! `Directory` (who is logged in, with their outbox) is plain data behind a lock;
//! `upgrade`/`run` are the socket edge, with the same limits as the native protocol.
//! Unlike the tutorial, sending to an unknown name gets an error instead of silence,
//! and `leave` to an unknown name cannot crash anything.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{Instrument, info, info_span, warn};

use super::hub::{Evict, OUTBOX_CAPACITY, Outbox};
use super::limits::{ConnectionGuard, TokenBucket};
use super::protocol::{self, PeerId, RoomId};
use super::ws::{self, CLOSE_POLICY, CLOSE_TOO_BIG};
use crate::metrics::{Dialect, MessageType, Refusal};
use crate::state::AppState;

/// TURN credentials of this dialect name this room: it has no rooms of its own.
pub const LEGACY_ROOM: &str = "_ws-legacy";

/// Who is logged in.
#[derive(Debug, Default)]
pub struct Directory {
    users: Mutex<HashMap<String, (PeerId, Outbox)>>,
}

impl Directory {
    /// Registers `name`; `false` when it is taken.
    pub fn login(&self, name: &str, peer: &PeerId, outbox: Outbox) -> bool {
        let mut users = self.users.lock().expect("directory lock");
        if users.contains_key(name) {
            return false;
        }
        users.insert(name.to_owned(), (peer.clone(), outbox));
        true
    }

    pub fn logout(&self, name: &str) {
        self.users.lock().expect("directory lock").remove(name);
    }

    /// Queues `frame` for `name`; `false` when nobody of that name is logged in.
    pub fn send(&self, name: &str, frame: Utf8Bytes) -> bool {
        let outbox = self
            .users
            .lock()
            .expect("directory lock")
            .get(name)
            .map(|(_, o)| o.clone());
        match outbox {
            Some(outbox) => {
                outbox.deliver(frame);
                true
            }
            None => false,
        }
    }

    /// Users logged in right now.
    pub fn online(&self) -> usize {
        self.users.lock().expect("directory lock").len()
    }

    /// Whether `peer` is logged in (for its TURN credential).
    pub fn is_online(&self, peer: &PeerId) -> bool {
        self.users
            .lock()
            .expect("directory lock")
            .values()
            .any(|(p, _)| p == peer)
    }
}

/// `GET /legacy` (or `signaling.legacy_path`): the same admission checks as `/ws`.
pub async fn upgrade(
    State(app): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    socket: WebSocketUpgrade,
) -> Response {
    let admitted = match ws::admit(&app, remote, &headers, &uri) {
        Ok(a) => a,
        Err(refused) => return *refused,
    };
    let tasks = app.tasks.clone();
    app.metrics.connections.inc(Dialect::PlainWs);
    ws::limit_frames(&app, socket).on_upgrade(move |socket| {
        let peer = PeerId::random();
        let span = info_span!("legacy", %remote, peer_id = %peer, name = tracing::field::Empty);
        tasks.track_future(
            run(app, socket, peer, admitted.request_host, admitted.guard).instrument(span),
        )
    })
}

struct Session {
    app: Arc<AppState>,
    peer: PeerId,
    request_host: String,
    outbox: Outbox,
    name: Option<String>,
    /// The user this one last exchanged an offer or answer with; told `leave` on close.
    partner: Option<String>,
    bucket: TokenBucket,
    strikes: u32,
}

/// What to do after one message.
enum Next {
    Reply(Value),
    Nothing,
    Close(Value, u16, &'static str),
}

fn error(code: &str, message: impl Into<String>) -> Value {
    json!({"type": "error", "code": code, "message": message.into()})
}

impl Session {
    fn handle_text(&mut self, text: &str) -> Next {
        let live = self.app.live();
        let cfg = &live.signaling;
        let metrics = &self.app.metrics;
        if text.len() > cfg.max_message_bytes {
            metrics.refusals.inc(Refusal::MaxMessageBytes);
            let message = format!(
                "message of {} bytes exceeds the limit of {} bytes",
                text.len(),
                cfg.max_message_bytes
            );
            return Next::Close(
                error("message_too_large", message),
                CLOSE_TOO_BIG,
                "message too large",
            );
        }
        if !self.bucket.take(std::time::Instant::now()) {
            metrics.refusals.inc(Refusal::MessagesPerSecond);
            self.strikes += 1;
            if self.strikes > 2 * cfg.message_burst.max(cfg.messages_per_second) {
                return Next::Close(
                    error("rate_limited", "rate limit exceeded repeatedly"),
                    CLOSE_POLICY,
                    "rate limit exceeded",
                );
            }
            return Next::Reply(error("rate_limited", "too many messages; message dropped"));
        }
        self.strikes = 0;
        let data: Value = match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return Next::Reply(error(
                    "bad_request",
                    "expected a JSON object with a \"type\"",
                ));
            }
            Err(e) => return Next::Reply(error("bad_request", format!("invalid JSON: {e}"))),
        };
        let kind = data["type"].as_str().unwrap_or_default().to_owned();
        metrics.messages.inc(match kind.as_str() {
            "login" => MessageType::Login,
            "offer" => MessageType::Offer,
            "answer" => MessageType::Answer,
            "candidate" => MessageType::Candidate,
            "leave" => MessageType::Leave,
            _ => MessageType::Invalid,
        });
        match kind.as_str() {
            "login" => self.login(&data),
            "offer" | "answer" | "candidate" | "leave" => self.relay(&kind, &data),
            _ => Next::Reply(
                json!({"type": "error", "message": format!("Command not found: {kind}")}),
            ),
        }
    }

    fn login(&mut self, data: &Value) -> Next {
        let Some(name) = data["name"].as_str() else {
            return Next::Reply(error("bad_request", "login needs a \"name\""));
        };
        if self.name.is_some() || name.is_empty() || protocol::check_name(name).is_err() {
            return Next::Reply(json!({"type": "login", "success": false}));
        }
        if !self.app.legacy.login(name, &self.peer, self.outbox.clone()) {
            return Next::Reply(json!({"type": "login", "success": false}));
        }
        tracing::Span::current().record("name", name);
        info!("logged in");
        self.app.metrics.joins.inc(Dialect::PlainWs);
        self.name = Some(name.to_owned());
        let room = RoomId::parse(LEGACY_ROOM).expect("valid room name");
        let (ice_servers, ice_ttl_s) =
            self.app
                .ice_servers_for(&self.peer, &room, &self.request_host);
        Next::Reply(
            json!({"type": "login", "success": true, "ice_servers": ice_servers, "ice_ttl_s": ice_ttl_s}),
        )
    }

    fn relay(&mut self, kind: &str, data: &Value) -> Next {
        let Some(me) = self.name.clone() else {
            return Next::Reply(error("not_logged_in", "log in first"));
        };
        let Some(target) = data["name"].as_str().map(str::to_owned) else {
            return Next::Reply(error("bad_request", format!("{kind} needs a \"name\"")));
        };
        let frame = match kind {
            "offer" => json!({"type": "offer", "offer": data["offer"], "name": me}),
            "answer" => json!({"type": "answer", "answer": data["answer"]}),
            "candidate" => json!({"type": "candidate", "candidate": data["candidate"]}),
            _ => json!({"type": "leave"}),
        };
        if !self.app.legacy.send(&target, frame.to_string().into()) {
            return Next::Reply(error(
                "unknown_name",
                format!("no user named {target:?} is logged in"),
            ));
        }
        match kind {
            "offer" | "answer" => self.partner = Some(target),
            "leave" => self.partner = None,
            _ => {}
        }
        Next::Nothing
    }

    /// Frees the name and tells the partner, when the socket goes.
    fn close(&mut self) {
        let Some(name) = self.name.take() else { return };
        self.app.legacy.logout(&name);
        if let Some(partner) = self.partner.take() {
            self.app
                .legacy
                .send(&partner, json!({"type": "leave"}).to_string().into());
        }
        let room = RoomId::parse(LEGACY_ROOM).expect("valid room name");
        self.app.peer_left(&room, &self.peer);
        info!("logged out");
    }
}

async fn run(
    app: Arc<AppState>,
    mut socket: WebSocket,
    peer: PeerId,
    request_host: String,
    _guard: ConnectionGuard,
) {
    info!("connected");
    let cfg = app.live().signaling.clone();
    let (tx, mut rx) = mpsc::channel(OUTBOX_CAPACITY);
    let evict = Evict::under(&app.shutdown);
    let mut session = Session {
        app: Arc::clone(&app),
        peer,
        request_host,
        outbox: Outbox {
            tx,
            evict: evict.clone(),
            direct: None,
        },
        name: None,
        partner: None,
        bucket: TokenBucket::new(
            cfg.messages_per_second,
            cfg.message_burst,
            std::time::Instant::now(),
        ),
        strikes: 0,
    };
    let mut ping =
        tokio::time::interval_at(Instant::now() + cfg.ping_interval(), cfg.ping_interval());
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    // Made once, as in the native loop; it also fires on shutdown.
    let evicted = evict.token().cancelled();
    tokio::pin!(evicted);
    let close: Option<(u16, &'static str)> = loop {
        tokio::select! {
            biased;
            () = &mut evicted => break Some(ws::evicted_close(&app, evict.reason())),
            Some(frame) = rx.recv() => {
                if ws::send(&mut socket, Message::Text(frame)).await.is_err() {
                    break None;
                }
            }
            incoming = socket.recv() => {
                let Some(msg) = ws::frame(incoming) else { break None };
                last_seen = Instant::now();
                let next = match msg {
                    Message::Text(text) => session.handle_text(&text),
                    Message::Binary(_) => Next::Reply(error("bad_request", "binary frames are not supported; send JSON text")),
                    _ => Next::Nothing,
                };
                match next {
                    Next::Nothing => {}
                    Next::Reply(reply) => {
                        if ws::send(&mut socket, Message::Text(reply.to_string().into())).await.is_err() {
                            break None;
                        }
                    }
                    Next::Close(reply, code, reason) => {
                        warn!(reason, "closing legacy client");
                        let _ = ws::send(&mut socket, Message::Text(reply.to_string().into())).await;
                        break Some((code, reason));
                    }
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > cfg.idle_timeout() {
                    warn!("dropping unresponsive client");
                    break None;
                }
                if ws::send(&mut socket, Message::Ping(Default::default())).await.is_err() {
                    break None;
                }
            }
        }
    };
    session.close();
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = ws::send(&mut socket, Message::Close(Some(frame))).await;
    }
    info!("disconnected");
}
