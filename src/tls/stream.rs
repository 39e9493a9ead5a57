//! The server side of a TLS connection over rustls's unbuffered API, holding memory only
//! while bytes are in flight.
//!
//! rustls's buffered `ServerConnection` (under tokio-rustls) keeps a 4 KiB receive buffer
//! for the life of the connection, and most signaling connections sit idle. `TlsStream`
//! reads the socket into a buffer on the stack and decrypts records there, in place; only
//! what it cannot finish now stays on the heap: the part of a record that has not all
//! arrived, records a full reader left, decrypted bytes that did not fit the reader's
//! buffer, and ciphertext the socket did not take. Each of those is freed once it is
//! used up, so an idle connection holds no buffer at all.

use std::io::{self, IoSlice};
use std::mem::{self, MaybeUninit};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TLS record header: type, version, length.
const HEADER_LEN: usize = 5;
/// The largest record a peer may send: header and a TLS 1.2 payload with its expansion.
const MAX_RECORD: usize = HEADER_LEN + 16_384 + 2048;
/// One read from the socket, on the stack: a whole record of any size fits.
const READ_CHUNK: usize = MAX_RECORD;
/// Received bytes kept between reads: a handshake message (at most 64 KiB, which rustls
/// enforces) split over records, and a record read past it. More is an error.
const MAX_PENDING: usize = 0x1_0000 + 2 * MAX_RECORD;
/// Plaintext encrypted per write: one full record.
const MAX_WRITE: usize = 16_384;
/// A vectored write of at most this many bytes is gathered on the stack.
const GATHER_ON_STACK: usize = 2048;
/// Room for a record's header, content type, explicit nonce and tag: a first guess at
/// what encryption adds, corrected by rustls when it is short.
const RECORD_EXPANSION: usize = 64;

/// A TLS connection accepted on a TCP socket (see `accept`).
pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Ciphertext received and not yet processed: a record still arriving, or records left
    /// when the reader's buffer was full. Empty (unallocated) otherwise.
    incoming: Vec<u8>,
    /// Ciphertext not yet written to the socket, from `sent` on.
    outgoing: Vec<u8>,
    sent: usize,
    /// Decrypted bytes not yet read, from `taken` on.
    plaintext: Vec<u8>,
    taken: usize,
    /// The peer sent close_notify: once `plaintext` is read, reads end.
    peer_closed: bool,
    /// We queued our close_notify: nothing more is written.
    closing: bool,
    /// rustls failed (the peer broke TLS, or a fatal alert): nothing more is read, written
    /// or encrypted, and no close_notify follows the fatal alert.
    failed: bool,
}

/// What a caller drives the connection towards.
enum Goal<'a> {
    /// The handshake's end (the connection may send application data).
    Handshake,
    /// Application data for the reader.
    Read,
    /// These bytes encrypted into `outgoing`.
    Encrypt(&'a [u8]),
    /// A close_notify alert queued in `outgoing`.
    CloseNotify,
}

/// Where driving the connection stopped.
#[derive(Debug, PartialEq, Eq)]
enum Reached {
    /// More bytes from the peer are needed.
    Input,
    /// The reader's buffer is full.
    ReaderFull,
    /// The handshake is over, or the bytes or the alert to send are in `outgoing`.
    Done,
    /// Both sides sent close_notify.
    Closed,
}

