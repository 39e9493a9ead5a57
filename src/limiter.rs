//! Limits on what clients may take: connection counts per source and in total (signaling
//! sockets, TURN over TCP and TLS), and rates (a socket's messages, a source's answers to
//! unauthenticated TURN requests).
//!
//! `ConnectionLimiter` hands out guards that give their slot back when dropped, so a
//! connection cannot leak a slot on any exit path. A source is an IPv4 address, or an
//! IPv6 prefix (a /64 is one subscriber's network, and one host may hold all of it).
//! `TokenBucket` is plain data driven by the caller's clock; `SourceRates` keeps one per
//! source in a fixed table, so no number of sources makes it grow.

use crate::sync::Locked;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes one token; `false` when the bucket is empty.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A rate per source (`TokenBucket`s in a fixed table of `slots`, found by a keyed hash of
/// the source): nothing grows with the number of sources, so a flood from spoofed
/// addresses costs no memory. Sources whose hashes meet share a bucket, which only makes
/// the limit stricter for them.
#[derive(Debug)]
pub struct SourceRates {
    table: Mutex<RateTable>,
    hasher: foldhash::quality::RandomState,
    v6_prefix: u8,
}

#[derive(Debug)]
struct RateTable {
    rate: u32,
    burst: u32,
    buckets: Vec<Option<TokenBucket>>,
}

impl SourceRates {
    pub fn new(slots: usize, rate: u32, burst: u32, v6_prefix: u8) -> SourceRates {
        SourceRates {
            table: Mutex::new(RateTable {
                rate,
                burst,
                buckets: vec![None; slots.max(1)],
            }),
            hasher: foldhash::quality::RandomState::default(),
            v6_prefix,
        }
    }

    /// Takes one token for `ip`'s source; false when it has none left.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let slot = self.hasher.hash_one(source(ip, self.v6_prefix));
        let mut table = self.table.locked();
        let (rate, burst) = (table.rate, table.burst);
        let n = table.buckets.len();
        table.buckets[(slot % n as u64) as usize]
            .get_or_insert_with(|| TokenBucket::new(rate, burst, now))
            .take(now)
    }

    /// A new rate for every source, starting full.
    pub fn set_rate(&self, rate: u32, burst: u32) {
        let mut table = self.table.locked();
        if (table.rate, table.burst) != (rate, burst) {
            table.rate = rate;
            table.burst = burst;
            table.buckets.fill(None);
        }
    }
}

/// Which connection limit refused a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefused {
    Total,
    PerIp,
}

/// Counts open connections, in total and per source.
#[derive(Debug)]
pub struct ConnectionLimiter {
    counts: Mutex<Counts>,
    /// IPv6 sources are counted per network of this prefix length.
    v6_prefix: u8,
}

#[derive(Debug, Default)]
struct Counts {
    max_total: usize,
    max_per_ip: usize,
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A held connection slot; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionGuard {
    limiter: Arc<ConnectionLimiter>,
    /// The source it counts against; `None`: only in the total.
    ip: Option<IpAddr>,
}

impl ConnectionLimiter {
    /// Counts every IPv6 address on its own; see [`ConnectionLimiter::with_v6_prefix`].
    pub fn new(max_total: usize, max_per_ip: usize) -> ConnectionLimiter {
        ConnectionLimiter::with_v6_prefix(max_total, max_per_ip, 128)
    }

    /// Counts IPv6 sources per network of `v6_prefix` bits (at most 128).
    pub fn with_v6_prefix(max_total: usize, max_per_ip: usize, v6_prefix: u8) -> ConnectionLimiter {
        ConnectionLimiter {
            counts: Mutex::new(Counts {
                max_total,
                max_per_ip,
                ..Counts::default()
            }),
            v6_prefix: v6_prefix.min(128),
        }
    }

