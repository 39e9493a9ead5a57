//! The command line: check-config output and refusals of bad configurations.

use std::process::Command;

use crate::harness::temp_dir;

fn switchboard(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .output()
        .expect("run switchboard");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn with_config(text: &str, args: &[&str]) -> (i32, String, String) {
    let dir = temp_dir();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap().to_owned();
    let mut all = args.to_vec();
    all.extend(["--config", &path]);
    switchboard(&all)
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_masked() {
    let (code, out, err) = with_config(
        "[[ice_servers]]\nurls = [\"turn:turn.example.com\"]\nusername = \"u\"\ncredential = \"hunter2\"\n",
        &["check-config"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("room_capacity = 4"),
        "defaults are filled in: {out}"
    );
    assert!(
        out.contains("********") && !out.contains("hunter2"),
        "{out}"
    );
}

#[test]
fn the_shipped_config_checks() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
    let (code, out, err) = switchboard(&["check-config", "--config", shipped]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0.0.0.0:8443"), "{out}");
}

#[test]
fn bad_configs_are_refused_naming_file_and_key() {
    let cases = [
        ("[signaling]\nroom_capacityy = 4\n", "room_capacityy"),
        ("[https]\nlisten = [\"0.0.0.0:70000\"]\n", "https.listen[0]"),
        (
            "[signaling]\nroom_capacity = 0\n",
            "signaling.room_capacity",
        ),
    ];
    for (text, key) in cases {
        for args in [&["check-config"][..], &[][..]] {
            let (code, _, err) = with_config(text, args);
            assert_eq!(code, 2, "{text} {args:?}: {err}");
            assert!(
                err.contains(key) && err.contains("config.toml"),
                "{text}: {err}"
            );
        }
    }
}

/// `signaling.legacy_path` values the HTTPS router cannot mount beside its own routes:
/// a route of its own or a path under one (trailing slash included), the API and socket.io
/// families, axum 0.8 captures (`{id}`, `{*rest}`) and the 0.7 forms axum 0.8 panics on
/// (`:id`, `*rest`), lone braces, and paths no request could match.
const UNMOUNTABLE_LEGACY_PATHS: &[&str] = &[
    "/diag",
    "/diag/",
    "/api/v1/ice-servers",
    "/api/anything",
    "/api",
    "/ws/",
    "/healthz",
    "/readyz/",
    "/r/room",
    "/static/call.js",
    "/socket.io",
    "/socket.io/",
    "/",
    "legacy",
    "/x/{id}",
    "/x/{*rest}",
    "/x/:id",
    "/:id",
    "/x/*rest",
    "/*rest",
    "/x}",
    "/a//b",
    "/a b",
    "/x?y",
];

/// A config that starts on ephemeral ports with nothing but HTTPS, and the given legacy path.
fn with_legacy_path(path: &str) -> String {
    format!(
        "[log]\nformat = \"json\"\n[https]\nlisten = [\"127.0.0.1:0\"]\n[turn]\nenabled = false\n\
         [admin]\nlisten = []\n[signaling]\nlegacy_path = \"{path}\"\n"
    )
}

#[test]
fn check_config_refuses_a_legacy_path_the_router_cannot_mount() {
    let mut failures = Vec::new();
    for path in UNMOUNTABLE_LEGACY_PATHS {
        let (code, out, err) = with_config(&with_legacy_path(path), &["check-config"]);
        let named = err.contains("config.toml")
            && err.contains("key `signaling.legacy_path`")
            && err.contains(&format!("{path:?}"));
        // The message says what to use instead.
        let hint = err.contains("such as \"/legacy\"");
        if code != 2 || !named || !hint {
            failures.push(format!("{path:?}: exit {code}: {out}{err}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let (code, _, err) = with_config(&with_legacy_path("/old-clients/ws"), &["check-config"]);
    assert_eq!(code, 0, "{err}");
}

/// Starting with such a path is refused like any bad config (exit 2, the key named), never a
/// panic in the router and never a server that comes up.
#[test]
fn the_server_refuses_to_start_with_a_legacy_path_the_router_cannot_mount() {
    let mut failures = Vec::new();
    for path in UNMOUNTABLE_LEGACY_PATHS {
        let dir = temp_dir();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, with_legacy_path(path)).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("--config")
            .arg(&config)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The server logs `ready` on stdout once it serves; a refused start closes stdout.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let ready = std::io::BufRead::lines(std::io::BufReader::new(stdout))
                .map_while(Result::ok)
                .any(|l| {
                    serde_json::from_str::<serde_json::Value>(&l)
                        .is_ok_and(|line| line["message"] == "ready")
                });
            let _ = tx.send(ready);
        });
        let started = rx.recv_timeout(crate::harness::DEADLINE);
        if started != Ok(false) {
            let _ = child.kill();
        }
        let output = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        let code = output.status.code();
        if started != Ok(false) {
            failures.push(format!("{path:?}: the server started"));
        } else if code != Some(2)
            || !err.contains("key `signaling.legacy_path`")
            || err.contains("panicked")
        {
            failures.push(format!("{path:?}: exit {code:?}: {err}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn missing_certificate_file_is_refused_naming_the_key() {
    let (code, _, err) = with_config(
        "[https]\nlisten = [\"127.0.0.1:0\"]\ncert = \"/nonexistent/fullchain.pem\"\nkey = \"/nonexistent/privkey.pem\"\n",
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("https.cert") && err.contains("/nonexistent/fullchain.pem"),
        "{err}"
    );
}

#[test]
fn missing_config_file_says_how_to_pass_one() {
    let (code, _, err) = switchboard(&["--config", "/nonexistent/switchboard.toml"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("/nonexistent/switchboard.toml") && err.contains("--config"),
        "{err}"
    );
}

#[test]
fn version_and_help() {
    let (code, out, _) = switchboard(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("switchboard "), "{out}");
    let (code, out, _) = switchboard(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("check-config") && out.contains("--config"),
        "{out}"
    );
}

#[test]
fn sigterm_still_stops_the_server_when_its_log_pipe_is_gone() {
    let dir = temp_dir();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nstate_dir = \"{}\"\n[https]\nlisten = [\"127.0.0.1:0\"]\n[turn]\nenabled = false\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("--config")
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the ready line, then drop both read ends: every later log write fails.
    let stdout = child.stdout.take().unwrap();
    let ready = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .map_while(Result::ok)
        .any(|l| l.contains("ready"));
    assert!(ready, "server never became ready");
    drop(child.stderr.take());
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let pid = child.id().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let Ok(exit) = rx.recv_timeout(crate::harness::DEADLINE) else {
        let _ = Command::new("kill").arg("-KILL").arg(&pid).status();
        panic!("the server ignored SIGTERM with its log pipe gone");
    };
    assert!(exit.unwrap().success());
}

#[test]
fn credentials_prints_ice_servers_whose_credential_verifies() {
    let secret = "cli-secret-0123456789abcdef";
    let config = format!("[turn]\nsecrets = [\"{secret}\"]\npublic_host = \"call.example.com\"\n");
    let (code, out, err) = with_config(
        &config,
        &["credentials", "--room", "standup", "--ttl", "120"],
    );
    assert_eq!(code, 0, "{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(answer["ttl"], 120);
    let turn = answer["iceServers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["urls"][0].as_str().unwrap().starts_with("turn:"))
        .expect("a TURN entry");
    assert_eq!(turn["urls"][0], "turn:call.example.com:3478?transport=udp");
    let username = turn["username"].as_str().unwrap();
    let (expiry, scope) = username.split_once(':').unwrap();
    assert_eq!(scope, "room:standup");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!((now + 110..=now + 130).contains(&expiry.parse::<u64>().unwrap()));
    let expected = switchboard::turn::auth::rest_password(
        &switchboard::config::Secret::new(secret.into()),
        username,
    );
    assert_eq!(turn["credential"], expected.as_str());

    for (args, needle) in [
        (vec!["credentials", "--room", "a b"], "--room"),
        (vec!["credentials", "--room", "r", "--ttl", "5"], "--ttl"),
    ] {
        let (code, _, err) = with_config(&config, &args);
        assert_eq!(code, 2, "{args:?}");
        assert!(err.contains(needle), "{err}");
    }
}

/// The package's and the image's configs are the shipped one with only the server-side
/// settings changed, so that they cannot drift apart.
#[test]
fn the_packaged_configs_are_the_shipped_one_for_a_server() {
    let root = env!("CARGO_MANIFEST_DIR");
    let shipped = std::fs::read_to_string(format!("{root}/config.toml")).unwrap();
    let cases: [(&str, &[&str], &[&str]); 2] = [
        (
            "packaging/config.toml",
            &[
                "state_dir = \"certs\"",
                "listen = [\"0.0.0.0:8443\", \"[::]:8443\"]",
                "listen = []",
            ],
            &[
                "state_dir = \"/var/lib/switchboard\"",
                "listen = [\"0.0.0.0:443\", \"[::]:443\"]",
                "listen = [\"0.0.0.0:80\", \"[::]:80\"]",
            ],
        ),
        (
            "packaging/docker.toml",
            &[
                "state_dir = \"certs\"",
                "min_port = 49152",
                "max_port = 65535",
            ],
            &[
                "state_dir = \"/var/lib/switchboard\"",
                "min_port = 49160",
                "max_port = 49200",
            ],
        ),
    ];
    // Settings (not comments) of `a` that `b` lacks.
    let only_in = |a: &str, b: &str| -> Vec<String> {
        let b: Vec<&str> = b.lines().collect();
        a.lines()
            .filter(|l| !l.starts_with('#') && !b.contains(l))
            .map(str::to_owned)
            .collect()
    };
    for (file, removed, added) in cases {
        let path = format!("{root}/{file}");
        let (code, _, err) = switchboard(&["check-config", "--quiet", "--config", &path]);
        assert_eq!(code, 0, "{file}: {err}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(only_in(&shipped, &text), removed, "{file}");
        assert_eq!(only_in(&text, &shipped), added, "{file}");
    }
}

/// Imports `file` (under tests/data/coturn); returns the TOML and the warnings, after
/// checking that the TOML is a valid Switchboard config.
fn import(file: &str) -> (toml::Table, String) {
    let path = format!("{}/tests/data/coturn/{file}", env!("CARGO_MANIFEST_DIR"));
    let (code, out, err) = switchboard(&["import-coturn", &path]);
    assert_eq!(code, 0, "{err}");
    let (code, _, check) = with_config(&out, &["check-config"]);
    assert_eq!(
        code, 0,
        "the imported config of {file} is refused: {check}\n{out}"
    );
    (toml::from_str(&out).unwrap(), err)
}

#[test]
fn import_coturn_converts_real_world_configs() {
    let (synapse, warnings) = import("matrix-synapse.conf");
    let turn = &synapse["turn"];
    assert_eq!(
        turn["secrets"][0].as_str(),
        Some("3f3a6c0d8b1e4e53a0f2c9b7d6e5a4c3")
    );
    assert_eq!(turn["realm"].as_str(), Some("turn.matrix.example.org"));
    assert_eq!(
        turn["max_allocations_per_credential"].as_integer(),
        Some(12)
    );
    assert_eq!(turn["max_allocations"].as_integer(), Some(1200));
    let deny: Vec<&str> = turn["deny_peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        deny.contains(&"10.0.0.0/8") && deny.contains(&"172.16.0.0/12"),
        "{deny:?}"
    );
    assert!(
        deny.contains(&"100.64.0.0/10") && deny.contains(&"198.18.0.0/15"),
        "{deny:?}"
    );
    assert!(deny.contains(&"240.0.0.0/4"), "{deny:?}");
    assert_eq!(turn["allow_peers"][0].as_str(), Some("10.0.0.1/32"));
    assert_eq!(
        synapse["https"]["cert"].as_str(),
        Some("/etc/letsencrypt/live/turn.matrix.example.org/fullchain.pem")
    );
    assert!(warnings.is_empty(), "nothing in it is lost: {warnings}");

    let (talk, warnings) = import("nextcloud-talk.conf");
    assert_eq!(talk["turn"]["tls_listen"].as_array().map(Vec::len), Some(0));
    assert!(talk["turn"].get("max_allocations").is_none());
    assert!(
        warnings.contains("line 7: total-quota: 0 (no limit)"),
        "{warnings}"
    );
    assert!(warnings.contains("line 8: bps-capacity"), "{warnings}");
    assert_eq!(warnings.lines().count(), 2, "{warnings}");

    let (jitsi, warnings) = import("jitsi-meet.conf");
    assert_eq!(
        jitsi["turn"]["tcp_listen"].as_array().map(Vec::len),
        Some(0)
    );
    assert_eq!(
        jitsi["https"]["key"].as_str(),
        Some("/etc/jitsi/meet/meet.example.com.key")
    );
    for option in ["cipher-list", "syslog", "no-tlsv1_1"] {
        assert!(warnings.contains(option), "{option}: {warnings}");
    }

    let (nat, warnings) = import("self-hosted-nat.conf");
    let turn = &nat["turn"];
    assert_eq!(turn["udp_listen"].as_array().map(Vec::len), Some(0));
    assert_eq!(turn["tcp_listen"][0].as_str(), Some("10.0.0.5:3479"));
    assert_eq!(turn["tls_listen"][0].as_str(), Some("10.0.0.5:443"));
    assert_eq!(turn["external_ip"].as_str(), Some("198.51.100.7"));
    assert_eq!(turn["relay_ip"].as_str(), Some("10.0.0.5"));
    assert_eq!(
        (turn["min_port"].as_integer(), turn["max_port"].as_integer()),
        (Some(40000), Some(40999))
    );
    assert_eq!(turn["static_users"][0]["username"].as_str(), Some("alice"));
    assert_eq!(turn["static_users"].as_array().map(Vec::len), Some(1));
    // coturn's per-session limit, each way: an allocation's budget here.
    assert_eq!(
        turn["max_allocation_bytes_per_s"].as_integer(),
        Some(3_000_000)
    );
    assert!(!warnings.contains("max-bps"), "{warnings}");
    for option in [
        "user: a hashed key",
        "log-file",
        "verbose",
        "pidfile",
        "mobility",
    ] {
        assert!(warnings.contains(option), "{option}: {warnings}");
    }
}

/// Debian's own /etc/turnserver.conf (installed with coturn by .ci/run).
#[test]
#[cfg_attr(
    not(has_coturn),
    ignore = "needs coturn's turnutils_* and /etc/turnserver.conf (apt install coturn)"
)]
fn import_coturn_reads_debians_shipped_file() {
    crate::harness::need(crate::prereq::Prereq::Coturn);
    let (code, out, err) = switchboard(&["import-coturn", "/etc/turnserver.conf"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, check) = with_config(&out, &["check-config"]);
    assert_eq!(code, 0, "{check}");
    for line in err.lines() {
        assert!(
            line.starts_with("warning: /etc/turnserver.conf: line "),
            "{line}"
        );
    }
}
