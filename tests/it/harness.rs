//! Starts the real `switchboard` binary on ephemeral ports with a temporary
//! config and state directory, and gives tests real clients for it.
//!
//! The server logs JSON lines; the harness reads them to learn the bound
//! addresses and waits for the `ready` line under a deadline (no sleeps).
//! When a test fails, the server's log is printed with an `SRV:` prefix.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use switchboard::signaling::protocol::ServerMsg;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::prereq::Prereq;

/// How long any single expected event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A fresh temporary directory per test, removed on drop.
pub fn temp_dir() -> tempfile::TempDir {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    tempfile::Builder::new()
        .prefix(&format!("switchboard-it-{n}-"))
        .tempdir()
        .expect("temp dir")
}

/// Deep-merges the TOML `overrides` into `base`.
fn merge(base: &mut toml::Table, overrides: toml::Table) {
    for (key, value) in overrides {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

pub struct TestServer {
    /// `None` once `wait_exit` has reaped it.
    child: Option<Child>,
    _dir: tempfile::TempDir,
    /// Every listener the server logged, by listener kind.
    pub listeners: Vec<(String, SocketAddr)>,
    pub https: SocketAddr,
    state_dir: PathBuf,
    config_path: PathBuf,
    /// The config the server started with, for `reload`.
    config: toml::Table,
    log: Arc<Mutex<Vec<String>>>,
    lines: mpsc::Receiver<Value>,
    /// Every JSON log line received so far, and how far `wait_log` has looked.
    seen: Mutex<(Vec<Value>, usize)>,
}

impl TestServer {
    /// Starts the binary with loopback listeners on port 0 and `overrides` merged into its config.
    pub fn start(overrides: &str) -> TestServer {
        let dir = temp_dir();
        let mut config: toml::Table = toml::from_str(&format!(
            r#"
            [server]
            state_dir = "{}"
            [log]
            format = "json"
            level = "info,switchboard=debug"
            [https]
            listen = ["127.0.0.1:0"]
            [turn]
            udp_listen = ["127.0.0.1:0"]
            tcp_listen = ["127.0.0.1:0"]
            tls_listen = ["127.0.0.1:0"]
            relay_ip = "127.0.0.1"
            fence = "room"
            [admin]
            listen = ["127.0.0.1:0"]
            "#,
            dir.path().join("state").display()
        ))
        .expect("base config");
        merge(
            &mut config,
            toml::from_str(overrides).expect("override TOML"),
        );
        let state_dir = PathBuf::from(config["server"]["state_dir"].as_str().expect("state_dir"));
        let config_path = dir.path().join("config.toml");
        std::fs::write(
            &config_path,
            toml::to_string(&config).expect("serialize config"),
        )
        .expect("write config");

        let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        command
            .arg("--config")
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe. The server dies with the test thread that
        // started it, even when the test process is killed before `Drop` runs.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("spawn switchboard");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let log = Arc::clone(&log);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        let _ = tx.send(v);
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let mut server = TestServer {
            child: Some(child),
            _dir: dir,
            listeners: Vec::new(),
            https: "0.0.0.0:0".parse().unwrap(),
            state_dir,
            config_path,
            config,
            log,
            lines,
            seen: Mutex::new((Vec::new(), 0)),
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("switchboard exited early with {status}");
            }
            let line = match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => continue,
                Err(e) => panic!("switchboard did not become ready: {e}"),
            };
            self.seen.lock().unwrap().0.push(line.clone());
            match line["message"].as_str() {
                Some("listening") => {
                    let kind = line["listener"].as_str().unwrap_or_default().to_owned();
                    let addr = line["addr"]
                        .as_str()
                        .and_then(|a| a.parse().ok())
                        .expect("listening addr");
                    if kind == "https" {
                        self.https = addr;
                    }
                    self.listeners.push((kind, addr));
                }
                Some("ready") => return,
                _ => {}
            }
        }
    }

    /// The first bound address of listener `kind`.
    pub fn listener(&self, kind: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no {kind} listener in {:?}", self.listeners))
    }

    /// The config file the server was started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Waits until the server logs a line whose `message` is `message`, after the
    /// line the previous call returned; returns it.
    pub fn wait_log(&self, message: &str) -> Value {
        let deadline = Instant::now() + DEADLINE;
        let mut seen = self.seen.lock().unwrap();
        loop {
            let (lines, cursor) = &mut *seen;
            while *cursor < lines.len() {
                *cursor += 1;
                if lines[*cursor - 1]["message"] == message {
                    return lines[*cursor - 1].clone();
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => panic!("server never logged {message:?}"),
            }
        }
    }

    /// Every line logged so far (that has reached the test) whose `message` is `message`;
    /// call it after `wait_log` for a line logged after the ones to count.
    pub fn logged(&self, message: &str) -> Vec<Value> {
        let mut seen = self.seen.lock().unwrap();
        while let Ok(line) = self.lines.try_recv() {
            seen.0.push(line);
        }
        seen.0
            .iter()
            .filter(|l| l["message"] == message)
            .cloned()
            .collect()
    }

    /// Rewrites the config file as the starting config with `overrides` merged in, and
    /// sends SIGHUP.
    pub fn reload(&self, overrides: &str) {
        let mut config = self.config.clone();
        merge(
            &mut config,
            toml::from_str(overrides).expect("override TOML"),
        );
        self.reload_raw(&toml::to_string(&config).expect("serialize config"));
    }

    /// Writes `text` as the config file and sends SIGHUP.
    pub fn reload_raw(&self, text: &str) {
        std::fs::write(&self.config_path, text).expect("write config");
        self.signal("HUP");
    }

    /// Sends `signal` (e.g. "TERM") to the server.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the server to exit and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server still owned");
        let (tx, rx) = mpsc::channel();
        let pid = child.id();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(DEADLINE) {
            Ok(status) => status.expect("wait for server"),
            Err(_) => {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
                panic!("server did not exit within {DEADLINE:?}");
            }
        }
    }

    /// The trust anchor clients use: the server's generated self-signed certificate.
    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        client_tls_for(&self.state_dir().join(switchboard::tls::GENERATED_CERT))
    }

    pub fn ws_url(&self) -> String {
        format!("wss://{}/ws", self.https)
    }

    /// Opens a signaling socket.
    pub async fn client(&self) -> Client {
        self.client_with(self.ws_url().into_client_request().unwrap())
            .await
            .expect("websocket connect")
    }

    /// Opens a signaling socket with a custom request (headers, URL).
    pub async fn client_with(
        &self,
        request: tungstenite::handshake::client::Request,
    ) -> Result<Client, tungstenite::Error> {
        connect_ws(request, self.client_tls()).await
    }

    /// A plain HTTP/1.1 GET over TLS; returns status, headers and body.
    pub async fn https_get(&self, path: &str) -> (u16, String, String) {
        self.https_request("GET", path, &[]).await
    }

    pub async fn https_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String, String) {
        let connector = tokio_rustls::TlsConnector::from(self.client_tls());
        let tcp = TcpStream::connect(self.https).await.expect("connect");
        let name = rustls_pki_types::ServerName::IpAddress(self.https.ip().into());
        let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
        http_request(&mut tls, method, &self.https.to_string(), path, headers).await
    }

    /// The text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let addr = self.listener("admin");
        let mut tcp = TcpStream::connect(addr).await.expect("admin listener");
        let (status, _, body) = http_get(&mut tcp, &addr.to_string(), "/metrics").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// The value of one sample on `/metrics` (0 when the series has no sample yet).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let addr = self.listener("admin");
        let mut tcp = TcpStream::connect(addr).await.expect("admin listener");
        let (status, _, body) = http_get(&mut tcp, &addr.to_string(), "/metrics").await;
        assert_eq!(status, 200, "{body}");
        let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
            .expect("Prometheus text");
        let found = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
        match found.map(|s| &s.value) {
            Some(
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v),
            ) => *v,
            _ => 0.0,
        }
    }

    /// Polls the metric until it reads `want` (what the server does after answering a
    /// client may still be under way); fails at the deadline with the last reading.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let got = self.metric(name, labels).await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} stayed at {got}, expected {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A request to the admin listener (plain HTTP), with the admin token when `authorized`.
    pub async fn admin(&self, method: &str, path: &str, authorized: bool) -> (u16, Value) {
        let addr = self.listener("admin");
        let token = std::fs::read_to_string(self.state_dir.join("admin-token"))
            .expect("generated admin token");
        let bearer = format!("Bearer {}", token.trim());
        let headers: &[(&str, &str)] = if authorized {
            &[("Authorization", &bearer)]
        } else {
            &[]
        };
        let mut tcp = TcpStream::connect(addr).await.expect("connect to admin");
        let (status, _, body) =
            http_request(&mut tcp, method, &addr.to_string(), path, headers).await;
        let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
        (status, json)
    }
}

