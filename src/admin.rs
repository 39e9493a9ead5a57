//! The admin listener (plain HTTP, loopback by default): Prometheus `/metrics`, `/healthz`,
//! and the admin API under `/api/v1/`, which needs `Authorization: Bearer <admin token>`.
//!
//! The API (described in `docs/admin-api.yaml`):
//! - `GET /api/v1/rooms`: every room (native and socket.io) with its peers, and the usage
//!   of each so far: since when, signaling messages, TURN allocations live, allocation
//!   time, bytes and packets relayed each way (`UsageView`);
//! - `DELETE /api/v1/rooms/{room}`: disconnects the room's peers and revokes its allocations now;
//! - `GET /api/v1/peers`: every peer of every dialect (plain-WebSocket users too, with no
//!   room), with its usage;
//! - `DELETE /api/v1/peers/{peer}`: disconnects one peer of any dialect (its room is told
//!   `peer_left`) and revokes its allocations.
//!
//! Errors are JSON `{"code", "message"}`, as everywhere else.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
use crate::model::{PeerId, PeerInfo, RoomId, Scope, Space};
use crate::signaling::room::{MemberActivity, RoomActivity};
use crate::state::AppState;
use crate::turn::usage::{Account, Flow, Usage};

/// The admin listener's routes: the API always behind the admin token, and `/metrics` too
/// on a listener that is `public` (not loopback).
pub fn router(app: Arc<AppState>, public: bool) -> Router {
    let mut api = Router::new()
        .route("/api/v1/rooms", get(list_rooms))
        .route("/api/v1/rooms/{room}", delete(close_room))
        .route("/api/v1/peers", get(list_peers))
        .route("/api/v1/peers/{peer}", delete(kick_peer))
        .route("/api/v1/drain", axum::routing::post(drain));
    let mut open = Router::new().route("/healthz", get(async || "ok\n"));
    if public {
        api = api.route("/metrics", get(metrics));
    } else {
        open = open.route("/metrics", get(metrics));
    }
    let api = api.route_layer(middleware::from_fn_with_state(
        Arc::clone(&app),
        require_token,
    ));
    open.merge(api)
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
    if bearer_matches(request.headers(), &app.access().admin_token) {
        return next.run(request).await;
    }
    static REFUSED: crate::throttle::Throttle = crate::throttle::Throttle::new();
    if let Some(suppressed) = REFUSED.allow(crate::throttle::now_s()) {
        let path = crate::throttle::clip(request.uri().path());
        warn!(?path, suppressed, "admin API request without a valid token");
    }
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

/// Usage of a room or peer: signaling, and what its TURN allocations relayed (live ones, and
/// those closed within the last hour or while another of the same account was live).
#[derive(Serialize, Default)]
struct UsageView {
    /// Unix time it joined (a peer) or its first member joined (a room).
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<u64>,
    /// Seconds since then.
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_s: Option<u64>,
    /// Signaling messages sent (a room's: by its members, those who left too).
    messages: u64,
    /// TURN allocations live now.
    allocations: usize,
    /// How long its allocations have been held, added up.
    allocation_seconds: f64,
    to_peer: Flow,
    to_client: Flow,
    /// `to_peer.bytes + to_client.bytes`.
    relayed_bytes: u64,
}

impl UsageView {
    fn new(activity: Option<(Duration, u64)>, turn: &Usage, now_unix: u64) -> UsageView {
        UsageView {
            since: activity.map(|(age, _)| now_unix.saturating_sub(age.as_secs())),
            duration_s: activity.map(|(age, _)| age.as_secs()),
            messages: activity.map_or(0, |(_, messages)| messages),
            allocations: turn.allocations,
            allocation_seconds: turn.held.as_millis() as f64 / 1000.0,
            to_peer: turn.to_peer,
            to_client: turn.to_client,
            relayed_bytes: turn.relayed_bytes(),
        }
    }
}

#[derive(Serialize)]
struct RoomView {
    room: String,
    /// "native" (`/ws`) or "socketio"; the same name in both is two rooms.
    dialect: &'static str,
    peers: Vec<PeerView>,
    /// Its allocations are its peers' (those who left too), and room credentials' for a
    /// native room.
    #[serde(flatten)]
    usage: UsageView,
}

#[derive(Serialize)]
struct PeerView {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(flatten)]
    usage: UsageView,
}

