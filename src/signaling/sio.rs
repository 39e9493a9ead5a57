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

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::Sid;
use socketioxide::{SendError, SocketError};
use tracing::{debug, info};

use axum::Router;

use super::dialect::Dialect;
use super::gate::{Gate, Refused};
use super::host::Host;
use super::hub::Hub;
use super::limits::ConnectionGuard;
use super::protocol::{ErrorCode, PeerId, PeerInfo, RoomId};
use super::registry::{Event, Member, Registry, To};
use super::room::{JoinError, Joined, Rooms, RouteError, Terms};
use super::signal::Eviction;
use super::stats::{Counts, DialectStats, Refusal};
use crate::config::SignalingConfig;
use crate::limiter::{ConnectionLimiter, ConnectionRefused};
use crate::model::{Scope, Space};
use crate::sync::Locked;

/// This dialect's credentials: `sio/<room>`.
pub const SPACE: Space = Space::new("sio");

/// The socket.io dialect: its rooms (a `Registry`), and each connected socket.
#[derive(Debug)]
pub struct SioRooms {
    registry: Arc<dyn Registry>,
    /// Each connected socket.
    peers: Mutex<HashMap<Sid, Peer>>,
    stats: DialectStats<SioMessage>,
}

/// This dialect's name in metrics and the admin API.
pub const NAME: &str = "socketio";

crate::labels! {
    /// Events of the two socket.io tutorials.
    pub SioMessage {
        CreateOrJoin => "create_or_join",
        Join => "join",
        Message => "message",
        StartCall => "start_call",
        WebrtcOffer => "webrtc_offer",
        WebrtcAnswer => "webrtc_answer",
        WebrtcIceCandidate => "webrtc_ice_candidate",
        Ipaddr => "ipaddr",
    }
}

#[derive(Debug)]
struct Peer {
    /// For TURN credentials and the registry.
    id: PeerId,
    /// The host the client used, for TURN URLs.
    host: String,
    /// The client's address, which a kick keeps out of its room for a while.
    client: IpAddr,
    /// A join token from the connect packet's `auth` (`{token}`) or the handshake URL's
    /// `?token=` (socket.io 2 clients have no `auth`), checked by each join.
    token: Option<String>,
    /// Its join token lets it only receive (`publish: false`): what it relays may not send media.
    receive_only: bool,
    gate: Gate,
    /// Set once the socket is being disconnected (`close`), shared with its room membership.
    closing: Arc<AtomicBool>,
    /// The connection slot, freed when the socket goes.
    _guard: ConnectionGuard,
}

/// Removes a socket's entry from `SioRooms` when socketioxide drops the socket (kept in its
/// extensions). The disconnect handler has usually removed it already.
struct Entry {
    sio: std::sync::Weak<SioRooms>,
    sid: Sid,
}

impl Drop for Entry {
    fn drop(&mut self) {
        // Only this dialect's own lock, which is never held while a socket is dropped.
        if let Some(sio) = self.sio.upgrade() {
            sio.peers().remove(&self.sid);
        }
    }
}

/// A socket.io socket as a room member: a message is an event, emitted as it came.
/// The tutorials tell nobody of joins and leaves by themselves (`join`/`ready` are
/// messages the joiner sends).
struct SioMember {
    socket: SocketRef,
    closing: Arc<AtomicBool>,
    client: IpAddr,
}

impl std::fmt::Debug for SioMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SioMember({})", self.socket.id)
    }
}

impl Member for SioMember {
    fn deliver(&self, event: Event<'_>) {
        if let Event::Message { event, data, .. } = event {
            let Ok(data) = serde_json::from_str::<&RawValue>(data) else {
                return; // every sender here writes a serialized `Value`
            };
            // `emit` queues on the socket's bounded channel without waiting.
            if let Err(SendError::Socket(SocketError::InternalChannelFull)) =
                self.socket.emit(event, data)
            {
                self.evict(Eviction::Overflow);
            }
        }
    }

    fn evict(&self, why: Eviction) {
        // Not here: socket.io runs the disconnect handler (which leaves the registry)
        // within `disconnect`, and the registry is locked while it calls members.
        let (socket, closing) = (self.socket.clone(), Arc::clone(&self.closing));
        tokio::spawn(async move {
            if close(socket.clone(), &closing) {
                info!(sid = %socket.id, ?why, "socket.io peer disconnected");
            }
        });
    }

