//! What wakes a socket task from outside: work on its write side (a write that a sender
//! started and the owner must finish, or frames in its outbox's queue: `flush`), an
//! eviction, the server's shutdown.
//!
//! One atomic word and one waker per socket. The task polls it on every wake-up, so it
//! must cost no lock: a `Notify` and a `CancellationToken` each lock a mutex per poll,
//! which was about 3 % of a relayed message's CPU time.
//!
//! `Signals` knows every live socket's `Signal`, so that shutdown reaches all of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use crate::sync::Locked;
use futures_util::task::AtomicWaker;

const FLUSH: u8 = 1;
const CLOSE: u8 = 2;

/// Why a peer's socket is closed from outside its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Its outbox was full: a client too slow to read.
    Overflow,
    /// The operator closed its room or kicked it (admin API).
    Kicked,
    /// A new socket resumed its peer (`resume`): the peer lives on there.
    Replaced,
}

/// The signal of one socket task.
#[derive(Debug, Default)]
pub struct Signal {
    state: AtomicU8,
    /// Why it was closed: unset for a shutdown. Set before `CLOSE`, so whoever sees
    /// `CLOSE` sees the reason.
    why: OnceLock<Eviction>,
    waker: AtomicWaker,
}

/// Why `Signal::poll` woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// Finish the write a sender started, then write the queued frames.
    Flush,
    /// Close the socket: evicted for this reason, or (`None`) the server is shutting down.
    Close(Option<Eviction>),
}

impl Signal {
    /// Asks the owner task to flush its socket and write what its outbox queued.
    pub fn flush(&self) {
        self.state.fetch_or(FLUSH, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Tells the owner task to close its socket; the first reason wins.
    pub fn evict(&self, why: Eviction) {
        let _ = self.why.set(why);
        self.close();
    }

    /// Tells the owner task that the server is shutting down.
    pub fn shut_down(&self) {
        self.close();
    }

    fn close(&self) {
        self.state.fetch_or(CLOSE, Ordering::AcqRel);
        self.waker.wake();
    }

    pub fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLOSE != 0
    }

    /// Why it was closed: `None` for a shutdown (or while it is open).
    pub fn reason(&self) -> Option<Eviction> {
        self.why.get().copied()
    }

    /// Ready with what happened since the last call; a close stays ready. Only the owner
    /// task polls (one waker is kept).
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<Woken> {
        self.waker.register(cx.waker());
        let state = self.state.load(Ordering::Acquire);
        if state & CLOSE != 0 {
            return Poll::Ready(Woken::Close(self.reason()));
        }
        if state & FLUSH != 0 {
            self.state.fetch_and(!FLUSH, Ordering::AcqRel);
            return Poll::Ready(Woken::Flush);
        }
        Poll::Pending
    }

    /// Completes once the socket is to close, with the reason (`None`: shutdown).
    pub async fn closed(&self) -> Option<Eviction> {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.is_closed() {
                Poll::Ready(self.reason())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// Every live socket's signal.
#[derive(Debug, Default)]
pub struct Signals {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    live: HashMap<u64, Arc<Signal>>,
    shut_down: bool,
}

/// A socket's place in `Signals`, left when dropped.
#[derive(Debug)]
pub struct Registration {
    signals: Arc<Signals>,
    id: u64,
    pub signal: Arc<Signal>,
}

impl Signals {
    /// A signal for a new socket; already closed if the server is shutting down.
    pub fn register(self: &Arc<Self>) -> Registration {
        let signal = Arc::new(Signal::default());
        let mut inner = self.inner.locked();
        if inner.shut_down {
            signal.shut_down();
        }
        let id = inner.next;
        inner.next += 1;
        inner.live.insert(id, Arc::clone(&signal));
        Registration {
            signals: Arc::clone(self),
            id,
            signal,
        }
    }

    /// Tells every socket, and every later one, that the server is shutting down.
    pub fn shut_down(&self) {
        let mut inner = self.inner.locked();
        inner.shut_down = true;
        for signal in inner.live.values() {
            signal.shut_down();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.locked().live.len()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.signals.inner.lock() {
            inner.live.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll(signal: &Signal) -> Poll<Woken> {
        signal.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_flush_is_reported_once_and_a_close_stays() {
        let signal = Signal::default();
        assert_eq!(poll(&signal), Poll::Pending);
        signal.flush();
        signal.flush();
        assert_eq!(poll(&signal), Poll::Ready(Woken::Flush));
        assert_eq!(poll(&signal), Poll::Pending);
        signal.evict(Eviction::Overflow);
        signal.evict(Eviction::Kicked);
        for _ in 0..2 {
            assert_eq!(
                poll(&signal),
                Poll::Ready(Woken::Close(Some(Eviction::Overflow)))
            );
        }
    }

    #[test]
    fn shutdown_reaches_live_and_later_sockets_but_not_dropped_ones() {
        let signals = Arc::new(Signals::default());
        let live = signals.register();
        let gone = signals.register();
        let gone_signal = Arc::clone(&gone.signal);
        drop(gone);
        assert_eq!(signals.len(), 1);
        signals.shut_down();
        assert_eq!(poll(&live.signal), Poll::Ready(Woken::Close(None)));
        assert!(!gone_signal.is_closed());
        let later = signals.register();
        assert!(later.signal.is_closed());
        drop((live, later));
        assert_eq!(signals.len(), 0);
    }

    #[tokio::test]
    async fn closed_waits_for_the_close_not_for_a_flush() {
        let signal = Signal::default();
        let mut closed = std::pin::pin!(signal.closed());
        assert!(futures_util::poll!(closed.as_mut()).is_pending());
        signal.flush();
        assert!(futures_util::poll!(closed.as_mut()).is_pending());
        signal.evict(Eviction::Kicked);
        assert_eq!(closed.await, Some(Eviction::Kicked));
    }

    #[test]
    fn the_owner_is_woken() {
        struct Count(AtomicU8);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicU8::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let signal = Signal::default();
        assert!(signal.poll(&mut Context::from_waker(&waker)).is_pending());
        signal.flush();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(signal.poll(&mut Context::from_waker(&waker)).is_ready());
        assert!(signal.poll(&mut Context::from_waker(&waker)).is_pending());
        signal.shut_down();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }
}
