//! Batched UDP syscalls: many datagrams per `recvmmsg(2)` / `sendmmsg(2)`.
//!
//! The kernel's per-datagram work is the same either way; what a batch saves is the
//! syscall entry, the socket lock and the wake-up, once per batch instead of once per
//! packet. The TURN data path and the benchmark tools both use this module.
//!
//! Buffers are owned by [`RecvBatch`] and [`SendBatch`] and reused: nothing here
//! allocates per packet. The raw `mmsghdr` arrays point into them only for the
//! duration of one call.
//!
//! A socket bound to a wildcard address must answer from the address each datagram
//! came to, or a multi-homed host replies from whatever address routing picks (and a
//! NAT drops the answer). [`learn_destinations`] makes the kernel report each
//! datagram's destination (`IP_PKTINFO` / `IPV6_RECVPKTINFO`), [`RecvBatch::destination`]
//! reads it, and [`SendBatch::send_from`] and [`send_one`] set the source per datagram.
//! Every slot has its own preallocated control buffer, so this allocates nothing either.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use socket2::SockAddr;

/// The most datagrams one call moves; beyond this the saving is negligible.
pub const MAX_BATCH: usize = 64;

/// Room for one control message carrying `in_pktinfo` (32 bytes with its header) or
/// `in6_pktinfo` (40 bytes); `u64`s so that it is aligned for `cmsghdr`.
type Control = [u64; 8];

/// Makes the kernel report the destination address of every datagram `socket` receives
/// (read with [`RecvBatch::destination`]). Only a socket bound to a wildcard address needs it.
///
/// # Errors
/// The socket refused the option.
pub fn learn_destinations(socket: &impl AsRawFd, ipv6: bool) -> io::Result<()> {
    let (level, name) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    let on: libc::c_int = 1;
    // SAFETY: the option value is a live c_int and its size is given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends one datagram to `to` without blocking, from the local address `from` when given
/// (a socket bound to a wildcard address; otherwise the kernel picks, as for `send_to`).
///
/// # Errors
/// The socket's error (`WouldBlock` included), or `from` is not an address of this host.
pub fn send_one(
    socket: &impl AsRawFd,
    data: &[u8],
    to: SocketAddr,
    from: Option<IpAddr>,
) -> io::Result<usize> {
    let name = SockAddr::from(to);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    let mut control: Control = [0; 8];
    // SAFETY: msghdr is a plain C struct; all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_name = name.as_ptr().cast_mut().cast();
    msg.msg_namelen = name.len();
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if let Some(from) = from {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = write_source(&mut control, from);
    }
    // SAFETY: the header points at the address, the iovec (which points at `data`) and
    // the control buffer, all live for this call; the kernel only reads them.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &raw const msg, libc::MSG_DONTWAIT) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// Writes an `IP_PKTINFO` / `IPV6_PKTINFO` control message that sends from `from` into
/// `control`; returns the length to put in `msg_controllen`.
fn write_source(control: &mut Control, from: IpAddr) -> usize {
    // SAFETY: msghdr is a plain C struct; all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<Control>();
    // SAFETY: `control` is aligned for cmsghdr and holds CMSG_SPACE of either pktinfo
    // struct (see `Control`), so the header and its data fit; the data may be unaligned
    // for the struct, hence the unaligned writes.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        match from {
            IpAddr::V4(ip) => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from_ne_bytes(ip.octets()),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of_val(&info) as u32) as _;
                libc::CMSG_DATA(cmsg)
                    .cast::<libc::in_pktinfo>()
                    .write_unaligned(info);
                libc::CMSG_SPACE(size_of_val(&info) as u32) as usize
            }
            IpAddr::V6(ip) => {
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: ip.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of_val(&info) as u32) as _;
                libc::CMSG_DATA(cmsg)
                    .cast::<libc::in6_pktinfo>()
                    .write_unaligned(info);
                libc::CMSG_SPACE(size_of_val(&info) as u32) as usize
            }
        }
    }
}

