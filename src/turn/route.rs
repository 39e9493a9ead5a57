//! Where a relayed packet goes, and how it is framed, decided without sockets.
//!
//! `turn::server` receives a packet, asks this module what to do with it, and does it:
//! - `channel_data`: ChannelData from a client goes out of its allocation's relay to the
//!   channel's peer (`Route::ToPeer`); or, when that peer is the relayed address of another
//!   allocation of this server, straight to that allocation's client, framed in place as
//!   that allocation's relay would have framed it (`Route::RelayToRelay`); or it is dropped.
//! - `peer_data`: a datagram from a peer on an allocation's relay goes to the allocation's
//!   client, framed in place as ChannelData when the peer has a channel and as a Data
//!   indication otherwise; or it is dropped.
//!
//! ChannelData toward a TCP/TLS client is padded to a multiple of 4 bytes, toward a UDP client
//! it is not (RFC 8656 section 12.5); a Data indication is always a whole STUN message.
//! Frames are written into the caller's buffer, in the `HEADROOM` before the payload, and the
//! decisions return ranges of that buffer: nothing is allocated or copied here.
//! Send indications are the core's (`Handled::Send`).
//!
//! Each payload is charged to the bandwidth budget of the allocations it passes through
//! (`turn::budget`: the sender's way to peers, the receiver's way to its client), under the
//! lock of the allocation's state taken for the lookup; over budget, it is dropped.
//! Drops are counted here, as are the allocations' relayed bytes and packets (in their
//! budgets) and the relay-to-relay handovers; what is sent, or fails to be, is counted by
//! the caller, which alone knows. The only locks are the allocations' own mutexes, each
//! taken for one lookup.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use rand::RngCore;

use super::allocation::{AllocState, RelayAt};
use super::budget::{BandwidthLimit, Direction};
use super::core::{Allocation, Stats, Transport};
use super::policy;
use super::policy::Reach;
use super::wire;
use crate::sync::Locked;

/// An allocation's relay handle as routing sees it: the way back to the allocation's client.
pub trait Relay {
    /// Whatever delivers frames to the client (a UDP listener, a stream's queue).
    type Sink: Clone;
    /// The way back to the client; `None` until the allocation is granted.
    fn client(&self) -> Option<&Self::Sink>;
}

/// Where ChannelData from a client goes.
#[derive(Debug)]
pub enum Route<R: Relay> {
    /// Out of `allocation`'s relay socket to `peer`: the bytes `payload` of the buffer.
    ToPeer {
        allocation: Arc<Allocation<R>>,
        peer: SocketAddr,
        payload: Range<usize>,
    },
    /// Relay to relay: to the client of `to`, another allocation of this server whose relay
    /// has its way back to its client (`to.relay.client()` is `Some`), the bytes `frame` of
    /// the buffer (framed for that client). The allocation rather than a clone of its sink:
    /// a sink may serve many clients (a UDP listener's socket), and a clone per packet would
    /// write its reference count from every core.
    RelayToRelay {
        to: Arc<Allocation<R>>,
        frame: Range<usize>,
    },
    /// Nowhere: dropped, and counted.
    Drop(Dropped),
}

/// Why a packet on the data path was dropped; each reason is counted as `Stats::unframeable`
/// (`Unframeable`), `Stats::fence_drops` (`Fenced`), `Stats::budget_drops` (`OverBudget`, by
/// [`over_budget`], which knows the bytes) or `Stats::no_permission` (the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// ChannelData on a 5-tuple without an allocation.
    NoAllocation,
    /// ChannelData on a channel that is not bound, has expired, or whose peer's permission has
    /// expired (a channel carries nothing without one, RFC 8656 section 12).
    NoChannel,
    /// From a peer without a permission; relay to relay, the other allocation has none for
    /// this allocation's relayed address.
    NoPermission,
    /// Relay to relay, to an allocation not granted yet (its reply is on its way): as if it
    /// had no permission yet.
    NotGranted,
    /// Too large for a Data indication, from a peer without a channel.
    Unframeable,
    /// Relay to relay, between allocations fenced to different rooms (`turn.fence`).
    Fenced,
    /// Over an allocation's bandwidth budget, one way, under one limit (`turn::budget`).
    OverBudget(Direction, BandwidthLimit),
}

impl Dropped {
    #[inline]
    fn count(self, stats: &Stats) -> Dropped {
        match self {
            Dropped::Unframeable => stats.unframeable.inc(),
            Dropped::Fenced => stats.fence_drops.inc(),
            // Counted with its bytes by `over_budget`.
            Dropped::OverBudget(..) => {}
            Dropped::NoAllocation
            | Dropped::NoChannel
            | Dropped::NoPermission
            | Dropped::NotGranted => stats.no_permission.inc(),
        }
        self
    }
}

/// Counts a payload of `bytes` dropped over a budget.
#[inline]
pub fn over_budget(
    stats: &Stats,
    direction: Direction,
    limit: BandwidthLimit,
    bytes: usize,
) -> Dropped {
    stats.budget_drops.add(direction, limit, bytes);
    Dropped::OverBudget(direction, limit)
}

/// Whether ChannelData toward a client over `transport` is padded to a multiple of 4 bytes:
/// over TCP and TLS it is, over UDP it is not (RFC 8656 section 12.5).
#[inline]
pub fn pads(transport: Transport) -> bool {
    transport != Transport::Udp
}

