//! Batched UDP syscalls: many datagrams per `recvmmsg(2)` / `sendmmsg(2)`.
//!
//! The kernel's per-datagram work is the same either way; what a batch saves is the
//! syscall entry, the socket lock and the wake-up, once per batch instead of once per
//! packet. The TURN data path and the benchmark tools both use this module.
//!
//! Buffers are owned by [`RecvBatch`] and [`SendBatch`] and reused: nothing here
//! allocates per packet. The raw `mmsghdr` arrays point into them only for the
//! duration of one call.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use socket2::SockAddr;

/// The most datagrams one call moves; beyond this the saving is negligible.
pub const MAX_BATCH: usize = 64;

/// Receive slots, each `headroom` bytes of free space followed by room for one datagram.
///
/// The headroom lets a relay prefix a ChannelData or Data-indication header in place.
pub struct RecvBatch {
    slots: Vec<Box<[u8]>>,
    headroom: usize,
    lens: Vec<usize>,
    truncated: Vec<bool>,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    count: usize,
}

// SAFETY: the raw pointers in `iovs`/`hdrs` are rewritten before every call and point
// into buffers this struct owns; they are never dereferenced outside `recv`.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// `count` slots (at most [`MAX_BATCH`]) that each take a datagram of up to `payload` bytes.
    pub fn new(count: usize, payload: usize, headroom: usize) -> RecvBatch {
        let count = count.clamp(1, MAX_BATCH);
        RecvBatch {
            slots: (0..count)
                .map(|_| vec![0u8; headroom + payload].into_boxed_slice())
                .collect(),
            headroom,
            lens: vec![0; count],
            truncated: vec![false; count],
            // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs; all zeroes is valid.
            names: vec![unsafe { MaybeUninit::zeroed().assume_init() }; count],
            iovs: vec![unsafe { MaybeUninit::zeroed().assume_init() }; count],
            hdrs: vec![unsafe { MaybeUninit::zeroed().assume_init() }; count],
            count: 0,
        }
    }

    /// Receives up to one batch without blocking. `Ok(0)` never happens: an empty
    /// non-blocking socket is `Err(WouldBlock)`.
    ///
    /// # Errors
    /// The socket's error, `WouldBlock` included.
    pub fn recv(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        self.recv_fd(socket.as_raw_fd())
    }

    fn recv_fd(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.slots.len();
        for i in 0..n {
            let slot = &mut self.slots[i][self.headroom..];
            self.iovs[i] = libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: slot.len(),
            };
            let hdr = &mut self.hdrs[i].msg_hdr;
            hdr.msg_name = (&raw mut self.names[i]).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &raw mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at a live iovec and sockaddr_storage owned by self,
        // and each iovec at a live slot; the kernel writes at most the lengths given.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        let got = got as usize;
        for i in 0..got {
            self.lens[i] = self.hdrs[i].msg_len as usize;
            self.truncated[i] = self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        self.count = got;
        Ok(got)
    }

    /// How many datagrams the last `recv` returned.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn headroom(&self) -> usize {
        self.headroom
    }

    /// The `i`th datagram's payload.
    pub fn data(&self, i: usize) -> &[u8] {
        &self.slots[i][self.headroom..self.headroom + self.lens[i]]
    }

    /// The `i`th datagram's length.
    pub fn data_len(&self, i: usize) -> usize {
        self.lens[i]
    }

    /// The `i`th datagram did not fit its slot and was cut short.
    pub fn truncated(&self, i: usize) -> bool {
        self.truncated[i]
    }

    /// The whole `i`th slot, headroom included (the payload starts at `headroom()`).
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.slots[i]
    }

    pub fn slot(&self, i: usize) -> &[u8] {
        &self.slots[i]
    }

    /// Where the `i`th datagram came from (`None` for an address family we do not speak).
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        // SAFETY: the kernel filled `names[i]` and `msg_namelen` for this datagram.
        let addr = unsafe {
            let mut storage = socket2::SockAddrStorage::zeroed();
            *storage.view_as::<libc::sockaddr_storage>() = self.names[i];
            SockAddr::new(storage, self.hdrs[i].msg_hdr.msg_namelen)
        };
        addr.as_socket()
    }
}

