//! Parsing, refusals, the masked dump, and the classification of every key.

use super::*;

pub(super) fn refused(text: &str) -> String {
    Config::from_toml(text, "test.toml")
        .expect_err("refused")
        .to_string()
}

#[test]
fn shipped_config_parses_and_matches_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let shipped = Config::load(&path).expect("shipped config.toml is valid");
    let defaults = Config::from_toml("", "empty").unwrap();
    let mut shipped_dump = shipped.clone();
    shipped_dump.server.state_dir = defaults.server.state_dir.clone();
    // The settings it changes: new installs get the room fence and a bandwidth cap per
    // allocation, while a config written before them (without the keys) relays as it did.
    assert_eq!(shipped.turn.fence, FenceMode::Room);
    assert_eq!(defaults.turn.fence, FenceMode::Off);
    shipped_dump.turn.fence = defaults.turn.fence;
    assert_eq!(shipped.turn.max_allocation_bytes_per_s, 3_000_000);
    assert_eq!(defaults.turn.max_allocation_bytes_per_s, 0);
    shipped_dump.turn.max_allocation_bytes_per_s = 0;
    assert_eq!(shipped_dump.to_masked_toml(), defaults.to_masked_toml());
    assert_eq!(shipped.https.listen.len(), 2);
    assert!(shipped.server.state_dir.ends_with("certs"));
}

#[test]
fn unknown_key_is_refused_with_its_path_and_line() {
    let err = refused("[signaling]\nroom_capacity = 4\nroom_capacty = 3\n");
    assert!(err.starts_with("test.toml:3: "), "{err}");
    assert!(err.contains("signaling"), "{err}");
    assert!(err.contains("unknown field `room_capacty`"), "{err}");
    let err = refused("[nonsense]\n");
    assert!(err.contains("unknown field `nonsense`"), "{err}");
}

#[test]
fn wrong_type_names_the_key() {
    let err = refused("[signaling]\nroom_capacity = \"four\"\n");
    assert!(err.contains("key `signaling.room_capacity`"), "{err}");
    assert!(err.contains("expected"), "{err}");
}

#[test]
fn bad_port_names_the_key() {
    let err = refused("[https]\nlisten = [\"0.0.0.0:99999\"]\n");
    assert!(err.contains("key `https.listen[0]`"), "{err}");
    assert!(err.contains("socket address"), "{err}");
}

#[test]
fn bad_values_name_the_key_and_the_expectation() {
    let err = refused("[signaling]\nroom_capacity = 1\n");
    assert!(
        err.contains("key `signaling.room_capacity`") && err.contains("expected 2..=64, got 1"),
        "{err}"
    );
    let err = refused("[signaling]\nping_interval_s = 30\nidle_timeout_s = 30\n");
    assert!(err.contains("signaling.idle_timeout_s"), "{err}");
    let err = refused("[https]\ncert = \"c.pem\"\n");
    assert!(err.contains("key `https.key`"), "{err}");
    let err = refused("[signaling]\nallowed_origins = [\"example.com\"]\n");
    assert!(err.contains("signaling.allowed_origins[0]"), "{err}");
    let err = refused("[log]\nlevel = \"loud=\"\n");
    assert!(err.contains("log.level"), "{err}");
    let err = refused("[[ice_servers]]\nurls = [\"http://x\"]\n");
    assert!(err.contains("ice_servers[0].urls"), "{err}");
}

#[test]
fn malformed_toml_gives_a_line() {
    let err = refused("[signaling\n");
    assert!(err.starts_with("test.toml:1"), "{err}");
}

#[test]
fn secrets_are_masked_in_the_dump() {
    let config = Config::from_toml(
        "[[ice_servers]]\nurls = [\"turn:t\"]\nusername = \"u\"\ncredential = \"hunter2\"\n",
        "t",
    )
    .unwrap();
    let dump = config.to_masked_toml();
    assert!(
        !dump.contains("hunter2") && dump.contains("********"),
        "{dump}"
    );
    assert!(!format!("{config:?}").contains("hunter2"));
    assert_eq!(
        config.ice_servers[0].credential.as_ref().unwrap().expose(),
        "hunter2"
    );
}

