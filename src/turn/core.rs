//! The TURN server core: requests in, responses out, no sockets.
//!
//! `Core` authenticates requests, applies policy and quotas, and keeps the
//! allocation table. It is generic over the relay handle `B::Relay`, which
//! the I/O layer (`turn::server`) makes real (a bound UDP socket) and tests
//! make fake. Time comes in as arguments (`now`, `unix`), so tests drive a
//! virtual clock.
//!
//! Concurrency: requests take the table's `RwLock` (briefly, never across I/O); data
//! packets never do. They find allocations in `Index`, whose reads take no lock and write
//! nothing shared, so receive loops on different cores looking up different allocations
//! share no cache line; each allocation's permissions and channels sit behind its own
//! `Mutex`. `Index` changes only under the table's write lock, with the table.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use stun::attributes::{
    ATTR_DATA, ATTR_DONT_FRAGMENT, ATTR_EVEN_PORT, ATTR_MESSAGE_INTEGRITY, ATTR_NONCE, ATTR_REALM,
    ATTR_REQUESTED_ADDRESS_FAMILY, ATTR_RESERVATION_TOKEN, ATTR_USERNAME, AttrType,
};
use stun::message::{
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter,
    METHOD_ALLOCATE, METHOD_BINDING, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH,
    METHOD_SEND, Message, Setter,
};
use stun::textattrs::TextAttribute;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

pub use super::allocation::RelayAt;
use super::allocation::{AllocState, ChannelBindError, Revoked, granted_lifetime};
use super::auth::{self, NonceCheck, NonceKey, Owner, Scope};
use super::budget::{self, BandwidthLimit, Budget, Demand, Direction, Rate};
use super::fence::Fence;
use super::policy::{Cidr, PeerPolicy, Reach};
use super::stats::{AuthFailure, PermissionLimit, ProtocolRule, Quota, Revocation};
pub use super::stats::{CloseReason, Stats, Transport};
use super::usage::{Account, Flow, Ledger, Usage};
use super::wire;
use crate::config::Secret;
use crate::limiter::SourceRates;
use crate::metrics::Label;
use crate::model::{PeerId, RoomId};
use crate::sync::{Locked, Shared};

/// Identifies an allocation: the client, the server socket it talked to, and the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub transport: Transport,
}

/// Which relay port to bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortChoice {
    Any,
    /// An even port (EVEN-PORT).
    Even,
    /// Exactly this port (the odd half of a reserved pair).
    Exactly(u16),
}

/// Binds relay sockets; the only I/O the core needs, injected so tests can fake it.
pub trait RelayBinder: Send + Sync {
    type Relay: Send + Sync + 'static;
    /// Binds a relay of the family of `ipv6` and returns it with its local address.
    fn bind(&self, ipv6: bool, port: PortChoice) -> std::io::Result<(Self::Relay, SocketAddr)>;
    /// Makes `relay` send to peers with the don't-fragment bit and never fragment
    /// (DONT-FRAGMENT, RFC 8656 section 14).
    ///
    /// # Errors
    /// The platform cannot; the Allocate then gets 420, as if DONT-FRAGMENT were unknown.
    fn dont_fragment(&self, relay: &Self::Relay) -> std::io::Result<()>;
}

/// How long a port reserved by EVEN-PORT with the R bit waits for its RESERVATION-TOKEN.
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// Answers "is this peer still in this room of this dialect?" for peer credentials.
pub type Membership = Arc<dyn Fn(&Scope, &PeerId) -> bool + Send + Sync>;

/// Quotas and identity of the server.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub realm: String,
    /// REST secrets: the first mints, all verify.
    pub secrets: Vec<Secret>,
    pub static_users: Vec<(String, Secret)>,
    /// The address advertised in XOR-RELAYED-ADDRESS instead of the bound one (1:1 NAT).
    pub external_ip: Option<IpAddr>,
    /// Allocations per signaling peer in its room (whatever the expiry of the credential it
    /// used), and per credential for room, REST and static credentials (see `CredentialKey`).
    pub max_allocations_per_credential: usize,
    /// Allocations per room of one dialect (room credentials count with the native room).
    pub max_allocations_per_room: usize,
    /// Allocations per client source: an IPv4 address, or an IPv6 network of
    /// `source_prefix_v6` bits. The limit on one person who gets fresh peer ids by joining anew.
    pub max_allocations_per_source: usize,
    pub max_allocations: usize,
    /// The IPv6 prefix length sources are counted by; fixed at start, like the realm.
    pub source_prefix_v6: u8,
    /// Answers to unauthenticated requests (401 and 438 challenges, and other refusals
    /// before a credential is proven) per second per source; `CHALLENGE_BURST_S` seconds'
    /// worth may come at once. Beyond, requests go unanswered: a flood with a victim's
    /// address as its source is not reflected at it.
    pub challenges_per_source_s: u32,
    /// Whether allocations of room members (and, with `fence_room_credentials`, of room
    /// credentials) reach only addresses the room's other members are known by (`fence`).
    pub fence: bool,
    pub fence_room_credentials: bool,
    /// Bytes per second each allocation may relay each way (0: unlimited).
    pub max_allocation_bytes_per_s: u64,
    /// Bytes per second the allocations of one room may relay each way, shared fairly
    /// between them (`budget::fair_shares`; 0: unlimited). Rooms as for the quotas.
    pub max_room_bytes_per_s: u64,
}

/// The rate of a new allocation, `in_room` being the allocations of its room with it (none
/// without a room): an even share of the room's budget, within its own cap.
fn first_rate(config: &CoreConfig, in_room: Option<usize>) -> Rate {
    let own = budget::own_rate(config.max_allocation_bytes_per_s);
    match in_room {
        Some(n) if config.max_room_bytes_per_s > 0 => {
            let share = config.max_room_bytes_per_s / (n.max(1) as u64);
            if own.bytes_per_s != 0 && own.bytes_per_s <= share {
                own
            } else {
                Rate {
                    bytes_per_s: share.max(1),
                    limit: BandwidthLimit::Room,
                }
            }
        }
        _ => own,
    }
}

/// The burst of challenges a source may get at once, in seconds of its rate.
pub const CHALLENGE_BURST_S: u32 = 4;
/// Buckets in the table of challenge rates (see `limiter::SourceRates`).
const CHALLENGE_SLOTS: usize = 4096;

/// XOR-PEER-ADDRESS attributes one CreatePermission may carry. Browsers send one; the cap
/// bounds what one request costs (policy checks, permissions): a 64 KiB request over TCP
/// holds about 5,000. Permissions per allocation are capped by `allocation::MAX_PERMISSIONS`.
const MAX_PEERS_PER_REQUEST: usize = 16;

/// Responses kept per allocation to answer retransmitted requests identically.
const REPLY_CACHE: usize = 8;

/// One allocation: its relay, owner and state.
#[derive(Debug)]
pub struct Allocation<R> {
    pub tuple: FiveTuple,
    /// The address advertised to the client (the external IP when configured).
    pub relayed: SocketAddr,
    /// The address the relay socket is bound to.
    pub local: SocketAddr,
    pub relay: R,
    pub owner: Owner,
    pub username: String,
    /// What the quotas count it under.
    holder: Holder,
    pub state: Mutex<AllocState>,
    replies: Mutex<VecDeque<([u8; 12], Vec<u8>)>>,
    /// Cancelled when the allocation is removed; the relay task stops on it.
    pub closed: CancellationToken,
    /// The room it is fenced to (`turn.fence`), as a key of this process: relay to relay,
    /// data passes only between allocations of the same room, or both unfenced.
    pub fence: Option<u64>,
    /// When it was granted, for its usage's allocation time.
    pub created: Instant,
}

/// Whether data may not pass between allocations fenced as `a` and `b`: one is fenced, and
/// not to the other's room.
#[inline]
pub fn fenced_apart(a: Option<u64>, b: Option<u64>) -> bool {
    (a.is_some() || b.is_some()) && a != b
}

