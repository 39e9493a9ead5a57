//! `Registry`: the seam between a dialect and the room state it relies on. Today's
//! implementation is the in-process `Hub` (in `hub`); one shared by several instances (Redis) is
//! meant to be a second implementation, with no change to the dialect that calls it.
//!
//! It speaks no dialect. Each dialect keeps one registry (its rooms are its own namespace)
//! and hands it a `Member` per joined socket; the registry delivers `Event`s (someone
//! joined, left, or sent a message) and the member renders them in its dialect's wire
//! format. A message is the dialect's own: an event name and JSON data, which only the
//! dialect's members interpret (the native `signal`, a socket.io event, a plain-WebSocket
//! frame). All of it is plain data, so that a shared registry can carry it to members
//! connected to another instance.
//!
//! What every implementation promises:
//! - **Capacity is atomic.** The check against the room's capacity and the room count, and
//!   the adding of the member, are one step: two joins racing for the last place cannot
//!   both succeed, and a refused join changes nothing.
//! - **Ordering.** A newcomer's welcome (which the dialect delivers from the `Welcome` it
//!   passes, called at that step with the members present) precedes anything another
//!   member sends to it; `peer_joined` and `peer_left`
//!   reach each member in the order the joins and leaves took effect; the frames of one
//!   sender to one recipient arrive in the order they were sent.
//! - **Delivery never waits.** `Member::deliver` hands an event to the recipient's socket
//!   without waiting; a recipient that cannot take it evicts itself (`Eviction::Overflow`)
//!   and the sender's call still succeeds; no failure of one peer changes what the others
//!   receive. Members are called with the registry's state locked: they must not call back.
//! - **Membership is current.** Once `join`, `leave`, `kick` or `close_room` has returned,
//!   `is_member` (which TURN credentials are checked against) answers accordingly.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;

use super::protocol::{PeerId, PeerInfo, RoomId};
use super::room::{JoinError, Joined, Left, RoomActivity, RouteError, Terms};
use super::signal::Eviction;

/// Called once a join has taken effect and before anyone else can reach the newcomer,
/// with what happened: the dialect delivers its welcome (or creation/join notice) there.
/// It owns what it needs: a shared registry calls it when the join's turn comes, after
/// `join` has returned.
pub type Welcome = Box<dyn FnOnce(&Joined) + Send>;

/// A join's outcome.
pub enum Joining {
    /// Decided at once (the in-process `Hub`): the welcome has run if it succeeded.
    Done(Result<Joined, JoinError>),
    /// Decided elsewhere (a registry shared by several instances): resolves once the
    /// welcome has run, or the join was refused. Dropped unresolved, the join may still
    /// take effect; the registry then takes the member out again by itself.
    Pending(PendingJoin),
}

/// A join a shared registry has not decided yet.
pub type PendingJoin =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Joined, JoinError>> + Send>>;

impl Joining {
    /// The outcome, waiting for it if the registry is shared.
    pub async fn outcome(self) -> Result<Joined, JoinError> {
        match self {
            Joining::Done(done) => done,
            Joining::Pending(pending) => pending.await,
        }
    }
}

#[cfg(test)]
impl Joining {
    /// The outcome of a join an in-process registry decided at once.
    pub fn decided(self) -> Result<Joined, JoinError> {
        match self {
            Joining::Done(done) => done,
            Joining::Pending(_) => panic!("the join was not decided at once"),
        }
    }
}

impl fmt::Debug for Joining {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Joining::Done(done) => f.debug_tuple("Done").field(done).finish(),
            Joining::Pending(_) => f.write_str("Pending"),
        }
    }
}

