//! The room registry: who is in which room, as plain data.
//!
//! `Rooms` performs no I/O, holds no sockets and never awaits. Each `handle_*`
//! call returns what happened (who must be told); the caller turns that into
//! messages. `hub::Hub` puts it behind the `registry::Registry` seam, which
//! is what the dialects call (and what shared room state would implement).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::protocol::{PeerId, PeerInfo, RoomId};
use crate::limiter::TokenBucket;
use crate::sync::Locked;

/// A room's message budget holds this many seconds of its rate at once.
pub const MESSAGE_BURST_S: u32 = 2;

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    AlreadyJoined,
    RoomFull,
    TooManyRooms,
    /// Names are unique in this registry's rooms, and another member has this one.
    NameTaken,
    /// A registry shared by several instances cannot be reached.
    Unavailable,
}

/// Why a signal cannot be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    NotJoined,
    UnknownPeer,
    /// The sender's room has sent more messages than its budget allows (`charge`).
    RoomBusy,
}

/// What a join asks of its room beyond the dialect's limits: its join token's claims.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Terms {
    /// The room's capacity for this join, in place of the dialect's.
    pub capacity: Option<usize>,
    /// The messages per second the room may send, all its members together, from this join
    /// on, in place of the dialect's (`Rooms::set_message_budget`).
    pub messages_per_s: Option<u32>,
}

impl Terms {
    /// The terms of a join token's grant.
    pub fn of(grant: &crate::tokens::Grant) -> Terms {
        Terms {
            capacity: grant.capacity,
            messages_per_s: grant.messages_per_s,
        }
    }
}

/// The result of a successful join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The members already present, in order of arrival; each must be told `peer_joined`
    /// (none in a directory).
    pub others: Vec<PeerInfo>,
    /// Whether this join created the room.
    pub created: bool,
}

/// The result of a leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Left {
    pub room: RoomId,
    /// The members still present; each must be told `peer_left` (none in a directory).
    pub others: Vec<PeerId>,
    /// Whether the room was removed because it became empty.
    pub closed: bool,
    /// How long the peer stayed and what it sent.
    pub stay: Stay,
    /// The room's, since its first member joined (the leaver's messages counted): its
    /// totals when it `closed`.
    pub room_stay: Stay,
}

/// Since when a member was in a room, or a room existed, and the messages sent meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stay {
    pub since: Instant,
    pub messages: u64,
}

/// What a room has done so far (`Rooms::activity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomActivity {
    pub room: RoomId,
    /// Since its first member joined.
    pub age: Duration,
    /// Messages its members sent (those who left too), each counted once however many
    /// members it reached.
    pub messages: u64,
    /// Its members, in order of arrival.
    pub members: Vec<MemberActivity>,
}

/// What a member has done since it joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberActivity {
    pub peer: PeerId,
    /// Since it joined.
    pub age: Duration,
    /// Messages it sent that were routed.
    pub messages: u64,
}

#[derive(Debug)]
struct Room {
    members: Vec<PeerInfo>,
    /// When its first member joined.
    started: Instant,
    /// Messages its members sent (those who left too), shared with their seats.
    messages: Arc<AtomicU64>,
    /// The message budget a join token gave it (the latest join that carried one).
    claimed: Option<u32>,
    /// Its messages' bucket, with the rate it was made for; made at the first message.
    bucket: Mutex<Option<(u32, TokenBucket)>>,
}

impl Room {
    fn new(started: Instant) -> Room {
        Room {
            members: Vec::new(),
            started,
            messages: Arc::default(),
            claimed: None,
            bucket: Mutex::new(None),
        }
    }
}

/// A joined peer's place: its room, since when, and how many messages it sent.
#[derive(Debug)]
struct Seat {
    room: RoomId,
    joined: Instant,
    /// Counted under the registry's read lock, as messages are routed.
    sent: AtomicU64,
    /// The room's count, which each message adds to as well.
    room_messages: Arc<AtomicU64>,
}