impl<R> Allocation<R> {
    fn cached_reply(&self, tid: &[u8; 12]) -> Option<Vec<u8>> {
        let cache = self.replies.locked();
        cache.iter().find(|(t, _)| t == tid).map(|(_, r)| r.clone())
    }

    /// An allocation in no table, owned by a static user, for tests of the data path
    /// (`turn::route`) that need no requests.
    #[cfg(test)]
    pub(crate) fn detached(tuple: FiveTuple, relayed: SocketAddr, relay: R, now: Instant) -> Self {
        let owner = Owner::Static("test".into());
        let holder = Holder::new(&owner, "test", tuple.client.ip());
        Allocation {
            tuple,
            relayed,
            local: relayed,
            relay,
            owner,
            username: "test".into(),
            holder,
            state: Mutex::new(AllocState::new(now, super::allocation::DEFAULT_LIFETIME)),
            replies: Mutex::new(VecDeque::new()),
            closed: CancellationToken::new(),
            fence: None,
            created: now,
        }
    }

    /// What it relayed each way, and how long it has been held at `now`.
    pub fn usage(&self, now: Instant) -> Usage {
        let state = self.state.locked();
        let flow = |m: &super::budget::Meter| Flow {
            bytes: m.bytes,
            packets: m.packets,
        };
        Usage {
            allocations: 1,
            to_peer: flow(&state.budget.to_peer),
            to_client: flow(&state.budget.to_client),
            held: now.saturating_duration_since(self.created),
            last_closed: None,
        }
    }

    fn remember(&self, tid: [u8; 12], reply: &[u8]) {
        let mut cache = self.replies.locked();
        if cache.len() == REPLY_CACHE {
            cache.pop_front();
        }
        cache.push_back((tid, reply.to_vec()));
    }
}

/// What the I/O layer must do after a STUN message.
pub enum Handled<R> {
    /// Send these bytes back to the client.
    Reply(Vec<u8>),
    /// Send the reply, and start relaying for this new allocation.
    Allocated(Vec<u8>, Arc<Allocation<R>>),
    /// A Send indication: relay `data` to `peer`.
    Send {
        allocation: Arc<Allocation<R>>,
        peer: SocketAddr,
        data: Vec<u8>,
    },
    /// Nothing to send (dropped, counted).
    Nothing,
}

/// A relay port held for a RESERVATION-TOKEN (EVEN-PORT with the R bit): it counts against
/// every quota, as an allocation does, until it is taken or expires.
struct Reservation<R> {
    relay: R,
    local: SocketAddr,
    expires: Instant,
    holder: Holder,
}

/// What `max_allocations_per_credential` counts by.
///
/// A signaling peer counts once in its room, whatever the expiry of the credential it used:
/// it is handed a new one on every join and refresh. Any other credential counts by its whole
/// username, as before: room and REST credentials are minted by a backend, which chose who
/// shares one (a room credential is shared by the room's members, whom the per-room quota
/// bounds; a fixed REST user, or a bare `<expiry>`, may be a whole backend's), and a static
/// user's username is its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CredentialKey {
    Peer(Scope, PeerId),
    Username(String),
}

/// Where one allocation or reservation counts: the keys of its quotas.
#[derive(Debug, Clone)]
struct Holder {
    credential: CredentialKey,
    /// A room of one dialect, never a dialect without rooms.
    room: Option<Scope>,
    /// The allocations that room may hold for this one, when its credential says (a join
    /// token's `allocations`); else `max_allocations_per_room`.
    room_limit: Option<usize>,
    /// The client's IPv4 address, or its IPv6 network (`crate::limiter::source`).
    source: IpAddr,
}

impl Holder {
    fn new(owner: &Owner, username: &str, source: IpAddr) -> Holder {
        let credential = match owner {
            Owner::Peer { scope, peer } => CredentialKey::Peer(scope.clone(), peer.clone()),
            _ => CredentialKey::Username(username.to_owned()),
        };
        // A room credential's room counts with the native room of that name; the
        // plain-WebSocket dialect and users without a room have no per-room bucket.
        let room = match owner {
            Owner::Peer { scope, .. } => scope.room().is_some().then(|| scope.clone()),
            Owner::Room(room) => Some(Scope::native(room.clone())),
            Owner::External(_) | Owner::Static(_) => None,
        };
        Holder {
            credential,
            room,
            source,
            room_limit: None,
        }
    }

    /// With `room_limit` allocations for its room, when given.
    fn within(self, room_limit: Option<usize>) -> Holder {
        Holder { room_limit, ..self }
    }
}

/// The live allocations by 5-tuple and by relayed address, for the data path: a lock-free
/// map (`papaya`), whose reads write nothing shared, so they scale with the cores. It holds
/// weak references: the table owns the allocations, and the index never keeps a removed one
/// (its relay socket) alive, as a lock-free map would until it reclaims the entry. Changed
/// only by `Table::insert` and `Table::remove`, under the table's write lock.
///
/// Hashed with foldhash, seeded per map: a lookup per packet, where SipHash cost more than
/// the rest of the lookup. Relayed addresses are the server's choice; 5-tuples are the
/// client's, but only an authenticated client within its quotas inserts one, and without
/// the seed it cannot choose colliding ones (`foldhash::quality`, as `limiter` keys sources;
/// foldhash does not claim to resist an attacker who times lookups, and collisions would
/// need dozens of such allocations).
///
/// Aligned to its own cache lines: requests write the table's lock beside it.
#[repr(align(128))]
struct Index<R> {
    by_tuple: papaya::HashMap<FiveTuple, Weak<Allocation<R>>, foldhash::quality::RandomState>,
    by_relay: papaya::HashMap<SocketAddr, Weak<Allocation<R>>, foldhash::fast::RandomState>,
}

impl<R> Index<R> {
    fn new() -> Index<R> {
        Index {
            by_tuple: papaya::HashMap::with_hasher(foldhash::quality::RandomState::default()),
            by_relay: papaya::HashMap::with_hasher(foldhash::fast::RandomState::default()),
        }
    }

    #[inline]
    fn get(&self, tuple: &FiveTuple) -> Option<Arc<Allocation<R>>> {
        self.by_tuple.pin().get(tuple).and_then(Weak::upgrade)
    }

    #[inline]
    fn by_relayed(&self, addr: &SocketAddr) -> Option<Arc<Allocation<R>>> {
        self.by_relay.pin().get(addr).and_then(Weak::upgrade)
    }
}

/// The allocation table, with what the quotas count: live allocations and held reservations.
struct Table<R> {
    by_tuple: HashMap<FiveTuple, Arc<Allocation<R>>>,
    by_relay: HashMap<SocketAddr, Arc<Allocation<R>>>,
    /// The allocations of each signaling peer's credentials: a leave or a kick closes them
    /// without a scan of the table, and a peer that never allocated costs nothing.
    by_peer: HashMap<(Scope, PeerId), Vec<FiveTuple>>,
    reservations: HashMap<[u8; 8], Reservation<R>>,
    per_credential: HashMap<CredentialKey, usize>,
    per_room: HashMap<Scope, usize>,
    per_source: HashMap<IpAddr, usize>,
}

impl<R> Table<R> {
    fn insert(&mut self, index: &Index<R>, a: Arc<Allocation<R>>) {
        self.count(&a.holder);
        index.by_relay.pin().insert(a.relayed, Arc::downgrade(&a));
        index.by_tuple.pin().insert(a.tuple, Arc::downgrade(&a));
        if let Some((scope, peer)) = a.owner.peer() {
            let key = (scope.clone(), peer.clone());
            self.by_peer.entry(key).or_default().push(a.tuple);
        }
        self.by_relay.insert(a.relayed, Arc::clone(&a));
        self.by_tuple.insert(a.tuple, a);
    }