/// Performs the server side of the TLS handshake on `tcp` with `config`. A caller bounds
/// it with its own deadline.
///
/// # Errors
/// The socket fails or closes, or the client breaks TLS (a fatal alert is sent back when
/// rustls made one).
pub async fn accept(config: Arc<ServerConfig>, tcp: TcpStream) -> io::Result<TlsStream> {
    let conn = UnbufferedServerConnection::new(config)
        .map_err(|e| io::Error::other(format!("could not start a TLS server connection: {e}")))?;
    let mut stream = TlsStream {
        tcp,
        conn,
        incoming: Vec::new(),
        outgoing: Vec::new(),
        sent: 0,
        plaintext: Vec::new(),
        taken: 0,
        peer_closed: false,
        closing: false,
        failed: false,
    };
    std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

impl TlsStream {
    /// The negotiated ALPN protocol, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// How many bytes the stream's buffers hold (allocated capacity), for tests.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.incoming.capacity() + self.outgoing.capacity() + self.plaintext.capacity()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let reached = self.drive_incoming(&mut ReadBuf::new(&mut []), Goal::Handshake);
            let reached = match reached {
                Ok(reached) => reached,
                Err(e) => return Poll::Ready(Err(e)),
            };
            // Our flight goes out before we wait for the client's answer to it.
            ready!(self.poll_send(cx))?;
            match reached {
                Reached::Done => return Poll::Ready(Ok(())),
                Reached::Input => {}
                Reached::ReaderFull | Reached::Closed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed TLS during the handshake",
                    )));
                }
            }
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut chunk = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut chunk))?;
            if chunk.filled().is_empty() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection during the TLS handshake",
                )));
            }
            self.append_incoming(chunk.filled())?;
        }
    }

    /// Adds received bytes behind those kept, within `MAX_PENDING`.
    fn append_incoming(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.incoming.len() + bytes.len() > MAX_PENDING {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a TLS message larger than any this server accepts",
            ));
        }
        self.incoming.extend_from_slice(bytes);
        Ok(())
    }

    /// Drives the connection over the kept received bytes, and keeps what it did not use.
    fn drive_incoming(&mut self, dst: &mut ReadBuf<'_>, goal: Goal<'_>) -> io::Result<Reached> {
        let mut incoming = mem::take(&mut self.incoming);
        let (used, reached) = self.drive(&mut incoming, dst, goal)?;
        // After close_notify the peer's bytes mean nothing.
        if used == incoming.len() || self.peer_closed {
            // Freed: nothing is pending.
            return Ok(reached);
        }
        incoming.drain(..used);
        // What is left is a record still arriving (or a handshake message): keep room for
        // that, not for what was processed.
        let wanted = incoming.len() + missing(&incoming);
        if incoming.capacity() > wanted + HEADER_LEN {
            incoming.shrink_to(wanted);
        }
        self.incoming = incoming;
        Ok(reached)
    }

    /// Drives rustls over `incoming` towards `goal`: handshake messages and alerts to send
    /// go to `outgoing`, application data to `dst` and what does not fit to `plaintext`.
    /// Returns how many bytes of `incoming` were used up (to be dropped from its front).
    ///
    /// # Errors
    /// The peer broke TLS or sent a fatal alert (the alert rustls makes in return is left
    /// in `outgoing`), or encryption failed.
    fn drive(
        &mut self,
        incoming: &mut [u8],
        dst: &mut ReadBuf<'_>,
        goal: Goal<'_>,
    ) -> io::Result<(usize, Reached)> {
        if self.failed {
            return Err(failed());
        }
        let driven = self.drive_records(incoming, dst, goal);
        // rustls does not always enter an error state itself (a record that fails to
        // decrypt): after its fatal alert nothing may follow.
        self.failed |= driven.is_err();
        driven
    }

    /// `drive`'s work, which may leave the connection failed.
    fn drive_records(
        &mut self,
        incoming: &mut [u8],
        dst: &mut ReadBuf<'_>,
        goal: Goal<'_>,
    ) -> io::Result<(usize, Reached)> {
        let mut used = 0;
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut incoming[used..]);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    used += discard;
                    // The fatal alert rustls made, if the socket takes it now.
                    self.queue_alert(&mut incoming[used..]);
                    let _ = self.try_send();
                    return Err(tls_error(e));
                }
            };
            let reached = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        let n = record.payload.len().min(dst.remaining());
                        dst.put_slice(&record.payload[..n]);
                        self.plaintext.extend_from_slice(&record.payload[n..]);
                    }
                    let full = dst.remaining() == 0 || !self.plaintext.is_empty();
                    (matches!(goal, Goal::Read) && full).then_some(Reached::ReaderFull)
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    None
                }
                ConnectionState::Closed => Some(Reached::Closed),
                ConnectionState::EncodeTlsData(mut data) => {
                    let start = self.outgoing.len();
                    let mut need = 1024;
                    loop {
                        self.outgoing.resize(start + need, 0);
                        match data.encode(&mut self.outgoing[start..]) {
                            Ok(n) => break self.outgoing.truncate(start + n),
                            Err(EncodeError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            })) if required_size > need => need = required_size,
                            Err(e) => {
                                self.outgoing.truncate(start);
                                return Err(io::Error::other(format!(
                                    "could not queue a TLS handshake record: {e}"
                                )));
                            }
                        }
                    }
                    None
                }
                // It is in `outgoing`, ahead of anything queued later; it is sent from
                // there by `poll_send` (or `try_send`).
                ConnectionState::TransmitTlsData(data) => {
                    data.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Reached::Input),
                ConnectionState::WriteTraffic(mut traffic) => Some(match goal {
                    Goal::Handshake => Reached::Done,
                    Goal::Read => Reached::Input,
                    Goal::Encrypt(data) => {
                        let expansion = RECORD_EXPANSION * (data.len() / MAX_WRITE + 1);
                        seal(&mut self.outgoing, data.len() + expansion, |out| {
                            traffic.encrypt(data, out)
                        })?;
                        Reached::Done
                    }
                    Goal::CloseNotify => {
                        seal(&mut self.outgoing, RECORD_EXPANSION, |out| {
                            traffic.queue_close_notify(out)
                        })?;
                        Reached::Done
                    }
                }),
                ConnectionState::ReadEarlyData(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "TLS early data arrived, which this server does not accept",
                    ));
                }
                other => {
                    return Err(io::Error::other(format!(
                        "an unexpected TLS connection state: {other:?}"
                    )));
                }
            };
            used += discard;
            if let Some(reached) = reached {
                return Ok((used, reached));
            }
        }
    }

    /// After an error, puts the fatal alert rustls prepared (if any) into `outgoing`.
    fn queue_alert(&mut self, incoming: &mut [u8]) {
        let status = self.conn.process_tls_records(incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut data)) = status.state {
            let start = self.outgoing.len();
            self.outgoing.resize(start + 256, 0);
            let n = data.encode(&mut self.outgoing[start..]).unwrap_or(0);
            self.outgoing.truncate(start + n);
        }
    }

    /// Writes `outgoing` to the socket, then frees it.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes what of `outgoing` the socket takes now, without waiting; the rest goes with
    /// the next write or flush.
    fn try_send(&mut self) -> io::Result<()> {
        while self.sent < self.outgoing.len() {
            match self.tcp.try_write(&self.outgoing[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Ok(())
    }

    /// Moves decrypted bytes kept from earlier into `dst`; whether there were any.
    fn take_plaintext(&mut self, dst: &mut ReadBuf<'_>) -> bool {
        if self.plaintext.is_empty() {
            return false;
        }
        let n = (self.plaintext.len() - self.taken).min(dst.remaining());
        dst.put_slice(&self.plaintext[self.taken..self.taken + n]);
        self.taken += n;
        if self.taken == self.plaintext.len() {
            self.plaintext = Vec::new();
            self.taken = 0;
        }
        true
    }

    /// Encrypts up to one record of `data` into `outgoing`; how many bytes it took.
    fn encrypt(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.closing {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the TLS stream was shut down",
            ));
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        match self.drive_incoming(&mut ReadBuf::new(&mut []), Goal::Encrypt(data))? {
            Reached::Done => Ok(data.len()),
            _ => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the TLS connection was closed",
            )),
        }
    }

    /// After a write was taken: sends what the socket takes now (the rest waits for the next
    /// write or flush, which wait for it).
    fn send_written(&mut self, cx: &mut Context<'_>, n: usize) -> Poll<io::Result<usize>> {
        match self.poll_send(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(n)),
        }
    }
}

