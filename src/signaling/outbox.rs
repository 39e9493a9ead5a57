//! `Outbox`: the sending side of a peer's socket task, which the registry and other
//! peers' tasks deliver frames through without ever waiting for that peer.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;

use super::direct::{Direct, Wrote};
use super::signal::{Eviction, Signal};

/// Frames queued for one peer's socket task.
pub const OUTBOX_CAPACITY: usize = 256;

/// The sending side of a peer's socket task.
#[derive(Debug, Clone)]
pub struct Outbox {
    pub tx: mpsc::Sender<Utf8Bytes>,
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
        if let Err(e) = self.tx.try_send(frame) {
            if let Some(direct) = &self.direct {
                direct.unqueue_one(len);
            }
            if let mpsc::error::TrySendError::Full(_) = e {
                self.signal.evict(Eviction::Overflow);
            }
        }
    }
}
