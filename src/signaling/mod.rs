//! Room signaling over WebSocket.
//!
//! - `protocol`: wire types (`ClientMsg`, `ServerMsg`), ids and error codes; no I/O.
//! - `room`: the room registry as plain data; no I/O, never awaits.
//! - `limits`: message rate and connection counts; no I/O.
//! - `hub`: the registry behind a lock plus each peer's outbox.
//! - `ws`: the socket task of the native protocol, and the admission checks all dialects share.
//! - `legacy`: the plain-WebSocket dialect of the login/offer/answer tutorial.
//! - `sio`: the socket.io dialect of the codelab room server and the video-call app.

pub mod direct;
pub mod hub;
pub mod legacy;
pub mod limits;
pub mod protocol;
pub mod room;
pub mod sio;
pub mod ws;
