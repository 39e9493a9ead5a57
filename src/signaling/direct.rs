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
//! could not be flushed at once, the owner task is told (`flush`) and finishes it. A sender
//! never polls the socket while any write waits on it: the socket keeps one waker per
//! direction, so a poll with the no-op waker would replace the owner's and the owner would
//! sleep until the send timeout (a lost wake-up). While a write waits, senders queue.
//!
//! A sender that works through several messages it had already read (a browser sends its
//! ICE candidates in a burst) does so inside a `Batch`: its direct writes only append to
//! each recipient's writer, and each recipient gets one write (one TLS record, one system
//! call) for all of them when the batch ends.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use axum::extract::ws::Utf8Bytes;

use super::frame::{self, OP_CLOSE, OP_TEXT};
use super::signal::Signal;
use super::socket::Writer;

/// The write half of a native signaling socket.
///
/// The lock is held only while the socket is polled, never across an await: a write that
/// has to wait for the client releases it in between, and a sender that takes it then can
/// only append whole frames behind what was started before.
#[derive(Debug)]
pub struct Direct {
    sink: Mutex<Writer>,
    /// Frames in the outbox that the owner task has not written yet.
    queued: AtomicUsize,
    /// Their bytes: a client that lets more than `max_queued_bytes` pile up is evicted
    /// (counting frames alone let 256 frames of 64 KiB, 16 MiB, wait for one slow reader).
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
    /// Tells the owner task to finish a write that a sender started (`Signal::flush`).
    signal: Arc<Signal>,
    /// A write waits for the socket: the owner's (its waker is the socket's), or a direct
    /// write's that the owner was told to finish. Further frames queue (bounded) until the
    /// owner has flushed, and no sender polls the socket. Without this, frames would pile up
    /// in the writer's unbounded remainder buffer behind a client that stopped reading, and
    /// a sender's poll would take the owner's wake-up. Set and cleared under the lock.
    backed_up: AtomicBool,
    /// The owner started closing: nothing may follow the close frame, so `backed_up` stays.
    closing: AtomicBool,
}

/// What a direct write did.
pub enum Wrote {
    /// Written (or at least handed to the socket, with the owner told to flush).
    Done,
    /// Not attempted (the socket is busy or frames are queued): queue it.
    Queue(Utf8Bytes),
}

impl Direct {
    /// The write half `sink`; at most `max_queued_bytes` of frames may wait in the outbox.
    pub fn new(sink: Writer, signal: Arc<Signal>, max_queued_bytes: usize) -> Direct {
        Direct {
            sink: Mutex::new(sink),
            queued: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes,
            signal,
            backed_up: AtomicBool::new(false),
            closing: AtomicBool::new(false),
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
            self.signal.flush();
        }
        Wrote::Done
    }

