//! What the TURN server counts: allocations, relayed traffic, and every refusal or drop,
//! with bounded labels. Bumped on the data path (relaxed atomics, per batch where it can),
//! read by `/metrics`.

use crate::metrics::{ByLabel, ByName, Counter, Family, Label, PerThread};

crate::labels! {
    /// The transport a client reached the server over.
    pub Transport {
        Udp => "udp",
        Tcp => "tcp",
        Tls => "tls",
    }
}

crate::labels! {
    /// Why an allocation was closed.
    pub CloseReason {
        Expired => "expired",
        Refresh => "refresh",
        PeerLeft => "peer_left",
        TransportClosed => "transport_closed",
        Revoked => "revoked",
        Shutdown => "shutdown",
    }
}

crate::labels! {
    /// Why a request failed authentication (the 401 challenge of a first request is not a failure).
    pub AuthFailure {
        BadRequest => "bad_request",
        StaleNonce => "stale_nonce",
        WrongRealm => "wrong_realm",
        UnknownUser => "unknown_user",
        BadIntegrity => "bad_integrity",
        WrongCredential => "wrong_credential",
        Expired => "expired",
        NotInRoom => "not_in_room",
    }
}

crate::labels! {
    /// Which allocation quota refused a request (their config keys).
    pub Quota {
        /// Per signaling peer in its room (not per username, which changes with every
        /// refresh); per credential for room, REST and static credentials.
        Credential => "max_allocations_per_credential",
        /// Per room of one dialect.
        Room => "max_allocations_per_room",
        /// Per client IPv4 address or IPv6 network.
        Source => "max_allocations_per_source",
        Total => "max_allocations",
    }
}

crate::labels! {
    /// Why the server closed a TCP/TLS client's connection (other than its allocation ending).
    pub StreamClose {
        AllocateTimeout => "allocate_timeout",
        FrameStalled => "frame_stalled",
        WriteStalled => "write_stalled",
        Malformed => "malformed",
        Evicted => "evicted",
    }
}

crate::labels! {
    /// Which connection limit refused a TCP/TLS client (their config keys).
    pub ConnectionLimit {
        Total => "max_connections",
        PerSource => "max_connections_per_source",
    }
}

crate::labels! {
    /// What the peer policy took back from a live allocation.
    pub Revocation {
        Permission => "permission",
        Channel => "channel",
    }
}

crate::labels! {
    /// Which permission limit refused a CreatePermission or ChannelBind (answered 508).
    pub PermissionLimit {
        PeersPerRequest => "peers_per_request",
        PerAllocation => "permissions_per_allocation",
    }
}

crate::labels! {
    /// A rule of STUN or TURN (RFC 8489, RFC 8656) that refused a request, dropped an
    /// indication or cut attributes from a message.
    pub ProtocolRule {
        /// Attributes after MESSAGE-INTEGRITY (FINGERPRINT aside) were cut and ignored.
        AfterIntegrity => "attributes_after_integrity",
        /// A request with a comprehension-required attribute the server does not know got 420.
        UnknownAttribute => "unknown_attribute",
        /// An indication with a comprehension-required attribute the server does not know was dropped.
        UnknownInIndication => "unknown_attribute_in_indication",
        /// An Allocate asked for DONT-FRAGMENT and the relay socket could not do it: 420.
        DontFragmentUnsupported => "dont_fragment_unsupported",
        /// An Allocate combined the address-family attributes against RFC 8656 (400), or
        /// asked for a family that does not exist (440).
        AddressFamily => "address_family",
        /// An Allocate asked for an additional IPv6 relay, which is not made here: the IPv4
        /// relay is granted with ADDRESS-ERROR-CODE 440 for the IPv6 one.
        AdditionalFamily => "additional_family_not_allocated",
        /// A Refresh named the other address family than the allocation's: 443.
        RefreshFamily => "refresh_family_mismatch",
    }
}

crate::labels! {
    /// Which way relayed data goes.
    pub Direction {
        /// From a client out of its relay (ChannelData, Send), or to another allocation.
        ToPeer => "to_peer",
        /// From a peer or another allocation to a client.
        ToClient => "to_client",
    }
}

crate::labels! {
    /// Which bandwidth limit dropped a packet (their config keys).
    pub BandwidthLimit {
        /// The allocation's own cap.
        Allocation => "max_allocation_bytes_per_s",
        /// The allocation's share of its room's budget.
        Room => "max_room_bytes_per_s",
    }
}

/// Packets and bytes dropped over a bandwidth budget, by direction and limit; per thread,
/// as they are counted on the data path.
#[derive(Debug, Default)]
pub struct BudgetDrops(PerThread<BudgetDropCounts>);