/// Decides where ChannelData on channel `number` from the client of `allocation` goes
/// (`allocation` is the 5-tuple's, `None` when it has none). The payload is `buf[payload]`,
/// with `HEADROOM` free bytes before it and 3 after; a relay-to-relay packet is framed there,
/// in place. `by_relayed` finds the live allocation of a relayed address.
///
/// Charges the payload to the allocation's budget toward peers once the channel is known
/// (and relay to relay, to the other allocation's budget toward its client); counts the
/// drops and the relay-to-relay handovers.
#[inline]
pub fn channel_data<R: Relay>(
    allocation: Option<Arc<Allocation<R>>>,
    now: Instant,
    number: u16,
    buf: &mut [u8],
    payload: Range<usize>,
    by_relayed: impl FnOnce(&SocketAddr) -> Option<Arc<Allocation<R>>>,
    stats: &Stats,
) -> Route<R> {
    let Some(allocation) = allocation else {
        return Route::Drop(Dropped::NoAllocation.count(stats));
    };
    let len = payload.len();
    // The way out, decided and charged to the sender under its lock (the index is lock-free).
    let decided = {
        let mut state = allocation.state.locked();
        let decided = match state.channel_target(now, number) {
            None => Err(Dropped::NoChannel),
            Some((peer, reach)) => match by_relayed(&peer) {
                // On an address of the server's relays, only a live relay is reachable.
                None if reach == Reach::Relays => Err(Dropped::NoPermission),
                None => Ok((peer, None)),
                Some(other) if super::core::fenced_apart(allocation.fence, other.fence) => {
                    Err(Dropped::Fenced)
                }
                Some(other) if other.relay.client().is_none() => Err(Dropped::NotGranted),
                Some(other) => Ok((peer, Some(other))),
            },
        };
        match decided {
            Ok(way) => match state.budget.to_peer.pass(now, len) {
                Ok(()) => Ok(way),
                Err(limit) => {
                    return Route::Drop(over_budget(stats, Direction::ToPeer, limit, len));
                }
            },
            Err(dropped) => Err(dropped),
        }
    };
    let (peer, other) = match decided {
        Ok(way) => way,
        Err(dropped) => return Route::Drop(dropped.count(stats)),
    };
    let Some(other) = other else {
        return Route::ToPeer {
            allocation,
            peer,
            payload,
        };
    };
    let from = allocation.relayed;
    let channel = {
        let mut state = other.state.locked();
        if !state.is_permitted(now, from) {
            Err(Dropped::NoPermission.count(stats))
        } else if let Err(limit) = state.budget.to_client.pass(now, len) {
            Err(over_budget(stats, Direction::ToClient, limit, len))
        } else {
            Ok(state.channel_of(now, from))
        }
    };
    let framed = channel.and_then(|channel| {
        frame(buf, payload, from, channel, pads(other.tuple.transport)).ok_or_else(|| {
            // Charged to the receiver, which gets nothing after all.
            other.state.locked().budget.to_client.refund(len);
            Dropped::Unframeable.count(stats)
        })
    });
    let frame = match framed {
        Ok(frame) => frame,
        Err(dropped) => {
            // The other side did not take it: the sender relayed nothing.
            allocation.state.locked().budget.to_peer.refund(len);
            return Route::Drop(dropped);
        }
    };
    stats.relay_to_relay.inc();
    Route::RelayToRelay { to: other, frame }
}

/// Frames a datagram from the peer `from`, received on the relay of the allocation whose
/// state is `state` and whose client uses `transport`, for that client (charged to that
/// allocation's budget toward its client): returns the frame's
/// range of `buf`, written in place around the payload `buf[payload]` (which has `HEADROOM`
/// free bytes before it and 3 after), or why it is dropped (counted). `relay` says whether
/// an address is a live relay of this server, and one this allocation may reach (asked only
/// for a source on the server's own address).
#[inline]
#[expect(
    clippy::too_many_arguments,
    reason = "the receive loop's values, passed as they are on the hot path"
)]
pub fn peer_data(
    state: &mut AllocState,
    now: Instant,
    transport: Transport,
    from: SocketAddr,
    buf: &mut [u8],
    payload: Range<usize>,
    relay: impl FnOnce(&SocketAddr) -> RelayAt,
    stats: &Stats,
) -> Result<Range<usize>, Dropped> {
    let from = SocketAddr::new(policy::normalize(from.ip()), from.port());
    if !state.passes(now, from, relay) {
        return Err(Dropped::NoPermission.count(stats));
    }
    let len = payload.len();
    let channel = state.channel_of(now, from);
    let frame = frame(buf, payload, from, channel, pads(transport)).ok_or(Dropped::Unframeable);
    let frame = frame.map_err(|dropped| dropped.count(stats))?;
    state
        .budget
        .to_client
        .pass(now, len)
        .map_err(|limit| over_budget(stats, Direction::ToClient, limit, len))?;
    Ok(frame)
}

/// Frames `buf[payload]` from `from` for a client, in place: ChannelData on `channel`
/// (padded when `pad`), else a Data indication; `None` when it is too large for one.
#[inline]
fn frame(
    buf: &mut [u8],
    payload: Range<usize>,
    from: SocketAddr,
    channel: Option<u16>,
    pad: bool,
) -> Option<Range<usize>> {
    let (start, len) = (payload.start, payload.len());
    match channel {
        Some(number) => Some(wire::channel_data_in_place(buf, start, len, number, pad)),
        None => wire::data_indication_in_place(buf, start, len, from, random_tid()),
    }
}

fn random_tid() -> [u8; 12] {
    let mut tid = [0u8; 12];
    rand::rng().fill_bytes(&mut tid);
    tid
}

#[cfg(test)]
mod tests;
