//! The HTTPS router's own paths, in one place: `http::router` mounts them, and the config
//! refuses a `signaling.legacy_path` that would collide with one (axum panics at start on
//! overlapping routes). No imports: the config and the router both depend on this alone.

pub const PAGE: &str = "/";
pub const ROOM_PAGE: &str = "/r/{room}";
pub const CALL_SCRIPT: &str = "/static/call.js";
pub const STYLE: &str = "/static/style.css";
pub const DIAG_PAGE: &str = "/diag";
pub const DIAG_SCRIPT: &str = "/static/diag.js";
pub const WS: &str = "/ws";
pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";
pub const ICE_SERVERS: &str = "/api/v1/ice-servers";

/// Every fixed route of the HTTPS router.
pub const FIXED: &[&str] = &[
    PAGE,
    ROOM_PAGE,
    CALL_SCRIPT,
    STYLE,
    DIAG_PAGE,
    DIAG_SCRIPT,
    WS,
    HEALTHZ,
    READYZ,
    ICE_SERVERS,
];

/// Prefixes that belong to a route family or a layer (room pages, static files, the API,
/// socket.io's layer): nothing else may be mounted under them.
const OWNED_PREFIXES: &[&str] = &["/r", "/static", "/api", "/socket.io"];

/// Whether `path` is, or falls under, a path the router already serves.
pub fn collides(path: &str) -> bool {
    FIXED.contains(&path)
        || OWNED_PREFIXES
            .iter()
            .chain(FIXED.iter().filter(|p| **p != PAGE))
            .any(|owned| {
                path == *owned || path.strip_prefix(owned).is_some_and(|r| r.starts_with('/'))
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_and_what_lies_under_a_family_collides() {
        for route in FIXED {
            assert!(collides(route), "{route}");
        }
        for path in [
            "/diag",
            "/api/v1/ice-servers",
            "/api/other",
            "/static/x",
            "/r",
            "/socket.io/",
        ] {
            assert!(collides(path), "{path}");
        }
        for path in ["/legacy", "/diagnostics", "/wss", "/rooms"] {
            assert!(!collides(path), "{path}");
        }
    }
}
