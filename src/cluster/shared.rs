//! `Shared`: a dialect's `Registry` whose rooms span every instance of the cluster.
//!
//! Redis holds the rooms; each instance holds a mirror of them (`Rooms`, plain data) that
//! only the cluster link changes, applying the membership events in the order Redis made
//! them. What the registry promises holds as it does for the `Hub`:
//! - **Capacity is atomic**: the join script checks and adds in one step, in Redis.
//! - **Welcome first**: a local join waits (`Local::Pending`) until its own `Joined` event
//!   reaches the mirror; the welcome runs there, with the members the mirror holds at that
//!   change, which are the ones Redis held. Anything addressed to the newcomer can only
//!   follow that event (its senders learn of it from it), on the same subscription.
//! - **Ordering**: joins and leaves reach each member in the order of their change
//!   numbers; this instance's joins, leaves and messages reach Redis through one queue, in
//!   the order they were made, so a sender's last messages precede its leave.
//! - **Delivery never waits**: remote deliveries are queued for the publisher.
//! - **Membership is current** for this instance's own peers: a leave takes the local
//!   member out before the script runs, and `is_member` asks for a local member.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::oneshot;

use super::Cluster;
use super::wire::{JoinReply, Note, Record};
use crate::model::{PeerId, PeerInfo, RoomId, Scope};
use crate::signaling::protocol::check_name;
use crate::signaling::registry::{Event, Joining, Member, Registry, To, Welcome};
use crate::signaling::room::{JoinError, Joined, Left, RoomActivity, Rooms, RouteError, Terms};
use crate::signaling::signal::Eviction;
use crate::sync::Shared as _;

/// One dialect's rooms across the cluster.
pub struct Shared {
    cluster: Arc<Cluster>,
    me: Weak<Shared>,
    /// The dialect's name, in keys and notes.
    pub dialect: &'static str,
    /// The TURN credential scope of one of its rooms.
    scope: fn(RoomId) -> Scope,
    /// Names are unique in its rooms (Redis checks it at the join).
    unique: bool,
    capacity: AtomicUsize,
    max_rooms: AtomicUsize,
    mirror: RwLock<Mirror>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Mirror {
    /// Every room of the dialect in the cluster (no limits: Redis applies them).
    rooms: Rooms,
    /// The instance each member is connected to.
    homes: HashMap<PeerId, Arc<str>, foldhash::fast::RandomState>,
    /// This instance's sockets, joined or joining.
    locals: HashMap<PeerId, Local, foldhash::fast::RandomState>,
}

enum Local {
    /// Its join script ran or runs; its `Joined` event has not come yet. `done` is gone
    /// when the socket stopped waiting: the member is taken out again when it comes.
    Pending {
        member: Arc<dyn Member>,
        /// In a mutex only to be `Sync`: the mirror's lock is what guards it.
        welcome: std::sync::Mutex<Option<Welcome>>,
        done: Option<oneshot::Sender<Result<Joined, JoinError>>>,
        /// This join's token: its own `Joined` note carries it.
        token: String,
        /// Its join token's message budget for the room, which this instance's copy of the
        /// room takes when the join comes back.
        messages_per_s: Option<u32>,
    },
    /// Joined `room` as `peer`: what registering it again needs, should Redis lose it.
    Joined {
        member: Arc<dyn Member>,
        peer: PeerInfo,
        room: RoomId,
    },
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Local::Pending { .. } => "Pending",
            Local::Joined { .. } => "Joined",
        })
    }
}

impl Local {
    fn joined(&self) -> Option<&Arc<dyn Member>> {
        match self {
            Local::Joined { member, .. } => Some(member),
            Local::Pending { .. } => None,
        }
    }
}

impl Mirror {
    fn member(&self, peer: &PeerId) -> Option<Arc<dyn Member>> {
        self.locals.get(peer)?.joined().cloned()
    }

