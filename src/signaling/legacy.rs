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

use axum::Router;
use axum::extract::ws::Utf8Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};

use super::admit::{Admitted, admit};
use super::conn::{Conn, Handler, Reply};
use super::dialect::Dialect;
use super::gate::Gate;
use super::outbox::Outbox;
use super::protocol::{self, ErrorCode, PeerId};
use super::signal::Eviction;
use super::socket::{Socket, Upgrade};
use super::stats::{Counts, DialectKind, MessageType};
use crate::config::SignalingConfig;
use crate::model::{PeerInfo, RoomId, Scope};
use crate::state::AppState;

/// Who is logged in.
#[derive(Debug, Default)]
pub struct Directory {
    /// Outboxes are shared, so that a relayed message takes one reference count.
    users: Mutex<HashMap<String, (PeerId, Arc<Outbox>)>>,
}

impl Directory {
    /// Registers `name`; `false` when it is taken.
    pub fn login(&self, name: &str, peer: &PeerId, outbox: Arc<Outbox>) -> bool {
        let mut users = self.users.lock().expect("directory lock");
        if users.contains_key(name) {
            return false;
        }
        users.insert(name.to_owned(), (peer.clone(), outbox));
        true
    }

    /// Frees `name` if `peer` still holds it (an operator's kick may have freed it, and
    /// someone else may hold it since).
    pub fn logout(&self, name: &str, peer: &PeerId) {
        let mut users = self.users.lock().expect("directory lock");
        if users.get(name).is_some_and(|(p, _)| p == peer) {
            users.remove(name);
        }
    }

