//! Load generators and reference ceilings for Switchboard and the servers it replaces.
//!
//! # Layout
//! - `procstat`: CPU and memory of a server process (and of everything else) from `/proc`.
//! - `percentiles`: a latency histogram and its JSON summary.
//! - `turnc`: a minimal TURN client (REST credentials, Allocate, CreatePermission, ChannelBind).
//!
//! The binaries in `src/bin/` are the tools: `turn-load`, `sig-load`, `udp-forward`, `ws-echo`.

pub mod percentiles;
pub mod procstat;
pub mod turnc;