    fn client(&self) -> IpAddr {
        self.client
    }
}

/// Disconnects `socket`, once however often it is asked (`closing` says it was); returns
/// whether this call began it. socketioxide queues the disconnect packet on the socket's
/// bounded channel and, when that is full (a flood's answers can fill it), does nothing at
/// all; so until the packet is queued this tries again, as long as the socket is there
/// (engine.io's heartbeat closes a socket whose channel stays full).
fn close(socket: SocketRef, closing: &AtomicBool) -> bool {
    if closing.swap(true, Ordering::AcqRel) {
        return false;
    }
    if let Err(SocketError::InternalChannelFull) = socket.clone().disconnect() {
        tokio::spawn(async move {
            let mut retry = tokio::time::interval(Duration::from_millis(20));
            while socket.connected() {
                retry.tick().await;
                if !matches!(
                    socket.clone().disconnect(),
                    Err(SocketError::InternalChannelFull)
                ) {
                    break;
                }
            }
        });
    }
    true
}

impl SioRooms {
    /// With the in-process registry.
    pub fn new(capacity: usize, max_rooms: usize) -> SioRooms {
        SioRooms::with_registry(Arc::new(Hub::new(Rooms::new(capacity, max_rooms))))
    }

    pub fn with_registry(registry: Arc<dyn Registry>) -> SioRooms {
        SioRooms {
            registry,
            peers: Mutex::default(),
            stats: DialectStats::default(),
        }
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<Sid, Peer>> {
        self.peers.locked()
    }

    fn connect(&self, sid: Sid, peer: Peer) {
        self.peers().insert(sid, peer);
    }

    /// Takes a token from the socket's message budget. Every socket is registered (in the
    /// connect middleware) before its handlers exist, so an unknown one cannot send; were
    /// it to, it would pass, having no room to send to.
    fn charge(&self, sid: Sid, cfg: &SignalingConfig) -> Result<(), Refused> {
        self.peers()
            .get_mut(&sid)
            .map_or(Ok(()), |p| p.gate.charge(cfg, std::time::Instant::now()))
    }

    /// The socket's peer id, the host its client used, and its client's address.
    fn peer(&self, sid: Sid) -> Option<(PeerId, String, IpAddr)> {
        self.peers()
            .get(&sid)
            .map(|p| (p.id.clone(), p.host.clone(), p.client))
    }

    /// The socket's join token, if its client gave one.
    fn token(&self, sid: Sid) -> Option<String> {
        self.peers().get(&sid).and_then(|p| p.token.clone())
    }

    fn set_receive_only(&self, sid: Sid, receive_only: bool) {
        if let Some(p) = self.peers().get_mut(&sid) {
            p.receive_only = receive_only;
        }
    }

    /// Whether the socket may relay `json`: a receive-only socket, no session description
    /// that sends media (answered with `forbidden`).
    fn may_relay(&self, sid: Sid, json: &str) -> bool {
        let receive_only = self.peers().get(&sid).is_some_and(|p| p.receive_only);
        !receive_only || super::sdp::receive_only_allows(json)
    }

    /// Whether the socket is being disconnected, shared with whoever may disconnect it.
    fn closing(&self, sid: Sid) -> Arc<AtomicBool> {
        self.peers().get(&sid).map_or_else(
            || Arc::new(AtomicBool::new(true)),
            |p| Arc::clone(&p.closing),
        )
    }

    /// The socket's peer id and the room it is in.
    fn room_of(&self, sid: Sid) -> Option<(PeerId, RoomId)> {
        let peer = self.peers().get(&sid)?.id.clone();
        let room = self.registry.room_of(&peer)?;
        Some((peer, room))
    }

    /// Forgets the socket; returns its room and peer id, if it was in one.
    fn disconnect(&self, sid: Sid) -> Option<(RoomId, PeerId)> {
        let peer = self.peers().remove(&sid)?;
        self.registry
            .leave(&peer.id)
            .map(|left| (left.room, peer.id))
    }
}

/// The socket.io dialect: its rooms, and each connected socket.
impl Dialect for SioRooms {
    fn name(&self) -> &'static str {
        NAME
    }

