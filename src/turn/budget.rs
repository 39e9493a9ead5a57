//! Bandwidth budgets of allocations, as plain data: a token bucket per direction, what each
//! direction relayed and had dropped, and the fair share of a room's budget.
//!
//! An allocation's rate in each direction is the smaller of `turn.max_allocation_bytes_per_s`
//! and its share of `turn.max_room_bytes_per_s`. The share is recomputed by the core's
//! once-a-second sweep from what each allocation of the room relayed since the last one
//! ([`fair_shares`]): an allocation that used less than its share keeps room to grow, the
//! rest of the room's budget goes to those that want more, and a new allocation in a full
//! room gets a share instead of a refusal. A packet over the rate is dropped (and counted by
//! the caller, with the limit that bound it): a room over its budget degrades that room's
//! media, no one else's.
//!
//! Time is an argument; nothing here reads the clock.

use std::time::{Duration, Instant};

pub use super::stats::{BandwidthLimit, Direction};

/// The burst a bucket holds, in time of its rate: a video keyframe arrives as a burst of
/// packets, and a rate checked over too short a time would drop it.
const BURST: Duration = Duration::from_millis(500);
/// The least burst, whatever the rate: one packet of any size always fits in a full bucket.
const MIN_BURST: u64 = 64 * 1024;

/// A token bucket of bytes, refilled at `rate` bytes per second; a rate of 0 is no limit.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: u64,
    /// The most it holds: half a second of its rate, at least [`MIN_BURST`].
    burst: u64,
    tokens: u64,
    /// When `tokens` was last refilled.
    last: Instant,
}