/// Encrypts with `encrypt` into the end of `outgoing`, giving it `guess` bytes of room, or
/// what rustls says it needs when that is short.
fn seal(
    outgoing: &mut Vec<u8>,
    guess: usize,
    mut encrypt: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    let start = outgoing.len();
    let mut need = guess;
    loop {
        outgoing.reserve_exact(need);
        outgoing.resize(start + need, 0);
        match encrypt(&mut outgoing[start..]) {
            Ok(n) => {
                outgoing.truncate(start + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size }))
                if required_size > need =>
            {
                need = required_size;
            }
            Err(e) => {
                outgoing.truncate(start);
                return Err(io::Error::other(format!("TLS encryption failed: {e}")));
            }
        }
    }
}

/// How many more bytes complete the first incomplete record in `incoming` (which starts
/// at a record boundary); 0 when it ends at one.
fn missing(incoming: &[u8]) -> usize {
    let mut at = 0;
    while at < incoming.len() {
        let Some(header) = incoming.get(at..at + HEADER_LEN) else {
            return at + HEADER_LEN - incoming.len();
        };
        let len = HEADER_LEN + usize::from(u16::from_be_bytes([header[3], header[4]]));
        if at + len > incoming.len() {
            return at + len - incoming.len();
        }
        at += len;
    }
    0
}

