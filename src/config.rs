//! The configuration file: parsing, defaults, validation, and the masked dump
//! that `switchboard check-config` prints.
//!
//! Parsing is strict: unknown keys, wrong types and out-of-range values are
//! refused with the file, the dotted key and what was expected.
//! This module does no I/O beyond reading the file; the checks that need the
//! file system (certificate paths) live in `tls`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

/// Automatic certificates from an ACME CA (RFC 8555) by TLS-ALPN-01 on the HTTPS port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    pub enabled: bool,
    /// DNS names of the certificate; they must resolve to this host and reach `https.listen` on 443.
    pub domains: Vec<String>,
    /// Contact URLs for the CA's expiry warnings, e.g. `mailto:ops@example.com`.
    pub contact: Vec<String>,
    /// The CA's directory URL.
    pub directory: String,
    /// PEM CA certificates to trust for the directory (a private CA); unset: the web PKI.
    pub directory_ca: Option<PathBuf>,
    /// Days before expiry to renew.
    pub renew_before_days: u64,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            enabled: false,
            domains: Vec::new(),
            contact: Vec::new(),
            directory: "https://acme-v02.api.letsencrypt.org/directory".to_owned(),
            directory_ca: None,
            renew_before_days: 30,
        }
    }
}

/// The admin listener: Prometheus `/metrics` and the admin API (plain HTTP).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Addresses of the admin listener; empty means none. Loopback by default.
    pub listen: Vec<SocketAddr>,
    /// Bearer token of the admin API; unset means one is generated into `server.state_dir`.
    pub token: Option<Secret>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: vec!["127.0.0.1:9478".parse().expect("valid literal")],
            token: None,
        }
    }
}

/// `GET /api/v1/ice-servers` on the HTTPS listener, for app backends with their own signaling.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// API keys accepted as `Authorization: Bearer KEY`; empty turns the endpoint off.
    pub keys: Vec<Secret>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Directory for generated certificates and secrets, relative to the config file.
    pub state_dir: PathBuf,
    /// How long open connections get to close after SIGINT/SIGTERM.
    pub shutdown_timeout_s: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            state_dir: PathBuf::from("certs"),
            shutdown_timeout_s: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `switchboard=debug`; `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpsConfig {
    /// Addresses for HTTPS and WSS. An IPv6 wildcard is skipped with a warning on hosts without IPv6.
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain; when unset, a self-signed certificate is generated in `server.state_dir`.
    pub cert: Option<PathBuf>,
    /// PEM private key matching `cert`.
    pub key: Option<PathBuf>,
    /// Extra DNS names or IP addresses for the generated self-signed certificate.
    pub extra_names: Vec<String>,
    /// Seconds between checks of `cert` and `key` on disk; changed files are loaded
    /// without a restart (certbot renewals).
    pub cert_check_interval_s: u64,
}

impl Default for HttpsConfig {
    fn default() -> Self {
        HttpsConfig {
            listen: vec![
                "0.0.0.0:8443".parse().expect("valid literal"),
                "[::]:8443".parse().expect("valid literal"),
            ],
            cert: None,
            key: None,
            extra_names: Vec::new(),
            cert_check_interval_s: 60,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpRedirectConfig {
    /// Plain-HTTP addresses that only redirect to HTTPS; empty means off.
    pub listen: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalingConfig {
    pub room_capacity: usize,
    pub max_rooms: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_message_bytes: usize,
    pub messages_per_second: u32,
    pub message_burst: u32,
    pub join_timeout_s: u64,
    pub ping_interval_s: u64,
    pub idle_timeout_s: u64,
    /// Origins allowed to open `/ws`; empty means the page's own origin, `"*"` means any.
    pub allowed_origins: Vec<String>,
    /// Path of the plain-WebSocket dialect (login/offer/answer/candidate/leave) on the HTTPS listener.
    pub legacy_path: String,
    /// Plain `ws://` listeners for that dialect only, for old clients that hard-code one; empty means off.
    pub legacy_ws_listen: Vec<SocketAddr>,
    /// Room capacity of the socket.io dialect (the tutorials allow 2).
    pub socketio_room_capacity: usize,
    /// Send the codelab's `log` events (server log lines) to socket.io clients.
    pub socketio_log: bool,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        SignalingConfig {
            room_capacity: 4,
            max_rooms: 10_000,
            max_connections: 10_000,
            max_connections_per_ip: 50,
            max_message_bytes: 64 * 1024,
            messages_per_second: 20,
            message_burst: 60,
            join_timeout_s: 30,
            ping_interval_s: 15,
            idle_timeout_s: 45,
            allowed_origins: Vec::new(),
            legacy_path: "/legacy".to_owned(),
            legacy_ws_listen: Vec::new(),
            socketio_room_capacity: 2,
            socketio_log: false,
        }
    }
}