    fn remove(&mut self, index: &Index<R>, tuple: &FiveTuple) -> Option<Arc<Allocation<R>>> {
        let a = self.by_tuple.remove(tuple)?;
        index.by_tuple.pin().remove(tuple);
        index.by_relay.pin().remove(&a.relayed);
        if let Some((scope, peer)) = a.owner.peer() {
            let key = (scope.clone(), peer.clone());
            if let Some(tuples) = self.by_peer.get_mut(&key) {
                tuples.retain(|t| t != tuple);
                if tuples.is_empty() {
                    self.by_peer.remove(&key);
                }
            }
        }
        self.by_relay.remove(&a.relayed);
        self.uncount(&a.holder);
        a.closed.cancel();
        Some(a)
    }

    fn reserve(&mut self, token: [u8; 8], reservation: Reservation<R>) {
        self.count(&reservation.holder);
        self.reservations.insert(token, reservation);
    }

    /// Takes the reservation of `token` out of the table and the counts.
    fn take_reservation(&mut self, token: &[u8; 8]) -> Option<Reservation<R>> {
        let r = self.reservations.remove(token)?;
        self.uncount(&r.holder);
        Some(r)
    }

    /// Drops the reservations expired at `now` (their relays close), and their counts.
    fn expire_reservations(&mut self, now: Instant) {
        let expired: Vec<[u8; 8]> = self
            .reservations
            .iter()
            .filter(|(_, r)| now >= r.expires)
            .map(|(token, _)| *token)
            .collect();
        for token in expired {
            self.take_reservation(&token);
        }
    }

    fn count(&mut self, h: &Holder) {
        *self.per_credential.entry(h.credential.clone()).or_default() += 1;
        if let Some(room) = &h.room {
            *self.per_room.entry(room.clone()).or_default() += 1;
        }
        *self.per_source.entry(h.source).or_default() += 1;
    }

    fn uncount(&mut self, h: &Holder) {
        decrement(&mut self.per_credential, &h.credential);
        if let Some(room) = &h.room {
            decrement(&mut self.per_room, room);
        }
        decrement(&mut self.per_source, &h.source);
    }

