//! The native signaling socket: the HTTP/1.1 WebSocket upgrade (RFC 6455 section 4.2),
//! then frames (`frame`) read from and written to the upgraded connection.
//!
//! Memory per socket is what this module is about. An idle socket holds a 512-byte read
//! buffer and no write buffer: a large message grows the read buffer to its size, and the
//! buffer is given back once the message is through; a frame is written straight from the
//! message's own bytes (header and payload in one vectored write), and only what the
//! connection does not take at once is copied aside until it is flushed.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::BytesMut;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;
use tracing::debug;

use super::frame::{self, Decoder, Incoming, Violation};

/// The read buffer of an idle socket; larger frames get a buffer of their own size.
const READ_CHUNK: usize = 512;
/// After a read that filled the buffer (more is likely waiting), read this much at once.
const READ_BURST: usize = 4096;
/// A write remainder buffer above this size is freed once it has been written.
const KEEP_PENDING: usize = 1024;

/// A validated WebSocket upgrade request (the extractor for the native endpoint).
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn rejection(status: StatusCode, message: &'static str) -> Response {
    let mut response = (status, message).into_response();
    if status == StatusCode::UPGRADE_REQUIRED {
        response
            .headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
    }
    response
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Response> {
        if parts.method != Method::GET {
            return Err(rejection(
                StatusCode::METHOD_NOT_ALLOWED,
                "the signaling socket is opened with a GET WebSocket upgrade",
            ));
        }
        if !has_token(&parts.headers, header::CONNECTION, "upgrade")
            || !has_token(&parts.headers, header::UPGRADE, "websocket")
        {
            return Err(rejection(
                StatusCode::UPGRADE_REQUIRED,
                "this is a WebSocket endpoint: connect with a WebSocket client",
            ));
        }
        if parts.headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13"))
        {
            return Err(rejection(
                StatusCode::UPGRADE_REQUIRED,
                "unsupported Sec-WebSocket-Version: only 13 (RFC 6455) is spoken",
            ));
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return Err(rejection(
                StatusCode::BAD_REQUEST,
                "the Sec-WebSocket-Key header is missing",
            ));
        };
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(rejection(
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded (WebSockets need HTTP/1.1)",
            ));
        };
        Ok(Upgrade { key, on_upgrade })
    }
}

/// `Sec-WebSocket-Accept` for a client's key (RFC 6455 section 4.2.2).
fn accept_key(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

impl Upgrade {
    /// Answers `101 Switching Protocols` and runs `session` on the socket once the
    /// connection has switched, in a task of its own.
    pub fn on_upgrade<F, Fut>(self, session: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => session(Socket::from(upgraded)).await,
                Err(e) => debug!(error = %e, "websocket upgrade failed"),
            }
        });
        let accept = HeaderValue::from_str(&accept_key(self.key.as_bytes()))
            .expect("base64 is a valid header value");
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (header::SEC_WEBSOCKET_ACCEPT, accept),
            ],
        )
            .into_response()
    }
}

/// An upgraded connection.
pub enum Socket {
    /// A plain TCP connection taken back from hyper, with what hyper had read past the
    /// upgrade request: its halves need no lock and no layers between them and the socket.
    Tcp(TcpStream, bytes::Bytes),
    /// Anything else (TLS, a connection hyper served as HTTP/1 or HTTP/2 after sniffing).
    Upgraded(TokioIo<Upgraded>),
}

impl From<Upgraded> for Socket {
    fn from(upgraded: Upgraded) -> Socket {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => Socket::Tcp(parts.io.into_inner(), parts.read_buf),
            Err(upgraded) => Socket::Upgraded(TokioIo::new(upgraded)),
        }
    }
}

impl Socket {
    /// Splits into the reading half (the session's own) and the writing half (shared with
    /// senders, see `direct`); messages over `max_message` bytes close the socket.
    pub fn split(self, max_message: usize) -> (Reader, Writer) {
        let (read, write, buf) = match self {
            Socket::Tcp(tcp, read_ahead) => {
                let (read, write) = tcp.into_split();
                (
                    ReadIo::Tcp(read),
                    WriteIo::Tcp(write),
                    BytesMut::from(read_ahead),
                )
            }
            Socket::Upgraded(io) => {
                let (read, write) = tokio::io::split(io);
                (
                    ReadIo::Upgraded(read),
                    WriteIo::Upgraded(write),
                    BytesMut::new(),
                )
            }
        };
        let grown = buf.capacity() > READ_CHUNK;
        (
            Reader {
                io: read,
                buf,
                grown,
                filled: false,
                decoder: Decoder::new(max_message),
                message_since: None,
            },
            Writer {
                io: write,
                pending: Vec::new(),
                broken: false,
            },
        )
    }
}

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The client broke the protocol: close with this.
    Violation(Violation),
    Io(io::Error),
}

/// The connection's reading side.
enum ReadIo {
    Tcp(OwnedReadHalf),
    Upgraded(ReadHalf<TokioIo<Upgraded>>),
}

