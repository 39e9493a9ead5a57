//! Log lines that a client can cause, kept from flooding the log: at most `PER_SECOND` lines
//! a second from one call site, the next one saying how many were left out, and text the
//! client chose clipped to `CLIP` bytes. Plain data: the caller passes the time.

use std::sync::atomic::{AtomicU64, Ordering};

/// Lines one call site logs in one second, at most.
pub const PER_SECOND: u64 = 10;

/// Bytes of client text a log line keeps.
pub const CLIP: usize = 128;

/// One call site's budget: `static REFUSED: Throttle = Throttle::new();`.
#[derive(Debug, Default)]
pub struct Throttle {
    /// The second (of the caller's clock) this count is of, times 2^20, plus the count.
    window: AtomicU64,
    /// Lines left out since the last one logged.
    suppressed: AtomicU64,
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle {
            window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged at second `now_s`: `Some(n)` with the number of lines
    /// left out before it, `None` when this one is to be left out (and counted).
    pub fn allow(&self, now_s: u64) -> Option<u64> {
        let second = now_s << 20;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let next = if current >> 20 == now_s {
                current + 1
            } else {
                second + 1
            };
            if next & ((1 << 20) - 1) > PER_SECOND {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(self.suppressed.swap(0, Ordering::Relaxed)),
                Err(seen) => current = seen,
            }
        }
    }
}

/// `text` cut to at most `CLIP` bytes, at a character boundary.
pub fn clip(text: &str) -> &str {
    if text.len() <= CLIP {
        return text;
    }
    let mut end = CLIP;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Seconds on the clock the throttles count by.
pub fn now_s() -> u64 {
    crate::clock::unix_now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_lines_a_second_then_the_next_second_says_how_many_were_left_out() {
        let t = Throttle::new();
        for _ in 0..PER_SECOND {
            assert_eq!(t.allow(100), Some(0));
        }
        for _ in 0..25 {
            assert_eq!(t.allow(100), None);
        }
        assert_eq!(t.allow(101), Some(25));
        assert_eq!(t.allow(101), Some(0));
    }

    #[test]
    fn client_text_is_clipped_at_a_character_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(100); // 200 bytes
        let clipped = clip(&long);
        assert_eq!(clipped.len(), CLIP);
        assert!(clipped.chars().all(|c| c == 'é'));
        let odd = format!("a{}", "é".repeat(100));
        assert_eq!(clip(&odd).len(), CLIP - 1);
    }
}
