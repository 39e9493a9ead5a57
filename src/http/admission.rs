//! What every HTTP connection is held to, from accept on (`[https]`): connection caps
//! taken before TLS, in total and per source (an IPv6 source is its network of
//! `signaling.source_prefix_v6` bits), one deadline from accept to the first complete
//! request (TLS handshake and headers included), a deadline per request body, and a close
//! once no request has been in flight for `idle_timeout_s`.
//!
//! Without them one client could hold connections for good (TLS, then `PRI * HTTP/2.0`
//! and silence, or an idle HTTP/2 connection), and enough of them exhaust the process's
//! file descriptors, which the TURN relays need too.
//!
//! A connection from a trusted proxy (`https.trusted_proxies`) is counted only in the
//! total: it carries many clients, whose own addresses count in signaling.
//!
//! `Activity` is what the connection's service reports (a request began, a request
//! ended) and what its driver in `server` reads to enforce the deadlines.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use crate::forwarded::Proxies;
use crate::limiter::{ConnectionGuard, ConnectionLimiter, ConnectionRefused};
use crate::metrics::Label as _;
use crate::signaling::host::Host;
use crate::signaling::stats::Refusal;
use crate::throttle::{Throttle, now_s};

/// The admission of one listener's connections.
#[derive(Debug, Clone)]
pub struct Admission {
    /// `None`: not capped (the admin listener, so that a flood of the public listeners
    /// cannot lock the operator out).
    limiter: Option<Arc<ConnectionLimiter>>,
    /// Whether `https.trusted_proxies` apply (not on the admin listener, which the operator
    /// reaches directly: a local `curl` must not be taken for a proxy owing a PROXY header).
    proxied: bool,
    host: Arc<Host>,
}

/// A connection let in: its slot (freed when dropped) and its deadlines.
#[derive(Debug)]
pub struct Admitted {
    _slot: Option<ConnectionGuard>,
    /// When the first complete request must have arrived.
    pub first_request_by: Instant,
    /// How long the connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// How long a request body may take.
    pub body_timeout: Duration,
    /// The trusted proxies, when the connection comes from one: its PROXY header and
    /// `X-Forwarded-For` name the client (`forwarded`).
    pub proxies: Option<Arc<Proxies>>,
    host: Arc<Host>,
}

impl Admitted {
    /// The first request did not come in time: counted as a refusal.
    pub fn timed_out(&self, remote: SocketAddr) {
        self.host.metrics.refusals.inc(Refusal::HttpRequestTimeout);
        debug!(%remote, "no complete request in time, closing the connection");
    }
}

impl Admission {
    /// Connections counted in `limiter` (`None`: not capped), with the deadlines of the
    /// live `[https]` settings.
    pub fn new(limiter: Option<Arc<ConnectionLimiter>>, host: Arc<Host>) -> Admission {
        Admission {
            limiter,
            proxied: true,
            host,
        }
    }

    /// The admin listener's: not capped, and no client is a proxy.
    pub fn operator(host: Arc<Host>) -> Admission {
        Admission {
            limiter: None,
            proxied: false,
            host,
        }
    }

    /// Lets a just-accepted connection from `remote` in, or refuses it (counted, and
    /// its log line throttled, `throttle`); a refused connection is to be closed at once.
    pub fn admit(&self, remote: SocketAddr) -> Option<Admitted> {
        let live = self.host.live();
        let proxies = Some(&live.proxies)
            .filter(|p| self.proxied && p.trusts(remote.ip()))
            .map(Arc::clone);
        let acquired = |limiter: &Arc<ConnectionLimiter>| match proxies {
            // Many clients in one connection: only the total applies here.
            Some(_) => limiter.try_acquire_total(),
            None => limiter.try_acquire(remote.ip()),
        };
        let slot = match &self.limiter {
            None => None,
            Some(limiter) => match acquired(limiter) {
                Ok(slot) => Some(slot),
                Err(refused) => {
                    let why = match refused {
                        ConnectionRefused::Total => Refusal::HttpMaxConnections,
                        ConnectionRefused::PerIp => Refusal::HttpMaxConnectionsPerSource,
                    };
                    self.host.metrics.refusals.inc(why);
                    static REFUSED: Throttle = Throttle::new();
                    if let Some(suppressed) = REFUSED.allow(now_s()) {
                        tracing::warn!(%remote, limit = why.as_str(), suppressed, "HTTPS connection refused");
                    }
                    return None;
                }
            },
        };
        Some(Admitted {
            _slot: slot,
            first_request_by: Instant::now() + live.https.request_timeout(),
            idle_timeout: live.https.idle_timeout(),
            body_timeout: live.https.request_timeout(),
            proxies,
            host: Arc::clone(&self.host),
        })
    }
}

