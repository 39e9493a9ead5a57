//! The HTTPS router's own paths, in one table.
//!
//! `http::router` mounts every `Route` in `Route::ALL` (each through an exhaustive match on
//! its handler) and then `signaling.legacy_path`; the config calls `check_extra` on that
//! path, so everything the router cannot mount beside its own routes is refused with the
//! key instead of panicking in axum at start (overlapping routes, malformed captures).
//! No imports: the config and the router both depend on this alone.

/// A fixed route of the HTTPS router.
///
/// `Route::ALL` is the only place a `Route` is built, so a variant left out of it is never
/// constructed and fails the lint run (`dead_code` under `-D warnings`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Page,
    RoomPage,
    CallScript,
    Style,
    DiagPage,
    DiagScript,
    Ws,
    Healthz,
    Readyz,
    IceServers,
}

impl Route {
    /// Every fixed route, in the order the router mounts them.
    pub(crate) const ALL: [Route; 10] = [
        Route::Page,
        Route::RoomPage,
        Route::CallScript,
        Route::Style,
        Route::DiagPage,
        Route::DiagScript,
        Route::Ws,
        Route::Healthz,
        Route::Readyz,
        Route::IceServers,
    ];

    /// The path as axum mounts it (`{name}` is a capture).
    pub(crate) const fn path(self) -> &'static str {
        match self {
            Route::Page => "/",
            Route::RoomPage => "/r/{room}",
            Route::CallScript => "/static/call.js",
            Route::Style => "/static/style.css",
            Route::DiagPage => "/diag",
            Route::DiagScript => "/static/diag.js",
            Route::Ws => "/ws",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::IceServers => "/api/v1/ice-servers",
        }
    }

    /// What the route serves, for messages.
    const fn what(self) -> &'static str {
        match self {
            Route::Page => "the call page",
            Route::RoomPage => "the room pages",
            Route::CallScript | Route::Style | Route::DiagScript => "static files",
            Route::DiagPage => "the diagnostics page",
            Route::Ws => "the native signaling socket",
            Route::Healthz | Route::Readyz => "health checks",
            Route::IceServers => "the ICE servers API",
        }
    }

    /// The part of the path every request to this route starts with, up to its first
    /// capture: the route owns it and everything under it (`/r` for `/r/{room}`).
    fn stem(self) -> &'static str {
        let path = self.path();
        match path.find("/{") {
            Some(capture) => &path[..capture],
            None => path,
        }
    }
}

/// Prefixes owned by a family of paths rather than by one route: static files, the
/// versioned API and socket.io's layer (which answers under `/socket.io/` before routing).
const FAMILIES: &[(&str, &str)] = &[
    ("/static", "static files"),
    ("/api", "the HTTP API"),
    ("/socket.io", "the socket.io dialect"),
];

/// Checks a path to mount beside the fixed routes (`signaling.legacy_path`): a fixed path
/// that a request can reach as written, on nothing the router already serves.
///
/// # Errors
/// The message says what is wrong with `path` and what to use instead.
pub(crate) fn check_extra(path: &str) -> Result<(), String> {
    const INSTEAD: &str = "use a fixed path of its own such as \"/legacy\"";
    if !path.starts_with('/') || path == "/" {
        return Err(format!(
            "expected a path below \"/\" such as \"/legacy\", got {path:?}"
        ));
    }
    let inner = path[1..].strip_suffix('/').unwrap_or(&path[1..]);
    for segment in inner.split('/') {
        if segment.contains(['{', '}']) || segment.starts_with([':', '*']) {
            return Err(format!(
                "{path:?} has a capture pattern ({segment:?}), but the plain-WebSocket \
                 dialect is served at one fixed path; {INSTEAD}"
            ));
        }
        if segment.is_empty() {
            return Err(format!("{path:?} has an empty segment (\"//\"); {INSTEAD}"));
        }
        if segment == "." || segment == ".." {
            return Err(format!(
                "{path:?} has a {segment:?} segment, which browsers resolve away before \
                 sending the request; {INSTEAD}"
            ));
        }
        if let Some(c) = segment.chars().find(|c| !allowed(*c)) {
            return Err(format!(
                "{path:?} contains {c:?}, which a request path cannot carry as written \
                 (use letters, digits and - . _ ~); {INSTEAD}"
            ));
        }
    }
    if let Some((owned, what)) = owner(path) {
        return Err(if owned == path.trim_end_matches('/') {
            format!("{path:?} belongs to the HTTPS router ({what}); {INSTEAD}")
        } else {
            format!(
                "{path:?} is under {owned:?}, which belongs to the HTTPS router ({what}); {INSTEAD}"
            )
        });
    }
    Ok(())
}

