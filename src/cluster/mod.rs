//! Several instances sharing rooms through Redis (`[cluster]`).
//!
//! - `wire`: what instances tell each other, and the Lua scripts that change shared rooms;
//!   plain data.
//! - `shared`: `Shared`, a dialect's `Registry` whose rooms span the instances.
//!
//! `Cluster` is this instance's link to Redis: one multiplexed connection for the scripts
//! and publishing, one subscription for the `events` and `to:<instance>` channels, a
//! heartbeat that also takes dead instances out of their rooms, and the reconnection of
//! all of it with backoff. Each `Shared` keeps a mirror of every room of its dialect, fed by
//! the events in the order Redis made the changes, so routing, membership checks and
//! listings never wait for Redis; only a join does (capacity is decided there, atomically).

pub mod shared;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::ClusterConfig;
use crate::model::{PeerId, RoomId, Scope};
use crate::sync::{Locked, Shared as _};
pub use shared::Shared;
use wire::Note;

/// File in `server.state_dir` holding a generated instance id.
pub const INSTANCE_ID_FILE: &str = "instance-id";

/// Messages to other instances waiting to be published; past this they are dropped and
/// counted (Redis is too slow or gone).
const OUTGOING: usize = 65_536;
/// The most publishes sent in one pipeline.
const BATCH: usize = 256;

/// This instance's link to the others.
pub struct Cluster {
    /// This instance's id.
    pub me: Arc<str>,
    /// `{key_prefix}`: the hash tag every key and channel starts with.
    prefix: String,
    client: redis::Client,
    cfg: ClusterConfig,
    /// The connection for scripts and publishing, while Redis answers.
    conn: Mutex<Option<MultiplexedConnection>>,
    /// Subscribed, and the mirrors rebuilt from a snapshot: joins may go ahead.
    up: AtomicBool,
    /// Each dialect's shared registry, by name.
    dialects: RwLock<HashMap<&'static str, Arc<Shared>>>,
    outgoing: mpsc::Sender<(String, String)>,
    outgoing_rx: Mutex<Option<mpsc::Receiver<(String, String)>>>,
    /// Wakes the link to bring Redis in line with the local members again.
    reconcile: Notify,
    /// What this instance says of itself in its heartbeat.
    info: String,
    /// Told when a peer of another instance leaves its room (its TURN allocations here close
    /// after the grace period).
    remote_left: std::sync::OnceLock<Box<dyn Fn(Scope, PeerId) + Send + Sync>>,
    scripts: Scripts,
    pub stats: Stats,
}

struct Scripts {
    join: redis::Script,
    leave: redis::Script,
    heartbeat: redis::Script,
    reap: redis::Script,
    snapshot: redis::Script,
}

/// What the cluster link counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages to other instances dropped: Redis unreachable, or the queue full.
    pub dropped: crate::metrics::Counter,
    /// Notes on our channels that were not ours to read.
    pub malformed: crate::metrics::Counter,
    /// Connections to Redis made (the first, and each reconnection).
    pub connects: crate::metrics::Counter,
    /// Peers of dead instances this instance took out of their rooms.
    pub reaped: crate::metrics::Counter,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("me", &self.me)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

/// Why the cluster link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.redis_url: {0} (expected redis://host:port or rediss://host:port)")]
    Url(redis::RedisError),
    #[error("cluster.instance_id: {0}")]
    InstanceId(#[from] crate::secrets::SecretError),
}

