//! TURN credentials as pure functions: the coturn-compatible "TURN REST API"
//! (username `<unix-expiry>:<user>`, password `base64(HMAC-SHA1(secret, username))`),
//! static users, the long-term key, and stateless nonces.
//!
//! A credential minted for a signaling peer names its dialect and room (`Scope`) in a form
//! no room name can take, so the dialects are separate namespaces for membership and quotas.
//!
//! Nothing here keeps per-client state, so unauthenticated traffic cannot make
//! memory grow, and any instance that knows the secrets can check a credential.

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::hmac;

use crate::config::Secret;
pub use crate::model::Scope;
use crate::model::{PeerId, RoomId};

/// Who a credential belongs to. A peer's fresh credentials (every join and refresh) have
/// one owner, which is what the TURN core's per-credential quota counts them by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    /// A signaling peer on this server: minted by Switchboard when it joins (or logs in).
    Peer { scope: Scope, peer: PeerId },
    /// A room credential minted outside a signaling session (`switchboard credentials`,
    /// `GET /api/v1/ice-servers`): username `<expiry>:room:<room>`, valid until it expires.
    Room(RoomId),
    /// A REST credential minted by another backend with the shared secret.
    External(String),
    /// A static user from the config.
    Static(String),
}

impl Owner {
    /// The peer and its scope, for credentials that name one.
    pub fn peer(&self) -> Option<(&Scope, &PeerId)> {
        match self {
            Owner::Peer { scope, peer } => Some((scope, peer)),
            _ => None,
        }
    }

    /// The name of the room the credential is scoped to, in whichever dialect, for peer and
    /// room credentials; `None` for the plain-WebSocket dialect, which has no rooms.
    pub fn room(&self) -> Option<&RoomId> {
        match self {
            Owner::Peer { scope, .. } => scope.room(),
            Owner::Room(room) => Some(room),
            _ => None,
        }
    }
}

/// A credential that passed the secret check, before MESSAGE-INTEGRITY is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub owner: Owner,
    /// Unix time the credential expires, for REST credentials.
    pub expires: Option<u64>,
    /// Possible passwords: one per configured secret (rotation), or the static password.
    pub passwords: Vec<String>,
    /// For a peer's credential minted with one: the allocations its room may hold (a join
    /// token's `allocations`), in place of `turn.max_allocations_per_room`.
    pub room_allocations: Option<usize>,
}

/// Why a username was refused before its integrity was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsernameError {
    /// Neither a REST username nor a static user.
    Unknown,
}

/// The username Switchboard mints for `peer` in `scope`: `<expiry>:<peer>@<scope>`, that is
/// `<expiry>:<peer>@<room>` for a native room (see [`Scope`] for the others).
pub fn peer_username(expires: u64, scope: &Scope, peer: &PeerId) -> String {
    format!("{expires}:{peer}@{scope}")
}

/// [`peer_username`] carrying the allocations `peer`'s room may hold when it allocates
/// (`room_allocations`, a join token's): `<expiry>:<peer>+<allocations>@<scope>`. The
/// signature covers it like the rest of the username.
pub fn peer_username_within(
    expires: u64,
    scope: &Scope,
    peer: &PeerId,
    room_allocations: Option<u32>,
) -> String {
    match room_allocations {
        Some(n) => format!("{expires}:{peer}+{n}@{scope}"),
        None => peer_username(expires, scope, peer),
    }
}

/// The username of a room credential: `<expiry>:room:<room>`.
pub fn room_username(expires: u64, room: &RoomId) -> String {
    format!("{expires}:room:{room}")
}

/// The REST password for `username`: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &Secret, username: &str) -> String {
    let key = hmac::Key::new(
        hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        secret.expose().as_bytes(),
    );
    BASE64.encode(hmac::sign(&key, username.as_bytes()).as_ref())
}