/// All rooms and their members.
#[derive(Debug)]
pub struct Rooms {
    capacity: usize,
    max_rooms: usize,
    rooms: HashMap<RoomId, Room>,
    /// The seat of each joined peer; a peer is in at most one room.
    /// foldhash: peer ids are server-made random ids (room names, chosen by clients, keep SipHash).
    membership: HashMap<PeerId, Seat, foldhash::fast::RandomState>,
    /// Each named member by room and name, when names are unique in a room (`with_unique_names`).
    names: Option<HashMap<RoomId, HashMap<String, PeerId>>>,
    /// Whether members are told of each other's joins and leaves (not in a `directory`).
    presence: bool,
    /// Messages per second a room may send, all members together (0: no budget), unless a
    /// join token gave it another.
    messages_per_s: u32,
    /// Rooms with a budget a join token gave them: while none and `messages_per_s` is 0,
    /// a message costs no lookup here.
    claimed_rooms: usize,
}

impl Rooms {
    pub fn new(capacity: usize, max_rooms: usize) -> Rooms {
        Rooms {
            capacity,
            max_rooms,
            rooms: HashMap::new(),
            membership: HashMap::default(),
            names: None,
            presence: true,
            messages_per_s: 0,
            claimed_rooms: 0,
        }
    }

    /// One unbounded room of named users who are not told of each other: a directory in
    /// which a user is found by name (the plain-WebSocket dialect). A join or leave costs
    /// no copy of the member list, however many are logged in.
    pub fn directory() -> Rooms {
        Rooms {
            presence: false,
            ..Rooms::new(usize::MAX, 1).with_unique_names()
        }
    }

    /// Whether no two members of a room may have the same name.
    pub fn unique_names(&self) -> bool {
        self.names.is_some()
    }

    /// Rooms in which no two members have the same name, and members can be found by name.
    pub fn with_unique_names(mut self) -> Rooms {
        self.names = Some(HashMap::new());
        self
    }

    /// Adds `peer` to `room_id` at `now`, creating the room when it does not exist, on a
    /// join token's `terms`: its capacity in place of the rooms' for this join, and its
    /// message budget for the room from now on.
    ///
    /// # Errors
    /// The peer is already in a room, the room is full, or no more rooms may be created.
    pub fn handle_join_within(
        &mut self,
        peer: PeerInfo,
        room_id: &RoomId,
        terms: Terms,
        now: Instant,
    ) -> Result<Joined, JoinError> {
        let capacity = terms.capacity;
        if self.membership.contains_key(&peer.id) {
            return Err(JoinError::AlreadyJoined);
        }
        if let (Some(names), Some(name)) = (&self.names, &peer.name)
            && names.get(room_id).is_some_and(|n| n.contains_key(name))
        {
            return Err(JoinError::NameTaken);
        }
        let created = !self.rooms.contains_key(room_id);
        if created && self.rooms.len() >= self.max_rooms {
            return Err(JoinError::TooManyRooms);
        }
        let room = self
            .rooms
            .entry(room_id.clone())
            .or_insert_with(|| Room::new(now));
        if room.members.len() >= capacity.unwrap_or(self.capacity) {
            return Err(JoinError::RoomFull);
        }
        let others = if self.presence {
            room.members.clone()
        } else {
            Vec::new()
        };
        self.membership.insert(
            peer.id.clone(),
            Seat {
                room: room_id.clone(),
                joined: now,
                sent: AtomicU64::new(0),
                room_messages: Arc::clone(&room.messages),
            },
        );
        if let (Some(names), Some(name)) = (&mut self.names, &peer.name) {
            let room = names.entry(room_id.clone()).or_default();
            room.insert(name.clone(), peer.id.clone());
        }
        room.members.push(peer);
        if let Some(per_s) = terms.messages_per_s {
            if room.claimed.is_none() {
                self.claimed_rooms += 1;
            }
            room.claimed = Some(per_s);
        }
        Ok(Joined { others, created })
    }

