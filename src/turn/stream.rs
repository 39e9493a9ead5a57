//! A TURN client's TCP or TLS connection, apart from what its frames mean.
//!
//! Reading: `Frames` yields whole frames (STUN or padded ChannelData) in place, with
//! `HEADROOM` free bytes in front of each so relaying can frame them for another client
//! without copying. Its buffer is small until the connection has an allocation, grows
//! to the size of a large frame only while that frame is read, and once a frame has
//! begun the rest must follow within `FRAME_DEADLINE`.
//!
//! Writing: everything for the client goes through its `Outbox`, a queue bounded in
//! bytes. `push` never waits: a full queue drops (the caller counts it); that is how UDP
//! listeners and relay tasks deliver. `push_or_wait` waits for room: only another stream
//! client's reader uses it, relaying that client's own frames, so TCP backpressure slows
//! that sender alone. The connection's own `Writer` task drains the queue, and a write
//! call that makes no progress within `WRITE_DEADLINE` ends the connection (and lets
//! waiting senders go). So no task of another client waits for this one to read, beyond
//! a sender waiting on its own frames.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::wire::{self, HEADROOM};
use crate::sync::Locked;

/// A client stream (TCP, or TLS over TCP).
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Bytes that may wait in user space for one client (the kernel's socket buffer comes
/// first); beyond, frames are dropped, as a congested UDP path would drop them.
pub const QUEUE_BYTES: usize = 256 * 1024;
/// A write (or flush) to a client that takes longer than this ends the connection.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// The largest buffer a writer keeps between runs for joining queued ones.
const JOINED_KEPT: usize = 64 * 1024;
/// Once a frame has begun, the rest of it must arrive within this.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(5);
/// The read buffer before the connection has an allocation: any control request fits.
pub const SMALL_BUFFER: usize = 512;
/// The largest frame taken before the connection has an allocation: nothing a client
/// sends then (Allocate, Binding) comes near it.
pub const SMALL_FRAME: usize = 4096;
/// The read buffer with an allocation: a burst of media frames in one read.
pub const LARGE_BUFFER: usize = 8 * 1024;

/// The way to one stream client: whole frames, queued without waiting.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// A queue that costs nothing until used (an idle connection holds no channel blocks),
/// locked only to push or pop.
struct Shared {
    queue: Mutex<VecDeque<Vec<u8>>>,
    /// Bytes queued and not yet written.
    queued: AtomicUsize,
    /// Wakes the writer; keeps a permit when it is not waiting, so no push is missed.
    wake: Notify,
    /// Wakes senders waiting for room (`push_or_wait`) after each write, and when the
    /// writer stops.
    room: Notify,
    /// The writer has stopped: nothing more is taken.
    gone: AtomicBool,
    /// The writer stops once everything queued is written and flushed (the connection's
    /// allocation is gone, and its last answer may still be queued).
    finishing: AtomicBool,
}

/// Drains one client's `Outbox` into its stream.
pub struct Writer<W> {
    shared: Arc<Shared>,
    write: W,
    /// Write each frame on its own (TLS: one record per frame, which some clients,
    /// coturn's among them, expect; `record_buffer` gathers the records of a run into
    /// one system call), or a run of frames in one write (TCP).
    per_frame: bool,
}

/// Why a `Writer` stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterEnd {
    /// The connection was closed from our side (or every `Outbox` is gone).
    Closed,
    /// The client took nothing within `WRITE_DEADLINE`.
    Stalled,
    /// The stream failed (reset, broken pipe).
    Failed,
}

/// Room for the TLS records of one run of frames, below the TLS layer.
pub const RECORDS_BUFFER: usize = 4 * 1024;

/// The transport a TURN-over-TLS connection is served on: it holds what the TLS layer
/// writes until the writer flushes after a run (or `RECORDS_BUFFER` fills). Each frame
/// still gets a record of its own (coturn's client takes one frame per record read), but
/// the records of a run leave in one system call instead of one each.
pub fn record_buffer<S: AsyncWrite>(transport: S) -> tokio::io::BufWriter<S> {
    tokio::io::BufWriter::with_capacity(RECORDS_BUFFER, transport)
}

/// An outbox and the writer that drains it into `write`.
pub fn outbox<W: AsyncWrite + Unpin>(write: W, per_frame: bool) -> (Outbox, Writer<W>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        queued: AtomicUsize::new(0),
        wake: Notify::new(),
        room: Notify::new(),
        gone: AtomicBool::new(false),
        finishing: AtomicBool::new(false),
    });
    let writer = Writer {
        shared: Arc::clone(&shared),
        write,
        per_frame,
    };
    (Outbox { shared }, writer)
}

