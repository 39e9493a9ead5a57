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
//!
//! A sender that works through several messages it had already read (a browser sends its
//! ICE candidates in a burst) does so inside a `Batch`: its direct writes only append to
//! each recipient's writer, and each recipient gets one write (one TLS record, one system
//! call) for all of them when the batch ends.

use std::cell::RefCell;
use std::sync::Arc;
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
    /// Inside a `Batch`, the frame waits in the writer until the batch ends.
    pub fn try_write(self: &Arc<Self>, frame: Utf8Bytes) -> Wrote {
        let Ok(mut sink) = self.sink.try_lock() else {
            return Wrote::Queue(frame);
        };
        if self.queued.load(Ordering::Acquire) != 0 || self.backed_up.load(Ordering::Acquire) {
            return Wrote::Queue(frame);
        }
        if Batch::join(self) {
            sink.defer(OP_TEXT, frame.as_bytes());
            return Wrote::Done;
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

    /// Writes what a batch left in the writer, without waiting: as `try_write` does.
    fn flush_deferred(&self) {
        let Ok(mut sink) = self.sink.try_lock() else {
            // Its owner is writing, which writes the deferred frames too; make sure.
            self.flush.notify_one();
            return;
        };
        let mut cx = Context::from_waker(Waker::noop());
        if !matches!(sink.poll_flush(&mut cx), Poll::Ready(Ok(()))) {
            self.backed_up.store(true, Ordering::Release);
            self.flush.notify_one();
        }
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

thread_local! {
    /// The batch open on this thread, if any: the sockets its direct writes deferred to.
    static OPEN: RefCell<Option<Vec<Arc<Direct>>>> = const { RefCell::new(None) };
}

/// Direct writes deferred while one socket task handles messages it had already read.
#[derive(Debug, Default)]
pub struct Batch {
    touched: Vec<Arc<Direct>>,
}

/// Closes the thread's batch when `Batch::run`'s closure returns or panics.
struct Close<'a>(&'a mut Vec<Arc<Direct>>);

impl Drop for Close<'_> {
    fn drop(&mut self) {
        if let Some(touched) = OPEN.with(|open| open.borrow_mut().take()) {
            *self.0 = touched;
        }
    }
}

impl Batch {
    /// Runs `handle` (one message's synchronous handling) with its direct writes deferred
    /// into this batch. `handle` must not await: the batch belongs to the thread.
    pub fn run<R>(&mut self, handle: impl FnOnce() -> R) -> R {
        let touched = std::mem::take(&mut self.touched);
        OPEN.with(|open| *open.borrow_mut() = Some(touched));
        let _close = Close(&mut self.touched);
        handle()
    }

    /// Whether a batch is open on this thread; if so, `direct` is flushed when it ends.
    fn join(direct: &Arc<Direct>) -> bool {
        OPEN.with(|open| {
            let mut open = open.borrow_mut();
            let Some(touched) = open.as_mut() else {
                return false;
            };
            if !touched.iter().any(|d| Arc::ptr_eq(d, direct)) {
                touched.push(Arc::clone(direct));
            }
            true
        })
    }

    /// Writes every socket the batch deferred frames to; never waits.
    pub fn flush(&mut self) {
        for direct in self.touched.drain(..) {
            direct.flush_deferred();
        }
    }
}
