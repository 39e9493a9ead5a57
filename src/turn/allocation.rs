//! The state of one allocation as plain data: lifetime, permissions and
//! channel bindings, driven by the caller's clock (RFC 8656 sections 7-12).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::policy::normalize;

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

/// The lifetime granted for a requested one: the default when absent, else the request
/// capped at the maximum and raised to the default (RFC 8656 sections 7.2 and 7.3), so
/// that LIFETIME=0 in an Allocate does not make a throwaway allocation. A Refresh with
/// LIFETIME=0, which deletes, is its caller's business.
pub fn granted_lifetime(requested: Option<Duration>) -> Duration {
    requested.map_or(DEFAULT_LIFETIME, |r| {
        r.clamp(DEFAULT_LIFETIME, MAX_LIFETIME)
    })
}

/// Why a ChannelBind was refused (all answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBindError {
    /// The number is outside 0x4000..=0x7FFF.
    BadNumber,
    /// The number is bound to another peer.
    NumberTaken,
    /// The peer is bound to another number.
    PeerTaken,
}

#[derive(Debug, Clone, Copy)]
struct Channel {
    peer: SocketAddr,
    expires: Instant,
}

#[derive(Debug, Clone)]
pub struct AllocState {
    pub expires: Instant,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, Channel>,
    by_peer: HashMap<SocketAddr, u16>,
}

impl AllocState {
    pub fn new(now: Instant, lifetime: Duration) -> AllocState {
        AllocState {
            expires: now + lifetime,
            permissions: HashMap::new(),
            channels: HashMap::new(),
            by_peer: HashMap::new(),
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.expires
    }

    pub fn refresh(&mut self, now: Instant, lifetime: Duration) {
        self.expires = now + lifetime;
    }

    /// Installs or refreshes a permission for `ip` (ports do not matter).
    pub fn permit(&mut self, now: Instant, ip: IpAddr) {
        self.permissions
            .insert(normalize(ip), now + PERMISSION_LIFETIME);
    }

    pub fn is_permitted(&self, now: Instant, ip: IpAddr) -> bool {
        self.permissions
            .get(&normalize(ip))
            .is_some_and(|exp| now < *exp)
    }

    /// Binds `number` to `peer`, or refreshes the binding; also refreshes the peer's permission.
    ///
    /// # Errors
    /// See [`ChannelBindError`].
    pub fn bind_channel(
        &mut self,
        now: Instant,
        number: u16,
        peer: SocketAddr,
    ) -> Result<(), ChannelBindError> {
        if !(MIN_CHANNEL..=MAX_CHANNEL).contains(&number) {
            return Err(ChannelBindError::BadNumber);
        }
        let peer = SocketAddr::new(normalize(peer.ip()), peer.port());
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
        self.permit(now, peer.ip());
        Ok(())
    }

    /// The peer bound to `number`, if the binding is live.
    pub fn channel_peer(&self, now: Instant, number: u16) -> Option<SocketAddr> {
        self.channels
            .get(&number)
            .filter(|c| now < c.expires)
            .map(|c| c.peer)
    }

    /// The live channel bound to `peer`.
    pub fn channel_of(&self, now: Instant, peer: SocketAddr) -> Option<u16> {
        let peer = SocketAddr::new(normalize(peer.ip()), peer.port());
        let n = *self.by_peer.get(&peer)?;
        self.channels.get(&n).filter(|c| now < c.expires).map(|_| n)
    }

    /// Drops expired permissions and channels whose quarantine is over.
    pub fn sweep(&mut self, now: Instant) {
        self.permissions.retain(|_, exp| now < *exp);
        let by_peer = &mut self.by_peer;
        self.channels.retain(|_, c| {
            let keep = now < c.expires + CHANNEL_QUARANTINE;
            if !keep {
                by_peer.remove(&c.peer);
            }
            keep
        });
    }

    pub fn permission_count(&self) -> usize {
        self.permissions.len()
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }
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
        let ip: IpAddr = "8.8.8.8".parse().unwrap();
        a.permit(t0, ip);
        assert!(a.is_permitted(t0 + Duration::from_secs(299), ip));
        assert!(a.is_permitted(t0, "::ffff:8.8.8.8".parse().unwrap()));
        assert!(!a.is_permitted(t0 + PERMISSION_LIFETIME, ip));
        assert!(!a.is_permitted(t0, "8.8.4.4".parse().unwrap()));
        a.sweep(t0 + PERMISSION_LIFETIME);
        assert_eq!(a.permission_count(), 0);
    }

    #[test]
    fn channel_binding_rules() {
        let t0 = Instant::now();
        let mut a = AllocState::new(t0, DEFAULT_LIFETIME);
        let (p1, p2) = (addr("8.8.8.8:1000"), addr("8.8.8.8:2000"));
        assert_eq!(
            a.bind_channel(t0, 0x3FFF, p1),
            Err(ChannelBindError::BadNumber)
        );
        assert_eq!(
            a.bind_channel(t0, 0x8000, p1),
            Err(ChannelBindError::BadNumber)
        );
        a.bind_channel(t0, 0x4000, p1).unwrap();
        assert!(
            a.is_permitted(t0, p1.ip()),
            "a channel installs a permission"
        );
        assert_eq!(a.channel_peer(t0, 0x4000), Some(p1));
        assert_eq!(a.channel_of(t0, p1), Some(0x4000));
        // Refreshing the same binding is fine; rebinding either side elsewhere is not.
        a.bind_channel(t0 + Duration::from_secs(10), 0x4000, p1)
            .unwrap();
        assert_eq!(
            a.bind_channel(t0, 0x4000, p2),
            Err(ChannelBindError::NumberTaken)
        );
        assert_eq!(
            a.bind_channel(t0, 0x4001, p1),
            Err(ChannelBindError::PeerTaken)
        );
        a.bind_channel(t0, 0x4FFF, p2).unwrap();
        // Expired bindings stop carrying data but stay reserved during the quarantine.
        let expired = t0 + Duration::from_secs(10) + CHANNEL_LIFETIME;
        assert_eq!(a.channel_peer(expired, 0x4000), None);
        assert_eq!(
            a.bind_channel(expired, 0x4000, addr("9.9.9.9:1")),
            Err(ChannelBindError::NumberTaken)
        );
        let free = expired + CHANNEL_QUARANTINE;
        a.bind_channel(free, 0x4000, addr("9.9.9.9:1")).unwrap();
        assert_eq!(a.channel_of(free, p1), None);
    }
}
