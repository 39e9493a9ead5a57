//! Switchboard: one binary that makes WebRTC calls work everywhere.
//!
//! It serves an HTTPS/WSS room-signaling endpoint with a built-in call page,
//! and STUN/TURN listeners (UDP, TCP, TLS) with per-room credentials.
//!
//! # Layout
//! - `model`: the shared vocabulary: room and peer ids, ICE server entries, a credential's `Scope`, `Cidr`; plain data.
//! - `config`: the configuration file, parsed strictly and validated, one module per section;
//!   each key is classified there as applied by a reload or needing a restart.
//! - `tls`: certificates (configured or self-signed), the rustls server config, and the
//!   HTTPS listener's TLS stream.
//! - `net`: binding sockets with errors that say what to change.
//! - `mmsg`: batched UDP syscalls (`recvmmsg`/`sendmmsg`) for the relay and the benchmarks.
//! - `lab`: the NAT lab in network namespaces (`switchboard lab`).
//! - `limiter`: connection counts per source and in total, with guards that free their slot.
//! - `forwarded`: who the client is behind a trusted proxy (PROXY protocol header, `X-Forwarded-For`).
//! - `throttle`: log lines a client can cause, limited per call site, with its text clipped.
//! - `sync`: locks that a panic does not poison for good.
//! - `clock`: the wall clock in Unix seconds, for the callers of the sans-IO cores.
//! - `metrics`: counters for the data path and the OpenMetrics text of `/metrics`; calls no other module.
//! - `cluster`: several instances sharing rooms through Redis (`[cluster]`): the link and
//!   each dialect's shared `Registry`.
//! - `app`: binds every listener, runs them, and drains on shutdown.
//! - `state`: `AppState`, what the HTTP routes, the admin API and `app` share (the dialects see only `signaling::host::Host`).
//! - `routes`: the HTTPS router's fixed routes in one table, and the check of the one path it mounts
//!   beside them (`signaling.legacy_path`).
//! - `http`: the HTTPS routes (call page, health, `/ws`) and the accept loops.
//! - `secrets`: secrets the config does not set, generated and persisted with mode 0600.
//! - `admin`: the admin listener: `/metrics`, `/healthz` and the bearer-token API over every dialect.
//! - `acme`: certificates from an ACME CA (TLS-ALPN-01), renewed before they expire.
//! - `doctor`: `switchboard doctor`, the read-only checks of a deployment.
//! - `coturn`: `import-coturn`, a coturn `turnserver.conf` turned into a Switchboard config.
//! - `tokens`: join tokens (JWTs an application's backend signs): checked on join, minted by
//!   `switchboard token`; plain data.
//! - `signaling`: the dialects (native JSON, plain WebSocket, socket.io) behind one `Dialect` trait,
//!   the room registry, the message gate and the socket task.
//! - `turn`: the STUN/TURN server behind one handle (`turn::Turn`): credentials, policy, allocation
//!   state, the sans-IO core and routing, I/O.
//! - `webhooks`: signed HTTP POSTs to the application (rooms and peers coming and going,
//!   allocations closing with their usage), queued and retried per endpoint.

pub mod acme;
pub mod admin;
pub mod app;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod coturn;
pub mod doctor;
pub mod forwarded;
pub mod http;
pub mod lab;
pub mod limiter;
pub mod metrics;
pub mod mmsg;
pub mod model;
pub mod net;
pub mod routes;
pub mod secrets;
pub mod signaling;
pub mod state;
pub mod sync;
pub mod throttle;
pub mod tls;
pub mod tokens;
pub mod turn;
pub mod webhooks;
