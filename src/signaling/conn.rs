//! The loop every signaling socket of the native and plain-WebSocket dialects runs: read
//! messages and hand them to the dialect, write what the dialect answers and what other
//! peers queued, keep the connection alive, and close it with a reason.
//!
//! A dialect is a `Handler`: plain, non-async methods that turn one message (or its
//! deadline) into a `Reply`. This module owns the socket, the outbox's receiving end and
//! the timers, so that each dialect is just its protocol.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::direct::{Batch, Direct};
use super::frame::{CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_UNSUPPORTED};
use super::frame::{Incoming, OP_PING, OP_PONG, OP_TEXT};
use super::host::Host;
use super::outbox::{Outbox, Queue};
use super::registry::PendingJoin;
use super::room::{JoinError, Joined};
use super::signal::Eviction;
use super::signal::{Registration, Signal, Woken};
use super::socket::{ReadError, Socket};
use super::stats::Refusal;

/// How long one frame may take to reach a client before it counts as dead.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The least a socket's outbox may hold in bytes; it holds four of the largest messages
/// when `signaling.max_message_bytes` makes that more.
const OUTBOX_MIN_BYTES: usize = 1 << 20;

/// What to do after a message or a deadline.
pub enum Reply {
    None,
    /// Send this frame to the client itself.
    Send(String),
    /// Send this frame (if any), then close with this code and reason.
    Close(Option<String>, u16, &'static str),
    /// Wait for a join that a shared registry decides, then answer what `Handler::joined`
    /// makes of its outcome. The socket reads nothing meanwhile; an eviction or shutdown
    /// still closes it.
    Join(PendingJoin),
}

/// One signaling dialect's protocol, driven by `Conn::serve`.
pub trait Handler {
    /// A text message from the client.
    fn text(&mut self, text: &str) -> Reply;
    /// A binary message, which no dialect uses (a second one closes the socket).
    fn binary(&mut self) -> Reply;
    /// A frame that is not a text message (ping, pong, binary) takes a token from the
    /// socket's message budget as a message does. `Err(Reply::None)`: over the rate, the
    /// frame is dropped (a ping gets no pong); `Err(Reply::Close(..))`: the client goes.
    fn charge(&mut self) -> Result<(), Reply>;
    /// When the dialect next wants `deadline` called, if ever: asked after every event.
    fn next_deadline(&self) -> Option<Instant>;
    /// The time from `next_deadline` has come.
    fn deadline(&mut self) -> Reply;
    /// The outcome of the join a `Reply::Join` waited for.
    fn joined(&mut self, outcome: Result<Joined, JoinError>) -> Reply;
    /// The socket is done (`ended` says how): leave rooms, free names. Called before the
    /// close frame is written, which may take a while to a client that stopped reading.
    fn finish(&mut self, ended: Ended);
}

/// How a socket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client sent a close frame: it meant to go.
    Closed,
    /// Anything else: the connection broke or went silent, or the server closed it.
    Lost,
}

/// A socket's reading half, its shared writing half, and its outbox's receiving end.
pub struct Conn {
    app: Arc<Host>,
    reader: super::socket::Reader,
    direct: Arc<Direct>,
    queue: Arc<Queue>,
    /// Flush requests, eviction and shutdown; the socket stays registered while `Conn` lives.
    registration: Registration,
}

impl Conn {
    /// Sets up `socket` and the outbox other peers reach it through.
    pub fn new(app: &Arc<Host>, socket: Socket) -> (Conn, Outbox) {
        // The transport limit: the message limit is checked on the text, for a coded error.
        let max = app.live().signaling.max_message_bytes * 2;
        let (reader, writer) = socket.split(max);
        let queue = Arc::<Queue>::default();
        let registration = app.signals.register();
        let budget = (4 * app.live().signaling.max_message_bytes).max(OUTBOX_MIN_BYTES);
        let direct = Arc::new(Direct::new(
            writer,
            Arc::clone(&registration.signal),
            budget,
        ));
        let outbox = Outbox {
            queue: Arc::clone(&queue),
            signal: Arc::clone(&registration.signal),
            direct: Some(Arc::clone(&direct)),
        };
        let conn = Conn {
            app: Arc::clone(app),
            reader,
            direct,
            queue,
            registration,
        };
        (conn, outbox)
    }

