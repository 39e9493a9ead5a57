//! Secrets the config does not set: generated on first start into
//! `server.state_dir` (mode 0600) and reused afterwards.

use std::path::Path;

use rand::RngCore;

use crate::config::Secret;

/// File name of the generated TURN REST secret.
pub const TURN_SECRET_FILE: &str = "turn-secret";

/// File name of the generated admin API token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Why a secret could not be loaded or stored.
#[derive(Debug, thiserror::Error)]
#[error("failed to {action} {path} (config key `server.state_dir`): {source}")]
pub struct SecretError {
    action: &'static str,
    path: String,
    source: std::io::Error,
}

/// Reads the secret stored at `dir/name`, or generates and stores a new one.
///
/// # Errors
/// The state directory cannot be read or written.
pub fn load_or_generate(dir: &Path, name: &str) -> Result<Secret, SecretError> {
    let path = dir.join(name);
    let error = |action, source| SecretError {
        action,
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().len() >= 16 => return Ok(Secret::new(text.trim().to_owned())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(error("read", e)),
    }
    std::fs::create_dir_all(dir).map_err(|e| error("create", e))?;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    crate::tls::write_private(&path, secret.as_bytes()).map_err(|e| error("write", e))?;
    Ok(Secret::new(secret))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn generated_once_then_reused_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_generate(dir.path(), TURN_SECRET_FILE).unwrap();
        let b = load_or_generate(dir.path(), TURN_SECRET_FILE).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.expose().len(), 64);
        let mode = std::fs::metadata(dir.path().join(TURN_SECRET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
