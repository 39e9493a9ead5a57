//! The plain-WebSocket dialect of the "login / offer / answer / candidate / leave"
//! tutorial, for old clients: users log in with a name and call each other by name.
//!
//! `Directory` (who is logged in, with their outbox) is plain data behind a lock;
//! `upgrade`/`run` are the socket edge, with the same limits as the native protocol.
//! Unlike the tutorial, sending to an unknown name gets an error instead of silence,
//! and `leave` to an unknown name cannot crash anything.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::{Instrument, info, info_span, warn};

use super::admit::{Admitted, admit};
use super::calls::{Calls, Kind};
use super::conn::{Conn, Handler, Reply};
use super::dialect::Dialect;
use super::frame::CLOSE_POLICY;
use super::gate::{Gate, Refused};
use super::host::Host;
use super::hub::Hub;
use super::outbox::Outbox;
use super::protocol::{self, ErrorCode, PeerId};
use super::registry::{Event, Joining, Member, PendingJoin, Registry, To, Welcome};
use super::room::{JoinError, Joined, Rooms, Terms};
use super::signal::Eviction;
use super::socket::{Socket, Upgrade};
use super::stats::{Counts, DialectStats, Refusal};
use crate::config::SignalingConfig;
use crate::model::{PeerInfo, RoomId, Scope, Space};
use crate::sync::Locked;

/// Who is logged in: one `Registry` room of uniquely named users (`Rooms::directory`),
/// and the partner each session last called, so that a kick can tell it `leave`.
#[derive(Debug)]
pub struct Directory {
    registry: Arc<dyn Registry>,
    partners: Mutex<HashMap<PeerId, Partner, foldhash::fast::RandomState>>,
    /// Who offered to or is in a call with whom: what an answer, a candidate or a leave
    /// may reach.
    calls: Arc<Mutex<Calls>>,
    stats: DialectStats<PlainMessage>,
}

/// This dialect's name in metrics and the admin API.
pub const NAME: &str = "plain_ws";

crate::labels! {
    /// Client messages of the plain-WebSocket dialect, by `type`.
    pub PlainMessage {
        Login => "login",
        Offer => "offer",
        Answer => "answer",
        Candidate => "candidate",
        Leave => "leave",
        Invalid => "invalid",
    }
}

/// Why a message to a name was not sent.
#[derive(Debug, PartialEq, Eq)]
enum NotSent {
    Unknown,
    NoCall,
}

/// The name a session last exchanged an offer or answer with.
type Partner = Arc<Mutex<Option<String>>>;

/// This dialect's credentials: `ws/`, the dialect alone (it has no rooms).
pub const SPACE: Space = Space::new("ws");

/// The registry room every user of this dialect is in, and the room a join token for this
/// dialect names (`tokens.require` and a token's `room` claim read it as `users`).
static USERS: std::sync::LazyLock<RoomId> =
    std::sync::LazyLock::new(|| RoomId::parse("users").expect("a valid room name"));

/// The `leave` frame, sent to a partner when a user goes.
const LEAVE: &str = r#"{"type":"leave"}"#;

impl Default for Directory {
    fn default() -> Directory {
        Directory::with_registry(Arc::new(Hub::new(Rooms::directory())))
    }
}

impl Directory {
    pub fn with_registry(registry: Arc<dyn Registry>) -> Directory {
        Directory {
            registry,
            partners: Mutex::default(),
            calls: Arc::default(),
            stats: DialectStats::default(),
        }
    }

    /// Registers `user` (named) with `outbox`; `welcome` runs before anyone can reach it.
    /// Once it has succeeded, `logged_in` gives the user's partner.
    pub(super) fn login(
        &self,
        user: PeerInfo,
        outbox: Arc<Outbox>,
        client: IpAddr,
        welcome: Welcome,
    ) -> Joining {
        let member = Arc::new(Frames {
            outbox,
            client,
            me: user.id.clone(),
            calls: Arc::clone(&self.calls),
        });
        self.registry
            .join(user, &USERS, Terms::default(), member, welcome)
    }

