//! `[https]`: the HTTPS/WSS listeners and their certificate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid};

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
    /// Most open connections on the HTTPS and plain-HTTP listeners together, counted at
    /// accept, before TLS (TURN on the HTTPS port included; a WebSocket until upgraded).
    pub max_connections: usize,
    /// Most of them from one IPv4 address or IPv6 network (`signaling.source_prefix_v6`).
    pub max_connections_per_source: usize,
    /// Seconds from accept to the first complete request (TLS handshake and headers
    /// included), and for each request's body.
    pub request_timeout_s: u64,
    /// Seconds an HTTP/1.1 or HTTP/2 connection may stay open with no request in flight.
    pub idle_timeout_s: u64,
    /// Proxies (addresses or networks) whose word about the client is taken: their
    /// `X-Forwarded-For`, and with `proxy_protocol` their PROXY header. Empty: nobody's.
    pub trusted_proxies: Vec<String>,
    /// Connections from `trusted_proxies` begin with a PROXY protocol header (v1 or v2).
    pub proxy_protocol: bool,
}

keys!(HttpsConfig in "https" {
    listen: Restart,
    // A reload loads the certificate of the new file into the `CertStore`.
    cert: Live,
    key: Live,
    extra_names: Live,
    cert_check_interval_s: Live,
    max_connections: Live,
    max_connections_per_source: Live,
    request_timeout_s: Live,
    idle_timeout_s: Live,
    trusted_proxies: Live,
    proxy_protocol: Live,
});

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
            max_connections: 20_000,
            max_connections_per_source: 200,
            request_timeout_s: 10,
            idle_timeout_s: 60,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
        }
    }
}

impl HttpsConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_s)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_s)
    }

    pub(super) fn validate(&self, invalid: Invalid<'_>) -> Result<(), ConfigError> {
        let ranges = [
            (
                "https.cert_check_interval_s",
                self.cert_check_interval_s,
                1,
                86_400,
            ),
            (
                "https.max_connections",
                self.max_connections as u64,
                1,
                10_000_000,
            ),
            (
                "https.max_connections_per_source",
                self.max_connections_per_source as u64,
                1,
                10_000_000,
            ),
            ("https.request_timeout_s", self.request_timeout_s, 1, 600),
            ("https.idle_timeout_s", self.idle_timeout_s, 1, 86_400),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(invalid(key, format!("expected {min}..={max}, got {value}")));
            }
        }
        for proxy in &self.trusted_proxies {
            if let Err(message) = proxy.parse::<crate::model::Cidr>() {
                return Err(invalid("https.trusted_proxies", message));
            }
        }
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            return Err(invalid(
                "https.proxy_protocol",
                "is on, so `https.trusted_proxies` must name the proxies that send the header"
                    .to_owned(),
            ));
        }
        if self.listen.is_empty() {
            return Err(invalid(
                "https.listen",
                "expected at least one address such as \"0.0.0.0:8443\"".to_owned(),
            ));
        }
        match (&self.cert, &self.key) {
            (Some(_), None) => Err(invalid(
                "https.key",
                "`https.cert` is set, so `https.key` must name its private key file".to_owned(),
            )),
            (None, Some(_)) => Err(invalid(
                "https.cert",
                "`https.key` is set, so `https.cert` must name its certificate file".to_owned(),
            )),
            _ => Ok(()),
        }
    }
}
