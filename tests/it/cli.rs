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
