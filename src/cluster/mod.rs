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
pub mod target;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::ClusterConfig;
use crate::model::{PeerId, PeerInfo, RoomId, Scope};
use crate::sync::{Locked, Shared as _};
pub use shared::Shared;
use wire::Note;

/// File in `server.state_dir` holding a generated instance id.
pub const INSTANCE_ID_FILE: &str = "instance-id";

/// Bytes of messages to other instances that may wait to be published; past this they are
/// dropped and counted (Redis is too slow or gone), so no sender can make this instance
/// hold more.
const OUTGOING_BYTES: usize = 64 << 20;
/// The most commands sent in one pipeline.
const BATCH: usize = 256;
/// Heartbeats failed in a row after which the connection counts as dead (a half-open TCP
/// connection to a Redis host that vanished never errors by itself).
const HEARTBEAT_FAILURES: u32 = 3;
/// Every this many heartbeats, Redis's record of this instance's peers is compared with
/// its sockets (a leave or re-registration that failed is made good).
const RECONCILE_EVERY: u32 = 30;

/// A change or a message for Redis, in the order this instance made them: one sender's
/// messages and its leave arrive in the order they were sent, and a peer's join and leave
/// in the order they were asked.
enum Command {
    Publish {
        channel: String,
        payload: String,
    },
    Join {
        dialect: &'static str,
        room: String,
        peer: String,
        name: Option<String>,
        limits: (usize, usize),
        /// A re-registration: no capacity check, no change if it is there.
        force: bool,
        /// Names are unique in the dialect's rooms.
        unique: bool,
        /// Echoed in its `Joined` note, so a socket's join is told from an earlier one's.
        token: String,
        reply: Option<oneshot::Sender<Option<wire::JoinReply>>>,
    },
    Leave {
        dialect: &'static str,
        peer: String,
    },
    /// Answered once everything queued before it has reached Redis.
    Barrier(oneshot::Sender<()>),
}

/// What waits for one answer of a pipeline.
enum Waiting {
    Join(Option<oneshot::Sender<Option<wire::JoinReply>>>),
    Barrier(oneshot::Sender<()>),
}

/// What is told of a message from a peer of another instance: its scope, its id, the JSON data.
type RemoteMessage = Box<dyn Fn(&Scope, &PeerId, &str) + Send + Sync>;

/// This instance's link to the others.
pub struct Cluster {
    /// This instance's id.
    pub me: Arc<str>,
    /// `{key_prefix}`: the hash tag every key and channel starts with.
    prefix: String,
    /// Where Redis is; resolved to one server at every connect.
    target: crate::config::RedisUrl,
    /// The server the current (or last) session resolved to.
    client: Mutex<Option<redis::Client>>,
    cfg: ClusterConfig,
    /// The connection for scripts and publishing, while Redis answers.
    conn: Mutex<Option<MultiplexedConnection>>,
    /// Subscribed, and the mirrors rebuilt from a snapshot: joins may go ahead.
    up: AtomicBool,
    /// Each dialect's shared registry, by name.
    dialects: RwLock<HashMap<&'static str, Arc<Shared>>>,
    commands: mpsc::UnboundedSender<Command>,
    commands_rx: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
    /// Bytes of `Command::Publish` queued.
    queued_bytes: AtomicUsize,
    /// Ends the current connection so that a new one starts from a fresh snapshot (this
    /// instance missed changes, or its connection is dead).
    resync: Notify,
    /// What this instance says of itself in its heartbeat.
    info: String,
    /// Told when a peer of another instance leaves its room (its TURN allocations here close
    /// after the grace period).
    remote_left: std::sync::OnceLock<Box<dyn Fn(Scope, PeerId) + Send + Sync>>,
    /// Told of a message from a peer of another instance delivered here (the room fence
    /// learns the addresses it carries).
    remote_message: std::sync::OnceLock<RemoteMessage>,
    /// Told what the operator did through any instance's admin API.
    operator: std::sync::OnceLock<Box<dyn Fn(Operator) + Send + Sync>>,
    scripts: Scripts,
    pub stats: Stats,
}

struct Scripts {
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
    /// Peers Redis and this instance disagreed about, made good by a reconciliation.
    pub repaired: crate::metrics::Counter,
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
    #[error(
        "cluster.redis_url: {0} (expected redis://host:port, redis+unix:///path, \
         redis+sentinel://host:port,.../service or redis+cluster://host:port,...)"
    )]
    Url(String),
    #[error("cluster.instance_id: {0}")]
    InstanceId(#[from] crate::secrets::SecretError),
}