    /// Applies a join: the welcome of the local join whose `token` it carries runs, the
    /// local members present are told. `Some(peer)`: that local peer's socket stopped
    /// waiting, and must leave again.
    fn join(
        &mut self,
        peer: PeerInfo,
        room: &RoomId,
        home: Arc<str>,
        token: &str,
        me: &str,
    ) -> Option<PeerId> {
        let mine = *home == *me;
        // This instance's own join carries its token's message budget for the room.
        let messages_per_s = match self.locals.get(&peer.id) {
            Some(Local::Pending {
                token: asked,
                messages_per_s,
                ..
            }) if mine && asked == token => *messages_per_s,
            _ => None,
        };
        let terms = Terms {
            capacity: None,
            messages_per_s,
        };
        let Ok(joined) =
            self.rooms
                .handle_join_within(peer.clone(), room, terms, std::time::Instant::now())
        else {
            return None;
        };
        self.homes.insert(peer.id.clone(), home);
        let abandoned = match self.locals.remove(&peer.id) {
            Some(Local::Pending {
                member,
                welcome,
                done,
                token: asked,
                ..
            }) if mine && asked == token => {
                // A socket that stopped waiting (and told its client the join failed) gets
                // no welcome: it is taken back instead.
                let done = done.filter(|done| !done.is_closed());
                let welcome = welcome.into_inner().unwrap_or_else(|e| e.into_inner());
                if let (Some(welcome), Some(_)) = (welcome, &done) {
                    welcome(&joined);
                }
                match done.map(|done| done.send(Ok(joined.clone()))) {
                    Some(Ok(())) => {
                        let local = Local::Joined {
                            member,
                            peer: peer.clone(),
                            room: room.clone(),
                        };
                        self.locals.insert(peer.id.clone(), local);
                        false
                    }
                    _ => true,
                }
            }
            // A later join of the same socket (this one's leave is queued before it), or a
            // joined peer registered again.
            Some(other) => {
                self.locals.insert(peer.id.clone(), other);
                false
            }
            // One that gave up: its leave is queued.
            None => false,
        };
        for other in &joined.others {
            if let Some(m) = self.member(&other.id) {
                m.deliver(Event::PeerJoined(&peer));
            }
        }
        abandoned.then_some(peer.id)
    }

    /// What `peer`'s leave will be once its note comes back: its room and who stays.
    fn left(&self, peer: &PeerId) -> Option<Left> {
        let room = self.rooms.room_of(peer)?.clone();
        let others: Vec<PeerId> = self
            .rooms
            .others(peer)
            .map(|o| o.cloned().collect())
            .unwrap_or_default();
        let (stay, room_stay) = self.rooms.stays(peer)?;
        Some(Left {
            closed: others.is_empty(),
            room,
            others,
            stay,
            room_stay,
        })
    }

    /// Applies a leave: the local members still present are told. The room, if the peer
    /// was connected to another instance than `me`.
    fn leave(&mut self, peer: &PeerId, me: &str) -> Option<RoomId> {
        let left = self.rooms.handle_leave(peer)?;
        let home = self.homes.remove(peer);
        for other in &left.others {
            if let Some(m) = self.member(other) {
                m.deliver(Event::PeerLeft(peer));
            }
        }
        home.filter(|home| **home != *me).map(|_| left.room)
    }
}

impl Shared {
    pub(super) fn new(
        cluster: Arc<Cluster>,
        dialect: &'static str,
        scope: fn(RoomId) -> Scope,
        rooms: Rooms,
        capacity: usize,
        max_rooms: usize,
    ) -> Arc<Shared> {
        Arc::new_cyclic(|me| Shared {
            cluster,
            me: me.clone(),
            dialect,
            scope,
            unique: rooms.unique_names(),
            capacity: AtomicUsize::new(capacity),
            max_rooms: AtomicUsize::new(max_rooms),
            mirror: RwLock::new(Mirror {
                rooms,
                homes: HashMap::default(),
                locals: HashMap::default(),
            }),
        })
    }

    fn limits(&self) -> (usize, usize) {
        (
            self.capacity.load(Ordering::Relaxed),
            self.max_rooms.load(Ordering::Relaxed),
        )
    }

