//! A TURN client's TCP stream: `turn::stream::Frames` reads whole frames from bytes that
//! arrive in pieces, and each frame is handled as `turn::server` handles it: STUN to the
//! core, ChannelData to the router (relay to relay, framed in place in the reader's buffer).
//!
//! Input: `[flags][piece][stream bytes…]`. `piece` sets how the stream is cut into reads
//! (0: as much as fits each time). With `flags & 1`, the connection (client 1, TCP) has an
//! allocation before the stream starts, with channel 0x4000 bound to the relayed address of
//! client 0 (UDP), 0x4001 to that of client 2 (TLS), and 0x4002 to a peer on the Internet,
//! and both clients permit client 1's relayed address; without it, the stream starts
//! unallocated, as every connection does (small frames only until an Allocate succeeds).

#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll};

use libfuzzer_sys::fuzz_target;
use switchboard::turn::stream::{Frames, SMALL_FRAME};
use switchboard::turn::wire::{self, CHANNEL_HEADER, HEADROOM, Kind, MAX_STREAM_FRAME};
use switchboard_fuzz::{self as f, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION};
use tokio::io::{AsyncRead, ReadBuf};

/// The stream's bytes, handed out in pieces of varying size.
struct Pieces<'a> {
    data: &'a [u8],
    piece: u8,
    state: u32,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let room = buf.remaining().min(self.data.len());
        let n = if self.piece == 0 {
            room
        } else {
            self.state = self.state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let size = 1 + (self.state >> 16) as usize % usize::from(self.piece);
            size.min(room)
        };
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

thread_local! {
    /// `Frames` times frames that arrive in pieces; reads here never wait.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
}

fuzz_target!(|data: &[u8]| {
    let [flags, piece, stream @ ..] = data else {
        return;
    };
    let core = f::core();
    let mut clients = f::clients();
    let clock = f::Clock::start();
    let me = clients[1].clone();
    if flags & 1 != 0 {
        for i in [0, 1, 2] {
            f::allocate(&core, &clock, &mut clients, i);
        }
        let relayed = |i: usize| core.get(&clients[i].tuple).unwrap().relayed;
        let mine = relayed(1);
        let peers = [relayed(0), relayed(2), "203.0.113.5:4000".parse().unwrap()];
        for (n, peer) in peers.into_iter().enumerate() {
            let bind = f::request(
                METHOD_CHANNEL_BIND,
                0xC0 + n as u8,
                vec![f::channel_number(0x4000 + n as u16), f::peer_address(peer)],
            );
            f::expect_success(&core, &clock, &clients[1], 1, &bind);
        }
        for i in [0, 2] {
            let permit = f::request(
                METHOD_CREATE_PERMISSION,
                0xD0 + i as u8,
                vec![f::peer_address(mine)],
            );
            f::expect_success(&core, &clock, &clients[i], i, &permit);
        }
    }
    let reader = Pieces {
        data: stream,
        piece: *piece,
        state: u32::from(*piece),
    };
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let mut frames = Frames::new(reader);
            let mut allocated = core.get(&me.tuple).is_some();
            if allocated {
                frames.allocated();
            }
            let mut at = 0;
            while let Ok(Some(frame)) = frames.next().await {
                // A whole frame, the next bytes of the stream, with room before it.
                assert!(frame.start >= HEADROOM, "a frame without its headroom");
                let len = frame.len();
                assert_eq!(
                    &frames.buf_mut()[frame.clone()],
                    &stream[at..at + len],
                    "a frame that is not the stream's next bytes"
                );
                at += len;
                let head = &stream[at - len..at - len + 4];
                assert_eq!(
                    wire::stream_frame_len([head[0], head[1], head[2], head[3]]),
                    Some(len)
                );
                assert!(
                    len <= if allocated {
                        MAX_STREAM_FRAME
                    } else {
                        SMALL_FRAME
                    }
                );
                let buf = frames.buf_mut();
                match wire::classify(&buf[frame.clone()]) {
                    Kind::ChannelData { number, len } => {
                        let start = frame.start + CHANNEL_HEADER;
                        f::channel_data(&core, &clock, me.tuple, number, buf, start..start + len);
                    }
                    Kind::Stun => {
                        let bytes = buf[frame].to_vec();
                        f::stun(&core, &clock, 1, me.tuple, &bytes);
                        if !allocated && core.get(&me.tuple).is_some() {
                            allocated = true;
                            frames.allocated();
                        }
                    }
                    Kind::Other => {}
                }
            }
        });
    });
});
