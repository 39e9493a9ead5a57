//! `Observed`: a `Registry` that tells an `Observer` (the webhooks) of every join and leave
//! its inner registry makes: a peer joined (and whether that started its room), a peer
//! left (with its stay, and the room's when that finished it), however the leave came
//! about: the socket's own, an eviction, a kick, an operator closing the room.
//!
//! Joins and leaves are told in the order they took effect on this instance: both happen
//! under one lock here (a join's welcome, where it is told, runs inside the inner
//! registry's join). In a cluster each instance tells of its own peers; the joins another
//! instance decides come back through the shared registry's welcome, and the peers of an
//! instance that died are told by none.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;

use super::protocol::{PeerId, PeerInfo, RoomId};
use super::registry::{Joining, Member, Registry, To, Welcome};
use super::room::{Joined, Left, RoomActivity, RouteError, Stay, Terms};
use crate::sync::Locked;

/// Hears of joins and leaves. Called with the registry's order kept, so it must not wait.
pub trait Observer: Send + Sync + fmt::Debug {
    /// `peer` joined `room` of `dialect` (`None`: the dialect has no rooms); `started`
    /// when its join made the room.
    fn joined(&self, dialect: &'static str, room: Option<&RoomId>, peer: &PeerInfo, started: bool);
    /// `peer` left after `left.stay`; the room `finished` (with `left.room_stay`) when it
    /// was the last. `now` is the time of the leave.
    fn left(
        &self,
        dialect: &'static str,
        room: Option<&RoomId>,
        peer: &PeerId,
        left: &Left,
        now: Instant,
    );
}

/// A registry whose joins and leaves an `Observer` hears of.
#[derive(Debug)]
pub struct Observed {
    inner: Arc<dyn Registry>,
    dialect: &'static str,
    /// Whether the dialect has rooms (not the plain-WebSocket directory).
    rooms: bool,
    observer: Arc<dyn Observer>,
    /// Held over each join and leave with its telling, so they are told in order.
    order: Mutex<()>,
}

impl Observed {
    pub fn new(
        inner: Arc<dyn Registry>,
        dialect: &'static str,
        rooms: bool,
        observer: Arc<dyn Observer>,
    ) -> Observed {
        Observed {
            inner,
            dialect,
            rooms,
            observer,
            order: Mutex::new(()),
        }
    }

    fn room<'a>(&self, room: &'a RoomId) -> Option<&'a RoomId> {
        self.rooms.then_some(room)
    }

    fn tell_left(&self, peer: &PeerId, left: &Left) {
        self.observer.left(
            self.dialect,
            self.room(&left.room),
            peer,
            left,
            Instant::now(),
        );
    }
}

impl Registry for Observed {
    fn join(
        &self,
        peer: PeerInfo,
        room: &RoomId,
        terms: Terms,
        member: Arc<dyn Member>,
        welcome: Welcome,
    ) -> Joining {
        let observer = Arc::clone(&self.observer);
        let (dialect, place) = (self.dialect, self.room(room).cloned());
        let info = peer.clone();
        let welcome: Welcome = Box::new(move |joined: &Joined| {
            welcome(joined);
            observer.joined(dialect, place.as_ref(), &info, joined.created);
        });
        let _order = self.order.locked();
        self.inner.join(peer, room, terms, member, welcome)
    }

    fn leave(&self, peer: &PeerId) -> Option<Left> {
        let _order = self.order.locked();
        let left = self.inner.leave(peer)?;
        self.tell_left(peer, &left);
        Some(left)
    }

    fn send(
        &self,
        from: &PeerId,
        to: To<'_>,
        event: &str,
        data: &Utf8Bytes,
    ) -> Result<(), RouteError> {
        self.inner.send(from, to, event, data)
    }

    fn room_of(&self, peer: &PeerId) -> Option<RoomId> {
        self.inner.room_of(peer)
    }

    fn resolve(&self, from: &PeerId, name: &str) -> Result<PeerId, RouteError> {
        self.inner.resolve(from, name)
    }

    fn set_limits(&self, capacity: usize, max_rooms: usize, messages_per_s: u32) {
        self.inner.set_limits(capacity, max_rooms, messages_per_s);
    }

    fn rooms(&self) -> Vec<(RoomId, Vec<PeerInfo>)> {
        self.inner.rooms()
    }

    fn members(&self, room: &RoomId) -> Vec<PeerInfo> {
        self.inner.members(room)
    }

    fn activity(&self) -> Vec<RoomActivity> {
        self.inner.activity()
    }

    /// Each member removed is told as a leave, the last one finishing the room.
    fn close_room(&self, room: &RoomId) -> Vec<PeerId> {
        let _order = self.order.locked();
        let now = Instant::now();
        let before = self.inner.activity().into_iter().find(|r| r.room == *room);
        let removed = self.inner.close_room(room);
        let Some(before) = before else {
            return removed;
        };
        let since = |age| now.checked_sub(age).unwrap_or(now);
        let room_stay = Stay {
            since: since(before.age),
            messages: before.messages,
        };
        let mut remaining = removed.len();
        for member in before.members.iter().filter(|m| removed.contains(&m.peer)) {
            remaining -= 1;
            let left = Left {
                room: room.clone(),
                others: Vec::new(),
                closed: remaining == 0,
                stay: Stay {
                    since: since(member.age),
                    messages: member.messages,
                },
                room_stay,
            };
            self.observer
                .left(self.dialect, self.room(room), &member.peer, &left, now);
        }
        removed
    }