    /// Applies a note from the cluster link.
    pub(super) fn apply(&self, note: Note) {
        let malformed = || self.cluster.stats.malformed.inc();
        match note {
            Note::Joined { r, p, n, i, t, .. } => {
                let (Ok(room), Some(id)) = (RoomId::parse(&r), PeerId::parse(&p)) else {
                    return malformed();
                };
                if n.as_deref().is_some_and(|n| check_name(n).is_err()) {
                    return malformed();
                }
                let mut mirror = self.mirror.writing();
                let info = PeerInfo { id, name: n };
                if let Some(peer) = mirror.join(info, &room, i.into(), &t, &self.cluster.me) {
                    mirror.locals.remove(&peer);
                    // Under the lock: queued in order with this peer's other changes.
                    self.cluster.queue_leave(self.dialect, &peer);
                }
            }
            Note::Left { p, .. } => {
                let Some(id) = PeerId::parse(&p) else {
                    return malformed();
                };
                let remote = self.mirror.writing().leave(&id, &self.cluster.me);
                if let Some(room) = remote {
                    self.cluster.remote_left((self.scope)(room), id);
                }
            }
            Note::Message { f, t, e, d, .. } => {
                let Some(from) = PeerId::parse(&f) else {
                    return malformed();
                };
                // JSON (the note would not have decoded otherwise): dialects write it into
                // their frames as it is.
                let data = Utf8Bytes::from(String::from(Box::<str>::from(d)));
                let message = Event::Message {
                    from: &from,
                    event: &e,
                    data: &data,
                    remote: true,
                };
                let (recipients, room): (Vec<Arc<dyn Member>>, _) = {
                    let mirror = self.mirror.reading();
                    let room = mirror.rooms.room_of(&from).cloned();
                    let recipients = match t.as_deref().map(PeerId::parse) {
                        Some(Some(to)) => mirror
                            .rooms
                            .route(&from, &to)
                            .ok()
                            .and_then(|()| mirror.member(&to))
                            .into_iter()
                            .collect(),
                        Some(None) => Vec::new(),
                        None => match mirror.rooms.others(&from) {
                            Ok(others) => others.filter_map(|p| mirror.member(p)).collect(),
                            Err(_) => Vec::new(),
                        },
                    };
                    (recipients, room)
                };
                if let Some(room) = room.filter(|_| !recipients.is_empty()) {
                    self.cluster
                        .remote_message(&(self.scope)(room), &from, data.as_str());
                }
                for member in recipients {
                    member.deliver(message);
                }
            }
            Note::Evict { p, kick, .. } => {
                if let Some(id) = PeerId::parse(&p) {
                    self.evict_local(&id, kick);
                }
            }
            // The cluster's own notes, not a dialect's.
            Note::Closed { .. } | Note::Kicked { .. } => {}
        }
    }

    /// The TURN credential scope of `room` in this dialect.
    pub(super) fn scope(&self, room: RoomId) -> Scope {
        (self.scope)(room)
    }

    /// Takes a local peer out: its member goes now, its record in Redis after what it sent.
    fn leave_local(&self, peer: &PeerId) -> Option<Arc<dyn Member>> {
        let mut mirror = self.mirror.writing();
        let member = mirror.locals.remove(peer)?;
        self.cluster.queue_leave(self.dialect, peer);
        Some(match member {
            Local::Joined { member, .. } | Local::Pending { member, .. } => member,
        })
    }

    /// A peer registered again that Redis refuses (its name was taken meanwhile, or its room
    /// is full) is evicted: its page reconnects and is told why at its join.
    fn evict_if_refused(&self, peer: PeerId, reply: oneshot::Receiver<Option<JoinReply>>) {
        let me = self.me.clone();
        tokio::spawn(async move {
            let refused = matches!(
                reply.await,
                Ok(Some(
                    JoinReply::NameTaken | JoinReply::Full | JoinReply::TooManyRooms
                ))
            );
            if let (true, Some(me)) = (refused, me.upgrade())
                && let Some(member) = me.leave_local(&peer)
            {
                tracing::warn!(%peer, "cluster: a peer could not be registered again; disconnected");
                member.evict(Eviction::Overflow);
            }
        });
    }

    /// Evicts a local peer (the operator closed its room, or kicked it: `kick`). A kick is
    /// told to every instance, with the client's address, so each keeps its source out and
    /// revokes its allocations, as this one's admin API does.
    fn evict_local(&self, peer: &PeerId, kick: bool) -> Option<Arc<dyn Member>> {
        let room = self.mirror.reading().rooms.room_of(peer).cloned();
        let member = self.leave_local(peer)?;
        member.evict(Eviction::Kicked);
        if kick {
            let note = Note::Kicked {
                sp: self.dialect.to_owned(),
                p: peer.as_str().to_owned(),
                r: room.map(|r| r.as_str().to_owned()),
                c: Some(member.client()),
            };
            self.cluster.publish_all(note.encode());
        }
        Some(member)
    }