    /// The quota that `need` more allocations or reservations of `h` would exceed, if any.
    fn over_quota(&self, c: &CoreConfig, h: &Holder, need: usize) -> Option<Quota> {
        let full = |count: Option<&usize>, limit: usize| count.copied().unwrap_or(0) + need > limit;
        let total = self.by_tuple.len() + self.reservations.len();
        if total + need > c.max_allocations {
            Some(Quota::Total)
        } else if full(
            self.per_credential.get(&h.credential),
            c.max_allocations_per_credential,
        ) {
            Some(Quota::Credential)
        } else if h.room.as_ref().is_some_and(|room| {
            let limit = h.room_limit.unwrap_or(c.max_allocations_per_room);
            full(self.per_room.get(room), limit)
        }) {
            Some(Quota::Room)
        } else if full(self.per_source.get(&h.source), c.max_allocations_per_source) {
            Some(Quota::Source)
        } else {
            None
        }
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

pub struct Core<B: RelayBinder> {
    /// Secrets, users and quotas; a reload replaces them (the realm and external IP stay).
    config: ArcSwap<CoreConfig>,
    nonces: NonceKey,
    policy: ArcSwap<PeerPolicy>,
    binder: B,
    membership: Membership,
    /// Allocations, reservations and their counts, under one lock so that the quota check
    /// which allows an insertion and the insertion cannot be split.
    table: RwLock<Table<B::Relay>>,
    /// The live allocations, for the data path; changed only with `table`, under its write lock.
    index: Index<B::Relay>,
    /// Set by a drain: new allocations are refused (508), the live ones run on.
    draining: std::sync::atomic::AtomicBool,
    /// Challenges answered per source (see `CoreConfig::challenges_per_source_s`).
    challenges: SourceRates,
    /// What the members of each room are known by (`turn.fence`).
    fence: RwLock<Fence>,
    /// Keys rooms into `Allocation::fence`.
    fence_keys: std::collections::hash_map::RandomState,
    /// What closed allocations used, by account (`usage`).
    ledger: Mutex<Ledger>,
    /// Told of every allocation that closes (the webhooks), once set.
    closing: std::sync::OnceLock<Arc<dyn Closing>>,
    pub stats: Stats,
}

/// Hears of each allocation that closes, with what it used. Called on the path that closed
/// it (a request, the sweep, a revocation), so it must not wait.
pub trait Closing: Send + Sync {
    fn closed(&self, owner: &Owner, transport: Transport, reason: CloseReason, usage: &Usage);
}

/// A request that passed authentication.
struct Authed {
    username: String,
    key: Vec<u8>,
    owner: Owner,
    /// The allocations its room may hold, when its credential says (a join token's).
    room_allocations: Option<usize>,
}

impl<B: RelayBinder> Core<B> {
    /// Tells `closing` of every allocation that closes from now on (once: later calls are
    /// ignored).
    pub fn on_close(&self, closing: Arc<dyn Closing>) {
        let _ = self.closing.set(closing);
    }

    /// Refuses new allocations from now on (508); the live ones run until they end.
    pub fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn new(
        config: CoreConfig,
        nonces: NonceKey,
        policy: PeerPolicy,
        binder: B,
        membership: Membership,
    ) -> Core<B> {
        let challenges = SourceRates::new(
            CHALLENGE_SLOTS,
            config.challenges_per_source_s,
            config
                .challenges_per_source_s
                .saturating_mul(CHALLENGE_BURST_S),
            config.source_prefix_v6,
        );
        Core {
            challenges,
            draining: std::sync::atomic::AtomicBool::new(false),
            config: ArcSwap::from_pointee(config),
            nonces,
            policy: ArcSwap::from_pointee(policy),
            binder,
            membership,
            fence: RwLock::default(),
            fence_keys: std::collections::hash_map::RandomState::new(),
            ledger: Mutex::default(),
            closing: std::sync::OnceLock::new(),
            index: Index::new(),
            table: RwLock::new(Table {
                by_tuple: HashMap::new(),
                by_relay: HashMap::new(),
                by_peer: HashMap::new(),
                reservations: HashMap::new(),
                per_credential: HashMap::new(),
                per_room: HashMap::new(),
                per_source: HashMap::new(),
            }),
            stats: Stats::default(),
        }
    }

    /// Takes new secrets, static users and quotas, and new peer allow/deny lists, for the
    /// requests that come next. Live allocations stay, but lose the permissions and channels
    /// whose peer the new lists refuse; the realm, external IP and source prefix do not change.
    pub fn reconfigure(&self, mut config: CoreConfig, allow: Vec<Cidr>, deny: Vec<Cidr>) {
        let old = self.config.load();
        config.realm.clone_from(&old.realm);
        config.external_ip = old.external_ip;
        // Live counts are keyed by sources under the old prefix (a restart applies a new one).
        config.source_prefix_v6 = old.source_prefix_v6;
        // Allocations are fenced from their start.
        config.fence = old.fence;
        config.fence_room_credentials = old.fence_room_credentials;
        self.challenges.set_rate(
            config.challenges_per_source_s,
            config
                .challenges_per_source_s
                .saturating_mul(CHALLENGE_BURST_S),
        );
        self.config.store(Arc::new(config));
        self.policy
            .store(Arc::new(self.policy.load().with_lists(allow, deny)));
        let table = self.table.reading();
        let policy = self.policy.load();
        let mut total = Revoked::default();
        for a in table.by_tuple.values() {
            let mut state = a.state.locked();
            let revoked = self.recheck(&table, &policy, &mut state);
            total.permissions += revoked.permissions;
            total.channels += revoked.channels;
        }
        if total != Revoked::default() {
            info!(
                permissions = total.permissions,
                channels = total.channels,
                "the new peer policy removed live permissions and channels"
            );
        }
    }

    /// Applies the current policy to the permissions and channels of one allocation, and
    /// counts what it removes.
    fn recheck(
        &self,
        table: &Table<B::Relay>,
        policy: &PeerPolicy,
        state: &mut AllocState,
    ) -> Revoked {
        let revoked = state.revoke(
            |ip| policy.reach_of(ip),
            |peer| {
                policy
                    .check(peer, table.by_relay.contains_key(&peer))
                    .is_ok()
            },
        );
        let stats = &self.stats.policy_revocations;
        stats.add(Revocation::Permission, revoked.permissions as u64);
        stats.add(Revocation::Channel, revoked.channels as u64);
        revoked
    }

    /// Handles one STUN message from a client.
    pub fn handle_stun(
        &self,
        now: Instant,
        unix: u64,
        tuple: FiveTuple,
        bytes: &[u8],
    ) -> Handled<B::Relay> {
        // Counted before decoding, which allocates per attribute: no request of these
        // methods needs more, and a 64 KiB datagram of empty attributes holds 16,000.
        if wire::attribute_count(bytes).is_none_or(|n| n > wire::MAX_ATTRIBUTES) {
            self.stats.malformed.inc();
            return Handled::Nothing;
        }
        let mut msg = Message::new();
        msg.raw = bytes.to_vec();
        if msg.decode().is_err() {
            self.stats.malformed.inc();
            return Handled::Nothing;
        }
        if msg.contains(stun::attributes::ATTR_FINGERPRINT)
            && stun::fingerprint::FINGERPRINT.check(&msg).is_err()
        {
            self.stats.malformed.inc();
            return Handled::Nothing;
        }
        // From here on every read of the message sees only what MESSAGE-INTEGRITY covers.
        if wire::cut_after_integrity(&mut msg) {
            self.stats
                .protocol_refusals
                .inc(ProtocolRule::AfterIntegrity);
            debug!(client = %tuple.client, "attributes after MESSAGE-INTEGRITY ignored");
        }
        if msg.typ.class == CLASS_INDICATION {
            if msg.typ.method != METHOD_SEND {
                return Handled::Nothing;
            }
            // RFC 8489 section 6.3.2: an indication with an unknown comprehension-required
            // attribute is dropped, as it cannot be answered.
            if !wire::unknown_required(&msg).is_empty() {
                self.stats
                    .protocol_refusals
                    .inc(ProtocolRule::UnknownInIndication);
                return Handled::Nothing;
            }
            return self.handle_send(now, tuple, &msg);
        }
        if msg.typ.class != CLASS_REQUEST {
            return Handled::Nothing;
        }
        if msg.typ.method == METHOD_BINDING {
            let reply = match self.unknown_attributes(&msg, None) {
                Some(refusal) => refusal,
                None => binding_response(&msg, tuple.client),
            };
            return self.unauthenticated(now, tuple, reply);
        }
        let existing = self.get(&tuple);
        if let Some(a) = &existing
            && let Some(reply) = a.cached_reply(&msg.transaction_id.0)
        {
            return Handled::Reply(reply);
        }
        let known = [
            METHOD_ALLOCATE,
            METHOD_REFRESH,
            METHOD_CREATE_PERMISSION,
            METHOD_CHANNEL_BIND,
        ];
        if !known.contains(&msg.typ.method) {
            let reply = wire::response(
                &msg,
                CLASS_ERROR_RESPONSE,
                vec![wire::error_code(400)],
                None,
            );
            return self.unauthenticated(now, tuple, reply);
        }
        let authed = match self.authenticate(&mut msg, tuple, unix, existing.as_deref()) {
            Ok(a) => a,
            Err((failure, reply)) => {
                if let Some(f) = failure {
                    self.stats.auth_failures.inc(f);
                }
                return self.unauthenticated(now, tuple, reply);
            }
        };
        // After authentication, as RFC 8489 section 6.3 orders it: the 420 carries MESSAGE-INTEGRITY.
        let handled = if let Some(refusal) = self.unknown_attributes(&msg, Some(&authed.key)) {
            Handled::Reply(refusal)
        } else {
            match msg.typ.method {
                METHOD_ALLOCATE => self.handle_allocate(now, tuple, &msg, authed, existing),
                METHOD_REFRESH => self.handle_refresh(now, tuple, &msg, &authed, existing),
                METHOD_CREATE_PERMISSION => {
                    self.handle_create_permission(now, &msg, &authed, existing)
                }
                _ => self.handle_channel_bind(now, &msg, &authed, existing),
            }
        };
        if let (Handled::Reply(reply), Some(a)) = (&handled, self.get(&tuple)) {
            a.remember(msg.transaction_id.0, reply);
        }
        handled
    }

    /// A 420 listing the comprehension-required attributes of a request that this server does
    /// not understand, if it has any (RFC 8489 section 6.3.1); counted.
    /// An answer to a request that proved nothing (Binding, a challenge, a refusal before
    /// authentication): sent while its source has answers left, so that a flood with a
    /// forged source is not reflected at it (`CoreConfig::challenges_per_source_s`).
    fn unauthenticated(&self, now: Instant, tuple: FiveTuple, reply: Vec<u8>) -> Handled<B::Relay> {
        if self.challenges.allow(tuple.client.ip(), now) {
            Handled::Reply(reply)
        } else {
            self.stats.challenge_drops.inc();
            Handled::Nothing
        }
    }

    fn unknown_attributes(&self, msg: &Message, key: Option<&[u8]>) -> Option<Vec<u8>> {
        let unknown = wire::unknown_required(msg);
        if unknown.is_empty() {
            return None;
        }
        self.stats
            .protocol_refusals
            .inc(ProtocolRule::UnknownAttribute);
        debug!(
            ?unknown,
            "request with unknown comprehension-required attributes"
        );
        Some(unknown_reply(msg, unknown, key))
    }

    fn authenticate(
        &self,
        msg: &mut Message,
        tuple: FiveTuple,
        unix: u64,
        existing: Option<&Allocation<B::Relay>>,
    ) -> Result<Authed, (Option<AuthFailure>, Vec<u8>)> {
        let ip = tuple.client.ip();
        let config = self.config.load();
        let challenge = |msg: &Message, code: u16| {
            let realm = TextAttribute::new(ATTR_REALM, config.realm.clone());
            let nonce = TextAttribute::new(ATTR_NONCE, self.nonces.issue(unix, ip));
            wire::response(
                msg,
                CLASS_ERROR_RESPONSE,
                vec![wire::error_code(code), Box::new(realm), Box::new(nonce)],
                None,
            )
        };
        if !msg.contains(ATTR_MESSAGE_INTEGRITY) {
            // The first request of every client: answered with a nonce, not a failure.
            return Err((None, challenge(msg, 401)));
        }
        let text = |attr| TextAttribute::get_from_as(msg, attr).map(|t| t.text);
        let (Ok(username), Ok(realm), Ok(nonce)) =
            (text(ATTR_USERNAME), text(ATTR_REALM), text(ATTR_NONCE))
        else {
            return Err((
                Some(AuthFailure::BadRequest),
                wire::response(msg, CLASS_ERROR_RESPONSE, vec![wire::error_code(400)], None),
            ));
        };
        if self.nonces.check(&nonce, unix, ip) != NonceCheck::Valid {
            return Err((Some(AuthFailure::StaleNonce), challenge(msg, 438)));
        }
        if realm != config.realm {
            debug!(client = %tuple.client, "TURN request for another realm");
            return Err((Some(AuthFailure::WrongRealm), challenge(msg, 401)));
        }
        let Ok(candidate) = auth::lookup(&username, &config.secrets, &config.static_users) else {
            debug!(client = %tuple.client, "unknown TURN username");
            return Err((Some(AuthFailure::UnknownUser), challenge(msg, 401)));
        };
        let key = candidate.passwords.iter().find_map(|password| {
            let key = auth::long_term_key(&username, &realm, password);
            stun::integrity::MessageIntegrity(key.clone())
                .check(msg)
                .ok()
                .map(|()| key)
        });
        let Some(key) = key else {
            debug!(client = %tuple.client, "wrong TURN credential");
            return Err((Some(AuthFailure::BadIntegrity), challenge(msg, 401)));
        };
        // An existing allocation belongs to the credential that made it.
        if let Some(a) = existing
            && a.username != username
        {
            return Err((
                Some(AuthFailure::WrongCredential),
                wire::response(
                    msg,
                    CLASS_ERROR_RESPONSE,
                    vec![wire::error_code(441)],
                    Some(&key),
                ),
            ));
        }
        let expired = candidate.expires.is_some_and(|e| e < unix);
        let member = candidate
            .owner
            .peer()
            .is_none_or(|(scope, peer)| (self.membership)(scope, peer));
        // A new allocation needs a live credential and, for a peer credential, a peer still in its room.
        // An existing one may be refreshed past expiry while its peer stays (long calls never drop).
        let ok = member && (!expired || existing.is_some());
        if !ok {
            debug!(client = %tuple.client, expired, member, "TURN credential no longer valid");
            let failure = if member {
                AuthFailure::Expired
            } else {
                AuthFailure::NotInRoom
            };
            return Err((Some(failure), challenge(msg, 401)));
        }
        Ok(Authed {
            username,
            key,
            owner: candidate.owner,
            room_allocations: candidate.room_allocations,
        })
    }

    fn handle_allocate(
        &self,
        now: Instant,
        tuple: FiveTuple,
        msg: &Message,
        authed: Authed,
        existing: Option<Arc<Allocation<B::Relay>>>,
    ) -> Handled<B::Relay> {
        let error = |code, why| refuse(msg, code, &authed.key, why);
        if existing.is_some() {
            return error(437, "allocation exists");
        }
        if self.draining.load(std::sync::atomic::Ordering::Acquire) {
            // Insufficient Capacity: a client tries its next TURN server.
            return error(508, "this server is draining");
        }
        let mut transport = turn::proto::reqtrans::RequestedTransport::default();
        if transport.get_from(msg).is_err() {
            return error(400, "no REQUESTED-TRANSPORT");
        }
        if transport.protocol != turn::proto::PROTO_UDP {
            return error(442, "transport not UDP");
        }
        let (ipv6, additional_ipv6) = match allocate_families(msg) {
            Ok(families) => families,
            Err((code, why)) => {
                self.stats
                    .protocol_refusals
                    .inc(ProtocolRule::AddressFamily);
                return error(code, why);
            }
        };
        let even_port = msg.get(stun::attributes::ATTR_EVEN_PORT).ok();
        let token = msg.get(stun::attributes::ATTR_RESERVATION_TOKEN).ok();
        if even_port.is_some() && token.is_some() {
            return error(400, "EVEN-PORT with RESERVATION-TOKEN");
        }
        let token: Option<[u8; 8]> = match token.map(|t| <[u8; 8]>::try_from(t.as_slice())) {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(_)) => return error(400, "bad RESERVATION-TOKEN"),
        };
        let reserve_next = even_port
            .as_ref()
            .is_some_and(|v| v.first().is_some_and(|b| b & 0x80 != 0));
        let mut lifetime = turn::proto::lifetime::Lifetime::default();
        let requested = lifetime.get_from(msg).ok().map(|()| lifetime.0);
        let granted = granted_lifetime(requested);
        let config = self.config.load();
        let source = crate::limiter::source(tuple.client.ip(), config.source_prefix_v6);
        let holder =
            Holder::new(&authed.owner, &authed.username, source).within(authed.room_allocations);
        // The allocation, and the reserved next port: every quota counts both.
        let need = 1 + usize::from(reserve_next);
        let refused = |quota: Quota| {
            self.stats.quota_refusals.inc(quota);
            info!(client = %tuple.client, limit = quota.as_str(), "allocation refused by quota");
            // 508 when the server is full, 486 for a quota of this user, room or source.
            if quota == Quota::Total {
                error(508, "total quota")
            } else {
                error(486, "allocation quota")
            }
        };
        let bound = match token {
            Some(token) => match self.take_reservation(&token, now, &config, &holder) {
                Ok(pair) => Ok(pair),
                Err(Some(quota)) => return refused(quota),
                Err(None) => Err("no such reservation"),
            },
            None => {
                // Checked before binding, so that a client over its quota costs no bind;
                // checked again when inserting, which decides.
                let quota = {
                    let mut table = self.table.writing();
                    table.expire_reservations(now);
                    table.over_quota(&config, &holder, need)
                };
                if let Some(quota) = quota {
                    return refused(quota);
                }
                let choice = if even_port.is_some() {
                    PortChoice::Even
                } else {
                    PortChoice::Any
                };
                self.binder.bind(ipv6, choice).map_err(|e| {
                    info!(error = %e, "cannot bind a relay socket");
                    "relay bind failed"
                })
            }
        };
        let (relay, local) = match bound {
            Ok(pair) => pair,
            Err(why) => return error(if ipv6 && token.is_none() { 440 } else { 508 }, why),
        };
        // DONT-FRAGMENT is honoured rather than refused: one socket option, and a client that
        // asks (coturn's uclient -g, a path-MTU probe through the relay) learns the path MTU
        // instead of having its datagrams fragmented. Browsers do not send it. Where the option
        // cannot be set, RFC 8656 section 7.2 has the attribute treated as unknown: 420.
        if msg.contains(ATTR_DONT_FRAGMENT)
            && let Err(e) = self.binder.dont_fragment(&relay)
        {
            debug!(error = %e, "cannot set don't-fragment on a relay");
            self.stats
                .protocol_refusals
                .inc(ProtocolRule::DontFragmentUnsupported);
            return Handled::Reply(unknown_reply(
                msg,
                vec![ATTR_DONT_FRAGMENT],
                Some(&authed.key),
            ));
        }
        let mut reservation = None;
        if reserve_next {
            let Ok((next, next_addr)) = self
                .binder
                .bind(ipv6, PortChoice::Exactly(local.port() + 1))
            else {
                return error(508, "the next port is taken");
            };
            let mut t = [0u8; 8];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut t);
            let held = Reservation {
                relay: next,
                local: next_addr,
                expires: now + RESERVATION_LIFETIME,
                holder: holder.clone(),
            };
            reservation = Some((t, held));
        }
        let relayed = match config.external_ip {
            Some(ip) if ip.is_ipv6() == ipv6 => SocketAddr::new(ip, local.port()),
            _ => local,
        };
        let relayed_attr = turn::proto::relayaddr::RelayedAddress {
            ip: relayed.ip(),
            port: relayed.port(),
        };
        let mut attrs: Vec<Box<dyn Setter>> = vec![
            Box::new(relayed_attr),
            Box::new(turn::proto::lifetime::Lifetime(granted)),
            Box::new(stun::xoraddr::XorMappedAddress {
                ip: tuple.client.ip(),
                port: tuple.client.port(),
            }),
        ];
        if let Some((t, _)) = &reservation {
            attrs.push(Box::new(turn::proto::rsrvtoken::ReservationToken(
                t.to_vec(),
            )));
        }
        if additional_ipv6 {
            // No dual allocations here: the IPv4 relay is granted and the IPv6 one refused,
            // as RFC 8656 section 7.2 step 9 allows for a request the server can meet in part.
            self.stats
                .protocol_refusals
                .inc(ProtocolRule::AdditionalFamily);
            attrs.push(wire::address_error_code(FAMILY_IPV6, 440));
        }
        let reply = wire::response(msg, CLASS_SUCCESS_RESPONSE, attrs, Some(&authed.key));
        let fenced = fenced_to(&config, &authed.owner);
        let fence = fenced
            .as_ref()
            .map(|(scope, _)| std::hash::BuildHasher::hash_one(&self.fence_keys, scope));
        let allocation = Arc::new(Allocation {
            tuple,
            relayed,
            local,
            relay,
            owner: authed.owner,
            username: authed.username,
            holder,
            state: Mutex::new(AllocState::new(now, granted)),
            replies: Mutex::new(VecDeque::new()),
            closed: CancellationToken::new(),
            fence,
            created: now,
        });
        allocation.remember(msg.transaction_id.0, &reply);
        {
            let mut table = self.table.writing();
            if table.by_tuple.contains_key(&tuple) {
                // A concurrent retransmission won the race; keep the first.
                return error(437, "allocation raced");
            }
            // Another Allocate may have taken the last slot since the first check (a taken
            // reservation is lost then: its relay closes with this one).
            table.expire_reservations(now);
            if let Some(quota) = table.over_quota(&config, &allocation.holder, need) {
                drop(table);
                return refused(quota);
            }
            if let Some((t, held)) = reservation {
                table.reserve(t, held);
            }
            table.insert(&self.index, Arc::clone(&allocation));
            // Its share of its room until the sweep weighs what each uses.
            let in_room = allocation
                .holder
                .room
                .as_ref()
                .map(|room| table.per_room[room]);
            let rate = first_rate(&config, in_room);
            allocation.state.locked().budget = Budget::new(rate.bytes_per_s, rate.limit, now);
        }
        // The others of its room may reach it where it is: its address as this server sees
        // it, and its relay.
        if let Some((scope, Some(peer))) = &fenced {
            self.fence
                .writing()
                .announce(scope, peer, [tuple.client.ip(), relayed.ip()]);
        }
        self.stats.allocations_created.inc(tuple.transport);
        info!(client = %tuple.client, transport = tuple.transport.as_str(), %relayed, lifetime_s = granted.as_secs(), owner = ?owner_label(&allocation.owner), "allocation created");
        Handled::Allocated(reply, allocation)
    }

