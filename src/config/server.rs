//! `[server]`: the state directory and the shutdown grace period.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Directory for generated certificates and secrets, relative to the config file.
    pub state_dir: PathBuf,
    /// How long open connections get to close after SIGINT/SIGTERM.
    pub shutdown_timeout_s: u64,
    /// How long a drain (`switchboard drain`, SIGUSR1) lets the calls on this instance run
    /// before it shuts down anyway.
    pub drain_timeout_s: u64,
}

keys!(ServerConfig in "server" {
    // Where the running server keeps its generated files.
    state_dir: Restart,
    // Read when shutdown begins.
    shutdown_timeout_s: Live,
    // Read when a drain begins.
    drain_timeout_s: Live,
});

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            state_dir: PathBuf::from("certs"),
            shutdown_timeout_s: 5,
            drain_timeout_s: 3_600,
        }
    }
}

impl ServerConfig {
    pub(super) fn validate(&self, invalid: Invalid<'_>) -> Result<(), ConfigError> {
        if self.shutdown_timeout_s == 0 || self.shutdown_timeout_s > 300 {
            return Err(invalid(
                "server.shutdown_timeout_s",
                format!("expected 1..=300 seconds, got {}", self.shutdown_timeout_s),
            ));
        }
        if self.drain_timeout_s > 86_400 {
            return Err(invalid(
                "server.drain_timeout_s",
                format!("expected 0..=86400 seconds, got {}", self.drain_timeout_s),
            ));
        }
        Ok(())
    }
}
