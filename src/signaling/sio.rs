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
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::Sid;
use tracing::{debug, info};

use super::protocol::{PeerId, PeerInfo, RoomId};
use super::room::{JoinError, Rooms};
use crate::state::AppState;

/// Who is in which socket.io room.
#[derive(Debug)]
pub struct SioRooms {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    rooms: Rooms,
    /// Each socket's peer id (for TURN credentials and `Rooms`) and the host it used.
    peers: HashMap<Sid, (PeerId, String)>,
}

impl SioRooms {
    pub fn new(capacity: usize, max_rooms: usize) -> SioRooms {
        SioRooms {
            inner: Mutex::new(Inner {
                rooms: Rooms::new(capacity, max_rooms),
                peers: HashMap::new(),
            }),
        }
    }

    fn connect(&self, sid: Sid, request_host: String) {
        let mut inner = self.inner.lock().expect("sio lock");
        inner.peers.insert(sid, (PeerId::random(), request_host));
    }

    /// Joins `room`; returns the socket's peer id and host, and how many members were there before.
    fn join(&self, sid: Sid, room: &RoomId) -> Result<(PeerId, String, usize), JoinError> {
        let mut inner = self.inner.lock().expect("sio lock");
        let (peer, host) = inner
            .peers
            .get(&sid)
            .cloned()
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
        let (peer, _) = inner.peers.get(&sid)?;
        inner.rooms.room_of(peer).cloned()
    }

    /// Forgets the socket; returns its room and peer id, if it was in one.
    fn disconnect(&self, sid: Sid) -> Option<(RoomId, PeerId)> {
        let mut inner = self.inner.lock().expect("sio lock");
        let (peer, _) = inner.peers.remove(&sid)?;
        inner
            .rooms
            .handle_leave(&peer)
            .map(|left| (left.room, peer))
    }

    /// Whether `peer` is in `room` (for TURN credentials).
    pub fn is_member(&self, room: &RoomId, peer: &PeerId) -> bool {
        self.inner.lock().expect("sio lock").rooms.room_of(peer) == Some(room)
    }
}

/// The socket.io layer for the HTTPS router.
pub fn layer(app: Arc<AppState>) -> SocketIoLayer {
    let (layer, io) = SocketIo::builder()
        .max_payload(app.signaling.max_message_bytes as u64)
        .with_state(Arc::clone(&app))
        .build_layer();
    io.ns("/", on_connect);
    layer
}

type App = State<Arc<AppState>>;

async fn on_connect(s: SocketRef, State(app): App) {
    debug!(sid = %s.id, "socket.io connected");
    // The host the client used, without the port: TURN URLs point at the same name.
    let host = s
        .req_parts()
        .headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
        .map_or_else(|| "localhost".to_owned(), |a| a.host().to_owned());
    app.sio.connect(s.id, host);
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
            app.peer_left(&room, &peer);
        }
    });
}

/// The room a client may send to: the one it joined, and only when `claimed` (if any) names it.
fn sender_room(app: &AppState, s: &SocketRef, claimed: Option<&str>) -> Option<RoomId> {
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

fn error(s: &SocketRef, code: &str, message: String) {
    let _ = s.emit(
        "switchboard_error",
        &json!({"code": code, "message": message}),
    );
}

/// Joins `room` for either tutorial; `Ok(members before)` or the refusal already reported.
fn join(app: &AppState, s: &SocketRef, room: &str) -> Result<usize, JoinError> {
    let room_id = match RoomId::parse(room) {
        Ok(r) => r,
        Err(message) => {
            error(s, "bad_room", message);
            return Err(JoinError::RoomFull);
        }
    };
    if app.sio.room_of(s.id).is_some() {
        error(s, "already_joined", "already in a room".to_owned());
        return Err(JoinError::AlreadyJoined);
    }
    let (peer, host, before) = app.sio.join(s.id, &room_id)?;
    s.join(room.to_owned());
    info!(sid = %s.id, room, members = before + 1, "socket.io peer joined");
    let (ice_servers, ice_ttl_s) = app.ice_servers_for(&peer, &room_id, &host);
    let _ = s.emit(
        "ice_servers",
        &json!({"ice_servers": ice_servers, "ice_ttl_s": ice_ttl_s}),
    );
    Ok(before)
}

fn log(app: &AppState, s: &SocketRef, line: String) {
    if app.signaling.socketio_log {
        let _ = s.emit("log", &("Message from server:", line));
    }
}

async fn create_or_join(s: SocketRef, Data(room): Data<String>, State(app): App) {
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
        Err(JoinError::RoomFull | JoinError::TooManyRooms) => {
            let _ = s.emit("full", &room);
        }
        Err(JoinError::AlreadyJoined) => {}
    }
}

async fn join_video_room(s: SocketRef, Data(room): Data<String>, State(app): App) {
    match join(&app, &s, &room) {
        Ok(0) => {
            let _ = s.emit("room_created", &room);
        }
        Ok(_) => {
            let _ = s.emit("room_joined", &room);
        }
        Err(JoinError::RoomFull | JoinError::TooManyRooms) => {
            let _ = s.emit("full_room", &room);
        }
        Err(JoinError::AlreadyJoined) => {}
    }
}

async fn message(s: SocketRef, Data(msg): Data<Value>, State(app): App) {
    if let Some(room) = sender_room(&app, &s, None) {
        let _ = s.to(room.to_string()).emit("message", &msg).await;
    }
}

async fn ipaddr(s: SocketRef, State(app): App) {
    for addr in &app.public_addresses {
        let _ = s.emit("ipaddr", addr);
    }
}

async fn start_call(s: SocketRef, Data(room): Data<String>, State(app): App) {
    if let Some(room) = sender_room(&app, &s, Some(&room)) {
        let _ = s.to(room.to_string()).emit("start_call", &()).await;
    }
}

async fn webrtc_offer(s: SocketRef, Data(data): Data<Value>, State(app): App) {
    relay(&s, &app, "webrtc_offer", &data, &data["sdp"]).await;
}

async fn webrtc_answer(s: SocketRef, Data(data): Data<Value>, State(app): App) {
    relay(&s, &app, "webrtc_answer", &data, &data["sdp"]).await;
}

async fn webrtc_ice_candidate(s: SocketRef, Data(data): Data<Value>, State(app): App) {
    relay(&s, &app, "webrtc_ice_candidate", &data, &data).await;
}

/// Sends `payload` as `event` to the other members of `data.roomId`, if the sender is in it.
async fn relay(s: &SocketRef, app: &AppState, event: &str, data: &Value, payload: &Value) {
    if let Some(room) = sender_room(app, s, Some(data["roomId"].as_str().unwrap_or_default())) {
        let _ = s.to(room.to_string()).emit(event, payload).await;
    }
}