/// Parses `username` and lists the passwords it may have.
///
/// # Errors
/// The username is neither `<expiry>:<user>` nor a configured static user.
pub fn lookup(
    username: &str,
    secrets: &[Secret],
    static_users: &[(String, Secret)],
) -> Result<Candidate, UsernameError> {
    if let Some((_, password)) = static_users.iter().find(|(u, _)| u == username) {
        return Ok(Candidate {
            owner: Owner::Static(username.to_owned()),
            expires: None,
            passwords: vec![password.expose().to_owned()],
            room_allocations: None,
        });
    }
    // coturn accepts `<expiry>:<user>` and a bare `<expiry>`.
    let (expiry, user) = username.split_once(':').unwrap_or((username, ""));
    let expires: u64 = expiry.parse().map_err(|_| UsernameError::Unknown)?;
    if secrets.is_empty() {
        return Err(UsernameError::Unknown);
    }
    let peer = user.split_once('@').and_then(|(peer, scope)| {
        let (peer, within) = match peer.split_once('+') {
            Some((peer, n)) => (peer, Some(n.parse::<usize>().ok().filter(|n| *n > 0)?)),
            None => (peer, None),
        };
        Some((PeerId::parse(peer)?, Scope::parse(scope)?, within))
    });
    let room = user
        .strip_prefix("room:")
        .and_then(|room| RoomId::parse(room).ok());
    let (owner, room_allocations) = match (peer, room) {
        (Some((peer, scope, within)), _) => (Owner::Peer { scope, peer }, within),
        (None, Some(room)) => (Owner::Room(room), None),
        (None, None) => (Owner::External(user.to_owned()), None),
    };
    Ok(Candidate {
        owner,
        expires: Some(expires),
        passwords: secrets.iter().map(|s| rest_password(s, username)).collect(),
        room_allocations,
    })
}

/// The long-term credential key: MD5(username ":" realm ":" password) (RFC 8489 section 9.2.2).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> Vec<u8> {
    stun::integrity::MessageIntegrity::new_long_term_integrity(
        username.to_owned(),
        realm.to_owned(),
        password.to_owned(),
    )
    .0
}

/// Stateless nonces: `<issued unix time, hex>` + `<HMAC over it and the client IP, hex>`.
///
/// A nonce is valid for `lifetime_s` after it was issued and only from the IP it was issued to.
#[derive(Clone)]
pub struct NonceKey {
    key: hmac::Key,
    lifetime_s: u64,
}

/// The state of a nonce presented by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Well-formed and genuine, but too old: the client gets 438 and a fresh nonce.
    Stale,
    /// Not one of ours (or for another IP): treated like a stale nonce, answered with a fresh one.
    Invalid,
}

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceKey")
            .field("lifetime_s", &self.lifetime_s)
            .finish_non_exhaustive()
    }
}

