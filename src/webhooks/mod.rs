//! Webhooks (`[webhooks]`): every room started or finished, peer joined or left, and TURN
//! allocation closed (with its usage) is posted as JSON to each configured endpoint,
//! signed the Standard Webhooks way (`sign`).
//!
//! `emit` never waits: it puts the event in each endpoint's bounded queue
//! (`webhooks.max_queue`), or counts it dropped. An endpoint has `webhooks.concurrency`
//! lanes, each a queue and a task posting its events one at a time; the events of one room
//! (of one plain-WebSocket user) always take the same lane, so an endpoint receives them
//! in the order they happened, while other rooms' go beside them. An attempt that fails (no connection, a timeout, a 5xx, 408 or 429) is
//! retried with exponential backoff (half a second, doubling, at most a minute) up to
//! `webhooks.max_attempts`; another 4xx is the endpoint refusing the event, given up at
//! once. A given-up event is a dead letter, counted by reason in
//! `switchboard_webhook_dead_letters_total` and logged. At shutdown each queued event gets
//! one attempt, until the queue has stayed empty for `SHUTDOWN_QUIET`; events after that
//! are dead letters (`shutdown`).
//!
//! The events come from `signaling::observed` (rooms and peers, through every dialect's
//! registry) and the TURN server (its `Closing` observer).

pub mod event;
mod sign;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use event::{Event, Place};
pub use sign::{SigningKey, signature_header};

use crate::config::WebhooksConfig;
use crate::metrics::{ByLabel, Counter, Family, Label as _};
use crate::model::{PeerId, PeerInfo, RoomId};
use crate::signaling::observed::Observer;
use crate::signaling::room::Left;
use crate::turn::auth::Owner;
use crate::turn::usage::Usage;
use crate::turn::{CloseReason, Closing, Transport};

crate::labels! {
    /// Why an event was given up.
    pub DeadLetter {
        QueueFull => "queue_full",
        Attempts => "attempts",
        Rejected => "rejected",
        Shutdown => "shutdown",
    }
}

/// The first retry's wait; each next one doubles, up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// At shutdown, how long a queue may stay empty before its delivery stops (sockets close
/// within a second or two of it, each telling of its leave).
const SHUTDOWN_QUIET: Duration = Duration::from_secs(2);
/// How much of an endpoint's answer is read (and thrown away) so its connection is reused.
const MAX_ANSWER: usize = 64 * 1024;

/// What a reload may change: the keys, the events sent, the attempts and their timeout.
#[derive(Debug)]
struct Settings {
    keys: Vec<SigningKey>,
    config: WebhooksConfig,
}

impl Settings {
    fn of(config: &WebhooksConfig) -> Settings {
        Settings {
            keys: config
                .secrets
                .iter()
                .filter_map(|s| SigningKey::parse(s.expose()))
                .collect(),
            config: config.clone(),
        }
    }
}

/// An event waiting for an endpoint.
#[derive(Debug)]
struct Pending {
    /// `webhook-id`: the same for every attempt, so a receiver can drop a repeat.
    id: String,
    body: Bytes,
}

#[derive(Debug, Default)]
struct Stats {
    delivered: Counter,
    retried: Counter,
    dead_letters: ByLabel<DeadLetter>,
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The running webhooks: one queue and task per endpoint.
#[derive(Debug)]
pub struct Webhooks {
    settings: Arc<ArcSwap<Settings>>,
    /// Each endpoint's lanes.
    endpoints: Vec<Vec<mpsc::Sender<Arc<Pending>>>>,
    /// Events one lane holds.
    lane_queue: usize,
    stats: Arc<Stats>,
    /// Picks an event's lane from its order key.
    lanes: foldhash::fast::FixedState,
}

impl Webhooks {
    /// Starts a delivery task per endpoint on `tracker`; `None` when no endpoint is set.
    pub fn start(
        config: &WebhooksConfig,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Option<Arc<Webhooks>> {
        if config.urls.is_empty() {
            return None;
        }
        let client = http_client();
        let settings = Arc::new(ArcSwap::from_pointee(Settings::of(config)));
        let stats = Arc::new(Stats::default());
        let lane_queue = (config.max_queue / config.concurrency).max(1);
        let mut endpoints = Vec::new();
        for url in &config.urls {
            let Ok(uri) = url.parse::<hyper::Uri>() else {
                // The config's check parsed it already.
                continue;
            };
            let mut lanes = Vec::new();
            for _ in 0..config.concurrency {
                let (tx, rx) = mpsc::channel(lane_queue);
                lanes.push(tx);
                let lane = Lane {
                    client: client.clone(),
                    uri: uri.clone(),
                    settings: Arc::clone(&settings),
                    stats: Arc::clone(&stats),
                };
                tracker.spawn(lane.run(rx, shutdown.clone()));
            }
            endpoints.push(lanes);
        }
        info!(
            endpoints = endpoints.len(),
            concurrency = config.concurrency,
            "webhooks on"
        );
        Some(Arc::new(Webhooks {
            settings,
            endpoints,
            lane_queue,
            stats,
            lanes: foldhash::fast::FixedState::default(),
        }))
    }

    /// Queues `event` for every endpoint, unless `webhooks.events` leaves it out; a full
    /// queue drops it, counted.
    pub fn emit(&self, event: &Event) {
        let settings = self.settings.load();
        if !settings.config.wants(event.kind()) {
            return;
        }
        let pending = Arc::new(Pending {
            id: new_id(),
            body: Bytes::from(event.to_json(crate::clock::unix_now())),
        });
        let hash = std::hash::BuildHasher::hash_one(&self.lanes, event.order_key());
        for lanes in &self.endpoints {
            let lane = &lanes[(hash % lanes.len() as u64) as usize];
            match lane.try_send(Arc::clone(&pending)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.stats.dead_letters.inc(DeadLetter::QueueFull);
                    static FULL: crate::throttle::Throttle = crate::throttle::Throttle::new();
                    if let Some(suppressed) = FULL.allow(crate::throttle::now_s()) {
                        warn!(
                            kind = event.kind(),
                            suppressed, "webhook queue full (webhooks.max_queue): event dropped"
                        );
                    }
                }
                // Delivery has stopped: shutting down.
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.stats.dead_letters.inc(DeadLetter::Shutdown);
                }
            }
        }
    }