/// The local address in the first `IP_PKTINFO` / `IPV6_PKTINFO` message among the
/// `len` bytes of control messages in `control`.
fn read_destination(control: &Control, len: usize) -> Option<IpAddr> {
    // SAFETY: msghdr is a plain C struct; all zeroes is valid.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_control = control.as_ptr().cast_mut().cast();
    msg.msg_controllen = len.min(size_of::<Control>());
    // SAFETY: the kernel wrote `len` bytes of well-formed control messages into
    // `control`; CMSG_FIRSTHDR/CMSG_NXTHDR stay within `msg_controllen` and return null
    // at the end. The data may be unaligned for the struct, hence the unaligned reads.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            let (level, kind) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
            if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO {
                let info = libc::CMSG_DATA(cmsg)
                    .cast::<libc::in_pktinfo>()
                    .read_unaligned();
                // The local address the datagram was delivered to (for a broadcast, the
                // interface's own address): where an answer must come from.
                return Some(IpAddr::V4(Ipv4Addr::from(
                    info.ipi_spec_dst.s_addr.to_ne_bytes(),
                )));
            }
            if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO {
                let info = libc::CMSG_DATA(cmsg)
                    .cast::<libc::in6_pktinfo>()
                    .read_unaligned();
                return Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    None
}

/// Receive slots, each `headroom` bytes of free space followed by room for one datagram.
///
/// The headroom lets a relay prefix a ChannelData or Data-indication header in place.
pub struct RecvBatch {
    slots: Vec<Box<[u8]>>,
    headroom: usize,
    lens: Vec<usize>,
    truncated: Vec<bool>,
    names: Vec<libc::sockaddr_storage>,
    /// Per slot: where the kernel reports the destination address (if the socket asked).
    controls: Vec<Control>,
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
            controls: vec![[0; 8]; count],
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
            // The kernel writes control messages only for a socket that asked for them
            // (`learn_destinations`); for others this costs nothing.
            hdr.msg_control = self.controls[i].as_mut_ptr().cast();
            hdr.msg_controllen = size_of::<Control>();
            hdr.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at a live iovec, sockaddr_storage and control buffer
        // owned by self, and each iovec at a live slot; the kernel writes at most the
        // lengths given.
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

    /// The local address the `i`th datagram was sent to, when the socket reports it
    /// ([`learn_destinations`]); `None` otherwise.
    pub fn destination(&self, i: usize) -> Option<IpAddr> {
        read_destination(&self.controls[i], self.hdrs[i].msg_hdr.msg_controllen)
    }
}

/// Scratch space for `sendmmsg`: reused across calls, filled from borrowed datagrams.
pub struct SendBatch {
    names: Vec<SockAddr>,
    iovs: Vec<libc::iovec>,
    /// One per datagram of a call, for a source address (`send_from`).
    controls: Vec<Control>,
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
            controls: vec![[0; 8]; MAX_BATCH],
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
        self.send_from(
            socket,
            datagrams.into_iter().map(|(data, to)| (data, to, None)),
        )
    }

    /// As [`send`](Self::send), each datagram also with the local address it leaves from
    /// (`None`: the kernel picks, as for a socket bound to one address).
    ///
    /// # Errors
    /// The first datagram of a call failed (e.g. `WouldBlock`, unreachable, or a source
    /// that is not an address of this host).
    pub fn send_from<'a>(
        &mut self,
        socket: &impl AsRawFd,
        datagrams: impl IntoIterator<Item = (&'a [u8], Option<SocketAddr>, Option<IpAddr>)>,
    ) -> io::Result<usize> {
        let fd = socket.as_raw_fd();
        let mut sent = 0;
        let mut datagrams = datagrams.into_iter().peekable();
        while datagrams.peek().is_some() {
            self.names.clear();
            self.iovs.clear();
            let mut dests = [false; MAX_BATCH];
            let mut controls = [0; MAX_BATCH];
            for (i, (data, dest, from)) in datagrams.by_ref().take(MAX_BATCH).enumerate() {
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
                if let Some(from) = from {
                    controls[i] = write_source(&mut self.controls[i], from);
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
                if controls[i] > 0 {
                    hdr.msg_hdr.msg_control = self.controls[i].as_mut_ptr().cast();
                    hdr.msg_hdr.msg_controllen = controls[i];
                }
                self.hdrs.push(hdr);
            }
            // SAFETY: each header points at an iovec, address and control buffer in self,
            // and each iovec at a datagram borrowed for this call; the kernel only reads them.
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

    /// A socket bound to the wildcard learns which of this host's addresses each datagram
    /// was sent to (127.0.0.2 is on `lo` too) and answers from it; a client that
    /// `connect()`ed to that address accepts only such an answer.
    #[test]
    fn a_wildcard_socket_answers_from_the_address_each_datagram_came_to() {
        let server = UdpSocket::bind("0.0.0.0:0").unwrap();
        learn_destinations(&server, false).unwrap();
        let port = server.local_addr().unwrap().port();
        let clients: Vec<UdpSocket> = ["127.0.0.1", "127.0.0.2", "127.0.0.2"]
            .iter()
            .map(|ip| {
                let c = UdpSocket::bind("127.0.0.1:0").unwrap();
                c.connect((*ip, port)).unwrap();
                c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
                c
            })
            .collect();
        for (i, c) in clients.iter().enumerate() {
            c.send(&[i as u8]).unwrap();
        }
        let mut recv = RecvBatch::new(8, 16, 0);
        let mut answers = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while answers.len() < clients.len() {
            assert!(std::time::Instant::now() < deadline, "datagrams lost");
            let got = recv.recv(&server).unwrap_or(0);
            for i in 0..got {
                let k = usize::from(recv.data(i)[0]);
                let to = recv.destination(i).unwrap();
                assert_eq!(to, clients[k].peer_addr().unwrap().ip(), "datagram {k}");
                answers.push((recv.data(i).to_vec(), recv.source(i), to));
            }
        }
        // Two in one batch, one on its own.
        let (one, rest) = answers.split_at(1);
        let (data, client, from) = &one[0];
        assert_eq!(
            send_one(&server, data, client.unwrap(), Some(*from)).unwrap(),
            1
        );
        let batch = rest
            .iter()
            .map(|(data, client, from)| (&data[..], *client, Some(*from)));
        assert_eq!(SendBatch::new().send_from(&server, batch).unwrap(), 2);
        for (i, c) in clients.iter().enumerate() {
            let mut buf = [0u8; 16];
            let n = c.recv(&mut buf).expect("the answer from the address asked");
            assert_eq!(&buf[..n], &[i as u8]);
        }
    }

    #[test]
    fn a_socket_that_did_not_ask_reports_no_destination() {
        let rx = UdpSocket::bind("0.0.0.0:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"x", ("127.0.0.2", rx.local_addr().unwrap().port()))
            .unwrap();
        let mut recv = RecvBatch::new(4, 16, 0);
        rx.set_nonblocking(false).unwrap();
        let mut buf = [0u8; 1];
        rx.peek(&mut buf).unwrap();
        assert_eq!(recv.recv(&rx).unwrap(), 1);
        assert_eq!(recv.destination(0), None);
    }

    #[test]
    fn ipv6_destinations_and_sources() {
        let Ok(server) = UdpSocket::bind("[::]:0") else {
            return; // no IPv6 on this host
        };
        learn_destinations(&server, true).unwrap();
        let client = UdpSocket::bind("[::1]:0").unwrap();
        client
            .connect(("::1", server.local_addr().unwrap().port()))
            .unwrap();
        client.send(b"v6").unwrap();
        server.set_nonblocking(false).unwrap();
        let mut buf = [0u8; 2];
        server.peek(&mut buf).unwrap();
        let mut recv = RecvBatch::new(4, 16, 0);
        assert_eq!(recv.recv(&server).unwrap(), 1);
        let from = recv.destination(0).unwrap();
        assert_eq!(from, "::1".parse::<IpAddr>().unwrap());
        send_one(&server, b"ok", recv.source(0).unwrap(), Some(from)).unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(client.recv(&mut buf).unwrap(), 2);
    }
}