    /// Replaces the mirror with the members Redis holds (in order of their joins),
    /// telling local members what changed meanwhile.
    pub(super) fn rebuild(&self, members: Vec<(String, String, Record)>) {
        let mut wanted: HashMap<PeerId, (RoomId, Record)> = HashMap::new();
        for (room, peer, record) in members.iter().cloned() {
            if let (Ok(room), Some(peer)) = (RoomId::parse(&room), PeerId::parse(&peer)) {
                wanted.insert(peer, (room, record));
            }
        }
        let mut remote_left = Vec::new();
        {
            let mut mirror = self.mirror.writing();
            let stale: Vec<PeerId> = mirror
                .rooms
                .list()
                .into_iter()
                .flat_map(|(room, peers)| peers.into_iter().map(move |p| (room.clone(), p.id)))
                .filter(|(room, peer)| wanted.get(peer).is_none_or(|(r, _)| r != room))
                .map(|(_, peer)| peer)
                .collect();
            for peer in stale {
                if let Some(room) = mirror.leave(&peer, &self.cluster.me) {
                    remote_left.push((room, peer));
                }
            }
            for (room, peer, record) in members {
                let (Ok(room), Some(id)) = (RoomId::parse(&room), PeerId::parse(&peer)) else {
                    continue;
                };
                if mirror.rooms.room_of(&id).is_some() {
                    continue;
                }
                let info = PeerInfo { id, name: record.n };
                let me = &self.cluster.me;
                if let Some(peer) = mirror.join(info, &room, record.i.into(), &record.t, me) {
                    mirror.locals.remove(&peer);
                    self.cluster.queue_leave(self.dialect, &peer);
                }
            }
        }
        for (room, peer) in remote_left {
            self.cluster.remote_left((self.scope)(room), peer);
        }
    }

    /// Makes Redis's record of this instance's peers of this dialect (`held`: peer, room)
    /// agree with its sockets: a joined local peer Redis does not hold is registered again
    /// (Redis restarted empty, or took this instance for dead), a record with no socket
    /// behind it (a leave that failed) is removed. Queued under the mirror's lock, so in
    /// order with every join and leave. How many it repaired.
    pub(super) fn reconcile(&self, held: &[(&str, &str)]) -> usize {
        let mirror = self.mirror.writing();
        let mut repaired = 0;
        let held_peers: std::collections::HashSet<&str> = held.iter().map(|(p, _)| *p).collect();
        let limits = self.limits();
        for local in mirror.locals.values() {
            if let Local::Joined { peer, room, .. } = local
                && !held_peers.contains(peer.id.as_str())
            {
                let token = String::new();
                let flags = (true, self.unique);
                let (replied, reply) = oneshot::channel();
                self.cluster.queue_join(
                    self.dialect,
                    room,
                    peer,
                    limits,
                    flags,
                    token,
                    Some(replied),
                );
                self.evict_if_refused(peer.id.clone(), reply);
                repaired += 1;
            }
        }
        for (peer, _) in held {
            let known = PeerId::parse(peer).is_some_and(|p| mirror.locals.contains_key(&p));
            if !known {
                self.cluster.queue(super::Command::Leave {
                    dialect: self.dialect,
                    peer: (*peer).to_owned(),
                });
                repaired += 1;
            }
        }
        repaired
    }
}