/// What the admin API reports on: each account's TURN usage (also grouped by room), and
/// the time.
struct Report {
    turn: HashMap<Account, Usage>,
    /// The accounts of each room: peers' by their scope, room credentials' by room name.
    by_scope: HashMap<Scope, Vec<Usage>>,
    by_room_credential: HashMap<RoomId, Usage>,
    now: Instant,
    now_unix: u64,
}

impl Report {
    fn new(app: &AppState) -> Report {
        let turn: HashMap<Account, Usage> = app
            .host
            .turn
            .as_ref()
            .map(|t| t.usage())
            .unwrap_or_default();
        let mut by_scope: HashMap<Scope, Vec<Usage>> = HashMap::new();
        let mut by_room_credential = HashMap::new();
        for (account, usage) in &turn {
            match account {
                Account::Peer(scope, _) => by_scope.entry(scope.clone()).or_default().push(*usage),
                Account::Room(room) => {
                    by_room_credential.insert(room.clone(), *usage);
                }
            }
        }
        Report {
            turn,
            by_scope,
            by_room_credential,
            now: Instant::now(),
            now_unix: crate::clock::unix_now(),
        }
    }

    fn peer(&self, scope: &Scope, p: PeerInfo, activity: Option<&MemberActivity>) -> PeerView {
        let account = Account::Peer(scope.clone(), p.id.clone());
        let turn = self.turn.get(&account).copied().unwrap_or_default();
        PeerView {
            id: p.id.as_str().to_owned(),
            name: p.name,
            usage: UsageView::new(activity.map(|a| (a.age, a.messages)), &turn, self.now_unix),
        }
    }

    /// A room's TURN usage: the accounts of its scope (its room credentials' too in the
    /// native dialect) that were live or closed an allocation since the room began `age`
    /// ago, so an earlier room of the same name does not count.
    fn room_turn(&self, scope: &Scope, age: Option<Duration>) -> Usage {
        let start = age.and_then(|age| self.now.checked_sub(age));
        let room_credentials = match scope.room() {
            Some(room) if scope.space() == Space::NATIVE => self.by_room_credential.get(room),
            _ => None,
        };
        let mut total = Usage::default();
        for usage in self
            .by_scope
            .get(scope)
            .into_iter()
            .flatten()
            .chain(room_credentials)
        {
            if start.is_none_or(|start| usage.since(start)) {
                total.add(usage);
            }
        }
        total
    }
}

/// A dialect's members' activity by peer, and its rooms' by name.
fn activity_of(
    dialect: &dyn crate::signaling::dialect::Dialect,
) -> (
    HashMap<PeerId, MemberActivity>,
    HashMap<RoomId, RoomActivity>,
) {
    let rooms = dialect.activity();
    let members = rooms
        .iter()
        .flat_map(|r| r.members.iter().map(|m| (m.peer.clone(), m.clone())))
        .collect();
    let rooms = rooms.into_iter().map(|r| (r.room.clone(), r)).collect();
    (members, rooms)
}

async fn list_rooms(State(app): State<Arc<AppState>>) -> Response {
    let report = Report::new(&app);
    let mut rooms: Vec<RoomView> = Vec::new();
    for dialect in app.dialects.iter() {
        let (members, activity) = activity_of(dialect.as_ref());
        let mut by_room: BTreeMap<RoomId, (Scope, Vec<PeerView>)> = BTreeMap::new();
        for (scope, peer) in dialect.peers() {
            if let Some(room) = scope.room().cloned() {
                let member = members.get(&peer.id);
                let view = report.peer(&scope, peer, member);
                by_room
                    .entry(room)
                    .or_insert_with(|| (scope.clone(), Vec::new()))
                    .1
                    .push(view);
            }
        }
        for (room, (scope, peers)) in by_room {
            let activity = activity.get(&room).map(|a| (a.age, a.messages));
            let turn = report.room_turn(&scope, activity.map(|(age, _)| age));
            rooms.push(RoomView {
                room: room.as_str().to_owned(),
                dialect: dialect.name(),
                peers,
                usage: UsageView::new(activity, &turn, report.now_unix),
            });
        }
    }
    axum::Json(json!({ "rooms": rooms })).into_response()
}

