//! `Registry`: the seam between a dialect and the room state it relies on. Today's
//! implementation is the in-process `Hub` (in `hub`); one shared by several instances (Redis) is
//! meant to be a second implementation, with no change to the dialect that calls it.
//!
//! What every implementation promises:
//! - **Capacity is atomic.** The check against the room's capacity and the room count, and
//!   the adding of the member, are one step: two joins racing for the last place cannot
//!   both succeed, and a refused join changes nothing.
//! - **Ordering.** A newcomer's welcome (built from the members present at that step) is
//!   delivered before anything another member sends to it; `peer_joined` and `peer_left`
//!   reach each member in the order the joins and leaves took effect; the frames of one
//!   sender to one recipient arrive in the order they were sent.
//! - **Delivery never waits.** A frame goes to the recipient's `Outbox` without waiting; a
//!   recipient that cannot take it is evicted (`Eviction::Overflow`) and the sender's call
//!   still succeeds; no failure of one peer changes what the others receive.
//! - **Membership is current.** Once `join`, `leave`, `kick` or `close_room` has returned,
//!   `is_member` (which TURN credentials are checked against) answers accordingly.

use std::fmt;

use super::outbox::Outbox;
use super::protocol::{Payload, PeerId, PeerInfo, RoomId, ServerMsg};
use super::room::{JoinError, Joined, Left, RouteError};

/// Builds a newcomer's welcome from the members already present.
pub type Welcome<'a> = Box<dyn FnOnce(&[PeerInfo]) -> ServerMsg + 'a>;

/// Rooms, their members, and delivery to a member (see the module's promises).
pub trait Registry: Send + Sync + fmt::Debug {
    /// Joins `peer` to `room`; its welcome goes to `outbox` first, then `peer_joined` to the others.
    ///
    /// # Errors
    /// The room is full, there are too many rooms, or the peer is in a room already.
    fn join(
        &self,
        peer: PeerInfo,
        room: &RoomId,
        outbox: Outbox,
        welcome: Welcome<'_>,
    ) -> Result<Joined, JoinError>;
    /// Removes `peer` from its room; the others are told `peer_left`.
    fn leave(&self, peer: &PeerId) -> Option<Left>;
    /// Delivers a signal from `from` to `to`, both in the same room.
    ///
    /// # Errors
    /// The sender is in no room, or `to` is not in its room.
    fn signal(&self, from: &PeerId, to: &PeerId, payload: Payload) -> Result<(), RouteError>;
    /// New capacity and room count, for the joins that come next.
    fn set_limits(&self, capacity: usize, max_rooms: usize);
    /// Every room with its members in join order, sorted by name.
    fn rooms(&self) -> Vec<(RoomId, Vec<PeerInfo>)>;
    /// Removes every member of `room` and evicts their sockets.
    fn close_room(&self, room: &RoomId) -> Vec<PeerId>;
    /// Removes `peer` (the room is told) and evicts its socket.
    fn kick(&self, peer: &PeerId) -> Option<Left>;
    fn is_member(&self, room: &RoomId, peer: &PeerId) -> bool;
    /// Rooms, and peers in a room.
    fn counts(&self) -> (usize, usize);
}
