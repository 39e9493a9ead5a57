//! Resuming a native peer whose socket dropped (a network change, a laptop asleep): what a
//! resumable peer's messages need for it, as plain data.
//!
//! A peer that joined with `resume: true` gets a `resume_token`, and every message the room
//! sends it (`peer_joined`, `peer_left`, `signal`) carries a `seq`, counted from 1. `Replay`
//! keeps those messages until the client acknowledges them (`ack`), within `MAX_FRAMES` and
//! `MAX_BYTES`; when its socket drops, the peer keeps its place for
//! `signaling.resume_grace_s` and its messages go only here. A new socket that sends
//! `resume` with the token and the last `seq` it got takes the place over: `since` gives
//! exactly the messages after that one, in order, or says some are gone (the peer then
//! joins anew).

use std::collections::VecDeque;

use axum::extract::ws::Utf8Bytes;

/// Messages kept for a resume at most, and their bytes.
pub const MAX_FRAMES: usize = 128;
pub const MAX_BYTES: usize = 256 * 1024;

/// A resumable peer's numbered messages not yet acknowledged.
#[derive(Debug)]
pub struct Replay {
    /// The `seq` of the next message.
    next: u64,
    frames: VecDeque<(u64, Utf8Bytes)>,
    bytes: usize,
    /// The last `seq` dropped unacknowledged (past the bounds): a resume from before it
    /// would miss it.
    lost_through: u64,
}

impl Default for Replay {
    fn default() -> Replay {
        Replay {
            next: 1,
            frames: VecDeque::new(),
            bytes: 0,
            lost_through: 0,
        }
    }
}

impl Replay {
    /// Numbers `frame` (a JSON object's text), keeps it, and returns it as sent.
    pub fn push(&mut self, frame: String) -> Utf8Bytes {
        let seq = self.next;
        self.next += 1;
        let frame: Utf8Bytes = super::protocol::with_seq(frame, seq).into();
        self.bytes += frame.len();
        self.frames.push_back((seq, frame.clone()));
        while self.frames.len() > MAX_FRAMES || self.bytes > MAX_BYTES {
            let Some((seq, dropped)) = self.frames.pop_front() else {
                break;
            };
            self.bytes -= dropped.len();
            self.lost_through = seq;
        }
        frame
    }

    /// The client has every message up to `seq`: forgets them.
    pub fn ack(&mut self, seq: u64) {
        while let Some((first, frame)) = self.frames.front()
            && *first <= seq
        {
            self.bytes -= frame.len();
            self.frames.pop_front();
        }
    }

    /// The messages after `last_seq`, in order; `None` when one of them is no longer
    /// kept, or `last_seq` is one this peer was never sent.
    pub fn since(&self, last_seq: u64) -> Option<Vec<Utf8Bytes>> {
        if last_seq < self.lost_through || last_seq >= self.next {
            return None;
        }
        // Acknowledged messages are gone too: a client resuming from before its own ack.
        if let Some((first, _)) = self.frames.front()
            && *first > last_seq + 1
        {
            return None;
        }
        if self.frames.is_empty() && last_seq + 1 < self.next {
            return None;
        }
        Some(
            self.frames
                .iter()
                .filter(|(seq, _)| *seq > last_seq)
                .map(|(_, f)| f.clone())
                .collect(),
        )
    }
}

/// A resume token: 128 random bits, hex.
pub fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u32) -> String {
        format!(r#"{{"type":"signal","n":{n}}}"#)
    }

    fn seqs(frames: &[Utf8Bytes]) -> Vec<u64> {
        frames
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
                v["seq"].as_u64().unwrap()
            })
            .collect()
    }

    #[test]
    fn messages_are_numbered_from_one_and_replayed_after_the_last_one_received() {
        let mut replay = Replay::default();
        let sent = replay.push(frame(0));
        assert_eq!(sent.as_str(), r#"{"type":"signal","n":0,"seq":1}"#);
        for n in 1..5 {
            replay.push(frame(n));
        }
        assert_eq!(seqs(&replay.since(2).unwrap()), [3, 4, 5]);
        assert_eq!(seqs(&replay.since(0).unwrap()), [1, 2, 3, 4, 5]);
        assert_eq!(replay.since(5).unwrap(), Vec::<Utf8Bytes>::new());
        assert_eq!(replay.since(6), None, "never sent");
    }

    #[test]
    fn acknowledged_messages_are_forgotten_and_cannot_be_resumed_from_before() {
        let mut replay = Replay::default();
        for n in 0..5 {
            replay.push(frame(n));
        }
        replay.ack(3);
        assert_eq!(seqs(&replay.since(3).unwrap()), [4, 5]);
        assert_eq!(replay.since(2), None);
        replay.ack(5);
        assert_eq!(replay.since(5).unwrap(), Vec::<Utf8Bytes>::new());
        assert_eq!(replay.since(4), None);
        assert_eq!(replay.bytes, 0);
    }

    #[test]
    fn past_the_bounds_the_oldest_go_and_a_resume_needing_them_fails() {
        let mut replay = Replay::default();
        for n in 0..(MAX_FRAMES as u32 + 10) {
            replay.push(frame(n));
        }
        assert_eq!(replay.frames.len(), MAX_FRAMES);
        assert_eq!(replay.since(5), None);
        assert_eq!(replay.since(10).unwrap().len(), MAX_FRAMES);
        let mut big = Replay::default();
        let large = format!(r#"{{"p":"{}"}}"#, "x".repeat(MAX_BYTES / 2));
        for _ in 0..3 {
            big.push(large.clone());
        }
        assert!(big.bytes <= MAX_BYTES && big.frames.len() == 1);
        assert_eq!(big.since(1), None);
        assert_eq!(seqs(&big.since(2).unwrap()), [3]);
    }

    #[test]
    fn tokens_are_random_hex() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
