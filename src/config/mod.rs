//! The configuration file: parsing, defaults, validation, and the masked dump
//! that `switchboard check-config` prints.
//!
//! One submodule per section of the file owns its struct, its defaults, its checks, and
//! (with `keys!`, next to the struct) whether each key is applied by a reload or needs a
//! restart; this module holds `Config`, loading, `ConfigError` and the order of the checks.
//! Parsing is strict: unknown keys, wrong types and out-of-range values are
//! refused with the file, the dotted key and what was expected.
//! This module does no I/O beyond reading the file; the checks that need the
//! file system (certificate paths) live in `tls`.

/// Implements `Section` for a section's struct from one list that names each field and
/// when a change to it takes effect (`Live` or `Restart`, see `Apply`).
///
/// The list builds the struct without `..`, so a new field fails to compile ("missing field
/// in initializer") until it is classified here, and a field listed twice fails too. Keys
/// are the field names, which a test holds to serde's.
macro_rules! keys {
    ($section:ident in $name:literal { $($field:ident: $apply:ident),+ $(,)? }) => {
        impl $crate::config::Section for $section {
            const KEYS: &'static [$crate::config::Key] = &[$(
                $crate::config::Key {
                    name: concat!($name, ".", stringify!($field)),
                    apply: $crate::config::Apply::$apply,
                },
            )+];

            fn changed(&self, new: &Self) -> Vec<$crate::config::Key> {
                // A struct expression without `..` names every field, so a field missing
                // from the list fails to compile here ("missing field").
                let _every_field_listed = |s: $section| $section { $($field: s.$field),+ };
                let mut changed = Vec::new();
                $(
                    if self.$field != new.$field {
                        changed.push($crate::config::Key {
                            name: concat!($name, ".", stringify!($field)),
                            apply: $crate::config::Apply::$apply,
                        });
                    }
                )+
                changed
            }
        }
    };
}

mod acme;
mod admin;
mod api;
mod cluster;
mod http_redirect;
mod https;
mod ice_servers;
mod log;
mod redis_url;
mod secret;
mod server;
mod signaling;
mod tokens;
mod turn;
mod webhooks;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use acme::AcmeConfig;
pub use admin::AdminConfig;
pub use api::ApiConfig;
pub use cluster::{ClusterConfig, valid_instance_id};
pub use http_redirect::HttpRedirectConfig;
pub use https::HttpsConfig;
pub use ice_servers::IceServerConfig;
pub use log::{LogConfig, LogFormat};
pub use redis_url::RedisUrl;
pub use secret::Secret;
pub use server::ServerConfig;
pub use signaling::SignalingConfig;
pub use tokens::{RequireMode, TokenKeyConfig, TokensConfig};
pub use turn::{FenceMode, StaticUser, TurnConfig};
pub use webhooks::{EVENTS as WEBHOOK_EVENTS, WebhooksConfig, signing_key_bytes};

/// The whole configuration, as read from `config.toml`.
///
/// Every section has defaults, so an empty file is a valid configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub https: HttpsConfig,
    pub http_redirect: HttpRedirectConfig,
    pub signaling: SignalingConfig,
    pub turn: TurnConfig,
    pub acme: AcmeConfig,
    pub admin: AdminConfig,
    pub api: ApiConfig,
    /// Several instances sharing rooms through Redis; off without `cluster.redis_url`.
    pub cluster: ClusterConfig,
    /// Join tokens: which rooms need one, and the keys that sign them.
    pub tokens: TokensConfig,
    /// Signed HTTP POSTs to the application: rooms and peers coming and going, allocations'
    /// usage.
    pub webhooks: WebhooksConfig,
    /// Extra ICE servers handed to every peer in `welcome`, before Switchboard's own.
    pub ice_servers: Vec<IceServerConfig>,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config file {path}: {source} (pass another file with --config PATH)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The TOML is malformed or a key has the wrong type or is unknown.
    #[error("{file}{line}: {key}{message}")]
    Parse {
        file: String,
        line: String,
        key: String,
        message: String,
    },
    /// A key parsed but its value is out of range or inconsistent.
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

/// Whether the dotted key `path` (`turn.secrets[0]`, `admin.token`, ...) holds a secret (a
/// `Secret` field or a list of them), whose value an error must not repeat: errors reach the
/// terminal and, on a reload, the journal.
fn holds_secrets(path: &str) -> bool {
    const SECRET_FIELDS: [&str; 5] = ["secrets", "token", "keys", "password", "credential"];
    path.split(['.', '[']).any(|part| {
        SECRET_FIELDS.contains(&part.trim_end_matches(|c: char| c == ']' || c.is_ascii_digit()))
    })
}

/// A deserializer's message without the value it quotes: serde's "invalid type: string
/// \"…\", expected a sequence" becomes "invalid type (value not shown, the key holds a
/// secret), expected a sequence".
fn without_value(message: &str) -> String {
    let hidden = "(value not shown, the key holds a secret)";
    for kind in ["invalid type", "invalid value"] {
        if let Some(rest) = message.strip_prefix(kind) {
            let expected = rest.rfind(", expected ").map_or("", |i| &rest[i..]);
            return format!("{kind} {hidden}{expected}");
        }
    }
    format!("wrong value {hidden}")
}