impl AsyncRead for ReadIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadIo::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            ReadIo::Upgraded(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

/// The connection's writing side.
#[derive(Debug)]
enum WriteIo {
    Tcp(OwnedWriteHalf),
    Upgraded(WriteHalf<TokioIo<Upgraded>>),
}

/// Runs `$body` with `$io` pinned, whichever kind of connection this is.
macro_rules! pinned {
    ($self:expr, $io:ident => $body:expr) => {
        match $self.get_mut() {
            WriteIo::Tcp(io) => {
                let $io = Pin::new(io);
                $body
            }
            WriteIo::Upgraded(io) => {
                let $io = Pin::new(io);
                $body
            }
        }
    };
}

impl AsyncWrite for WriteIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        pinned!(self, io => io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        pinned!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteIo::Tcp(io) => io.is_write_vectored(),
            WriteIo::Upgraded(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        pinned!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        pinned!(self, io => io.poll_shutdown(cx))
    }
}

/// The reading half.
pub struct Reader {
    io: ReadIo,
    buf: BytesMut,
    /// The buffer was grown past `READ_CHUNK` (a large frame, or a burst).
    grown: bool,
    /// The last read filled all the room it had.
    filled: bool,
    decoder: Decoder,
    /// When the fragmented message in progress began: pings between its fragments keep
    /// the connection alive, but not the message (see `message_started`).
    message_since: Option<Instant>,
}

impl Reader {
    /// The next message, or `None` once the client has gone. Cancel-safe: bytes read
    /// stay buffered for the next call.
    ///
    /// # Errors
    /// A protocol violation (to close with) or a failed read.
    pub async fn next(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            if let Some(msg) = self.buffered()? {
                return Ok(Some(msg));
            }
            if self.buf.is_empty() && self.grown {
                self.buf = BytesMut::new();
                self.grown = false;
            }
            let frame_rest = self
                .decoder
                .frame_len(&self.buf)
                .map_or(0, |n| n.saturating_sub(self.buf.len()));
            let chunk = if self.filled { READ_BURST } else { READ_CHUNK };
            let want = frame_rest.max(chunk);
            if want > READ_CHUNK {
                self.grown = true;
            }
            self.buf.reserve(want);
            let room = self.buf.capacity() - self.buf.len();
            let n = self
                .io
                .read_buf(&mut self.buf)
                .await
                .map_err(ReadError::Io)?;
            if n == 0 {
                return Ok(None);
            }
            self.filled = n == room;
        }
    }

    /// The next message if it has already been read, without reading more.
    ///
    /// # Errors
    /// A protocol violation.
    pub fn buffered(&mut self) -> Result<Option<Incoming>, ReadError> {
        let msg = self
            .decoder
            .decode(&mut self.buf)
            .map_err(ReadError::Violation)?;
        match (self.decoder.in_message(), self.message_since) {
            (false, Some(_)) => self.message_since = None,
            (true, None) => self.message_since = Some(Instant::now()),
            _ => {}
        }
        Ok(msg)
    }

    /// When the fragmented message the client is sending began, if one is in progress.
    pub fn message_started(&self) -> Option<Instant> {
        self.message_since
    }
}

/// The writing half.
#[derive(Debug)]
pub struct Writer {
    io: WriteIo,
    /// Frame bytes the connection has not taken yet, in order.
    pending: Vec<u8>,
    /// A write failed: every later flush fails too, so whoever flushes next learns it.
    broken: bool,
}

impl Writer {
    /// Appends one frame to what `poll_flush` will write, without writing anything now.
    pub fn defer(&mut self, opcode: u8, payload: &[u8]) {
        let (head, n) = frame::header(opcode, payload.len());
        self.pending.extend_from_slice(&head[..n]);
        self.pending.extend_from_slice(payload);
    }

    /// Starts writing one frame without waiting: the connection takes what it can now,
    /// and the rest is kept for `poll_flush`. Frames stay in the order they were started.
    ///
    /// # Errors
    /// The connection failed.
    pub fn start(&mut self, cx: &mut Context<'_>, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let (head, n) = frame::header(opcode, payload.len());
        let head = &head[..n];
        if !self.pending.is_empty() {
            self.pending.extend_from_slice(head);
            self.pending.extend_from_slice(payload);
            return Ok(());
        }
        let bufs = [IoSlice::new(head), IoSlice::new(payload)];
        let written = match Pin::new(&mut self.io).poll_write_vectored(cx, &bufs) {
            Poll::Ready(Ok(written)) => written,
            Poll::Ready(Err(e)) => {
                self.broken = true;
                return Err(e);
            }
            Poll::Pending => 0,
        };
        if written < head.len() {
            self.pending.extend_from_slice(&head[written..]);
            self.pending.extend_from_slice(payload);
        } else {
            self.pending
                .extend_from_slice(&payload[(written - head.len()).min(payload.len())..]);
        }
        Ok(())
    }

    /// Writes what is pending, then flushes the connection (TLS records included).
    ///
    /// # Errors
    /// The connection failed.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let done = ready!(self.poll_write_pending(cx));
        self.broken |= done.is_err();
        Poll::Ready(done)
    }

    fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.broken {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        if self.pending.capacity() > KEEP_PENDING {
            self.pending = Vec::new();
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Closes the connection's write side (TLS close_notify) once the close frame is out.
    ///
    /// # Errors
    /// The connection failed.
    pub fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::accept_key;

    #[test]
    fn accept_key_matches_the_rfc_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