/// A secret-bearing key of the wrong type is refused by its key and line, without its value
/// (errors reach the terminal and, on a reload, the journal).
#[test]
fn a_secret_of_the_wrong_type_is_refused_without_its_value() {
    let cases = [
        "[turn]\nsecrets = \"hunter2-hunter2-hunter2\"\n",
        "[turn]\nsecrets = [\"ok-ok-ok-ok-ok-ok\", 271828182845]\n",
        "[admin]\ntoken = [\"hunter2-hunter2-hunter2\"]\n",
        "[admin]\ntoken = 271828182845\n",
        "[api]\nkeys = \"hunter2-hunter2-hunter2\"\n",
        "[[turn.static_users]]\nusername = \"u\"\npassword = 271828182845\n",
        "[[ice_servers]]\nurls = [\"turn:t\"]\nusername = \"u\"\ncredential = 271828182845\n",
    ];
    for text in cases {
        let err = refused(text);
        assert!(
            !err.contains("hunter2") && !err.contains("271828182845"),
            "{text}: {err}"
        );
        assert!(err.contains("value not shown"), "{text}: {err}");
        assert!(err.starts_with("test.toml:"), "{text}: {err}");
    }
    // Other keys keep their value in the message: it helps, and it is no secret.
    let err = refused("[signaling]\nroom_capacity = \"four\"\n");
    assert!(err.contains("\"four\""), "{err}");
}

/// The field names serde's derive gives `T` (the list it passes to `deserialize_struct`),
/// which are the keys the parser accepts in its table.
fn serde_fields<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("probed"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// The classified keys of the section named `section`, without the prefix.
fn classified(section: &str) -> Vec<&'static str> {
    Config::keys()
        .filter_map(|key| key.name.strip_prefix(section)?.strip_prefix('.'))
        .collect()
}

#[test]
fn every_key_serde_reads_is_classified_once() {
    let sections: [(&str, &[&str]); 12] = [
        ("server", serde_fields::<ServerConfig>()),
        ("log", serde_fields::<LogConfig>()),
        ("https", serde_fields::<HttpsConfig>()),
        ("http_redirect", serde_fields::<HttpRedirectConfig>()),
        ("signaling", serde_fields::<SignalingConfig>()),
        ("turn", serde_fields::<TurnConfig>()),
        ("acme", serde_fields::<AcmeConfig>()),
        ("admin", serde_fields::<AdminConfig>()),
        ("api", serde_fields::<ApiConfig>()),
        ("cluster", serde_fields::<ClusterConfig>()),
        ("tokens", serde_fields::<TokensConfig>()),
        ("webhooks", serde_fields::<WebhooksConfig>()),
    ];
    for (section, fields) in sections {
        assert!(!fields.is_empty(), "{section}");
        assert_eq!(classified(section), fields, "[{section}]");
    }
    // The top level: the sections above, then `ice_servers`, as serde reads them.
    let mut top: Vec<&str> = sections.iter().map(|(section, _)| *section).collect();
    top.push(ICE_SERVERS.name);
    assert_eq!(top, serde_fields::<Config>());
    let names: Vec<&str> = Config::keys().map(|key| key.name).collect();
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "{names:?}");
}

/// Whatever the shipped files set is a classified key: a key added to them but not to a
/// section's `keys!` list fails here (and would not parse either).
#[test]
fn every_key_of_the_shipped_files_is_classified() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let known: Vec<&str> = Config::keys().map(|key| key.name).collect();
    for file in [
        "config.toml",
        "packaging/config.toml",
        "packaging/docker.toml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let table: toml::Table = text.parse().unwrap();
        for (name, value) in &table {
            let keys: Vec<String> = match value {
                toml::Value::Table(section) => {
                    section.keys().map(|key| format!("{name}.{key}")).collect()
                }
                _ => vec![name.clone()],
            };
            for key in keys {
                assert!(known.contains(&key.as_str()), "{file}: {key}");
            }
        }
    }
}