impl Cluster {
    /// The link for `cfg`, not yet connected (`run` connects); `state_dir` keeps a generated
    /// instance id.
    ///
    /// # Errors
    /// The URL cannot be parsed, or the state directory cannot hold the instance id.
    pub fn new(
        cfg: &ClusterConfig,
        state_dir: &std::path::Path,
        public_host: Option<&str>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let url = cfg
            .redis_url
            .as_ref()
            .map(|u| u.expose().to_owned())
            .unwrap_or_default();
        let client = redis::Client::open(url).map_err(ClusterError::Url)?;
        let me: Arc<str> = match &cfg.instance_id {
            Some(id) => id.as_str().into(),
            None => instance_id(state_dir)?.into(),
        };
        let (outgoing, rx) = mpsc::channel(OUTGOING);
        let info = serde_json::json!({
            "public_host": cfg.public_host.as_deref().or(public_host),
            "version": env!("CARGO_PKG_VERSION"),
        })
        .to_string();
        Ok(Arc::new(Cluster {
            me,
            prefix: format!("{{{}}}", cfg.key_prefix),
            client,
            cfg: cfg.clone(),
            conn: Mutex::new(None),
            up: AtomicBool::new(false),
            dialects: RwLock::default(),
            outgoing,
            outgoing_rx: Mutex::new(Some(rx)),
            reconcile: Notify::new(),
            info,
            remote_left: std::sync::OnceLock::new(),
            scripts: Scripts {
                join: redis::Script::new(wire::JOIN),
                leave: redis::Script::new(wire::LEAVE),
                heartbeat: redis::Script::new(wire::HEARTBEAT),
                reap: redis::Script::new(wire::REAP),
                snapshot: redis::Script::new(wire::SNAPSHOT),
            },
            stats: Stats::default(),
        }))
    }

    /// The link's families for `/metrics`.
    pub fn metrics(&self) -> Vec<crate::metrics::Family> {
        use crate::metrics::Family;
        vec![
            Family::gauge(
                "cluster_up",
                "1 while this instance is connected to Redis with its rooms in step.",
            )
            .value(u64::from(self.is_up())),
            Family::counter(
                "cluster_connects",
                "Connections made to Redis (the first, and each reconnection).",
            )
            .value(self.stats.connects.get()),
            Family::counter(
                "cluster_messages_dropped",
                "Messages to peers on other instances dropped (Redis unreachable or too slow).",
            )
            .value(self.stats.dropped.get()),
            Family::counter(
                "cluster_notes_malformed",
                "Notes on this instance's channels that it could not read.",
            )
            .value(self.stats.malformed.get()),
            Family::counter(
                "cluster_peers_reaped",
                "Peers of dead instances this instance took out of their rooms.",
            )
            .value(self.stats.reaped.get()),
        ]
    }

    /// Whether joins can be decided now: connected, subscribed and caught up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The shared registry of `dialect`, made on first use, with its first limits; `scope`
    /// names the TURN credential scope of one of its rooms.
    pub fn registry(
        self: &Arc<Self>,
        dialect: &'static str,
        scope: fn(RoomId) -> Scope,
        capacity: usize,
        max_rooms: usize,
    ) -> Arc<Shared> {
        let mut dialects = self.dialects.writing();
        Arc::clone(
            dialects.entry(dialect).or_insert_with(|| {
                Shared::new(Arc::clone(self), dialect, scope, capacity, max_rooms)
            }),
        )
    }

    /// Sets what is done when a peer of another instance leaves its room: the app closes
    /// its TURN allocations here after the grace period (`Host::peer_left`). Once.
    pub fn on_remote_leave(&self, f: impl Fn(Scope, PeerId) + Send + Sync + 'static) {
        let _ = self.remote_left.set(Box::new(f));
    }

    fn remote_left(&self, scope: Scope, peer: PeerId) {
        if let Some(f) = self.remote_left.get() {
            f(scope, peer);
        }
    }

    fn shared(&self, dialect: &str) -> Option<Arc<Shared>> {
        self.dialects.reading().get(dialect).cloned()
    }

    fn all_shared(&self) -> Vec<Arc<Shared>> {
        self.dialects.reading().values().cloned().collect()
    }

    fn key(&self) -> &str {
        &self.prefix
    }

    fn channel_of(&self, instance: &str) -> String {
        format!("{}:to:{instance}", self.prefix)
    }

    fn connection(&self) -> Option<MultiplexedConnection> {
        self.conn.locked().clone()
    }

    /// Queues `note` for `instance`'s channel; `false` if it was dropped.
    fn publish(&self, instance: &str, note: &Note) -> bool {
        if !self.is_up() {
            self.stats.dropped.inc();
            return false;
        }
        let sent = self
            .outgoing
            .try_send((self.channel_of(instance), note.encode()));
        if sent.is_err() {
            self.stats.dropped.inc();
        }
        sent.is_ok()
    }