impl Registry for Shared {
    fn join(
        &self,
        peer: PeerInfo,
        room: &RoomId,
        terms: Terms,
        member: Arc<dyn Member>,
        welcome: Welcome,
    ) -> Joining {
        if !self.cluster.is_up() {
            return Joining::Done(Err(JoinError::Unavailable));
        }
        let (done, outcome) = oneshot::channel();
        let (replied, reply) = oneshot::channel();
        let token = format!("{:016x}", rand::random::<u64>());
        {
            let mut mirror = self.mirror.writing();
            if mirror.locals.contains_key(&peer.id) {
                return Joining::Done(Err(JoinError::AlreadyJoined));
            }
            mirror.locals.insert(
                peer.id.clone(),
                Local::Pending {
                    member,
                    welcome: std::sync::Mutex::new(Some(welcome)),
                    done: Some(done),
                    token: token.clone(),
                    messages_per_s: terms.messages_per_s,
                },
            );
            let (default_capacity, max_rooms) = self.limits();
            let limits = (terms.capacity.unwrap_or(default_capacity), max_rooms);
            self.cluster.queue_join(
                self.dialect,
                room,
                &peer,
                limits,
                (false, self.unique),
                token.clone(),
                Some(replied),
            );
        }
        let me = self.me.upgrade().expect("a registry in use is alive");
        let wait = Duration::from_millis(self.cluster.cfg.timeout_ms) * 2;
        // The reply is awaited on a task of its own: a socket that stops waiting does not
        // leave a pending member behind.
        tokio::spawn(async move {
            let reply = tokio::time::timeout(wait, reply)
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
            let refused = match reply {
                // The welcome comes with its `Joined` note.
                Some(JoinReply::Ok) => return,
                Some(JoinReply::Full) => JoinError::RoomFull,
                Some(JoinReply::TooManyRooms) => JoinError::TooManyRooms,
                Some(JoinReply::Already) => JoinError::AlreadyJoined,
                Some(JoinReply::NameTaken) => JoinError::NameTaken,
                Some(JoinReply::NotRegistered) | None => JoinError::Unavailable,
            };
            let mut mirror = me.mirror.writing();
            let ours = matches!(
                mirror.locals.get(&peer.id),
                Some(Local::Pending { token: t, .. }) if *t == token
            );
            if !ours {
                return;
            }
            if let Some(Local::Pending {
                done: Some(done), ..
            }) = mirror.locals.remove(&peer.id)
            {
                let _ = done.send(Err(refused));
            }
            if reply.is_none() {
                // Unknown whether the join happened: take it back, in order.
                me.cluster.queue_leave(me.dialect, &peer.id);
            }
        });
        Joining::Pending(Box::pin(async move {
            match tokio::time::timeout(wait * 2, outcome).await {
                Ok(Ok(outcome)) => outcome,
                _ => Err(JoinError::Unavailable),
            }
        }))
    }

    fn leave(&self, peer: &PeerId) -> Option<Left> {
        let mut mirror = self.mirror.writing();
        let local = mirror.locals.remove(peer)?;
        // Under the lock, so in order with this peer's join; after its messages.
        self.cluster.queue_leave(self.dialect, peer);
        if !matches!(local, Local::Joined { .. }) {
            return None;
        }
        mirror.left(peer)
    }

    fn send(
        &self,
        from: &PeerId,
        to: To<'_>,
        event: &str,
        data: &Utf8Bytes,
    ) -> Result<(), RouteError> {
        let message = Event::Message {
            from,
            event,
            data,
            remote: false,
        };
        let note = |t: Option<&PeerId>| {
            let to = t.map(PeerId::as_str);
            Note::message_text(self.dialect, from.as_str(), to, event, data.as_str())
        };
        let me = &self.cluster.me;
        match to {
            To::Peer(_) | To::Named(_) => {
                let (target, local, home) = {
                    let mirror = self.mirror.reading();
                    if mirror.member(from).is_none() {
                        return Err(RouteError::NotJoined);
                    }
                    let target = match to {
                        To::Peer(to) => {
                            mirror.rooms.route(from, to)?;
                            to.clone()
                        }
                        To::Named(name) => mirror.rooms.resolve(from, name)?.clone(),
                        To::Others => unreachable!("handled below"),
                    };
                    mirror.rooms.sent(from, std::time::Instant::now)?;
                    let local = mirror.member(&target);
                    let home = mirror.homes.get(&target).cloned();
                    (target, local, home)
                };
                match (local, home) {
                    (Some(member), _) => member.deliver(message),
                    (None, Some(home)) if home != *me => {
                        self.cluster.publish(&home, note(Some(&target)));
                    }
                    // A local peer still joining, or one that just left.
                    _ => return Err(RouteError::UnknownPeer),
                }
            }
            To::Others => {
                let (locals, homes) = {
                    let mirror = self.mirror.reading();
                    if mirror.member(from).is_none() {
                        return Err(RouteError::NotJoined);
                    }
                    mirror.rooms.sent(from, std::time::Instant::now)?;
                    let mut locals = Vec::new();
                    let mut homes: Vec<Arc<str>> = Vec::new();
                    for other in mirror.rooms.others(from)? {
                        if let Some(m) = mirror.member(other) {
                            locals.push(m);
                        } else if let Some(home) = mirror.homes.get(other)
                            && **home != **me
                            && !homes.contains(home)
                        {
                            homes.push(Arc::clone(home));
                        }
                    }
                    (locals, homes)
                };
                for m in locals {
                    m.deliver(message);
                }
                for home in homes {
                    self.cluster.publish(&home, note(None));
                }
            }
        }
        Ok(())
    }

