//! Switchboard's own STUN/TURN server (RFC 8489 / RFC 8656), built on the
//! webrtc-rs `stun` crate for message parsing and integrity.
//!
//! - `auth`: credentials (TURN REST API, static users), long-term keys, stateless nonces.
//! - `policy`: which peer addresses may be relayed to.
//! - `allocation`: one allocation's permissions, channels and lifetime, as plain data.
//! - `budget`: bandwidth budgets: token buckets per allocation and direction, room shares.
//! - `wire`: packet classification, stream framing, allocation-free data encodings.
//! - `core`: the sans-IO server: requests in, responses out, the allocation table.
//! - `route`: where a data packet goes and how it is framed, decided without sockets.
//! - `server`: listeners, relay sockets, tasks that carry out `route`'s decisions (the only I/O).
//! - `stream`: a TCP/TLS client's framed reads and its bounded, never-waiting outbound queue.
//! - `usage`: what allocations used (bytes and packets each way, time held), by account.
//! - `handle`: `Turn`, the narrow handle the rest of the crate holds (mint, revoke, usage, reload).
//! - `ice`: the `ice_servers` entries and credentials handed to a peer.

pub mod allocation;
pub mod auth;
pub mod budget;
pub mod core;
pub mod fence;
pub mod handle;
pub mod ice;
pub mod policy;
pub mod probe;
pub mod route;
pub mod server;
pub mod stats;
pub mod stream;
pub mod usage;
pub mod wire;

pub use core::{CloseReason, Closing, Membership, Transport};
pub use handle::Turn;