/// What a connection's requests are doing, as its service reports it.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    seen: AtomicBool,
    /// When the last request ended, in milliseconds since `epoch`.
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            seen: AtomicBool::new(false),
            last_ms: AtomicU64::new(0),
        }
    }
}

/// A request in flight; dropping it (the response is ready, or the request was dropped)
/// ends it.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Activity {
    /// A request's headers are complete.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.seen.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self))
    }

    /// Whether a complete request has arrived.
    pub fn seen(&self) -> bool {
        self.seen.load(Ordering::Acquire)
    }

    /// Since when no request has been in flight; `None` while one is.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) != 0 {
            return None;
        }
        Some(self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Acquire)))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_ms.fetch_max(ms, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the driver of a connection does next, given its `Activity` at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing yet: look again at this time.
    CheckAt(Instant),
    /// No complete request by the deadline: drop the connection.
    Drop,
    /// Idle for too long: close it gracefully.
    Close,
}

/// The decision for a connection admitted as `admitted`, in the state `activity`.
pub fn next(admitted: &Admitted, activity: &Activity, now: Instant) -> Next {
    if !activity.seen() {
        return if now >= admitted.first_request_by {
            Next::Drop
        } else {
            Next::CheckAt(admitted.first_request_by)
        };
    }
    match activity.idle_since() {
        // A request in flight: it has its own timeouts; look again after an idle period.
        None => Next::CheckAt(now + admitted.idle_timeout),
        Some(since) if now >= since + admitted.idle_timeout => Next::Close,
        Some(since) => Next::CheckAt(since + admitted.idle_timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(first: Duration, idle: Duration) -> Admitted {
        let config = crate::config::Config::from_toml("", "t").unwrap();
        let host = Arc::new(Host::new(
            crate::signaling::host::Live::new(&config),
            None,
            crate::signaling::dialects(&config.signaling, None, None).membership(),
            tokio_util::sync::CancellationToken::new(),
            tokio_util::task::TaskTracker::new(),
        ));
        Admitted {
            _slot: None,
            first_request_by: Instant::now() + first,
            idle_timeout: idle,
            body_timeout: first,
            proxies: None,
            host,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_request_by_the_deadline_drops_the_connection() {
        let s = Duration::from_secs;
        let a = admitted(s(10), s(60));
        let activity = Activity::default();
        let start = Instant::now();
        assert_eq!(next(&a, &activity, start), Next::CheckAt(start + s(10)));
        assert_eq!(next(&a, &activity, start + s(10)), Next::Drop);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_closed_once_idle_not_while_a_request_runs() {
        let s = Duration::from_secs;
        let a = admitted(s(10), s(60));
        let activity = Arc::new(Activity::default());
        let start = Instant::now();
        let busy = activity.begin();
        tokio::time::advance(s(100)).await;
        assert_eq!(
            next(&a, &activity, Instant::now()),
            Next::CheckAt(Instant::now() + s(60))
        );
        drop(busy);
        let ended = Instant::now();
        assert_eq!(next(&a, &activity, ended), Next::CheckAt(ended + s(60)));
        assert_eq!(
            next(&a, &activity, ended + s(59)),
            Next::CheckAt(ended + s(60))
        );
        assert_eq!(next(&a, &activity, ended + s(60)), Next::Close);
        assert!(ended >= start + s(100));
    }
}
