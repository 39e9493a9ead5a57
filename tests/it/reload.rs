//! SIGHUP re-reads the config while calls go on: TURN secrets rotate, limits change,
//! certificates are replaced; a config that does not load is refused and the old one stays.
//! Certificate files changed on disk are picked up without any signal.

use std::path::Path;

use serde_json::json;
use switchboard::config::Secret;
use switchboard::signaling::protocol::ServerMsg;
use switchboard::turn::auth::rest_password;
use tokio::net::TcpStream;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::{TestServer, client_tls_for, connect_ws, peer_id, temp_dir};
use crate::raw_turn::{RawTurn, turn_entry};

const OLD: &str = "old-secret-0123456789abcdef";
const NEW: &str = "new-secret-0123456789abcdef";

#[tokio::test]
async fn reload_rotates_the_turn_secret_while_a_call_continues() {
    let server = TestServer::start(&format!(
        "[turn]\nsecrets = [\"{OLD}\"]\nallow_peers = [\"127.0.0.0/8\"]\n"
    ));
    let mut a = server.client().await;
    let mut b = server.client().await;
    let welcome_a = a.join("call", None).await;
    let welcome_b = b.join("call", None).await;
    a.recv().await; // peer_joined
    let mut turn = RawTurn::new(server.listener("turn_udp"), &turn_entry(&welcome_a)).await;
    turn.allocate()
        .await
        .expect("allocation with the old secret");

    // Rotation, step 1: the new secret mints, the old one still verifies.
    server.reload(&format!(
        "[turn]\nsecrets = [\"{NEW}\", \"{OLD}\"]\n[signaling]\nroom_capacity = 2\n"
    ));
    server.wait_log("configuration reloaded");
    a.send(json!({"type": "signal", "to": peer_id(&welcome_b), "payload": {"after": "reload"}}))
        .await;
    assert!(
        matches!(b.recv().await, ServerMsg::Signal { .. }),
        "the call goes on"
    );
    turn.refresh()
        .await
        .expect("the old credential still refreshes");
    let mut c = server.client().await;
    let entry = turn_entry(&c.join("another", None).await);
    let username = entry.username.clone().unwrap();
    assert_eq!(
        entry.credential.as_deref(),
        Some(rest_password(&Secret::new(NEW.into()), &username).as_str()),
        "new credentials are minted with the new secret"
    );
    // The new room capacity applies to the next join.
    let mut d = server.client().await;
    d.send(json!({"type": "join", "room": "call"})).await;
    assert_eq!(d.recv_error().await.0, "room_full");

    // Step 2: the old secret is dropped; its credentials stop working, the sockets stay.
    server.reload(&format!("[turn]\nsecrets = [\"{NEW}\"]\n"));
    server.wait_log("configuration reloaded");
    assert_eq!(turn.refresh().await, Err(401));
    a.send(json!({"type": "ping"})).await;
    assert_eq!(a.recv().await, ServerMsg::Pong);
}

#[tokio::test]
async fn an_invalid_config_is_refused_and_the_running_one_stays() {
    let server = TestServer::start("[signaling]\nroom_capacity = 3\n");
    server.reload("[signaling]\nroom_capacity = 0\n");
    let refused = server.wait_log("configuration reload refused, the running configuration stays");
    let error = refused["error"].as_str().unwrap();
    assert!(error.contains("signaling.room_capacity"), "{error}");
    server.reload_raw("this is not [toml");
    let refused = server.wait_log("configuration reload refused, the running configuration stays");
    assert!(refused["error"].as_str().unwrap().contains("config.toml"));

    // Still serving with room_capacity 3.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = server.client().await;
        c.join("r", None).await;
        clients.push(c);
    }
    // A setting that needs new sockets is named, and the rest is applied.
    server.reload("[https]\nlisten = [\"127.0.0.1:1\"]\n[signaling]\nroom_capacity = 4\n");
    let warned = server.wait_log("these settings changed but take effect only after a restart");
    assert!(
        warned["keys"].as_str().unwrap().contains("https.listen"),
        "{warned}"
    );
    server.wait_log("configuration reloaded");
    let mut fourth = server.client().await;
    fourth.join("r", None).await;
}

