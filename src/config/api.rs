//! `[api]`: keys of `GET /api/v1/ice-servers` on the HTTPS listener.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid, Secret};

/// `GET /api/v1/ice-servers` on the HTTPS listener, for app backends with their own signaling.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// API keys accepted as `Authorization: Bearer KEY`; empty turns the endpoint off.
    pub keys: Vec<Secret>,
}

keys!(ApiConfig in "api" {
    keys: Live,
});

impl ApiConfig {
    pub(super) fn validate(&self, invalid: Invalid<'_>) -> Result<(), ConfigError> {
        if let Some(i) = self.keys.iter().position(|k| k.expose().len() < 16) {
            return Err(invalid(
                &format!("api.keys[{i}]"),
                "expected at least 16 characters".to_owned(),
            ));
        }
        Ok(())
    }
}
