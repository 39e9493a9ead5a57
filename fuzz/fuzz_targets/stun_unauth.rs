//! One datagram from a client with no credential, as a UDP listener takes it: classified,
//! STUN to the TURN core (`Core::handle_stun`), ChannelData to the router
//! (`route::channel_data`). Sent twice, as a retransmission is, then once from IPv6.
//!
//! Besides the checks of every reply (`switchboard_fuzz::stun`): a retransmitted request
//! that made an allocation gets the very reply the first one got (RFC 8656 section 7.2,
//! which the core's reply cache keeps), not a 437.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::turn::wire::{CHANNEL_HEADER, Kind};
use switchboard_fuzz as f;

fuzz_target!(|data: &[u8]| {
    let core = f::core();
    let clients = f::clients();
    let clock = f::Clock::start();
    let mut first = None;
    for (sent, client) in [0, 0, 3].into_iter().enumerate() {
        let tuple = clients[client].tuple;
        match f::kind(data) {
            Kind::Stun => {
                let had = core.get(&tuple).is_some();
                let reply = f::stun(&core, &clock, client, tuple, data);
                match sent {
                    0 if !had && core.get(&tuple).is_some() => first = reply,
                    1 if first.is_some() => {
                        assert_eq!(reply, first, "a retransmitted Allocate got another reply");
                    }
                    _ => {}
                }
            }
            Kind::ChannelData { number, len } => {
                let (mut buf, at) = f::slot(data);
                let start = at + CHANNEL_HEADER;
                f::channel_data(&core, &clock, tuple, number, &mut buf, start..start + len);
            }
            Kind::Other => {}
        }
    }
});