    /// socket.io's layer, around everything mounted before (it answers `/socket.io` and
    /// under `/socket.io/`, and passes every other request through), inside the budget of
    /// engine.io transports (`new_session`).
    fn mount(self: Arc<Self>, router: Router, app: &Arc<Host>) -> Router {
        let sessions = Arc::new(Sessions::new(app.live().signaling.source_prefix_v6));
        let host = Arc::clone(app);
        router
            .layer(layer(Arc::clone(app), self))
            .layer(axum::middleware::from_fn(move |request, next| {
                new_session(Arc::clone(&sessions), Arc::clone(&host), request, next)
            }))
    }

    fn peers(&self) -> Vec<(Scope, PeerInfo)> {
        self.registry
            .rooms()
            .into_iter()
            .flat_map(|(room, members)| {
                members
                    .into_iter()
                    .map(move |p| (Scope::in_room(SPACE, room.clone()), p))
            })
            .collect()
    }

    fn activity(&self) -> Vec<super::room::RoomActivity> {
        self.registry.activity()
    }

    fn counts(&self) -> Counts {
        let (rooms, peers) = self.registry.counts();
        self.stats.counts(Some(rooms), peers)
    }

    fn close_room(&self, room: &RoomId) -> Vec<PeerId> {
        self.registry.close_room(room)
    }

    fn kick(&self, peer: &PeerId) -> Option<(Scope, Option<IpAddr>)> {
        self.registry
            .kick(peer)
            .map(|(left, client)| (Scope::in_room(SPACE, left.room), client))
    }

    fn is_member(&self, scope: &Scope, peer: &PeerId) -> bool {
        scope.space() == SPACE
            && scope
                .room()
                .is_some_and(|room| self.registry.is_member(room, peer))
    }

    fn set_limits(&self, cfg: &SignalingConfig) {
        self.registry.set_limits(
            cfg.socketio_room_capacity,
            cfg.max_rooms,
            cfg.room_messages_per_s,
        );
    }
}

/// The engine.io transports open at once, per source and in total: every session (opened by
/// a polling handshake, or by a WebSocket without a `sid`) and every WebSocket that upgrades
/// one. Each holds a slot until it ends: a session's is kept in its request's extensions,
/// which engine.io keeps for the session's life (`SessionSlot`), an upgrade's in the upgrade
/// request's, which lives as long as the WebSocket. A session holds about 13 KB until it
/// ends, which is up to 45 s (socketioxide's ping interval and timeout) after its client was
/// last heard from, even when the client closed it at once (one client opening sessions flat
/// out held ~145 MB before there was a budget).
///
/// The limits are twice `signaling.max_connections_per_ip` and `signaling.max_connections`:
/// a socket.io client on WebSocket holds its polling session and the WebSocket that upgraded
/// it, beside the namespace connection `admit` counts.
#[derive(Debug)]
struct Sessions {
    open: Arc<ConnectionLimiter>,
}

/// What an engine.io session's opening request carries, for the session's life.
#[derive(Debug)]
struct SessionSlot {
    _slot: ConnectionGuard,
    /// Whether a namespace connection was made on the session: one is, and a client that
    /// disconnects and connects again on the same session (for a fresh message budget) is
    /// refused.
    connected: AtomicBool,
}

impl Sessions {
    fn new(v6_prefix: u8) -> Sessions {
        Sessions {
            open: Arc::new(ConnectionLimiter::with_v6_prefix(0, 0, v6_prefix)),
        }
    }

    /// Takes a slot for a new transport from `ip`, at the live limits.
    fn take(
        &self,
        ip: IpAddr,
        cfg: &SignalingConfig,
    ) -> Result<ConnectionGuard, ConnectionRefused> {
        self.open.set_limits(
            cfg.max_connections.saturating_mul(2),
            cfg.max_connections_per_ip.saturating_mul(2),
        );
        self.open.try_acquire(ip)
    }
}

/// Whether a request opens an engine.io transport that `Sessions` budgets: every request to
/// socket.io's path (engine.io answers `/socket.io` as well as `/socket.io/…`) but a poll of
/// an open session. The query is read as engine.io reads it (the first `sid=` and the first
/// `transport=`, whose value ends at the next `=`), so that no spelling it takes for a
/// WebSocket goes uncounted.
fn opens_transport(uri: &axum::http::Uri) -> bool {
    let path = uri.path();
    if path != "/socket.io" && !path.starts_with("/socket.io/") {
        return false;
    }
    let query = uri.query().unwrap_or("");
    let sid = query.split('&').any(|kv| kv.starts_with("sid="));
    let transport = query
        .split('&')
        .find(|kv| kv.starts_with("transport="))
        .and_then(|kv| kv.split('=').nth(1));
    !(sid && transport == Some("polling"))
}

