//! The socket.io dialect of the two socket.io tutorials, at `/socket.io/` (via socketioxide;
//! socket.io 2.x clients through its `v4` feature, 3.x/4.x natively):
//!
//! - the codelab room server: `create or join` → `created` / `join` + `joined` + `ready` /
//!   `full`, `message` relayed to the sender's room, `ipaddr`, optional `log` lines;
//! - the video-call app: `join` → `room_created` / `room_joined` / `full_room`, and
//!   `start_call`, `webrtc_offer`, `webrtc_answer`, `webrtc_ice_candidate` relayed in the room.
//!
//! Unlike the tutorials, messages never leave the sender's room, and a client may only send
//! to a room it has joined. Room membership and capacity come from `Rooms`, as everywhere.
//! After a join the client also gets `ice_servers` with credentials scoped to that room.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{Data, SocketRef, State};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::Sid;
use tracing::{debug, info};

use axum::Router;

use super::dialect::Dialect;
use super::gate::{Gate, Refused};
use super::limits::ConnectionGuard;
use super::protocol::{ErrorCode, PeerId, PeerInfo, RoomId};
use super::room::{JoinError, Rooms};
use super::stats::{Counts, DialectKind, MessageType, Refusal};
use crate::config::SignalingConfig;
use crate::model::Scope;
use crate::state::AppState;

/// Who is in which socket.io room.
#[derive(Debug)]
pub struct SioRooms {
    inner: Mutex<Inner>,
    /// The socket.io server, to disconnect sockets from outside their handlers (admin API).
    io: std::sync::OnceLock<SocketIo>,
}

#[derive(Debug)]
struct Inner {
    rooms: Rooms,
    /// Each connected socket.
    peers: HashMap<Sid, Peer>,
}

#[derive(Debug)]
struct Peer {
    /// For TURN credentials and `Rooms`.
    id: PeerId,
    /// The host the client used, for TURN URLs.
    host: String,
    gate: Gate,
    /// The connection slot, freed when the socket goes.
    _guard: ConnectionGuard,
}

impl SioRooms {
    pub fn new(capacity: usize, max_rooms: usize) -> SioRooms {
        SioRooms {
            inner: Mutex::new(Inner {
                rooms: Rooms::new(capacity, max_rooms),
                peers: HashMap::new(),
            }),
            io: std::sync::OnceLock::new(),
        }
    }

    fn connect(&self, sid: Sid, peer: Peer) {
        self.inner.lock().expect("sio lock").peers.insert(sid, peer);
    }

    /// Takes a token from the socket's message budget. Every socket is registered (in the
    /// connect middleware) before its handlers exist, so an unknown one cannot send; were
    /// it to, it would pass, having no room to send to.
    fn charge(&self, sid: Sid, cfg: &SignalingConfig) -> Result<(), Refused> {
        let mut inner = self.inner.lock().expect("sio lock");
        inner
            .peers
            .get_mut(&sid)
            .map_or(Ok(()), |p| p.gate.charge(cfg, std::time::Instant::now()))
    }

    /// Joins `room`; returns the socket's peer id and host, and how many members were there before.
    fn join(&self, sid: Sid, room: &RoomId) -> Result<(PeerId, String, usize), JoinError> {
        let mut inner = self.inner.lock().expect("sio lock");
        let (peer, host) = inner
            .peers
            .get(&sid)
            .map(|p| (p.id.clone(), p.host.clone()))
            .ok_or(JoinError::AlreadyJoined)?;
        let joined = inner.rooms.handle_join(
            PeerInfo {
                id: peer.clone(),
                name: None,
            },
            room,
        )?;
        Ok((peer, host, joined.others.len()))
    }

    fn room_of(&self, sid: Sid) -> Option<RoomId> {
        let inner = self.inner.lock().expect("sio lock");
        let peer = inner.peers.get(&sid)?;
        inner.rooms.room_of(&peer.id).cloned()
    }

