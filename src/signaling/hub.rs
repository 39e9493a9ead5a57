//! The hub: the in-process `Registry`, a dialect's rooms plus the `Member` of every joined
//! socket.
//!
//! Every method locks, asks `Rooms` what happened, hands the resulting events to the
//! members (which never wait), and unlocks; nothing here awaits, so a `std::sync` lock is
//! right. It is a read-write lock: a message only reads, so the hot path never waits for
//! another sender, only for a join or leave. A member that cannot take an event evicts itself instead of slowing everyone
//! else; the admin API evicts members the same way.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use axum::extract::ws::Utf8Bytes;

use super::protocol::{PeerId, PeerInfo, RoomId};
use super::registry::{Event, Joining, Member, Registry, To, Welcome};
use super::room::{JoinError, Joined, Left, RoomActivity, Rooms, RouteError, Terms};
use super::signal::Eviction;
use crate::sync::Shared;

#[derive(Debug)]
pub struct Hub {
    /// Sending (the hot path) only reads: two sockets' tasks route at once.
    inner: RwLock<Inner>,
}

#[derive(Debug)]
struct Inner {
    rooms: Rooms,
    /// foldhash: keys are server-made random ids, so no client can choose colliding ones.
    /// Shared, so that a message takes one reference count, not a clone of each handle.
    members: HashMap<PeerId, Arc<dyn Member>, foldhash::fast::RandomState>,
}