    /// What `peer`'s leave would say of its stay and its room's: `None` when it is in no
    /// room.
    pub fn stays(&self, peer: &PeerId) -> Option<(Stay, Stay)> {
        let seat = self.membership.get(peer)?;
        let room = self.rooms.get(&seat.room)?;
        let messages = room.messages.load(Ordering::Relaxed);
        Some((
            Stay {
                since: seat.joined,
                messages: seat.sent.load(Ordering::Relaxed),
            },
            Stay {
                since: room.started,
                messages,
            },
        ))
    }

    /// Removes `peer` from its room; `None` when it was in none.
    pub fn handle_leave(&mut self, peer: &PeerId) -> Option<Left> {
        let (stay, room_stay) = self.stays(peer)?;
        let Seat { room: room_id, .. } = self.membership.remove(peer)?;
        let room = self
            .rooms
            .get_mut(&room_id)
            .expect("membership points at a live room");
        let position = room.members.iter().position(|m| &m.id == peer);
        let gone = position.map(|i| room.members.remove(i));
        if let (
            Some(names),
            Some(PeerInfo {
                name: Some(name), ..
            }),
        ) = (&mut self.names, gone)
            && let Some(room) = names.get_mut(&room_id)
        {
            room.remove(&name);
            if room.is_empty() {
                names.remove(&room_id);
            }
        }
        let others: Vec<PeerId> = if self.presence {
            room.members.iter().map(|m| m.id.clone()).collect()
        } else {
            Vec::new()
        };
        let closed = room.members.is_empty();
        if closed
            && let Some(room) = self.rooms.remove(&room_id)
            && room.claimed.is_some()
        {
            self.claimed_rooms -= 1;
        }
        Some(Left {
            room: room_id,
            others,
            closed,
            stay,
            room_stay,
        })
    }

    /// Checks that `from` may send to `to`: both are in the same room.
    ///
    /// # Errors
    /// `from` is in no room, or `to` is not in `from`'s room.
    pub fn route(&self, from: &PeerId, to: &PeerId) -> Result<(), RouteError> {
        let room = self.room_of(from).ok_or(RouteError::NotJoined)?;
        match self.room_of(to) {
            Some(r) if r == room && from != to => Ok(()),
            _ => Err(RouteError::UnknownPeer),
        }
    }