    /// Forgets the socket; returns its room and peer id, if it was in one.
    fn disconnect(&self, sid: Sid) -> Option<(RoomId, PeerId)> {
        let mut inner = self.inner.lock().expect("sio lock");
        let peer = inner.peers.remove(&sid)?;
        inner
            .rooms
            .handle_leave(&peer.id)
            .map(|left| (left.room, peer.id))
    }

    /// New room limits (a reload).
    fn set_room_limits(&self, capacity: usize, max_rooms: usize) {
        self.inner
            .lock()
            .expect("sio lock")
            .rooms
            .set_limits(capacity, max_rooms);
    }

    /// Every room with its members, sorted by name.
    fn list_rooms(&self) -> Vec<(RoomId, Vec<PeerInfo>)> {
        self.inner.lock().expect("sio lock").rooms.list()
    }

    /// Removes every member of `room` and disconnects their sockets; returns who was removed.
    fn remove_room(&self, room: &RoomId) -> Vec<PeerId> {
        let (peers, sids) = {
            let mut inner = self.inner.lock().expect("sio lock");
            let peers: Vec<PeerId> = inner
                .rooms
                .members(room)
                .iter()
                .map(|p| p.id.clone())
                .collect();
            for peer in &peers {
                inner.rooms.handle_leave(peer);
            }
            let sids: Vec<Sid> = inner
                .peers
                .iter()
                .filter(|(_, p)| peers.contains(&p.id))
                .map(|(sid, _)| *sid)
                .collect();
            (peers, sids)
        };
        self.disconnect_sockets(&sids);
        peers
    }

    /// Removes `peer` from its room and disconnects its socket; returns the room.
    fn remove_peer(&self, peer: &PeerId) -> Option<RoomId> {
        let (room, sid) = {
            let mut inner = self.inner.lock().expect("sio lock");
            let sid = inner
                .peers
                .iter()
                .find(|(_, p)| &p.id == peer)
                .map(|(sid, _)| *sid)?;
            (inner.rooms.handle_leave(peer)?.room, sid)
        };
        self.disconnect_sockets(&[sid]);
        Some(room)
    }

    fn disconnect_sockets(&self, sids: &[Sid]) {
        let Some(io) = self.io.get() else { return };
        for sid in sids {
            if let Some(socket) = io.get_socket(*sid) {
                info!(%sid, "socket.io peer disconnected by the operator");
                let _ = socket.disconnect();
            }
        }
    }

    /// Rooms and peers in a room right now.
    fn room_counts(&self) -> (usize, usize) {
        let inner = self.inner.lock().expect("sio lock");
        (inner.rooms.room_count(), inner.rooms.peer_count())
    }

    /// Whether `peer` is in `room` (for TURN credentials).
    fn is_in_room(&self, room: &RoomId, peer: &PeerId) -> bool {
        self.inner.lock().expect("sio lock").rooms.room_of(peer) == Some(room)
    }
}

/// The socket.io dialect: its rooms, and each connected socket.
impl Dialect for SioRooms {
    fn kind(&self) -> DialectKind {
        DialectKind::SocketIo
    }

    /// socket.io's layer, around everything mounted before (it answers under `/socket.io/`
    /// and passes every other request through).
    fn mount(self: Arc<Self>, router: Router, app: &Arc<AppState>) -> Router {
        router.layer(layer(Arc::clone(app), self))
    }

    fn peers(&self) -> Vec<(Scope, PeerInfo)> {
        self.list_rooms()
            .into_iter()
            .flat_map(|(room, members)| {
                members
                    .into_iter()
                    .map(move |p| (Scope::SocketIo(room.clone()), p))
            })
            .collect()
    }

    fn counts(&self) -> Counts {
        let (rooms, peers) = SioRooms::room_counts(self);
        Counts { rooms, peers }
    }

