//! What allocations used, as plain data: bytes and packets each way and allocation time, by
//! the account that owns them (a signaling peer's credentials in their scope, or a room
//! credential's room), closed allocations and live ones together.
//!
//! The core records each allocation it closes in a `Ledger`; `Core::usage` adds the live
//! ones. An account's closed usage is kept while it holds a live allocation and for
//! `Ledger::KEEP` after its last one closed, so the admin API shows a call's whole usage
//! while it runs, and the ledger never grows with accounts that are gone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::auth::Owner;
use crate::model::{PeerId, RoomId, Scope};

/// Payload relayed one way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Flow {
    pub bytes: u64,
    pub packets: u64,
}

impl Flow {
    fn add(&mut self, other: Flow) {
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.packets = self.packets.saturating_add(other.packets);
    }
}

/// Usage of one allocation, or of an account's allocations together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Live allocations (0 for a closed one).
    pub allocations: usize,
    /// From the client to its peers (ChannelData and Send).
    pub to_peer: Flow,
    /// From peers to the client.
    pub to_client: Flow,
    /// How long the allocations were held, added up.
    pub held: Duration,
    /// When the last of its closed allocations closed (none closed: `None`), so that a room
    /// can leave out what an earlier room of the same name used.
    pub last_closed: Option<Instant>,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        self.allocations += other.allocations;
        self.to_peer.add(other.to_peer);
        self.to_client.add(other.to_client);
        self.held = self.held.saturating_add(other.held);
        self.last_closed = self.last_closed.max(other.last_closed);
    }

    /// Whether any of it happened at or after `start`: a live allocation, or one closed
    /// since.
    pub fn since(&self, start: Instant) -> bool {
        self.allocations > 0 || self.last_closed.is_some_and(|t| t >= start)
    }

    /// Payload bytes relayed both ways.
    pub fn relayed_bytes(&self) -> u64 {
        self.to_peer.bytes.saturating_add(self.to_client.bytes)
    }
}

/// Whose allocations: the owner of the credentials, where usage is worth reporting (REST and
/// static users' allocations belong to no room or peer of this server).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Account {
    /// A signaling peer's credentials, in their scope.
    Peer(Scope, PeerId),
    /// A room credential (`switchboard credentials`, the ice-servers API): a native room.
    Room(RoomId),
}

impl Account {
    pub fn of(owner: &Owner) -> Option<Account> {
        match owner {
            Owner::Peer { scope, peer } => Some(Account::Peer(scope.clone(), peer.clone())),
            Owner::Room(room) => Some(Account::Room(room.clone())),
            Owner::External(_) | Owner::Static(_) => None,
        }
    }
}

/// Closed allocations' usage by account.
#[derive(Debug, Default)]
pub struct Ledger {
    closed: HashMap<Account, Usage>,
    /// When `prune` next looks at every entry.
    next_prune: Option<Instant>,
}

impl Ledger {
    /// How long an account's closed usage is kept after its last allocation closed, when it
    /// holds no other.
    pub const KEEP: Duration = Duration::from_secs(3600);
    /// How often `prune` looks.
    const PRUNE_EVERY: Duration = Duration::from_secs(60);

    /// Adds the usage of an allocation that closed at `now` to its account.
    pub fn record(&mut self, account: Account, usage: &Usage, now: Instant) {
        self.closed.entry(account).or_default().add(&Usage {
            allocations: 0,
            last_closed: Some(now),
            ..*usage
        });
    }

    /// Every account's closed usage.
    pub fn iter(&self) -> impl Iterator<Item = (&Account, &Usage)> {
        self.closed.iter()
    }

    /// Whether `prune` would look now (once a `PRUNE_EVERY`), so that the caller gathers the
    /// live accounts only then.
    pub fn due(&self, now: Instant) -> bool {
        !self.closed.is_empty() && self.next_prune.is_none_or(|next| now >= next)
    }

