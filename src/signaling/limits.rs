//! Limits on signaling clients: a per-connection message rate and
//! connection counts per IP and in total.
//!
//! `TokenBucket` is plain data driven by the caller's clock. `ConnectionLimiter`
//! hands out guards that give their slot back when dropped, so a connection
//! cannot leak a slot on any exit path.

use std::collections::HashMap;
use std::net::IpAddr;
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

/// Which connection limit refused a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefused {
    Total,
    PerIp,
}

/// Counts open connections, in total and per source IP.
#[derive(Debug)]
pub struct ConnectionLimiter {
    counts: Mutex<Counts>,
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
    ip: IpAddr,
}

impl ConnectionLimiter {
    pub fn new(max_total: usize, max_per_ip: usize) -> ConnectionLimiter {
        ConnectionLimiter {
            counts: Mutex::new(Counts {
                max_total,
                max_per_ip,
                ..Counts::default()
            }),
        }
    }

    /// Takes a slot for a connection from `ip`.
    ///
    /// # Errors
    /// The total or the per-IP limit is reached.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionGuard, ConnectionRefused> {
        let ip = canonical(ip);
        let mut counts = self.counts.lock().expect("limiter lock");
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
            ip,
        })
    }

    /// New limits for the connections that come next; open ones stay even above them.
    pub fn set_limits(&self, max_total: usize, max_per_ip: usize) {
        let mut counts = self.counts.lock().expect("limiter lock");
        counts.max_total = max_total;
        counts.max_per_ip = max_per_ip;
    }

    /// Open connections in total.
    pub fn total(&self) -> usize {
        self.counts.lock().expect("limiter lock").total
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut counts = self.limiter.counts.lock().expect("limiter lock");
        counts.total -= 1;
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

/// IPv4-mapped IPv6 addresses count as their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
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
}
