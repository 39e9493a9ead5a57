use super::*;

const NOW: u64 = 1_800_000_000;
const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn hmac_key<'a>(id: &'a str, secret: &'a str) -> KeySpec<'a> {
    KeySpec {
        id,
        algorithm: "HS256",
        secret: Some(secret),
        public_key: None,
    }
}

fn verifier(require: Require, keys: Vec<KeySpec<'_>>) -> Verifier {
    let keys = keys.into_iter().map(|k| Key::new(k).unwrap()).collect();
    Verifier::new(keys, require, None, 0)
}

fn claims(room: &str) -> Claims {
    Claims {
        room: room.to_owned(),
        sub: Some("Dr. Ada".to_owned()),
        exp: NOW + 60,
        nbf: None,
        aud: None,
        capacity: None,
        allocations: None,
        messages_per_s: None,
        publish: None,
        kick: None,
    }
}

fn room(name: &str) -> RoomId {
    RoomId::parse(name).unwrap()
}

fn signer() -> Signer {
    Signer::hmac(hmac_key("k1", SECRET)).unwrap()
}

#[test]
fn a_valid_token_grants_its_identity_capacity_and_roles() {
    let v = verifier(Require::All, vec![hmac_key("k1", SECRET)]);
    let mut c = claims("visit-42");
    c.capacity = Some(3);
    c.allocations = Some(40);
    c.messages_per_s = Some(500);
    c.kick = Some(true);
    let grant = v
        .check(&room("visit-42"), Some(&signer().mint(&c)), NOW)
        .unwrap()
        .unwrap();
    assert_eq!(grant.sub.as_deref(), Some("Dr. Ada"));
    assert_eq!(grant.capacity, Some(3));
    assert_eq!(grant.allocations, Some(40));
    assert_eq!(grant.messages_per_s, Some(500));
    assert_eq!(
        grant.roles,
        Roles {
            publish: true,
            kick: true
        }
    );
}

#[test]
fn the_policy_says_which_rooms_need_a_token() {
    let keys = || vec![hmac_key("k1", SECRET)];
    let open = verifier(Require::None, keys());
    assert_eq!(open.check(&room("lobby"), None, NOW), Ok(None));
    let all = verifier(Require::All, keys());
    assert_eq!(all.check(&room("lobby"), None, NOW), Err(Refusal::Required));
    let some = verifier(Require::Prefixes(vec!["clinic-".into()]), keys());
    assert_eq!(
        some.check(&room("clinic-7"), None, NOW),
        Err(Refusal::Required)
    );
    assert_eq!(some.check(&room("lobby"), None, NOW), Ok(None));
    // A token given for an open room is checked all the same.
    assert_eq!(
        open.check(&room("lobby"), Some("not.a.token"), NOW),
        Err(Refusal::Invalid)
    );
}

#[test]
fn a_room_claim_is_an_exact_name_or_a_prefix_with_a_star() {
    let v = verifier(Require::All, vec![hmac_key("k1", SECRET)]);
    let token = |r: &str| signer().mint(&claims(r));
    assert!(
        v.check(&room("visit-42"), Some(&token("visit-42")), NOW)
            .is_ok()
    );
    assert_eq!(
        v.check(&room("visit-420"), Some(&token("visit-42")), NOW),
        Err(Refusal::RoomMismatch)
    );
    assert!(
        v.check(&room("visit-420"), Some(&token("visit-*")), NOW)
            .is_ok()
    );
    assert_eq!(
        v.check(&room("lobby"), Some(&token("visit-*")), NOW),
        Err(Refusal::RoomMismatch)
    );
    assert!(v.check(&room("lobby"), Some(&token("*")), NOW).is_ok());
}

#[test]
fn times_are_checked_with_the_leeway() {
    let v = Verifier::new(
        vec![Key::new(hmac_key("k1", SECRET)).unwrap()],
        Require::All,
        None,
        30,
    );
    let r = room("r");
    let mut c = claims("r");
    c.exp = NOW - 10;
    assert!(
        v.check(&r, Some(&signer().mint(&c)), NOW).is_ok(),
        "within leeway"
    );
    c.exp = NOW - 30;
    assert_eq!(
        v.check(&r, Some(&signer().mint(&c)), NOW),
        Err(Refusal::Expired)
    );
    let mut early = claims("r");
    early.nbf = Some(NOW + 31);
    assert_eq!(
        v.check(&r, Some(&signer().mint(&early)), NOW),
        Err(Refusal::Invalid)
    );
    early.nbf = Some(NOW + 29);
    assert!(v.check(&r, Some(&signer().mint(&early)), NOW).is_ok());
}

