//! The checks every signaling dialect makes before it upgrades a connection: origin,
//! shutdown, connection counts (total and per source). A refusal is an HTTP answer with a
//! JSON `{"code", "message"}` body.

use std::net::SocketAddr;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::warn;

use super::host::Host;
use super::limits::{ConnectionGuard, ConnectionRefused};
use super::stats::Refusal;
use crate::throttle::{Throttle, clip, now_s};

/// The log lines of refusals, which any client can cause.
static ORIGIN_REFUSED: Throttle = Throttle::new();
static CONNECTION_REFUSED: Throttle = Throttle::new();

/// A connection that passed the checks every signaling dialect shares.
pub struct Admitted {
    pub guard: ConnectionGuard,
    /// The host the browser used, without the port: TURN URLs point at the same name.
    pub request_host: String,
    /// The client's address (behind a trusted proxy, the one it names), which an operator's
    /// kick keeps out for a while (`Host::peer_kicked`).
    pub client: std::net::IpAddr,
    /// A join token in the URL's query (`?token=`), for clients that cannot send one in a
    /// message (the plain-WebSocket dialect, socket.io 2 clients).
    pub token: Option<String>,
}

/// Why a connection was not admitted: the HTTP answer a WebSocket upgrade gets (a JSON
/// `{"code", "message"}` body), or the text of socket.io's connect error.
#[derive(Debug, Clone, Copy)]
pub struct Denied {
    pub status: StatusCode,
    pub code: &'static str,
    /// What was refused and which setting says so.
    pub message: &'static str,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        refusal(self.status, self.code, self.message)
    }
}

/// The checks before any WebSocket upgrade: origin, shutdown, connection limits.
///
/// # Errors
/// What to answer instead of upgrading.
pub fn admit(
    app: &Host,
    remote: SocketAddr,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> Result<Admitted, Denied> {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    if !origin_allowed(origin, host, &app.live().signaling.allowed_origins) {
        if let Some(suppressed) = ORIGIN_REFUSED.allow(now_s()) {
            let origin = clip(origin.unwrap_or(""));
            warn!(%remote, ?origin, suppressed, "websocket origin refused");
        }
        app.metrics.refusals.inc(Refusal::Origin);
        return Err(Denied {
            status: StatusCode::FORBIDDEN,
            code: "origin_refused",
            message: "this origin may not open the signaling socket (see signaling.allowed_origins)",
        });
    }
    if app.shutdown.is_cancelled() {
        app.metrics.refusals.inc(Refusal::ShuttingDown);
        return Err(Denied {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "shutting_down",
            message: "the server is shutting down",
        });
    }
    if app.draining() {
        app.metrics.refusals.inc(Refusal::ShuttingDown);
        return Err(Denied {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "shutting_down",
            message: "this instance is draining (going away once its calls end): connect again to reach another",
        });
    }
    let guard = app.limiter.try_acquire(remote.ip()).map_err(|limit| {
        app.metrics.refusals.inc(match limit {
            ConnectionRefused::Total => Refusal::MaxConnections,
            ConnectionRefused::PerIp => Refusal::MaxConnectionsPerIp,
        });
        let (status, message) = match limit {
            ConnectionRefused::Total => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the server has too many connections (signaling.max_connections)",
            ),
            ConnectionRefused::PerIp => (
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address (signaling.max_connections_per_ip)",
            ),
        };
        if let Some(suppressed) = CONNECTION_REFUSED.allow(now_s()) {
            warn!(%remote, ?limit, suppressed, "websocket connection refused");
        }
        Denied {
            status,
            code: "too_many_connections",
            message,
        }
    })?;
    let request_host = host
        .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
        .map_or_else(|| "localhost".to_owned(), |a| a.host().to_owned());
    Ok(Admitted {
        guard,
        request_host,
        client: remote.ip(),
        token: query_token(uri),
    })
}

/// The `token` parameter of a URL's query, decoded; the first one if several.
pub fn query_token(uri: &axum::http::Uri) -> Option<String> {
    let axum::extract::Query(pairs) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri).ok()?;
    pairs
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// A refusal: `status` with a JSON `{"code", "message"}` body.
pub fn refusal(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"code": code, "message": message}).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Whether a browser page from `origin` may open the socket.
///
/// A missing `Origin` is allowed: only browsers send it, and other clients could forge it.
/// With an empty allow-list only the page's own origin (`https://` + `Host`) is allowed.
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else { return true };
    let origin = origin.trim_end_matches('/');
    if allowed.is_empty() {
        return host.is_some_and(|h| origin.eq_ignore_ascii_case(&format!("https://{h}")));
    }
    allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn default_allows_same_origin_and_originless_clients() {
        assert!(origin_allowed(
            Some("https://host:8443"),
            Some("host:8443"),
            &[]
        ));
        assert!(origin_allowed(
            Some("https://HOST:8443/"),
            Some("host:8443"),
            &[]
        ));
        assert!(origin_allowed(None, Some("host:8443"), &[]));
        assert!(!origin_allowed(
            Some("https://evil.example"),
            Some("host:8443"),
            &[]
        ));
        assert!(!origin_allowed(
            Some("http://host:8443"),
            Some("host:8443"),
            &[]
        ));
        assert!(!origin_allowed(Some("https://host:8443"), None, &[]));
    }

    #[test]
    fn allow_list_replaces_same_origin() {
        let list = vec!["https://app.example.com".to_owned()];
        assert!(origin_allowed(
            Some("https://app.example.com"),
            Some("x"),
            &list
        ));
        assert!(!origin_allowed(Some("https://x"), Some("x"), &list));
        let any = vec!["*".to_owned()];
        assert!(origin_allowed(Some("https://anything"), Some("x"), &any));
    }
}
