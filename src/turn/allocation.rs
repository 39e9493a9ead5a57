//! The state of one allocation as plain data: lifetime, permissions and
//! channel bindings, driven by the caller's clock (RFC 8656 sections 7-12).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::budget::{BandwidthLimit, Budget};
use super::policy::{Reach, normalize};

pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// After a binding expires, its number and peer stay reserved this long (RFC 8656 section 12).
pub const CHANNEL_QUARANTINE: Duration = Duration::from_secs(300);
pub const MIN_CHANNEL: u16 = 0x4000;
/// RFC 8656 narrowed channels to 0x4000-0x4FFF, but RFC 5766 clients (coturn's own
/// among them) pick from 0x4000-0x7FFF; accepting both costs nothing, since
/// ChannelData is recognised by its first two bits either way.
pub const MAX_CHANNEL: u16 = 0x7FFF;

/// Permissions one allocation may hold: an IP, or one transport address of an IP the policy
/// opens only address by address, counts one. Browsers need a few per allocation (one per
/// remote candidate address); the cap bounds the memory and the once-a-second sweep.
pub const MAX_PERMISSIONS: usize = 128;

/// The lifetime granted for a requested one: the default when absent, else the request
/// capped at the maximum and raised to the default (RFC 8656 sections 7.2 and 7.3), so
/// that LIFETIME=0 in an Allocate does not make a throwaway allocation. A Refresh with
/// LIFETIME=0, which deletes, is its caller's business.
pub fn granted_lifetime(requested: Option<Duration>) -> Duration {
    requested.map_or(DEFAULT_LIFETIME, |r| {
        r.clamp(DEFAULT_LIFETIME, MAX_LIFETIME)
    })
}

/// Why a ChannelBind was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBindError {
    /// The number is outside 0x4000..=0x7FFF (400).
    BadNumber,
    /// The number is bound to another peer (400).
    NumberTaken,
    /// The peer is bound to another number (400).
    PeerTaken,
    /// The peer needs a new permission and the allocation holds [`MAX_PERMISSIONS`] (508).
    PermissionsFull,
}

/// The allocation holds [`MAX_PERMISSIONS`] and the request needs more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PermissionsFull;

#[derive(Debug, Clone, Copy)]
struct Channel {
    peer: SocketAddr,
    expires: Instant,
}

/// What the data path knows of an address on the server's own IP, for [`AllocState::passes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayAt {
    /// No live relay of this server is there.
    Nothing,
    /// A live relay the allocation may exchange data with.
    Reachable,
    /// A live relay of another room (`turn.fence`).
    Fenced,
}

/// What [`AllocState::revoke`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Revoked {
    pub permissions: usize,
    pub channels: usize,
}

#[derive(Debug, Clone)]
pub struct AllocState {
    pub expires: Instant,
    /// Permissions by IP (RFC 8656: permissions ignore ports), with their reach: every port
    /// ([`Reach::AnyPort`]), every port but the server's listeners ([`Reach::OwnIp`], whose
    /// Sends are checked again), or only the server's live relays there ([`Reach::Relays`]).
    permissions: HashMap<IpAddr, (Instant, Reach)>,
    channels: HashMap<u16, Channel>,
    by_peer: HashMap<SocketAddr, u16>,
    /// What it may relay each way, and what it did (`turn::budget`); unlimited until the
    /// core sets it.
    pub budget: Budget,
}