/// Charges a request that opens an engine.io transport (`opens_transport`) to its client's
/// budget (`Sessions`) and hands the slot to engine.io in the request's extensions; over the
/// budget, the request is answered 429 (the source's) or 503 (the server's) with a JSON
/// body, and counted.
async fn new_session(
    sessions: Arc<Sessions>,
    app: Arc<Host>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let client = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let (true, Some(client)) = (opens_transport(request.uri()), client) else {
        return next.run(request).await;
    };
    let limit = match sessions.take(client.ip(), &app.live().signaling) {
        Ok(slot) => {
            request.extensions_mut().insert(Arc::new(SessionSlot {
                _slot: slot,
                connected: AtomicBool::new(false),
            }));
            return next.run(request).await;
        }
        Err(limit) => limit,
    };
    app.metrics.refusals.inc(Refusal::SocketioSessions);
    if let Some(suppressed) = SESSION_REFUSED.allow(crate::throttle::now_s()) {
        tracing::warn!(%client, ?limit, suppressed, "socket.io session refused");
    }
    let (status, message) = match limit {
        ConnectionRefused::PerIp => (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too many open socket.io sessions from this address \
             (twice signaling.max_connections_per_ip)",
        ),
        ConnectionRefused::Total => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too many open socket.io sessions (twice signaling.max_connections)",
        ),
    };
    super::admit::refusal(status, "too_many_sessions", message)
}

/// The log line of a refused session, which any client can cause.
static SESSION_REFUSED: crate::throttle::Throttle = crate::throttle::Throttle::new();

/// The socket.io layer for the HTTPS router.
fn layer(app: Arc<Host>, sio: Arc<SioRooms>) -> SocketIoLayer {
    // As on /ws: the limit is enforced on each message (with an error, then a disconnect);
    // the transport's limits, twice it, stop runaway payloads: engine.io's own defaults
    // (64 MiB messages, 16 MiB frames, 10 MB of binary attachments) would let one client
    // make the server wait for and buffer that much. A frame is refused from its header,
    // and no event parsed into a `Value` is larger than twice the limit.
    let max = app.live().signaling.max_message_bytes;
    let (layer, io) = SocketIo::builder()
        // A session not connected to the namespace within this is closed (45 s by default),
        // and until then it holds its slot of the session budget even when its client closed
        // it. socket.io clients connect right after the handshake.
        .connect_timeout(Duration::from_secs(10))
        .max_payload(2 * max as u64)
        .ws_max_message_size(2 * max)
        .ws_max_frame_size(2 * max)
        // The tutorials send no binary attachments.
        .with_parser(
            socketioxide::ParserConfig::common()
                .max_incoming_binary_buf_size(max)
                .max_incoming_binaries(1),
        )
        .with_state(Ctx {
            app: Arc::clone(&app),
            sio: Arc::clone(&sio),
        })
        .build_layer();
    io.ns("/", on_connect.with(admit));
    layer
}

type App = State<Ctx>;

/// What socket.io's handlers see: the shared state and this dialect's rooms
/// (`app.sio`); everything else of `Host` through `Deref`.
#[derive(Clone)]
struct Ctx {
    app: Arc<Host>,
    sio: Arc<SioRooms>,
}

impl std::ops::Deref for Ctx {
    type Target = Host;
    fn deref(&self) -> &Host {
        &self.app
    }
}

/// The checks every signaling dialect shares: origin and connection limits. The slot is held
/// until the socket disconnects.
/// What a socket.io 4 client may send in its connect packet (`io(url, {auth: {token}})`).
#[derive(Debug, Default, serde::Deserialize)]
struct Auth {
    #[serde(default)]
    token: Option<String>,
}

