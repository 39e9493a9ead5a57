//! The configuration file's parsing and validation (`config::Config::from_toml`): what a
//! reload (`SIGHUP`, the admin API) reads, and `check-config` prints.
//!
//! Checks: a configuration differs from itself in no key, and what `check-config` prints of
//! it (secrets masked) loads again as the same configuration, but for the masked secrets.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::config::Config;

/// How `check-config` prints a secret (`config::Secret`).
const MASK: &str = "\"********\"";

/// The keys whose values `check-config` masks.
const SECRET_KEYS: [&str; 5] = [
    "turn.secrets",
    "turn.static_users",
    "admin.token",
    "api.keys",
    "ice_servers",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml(text, "fuzz.toml") else {
        return;
    };
    let changes = config.changes(&config);
    assert!(
        changes.is_empty(),
        "a configuration differs from itself in {:?}",
        changes.iter().map(|k| k.name).collect::<Vec<_>>()
    );
    let printed = config.to_masked_toml();
    // A masked secret is too short to load (`********`): it is lengthened first, unless the
    // input itself holds the mask somewhere (it would be lengthened there too).
    if text.contains(MASK) {
        return;
    }
    let unmasked = printed.replace(MASK, &format!("\"{}\"", "*".repeat(40)));
    let again = Config::from_toml(&unmasked, "printed.toml").unwrap_or_else(|e| {
        panic!(
            "check-config prints what does not load: {e}\n--- input\n{text}\n--- printed\n{printed}"
        )
    });
    let changed: Vec<&str> = config
        .changes(&again)
        .iter()
        .map(|k| k.name)
        .filter(|name| !SECRET_KEYS.contains(name))
        .collect();
    assert!(
        changed.is_empty(),
        "check-config prints {changed:?} otherwise than they were\n--- input\n{text}\n--- printed\n{printed}"
    );
});
