//! The hub: the room registry plus the outbox of every joined peer.
//!
//! Every method locks, asks `Rooms` what happened, queues the resulting frames
//! on the peers' bounded outboxes with `try_send`, and unlocks; nothing here
//! awaits, so a `std::sync::Mutex` is right. A peer whose outbox is full is
//! told to disconnect (its `Signal`) instead of slowing everyone else;
//! the admin API evicts peers the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;

pub use super::outbox::{OUTBOX_CAPACITY, Outbox};
use super::protocol::{Payload, PeerId, PeerInfo, RoomId, ServerMsg, encode};
use super::registry::{Registry, Welcome};
use super::room::{JoinError, Joined, Left, Rooms, RouteError};
use super::signal::Eviction;

#[derive(Debug)]
pub struct Hub {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    rooms: Rooms,
    /// foldhash: keys are server-made random ids, so no client can choose colliding ones.
    /// Shared, so that a signal takes one reference count, not a clone of each handle.
    outboxes: HashMap<PeerId, Arc<Outbox>, foldhash::fast::RandomState>,
}

impl Hub {
    pub fn new(capacity: usize, max_rooms: usize) -> Hub {
        Hub {
            inner: Mutex::new(Inner {
                rooms: Rooms::new(capacity, max_rooms),
                outboxes: HashMap::default(),
            }),
        }
    }
}

impl Registry for Hub {
    /// Joins `peer` to `room`: queues the `welcome` built by `welcome` from the
    /// members already present on `outbox`, then `peer_joined` to each of them.
    ///
    /// Queuing the welcome under the lock guarantees it precedes any signal
    /// another member sends to the newcomer.
    ///
    /// # Errors
    /// See [`JoinError`]; nothing is queued then.
    fn join(
        &self,
        peer: PeerInfo,
        room: &RoomId,
        outbox: Outbox,
        welcome: Welcome<'_>,
    ) -> Result<Joined, JoinError> {
        let mut inner = self.inner.lock().expect("hub lock");
        let joined = inner.rooms.handle_join(peer.clone(), room)?;
        outbox.deliver(encode(&welcome(&joined.others)).into());
        let frame: Utf8Bytes = encode(&ServerMsg::PeerJoined { peer: peer.clone() }).into();
        for other in &joined.others {
            if let Some(o) = inner.outboxes.get(&other.id) {
                o.deliver(frame.clone());
            }
        }
        inner.outboxes.insert(peer.id, Arc::new(outbox));
        Ok(joined)
    }

    /// Removes `peer` from its room and queues `peer_left` to the others.
    fn leave(&self, peer: &PeerId) -> Option<Left> {
        let mut inner = self.inner.lock().expect("hub lock");
        let left = inner.rooms.handle_leave(peer)?;
        inner.outboxes.remove(peer);
        let frame: Utf8Bytes = encode(&ServerMsg::PeerLeft {
            peer_id: peer.clone(),
        })
        .into();
        for other in &left.others {
            if let Some(o) = inner.outboxes.get(other) {
                o.deliver(frame.clone());
            }
        }
        Some(left)
    }

    /// Queues `payload` from `from` to `to`, who must share a room.
    ///
    /// # Errors
    /// See [`RouteError`].
    fn signal(&self, from: &PeerId, to: &PeerId, payload: Payload) -> Result<(), RouteError> {
        let outbox = {
            let inner = self.inner.lock().expect("hub lock");
            inner.rooms.route(from, to)?;
            inner
                .outboxes
                .get(to)
                .cloned()
                .ok_or(RouteError::UnknownPeer)?
        };
        let msg = ServerMsg::Signal {
            from: from.clone(),
            payload,
        };
        outbox.deliver(encode(&msg).into());
        Ok(())
    }

    /// New room limits (a reload).
    fn set_limits(&self, capacity: usize, max_rooms: usize) {
        self.inner
            .lock()
            .expect("hub lock")
            .rooms
            .set_limits(capacity, max_rooms);
    }

    /// Every room with its members, sorted by name.
    fn rooms(&self) -> Vec<(RoomId, Vec<PeerInfo>)> {
        self.inner.lock().expect("hub lock").rooms.list()
    }

    /// Removes every member of `room` and evicts their sockets; returns who was removed.
    fn close_room(&self, room: &RoomId) -> Vec<PeerId> {
        let mut inner = self.inner.lock().expect("hub lock");
        let members: Vec<PeerId> = inner
            .rooms
            .members(room)
            .iter()
            .map(|p| p.id.clone())
            .collect();
        for peer in &members {
            inner.rooms.handle_leave(peer);
            if let Some(outbox) = inner.outboxes.remove(peer) {
                outbox.signal.evict(Eviction::Kicked);
            }
        }
        members
    }

    /// Removes `peer` from its room (the others are told `peer_left`) and evicts its socket.
    fn kick(&self, peer: &PeerId) -> Option<Left> {
        let outbox = self
            .inner
            .lock()
            .expect("hub lock")
            .outboxes
            .get(peer)
            .cloned()?;
        let left = self.leave(peer);
        outbox.signal.evict(Eviction::Kicked);
        left
    }

    /// Whether `peer` is in `room` right now.
    fn is_member(&self, room: &RoomId, peer: &PeerId) -> bool {
        self.inner.lock().expect("hub lock").rooms.room_of(peer) == Some(room)
    }