    /// Counts one routed message of `from`, first charging it to its room's budget (the
    /// clock, `now`, is read only when a budget applies).
    ///
    /// # Errors
    /// `RoomBusy`: the room has sent its budget's worth (the message is not counted);
    /// `NotJoined`: `from` is in no room.
    pub fn sent(&self, from: &PeerId, now: impl FnOnce() -> Instant) -> Result<(), RouteError> {
        let seat = self.membership.get(from).ok_or(RouteError::NotJoined)?;
        if self.budgeted() {
            self.charge(&seat.room, now())?;
        }
        seat.sent.fetch_add(1, Ordering::Relaxed);
        seat.room_messages.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Charges one message to `room_id`'s budget at `now`.
    fn charge(&self, room_id: &RoomId, now: Instant) -> Result<(), RouteError> {
        let Some(room) = self.rooms.get(room_id) else {
            return Ok(());
        };
        let per_s = room.claimed.unwrap_or(self.messages_per_s);
        if per_s == 0 {
            return Ok(());
        }
        let mut bucket = room.bucket.locked();
        let bucket = match &mut *bucket {
            Some((rate, bucket)) if *rate == per_s => bucket,
            slot => {
                let burst = per_s.saturating_mul(MESSAGE_BURST_S);
                &mut slot.insert((per_s, TokenBucket::new(per_s, burst, now))).1
            }
        };
        if bucket.take(now) {
            Ok(())
        } else {
            Err(RouteError::RoomBusy)
        }
    }

    /// Whether any room has a message budget (else `sent` reads no clock).
    pub fn budgeted(&self) -> bool {
        self.messages_per_s != 0 || self.claimed_rooms != 0
    }

    /// The messages per second a room may send when no join token said (0: no budget).
    pub fn set_message_budget(&mut self, per_s: u32) {
        self.messages_per_s = per_s;
    }

    /// The member called `name` in `from`'s room (which may be `from` itself).
    ///
    /// # Errors
    /// `from` is in no room, or nobody of that name is in it (or names are not unique here).
    pub fn resolve(&self, from: &PeerId, name: &str) -> Result<&PeerId, RouteError> {
        let room = self.room_of(from).ok_or(RouteError::NotJoined)?;
        self.names
            .as_ref()
            .and_then(|names| names.get(room)?.get(name))
            .ok_or(RouteError::UnknownPeer)
    }

    /// The other members of `from`'s room, in order of arrival.
    ///
    /// # Errors
    /// `from` is in no room.
    pub fn others(&self, from: &PeerId) -> Result<impl Iterator<Item = &PeerId>, RouteError> {
        let room = self.room_of(from).ok_or(RouteError::NotJoined)?;
        Ok(self
            .members(room)
            .iter()
            .map(|m| &m.id)
            .filter(move |id| *id != from))
    }

    /// The room `peer` is in.
    pub fn room_of(&self, peer: &PeerId) -> Option<&RoomId> {
        self.membership.get(peer).map(|seat| &seat.room)
    }

    /// The members of a room, in order of arrival.
    pub fn members(&self, room: &RoomId) -> &[PeerInfo] {
        self.rooms.get(room).map_or(&[], |r| &r.members)
    }

    /// New limits for the joins that come next; rooms above them keep their members.
    pub fn set_limits(&mut self, capacity: usize, max_rooms: usize) {
        self.capacity = capacity;
        self.max_rooms = max_rooms;
    }

    /// Every room with its members, sorted by name.
    pub fn list(&self) -> Vec<(RoomId, Vec<PeerInfo>)> {
        let mut rooms: Vec<_> = self
            .rooms
            .iter()
            .map(|(id, r)| (id.clone(), r.members.clone()))
            .collect();
        rooms.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        rooms
    }

    /// What every room and member has done up to `now`, rooms sorted by name.
    pub fn activity(&self, now: Instant) -> Vec<RoomActivity> {
        let mut rooms: Vec<RoomActivity> = self
            .rooms
            .iter()
            .map(|(id, room)| {
                let members: Vec<MemberActivity> = room
                    .members
                    .iter()
                    .filter_map(|m| {
                        let seat = self.membership.get(&m.id)?;
                        Some(MemberActivity {
                            peer: m.id.clone(),
                            age: now.saturating_duration_since(seat.joined),
                            messages: seat.sent.load(Ordering::Relaxed),
                        })
                    })
                    .collect();
                RoomActivity {
                    room: id.clone(),
                    age: now.saturating_duration_since(room.started),
                    messages: room.messages.load(Ordering::Relaxed),
                    members,
                }
            })
            .collect();
        rooms.sort_by(|a, b| a.room.as_str().cmp(b.room.as_str()));
        rooms
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    pub fn peer_count(&self) -> usize {
        self.membership.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Rooms {
        /// A join now, on no token's terms.
        fn handle_join(&mut self, peer: PeerInfo, room_id: &RoomId) -> Result<Joined, JoinError> {
            self.handle_join_within(peer, room_id, Terms::default(), Instant::now())
        }
    }

    fn peer(n: &str) -> PeerInfo {
        PeerInfo {
            id: PeerId::random(),
            name: Some(n.to_owned()),
        }
    }

    fn room(name: &str) -> RoomId {
        RoomId::parse(name).unwrap()
    }

    #[test]
    fn first_join_creates_and_later_joins_see_earlier_members() {
        let mut rooms = Rooms::new(4, 10);
        let (a, b, c) = (peer("a"), peer("b"), peer("c"));
        let r = room("r");
        let ja = rooms.handle_join(a.clone(), &r).unwrap();
        assert!(ja.created && ja.others.is_empty());
        let jb = rooms.handle_join(b.clone(), &r).unwrap();
        assert!(!jb.created);
        assert_eq!(jb.others, vec![a.clone()]);
        let jc = rooms.handle_join(c.clone(), &r).unwrap();
        assert_eq!(jc.others, vec![a.clone(), b.clone()]);
        assert_eq!(rooms.members(&r), &[a, b, c]);
        assert_eq!((rooms.room_count(), rooms.peer_count()), (1, 3));
    }

    #[test]
    fn full_room_refuses_and_keeps_its_members() {
        let mut rooms = Rooms::new(2, 10);
        let r = room("r");
        rooms.handle_join(peer("a"), &r).unwrap();
        rooms.handle_join(peer("b"), &r).unwrap();
        let c = peer("c");
        assert_eq!(rooms.handle_join(c.clone(), &r), Err(JoinError::RoomFull));
        assert_eq!(rooms.members(&r).len(), 2);
        // The refused peer is in no room and may join another.
        assert_eq!(rooms.room_of(&c.id), None);
        assert!(rooms.handle_join(c, &room("other")).is_ok());
    }

    #[test]
    fn one_room_per_peer() {
        let mut rooms = Rooms::new(4, 10);
        let a = peer("a");
        rooms.handle_join(a.clone(), &room("r1")).unwrap();
        assert_eq!(
            rooms.handle_join(a.clone(), &room("r2")),
            Err(JoinError::AlreadyJoined)
        );
        assert_eq!(rooms.room_count(), 1);
    }

    #[test]
    fn room_limit_counts_only_new_rooms() {
        let mut rooms = Rooms::new(4, 1);
        rooms.handle_join(peer("a"), &room("r1")).unwrap();
        assert_eq!(
            rooms.handle_join(peer("b"), &room("r2")),
            Err(JoinError::TooManyRooms)
        );
        assert!(rooms.handle_join(peer("c"), &room("r1")).is_ok());
    }

    #[test]
    fn leave_tells_the_others_and_removes_empty_rooms() {
        let mut rooms = Rooms::new(4, 10);
        let r = room("r");
        let (a, b) = (peer("a"), peer("b"));
        rooms.handle_join(a.clone(), &r).unwrap();
        rooms.handle_join(b.clone(), &r).unwrap();
        let left = rooms.handle_leave(&a.id).unwrap();
        assert_eq!(left.others, vec![b.id.clone()]);
        assert!(!left.closed);
        let left = rooms.handle_leave(&b.id).unwrap();
        assert!(left.closed && left.others.is_empty());
        assert_eq!(rooms.room_count(), 0);
        assert_eq!(rooms.handle_leave(&b.id), None);
    }

    #[test]
    fn routing_needs_a_shared_room() {
        let mut rooms = Rooms::new(4, 10);
        let (a, b, c) = (peer("a"), peer("b"), peer("c"));
        let outsider = PeerId::random();
        rooms.handle_join(a.clone(), &room("r1")).unwrap();
        rooms.handle_join(b.clone(), &room("r1")).unwrap();
        rooms.handle_join(c.clone(), &room("r2")).unwrap();
        assert_eq!(rooms.route(&a.id, &b.id), Ok(()));
        assert_eq!(rooms.route(&a.id, &c.id), Err(RouteError::UnknownPeer));
        assert_eq!(rooms.route(&a.id, &a.id), Err(RouteError::UnknownPeer));
        assert_eq!(rooms.route(&a.id, &outsider), Err(RouteError::UnknownPeer));
        assert_eq!(rooms.route(&outsider, &a.id), Err(RouteError::NotJoined));
    }

    #[test]
    fn unique_names_are_refused_twice_in_a_room_found_by_name_and_freed_on_leave() {
        let mut rooms = Rooms::new(usize::MAX, 10).with_unique_names();
        let r = room("r");
        let (a, b) = (peer("a"), peer("b"));
        rooms.handle_join(a.clone(), &r).unwrap();
        rooms.handle_join(b.clone(), &r).unwrap();
        let a2 = peer("a");
        assert_eq!(rooms.handle_join(a2.clone(), &r), Err(JoinError::NameTaken));
        assert_eq!(rooms.room_of(&a2.id), None);
        // The same name in another room is another member.
        assert!(rooms.handle_join(peer("a"), &room("r2")).is_ok());
        assert_eq!(rooms.resolve(&b.id, "a"), Ok(&a.id));
        assert_eq!(rooms.resolve(&a.id, "a"), Ok(&a.id));
        assert_eq!(rooms.resolve(&b.id, "z"), Err(RouteError::UnknownPeer));
        assert_eq!(rooms.resolve(&a2.id, "a"), Err(RouteError::NotJoined));
        rooms.handle_leave(&a.id);
        assert_eq!(rooms.resolve(&b.id, "a"), Err(RouteError::UnknownPeer));
        assert!(rooms.handle_join(a2, &r).is_ok());
    }

    #[test]
    fn names_may_repeat_unless_unique_and_others_excludes_the_sender() {
        let mut rooms = Rooms::new(4, 10);
        let r = room("r");
        let (a, b, c) = (peer("a"), peer("a"), peer("c"));
        rooms.handle_join(a.clone(), &r).unwrap();
        rooms.handle_join(b.clone(), &r).unwrap();
        rooms.handle_join(c.clone(), &r).unwrap();
        assert_eq!(rooms.resolve(&c.id, "a"), Err(RouteError::UnknownPeer));
        let others: Vec<_> = rooms.others(&b.id).unwrap().cloned().collect();
        assert_eq!(others, vec![a.id, c.id]);
        assert!(rooms.others(&PeerId::random()).is_err());
    }

    #[test]
    fn a_directory_finds_users_by_name_and_tells_nobody() {
        let mut rooms = Rooms::directory();
        let users = room("users");
        let (a, b) = (peer("a"), peer("b"));
        assert!(
            rooms
                .handle_join(a.clone(), &users)
                .unwrap()
                .others
                .is_empty()
        );
        assert!(
            rooms
                .handle_join(b.clone(), &users)
                .unwrap()
                .others
                .is_empty()
        );
        assert_eq!(
            rooms.handle_join(peer("a"), &users),
            Err(JoinError::NameTaken)
        );
        assert_eq!(rooms.resolve(&a.id, "b"), Ok(&b.id));
        let left = rooms.handle_leave(&a.id).unwrap();
        assert!(left.others.is_empty() && !left.closed);
        assert!(rooms.handle_leave(&b.id).unwrap().closed);
    }

    /// How many of `n` messages from `from` at `now` the room's budget lets through.
    fn passed(rooms: &Rooms, from: &PeerId, n: usize, now: Instant) -> usize {
        (0..n).filter(|_| rooms.sent(from, || now).is_ok()).count()
    }

    #[test]
    fn a_rooms_message_budget_is_shared_by_its_members_and_refills() {
        let t0 = Instant::now();
        let mut rooms = Rooms::new(4, 10);
        rooms.set_message_budget(10);
        let (a, b, c) = (peer("a"), peer("b"), peer("c"));
        rooms.handle_join(a.clone(), &room("busy")).unwrap();
        rooms.handle_join(b.clone(), &room("busy")).unwrap();
        rooms.handle_join(c.clone(), &room("calm")).unwrap();
        // Two seconds' worth at once, for the room, whoever sends.
        assert_eq!(passed(&rooms, &a.id, 15, t0), 15);
        assert_eq!(passed(&rooms, &b.id, 15, t0), 5);
        assert_eq!(rooms.sent(&a.id, || t0), Err(RouteError::RoomBusy));
        // Another room has a budget of its own.
        assert_eq!(passed(&rooms, &c.id, 20, t0), 20);
        // Then the rate.
        let later = t0 + std::time::Duration::from_millis(500);
        assert_eq!(passed(&rooms, &a.id, 100, later), 5);
        // Not joined: refused (routing would say so too).
        assert_eq!(
            rooms.sent(&PeerId::random(), || t0),
            Err(RouteError::NotJoined)
        );
        // What passed is counted, what the budget refused is not.
        let busy = &rooms.activity(later)[0];
        assert_eq!((busy.room.as_str(), busy.messages), ("busy", 25));
    }

    #[test]
    fn activity_counts_each_members_messages_and_keeps_those_of_members_who_left() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut rooms = Rooms::new(4, 10);
        let (a, b, c) = (peer("a"), peer("b"), peer("c"));
        let join = |rooms: &mut Rooms, p: &PeerInfo, r: &str, at: Instant| {
            rooms
                .handle_join_within(p.clone(), &room(r), Terms::default(), at)
                .unwrap();
        };
        join(&mut rooms, &a, "r", s(0));
        join(&mut rooms, &b, "r", s(10));
        join(&mut rooms, &c, "other", s(20));
        let never = || -> Instant { unreachable!("no budget, no clock") };
        for _ in 0..3 {
            rooms.sent(&a.id, never).unwrap();
        }
        rooms.sent(&b.id, never).unwrap();
        let r = &rooms.activity(s(30))[1];
        assert_eq!((r.room.as_str(), r.age, r.messages), ("r", s(30) - s(0), 4));
        let members: Vec<(PeerId, Duration, u64)> = r
            .members
            .iter()
            .map(|m| (m.peer.clone(), m.age, m.messages))
            .collect();
        assert_eq!(
            members,
            vec![
                (a.id.clone(), Duration::from_secs(30), 3),
                (b.id.clone(), Duration::from_secs(20), 1)
            ]
        );
        // A leaves: its messages stay the room's, its seat goes.
        rooms.handle_leave(&a.id);
        let r = &rooms.activity(s(40))[1];
        assert_eq!((r.messages, r.members.len()), (4, 1));
        // A's return is a new seat, counted from zero; a closed room starts over.
        join(&mut rooms, &a, "r", s(50));
        assert_eq!(rooms.activity(s(50))[1].members[1].messages, 0);
        rooms.handle_leave(&a.id);
        rooms.handle_leave(&b.id);
        join(&mut rooms, &a, "r", s(60));
        let r = &rooms.activity(s(61))[1];
        assert_eq!((r.age, r.messages), (Duration::from_secs(1), 0));
    }

    #[test]
    fn a_join_tokens_budget_is_the_rooms_until_it_closes() {
        let t0 = Instant::now();
        let mut rooms = Rooms::new(4, 10);
        let (a, b) = (peer("a"), peer("b"));
        // No budget configured: nothing is charged, not even a lookup.
        rooms.handle_join(a.clone(), &room("r")).unwrap();
        assert_eq!(passed(&rooms, &a.id, 1000, t0), 1000);
        let terms = Terms {
            capacity: None,
            messages_per_s: Some(3),
        };
        rooms
            .handle_join_within(b.clone(), &room("r"), terms, t0)
            .unwrap();
        assert_eq!(
            passed(&rooms, &a.id, 10, t0),
            6,
            "two seconds of 3 a second"
        );
        // The room closes, and with it its budget.
        rooms.handle_leave(&a.id);
        rooms.handle_leave(&b.id);
        assert_eq!(rooms.claimed_rooms, 0);
        rooms.handle_join(a.clone(), &room("r")).unwrap();
        assert_eq!(passed(&rooms, &a.id, 1000, t0), 1000);
    }
}