    /// Applies a reload's keys, events, attempts and timeout.
    pub fn set_config(&self, config: &WebhooksConfig) {
        self.settings.store(Arc::new(Settings::of(config)));
    }

    pub fn metrics(&self) -> Vec<Family> {
        let queued: usize = self
            .endpoints
            .iter()
            .flatten()
            .map(|q| self.lane_queue - q.capacity())
            .sum();
        vec![
            Family::gauge("webhook_queued", "Webhook events waiting for an endpoint.")
                .value(queued),
            Family::counter(
                "webhook_deliveries",
                "Webhook events an endpoint accepted (2xx).",
            )
            .value(self.stats.delivered.get()),
            Family::counter(
                "webhook_retries",
                "Webhook attempts that failed and were retried.",
            )
            .value(self.stats.retried.get()),
            Family::counter(
                "webhook_dead_letters",
                "Webhook events given up, by reason: the queue was full, every attempt failed, \
                 the endpoint refused it (4xx), or delivery had stopped (shutdown).",
            )
            .by("reason", &self.stats.dead_letters),
        ]
    }
}

impl Observer for Webhooks {
    fn joined(&self, dialect: &'static str, room: Option<&RoomId>, peer: &PeerInfo, started: bool) {
        let place = Place {
            dialect,
            room: room.cloned(),
        };
        if started && room.is_some() {
            self.emit(&Event::RoomStarted {
                place: place.clone(),
            });
        }
        self.emit(&Event::PeerJoined {
            place,
            peer: peer.id.clone(),
            name: peer.name.clone(),
        });
    }

    fn left(
        &self,
        dialect: &'static str,
        room: Option<&RoomId>,
        peer: &PeerId,
        left: &Left,
        now: Instant,
    ) {
        let place = Place {
            dialect,
            room: room.cloned(),
        };
        self.emit(&Event::PeerLeft {
            place: place.clone(),
            peer: peer.clone(),
            duration: now.saturating_duration_since(left.stay.since),
            messages: left.stay.messages,
        });
        if left.closed && room.is_some() {
            self.emit(&Event::RoomFinished {
                place,
                duration: now.saturating_duration_since(left.room_stay.since),
                messages: left.room_stay.messages,
            });
        }
    }
}

impl Closing for Webhooks {
    /// Allocations of peer and room credentials: REST and static users' belong to no room
    /// or peer here.
    fn closed(&self, owner: &Owner, transport: Transport, reason: CloseReason, usage: &Usage) {
        let (place, peer) = match owner {
            Owner::Peer { scope, peer } => {
                let Some(dialect) = crate::signaling::dialect_of(scope.space()) else {
                    return;
                };
                let place = Place {
                    dialect,
                    room: scope.room().cloned(),
                };
                (place, Some(peer.clone()))
            }
            Owner::Room(room) => {
                let place = Place {
                    dialect: crate::signaling::ws::NAME,
                    room: Some(room.clone()),
                };
                (place, None)
            }
            Owner::External(_) | Owner::Static(_) => return,
        };
        self.emit(&Event::AllocationClosed {
            place,
            peer,
            transport: transport.as_str(),
            reason: reason.as_str(),
            usage: *usage,
        });
    }
}

/// `msg_` and 24 random hex digits.
fn new_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

fn http_client() -> HttpClient {
    let tls =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(crate::tls::client_config());
    Client::builder(TokioExecutor::new()).build(tls.https_or_http().enable_http1().build())
}

/// An endpoint as logs show it: no user information or query, which may hold secrets.
fn shown(uri: &hyper::Uri) -> String {
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("http"),
        uri.host().unwrap_or(""),
        uri.path()
    )
}

