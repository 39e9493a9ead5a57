//! ACME against a real CA: Debian's `pebble` on loopback (with `pebble-challtestsrv` as its
//! DNS, so the test domain resolves to 127.0.0.1) validates TLS-ALPN-01 on Switchboard's
//! HTTPS port, and a rustls client trusting only Pebble's root then sees the issued
//! certificate, swapped in without a restart and reused after one.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use tokio::net::TcpStream;

use crate::harness::{DEADLINE, TestServer, client_tls_for, http_get, need, temp_dir};
use crate::prereq::Prereq;

const DOMAIN: &str = "switchboard.test";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Pebble and its DNS, stopped (by PID) on drop.
struct Pebble {
    children: Vec<Child>,
    directory: String,
    management: SocketAddr,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `cmd` and waits until a line of its output contains `ready`.
fn spawn_until(cmd: &mut Command, ready: &str) -> Child {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let (tx, rx) = mpsc::channel();
    for out in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains(ready) => return child,
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "{cmd:?} never printed {ready:?}; it printed:\n{}",
                    seen.join("\n")
                );
            }
        }
    }
}

impl Pebble {
    /// A CA whose TLS-ALPN-01 validation connects to `tls_port` on 127.0.0.1.
    fn start(tls_port: u16) -> Pebble {
        let dir = temp_dir();
        // Pebble's own HTTPS certificate, from a CA that the server and the test trust.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("ca.pem"), ca.pem()).unwrap();
        std::fs::write(path("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();

        let (listen, management, dns) = (free_port(), free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": path("cert.pem"),
            "privateKey": path("key.pem"),
            "httpPort": free_port(),
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(path("pebble.json"), config.to_string()).unwrap();

        let dns_server = spawn_until(
            Command::new("pebble-challtestsrv")
                .args(["-dns01", &format!("127.0.0.1:{dns}")])
                .args(["-management", &format!("127.0.0.1:{}", free_port())])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]),
            "DNS",
        );
        let pebble = spawn_until(
            Command::new("pebble")
                .arg("-config")
                .arg(path("pebble.json"))
                .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
                // No random sleeps before validation, no randomly refused nonces.
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0"),
            "Listening on",
        );
        Pebble {
            children: vec![dns_server, pebble],
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management: SocketAddr::from(([127, 0, 0, 1], management)),
            ca: path("ca.pem"),
            _dir: dir,
        }
    }

    /// The root that signs Pebble's certificates, from its management interface.
    async fn issuing_root(&self, into: &Path) {
        let connector = tokio_rustls::TlsConnector::from(client_tls_for(&self.ca));
        let tcp = TcpStream::connect(self.management).await.unwrap();
        let name = rustls_pki_types::ServerName::IpAddress(self.management.ip().into());
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let (status, _, body) = http_get(&mut tls, &self.management.to_string(), "/roots/0").await;
        assert_eq!(status, 200, "{body}");
        std::fs::write(into, body).unwrap();
    }
}

/// The leaf certificate the server presents for `DOMAIN` to a client trusting only `root`.
async fn served_names(https: SocketAddr, root: &Path) -> Result<Vec<String>, String> {
    let connector = tokio_rustls::TlsConnector::from(client_tls_for(root));
    let tcp = TcpStream::connect(https).await.map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from(DOMAIN).unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    let san = parsed.subject_alternative_name().unwrap().unwrap();
    Ok(san
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect())
}

#[tokio::test]
#[cfg_attr(
    not(has_pebble),
    ignore = "needs pebble and pebble-challtestsrv (apt install pebble)"
)]
async fn acme_issues_a_certificate_with_tls_alpn_01_and_reuses_it_after_a_restart() {
    need(Prereq::Pebble);
    let https_port = free_port();
    let pebble = Pebble::start(https_port);
    let state = temp_dir();
    let config = format!(
        "[server]\nstate_dir = \"{}\"\n[https]\nlisten = [\"127.0.0.1:{https_port}\"]\n\
         [acme]\nenabled = true\ndomains = [\"{DOMAIN}\"]\ncontact = [\"mailto:ops@switchboard.test\"]\n\
         directory = \"{}\"\ndirectory_ca = \"{}\"\n",
        state.path().display(),
        pebble.directory,
        pebble.ca.display()
    );
    let server = TestServer::start(&config);
    // It starts with the self-signed certificate and swaps the issued one in while running.
    server.wait_log("generated self-signed certificate");
    let issued = server.wait_log("ACME certificate issued, now serving it");
    assert!(
        issued["domains"].as_str().unwrap().contains(DOMAIN),
        "{issued}"
    );
    let root = state.path().join("pebble-root.pem");
    pebble.issuing_root(&root).await;
    let names = served_names(server.https, &root)
        .await
        .expect("the issued chain verifies");
    assert!(names.iter().any(|n| n.contains(DOMAIN)), "{names:?}");
    for file in ["acme-cert.pem", "acme-key.pem", "acme-account.json"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    drop(server);

    // After a restart the stored certificate is served at once, with no new order.
    let server = TestServer::start(&config);
    server.wait_log("using the certificate obtained by ACME");
    server.wait_log("ACME certificate valid");
    assert!(served_names(server.https, &root).await.is_ok());
}
