//! `[tokens]`: join tokens (`crate::tokens`): which rooms need one, and the keys that sign them.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid, Secret};
use crate::tokens::{Key, KeySpec, Require, Signer, Verifier};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// Which rooms need a token: "none" (a token is optional, checked when given), "all", or
    /// "prefixes" (rooms whose names start with one of `prefixes`).
    pub require: RequireMode,
    pub prefixes: Vec<String>,
    /// When set, a token's `aud` claim must be this.
    pub audience: Option<String>,
    /// Seconds of clock difference forgiven on `exp` and `nbf`.
    pub leeway_s: u64,
    /// The keys tokens may be signed with, each with its id (the token header's `kid`).
    pub keys: Vec<TokenKeyConfig>,
}

impl Default for TokensConfig {
    fn default() -> TokensConfig {
        TokensConfig {
            require: RequireMode::None,
            prefixes: Vec::new(),
            audience: None,
            leeway_s: 30,
            keys: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RequireMode {
    #[default]
    None,
    All,
    Prefixes,
}

/// One key: an HMAC secret (HS256/384/512), or a public key in PEM (EdDSA for Ed25519, ES256
/// for P-256) whose private half stays with the application.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKeyConfig {
    pub id: String,
    #[serde(default = "hs256")]
    pub algorithm: String,
    #[serde(default)]
    pub secret: Option<Secret>,
    #[serde(default)]
    pub public_key: Option<String>,
}

fn hs256() -> String {
    "HS256".to_owned()
}

keys!(TokensConfig in "tokens" {
    // The `Host`'s live settings hold the verifier a reload rebuilds: keys rotate without a restart.
    require: Live,
    prefixes: Live,
    audience: Live,
    leeway_s: Live,
    keys: Live,
});

impl TokenKeyConfig {
    pub fn spec(&self) -> KeySpec<'_> {
        KeySpec {
            id: &self.id,
            algorithm: &self.algorithm,
            secret: self.secret.as_ref().map(Secret::expose),
            public_key: self.public_key.as_deref(),
        }
    }

    /// A signer for this key, if it is an HMAC key (`switchboard token`, tests).
    ///
    /// # Errors
    /// It is a public key.
    pub fn signer(&self) -> Result<Signer, String> {
        Signer::hmac(self.spec())
    }
}

impl TokensConfig {
    /// The verifier of a config whose check passed (which read every key already).
    pub fn verifier(&self) -> Verifier {
        let keys = self
            .keys
            .iter()
            .map(|k| Key::new(k.spec()).expect("the config's check read every token key"))
            .collect();
        Verifier::new(keys, self.require(), self.audience.clone(), self.leeway_s)
    }

    /// The policy as the verifier reads it.
    pub fn require(&self) -> Require {
        match self.require {
            RequireMode::None => Require::None,
            RequireMode::All => Require::All,
            RequireMode::Prefixes => Require::Prefixes(self.prefixes.clone()),
        }
    }

    pub(super) fn validate(&self, invalid: Invalid<'_>) -> Result<(), ConfigError> {
        if self.require != RequireMode::None && self.keys.is_empty() {
            return Err(invalid(
                "tokens.require",
                "tokens are required but no key can check them: add a [[tokens.keys]] entry, \
                 or set require = \"none\""
                    .to_owned(),
            ));
        }
        match (self.require, self.prefixes.is_empty()) {
            (RequireMode::Prefixes, true) => {
                return Err(invalid(
                    "tokens.prefixes",
                    "require = \"prefixes\" needs at least one prefix, e.g. [\"clinic-\"]"
                        .to_owned(),
                ));
            }
            (RequireMode::None | RequireMode::All, false) => {
                return Err(invalid(
                    "tokens.prefixes",
                    "prefixes apply only with require = \"prefixes\"".to_owned(),
                ));
            }
            _ => {}
        }
        for (i, prefix) in self.prefixes.iter().enumerate() {
            let ok = !prefix.is_empty()
                && prefix.len() <= crate::model::MAX_ROOM_LEN
                && prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return Err(invalid(
                    &format!("tokens.prefixes[{i}]"),
                    format!("expected the start of a room name ([A-Za-z0-9_-]), got {prefix:?}"),
                ));
            }
        }
        if self.leeway_s > 300 {
            return Err(invalid(
                "tokens.leeway_s",
                format!("expected 0..=300, got {}", self.leeway_s),
            ));
        }
        for (i, key) in self.keys.iter().enumerate() {
            let at = |field: &str| format!("tokens.keys[{i}].{field}");
            if key.id.is_empty() || key.id.len() > 64 {
                return Err(invalid(&at("id"), "expected 1 to 64 characters".to_owned()));
            }
            if self.keys[..i].iter().any(|k| k.id == key.id) {
                return Err(invalid(
                    &at("id"),
                    format!("{:?} is the id of an earlier key: ids must differ", key.id),
                ));
            }
            Key::new(key.spec()).map_err(|message| {
                let field = if message.contains("algorithm") {
                    "algorithm"
                } else if message.contains("public_key") {
                    "public_key"
                } else {
                    "secret"
                };
                invalid(&at(field), message)
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn config_errors_name_the_key() {
        let refused = |toml: &str| Config::from_toml(toml, "t.toml").unwrap_err().to_string();
        let e = refused("[tokens]\nrequire = \"all\"\n");
        assert!(e.contains("tokens.require"), "{e}");
        let e = refused(
            "[tokens]\nrequire = \"prefixes\"\n[[tokens.keys]]\nid = \"a\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n",
        );
        assert!(e.contains("tokens.prefixes"), "{e}");
        let e = refused("[[tokens.keys]]\nid = \"a\"\nsecret = \"short\"\n");
        assert!(
            e.contains("tokens.keys[0].secret") && e.contains("32 bytes"),
            "{e}"
        );
        assert!(!e.contains("short"), "the secret is not repeated: {e}");
        let e = refused("[[tokens.keys]]\nid = \"a\"\nalgorithm = \"RS256\"\npublic_key = \"x\"\n");
        assert!(e.contains("tokens.keys[0].algorithm"), "{e}");
        let e =
            refused("[[tokens.keys]]\nid = \"a\"\nalgorithm = \"EdDSA\"\npublic_key = \"junk\"\n");
        assert!(e.contains("tokens.keys[0].public_key"), "{e}");
        let e = refused(&format!(
            "[[tokens.keys]]\nid = \"a\"\nsecret = \"{SECRET}\"\n[[tokens.keys]]\nid = \"a\"\nsecret = \"{SECRET}\"\n"
        ));
        assert!(e.contains("tokens.keys[1].id"), "{e}");
        let ok = Config::from_toml(
            &format!(
                "[tokens]\nrequire = \"prefixes\"\nprefixes = [\"clinic-\"]\n[[tokens.keys]]\nid = \"a\"\nsecret = \"{SECRET}\"\n"
            ),
            "t.toml",
        );
        assert!(ok.is_ok(), "{ok:?}");
    }
}
