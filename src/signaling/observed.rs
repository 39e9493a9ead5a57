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