/// Opens a signaling socket to any server, trusting `tls`.
pub async fn connect_ws(
    request: tungstenite::handshake::client::Request,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Client, tungstenite::Error> {
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        request,
        None,
        true,
        Some(Connector::Rustls(tls)),
    )
    .await?;
    Ok(Client { ws })
}

/// A rustls client config trusting exactly the PEM certificate at `path`.
pub fn client_tls_for(path: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).expect("read cert") {
        roots.add(cert.expect("parse cert")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Sends a GET on `stream` and reads the whole response.
pub async fn http_get<S>(stream: &mut S, host: &str, path: &str) -> (u16, String, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    http_request(stream, "GET", host, path, &[]).await
}

/// Sends a request with no body and extra `headers` on `stream`; reads the whole response.
pub async fn http_request<S>(
    stream: &mut S,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .or_else(|e| {
            // Servers may close TLS without close_notify after "Connection: close".
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Ok(0)
            } else {
                Err(e)
            }
        })
        .expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, head.to_owned(), body.to_owned())
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for line in self.log.lock().unwrap().iter() {
                eprintln!("SRV: {line}");
            }
        }
    }
}

/// A signaling client speaking JSON text frames.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What the next frame from the server was.
#[derive(Debug)]
pub enum Event {
    Msg(ServerMsg),
    Closed(Option<CloseFrame>),
}