impl AllocState {
    pub fn new(now: Instant, lifetime: Duration) -> AllocState {
        AllocState {
            expires: now + lifetime,
            permissions: HashMap::new(),
            channels: HashMap::new(),
            by_peer: HashMap::new(),
            budget: Budget::new(0, BandwidthLimit::Allocation, now),
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.expires
    }

    pub fn refresh(&mut self, now: Instant, lifetime: Duration) {
        self.expires = now + lifetime;
    }

    /// Installs or refreshes a permission for `peer`'s IP, of `reach`.
    ///
    /// # Errors
    /// A new permission would exceed [`MAX_PERMISSIONS`]; nothing is installed.
    pub fn permit(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        reach: Reach,
    ) -> Result<(), PermissionsFull> {
        self.permit_all(now, &[(peer, reach)])
    }

    /// Installs or refreshes every permission of one request, or none.
    ///
    /// # Errors
    /// The new ones would exceed [`MAX_PERMISSIONS`]; nothing is installed.
    pub fn permit_all(
        &mut self,
        now: Instant,
        peers: &[(SocketAddr, Reach)],
    ) -> Result<(), PermissionsFull> {
        let grants: Vec<(IpAddr, Reach)> =
            peers.iter().map(|(p, r)| (normalize(p.ip()), *r)).collect();
        if self.new_permissions(&grants) > MAX_PERMISSIONS.saturating_sub(self.permission_count()) {
            // Expired ones may still be waiting for the sweep.
            self.sweep_permissions(now);
            if self.new_permissions(&grants)
                > MAX_PERMISSIONS.saturating_sub(self.permission_count())
            {
                return Err(PermissionsFull);
            }
        }
        let expires = now + PERMISSION_LIFETIME;
        for (ip, reach) in grants {
            self.permissions.insert(ip, (expires, reach));
        }
        Ok(())
    }

    /// How many distinct IPs of `grants` have no permission yet.
    fn new_permissions(&self, grants: &[(IpAddr, Reach)]) -> usize {
        grants
            .iter()
            .enumerate()
            .filter(|&(i, (ip, _))| {
                !grants[..i].iter().any(|(other, _)| other == ip)
                    && !self.permissions.contains_key(ip)
            })
            .count()
    }

    /// Whether `peer`'s IP has a live permission. One of [`Reach::Relays`] lets data pass
    /// only to and from the live relays on that IP, which the caller checks: see
    /// [`AllocState::passes`].
    pub fn is_permitted(&self, now: Instant, peer: SocketAddr) -> bool {
        self.permission(now, peer).is_some()
    }

    /// The live permission for `peer`'s IP, by its reach.
    pub fn permission(&self, now: Instant, peer: SocketAddr) -> Option<Reach> {
        self.permissions
            .get(&normalize(peer.ip()))
            .filter(|(expires, _)| now < *expires)
            .map(|(_, reach)| *reach)
    }

    /// Whether data may pass to and from `peer` now: a live permission for its IP; when
    /// that opens only the server's relays there, `peer` is one this allocation may reach;
    /// when it opens the server's own address (`allow_peers`), `peer` is not a relay fenced
    /// from it (`relay` says which, asked only for those two reaches).
    pub fn passes(
        &self,
        now: Instant,
        peer: SocketAddr,
        relay: impl FnOnce(&SocketAddr) -> RelayAt,
    ) -> bool {
        match self.permission(now, peer) {
            None => false,
            Some(Reach::Relays) => relay(&normalized(peer)) == RelayAt::Reachable,
            Some(Reach::OwnIp) => relay(&normalized(peer)) != RelayAt::Fenced,
            Some(Reach::AnyPort) => true,
        }
    }

    /// Binds `number` to `peer`, or refreshes the binding; also installs or refreshes the
    /// peer's permission, of `reach`.
    ///
    /// # Errors
    /// See [`ChannelBindError`].
    pub fn bind_channel(
        &mut self,
        now: Instant,
        number: u16,
        peer: SocketAddr,
        reach: Reach,
    ) -> Result<(), ChannelBindError> {
        if !(MIN_CHANNEL..=MAX_CHANNEL).contains(&number) {
            return Err(ChannelBindError::BadNumber);
        }
        let peer = normalized(peer);
        if let Some(c) = self.channels.get(&number)
            && c.peer != peer
            && now < c.expires + CHANNEL_QUARANTINE
        {
            return Err(ChannelBindError::NumberTaken);
        }
        if let Some(n) = self.by_peer.get(&peer)
            && *n != number
            && self
                .channels
                .get(n)
                .is_some_and(|c| now < c.expires + CHANNEL_QUARANTINE)
        {
            return Err(ChannelBindError::PeerTaken);
        }
        self.permit(now, peer, reach)
            .map_err(|PermissionsFull| ChannelBindError::PermissionsFull)?;
        if let Some(old) = self.channels.insert(
            number,
            Channel {
                peer,
                expires: now + CHANNEL_LIFETIME,
            },
        ) && old.peer != peer
        {
            self.by_peer.remove(&old.peer);
        }
        self.by_peer.insert(peer, number);
        Ok(())
    }

    /// The peer bound to `number`, if the binding is live and the peer still has a
    /// permission: a channel outlives its permission by five minutes unless refreshed,
    /// and data for a peer without one is discarded (RFC 8656 section 12).
    pub fn channel_peer(&self, now: Instant, number: u16) -> Option<SocketAddr> {
        self.channel_target(now, number).map(|(peer, _)| peer)
    }

    /// [`AllocState::channel_peer`] with the reach of its permission: with
    /// [`Reach::Relays`], data passes only while the peer is a live relay.
    pub fn channel_target(&self, now: Instant, number: u16) -> Option<(SocketAddr, Reach)> {
        let peer = self.channels.get(&number).filter(|c| now < c.expires)?.peer;
        Some((peer, self.permission(now, peer)?))
    }

    /// The live channel bound to `peer`.
    pub fn channel_of(&self, now: Instant, peer: SocketAddr) -> Option<u16> {
        let peer = normalized(peer);
        let n = *self.by_peer.get(&peer)?;
        self.channels.get(&n).filter(|c| now < c.expires).map(|_| n)
    }

    /// Drops expired permissions and channels whose quarantine is over.
    pub fn sweep(&mut self, now: Instant) {
        self.sweep_permissions(now);
        let by_peer = &mut self.by_peer;
        self.channels.retain(|_, c| {
            let keep = now < c.expires + CHANNEL_QUARANTINE;
            if !keep {
                by_peer.remove(&c.peer);
            }
            keep
        });
    }

    fn sweep_permissions(&mut self, now: Instant) {
        self.permissions.retain(|_, (exp, _)| now < *exp);
    }

    /// Applies a new policy: a permission takes the reach `reach_of` its IP now has, or
    /// goes when it has none; a channel goes when `allows` refuses its peer.
    pub fn revoke(
        &mut self,
        reach_of: impl Fn(IpAddr) -> Option<Reach>,
        allows: impl Fn(SocketAddr) -> bool,
    ) -> Revoked {
        let mut revoked = Revoked::default();
        let before = self.permissions.len();
        self.permissions
            .retain(|ip, (_, reach)| match reach_of(*ip) {
                None => false,
                Some(fresh) => {
                    *reach = fresh;
                    true
                }
            });
        revoked.permissions = before - self.permissions.len();
        let by_peer = &mut self.by_peer;
        self.channels.retain(|_, c| {
            let keep = allows(c.peer);
            if !keep {
                by_peer.remove(&c.peer);
                revoked.channels += 1;
            }
            keep
        });
        revoked
    }

    pub fn permission_count(&self) -> usize {
        self.permissions.len()
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }
}

fn normalized(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(normalize(peer.ip()), peer.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lifetimes_default_and_cap() {
        assert_eq!(granted_lifetime(None), DEFAULT_LIFETIME);
        for short in [0, 1, 30, 599] {
            assert_eq!(
                granted_lifetime(Some(Duration::from_secs(short))),
                DEFAULT_LIFETIME,
                "{short} s is raised to the default"
            );
        }
        assert_eq!(
            granted_lifetime(Some(Duration::from_secs(1800))),
            Duration::from_secs(1800)
        );
        assert_eq!(
            granted_lifetime(Some(Duration::from_secs(99_999))),
            MAX_LIFETIME
        );
    }

    #[test]
    fn permissions_expire_after_five_minutes_and_ignore_ports() {
        let t0 = Instant::now();
        let mut a = AllocState::new(t0, DEFAULT_LIFETIME);
        a.permit(t0, addr("8.8.8.8:53"), Reach::AnyPort).unwrap();
        assert!(a.is_permitted(t0 + Duration::from_secs(299), addr("8.8.8.8:9")));
        assert!(a.is_permitted(t0, addr("[::ffff:8.8.8.8]:53")));
        assert!(!a.is_permitted(t0 + PERMISSION_LIFETIME, addr("8.8.8.8:53")));
        assert!(!a.is_permitted(t0, addr("8.8.4.4:53")));
        a.sweep(t0 + PERMISSION_LIFETIME);
        assert_eq!(a.permission_count(), 0);
    }

    /// Clients keep one permission per IP (Firefox does): one for a relay of the server
    /// opens every live relay on that IP, and nothing else there.
    #[test]
    fn a_relay_permission_opens_the_live_relays_of_its_ip_only() {
        let t0 = Instant::now();
        let mut a = AllocState::new(t0, DEFAULT_LIFETIME);
        a.permit(t0, addr("198.51.99.7:50000"), Reach::Relays)
            .unwrap();
        let live = |p: &SocketAddr| match p.port() {
            50000 | 50002 => RelayAt::Reachable,
            // A relay of another room (`turn.fence`).
            50006 => RelayAt::Fenced,
            _ => RelayAt::Nothing,
        };
        assert!(a.passes(t0, addr("198.51.99.7:50000"), live));
        assert!(a.passes(t0, addr("[::ffff:198.51.99.7]:50002"), live));
        assert!(!a.passes(t0, addr("198.51.99.7:3478"), live));
        assert!(!a.passes(t0, addr("198.51.99.7:50004"), live));
        assert!(!a.passes(t0, addr("198.51.99.7:50006"), live));
        assert!(!a.passes(t0 + PERMISSION_LIFETIME, addr("198.51.99.7:50000"), live));
        a.bind_channel(t0, 0x4000, addr("198.51.99.7:50002"), Reach::Relays)
            .unwrap();
        assert_eq!(
            a.channel_target(t0, 0x4000),
            Some((addr("198.51.99.7:50002"), Reach::Relays))
        );
        assert_eq!(a.permission_count(), 1);
    }

    #[test]
    fn permissions_are_capped_per_allocation_and_installed_all_or_none() {
        let t0 = Instant::now();
        let mut a = AllocState::new(t0, DEFAULT_LIFETIME);
        let ip = |i: usize| SocketAddr::new(IpAddr::from([8, 8, (i / 256) as u8, i as u8]), 9);
        for i in 0..MAX_PERMISSIONS - 1 {
            a.permit(t0, ip(i), Reach::AnyPort).unwrap();
        }
        let two = [(ip(1000), Reach::AnyPort), (ip(1001), Reach::AnyPort)];
        assert_eq!(a.permit_all(t0, &two), Err(PermissionsFull));
        assert!(!a.is_permitted(t0, ip(1000)), "none of a refused request");
        // Refreshing, and the same address twice, take no new room.
        let same = [
            (ip(0), Reach::AnyPort),
            (ip(1000), Reach::AnyPort),
            (ip(1000), Reach::AnyPort),
        ];
        a.permit_all(t0, &same).unwrap();
        assert_eq!(a.permission_count(), MAX_PERMISSIONS);
        assert_eq!(
            a.bind_channel(t0, 0x4000, ip(1001), Reach::AnyPort),
            Err(ChannelBindError::PermissionsFull)
        );
        a.bind_channel(t0, 0x4000, ip(5), Reach::AnyPort).unwrap();
        // Expired permissions make room even before the sweep.
        let later = t0 + PERMISSION_LIFETIME;
        a.permit(later, ip(1001), Reach::AnyPort).unwrap();
        assert_eq!(a.permission_count(), 1);
    }

    #[test]
    fn revoke_removes_what_the_policy_no_longer_allows() {
        let t0 = Instant::now();
        let mut a = AllocState::new(t0, DEFAULT_LIFETIME);
        a.permit(t0, addr("8.8.8.8:53"), Reach::AnyPort).unwrap();
        a.permit(t0, addr("1.1.1.1:53"), Reach::AnyPort).unwrap();
        a.bind_channel(t0, 0x4000, addr("9.9.9.9:7"), Reach::AnyPort)
            .unwrap();
        a.bind_channel(t0, 0x4001, addr("198.51.99.7:50000"), Reach::Relays)
            .unwrap();
        // The lists changed: 9.9.9.9 is refused, 1.1.1.1 is a relay address only now.
        let gone = a.revoke(
            |ip| match ip.to_string().as_str() {
                "9.9.9.9" => None,
                "1.1.1.1" | "198.51.99.7" => Some(Reach::Relays),
                _ => Some(Reach::AnyPort),
            },
            |p| p.ip().to_string() != "9.9.9.9",
        );
        assert_eq!(
            gone,
            Revoked {
                permissions: 1,
                channels: 1
            }
        );
        assert_eq!(a.permission(t0, addr("8.8.8.8:1")), Some(Reach::AnyPort));
        assert_eq!(a.permission(t0, addr("1.1.1.1:1")), Some(Reach::Relays));
        assert!(!a.is_permitted(t0, addr("9.9.9.9:7")));
        assert_eq!(a.channel_peer(t0, 0x4000), None);
        assert!(a.channel_peer(t0, 0x4001).is_some());
    }

    #[test]
    fn a_channel_carries_nothing_once_its_permission_has_expired() {
        let t0 = Instant::now();
        let mut a = AllocState::new(t0, DEFAULT_LIFETIME);
        let peer = addr("8.8.8.8:1000");
        a.bind_channel(t0, 0x4000, peer, Reach::AnyPort).unwrap();
        assert_eq!(a.channel_peer(t0, 0x4000), Some(peer));
        let later = t0 + PERMISSION_LIFETIME;
        assert!(later < t0 + CHANNEL_LIFETIME, "the channel is still bound");
        assert_eq!(a.channel_peer(later, 0x4000), None);
        a.permit(later, peer, Reach::AnyPort).unwrap();
        assert_eq!(
            a.channel_peer(later, 0x4000),
            Some(peer),
            "a new permission"
        );
    }

    #[test]
    fn channel_binding_rules() {
        let t0 = Instant::now();
        let mut a = AllocState::new(t0, DEFAULT_LIFETIME);
        let (p1, p2) = (addr("8.8.8.8:1000"), addr("8.8.8.8:2000"));
        assert_eq!(
            a.bind_channel(t0, 0x3FFF, p1, Reach::AnyPort),
            Err(ChannelBindError::BadNumber)
        );
        assert_eq!(
            a.bind_channel(t0, 0x8000, p1, Reach::AnyPort),
            Err(ChannelBindError::BadNumber)
        );
        a.bind_channel(t0, 0x4000, p1, Reach::AnyPort).unwrap();
        assert!(
            a.is_permitted(t0, addr("8.8.8.8:3")),
            "a channel installs a permission"
        );
        assert_eq!(a.channel_peer(t0, 0x4000), Some(p1));
        assert_eq!(a.channel_of(t0, p1), Some(0x4000));
        // Refreshing the same binding is fine; rebinding either side elsewhere is not.
        a.bind_channel(t0 + Duration::from_secs(10), 0x4000, p1, Reach::AnyPort)
            .unwrap();
        assert_eq!(
            a.bind_channel(t0, 0x4000, p2, Reach::AnyPort),
            Err(ChannelBindError::NumberTaken)
        );
        assert_eq!(
            a.bind_channel(t0, 0x4001, p1, Reach::AnyPort),
            Err(ChannelBindError::PeerTaken)
        );
        a.bind_channel(t0, 0x4FFF, p2, Reach::AnyPort).unwrap();
        // Expired bindings stop carrying data but stay reserved during the quarantine.
        let expired = t0 + Duration::from_secs(10) + CHANNEL_LIFETIME;
        assert_eq!(a.channel_peer(expired, 0x4000), None);
        assert_eq!(
            a.bind_channel(expired, 0x4000, addr("9.9.9.9:1"), Reach::AnyPort),
            Err(ChannelBindError::NumberTaken)
        );
        let free = expired + CHANNEL_QUARANTINE;
        a.bind_channel(free, 0x4000, addr("9.9.9.9:1"), Reach::AnyPort)
            .unwrap();
        assert_eq!(a.channel_of(free, p1), None);
    }
}
