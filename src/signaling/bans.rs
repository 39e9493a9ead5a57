//! `Bans`: whom the operator's actions keep out for a while, so that pages reconnecting on
//! their own do not undo them: rooms it closed (every dialect's room of that name), and the
//! sources of peers it kicked (an IPv4 address or IPv6 network, per scope). Plain data: the
//! caller passes the time and the source already reduced to its prefix.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use super::protocol::ErrorCode;
use crate::model::{RoomId, Scope};

/// Why a join is refused, and whole seconds (at least 1) until it is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptOut {
    /// The operator closed the room (`admin.closed_room_s`).
    RoomClosed(u64),
    /// The operator kicked a peer of this source from this scope (`admin.kicked_peer_s`).
    Kicked(u64),
}

impl KeptOut {
    /// The error a join gets, in every dialect that has coded errors.
    pub fn error(self) -> (ErrorCode, String) {
        match self {
            KeptOut::RoomClosed(secs) => (
                ErrorCode::RoomClosed,
                format!("the operator closed this room; it opens again in {secs} s"),
            ),
            KeptOut::Kicked(secs) => (
                ErrorCode::Kicked,
                format!("the operator removed you; you may come back in {secs} s"),
            ),
        }
    }
}

/// Closed rooms and kicked sources, each until a deadline. Expired entries go whenever a new
/// one is added, so the maps hold only what the operator did in the last
/// `max(closed_room_s, kicked_peer_s)`.
#[derive(Debug, Default)]
pub struct Bans {
    rooms: HashMap<RoomId, Instant>,
    kicked: HashMap<(Scope, IpAddr), Instant>,
}

impl Bans {
    /// `room` refuses joins until `until` (nothing when `until` is not after `now`).
    pub fn close_room(&mut self, room: &RoomId, until: Instant, now: Instant) {
        self.rooms.retain(|_, u| *u > now);
        if until > now {
            self.rooms.insert(room.clone(), until);
        }
    }

    /// Peers from `source` may not enter `scope` until `until`.
    pub fn kick(&mut self, scope: &Scope, source: IpAddr, until: Instant, now: Instant) {
        self.kicked.retain(|_, u| *u > now);
        if until > now {
            self.kicked.insert((scope.clone(), source), until);
        }
    }

    /// Whether a peer from `source` is kept out of `scope` at `now`, and for how long.
    pub fn check(&self, scope: &Scope, source: IpAddr, now: Instant) -> Option<KeptOut> {
        let left = |until: &Instant| {
            until
                .checked_duration_since(now)
                .filter(|d| !d.is_zero())
                .map(|d| d.as_secs().max(1))
        };
        if let Some(secs) = scope.room().and_then(|r| self.rooms.get(r)).and_then(left) {
            return Some(KeptOut::RoomClosed(secs));
        }
        self.kicked
            .get(&(scope.clone(), source))
            .and_then(left)
            .map(KeptOut::Kicked)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::Space;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_closed_room_refuses_every_source_until_its_deadline() {
        let (room, now) = (RoomId::parse("shut").unwrap(), Instant::now());
        let mut bans = Bans::default();
        bans.close_room(&room, now + Duration::from_secs(10), now);
        let scope = Scope::native(room.clone());
        assert_eq!(
            bans.check(&scope, ip("192.0.2.1"), now),
            Some(KeptOut::RoomClosed(10))
        );
        let other_dialect = Scope::in_room(Space::new("sio"), room);
        let later = now + Duration::from_millis(9_500);
        assert_eq!(
            bans.check(&other_dialect, ip("198.51.100.7"), later),
            Some(KeptOut::RoomClosed(1))
        );
        let after = now + Duration::from_secs(10);
        assert_eq!(bans.check(&scope, ip("192.0.2.1"), after), None);
        let open = Scope::native(RoomId::parse("open").unwrap());
        assert_eq!(bans.check(&open, ip("192.0.2.1"), now), None);
        // A deadline not after now keeps nothing closed.
        bans.close_room(&RoomId::parse("open").unwrap(), now, now);
        assert_eq!(bans.check(&open, ip("192.0.2.1"), now), None);
    }

    #[test]
    fn a_kick_keeps_its_source_out_of_its_scope_only() {
        let now = Instant::now();
        let scope = Scope::native(RoomId::parse("r").unwrap());
        let mut bans = Bans::default();
        bans.kick(&scope, ip("192.0.2.1"), now + Duration::from_secs(60), now);
        assert_eq!(
            bans.check(&scope, ip("192.0.2.1"), now),
            Some(KeptOut::Kicked(60))
        );
        // Another source, another room, another dialect's room of that name: not kept out.
        assert_eq!(bans.check(&scope, ip("192.0.2.2"), now), None);
        let elsewhere = Scope::native(RoomId::parse("s").unwrap());
        assert_eq!(bans.check(&elsewhere, ip("192.0.2.1"), now), None);
        let sio = Scope::in_room(Space::new("sio"), RoomId::parse("r").unwrap());
        assert_eq!(bans.check(&sio, ip("192.0.2.1"), now), None);
        let after = now + Duration::from_secs(61);
        assert_eq!(bans.check(&scope, ip("192.0.2.1"), after), None);
    }

    #[test]
    fn expired_entries_are_dropped_when_new_ones_come() {
        let now = Instant::now();
        let mut bans = Bans::default();
        for i in 0..100u8 {
            let scope = Scope::native(RoomId::parse(&format!("r{i}")).unwrap());
            bans.kick(&scope, ip("192.0.2.1"), now + Duration::from_secs(1), now);
            bans.close_room(
                &RoomId::parse(&format!("c{i}")).unwrap(),
                now + Duration::from_secs(1),
                now,
            );
        }
        let later = now + Duration::from_secs(2);
        let scope = Scope::native(RoomId::parse("last").unwrap());
        bans.kick(
            &scope,
            ip("192.0.2.1"),
            later + Duration::from_secs(1),
            later,
        );
        bans.close_room(
            &RoomId::parse("last").unwrap(),
            later + Duration::from_secs(1),
            later,
        );
        assert_eq!((bans.kicked.len(), bans.rooms.len()), (1, 1));
    }
}