    /// Writes what a batch left in the writer, without waiting: as `try_write` does.
    fn flush_deferred(&self) {
        let Ok(mut sink) = self.sink.try_lock() else {
            // Its owner is writing, which writes the deferred frames too; make sure.
            self.signal.flush();
            return;
        };
        if self.backed_up.load(Ordering::Acquire) {
            // A write waits on the socket since the frames were deferred: whoever waits
            // writes them too, and the owner is told in case it is a sender's write.
            self.signal.flush();
            return;
        }
        let mut cx = Context::from_waker(Waker::noop());
        if !matches!(sink.poll_flush(&mut cx), Poll::Ready(Ok(()))) {
            self.backed_up.store(true, Ordering::Release);
            self.signal.flush();
        }
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // A panic while writing leaves whole frames or a broken writer: both usable.
        self.sink.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The owner writes one frame and flushes it. A frame once started is written whole,
    /// before any later frame, even if this future is dropped.
    ///
    /// # Errors
    /// The connection failed.
    pub async fn send(&self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut started = false;
        poll_fn(|cx| {
            let mut writer = self.writer();
            if !started {
                started = true;
                if let Err(e) = writer.start(cx, opcode, payload) {
                    self.settle(false);
                    return Poll::Ready(Err(e));
                }
            }
            let done = writer.poll_flush(cx);
            self.settle(matches!(done, Poll::Ready(Ok(()))));
            done
        })
        .await
    }

    /// Called under the lock after the owner polled the socket: senders may poll it again
    /// only once everything is written (and the owner is not closing).
    fn settle(&self, flushed: bool) {
        let waits = !flushed || self.closing.load(Ordering::Acquire);
        self.backed_up.store(waits, Ordering::Release);
    }

    /// The owner flushes what senders left in the writer; direct writes resume after it.
    ///
    /// # Errors
    /// The connection failed.
    pub async fn flush(&self) -> io::Result<()> {
        poll_fn(|cx| {
            let mut writer = self.writer();
            let done = writer.poll_flush(cx);
            self.settle(matches!(done, Poll::Ready(Ok(()))));
            done
        })
        .await
    }

    /// The owner sends a close frame, then closes the write side (TLS close_notify).
    ///
    /// # Errors
    /// The connection failed.
    pub async fn close(&self, code: Option<u16>, reason: &str) -> io::Result<()> {
        // Nothing may follow the close frame: from now on senders only queue, and the
        // queue is dropped with the socket.
        self.closing.store(true, Ordering::Release);
        self.backed_up.store(true, Ordering::Release);
        let body = code
            .map(|c| frame::close_body(c, reason))
            .unwrap_or_default();
        self.send(OP_CLOSE, &body).await?;
        poll_fn(|cx| self.writer().poll_shutdown(cx)).await
    }

    /// A frame of `len` bytes is about to enter the outbox; call before sending it there.
    /// `false` (and nothing counted): it would take the outbox over its byte budget.
    #[must_use]
    pub fn queue_one(&self, len: usize) -> bool {
        self.queued.fetch_add(1, Ordering::AcqRel);
        let before = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before.saturating_add(len) > self.max_queued_bytes {
            self.unqueue_one(len);
            return false;
        }
        true
    }

    /// A frame of `len` bytes left the outbox: written, or it never entered (full).
    pub fn unqueue_one(&self, len: usize) {
        self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::signaling::socket::Socket;

    /// The server's `Direct` over a loopback connection, and the client's end.
    async fn pair() -> (Arc<Direct>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (_reader, writer) = Socket::Tcp(accepted.unwrap().0, bytes::Bytes::new()).split(1024);
        let direct = Arc::new(Direct::new(writer, Arc::new(Signal::default()), usize::MAX));
        (direct, client.unwrap())
    }

    /// Reads `n` bytes and returns them.
    async fn drain(mut client: TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        client.read_exact(&mut got).await.unwrap();
        got
    }

    /// The owner waits for a client that reads slowly (its waker is the socket's) and a
    /// sender writes meanwhile: directly, or at the end of a batch that deferred a frame
    /// before the owner started. The sender must not poll the socket: its no-op waker would
    /// replace the owner's, and the owner, never woken when the client reads again, would
    /// fail at the send timeout. Time is paused: a lost wake-up shows as the clock running
    /// to the timeout with nothing else to do.
    #[tokio::test(start_paused = true)]
    async fn a_sender_writing_while_the_owner_waits_does_not_take_its_wake_up() {
        // More than loopback's buffers take at once: the owner's write has to wait.
        let big = vec![b'x'; 32 << 20];
        let small = Utf8Bytes::from_static("hello");
        let small_frame = [&[0x81, 5][..], small.as_bytes()].concat();
        let mut big_frame = vec![0x81, 127, 0, 0, 0, 0, 2, 0, 0, 0];
        big_frame.extend_from_slice(&big);
        for batched in [false, true] {
            let (direct, client) = pair().await;
            let mut batch = Batch::default();
            if batched {
                let wrote = batch.run(|| direct.try_write(small.clone()));
                assert!(matches!(wrote, Wrote::Done), "deferred into the batch");
            }
            // The owner task, polled only when woken (as the socket task is).
            let owner = tokio::spawn({
                let (direct, big) = (Arc::clone(&direct), big.clone());
                async move { direct.send(OP_TEXT, &big).await }
            });
            // One turn of this single-threaded runtime: the owner starts and waits.
            tokio::task::yield_now().await;
            assert!(!owner.is_finished());
            let expected = if batched {
                batch.flush();
                [&small_frame[..], &big_frame].concat()
            } else {
                match direct.try_write(small.clone()) {
                    Wrote::Done => [&big_frame[..], &small_frame].concat(),
                    Wrote::Queue(_) => big_frame.clone(),
                }
            };
            let reader = tokio::spawn(drain(client, expected.len()));
            tokio::time::timeout(Duration::from_secs(10), owner)
                .await
                .unwrap_or_else(|_| panic!("owner never woken (batched: {batched})"))
                .unwrap()
                .unwrap();
            assert!(reader.await.unwrap() == expected, "bytes out of order");
        }
    }
}