    fn kick(&self, peer: &PeerId) -> Option<(Left, Option<IpAddr>)> {
        let _order = self.order.locked();
        let (left, client) = self.inner.kick(peer)?;
        self.tell_left(peer, &left);
        Some((left, client))
    }

    fn is_member(&self, room: &RoomId, peer: &PeerId) -> bool {
        self.inner.is_member(room, peer)
    }

    fn counts(&self) -> (usize, usize) {
        self.inner.counts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signaling::hub::Hub;
    use crate::signaling::room::Rooms;
    use crate::signaling::signal::Eviction;

    #[derive(Debug)]
    struct Quiet;

    impl Member for Quiet {
        fn deliver(&self, _: super::super::registry::Event<'_>) {}
        fn evict(&self, _: Eviction) {}
        fn client(&self) -> IpAddr {
            std::net::Ipv4Addr::LOCALHOST.into()
        }
    }

    /// Writes down what it hears: `joined NAME [started]`, `left NAME MESSAGES [finished
    /// ROOM_MESSAGES]`.
    #[derive(Debug, Default)]
    struct Heard(Mutex<Vec<String>>, Mutex<Vec<(PeerId, String)>>);

    impl Heard {
        fn name(&self, id: &PeerId) -> String {
            let names = self.1.locked();
            names.iter().find(|(p, _)| p == id).unwrap().1.clone()
        }
    }

    impl Observer for Heard {
        fn joined(
            &self,
            dialect: &'static str,
            room: Option<&RoomId>,
            peer: &PeerInfo,
            started: bool,
        ) {
            assert_eq!((dialect, room.map(RoomId::as_str)), ("native", Some("r")));
            let name = peer.name.clone().unwrap();
            self.1.locked().push((peer.id.clone(), name.clone()));
            let started = if started { " started" } else { "" };
            self.0.locked().push(format!("joined {name}{started}"));
        }

        fn left(
            &self,
            _: &'static str,
            _: Option<&RoomId>,
            peer: &PeerId,
            left: &Left,
            now: Instant,
        ) {
            assert!(now >= left.stay.since && left.stay.since >= left.room_stay.since);
            let mut line = format!("left {} {}", self.name(peer), left.stay.messages);
            if left.closed {
                line += &format!(" finished {}", left.room_stay.messages);
            }
            self.0.locked().push(line);
        }
    }

    fn join(registry: &Observed, name: &str) -> PeerId {
        let peer = PeerInfo {
            id: PeerId::random(),
            name: Some(name.to_owned()),
        };
        let id = peer.id.clone();
        let room = RoomId::parse("r").unwrap();
        registry
            .join(
                peer,
                &room,
                Terms::default(),
                Arc::new(Quiet),
                Box::new(|_| {}),
            )
            .decided()
            .unwrap();
        id
    }

    #[test]
    fn every_way_out_of_a_room_is_told_once_in_order_with_the_stays() {
        let heard = Arc::new(Heard::default());
        let hub = Arc::new(Hub::new(Rooms::new(10, 10)));
        let registry = Observed::new(hub, "native", true, Arc::clone(&heard) as Arc<dyn Observer>);
        let data = Utf8Bytes::from_static("{}");
        let (a, b, c, d) = (
            join(&registry, "a"),
            join(&registry, "b"),
            join(&registry, "c"),
            join(&registry, "d"),
        );
        registry.send(&a, To::Peer(&b), "signal", &data).unwrap();
        registry.send(&b, To::Others, "signal", &data).unwrap();
        registry.send(&b, To::Others, "signal", &data).unwrap();
        // Its own leave (then a second leave changes nothing), a kick, the room closed.
        assert!(registry.leave(&a).is_some());
        assert!(registry.leave(&a).is_none());
        assert!(registry.kick(&c).is_some());
        assert_eq!(registry.close_room(&RoomId::parse("r").unwrap()).len(), 2);
        // The members the close removed leave by themselves too: nothing more is told.
        assert!(registry.leave(&b).is_none() && registry.leave(&d).is_none());
        assert_eq!(
            *heard.0.locked(),
            [
                "joined a started",
                "joined b",
                "joined c",
                "joined d",
                "left a 1",
                "left c 0",
                "left b 2",
                "left d 0 finished 3",
            ]
        );
        // A new room of the same name starts again.
        join(&registry, "e");
        let e = heard.1.locked().last().unwrap().0.clone();
        registry.leave(&e);
        assert_eq!(
            heard.0.locked()[8..],
            ["joined e started", "left e 0 finished 0"]
        );
    }
}
