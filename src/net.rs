//! Binding listening sockets, with errors that say what to change, and socket options.
//!
//! IPv6 sockets are bound v6-only so that `0.0.0.0:P` and `[::]:P` can be bound
//! side by side. An IPv6 wildcard on a host without IPv6 is skipped, not fatal.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tracing::warn;

/// Why a listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("failed to bind {what} listener {addr} (config key `{key}`): {reason}")]
pub struct BindError {
    pub what: &'static str,
    pub key: &'static str,
    pub addr: SocketAddr,
    pub reason: String,
}

/// The outcome of binding one configured address.
pub enum Bound<T = TcpListener> {
    Listener(T),
    /// An IPv6 wildcard on a host without IPv6.
    NoIpv6,
}

/// Binds `count` UDP sockets sharing `addr` with SO_REUSEPORT, so that as many
/// receive loops serve it in parallel (the kernel keeps each client on one socket);
/// `what` and `key` name it in errors. On a wildcard address each socket reports every
/// datagram's destination (`mmsg::learn_destinations`), so that answers can leave from it.
///
/// # Errors
/// The address is in use, not local, or needs a privilege the process lacks.
pub fn bind_udp(
    addr: SocketAddr,
    count: usize,
    what: &'static str,
    key: &'static str,
) -> Result<Bound<Vec<tokio::net::UdpSocket>>, BindError> {
    let one = |addr: SocketAddr| -> io::Result<tokio::net::UdpSocket> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        // Bursts of relayed media need more than the default socket buffers.
        let _ = socket.set_recv_buffer_size(4 << 20);
        let _ = socket.set_send_buffer_size(4 << 20);
        socket.bind(&addr.into())?;
        if addr.ip().is_unspecified() {
            // Replies must leave from the address each request came to (a multi-homed host).
            crate::mmsg::learn_destinations(&socket, addr.is_ipv6())?;
        }
        tokio::net::UdpSocket::from_std(socket.into())
    };
    let attempt = || -> io::Result<Vec<tokio::net::UdpSocket>> {
        let first = one(addr)?;
        // With port 0, the others join the port the first one got.
        let shared = first.local_addr()?;
        let mut group = vec![first];
        for _ in 1..count.max(1) {
            group.push(one(shared)?);
        }
        Ok(group)
    };
    bound(attempt(), addr, what, key)
}

/// Binds a TCP listener for `addr`; `what` and `key` name it in errors.
///
/// # Errors
/// The address is in use, not local, or needs a privilege the process lacks.
pub fn bind_tcp(
    addr: SocketAddr,
    what: &'static str,
    key: &'static str,
) -> Result<Bound, BindError> {
    bound(try_bind_tcp(addr), addr, what, key)
}

/// A bind result as `Bound`: an IPv6 wildcard on a host without IPv6 is skipped, other
/// errors are explained.
fn bound<T>(
    result: io::Result<T>,
    addr: SocketAddr,
    what: &'static str,
    key: &'static str,
) -> Result<Bound<T>, BindError> {
    match result {
        Ok(socket) => Ok(Bound::Listener(socket)),
        Err(e) if addr.is_ipv6() && addr.ip().is_unspecified() && no_ipv6(&e) => Ok(Bound::NoIpv6),
        Err(e) => Err(BindError {
            what,
            key,
            addr,
            reason: explain(&e, addr),
        }),
    }
}

fn try_bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

fn no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_codes::EAFNOSUPPORT | libc_codes::EADDRNOTAVAIL)
    )
}

/// A bind error in words, with the usual fix.
pub fn explain(e: &io::Error, addr: SocketAddr) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => {
            "address in use (another process listens there; stop it or change the port)".to_owned()
        }
        io::ErrorKind::PermissionDenied if addr.port() < 1024 => format!(
            "permission denied (port {} is below 1024: grant CAP_NET_BIND_SERVICE, e.g. `setcap cap_net_bind_service=+ep` on the binary or AmbientCapabilities in the systemd unit, or use a port >= 1024)",
            addr.port()
        ),
        io::ErrorKind::AddrNotAvailable => {
            "address not available (no local interface has this IP)".to_owned()
        }
        _ => e.to_string(),
    }
}