    fn handle_refresh(
        &self,
        now: Instant,
        tuple: FiveTuple,
        msg: &Message,
        authed: &Authed,
        existing: Option<Arc<Allocation<B::Relay>>>,
    ) -> Handled<B::Relay> {
        let Some(a) = existing else {
            return Handled::Reply(wire::response(
                msg,
                CLASS_ERROR_RESPONSE,
                vec![wire::error_code(437)],
                Some(&authed.key),
            ));
        };
        // RFC 8656 section 7.3: a Refresh naming the other family than the allocation's is refused.
        if let Ok(family) = msg.get(ATTR_REQUESTED_ADDRESS_FAMILY) {
            let ours = if a.local.is_ipv6() {
                FAMILY_IPV6
            } else {
                FAMILY_IPV4
            };
            if family.first() != Some(&ours) {
                self.stats
                    .protocol_refusals
                    .inc(ProtocolRule::RefreshFamily);
                return refuse(msg, 443, &authed.key, "Refresh for another address family");
            }
        }
        let mut lifetime = turn::proto::lifetime::Lifetime::default();
        let requested = lifetime.get_from(msg).ok().map(|()| lifetime.0);
        let granted = if requested == Some(Duration::ZERO) {
            Duration::ZERO
        } else {
            granted_lifetime(requested)
        };
        let reply = wire::response(
            msg,
            CLASS_SUCCESS_RESPONSE,
            vec![Box::new(turn::proto::lifetime::Lifetime(granted))],
            Some(&authed.key),
        );
        if granted.is_zero() {
            a.remember(msg.transaction_id.0, &reply);
            self.close(&tuple, CloseReason::Refresh, now);
        } else {
            a.state.locked().refresh(now, granted);
        }
        Handled::Reply(reply)
    }

