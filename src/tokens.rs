//! Join tokens: short-lived JWTs an application's backend signs, which Switchboard checks
//! when a peer joins a room (`[tokens]` in the config, `docs/protocol.md` "Join tokens").
//!
//! Plain data: a `Verifier` made from the keys and policy of `[tokens]` (`config::TokensConfig`
//! builds it) decides, for a room and a
//! token (or none) at a given time, what the peer may do (`Grant`) or why it may not join
//! (`Refusal`); `mint` signs the claims `switchboard token` and the tests hand out.
//!
//! What it promises:
//! - A token is checked against the key its header's `kid` names (or the only key there is),
//!   with that key's algorithm alone: a token cannot choose a weaker algorithm or another
//!   key type (no `none`, no HMAC with a public key as secret).
//! - The claims are read into strict types after the signature is checked: an `exp` that is
//!   not a number is an invalid token, never a missing one.
//! - Refusals say which rule failed, and nothing that helps forging: a bad signature, an
//!   unknown key and a malformed token read the same.

use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::model::RoomId;

/// The longest token read; a longer one is invalid before any parsing.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The largest room a token's `capacity` may ask for.
pub const MAX_CAPACITY: u32 = 1000;

/// The most TURN allocations a token's `allocations` may give a room.
pub const MAX_ALLOCATIONS: u32 = 10_000;

/// The most messages per second a token's `messages_per_s` may give a room.
pub const MAX_MESSAGES_PER_S: u32 = 100_000;

/// Which rooms a peer may join only with a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Require {
    /// None: a token is optional, and checked when given.
    None,
    /// Every room.
    All,
    /// Rooms whose names start with one of these.
    Prefixes(Vec<String>),
}

impl Require {
    pub fn covers(&self, room: &str) -> bool {
        match self {
            Require::None => false,
            Require::All => true,
            Require::Prefixes(prefixes) => prefixes.iter().any(|p| room.starts_with(p.as_str())),
        }
    }
}

/// What a valid token lets its holder do in the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The peer's identity (`sub`), shown to the others as its name.
    pub sub: Option<String>,
    /// The room's capacity for this join, in place of the server's (`capacity`).
    pub capacity: Option<usize>,
    /// The TURN allocations the room may hold, counted when this peer allocates, in place of
    /// `turn.max_allocations_per_room` (`allocations`).
    pub allocations: Option<u32>,
    /// The messages per second the room may relay, all its members together, in place of
    /// `signaling.room_messages_per_s` (`messages_per_s`).
    pub messages_per_s: Option<u32>,
    pub roles: Roles,
}

/// What a peer may do besides talking to the others in its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    /// May send media: its session descriptions may offer to send (`a=sendrecv`, `a=sendonly`).
    pub publish: bool,
    /// May put another peer out of the room (native `kick`).
    pub kick: bool,
}

impl Roles {
    /// A peer of an open room, or with a token that says nothing of roles.
    pub const DEFAULT: Roles = Roles {
        publish: true,
        kick: false,
    };
}

/// Why a join was refused for its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The room needs a token and none came.
    Required,
    /// Not a token signed by a configured key, or its claims are malformed or not valid yet.
    Invalid,
    /// Past its `exp` (with the configured leeway).
    Expired,
    /// Valid, but for another room (or, in the plain-WebSocket dialect, another name).
    RoomMismatch,
}

impl Refusal {
    /// What the client is told: which rule failed and what to do, nothing about the key.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Required => "this room needs a join token; ask the application for one",
            Refusal::Invalid => "the join token is not valid",
            Refusal::Expired => "the join token has expired; ask the application for a new one",
            Refusal::RoomMismatch => "the join token is for another room",
        }
    }
}

/// The claims Switchboard reads; others (`iat`, `iss`, `jti`...) are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The room: its exact name, or a prefix followed by `*` (`"clinic-*"`; `"*"`: any).
    pub room: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// One audience or several (RFC 7519 allows both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// The room's TURN allocation budget (1 to [`MAX_ALLOCATIONS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocations: Option<u32>,
    /// The room's message budget, per second (1 to [`MAX_MESSAGES_PER_S`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_per_s: Option<u32>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<bool>,
    /// Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kick: Option<bool>,
}

/// A token's `aud`: one string, or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Several(Vec<String>),
}

impl Audience {
    fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(a) => a == audience,
            Audience::Several(all) => all.iter().any(|a| a == audience),
        }
    }
}

impl Claims {
    fn room_matches(&self, room: &str) -> bool {
        match self.room.strip_suffix('*') {
            Some(prefix) => room.starts_with(prefix),
            None => self.room == room,
        }
    }
}