/// A setting that needs a restart is compared with what the server started with, not with
/// the previous reload: it is named again on every reload until it matches, and not once
/// it is back to the running value.
#[tokio::test]
async fn a_setting_waiting_for_a_restart_is_named_until_it_matches_the_running_one() {
    let server = TestServer::start("");
    let pending = "[https]\nlisten = [\"127.0.0.1:1\"]\n";
    for _ in 0..2 {
        server.reload(pending);
        let warned = server.wait_log("these settings changed but take effect only after a restart");
        assert_eq!(warned["keys"], "[\"https.listen\"]", "{warned}");
        server.wait_log("configuration reloaded");
    }
    // Back to the running value: nothing waits for a restart any more.
    server.reload("");
    server.wait_log("configuration reloaded");
    server.reload("[http_redirect]\nlisten = [\"127.0.0.1:1\"]\n");
    let warned = server.wait_log("these settings changed but take effect only after a restart");
    assert_eq!(warned["keys"], "[\"http_redirect.listen\"]", "{warned}");
}

fn write_cert(dir: &Path, name: &str) -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (cert.cert.pem(), cert_path.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn certificate_files_changed_on_disk_are_served_without_a_restart() {
    let dir = temp_dir();
    let (pem_a, path_a) = write_cert(dir.path(), "a");
    // The live files: what certbot's live/ symlinks point at.
    let live_cert = dir.path().join("fullchain.pem");
    let live_key = dir.path().join("privkey.pem");
    std::fs::copy(&path_a, &live_cert).unwrap();
    std::fs::copy(dir.path().join("a-key.pem"), &live_key).unwrap();
    let (pem_b, path_b) = write_cert(dir.path(), "b");
    let roots = dir.path().join("roots.pem");
    std::fs::write(&roots, format!("{pem_a}{pem_b}")).unwrap();

    let server = TestServer::start(&format!(
        "[https]\ncert = \"{}\"\nkey = \"{}\"\ncert_check_interval_s = 1\n",
        live_cert.display(),
        live_key.display()
    ));
    let der_a = der_of(&pem_a);
    let der_b = der_of(&pem_b);
    assert_eq!(served_der(&server, &roots).await, der_a);

    // A renewal: new files in place (key first, as certbot does; the half-way state is skipped).
    std::fs::copy(dir.path().join("b-key.pem"), &live_key).unwrap();
    std::fs::copy(&path_b, &live_cert).unwrap();
    server.wait_log("certificate files changed on disk, now serving the new certificate");
    assert_eq!(served_der(&server, &roots).await, der_b);
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

async fn served_der(server: &TestServer, roots: &Path) -> Vec<u8> {
    let connector = tokio_rustls::TlsConnector::from(client_tls_for(roots));
    let tcp = TcpStream::connect(server.https).await.unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(server.https.ip().into());
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn reload_replaces_a_configured_certificate() {
    let dir = temp_dir();
    let (pem_a, path_a) = write_cert(dir.path(), "a");
    let (pem_b, path_b) = write_cert(dir.path(), "b");
    let roots = dir.path().join("roots.pem");
    std::fs::write(&roots, format!("{pem_a}{pem_b}")).unwrap();
    let key = |p: &str| p.replace(".pem", "-key.pem");
    let server = TestServer::start(&format!(
        "[https]\ncert = \"{path_a}\"\nkey = \"{}\"\n",
        key(&path_a)
    ));
    let request = server.ws_url().into_client_request().unwrap();
    let mut kept = connect_ws(request, client_tls_for(&roots)).await.unwrap();
    kept.join("stays", None).await;
    assert_eq!(served_der(&server, &roots).await, der_of(&pem_a));
    server.reload(&format!(
        "[https]\ncert = \"{path_b}\"\nkey = \"{}\"\n",
        key(&path_b)
    ));
    server.wait_log("configuration reloaded");
    assert_eq!(served_der(&server, &roots).await, der_of(&pem_b));
    // A connection made before the reload is still up.
    kept.send(json!({"type": "ping"})).await;
    assert_eq!(kept.recv().await, ServerMsg::Pong);
    // A key that does not match is refused, and B stays.
    server.reload(&format!(
        "[https]\ncert = \"{path_a}\"\nkey = \"{}\"\n",
        key(&path_b)
    ));
    let refused = server.wait_log("configuration reload refused, the running configuration stays");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{refused}"
    );
    assert_eq!(served_der(&server, &roots).await, der_of(&pem_b));
}
