//! Switchboard's own STUN/TURN server (RFC 8489 / RFC 8656), built on the
//! webrtc-rs `stun` crate for message parsing and integrity.
//!
//! - `auth`: credentials (TURN REST API, static users), long-term keys, stateless nonces.
//! - `policy`: which peer addresses may be relayed to.
//! - `allocation`: one allocation's permissions, channels and lifetime, as plain data.

pub mod allocation;
pub mod auth;
pub mod core;
pub mod policy;
pub mod wire;