impl TurnConfig {
    pub fn credential_ttl(&self) -> Duration {
        Duration::from_secs(self.credential_ttl_s)
    }
}

impl SignalingConfig {
    pub fn join_timeout(&self) -> Duration {
        Duration::from_secs(self.join_timeout_s)
    }
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_s)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_s)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnConfig {
    pub enabled: bool,
    pub realm: String,
    pub udp_listen: Vec<SocketAddr>,
    pub tcp_listen: Vec<SocketAddr>,
    pub tls_listen: Vec<SocketAddr>,
    /// The IPv4 address relay sockets bind to; unset means the address of the default route.
    pub relay_ip: Option<std::net::IpAddr>,
    /// The IPv6 address for IPv6 relays; unset means no IPv6 relays.
    pub relay_ipv6: Option<std::net::IpAddr>,
    /// The public address advertised in XOR-RELAYED-ADDRESS behind 1:1 NAT (cloud VMs).
    pub external_ip: Option<std::net::IpAddr>,
    pub min_port: u16,
    pub max_port: u16,
    /// Host name in the `turn:`/`turns:`/`stun:` URLs; unset means the host the browser used.
    pub public_host: Option<String>,
    pub credential_ttl_s: u64,
    /// REST secrets: the first mints, all are accepted. Unset means one is generated.
    pub secrets: Vec<Secret>,
    pub static_users: Vec<StaticUser>,
    pub grace_period_s: u64,
    /// Serve TURN on the HTTPS port too (TLS, and plain TCP), for networks that allow only 443.
    pub on_https_port: bool,
    /// Allocations per signaling peer in its room (whatever the expiry of the credentials it
    /// is handed), and per credential for room, REST and static credentials. The key keeps
    /// its name (and coturn's `user-quota` maps to it).
    pub max_allocations_per_credential: usize,
    /// Allocations per room of one dialect (native and socket.io rooms are separate).
    pub max_allocations_per_room: usize,
    /// Allocations per client IPv4 address or IPv6 network (of `source_prefix_v6` bits).
    pub max_allocations_per_source: usize,
    pub max_allocations: usize,
    /// TURN connections over TCP and TLS (the HTTPS port's included), in total and per source.
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    /// IPv6 sources are counted per network of this prefix length.
    pub source_prefix_v6: u8,
    /// Seconds a TCP/TLS connection may stay open without a successful Allocate.
    pub allocate_timeout_s: u64,
    /// Answers to unauthenticated TURN requests per second per source address.
    pub challenges_per_source_s: u32,
    /// CIDR lists that override the built-in deny list of special-purpose peer addresses.
    pub allow_peers: Vec<String>,
    pub deny_peers: Vec<String>,
}