/// How an attempt went.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Delivered,
    /// Worth another attempt: no answer, a 5xx, 408 or 429.
    Failed(String),
    /// The endpoint refused the event (another 4xx, or a redirect, which is not followed).
    Refused(u16),
}

fn outcome_of(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        408 | 429 | 500..=599 => Outcome::Failed(format!("HTTP {status}")),
        _ => Outcome::Refused(status),
    }
}

/// The wait after failed attempt `n` (1 for the first).
fn backoff(n: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << (n.saturating_sub(1)).min(16))
        .min(MAX_BACKOFF)
}

/// One of an endpoint's lanes: its events, one at a time.
struct Lane {
    client: HttpClient,
    uri: hyper::Uri,
    settings: Arc<ArcSwap<Settings>>,
    stats: Arc<Stats>,
}

impl Lane {
    async fn run(self, mut queue: mpsc::Receiver<Arc<Pending>>, shutdown: CancellationToken) {
        loop {
            let pending = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                pending = queue.recv() => match pending {
                    Some(p) => p,
                    None => return,
                },
            };
            self.deliver(&pending, &shutdown).await;
        }
        // Shutting down: one attempt for each event queued, those of the sockets closing
        // too, until none has come for a while.
        while let Ok(Some(pending)) = tokio::time::timeout(SHUTDOWN_QUIET, queue.recv()).await {
            if self.attempt(&pending).await == Outcome::Delivered {
                self.stats.delivered.inc();
            } else {
                self.stats.dead_letters.inc(DeadLetter::Attempts);
            }
        }
    }

    /// Posts `pending` until it is accepted, refused, or out of attempts (or, at shutdown,
    /// after the attempt under way).
    async fn deliver(&self, pending: &Pending, shutdown: &CancellationToken) {
        let mut n = 0;
        loop {
            n += 1;
            let outcome = self.attempt(pending).await;
            let max_attempts = self.settings.load().config.max_attempts;
            let reason = match outcome {
                Outcome::Delivered => {
                    self.stats.delivered.inc();
                    return;
                }
                Outcome::Refused(status) => {
                    self.stats.dead_letters.inc(DeadLetter::Rejected);
                    warn!(endpoint = %shown(&self.uri), id = pending.id, status, "webhook endpoint refused an event; given up");
                    return;
                }
                Outcome::Failed(reason) => reason,
            };
            if n >= max_attempts || shutdown.is_cancelled() {
                self.stats.dead_letters.inc(DeadLetter::Attempts);
                warn!(endpoint = %shown(&self.uri), id = pending.id, attempts = n, %reason, "webhook event given up (webhooks.max_attempts)");
                return;
            }
            self.stats.retried.inc();
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(backoff(n)) => {}
            }
        }
    }

    async fn attempt(&self, pending: &Pending) -> Outcome {
        let settings = self.settings.load();
        let timestamp = crate::clock::unix_now();
        let signature = signature_header(&settings.keys, &pending.id, timestamp, &pending.body);
        let request = hyper::Request::post(self.uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("switchboard/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", &pending.id)
            .header("webhook-timestamp", timestamp)
            .header("webhook-signature", signature)
            .body(Full::new(pending.body.clone()));
        let request = match request {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let timeout = Duration::from_secs(settings.config.timeout_s);
        let deadline = tokio::time::Instant::now() + timeout;
        match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Ok(Ok(response)) => {
                let outcome = outcome_of(response.status().as_u16());
                // Read to its end (what fits), so the connection serves the next event.
                let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER);
                let _ = tokio::time::timeout_at(deadline, body.collect()).await;
                outcome
            }
            Ok(Err(e)) => Outcome::Failed(e.to_string()),
            Err(_) => Outcome::Failed(format!("no answer in {} s", timeout.as_secs())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_decide_between_retry_and_refusal() {
        assert_eq!(outcome_of(200), Outcome::Delivered);
        assert_eq!(outcome_of(204), Outcome::Delivered);
        for retried in [408, 429, 500, 503] {
            assert!(
                matches!(outcome_of(retried), Outcome::Failed(_)),
                "{retried}"
            );
        }
        for refused in [301, 400, 401, 404, 410] {
            assert_eq!(outcome_of(refused), Outcome::Refused(refused));
        }
    }

    #[test]
    fn backoff_doubles_from_half_a_second_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000]
        );
        assert_eq!(backoff(100), MAX_BACKOFF);
    }

    #[test]
    fn logs_show_no_credentials_or_query_of_an_endpoint() {
        let uri: hyper::Uri = "https://user:pw@hooks.example.com:8443/in?token=s3cret"
            .parse()
            .unwrap();
        assert_eq!(shown(&uri), "https://hooks.example.com/in");
    }

    #[test]
    fn ids_are_distinct() {
        let (a, b) = (new_id(), new_id());
        assert!(a.starts_with("msg_") && a.len() == 28, "{a}");
        assert_ne!(a, b);
    }
}
