//! `Outbox`: the sending side of a peer's socket task, which the registry and other
//! peers' tasks deliver frames through without ever waiting for that peer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;

use super::direct::{Direct, Wrote};
use super::signal::{Eviction, Signal};
use crate::sync::Locked;

/// Frames queued for one peer's socket task.
pub const OUTBOX_CAPACITY: usize = 256;

/// The frames that wait for a socket's own task to write them, oldest first.
///
/// It holds memory only while frames wait: most relayed frames are written directly, and
/// a channel's first block (32 slots, about 1 KiB) was kept by every connection.
#[derive(Debug, Default)]
pub struct Queue(Mutex<VecDeque<Utf8Bytes>>);

/// What an empty queue may keep: room for the few frames a join or a burst queues.
const KEEP_QUEUED: usize = 8;

impl Queue {
    /// Appends `frame`; gives it back if `OUTBOX_CAPACITY` frames already wait.
    fn push(&self, frame: Utf8Bytes) -> Result<(), Utf8Bytes> {
        let mut frames = self.0.locked();
        if frames.len() >= OUTBOX_CAPACITY {
            return Err(frame);
        }
        frames.push_back(frame);
        Ok(())
    }

    /// The oldest waiting frame. Emptied, the queue gives back what a burst grew it to.
    pub fn pop(&self) -> Option<Utf8Bytes> {
        let mut frames = self.0.locked();
        let frame = frames.pop_front();
        if frames.is_empty() && frames.capacity() > KEEP_QUEUED {
            *frames = VecDeque::new();
        }
        frame
    }
}

/// The sending side of a peer's socket task.
#[derive(Debug, Clone)]
pub struct Outbox {
    /// Frames for its task to write; the task is woken through `signal` (a flush).
    pub queue: Arc<Queue>,
    /// Its socket task's signal: the hub evicts through it.
    pub signal: Arc<Signal>,
    /// The socket's shared write half, for writing without a queue (native sockets).
    pub direct: Option<Arc<Direct>>,
}

impl Outbox {
    /// Writes `frame` into the socket at once when that needs no waiting (see `direct`),
    /// else queues it; a full queue (in frames or bytes) flags the peer for disconnection
    /// instead of waiting.
    pub fn deliver(&self, frame: Utf8Bytes) {
        let frame = match &self.direct {
            Some(direct) => match direct.try_write(frame) {
                Wrote::Done => return,
                Wrote::Queue(frame) => frame,
            },
            None => frame,
        };
        self.queue(frame);
    }

    /// Queues `frame` for the socket's own task to write, never touching the socket here:
    /// for what the registry delivers under its lock (joins, leaves, welcomes), where no
    /// socket I/O may happen. Frames delivered later wait behind it, directly or not.
    pub fn queue(&self, frame: Utf8Bytes) {
        let len = frame.len();
        if let Some(direct) = &self.direct
            && !direct.queue_one(len)
        {
            self.signal.evict(Eviction::Overflow);
            return;
        }
        if self.queue.push(frame).is_err() {
            if let Some(direct) = &self.direct {
                direct.unqueue_one(len);
            }
            self.signal.evict(Eviction::Overflow);
            return;
        }
        self.signal.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(queue: &Queue) -> usize {
        queue.0.locked().capacity()
    }

    /// A connection's queue holds nothing while empty, keeps the order, is bounded in
    /// frames, and gives back what a burst grew it to once it is drained.
    #[test]
    fn a_queue_holds_memory_only_while_frames_wait() {
        let queue = Queue::default();
        assert_eq!(capacity(&queue), 0);
        for i in 0..OUTBOX_CAPACITY {
            queue.push(i.to_string().into()).unwrap();
        }
        assert!(queue.push("over".into()).is_err(), "bounded");
        for i in 0..OUTBOX_CAPACITY {
            assert_eq!(queue.pop().unwrap().as_str(), i.to_string());
        }
        assert!(queue.pop().is_none());
        assert_eq!(capacity(&queue), 0);
        queue.push("one".into()).unwrap();
        assert_eq!(queue.pop().unwrap().as_str(), "one");
        assert!(capacity(&queue) <= KEEP_QUEUED);
    }
}
