//! Limits on signaling clients: a per-connection message rate and connection counts per
//! IP and in total, both from `limiter`.

pub use crate::limiter::{ConnectionGuard, ConnectionLimiter, ConnectionRefused, TokenBucket};