    /// Runs the join script; `None` when Redis did not answer in time.
    async fn run_join(
        &self,
        dialect: &str,
        room: &str,
        peer: &str,
        name: Option<&str>,
        limits: (usize, usize),
        force: bool,
    ) -> Option<wire::JoinReply> {
        let mut conn = self.connection()?;
        let name = serde_json::to_string(&name).expect("a name serializes");
        let mut call = self.scripts.join.key(self.key());
        call.arg(dialect)
            .arg(room)
            .arg(peer)
            .arg(name)
            .arg(&*self.me)
            .arg(limits.0)
            .arg(limits.1)
            .arg(if force { "1" } else { "0" });
        let reply: Result<String, _> = self.timed(call.invoke_async(&mut conn)).await?;
        match reply {
            Ok(reply) => wire::JoinReply::parse(&reply),
            Err(e) => {
                warn!(error = %e, "cluster: join script failed");
                None
            }
        }
    }

    /// Runs the leave script for `peer` of `dialect` (nothing if it is not there).
    async fn run_leave(&self, dialect: &str, peer: &str) -> bool {
        let Some(mut conn) = self.connection() else {
            return false;
        };
        let mut call = self.scripts.leave.key(self.key());
        call.arg(dialect).arg(peer).arg(&*self.me);
        let done: Option<Result<i64, _>> = self.timed(call.invoke_async(&mut conn)).await;
        matches!(done, Some(Ok(_)))
    }

    async fn timed<T>(&self, f: impl Future<Output = T>) -> Option<T> {
        tokio::time::timeout(Duration::from_millis(self.cfg.timeout_ms), f)
            .await
            .ok()
    }

    /// Connects, keeps the link up and reconnects with backoff, until `shutdown`.
    pub fn start(self: &Arc<Self>, tasks: &TaskTracker, shutdown: CancellationToken) {
        let rx = self.outgoing_rx.locked().take();
        if let Some(rx) = rx {
            tasks.spawn(Arc::clone(self).publisher(rx, shutdown.clone()));
        }
        tasks.spawn(Arc::clone(self).heartbeat(shutdown.clone()));
        tasks.spawn(Arc::clone(self).link(shutdown));
    }