impl NonceKey {
    pub fn new(secret: &[u8], lifetime_s: u64) -> NonceKey {
        NonceKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            lifetime_s,
        }
    }

    /// The key every instance of a cluster derives from the TURN secret they share, so a
    /// nonce one instance issued is good at another (DNS round robin, anycast): not the
    /// secret itself, so a nonce's tag reveals nothing of the credentials' key.
    pub fn shared(secret: &[u8], lifetime_s: u64) -> NonceKey {
        let derive = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let key = hmac::sign(&derive, b"switchboard: the TURN nonce key");
        NonceKey::new(key.as_ref(), lifetime_s)
    }

    /// A random key, for a single process.
    pub fn random(lifetime_s: u64) -> NonceKey {
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
        NonceKey::new(&secret, lifetime_s)
    }

    pub fn issue(&self, now_unix: u64, client: IpAddr) -> String {
        let stamp = format!("{now_unix:016x}");
        format!("{stamp}{}", self.tag(&stamp, client))
    }

    pub fn check(&self, nonce: &str, now_unix: u64, client: IpAddr) -> NonceCheck {
        if nonce.len() != 32 || !nonce.is_ascii() {
            return NonceCheck::Invalid;
        }
        let (stamp, tag) = nonce.split_at(16);
        let Ok(issued) = u64::from_str_radix(stamp, 16) else {
            return NonceCheck::Invalid;
        };
        let expected = self.tag(stamp, client);
        let differs = expected
            .bytes()
            .zip(tag.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if differs != 0 || expected.len() != tag.len() {
            return NonceCheck::Invalid;
        }
        if now_unix.saturating_sub(issued) > self.lifetime_s || issued > now_unix + 60 {
            return NonceCheck::Stale;
        }
        NonceCheck::Valid
    }

    fn tag(&self, stamp: &str, client: IpAddr) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(stamp.as_bytes());
        ctx.update(client.to_string().as_bytes());
        let tag = ctx.sign();
        tag.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Space;

    const SIO: Space = Space::new("sio");
    const WS: Space = Space::new("ws");

    #[test]
    fn room_credentials_are_scoped_to_their_room() {
        let room = RoomId::parse("standup").unwrap();
        let name = room_username(2000, &room);
        assert_eq!(name, "2000:room:standup");
        let s = vec![secret("0123456789abcdef")];
        let found = lookup(&name, &s, &[]).unwrap();
        assert_eq!(found.owner, Owner::Room(room.clone()));
        assert_eq!(found.owner.room(), Some(&room));
        assert_eq!(found.passwords, vec![rest_password(&s[0], &name)]);
        // Not a valid room name: an ordinary REST user, scoped to nothing.
        let other = lookup("2000:room:no spaces", &s, &[]).unwrap();
        assert_eq!(other.owner, Owner::External("room:no spaces".into()));
        assert_eq!(other.owner.room(), None);
    }

    fn secret(s: &str) -> Secret {
        Secret::new(s.to_owned())
    }

    #[test]
    fn rest_password_matches_coturn() {
        // coturn: base64(hmac-sha1("north", "1700000000:alice")), computed with
        // `echo -n 1700000000:alice | openssl dgst -sha1 -hmac north -binary | base64`.
        assert_eq!(
            rest_password(&secret("north"), "1700000000:alice"),
            "Cd/49soE35ICqcJF/bCTn8Z4OyE="
        );
    }

    #[test]
    fn peer_usernames_round_trip_to_their_owner() {
        let room = RoomId::parse("team-1").unwrap();
        let peer = PeerId::random();
        let scope = Scope::native(room);
        let username = peer_username(1_700_000_600, &scope, &peer);
        assert_eq!(
            username,
            format!("1700000600:{peer}@team-1"),
            "unchanged form"
        );
        let c = lookup(&username, &[secret("a"), secret("b")], &[]).unwrap();
        assert_eq!(c.owner, Owner::Peer { scope, peer });
        assert_eq!(c.expires, Some(1_700_000_600));
        assert_eq!(
            c.passwords,
            vec![
                rest_password(&secret("a"), &username),
                rest_password(&secret("b"), &username)
            ]
        );
    }

    #[test]
    fn a_peer_username_carries_its_rooms_allocation_budget() {
        let scope = Scope::in_room(SIO, RoomId::parse("team").unwrap());
        let peer = PeerId::random();
        let username = peer_username_within(1000, &scope, &peer, Some(40));
        assert_eq!(username, format!("1000:{peer}+40@sio/team"));
        let c = lookup(&username, &[secret("a")], &[]).unwrap();
        assert_eq!(
            c.owner,
            Owner::Peer {
                scope: scope.clone(),
                peer: peer.clone()
            }
        );
        assert_eq!(c.room_allocations, Some(40));
        assert_eq!(
            peer_username_within(1000, &scope, &peer, None),
            peer_username(1000, &scope, &peer)
        );
        assert_eq!(
            lookup(&peer_username(1000, &scope, &peer), &[secret("a")], &[])
                .unwrap()
                .room_allocations,
            None
        );
        // A budget that does not read is not a peer's credential: nothing it may claim.
        for odd in ["+0", "+x", "+", "+-1"] {
            let c = lookup(&format!("1000:{peer}{odd}@sio/team"), &[secret("a")], &[]).unwrap();
            assert!(matches!(c.owner, Owner::External(_)), "{odd}");
            assert_eq!(c.room_allocations, None);
        }
    }

    #[test]
    fn each_dialect_is_its_own_namespace_in_the_username() {
        let s = [secret("a")];
        let peer = PeerId::random();
        let owner = |username: &str| lookup(username, &s, &[]).unwrap().owner;
        let room = RoomId::parse("team").unwrap();
        for scope in [
            Scope::native(room.clone()),
            Scope::in_room(SIO, room.clone()),
            Scope::whole(WS),
        ] {
            let username = peer_username(1000, &scope, &peer);
            assert_eq!(
                owner(&username),
                Owner::Peer {
                    scope,
                    peer: peer.clone()
                }
            );
        }
        assert_eq!(
            peer_username(1000, &Scope::in_room(SIO, room.clone()), &peer),
            format!("1000:{peer}@sio/team")
        );
        assert_eq!(
            peer_username(1000, &Scope::whole(WS), &peer),
            format!("1000:{peer}@ws/")
        );
        // The pseudo-room the plain-WebSocket dialect used to name is a native room like any.
        let legacy = RoomId::parse("_ws-legacy").unwrap();
        assert_eq!(
            owner(&format!("1000:{peer}@_ws-legacy")),
            Owner::Peer {
                scope: Scope::native(legacy),
                peer: peer.clone()
            }
        );
        // A tag of a-z and `/`, then a room or nothing, is a dialect's scope (whether a
        // dialect answers for it is the membership check's business); nothing else with a
        // `/` is, and `ws` and `sio` alone are native rooms.
        assert_eq!(
            owner(&format!("1000:{peer}@ws/x")),
            Owner::Peer {
                scope: Scope::in_room(WS, RoomId::parse("x").unwrap()),
                peer: peer.clone()
            }
        );
        for bad in [
            "sio/a b",
            "/ws",
            "sio/ws/",
            "SIO/x",
            "toolongtag/x",
            "s1o/x",
        ] {
            let user = format!("{peer}@{bad}");
            assert_eq!(owner(&format!("1000:{user}")), Owner::External(user));
        }
        for name in ["ws", "sio"] {
            let scope = Scope::native(RoomId::parse(name).unwrap());
            let o = owner(&format!("1000:{peer}@{name}"));
            assert_eq!(
                o,
                Owner::Peer {
                    scope,
                    peer: peer.clone()
                }
            );
        }
    }

    #[test]
    fn other_rest_usernames_are_external_and_static_users_work() {
        let c = lookup("1700000000:backend-user", &[secret("s")], &[]).unwrap();
        assert_eq!(c.owner, Owner::External("backend-user".into()));
        let statics = vec![("bob".to_owned(), secret("pw"))];
        let c = lookup("bob", &[], &statics).unwrap();
        assert_eq!(c.owner, Owner::Static("bob".into()));
        assert_eq!(c.passwords, vec!["pw".to_owned()]);
        assert_eq!(
            lookup("carol", &[secret("s")], &statics),
            Err(UsernameError::Unknown)
        );
        assert_eq!(
            lookup("soon:x", &[secret("s")], &statics),
            Err(UsernameError::Unknown)
        );
        assert_eq!(
            lookup("1700000000:x", &[], &statics),
            Err(UsernameError::Unknown)
        );
    }

    /// RFC 5769 section 2.4: a request under long-term credentials.
    pub(crate) const RFC5769_LONG_TERM: [u8; 116] = [
        0x00, 0x01, 0x00, 0x60, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72,
        0xc0, 0x29, 0xda, 0x41, 0x2e, 0x00, 0x06, 0x00, 0x12, 0xe3, 0x83, 0x9e, 0xe3, 0x83, 0x88,
        0xe3, 0x83, 0xaa, 0xe3, 0x83, 0x83, 0xe3, 0x82, 0xaf, 0xe3, 0x82, 0xb9, 0x00, 0x00, 0x00,
        0x15, 0x00, 0x1c, 0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b, 0x39, 0x35, 0x34, 0x64, 0x36,
        0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76, 0x79, 0x36, 0x34, 0x73,
        0x41, 0x00, 0x14, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72,
        0x67, 0x00, 0x00, 0x08, 0x00, 0x14, 0xf6, 0x70, 0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02,
        0xb8, 0xe0, 0x71, 0x2e, 0x85, 0xc9, 0xa2, 0x8c, 0xa8, 0x96, 0x66,
    ];

    #[test]
    fn long_term_key_verifies_the_rfc_5769_sample() {
        let mut msg = stun::message::Message::new();
        msg.raw = RFC5769_LONG_TERM.to_vec();
        msg.decode().unwrap();
        let username =
            stun::textattrs::TextAttribute::get_from_as(&msg, stun::attributes::ATTR_USERNAME)
                .unwrap();
        assert_eq!(username.text, "マトリックス");
        let key = long_term_key(&username.text, "example.org", "TheMatrIX");
        stun::integrity::MessageIntegrity(key.clone())
            .check(&mut msg)
            .expect("RFC 5769 integrity");
        let wrong = long_term_key(&username.text, "example.org", "thematrix");
        assert!(
            stun::integrity::MessageIntegrity(wrong)
                .check(&mut msg)
                .is_err()
        );
    }

    #[test]
    fn nonces_expire_and_are_bound_to_the_client_ip() {
        let key = NonceKey::new(b"k", 600);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let nonce = key.issue(1000, ip);
        assert_eq!(key.check(&nonce, 1000, ip), NonceCheck::Valid);
        assert_eq!(key.check(&nonce, 1600, ip), NonceCheck::Valid);
        assert_eq!(key.check(&nonce, 1601, ip), NonceCheck::Stale);
        assert_eq!(key.check(&nonce, 1000, other), NonceCheck::Invalid);
        // Instances sharing a secret accept each other's nonces; others do not.
        let (a, b) = (NonceKey::shared(b"s", 600), NonceKey::shared(b"s", 600));
        assert_eq!(b.check(&a.issue(1000, ip), 1000, ip), NonceCheck::Valid);
        let c = NonceKey::shared(b"t", 600);
        assert_eq!(c.check(&a.issue(1000, ip), 1000, ip), NonceCheck::Invalid);
        assert_eq!(key.check("garbage", 1000, ip), NonceCheck::Invalid);
        let mut forged = nonce.clone();
        forged.replace_range(0..16, &format!("{:016x}", 5000));
        assert_eq!(key.check(&forged, 5000, ip), NonceCheck::Invalid);
        assert_eq!(
            NonceKey::new(b"other", 600).check(&nonce, 1000, ip),
            NonceCheck::Invalid
        );
    }
}