    fn room_of(&self, peer: &PeerId) -> Option<RoomId> {
        self.mirror.reading().rooms.room_of(peer).cloned()
    }

    fn resolve(&self, from: &PeerId, name: &str) -> Result<PeerId, RouteError> {
        self.mirror.reading().rooms.resolve(from, name).cloned()
    }

    fn set_limits(&self, capacity: usize, max_rooms: usize, messages_per_s: u32) {
        self.capacity.store(capacity, Ordering::Relaxed);
        self.max_rooms.store(max_rooms, Ordering::Relaxed);
        self.mirror
            .writing()
            .rooms
            .set_message_budget(messages_per_s);
    }

    fn rooms(&self) -> Vec<(RoomId, Vec<PeerInfo>)> {
        self.mirror.reading().rooms.list()
    }

    fn members(&self, room: &RoomId) -> Vec<PeerInfo> {
        self.mirror.reading().rooms.members(room).to_vec()
    }

    fn activity(&self) -> Vec<RoomActivity> {
        self.mirror
            .reading()
            .rooms
            .activity(std::time::Instant::now())
    }

    /// Every member of `room` on every instance is evicted and leaves.
    fn close_room(&self, room: &RoomId) -> Vec<PeerId> {
        let members: Vec<(PeerId, Option<Arc<str>>)> = {
            let mirror = self.mirror.reading();
            mirror
                .rooms
                .members(room)
                .iter()
                .map(|p| (p.id.clone(), mirror.homes.get(&p.id).cloned()))
                .collect()
        };
        for (peer, home) in &members {
            self.kick_anywhere(peer, home.as_deref(), false);
        }
        members.into_iter().map(|(peer, _)| peer).collect()
    }

    fn kick(&self, peer: &PeerId) -> Option<(Left, Option<IpAddr>)> {
        let (left, home) = {
            let mirror = self.mirror.reading();
            (mirror.left(peer)?, mirror.homes.get(peer).cloned())
        };
        let client = self.kick_anywhere(peer, home.as_deref(), true);
        Some((left, client))
    }

    /// Whether `peer` is in `room`: for this instance's own peers, only while their socket
    /// is joined.
    fn is_member(&self, room: &RoomId, peer: &PeerId) -> bool {
        let mirror = self.mirror.reading();
        if mirror.rooms.room_of(peer) != Some(room) {
            return false;
        }
        match mirror.homes.get(peer) {
            Some(home) if **home == *self.cluster.me => mirror.member(peer).is_some(),
            _ => true,
        }
    }

    fn counts(&self) -> (usize, usize) {
        let mirror = self.mirror.reading();
        (mirror.rooms.room_count(), mirror.rooms.peer_count())
    }
}

impl Shared {
    /// Evicts `peer` here, or asks its instance to; the client's address if it was here.
    fn kick_anywhere(&self, peer: &PeerId, home: Option<&str>, kick: bool) -> Option<IpAddr> {
        match home {
            Some(home) if home != &*self.cluster.me => {
                let note = Note::Evict {
                    sp: self.dialect.to_owned(),
                    p: peer.as_str().to_owned(),
                    kick,
                };
                self.cluster.publish(home, note.encode());
                None
            }
            _ => self.evict_local(peer, kick).map(|m| m.client()),
        }
    }
}