#[test]
fn changes_name_each_changed_key_and_when_it_applies() {
    let old = Config::default();
    assert_eq!(old.changes(&old.clone()), []);
    let new = Config::from_toml(
        "[signaling]\nroom_capacity = 3\nlegacy_path = \"/old\"\n\
         [turn]\nudp_listen = []\nsecrets = [\"0123456789abcdef\"]\n\
         [acme]\nrenew_before_days = 20\n\
         [[ice_servers]]\nurls = [\"stun:stun.example.com\"]\n",
        "t",
    )
    .unwrap();
    let key = |name, apply| Key { name, apply };
    assert_eq!(
        old.changes(&new),
        [
            key("signaling.room_capacity", Apply::Live),
            key("signaling.legacy_path", Apply::Restart),
            key("turn.udp_listen", Apply::Restart),
            key("turn.secrets", Apply::Live),
            key("acme.renew_before_days", Apply::Restart),
            key("ice_servers", Apply::Live),
        ]
    );
}

#[test]
fn https_limits_and_proxies_are_checked() {
    let err = refused("[https]\nrequest_timeout_s = 0\n");
    assert!(
        err.contains("https.request_timeout_s") && err.contains("1..=600"),
        "{err}"
    );
    let err = refused("[https]\ntrusted_proxies = [\"10.0.0.0/33\"]\n");
    assert!(err.contains("https.trusted_proxies"), "{err}");
    let err = refused("[https]\nproxy_protocol = true\n");
    assert!(
        err.contains("https.proxy_protocol") && err.contains("trusted_proxies"),
        "{err}"
    );
    let ok = Config::from_toml(
        "[https]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nproxy_protocol = true\n",
        "t",
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn a_cluster_is_off_by_default_and_its_keys_are_checked() {
    let alone = Config::from_toml("", "t").unwrap();
    assert!(!alone.cluster.enabled());
    let shared = "[turn]\nsecrets = [\"0123456789abcdef\"]\n[cluster]\n";
    let ok = Config::from_toml(
        &format!("{shared}redis_url = \"redis://127.0.0.1:6379\"\ninstance_id = \"a-1\"\n"),
        "t",
    )
    .unwrap();
    assert!(ok.cluster.enabled());
    assert!(!ok.to_masked_toml().contains("127.0.0.1:6379"));

    let err = refused("[cluster]\nredis_url = \"redis://127.0.0.1:6379\"\n");
    assert!(
        err.contains("turn.secrets") && err.contains("same TURN secret"),
        "{err}"
    );
    let err = refused(&format!("{shared}redis_url = \"http://x\"\n"));
    assert!(err.contains("cluster.redis_url"), "{err}");
    let err = refused(&format!("{shared}instance_id = \"a b\"\n"));
    assert!(err.contains("cluster.instance_id"), "{err}");
    let err = refused(&format!("{shared}key_prefix = \"{{x}}\"\n"));
    assert!(err.contains("cluster.key_prefix"), "{err}");
    let err = refused(&format!(
        "{shared}heartbeat_interval_ms = 1000\nheartbeat_ttl_ms = 1500\n"
    ));
    assert!(
        err.contains("cluster.heartbeat_ttl_ms") && err.contains("twice"),
        "{err}"
    );
}

#[test]
fn a_bandwidth_budget_below_one_audio_stream_is_refused_by_its_key() {
    for key in ["max_allocation_bytes_per_s", "max_room_bytes_per_s"] {
        let err = refused(&format!("[turn]\n{key} = 500\n"));
        assert!(err.contains(&format!("turn.{key}")), "{err}");
        assert!(err.contains("0 (no limit) or at least 8000"), "{err}");
        for fine in [0, 8000, 125_000_000] {
            let text = format!("[turn]\n{key} = {fine}\n");
            assert!(Config::from_toml(&text, "test.toml").is_ok(), "{text}");
        }
    }
}
