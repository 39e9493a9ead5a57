//! Reference ceiling: the least a UDP relay can do on this kernel with the same
//! syscalls as the TURN data path. One thread, one socket, `recvmmsg`/`sendmmsg`;
//! each datagram goes to the IPv4 address and port written at bytes 16..22 of its
//! payload (what `turn-load --forwarder` writes). No TURN, no state, no checks.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use mio::{Events, Interest, Poll, Token};
use switchboard::mmsg::{RecvBatch, SendBatch};

#[derive(Parser)]
#[command(about = "Minimal UDP forwarder (reference ceiling for relays)")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:3480")]
    listen: SocketAddr,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(args.listen),
        socket2::Type::DGRAM,
        None,
    )?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&args.listen.into())?;
    socket.set_nonblocking(true)?;
    let std: std::net::UdpSocket = socket.into();
    eprintln!("udp-forward listening on {}", std.local_addr()?);
    let mut socket = mio::net::UdpSocket::from_std(std);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut socket, Token(0), Interest::READABLE)?;
    let mut events = Events::with_capacity(8);
    let mut recv = RecvBatch::new(64, 2048, 0);
    let mut send = SendBatch::new();
    loop {
        poll.poll(&mut events, Some(Duration::from_secs(1)))?;
        while let Ok(got) = recv.recv(&socket) {
            let out = (0..got).filter_map(|i| {
                let d = recv.data(i);
                let dest = d.get(16..22)?;
                let ip = Ipv4Addr::new(dest[0], dest[1], dest[2], dest[3]);
                let port = u16::from_be_bytes([dest[4], dest[5]]);
                Some((d, Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))))
            });
            let _ = send.send(&socket, out);
        }
    }
}
