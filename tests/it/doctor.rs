//! `switchboard doctor` against the real binary: a healthy server, a wrong secret, a server
//! that is not running, and a config that does not load.

use std::process::Command;

use crate::harness::{TestServer, temp_dir};

/// A config naming the running server's actual (ephemeral) addresses, plus `extra`.
fn config_for(server: &TestServer, extra: &str) -> String {
    let list = |kind: &str| format!("[\"{}\"]", server.listener(kind));
    format!(
        "[server]\nstate_dir = \"{}\"\n[https]\nlisten = {}\n[admin]\nlisten = {}\n\
         [turn]\nudp_listen = {}\ntcp_listen = {}\ntls_listen = {}\nrelay_ip = \"127.0.0.1\"\n{extra}",
        server.state_dir().display(),
        list("https"),
        list("admin"),
        list("turn_udp"),
        list("turn_tcp"),
        list("turn_tls"),
    )
}

fn doctor(config: &str) -> (i32, String) {
    let dir = temp_dir();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["doctor", "--config"])
        .arg(&path)
        .output()
        .expect("run switchboard doctor");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn doctor_passes_a_healthy_server_and_echoes_through_its_relay() {
    let server = TestServer::start("");
    let (code, report) = doctor(&config_for(&server, ""));
    assert_eq!(code, 0, "{report}");
    for line in [
        "[ ok ] https 127.0.0.1:",
        "[ ok ] admin 127.0.0.1:",
        "[ ok ] stun/turn udp 127.0.0.1:",
        "[ ok ] stun/turn tcp 127.0.0.1:",
        "[ ok ] turn tls 127.0.0.1:",
        "[ ok ] relay self-test: allocated 127.0.0.1:",
        "0 failed",
    ] {
        assert!(report.contains(line), "{line:?} missing from:\n{report}");
    }
    // The generated certificate is self-signed: a warning with the way out.
    assert!(
        report.contains("[warn] certificate:") && report.contains("https.cert"),
        "{report}"
    );
}

#[test]
fn doctor_names_what_is_broken() {
    let server = TestServer::start("[turn]\nsecrets = [\"running-secret-0123456789\"]\n");
    let (code, report) = doctor(&config_for(
        &server,
        "secrets = [\"another-secret-0123456789\"]\nexternal_ip = \"10.0.0.7\"\n",
    ));
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("[FAIL] relay self-test: allocate: refused with 401"),
        "{report}"
    );
    assert!(
        report.contains("differs from the running server's"),
        "{report}"
    );
    assert!(
        report.contains("[FAIL] relay address: turn.external_ip = 10.0.0.7"),
        "{report}"
    );
    assert!(
        report.contains("[ ok ] https"),
        "the rest is still checked: {report}"
    );

    drop(server);
    let dir = temp_dir();
    let (code, report) = doctor(&format!(
        "[server]\nstate_dir = \"{}\"\n[https]\nlisten = [\"127.0.0.1:1\"]\ncert = \"{0}/missing.pem\"\nkey = \"{0}/missing-key.pem\"\n",
        dir.path().display()
    ));
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("[FAIL] certificate: failed to read"),
        "{report}"
    );
    assert!(report.contains("https.cert"), "{report}");
    assert!(
        report.contains("[FAIL] https 127.0.0.1:1: Connection refused"),
        "{report}"
    );

    let (code, report) = doctor("[signaling]\nroom_capacity = 0\n");
    assert_eq!(code, 1, "{report}");
    assert!(
        report.starts_with("[FAIL] config:") && report.contains("signaling.room_capacity"),
        "{report}"
    );
}
