//! Room signaling over WebSocket.
//!
//! - `protocol`: wire types (`ClientMsg`, `ServerMsg`), ids and error codes; no I/O.
//! - `room`: the room registry as plain data; no I/O, never awaits.
//! - `limits`: message rate and connection counts; no I/O.
//! - `frame`: WebSocket framing (RFC 6455) as plain data; no I/O.
//! - `gate`: the message gate of every dialect: size, rate, strikes; no I/O.
//! - `socket`: the native endpoint's WebSocket upgrade and its reading and writing halves.
//! - `conn`: the socket loop of the native and plain-WebSocket dialects (`Handler`).
//! - `direct`: a socket's writing half, shared with the tasks that send to it.
//! - `outbox`: a peer's `Outbox`, delivering without waiting; a full one evicts.
//! - `signal`: what wakes a socket task from outside (flush, eviction, shutdown).
//! - `calls`: who may send what to whom in the plain-WebSocket dialect (offers, answers, calls); no I/O.
//! - `registry`: the `Registry` trait, the seam for room state, and what it promises.
//! - `hub`: the registry behind a lock plus each peer's outbox.
//! - `bans`: rooms the operator closed and sources it kicked, each for a while; no I/O.
//! - `host`: `Host`, what every dialect's sockets share and all they see of the server.
//! - `stats`: signaling's counters and their metric families.
//! - `admit`: the checks every dialect makes before an upgrade (origin, shutdown, connection counts).
//! - `dialect`: the `Dialect` trait and `Dialects`, the one list of them.
//! - `ws`: the native dialect (`Native`) and its socket's `Session`.
//! - `legacy`: the plain-WebSocket dialect of the login/offer/answer tutorial.
//! - `sio`: the socket.io dialect of the codelab room server and the video-call app.

pub mod admit;
pub mod bans;
pub mod calls;
pub mod conn;
pub mod dialect;
pub mod direct;
pub mod frame;
pub mod gate;
pub mod host;
pub mod hub;
pub mod legacy;
pub mod limits;
pub mod observed;
pub mod outbox;
pub mod protocol;
pub mod registry;
pub mod resume;
pub mod room;
pub mod sdp;
pub mod signal;
pub mod sio;
pub mod socket;
pub mod stats;
pub mod ws;

use std::sync::Arc;

use crate::config::SignalingConfig;
use dialect::Dialects;

/// The name of the dialect whose TURN credentials are written in `space`.
pub fn dialect_of(space: crate::model::Space) -> Option<&'static str> {
    if space == crate::model::Space::NATIVE {
        Some(ws::NAME)
    } else if space == legacy::SPACE {
        Some(legacy::NAME)
    } else if space == sio::SPACE {
        Some(sio::NAME)
    } else {
        None
    }
}

/// The dialects Switchboard speaks, in the order they are mounted, with the configured
/// limits: the one list of them. A new dialect is its own module implementing
/// `dialect::Dialect`, plus one line here.
///
/// With `shared` (a cluster), every dialect's rooms (the plain-WebSocket dialect's users)
/// span every instance.
pub fn dialects(
    cfg: &SignalingConfig,
    shared: Option<&dyn registry::Sharing>,
    observer: Option<Arc<dyn observed::Observer>>,
) -> Dialects {
    let unlimited = || room::Rooms::new(usize::MAX, usize::MAX);
    let hub = |rooms| -> Arc<dyn registry::Registry> { Arc::new(hub::Hub::new(rooms)) };
    let (native, directory, sio) = match shared {
        Some(shared) => (
            shared.registry(
                ws::NAME,
                crate::model::Scope::native,
                unlimited(),
                cfg.room_capacity,
                cfg.max_rooms,
            ),
            shared.registry(
                legacy::NAME,
                |_| crate::model::Scope::whole(legacy::SPACE),
                room::Rooms::directory(),
                usize::MAX,
                1,
            ),
            shared.registry(
                sio::NAME,
                |room| crate::model::Scope::in_room(sio::SPACE, room),
                unlimited(),
                cfg.socketio_room_capacity,
                cfg.max_rooms,
            ),
        ),
        None => (
            hub(room::Rooms::new(cfg.room_capacity, cfg.max_rooms)),
            hub(room::Rooms::directory()),
            hub(room::Rooms::new(cfg.socketio_room_capacity, cfg.max_rooms)),
        ),
    };
    // With webhooks, every registry tells them of its joins and leaves.
    let observe = |registry: Arc<dyn registry::Registry>, name, rooms| match &observer {
        Some(observer) => Arc::new(observed::Observed::new(
            registry,
            name,
            rooms,
            Arc::clone(observer),
        )) as Arc<dyn registry::Registry>,
        None => registry,
    };
    let native = ws::Native::with_registry(observe(native, ws::NAME, true));
    let directory = legacy::Directory::with_registry(observe(directory, legacy::NAME, false));
    let sio = sio::SioRooms::with_registry(observe(sio, sio::NAME, true));
    let all: Vec<Arc<dyn dialect::Dialect>> =
        vec![Arc::new(native), Arc::new(directory), Arc::new(sio)];
    // Every limit the config sets, as a reload would (the rooms' message budget among them).
    for dialect in &all {
        dialect.set_limits(cfg);
    }
    Dialects::of(all)
}