impl Cluster {
    /// The link for `cfg`, not yet connected (`start` connects); `state_dir` keeps a generated
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
        let target = crate::config::RedisUrl::parse(&url).map_err(ClusterError::Url)?;
        let me: Arc<str> = match &cfg.instance_id {
            Some(id) => id.as_str().into(),
            None => instance_id(state_dir)?.into(),
        };
        let (commands, rx) = mpsc::unbounded_channel();
        let info = serde_json::json!({
            "public_host": cfg.public_host.as_deref().or(public_host),
            "version": env!("CARGO_PKG_VERSION"),
        })
        .to_string();
        Ok(Arc::new(Cluster {
            me,
            prefix: format!("{{{}}}", cfg.key_prefix),
            target,
            client: Mutex::new(None),
            cfg: cfg.clone(),
            conn: Mutex::new(None),
            up: AtomicBool::new(false),
            dialects: RwLock::default(),
            commands,
            commands_rx: Mutex::new(Some(rx)),
            queued_bytes: AtomicUsize::new(0),
            resync: Notify::new(),
            info,
            remote_left: std::sync::OnceLock::new(),
            remote_message: std::sync::OnceLock::new(),
            operator: std::sync::OnceLock::new(),
            scripts: Scripts {
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
            Family::counter(
                "cluster_peers_repaired",
                "Peers Redis and this instance disagreed about, made good by a reconciliation.",
            )
            .value(self.stats.repaired.get()),
        ]
    }

    /// Whether joins can be decided now: connected, subscribed and caught up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The shared registry of `dialect`, made on first use, with its first limits; `scope`
    /// names the TURN credential scope of one of its rooms; `rooms`, the mirror, holds the
    /// dialect's room rules with no limits.
    pub fn registry(
        self: &Arc<Self>,
        dialect: &'static str,
        scope: fn(RoomId) -> Scope,
        rooms: crate::signaling::room::Rooms,
        capacity: usize,
        max_rooms: usize,
    ) -> Arc<Shared> {
        let mut dialects = self.dialects.writing();
        Arc::clone(dialects.entry(dialect).or_insert_with(|| {
            Shared::new(Arc::clone(self), dialect, scope, rooms, capacity, max_rooms)
        }))
    }

    /// Sets what is done when a peer of another instance leaves its room: the app closes
    /// its TURN allocations here after the grace period (`Host::peer_left`). Once.
    pub fn on_remote_leave(&self, f: impl Fn(Scope, PeerId) + Send + Sync + 'static) {
        let _ = self.remote_left.set(Box::new(f));
    }

    /// Sets what is done with a message from a peer of another instance (its scope, its id,
    /// the JSON data) that reached members here: the room fence reads the addresses it
    /// carries (`Host::announce_signal`), as the sender's instance did. Once.
    pub fn on_remote_message(&self, f: impl Fn(&Scope, &PeerId, &str) + Send + Sync + 'static) {
        let _ = self.remote_message.set(Box::new(f));
    }

    pub(crate) fn remote_message(&self, scope: &Scope, from: &PeerId, data: &str) {
        if let Some(f) = self.remote_message.get() {
            f(scope, from, data);
        }
    }

    /// Sets what is done when the operator acts through an instance's admin API (this one's
    /// included): the app keeps the room or the kicked source out and revokes allocations, as
    /// the admin API does for its own instance. Once.
    pub fn on_operator(&self, f: impl Fn(Operator) + Send + Sync + 'static) {
        let _ = self.operator.set(Box::new(f));
    }

    /// The operator closed `room` here: every other instance keeps it closed too.
    pub fn room_closed(&self, room: &RoomId) {
        let note = Note::Closed {
            r: room.as_str().to_owned(),
            i: self.me.to_string(),
        };
        self.publish_all(note.encode());
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

    fn queue(&self, command: Command) {
        // The receiver lives as long as the cluster; after shutdown nothing is sent anyway.
        let _ = self.commands.send(command);
    }

    /// Queues a note's text for `instance`'s channel; `false` if it was dropped.
    fn publish(&self, instance: &str, payload: String) -> bool {
        let queued = self.queued_bytes.load(Ordering::Relaxed);
        if !self.is_up() || queued + payload.len() > OUTGOING_BYTES {
            self.stats.dropped.inc();
            return false;
        }
        self.queued_bytes
            .fetch_add(payload.len(), Ordering::Relaxed);
        self.queue(Command::Publish {
            channel: self.channel_of(instance),
            payload,
        });
        true
    }

    /// Queues a note's text for every instance (the `events` channel); `false` if dropped.
    fn publish_all(&self, payload: String) -> bool {
        let channel = format!("{}:events", self.prefix);
        let queued = self.queued_bytes.load(Ordering::Relaxed);
        if !self.is_up() || queued + payload.len() > OUTGOING_BYTES {
            self.stats.dropped.inc();
            return false;
        }
        self.queued_bytes
            .fetch_add(payload.len(), Ordering::Relaxed);
        self.queue(Command::Publish { channel, payload });
        true
    }

    /// Queues a leave of `peer` of `dialect` (nothing happens if Redis does not have it).
    fn queue_leave(&self, dialect: &'static str, peer: &PeerId) {
        self.queue(Command::Leave {
            dialect,
            peer: peer.as_str().to_owned(),
        });
    }

    /// Queues a join; with `reply`, its outcome (`None`: Redis did not answer in time).
    #[expect(clippy::too_many_arguments, reason = "the join script's arguments")]
    fn queue_join(
        &self,
        dialect: &'static str,
        room: &RoomId,
        peer: &PeerInfo,
        limits: (usize, usize),
        (force, unique): (bool, bool),
        token: String,
        reply: Option<oneshot::Sender<Option<wire::JoinReply>>>,
    ) {
        self.queue(Command::Join {
            dialect,
            room: room.as_str().to_owned(),
            peer: peer.id.as_str().to_owned(),
            name: peer.name.clone(),
            limits,
            force,
            unique,
            token,
            reply,
        });
    }

    async fn timed<T>(&self, f: impl Future<Output = T>) -> Option<T> {
        tokio::time::timeout(Duration::from_millis(self.cfg.timeout_ms), f)
            .await
            .ok()
    }

    /// Connects, keeps the link up and reconnects with backoff, until `shutdown`.
    pub fn start(self: &Arc<Self>, tasks: &TaskTracker, shutdown: CancellationToken) {
        let rx = self.commands_rx.locked().take();
        if let Some(rx) = rx {
            tasks.spawn(Arc::clone(self).writer(rx, shutdown.clone()));
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
            let was_up = self.up.swap(false, Ordering::AcqRel);
            *self.conn.locked() = None;
            if was_up {
                // A session that worked: the next attempt is not a retry of a failing one.
                backoff = Duration::from_millis(100);
            }
            match outcome {
                Ok(()) => warn!("cluster: lost the connection to Redis; reconnecting"),
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

    /// One connection's life: `Ok` when the subscription ended, `Err` when it could not be
    /// set up or had to start over.
    async fn session(&self) -> redis::RedisResult<()> {
        let timeout = Some(Duration::from_millis(self.cfg.timeout_ms));
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        let client = self
            .timed(target::resolve(
                &self.target,
                &format!("{}:seq", self.prefix),
            ))
            .await
            .ok_or_else(|| timed_out("finding the server"))??;
        *self.client.locked() = Some(client.clone());
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut pubsub = tokio::time::timeout(
            Duration::from_millis(self.cfg.timeout_ms),
            client.get_async_pubsub(),
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
        self.reconcile(conn.clone()).await?;
        self.barrier().await?;
        let mut last = self.snapshot(conn).await?;
        self.up.store(true, Ordering::Release);
        info!(instance = %self.me, "cluster: connected to Redis, rooms in step");
        let mut messages = pubsub.into_on_message();
        loop {
            let msg = tokio::select! {
                msg = messages.next() => msg,
                () = self.resync.notified() => {
                    return Err(timed_out("the connection, which missed changes or stopped answering"));
                }
            };
            let Some(msg) = msg else { return Ok(()) };
            let Ok(text) = msg.get_payload::<String>() else {
                self.stats.malformed.inc();
                continue;
            };
            let note = match Note::decode(&text) {
                Ok(note) => note,
                Err(_) => {
                    self.stats.malformed.inc();
                    continue;
                }
            };
            if let Note::Joined { s, .. } | Note::Left { s, .. } = &note {
                // Every change is published, in order, on the one channel this connection
                // hears: one already in the snapshot is skipped, a gap means some were lost
                // (or Redis's counter went back): start over from a fresh snapshot.
                if *s <= last {
                    continue;
                }
                if *s != last + 1 {
                    return Err(timed_out("the change counter, which skipped or went back"));
                }
                last = *s;
            }
            self.apply(note);
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

    /// Waits until every command queued so far has reached Redis.
    async fn barrier(&self) -> redis::RedisResult<()> {
        let (done, wait) = oneshot::channel();
        self.queue(Command::Barrier(done));
        self.timed(wait)
            .await
            .ok_or_else(|| timed_out("the queue"))?
            .map_err(|_| timed_out("the queue"))
    }

    /// Compares Redis's record of this instance's peers with its sockets, in every dialect,
    /// and queues what makes them agree.
    async fn reconcile(&self, mut conn: MultiplexedConnection) -> redis::RedisResult<()> {
        let held: HashMap<String, String> = self
            .timed(
                redis::cmd("HGETALL")
                    .arg(format!("{}:m:{}", self.prefix, self.me))
                    .query_async(&mut conn),
            )
            .await
            .ok_or_else(|| timed_out("reading this instance's peers"))??;
        let mut by_dialect: HashMap<&str, Vec<(&str, &str)>> = HashMap::new();
        for (field, room) in &held {
            if let Some((dialect, peer)) = field.split_once(' ') {
                by_dialect
                    .entry(dialect)
                    .or_default()
                    .push((peer, room.as_str()));
            }
        }
        let mut repaired = 0;
        for shared in self.all_shared() {
            let held = by_dialect.remove(shared.dialect).unwrap_or_default();
            repaired += shared.reconcile(&held);
        }
        if repaired > 0 {
            info!(
                peers = repaired,
                "cluster: made Redis agree with this instance's peers"
            );
            self.stats.repaired.add(repaired as u64);
        }
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

    /// Hands a note to its dialect's registry, or an operator's action to the app.
    fn apply(&self, note: Note) {
        let dialect = match &note {
            Note::Closed { r, i } => {
                if let (Ok(room), Some(f)) = (RoomId::parse(r), self.operator.get())
                    && **i != *self.me
                {
                    f(Operator::RoomClosed(room));
                }
                return;
            }
            Note::Kicked { sp, p, r, c } => {
                let (Some(shared), Some(peer), Some(f)) =
                    (self.shared(sp), PeerId::parse(p), self.operator.get())
                else {
                    return;
                };
                let room = r.as_deref().and_then(|r| RoomId::parse(r).ok());
                let scope = match room {
                    Some(room) => shared.scope(room),
                    None => return self.stats.malformed.inc(),
                };
                f(Operator::PeerKicked {
                    scope,
                    peer,
                    client: *c,
                });
                return;
            }
            Note::Joined { sp, .. }
            | Note::Left { sp, .. }
            | Note::Message { sp, .. }
            | Note::Evict { sp, .. } => sp,
        };
        match self.shared(dialect) {
            Some(shared) => shared.apply(note),
            None => debug!(
                dialect,
                "cluster: note for a dialect this instance does not share"
            ),
        }
    }

    /// Says this instance is alive, and takes the instances that are not out of their rooms;
    /// now and then, makes Redis's record of this instance's peers agree with its sockets.
    async fn heartbeat(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.heartbeat_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut failures, mut beats) = (0u32, 0u32);
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
                Some(Ok(was)) => {
                    failures = 0;
                    if was == 0 && self.is_up() {
                        warn!(
                            "cluster: this instance was taken for dead (or Redis lost its keys); starting over"
                        );
                        self.resync.notify_one();
                        continue;
                    }
                }
                failed => {
                    failures += 1;
                    debug!(
                        failures,
                        timed_out = failed.is_none(),
                        "cluster: heartbeat failed"
                    );
                    if failures >= HEARTBEAT_FAILURES {
                        warn!(failures, "cluster: Redis stopped answering; reconnecting");
                        failures = 0;
                        self.resync.notify_one();
                    }
                    continue;
                }
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
            beats += 1;
            if beats.is_multiple_of(RECONCILE_EVERY)
                && self.is_up()
                && let Err(e) = self.reconcile(conn).await
            {
                debug!(error = %e, "cluster: reconciliation failed");
            }
        }
    }

    /// Sends queued commands, many per round trip, in the order they were queued.
    async fn writer(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<Command>,
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
            let mut pipe = redis::pipe();
            let mut replies = Vec::new();
            let mut published = 0;
            for command in batch.drain(..) {
                match command {
                    Command::Publish { channel, payload } => {
                        published += 1;
                        self.queued_bytes
                            .fetch_sub(payload.len(), Ordering::Relaxed);
                        pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
                    }
                    Command::Leave { dialect, peer } => {
                        pipe.cmd("EVAL")
                            .arg(wire::LEAVE)
                            .arg(1)
                            .arg(&self.prefix)
                            .arg(dialect)
                            .arg(peer)
                            .arg(&*self.me)
                            .ignore();
                    }
                    Command::Barrier(done) => {
                        pipe.cmd("PING");
                        replies.push(Waiting::Barrier(done));
                    }
                    Command::Join {
                        dialect,
                        room,
                        peer,
                        name,
                        limits,
                        force,
                        unique,
                        token,
                        reply,
                    } => {
                        let name = serde_json::to_string(&name).expect("a name serializes");
                        pipe.cmd("EVAL")
                            .arg(wire::JOIN)
                            .arg(1)
                            .arg(&self.prefix)
                            .arg(dialect)
                            .arg(room)
                            .arg(peer)
                            .arg(name)
                            .arg(&*self.me)
                            .arg(limits.0)
                            .arg(limits.1)
                            .arg(if force { "1" } else { "0" })
                            .arg(token)
                            .arg(if unique { "1" } else { "0" });
                        replies.push(Waiting::Join(reply));
                    }
                }
            }
            let answers: Option<Vec<redis::Value>> = match self.connection() {
                Some(mut conn) => match self.timed(pipe.query_async(&mut conn)).await {
                    Some(Ok(answers)) => Some(answers),
                    Some(Err(e)) => {
                        debug!(error = %e, "cluster: commands failed");
                        None
                    }
                    None => None,
                },
                None => None,
            };
            if answers.is_none() {
                // Leaves and re-registrations are made good by the next reconciliation.
                self.stats.dropped.add(published);
            }
            let failed = answers.is_none();
            let mut answers = answers.map(Vec::into_iter);
            for waiting in replies {
                let answer = answers.as_mut().and_then(Iterator::next);
                match waiting {
                    Waiting::Barrier(done) => {
                        if !failed {
                            let _ = done.send(());
                        }
                    }
                    Waiting::Join(reply) => {
                        let outcome = answer
                            .and_then(|value| redis::from_redis_value::<String>(value).ok())
                            .and_then(|s| wire::JoinReply::parse(&s));
                        if let Some(reply) = reply {
                            let _ = reply.send(outcome);
                        }
                    }
                }
            }
        }
    }

    /// On shutdown: this instance's peers leave their rooms at once, and it stops counting
    /// as alive (the others need not wait for its heartbeat to expire).
    async fn leave_cluster(&self) {
        let client = self.client.locked().clone();
        let mut conn = self.connection();
        if conn.is_none()
            && let Some(client) = client
        {
            conn = self
                .timed(client.get_multiplexed_async_connection())
                .await
                .and_then(Result::ok);
        }
        let Some(mut conn) = conn else {
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
        rooms: crate::signaling::room::Rooms,
        capacity: usize,
        max_rooms: usize,
    ) -> Arc<dyn crate::signaling::registry::Registry> {
        Cluster::registry(self, dialect, scope, rooms, capacity, max_rooms)
    }
}

/// What the operator did through an instance's admin API, for every instance to carry out.
#[derive(Debug)]
pub enum Operator {
    /// Every dialect's room of this name was closed: keep it closed, revoke its allocations.
    RoomClosed(RoomId),
    /// A peer was kicked: keep its client's source out of `scope`, revoke its allocations.
    PeerKicked {
        scope: Scope,
        peer: PeerId,
        client: Option<std::net::IpAddr>,
    },
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
    let target =
        crate::config::RedisUrl::parse(&url).map_err(|e| format!("cluster.redis_url: {e}"))?;
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let prefix = format!("{{{}}}", cfg.key_prefix);
    let client = tokio::time::timeout(timeout, target::resolve(&target, &format!("{prefix}:seq")))
        .await
        .map_err(|_| format!("Redis did not answer within {} ms", cfg.timeout_ms))?
        .map_err(|e| e.to_string())?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.to_string())?;
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