/// The two errno values that mean "no IPv6 here" on Linux.
mod libc_codes {
    pub const EAFNOSUPPORT: i32 = 97;
    pub const EADDRNOTAVAIL: i32 = 99;
}

/// Makes a UDP socket send with the IP don't-fragment bit and never fragment locally: a
/// datagram larger than the path MTU fails with `EMSGSIZE` instead (IPv4: `IP_MTU_DISCOVER`
/// set to `IP_PMTUDISC_DO`; IPv6, where routers never fragment: `IPV6_DONTFRAG`).
///
/// # Errors
/// The kernel refuses the socket option.
/// Every IP address of this host's interfaces (getifaddrs), for what a wildcard listener
/// answers on.
///
/// # Errors
/// The kernel refuses the list.
pub fn host_addresses() -> io::Result<Vec<IpAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut addresses = Vec::new();
    let mut at = list;
    while !at.is_null() {
        // SAFETY: `at` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*at };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says which struct it is.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    // SAFETY: an AF_INET address is a sockaddr_in.
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    addresses.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))));
                }
                libc::AF_INET6 => {
                    // SAFETY: an AF_INET6 address is a sockaddr_in6.
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    addresses.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        at = ifa.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once; no reference into it remains.
    unsafe { libc::freeifaddrs(list) };
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}

pub fn set_dont_fragment(socket: &impl AsFd, ipv6: bool) -> io::Result<()> {
    let (level, name, value) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    };
    // SAFETY: a valid descriptor, and a pointer to a c_int with its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The IPv4 address of the default route, found without sending anything; loopback without one.
pub fn default_relay_ip() -> IpAddr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| {
        s.connect("192.0.2.1:9")?;
        s.local_addr()
    });
    match probe {
        Ok(addr) if !addr.ip().is_unspecified() => addr.ip(),
        _ => {
            warn!("no default route: relaying on 127.0.0.1 only (set turn.relay_ip)");
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
    }
}

const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 6;

/// Socket options of an accepted client connection (HTTPS, TURN over TCP/TLS): no Nagle
/// (media and signaling frames are latency-bound), and keepalive, so a client gone without
/// a FIN is found within about two minutes (and a TURN allocation goes with its connection).
pub fn prepare_stream(tcp: &tokio::net::TcpStream) {
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_addresses_include_loopback() {
        let addresses = host_addresses().unwrap();
        assert!(
            addresses.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{addresses:?}"
        );
    }

    #[test]
    fn dont_fragment_is_set_on_ipv4_sockets() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mode = || {
            let mut v: libc::c_int = -1;
            let mut len = size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: a valid descriptor, and a c_int with its size to write into.
            let rc = unsafe {
                libc::getsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_MTU_DISCOVER,
                    (&raw mut v).cast(),
                    &raw mut len,
                )
            };
            assert_eq!(rc, 0);
            v
        };
        assert_ne!(mode(), libc::IP_PMTUDISC_DO);
        set_dont_fragment(&socket, false).unwrap();
        assert_eq!(mode(), libc::IP_PMTUDISC_DO);
    }

    #[tokio::test]
    async fn a_port_in_use_is_explained() {
        let Bound::Listener(first) =
            bind_tcp("127.0.0.1:0".parse().unwrap(), "HTTPS", "https.listen").unwrap()
        else {
            panic!("loopback must bind");
        };
        let addr = first.local_addr().unwrap();
        let err = bind_tcp(addr, "HTTPS", "https.listen")
            .err()
            .expect("second bind fails");
        let text = err.to_string();
        assert!(
            text.contains("address in use") && text.contains("https.listen"),
            "{text}"
        );
    }
}
