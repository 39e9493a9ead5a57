//! Load generators and reference ceilings for Switchboard and the servers it replaces.
//!
//! # Layout
//! - `procstat`: CPU and memory of a server process (and of everything else) from `/proc`.
//! - `percentiles`: a latency histogram and its JSON summary.
//! - `turnc`: a minimal TURN client (REST credentials, Allocate, CreatePermission, ChannelBind).
//! - `aturn`: an async TURN client over UDP, TCP and TLS for long-lived clients (`soak-load`).
//! - `wss`: WebSocket clients over TLS from a chosen source address.
//!
//! The binaries in `src/bin/` are the tools: `turn-load`, `sig-load`, `udp-forward`, `ws-echo`,
//! `soak-load` (bench/soak.sh).

pub mod aturn;
pub mod percentiles;
pub mod procstat;
pub mod turnc;
pub mod wss;
