//! The TURN core with clients that hold valid long-term credentials: clients 0 (UDP, a
//! REST credential) and 1 (TCP, a static user) allocate first, with the nonce of their 401;
//! then the input runs as records `[op][len:2][body]` (`switchboard_fuzz::records`).
//!
//! The op's high nibble picks the client (0 UDP, 1 TCP, 2 TLS with a peer credential,
//! 3 UDP from IPv6); its low nibble what happens:
//! - 0: `body` is a STUN message, sent as it is;
//! - 1: `body` is a STUN message, framed and signed with the client's credential and nonce
//!   (USERNAME, REALM, NONCE, MESSAGE-INTEGRITY, FINGERPRINT) before it is sent; the nonce
//!   of a 401 or 438 reply is the one the client signs with next, as a browser does;
//! - 2: `body` is a datagram: ChannelData is routed (`route::channel_data`), STUN handled;
//! - 3: `body[0]` picks a peer (two on the Internet, one IPv6, or a client's relayed
//!   address), the rest is a datagram from it on the client's relay (`route::peer_data`);
//! - 4: both clocks move on to `body[0..2]` (big-endian) seconds after the start, never back,
//!   and the core sweeps: lifetimes run out, nonces go stale (10 minutes), credentials expire
//!   (an hour);
//! - 5: the client's transport closes: its allocation goes, and its relayed address with it.

#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use switchboard::turn::core::CloseReason;
use switchboard::turn::wire::{CHANNEL_HEADER, Kind};
use switchboard_fuzz as f;

fuzz_target!(|data: &[u8]| {
    let core = f::core();
    let mut clients = f::clients();
    let mut clock = f::Clock::start();
    f::allocate(&core, &clock, &mut clients, 0);
    f::allocate(&core, &clock, &mut clients, 1);
    // Clients 2 and 3 hold the nonce their first request would get.
    for (op, body) in f::records(data) {
        let c = usize::from(op >> 4) % clients.len();
        let tuple = clients[c].tuple;
        match op & 0x0F {
            0 => {
                f::stun(&core, &clock, c, tuple, body);
            }
            1 => {
                let signed = f::sign(body, &clients[c]);
                let sent = signed.as_deref().unwrap_or(body);
                if let Some(reply) = f::stun(&core, &clock, c, tuple, sent) {
                    clients[c].learn_nonce(&reply);
                }
            }
            2 => match f::kind(body) {
                Kind::ChannelData { number, len } => {
                    let (mut buf, at) = f::slot(body);
                    let start = at + CHANNEL_HEADER;
                    f::channel_data(&core, &clock, tuple, number, &mut buf, start..start + len);
                }
                Kind::Stun => {
                    f::stun(&core, &clock, c, tuple, body);
                }
                Kind::Other => {}
            },
            3 => {
                let Some((&pick, payload)) = body.split_first() else {
                    continue;
                };
                let mut peers: Vec<SocketAddr> = vec![
                    "203.0.113.5:4000".parse().unwrap(),
                    "203.0.113.6:5000".parse().unwrap(),
                    "[2001:db8::5]:4000".parse().unwrap(),
                ];
                peers.extend(
                    clients
                        .iter()
                        .filter_map(|c| core.get(&c.tuple))
                        .map(|a| a.relayed),
                );
                let from = peers[usize::from(pick) % peers.len()];
                f::peer_data(&core, &clock, tuple, from, payload);
            }
            4 => {
                let secs = match *body {
                    [] => 0,
                    [lo] => u16::from(lo),
                    [hi, lo, ..] => u16::from_be_bytes([hi, lo]),
                };
                clock.advance_to(u64::from(secs));
                core.sweep(clock.now());
            }
            5 => {
                let relayed = core.get(&tuple).map(|a| a.relayed);
                core.close(&tuple, CloseReason::TransportClosed, clock.now());
                assert!(
                    core.get(&tuple).is_none(),
                    "an allocation outlived its close"
                );
                if let Some(relayed) = relayed {
                    assert!(
                        core.by_relayed(&relayed).is_none(),
                        "a closed allocation's relayed address still routes"
                    );
                }
            }
            _ => {}
        }
    }
});
