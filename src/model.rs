//! The vocabulary every part of Switchboard shares, as plain data: room and peer ids,
//! a room member as others see it, one `iceServers` entry, the `Scope` a TURN credential
//! names, and an IP network (`Cidr`, for the config's peer lists and TURN's policy).
//! Signaling, TURN, the admin API and the config all use these; this module uses none of them.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Longest room name and display name, in characters.
pub const MAX_ROOM_LEN: usize = 64;
pub const MAX_NAME_LEN: usize = 64;

/// A validated room name: 1–64 characters of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoomId(String);

impl RoomId {
    /// # Errors
    /// Returns a message fit for the user when `name` is not a valid room name.
    pub fn parse(name: &str) -> Result<RoomId, String> {
        if name.is_empty() || name.chars().count() > MAX_ROOM_LEN {
            return Err(format!(
                "room name must be 1 to {MAX_ROOM_LEN} characters long, got {}",
                name.chars().count()
            ));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(format!(
                "room name may only contain letters A-Z a-z, digits, '_' and '-' (found {bad:?})"
            ));
        }
        Ok(RoomId(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RoomId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        RoomId::parse(&s)
    }
}

impl From<RoomId> for String {
    fn from(r: RoomId) -> String {
        r.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A server-assigned peer id: 128 random bits as 32 hex digits, so it cannot be guessed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PeerId(String);

impl PeerId {
    pub fn random() -> PeerId {
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        PeerId(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Parses the 32 lowercase hex digits of a peer id.
    pub fn parse(s: &str) -> Option<PeerId> {
        let ok = s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| PeerId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Any text as a peer id, for tests that want short readable ids.
    #[cfg(test)]
    pub(crate) fn test(s: &str) -> PeerId {
        PeerId(s.to_owned())
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A display name chosen by the client: at most 64 characters, no control characters.
///
/// # Errors
/// Returns a message fit for the user when the name is refused.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.chars().count() > MAX_NAME_LEN {
        return Err(format!(
            "name must be at most {MAX_NAME_LEN} characters long"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("name must not contain control characters".to_owned());
    }
    Ok(())
}

/// A member of a room as other members see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub id: PeerId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One entry of `RTCConfiguration.iceServers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// A dialect's namespace in TURN credentials: each dialect's rooms are its own, so a
/// native room and a socket.io room of the same name are two rooms.
///
/// Native rooms are written bare (the form Switchboard always minted, so credentials handed
/// out before an upgrade keep working); every other dialect has a short tag, written
/// `tag/` before its room (or alone, for a dialect without rooms). Room names allow only
/// `A-Z a-z 0-9 _ -`, so no form can collide with another. A dialect makes its own with
/// `Space::new` (socket.io: `sio`, plain WebSocket: `ws`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Space {
    tag: [u8; Space::MAX],
    len: u8,
}

impl Space {
    const MAX: usize = 8;

    /// The native dialect's rooms, written bare.
    pub const NATIVE: Space = Space {
        tag: [0; Space::MAX],
        len: 0,
    };

    /// A dialect's tag: 1 to 8 of `a-z`.
    ///
    /// # Panics
    /// Any other tag (at compile time, where it is a `const`).
    pub const fn new(tag: &str) -> Space {
        match Space::parse(tag) {
            Some(space) => space,
            None => panic!("a space tag is 1 to 8 of a-z"),
        }
    }

    const fn parse(tag: &str) -> Option<Space> {
        let bytes = tag.as_bytes();
        if bytes.is_empty() || bytes.len() > Space::MAX {
            return None;
        }
        let mut space = Space::NATIVE;
        let mut i = 0;
        while i < bytes.len() {
            if !bytes[i].is_ascii_lowercase() {
                return None;
            }
            space.tag[i] = bytes[i];
            i += 1;
        }
        space.len = bytes.len() as u8;
        Some(space)
    }

    /// The tag (empty for `NATIVE`).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.tag[..usize::from(self.len)]).expect("tags are ASCII")
    }
}

impl std::fmt::Debug for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.len {
            0 => f.write_str("Space::NATIVE"),
            _ => write!(f, "Space({:?})", self.as_str()),
        }
    }
}

/// What a peer credential was minted for: a dialect's space, and its room there (none for a
/// dialect without rooms, such as plain WebSocket, whose users only log in).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    space: Space,
    room: Option<RoomId>,
}

impl Scope {
    /// A room of the native dialect.
    pub fn native(room: RoomId) -> Scope {
        Scope::in_room(Space::NATIVE, room)
    }

    /// A room of the dialect with that space.
    pub fn in_room(space: Space, room: RoomId) -> Scope {
        Scope {
            space,
            room: Some(room),
        }
    }

    /// A whole dialect without rooms (never `Space::NATIVE`, whose rooms are written bare).
    pub fn whole(space: Space) -> Scope {
        assert!(space != Space::NATIVE, "native scopes have a room");
        Scope { space, room: None }
    }

    pub fn space(&self) -> Space {
        self.space
    }

    /// The room, for the dialects that have rooms.
    pub fn room(&self) -> Option<&RoomId> {
        self.room.as_ref()
    }

    /// Parses the form `Display` writes (the part of a TURN username after `@`).
    pub fn parse(s: &str) -> Option<Scope> {
        let Some((tag, room)) = s.split_once('/') else {
            return RoomId::parse(s).ok().map(Scope::native);
        };
        let space = Space::parse(tag)?;
        if room.is_empty() {
            return Some(Scope::whole(space));
        }
        RoomId::parse(room)
            .ok()
            .map(|room| Scope::in_room(space, room))
    }
}

/// The form a username carries (and logs show): `<room>`, `<tag>/<room>` or `<tag>/`.
impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let room = self.room.as_ref().map_or("", RoomId::as_str);
        match self.space.len {
            0 => f.write_str(room),
            _ => write!(f, "{}/{room}", self.space.as_str()),
        }
    }
}

/// An IP network such as `10.0.0.0/8` or `fc00::/7`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("expected an IP network such as \"10.0.0.0/8\", got {s:?}"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("prefix length in {s:?} must be 0..={max}"))?,
        };
        Ok(Cidr { net, prefix })
    }
}