async fn admit(s: SocketRef, State(app): App, TryData(auth): TryData<Auth>) -> Result<(), String> {
    let parts = s.req_parts();
    let remote = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0)
        .ok_or("no client address")?;
    // One namespace connection per engine.io session: a client that left (or was put out for
    // flooding) and connects again on the same session would start with a fresh budget.
    // (socketioxide itself drops a second connect while the first is connected.)
    let session = parts.extensions.get::<Arc<SessionSlot>>();
    if session.is_some_and(|s| s.connected.load(Ordering::Acquire)) {
        app.metrics.refusals.inc(Refusal::SocketioSecondConnect);
        return Err("connected once on this engine.io session already: open a new session".into());
    }
    let admitted = super::admit::admit(&app, remote, &parts.headers, &parts.uri)
        .map_err(|denied| format!("connection refused: {} ({})", denied.message, denied.code))?;
    if let Some(session) = session {
        session.connected.store(true, Ordering::Release);
    }
    let live = app.live();
    let s_cfg = &live.signaling;
    app.sio.stats.connections.inc();
    app.sio.connect(
        s.id,
        Peer {
            id: PeerId::random(),
            host: admitted.request_host,
            client: admitted.client,
            token: auth.ok().and_then(|a| a.token).or(admitted.token),
            receive_only: false,
            gate: Gate::new(s_cfg, std::time::Instant::now()),
            closing: Arc::default(),
            _guard: admitted.guard,
        },
    );
    // The entry (and its connection slot) goes with the socket, however it goes: the
    // disconnect handler runs only for a socket whose connect completed, and an engine.io
    // session can close before that (one polling POST of `40` then `1`).
    s.extensions.insert(Arc::new(Entry {
        sio: Arc::downgrade(&app.sio),
        sid: s.id,
    }));
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
    // Events of no tutorial are charged like any other, then dropped.
    s.on_fallback(async |s: SocketRef, State(app): App| {
        if gate(&app, &s).await {
            debug!(sid = %s.id, "socket.io event of no tutorial, dropped");
        }
    });
    s.on_disconnect(async |s: SocketRef, State(app): App| {
        if let Some((room, peer)) = app.sio.disconnect(s.id) {
            info!(sid = %s.id, %room, "socket.io peer left");
            app.peer_left(&Scope::in_room(SPACE, room), &peer);
        }
    });
}

/// The sender's peer id, when it may send to the room it joined: only when `claimed`
/// (if any) names that room.
fn sender(app: &Ctx, s: &SocketRef, claimed: Option<&str>) -> Option<PeerId> {
    let joined = app.sio.room_of(s.id);
    match (joined, claimed) {
        (Some((peer, _)), None) => Some(peer),
        (Some((peer, room)), Some(c)) if c == room.as_str() => Some(peer),
        (_, claimed) => {
            debug!(sid = %s.id, claimed = claimed.unwrap_or(""), "socket.io send to a room not joined, dropped");
            None
        }
    }
}

/// Sends `event` with `data` to the other members of the sender's room.
fn broadcast(app: &Ctx, from: &PeerId, event: &str, data: &Value) {
    broadcast_raw(app, from, event, data.to_string());
}

/// Sends `event` with `json` (one JSON value, relayed as the client wrote it) to the other
/// members of the sender's room.
fn broadcast_raw(app: &Ctx, from: &PeerId, event: &str, json: String) {
    let data = json.into();
    // Over its room's budget a message is dropped, as the tutorials' clients know no error
    // for a relay; counted.
    match app.sio.registry.send(from, To::Others, event, &data) {
        // With the room fence, the candidates it carried are the sender's addresses: what
        // went to the room, not what was refused.
        Ok(()) => {
            if app.turn.as_ref().is_some_and(|t| t.fenced())
                && (data.as_str().contains("candidate:") || data.as_str().contains("c=IN "))
                && let Some(room) = app.sio.registry.room_of(from)
            {
                app.announce_signal(&Scope::in_room(SPACE, room), from, data.as_str());
            }
        }
        Err(RouteError::RoomBusy) => app
            .metrics
            .refusals
            .inc(super::stats::Refusal::RoomMessages),
        Err(_) => {}
    }
}

/// An event's first argument as the client wrote it: relayed without being parsed into a
/// `Value` (a tree of allocations several times the text's size). Further arguments are
/// skipped, as `Data<Value>` did. A tuple struct to socketioxide's parser, which then hands
/// it the arguments after the event name.
#[derive(Debug)]
pub struct FirstArg(pub Box<RawValue>);

impl<'de> serde::Deserialize<'de> for FirstArg {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = FirstArg;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an event with at least one argument")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut args: A,
            ) -> Result<FirstArg, A::Error> {
                let first = args
                    .next_element()?
                    .ok_or_else(|| serde::de::Error::invalid_length(0, &self))?;
                while args.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(FirstArg(first))
            }
        }
        deserializer.deserialize_tuple_struct("FirstArg", 1, Visit)
    }
}