const DIRECTIONS: usize = <Direction as Label>::ALL.len();
const LIMITS: usize = <BandwidthLimit as Label>::ALL.len();

#[derive(Debug, Default)]
pub struct BudgetDropCounts {
    packets: [[Counter; LIMITS]; DIRECTIONS],
    bytes: [[Counter; LIMITS]; DIRECTIONS],
}

impl BudgetDrops {
    #[inline]
    pub fn add(&self, direction: Direction, limit: BandwidthLimit, bytes: usize) {
        let mine = self.0.mine();
        mine.packets[direction.index()][limit.index()].inc();
        mine.bytes[direction.index()][limit.index()].add(bytes as u64);
    }

    pub fn packets(&self, direction: Direction, limit: BandwidthLimit) -> u64 {
        self.0
            .sum(|c| c.packets[direction.index()][limit.index()].get())
    }

    pub fn bytes(&self, direction: Direction, limit: BandwidthLimit) -> u64 {
        self.0
            .sum(|c| c.bytes[direction.index()][limit.index()].get())
    }
}

/// Packets and bytes relayed in one direction, by the client's transport: added to per
/// batch by the receive loops of every core, so each thread counts on its own cache lines.
#[derive(Debug, Default)]
pub struct Traffic(PerThread<TrafficCounts>);

const TRANSPORTS: usize = <Transport as Label>::ALL.len();

#[derive(Debug, Default)]
pub struct TrafficCounts {
    packets: [Counter; TRANSPORTS],
    bytes: [Counter; TRANSPORTS],
}

impl Traffic {
    #[inline]
    pub fn add(&self, transport: Transport, packets: usize, bytes: usize) {
        let mine = self.0.mine();
        mine.packets[transport.index()].add(packets as u64);
        mine.bytes[transport.index()].add(bytes as u64);
    }

    pub fn packets(&self, transport: Transport) -> u64 {
        self.0.sum(|c| c.packets[transport.index()].get())
    }

