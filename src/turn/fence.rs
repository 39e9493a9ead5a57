//! The room fence (`turn.fence = "room"`): which peer addresses an allocation of a room's
//! member may reach. Plain data, behind a lock in the core.
//!
//! Each member of a room (a `Scope` with a room) has the addresses it is known by: where its
//! signaling socket comes from, its TURN allocations' client and relayed addresses, and the
//! addresses in the ICE candidates (and SDP connection lines) it sent through signaling. A
//! member's allocation may open a permission to an IP only when another member of its room
//! is known by that IP: a valid credential cannot reach a service nobody in the room
//! announced, and one member alone cannot announce its way to an arbitrary address.
//!
//! What a peer is known by is kept while it is in the room and forgotten when its allocations
//! close after it left (`forget`). Each member keeps at most `PER_PEER` addresses: announcing
//! more forgets the oldest ones (an ICE restart announces new addresses; the newest count).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use crate::model::{PeerId, Scope};

/// Addresses one member is known by, at most; the oldest go first.
pub const PER_PEER: usize = 32;

/// Who is known by which addresses, per room.
#[derive(Debug, Default)]
pub struct Fence {
    rooms: HashMap<Scope, HashMap<PeerId, VecDeque<IpAddr>>>,
}

impl Fence {
    /// `peer` of `scope` is known by `ips` too (repeats are ignored); returns how many were new.
    pub fn announce(
        &mut self,
        scope: &Scope,
        peer: &PeerId,
        ips: impl IntoIterator<Item = IpAddr>,
    ) -> usize {
        let known = self
            .rooms
            .entry(scope.clone())
            .or_default()
            .entry(peer.clone())
            .or_default();
        let mut added = 0;
        for ip in ips {
            let ip = super::policy::normalize(ip);
            if ip.is_unspecified() || known.contains(&ip) {
                continue;
            }
            if known.len() == PER_PEER {
                known.pop_front();
            }
            known.push_back(ip);
            added += 1;
        }
        added
    }

    /// Whether `peer` of `scope` is known by every one of `ips` already.
    pub fn knows(&self, scope: &Scope, peer: &PeerId, ips: &[IpAddr]) -> bool {
        self.rooms
            .get(scope)
            .and_then(|room| room.get(peer))
            .is_some_and(|known| {
                ips.iter().all(|ip| {
                    let ip = super::policy::normalize(*ip);
                    ip.is_unspecified() || known.contains(&ip)
                })
            })
    }

    /// Forgets what `peer` of `scope` was known by (it left, and its allocations closed).
    pub fn forget(&mut self, scope: &Scope, peer: &PeerId) {
        if let Some(room) = self.rooms.get_mut(scope) {
            room.remove(peer);
            if room.is_empty() {
                self.rooms.remove(scope);
            }
        }
    }

    /// Forgets every member of every scope of a room of that name (the operator closed it).
    pub fn forget_room(&mut self, room: &crate::model::RoomId) {
        self.rooms.retain(|scope, _| scope.room() != Some(room));
    }

    /// Whether a member of `scope` other than `requester` (`None`: a room credential, which is
    /// nobody) is known by `ip`.
    pub fn admits(&self, scope: &Scope, requester: Option<&PeerId>, ip: IpAddr) -> bool {
        let ip = super::policy::normalize(ip);
        self.rooms.get(scope).is_some_and(|room| {
            room.iter()
                .any(|(peer, known)| Some(peer) != requester && known.contains(&ip))
        })
    }

    /// Members known, over every room (for tests and metrics).
    pub fn members(&self) -> usize {
        self.rooms.values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RoomId;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_member_reaches_what_the_others_of_its_room_are_known_by_only() {
        let team = Scope::native(RoomId::parse("team").unwrap());
        let other = Scope::native(RoomId::parse("other").unwrap());
        let (ann, bob, eve) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut fence = Fence::default();
        fence.announce(&team, &ann, [ip("198.51.100.1")]);
        fence.announce(&team, &bob, [ip("203.0.113.7"), ip("::ffff:203.0.113.8")]);
        fence.announce(&other, &eve, [ip("192.0.2.66")]);
        assert!(fence.admits(&team, Some(&ann), ip("203.0.113.7")));
        // An IPv4-mapped form is the IPv4 address.
        assert!(fence.admits(&team, Some(&ann), ip("203.0.113.8")));
        assert!(fence.admits(&team, Some(&ann), ip("::ffff:203.0.113.7")));
        assert!(fence.admits(&team, Some(&bob), ip("198.51.100.1")));
        // Not its own addresses, not another room's, not anybody's.
        assert!(!fence.admits(&team, Some(&ann), ip("198.51.100.1")));
        assert!(!fence.admits(&team, Some(&ann), ip("192.0.2.66")));
        assert!(!fence.admits(&team, Some(&ann), ip("192.0.2.1")));
        // A room credential is nobody: every member counts.
        assert!(fence.admits(&team, None, ip("198.51.100.1")));

        assert!(fence.knows(&team, &bob, &[ip("203.0.113.7"), ip("::ffff:203.0.113.8")]));
        assert!(!fence.knows(&team, &bob, &[ip("203.0.113.7"), ip("203.0.113.9")]));
        fence.forget(&team, &bob);
        assert!(!fence.admits(&team, Some(&ann), ip("203.0.113.7")));
        fence.forget(&team, &ann);
        fence.forget_room(&RoomId::parse("other").unwrap());
        assert_eq!(fence.members(), 0);
    }

    #[test]
    fn a_member_is_known_by_its_newest_addresses_only() {
        let team = Scope::native(RoomId::parse("team").unwrap());
        let (ann, bob) = (PeerId::random(), PeerId::random());
        let mut fence = Fence::default();
        let many = (0..PER_PEER as u32 + 5)
            .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000_u32 + i)));
        assert_eq!(fence.announce(&team, &bob, many), PER_PEER + 5);
        assert_eq!(
            fence.announce(&team, &bob, [ip("0.0.0.0"), ip("10.0.0.36")]),
            0
        );
        assert!(!fence.admits(&team, Some(&ann), ip("10.0.0.0")));
        assert!(fence.admits(&team, Some(&ann), ip("10.0.0.36")));
    }
}