    /// The partner of `peer`, whose login succeeded.
    fn logged_in(&self, peer: &PeerId) -> Partner {
        let partner = Partner::default();
        self.partners
            .locked()
            .insert(peer.clone(), Arc::clone(&partner));
        partner
    }

    /// Logs `peer` out (if an operator's kick has not already): its partner is told `leave`.
    fn logout(&self, peer: &PeerId) {
        self.tell_partner(peer);
        self.registry.leave(peer);
    }

    /// Sends the frame `frame` (a `kind`) from `from` to the user called `to`, if `kind`
    /// may go there (`Calls`).
    ///
    /// # Errors
    /// `Unknown`: nobody of that name; `NoCall`: no offer or call between them that
    /// allows it.
    fn send(&self, from: &PeerId, to: &str, kind: Kind, frame: String) -> Result<(), NotSent> {
        let to = self
            .registry
            .resolve(from, to)
            .map_err(|_| NotSent::Unknown)?;
        if !self.calls.locked().send(from, &to, kind) {
            return Err(NotSent::NoCall);
        }
        self.registry
            .send(from, To::Peer(&to), kind.as_str(), &frame.into())
            .map_err(|_| NotSent::Unknown)
    }

    /// Tells `peer`'s partner `leave`, once, while `peer` is still logged in, and forgets
    /// its offers and calls.
    fn tell_partner(&self, peer: &PeerId) {
        let partner = self.partners.locked().remove(peer);
        // As the tutorial's server does on a close: the last user this one offered to or
        // answered hears `leave`, whether or not that call was left already.
        if let Some(name) = partner.and_then(|p| p.locked().take()) {
            let _ = self
                .registry
                .send(peer, To::Named(&name), "leave", &LEAVE.into());
        }
        self.calls.locked().forget(peer);
    }

    /// Users logged in right now.
    pub fn online(&self) -> usize {
        self.registry.counts().1
    }
}

/// A plain-WebSocket session as a registry member: messages are frames, sent as they are.
/// Users are not told of each other's logins (the tutorial has no presence).
#[derive(Debug)]
struct Frames {
    outbox: Arc<Outbox>,
    client: IpAddr,
    /// This user's peer id, and the directory's calls: a message from a user on another
    /// instance (a cluster) opens, answers or ends a call here as it did there.
    me: PeerId,
    calls: Arc<Mutex<Calls>>,
}

impl Member for Frames {
    fn deliver(&self, event: Event<'_>) {
        if let Event::Message {
            from,
            event,
            data,
            remote,
        } = event
        {
            if remote && let Some(kind) = Kind::parse(event) {
                self.calls.locked().send(from, &self.me, kind);
            }
            self.outbox.deliver(data.clone());
        }
    }

    fn evict(&self, why: Eviction) {
        self.outbox.signal.evict(why);
    }

    fn client(&self) -> IpAddr {
        self.client
    }
}

/// The plain-WebSocket dialect: users, no rooms. Its credentials name the dialect alone.
impl Dialect for Directory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn mount(self: Arc<Self>, router: Router, app: &Arc<Host>) -> Router {
        let path = app.live().signaling.legacy_path.clone();
        router.route(&path, get(upgrade).with_state((Arc::clone(app), self)))
    }

    fn peers(&self) -> Vec<(Scope, PeerInfo)> {
        let mut peers: Vec<(Scope, PeerInfo)> = self
            .registry
            .rooms()
            .into_iter()
            .flat_map(|(_, users)| users)
            .map(|user| (Scope::whole(SPACE), user))
            .collect();
        peers.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        peers
    }

    fn activity(&self) -> Vec<super::room::RoomActivity> {
        self.registry.activity()
    }

    fn counts(&self) -> Counts {
        self.stats.counts(None, self.online())
    }

    fn close_room(&self, _room: &RoomId) -> Vec<PeerId> {
        Vec::new()
    }

    /// Frees the name at once (its partner told `leave`) and closes the socket.
    fn kick(&self, peer: &PeerId) -> Option<(Scope, Option<IpAddr>)> {
        self.tell_partner(peer);
        self.registry
            .kick(peer)
            .map(|(_, client)| (Scope::whole(SPACE), client))
    }

    fn is_member(&self, scope: &Scope, peer: &PeerId) -> bool {
        *scope == Scope::whole(SPACE) && self.registry.is_member(&USERS, peer)
    }

    fn set_limits(&self, _cfg: &SignalingConfig) {}
}