    pub fn bytes(&self, transport: Transport) -> u64 {
        self.0.sum(|c| c.bytes[transport.index()].get())
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    pub allocations_created: ByLabel<Transport>,
    pub allocations_closed: ByLabel<CloseReason>,
    pub permissions_created: Counter,
    pub channels_bound: Counter,
    /// From clients out of relay sockets to peers.
    pub to_peers: Traffic,
    /// To clients, from peers and from other allocations.
    pub to_clients: Traffic,
    /// Packets handed from one allocation to another inside the server, without the kernel.
    pub relay_to_relay: PerThread<Counter>,
    pub auth_failures: ByLabel<AuthFailure>,
    /// Peer addresses refused, by the address class of the policy.
    pub policy_refusals: ByName,
    /// Permissions and channels removed because the policy no longer allows their peer:
    /// a reload changed the lists, or the relayed address they were granted for went away.
    pub policy_revocations: ByLabel<Revocation>,
    pub quota_refusals: ByLabel<Quota>,
    pub permission_refusals: ByLabel<PermissionLimit>,
    /// Requests refused, indications dropped and attributes ignored under a protocol rule.
    pub protocol_refusals: ByLabel<ProtocolRule>,
    /// Datagrams that are not STUN or ChannelData, or STUN that does not parse.
    pub malformed: PerThread<Counter>,
    /// Data to or from a peer without a permission, or for a channel not bound.
    pub no_permission: PerThread<Counter>,
    /// Relayed datagrams the kernel refused or a full socket dropped.
    pub relay_send_failures: PerThread<Counter>,
    /// Frames for TCP/TLS clients dropped because the client's queue was full.
    pub stream_queue_drops: PerThread<Counter>,
    /// Payloads too large for a Data indication (their client has no channel), dropped.
    pub unframeable: PerThread<Counter>,
    /// Relay to relay between allocations fenced to different rooms (`turn.fence`), dropped.
    pub fence_drops: PerThread<Counter>,
    /// Packets over an allocation's bandwidth budget, dropped.
    pub budget_drops: BudgetDrops,
    /// Unauthenticated requests left unanswered: their source was answered too often.
    pub challenge_drops: Counter,
    pub stream_closes: ByLabel<StreamClose>,
    pub connection_refusals: ByLabel<ConnectionLimit>,
}

impl Stats {
    /// The metric families, with the number of live allocations and TCP/TLS connections.
    pub fn families(&self, allocations: usize, connections: usize) -> Vec<Family> {
        let traffic = |name, help, pick: fn(&Traffic, Transport) -> u64| {
            let mut f = Family::counter(name, help);
            for (dir, t) in [("to_peer", &self.to_peers), ("to_client", &self.to_clients)] {
                for &transport in Transport::ALL {
                    f = f.labelled(
                        vec![("direction", dir), ("transport", transport.as_str())],
                        pick(t, transport),
                    );
                }
            }
            f
        };
        let policy = self.policy_refusals.snapshot().into_iter().fold(
            Family::counter(
                "turn_policy_refusals",
                "Peer addresses refused by the peer policy, by address class.",
            ),
            |f, (class, n)| f.labelled(vec![("class", class)], n),
        );
        let budget = |name, help, pick: fn(&BudgetDrops, Direction, BandwidthLimit) -> u64| {
            let mut f = Family::counter(name, help);
            for &direction in Direction::ALL {
                for &limit in BandwidthLimit::ALL {
                    f = f.labelled(
                        vec![("direction", direction.as_str()), ("limit", limit.as_str())],
                        pick(&self.budget_drops, direction, limit),
                    );
                }
            }
            f
        };
        vec![
            Family::gauge("turn_allocations", "Live TURN allocations.").value(allocations),
            Family::counter(
                "turn_allocations_created",
                "Allocations granted, by client transport.",
            )
            .by("transport", &self.allocations_created),
            Family::counter("turn_allocations_closed", "Allocations closed, by reason.")
                .by("reason", &self.allocations_closed),
            Family::counter(
                "turn_permissions_created",
                "Permissions installed or refreshed.",
            )
            .value(self.permissions_created.get()),
            Family::counter("turn_channels_bound", "Channel bindings made or refreshed.")
                .value(self.channels_bound.get()),
            traffic(
                "turn_relayed_packets",
                "Relayed packets, by direction and client transport.",
                Traffic::packets,
            ),
            traffic(
                "turn_relayed_bytes",
                "Relayed payload bytes, by direction and client transport.",
                Traffic::bytes,
            ),
            Family::counter(
                "turn_relay_to_relay_packets",
                "Packets passed between two allocations of this server inside it.",
            )
            .value(self.relay_to_relay.get()),
            Family::counter(
                "turn_auth_failures",
                "Requests that failed authentication, by reason.",
            )
            .by("reason", &self.auth_failures),
            policy,
            Family::counter(
                "turn_policy_revocations",
                "Permissions and channels removed because the peer policy no longer allows their peer, by kind.",
            )
            .by("kind", &self.policy_revocations),
            Family::counter("turn_quota_refusals", "Allocations refused by a quota.")
                .by("quota", &self.quota_refusals),
            Family::counter(
                "turn_permission_refusals",
                "CreatePermission and ChannelBind requests refused by a permission limit.",
            )
            .by("limit", &self.permission_refusals),
            Family::counter(
                "turn_protocol_refusals",
                "Requests refused, indications dropped and attributes ignored under a STUN/TURN rule, by rule.",
            )
            .by("rule", &self.protocol_refusals),
            Family::counter(
                "turn_malformed",
                "Datagrams and frames that are not valid STUN or ChannelData.",
            )
            .value(self.malformed.get()),
            Family::counter(
                "turn_no_permission_drops",
                "Packets dropped for want of a permission or channel.",
            )
            .value(self.no_permission.get()),
            Family::counter(
                "turn_relay_send_failures",
                "Relayed packets the kernel refused or a full socket dropped.",
            )
            .value(self.relay_send_failures.get()),
            Family::counter(
                "turn_challenge_drops",
                "Unauthenticated requests left unanswered because their source was answered too often.",
            )
            .value(self.challenge_drops.get()),
            Family::counter(
                "turn_unframeable_drops",
                "Payloads too large to frame as a Data indication for a client without a channel.",
            )
            .value(self.unframeable.get()),
            Family::counter(
                "turn_fence_drops",
                "Packets from one relay to another dropped because they are fenced to different rooms (turn.fence).",
            )
            .value(self.fence_drops.get()),
            budget(
                "turn_budget_drops",
                "Packets dropped over a bandwidth budget, by direction and limit (its config key).",
                BudgetDrops::packets,
            ),
            budget(
                "turn_budget_dropped_bytes",
                "Payload bytes dropped over a bandwidth budget, by direction and limit.",
                BudgetDrops::bytes,
            ),
            Family::gauge(
                "turn_stream_connections",
                "Open TURN connections over TCP and TLS.",
            )
            .value(connections),
            Family::counter(
                "turn_stream_queue_drops",
                "Frames for TCP/TLS clients dropped because the client did not read them in time.",
            )
            .value(self.stream_queue_drops.get()),
            Family::counter(
                "turn_stream_closes",
                "TCP/TLS connections the server closed, by reason.",
            )
            .by("reason", &self.stream_closes),
            Family::counter(
                "turn_connection_refusals",
                "TCP/TLS connections refused by a connection limit.",
            )
            .by("limit", &self.connection_refusals),
        ]
    }
}