/// Scratch space for `sendmmsg`: reused across calls, filled from borrowed datagrams.
pub struct SendBatch {
    names: Vec<SockAddr>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: as for RecvBatch, the raw pointers are only meaningful during `send`.
unsafe impl Send for SendBatch {}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch::new()
    }
}

impl SendBatch {
    pub fn new() -> SendBatch {
        SendBatch {
            names: Vec::with_capacity(MAX_BATCH),
            iovs: Vec::with_capacity(MAX_BATCH),
            hdrs: Vec::with_capacity(MAX_BATCH),
        }
    }

    /// Sends `datagrams` (payload, destination; `None` on a connected socket) without
    /// blocking, in calls of up to [`MAX_BATCH`]. Returns how many the kernel took:
    /// fewer than given when the socket's buffer is full (the rest are the caller's to drop).
    ///
    /// # Errors
    /// The first datagram of a call failed (e.g. `WouldBlock`, unreachable).
    pub fn send<'a>(
        &mut self,
        socket: &impl AsRawFd,
        datagrams: impl IntoIterator<Item = (&'a [u8], Option<SocketAddr>)>,
    ) -> io::Result<usize> {
        let fd = socket.as_raw_fd();
        let mut sent = 0;
        let mut datagrams = datagrams.into_iter().peekable();
        while datagrams.peek().is_some() {
            self.names.clear();
            self.iovs.clear();
            let mut dests = [false; MAX_BATCH];
            for (i, (data, dest)) in datagrams.by_ref().take(MAX_BATCH).enumerate() {
                self.iovs.push(libc::iovec {
                    iov_base: data.as_ptr().cast_mut().cast(),
                    iov_len: data.len(),
                });
                if let Some(dest) = dest {
                    self.names.push(SockAddr::from(dest));
                    dests[i] = true;
                } else {
                    self.names
                        .push(SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0))));
                }
            }
            let n = self.iovs.len();
            self.hdrs.clear();
            for (i, &has_dest) in dests.iter().enumerate().take(n) {
                // SAFETY: mmsghdr is a plain C struct; all zeroes is valid.
                let mut hdr: libc::mmsghdr = unsafe { MaybeUninit::zeroed().assume_init() };
                if has_dest {
                    hdr.msg_hdr.msg_name = self.names[i].as_ptr().cast_mut().cast();
                    hdr.msg_hdr.msg_namelen = self.names[i].len();
                }
                hdr.msg_hdr.msg_iov = &raw mut self.iovs[i];
                hdr.msg_hdr.msg_iovlen = 1;
                self.hdrs.push(hdr);
            }
            // SAFETY: each header points at an iovec and address in self, and each iovec at
            // a datagram borrowed for this call; the kernel only reads them.
            let done = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if done < 0 {
                let e = io::Error::last_os_error();
                return if sent == 0 { Err(e) } else { Ok(sent) };
            }
            sent += done as usize;
            if (done as usize) < n {
                return Ok(sent);
            }
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn a_batch_goes_out_and_comes_back_with_sources_and_truncation() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let mut send = SendBatch::new();
        let n = send
            .send(&tx, payloads.iter().map(|p| (p.as_slice(), Some(to))))
            .unwrap();
        assert_eq!(n, 100);

        let mut recv = RecvBatch::new(64, 100, 8);
        let mut seen = Vec::new();
        while seen.len() < 100 {
            let got = recv.recv(&rx).unwrap();
            for i in 0..got {
                assert_eq!(recv.source(i), Some(tx.local_addr().unwrap()));
                seen.push((recv.data(i).to_vec(), recv.truncated(i)));
            }
        }
        for (i, (data, truncated)) in seen.iter().enumerate() {
            let want = &payloads[i];
            assert_eq!(*truncated, want.len() > 100, "datagram {i}");
            assert_eq!(data[..], want[..want.len().min(100)], "datagram {i}");
        }
        let empty = recv.recv(&rx).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn connected_sockets_send_without_addresses() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        let n = SendBatch::new()
            .send(&tx, [(&b"one"[..], None), (&b"two"[..], None)])
            .unwrap();
        assert_eq!(n, 2);
        let mut recv = RecvBatch::new(4, 16, 0);
        let mut got = Vec::new();
        while got.len() < 2 {
            let k = recv.recv(&rx).unwrap();
            got.extend((0..k).map(|i| recv.data(i).to_vec()));
        }
        assert_eq!(got, [b"one".to_vec(), b"two".to_vec()]);
    }
}
