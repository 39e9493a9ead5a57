//! The native dialect (`/ws`): `Native` (its rooms, in a `Registry`: the in-process `Hub`) as a `Dialect`, and
//! each socket's `Session`: decode, apply limits, hand to the hub.
//!
//! `Session` is the native protocol as a `conn::Handler`: it enforces the message limits
//! (size, rate, join timeout) and turns every refusal into a coded `error` or a close
//! frame with a reason; `conn` runs the socket (frames, keepalive, outbox).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::Utf8Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use super::admit::{Admitted, admit};
use super::conn::{Conn, Ended, Handler, Reply};
use super::dialect::Dialect;
use super::frame::CLOSE_POLICY;
use super::gate::{Gate, Refused};
use super::host::Host;
use super::hub::Hub;
use super::outbox::Outbox;
use super::protocol::{self, ClientMsg, ErrorCode, PeerId, PeerInfo, Roles, RoomId, ServerMsg};
use super::registry::{Event, Joining, Member, PendingJoin, Registry, To};
use super::resume::Replay;
use super::room::{JoinError, Joined, Rooms, RouteError, Terms};
use super::signal::Eviction;
use super::socket::{Socket, Upgrade};
use super::stats::{Counts, DialectStats, Refusal};
use crate::config::SignalingConfig;
use crate::model::{Scope, Space};
use crate::routes::Route;
use crate::sync::Locked;

/// The native dialect: its rooms and their members' outboxes, in a `Registry`.
#[derive(Debug)]
pub struct Native {
    registry: Arc<dyn Registry>,
    stats: DialectStats<NativeMessage>,
    /// Every resumable peer's place, by its current resume token.
    places: Mutex<HashMap<String, Place>>,
}

/// A resumable peer's place: what a `resume` with its token takes over.
#[derive(Debug)]
struct Place {
    peer_id: PeerId,
    room: RoomId,
    roles: Roles,
    room_allocations: Option<u32>,
    member: Arc<NativeMember>,
    /// Its socket dropped: the place waits for a resume until the grace period ends.
    parked: bool,
    /// The dropped socket's connection slot, held while the place waits: a parked peer
    /// counts against its source's and the server's connection limits.
    guard: Option<crate::limiter::ConnectionGuard>,
}

/// This dialect's name in metrics and the admin API.
pub const NAME: &str = "native";

crate::labels! {
    /// Client messages of the native protocol, by `type`.
    pub NativeMessage {
        Join => "join",
        Signal => "signal",
        Leave => "leave",
        Kick => "kick",
        Ping => "ping",
        Resume => "resume",
        Ack => "ack",
        Invalid => "invalid",
    }
}

impl Native {
    /// With the in-process registry.
    pub fn new(cfg: &SignalingConfig) -> Native {
        Native::with_registry(Arc::new(Hub::new(Rooms::new(
            cfg.room_capacity,
            cfg.max_rooms,
        ))))
    }

    pub fn with_registry(registry: Arc<dyn Registry>) -> Native {
        Native {
            registry,
            stats: DialectStats::default(),
            places: Mutex::default(),
        }
    }

    #[cfg(test)]
    pub(crate) fn registry(&self) -> &dyn Registry {
        self.registry.as_ref()
    }
}