    fn close_room(&self, room: &RoomId) -> Vec<PeerId> {
        SioRooms::remove_room(self, room)
    }

    fn kick(&self, peer: &PeerId) -> Option<Scope> {
        SioRooms::remove_peer(self, peer).map(Scope::SocketIo)
    }

    fn is_member(&self, scope: &Scope, peer: &PeerId) -> bool {
        matches!(scope, Scope::SocketIo(room) if SioRooms::is_in_room(self, room, peer))
    }

    fn set_limits(&self, cfg: &SignalingConfig) {
        SioRooms::set_room_limits(self, cfg.socketio_room_capacity, cfg.max_rooms);
    }
}

/// The socket.io layer for the HTTPS router.
fn layer(app: Arc<AppState>, sio: Arc<SioRooms>) -> SocketIoLayer {
    let (layer, io) = SocketIo::builder()
        // As on /ws: the limit is enforced on each message (with an error, then a
        // disconnect); the transport limit only stops runaway payloads.
        .max_payload(2 * app.live().signaling.max_message_bytes as u64)
        .with_state(Ctx {
            app: Arc::clone(&app),
            sio: Arc::clone(&sio),
        })
        .build_layer();
    io.ns("/", on_connect.with(admit));
    let _ = sio.io.set(io);
    layer
}

type App = State<Ctx>;

/// What socket.io's handlers see: the shared state and this dialect's rooms
/// (`app.sio`); everything else of `AppState` through `Deref`.
#[derive(Clone)]
struct Ctx {
    app: Arc<AppState>,
    sio: Arc<SioRooms>,
}

impl std::ops::Deref for Ctx {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.app
    }
}

/// The checks every signaling dialect shares: origin and connection limits. The slot is held
/// until the socket disconnects.
async fn admit(s: SocketRef, State(app): App) -> Result<(), String> {
    let parts = s.req_parts();
    let remote = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0)
        .ok_or("no client address")?;
    let admitted = super::admit::admit(&app, remote, &parts.headers, &parts.uri)
        .map_err(|refused| format!("connection refused with HTTP status {}", refused.status()))?;
    let live = app.live();
    let s_cfg = &live.signaling;
    app.metrics.connections.inc(DialectKind::SocketIo);
    app.sio.connect(
        s.id,
        Peer {
            id: PeerId::random(),
            host: admitted.request_host,
            gate: Gate::new(s_cfg, std::time::Instant::now()),
            _guard: admitted.guard,
        },
    );
    // Here and not in the connect handler: socketioxide sends the connect packet after this
    // middleware and then *spawns* the handler, so a client that answers the connect packet
    // at once could have its first event arrive before handlers registered there exist, and
    // be dropped. Under 10,000 connections about one `create or join` in 400 was.
    register(&s);
    Ok(())
}

async fn on_connect(s: SocketRef) {
    debug!(sid = %s.id, "socket.io connected");
}

/// The events of both socket.io tutorials.
fn register(s: &SocketRef) {
    s.on("create or join", create_or_join);
    s.on("join", join_video_room);
    s.on("message", message);
    s.on("ipaddr", ipaddr);
    s.on("start_call", start_call);
    s.on("webrtc_offer", webrtc_offer);
    s.on("webrtc_answer", webrtc_answer);
    s.on("webrtc_ice_candidate", webrtc_ice_candidate);
    s.on_disconnect(async |s: SocketRef, State(app): App| {
        if let Some((room, peer)) = app.sio.disconnect(s.id) {
            info!(sid = %s.id, %room, "socket.io peer left");
            app.peer_left(&Scope::SocketIo(room), &peer);
        }
    });
}

