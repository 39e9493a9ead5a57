//! `[acme]`: automatic certificates from an ACME CA.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, HttpsConfig, Invalid};

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

keys!(AcmeConfig in "acme" {
    // The renewal task is given the configuration it started with.
    enabled: Restart,
    domains: Restart,
    contact: Restart,
    directory: Restart,
    directory_ca: Restart,
    renew_before_days: Restart,
});

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

impl AcmeConfig {
    /// Checks the section, and that `https` sets no certificate of its own when ACME is on.
    pub(super) fn validate(
        &self,
        https: &HttpsConfig,
        invalid: Invalid<'_>,
    ) -> Result<(), ConfigError> {
        let a = self;
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
}