#[derive(Serialize)]
struct ListedPeer {
    dialect: &'static str,
    /// `null` for the plain-WebSocket dialect, which has no rooms.
    room: Option<String>,
    #[serde(flatten)]
    peer: PeerView,
}

async fn list_peers(State(app): State<Arc<AppState>>) -> Response {
    let report = Report::new(&app);
    let mut peers: Vec<ListedPeer> = Vec::new();
    for dialect in app.dialects.iter() {
        let (members, _) = activity_of(dialect.as_ref());
        for (scope, peer) in dialect.peers() {
            let member = members.get(&peer.id);
            peers.push(ListedPeer {
                dialect: dialect.name(),
                room: scope.room().map(|r| r.as_str().to_owned()),
                peer: report.peer(&scope, peer, member),
            });
        }
    }
    axum::Json(json!({ "peers": peers })).into_response()
}

async fn close_room(State(app): State<Arc<AppState>>, Path(room): Path<String>) -> Response {
    let room = match RoomId::parse(&room) {
        Ok(r) => r,
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_room", &message),
    };
    let peers: Vec<PeerId> = app
        .dialects
        .iter()
        .flat_map(|d| d.close_room(&room))
        .collect();
    // Closed for a while, so that pages reconnecting on their own do not reopen it at once.
    app.host.room_closed(&room, std::time::Instant::now());
    if let Some(cluster) = &app.cluster {
        cluster.room_closed(&room);
    }
    let revoked = app.host.turn.as_ref().map_or(0, |t| t.revoke_room(&room));
    if peers.is_empty() && revoked == 0 {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_room",
            "no peers or allocations in this room",
        );
    }
    app.host.metrics.kicked.add(peers.len() as u64);
    info!(%room, peers = peers.len(), allocations = revoked, "room closed by the operator");
    axum::Json(json!({
        "room": room.as_str(),
        "peers_disconnected": peers.len(),
        "allocations_revoked": revoked,
    }))
    .into_response()
}

/// What the operator did through another instance of the cluster (or, for a kick, through
/// this one, told back by the kicked peer's instance with its client's address): done here
/// as this instance's admin API does it.
pub fn carry_out(host: &crate::signaling::host::Host, action: crate::cluster::Operator) {
    let now = std::time::Instant::now();
    match action {
        crate::cluster::Operator::RoomClosed(room) => {
            host.room_closed(&room, now);
            if let Some(turn) = &host.turn {
                turn.revoke_room(&room);
            }
            info!(%room, "room closed by the operator through another instance");
        }
        crate::cluster::Operator::PeerKicked {
            scope,
            peer,
            client,
        } => {
            if let Some(client) = client {
                host.peer_kicked(&scope, client, now);
            }
            if let Some(turn) = &host.turn {
                turn.revoke_peer(&scope, &peer);
            }
            info!(%peer, "peer kicked by the operator, told through the cluster");
        }
    }
}

/// Starts a drain: no new sockets, joins or allocations; the process shuts down once the
/// calls here have ended, or at `server.drain_timeout_s`.
async fn drain(State(app): State<Arc<AppState>>) -> Response {
    if !app.host.draining() {
        info!("draining, asked through the admin API");
    }
    app.host.start_drain();
    axum::Json(json!({
        "draining": true,
        "connections": app.host.limiter.total(),
        "allocations": app.host.turn.as_ref().map_or(0, |t| t.allocation_count()),
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
    let Some((dialect, (scope, client))) = app
        .dialects
        .iter()
        .find_map(|d| Some((d.name(), d.kick(&peer)?)))
    else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_peer",
            "no such peer is connected",
        );
    };
    let revoked = app
        .host
        .turn
        .as_ref()
        .map_or(0, |t| t.revoke_peer(&scope, &peer));
    // Kept out for a while, so that a page reconnecting on its own does not come back at once.
    if let Some(client) = client {
        app.host
            .peer_kicked(&scope, client, std::time::Instant::now());
    }
    let room = scope.room().map(|r| r.as_str().to_owned());
    app.host.metrics.kicked.inc();
    info!(scope = %scope, peer = %peer, allocations = revoked, "peer kicked by the operator");
    axum::Json(json!({
        "dialect": dialect,
        "room": room,
        "peer": peer.as_str(),
        "allocations_revoked": revoked,
    }))
    .into_response()
}