    /// Takes a slot for a connection from `ip`.
    ///
    /// # Errors
    /// The total or the per-source limit is reached.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionGuard, ConnectionRefused> {
        let ip = source(ip, self.v6_prefix);
        let mut counts = self.counts.locked();
        if counts.total >= counts.max_total {
            return Err(ConnectionRefused::Total);
        }
        let max_per_ip = counts.max_per_ip;
        let n = counts.per_ip.entry(ip).or_insert(0);
        if *n >= max_per_ip {
            return Err(ConnectionRefused::PerIp);
        }
        *n += 1;
        counts.total += 1;
        Ok(ConnectionGuard {
            limiter: Arc::clone(self),
            ip: Some(ip),
        })
    }

    /// Takes a slot counted only in the total: for a trusted proxy's connection, which
    /// carries many clients (they are counted where their own address is known).
    ///
    /// # Errors
    /// The total limit is reached.
    pub fn try_acquire_total(self: &Arc<Self>) -> Result<ConnectionGuard, ConnectionRefused> {
        let mut counts = self.counts.locked();
        if counts.total >= counts.max_total {
            return Err(ConnectionRefused::Total);
        }
        counts.total += 1;
        Ok(ConnectionGuard {
            limiter: Arc::clone(self),
            ip: None,
        })
    }

    /// Like `try_acquire`, but at the total limit `evict` may make room by closing another
    /// connection (whose slot comes back when its task ends): then this one is admitted,
    /// the total running one over for that while.
    ///
    /// # Errors
    /// The per-source limit is reached, or the total is and `evict` found nothing to close.
    pub fn try_acquire_evicting(
        self: &Arc<Self>,
        ip: IpAddr,
        evict: impl FnOnce() -> bool,
    ) -> Result<ConnectionGuard, ConnectionRefused> {
        let ip = source(ip, self.v6_prefix);
        let mut counts = self.counts.locked();
        let max_per_ip = counts.max_per_ip;
        if counts.per_ip.get(&ip).is_some_and(|n| *n >= max_per_ip) {
            return Err(ConnectionRefused::PerIp);
        }
        if counts.total >= counts.max_total && !evict() {
            return Err(ConnectionRefused::Total);
        }
        *counts.per_ip.entry(ip).or_insert(0) += 1;
        counts.total += 1;
        Ok(ConnectionGuard {
            limiter: Arc::clone(self),
            ip: Some(ip),
        })
    }

    /// New limits for the connections that come next; open ones stay.
    pub fn set_limits(&self, max_total: usize, max_per_ip: usize) {
        let mut counts = self.counts.locked();
        counts.max_total = max_total;
        counts.max_per_ip = max_per_ip;
    }

    pub fn total(&self) -> usize {
        self.counts.locked().total
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut counts = self.limiter.counts.locked();
        counts.total -= 1;
        if let Some(ip) = self.ip
            && let Some(n) = counts.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&ip);
            }
        }
    }
}