    fn handle_create_permission(
        &self,
        now: Instant,
        msg: &Message,
        authed: &Authed,
        existing: Option<Arc<Allocation<B::Relay>>>,
    ) -> Handled<B::Relay> {
        let error = |code, why| refuse(msg, code, &authed.key, why);
        let Some(a) = existing else {
            return error(437, "no allocation");
        };
        let count = msg
            .attributes
            .0
            .iter()
            .filter(|a| a.typ == stun::attributes::ATTR_XOR_PEER_ADDRESS)
            .count();
        if count > MAX_PEERS_PER_REQUEST {
            // 508, not 400: the request is well formed, and RFC 8656 section 9.2 answers
            // permissions that the server cannot all install with 508.
            self.stats
                .permission_refusals
                .inc(PermissionLimit::PeersPerRequest);
            return error(508, "too many peers in one request");
        }
        let peers = match wire::peer_addresses(msg) {
            Some(p) if !p.is_empty() => p,
            _ => return error(400, "no XOR-PEER-ADDRESS"),
        };
        let mut granted = Vec::with_capacity(peers.len());
        for peer in &peers {
            match self.check_peer(&a, *peer) {
                Ok(reach) => granted.push((*peer, reach)),
                Err((code, why)) => return error(code, why),
            }
        }
        let installed = a.state.locked().permit_all(now, &granted);
        if installed.is_err() {
            // RFC 8656 section 9.2: permissions that cannot all be installed get 508.
            self.stats
                .permission_refusals
                .inc(PermissionLimit::PerAllocation);
            return error(508, "permissions full");
        }
        self.stats.permissions_created.add(peers.len() as u64);
        Handled::Reply(wire::response(
            msg,
            CLASS_SUCCESS_RESPONSE,
            vec![],
            Some(&authed.key),
        ))
    }

    fn handle_channel_bind(
        &self,
        now: Instant,
        msg: &Message,
        authed: &Authed,
        existing: Option<Arc<Allocation<B::Relay>>>,
    ) -> Handled<B::Relay> {
        let error = |code, why| refuse(msg, code, &authed.key, why);
        let Some(a) = existing else {
            return error(437, "no allocation");
        };
        let mut number = turn::proto::channum::ChannelNumber::default();
        let peers = wire::peer_addresses(msg);
        let (Ok(()), Some([peer])) = (number.get_from(msg), peers.as_deref()) else {
            return error(400, "missing CHANNEL-NUMBER or XOR-PEER-ADDRESS");
        };
        let reach = match self.check_peer(&a, *peer) {
            Ok(reach) => reach,
            Err((code, why)) => return error(code, why),
        };
        let bound = a.state.locked().bind_channel(now, number.0, *peer, reach);
        if let Err(e) = bound {
            debug!(number = format!("{:#06x}", number.0), %peer, error = ?e, "channel bind refused");
            return match e {
                ChannelBindError::PermissionsFull => {
                    self.stats
                        .permission_refusals
                        .inc(PermissionLimit::PerAllocation);
                    error(508, "permissions full")
                }
                _ => error(400, "channel binding rules"),
            };
        }
        self.stats.channels_bound.inc();
        Handled::Reply(wire::response(
            msg,
            CLASS_SUCCESS_RESPONSE,
            vec![],
            Some(&authed.key),
        ))
    }

    fn handle_send(&self, now: Instant, tuple: FiveTuple, msg: &Message) -> Handled<B::Relay> {
        let Some(a) = self.get(&tuple) else {
            return Handled::Nothing;
        };
        let peers = wire::peer_addresses(msg);
        let (Some([peer]), Ok(data)) = (peers.as_deref(), msg.get(ATTR_DATA)) else {
            self.stats.malformed.inc();
            return Handled::Nothing;
        };
        let peer = *peer;
        // The same check as for data from the peer: a permission for the IP, and on an
        // address of the server's relays, a live relay...
        let permission = a.state.locked().permission(now, peer);
        let Some(reach) = permission.filter(|reach| match reach {
            Reach::Relays => self.relay_at(&peer, a.fence) == RelayAt::Reachable,
            // A relay of another room is out of reach there too.
            Reach::OwnIp => self.relay_at(&peer, a.fence) != RelayAt::Fenced,
            Reach::AnyPort => true,
        }) else {
            self.stats.no_permission.inc();
            return Handled::Nothing;
        };
        // ...and on an own address that allow_peers re-admits, the policy's, as for ChannelBind:
        // not a listener.
        if reach == Reach::OwnIp
            && let Err(refused) = self.policy.load().check(peer, false)
        {
            self.stats.policy_refusals.inc(refused.class);
            debug!(%peer, class = refused.class, "Send indication refused by policy");
            return Handled::Nothing;
        }
        let charged = a.state.locked().budget.to_peer.pass(now, data.len());
        if let Err(limit) = charged {
            self.stats
                .budget_drops
                .add(Direction::ToPeer, limit, data.len());
            return Handled::Nothing;
        }
        Handled::Send {
            allocation: a,
            peer,
            data,
        }
    }

