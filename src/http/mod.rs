//! The HTTPS routes: the embedded call page, health checks and the `/ws` upgrade.
//!
//! This module knows nothing about rooms beyond validating a room name in a URL;
//! the socket logic is in `signaling::ws`, the listeners in `http::server`.

pub mod admission;
pub mod demux;
pub mod ice_api;
pub mod server;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{MethodRouter, get};

use crate::model::RoomId;
use crate::routes::Route;
use crate::state::AppState;

const PAGE: &str = include_str!("../../static/index.html");
const SCRIPT: &str = include_str!("../../static/call.js");
const STYLE: &str = include_str!("../../static/style.css");
const DIAG_PAGE: &str = include_str!("../../static/diag.html");
const DIAG_SCRIPT: &str = include_str!("../../static/diag.js");

/// Content-Security-Policy of every response: the page loads only its own script and style,
/// and connects only to its own origin. `connect-src` also names the socket's `wss://` origin
/// (the request's host), which browsers without CSP3 do not take `'self'` to cover.
fn csp(host: Option<&str>) -> String {
    let wss = host.map(|h| format!(" wss://{h}")).unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         media-src 'self' blob: mediastream:; connect-src 'self'{wss}; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'"
    )
}

/// `Strict-Transport-Security` when the certificate is a real one (configured or from ACME):
/// a browser that saw it refuses plain HTTP and certificate warnings for a year. Never for
/// the generated self-signed certificate, which a person must be able to click through.
const HSTS: &str = "max-age=31536000";

/// The HTTPS router: every route of `routes::Route::ALL` this module serves, then each
/// dialect's endpoints (`/ws`, `signaling.legacy_path`, checked by the config with
/// `routes::check_extra`, and socket.io's layer).
pub fn router(state: Arc<AppState>, hsts: bool) -> Router {
    let mut router = Router::new();
    for route in Route::ALL {
        if let Some(handler) = handler(route) {
            router = router.route(route.path(), handler);
        }
    }
    let mut router = router.fallback(not_found).with_state(Arc::clone(&state));
    for dialect in state.dialects.iter() {
        router = Arc::clone(dialect).mount(router, &state.host);
    }
    router.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            security_headers(request, next, hsts)
        },
    ))
}

/// The handler of each fixed route, or `None` for a dialect's own endpoint (mounted by the
/// dialect); the match is exhaustive, so a new route needs one.
fn handler(route: Route) -> Option<MethodRouter<Arc<AppState>>> {
    Some(match route {
        Route::Page => get(page),
        Route::RoomPage => get(room_page),
        Route::CallScript => get(script),
        Route::Style => get(style),
        Route::DiagPage => get(async || Html(DIAG_PAGE)),
        Route::DiagScript => get(diag_script),
        Route::Ws => return None,
        Route::Healthz => get(healthz),
        Route::Readyz => get(readyz),
        Route::IceServers => get(ice_api::ice_servers),
    })
}

/// The plain-WebSocket dialect alone, for plain `ws://` listeners: at
/// `signaling.legacy_path`, and at `/`, where the tutorial's client connects
/// (`new WebSocket('ws://host:9090')`).
pub fn legacy_router(state: Arc<AppState>) -> Router {
    use tower::ServiceExt;

    let router = Router::new().fallback(not_found);
    let Some(dialect) = state.dialects.get(crate::signaling::legacy::NAME) else {
        return router;
    };
    let mounted = Arc::clone(dialect).mount(router, &state.host);
    // `legacy_path` is never `/` (the config refuses the HTTPS router's paths), so `/` is
    // free here; it is answered as `legacy_path` is: the request goes through the same
    // router, with its path rewritten (the query, if any, kept).
    let path = state.host.live().signaling.legacy_path.clone();
    let at_root = mounted
        .clone()
        .map_request(move |mut request: axum::extract::Request| {
            let target = match request.uri().query() {
                Some(query) => format!("{path}?{query}"),
                None => path.clone(),
            };
            if let Ok(uri) = target.parse() {
                *request.uri_mut() = uri;
            }
            request
        });
    mounted.route_service("/", at_root)
}

async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
    hsts: bool,
) -> Response {
    // The host as the browser named it (HTTP/2: the URI's authority), if it is a plain
    // host[:port]: nothing else reaches the header.
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .filter(|h| h.parse::<axum::http::uri::Authority>().is_ok() && !h.contains('@'))
        .map(str::to_owned);
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(&csp(host.as_deref())) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    if hsts {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(self), microphone=(self), display-capture=(self)"),
    );
    response
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn room_page(Path(room): Path<String>) -> Response {
    match RoomId::parse(&room) {
        Ok(_) => Html(PAGE).into_response(),
        Err(message) => (StatusCode::BAD_REQUEST, Html(error_page(&message))).into_response(),
    }
}

/// A small page for a bad room URL; `message` is escaped.
fn error_page(message: &str) -> String {
    let escaped = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Switchboard: invalid room</title>\
         <link rel=\"stylesheet\" href=\"/static/style.css\"></head><body><main class=\"lobby\">\
         <h1>Invalid room name</h1><p class=\"error\" id=\"error\">{escaped}</p>\
         <p><a href=\"/\">Choose another room</a></p></main></body></html>"
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

async fn diag_script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        DIAG_SCRIPT,
    )
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    if app.is_ready() {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;
    use tower::ServiceExt;

    use super::*;
    use crate::config::Config;
    use crate::signaling::host::{Host, Live};
    use crate::state::Access;

    /// The state of a server with `toml` as its config, without TURN.
    fn app(toml: &str) -> Arc<AppState> {
        let config = Config::from_toml(toml, "t").unwrap();
        let dialects = crate::signaling::dialects(&config.signaling, None, None);
        let host = Host::new(
            Live::new(&config),
            None,
            dialects.membership(),
            CancellationToken::new(),
            TaskTracker::new(),
        );
        Arc::new(AppState::new(
            Arc::new(host),
            dialects,
            Access::new(&config, None),
            None,
        ))
    }

    /// Every route of the table reaches its handler through the real router, layers included
    /// (the fallback's `not found` would mean the table and the router disagree).
    #[tokio::test]
    async fn every_route_of_the_table_is_served() {
        let router = router(app("[api]\nkeys = [\"0123456789abcdef\"]\n"), false);
        let get = async |path: &str| {
            let request = Request::get(path).body(Body::empty()).unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, body)
        };
        for route in Route::ALL {
            let path = route.path().replace("{room}", "room");
            let (status, body) = get(&path).await;
            assert!(
                status != StatusCode::NOT_FOUND && body != "not found\n",
                "{route:?} {path}: {status}"
            );
        }
        assert_eq!(get("/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[test]
    fn error_page_escapes_the_message() {
        let page = error_page("bad <script>\"&");
        assert!(page.contains("bad &lt;script&gt;&quot;&amp;"));
        assert!(!page.contains("<script>"));
    }

    /// HSTS only when asked (a real certificate); `connect-src` names the socket's origin.
    #[tokio::test]
    async fn security_headers_name_the_socket_origin_and_hsts_only_for_a_real_certificate() {
        for hsts in [false, true] {
            let request = Request::get("/")
                .header(header::HOST, "calls.example.org:8443")
                .body(Body::empty())
                .unwrap();
            let response = router(app(""), hsts).oneshot(request).await.unwrap();
            let headers = response.headers();
            let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(
                csp.contains("connect-src 'self' wss://calls.example.org:8443;"),
                "{csp}"
            );
            assert_eq!(
                headers.get(header::STRICT_TRANSPORT_SECURITY).is_some(),
                hsts,
                "{headers:?}"
            );
        }
    }
}
