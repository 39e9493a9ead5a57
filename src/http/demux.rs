//! Sharing the HTTPS port with TURN: deciding from a connection's first bytes
//! whether it is HTTP or STUN/TURN, and a stream that replays those bytes.
//!
//! Corporate networks often let only TLS to port 443 out. With
//! `turn.on_https_port`, the HTTPS listener also serves TURN over TLS (STUN after
//! the handshake) and plain-TCP TURN (STUN instead of a TLS ClientHello).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// How many bytes decide: a STUN header has its magic cookie at bytes 4..8.
pub const SNIFF_LEN: usize = 8;

/// What a connection speaks, judged by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A TLS record (ClientHello): byte 0 is 0x16.
    Tls,
    /// A STUN message: top two bits zero and the magic cookie at bytes 4..8.
    Stun,
    /// Anything else: treated as HTTP.
    Other,
}

pub fn sniff(head: &[u8]) -> Protocol {
    if head.first() == Some(&0x16) {
        return Protocol::Tls;
    }
    if head.len() >= SNIFF_LEN && head[0] & 0xC0 == 0 && head[4..8] == [0x21, 0x12, 0xA4, 0x42] {
        return Protocol::Stun;
    }
    Protocol::Other
}

/// Reads up to `SNIFF_LEN` bytes (fewer only at end of stream).
///
/// # Errors
/// The read fails.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Vec<u8>> {
    let mut head = vec![0u8; SNIFF_LEN];
    let mut filled = 0;
    while filled < SNIFF_LEN {
        let n = stream.read(&mut head[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    head.truncate(filled);
    Ok(head)
}

/// A stream that yields `prefix` before reading from `inner`; writes go to `inner`.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn sniffs_tls_stun_and_http() {
        assert_eq!(sniff(&[0x16, 0x03, 0x01, 0x02, 0, 0, 0, 0]), Protocol::Tls);
        assert_eq!(
            sniff(&[0x00, 0x03, 0x00, 0x10, 0x21, 0x12, 0xA4, 0x42]),
            Protocol::Stun
        );
        assert_eq!(sniff(b"GET / HTTP/1.1"), Protocol::Other);
        assert_eq!(sniff(b"PRI * HTTP/2.0"), Protocol::Other);
        // A STUN-like start without the cookie, and short input, are not STUN.
        assert_eq!(
            sniff(&[0x00, 0x03, 0x00, 0x10, 1, 2, 3, 4]),
            Protocol::Other
        );
        assert_eq!(sniff(&[0x00, 0x01]), Protocol::Other);
    }

    #[tokio::test]
    async fn prefixed_replays_the_head_then_the_rest() {
        let mut inner: &[u8] = b"GET / HTTP/1.1\r\n";
        let head = read_head(&mut inner).await.unwrap();
        assert_eq!(head, b"GET / HT");
        let mut all = String::new();
        Prefixed::new(head, inner)
            .read_to_string(&mut all)
            .await
            .unwrap();
        assert_eq!(all, "GET / HTTP/1.1\r\n");
    }
}