    /// Takes the relay reserved under `token` for an allocation counted as `holder`:
    /// `Err(None)` when there is no such reservation (or it expired), `Err(Some(quota))` when
    /// the allocation would exceed a quota even with the reservation's own slot freed (the
    /// reservation then stays).
    fn take_reservation(
        &self,
        token: &[u8; 8],
        now: Instant,
        config: &CoreConfig,
        holder: &Holder,
    ) -> Result<(B::Relay, SocketAddr), Option<Quota>> {
        let mut table = self.table.writing();
        table.expire_reservations(now);
        let held = table.take_reservation(token).ok_or(None)?;
        if let Some(quota) = table.over_quota(config, holder, 1) {
            table.reserve(*token, held);
            return Err(Some(quota));
        }
        Ok((held.relay, held.local))
    }

    /// Refuses a peer of the other address family than the relay (443), refused by policy or
    /// outside the allocation's room fence (403); else says how much of its IP the
    /// permission opens.
    fn check_peer(
        &self,
        a: &Allocation<B::Relay>,
        peer: SocketAddr,
    ) -> Result<Reach, (u16, &'static str)> {
        let relayed = a.relayed;
        // The family as written and of the address reached (an IPv4-mapped or -compatible
        // IPv6 form reaches IPv4) must both be the relay's.
        let reached = super::policy::normalize(peer.ip());
        if peer.is_ipv4() != relayed.is_ipv4() || reached.is_ipv4() != relayed.is_ipv4() {
            return Err((443, "peer family mismatch"));
        }
        let is_relay = self.index.by_relayed(&peer).is_some();
        let reach = self
            .policy
            .load()
            .check(peer, is_relay)
            .map_err(|refused| {
                self.stats.policy_refusals.inc(refused.class);
                info!(%peer, class = refused.class, "peer address refused by policy");
                (403, "peer refused by policy")
            })?;
        if a.fence.is_some()
            && let Some((scope, requester)) = fenced_to(&self.config.load(), &a.owner)
            && !self
                .fence
                .reading()
                .admits(&scope, requester.as_ref(), peer.ip())
        {
            self.stats.policy_refusals.inc(FENCE_CLASS);
            info!(%peer, %scope, "peer address outside the room's fence");
            return Err((403, "peer outside the room"));
        }
        Ok(reach)
    }

    /// `peer` of `scope` is known by `ips` too (its signaling connection's address, the
    /// addresses of the ICE candidates it sent): the others of its room may reach them.
    pub fn announce(&self, scope: &Scope, peer: &PeerId, ips: &[IpAddr]) {
        if !self.config.load().fence || scope.room().is_none() || ips.is_empty() {
            return;
        }
        // Mostly what it was known by already (every candidate of a call repeats its
        // addresses): a read lock says so, without the write lock.
        if self.fence.reading().knows(scope, peer, ips) {
            return;
        }
        self.fence
            .writing()
            .announce(scope, peer, ips.iter().copied());
    }

    /// Forgets what `peer` of `scope` was known by: it left and its allocations closed.
    pub fn forget(&self, scope: &Scope, peer: &PeerId) {
        if self.config.load().fence {
            self.fence.writing().forget(scope, peer);
        }
    }

    /// Whether the fence is on (`turn.fence`).
    pub fn fenced(&self) -> bool {
        self.config.load().fence
    }

    /// The allocation of `tuple`.
    pub fn get(&self, tuple: &FiveTuple) -> Option<Arc<Allocation<B::Relay>>> {
        self.index.get(tuple)
    }

    /// The live allocation whose relayed address is `addr` (for relay-to-relay).
    /// Whether a live relay is at `addr`, and whether an allocation fenced as `fence` may
    /// exchange data with it.
    #[inline]
    pub fn relay_at(&self, addr: &SocketAddr, fence: Option<u64>) -> RelayAt {
        match self.index.by_relayed(addr) {
            None => RelayAt::Nothing,
            Some(other) if fenced_apart(fence, other.fence) => RelayAt::Fenced,
            Some(_) => RelayAt::Reachable,
        }
    }

    pub fn by_relayed(&self, addr: &SocketAddr) -> Option<Arc<Allocation<B::Relay>>> {
        self.index.by_relayed(addr)
    }

    /// Removes the allocation of `tuple` at `now`.
    pub fn close(&self, tuple: &FiveTuple, reason: CloseReason, now: Instant) -> bool {
        let removed = self.table.writing().remove(&self.index, tuple);
        if let Some(a) = &removed {
            self.stats.allocations_closed.inc(reason);
            let usage = a.usage(now);
            if let Some(account) = Account::of(&a.owner) {
                self.ledger.locked().record(account, &usage, now);
            }
            if let Some(closing) = self.closing.get() {
                closing.closed(&a.owner, a.tuple.transport, reason, &usage);
            }
            info!(
                client = %a.tuple.client,
                relayed = %a.relayed,
                reason = reason.as_str(),
                to_peer_bytes = usage.to_peer.bytes,
                to_client_bytes = usage.to_client.bytes,
                held_s = usage.held.as_secs(),
                "allocation closed"
            );
        }
        removed.is_some()
    }

    /// Removes every allocation owned by `peer` in exactly `scope` (its dialect and room), and
    /// forgets what the fence knew it by.
    pub fn close_peer(
        &self,
        scope: &Scope,
        peer: &PeerId,
        reason: CloseReason,
        now: Instant,
    ) -> usize {
        self.forget(scope, peer);
        let tuples: Vec<FiveTuple> = {
            let table = self.table.reading();
            let key = (scope.clone(), peer.clone());
            table.by_peer.get(&key).cloned().unwrap_or_default()
        };
        tuples.iter().filter(|t| self.close(t, reason, now)).count()
    }

    /// Whether `peer`'s credentials in `scope` hold any allocation.
    pub fn has_peer(&self, scope: &Scope, peer: &PeerId) -> bool {
        let key = (scope.clone(), peer.clone());
        self.table.reading().by_peer.contains_key(&key)
    }

    /// Removes every allocation scoped to `room` (peer and room credentials). The admin API
    /// closes a room by name without a dialect, so this takes the native and the socket.io
    /// room of that name alike (as the admin API runs `Dialect::close_room` in every dialect).
    pub fn close_room(&self, room: &RoomId, reason: CloseReason, now: Instant) -> usize {
        if self.config.load().fence {
            self.fence.writing().forget_room(room);
        }
        let tuples: Vec<FiveTuple> = {
            let table = self.table.reading();
            table
                .by_tuple
                .values()
                .filter(|a| a.owner.room() == Some(room))
                .map(|a| a.tuple)
                .collect()
        };
        tuples.iter().filter(|t| self.close(t, reason, now)).count()
    }

    /// What each account's allocations used, the live ones up to `now` and those closed
    /// within `Ledger::KEEP` (or since, while the account holds a live one).
    pub fn usage(&self, now: Instant) -> HashMap<Account, Usage> {
        let live: Vec<Arc<Allocation<B::Relay>>> =
            self.table.reading().by_tuple.values().cloned().collect();
        let mut usage: HashMap<Account, Usage> = self
            .ledger
            .locked()
            .iter()
            .map(|(a, u)| (a.clone(), *u))
            .collect();
        for a in live {
            if let Some(account) = Account::of(&a.owner) {
                usage.entry(account).or_default().add(&a.usage(now));
            }
        }
        usage
    }