impl Bucket {
    /// A bucket of `rate` bytes per second (0: unlimited), holding the least burst to
    /// start with: an allocation made anew gets no fresh burst of its rate, so deleting and
    /// making allocations is no way around it.
    pub fn new(rate: u64, now: Instant) -> Bucket {
        let burst = burst(rate);
        Bucket {
            rate,
            burst,
            tokens: MIN_BURST.min(burst),
            last: now,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Changes the rate from now on; the tokens held stay, up to the new burst.
    pub fn set_rate(&mut self, rate: u64, now: Instant) {
        if rate == self.rate {
            return;
        }
        self.refill(now);
        self.rate = rate;
        self.burst = burst(rate);
        self.tokens = self.tokens.min(self.burst);
    }

    /// Takes `bytes`, or says they are over the rate (and takes nothing).
    #[inline]
    pub fn take(&mut self, now: Instant, bytes: u64) -> bool {
        if self.rate == 0 {
            return true;
        }
        // Earned first, capped at the burst, then spent: a bucket that waited holds no more
        // than its burst, however long it waited or however full it was.
        self.refill(now);
        if self.tokens < bytes {
            return false;
        }
        self.tokens -= bytes;
        true
    }

    /// Gives back `bytes` taken, up to the burst.
    pub fn give(&mut self, bytes: u64) {
        if self.rate != 0 {
            self.tokens = self.tokens.saturating_add(bytes).min(self.burst);
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        let earned = elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000;
        if earned == 0 {
            // Keep `last`, so that the fractions add up over calls close together.
            return;
        }
        self.tokens = u64::try_from(u128::from(self.tokens) + earned)
            .unwrap_or(u64::MAX)
            .min(self.burst);
        self.last = now;
    }
}

fn burst(rate: u64) -> u64 {
    let of_rate = u128::from(rate) * BURST.as_millis() / 1000;
    u64::try_from(of_rate).unwrap_or(u64::MAX).max(MIN_BURST)
}

/// One direction of an allocation: its bucket, and what passed and was dropped.
#[derive(Debug, Clone)]
pub struct Meter {
    bucket: Bucket,
    /// Which limit the bucket's rate is (for the drops' label).
    limit: BandwidthLimit,
    /// Payload bytes and packets relayed, since the allocation was made.
    pub bytes: u64,
    pub packets: u64,
    /// Payload bytes relayed and dropped since the last share was computed.
    window_bytes: u64,
    window_dropped: u64,
}

impl Meter {
    fn new(rate: u64, limit: BandwidthLimit, now: Instant) -> Meter {
        Meter {
            bucket: Bucket::new(rate, now),
            limit,
            bytes: 0,
            packets: 0,
            window_bytes: 0,
            window_dropped: 0,
        }
    }

    /// Charges one payload of `bytes`: counted as relayed, or dropped over the limit that
    /// bound it.
    #[inline]
    pub fn pass(&mut self, now: Instant, bytes: usize) -> Result<(), BandwidthLimit> {
        let bytes = bytes as u64;
        if self.bucket.take(now, bytes) {
            self.bytes += bytes;
            self.packets += 1;
            self.window_bytes += bytes;
            Ok(())
        } else {
            self.window_dropped += bytes;
            Err(self.limit)
        }
    }

    /// Takes back a payload [`Meter::pass`] let through that went nowhere after all.
    /// The sweep may have started a new window since the charge: that window does not go
    /// below nothing.
    pub fn refund(&mut self, bytes: usize) {
        let bytes = bytes as u64;
        self.bytes = self.bytes.saturating_sub(bytes);
        self.packets = self.packets.saturating_sub(1);
        self.window_bytes = self.window_bytes.saturating_sub(bytes);
        self.bucket.give(bytes);
    }

    pub fn rate(&self) -> u64 {
        self.bucket.rate()
    }

    /// What this direction asks of its room for the next period, from what it did in the
    /// last `period`: `None` when it had packets dropped (it wants more than it had).
    fn demand(&self, period: Duration) -> Demand {
        if self.window_dropped > 0 {
            return Demand::More;
        }
        let per_s = u128::from(self.window_bytes) * 1000 / period.as_millis().max(1);
        Demand::Used(u64::try_from(per_s).unwrap_or(u64::MAX))
    }

    fn set(&mut self, rate: u64, limit: BandwidthLimit, now: Instant) {
        self.bucket.set_rate(rate, now);
        self.limit = limit;
    }

    fn new_window(&mut self) {
        self.window_bytes = 0;
        self.window_dropped = 0;
    }
}

/// An allocation's budget: a meter each way, and when its current window began.
#[derive(Debug, Clone)]
pub struct Budget {
    pub to_peer: Meter,
    pub to_client: Meter,
    window_start: Instant,
}

impl Budget {
    /// A budget of `rate` bytes per second each way (0: unlimited), bound by `limit`.
    pub fn new(rate: u64, limit: BandwidthLimit, now: Instant) -> Budget {
        Budget {
            to_peer: Meter::new(rate, limit, now),
            to_client: Meter::new(rate, limit, now),
            window_start: now,
        }
    }

    /// What each direction asks of the room for the next period (see [`fair_shares`]).
    pub fn demands(&self, now: Instant) -> [Demand; 2] {
        let period = now.saturating_duration_since(self.window_start);
        [self.to_peer.demand(period), self.to_client.demand(period)]
    }

    /// Sets each direction's rate (`[to_peer, to_client]`) and starts a new window.
    pub fn apply(&mut self, rates: [Rate; 2], now: Instant) {
        let [to_peer, to_client] = rates;
        self.to_peer.set(to_peer.bytes_per_s, to_peer.limit, now);
        self.to_client
            .set(to_client.bytes_per_s, to_client.limit, now);
        self.to_peer.new_window();
        self.to_client.new_window();
        self.window_start = now;
    }
}

/// What one allocation's direction asks of its room's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Demand {
    /// It relayed this many bytes per second and lost none: it needs about that.
    Used(u64),
    /// It had packets dropped: it would take more than it had.
    More,
}

/// A rate and the limit it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub bytes_per_s: u64,
    pub limit: BandwidthLimit,
}

/// The rate of an allocation with no room budget: the allocation's own (0: unlimited).
pub fn own_rate(max_allocation: u64) -> Rate {
    Rate {
        bytes_per_s: max_allocation,
        limit: BandwidthLimit::Allocation,
    }
}

/// The rates of a room's allocations in one direction, given what each asks (`demands`),
/// the room's budget `room` (bytes per second, more than 0) and each allocation's own cap
/// `max_allocation` (0: none).
///
/// Max-min fair: an allocation gets what it asks, with room to grow (twice what it used,
/// and at least a quarter of an even share), as long as that is below the level every
/// allocation that asks more gets; what is left when everyone has enough is spread evenly.
/// The rates add up to at most `room` (when that is at least one byte per second per
/// allocation), and none is 0.
pub fn fair_shares(room: u64, max_allocation: u64, demands: &[Demand]) -> Vec<Rate> {
    let n = demands.len() as u64;
    if n == 0 {
        return Vec::new();
    }
    let cap = if max_allocation == 0 {
        u64::MAX
    } else {
        max_allocation
    };
    let floor = room / n / 4;
    // What each asks, capped at its own limit: a share it cannot use goes to the others.
    let asks: Vec<u64> = demands
        .iter()
        .map(|d| match d {
            Demand::Used(used) => used.saturating_mul(2).max(floor).min(cap),
            Demand::More => cap,
        })
        .collect();
    let mut order: Vec<usize> = (0..asks.len()).collect();
    order.sort_by_key(|&i| asks[i]);
    let mut shares = vec![0u64; asks.len()];
    let mut left = room;
    let mut open = order.len() as u64;
    for &i in &order {
        let level = left / open;
        let share = asks[i].min(level);
        shares[i] = share;
        left -= share;
        open -= 1;
    }
    // Everyone got what it asked: spread the rest, within each one's own cap.
    let extra = left / n;
    shares
        .into_iter()
        .map(|share| {
            let bytes_per_s = share.saturating_add(extra).min(cap).max(1);
            let limit = if max_allocation != 0 && bytes_per_s == max_allocation {
                BandwidthLimit::Allocation
            } else {
                BandwidthLimit::Room
            };
            Rate { bytes_per_s, limit }
        })
        .collect()
}

#[cfg(test)]
mod tests;