/// `GET /legacy` (or `signaling.legacy_path`): the same admission checks as `/ws`.
async fn upgrade(
    State((app, directory)): State<(Arc<Host>, Arc<Directory>)>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    socket: Upgrade,
) -> Response {
    let admitted = match admit(&app, remote, &headers, &uri) {
        Ok(a) => a,
        Err(denied) => return denied.into_response(),
    };
    let tasks = app.tasks.clone();
    directory.stats.connections.inc();
    socket.on_upgrade(move |socket| {
        let peer = PeerId::random();
        let span = info_span!("legacy", %remote, peer_id = %peer, name = tracing::field::Empty);
        tasks.track_future(run(app, directory, socket, peer, admitted).instrument(span))
    })
}

struct Session {
    app: Arc<Host>,
    directory: Arc<Directory>,
    peer: PeerId,
    request_host: String,
    /// The client's address, which a kick keeps out for a while.
    client: IpAddr,
    outbox: Arc<Outbox>,
    name: Option<String>,
    /// The name of a login a shared registry has not decided yet.
    logging_in: Option<String>,
    /// The user this one last exchanged an offer or answer with; told `leave` on close
    /// (shared with the directory, for a kick). Set while logged in.
    partner: Option<Partner>,
    /// The join token of the socket's URL (`?token=`): this dialect's messages have no room for one.
    token: Option<String>,
    /// Its join token lets it only receive: its offers and answers may not send media.
    receive_only: bool,
    gate: Gate,
    /// When a session that has not logged in is closed (`signaling.join_timeout_s`).
    login_due: Instant,
    /// Logins refused on this socket (a name taken or invalid); `MAX_FAILED_LOGINS` closes it.
    failed_logins: u32,
}

/// What a login or join refused for want of the shared registry says.
pub(super) const UNAVAILABLE: &str =
    "the rooms shared with the other instances cannot be reached; try again shortly";

/// Refused logins one socket may make: more would be probing which names are online.
const MAX_FAILED_LOGINS: u32 = 5;

/// What to do after one message.
enum Next {
    Reply(Value),
    Nothing,
    Close(Value, u16, &'static str),
    /// A login a shared registry decides (`Handler::joined` finishes it).
    Login(PendingJoin),
}

/// Every message of this dialect, fields unparsed: relayed values are forwarded as the
/// client wrote them. Anything this does not fit (not an object, a duplicate key) takes the
/// slower path through `Value`, which has the precise error.
#[derive(Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub offer: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub answer: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub candidate: Option<&'a RawValue>,
}

/// A field's value when it is a JSON string.
pub fn string(raw: Option<&RawValue>) -> Option<String> {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
}

/// A relayed value as written, `null` when absent.
pub fn raw(value: Option<&RawValue>) -> &str {
    value.map_or("null", RawValue::get)
}

