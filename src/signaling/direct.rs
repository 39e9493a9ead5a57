//! A WebSocket's write half, shared by its own task and by the tasks of peers that send to it.
//!
//! A relayed message is written straight into the recipient's socket by the sender's task
//! when nothing is queued for it and nobody else is writing: one wake-up per message instead
//! of two. Otherwise it goes through the bounded outbox as before, so a slow reader still
//! fills its outbox and is evicted instead of slowing anyone down, and frames keep their
//! order: a direct write happens only under the write lock with no queued frame ahead of it,
//! and the owner task drops a frame from the count only after writing it, under that lock.
//!
//! A direct write never waits. It polls the socket once with a no-op waker; if the frame
//! could not be flushed at once, the owner task is told (`flush`) and finishes it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Mutex, Notify};

use super::frame::OP_TEXT;
use super::socket::Writer;

/// The write half of a native signaling socket.
#[derive(Debug)]
pub struct Direct {
    pub sink: Mutex<Writer>,
    /// Frames in the outbox that the owner task has not written yet.
    queued: AtomicUsize,
    /// Tells the owner task to finish a write that a sender started.
    pub flush: Notify,
    /// A direct write could not be flushed at once: the socket is backed up, so further
    /// frames queue (bounded) until the owner has flushed it. Without this, frames would
    /// pile up in the writer's unbounded remainder buffer behind a client that stopped reading.
    backed_up: AtomicBool,
}

/// What a direct write did.
pub enum Wrote {
    /// Written (or at least handed to the socket, with the owner told to flush).
    Done,
    /// Not attempted (the socket is busy or frames are queued): queue it.
    Queue(Utf8Bytes),
}

impl Direct {
    pub fn new(sink: Writer) -> Direct {
        Direct {
            sink: Mutex::new(sink),
            queued: AtomicUsize::new(0),
            flush: Notify::new(),
            backed_up: AtomicBool::new(false),
        }
    }

    /// Writes `frame` now if that needs no waiting and keeps the order; never blocks.
    pub fn try_write(&self, frame: Utf8Bytes) -> Wrote {
        let Ok(mut sink) = self.sink.try_lock() else {
            return Wrote::Queue(frame);
        };
        if self.queued.load(Ordering::Acquire) != 0 || self.backed_up.load(Ordering::Acquire) {
            return Wrote::Queue(frame);
        }
        let mut cx = Context::from_waker(Waker::noop());
        // A failed write is the owner's to notice: its flush reports the error.
        let done = match sink.start(&mut cx, OP_TEXT, frame.as_bytes()) {
            Ok(()) => sink.poll_flush(&mut cx),
            Err(e) => Poll::Ready(Err(e)),
        };
        if !matches!(done, Poll::Ready(Ok(()))) {
            self.backed_up.store(true, Ordering::Release);
            self.flush.notify_one();
        }
        Wrote::Done
    }

    /// The owner flushed the socket (under the write lock): direct writes may resume.
    pub fn flushed(&self) {
        self.backed_up.store(false, Ordering::Release);
    }

    /// A frame is about to enter the outbox; call before sending it there.
    pub fn queue_one(&self) {
        self.queued.fetch_add(1, Ordering::AcqRel);
    }

    /// A frame left the outbox without entering it (the outbox was full).
    pub fn unqueue_one(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }
}