    /// Runs the socket until it closes; the close frame, if any, has been sent then.
    pub async fn serve(mut self, dialect: &mut impl Handler) {
        let mut ended = Ended::Lost;
        let close = self.run(dialect, &mut ended).await;
        dialect.finish(ended);
        if let Some((code, reason)) = close {
            // Boxed, as every wait but the loop's own (see `run`).
            let _ = Box::pin(finish(self.direct.close(Some(code), reason))).await;
            info!(code, reason, "disconnected");
        } else {
            info!("disconnected");
        }
    }

    async fn run(
        &mut self,
        dialect: &mut impl Handler,
        ended: &mut Ended,
    ) -> Option<(u16, &'static str)> {
        // The waits that are not the loop's own (a write that must wait for the client, a
        // reply) are boxed: this future is kept by every connection for its whole life, and
        // the largest wait sets its size (1.3 KiB unboxed, more than half of it for them).
        let (ping_interval, idle_timeout) = {
            let cfg = &self.app.live().signaling;
            (cfg.ping_interval(), cfg.idle_timeout())
        };
        let mut last_seen = Instant::now();
        // One timer for the keepalive and the dialect's deadline, armed for the earlier:
        // every branch is polled on every wake-up, so each timer costs on every message.
        let mut next_ping = Instant::now() + ping_interval;
        let mut due = dialect.next_deadline();
        // A message begun and never finished pins its bytes; the pings in between keep the
        // client alive, not the message: it must end within `idle_timeout_s` of its start.
        let unfinished =
            |reader: &super::socket::Reader| reader.message_started().map(|t| t + idle_timeout);
        let wake_at = |deadlines: [Option<Instant>; 2], next_ping: Instant| {
            deadlines
                .into_iter()
                .flatten()
                .fold(next_ping, Instant::min)
        };
        let mut armed = wake_at([due, unfinished(&self.reader)], next_ping);
        let timer = tokio::time::sleep_until(armed);
        tokio::pin!(timer);
        let direct = &self.direct;
        let mut batch = Batch::default();
        let mut binaries = 0u32;
        let signal: &Signal = &self.registration.signal;
        let app = &self.app;
        loop {
            let reply = tokio::select! {
                biased;
                woken = std::future::poll_fn(|cx| signal.poll(cx)) => {
                    if let Woken::Close(why) = woken {
                        return Some(evicted_close(app, why));
                    }
                    // What senders left in the writer goes first: they wrote directly only
                    // while nothing was queued.
                    let flushed = Box::pin(unless_closed(signal, finish(direct.flush()))).await;
                    if let Err(close) = stopped(app, flushed) {
                        return close;
                    }
                    while let Some(frame) = self.queue.pop() {
                        let send = finish(direct.send(OP_TEXT, frame.as_bytes()));
                        let sent = Box::pin(unless_closed(signal, send)).await;
                        // The frame is started (or the socket is closing): senders may write past it.
                        direct.unqueue_one(frame.len());
                        if let Err(close) = stopped(app, sent) {
                            return close;
                        }
                    }
                    continue;
                }
                incoming = self.reader.next() => {
                    last_seen = Instant::now();
                    let mut msg = match incoming {
                        Ok(Some(msg)) => msg,
                        Ok(None) => return None,
                        Err(e) => return read_failed(e),
                    };
                    // Messages already read are handled as one batch: the peers they go to
                    // get one write each (see `direct::Batch`). Every frame is charged to
                    // the message budget; of the pings in a batch only the last is
                    // answered (RFC 6455 section 5.5.3 allows it), after the batch.
                    let mut pong = None;
                    loop {
                        let reply = match msg {
                            Incoming::Text(text) => batch.run(|| dialect.text(&text)),
                            Incoming::Binary(_) => match dialect.charge() {
                                Err(refused) => refused,
                                Ok(()) if binaries == 0 => {
                                    binaries += 1;
                                    dialect.binary()
                                }
                                Ok(()) => Reply::Close(
                                    None,
                                    CLOSE_UNSUPPORTED,
                                    "binary frames are not supported",
                                ),
                            },
                            Incoming::Ping(data) => match dialect.charge() {
                                Ok(()) => {
                                    pong = Some(data);
                                    Reply::None
                                }
                                Err(refused) => refused,
                            },
                            Incoming::Pong => dialect.charge().err().unwrap_or(Reply::None),
                            Incoming::Close(code) => {
                                batch.flush();
                                *ended = Ended::Closed;
                                // The client closes: echo its status (RFC 6455 section 5.5.1).
                                return Some((code.unwrap_or(CLOSE_NORMAL), ""));
                            }
                        };
                        if !matches!(reply, Reply::None) {
                            batch.flush();
                            let answered = answer(direct, signal, app, dialect, reply);
                            if let Err(close) = Box::pin(answered).await {
                                return close;
                            }
                        }
                        msg = match self.reader.buffered() {
                            Ok(Some(next)) => next,
                            Ok(None) => break,
                            Err(e) => {
                                batch.flush();
                                return read_failed(e);
                            }
                        };
                    }
                    batch.flush();
                    if let Some(data) = pong
                        && Box::pin(write(direct, OP_PONG, &data)).await.is_err()
                    {
                        return None;
                    }
                    Reply::None
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if unfinished(&self.reader).is_some_and(|end| now >= end) {
                        debug!("fragmented message not finished in time");
                        return Some((CLOSE_POLICY, "message not finished in time"));
                    }
                    if now >= next_ping {
                        next_ping = now + ping_interval;
                        let silent = now.saturating_duration_since(last_seen);
                        if silent > idle_timeout {
                            warn!(idle_s = silent.as_secs(), "dropping unresponsive client");
                            return None;
                        }
                        if ping_due(silent, ping_interval, idle_timeout)
                            && Box::pin(write(direct, OP_PING, &[])).await.is_err()
                        {
                            return None;
                        }
                    }
                    if due.is_some_and(|d| now >= d) {
                        dialect.deadline()
                    } else {
                        Reply::None
                    }
                }
            };
            if !matches!(reply, Reply::None)
                && let Err(close) = Box::pin(answer(direct, signal, app, dialect, reply)).await
            {
                return close;
            }
            due = dialect.next_deadline();
            let wake = wake_at([due, unfinished(&self.reader)], next_ping);
            if wake != armed {
                armed = wake;
                timer.as_mut().reset(armed);
            }
        }
    }
}