/// Builds `ConfigError::Invalid` for a dotted key of the file being checked; each section's
/// `validate` takes one, so its errors name the file without knowing it.
type Invalid<'a> = &'a dyn Fn(&str, String) -> ConfigError;

/// When a changed key takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Apply {
    /// A reload (SIGHUP) applies it to the running server.
    Live,
    /// It is read once at start (sockets, the relay setup, state keyed by it): a reload
    /// keeps the running value and names the key in a warning.
    Restart,
}

/// A key of the file, dotted (`turn.udp_listen`), and when a change to it takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    pub name: &'static str,
    pub apply: Apply,
}

/// A section of the file (a TOML table); implemented by `keys!` next to each struct.
trait Section {
    /// Every key of the section, in field order.
    const KEYS: &'static [Key];
    /// The keys whose values differ between `self` and `new`.
    fn changed(&self, new: &Self) -> Vec<Key>;
}

/// `ice_servers` is an array at the top level, not a section; `Live::new` hands it out.
const ICE_SERVERS: Key = Key {
    name: "ice_servers",
    apply: Apply::Live,
};

impl Config {
    /// Reads and validates the file at `path`.
    ///
    /// # Errors
    /// Fails when the file cannot be read, does not parse, or holds an invalid value.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::from_toml(&text, &path.display().to_string())?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Parses and validates TOML text; `file` names it in errors.
    ///
    /// # Errors
    /// Fails when the text does not parse or holds an invalid value.
    pub fn from_toml(text: &str, file: &str) -> Result<Config, ConfigError> {
        let parse_error = |key: String, message: String, span: Option<std::ops::Range<usize>>| {
            let line = span
                .map(|s| {
                    format!(
                        ":{}",
                        text[..s.start.min(text.len())].matches('\n').count() + 1
                    )
                })
                .unwrap_or_default();
            ConfigError::Parse {
                file: file.to_owned(),
                line,
                key,
                message,
            }
        };
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| parse_error(String::new(), e.message().to_owned(), e.span()))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let key = if path == "." || path.is_empty() {
                String::new()
            } else {
                format!("key `{path}`: ")
            };
            let inner = e.into_inner();
            let message = if holds_secrets(&path) {
                without_value(inner.message())
            } else {
                inner.message().to_owned()
            };
            parse_error(key, message, inner.span())
        })?;
        config.validate(file)?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.server.state_dir);
        if let Some(p) = self.acme.directory_ca.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.https.cert.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.https.key.as_mut() {
            resolve(p);
        }
    }

    /// Checks ranges and cross-field rules, section by section; the first refusal is returned.
    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            message,
        };
        let Config {
            server,
            log,
            https,
            http_redirect: _,
            signaling,
            turn,
            acme,
            admin,
            api,
            cluster,
            tokens,
            webhooks,
            ice_servers,
        } = self;
        tokens.validate(&invalid)?;
        webhooks.validate(&invalid)?;
        acme.validate(https, &invalid)?;
        cluster.validate(!turn.secrets.is_empty(), &invalid)?;
        admin.validate(&invalid)?;
        api.validate(&invalid)?;
        server.validate(&invalid)?;
        log.validate(&invalid)?;
        https.validate(&invalid)?;
        signaling.validate(&invalid)?;
        turn.validate(&invalid)?;
        ice_servers::validate(ice_servers, &invalid)
    }

    /// Every key of the file, in file order, and when a change to it takes effect.
    pub fn keys() -> impl Iterator<Item = Key> {
        [
            ServerConfig::KEYS,
            LogConfig::KEYS,
            HttpsConfig::KEYS,
            HttpRedirectConfig::KEYS,
            SignalingConfig::KEYS,
            TurnConfig::KEYS,
            AcmeConfig::KEYS,
            AdminConfig::KEYS,
            ApiConfig::KEYS,
            ClusterConfig::KEYS,
            TokensConfig::KEYS,
            WebhooksConfig::KEYS,
            &[ICE_SERVERS],
        ]
        .into_iter()
        .flatten()
        .copied()
    }

    /// The keys whose values differ between `self` and `new`, in file order, each with when
    /// it takes effect; a reload warns about those that need a restart.
    pub fn changes(&self, new: &Config) -> Vec<Key> {
        let Config {
            server,
            log,
            https,
            http_redirect,
            signaling,
            turn,
            acme,
            admin,
            api,
            cluster,
            tokens,
            webhooks,
            ice_servers,
        } = self;
        let mut changed = [
            server.changed(&new.server),
            log.changed(&new.log),
            https.changed(&new.https),
            http_redirect.changed(&new.http_redirect),
            signaling.changed(&new.signaling),
            turn.changed(&new.turn),
            acme.changed(&new.acme),
            admin.changed(&new.admin),
            api.changed(&new.api),
            cluster.changed(&new.cluster),
            tokens.changed(&new.tokens),
            webhooks.changed(&new.webhooks),
        ]
        .concat();
        if *ice_servers != new.ice_servers {
            changed.push(ICE_SERVERS);
        }
        changed
    }

    /// The configuration as TOML with every secret masked, for `check-config`.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot print configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests;