/// The checks of the config's `[tokens]`, ready to verify.
pub struct Verifier {
    keys: Vec<Key>,
    require: Require,
    audience: Option<String>,
    leeway_s: u64,
}

/// A key that checks tokens.
pub struct Key {
    id: String,
    algorithm: Algorithm,
    decoding: DecodingKey,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.iter().map(|k| &k.id).collect::<Vec<_>>())
            .field("require", &self.require)
            .finish_non_exhaustive()
    }
}

/// One key of the config, as written: its id, its algorithm's name, and an HMAC secret or a
/// public key in PEM.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec<'a> {
    pub id: &'a str,
    pub algorithm: &'a str,
    pub secret: Option<&'a str>,
    pub public_key: Option<&'a str>,
}

impl Key {
    /// The key ready to check tokens. The config's check calls it, so a key that cannot be
    /// read is refused naming its key.
    ///
    /// # Errors
    /// What is wrong with the key, for the person who wrote it.
    pub fn new(spec: KeySpec<'_>) -> Result<Key, String> {
        let name = spec.algorithm;
        let algorithm = algorithm(name)?;
        let decoding = if is_hmac(algorithm) {
            let Some(secret) = spec.secret else {
                return Err(format!("{name} needs `secret`"));
            };
            if spec.public_key.is_some() {
                return Err(format!("{name} takes `secret`, not `public_key`"));
            }
            if secret.len() < 32 {
                return Err(
                    "`secret` must be at least 32 bytes (e.g. `openssl rand -hex 32`)".into(),
                );
            }
            DecodingKey::from_secret(secret.as_bytes())
        } else {
            let Some(pem) = spec.public_key else {
                return Err(format!("{name} needs `public_key` (PEM)"));
            };
            if spec.secret.is_some() {
                return Err(format!("{name} takes `public_key`, not `secret`"));
            }
            // jsonwebtoken reads any EC key for ES256; a P-384 one would fail every token.
            if algorithm == Algorithm::ES256 && !der_holds(pem.as_bytes(), &P256_OID) {
                return Err(format!(
                    "`public_key` is not a P-256 public key in PEM, which {name} needs"
                ));
            }
            match algorithm {
                Algorithm::EdDSA => DecodingKey::from_ed_pem(pem.as_bytes()),
                _ => DecodingKey::from_ec_pem(pem.as_bytes()),
            }
            .map_err(|e| {
                format!(
                    "`public_key` is not a {name} public key in PEM ({e}): expected \
                     -----BEGIN PUBLIC KEY----- ... -----END PUBLIC KEY-----"
                )
            })?
        };
        Ok(Key {
            id: spec.id.to_owned(),
            algorithm,
            decoding,
        })
    }
}

fn algorithm(name: &str) -> Result<Algorithm, String> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "HS384" => Ok(Algorithm::HS384),
        "HS512" => Ok(Algorithm::HS512),
        "EdDSA" => Ok(Algorithm::EdDSA),
        "ES256" => Ok(Algorithm::ES256),
        other => Err(format!(
            "unknown algorithm {other:?}: expected \"HS256\", \"HS384\", \"HS512\" (with `secret`), \
             \"EdDSA\" (Ed25519) or \"ES256\" (P-256) (with `public_key`)"
        )),
    }
}

impl Verifier {
    /// Checks with `keys` (a token's `kid` picks one) which rooms `require` says; `audience`,
    /// when set, must be the tokens' `aud`; `leeway_s` forgives clock differences.
    pub fn new(
        keys: Vec<Key>,
        require: Require,
        audience: Option<String>,
        leeway_s: u64,
    ) -> Verifier {
        Verifier {
            keys,
            require,
            audience,
            leeway_s,
        }
    }

    /// Whether joining `room` needs a token.
    pub fn required(&self, room: &str) -> bool {
        self.require.covers(room)
    }

