//! `[[ice_servers]]`: extra STUN/TURN servers handed to every peer as they are.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid, Secret};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IceServerConfig {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Secret>,
}

/// Checks every entry of `ice_servers`: at least one URL each, all of a STUN or TURN scheme.
pub(super) fn validate(
    servers: &[IceServerConfig],
    invalid: Invalid<'_>,
) -> Result<(), ConfigError> {
    for (i, server) in servers.iter().enumerate() {
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