/// Carries out a `Reply`: sends it to the client itself, or first waits for the join it
/// names; `Err` carries what `run` returns (the close).
async fn answer(
    direct: &Direct,
    signal: &Signal,
    app: &Host,
    dialect: &mut impl Handler,
    mut reply: Reply,
) -> Result<(), Option<(u16, &'static str)>> {
    while let Reply::Join(pending) = reply {
        let outcome = tokio::select! {
            outcome = pending => outcome,
            why = signal.closed() => return Err(Some(evicted_close(app, why))),
        };
        reply = dialect.joined(outcome);
    }
    match reply {
        Reply::None | Reply::Join(_) => Ok(()),
        Reply::Send(frame) => match write(direct, OP_TEXT, frame.as_bytes()).await {
            Ok(()) => Ok(()),
            Err(()) => Err(Some((CLOSE_GOING_AWAY, "write failed"))),
        },
        Reply::Close(frame, code, reason) => {
            if let Some(frame) = frame {
                let _ = write(direct, OP_TEXT, frame.as_bytes()).await;
            }
            Err(Some((code, reason)))
        }
    }
}

/// What a failed read closes with.
fn read_failed(e: ReadError) -> Option<(u16, &'static str)> {
    match e {
        ReadError::Violation(v) => {
            debug!(reason = v.reason(), "websocket protocol violation");
            Some((v.close_code(), v.reason()))
        }
        ReadError::Io(e) => {
            debug!(error = %e, "websocket read failed");
            None
        }
    }
}

/// The close frame for an evicted socket (`None`: the server is shutting down), logged
/// and counted.
pub fn evicted_close(app: &Host, why: Option<Eviction>) -> (u16, &'static str) {
    match why {
        None => (CLOSE_GOING_AWAY, "server shutting down"),
        Some(Eviction::Overflow) => {
            warn!("send queue overflow, disconnecting slow client");
            app.metrics.refusals.inc(Refusal::SendQueue);
            (CLOSE_POLICY, "send queue overflow")
        }
        Some(Eviction::Kicked) => {
            info!("closed by the operator");
            (CLOSE_POLICY, "closed by the server operator")
        }
        Some(Eviction::Replaced) => {
            info!("replaced by a resumed socket");
            (CLOSE_NORMAL, "resumed on another connection")
        }
    }
}

