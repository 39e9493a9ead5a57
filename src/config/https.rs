//! `[https]`: the HTTPS/WSS listeners and their certificate.

use std::net::SocketAddr;
use std::path::PathBuf;

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
}

keys!(HttpsConfig in "https" {
    listen: Restart,
    // A reload loads the certificate of the new file into the `CertStore`.
    cert: Live,
    key: Live,
    extra_names: Live,
    cert_check_interval_s: Live,
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
        }
    }
}

impl HttpsConfig {
    pub(super) fn validate(&self, invalid: Invalid<'_>) -> Result<(), ConfigError> {
        if !(1..=86_400).contains(&self.cert_check_interval_s) {
            return Err(invalid(
                "https.cert_check_interval_s",
                format!(
                    "expected 1..=86400 seconds, got {}",
                    self.cert_check_interval_s
                ),
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