/// The room a client may send to: the one it joined, and only when `claimed` (if any) names it.
fn sender_room(app: &Ctx, s: &SocketRef, claimed: Option<&str>) -> Option<RoomId> {
    let room = app.sio.room_of(s.id);
    match (room, claimed) {
        (Some(room), None) => Some(room),
        (Some(room), Some(c)) if c == room.as_str() => Some(room),
        (_, claimed) => {
            debug!(sid = %s.id, claimed = claimed.unwrap_or(""), "socket.io send to a room not joined, dropped");
            None
        }
    }
}

/// The message gate every dialect shares, for one event: a token from the socket's budget.
/// Over the rate the event is dropped with an error; past the strikes the socket goes.
fn gate(app: &Ctx, s: &SocketRef) -> bool {
    match app.sio.charge(s.id, &app.live().signaling) {
        Ok(()) => true,
        Err(refused) => {
            refuse(app, s, &refused);
            false
        }
    }
}

/// Refuses a message above `signaling.max_message_bytes`: an error, then a disconnect.
fn too_large(app: &Ctx, s: &SocketRef, payload: &Value) -> bool {
    match Gate::size(payload.to_string().len(), &app.live().signaling) {
        Ok(()) => false,
        Err(refused) => {
            refuse(app, s, &refused);
            true
        }
    }
}

/// Answers a refusal from the gate: the error event, then a disconnect if it closes.
fn refuse(app: &Ctx, s: &SocketRef, refused: &Refused) {
    app.metrics.refusals.inc(refused.limit());
    error(app, s, refused.code(), refused.message());
    if refused.closes() {
        info!(sid = %s.id, reason = refused.close().1, "socket.io client disconnected");
        let _ = s.clone().disconnect();
    }
}

/// The `switchboard_error` event, with its code counted.
fn error(app: &Ctx, s: &SocketRef, code: ErrorCode, message: String) {
    use crate::metrics::Label;
    app.metrics.errors.inc(code);
    let _ = s.emit(
        "switchboard_error",
        &json!({"code": code.as_str(), "message": message}),
    );
}

/// Why a socket.io join did not happen.
enum NotJoined {
    /// The room is full, or no room can be made: the tutorial's own "full" event says so.
    Full,
    /// Answered already with a `switchboard_error` (a bad room name, already in a room).
    Answered,
}

/// Joins `room` for either tutorial; `Ok(members before)` or why not.
fn join(app: &Ctx, s: &SocketRef, room: &str) -> Result<usize, NotJoined> {
    let room_id = match RoomId::parse(room) {
        Ok(r) => r,
        Err(message) => {
            error(app, s, ErrorCode::BadRoom, message);
            return Err(NotJoined::Answered);
        }
    };
    if app.sio.room_of(s.id).is_some() {
        error(
            app,
            s,
            ErrorCode::AlreadyJoined,
            "already in a room".to_owned(),
        );
        return Err(NotJoined::Answered);
    }
    let (peer, host, before) = app.sio.join(s.id, &room_id).map_err(|e| match e {
        JoinError::TooManyRooms => {
            app.metrics.refusals.inc(Refusal::MaxRooms);
            NotJoined::Full
        }
        JoinError::RoomFull => {
            app.metrics.refusals.inc(Refusal::RoomCapacity);
            NotJoined::Full
        }
        JoinError::AlreadyJoined => NotJoined::Answered,
    })?;
    app.metrics.joins.inc(DialectKind::SocketIo);
    s.join(room.to_owned());
    info!(sid = %s.id, room, members = before + 1, "socket.io peer joined");
    let (ice_servers, ice_ttl_s) = app.ice_servers_for(&peer, &Scope::SocketIo(room_id), &host);
    let _ = s.emit(
        "ice_servers",
        &json!({"ice_servers": ice_servers, "ice_ttl_s": ice_ttl_s}),
    );
    Ok(before)
}

fn log(app: &Ctx, s: &SocketRef, line: String) {
    if app.live().signaling.socketio_log {
        let _ = s.emit("log", &("Message from server:", line));
    }
}