/// What the registry tells a member.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// Someone joined the member's room.
    PeerJoined(&'a PeerInfo),
    /// Someone left the member's room.
    PeerLeft(&'a PeerId),
    /// A message of the dialect from another member of the room: `data` is JSON text,
    /// shared by every recipient (a clone is a reference count).
    Message {
        from: &'a PeerId,
        event: &'a str,
        data: &'a Utf8Bytes,
        /// The sender is connected to another instance (a shared registry): what the
        /// sender's instance did about the message, the recipient's must do too.
        remote: bool,
    },
}

/// A joined socket as the registry sees it: where its events go.
pub trait Member: Send + Sync + fmt::Debug {
    /// Renders `event` and hands it to the socket without waiting; a socket that cannot
    /// take it is evicted (`Eviction::Overflow`).
    fn deliver(&self, event: Event<'_>);
    /// Closes the socket (a kick, a closed room, an overflow): the registry has forgotten it.
    fn evict(&self, why: Eviction);
    /// The client's address, which an operator's kick keeps out for a while.
    fn client(&self) -> IpAddr;
}

/// Makes the registries of dialects whose rooms span several instances (a cluster).
pub trait Sharing {
    /// The registry of `dialect`'s rooms; `scope` names the TURN credential scope of one of
    /// its rooms; `capacity` and `max_rooms` are its first limits.
    /// `rooms` holds the dialect's room rules (unique names, presence) with no limits:
    /// the shared registry applies capacity and room count itself.
    fn registry(
        &self,
        dialect: &'static str,
        scope: fn(RoomId) -> crate::model::Scope,
        rooms: super::room::Rooms,
        capacity: usize,
        max_rooms: usize,
    ) -> Arc<dyn Registry>;
}

/// Whom a message goes to.
#[derive(Debug, Clone, Copy)]
pub enum To<'a> {
    /// One member of the sender's room.
    Peer(&'a PeerId),
    /// The member of that name in the sender's room (registries with unique names).
    Named(&'a str),
    /// Every other member of the sender's room.
    Others,
}

/// Rooms, their members, and delivery to a member (see the module's promises).
pub trait Registry: Send + Sync + fmt::Debug {
    /// Joins `peer` to `room`: `welcome` runs, then `peer_joined` goes to the others.
    /// `terms` are its join token's: its capacity replaces the dialect's room capacity for
    /// this join, its message budget the room's from now on.
    ///
    /// Its outcome's errors: the room is full, there are too many rooms, the peer is in a
    /// room already, its name is taken (unique-name registries), or a shared registry cannot
    /// be reached; nothing is delivered then.
    fn join(
        &self,
        peer: PeerInfo,
        room: &RoomId,
        terms: Terms,
        member: Arc<dyn Member>,
        welcome: Welcome,
    ) -> Joining;
    /// Removes `peer` from its room; the others are told `peer_left`.
    fn leave(&self, peer: &PeerId) -> Option<Left>;
    /// Delivers the dialect message `event` with `data` (JSON text) from `from` to `to` in
    /// its room.
    ///
    /// Each message is charged to the sender's room's message budget
    /// (`Rooms::charge`; in a cluster, this instance's count of its own members' messages).
    ///
    /// # Errors
    /// The sender is in no room, `to` names nobody else in it, or the room is over its
    /// message budget.
    fn send(
        &self,
        from: &PeerId,
        to: To<'_>,
        event: &str,
        data: &Utf8Bytes,
    ) -> Result<(), RouteError>;
    /// The room `peer` is in.
    fn room_of(&self, peer: &PeerId) -> Option<RoomId>;
    /// The member called `name` in `from`'s room (where names are unique).
    ///
    /// # Errors
    /// The sender is in no room, or nobody else there has that name.
    fn resolve(&self, from: &PeerId, name: &str) -> Result<PeerId, RouteError>;
    /// New capacity and room count, for the joins that come next, and the rooms' message
    /// budget (per second; 0: none) where no join token set one.
    fn set_limits(&self, capacity: usize, max_rooms: usize, messages_per_s: u32);
    /// Every room with its members in join order, sorted by name.
    fn rooms(&self) -> Vec<(RoomId, Vec<PeerInfo>)>;
    /// The members of `room`, in join order.
    fn members(&self, room: &RoomId) -> Vec<PeerInfo>;
    /// What every room and member has done so far (messages, time since joining), rooms
    /// sorted by name. In a cluster, a member's messages are counted by its own instance.
    fn activity(&self) -> Vec<RoomActivity>;
    /// Removes every member of `room` and evicts them.
    fn close_room(&self, room: &RoomId) -> Vec<PeerId>;
    /// Removes `peer` (the room is told) and evicts it; its leave, and its client's address.
    fn kick(&self, peer: &PeerId) -> Option<(Left, Option<IpAddr>)>;
    fn is_member(&self, room: &RoomId, peer: &PeerId) -> bool;
    /// Rooms, and peers in a room.
    fn counts(&self) -> (usize, usize);
}