/// Why a write did not complete.
enum Stopped {
    Failed,
    /// Evicted (`None`: the server is shutting down) while the write waited.
    Evicted(Option<Eviction>),
}

/// What `run` returns after an owner's write that did not complete (`Err`).
fn stopped(app: &Host, done: Result<(), Stopped>) -> Result<(), Option<(u16, &'static str)>> {
    match done {
        Ok(()) => Ok(()),
        Err(Stopped::Failed) => Err(None),
        Err(Stopped::Evicted(why)) => Err(Some(evicted_close(app, why))),
    }
}

/// A write that a client which stopped reading can block; when its queue overflows
/// meanwhile (or the server shuts down), it is dropped at once, not after the send timeout.
async fn unless_closed(
    signal: &Signal,
    write: impl Future<Output = Result<(), ()>>,
) -> Result<(), Stopped> {
    tokio::select! {
        done = write => done.map_err(|()| Stopped::Failed),
        why = signal.closed() => Err(Stopped::Evicted(why)),
    }
}

/// Writes one frame through the shared writing half, waiting for the lock.
async fn write(direct: &Direct, opcode: u8, payload: &[u8]) -> Result<(), ()> {
    finish(direct.send(opcode, payload)).await
}

/// Awaits a write or flush with the send timeout, logging a failure.
pub async fn finish<E: std::fmt::Display>(
    sending: impl Future<Output = Result<(), E>>,
) -> Result<(), ()> {
    let mut sending = std::pin::pin!(sending);
    // Nearly every write completes at once: only one that has to wait gets a timer.
    let done = match futures_util::poll!(sending.as_mut()) {
        std::task::Poll::Ready(result) => Ok(result),
        std::task::Poll::Pending => tokio::time::timeout(SEND_TIMEOUT, sending).await,
    };
    match done {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            debug!(error = %e, "websocket write failed");
            Err(())
        }
        Err(_) => {
            warn!("websocket write timed out");
            Err(())
        }
    }
}

/// Whether the keepalive tick at which the client has been `silent` pings it.
///
/// A client heard from recently is alive and gets no ping (a busy socket writes no
/// extra frames). But the ping must go out early enough that its pong is back before
/// the next tick's idle check: the pong of the previous ping counts as "heard", so
/// "silent for a whole interval" alone would skip every other ping and drop a quiet,
/// responsive client whenever `idle` is under two intervals or a tick runs late.
/// Pinging once silent for half of the slack `idle - interval` leaves that half as
/// the margin for a late tick and the pong's round trip.
fn ping_due(silent: Duration, interval: Duration, idle: Duration) -> bool {
    silent >= interval.min(idle.saturating_sub(interval) / 2)
}