impl Client {
    pub async fn send(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// The next message or close, skipping control frames.
    pub async fn next_event(&mut self) -> Event {
        // One deadline for the whole wait: pings must not extend it.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("server answered in time");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return Event::Msg(
                        serde_json::from_str(&text).expect("server sends valid messages"),
                    );
                }
                Some(Ok(Message::Close(frame))) => return Event::Closed(frame),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Event::Closed(None),
            }
        }
    }

    pub async fn recv(&mut self) -> ServerMsg {
        match self.next_event().await {
            Event::Msg(msg) => msg,
            Event::Closed(frame) => panic!("expected a message, got close {frame:?}"),
        }
    }

    /// Expects an `error` message and returns its code as snake_case text.
    pub async fn recv_error(&mut self) -> (String, String) {
        match self.recv().await {
            ServerMsg::Error { code, message } => (
                serde_json::to_value(code)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned(),
                message,
            ),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// Expects the connection to close and returns the close code and reason.
    pub async fn recv_close(&mut self) -> (u16, String) {
        loop {
            match self.next_event().await {
                Event::Closed(Some(frame)) => return (frame.code.into(), frame.reason.to_string()),
                Event::Closed(None) => panic!("connection dropped without a close frame"),
                Event::Msg(_) => {}
            }
        }
    }

    /// Joins `room` and returns the welcome.
    pub async fn join(&mut self, room: &str, name: Option<&str>) -> ServerMsg {
        self.send(serde_json::json!({"type": "join", "room": room, "name": name}))
            .await;
        let msg = self.recv().await;
        assert!(
            matches!(msg, ServerMsg::Welcome { .. }),
            "expected welcome, got {msg:?}"
        );
        msg
    }
}

/// The peer id in a welcome.
pub fn peer_id(welcome: &ServerMsg) -> switchboard::signaling::protocol::PeerId {
    match welcome {
        ServerMsg::Welcome { peer_id, .. } => peer_id.clone(),
        other => panic!("not a welcome: {other:?}"),
    }
}

/// Fails the test unless `prereq` is present. build.rs marks the tests that need a missing
/// prerequisite as ignored, so a test gets here without it only in CI (where .ci/run provides
/// everything), with `--include-ignored`, or from a build made by another user (root is
/// probed when build.rs runs).
pub fn need(prereq: Prereq) {
    let Some(missing) = prereq.missing(Path::new(env!("CARGO_MANIFEST_DIR"))) else {
        return;
    };
    let why = if std::env::var_os("CI").is_some() {
        "CI is set, so .ci/run must provide it"
    } else {
        "without it, build.rs marks this test ignored; it ran anyway (--include-ignored?)"
    };
    panic!("{missing}: this test {}; {why}", prereq.needs());
}

/// Runs `f` on a thread that has entered the network namespace `ns`; sockets it opens live there.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_netns(ns, f).join().expect("thread in namespace")
}

/// Spawns `f` on a thread that has entered the network namespace `ns`.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open the namespace");
        // SAFETY: setns on a valid namespace fd affects only this thread (and threads it starts).
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}