/// The fields of the video-call app's `webrtc_*` events that the server reads; the rest is
/// relayed as it came.
#[derive(serde::Deserialize, Default)]
struct CallData<'a> {
    #[serde(rename = "roomId", default)]
    room_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    sdp: Option<&'a RawValue>,
}

/// The message gate every dialect shares, for one event: a token from the socket's budget.
/// Over the rate the event is dropped with an error; past the strikes the socket goes.
///
/// First it waits, briefly, for the socket to count as connected: socketioxide sends the
/// connect packet and only then marks the socket connected, and an event the client sends
/// at once can be handled in between, when every emit to the socket is silently refused
/// (a joiner would never hear `created`).
async fn gate(app: &Ctx, s: &SocketRef) -> bool {
    let mut waited = 0;
    while !s.connected() {
        // A socket on its way out (or gone) is not waited for.
        if waited == 1000 || app.sio.closing(s.id).load(Ordering::Acquire) {
            return false; // its connect failed: nothing can reach it
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        waited += 1;
    }
    match app.sio.charge(s.id, &app.live().signaling) {
        Ok(()) => true,
        Err(refused) => {
            refuse(app, s, &refused);
            false
        }
    }
}

/// An event's data as its handler takes it; when it is not (a room name that is not a string,
/// an event with no argument), a `bad_request` error and `None`. Either way the event was
/// charged to the socket's budget (`gate`) first.
fn decoded<T>(
    app: &Ctx,
    s: &SocketRef,
    data: Result<T, socketioxide::ParserError>,
    expected: &str,
) -> Option<T> {
    data.map_err(|_| error(app, s, ErrorCode::BadRequest, expected.to_owned()))
        .ok()
}

/// Refuses a message above `signaling.max_message_bytes`: an error, then a disconnect.
fn too_large(app: &Ctx, s: &SocketRef, payload: &RawValue) -> bool {
    match Gate::size(payload.get().len(), &app.live().signaling) {
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
    let closing = app.sio.closing(s.id);
    if closing.load(Ordering::Acquire) {
        return; // told already, and on its way out
    }
    error(app, s, refused.code(), refused.message());
    if refused.closes() && close(s.clone(), &closing) {
        info!(sid = %s.id, reason = refused.close().1, "socket.io client disconnected");
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

/// Joins `room`; `Ok(peer id, members before)` or why not. Once the join has taken effect,
/// and before any other member can reach the socket, it is sent `ice_servers` (credentials
/// scoped to the room), then what `welcome` emits.
async fn join(
    app: &Ctx,
    s: &SocketRef,
    room: &str,
    welcome: impl FnOnce(&Joined) + Send + 'static,
) -> Result<(PeerId, usize), NotJoined> {
    let room_id = match RoomId::parse(room) {
        Ok(r) => r,
        Err(message) => {
            error(app, s, ErrorCode::BadRoom, message);
            return Err(NotJoined::Answered);
        }
    };
    let Some((peer, host, client)) = app.sio.peer(s.id) else {
        return Err(NotJoined::Answered);
    };
    if app.draining() {
        error(
            app,
            s,
            ErrorCode::ShuttingDown,
            "this instance is draining: connect again to reach another".to_owned(),
        );
        return Err(NotJoined::Answered);
    }
    let scope = Scope::in_room(SPACE, room_id.clone());
    if let Some(kept_out) = app.kept_out(&scope, client, std::time::Instant::now()) {
        let (code, message) = kept_out.error();
        error(app, s, code, message);
        return Err(NotJoined::Answered);
    }
    let grant = match app.check_token(&room_id, app.sio.token(s.id).as_deref()) {
        Ok(grant) => grant,
        Err((code, message)) => {
            error(app, s, code, message.to_owned());
            return Err(NotJoined::Answered);
        }
    };
    if app.sio.registry.room_of(&peer).is_some() {
        error(
            app,
            s,
            ErrorCode::AlreadyJoined,
            "already in a room".to_owned(),
        );
        return Err(NotJoined::Answered);
    }
    let allocations = grant.as_ref().and_then(|g| g.allocations);
    let (ice_servers, ice_ttl_s) = app.ice_servers_for(&peer, &scope, allocations, &host);
    let socket = s.clone();
    let welcome = move |joined: &Joined| {
        let _ = socket.emit(
            "ice_servers",
            &json!({"ice_servers": ice_servers, "ice_ttl_s": ice_ttl_s}),
        );
        welcome(joined);
    };
    let terms = grant.as_ref().map(Terms::of).unwrap_or_default();
    let (name, publish) = grant.map_or((None, true), |g| (g.sub, g.roles.publish));
    app.sio.set_receive_only(s.id, !publish);
    let info = PeerInfo {
        id: peer.clone(),
        name,
    };
    let member = Arc::new(SioMember {
        socket: s.clone(),
        closing: app.sio.closing(s.id),
        client,
    });
    let joined = app
        .sio
        .registry
        .join(info, &room_id, terms, member, Box::new(welcome))
        .outcome()
        .await
        .map_err(|e| match e {
            JoinError::TooManyRooms => {
                app.metrics.refusals.inc(Refusal::MaxRooms);
                NotJoined::Full
            }
            JoinError::RoomFull => {
                app.metrics.refusals.inc(Refusal::RoomCapacity);
                NotJoined::Full
            }
            // A join racing another from the same socket; socket.io rooms have no names.
            JoinError::AlreadyJoined | JoinError::NameTaken => NotJoined::Answered,
            JoinError::Unavailable => {
                error(
                    app,
                    s,
                    ErrorCode::Unavailable,
                    super::legacy::UNAVAILABLE.to_owned(),
                );
                NotJoined::Answered
            }
        })?;
    // The socket's disconnect handler runs on a task of its own: had it run between the
    // lookup of the peer above and this join, its leave came first and nothing else would
    // take this member out again.
    if app.sio.peer(s.id).is_none() {
        app.sio.registry.leave(&peer);
        return Err(NotJoined::Answered);
    }
    app.sio.stats.joins.inc();
    app.announce_client(&scope, &peer, client);
    let before = joined.others.len();
    info!(sid = %s.id, room, members = before + 1, "socket.io peer joined");
    Ok((peer, before))
}

fn log(app: &Ctx, s: &SocketRef, line: String) {
    if app.live().signaling.socketio_log {
        let _ = s.emit("log", &("Message from server:", line));
    }
}

async fn create_or_join(s: SocketRef, TryData(room): TryData<String>, State(app): App) {
    app.sio.stats.messages.inc(SioMessage::CreateOrJoin);
    if !gate(&app, &s).await {
        return;
    }
    let Some(room) = decoded(
        &app,
        &s,
        room,
        r#""create or join" takes a room name (a string)"#,
    ) else {
        return;
    };
    log(
        &app,
        &s,
        format!("Received request to create or join room {room}"),
    );
    let (ctx, socket, name) = (app.clone(), s.clone(), room.clone());
    let welcome = move |joined: &Joined| {
        let (what, event) = if joined.others.is_empty() {
            ("created", "created")
        } else {
            ("joined", "joined")
        };
        log(
            &ctx,
            &socket,
            format!("Client ID {} {what} room {name}", socket.id),
        );
        let _ = socket.emit(event, &(&name, socket.id.to_string()));
    };
    match join(&app, &s, &room, welcome).await {
        Ok((_, 0)) => {}
        Ok((peer, _)) => {
            broadcast(&app, &peer, "join", &Value::from(room));
            broadcast(&app, &peer, "ready", &Value::Null);
            let _ = s.emit("ready", &());
        }
        Err(NotJoined::Full) => {
            let _ = s.emit("full", &room);
        }
        Err(NotJoined::Answered) => {}
    }
}

async fn join_video_room(s: SocketRef, TryData(room): TryData<String>, State(app): App) {
    app.sio.stats.messages.inc(SioMessage::Join);
    if !gate(&app, &s).await {
        return;
    }
    let Some(room) = decoded(&app, &s, room, r#""join" takes a room name (a string)"#) else {
        return;
    };
    let (socket, name) = (s.clone(), room.clone());
    let welcome = move |joined: &Joined| {
        let event = if joined.others.is_empty() {
            "room_created"
        } else {
            "room_joined"
        };
        let _ = socket.emit(event, &name);
    };
    if let Err(NotJoined::Full) = join(&app, &s, &room, welcome).await {
        let _ = s.emit("full_room", &room);
    }
}

async fn message(s: SocketRef, TryData(msg): TryData<FirstArg>, State(app): App) {
    app.sio.stats.messages.inc(SioMessage::Message);
    if !gate(&app, &s).await {
        return;
    }
    let Some(FirstArg(msg)) = decoded(&app, &s, msg, r#""message" takes an argument"#) else {
        return;
    };
    if too_large(&app, &s, &msg) || !may_relay(&app, &s, msg.get()) {
        return;
    }
    if let Some(peer) = sender(&app, &s, None) {
        broadcast_raw(&app, &peer, "message", Box::<str>::from(msg).into());
    }
}

async fn ipaddr(s: SocketRef, State(app): App) {
    app.sio.stats.messages.inc(SioMessage::Ipaddr);
    if !gate(&app, &s).await {
        return;
    }
    for addr in &app.live().public_addresses {
        let _ = s.emit("ipaddr", addr);
    }
}

async fn start_call(s: SocketRef, TryData(room): TryData<String>, State(app): App) {
    app.sio.stats.messages.inc(SioMessage::StartCall);
    if !gate(&app, &s).await {
        return;
    }
    let Some(room) = decoded(
        &app,
        &s,
        room,
        r#""start_call" takes a room name (a string)"#,
    ) else {
        return;
    };
    if let Some(peer) = sender(&app, &s, Some(&room)) {
        broadcast(&app, &peer, "start_call", &Value::Null);
    }
}

async fn webrtc_offer(s: SocketRef, TryData(data): TryData<FirstArg>, State(app): App) {
    app.sio.stats.messages.inc(SioMessage::WebrtcOffer);
    if !gate(&app, &s).await {
        return;
    }
    let Some(FirstArg(data)) = decoded(&app, &s, data, r#""webrtc_offer" takes an argument"#)
    else {
        return;
    };
    relay(&s, &app, "webrtc_offer", &data, Part::Sdp);
}

async fn webrtc_answer(s: SocketRef, TryData(data): TryData<FirstArg>, State(app): App) {
    app.sio.stats.messages.inc(SioMessage::WebrtcAnswer);
    if !gate(&app, &s).await {
        return;
    }
    let Some(FirstArg(data)) = decoded(&app, &s, data, r#""webrtc_answer" takes an argument"#)
    else {
        return;
    };
    relay(&s, &app, "webrtc_answer", &data, Part::Sdp);
}

async fn webrtc_ice_candidate(s: SocketRef, TryData(data): TryData<FirstArg>, State(app): App) {
    app.sio.stats.messages.inc(SioMessage::WebrtcIceCandidate);
    if !gate(&app, &s).await {
        return;
    }
    let Some(FirstArg(data)) = decoded(
        &app,
        &s,
        data,
        r#""webrtc_ice_candidate" takes an argument"#,
    ) else {
        return;
    };
    relay(&s, &app, "webrtc_ice_candidate", &data, Part::Whole);
}

/// What of a `webrtc_*` event's data is relayed.
#[derive(Debug, Clone, Copy)]
pub enum Part {
    /// Its `sdp` (`null` when it has none), as the video-call app's offer and answer.
    Sdp,
    /// All of it, as its ICE candidate.
    Whole,
}

/// Sends `part` of `data` as `event` to the other members of `data.roomId`, if the sender is
/// in it. Data that is not an object names no room and is dropped.
/// Whether the socket may relay `json`; a receive-only socket that tries to send media is
/// told `forbidden`.
fn may_relay(app: &Ctx, s: &SocketRef, json: &str) -> bool {
    if app.sio.may_relay(s.id, json) {
        return true;
    }
    error(
        app,
        s,
        ErrorCode::Forbidden,
        "your join token does not let you send media: offer and answer receive-only (a=recvonly)"
            .to_owned(),
    );
    false
}

fn relay(s: &SocketRef, app: &Ctx, event: &str, data: &RawValue, part: Part) {
    if too_large(app, s, data) || !may_relay(app, s, data.get()) {
        return;
    }
    let (room, json) = call_data(data, part);
    if let Some(peer) = sender(app, s, Some(room.as_deref().unwrap_or_default())) {
        broadcast_raw(app, &peer, event, json.to_owned());
    }
}

/// The room a `webrtc_*` event's `data` names (`roomId`), and the JSON relayed for it:
/// `part` of `data`, as the client wrote it. Data that is not an object names no room.
pub fn call_data(data: &RawValue, part: Part) -> (Option<Cow<'_, str>>, &str) {
    let fields: CallData = serde_json::from_str(data.get()).unwrap_or_default();
    let json = match part {
        Part::Sdp => fields.sdp.map_or("null", RawValue::get),
        Part::Whole => data.get(),
    };
    (fields.room_id, json)
}
