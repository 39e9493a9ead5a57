//! Limits on signaling clients: a per-connection message rate, and (from `limiter`)
//! connection counts per IP and in total.
//!
//! `TokenBucket` is plain data driven by the caller's clock.

use std::time::Instant;

pub use crate::limiter::{ConnectionGuard, ConnectionLimiter, ConnectionRefused};

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
}
