//! `[http_redirect]`: plain-HTTP listeners that only redirect to HTTPS.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpRedirectConfig {
    /// Plain-HTTP addresses that only redirect to HTTPS; empty means off.
    pub listen: Vec<SocketAddr>,
}

keys!(HttpRedirectConfig in "http_redirect" {
    listen: Restart,
});