/// A forged, altered, unknown-key or wrongly typed token is `Invalid`, whatever the reason.
#[test]
fn forgeries_and_malformed_tokens_are_invalid() {
    let doubled = SECRET.repeat(2);
    let v = verifier(
        Require::All,
        vec![hmac_key("k1", SECRET), hmac_key("k2", &doubled)],
    );
    let r = room("r");
    let good = signer().mint(&claims("r"));
    assert!(v.check(&r, Some(&good), NOW).is_ok());
    let xs = "x".repeat(32);
    let other_secret = Signer::hmac(hmac_key("k1", &xs)).unwrap();
    let unknown_kid = Signer::hmac(hmac_key("k9", SECRET)).unwrap();
    let mut altered = good.clone();
    altered.replace_range(altered.len() - 4.., "AAAA");
    // The payload swapped for another room's, with the signature kept.
    let parts: Vec<&str> = good.split('.').collect();
    let other = signer().mint(&claims("s"));
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        other.split('.').nth(1).unwrap(),
        parts[2]
    );
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let unsigned = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT","kid":"k1"}"#),
        b64(&format!(r#"{{"room":"r","exp":{}}}"#, NOW + 60))
    );
    // The right signature over claims of the wrong types: `exp` a string.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let typed = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"room": "r", "exp": "never"}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let no_exp = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"room": "r"}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut no_kid = Header::new(Algorithm::HS256);
    no_kid.kid = None;
    let ambiguous = jsonwebtoken::encode(
        &no_kid,
        &claims("r"),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut big = claims("r");
    big.sub = Some("a".repeat(MAX_TOKEN_BYTES));
    for (what, token) in [
        ("another secret", other_secret.mint(&claims("r"))),
        ("unknown kid", unknown_kid.mint(&claims("r"))),
        ("altered signature", altered),
        ("swapped payload", swapped),
        ("alg none", unsigned),
        ("exp a string", typed),
        ("no exp", no_exp),
        ("no kid with two keys", ambiguous),
        ("too long", signer().mint(&big)),
        ("empty", String::new()),
        ("garbage", "a.b.c".to_owned()),
    ] {
        assert_eq!(
            v.check(&r, Some(&token), NOW),
            Err(Refusal::Invalid),
            "{what}"
        );
    }
}

#[test]
fn claims_out_of_range_are_invalid() {
    let v = verifier(Require::All, vec![hmac_key("k1", SECRET)]);
    let r = room("r");
    for change in [
        (|c: &mut Claims| c.capacity = Some(0)) as fn(&mut Claims),
        |c| c.capacity = Some(MAX_CAPACITY + 1),
        |c| c.allocations = Some(0),
        |c| c.allocations = Some(MAX_ALLOCATIONS + 1),
        |c| c.messages_per_s = Some(0),
        |c| c.messages_per_s = Some(MAX_MESSAGES_PER_S + 1),
        |c| c.sub = Some(String::new()),
        |c| c.sub = Some("bell\u{7}".into()),
    ] {
        let mut c = claims("r");
        change(&mut c);
        assert_eq!(
            v.check(&r, Some(&signer().mint(&c)), NOW),
            Err(Refusal::Invalid),
            "{c:?}"
        );
    }
}

#[test]
fn the_audience_when_configured_must_match() {
    let v = Verifier::new(
        vec![Key::new(hmac_key("k1", SECRET)).unwrap()],
        Require::All,
        Some("switchboard.example".into()),
        0,
    );
    let mut c = claims("r");
    assert_eq!(
        v.check(&room("r"), Some(&signer().mint(&c)), NOW),
        Err(Refusal::Invalid)
    );
    c.aud = Some(Audience::One("switchboard.example".into()));
    assert!(v.check(&room("r"), Some(&signer().mint(&c)), NOW).is_ok());
    c.aud = Some(Audience::Several(vec![
        "other".into(),
        "switchboard.example".into(),
    ]));
    assert!(v.check(&room("r"), Some(&signer().mint(&c)), NOW).is_ok());
    c.aud = Some(Audience::Several(vec!["other".into()]));
    assert_eq!(
        v.check(&room("r"), Some(&signer().mint(&c)), NOW),
        Err(Refusal::Invalid)
    );
}

/// Ed25519 and P-256 public keys from the config check tokens their private keys signed;
/// an HMAC token whose secret is the public key's PEM (the classic confusion) does not pass.
#[test]
fn public_keys_check_tokens_of_their_private_keys_only() {
    for (alg, rcgen_alg) in [
        ("EdDSA", &rcgen::PKCS_ED25519),
        ("ES256", &rcgen::PKCS_ECDSA_P256_SHA256),
    ] {
        let pair = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
        let pem = pair.public_key_pem();
        let key = KeySpec {
            id: "app",
            algorithm: alg,
            secret: None,
            public_key: Some(&pem),
        };
        let v = verifier(Require::All, vec![key]);
        let signer = Signer::from_private_pem("app", pair.serialize_pem().as_bytes()).unwrap();
        let token = signer.mint(&claims("r"));
        assert!(v.check(&room("r"), Some(&token), NOW).is_ok(), "{alg}");
        let confused = Signer::hmac(hmac_key("app", &pem)).unwrap();
        assert_eq!(
            v.check(&room("r"), Some(&confused.mint(&claims("r"))), NOW),
            Err(Refusal::Invalid),
            "{alg}"
        );
        let stranger = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
        let forged = Signer::from_private_pem("app", stranger.serialize_pem().as_bytes())
            .unwrap()
            .mint(&claims("r"));
        assert_eq!(
            v.check(&room("r"), Some(&forged), NOW),
            Err(Refusal::Invalid),
            "{alg}"
        );
    }
}

/// ES256 needs a P-256 key: a P-384 one is refused when the config is read, not by every token.
#[test]
fn an_es256_key_of_another_curve_is_refused_up_front() {
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let pem = p384.public_key_pem();
    let refused = Key::new(KeySpec {
        id: "app",
        algorithm: "ES256",
        secret: None,
        public_key: Some(&pem),
    });
    assert!(refused.is_err_and(|e| e.contains("P-256")));
    assert!(Signer::from_private_pem("app", p384.serialize_pem().as_bytes()).is_err());
}
