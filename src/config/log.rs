//! `[log]`: the `tracing` filter and the output format.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `switchboard=debug`; `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

keys!(LogConfig in "log" {
    // The subscriber is installed once, at start.
    level: Restart,
    format: Restart,
});

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

impl LogConfig {
    pub(super) fn validate(&self, invalid: Invalid<'_>) -> Result<(), ConfigError> {
        if !filter_valid(&self.level) {
            return Err(invalid(
                "log.level",
                format!(
                    "expected a level (error, warn, info, debug, trace) or a filter such as \"switchboard=debug\", got {:?}",
                    self.level
                ),
            ));
        }
        Ok(())
    }
}

/// Whether `filter` is a list of `LEVEL` or `TARGET=LEVEL` directives.
///
/// `EnvFilter` alone accepts a typo such as `inf` as a target name, which would
/// silence every log line; this check insists on a known level in each directive.
fn filter_valid(filter: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let directives_ok = filter.split(',').map(str::trim).all(|d| {
        let level = d.rsplit_once('=').map_or(d, |(_, level)| level);
        LEVELS.contains(&level.to_ascii_lowercase().as_str())
    });
    directives_ok && tracing_subscriber::EnvFilter::try_new(filter).is_ok()
}

#[cfg(test)]
mod tests {
    use super::filter_valid;

    #[test]
    fn log_filters_need_known_levels() {
        for ok in [
            "info",
            "debug",
            "switchboard=debug,info",
            "warn,hyper=error",
        ] {
            assert!(filter_valid(ok), "{ok}");
        }
        for bad in ["inf", "loud=", "switchboard=verbose", "", "info,"] {
            assert!(!filter_valid(bad), "{bad}");
        }
    }
}