    /// What the holder of `token` (or of none) may do in `room` at `now` (Unix seconds):
    /// `Ok(None)` for a room open to anyone and no token given.
    ///
    /// # Errors
    /// The room needs a token and none came, or the token is invalid, expired or for
    /// another room. A token given for an open room is checked all the same.
    pub fn check(
        &self,
        room: &RoomId,
        token: Option<&str>,
        now: u64,
    ) -> Result<Option<Grant>, Refusal> {
        let Some(token) = token else {
            return if self.required(room.as_str()) {
                Err(Refusal::Required)
            } else {
                Ok(None)
            };
        };
        let claims = self.verify(token, now)?;
        if !claims.room_matches(room.as_str()) {
            return Err(Refusal::RoomMismatch);
        }
        let within = |claim: Option<u32>, max: u32| match claim {
            Some(n) if !(1..=max).contains(&n) => Err(Refusal::Invalid),
            claim => Ok(claim),
        };
        let capacity = within(claims.capacity, MAX_CAPACITY)?.map(|c| c as usize);
        let allocations = within(claims.allocations, MAX_ALLOCATIONS)?;
        let messages_per_s = within(claims.messages_per_s, MAX_MESSAGES_PER_S)?;
        if let Some(sub) = &claims.sub
            && (sub.is_empty() || crate::model::check_name(sub).is_err())
        {
            return Err(Refusal::Invalid);
        }
        Ok(Some(Grant {
            sub: claims.sub,
            capacity,
            allocations,
            messages_per_s,
            roles: Roles {
                publish: claims.publish.unwrap_or(Roles::DEFAULT.publish),
                kick: claims.kick.unwrap_or(Roles::DEFAULT.kick),
            },
        }))
    }

    /// The claims of `token` if a configured key signed it and it is valid at `now`.
    ///
    /// # Errors
    /// `Invalid` or `Expired`.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, Refusal> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::Invalid);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Invalid)?;
        let key = match (&header.kid, self.keys.as_slice()) {
            (Some(kid), keys) => keys.iter().find(|k| k.id == *kid),
            (None, [only]) => Some(only),
            (None, _) => None,
        }
        .ok_or(Refusal::Invalid)?;
        let mut validation = Validation::new(key.algorithm);
        // The times and the audience are checked below, on strictly typed claims.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)
            .map_err(|_| Refusal::Invalid)?
            .claims;
        if let Some(audience) = &self.audience
            && !claims
                .aud
                .as_ref()
                .is_some_and(|aud| aud.contains(audience))
        {
            return Err(Refusal::Invalid);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(self.leeway_s))
        {
            return Err(Refusal::Invalid);
        }
        if claims.exp.saturating_add(self.leeway_s) <= now {
            return Err(Refusal::Expired);
        }
        Ok(claims)
    }
}

/// A key to sign tokens with: `kid` goes in the header.
pub struct Signer {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
}

impl Signer {
    /// An HMAC key of the config, which signs as it checks.
    ///
    /// # Errors
    /// The key is not an HMAC key (a public key cannot sign).
    pub fn hmac(spec: KeySpec<'_>) -> Result<Signer, String> {
        let algorithm = algorithm(spec.algorithm)?;
        let Some(secret) = spec.secret.filter(|_| is_hmac(algorithm)) else {
            return Err(format!(
                "key {:?} is a public key ({}): sign with its private key (--private-key FILE)",
                spec.id, spec.algorithm
            ));
        };
        Ok(Signer {
            kid: spec.id.to_owned(),
            algorithm,
            encoding: EncodingKey::from_secret(secret.as_bytes()),
        })
    }

    /// A private key in PEM (PKCS#8): Ed25519 signs EdDSA, P-256 signs ES256.
    ///
    /// # Errors
    /// The PEM holds neither.
    pub fn from_private_pem(kid: &str, pem: &[u8]) -> Result<Signer, String> {
        let (algorithm, encoding) = match EncodingKey::from_ed_pem(pem) {
            Ok(k) if der_holds(pem, &ED25519_OID) => (Algorithm::EdDSA, k),
            _ => match EncodingKey::from_ec_pem(pem) {
                Ok(k) if der_holds(pem, &P256_OID) => (Algorithm::ES256, k),
                _ => {
                    return Err(
                        "not an Ed25519 or P-256 private key in PEM (PKCS#8, -----BEGIN PRIVATE KEY-----)"
                            .into(),
                    );
                }
            },
        };
        Ok(Signer {
            kid: kid.to_owned(),
            algorithm,
            encoding,
        })
    }

    /// The signed token for `claims`.
    pub fn mint(&self, claims: &Claims) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .expect("claims of plain types always encode")
    }
}

fn is_hmac(algorithm: Algorithm) -> bool {
    matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    )
}

/// The DER of the algorithm identifier of Ed25519 keys (1.3.101.112).
const ED25519_OID: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];
/// The DER of the curve identifier of P-256 (1.2.840.10045.3.1.7).
const P256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Whether the DER inside a PEM holds `oid`: jsonwebtoken takes any PKCS#8 document as an "Ed"
/// key, and any EC curve for ES256, and fails only when signing or verifying.
fn der_holds(pem: &[u8], oid: &[u8]) -> bool {
    use base64::Engine as _;
    let text = String::from_utf8_lossy(pem);
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .is_ok_and(|der| der.windows(oid.len()).any(|w| w == oid))
}

#[cfg(test)]
mod tests;