    /// Forgets the accounts whose last allocation closed `KEEP` ago or more and that are not
    /// `live` (holding an allocation, or a peer still in its room); looks at most once a
    /// `PRUNE_EVERY`. Returns how many it forgot.
    pub fn prune(&mut self, now: Instant, live: impl Fn(&Account) -> bool) -> usize {
        if !self.due(now) {
            return 0;
        }
        self.next_prune = Some(now + Self::PRUNE_EVERY);
        let before = self.closed.len();
        self.closed.retain(|account, usage| {
            usage
                .last_closed
                .is_some_and(|last| now.duration_since(last) < Self::KEEP)
                || live(account)
        });
        before - self.closed.len()
    }

    pub fn len(&self) -> usize {
        self.closed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.closed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Space;

    fn peer(n: u8) -> Account {
        Account::Peer(
            Scope::native(RoomId::parse("r").unwrap()),
            PeerId::parse(&format!("{n:032x}")).unwrap(),
        )
    }

    fn used(bytes: u64, held_s: u64) -> Usage {
        Usage {
            allocations: 1,
            to_peer: Flow { bytes, packets: 1 },
            to_client: Flow {
                bytes: 2 * bytes,
                packets: 2,
            },
            held: Duration::from_secs(held_s),
            last_closed: None,
        }
    }

    #[test]
    fn closed_allocations_add_up_by_account_without_counting_as_live() {
        let now = Instant::now();
        let mut ledger = Ledger::default();
        ledger.record(peer(1), &used(100, 5), now);
        ledger.record(peer(1), &used(10, 1), now);
        ledger.record(peer(2), &used(1, 1), now);
        let one = ledger.iter().find(|(a, _)| **a == peer(1)).unwrap().1;
        assert_eq!(one.allocations, 0);
        assert_eq!(
            one.to_peer,
            Flow {
                bytes: 110,
                packets: 2
            }
        );
        assert_eq!(
            one.to_client,
            Flow {
                bytes: 220,
                packets: 4
            }
        );
        assert_eq!(one.held, Duration::from_secs(6));
        assert_eq!(one.relayed_bytes(), 330);
        assert_eq!(one.last_closed, Some(now));
        assert_eq!(ledger.len(), 2);
    }

    #[test]
    fn a_usage_is_a_rooms_when_it_is_live_or_closed_since_the_room_started() {
        let start = Instant::now();
        let later = start + Duration::from_secs(10);
        let mut ledger = Ledger::default();
        ledger.record(peer(1), &used(1, 1), start);
        let closed = *ledger.iter().next().unwrap().1;
        assert!(closed.since(start) && !closed.since(later));
        let mut live = closed;
        live.add(&used(1, 1));
        assert!(live.since(later), "a live allocation is the room's now");
    }

    #[test]
    fn accounts_are_forgotten_an_hour_after_their_last_close_unless_still_live() {
        let start = Instant::now();
        let mut ledger = Ledger::default();
        ledger.record(peer(1), &used(1, 1), start);
        ledger.record(peer(2), &used(1, 1), start);
        ledger.record(peer(3), &used(1, 1), start + Duration::from_secs(1800));
        assert_eq!(
            ledger.prune(start + Duration::from_secs(1800), |_| false),
            0
        );
        // Looked a minute ago: not again yet.
        let late = start + Ledger::KEEP + Duration::from_secs(1);
        assert_eq!(
            ledger.prune(start + Duration::from_secs(1830), |_| false),
            0
        );
        assert_eq!(ledger.prune(late, |a| *a == peer(2)), 1);
        let left: Vec<&Account> = ledger.iter().map(|(a, _)| a).collect();
        assert!(left.contains(&&peer(2)) && left.contains(&&peer(3)));
        assert_eq!(ledger.len(), 2);
    }

    #[test]
    fn only_peer_and_room_credentials_have_accounts() {
        let room = RoomId::parse("r").unwrap();
        assert_eq!(
            Account::of(&Owner::Room(room.clone())),
            Some(Account::Room(room))
        );
        assert_eq!(Account::of(&Owner::Static("u".into())), None);
        assert_eq!(Account::of(&Owner::External("x".into())), None);
        let scope = Scope::whole(Space::new("ws"));
        let id = PeerId::parse(&format!("{:032x}", 7)).unwrap();
        assert_eq!(
            Account::of(&Owner::Peer {
                scope: scope.clone(),
                peer: id.clone()
            }),
            Some(Account::Peer(scope, id))
        );
    }
}