/// Characters of a path segment that need no percent-encoding and that axum 0.8 takes
/// literally anywhere in a segment.
fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()+,;=@".contains(c)
}

/// The route or family that already owns `path` (is it, or has it below), and what it serves.
fn owner(path: &str) -> Option<(&'static str, &'static str)> {
    let under = |owned: &str| {
        path == owned
            || path
                .strip_prefix(owned)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    Route::ALL
        .iter()
        // Everything is under "/": the call page owns only itself.
        .filter(|route| route.path() != "/")
        .map(|route| (route.stem(), route.what()))
        .chain(FAMILIES.iter().copied())
        .find(|(owned, _)| under(owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The router as `http::router` mounts it (every fixed route, then `extra`), with
    /// placeholder handlers; `Err` holds axum's panic message.
    fn mount(extra: &str) -> Result<(), String> {
        let extra = extra.to_owned();
        std::panic::catch_unwind(move || {
            let mut router = axum::Router::<()>::new();
            for route in Route::ALL {
                router = router.route(route.path(), axum::routing::get(async || ""));
            }
            let _ = router.route(&extra, axum::routing::get(async || ""));
        })
        .map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default()
        })
    }

    #[test]
    fn every_route_and_what_lies_under_one_is_refused() {
        for route in Route::ALL {
            assert!(check_extra(route.path()).is_err(), "{route:?}");
        }
        for path in [
            "/diag",
            "/diag/",
            "/diag/x",
            "/api/v1/ice-servers",
            "/api/other",
            "/api",
            "/static/x",
            "/r",
            "/r/room",
            "/socket.io",
            "/socket.io/",
            "/ws/",
            "/healthz/",
        ] {
            let err = check_extra(path).expect_err(path);
            assert!(err.contains("the HTTPS router"), "{path}: {err}");
        }
        for path in [
            "/legacy",
            "/legacy/",
            "/diagnostics",
            "/wss",
            "/rooms",
            "/a/b.c",
        ] {
            assert_eq!(check_extra(path), Ok(()), "{path}");
        }
    }

    #[test]
    fn captures_in_either_axum_syntax_are_refused_by_name() {
        for path in [
            "/x/{id}",
            "/x/{*rest}",
            "/x/:id",
            "/:id",
            "/x/*rest",
            "/*",
            "/x}",
            "/{",
        ] {
            let err = check_extra(path).expect_err(path);
            assert!(err.contains("capture pattern"), "{path}: {err}");
        }
    }

    /// Whatever `check_extra` accepts, axum mounts beside the fixed routes without a panic:
    /// the check is tried against axum itself on every path built from these segments.
    #[test]
    fn what_the_check_accepts_axum_mounts() {
        let segments = [
            "",
            "x",
            "legacy",
            ":id",
            "*rest",
            "{id}",
            "{*rest}",
            "{{x}}",
            "}",
            "{",
            "x:y",
            "x*y",
            "diag",
            "ws",
            "r",
            "api",
            "v1",
            "ice-servers",
            "static",
            "call.js",
            "socket.io",
            "healthz",
            ".",
            "..",
            "a b",
            "é",
            "%20",
            "?",
            "#",
            "~u",
            "a=b",
        ];
        let mut accepted = 0;
        let mut failures = Vec::new();
        for a in segments {
            for b in segments {
                for slash in ["", "/"] {
                    for path in [format!("/{a}{slash}"), format!("/{a}/{b}{slash}")] {
                        if check_extra(&path).is_ok() {
                            accepted += 1;
                            if let Err(panic) = mount(&path) {
                                failures.push(format!("{path:?}: {panic}"));
                            }
                        }
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert!(accepted > 100, "{accepted}");
        // And the probe sees axum's panics (their messages show in the captured output).
        assert!(mount("/x/:id").is_err() && mount("/r/{x}").is_err());
        assert_eq!(mount("/legacy"), Ok(()));
    }
}
