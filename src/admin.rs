//! The admin listener (plain HTTP, loopback by default): Prometheus `/metrics`, `/healthz`,
//! and the admin API under `/api/v1/`, which needs `Authorization: Bearer <admin token>`.
//!
//! The API (described in `docs/admin-api.yaml`):
//! - `GET /api/v1/rooms`: every room (native and socket.io) with its peers, their TURN
//!   allocations and relayed bytes;
//! - `DELETE /api/v1/rooms/{room}`: disconnects the room's peers and revokes its allocations now;
//! - `DELETE /api/v1/peers/{peer}`: disconnects one peer (the room is told `peer_left`) and
//!   revokes its allocations.
//!
//! Errors are JSON `{"code", "message"}`, as everywhere else.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::config::Secret;
use crate::model::Scope;
use crate::model::{PeerId, RoomId};
use crate::state::AppState;
use crate::turn::handle::Usage;

/// Where an admin caller's token is checked against.
pub fn router(app: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/api/v1/rooms", get(list_rooms))
        .route("/api/v1/rooms/{room}", delete(close_room))
        .route("/api/v1/peers/{peer}", delete(kick_peer))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&app),
            require_token,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(async || "ok\n"))
        .merge(api)
        .fallback(async || error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"))
        .with_state(app)
}

pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"code": code, "message": message}).to_string(),
    )
        .into_response()
}

/// Whether the request carries `Authorization: Bearer <one of tokens>`; compared as
/// digests, so the time taken says nothing about how much of a token matched.
pub(crate) fn bearer_matches(headers: &axum::http::HeaderMap, tokens: &[Secret]) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let given = Sha256::digest(given.trim().as_bytes());
    tokens
        .iter()
        .any(|t| Sha256::digest(t.expose().as_bytes()) == given)
}

async fn require_token(State(app): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if bearer_matches(request.headers(), &app.live().admin_token) {
        return next.run(request).await;
    }
    warn!(path = %request.uri().path(), "admin API request without a valid token");
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send Authorization: Bearer <token> (admin.token, or the admin-token file in server.state_dir)",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        "Bearer".parse().expect("valid header"),
    );
    response
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let text = crate::metrics::encode(app.metric_families());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[derive(Serialize)]
struct RoomView {
    room: String,
    /// "native" (`/ws`) or "socketio"; the same name in both is two rooms.
    dialect: &'static str,
    peers: Vec<PeerView>,
    /// TURN allocations scoped to the room (its peers', and room credentials').
    allocations: usize,
    relayed_bytes: u64,
}

#[derive(Serialize)]
struct PeerView {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    allocations: usize,
    relayed_bytes: u64,
}

async fn list_rooms(State(app): State<Arc<AppState>>) -> Response {
    let usage: HashMap<(Scope, PeerId), Usage> = app
        .turn
        .as_ref()
        .map(|t| t.usage_by_peer())
        .unwrap_or_default();
    let native = app.hub.rooms().into_iter().map(|r| ("native", r));
    let socketio = app.sio.rooms().into_iter().map(|r| ("socketio", r));
    let rooms: Vec<RoomView> = native
        .chain(socketio)
        .map(|(dialect, (room, members))| {
            let scope = if dialect == "native" {
                Scope::Native(room.clone())
            } else {
                Scope::SocketIo(room.clone())
            };
            let peers: Vec<PeerView> = members
                .into_iter()
                .map(|p| {
                    let Usage {
                        allocations,
                        relayed_bytes,
                    } = usage
                        .get(&(scope.clone(), p.id.clone()))
                        .copied()
                        .unwrap_or_default();
                    PeerView {
                        id: p.id.as_str().to_owned(),
                        name: p.name,
                        allocations,
                        relayed_bytes,
                    }
                })
                .collect();
            let (allocations, relayed_bytes) = usage
                .iter()
                .filter(|((s, _), _)| *s == scope)
                .fold((0, 0), |(a, b), (_, u)| {
                    (a + u.allocations, b + u.relayed_bytes)
                });
            RoomView {
                room: room.as_str().to_owned(),
                dialect,
                peers,
                allocations,
                relayed_bytes,
            }
        })
        .collect();
    axum::Json(json!({ "rooms": rooms })).into_response()
}

async fn close_room(State(app): State<Arc<AppState>>, Path(room): Path<String>) -> Response {
    let room = match RoomId::parse(&room) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_room", &message),
    };
    let mut peers = app.hub.close_room(&room);
    peers.extend(app.sio.close_room(&room));
    let revoked = app.turn.as_ref().map_or(0, |t| t.revoke_room(&room));
    if peers.is_empty() && revoked == 0 {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_room",
            "no peers or allocations in this room",
        );
    }
    app.metrics.kicked.add(peers.len() as u64);
    info!(%room, peers = peers.len(), allocations = revoked, "room closed by the operator");
    axum::Json(json!({
        "room": room.as_str(),
        "peers_disconnected": peers.len(),
        "allocations_revoked": revoked,
    }))
    .into_response()
}

async fn kick_peer(State(app): State<Arc<AppState>>, Path(peer): Path<String>) -> Response {
    let Some(peer) = PeerId::parse(&peer) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_peer",
            "a peer id is 32 lowercase hex digits",
        );
    };
    let scope = match app.hub.kick(&peer) {
        Some(left) => Scope::Native(left.room),
        None => match app.sio.kick(&peer) {
            Some(room) => Scope::SocketIo(room),
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    "unknown_peer",
                    "no such peer in any room",
                );
            }
        },
    };
    let revoked = app
        .turn
        .as_ref()
        .map_or(0, |t| t.revoke_peer(&scope, &peer));
    let room = scope.room().cloned().expect("a kicked peer was in a room");
    app.metrics.kicked.inc();
    info!(%room, peer = %peer, allocations = revoked, "peer kicked by the operator");
    axum::Json(json!({
        "room": room.as_str(),
        "peer": peer.as_str(),
        "allocations_revoked": revoked,
    }))
    .into_response()
}
