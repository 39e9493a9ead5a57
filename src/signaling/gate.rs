//! The message gate every dialect puts each client message through: its size against
//! `signaling.max_message_bytes`, a token from the socket's `messages_per_second` budget,
//! and strikes for a client that keeps sending once refused. Plain data, driven by the
//! caller's clock; the dialect turns a refusal into its own error and close.

use std::time::Instant;

use super::frame::{CLOSE_POLICY, CLOSE_TOO_BIG};
use super::limits::TokenBucket;
use super::protocol::ErrorCode;
use super::stats::Refusal;
use crate::config::SignalingConfig;

/// One socket's message budget.
#[derive(Debug)]
pub struct Gate {
    bucket: TokenBucket,
    /// Messages refused by the rate limit, less those that passed since: a client that
    /// keeps sending at more than twice the rate builds them up, one that slows down
    /// works them off.
    strikes: u32,
}

/// Why a message did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Larger than `max`: the socket is closed.
    TooLarge { size: usize, max: usize },
    /// Over the rate: the message is dropped.
    RateLimited { per_second: u32 },
    /// Refusals exceed the messages that passed since by 2 × max(`message_burst`,
    /// `messages_per_second`): the socket is closed.
    RateLimitedRepeatedly,
}

impl Refused {
    /// Whether the socket must close (else only this message is dropped).
    pub fn closes(&self) -> bool {
        !matches!(self, Refused::RateLimited { .. })
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Refused::TooLarge { .. } => ErrorCode::MessageTooLarge,
            Refused::RateLimited { .. } | Refused::RateLimitedRepeatedly => ErrorCode::RateLimited,
        }
    }

    /// The limit that refused, for the refusals metric.
    pub fn limit(&self) -> Refusal {
        match self {
            Refused::TooLarge { .. } => Refusal::MaxMessageBytes,
            Refused::RateLimited { .. } | Refused::RateLimitedRepeatedly => {
                Refusal::MessagesPerSecond
            }
        }
    }

    /// For the person reading the error.
    pub fn message(&self) -> String {
        match self {
            Refused::TooLarge { size, max } => {
                format!("message of {size} bytes exceeds the limit of {max} bytes")
            }
            Refused::RateLimited { per_second } => {
                format!("more than {per_second} messages per second; message dropped")
            }
            Refused::RateLimitedRepeatedly => "rate limit exceeded repeatedly".to_owned(),
        }
    }

    /// The WebSocket close code and reason, for a refusal that closes.
    pub fn close(&self) -> (u16, &'static str) {
        match self {
            Refused::TooLarge { .. } => (CLOSE_TOO_BIG, "message too large"),
            _ => (CLOSE_POLICY, "rate limit exceeded"),
        }
    }
}

impl Gate {
    pub fn new(cfg: &SignalingConfig, now: Instant) -> Gate {
        Gate {
            bucket: TokenBucket::new(cfg.messages_per_second, cfg.message_burst, now),
            strikes: 0,
        }
    }

    /// Checks a message of `size` bytes: its size, then a token from the budget. Every
    /// message is charged, whatever follows.
    ///
    /// # Errors
    /// Why the message is refused.
    pub fn check(
        &mut self,
        size: usize,
        cfg: &SignalingConfig,
        now: Instant,
    ) -> Result<(), Refused> {
        if size > cfg.max_message_bytes {
            return Err(Refused::TooLarge {
                size,
                max: cfg.max_message_bytes,
            });
        }
        self.charge(cfg, now)
    }

    /// Takes a token for a message whose size is checked separately ([`Gate::size`]).
    ///
    /// # Errors
    /// The rate is exceeded (and, past two bursts' worth of strikes, repeatedly).
    pub fn charge(&mut self, cfg: &SignalingConfig, now: Instant) -> Result<(), Refused> {
        if self.bucket.take(now) {
            self.strikes = self.strikes.saturating_sub(1);
            return Ok(());
        }
        self.strikes += 1;
        // A client that keeps sending after errors worth two bursts is ignoring them.
        if self.strikes > 2 * cfg.message_burst.max(cfg.messages_per_second) {
            return Err(Refused::RateLimitedRepeatedly);
        }
        Err(Refused::RateLimited {
            per_second: cfg.messages_per_second,
        })
    }

    /// Checks only the size of a message already charged.
    ///
    /// # Errors
    /// The message is larger than `signaling.max_message_bytes`.
    pub fn size(size: usize, cfg: &SignalingConfig) -> Result<(), Refused> {
        if size > cfg.max_message_bytes {
            return Err(Refused::TooLarge {
                size,
                max: cfg.max_message_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cfg() -> SignalingConfig {
        SignalingConfig {
            max_message_bytes: 100,
            messages_per_second: 2,
            message_burst: 3,
            ..SignalingConfig::default()
        }
    }

    #[test]
    fn a_message_too_large_closes_and_is_charged_nothing_else() {
        let cfg = cfg();
        let now = Instant::now();
        let mut gate = Gate::new(&cfg, now);
        let refused = gate.check(101, &cfg, now).unwrap_err();
        assert_eq!(
            refused,
            Refused::TooLarge {
                size: 101,
                max: 100
            }
        );
        assert!(refused.closes());
        assert_eq!(refused.code(), ErrorCode::MessageTooLarge);
        assert_eq!(refused.close().0, CLOSE_TOO_BIG);
        assert!(gate.check(100, &cfg, now).is_ok());
    }

    #[test]
    fn the_burst_passes_then_messages_drop_then_the_socket_closes() {
        let cfg = cfg();
        let now = Instant::now();
        let mut gate = Gate::new(&cfg, now);
        for _ in 0..3 {
            assert!(gate.check(10, &cfg, now).is_ok());
        }
        // Two bursts' worth of strikes (2 × max(3, 2) = 6) drop; the next closes.
        for _ in 0..6 {
            let refused = gate.check(10, &cfg, now).unwrap_err();
            assert_eq!(refused, Refused::RateLimited { per_second: 2 });
            assert!(!refused.closes());
        }
        let refused = gate.check(10, &cfg, now).unwrap_err();
        assert_eq!(refused, Refused::RateLimitedRepeatedly);
        assert!(refused.closes());
        assert_eq!(refused.close().0, CLOSE_POLICY);
    }

    #[test]
    fn each_message_that_passes_works_off_one_strike() {
        let cfg = cfg();
        let now = Instant::now();
        let mut gate = Gate::new(&cfg, now);
        for _ in 0..3 {
            gate.check(10, &cfg, now).unwrap();
        }
        for _ in 0..6 {
            gate.check(10, &cfg, now).unwrap_err();
        }
        // Half a second later one token is back: it passes and takes one strike off, so
        // one more refusal is dropped and the one after closes.
        let later = now + Duration::from_millis(500);
        assert!(gate.check(10, &cfg, later).is_ok());
        assert!(!gate.check(10, &cfg, later).unwrap_err().closes());
        assert!(gate.check(10, &cfg, later).unwrap_err().closes());
    }

    #[test]
    fn a_client_sending_at_three_times_the_rate_is_closed_in_the_end() {
        // Under the old rule (strikes cleared by any message that passed) this client
        // never closed: a token every half second cleared its strikes.
        let cfg = cfg();
        let start = Instant::now();
        let mut gate = Gate::new(&cfg, start);
        let closed = (0..600u64).any(|i| {
            let at = start + Duration::from_millis(i * 1000 / 6);
            gate.check(10, &cfg, at).is_err_and(|r| r.closes())
        });
        assert!(closed);
    }
}