/// The frame the other user gets for a `kind` message `data` from the user called `me`:
/// the tutorial's, with the sender's values forwarded as written.
pub fn relayed(kind: Kind, data: &Frame, me: &str) -> String {
    match kind {
        Kind::Offer => {
            let me = serde_json::to_string(me).expect("a string serializes");
            format!(
                r#"{{"type":"offer","offer":{},"name":{me}}}"#,
                raw(data.offer)
            )
        }
        Kind::Answer => format!(r#"{{"type":"answer","answer":{}}}"#, raw(data.answer)),
        Kind::Candidate => format!(
            r#"{{"type":"candidate","candidate":{}}}"#,
            raw(data.candidate)
        ),
        Kind::Leave => r#"{"type":"leave"}"#.to_owned(),
    }
}

impl Session {
    /// An error reply with its code, counted.
    fn error(&self, code: ErrorCode, message: impl Into<String>) -> Value {
        use crate::metrics::Label;
        self.app.metrics.errors.inc(code);
        json!({"type": "error", "code": code.as_str(), "message": message.into()})
    }

    /// A refusal of the message gate, counted: an error, or an error and a close.
    fn refusal(&self, refused: &Refused) -> Next {
        self.app.metrics.refusals.inc(refused.limit());
        let error = self.error(refused.code(), refused.message());
        if refused.closes() {
            let (code, reason) = refused.close();
            return Next::Close(error, code, reason);
        }
        Next::Reply(error)
    }

    fn handle_text(&mut self, text: &str) -> Next {
        // Kicked (its name may be someone else's already): what it had sent is not relayed.
        if self.outbox.signal.is_closed() {
            return Next::Nothing;
        }
        let checked = self.gate.check(
            text.len(),
            &self.app.live().signaling,
            std::time::Instant::now(),
        );
        if let Err(refused) = checked {
            return self.refusal(&refused);
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
        self.directory.stats.messages.inc(match kind.as_str() {
            "login" => PlainMessage::Login,
            "offer" => PlainMessage::Offer,
            "answer" => PlainMessage::Answer,
            "candidate" => PlainMessage::Candidate,
            "leave" => PlainMessage::Leave,
            _ => PlainMessage::Invalid,
        });
        match (kind.as_str(), Kind::parse(&kind)) {
            ("login", _) => self.login(&data),
            (_, Some(relayed)) => self.relay(relayed, &data),
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
            return self.login_refused();
        }
        if self.app.draining() {
            return Next::Reply(self.error(
                ErrorCode::ShuttingDown,
                "this instance is draining: connect again to reach another",
            ));
        }
        let scope = Scope::whole(SPACE);
        if let Some(kept_out) = self
            .app
            .kept_out(&scope, self.client, std::time::Instant::now())
        {
            let (code, message) = kept_out.error();
            return Next::Reply(self.error(code, message));
        }
        match self.app.check_token(&USERS, self.token.as_deref()) {
            Err((code, message)) => return Next::Reply(self.error(code, message)),
            // The token's identity is the only name it may log in as.
            Ok(Some(grant)) if grant.sub.as_ref().is_some_and(|sub| sub != name) => {
                return Next::Reply(self.error(
                    ErrorCode::TokenRoomMismatch,
                    "the join token is for another name",
                ));
            }
            Ok(grant) => self.receive_only = grant.is_some_and(|g| !g.roles.publish),
        }
        // The dialect has no rooms: its credentials name the dialect alone (`ws/`), a scope
        // no native or socket.io room can name, with no per-room quota.
        let (ice_servers, ice_ttl_s) =
            self.app
                .ice_servers_for(&self.peer, &Scope::whole(SPACE), None, &self.request_host);
        let user = PeerInfo {
            id: self.peer.clone(),
            name: Some(name.to_owned()),
        };
        // The answer goes out as the login takes effect: before anything sent to the name.
        let outbox = Arc::clone(&self.outbox);
        let welcome = move |_: &Joined| {
            let ok = json!({"type": "login", "success": true, "ice_servers": ice_servers, "ice_ttl_s": ice_ttl_s});
            // Under the registry's lock: queued, no socket I/O.
            outbox.queue(ok.to_string().into());
        };
        let joining = self.directory.login(
            user,
            Arc::clone(&self.outbox),
            self.client,
            Box::new(welcome),
        );
        self.logging_in = Some(name.to_owned());
        match joining {
            Joining::Done(outcome) => self.logged_in(outcome),
            Joining::Pending(pending) => Next::Login(pending),
        }
    }

    /// Finishes the login `logging_in` names with the registry's outcome.
    fn logged_in(&mut self, outcome: Result<Joined, JoinError>) -> Next {
        let Some(name) = self.logging_in.take() else {
            return Next::Nothing;
        };
        if let Err(e) = outcome {
            if e == JoinError::Unavailable {
                return Next::Reply(self.error(ErrorCode::Unavailable, UNAVAILABLE));
            }
            return self.login_refused();
        }
        tracing::Span::current().record("name", name.as_str());
        info!("logged in");
        self.directory.stats.joins.inc();
        self.partner = Some(self.directory.logged_in(&self.peer));
        self.name = Some(name);
        Next::Nothing
    }

    /// The tutorial's refusal of a login; past `MAX_FAILED_LOGINS` on one socket, the socket
    /// goes too.
    fn login_refused(&mut self) -> Next {
        let refused = json!({"type": "login", "success": false});
        self.failed_logins += 1;
        if self.failed_logins >= MAX_FAILED_LOGINS {
            self.app.metrics.refusals.inc(Refusal::FailedLogins);
            return Next::Close(refused, CLOSE_POLICY, "too many refused logins");
        }
        Next::Reply(refused)
    }

    fn relay(&mut self, what: Kind, data: &Frame) -> Next {
        let kind = what.as_str();
        let Some(me) = &self.name else {
            return Next::Reply(self.error(ErrorCode::NotLoggedIn, "log in first"));
        };
        let Some(target) = string(data.name) else {
            return Next::Reply(
                self.error(ErrorCode::BadRequest, format!("{kind} needs a \"name\"")),
            );
        };
        let description = match what {
            Kind::Offer => data.offer,
            Kind::Answer => data.answer,
            Kind::Candidate | Kind::Leave => None,
        };
        if self.receive_only
            && description.is_some_and(|d| !super::sdp::receive_only_allows(d.get()))
        {
            return Next::Reply(self.error(
                ErrorCode::Forbidden,
                "your join token does not let you send media: offer and answer receive-only (a=recvonly)",
            ));
        }
        let frame = relayed(what, data, me);
        match self.directory.send(&self.peer, &target, what, frame) {
            Ok(()) => {}
            // As the tutorial's server does: an offer to nobody goes nowhere, with no
            // answer, so that offers cannot tell which names are logged in.
            Err(NotSent::Unknown) if what == Kind::Offer => return Next::Nothing,
            // The same answer whether the name is unknown or only not in a call with this
            // user: nothing to learn about who is logged in.
            Err(NotSent::Unknown | NotSent::NoCall) => {
                return Next::Reply(self.error(
                    ErrorCode::UnknownName,
                    format!("no call with {target:?}: {kind} goes only to a user you offered to or got an offer from"),
                ));
            }
        }
        if let Some(partner) = &self.partner {
            let mut partner = partner.locked();
            match what {
                Kind::Offer | Kind::Answer => *partner = Some(target),
                Kind::Leave => *partner = None,
                Kind::Candidate => {}
            }
        }
        Next::Nothing
    }

    /// Frees the name and tells the partner, when the socket goes.
    fn close(&mut self) {
        self.logging_in = None;
        if self.name.is_none() {
            // A login the socket stopped waiting for (a shared registry) may have taken
            // effect: nothing stays registered for a closed socket.
            self.directory.registry.leave(&self.peer);
        }
        if self.name.take().is_none() {
            return;
        }
        self.partner = None;
        self.directory.logout(&self.peer);
        self.app.peer_left(&Scope::whole(SPACE), &self.peer);
        info!("logged out");
    }
}

async fn run(
    app: Arc<Host>,
    directory: Arc<Directory>,
    socket: Socket,
    peer: PeerId,
    admitted: Admitted,
) {
    let Admitted {
        guard: _guard,
        request_host,
        client,
        token,
    } = admitted;
    info!("connected");
    let (conn, outbox) = Conn::new(&app, socket);
    // Scoped: nothing of the settings stays in this future, which lives as long as the socket.
    let (gate, login_due) = {
        let cfg = &app.live().signaling;
        let gate = Gate::new(cfg, std::time::Instant::now());
        (gate, Instant::now() + cfg.join_timeout())
    };
    let mut session = Session {
        app: Arc::clone(&app),
        directory,
        peer,
        request_host,
        client,
        outbox: Arc::new(outbox),
        name: None,
        logging_in: None,
        partner: None,
        token,
        receive_only: false,
        gate,
        login_due,
        failed_logins: 0,
    };
    conn.serve(&mut session).await;
}

fn reply(next: Next) -> Reply {
    match next {
        Next::Nothing => Reply::None,
        Next::Reply(value) => Reply::Send(value.to_string()),
        Next::Close(value, code, reason) => {
            static CLOSING: crate::throttle::Throttle = crate::throttle::Throttle::new();
            if let Some(suppressed) = CLOSING.allow(crate::throttle::now_s()) {
                warn!(reason, suppressed, "closing legacy client");
            }
            Reply::Close(Some(value.to_string()), code, reason)
        }
        Next::Login(pending) => Reply::Join(pending),
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

    fn charge(&mut self) -> Result<(), Reply> {
        let charged = self
            .gate
            .charge(&self.app.live().signaling, std::time::Instant::now());
        charged.map_err(|refused| {
            if refused.closes() {
                return reply(self.refusal(&refused));
            }
            // Over the rate a control frame is dropped unanswered (see the native dialect).
            self.app.metrics.refusals.inc(refused.limit());
            Reply::None
        })
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.name.is_none().then_some(self.login_due)
    }

    /// No login in time: as the native dialect's join timeout.
    fn deadline(&mut self) -> Reply {
        if self.name.is_some() {
            return Reply::None;
        }
        let timeout_s = self.app.live().signaling.join_timeout_s;
        self.app.metrics.refusals.inc(Refusal::JoinTimeout);
        let error = self.error(
            ErrorCode::JoinTimeout,
            format!("no login within {timeout_s} s"),
        );
        reply(Next::Close(error, CLOSE_POLICY, "login timeout"))
    }

    fn joined(&mut self, outcome: Result<Joined, JoinError>) -> Reply {
        reply(self.logged_in(outcome))
    }

    fn finish(&mut self, _: super::conn::Ended) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::super::outbox::Queue;
    use super::*;

    fn outbox() -> (Arc<Outbox>, Arc<Queue>) {
        let queue = Arc::<Queue>::default();
        let outbox = Outbox {
            queue: Arc::clone(&queue),
            signal: Arc::default(),
            direct: None,
        };
        (Arc::new(outbox), queue)
    }

    fn login(
        directory: &Directory,
        name: &str,
        peer: &PeerId,
        outbox: &Arc<Outbox>,
    ) -> Option<Partner> {
        let user = PeerInfo {
            id: peer.clone(),
            name: Some(name.to_owned()),
        };
        let client = std::net::Ipv4Addr::LOCALHOST.into();
        let id = user.id.clone();
        let joining = directory.login(user, Arc::clone(outbox), client, Box::new(|_| {}));
        joining.decided().ok().map(|_| directory.logged_in(&id))
    }

    #[test]
    fn a_kick_frees_the_name_tells_the_partner_and_the_kicked_session_cannot_free_it_again() {
        let directory = Directory::default();
        let (first, second, bob) = (PeerId::random(), PeerId::random(), PeerId::random());
        let (kicked, _) = outbox();
        let (to_bob, bob_got) = outbox();
        let partner = login(&directory, "alice", &first, &kicked).unwrap();
        login(&directory, "bob", &bob, &to_bob).unwrap();
        assert!(
            login(&directory, "bob", &PeerId::random(), &kicked).is_none(),
            "taken"
        );
        // alice called bob (what a session records as it sends the offer).
        let offer = r#"{"type":"offer"}"#.to_owned();
        directory.send(&first, "bob", Kind::Offer, offer).unwrap();
        assert!(bob_got.pop().is_some());
        *partner.lock().unwrap() = Some("bob".to_owned());

        assert_eq!(
            directory.kick(&first),
            Some((
                Scope::whole(SPACE),
                Some(std::net::Ipv4Addr::LOCALHOST.into())
            ))
        );
        assert!(kicked.signal.is_closed());
        assert_eq!(bob_got.pop().unwrap().as_str(), LEAVE);
        // The name is free at once, and someone else takes it...
        let (other, _) = outbox();
        login(&directory, "alice", &second, &other).unwrap();
        // ...which the kicked session's own logout, when its task ends, leaves alone.
        directory.logout(&first);
        assert!(bob_got.pop().is_none(), "bob was told once");
        assert!(directory.is_member(&Scope::whole(SPACE), &second));
        assert_eq!(directory.peers()[0].1.id, second);
        directory.logout(&second);
        assert_eq!(directory.online(), 1);
        assert_eq!(directory.kick(&first), None);
    }

    #[test]
    fn a_frame_reaches_the_user_of_that_name_as_it_was_written() {
        let directory = Directory::default();
        let (alice, bob) = (PeerId::random(), PeerId::random());
        let (to_alice, _) = outbox();
        let (to_bob, bob_got) = outbox();
        login(&directory, "alice", &alice, &to_alice).unwrap();
        login(&directory, "bob", &bob, &to_bob).unwrap();
        let frame = r#"{"type":"offer","offer":{"sdp" : 1},"name":"alice"}"#;
        directory
            .send(&alice, "bob", Kind::Offer, frame.to_owned())
            .unwrap();
        assert_eq!(bob_got.pop().unwrap().as_str(), frame);
        assert_eq!(
            directory.send(&alice, "carol", Kind::Offer, frame.to_owned()),
            Err(NotSent::Unknown)
        );
    }

    /// The tutorial relayed anything to any name: a third user could answer alice's offer
    /// to bob and get her media. An answer goes only to a user who offered; candidates and
    /// leave only between users with an offer or a call between them.
    #[test]
    fn only_the_user_offered_to_can_answer_and_only_the_two_exchange_candidates() {
        let directory = Directory::default();
        let (alice, bob, mallory) = (PeerId::random(), PeerId::random(), PeerId::random());
        let (to_alice, alice_got) = outbox();
        let (to_bob, bob_got) = outbox();
        let (to_mallory, _) = outbox();
        login(&directory, "alice", &alice, &to_alice).unwrap();
        login(&directory, "bob", &bob, &to_bob).unwrap();
        login(&directory, "mallory", &mallory, &to_mallory).unwrap();
        let send = |from: &PeerId, to: &str, kind: Kind| {
            directory.send(from, to, kind, r#"{"type":"x"}"#.to_owned())
        };
        assert_eq!(send(&mallory, "alice", Kind::Answer), Err(NotSent::NoCall));
        assert_eq!(send(&mallory, "bob", Kind::Candidate), Err(NotSent::NoCall));
        assert_eq!(send(&alice, "bob", Kind::Offer), Ok(()));
        assert!(bob_got.pop().is_some());
        assert_eq!(send(&mallory, "alice", Kind::Answer), Err(NotSent::NoCall));
        assert_eq!(send(&mallory, "alice", Kind::Leave), Err(NotSent::NoCall));
        assert!(alice_got.pop().is_none(), "mallory reached alice");
        assert_eq!(send(&alice, "bob", Kind::Candidate), Ok(()));
        assert_eq!(send(&bob, "alice", Kind::Answer), Ok(()));
        assert_eq!(send(&bob, "alice", Kind::Candidate), Ok(()));
        // Unknown names and names without a call get the same refusal from answers.
        assert_eq!(send(&bob, "nobody", Kind::Answer), Err(NotSent::Unknown));
        // Logging out forgets the calls.
        directory.logout(&bob);
        let mut calls = directory.calls.lock().unwrap();
        assert!(!calls.send(&alice, &bob, Kind::Candidate));
    }
}