/// The source `ip` counts as: IPv4-mapped IPv6 addresses as their IPv4 address, other
/// IPv6 addresses as their network of `v6_prefix` bits.
pub fn source(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(v6_prefix.min(128)))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10, 3, t0);
        assert!(bucket.take(t0) && bucket.take(t0) && bucket.take(t0));
        assert!(!bucket.take(t0));
        // 100 ms at 10/s refills one token.
        let t1 = t0 + Duration::from_millis(100);
        assert!(bucket.take(t1));
        assert!(!bucket.take(t1));
        // A long pause refills no more than the burst.
        let t2 = t1 + Duration::from_secs(60);
        assert!((0..3).all(|_| bucket.take(t2)));
        assert!(!bucket.take(t2));
    }

    /// A slot counted only in the total neither takes nor gives back a source's slot.
    #[test]
    fn a_total_only_slot_leaves_every_source_count_alone() {
        let limiter = Arc::new(ConnectionLimiter::new(3, 1));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = limiter.try_acquire(ip).unwrap();
        let proxied = limiter.try_acquire_total().unwrap();
        assert_eq!(
            limiter.try_acquire(ip).unwrap_err(),
            ConnectionRefused::PerIp
        );
        drop(proxied);
        assert_eq!(
            limiter.try_acquire(ip).unwrap_err(),
            ConnectionRefused::PerIp
        );
        let _b = limiter.try_acquire_total().unwrap();
        let _c = limiter.try_acquire_total().unwrap();
        assert_eq!(
            limiter.try_acquire_total().unwrap_err(),
            ConnectionRefused::Total
        );
        drop(a);
        assert_eq!(limiter.total(), 2);
    }

    #[test]
    fn source_rates_limit_each_source_and_grow_with_none() {
        let t0 = Instant::now();
        let rates = SourceRates::new(1024, 10, 3, 64);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..3).all(|_| rates.allow(a, t0)));
        assert!(!rates.allow(a, t0), "the burst is spent");
        assert!(
            rates.allow("192.0.2.2".parse().unwrap(), t0),
            "another source"
        );
        assert!(
            rates.allow(a, t0 + Duration::from_millis(100)),
            "refilled at the rate"
        );
        // Two addresses of one /64 are one source.
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert!((0..3).all(|_| rates.allow(v6, t0)));
        assert!(!rates.allow("2001:db8::2".parse().unwrap(), t0));
        // A million sources later, the table is the same size.
        for i in 0..1_000_000u32 {
            rates.allow(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert_eq!(rates.table.lock().unwrap().buckets.len(), 1024);
        rates.set_rate(1, 1);
        assert!(
            rates.allow(a, t0) && !rates.allow(a, t0),
            "the new rate, from full"
        );
    }

    #[test]
    fn limiter_counts_per_ip_and_total_and_frees_on_drop() {
        let limiter = Arc::new(ConnectionLimiter::new(3, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let g1 = limiter.try_acquire(a).unwrap();
        let _g2 = limiter.try_acquire(a).unwrap();
        // The mapped form of the same address shares its count.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            limiter.try_acquire(mapped).unwrap_err(),
            ConnectionRefused::PerIp
        );
        let _g3 = limiter.try_acquire(b).unwrap();
        assert_eq!(
            limiter.try_acquire(b).unwrap_err(),
            ConnectionRefused::Total
        );
        drop(g1);
        assert_eq!(limiter.total(), 2);
        assert!(limiter.try_acquire(a).is_ok());
    }

    #[test]
    fn at_the_total_an_eviction_makes_room_but_never_past_the_per_source_limit() {
        let limiter = Arc::new(ConnectionLimiter::new(2, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let _a1 = limiter.try_acquire_evicting(a, || false).unwrap();
        let _a2 = limiter.try_acquire_evicting(a, || false).unwrap();
        assert_eq!(
            limiter.try_acquire_evicting(b, || false).unwrap_err(),
            ConnectionRefused::Total
        );
        let _b1 = limiter.try_acquire_evicting(b, || true).unwrap();
        assert_eq!(limiter.total(), 3, "over by one until the evicted one goes");
        assert_eq!(
            limiter.try_acquire_evicting(a, || true).unwrap_err(),
            ConnectionRefused::PerIp
        );
    }

    #[test]
    fn ipv6_sources_count_per_prefix() {
        let limiter = Arc::new(ConnectionLimiter::with_v6_prefix(10, 2, 64));
        let _a = limiter
            .try_acquire("2001:db8:1:2::1".parse().unwrap())
            .unwrap();
        let _b = limiter
            .try_acquire("2001:db8:1:2:ffff::9".parse().unwrap())
            .unwrap();
        assert_eq!(
            limiter
                .try_acquire("2001:db8:1:2:abcd::7".parse().unwrap())
                .unwrap_err(),
            ConnectionRefused::PerIp,
            "a third address of the same /64"
        );
        assert!(
            limiter
                .try_acquire("2001:db8:1:3::1".parse().unwrap())
                .is_ok()
        );
        // Without a prefix every address is its own source.
        let exact = Arc::new(ConnectionLimiter::new(10, 1));
        let _c = exact.try_acquire("2001:db8::1".parse().unwrap()).unwrap();
        assert!(exact.try_acquire("2001:db8::2".parse().unwrap()).is_ok());
        assert_eq!(
            source("2001:db8::1".parse().unwrap(), 0),
            "::".parse::<IpAddr>().unwrap()
        );
    }
}