impl Outbox {
    /// Lets the writer send what is queued, then close the connection (within its write
    /// deadline, or earlier when the connection's token is cancelled).
    pub fn finish(&self) {
        self.shared.finishing.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
    }

    /// Queues `frames` (one or more whole frames). False when they were dropped: the
    /// queue is full, or the connection is gone. A run larger than the whole queue is
    /// taken when nothing else waits, so the largest frame always gets through.
    pub fn push(&self, frames: Vec<u8>) -> bool {
        let shared = &self.shared;
        let len = frames.len();
        if shared.gone.load(Ordering::Relaxed) {
            return false;
        }
        let before = shared.queued.fetch_add(len, Ordering::Relaxed);
        if before > 0 && before + len > QUEUE_BYTES {
            shared.queued.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        shared.queue.locked().push_back(frames);
        shared.wake.notify_one();
        true
    }

    /// Queues `frames` once there is room, waiting for the writer to make it. False when
    /// the connection is gone (the writer has stopped: closed, failed, or past its write
    /// deadline), so the wait is bounded by that deadline.
    pub async fn push_or_wait(&self, frames: Vec<u8>) -> bool {
        let shared = &self.shared;
        loop {
            // Registered before the check, so a write finishing in between wakes it.
            let room = shared.room.notified();
            if shared.gone.load(Ordering::Relaxed) {
                return false;
            }
            let queued = shared.queued.load(Ordering::Relaxed);
            if queued == 0 || queued + frames.len() <= QUEUE_BYTES {
                return self.push(frames);
            }
            room.await;
        }
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Writes what is queued until `closed` fires, the stream fails, or a write misses
    /// its deadline; then cancels `closed`, so the connection's reader ends too.
    pub async fn run(mut self, closed: CancellationToken) -> WriterEnd {
        let end = self.drain(&closed).await;
        self.shared.gone.store(true, Ordering::Relaxed);
        self.shared.room.notify_waiters();
        closed.cancel();
        end
    }

    async fn drain(&mut self, closed: &CancellationToken) -> WriterEnd {
        // Everything queued goes out at once (TCP: in one write), then one flush.
        let mut unflushed = false;
        let mut runs = VecDeque::new();
        let mut joined = Vec::new();
        loop {
            std::mem::swap(&mut runs, &mut *self.shared.queue.locked());
            let written = match runs.len() {
                0 => None,
                1 => Some(runs.pop_front().expect("one run")),
                _ => {
                    joined.clear();
                    for run in runs.drain(..) {
                        joined.extend_from_slice(&run);
                    }
                    Some(std::mem::take(&mut joined))
                }
            };
            let written = match written {
                Some(run) => {
                    let (write, per_frame) = (&mut self.write, self.per_frame);
                    let written = within(closed, write_run(write, &run, per_frame)).await;
                    self.shared.queued.fetch_sub(run.len(), Ordering::Relaxed);
                    self.shared.room.notify_waiters();
                    if joined.capacity() == 0 && run.capacity() <= JOINED_KEPT {
                        joined = run;
                    }
                    unflushed = true;
                    written
                }
                None if unflushed => {
                    unflushed = false;
                    within(closed, flush(&mut self.write)).await
                }
                None if self.shared.finishing.load(Ordering::Relaxed) => Some(WriterEnd::Closed),
                None => tokio::select! {
                    () = closed.cancelled() => Some(WriterEnd::Closed),
                    () = self.shared.wake.notified() => None,
                },
            };
            if let Some(end) = written {
                return end;
            }
        }
    }
}

/// Runs a write (whose calls each have `WRITE_DEADLINE`) under the connection's token;
/// `None` when it is done.
async fn within(
    closed: &CancellationToken,
    write: impl Future<Output = std::io::Result<()>>,
) -> Option<WriterEnd> {
    tokio::select! {
        () = closed.cancelled() => Some(WriterEnd::Closed),
        r = write => match r {
            Ok(()) => None,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Some(WriterEnd::Stalled),
            Err(_) => Some(WriterEnd::Failed),
        },
    }
}

/// Writes all of `bytes`; each write call must make progress within `WRITE_DEADLINE`
/// (a slow client that keeps reading is not cut off for the size of its queue).
async fn write_all<W: AsyncWrite + Unpin>(write: &mut W, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let n = tokio::time::timeout(WRITE_DEADLINE, write.write(bytes))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

/// Flushes under `WRITE_DEADLINE`.
async fn flush<W: AsyncWrite + Unpin>(write: &mut W) -> std::io::Result<()> {
    tokio::time::timeout(WRITE_DEADLINE, write.flush())
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

async fn write_run<W: AsyncWrite + Unpin>(
    write: &mut W,
    run: &[u8],
    per_frame: bool,
) -> std::io::Result<()> {
    if !per_frame {
        return write_all(write, run).await;
    }
    let mut at = 0;
    while at < run.len() {
        let rest = &run[at..];
        // Frames we queue are whole; should one not parse, the rest goes as one write.
        let len = match rest.get(..4) {
            Some(h) => wire::stream_frame_len([h[0], h[1], h[2], h[3]])
                .filter(|n| *n <= rest.len())
                .unwrap_or(rest.len()),
            None => rest.len(),
        };
        write_all(write, &rest[..len]).await?;
        at += len;
    }
    Ok(())
}

/// Why reading frames stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the stream is not STUN or ChannelData")]
    Malformed,
    #[error("a frame of {0} bytes is larger than this connection takes now")]
    TooLarge(usize),
    #[error("a frame did not arrive whole within {} s", FRAME_DEADLINE.as_secs())]
    Stalled,
    #[error("the stream ended inside a frame")]
    Truncated,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Whole frames read from a stream into one buffer, in place.
pub struct Frames<R> {
    read: R,
    /// `buf[..HEADROOM]` is never read into; unconsumed bytes are `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The buffer size to return to between large frames.
    normal: usize,
    /// The largest frame taken.
    max_frame: usize,
    /// When the first bytes of the frame being read arrived.
    begun: Option<Instant>,
}

impl<R: AsyncRead + Unpin> Frames<R> {
    pub fn new(read: R) -> Frames<R> {
        Frames {
            read,
            buf: vec![0; HEADROOM + SMALL_BUFFER],
            start: HEADROOM,
            end: HEADROOM,
            normal: SMALL_BUFFER,
            max_frame: SMALL_FRAME,
            begun: None,
        }
    }

    /// Once the connection has an allocation: a larger buffer between frames (from the
    /// next frame on), and frames of any size.
    pub fn allocated(&mut self) {
        self.normal = LARGE_BUFFER;
        self.max_frame = wire::MAX_STREAM_FRAME;
    }

    /// The buffer the frames are in (a frame's range comes from `next`).
    pub fn buf_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Bytes of buffer this connection holds now.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, as a range of `buf_mut()` with `HEADROOM` bytes free in
    /// front of it; `None` when the stream ends between frames. Cancel-safe: dropping
    /// the future loses nothing that was read.
    ///
    /// # Errors
    /// The stream is not framed STUN/ChannelData, a frame stalls, or the stream fails.
    pub async fn next(&mut self) -> Result<Option<Range<usize>>, FrameError> {
        loop {
            let have = self.end - self.start;
            let need = if have >= 4 {
                let b = &self.buf[self.start..self.start + 4];
                let len = wire::stream_frame_len([b[0], b[1], b[2], b[3]])
                    .ok_or(FrameError::Malformed)?;
                if len > self.max_frame {
                    return Err(FrameError::TooLarge(len));
                }
                if have >= len {
                    let frame = self.start..self.start + len;
                    self.start += len;
                    // What follows is the beginning of the next frame.
                    self.begun = (self.start < self.end).then(Instant::now);
                    return Ok(Some(frame));
                }
                len
            } else {
                4
            };
            self.make_room(need);
            let read = self.read.read(&mut self.buf[self.end..]);
            let n = match self.begun {
                Some(begun) => tokio::time::timeout_at(begun + FRAME_DEADLINE, read)
                    .await
                    .map_err(|_| FrameError::Stalled)??,
                None => read.await?,
            };
            if n == 0 {
                return if have == 0 {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
            if have == 0 {
                self.begun = Some(Instant::now());
            }
            self.end += n;
        }
    }

    /// Makes room to read more of a frame of `need` bytes: back to the normal buffer
    /// between frames, the unconsumed bytes moved to the front, and, while a large frame
    /// is read, a buffer that doubles as its bytes arrive (a header that announces a large
    /// frame costs nothing until the frame's bytes come), up to the frame's size.
    fn make_room(&mut self, need: usize) {
        if self.start == self.end {
            self.start = HEADROOM;
            self.end = HEADROOM;
            if self.buf.len() != HEADROOM + self.normal {
                self.buf = vec![0; HEADROOM + self.normal];
            }
        }
        if self.start + need <= self.buf.len() {
            return;
        }
        let have = self.end - self.start;
        if self.start > HEADROOM {
            self.buf.copy_within(self.start..self.end, HEADROOM);
            self.start = HEADROOM;
            self.end = HEADROOM + have;
        }
        if HEADROOM + need <= self.buf.len() || self.end < self.buf.len() {
            return;
        }
        let size = (HEADROOM + need).min(2 * self.buf.len());
        let mut bigger = vec![0; size];
        bigger[HEADROOM..self.end].copy_from_slice(&self.buf[HEADROOM..self.end]);
        self.buf = bigger;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn stun(len: u16) -> Vec<u8> {
        let mut f = vec![0u8; 20 + usize::from(len)];
        f[0..2].copy_from_slice(&[0x00, 0x01]);
        f[2..4].copy_from_slice(&len.to_be_bytes());
        f[4..8].copy_from_slice(&stun::message::MAGIC_COOKIE.to_be_bytes());
        f
    }

    fn channel(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x40, 0x00];
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        f.extend_from_slice(payload);
        while f.len() % 4 != 0 {
            f.push(0);
        }
        f
    }

    #[tokio::test]
    async fn frames_split_anywhere_come_out_whole_with_headroom() {
        let big = channel(&vec![7u8; 60_000]);
        let frames = [
            stun(8),
            channel(b"abc"),
            big.clone(),
            stun(0),
            channel(b"z"),
        ];
        let bytes: Vec<u8> = frames.concat();
        let (mut client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            // Odd-sized pieces: headers and bodies split across reads.
            for piece in bytes.chunks(7) {
                client.write_all(piece).await.unwrap();
            }
        });
        let mut reader = Frames::new(server);
        reader.allocated();
        for expected in &frames {
            let range = reader.next().await.unwrap().expect("a frame");
            assert!(range.start >= HEADROOM);
            assert_eq!(&reader.buf_mut()[range], &expected[..]);
        }
        writer.await.unwrap();
        assert!(reader.next().await.unwrap().is_none(), "clean end");
        assert_eq!(
            reader.capacity(),
            HEADROOM + LARGE_BUFFER,
            "the large frame's buffer is given back"
        );
    }

    #[tokio::test]
    async fn junk_and_truncation_are_errors() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(&[0xC0, 0, 0, 0]).await.unwrap();
        assert!(matches!(
            Frames::new(server).next().await,
            Err(FrameError::Malformed)
        ));
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(&stun(8)[..10]).await.unwrap();
        drop(client);
        assert!(matches!(
            Frames::new(server).next().await,
            Err(FrameError::Truncated)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_that_stops_halfway_is_cut_off_and_costs_only_what_arrived() {
        let (mut client, server) = tokio::io::duplex(64);
        // A header announcing 65,532 bytes, then silence.
        client.write_all(&[0x00, 0x01, 0xFF, 0xFC]).await.unwrap();
        let mut reader = Frames::new(server);
        reader.allocated();
        let next = tokio::spawn(async move {
            let r = reader.next().await;
            (r, reader.capacity())
        });
        let (r, capacity) = next.await.unwrap();
        assert!(matches!(r, Err(FrameError::Stalled)), "{r:?}");
        assert_eq!(
            capacity,
            HEADROOM + LARGE_BUFFER,
            "no 64 KiB buffer for 4 bytes"
        );
        drop(client);
    }

    #[tokio::test]
    async fn before_an_allocation_large_frames_are_refused() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(&[0x00, 0x01, 0xFF, 0xFC]).await.unwrap();
        let mut reader = Frames::new(server);
        assert!(matches!(
            reader.next().await,
            Err(FrameError::TooLarge(65_552))
        ));
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(&stun(1000)).await.unwrap();
        let mut reader = Frames::new(server);
        assert!(
            reader.next().await.unwrap().is_some(),
            "a 1 KB request is fine"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_does_not_read_is_dropped_from_and_then_cut_off() {
        let (client, server) = tokio::io::duplex(1024);
        let (outbox, writer) = outbox(server, false);
        let closed = CancellationToken::new();
        let task = tokio::spawn(writer.run(closed.clone()));
        let frame = vec![0u8; 64 * 1024];
        let mut taken = 0;
        while outbox.push(frame.clone()) {
            taken += 1;
            assert!(taken < 100, "the queue is bounded");
        }
        assert!(outbox.queued() <= QUEUE_BYTES + frame.len());
        assert_eq!(task.await.unwrap(), WriterEnd::Stalled);
        assert!(closed.is_cancelled(), "the reader is told");
        assert!(!outbox.push(vec![0; 4]), "a gone connection takes nothing");
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sender_waits_for_room_and_stops_waiting_when_the_client_is_cut_off() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (outbox, writer) = outbox(server, false);
        let closed = CancellationToken::new();
        let task = tokio::spawn(writer.run(closed.clone()));
        let frame = vec![0u8; 64 * 1024];
        while outbox.push(frame.clone()) {}
        // The client reads: room comes, and the waiting sender gets its frame in.
        let reading = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0;
            while total < 256 * 1024 {
                total += client.read(&mut buf).await.unwrap();
            }
            client
        });
        assert!(outbox.push_or_wait(frame.clone()).await);
        let client = reading.await.unwrap();
        // The client stops reading: the writer is cut off at its deadline, and a sender
        // waiting for room is let go.
        while outbox.push(frame.clone()) {}
        assert!(!outbox.push_or_wait(frame.clone()).await);
        assert_eq!(task.await.unwrap(), WriterEnd::Stalled);
        drop(client);
    }

    #[tokio::test]
    async fn tls_gets_one_write_per_frame_and_tcp_one_per_run() {
        /// Records the size of every write.
        struct Writes(Vec<usize>);
        impl AsyncWrite for Writes {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                self.0.push(buf.len());
                std::task::Poll::Ready(Ok(buf.len()))
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
        }
        let run = [channel(b"abcde"), stun(4)].concat();
        let mut w = Writes(Vec::new());
        write_run(&mut w, &run, true).await.unwrap();
        assert_eq!(w.0, vec![12, 24]);
        let mut w = Writes(Vec::new());
        write_run(&mut w, &run, false).await.unwrap();
        assert_eq!(w.0, vec![36]);
    }

    /// Counts the writes that reach the socket, under the TLS layer.
    struct Counted<S> {
        inner: S,
        writes: Arc<AtomicUsize>,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// Over TLS each frame is a record of its own (what coturn's client needs), and a run
    /// of frames reaches the socket in one write, not one per frame.
    #[tokio::test]
    async fn tls_frames_are_records_of_their_own_and_a_run_leaves_in_one_write() {
        use tokio::net::{TcpListener, TcpStream};
        const FRAMES: usize = 20;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let loaded = crate::tls::from_pem(
            &cert.pem(),
            &key.serialize_pem(),
            std::path::Path::new("test"),
            crate::tls::CertOrigin::Generated("test".into()),
        )
        .unwrap();
        let material = crate::tls::TlsMaterial::new(loaded).unwrap();
        let mut config = (*material.turn_server_config()).clone();
        // No session tickets: every application-data record after the handshake is a frame.
        config.send_tls13_tickets = 0;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let writes = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&writes);
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let tcp = record_buffer(Counted {
                inner: tcp,
                writes: counted,
            });
            acceptor.accept(tcp).await.unwrap()
        });
        let client = crate::tls::probe_connector(b"stun.turn")
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                TcpStream::connect(addr).await.unwrap(),
            )
            .await
            .unwrap();
        let tls = server.await.unwrap();
        let before = writes.load(Ordering::Relaxed);
        let (outbox, writer) = outbox(tls, true);
        let closed = CancellationToken::new();
        let task = tokio::spawn(writer.run(closed.clone()));
        let run: Vec<u8> = (0..FRAMES).flat_map(|_| channel(&[7u8; 120])).collect();
        assert!(outbox.push(run));
        // Read the records raw: 5-byte headers, application data is type 23.
        let (mut raw, _) = client.into_inner();
        let mut records = 0;
        let mut buf = Vec::new();
        while records < FRAMES {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut chunk))
                .await
                .expect("records in time")
                .unwrap();
            assert!(n > 0, "closed after {records} records");
            buf.extend_from_slice(&chunk[..n]);
            while buf.len() >= 5 {
                let len = 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]));
                if buf.len() < len {
                    break;
                }
                assert_eq!(buf[0], 23, "an application-data record");
                records += 1;
                buf.drain(..len);
            }
        }
        assert_eq!(records, FRAMES, "one record per frame");
        let socket_writes = writes.load(Ordering::Relaxed) - before;
        assert!(
            socket_writes <= 2,
            "{socket_writes} writes for {FRAMES} frames"
        );
        closed.cancel();
        let _ = task.await;
    }
}