async fn create_or_join(s: SocketRef, Data(room): Data<String>, State(app): App) {
    app.metrics.messages.inc(MessageType::CreateOrJoin);
    if !gate(&app, &s) {
        return;
    }
    log(
        &app,
        &s,
        format!("Received request to create or join room {room}"),
    );
    match join(&app, &s, &room) {
        Ok(0) => {
            log(&app, &s, format!("Client ID {} created room {room}", s.id));
            let _ = s.emit("created", &(room, s.id.to_string()));
        }
        Ok(_) => {
            log(&app, &s, format!("Client ID {} joined room {room}", s.id));
            let _ = s.to(room.clone()).emit("join", &room).await;
            let _ = s.emit("joined", &(room.clone(), s.id.to_string()));
            let _ = s.within(room).emit("ready", &()).await;
        }
        Err(NotJoined::Full) => {
            let _ = s.emit("full", &room);
        }
        Err(NotJoined::Answered) => {}
    }
}

async fn join_video_room(s: SocketRef, Data(room): Data<String>, State(app): App) {
    app.metrics.messages.inc(MessageType::Join);
    if !gate(&app, &s) {
        return;
    }
    match join(&app, &s, &room) {
        Ok(0) => {
            let _ = s.emit("room_created", &room);
        }
        Ok(_) => {
            let _ = s.emit("room_joined", &room);
        }
        Err(NotJoined::Full) => {
            let _ = s.emit("full_room", &room);
        }
        Err(NotJoined::Answered) => {}
    }
}

async fn message(s: SocketRef, Data(msg): Data<Value>, State(app): App) {
    app.metrics.messages.inc(MessageType::Message);
    if !gate(&app, &s) {
        return;
    }
    if too_large(&app, &s, &msg) {
        return;
    }
    if let Some(room) = sender_room(&app, &s, None) {
        let _ = s.to(room.to_string()).emit("message", &msg).await;
    }
}

async fn ipaddr(s: SocketRef, State(app): App) {
    app.metrics.messages.inc(MessageType::Ipaddr);
    if !gate(&app, &s) {
        return;
    }
    for addr in &app.live().public_addresses {
        let _ = s.emit("ipaddr", addr);
    }
}

async fn start_call(s: SocketRef, Data(room): Data<String>, State(app): App) {
    app.metrics.messages.inc(MessageType::StartCall);
    if !gate(&app, &s) {
        return;
    }
    if let Some(room) = sender_room(&app, &s, Some(&room)) {
        let _ = s.to(room.to_string()).emit("start_call", &()).await;
    }
}

async fn webrtc_offer(s: SocketRef, Data(data): Data<Value>, State(app): App) {
    app.metrics.messages.inc(MessageType::WebrtcOffer);
    if !gate(&app, &s) {
        return;
    }
    relay(&s, &app, "webrtc_offer", &data, &data["sdp"]).await;
}

async fn webrtc_answer(s: SocketRef, Data(data): Data<Value>, State(app): App) {
    app.metrics.messages.inc(MessageType::WebrtcAnswer);
    if !gate(&app, &s) {
        return;
    }
    relay(&s, &app, "webrtc_answer", &data, &data["sdp"]).await;
}

async fn webrtc_ice_candidate(s: SocketRef, Data(data): Data<Value>, State(app): App) {
    app.metrics.messages.inc(MessageType::WebrtcIceCandidate);
    if !gate(&app, &s) {
        return;
    }
    relay(&s, &app, "webrtc_ice_candidate", &data, &data).await;
}

/// Sends `payload` as `event` to the other members of `data.roomId`, if the sender is in it.
async fn relay(s: &SocketRef, app: &Ctx, event: &str, data: &Value, payload: &Value) {
    if too_large(app, s, data) {
        return;
    }
    if let Some(room) = sender_room(app, s, Some(data["roomId"].as_str().unwrap_or_default())) {
        let _ = s.to(room.to_string()).emit(event, payload).await;
    }
}
