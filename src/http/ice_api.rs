//! `GET /api/v1/ice-servers?room=R[&ttl=S]` on the HTTPS listener: TURN credentials for app
//! backends that do their own signaling, with an API key from `api.keys` as a bearer token.
//! The answer has the shape such backends already pass to browsers:
//! `{"iceServers": [{"urls", "username", "credential"}], "ttl": S}`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use crate::admin::{bearer_matches, error};
use crate::model::RoomId;
use crate::state::AppState;

/// Longest lifetime a caller may ask for: a day, as coturn deployments commonly use.
pub const MAX_TTL_S: u64 = 86_400;

#[derive(Deserialize)]
pub struct IceQuery {
    room: Option<String>,
    ttl: Option<u64>,
}

pub async fn ice_servers(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<IceQuery>,
) -> Response {
    let api_keys = &app.access().api_keys;
    if api_keys.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            "not_enabled",
            "this endpoint is off; set api.keys in the config to enable it",
        );
    }
    if !bearer_matches(&headers, api_keys) {
        static REFUSED: crate::throttle::Throttle = crate::throttle::Throttle::new();
        if let Some(suppressed) = REFUSED.allow(crate::throttle::now_s()) {
            warn!(suppressed, "ICE servers request without a valid API key");
        }
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <one of api.keys>",
        );
    }
    let Some(room) = query.room else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the query needs room=<room name>",
        );
    };
    let room = match RoomId::parse(&room) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_room", &message),
    };
    let Some(turn) = &app.host.turn else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "turn_disabled",
            "TURN is disabled on this server (turn.enabled)",
        );
    };
    let ttl = query.ttl.unwrap_or(turn.credential_ttl_s());
    if !(60..=MAX_TTL_S).contains(&ttl) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_ttl",
            &format!("ttl must be 60 to {MAX_TTL_S} seconds"),
        );
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
        .map_or_else(|| "localhost".to_owned(), |a| a.host().to_owned());
    let mut servers = app.host.live().static_ice_servers.clone();
    servers.extend(turn.room_ice_servers(&room, ttl, &host));
    info!(%room, ttl, "ICE servers minted for a backend");
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({"iceServers": servers, "ttl": ttl})),
    )
        .into_response()
}
