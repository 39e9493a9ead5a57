//! `[cluster]`: several instances sharing rooms through Redis. Without `redis_url` (the
//! default) the instance is alone, needs no Redis, and nothing of this section applies.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid, Secret};

/// How this instance finds the others: a Redis server they all use.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://[[user]:password@]host:port[/db]`, `redis+unix:///path`, the Sentinels of a
    /// master (`redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]`,
    /// optionally `?sentinel_password=...`) or the seed nodes of a Redis Cluster
    /// (`redis+cluster://[[user]:password@]host:port[,host:port...]`); unset: no cluster.
    /// Masked by `check-config`, as it may hold a password.
    pub redis_url: Option<Secret>,
    /// This instance's name among the others (1-64 of `[A-Za-z0-9_.-]`); unset: one is
    /// generated into `server.state_dir` on first start and kept.
    pub instance_id: Option<String>,
    /// The host name or address browsers reach this instance by, shown to the others and
    /// in the admin API; unset: `turn.public_host`, else the host each browser used.
    pub public_host: Option<String>,
    /// Every key and channel name starts with this, so several clusters can share a Redis.
    pub key_prefix: String,
    /// How often this instance says it is alive, and looks for instances that are not.
    pub heartbeat_interval_ms: u64,
    /// How long an instance that stopped saying so (killed, cut off) keeps its peers in
    /// their rooms: after it, every other instance tells their rooms `peer_left`.
    pub heartbeat_ttl_ms: u64,
    /// How long one request to Redis (a join, a leave) may take before it counts as failed.
    pub timeout_ms: u64,
}

keys!(ClusterConfig in "cluster" {
    redis_url: Restart,
    instance_id: Restart,
    public_host: Restart,
    key_prefix: Restart,
    heartbeat_interval_ms: Restart,
    heartbeat_ttl_ms: Restart,
    timeout_ms: Restart,
});

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: None,
            instance_id: None,
            public_host: None,
            key_prefix: "switchboard".to_owned(),
            heartbeat_interval_ms: 1_000,
            heartbeat_ttl_ms: 5_000,
            timeout_ms: 2_000,
        }
    }
}

/// Whether `id` may name an instance (it is part of Redis keys and channel names).
pub fn valid_instance_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl ClusterConfig {
    /// Whether this instance is part of a cluster.
    pub fn enabled(&self) -> bool {
        self.redis_url.is_some()
    }

    pub(super) fn validate(
        &self,
        turn_secrets_set: bool,
        invalid: Invalid<'_>,
    ) -> Result<(), ConfigError> {
        if let Some(url) = &self.redis_url {
            if let Err(e) = super::RedisUrl::parse(url.expose()) {
                return Err(invalid(
                    "cluster.redis_url",
                    format!(
                        "{e}; expected redis://[[user]:password@]host:port[/db], \
                         redis+unix:///path, redis+sentinel://[[user]:password@]host:port[,...]/service[/db] \
                         or redis+cluster://[[user]:password@]host:port[,...] (TLS to Redis, \
                         rediss://, is not supported yet: use a local TLS tunnel)"
                    ),
                ));
            }
            if !turn_secrets_set {
                return Err(invalid(
                    "turn.secrets",
                    "a cluster needs the same TURN secret on every instance: set turn.secrets \
                     (a credential minted by one instance is checked by another)"
                        .to_owned(),
                ));
            }
        }
        if let Some(id) = &self.instance_id
            && !valid_instance_id(id)
        {
            return Err(invalid(
                "cluster.instance_id",
                format!("expected 1-64 of [A-Za-z0-9_.-], got {id:?}"),
            ));
        }
        if self.key_prefix.is_empty()
            || self.key_prefix.len() > 64
            || !self
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'))
        {
            return Err(invalid(
                "cluster.key_prefix",
                format!(
                    "expected 1-64 of [A-Za-z0-9_.:-], got {:?}",
                    self.key_prefix
                ),
            ));
        }
        if !(100..=60_000).contains(&self.heartbeat_interval_ms) {
            return Err(invalid(
                "cluster.heartbeat_interval_ms",
                format!(
                    "expected 100 to 60000 ms, got {}",
                    self.heartbeat_interval_ms
                ),
            ));
        }
        if self.heartbeat_ttl_ms < 2 * self.heartbeat_interval_ms.max(self.timeout_ms)
            || self.heartbeat_ttl_ms > 600_000
        {
            return Err(invalid(
                "cluster.heartbeat_ttl_ms",
                format!(
                    "expected at least twice cluster.heartbeat_interval_ms and twice \
                     cluster.timeout_ms ({}; else a slow Redis gets a live instance taken for \
                     dead) and at most 600000 ms, got {}",
                    2 * self.heartbeat_interval_ms.max(self.timeout_ms),
                    self.heartbeat_ttl_ms
                ),
            ));
        }
        if !(50..=60_000).contains(&self.timeout_ms) {
            return Err(invalid(
                "cluster.timeout_ms",
                format!("expected 50 to 60000 ms, got {}", self.timeout_ms),
            ));
        }
        Ok(())
    }
}