    /// The subscription: connect, subscribe, rebuild the mirrors, apply what comes; again
    /// after any failure.
    async fn link(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let outcome = tokio::select! {
                () = shutdown.cancelled() => break,
                outcome = self.session() => outcome,
            };
            self.up.store(false, Ordering::Release);
            *self.conn.locked() = None;
            match outcome {
                Ok(()) => {
                    warn!("cluster: lost the connection to Redis; reconnecting");
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    warn!(error = %e, retry_ms = backoff.as_millis(), "cluster: Redis unreachable")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        self.leave_cluster().await;
    }

    /// One connection's life: `Ok` when the subscription ended.
    async fn session(&self) -> redis::RedisResult<()> {
        let timeout = Some(Duration::from_millis(self.cfg.timeout_ms));
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut pubsub = tokio::time::timeout(
            Duration::from_millis(self.cfg.timeout_ms),
            self.client.get_async_pubsub(),
        )
        .await
        .map_err(|_| timed_out("subscribing"))??;
        pubsub.subscribe(format!("{}:events", self.prefix)).await?;
        pubsub.subscribe(self.channel_of(&self.me)).await?;
        self.stats.connects.inc();
        *self.conn.locked() = Some(conn.clone());
        self.register(conn.clone()).await?;
        // This instance's peers first (Redis may have lost them: restarted empty, or this
        // instance taken for dead while cut off), then the rooms as Redis holds them.
        self.reconcile_all().await;
        let seq = self.snapshot(conn).await?;
        self.up.store(true, Ordering::Release);
        info!(instance = %self.me, "cluster: connected to Redis, rooms in step");
        let mut messages = pubsub.into_on_message();
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    let Ok(text) = msg.get_payload::<String>() else {
                        self.stats.malformed.inc();
                        continue;
                    };
                    match Note::decode(&text) {
                        Ok(note) => self.apply(note, seq),
                        Err(_) => self.stats.malformed.inc(),
                    }
                }
                () = self.reconcile.notified() => self.reconcile_all().await,
            }
        }
    }

    /// The heartbeat that makes this instance known before anything else.
    async fn register(&self, mut conn: MultiplexedConnection) -> redis::RedisResult<()> {
        let mut call = self.scripts.heartbeat.key(self.key());
        call.arg(&*self.me)
            .arg(&self.info)
            .arg(self.cfg.heartbeat_ttl_ms);
        let _: i64 = self
            .timed(call.invoke_async(&mut conn))
            .await
            .ok_or_else(|| timed_out("registering"))??;
        Ok(())
    }

    /// Rebuilds every mirror from the rooms in Redis; the change number it is current to.
    async fn snapshot(&self, mut conn: MultiplexedConnection) -> redis::RedisResult<u64> {
        let shared = self.all_shared();
        let mut call = self.scripts.snapshot.key(self.key());
        for s in &shared {
            call.arg(s.dialect);
        }
        let flat: Vec<String> = self
            .timed(call.invoke_async(&mut conn))
            .await
            .ok_or_else(|| timed_out("reading the rooms"))??;
        let seq = flat.first().and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut by_dialect: HashMap<&str, Vec<(String, String, wire::Record)>> = HashMap::new();
        for row in flat.get(1..).unwrap_or_default().chunks_exact(4) {
            match serde_json::from_str::<wire::Record>(&row[3]) {
                Ok(record) => by_dialect.entry(row[0].as_str()).or_default().push((
                    row[1].clone(),
                    row[2].clone(),
                    record,
                )),
                Err(_) => self.stats.malformed.inc(),
            }
        }
        for s in &shared {
            let mut members = by_dialect.remove(s.dialect).unwrap_or_default();
            members.sort_by_key(|(_, _, record)| record.s);
            s.rebuild(members);
        }
        Ok(seq)
    }

    /// Hands a note to its dialect's registry; changes up to `seq` are in the snapshot.
    fn apply(&self, note: Note, seq: u64) {
        let dialect = match &note {
            Note::Joined { s, sp, .. } | Note::Left { s, sp, .. } => {
                if *s <= seq {
                    return;
                }
                sp
            }
            Note::Message { sp, .. } | Note::Evict { sp, .. } => sp,
        };
        match self.shared(dialect) {
            Some(shared) => shared.apply(note),
            None => debug!(
                dialect,
                "cluster: note for a dialect this instance does not share"
            ),
        }
    }

    /// Brings Redis in line with this instance's members, in every dialect.
    async fn reconcile_all(&self) {
        for shared in self.all_shared() {
            shared.reconcile().await;
        }
    }

    /// Says this instance is alive, and takes the instances that are not out of their rooms.
    async fn heartbeat(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.heartbeat_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(mut conn) = self.connection() else {
                continue;
            };
            let mut call = self.scripts.heartbeat.key(self.key());
            call.arg(&*self.me)
                .arg(&self.info)
                .arg(self.cfg.heartbeat_ttl_ms);
            match self.timed(call.invoke_async::<i64>(&mut conn)).await {
                Some(Ok(0)) if self.is_up() => {
                    warn!(
                        "cluster: this instance was taken for dead (or Redis lost its keys); registering its peers again"
                    );
                    self.reconcile.notify_one();
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => debug!(error = %e, "cluster: heartbeat failed"),
                None => debug!("cluster: heartbeat timed out"),
            }
            let reap = self.scripts.reap.key(self.key());
            if let Some(Ok(gone)) = self.timed(reap.invoke_async::<i64>(&mut conn)).await
                && gone > 0
            {
                info!(
                    peers = gone,
                    "cluster: took the peers of dead instances out of their rooms"
                );
                self.stats.reaped.add(gone.unsigned_abs());
            }
        }
    }

    /// Publishes queued messages, many per round trip, in the order they were queued.
    async fn publisher(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<(String, String)>,
        shutdown: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let n = tokio::select! {
                () = shutdown.cancelled() => return,
                n = rx.recv_many(&mut batch, BATCH) => n,
            };
            if n == 0 {
                return;
            }
            let Some(mut conn) = self.connection() else {
                self.stats.dropped.add(n as u64);
                batch.clear();
                continue;
            };
            let mut pipe = redis::pipe();
            for (channel, payload) in batch.drain(..) {
                pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
            }
            let sent: Option<redis::RedisResult<()>> =
                self.timed(pipe.query_async(&mut conn)).await;
            if !matches!(sent, Some(Ok(()))) {
                self.stats.dropped.add(n as u64);
            }
        }
    }

    /// On shutdown: this instance's peers leave their rooms at once, and it stops counting
    /// as alive (the others need not wait for its heartbeat to expire).
    async fn leave_cluster(&self) {
        let Some(mut conn) =
            self.connection()
                .or(self.client.get_multiplexed_async_connection().await.ok())
        else {
            return;
        };
        let _: Option<redis::RedisResult<()>> = self
            .timed(
                redis::cmd("DEL")
                    .arg(format!("{}:i:{}", self.prefix, self.me))
                    .query_async(&mut conn),
            )
            .await;
        let reap = self.scripts.reap.key(self.key());
        let _ = self.timed(reap.invoke_async::<i64>(&mut conn)).await;
    }
}