    /// Removes expired allocations and reservations, and sweeps permissions and channels.
    pub fn sweep(&self, now: Instant) -> usize {
        let held = !self.table.reading().reservations.is_empty();
        if held {
            self.table.writing().expire_reservations(now);
        }
        let config = self.config.load();
        let expired: Vec<FiveTuple> = {
            let table = self.table.reading();
            let expired = table
                .by_tuple
                .values()
                .filter_map(|a| {
                    let mut state = a.state.locked();
                    state.sweep(now);
                    state.is_expired(now).then_some(a.tuple)
                })
                .collect();
            share_budgets(&config, table.by_tuple.values(), now);
            expired
        };
        let closed = expired
            .iter()
            .filter(|t| self.close(t, CloseReason::Expired, now))
            .count();
        if self.ledger.locked().due(now) {
            let live: std::collections::HashSet<Account> = self
                .table
                .reading()
                .by_tuple
                .values()
                .filter_map(|a| Account::of(&a.owner))
                .collect();
            // A peer still in its room keeps its usage however long ago its relay closed.
            let member = |account: &Account| match account {
                Account::Peer(scope, peer) => (self.membership)(scope, peer),
                Account::Room(_) => false,
            };
            self.ledger
                .locked()
                .prune(now, |account| live.contains(account) || member(account));
        }
        closed
    }

    /// Removes every allocation, for shutdown.
    pub fn close_all(&self, now: Instant) {
        let tuples: Vec<FiveTuple> = self.table.reading().by_tuple.keys().copied().collect();
        for t in tuples {
            self.close(&t, CloseReason::Shutdown, now);
        }
    }

    pub fn allocation_count(&self) -> usize {
        self.table.reading().by_tuple.len()
    }

    /// Panics unless the data path's index finds exactly the table's allocations, by
    /// 5-tuple and by relayed address (tests call it after every request).
    #[cfg(test)]
    pub(crate) fn assert_index_matches_table(&self) {
        let table = self.table.reading();
        let tuples = self.index.by_tuple.pin();
        let relays = self.index.by_relay.pin();
        assert_eq!(tuples.len(), table.by_tuple.len(), "index by 5-tuple");
        assert_eq!(
            relays.len(),
            table.by_relay.len(),
            "index by relayed address"
        );
        for (tuple, a) in &table.by_tuple {
            let found = tuples.get(tuple).and_then(Weak::upgrade);
            assert!(found.is_some_and(|f| Arc::ptr_eq(&f, a)), "{tuple:?}");
            let found = relays.get(&a.relayed).and_then(Weak::upgrade);
            assert!(found.is_some_and(|f| Arc::ptr_eq(&f, a)), "{}", a.relayed);
        }
    }
}

/// Sets every allocation's rates for the next second: its own cap, or within a room with a
/// budget, its fair share of the room given what each of the room's allocations did in the
/// last one (`budget::fair_shares`). Each allocation's lock is taken twice, briefly: to read
/// its demands, then to set its rates.
fn share_budgets<'a, R: 'a>(
    config: &CoreConfig,
    allocations: impl Iterator<Item = &'a Arc<Allocation<R>>>,
    now: Instant,
) {
    let own = budget::own_rate(config.max_allocation_bytes_per_s);
    // Each room's allocations, with what each asks of it either way.
    type Asking<'a, R> = Vec<(&'a Allocation<R>, [Demand; 2])>;
    let mut rooms: HashMap<&Scope, Asking<'_, R>> = HashMap::new();
    for a in allocations {
        match &a.holder.room {
            Some(room) if config.max_room_bytes_per_s > 0 => {
                let demands = a.state.locked().budget.demands(now);
                rooms.entry(room).or_default().push((a, demands));
            }
            _ => a.state.locked().budget.apply([own, own], now),
        }
    }
    for members in rooms.values() {
        let shares = |direction: usize| {
            let demands: Vec<Demand> = members.iter().map(|(_, d)| d[direction]).collect();
            budget::fair_shares(
                config.max_room_bytes_per_s,
                config.max_allocation_bytes_per_s,
                &demands,
            )
        };
        let (to_peer, to_client) = (shares(0), shares(1));
        for (i, (a, _)) in members.iter().enumerate() {
            a.state
                .locked()
                .budget
                .apply([to_peer[i], to_client[i]], now);
        }
    }
}

/// An error response to an authenticated request; `why` goes to the debug log.
fn refuse<R>(msg: &Message, code: u16, key: &[u8], why: &str) -> Handled<R> {
    debug!(code, why, "TURN request refused");
    Handled::Reply(wire::response(
        msg,
        CLASS_ERROR_RESPONSE,
        vec![wire::error_code(code)],
        Some(key),
    ))
}

/// The family values of REQUESTED-ADDRESS-FAMILY and ADDITIONAL-ADDRESS-FAMILY.
const FAMILY_IPV4: u8 = 0x01;
const FAMILY_IPV6: u8 = 0x02;
/// ADDITIONAL-ADDRESS-FAMILY (RFC 8656), which the `stun` crate does not name.
const ATTR_ADDITIONAL_ADDRESS_FAMILY: AttrType = AttrType(0x8000);

/// The address families of an Allocate under the rules of RFC 8656 section 7.2 (steps 5 to 9):
/// whether the relay is IPv6, and whether an additional IPv6 relay was asked for; or the
/// error code and why.
fn allocate_families(msg: &Message) -> Result<(bool, bool), (u16, &'static str)> {
    let requested = msg.get(ATTR_REQUESTED_ADDRESS_FAMILY).ok();
    let additional = msg.get(ATTR_ADDITIONAL_ADDRESS_FAMILY).ok();
    if msg.contains(ATTR_RESERVATION_TOKEN) && (requested.is_some() || additional.is_some()) {
        return Err((400, "RESERVATION-TOKEN with an address family"));
    }
    let Some(additional) = additional else {
        return match requested.as_deref().map(|v| v.first()) {
            None | Some(Some(&FAMILY_IPV4)) => Ok((false, false)),
            Some(Some(&FAMILY_IPV6)) => Ok((true, false)),
            Some(_) => Err((440, "unsupported REQUESTED-ADDRESS-FAMILY")),
        };
    };
    if requested.is_some() {
        return Err((400, "REQUESTED- with ADDITIONAL-ADDRESS-FAMILY"));
    }
    if additional.first() != Some(&FAMILY_IPV6) {
        return Err((400, "ADDITIONAL-ADDRESS-FAMILY other than IPv6"));
    }
    let reserve = msg
        .get(ATTR_EVEN_PORT)
        .is_ok_and(|v| v.first().is_some_and(|b| b & 0x80 != 0));
    if reserve {
        return Err((400, "EVEN-PORT reservation with ADDITIONAL-ADDRESS-FAMILY"));
    }
    Ok((false, true))
}

/// A 420 (Unknown Attribute) listing `unknown` in UNKNOWN-ATTRIBUTES.
fn unknown_reply(msg: &Message, unknown: Vec<AttrType>, key: Option<&[u8]>) -> Vec<u8> {
    wire::response(
        msg,
        CLASS_ERROR_RESPONSE,
        vec![
            wire::error_code(420),
            Box::new(stun::uattrs::UnknownAttributes(unknown)),
        ],
        key,
    )
}

fn owner_label(owner: &Owner) -> &'static str {
    match owner {
        Owner::Peer { .. } => "peer",
        Owner::Room(_) => "room",
        Owner::External(_) => "rest",
        Owner::Static(_) => "static",
    }
}

fn binding_response(msg: &Message, client: SocketAddr) -> Vec<u8> {
    let mapped: Box<dyn Setter> = Box::new(stun::xoraddr::XorMappedAddress {
        ip: client.ip(),
        port: client.port(),
    });
    wire::response(msg, CLASS_SUCCESS_RESPONSE, vec![mapped], None)
}

/// The policy class of peer addresses refused by the room fence, in `turn_policy_refusals`.
pub const FENCE_CLASS: &str = "outside_room";

/// The room an allocation of `owner` is fenced to, and the member it is (a room credential
/// is nobody): a member's scope when `turn.fence` is on, a room credential's room when
/// `turn.fence_room_credentials` is on too.
fn fenced_to(config: &CoreConfig, owner: &Owner) -> Option<(Scope, Option<PeerId>)> {
    if !config.fence {
        return None;
    }
    match owner {
        Owner::Peer { scope, peer } if scope.room().is_some() => {
            Some((scope.clone(), Some(peer.clone())))
        }
        Owner::Room(room) if config.fence_room_credentials => {
            Some((Scope::native(room.clone()), None))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