    /// Queues `frame` for `name`; `false` when nobody of that name is logged in.
    pub fn send(&self, name: &str, frame: Utf8Bytes) -> bool {
        let outbox = self
            .users
            .lock()
            .expect("directory lock")
            .get(name)
            .map(|(_, o)| Arc::clone(o));
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

/// The plain-WebSocket dialect: users, no rooms. Its credentials name the dialect alone.
impl Dialect for Directory {
    fn kind(&self) -> DialectKind {
        DialectKind::PlainWs
    }

    fn mount(self: Arc<Self>, router: Router, app: &Arc<AppState>) -> Router {
        let path = app.live().signaling.legacy_path.clone();
        router.route(&path, get(upgrade).with_state((Arc::clone(app), self)))
    }

    fn peers(&self) -> Vec<(Scope, PeerInfo)> {
        let users = self.users.lock().expect("directory lock");
        let mut peers: Vec<(Scope, PeerInfo)> = users
            .iter()
            .map(|(name, (id, _))| {
                let info = PeerInfo {
                    id: id.clone(),
                    name: Some(name.clone()),
                };
                (Scope::PlainWs, info)
            })
            .collect();
        peers.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        peers
    }

    fn counts(&self) -> Counts {
        Counts {
            rooms: 0,
            peers: self.online(),
        }
    }

    fn close_room(&self, _room: &RoomId) -> Vec<PeerId> {
        Vec::new()
    }

    fn kick(&self, peer: &PeerId) -> Option<Scope> {
        let outbox = {
            let mut users = self.users.lock().expect("directory lock");
            let name = users
                .iter()
                .find(|(_, (p, _))| p == peer)
                .map(|(name, _)| name.clone())?;
            users.remove(&name).map(|(_, outbox)| outbox)?
        };
        outbox.signal.evict(Eviction::Kicked);
        Some(Scope::PlainWs)
    }

    fn is_member(&self, scope: &Scope, peer: &PeerId) -> bool {
        matches!(scope, Scope::PlainWs) && self.is_online(peer)
    }

    fn set_limits(&self, _cfg: &SignalingConfig) {}
}

/// `GET /legacy` (or `signaling.legacy_path`): the same admission checks as `/ws`.
async fn upgrade(
    State((app, directory)): State<(Arc<AppState>, Arc<Directory>)>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    socket: Upgrade,
) -> Response {
    let admitted = match admit(&app, remote, &headers, &uri) {
        Ok(a) => a,
        Err(refused) => return *refused,
    };
    let tasks = app.tasks.clone();
    app.metrics.connections.inc(DialectKind::PlainWs);
    socket.on_upgrade(move |socket| {
        let peer = PeerId::random();
        let span = info_span!("legacy", %remote, peer_id = %peer, name = tracing::field::Empty);
        tasks.track_future(run(app, directory, socket, peer, admitted).instrument(span))
    })
}

struct Session {
    app: Arc<AppState>,
    directory: Arc<Directory>,
    peer: PeerId,
    request_host: String,
    outbox: Arc<Outbox>,
    name: Option<String>,
    /// The user this one last exchanged an offer or answer with; told `leave` on close.
    partner: Option<String>,
    gate: Gate,
}

/// What to do after one message.
enum Next {
    Reply(Value),
    Nothing,
    Close(Value, u16, &'static str),
}

/// Every message of this dialect, fields unparsed: relayed values are forwarded as the
/// client wrote them. Anything this does not fit (not an object, a duplicate key) takes the
/// slower path through `Value`, which has the precise error.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    offer: Option<&'a RawValue>,
    #[serde(borrow, default)]
    answer: Option<&'a RawValue>,
    #[serde(borrow, default)]
    candidate: Option<&'a RawValue>,
}

/// A field's value when it is a JSON string.
fn string(raw: Option<&RawValue>) -> Option<String> {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
}

/// A relayed value as written, `null` when absent.
fn raw(value: Option<&RawValue>) -> &str {
    value.map_or("null", RawValue::get)
}

impl Session {
    /// An error reply with its code, counted.
    fn error(&self, code: ErrorCode, message: impl Into<String>) -> Value {
        use crate::metrics::Label;
        self.app.metrics.errors.inc(code);
        json!({"type": "error", "code": code.as_str(), "message": message.into()})
    }

    fn handle_text(&mut self, text: &str) -> Next {
        // Kicked (its name may be someone else's already): what it had sent is not relayed.
        if self.outbox.signal.is_closed() {
            return Next::Nothing;
        }
        let metrics = &self.app.metrics;
        let checked = self.gate.check(
            text.len(),
            &self.app.live().signaling,
            std::time::Instant::now(),
        );
        if let Err(refused) = checked {
            metrics.refusals.inc(refused.limit());
            let reply = self.error(refused.code(), refused.message());
            if refused.closes() {
                let (code, reason) = refused.close();
                return Next::Close(reply, code, reason);
            }
            return Next::Reply(reply);
        }
        let data: Frame = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(_) => {
                let message = match serde_json::from_str::<Value>(text) {
                    Ok(Value::Object(_)) => "duplicate keys in the message".to_owned(),
                    Ok(_) => "expected a JSON object with a \"type\"".to_owned(),
                    Err(e) => format!("invalid JSON: {e}"),
                };
                return Next::Reply(self.error(ErrorCode::BadRequest, message));
            }
        };
        let kind = string(data.kind).unwrap_or_default();
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

    fn login(&mut self, data: &Frame) -> Next {
        let Some(name) = string(data.name) else {
            return Next::Reply(self.error(ErrorCode::BadRequest, "login needs a \"name\""));
        };
        let name = name.as_str();
        if self.name.is_some() || name.is_empty() || protocol::check_name(name).is_err() {
            return Next::Reply(json!({"type": "login", "success": false}));
        }
        if !self
            .directory
            .login(name, &self.peer, Arc::clone(&self.outbox))
        {
            return Next::Reply(json!({"type": "login", "success": false}));
        }
        tracing::Span::current().record("name", name);
        info!("logged in");
        self.app.metrics.joins.inc(DialectKind::PlainWs);
        self.name = Some(name.to_owned());
        // The dialect has no rooms: its credentials name the dialect alone (`ws/`), a scope
        // no native or socket.io room can name, with no per-room quota.
        let (ice_servers, ice_ttl_s) =
            self.app
                .ice_servers_for(&self.peer, &Scope::PlainWs, &self.request_host);
        Next::Reply(
            json!({"type": "login", "success": true, "ice_servers": ice_servers, "ice_ttl_s": ice_ttl_s}),
        )
    }

    fn relay(&mut self, kind: &str, data: &Frame) -> Next {
        let Some(me) = &self.name else {
            return Next::Reply(self.error(ErrorCode::NotLoggedIn, "log in first"));
        };
        let Some(target) = string(data.name) else {
            return Next::Reply(
                self.error(ErrorCode::BadRequest, format!("{kind} needs a \"name\"")),
            );
        };
        let frame = match kind {
            "offer" => {
                let me = serde_json::to_string(me).expect("a string serializes");
                format!(
                    r#"{{"type":"offer","offer":{},"name":{me}}}"#,
                    raw(data.offer)
                )
            }
            "answer" => format!(r#"{{"type":"answer","answer":{}}}"#, raw(data.answer)),
            "candidate" => format!(
                r#"{{"type":"candidate","candidate":{}}}"#,
                raw(data.candidate)
            ),
            _ => r#"{"type":"leave"}"#.to_owned(),
        };
        if !self.directory.send(&target, frame.into()) {
            return Next::Reply(self.error(
                ErrorCode::UnknownName,
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
        self.directory.logout(&name, &self.peer);
        if let Some(partner) = self.partner.take() {
            self.directory
                .send(&partner, json!({"type": "leave"}).to_string().into());
        }
        self.app.peer_left(&Scope::PlainWs, &self.peer);
        info!("logged out");
    }
}

async fn run(
    app: Arc<AppState>,
    directory: Arc<Directory>,
    socket: Socket,
    peer: PeerId,
    admitted: Admitted,
) {
    let Admitted {
        guard: _guard,
        request_host,
    } = admitted;
    info!("connected");
    let cfg = app.live().signaling.clone();
    let (conn, outbox) = Conn::new(&app, socket);
    let mut session = Session {
        app: Arc::clone(&app),
        directory,
        peer,
        request_host,
        outbox: Arc::new(outbox),
        name: None,
        partner: None,
        gate: Gate::new(&cfg, std::time::Instant::now()),
    };
    conn.serve(&mut session).await;
}

fn reply(next: Next) -> Reply {
    match next {
        Next::Nothing => Reply::None,
        Next::Reply(value) => Reply::Send(value.to_string()),
        Next::Close(value, code, reason) => {
            warn!(reason, "closing legacy client");
            Reply::Close(Some(value.to_string()), code, reason)
        }
    }
}

impl Handler for Session {
    fn text(&mut self, text: &str) -> Reply {
        reply(self.handle_text(text))
    }

    fn binary(&mut self) -> Reply {
        reply(Next::Reply(self.error(
            ErrorCode::BadRequest,
            "binary frames are not supported; send JSON text",
        )))
    }

    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    fn deadline(&mut self) -> Reply {
        Reply::None
    }

    fn finish(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox {
            tx: mpsc::channel(8).0,
            signal: Arc::default(),
            direct: None,
        })
    }

    #[test]
    fn a_kick_frees_the_name_and_the_kicked_session_cannot_free_it_again() {
        let directory = Directory::default();
        let (first, second) = (PeerId::random(), PeerId::random());
        let kicked = outbox();
        assert!(directory.login("alice", &first, Arc::clone(&kicked)));
        assert_eq!(directory.kick(&first), Some(Scope::PlainWs));
        assert!(kicked.signal.is_closed());
        // The name is free at once, and someone else takes it...
        assert!(directory.login("alice", &second, outbox()));
        // ...which the kicked session's own logout, when its task ends, leaves alone.
        directory.logout("alice", &first);
        assert!(directory.is_online(&second));
        assert_eq!(directory.peers()[0].1.id, second);
        directory.logout("alice", &second);
        assert_eq!(directory.online(), 0);
        assert_eq!(directory.kick(&first), None);
    }
}