impl crate::signaling::registry::Sharing for Arc<Cluster> {
    fn registry(
        &self,
        dialect: &'static str,
        scope: fn(RoomId) -> Scope,
        capacity: usize,
        max_rooms: usize,
    ) -> Arc<dyn crate::signaling::registry::Registry> {
        Cluster::registry(self, dialect, scope, capacity, max_rooms)
    }
}

/// What `switchboard doctor` finds of a cluster in Redis.
#[derive(Debug)]
pub struct Seen {
    /// Instances whose heartbeat is alive, with what each says of itself.
    pub alive: Vec<(String, String)>,
    /// Instances registered whose heartbeat has expired (not yet taken out of their rooms).
    pub silent: Vec<String>,
}

/// Reads the instances of the cluster `cfg` names from Redis, for `doctor`: it writes nothing.
///
/// # Errors
/// Redis cannot be reached or does not answer within `cluster.timeout_ms`.
pub async fn inspect(cfg: &ClusterConfig) -> Result<Seen, String> {
    let url = cfg
        .redis_url
        .as_ref()
        .map(|u| u.expose().to_owned())
        .unwrap_or_default();
    let client = redis::Client::open(url).map_err(|e| format!("cluster.redis_url: {e}"))?;
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.to_string())?;
    let prefix = format!("{{{}}}", cfg.key_prefix);
    let mut ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{prefix}:instances"))
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    ids.sort();
    let mut seen = Seen {
        alive: Vec::new(),
        silent: Vec::new(),
    };
    for id in ids {
        let info: Option<String> = redis::cmd("GET")
            .arg(format!("{prefix}:i:{id}"))
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        match info {
            Some(info) => seen.alive.push((id, info)),
            None => seen.silent.push(id),
        }
    }
    Ok(seen)
}

/// This instance's id as configured or as generated into `state_dir` (`None`: not yet
/// generated); read only.
pub fn configured_id(cfg: &ClusterConfig, state_dir: &std::path::Path) -> Option<String> {
    cfg.instance_id.clone().or_else(|| {
        let text = std::fs::read_to_string(state_dir.join(INSTANCE_ID_FILE)).ok()?;
        Some(text.trim().chars().take(16).collect())
    })
}

fn timed_out(what: &str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("Redis did not answer in time ({what})"),
    ))
}

/// This instance's id from `state_dir`, generated and stored on first start.
fn instance_id(state_dir: &std::path::Path) -> Result<String, crate::secrets::SecretError> {
    let secret = crate::secrets::load_or_generate(state_dir, INSTANCE_ID_FILE)?;
    // 64 hex digits: the first 16 name the instance well enough.
    Ok(secret.expose().chars().take(16).collect())
}