impl Dialect for Native {
    fn name(&self) -> &'static str {
        NAME
    }

    fn mount(self: Arc<Self>, router: Router, app: &Arc<Host>) -> Router {
        router.route(
            Route::Ws.path(),
            get(upgrade).with_state((Arc::clone(app), self)),
        )
    }

    fn peers(&self) -> Vec<(Scope, PeerInfo)> {
        self.registry
            .rooms()
            .into_iter()
            .flat_map(|(room, members)| {
                members
                    .into_iter()
                    .map(move |p| (Scope::native(room.clone()), p))
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
            .map(|(left, client)| (Scope::native(left.room), client))
    }

    fn is_member(&self, scope: &Scope, peer: &PeerId) -> bool {
        scope.space() == Space::NATIVE
            && scope
                .room()
                .is_some_and(|room| self.registry.is_member(room, peer))
    }

    fn set_limits(&self, cfg: &SignalingConfig) {
        self.registry
            .set_limits(cfg.room_capacity, cfg.max_rooms, cfg.room_messages_per_s);
    }
}

/// A native socket as a room member: events become the protocol's `peer_joined`,
/// `peer_left` and `signal` messages on its outbox. A resumable one numbers them and keeps
/// them for a resume (`resume::Replay`), and outlives its socket while parked.
#[derive(Debug)]
enum NativeMember {
    Plain { outbox: Outbox, client: IpAddr },
    Resumable(Mutex<Resumable>),
}

/// A resumable member: its socket (none while parked), the messages it may need again, and
/// whether its place has ended.
#[derive(Debug)]
struct Resumable {
    outbox: Option<Outbox>,
    client: IpAddr,
    replay: Replay,
    /// Its session is leaving: no resume may take it over any more.
    ended: bool,
}

/// What a session finds of its resumable member as its socket ends.
#[derive(Debug, PartialEq, Eq)]
enum Exit {
    /// A resume moved the member to another socket: this one must do nothing more.
    Replaced,
    /// Its messages now only wait for a resume.
    Parked,
    /// It leaves: no resume will take it.
    Leaves,
}

impl NativeMember {
    fn new(outbox: Outbox, client: IpAddr, resumable: bool) -> NativeMember {
        if resumable {
            NativeMember::Resumable(Mutex::new(Resumable {
                outbox: Some(outbox),
                client,
                replay: Replay::default(),
                ended: false,
            }))
        } else {
            NativeMember::Plain { outbox, client }
        }
    }

    /// Whether `outbox` is still where this member's messages go (no resume took it over).
    fn owned_by(&self, outbox: &Outbox) -> bool {
        match self {
            NativeMember::Plain { .. } => true,
            NativeMember::Resumable(r) => r
                .locked()
                .outbox
                .as_ref()
                .is_some_and(|o| Arc::ptr_eq(&o.signal, &outbox.signal)),
        }
    }

    /// The socket of `outbox` ends: parked when `park` (its messages then only kept),
    /// else ended; decided under the member's lock, so a resume either came first (this
    /// socket was replaced) or finds the outcome.
    fn exit(&self, outbox: &Outbox, park: bool) -> Exit {
        let NativeMember::Resumable(r) = self else {
            return Exit::Leaves;
        };
        let mut r = r.locked();
        if !r
            .outbox
            .as_ref()
            .is_some_and(|o| Arc::ptr_eq(&o.signal, &outbox.signal))
        {
            return Exit::Replaced;
        }
        r.outbox = None;
        if park {
            Exit::Parked
        } else {
            r.ended = true;
            Exit::Leaves
        }
    }

    /// Whether a socket still carries its messages, its place not over.
    fn owned_by_someone(&self) -> bool {
        match self {
            NativeMember::Plain { .. } => true,
            NativeMember::Resumable(r) => {
                let r = r.locked();
                r.outbox.is_some() && !r.ended
            }
        }
    }

    /// Its place ends (the grace is over): no resume may take it.
    fn end(&self) {
        if let NativeMember::Resumable(r) = self {
            r.locked().ended = true;
        }
    }

    /// The client received every message up to `seq`.
    fn ack(&self, seq: u64) {
        if let NativeMember::Resumable(r) = self {
            r.locked().replay.ack(seq);
        }
    }

    /// Moves the member to `outbox` (of a client at `client`): `first` (the `resumed`
    /// message), then the messages after `last_seq`, then whatever comes next. The previous
    /// socket, if still open, is closed. `false` when its place ended, or messages after
    /// `last_seq` are no longer kept.
    fn attach(&self, outbox: &Outbox, client: IpAddr, first: String, last_seq: u64) -> bool {
        let NativeMember::Resumable(r) = self else {
            return false;
        };
        let mut r = r.locked();
        if r.ended {
            return false;
        }
        let Some(missed) = r.replay.since(last_seq) else {
            return false;
        };
        if let Some(previous) = r.outbox.replace(outbox.clone()) {
            previous.signal.evict(Eviction::Replaced);
        }
        r.client = client;
        outbox.queue(first.into());
        for frame in missed {
            outbox.queue(frame);
        }
        true
    }

    fn send(&self, frame: String, queue_only: bool) {
        let hand = |outbox: &Outbox, frame: Utf8Bytes| {
            if queue_only {
                outbox.queue(frame);
            } else {
                outbox.deliver(frame);
            }
        };
        match self {
            NativeMember::Plain { outbox, .. } => hand(outbox, frame.into()),
            NativeMember::Resumable(r) => {
                // Numbered and handed on under one lock, so sequence and delivery agree.
                let mut r = r.locked();
                let frame = r.replay.push(frame);
                if let Some(outbox) = &r.outbox {
                    hand(outbox, frame);
                }
            }
        }
    }
}

impl Member for NativeMember {
    fn deliver(&self, event: Event<'_>) {
        let frame = match event {
            Event::PeerJoined(peer) => {
                protocol::encode(&ServerMsg::PeerJoined { peer: peer.clone() })
            }
            Event::PeerLeft(peer_id) => protocol::encode(&ServerMsg::PeerLeft {
                peer_id: peer_id.clone(),
            }),
            // The native dialect has one message, `signal`: delivered after the registry's
            // lock is released, so it may be written at once.
            Event::Message { from, data, .. } => {
                return self.send(protocol::encode_signal(from, data.as_str()), false);
            }
        };
        // Joins and leaves are delivered under the registry's lock: queued, no socket I/O.
        self.send(frame, true);
    }

    fn evict(&self, why: Eviction) {
        match self {
            NativeMember::Plain { outbox, .. } => outbox.signal.evict(why),
            NativeMember::Resumable(r) => {
                let mut r = r.locked();
                // Put out of the room (or too slow): its place is over too.
                r.ended = true;
                if let Some(outbox) = &r.outbox {
                    outbox.signal.evict(why);
                }
            }
        }
    }

    fn client(&self) -> IpAddr {
        match self {
            NativeMember::Plain { client, .. } => *client,
            NativeMember::Resumable(r) => r.locked().client,
        }
    }
}

/// `GET /ws`: checks origin and connection limits, then upgrades.
async fn upgrade(
    State((app, native)): State<(Arc<Host>, Arc<Native>)>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    ws: Upgrade,
) -> Response {
    let admitted = match admit(&app, remote, &headers, &uri) {
        Ok(a) => a,
        Err(denied) => return denied.into_response(),
    };
    let tasks = app.tasks.clone();
    native.stats.connections.inc();
    ws.on_upgrade(move |socket| {
        let peer_id = PeerId::random();
        let span = info_span!("ws", %remote, peer_id = %peer_id, room = tracing::field::Empty);
        tasks.track_future(run(app, native, socket, peer_id, admitted).instrument(span))
    })
}

struct Session {
    app: Arc<Host>,
    native: Arc<Native>,
    peer_id: PeerId,
    /// The host the browser used to reach us, for TURN URLs.
    request_host: String,
    /// The client's address, which a kick keeps out of its room for a while.
    client: IpAddr,
    outbox: Outbox,
    room: Option<RoomId>,
    /// The allocations its room may hold, from its join token (`Grant::allocations`), which
    /// its TURN credentials carry.
    room_allocations: Option<u32>,
    /// The room of a join a shared registry has not decided yet, and its join token's capacity.
    joining: Option<RoomId>,
    joining_capacity: Option<usize>,
    /// A join token from the socket's URL (`/ws?token=`), used by a `join` that has none.
    url_token: Option<String>,
    /// What this peer may do in its room (its join token's roles).
    roles: Roles,
    /// A resumable peer's member and current resume token (its place in `Native::places`).
    resumable: Option<(Arc<NativeMember>, String)>,
    /// The same, for a join not decided yet.
    pending_resume: Option<(Arc<NativeMember>, String)>,
    /// The socket's connection slot (handed to its place when it is parked).
    guard: Option<crate::limiter::ConnectionGuard>,
    gate: Gate,
    /// Outside a room: the join timeout. In a room: when fresh TURN credentials are
    /// pushed (four fifths of their lifetime).
    due: Instant,
}

async fn run(
    app: Arc<Host>,
    native: Arc<Native>,
    socket: Socket,
    peer_id: PeerId,
    admitted: Admitted,
) {
    let Admitted {
        guard,
        request_host,
        client,
        token: url_token,
    } = admitted;
    info!("connected");
    let (conn, outbox) = Conn::new(&app, socket);
    // Scoped: nothing of the settings stays in this future, which lives as long as the socket.
    let (gate, due) = {
        let cfg = &app.live().signaling;
        let gate = Gate::new(cfg, std::time::Instant::now());
        (gate, Instant::now() + cfg.join_timeout())
    };
    let mut session = Session {
        app: Arc::clone(&app),
        native,
        peer_id,
        request_host,
        client,
        outbox,
        room: None,
        joining: None,
        joining_capacity: None,
        room_allocations: None,
        url_token,
        roles: Roles::DEFAULT,
        resumable: None,
        pending_resume: None,
        guard: Some(guard),
        gate,
        due,
    };
    conn.serve(&mut session).await;
}

/// What to send back to the client itself after one message.
enum Answer {
    None,
    Msg(ServerMsg),
    Error(ErrorCode, String),
    Close(ErrorCode, String, u16, &'static str),
    /// A join a shared registry decides (`Handler::joined` finishes it).
    Join(PendingJoin),
}

impl Session {
    /// The frames for an answer, with errors counted and logged.
    fn reply(&self, answer: Answer) -> Reply {
        match answer {
            Answer::None => Reply::None,
            Answer::Join(pending) => Reply::Join(pending),
            Answer::Msg(msg) => Reply::Send(protocol::encode(&msg)),
            Answer::Error(code, message) => {
                self.app.metrics.errors.inc(code);
                debug!(?code, %message, "refused client message");
                Reply::Send(protocol::encode(&ServerMsg::error(code, message)))
            }
            Answer::Close(code, message, close_code, reason) => {
                self.app.metrics.errors.inc(code);
                static CLOSING: crate::throttle::Throttle = crate::throttle::Throttle::new();
                if let Some(suppressed) = CLOSING.allow(crate::throttle::now_s()) {
                    warn!(?code, %message, suppressed, "closing client");
                }
                let frame = protocol::encode(&ServerMsg::error(code, message));
                Reply::Close(Some(frame), close_code, reason)
            }
        }
    }
}

impl Handler for Session {
    fn text(&mut self, text: &str) -> Reply {
        if self.replaced() {
            // A resume took this peer over: what this socket still sends is not its.
            return Reply::None;
        }
        let answer = self.handle_text(text);
        self.reply(answer)
    }

    fn binary(&mut self) -> Reply {
        self.reply(Answer::Error(
            ErrorCode::BadRequest,
            "binary frames are not supported; send JSON text frames".to_owned(),
        ))
    }

    fn charge(&mut self) -> Result<(), Reply> {
        let charged = self
            .gate
            .charge(&self.app.live().signaling, std::time::Instant::now());
        charged.map_err(|refused| match self.refusal(&refused) {
            // Over the rate a control frame is dropped unanswered: an answer each would be
            // the write per frame this charge is there to prevent.
            Answer::Error(..) => Reply::None,
            closing => self.reply(closing),
        })
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

    fn joined(&mut self, outcome: Result<Joined, JoinError>) -> Reply {
        let answer = self.join_outcome(outcome);
        self.reply(answer)
    }

    fn finish(&mut self, ended: Ended) {
        if self.replaced() {
            // A resume took this peer over: it lives on on the new socket.
            return;
        }
        if self.room.is_none()
            && let Some(left) = self.native.registry.leave(&self.peer_id)
        {
            // A join the socket stopped waiting for (a shared registry) took effect.
            self.app.peer_left(&Scope::native(left.room), &self.peer_id);
        }
        self.joining = None;
        if self.park(ended) {
            return;
        }
        self.leave();
    }
}

impl Session {
    /// A refusal of the message gate, counted: an error, or an error and a close.
    fn refusal(&self, refused: &Refused) -> Answer {
        self.app.metrics.refusals.inc(refused.limit());
        if refused.closes() {
            let (close_code, reason) = refused.close();
            return Answer::Close(refused.code(), refused.message(), close_code, reason);
        }
        Answer::Error(refused.code(), refused.message())
    }

    fn handle_text(&mut self, text: &str) -> Answer {
        let checked = self.gate.check(
            text.len(),
            &self.app.live().signaling,
            std::time::Instant::now(),
        );
        if let Err(refused) = checked {
            return self.refusal(&refused);
        }
        let msg = protocol::decode(text);
        self.native.stats.messages.inc(match &msg {
            Err(_) => NativeMessage::Invalid,
            Ok(ClientMsg::Join { .. }) => NativeMessage::Join,
            Ok(ClientMsg::Signal { .. }) => NativeMessage::Signal,
            Ok(ClientMsg::Leave) => NativeMessage::Leave,
            Ok(ClientMsg::Kick { .. }) => NativeMessage::Kick,
            Ok(ClientMsg::Ping) => NativeMessage::Ping,
            Ok(ClientMsg::Resume { .. }) => NativeMessage::Resume,
            Ok(ClientMsg::Ack { .. }) => NativeMessage::Ack,
        });
        match msg {
            Err(message) => Answer::Error(ErrorCode::BadRequest, message),
            Ok(ClientMsg::Join {
                room,
                name,
                token,
                resume,
            }) => {
                let token = token.or_else(|| self.url_token.clone());
                self.join(&room, name, token.as_deref(), resume)
            }
            Ok(ClientMsg::Resume { token, last_seq }) => self.resume(&token, last_seq),
            Ok(ClientMsg::Ack { seq }) => {
                if let Some((member, _)) = &self.resumable {
                    member.ack(seq);
                }
                Answer::None
            }
            Ok(ClientMsg::Kick { peer_id }) => self.kick(&peer_id),
            Ok(ClientMsg::Signal { to, payload }) => {
                if !self.roles.publish
                    && self.room.is_some()
                    && !super::sdp::receive_only_allows(payload.as_json())
                {
                    return Answer::Error(
                        ErrorCode::Forbidden,
                        "your join token does not let you send media: offer and answer \
                         receive-only (a=recvonly)"
                            .to_owned(),
                    );
                }
                let data = payload.into_json().into();
                let sent = self
                    .native
                    .registry
                    .send(&self.peer_id, To::Peer(&to), "signal", &data);
                match sent {
                    Ok(()) => {
                        // What went to the room, the room's fence learns; not what was refused.
                        if let Some(room) = &self.room {
                            let scope = Scope::native(room.clone());
                            self.app
                                .announce_signal(&scope, &self.peer_id, data.as_str());
                        }
                        Answer::None
                    }
                    Err(RouteError::NotJoined) => Answer::Error(
                        ErrorCode::NotJoined,
                        "join a room before sending signals".to_owned(),
                    ),
                    Err(RouteError::UnknownPeer) => {
                        Answer::Error(ErrorCode::UnknownPeer, format!("no peer {to} in this room"))
                    }
                    Err(RouteError::RoomBusy) => {
                        self.app.metrics.refusals.inc(Refusal::RoomMessages);
                        Answer::Error(
                            ErrorCode::RoomBusy,
                            "this room sends more messages than its budget allows; the \
                             message was dropped"
                                .to_owned(),
                        )
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

    fn join(
        &mut self,
        room: &str,
        name: Option<String>,
        token: Option<&str>,
        resume: bool,
    ) -> Answer {
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
        if self.app.draining() {
            return Answer::Error(
                ErrorCode::ShuttingDown,
                "this instance is draining: connect again to reach another".to_owned(),
            );
        }
        let scope = Scope::native(room_id.clone());
        let now = std::time::Instant::now();
        if let Some(kept_out) = self.app.kept_out(&scope, self.client, now) {
            let (code, message) = kept_out.error();
            return Answer::Error(code, message);
        }
        let grant = match self.app.check_token(&room_id, token) {
            Ok(grant) => grant,
            Err((code, message)) => return Answer::Error(code, message.to_owned()),
        };
        let terms = grant.as_ref().map(Terms::of).unwrap_or_default();
        let room_allocations = grant.as_ref().and_then(|g| g.allocations);
        let (name, roles) = match grant {
            // The token's identity is the name the others see.
            Some(grant) => (grant.sub.or(name), grant.roles),
            None => (name, Roles::DEFAULT),
        };
        if let Some(Err(message)) = name.as_deref().map(protocol::check_name) {
            return Answer::Error(ErrorCode::BadName, message);
        }
        self.roles = roles;
        self.room_allocations = room_allocations;
        let peer = PeerInfo {
            id: self.peer_id.clone(),
            name,
        };
        let (ice_servers, ice_ttl_s) = self.app.ice_servers_for(
            &self.peer_id,
            &scope,
            self.room_allocations,
            &self.request_host,
        );
        let outbox = self.outbox.clone();
        let (peer_id, room) = (self.peer_id.clone(), room_id.clone());
        let resume = resume && self.app.live().signaling.resume_grace_s > 0;
        let resume_token = resume.then(super::resume::new_token);
        let welcome_token = resume_token.clone();
        let welcome = move |joined: &Joined| {
            let welcome = ServerMsg::Welcome {
                peer_id,
                room,
                peers: joined.others.clone(),
                ice_servers,
                ice_ttl_s,
                roles,
                resume_token: welcome_token,
            };
            // Under the registry's lock: queued, no socket I/O.
            outbox.queue(protocol::encode(&welcome).into());
        };
        let member = Arc::new(NativeMember::new(self.outbox.clone(), self.client, resume));
        self.pending_resume = resume_token.map(|token| (Arc::clone(&member), token));
        let joining = self
            .native
            .registry
            .join(peer, &room_id, terms, member, Box::new(welcome));
        self.joining = Some(room_id);
        self.joining_capacity = terms.capacity;
        match joining {
            Joining::Done(outcome) => self.join_outcome(outcome),
            Joining::Pending(pending) => Answer::Join(pending),
        }
    }

    /// Finishes the join of `joining` with the registry's outcome.
    fn join_outcome(&mut self, outcome: Result<Joined, JoinError>) -> Answer {
        let Some(room_id) = self.joining.take() else {
            return Answer::None;
        };
        let pending_resume = self.pending_resume.take();
        match outcome {
            Ok(joined) => {
                if let Some((member, token)) = pending_resume {
                    let place = Place {
                        peer_id: self.peer_id.clone(),
                        room: room_id.clone(),
                        roles: self.roles,
                        room_allocations: self.room_allocations,
                        member: Arc::clone(&member),
                        parked: false,
                        guard: None,
                    };
                    self.native.places.locked().insert(token.clone(), place);
                    self.resumable = Some((member, token));
                }
                tracing::Span::current().record("room", room_id.as_str());
                info!(
                    created = joined.created,
                    peers = joined.others.len() + 1,
                    "joined"
                );
                let scope = Scope::native(room_id.clone());
                self.app.announce_client(&scope, &self.peer_id, self.client);
                self.room = Some(room_id);
                self.due = Instant::now() + self.refresh_interval();
                self.native.stats.joins.inc();
                Answer::None
            }
            Err(JoinError::RoomFull) => {
                self.app.metrics.refusals.inc(Refusal::RoomCapacity);
                let capacity = self
                    .joining_capacity
                    .unwrap_or(self.app.live().signaling.room_capacity);
                Answer::Error(
                    ErrorCode::RoomFull,
                    format!("room {room_id} is full ({capacity} peers)"),
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
            // Native rooms allow repeated names; kept for completeness.
            Err(JoinError::NameTaken) => Answer::Error(
                ErrorCode::BadName,
                format!("the name is taken in room {room_id}"),
            ),
            Err(JoinError::Unavailable) => Answer::Error(
                ErrorCode::Unavailable,
                super::legacy::UNAVAILABLE.to_owned(),
            ),
        }
    }

    /// Puts `target` out of this peer's room, as the operator's kick does (its source is kept
    /// out of the room for `admin.kicked_peer_s`, its allocations revoked): needs the `kick` role.
    fn kick(&mut self, target: &PeerId) -> Answer {
        let Some(room) = &self.room else {
            return Answer::Error(ErrorCode::NotJoined, "join a room first".to_owned());
        };
        if !self.roles.kick {
            return Answer::Error(
                ErrorCode::Forbidden,
                "your join token does not let you kick others (claim \"kick\": true)".to_owned(),
            );
        }
        let registry = &self.native.registry;
        if *target == self.peer_id || registry.room_of(target).as_ref() != Some(room) {
            return Answer::Error(
                ErrorCode::UnknownPeer,
                format!("no other peer {target} in this room"),
            );
        }
        let Some((left, client)) = registry.kick(target) else {
            return Answer::Error(
                ErrorCode::UnknownPeer,
                format!("no peer {target} in this room"),
            );
        };
        let scope = Scope::native(left.room);
        if let Some(client) = client {
            self.app
                .peer_kicked(&scope, client, std::time::Instant::now());
        }
        let revoked = self
            .app
            .turn
            .as_ref()
            .map_or(0, |t| t.revoke_peer(&scope, target));
        self.app.metrics.kicked.inc();
        info!(%target, allocations = revoked, "peer kicked by a member with the kick role");
        Answer::None
    }

    /// Whether a resume moved this session's peer to another socket.
    fn replaced(&self) -> bool {
        self.resumable
            .as_ref()
            .is_some_and(|(member, _)| !member.owned_by(&self.outbox))
    }

    /// The socket ended. A resumable peer whose connection was lost (not a close frame, a
    /// `leave`, an eviction, a drain or a shutdown) keeps its place for
    /// `signaling.resume_grace_s`, its messages kept for a resume; then it leaves. `true`
    /// when nothing more is to be done here (parked, or a resume took it over); `false`
    /// when it leaves now.
    fn park(&mut self, ended: Ended) -> bool {
        let grace = self.app.live().signaling.resume_grace_s;
        let (Some((member, token)), Some(room)) = (&self.resumable, &self.room) else {
            return false;
        };
        let wanted = ended == Ended::Lost
            && grace > 0
            && !self.outbox.signal.is_closed()
            && !self.app.draining()
            && !self.app.shutdown.is_cancelled()
            && self.native.registry.room_of(&self.peer_id).as_ref() == Some(room);
        match member.exit(&self.outbox, wanted) {
            Exit::Leaves => return false,
            Exit::Replaced => {}
            Exit::Parked => {
                if let Some(place) = self.native.places.locked().get_mut(token) {
                    place.parked = true;
                    place.guard = self.guard.take();
                }
                info!(
                    grace_s = grace,
                    "socket lost: the peer keeps its place for a resume"
                );
                let (native, app) = (Arc::clone(&self.native), Arc::clone(&self.app));
                let (token, peer) = (token.clone(), self.peer_id.clone());
                let shutdown = self.app.shutdown.clone();
                self.app.tasks.spawn(async move {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(grace)) => {}
                        () = shutdown.cancelled() => {}
                    }
                    // Still waiting under this token: nobody resumed it.
                    let Some(place) = native.places.locked().remove(&token) else {
                        return;
                    };
                    place.member.end();
                    if let Some(left) = native.registry.leave(&peer) {
                        info!(%peer, room = %left.room, "left: not resumed within signaling.resume_grace_s");
                        app.peer_left(&Scope::native(left.room), &peer);
                    }
                });
            }
        }
        self.room = None;
        self.resumable = None;
        true
    }

    /// `resume`: takes over the place `token` names, sending `resumed` and then every
    /// message after `last_seq`; the room sees nothing.
    fn resume(&mut self, token: &str, last_seq: u64) -> Answer {
        if self.room.is_some() || self.joining.is_some() {
            return Answer::Error(
                ErrorCode::AlreadyJoined,
                "this socket is in a room already; resume on a new one".to_owned(),
            );
        }
        let failed = |why: &str| {
            Answer::Error(
                ErrorCode::ResumeFailed,
                format!("{why}: join the room again"),
            )
        };
        if self.app.draining() {
            return Answer::Error(
                ErrorCode::ShuttingDown,
                "this instance is draining: connect again to reach another".to_owned(),
            );
        }
        let Some(place) = self.native.places.locked().remove(token) else {
            return failed(
                "no place to resume (an unknown or used token, or its grace period is over)",
            );
        };
        let registry = &self.native.registry;
        if registry.room_of(&place.peer_id).as_ref() != Some(&place.room) {
            return failed("the peer is no longer in its room");
        }
        let scope = Scope::native(place.room.clone());
        if let Some(kept_out) = self
            .app
            .kept_out(&scope, self.client, std::time::Instant::now())
        {
            // The operator keeps this source out of the room: its place stays as it was.
            self.native.places.locked().insert(token.to_owned(), place);
            let (code, message) = kept_out.error();
            return Answer::Error(code, message);
        }
        let (ice_servers, ice_ttl_s) = self.app.ice_servers_for(
            &place.peer_id,
            &scope,
            place.room_allocations,
            &self.request_host,
        );
        let peers: Vec<PeerInfo> = registry
            .members(&place.room)
            .into_iter()
            .filter(|p| p.id != place.peer_id)
            .collect();
        let next_token = super::resume::new_token();
        let resumed = ServerMsg::Resumed {
            peer_id: place.peer_id.clone(),
            room: place.room.clone(),
            peers,
            ice_servers,
            ice_ttl_s,
            roles: place.roles,
            resume_token: next_token.clone(),
        };
        if !place.member.attach(
            &self.outbox,
            self.client,
            protocol::encode(&resumed),
            last_seq,
        ) {
            if place.parked {
                // It cannot come back whole: it leaves now, as at the end of its grace.
                place.member.end();
                if let Some(left) = registry.leave(&place.peer_id) {
                    self.app
                        .peer_left(&Scope::native(left.room), &place.peer_id);
                }
            } else if place.member.owned_by_someone() {
                // Its socket is still there: it keeps its place.
                self.native.places.locked().insert(token.to_owned(), place);
            }
            return failed("its place is over, or messages it missed are no longer kept");
        }
        tracing::Span::current().record("room", place.room.as_str());
        info!(peer = %place.peer_id, was_parked = place.parked, "resumed");
        self.peer_id = place.peer_id.clone();
        self.room = Some(place.room.clone());
        self.roles = place.roles;
        self.room_allocations = place.room_allocations;
        self.due = Instant::now() + self.refresh_interval();
        self.app.announce_client(&scope, &self.peer_id, self.client);
        let member = Arc::clone(&place.member);
        self.native.places.locked().insert(
            next_token.clone(),
            Place {
                parked: false,
                // The parked socket's slot goes: this socket holds its own.
                guard: None,
                ..place
            },
        );
        self.resumable = Some((member, next_token));
        Answer::None
    }

    fn leave(&mut self) {
        if let Some((_, token)) = self.resumable.take() {
            self.native.places.locked().remove(&token);
        }
        if self.room.take().is_some()
            && let Some(left) = self.native.registry.leave(&self.peer_id)
        {
            info!(room = %left.room, closed = left.closed, "left");
            self.app.peer_left(&Scope::native(left.room), &self.peer_id);
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
            &Scope::native(room.clone()),
            self.room_allocations,
            &self.request_host,
        );
        Some(ServerMsg::IceServers {
            ice_servers,
            ice_ttl_s: ttl?,
        })
    }
}
