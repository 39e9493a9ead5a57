//! The configuration file: parsing, defaults, validation, and the masked dump
//! that `switchboard check-config` prints.
//!
//! One submodule per section of the file owns its struct, its defaults and its checks;
//! this module holds `Config`, loading, `ConfigError` and the order of the checks.
//! Parsing is strict: unknown keys, wrong types and out-of-range values are
//! refused with the file, the dotted key and what was expected.
//! This module does no I/O beyond reading the file; the checks that need the
//! file system (certificate paths) live in `tls`.

mod acme;
mod admin;
mod api;
mod http_redirect;
mod https;
mod ice_servers;
mod log;
mod secret;
mod server;
mod signaling;
mod turn;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use acme::AcmeConfig;
pub use admin::AdminConfig;
pub use api::ApiConfig;
pub use http_redirect::HttpRedirectConfig;
pub use https::HttpsConfig;
pub use ice_servers::IceServerConfig;
pub use log::{LogConfig, LogFormat};
pub use secret::Secret;
pub use server::ServerConfig;
pub use signaling::SignalingConfig;
pub use turn::{StaticUser, TurnConfig};

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

/// Builds `ConfigError::Invalid` for a dotted key of the file being checked; each section's
/// `validate` takes one, so its errors name the file without knowing it.
type Invalid<'a> = &'a dyn Fn(&str, String) -> ConfigError;

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
            parse_error(key, inner.message().to_owned(), inner.span())
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
            ice_servers,
        } = self;
        acme.validate(https, &invalid)?;
        admin.validate(&invalid)?;
        api.validate(&invalid)?;
        server.validate(&invalid)?;
        log.validate(&invalid)?;
        https.validate(&invalid)?;
        signaling.validate(&invalid)?;
        turn.validate(&invalid)?;
        ice_servers::validate(ice_servers, &invalid)
    }

    /// The keys that differ between `self` and `new` but only take effect at start,
    /// because they need new sockets or a new relay setup.
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let (a, b) = (self, new);
        let checks = [
            ("server.state_dir", a.server.state_dir != b.server.state_dir),
            ("log.level", a.log.level != b.log.level),
            ("log.format", a.log.format != b.log.format),
            ("https.listen", a.https.listen != b.https.listen),
            (
                "http_redirect.listen",
                a.http_redirect.listen != b.http_redirect.listen,
            ),
            (
                "signaling.legacy_path",
                a.signaling.legacy_path != b.signaling.legacy_path,
            ),
            (
                "signaling.legacy_ws_listen",
                a.signaling.legacy_ws_listen != b.signaling.legacy_ws_listen,
            ),
            ("turn.enabled", a.turn.enabled != b.turn.enabled),
            ("turn.realm", a.turn.realm != b.turn.realm),
            ("turn.udp_listen", a.turn.udp_listen != b.turn.udp_listen),
            ("turn.tcp_listen", a.turn.tcp_listen != b.turn.tcp_listen),
            ("turn.tls_listen", a.turn.tls_listen != b.turn.tls_listen),
            ("turn.relay_ip", a.turn.relay_ip != b.turn.relay_ip),
            ("turn.relay_ipv6", a.turn.relay_ipv6 != b.turn.relay_ipv6),
            ("turn.external_ip", a.turn.external_ip != b.turn.external_ip),
            ("turn.min_port", a.turn.min_port != b.turn.min_port),
            ("turn.max_port", a.turn.max_port != b.turn.max_port),
            (
                "turn.grace_period_s",
                a.turn.grace_period_s != b.turn.grace_period_s,
            ),
            (
                "turn.on_https_port",
                a.turn.on_https_port != b.turn.on_https_port,
            ),
            (
                "turn.source_prefix_v6",
                a.turn.source_prefix_v6 != b.turn.source_prefix_v6,
            ),
            (
                "turn.allocate_timeout_s",
                a.turn.allocate_timeout_s != b.turn.allocate_timeout_s,
            ),
            ("admin.listen", a.admin.listen != b.admin.listen),
            ("acme", a.acme != b.acme),
        ];
        checks
            .into_iter()
            .filter_map(|(key, changed)| changed.then_some(key))
            .collect()
    }

    /// The configuration as TOML with every secret masked, for `check-config`.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot print configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn refused(text: &str) -> String {
        Config::from_toml(text, "test.toml")
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn shipped_config_parses_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let shipped = Config::load(&path).expect("shipped config.toml is valid");
        let defaults = Config::from_toml("", "empty").unwrap();
        let mut shipped_dump = shipped.clone();
        shipped_dump.server.state_dir = defaults.server.state_dir.clone();
        assert_eq!(shipped_dump.to_masked_toml(), defaults.to_masked_toml());
        assert_eq!(shipped.https.listen.len(), 2);
        assert!(shipped.server.state_dir.ends_with("certs"));
    }

    #[test]
    fn unknown_key_is_refused_with_its_path_and_line() {
        let err = refused("[signaling]\nroom_capacity = 4\nroom_capacty = 3\n");
        assert!(err.starts_with("test.toml:3: "), "{err}");
        assert!(err.contains("signaling"), "{err}");
        assert!(err.contains("unknown field `room_capacty`"), "{err}");
        let err = refused("[nonsense]\n");
        assert!(err.contains("unknown field `nonsense`"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = refused("[signaling]\nroom_capacity = \"four\"\n");
        assert!(err.contains("key `signaling.room_capacity`"), "{err}");
        assert!(err.contains("expected"), "{err}");
    }

    #[test]
    fn bad_port_names_the_key() {
        let err = refused("[https]\nlisten = [\"0.0.0.0:99999\"]\n");
        assert!(err.contains("key `https.listen[0]`"), "{err}");
        assert!(err.contains("socket address"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key_and_the_expectation() {
        let err = refused("[signaling]\nroom_capacity = 1\n");
        assert!(
            err.contains("key `signaling.room_capacity`") && err.contains("expected 2..=64, got 1"),
            "{err}"
        );
        let err = refused("[signaling]\nping_interval_s = 30\nidle_timeout_s = 30\n");
        assert!(err.contains("signaling.idle_timeout_s"), "{err}");
        let err = refused("[https]\ncert = \"c.pem\"\n");
        assert!(err.contains("key `https.key`"), "{err}");
        let err = refused("[signaling]\nallowed_origins = [\"example.com\"]\n");
        assert!(err.contains("signaling.allowed_origins[0]"), "{err}");
        let err = refused("[log]\nlevel = \"loud=\"\n");
        assert!(err.contains("log.level"), "{err}");
        let err = refused("[[ice_servers]]\nurls = [\"http://x\"]\n");
        assert!(err.contains("ice_servers[0].urls"), "{err}");
    }

    #[test]
    fn malformed_toml_gives_a_line() {
        let err = refused("[signaling\n");
        assert!(err.starts_with("test.toml:1"), "{err}");
    }

    #[test]
    fn secrets_are_masked_in_the_dump() {
        let config = Config::from_toml(
            "[[ice_servers]]\nurls = [\"turn:t\"]\nusername = \"u\"\ncredential = \"hunter2\"\n",
            "t",
        )
        .unwrap();
        let dump = config.to_masked_toml();
        assert!(
            !dump.contains("hunter2") && dump.contains("********"),
            "{dump}"
        );
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(
            config.ice_servers[0].credential.as_ref().unwrap().expose(),
            "hunter2"
        );
    }
}