/// The socket loop driven over a loopback TCP pair, in process: the real `Conn`, `Direct`
/// and `Outbox` on the server side, a plain WebSocket client on the other.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::extract::ws::Utf8Bytes;

    use futures_util::StreamExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;
    use crate::config::Config;
    use crate::signaling::host::Live;
    use crate::signaling::outbox::OUTBOX_CAPACITY;

    /// A dialect that answers nothing and never times out.
    struct Quiet;

    impl Handler for Quiet {
        fn text(&mut self, _: &str) -> Reply {
            Reply::None
        }
        fn binary(&mut self) -> Reply {
            Reply::None
        }
        fn charge(&mut self) -> Result<(), Reply> {
            Ok(())
        }
        fn next_deadline(&self) -> Option<Instant> {
            None
        }
        fn deadline(&mut self) -> Reply {
            Reply::None
        }
        fn joined(&mut self, _: Result<Joined, JoinError>) -> Reply {
            Reply::None
        }
        fn finish(&mut self, _: Ended) {}
    }

    /// A served socket's outbox and the client's end of it.
    async fn pair() -> (Outbox, WebSocketStream<TcpStream>) {
        pair_with("").await
    }

    async fn pair_with(toml: &str) -> (Outbox, WebSocketStream<TcpStream>) {
        let app = host(toml);
        let ((conn, outbox), client) = socket_pair(&app).await;
        tokio::spawn(async move { conn.serve(&mut Quiet).await });
        let ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (outbox, ws)
    }

    fn host(toml: &str) -> Arc<Host> {
        let config = Config::from_toml(toml, "t").unwrap();
        Arc::new(Host::new(
            Live::new(&config),
            None,
            crate::signaling::dialects(&config.signaling, None, None).membership(),
            tokio_util::sync::CancellationToken::new(),
            tokio_util::task::TaskTracker::new(),
        ))
    }

    /// A `Conn` on a loopback connection, not served yet, and the client's end.
    async fn socket_pair(app: &Arc<Host>) -> ((Conn, Outbox), TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let socket = Socket::Tcp(accepted.unwrap().0, bytes::Bytes::new());
        (Conn::new(app, socket), client.unwrap())
    }

    fn frame(i: usize) -> Utf8Bytes {
        format!("{i:06}{}", "x".repeat(1000)).into()
    }

    async fn next(ws: &mut WebSocketStream<TcpStream>) -> Message {
        tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("a frame")
    }

    /// Every connection keeps its loop's future for its whole life: the waits that are
    /// not the loop's own are boxed, and no copy of the settings is kept (1.6 KiB before).
    #[tokio::test]
    async fn a_served_socket_s_future_stays_small() {
        let app = host("");
        let ((conn, _outbox), _client) = socket_pair(&app).await;
        let mut quiet = Quiet;
        let serving = std::mem::size_of_val(&conn.serve(&mut quiet));
        assert!(serving <= 1024, "Conn::serve's future is {serving} bytes");
    }

    #[tokio::test]
    async fn frames_delivered_while_the_client_reads_arrive_all_and_in_order() {
        let (outbox, mut ws) = pair().await;
        let n = 2 * OUTBOX_CAPACITY;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < n {
                if let Message::Text(t) = next(&mut ws).await {
                    got.push(t[..6].parse::<usize>().unwrap());
                }
            }
            got
        });
        // Delivered in bursts the socket cannot always take at once: some go directly,
        // some through the queue, and the order must hold across both.
        for i in 0..n {
            outbox.deliver(frame(i));
            if i % 64 == 63 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(reader.await.unwrap(), (0..n).collect::<Vec<_>>());
        assert!(!outbox.signal.is_closed());
    }

    /// What the registry delivers under its lock is only queued (no socket I/O there), and
    /// what is delivered after it, which may go straight into the socket, waits behind it.
    #[tokio::test]
    async fn queued_frames_keep_their_place_before_later_direct_ones() {
        let (outbox, mut ws) = pair().await;
        let n = 200;
        for i in 0..n {
            if i % 3 == 0 {
                outbox.queue(frame(i));
            } else {
                outbox.deliver(frame(i));
            }
        }
        let mut got = Vec::new();
        while got.len() < n {
            if let Message::Text(t) = next(&mut ws).await {
                got.push(t[..6].parse::<usize>().unwrap());
            }
        }
        assert_eq!(got, (0..n).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_evicted_and_gets_what_it_got_in_order() {
        let (outbox, mut ws) = pair().await;
        // Nobody reads: the kernel buffers fill, then the queue; delivering never waits.
        let mut delivered = 0;
        while !outbox.signal.is_closed() {
            assert!(delivered < 100_000, "never evicted");
            outbox.deliver(frame(delivered));
            delivered += 1;
            if delivered % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(outbox.signal.reason(), Some(Eviction::Overflow));
        // What reaches the client is a prefix of what was delivered, then the close.
        let mut expected = 0;
        loop {
            match next(&mut ws).await {
                Message::Text(t) => {
                    assert_eq!(t[..6].parse::<usize>().unwrap(), expected);
                    expected += 1;
                }
                Message::Close(close) => {
                    let close = close.expect("a close frame with a reason");
                    assert_eq!(u16::from(close.code), CLOSE_POLICY);
                    assert_eq!(close.reason.as_str(), "send queue overflow");
                    break;
                }
                _ => {}
            }
        }
        assert!(expected > 0 && expected < delivered);
    }

    /// The outbox is budgeted in bytes, not only in frames: a client that stops reading
    /// while it is sent large messages is evicted once about 1 MiB waits for it (256
    /// frames of 60 KB, 15 MB, used to wait). Nothing serves the socket here, so whatever
    /// the kernel does not take waits in the outbox.
    #[tokio::test]
    async fn a_slow_readers_outbox_holds_a_bounded_number_of_bytes() {
        let app = host("");
        let (conn, _client) = socket_pair(&app).await;
        let (conn, outbox) = conn;
        let big: Utf8Bytes = "y".repeat(60_000).into();
        let mut delivered = 0;
        while !outbox.signal.is_closed() {
            assert!(delivered < 10_000, "never evicted");
            outbox.deliver(big.clone());
            delivered += 1;
        }
        assert_eq!(outbox.signal.reason(), Some(Eviction::Overflow));
        let mut queued = 0;
        while let Some(frame) = conn.queue.pop() {
            queued += frame.len();
        }
        assert!(queued > 0, "nothing queued: the socket took it all?");
        assert!(queued <= OUTBOX_MIN_BYTES, "{queued} bytes queued");
    }

    /// A client that begins a fragmented message and then only pings is closed once the
    /// message is as old as the idle timeout (not at the keepalive tick after): its pings
    /// keep it alive, not the bytes it pinned. Time is paused.
    #[tokio::test(start_paused = true)]
    async fn a_message_begun_and_never_finished_closes_the_socket() {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

        let (_outbox, mut ws) =
            pair_with("[signaling]\nping_interval_s = 2\nidle_timeout_s = 3\n").await;
        let begun = Instant::now();
        let first = Frame::message(vec![b'a'; 1000], OpCode::Data(Data::Text), false);
        ws.send(Message::Frame(first)).await.unwrap();
        let close = loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Close(close))) => break close,
                    Some(Ok(_)) => {}
                    other => panic!("ended without a close frame: {other:?}"),
                },
                () = tokio::time::sleep(Duration::from_millis(500)) => {
                    assert!(begun.elapsed() < Duration::from_secs(30), "never closed");
                    ws.send(Message::Ping(vec![1].into())).await.unwrap();
                }
            }
        };
        let close = close.expect("a close frame with a reason");
        assert_eq!(u16::from(close.code), CLOSE_POLICY);
        assert_eq!(close.reason.as_str(), "message not finished in time");
        // idle_timeout_s = 3; the keepalive ticks at 2 and 4 s.
        let took = begun.elapsed();
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_millis(3100),
            "closed after {took:?}"
        );
    }

    #[test]
    fn a_quiet_client_is_pinged_early_enough_to_answer_before_the_idle_check() {
        let s = Duration::from_secs;
        // Defaults (15 s, 45 s): silent for an interval.
        assert!(!ping_due(s(14), s(15), s(45)));
        assert!(ping_due(s(15), s(15), s(45)));
        // Idle under two intervals: the ping goes out after half the slack.
        assert!(!ping_due(Duration::from_millis(400), s(1), s(2)));
        assert!(ping_due(Duration::from_millis(500), s(1), s(2)));
        assert!(ping_due(s(1), s(2), s(3)));
        assert!(!ping_due(Duration::from_millis(400), s(2), s(3)));
    }

    /// A client that answers every ping, a little late, stays connected however the
    /// keepalive is configured (the old rule skipped the ping after each pong and
    /// dropped it at the tick after). Time is paused: the ticks are exact.
    #[tokio::test(start_paused = true)]
    async fn a_client_answering_pings_late_stays_connected() {
        let (outbox, mut ws) =
            pair_with("[signaling]\nping_interval_s = 2\nidle_timeout_s = 3\n").await;
        let mut pings = 0;
        let watched = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                // tungstenite sends the pong on the read after this sleep.
                match ws.next().await {
                    Some(Ok(Message::Ping(_))) => pings += 1,
                    Some(Ok(_)) => {}
                    other => return other.map(|r| r.map(|_| ())),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(watched.is_err(), "the connection ended: {watched:?}");
        assert!(!outbox.signal.is_closed());
        assert!(pings >= 10, "{pings} pings in 30 s");
    }
}
