//! Webhook signatures, as the Standard Webhooks specification writes them: HMAC-SHA256 of
//! `<id>.<timestamp>.<body>` with the secret, base64, as `v1,<signature>` in the
//! `webhook-signature` header (several, space-separated, one per secret), beside
//! `webhook-id` and `webhook-timestamp`. Its libraries (and a few lines of any language)
//! verify them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// A signing key: the bytes the HMAC is keyed with.
#[derive(Clone)]
pub struct SigningKey(ring::hmac::Key);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(********)")
    }
}

impl SigningKey {
    /// The key of a configured secret: `whsec_` and base64 (the Standard Webhooks form, the
    /// decoded bytes are the key).
    pub fn parse(secret: &str) -> Option<SigningKey> {
        let bytes = crate::config::signing_key_bytes(secret)?;
        Some(SigningKey(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &bytes,
        )))
    }

    /// `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut context = ring::hmac::Context::with_key(&self.0);
        context.update(id.as_bytes());
        context.update(b".");
        context.update(timestamp.to_string().as_bytes());
        context.update(b".");
        context.update(body);
        format!("v1,{}", B64.encode(context.sign().as_ref()))
    }
}

/// The `webhook-signature` header: one signature per key, space-separated.
pub fn signature_header(keys: &[SigningKey], id: &str, timestamp: u64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| k.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of the Standard Webhooks specification (and of Svix, whose scheme it is).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: u64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_specifications_example_as_its_libraries_do() {
        let key = SigningKey::parse(SECRET).unwrap();
        assert_eq!(key.sign(ID, TIMESTAMP, BODY), SIGNATURE);
        // Any change to what is signed changes the signature.
        assert_ne!(key.sign(ID, TIMESTAMP + 1, BODY), SIGNATURE);
        assert_ne!(key.sign("msg_other", TIMESTAMP, BODY), SIGNATURE);
        assert_ne!(key.sign(ID, TIMESTAMP, b"{}"), SIGNATURE);
    }

    #[test]
    fn every_key_signs_for_rotation() {
        let old = SigningKey::parse(SECRET).unwrap();
        let new = SigningKey::parse("whsec_c2l4dGVlbiBieXRlcyBsb25nIQ==").unwrap();
        let header = signature_header(&[new.clone(), old], ID, TIMESTAMP, BODY);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts, [new.sign(ID, TIMESTAMP, BODY).as_str(), SIGNATURE]);
    }

    #[test]
    fn only_whsec_secrets_of_sixteen_bytes_or_more_are_taken() {
        assert!(SigningKey::parse("short").is_none());
        assert!(SigningKey::parse("a plain string, however long").is_none());
        assert!(SigningKey::parse("whsec_not base64!").is_none());
        assert!(SigningKey::parse("whsec_c2hvcnQ=").is_none(), "5 bytes");
        assert!(SigningKey::parse("whsec_c2l4dGVlbiBieXRlcyBsb25nIQ==").is_some());
    }
}