    /// Rooms and joined peers right now.
    fn counts(&self) -> (usize, usize) {
        let inner = self.inner.lock().expect("hub lock");
        (inner.rooms.room_count(), inner.rooms.peer_count())
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    fn outbox(capacity: usize) -> (Outbox, mpsc::Receiver<Utf8Bytes>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            Outbox {
                tx,
                signal: Arc::default(),
                direct: None,
            },
            rx,
        )
    }

    fn info() -> PeerInfo {
        PeerInfo {
            id: PeerId::random(),
            name: None,
        }
    }

    fn welcome(id: &PeerId, room: &RoomId) -> impl FnOnce(&[PeerInfo]) -> ServerMsg {
        let (id, room) = (id.clone(), room.clone());
        move |others| ServerMsg::Welcome {
            peer_id: id,
            room,
            peers: others.to_vec(),
            ice_servers: vec![],
            ice_ttl_s: None,
        }
    }

    fn next(rx: &mut mpsc::Receiver<Utf8Bytes>) -> ServerMsg {
        serde_json::from_str(rx.try_recv().expect("a queued frame").as_str()).expect("valid frame")
    }

    #[test]
    fn join_signal_leave_reach_the_right_outboxes() {
        let hub = Hub::new(4, 10);
        let room = RoomId::parse("r").unwrap();
        let (a, b) = (info(), info());
        let (oa, mut ra) = outbox(8);
        let (ob, mut rb) = outbox(8);
        hub.join(a.clone(), &room, oa, Box::new(welcome(&a.id, &room)))
            .unwrap();
        assert!(matches!(next(&mut ra), ServerMsg::Welcome { peers, .. } if peers.is_empty()));
        hub.join(b.clone(), &room, ob, Box::new(welcome(&b.id, &room)))
            .unwrap();
        assert!(
            matches!(next(&mut rb), ServerMsg::Welcome { peers, .. } if peers == vec![a.clone()])
        );
        assert_eq!(next(&mut ra), ServerMsg::PeerJoined { peer: b.clone() });

        hub.signal(&a.id, &b.id, serde_json::json!({"sdp": "x"}).into())
            .unwrap();
        assert_eq!(
            next(&mut rb),
            ServerMsg::Signal {
                from: a.id.clone(),
                payload: serde_json::json!({"sdp": "x"}).into()
            }
        );
        assert!(ra.try_recv().is_err(), "the sender gets nothing back");

        hub.leave(&b.id).unwrap();
        assert_eq!(
            next(&mut ra),
            ServerMsg::PeerLeft {
                peer_id: b.id.clone()
            }
        );
        assert_eq!(
            hub.signal(&a.id, &b.id, serde_json::Value::Null.into()),
            Err(RouteError::UnknownPeer)
        );
        assert_eq!(hub.counts(), (1, 1));
    }

    #[test]
    fn a_full_outbox_flags_only_that_peer() {
        let hub = Hub::new(4, 10);
        let room = RoomId::parse("r").unwrap();
        let (a, b) = (info(), info());
        let (oa, _ra) = outbox(8);
        let (ob, _rb) = outbox(1);
        let flag_a = Arc::clone(&oa.signal);
        let flag_b = Arc::clone(&ob.signal);
        hub.join(a.clone(), &room, oa, Box::new(welcome(&a.id, &room)))
            .unwrap();
        hub.join(b.clone(), &room, ob, Box::new(welcome(&b.id, &room)))
            .unwrap();
        // b's single slot holds its welcome; the next frame overflows.
        hub.signal(&a.id, &b.id, serde_json::Value::Null.into())
            .unwrap();
        assert!(flag_b.is_closed());
        assert_eq!(flag_b.reason(), Some(Eviction::Overflow));
        assert!(!flag_a.is_closed());
    }

    #[test]
    fn closing_a_room_evicts_its_members_only_and_kick_tells_the_others() {
        let hub = Hub::new(4, 10);
        let (r1, r2) = (RoomId::parse("one").unwrap(), RoomId::parse("two").unwrap());
        let (a, b, c) = (info(), info(), info());
        let (oa, _ra) = outbox(8);
        let (ob, mut rb) = outbox(8);
        let (oc, _rc) = outbox(8);
        let (ea, eb, ec) = (
            Arc::clone(&oa.signal),
            Arc::clone(&ob.signal),
            Arc::clone(&oc.signal),
        );
        hub.join(a.clone(), &r1, oa, Box::new(welcome(&a.id, &r1)))
            .unwrap();
        hub.join(b.clone(), &r1, ob, Box::new(welcome(&b.id, &r1)))
            .unwrap();
        hub.join(c.clone(), &r2, oc, Box::new(welcome(&c.id, &r2)))
            .unwrap();
        let listed: Vec<_> = hub
            .rooms()
            .into_iter()
            .map(|(r, m)| (r.as_str().to_owned(), m.len()))
            .collect();
        assert_eq!(listed, [("one".to_owned(), 2), ("two".to_owned(), 1)]);

        next(&mut rb); // welcome
        assert!(hub.kick(&a.id).is_some());
        assert_eq!(ea.reason(), Some(Eviction::Kicked));
        assert!(ea.is_closed());
        assert_eq!(
            next(&mut rb),
            ServerMsg::PeerLeft {
                peer_id: a.id.clone()
            }
        );
        assert!(hub.kick(&a.id).is_none(), "a kicked peer is gone");

        assert_eq!(hub.close_room(&r1), vec![b.id.clone()]);
        assert!(eb.is_closed() && !ec.is_closed());
        assert_eq!(hub.counts(), (1, 1));
        assert!(hub.close_room(&r1).is_empty());
    }
}