impl Default for TurnConfig {
    fn default() -> Self {
        let both = |port: u16| {
            vec![
                SocketAddr::from(([0, 0, 0, 0], port)),
                SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
            ]
        };
        TurnConfig {
            enabled: true,
            realm: "switchboard".to_owned(),
            udp_listen: both(3478),
            tcp_listen: both(3478),
            tls_listen: both(5349),
            relay_ip: None,
            relay_ipv6: None,
            external_ip: None,
            min_port: 49152,
            max_port: 65535,
            public_host: None,
            credential_ttl_s: 600,
            secrets: Vec::new(),
            static_users: Vec::new(),
            grace_period_s: 5,
            on_https_port: true,
            max_allocations_per_credential: 32,
            max_allocations_per_room: 128,
            max_allocations_per_source: 256,
            max_allocations: 10_000,
            max_connections: 10_000,
            max_connections_per_source: 256,
            source_prefix_v6: 64,
            allocate_timeout_s: 20,
            challenges_per_source_s: 500,
            allow_peers: Vec::new(),
            deny_peers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticUser {
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IceServerConfig {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Secret>,
}

/// A string that must never be printed: `Debug` and `Serialize` show a mask.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(********)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("********")
    }
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
            signaling: s,
            turn,
            acme,
            admin,
            api,
            ice_servers,
        } = self;
        validate_acme(acme, https, &invalid)?;
        if let Some(token) = &admin.token
            && token.expose().len() < 16
        {
            return Err(invalid(
                "admin.token",
                "expected at least 16 characters (or leave it unset to have one generated)"
                    .to_owned(),
            ));
        }
        if let Some(i) = api.keys.iter().position(|k| k.expose().len() < 16) {
            return Err(invalid(
                &format!("api.keys[{i}]"),
                "expected at least 16 characters".to_owned(),
            ));
        }
        if server.shutdown_timeout_s == 0 || server.shutdown_timeout_s > 300 {
            return Err(invalid(
                "server.shutdown_timeout_s",
                format!(
                    "expected 1..=300 seconds, got {}",
                    server.shutdown_timeout_s
                ),
            ));
        }
        if !log_filter_valid(&log.level) {
            return Err(invalid(
                "log.level",
                format!(
                    "expected a level (error, warn, info, debug, trace) or a filter such as \"switchboard=debug\", got {:?}",
                    log.level
                ),
            ));
        }
        if !(1..=86_400).contains(&https.cert_check_interval_s) {
            return Err(invalid(
                "https.cert_check_interval_s",
                format!(
                    "expected 1..=86400 seconds, got {}",
                    https.cert_check_interval_s
                ),
            ));
        }
        if https.listen.is_empty() {
            return Err(invalid(
                "https.listen",
                "expected at least one address such as \"0.0.0.0:8443\"".to_owned(),
            ));
        }
        match (&https.cert, &https.key) {
            (Some(_), None) => {
                return Err(invalid(
                    "https.key",
                    "`https.cert` is set, so `https.key` must name its private key file".to_owned(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "https.cert",
                    "`https.key` is set, so `https.cert` must name its certificate file".to_owned(),
                ));
            }
            _ => {}
        }
        let ranges: [(&str, u64, u64, u64); 11] = [
            ("signaling.room_capacity", s.room_capacity as u64, 2, 64),
            (
                "signaling.socketio_room_capacity",
                s.socketio_room_capacity as u64,
                2,
                64,
            ),
            ("signaling.max_rooms", s.max_rooms as u64, 1, 10_000_000),
            (
                "signaling.max_connections",
                s.max_connections as u64,
                1,
                10_000_000,
            ),
            (
                "signaling.max_connections_per_ip",
                s.max_connections_per_ip as u64,
                1,
                10_000_000,
            ),
            (
                "signaling.max_message_bytes",
                s.max_message_bytes as u64,
                1024,
                16 * 1024 * 1024,
            ),
            (
                "signaling.messages_per_second",
                u64::from(s.messages_per_second),
                1,
                1_000_000,
            ),
            (
                "signaling.message_burst",
                u64::from(s.message_burst),
                1,
                1_000_000,
            ),
            ("signaling.join_timeout_s", s.join_timeout_s, 1, 3600),
            ("signaling.ping_interval_s", s.ping_interval_s, 1, 3600),
            ("signaling.idle_timeout_s", s.idle_timeout_s, 1, 3600),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(invalid(key, format!("expected {min}..={max}, got {value}")));
            }
        }
        if s.idle_timeout_s <= s.ping_interval_s {
            return Err(invalid(
                "signaling.idle_timeout_s",
                format!(
                    "must be greater than signaling.ping_interval_s ({}), got {}",
                    s.ping_interval_s, s.idle_timeout_s
                ),
            ));
        }
        for (i, origin) in s.allowed_origins.iter().enumerate() {
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            let ok = origin == "*"
                || host.is_some_and(|h| !h.is_empty() && !h.contains(['/', ' ', '*']));
            if !ok {
                return Err(invalid(
                    &format!("signaling.allowed_origins[{i}]"),
                    format!(
                        "expected \"*\" or an origin such as \"https://example.com:8443\", got {origin:?}"
                    ),
                ));
            }
        }
        crate::routes::check_extra(&s.legacy_path)
            .map_err(|message| invalid("signaling.legacy_path", message))?;
        validate_turn(turn, &invalid)?;
        for (i, server) in ice_servers.iter().enumerate() {
            if server.urls.is_empty() {
                return Err(invalid(
                    &format!("ice_servers[{i}].urls"),
                    "expected at least one URL such as \"stun:stun.example.com:3478\"".to_owned(),
                ));
            }
            for url in &server.urls {
                if !["stun:", "stuns:", "turn:", "turns:"]
                    .iter()
                    .any(|p| url.starts_with(p))
                {
                    return Err(invalid(
                        &format!("ice_servers[{i}].urls"),
                        format!("expected a stun:, stuns:, turn: or turns: URL, got {url:?}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The configuration as TOML with every secret masked, for `check-config`.
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

    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot print configuration: {e}\n"))
    }
}

fn validate_acme(
    a: &AcmeConfig,
    https: &HttpsConfig,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    if !a.enabled {
        return Ok(());
    }
    if a.domains.is_empty() {
        return Err(invalid(
            "acme.domains",
            "expected at least one DNS name such as \"call.example.com\" when acme.enabled is true"
                .to_owned(),
        ));
    }
    for (i, d) in a.domains.iter().enumerate() {
        let ok = !d.is_empty()
            && d.len() <= 253
            && d.parse::<std::net::IpAddr>().is_err()
            && d.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !ok {
            return Err(invalid(
                &format!("acme.domains[{i}]"),
                format!("expected a DNS name such as \"call.example.com\", got {d:?}"),
            ));
        }
    }
    if let Some(i) = a.contact.iter().position(|c| !c.starts_with("mailto:")) {
        return Err(invalid(
            &format!("acme.contact[{i}]"),
            "expected a mailto: URL such as \"mailto:ops@example.com\"".to_owned(),
        ));
    }
    if !a.directory.starts_with("https://") {
        return Err(invalid(
            "acme.directory",
            format!("expected an https:// URL, got {:?}", a.directory),
        ));
    }
    if https.cert.is_some() || https.key.is_some() {
        return Err(invalid(
            "acme.enabled",
            "ACME and https.cert/https.key both set a certificate; remove one".to_owned(),
        ));
    }
    if !(1..=60).contains(&a.renew_before_days) {
        return Err(invalid(
            "acme.renew_before_days",
            format!("expected 1..=60 days, got {}", a.renew_before_days),
        ));
    }
    Ok(())
}

fn validate_turn(
    t: &TurnConfig,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    if t.realm.is_empty() || t.realm.len() > 127 {
        return Err(invalid(
            "turn.realm",
            "expected 1 to 127 characters".to_owned(),
        ));
    }
    if t.min_port == 0 || t.min_port > t.max_port {
        return Err(invalid(
            "turn.min_port",
            format!(
                "expected 1..=turn.max_port ({}), got {}",
                t.max_port, t.min_port
            ),
        ));
    }
    if !(5..=86_400).contains(&t.credential_ttl_s) {
        return Err(invalid(
            "turn.credential_ttl_s",
            format!("expected 5..=86400 seconds, got {}", t.credential_ttl_s),
        ));
    }
    if !(1..=1_000_000).contains(&t.challenges_per_source_s) {
        return Err(invalid(
            "turn.challenges_per_source_s",
            format!(
                "expected 1..=1000000 per second, got {}",
                t.challenges_per_source_s
            ),
        ));
    }
    if !(1..=3600).contains(&t.allocate_timeout_s) {
        return Err(invalid(
            "turn.allocate_timeout_s",
            format!("expected 1..=3600 seconds, got {}", t.allocate_timeout_s),
        ));
    }
    if !(16..=128).contains(&t.source_prefix_v6) {
        return Err(invalid(
            "turn.source_prefix_v6",
            format!(
                "expected a prefix length of 16..=128 (64 counts each subscriber's /64 once), got {}",
                t.source_prefix_v6
            ),
        ));
    }
    if t.grace_period_s > 3600 {
        return Err(invalid(
            "turn.grace_period_s",
            format!("expected 0..=3600 seconds, got {}", t.grace_period_s),
        ));
    }
    for (key, value) in [
        (
            "turn.max_allocations_per_credential",
            t.max_allocations_per_credential,
        ),
        ("turn.max_allocations_per_room", t.max_allocations_per_room),
        (
            "turn.max_allocations_per_source",
            t.max_allocations_per_source,
        ),
        ("turn.max_allocations", t.max_allocations),
        ("turn.max_connections", t.max_connections),
        (
            "turn.max_connections_per_source",
            t.max_connections_per_source,
        ),
    ] {
        if value == 0 {
            return Err(invalid(key, "expected at least 1".to_owned()));
        }
    }
    for (key, ip, v6) in [
        ("turn.external_ip", t.external_ip, None),
        ("turn.relay_ip", t.relay_ip, Some(false)),
        ("turn.relay_ipv6", t.relay_ipv6, Some(true)),
    ] {
        let Some(ip) = ip else { continue };
        if ip.is_unspecified()
            || ip.is_multicast()
            || (key == "turn.external_ip" && ip.is_loopback())
        {
            return Err(invalid(
                key,
                format!("expected a unicast address of this host's network, got {ip}"),
            ));
        }
        if v6.is_some_and(|v6| v6 != ip.is_ipv6()) {
            let family = if v6 == Some(true) { "IPv6" } else { "IPv4" };
            return Err(invalid(
                key,
                format!("expected an {family} address, got {ip}"),
            ));
        }
    }
    for (key, list) in [
        ("turn.allow_peers", &t.allow_peers),
        ("turn.deny_peers", &t.deny_peers),
    ] {
        for (i, cidr) in list.iter().enumerate() {
            if let Err(message) = cidr.parse::<crate::turn::policy::Cidr>() {
                return Err(invalid(&format!("{key}[{i}]"), message));
            }
        }
    }
    for (i, secret) in t.secrets.iter().enumerate() {
        if secret.expose().len() < 16 {
            return Err(invalid(
                &format!("turn.secrets[{i}]"),
                "expected at least 16 characters (generate one with `openssl rand -hex 32`)"
                    .to_owned(),
            ));
        }
    }
    Ok(())
}

/// Whether `filter` is a list of `LEVEL` or `TARGET=LEVEL` directives.
///
/// `EnvFilter` alone accepts a typo such as `inf` as a target name, which would
/// silence every log line; this check insists on a known level in each directive.
fn log_filter_valid(filter: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let directives_ok = filter.split(',').map(str::trim).all(|d| {
        let level = d.rsplit_once('=').map_or(d, |(_, level)| level);
        LEVELS.contains(&level.to_ascii_lowercase().as_str())
    });
    directives_ok && tracing_subscriber::EnvFilter::try_new(filter).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filters_need_known_levels() {
        for ok in [
            "info",
            "debug",
            "switchboard=debug,info",
            "warn,hyper=error",
        ] {
            assert!(log_filter_valid(ok), "{ok}");
        }
        for bad in ["inf", "loud=", "switchboard=verbose", "", "info,"] {
            assert!(!log_filter_valid(bad), "{bad}");
        }
    }

    fn refused(text: &str) -> String {
        Config::from_toml(text, "test.toml")
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn a_legacy_path_on_another_route_is_refused_by_its_key() {
        for path in [
            "/diag",
            "/api/v1/ice-servers",
            "/ws",
            "/static/x",
            "/socket.io",
        ] {
            let err = refused(&format!("[signaling]\nlegacy_path = \"{path}\"\n"));
            assert!(err.contains("signaling.legacy_path"), "{path}: {err}");
        }
        assert!(Config::from_toml("[signaling]\nlegacy_path = \"/plain\"\n", "t").is_ok());
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