/// A rustls error as an I/O error.
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// What every use of a connection that failed gets.
fn failed() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the TLS connection failed earlier",
    )
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if dst.remaining() == 0 || this.take_plaintext(dst) {
            return Poll::Ready(Ok(()));
        }
        if this.failed {
            return Poll::Ready(Err(failed()));
        }
        let before = dst.filled().len();
        // Records left by an earlier read come first: the socket may have nothing more.
        if !this.incoming.is_empty() {
            let reached = this.drive_incoming(dst, Goal::Read)?;
            let _ = this.try_send();
            if dst.filled().len() > before || reached == Reached::Closed {
                return Poll::Ready(Ok(()));
            }
        }
        loop {
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut chunk = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut this.tcp).poll_read(cx, &mut chunk))?;
            let received = chunk.filled_mut();
            if received.is_empty() {
                let why = if this.incoming.is_empty() {
                    "the peer closed the connection without a TLS close_notify"
                } else {
                    "the peer closed the connection in the middle of a TLS record"
                };
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, why)));
            }
            let reached = if this.incoming.is_empty() {
                // The usual case: whole records, decrypted where they were read.
                let (used, reached) = this.drive(received, dst, Goal::Read)?;
                let rest = &received[used..];
                if !rest.is_empty() && !this.peer_closed {
                    this.incoming.reserve_exact(rest.len() + missing(rest));
                    this.append_incoming(rest)?;
                }
                reached
            } else {
                this.append_incoming(received)?;
                this.drive_incoming(dst, Goal::Read)?
            };
            // Answers rustls queued while reading (a KeyUpdate, an alert).
            let _ = this.try_send();
            if dst.filled().len() > before || reached == Reached::Closed {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(Err(failed()));
        }
        // Earlier ciphertext goes first: this is the stream's backpressure.
        ready!(this.poll_send(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = this.encrypt(buf)?;
        this.send_written(cx, n)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(Err(failed()));
        }
        ready!(this.poll_send(cx))?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        let (Some(first), second) = (nonempty.next(), nonempty.next()) else {
            return Poll::Ready(Ok(0));
        };
        if second.is_none() || first.len() >= MAX_WRITE {
            let n = this.encrypt(first)?;
            return this.send_written(cx, n);
        }
        // Several pieces (a frame's header and payload): one record, not one each.
        let take = total.min(MAX_WRITE);
        let mut on_stack = [0u8; GATHER_ON_STACK];
        let mut on_heap = Vec::new();
        let gathered = if take <= GATHER_ON_STACK {
            &mut on_stack[..take]
        } else {
            on_heap.resize(take, 0);
            &mut on_heap[..]
        };
        let mut at = 0;
        for piece in bufs {
            let n = piece.len().min(take - at);
            gathered[at..at + n].copy_from_slice(&piece[..n]);
            at += n;
        }
        let n = this.encrypt(gathered)?;
        this.send_written(cx, n)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing && !this.failed {
            // Writes queued so far stay ahead of the alert in `outgoing`. Should the
            // records still kept fail, the connection has failed: its fatal alert (if
            // any) and FIN go out instead.
            let queued = this.drive_incoming(&mut ReadBuf::new(&mut []), Goal::CloseNotify);
            this.closing = queued.is_ok();
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Long enough for any of these exchanges on loopback; a hang fails the test.
    const PATIENCE: Duration = Duration::from_secs(10);

    fn server_config() -> Arc<ServerConfig> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let path = std::path::Path::new("test.pem");
        let origin = super::super::CertOrigin::Generated(path.to_owned());
        let loaded = super::super::from_pem(&cert.pem(), &key.serialize_pem(), path, origin)
            .expect("a certificate");
        super::super::TlsMaterial::new(loaded)
            .expect("a server configuration")
            .https_server_config(false)
    }

    /// A connected loopback pair: the server's socket, the client's.
    async fn sockets() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (accepted.unwrap().0, client.unwrap())
    }

    type Client = tokio_rustls::client::TlsStream<TcpStream>;

    /// A finished handshake: our server stream and a rustls client.
    async fn connected() -> (TlsStream, Client) {
        let (server, client) = sockets().await;
        let connector = super::super::probe_connector(b"http/1.1");
        let name = ServerName::try_from("localhost").unwrap();
        let (server, client) = tokio::join!(
            accept(server_config(), server),
            connector.connect(name, client)
        );
        (
            server.expect("server handshake"),
            client.expect("client handshake"),
        )
    }

    async fn within<T>(what: impl Future<Output = T>) -> T {
        tokio::time::timeout(PATIENCE, what)
            .await
            .expect("finished in time")
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn round_trips_small_and_large_payloads() {
        let (mut server, mut client) = connected().await;
        assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
        for len in [1, 5, 3000, 100 * 1024] {
            let sent = payload(len);
            let (written, got) = within(async {
                tokio::join!(client.write_all(&sent), async {
                    let mut got = vec![0; len];
                    server.read_exact(&mut got).await.map(|_| got)
                })
            })
            .await;
            written.unwrap();
            assert_eq!(got.unwrap(), sent, "client to server, {len} bytes");
            let (written, got) = within(async {
                tokio::join!(
                    async {
                        server.write_all(&sent).await?;
                        server.flush().await
                    },
                    async {
                        let mut got = vec![0; len];
                        client.read_exact(&mut got).await.map(|_| got)
                    }
                )
            })
            .await;
            written.unwrap();
            assert_eq!(got.unwrap(), sent, "server to client, {len} bytes");
        }
    }

    #[tokio::test]
    async fn data_right_behind_the_clients_finished_is_kept_for_the_reader() {
        let (server, client) = sockets().await;
        let config = Arc::clone(super::super::probe_connector(b"http/1.1").config());
        let client = client.into_std().unwrap();
        client.set_nonblocking(false).unwrap();
        // A rustls client given data before its handshake is over sends it in the same
        // write as its Finished: the handshake's last read brings both.
        let client = std::thread::spawn(move || {
            use std::io::Write;
            let name = ServerName::try_from("localhost").unwrap();
            let mut conn = rustls::ClientConnection::new(config, name).unwrap();
            conn.writer().write_all(b"right behind").unwrap();
            let mut socket = client;
            rustls::Stream::new(&mut conn, &mut socket).flush().unwrap();
            (conn, socket)
        });
        let mut server = within(accept(server_config(), server)).await.unwrap();
        let kept = server.buffered();
        assert!(
            (12..=64).contains(&kept),
            "the data, kept through the handshake: {kept}"
        );
        let mut got = [0u8; 12];
        within(server.read_exact(&mut got)).await.unwrap();
        assert_eq!(&got, b"right behind");
        assert_eq!(server.buffered(), 0);
        drop(client.join().unwrap());
    }

    #[tokio::test]
    async fn vectored_writes_arrive_whole_and_in_order() {
        let (mut server, mut client) = connected().await;
        let (head, body) = (payload(10), payload(5000));
        let bufs = [IoSlice::new(&head), IoSlice::new(&body)];
        let mut written = 0;
        while written < head.len() + body.len() {
            let n = within(server.write_vectored(&bufs)).await.unwrap();
            assert!(n > 0);
            written += n;
            // Only whole pieces are written here (both fit in one record).
            assert_eq!(written, head.len() + body.len());
        }
        server.flush().await.unwrap();
        let mut got = vec![0; written];
        within(client.read_exact(&mut got)).await.unwrap();
        assert_eq!(got, [head, body].concat());
    }

    #[tokio::test]
    async fn reads_through_a_small_buffer() {
        let (mut server, mut client) = connected().await;
        let sent = payload(40_000);
        within(client.write_all(&sent)).await.unwrap();
        let mut got = Vec::new();
        let mut small = [0u8; 100];
        while got.len() < sent.len() {
            let n = within(server.read(&mut small)).await.unwrap();
            assert!(n > 0, "EOF before the end");
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, sent);
        assert_eq!(server.buffered(), 0, "buffers left after reading it all");
    }

    #[tokio::test]
    async fn buffers_are_empty_once_a_message_is_read_and_written() {
        let (mut server, mut client) = connected().await;
        assert_eq!(server.buffered(), 0, "buffers left after the handshake");
        let message = payload(3000);
        within(client.write_all(&message)).await.unwrap();
        let mut got = vec![0; message.len()];
        within(server.read_exact(&mut got)).await.unwrap();
        within(server.write_all(&got)).await.unwrap();
        within(server.flush()).await.unwrap();
        let mut echoed = vec![0; message.len()];
        within(client.read_exact(&mut echoed)).await.unwrap();
        assert_eq!(echoed, message);
        assert_eq!(server.buffered(), 0, "buffers left while idle");
    }

    #[tokio::test]
    async fn close_notify_from_the_client_is_the_end_of_stream() {
        let (mut server, mut client) = connected().await;
        within(client.write_all(b"last words")).await.unwrap();
        within(client.shutdown()).await.unwrap();
        let mut got = Vec::new();
        within(server.read_to_end(&mut got)).await.unwrap();
        assert_eq!(got, b"last words");
        // The server's own close_notify reaches the client as its end of stream.
        within(server.shutdown()).await.unwrap();
        let mut rest = Vec::new();
        within(client.read_to_end(&mut rest)).await.unwrap();
        assert!(rest.is_empty());
        assert!(server.write_all(b"late").await.is_err());
    }

    #[tokio::test]
    async fn a_truncated_record_is_an_error_not_a_hang() {
        let (mut server, client) = connected().await;
        let (mut tcp, _) = client.into_inner();
        // An application data record that promises 64 bytes and brings 3.
        tcp.write_all(&[0x17, 0x03, 0x03, 0x00, 0x40, 1, 2, 3])
            .await
            .unwrap();
        tcp.shutdown().await.unwrap();
        let mut buf = [0u8; 64];
        let err = within(server.read(&mut buf)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }

    #[tokio::test]
    async fn end_of_stream_without_close_notify_is_an_error() {
        let (mut server, client) = connected().await;
        let (mut tcp, _) = client.into_inner();
        tcp.shutdown().await.unwrap();
        let mut buf = [0u8; 64];
        let err = within(server.read(&mut buf)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }

    #[tokio::test]
    async fn a_forged_record_is_an_error() {
        let (mut server, client) = connected().await;
        let (mut tcp, _) = client.into_inner();
        let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x20];
        record.extend_from_slice(&[0xAB; 0x20]);
        tcp.write_all(&record).await.unwrap();
        let mut buf = [0u8; 64];
        let err = within(server.read(&mut buf)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        // After the fatal alert nothing is read, written or closed with close_notify:
        // the write half (another task, in a split stream) gets the failure too.
        let err = within(server.write_all(b"after the alert"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(within(server.read(&mut buf)).await.is_err());
        within(server.shutdown()).await.unwrap();
    }

    #[tokio::test]
    async fn garbage_instead_of_a_client_hello_is_an_error() {
        for garbage in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            // A handshake record that claims more than it brings, then the end.
            &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00][..],
            // A handshake record whose length is beyond any record's.
            &[0x16, 0x03, 0x01, 0xFF, 0xFF, 0x01][..],
        ] {
            let (server, mut client) = sockets().await;
            client.write_all(garbage).await.unwrap();
            client.shutdown().await.unwrap();
            let result = within(accept(server_config(), server)).await;
            assert!(result.is_err(), "accepted {garbage:?}");
        }
    }

    #[tokio::test]
    async fn data_still_flows_after_a_key_update() {
        let (mut server, mut client) = connected().await;
        client.get_mut().1.refresh_traffic_keys().unwrap();
        within(client.write_all(b"after the update")).await.unwrap();
        let mut got = [0u8; 16];
        within(server.read_exact(&mut got)).await.unwrap();
        assert_eq!(&got, b"after the update");
        within(server.write_all(b"reply")).await.unwrap();
        within(server.flush()).await.unwrap();
        let mut reply = [0u8; 5];
        within(client.read_exact(&mut reply)).await.unwrap();
        assert_eq!(&reply, b"reply");
        assert_eq!(server.buffered(), 0);
    }

    #[test]
    fn missing_counts_what_completes_the_first_partial_record() {
        assert_eq!(missing(&[]), 0);
        assert_eq!(missing(&[0x17, 0x03]), 3);
        assert_eq!(missing(&[0x17, 0x03, 0x03, 0x00, 0x02, 1]), 1);
        assert_eq!(missing(&[0x17, 0x03, 0x03, 0x00, 0x01, 1]), 0);
        assert_eq!(missing(&[0x17, 0x03, 0x03, 0x00, 0x01, 1, 0x17]), 4);
    }
}