impl Hub {
    pub fn new(rooms: Rooms) -> Hub {
        Hub {
            inner: RwLock::new(Inner {
                rooms,
                members: HashMap::default(),
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.reading()
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.writing()
    }

    /// Joins `peer` to `room`: runs `welcome`, then tells each member already present.
    ///
    /// Running the welcome under the lock guarantees it precedes anything another member
    /// sends to the newcomer.
    ///
    /// # Errors
    /// The room is full, there are too many rooms, the peer is in a room already, or its
    /// name is taken; nothing is delivered then.
    pub fn join_now(
        &self,
        peer: PeerInfo,
        room: &RoomId,
        terms: Terms,
        member: Arc<dyn Member>,
        welcome: Welcome,
    ) -> Result<Joined, JoinError> {
        let mut inner = self.write();
        let joined =
            inner
                .rooms
                .handle_join_within(peer.clone(), room, terms, std::time::Instant::now())?;
        welcome(&joined);
        for other in &joined.others {
            if let Some(m) = inner.members.get(&other.id) {
                m.deliver(Event::PeerJoined(&peer));
            }
        }
        inner.members.insert(peer.id, member);
        Ok(joined)
    }
}

impl Inner {
    /// Removes `peer` from its room and tells the others, under the lock that made the change.
    fn leave(&mut self, peer: &PeerId) -> Option<(Left, Option<Arc<dyn Member>>)> {
        let left = self.rooms.handle_leave(peer)?;
        let member = self.members.remove(peer);
        for other in &left.others {
            if let Some(m) = self.members.get(other) {
                m.deliver(Event::PeerLeft(peer));
            }
        }
        Some((left, member))
    }
}

impl Registry for Hub {
    /// Decided at once (`join_now`).
    fn join(
        &self,
        peer: PeerInfo,
        room: &RoomId,
        terms: Terms,
        member: Arc<dyn Member>,
        welcome: Welcome,
    ) -> Joining {
        Joining::Done(self.join_now(peer, room, terms, member, welcome))
    }

    fn leave(&self, peer: &PeerId) -> Option<Left> {
        self.write().leave(peer).map(|(left, _)| left)
    }

    /// Hands the message to its recipients after unlocking: one sender's messages come
    /// from one task, so they still reach each recipient in order.
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
        let one = |inner: &Inner, to: &PeerId| {
            inner
                .members
                .get(to)
                .cloned()
                .ok_or(RouteError::UnknownPeer)
        };
        // Counted and charged once routing accepts it: a refused message costs the room
        // nothing.
        let charge = |rooms: &Rooms| rooms.sent(from, std::time::Instant::now);
        match to {
            To::Peer(to) => {
                let member = {
                    let inner = self.read();
                    inner.rooms.route(from, to)?;
                    let member = one(&inner, to)?;
                    charge(&inner.rooms)?;
                    member
                };
                member.deliver(message);
            }
            To::Named(name) => {
                let member = {
                    let inner = self.read();
                    let to = inner.rooms.resolve(from, name)?;
                    let member = one(&inner, to)?;
                    charge(&inner.rooms)?;
                    member
                };
                member.deliver(message);
            }
            To::Others => {
                let members: Vec<Arc<dyn Member>> = {
                    let inner = self.read();
                    let others = inner.rooms.others(from)?;
                    charge(&inner.rooms)?;
                    others
                        .filter_map(|p| inner.members.get(p).cloned())
                        .collect()
                };
                for m in members {
                    m.deliver(message);
                }
            }
        }
        Ok(())
    }

    fn room_of(&self, peer: &PeerId) -> Option<RoomId> {
        self.read().rooms.room_of(peer).cloned()
    }

    fn resolve(&self, from: &PeerId, name: &str) -> Result<PeerId, RouteError> {
        self.read().rooms.resolve(from, name).cloned()
    }

    /// New room limits (a reload).
    fn set_limits(&self, capacity: usize, max_rooms: usize, messages_per_s: u32) {
        let mut inner = self.write();
        inner.rooms.set_limits(capacity, max_rooms);
        inner.rooms.set_message_budget(messages_per_s);
    }

    /// Every room with its members, sorted by name.
    fn rooms(&self) -> Vec<(RoomId, Vec<PeerInfo>)> {
        self.read().rooms.list()
    }

    fn members(&self, room: &RoomId) -> Vec<PeerInfo> {
        self.read().rooms.members(room).to_vec()
    }

    fn activity(&self) -> Vec<RoomActivity> {
        self.read().rooms.activity(std::time::Instant::now())
    }

    /// Removes every member of `room` and evicts them; returns who was removed.
    fn close_room(&self, room: &RoomId) -> Vec<PeerId> {
        let mut inner = self.write();
        let members: Vec<PeerId> = inner
            .rooms
            .members(room)
            .iter()
            .map(|p| p.id.clone())
            .collect();
        for peer in &members {
            inner.rooms.handle_leave(peer);
            if let Some(member) = inner.members.remove(peer) {
                member.evict(Eviction::Kicked);
            }
        }
        members
    }

    /// Removes `peer` from its room (the others are told `peer_left`) and evicts it.
    fn kick(&self, peer: &PeerId) -> Option<(Left, Option<IpAddr>)> {
        let (left, member) = self.write().leave(peer)?;
        let client = member.map(|member| {
            member.evict(Eviction::Kicked);
            member.client()
        });
        Some((left, client))
    }

    /// Whether `peer` is in `room` right now.
    fn is_member(&self, room: &RoomId, peer: &PeerId) -> bool {
        self.read().rooms.room_of(peer) == Some(room)
    }

    /// Rooms and joined peers right now.
    fn counts(&self) -> (usize, usize) {
        let inner = self.read();
        (inner.rooms.room_count(), inner.rooms.peer_count())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A member that writes down what it is told, and overflows past `capacity` events.
    #[derive(Debug)]
    struct Recorder {
        capacity: usize,
        got: Mutex<Vec<String>>,
        evicted: Mutex<Option<Eviction>>,
    }

    impl Recorder {
        fn new(capacity: usize) -> Arc<Recorder> {
            Arc::new(Recorder {
                capacity,
                got: Mutex::default(),
                evicted: Mutex::default(),
            })
        }

        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.got.lock().unwrap())
        }

        fn evicted(&self) -> Option<Eviction> {
            *self.evicted.lock().unwrap()
        }

        fn push(&self, line: String) {
            let mut got = self.got.lock().unwrap();
            if got.len() >= self.capacity {
                self.evict(Eviction::Overflow);
            } else {
                got.push(line);
            }
        }
    }

    impl Member for Recorder {
        fn deliver(&self, event: Event<'_>) {
            self.push(match event {
                Event::PeerJoined(p) => format!("joined {}", p.name.as_deref().unwrap_or("")),
                Event::PeerLeft(_) => "left".to_owned(),
                Event::Message { event, data, .. } => format!("{event} {}", data.as_str()),
            });
        }
        fn evict(&self, why: Eviction) {
            self.evicted.lock().unwrap().get_or_insert(why);
        }
        fn client(&self) -> std::net::IpAddr {
            std::net::Ipv4Addr::LOCALHOST.into()
        }
    }

    fn info(name: &str) -> PeerInfo {
        PeerInfo {
            id: PeerId::random(),
            name: Some(name.to_owned()),
        }
    }

    /// Joins with a welcome that records the members present, as the first thing the newcomer gets.
    fn join(
        hub: &Hub,
        peer: &PeerInfo,
        room: &RoomId,
        member: &Arc<Recorder>,
    ) -> Result<Joined, JoinError> {
        let m = Arc::clone(member);
        hub.join_now(
            peer.clone(),
            room,
            Terms::default(),
            member.clone(),
            Box::new(move |joined| m.push(format!("welcome {}", joined.others.len()))),
        )
    }

    fn data(json: &'static str) -> Utf8Bytes {
        Utf8Bytes::from_static(json)
    }

    #[test]
    fn join_send_leave_reach_the_right_members() {
        let hub = Hub::new(Rooms::new(4, 10));
        let room = RoomId::parse("r").unwrap();
        let (a, b, c) = (info("a"), info("b"), info("c"));
        let (ma, mb, mc) = (Recorder::new(8), Recorder::new(8), Recorder::new(8));
        join(&hub, &a, &room, &ma).unwrap();
        join(&hub, &b, &room, &mb).unwrap();
        join(&hub, &c, &room, &mc).unwrap();
        assert_eq!(ma.take(), ["welcome 0", "joined b", "joined c"]);
        assert_eq!(mb.take(), ["welcome 1", "joined c"]);
        assert_eq!(mc.take(), ["welcome 2"]);

        hub.send(&a.id, To::Peer(&b.id), "signal", &data("{\"sdp\":1}"))
            .unwrap();
        assert_eq!(mb.take(), ["signal {\"sdp\":1}"]);
        hub.send(&a.id, To::Others, "message", &data("2")).unwrap();
        assert_eq!(mb.take(), ["message 2"]);
        assert_eq!(mc.take(), ["message 2"]);
        assert!(ma.take().is_empty(), "the sender gets nothing back");
        assert_eq!(
            hub.send(&a.id, To::Named("b"), "x", &data("0")),
            Err(RouteError::UnknownPeer),
            "names are not unique here, so nobody is found by name"
        );

        hub.leave(&b.id).unwrap();
        assert_eq!(ma.take(), ["left"]);
        assert_eq!(mc.take(), ["left"]);
        assert_eq!(
            hub.send(&a.id, To::Peer(&b.id), "signal", &data("null")),
            Err(RouteError::UnknownPeer)
        );
        assert_eq!(
            hub.send(&b.id, To::Others, "signal", &data("null")),
            Err(RouteError::NotJoined)
        );
        assert_eq!(hub.counts(), (1, 2));
        assert_eq!(hub.room_of(&a.id), Some(room));
    }

    #[test]
    fn names_route_in_a_unique_name_registry_and_a_taken_name_changes_nothing() {
        let hub = Hub::new(Rooms::new(usize::MAX, 1).with_unique_names());
        let room = RoomId::parse("users").unwrap();
        let (a, b) = (info("alice"), info("bob"));
        let (ma, mb) = (Recorder::new(8), Recorder::new(8));
        join(&hub, &a, &room, &ma).unwrap();
        join(&hub, &b, &room, &mb).unwrap();
        let again = Recorder::new(8);
        assert_eq!(
            join(&hub, &info("bob"), &room, &again),
            Err(JoinError::NameTaken)
        );
        assert!(again.take().is_empty(), "a refused join is not welcomed");
        ma.take();
        mb.take();
        hub.send(&a.id, To::Named("bob"), "offer", &data("{}"))
            .unwrap();
        assert_eq!(mb.take(), ["offer {}"]);
        assert_eq!(
            hub.send(&a.id, To::Named("carol"), "offer", &data("{}")),
            Err(RouteError::UnknownPeer)
        );
    }

    #[test]
    fn a_member_that_overflows_is_evicted_alone() {
        let hub = Hub::new(Rooms::new(4, 10));
        let room = RoomId::parse("r").unwrap();
        let (a, b) = (info("a"), info("b"));
        let (ma, mb) = (Recorder::new(8), Recorder::new(1));
        join(&hub, &a, &room, &ma).unwrap();
        join(&hub, &b, &room, &mb).unwrap();
        // b's single slot holds its welcome; the next event overflows.
        hub.send(&a.id, To::Peer(&b.id), "signal", &data("null"))
            .unwrap();
        assert_eq!(mb.evicted(), Some(Eviction::Overflow));
        assert_eq!(ma.evicted(), None);
    }

    #[test]
    fn closing_a_room_evicts_its_members_only_and_kick_tells_the_others() {
        let hub = Hub::new(Rooms::new(4, 10));
        let (r1, r2) = (RoomId::parse("one").unwrap(), RoomId::parse("two").unwrap());
        let (a, b, c) = (info("a"), info("b"), info("c"));
        let (ma, mb, mc) = (Recorder::new(8), Recorder::new(8), Recorder::new(8));
        join(&hub, &a, &r1, &ma).unwrap();
        join(&hub, &b, &r1, &mb).unwrap();
        join(&hub, &c, &r2, &mc).unwrap();
        let listed: Vec<_> = hub
            .rooms()
            .into_iter()
            .map(|(r, m)| (r.as_str().to_owned(), m.len()))
            .collect();
        assert_eq!(listed, [("one".to_owned(), 2), ("two".to_owned(), 1)]);

        mb.take();
        assert!(hub.kick(&a.id).is_some());
        assert_eq!(ma.evicted(), Some(Eviction::Kicked));
        assert_eq!(mb.take(), ["left"]);
        assert!(hub.kick(&a.id).is_none(), "a kicked peer is gone");

        assert_eq!(hub.close_room(&r1), vec![b.id.clone()]);
        assert_eq!(mb.evicted(), Some(Eviction::Kicked));
        assert_eq!(mc.evicted(), None);
        assert!(mb.take().is_empty(), "closing tells nobody: everyone goes");
        assert_eq!(hub.counts(), (1, 1));
        assert!(hub.close_room(&r1).is_empty());
    }

    /// A member that panics when told anything: a bug, under the registry's write lock.
    #[derive(Debug)]
    struct Buggy;

    impl Member for Buggy {
        fn deliver(&self, _: Event<'_>) {
            panic!("a bug in a member");
        }
        fn evict(&self, _: Eviction) {}
        fn client(&self) -> std::net::IpAddr {
            std::net::Ipv4Addr::LOCALHOST.into()
        }
    }

    /// A panic while the lock is held (which poisons it) must not turn every later call
    /// into a panic too: that would be one bug taking every room down until a restart.
    #[test]
    fn a_panic_under_the_lock_leaves_the_registry_working() {
        let hub = Hub::new(Rooms::new(4, 10));
        let room = RoomId::parse("r").unwrap();
        let buggy = info("buggy");
        hub.join_now(
            buggy.clone(),
            &room,
            Terms::default(),
            Arc::new(Buggy),
            Box::new(|_| {}),
        )
        .unwrap();
        let joining = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            hub.join_now(
                info("b"),
                &room,
                Terms::default(),
                Recorder::new(8),
                Box::new(|_| {}),
            )
        }));
        assert!(joining.is_err(), "the member's panic reached the caller");
        // The registry still answers, and still changes.
        assert!(hub.is_member(&room, &buggy.id));
        let c = Recorder::new(8);
        let other = RoomId::parse("other").unwrap();
        hub.join_now(info("c"), &other, Terms::default(), c, Box::new(|_| {}))
            .unwrap();
        assert_eq!(hub.counts(), (2, 3));
    }
}
