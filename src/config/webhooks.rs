//! `[webhooks]`: signed HTTP POSTs to the application when rooms start and finish, peers
//! join and leave, and allocations close.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid, Secret};

/// The bytes a signing secret keys the HMAC with: `whsec_` and the base64 of at least 16
/// bytes (the Standard Webhooks form, which its libraries decode the same way); `None`
/// for anything else.
pub fn signing_key_bytes(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let encoded = secret.strip_prefix("whsec_")?;
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
        .filter(|b| b.len() >= 16)
}

/// The events a webhook endpoint can be sent.
pub const EVENTS: [&str; 5] = [
    "room_started",
    "room_finished",
    "peer_joined",
    "peer_left",
    "allocation_closed",
];

/// Where events are posted, how they are signed, and how hard delivery tries.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Endpoints (`http://` or `https://`), each sent every event, in order; empty turns
    /// webhooks off.
    pub urls: Vec<String>,
    /// Signing secrets, `whsec_` and the base64 of 16 bytes or more (the Standard Webhooks
    /// form); every one signs each event, so a receiver can rotate.
    pub secrets: Vec<Secret>,
    /// The events sent (all when empty).
    pub events: Vec<String>,
    /// Events waiting for an endpoint, past which new ones are dropped and counted.
    pub max_queue: usize,
    /// Requests in flight to one endpoint at once; the events of one room (of one
    /// plain-WebSocket user) always go one after another, in order.
    pub concurrency: usize,
    /// Attempts per event before it is given up and counted (dead letter).
    pub max_attempts: u32,
    /// Seconds an attempt may take, connection included.
    pub timeout_s: u64,
}

keys!(WebhooksConfig in "webhooks" {
    urls: Restart,
    secrets: Live,
    events: Live,
    max_queue: Restart,
    concurrency: Restart,
    max_attempts: Live,
    timeout_s: Live,
});

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            urls: Vec::new(),
            secrets: Vec::new(),
            events: Vec::new(),
            max_queue: 10_000,
            concurrency: 4,
            max_attempts: 8,
            timeout_s: 5,
        }
    }
}

impl WebhooksConfig {
    pub(super) fn validate(&self, invalid: Invalid<'_>) -> Result<(), ConfigError> {
        for (i, url) in self.urls.iter().enumerate() {
            let key = format!("webhooks.urls[{i}]");
            let parsed: hyper::Uri = url
                .parse()
                .map_err(|e| invalid(&key, format!("expected an http:// or https:// URL: {e}")))?;
            if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none() {
                return Err(invalid(
                    &key,
                    "expected an http:// or https:// URL with a host".to_owned(),
                ));
            }
        }
        if !self.urls.is_empty() && self.secrets.is_empty() {
            return Err(invalid(
                "webhooks.secrets",
                "set at least one signing secret when webhooks.urls is set (e.g. whsec_ and \
                 the base64 of 24 random bytes: `openssl rand -base64 24`)"
                    .to_owned(),
            ));
        }
        if let Some(i) = self
            .secrets
            .iter()
            .position(|s| signing_key_bytes(s.expose()).is_none())
        {
            return Err(invalid(
                &format!("webhooks.secrets[{i}]"),
                "expected whsec_ and the base64 of at least 16 random bytes (e.g. whsec_ then \
                 the output of `openssl rand -base64 24`)"
                    .to_owned(),
            ));
        }
        if let Some(event) = self.events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
            return Err(invalid(
                "webhooks.events",
                format!(
                    "unknown event {event:?}; expected some of {}",
                    EVENTS.join(", ")
                ),
            ));
        }
        if !(1..=1_000_000).contains(&self.max_queue) {
            return Err(invalid(
                "webhooks.max_queue",
                format!("expected 1 to 1000000 events, got {}", self.max_queue),
            ));
        }
        if !(1..=64).contains(&self.concurrency) {
            return Err(invalid(
                "webhooks.concurrency",
                format!("expected 1 to 64 requests, got {}", self.concurrency),
            ));
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(invalid(
                "webhooks.max_attempts",
                format!("expected 1 to 100, got {}", self.max_attempts),
            ));
        }
        if !(1..=60).contains(&self.timeout_s) {
            return Err(invalid(
                "webhooks.timeout_s",
                format!("expected 1 to 60 seconds, got {}", self.timeout_s),
            ));
        }
        Ok(())
    }

    /// Whether `event` is sent.
    pub fn wants(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }
}
