//! `switchboard doctor`: checks a config and the server running with it, and prints a report
//! a person can act on: the certificate, every listener, the advertised relay address, and a
//! relay self-test (two allocations that echo a message to each other through the relay).
//!
//! It only reads: nothing is generated or written, so it is safe to run as root beside the
//! service.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{Config, Secret};
use crate::model::RoomId;
use crate::turn::auth;
use crate::turn::probe::{self, ProbeError};

const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug)]
pub struct Check {
    pub status: Status,
    pub what: String,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Report(pub Vec<Check>);

impl Report {
    fn push(&mut self, status: Status, what: impl Into<String>, detail: impl Into<String>) {
        self.0.push(Check {
            status,
            what: what.into(),
            detail: detail.into(),
        });
    }

    pub fn failed(&self) -> bool {
        self.0.iter().any(|c| c.status == Status::Fail)
    }

    /// One line per check, then a summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.0 {
            let tag = match c.status {
                Status::Ok => " ok ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            let _ = writeln!(out, "[{tag}] {}: {}", c.what, c.detail);
        }
        let count = |s| self.0.iter().filter(|c| c.status == s).count();
        let _ = writeln!(
            out,
            "{} checks: {} ok, {} warnings, {} failed",
            self.0.len(),
            count(Status::Ok),
            count(Status::Warn),
            count(Status::Fail)
        );
        out
    }
}

/// Runs every check against `config` (read from `path`) and the server it describes.
pub async fn run(config: &Config, path: &Path) -> Report {
    let mut report = Report::default();
    report.push(Status::Ok, "config", format!("{} is valid", path.display()));
    certificate(config, &mut report);
    listeners(config, &mut report).await;
    if config.turn.enabled {
        relay_address(config, &mut report);
        if let Some(warning) = tls_host_warning(config.turn.public_host.as_deref()) {
            report.push(Status::Warn, "TURN over TLS", warning);
        }
        relay_self_test(config, &mut report).await;
    }
    if config.cluster.enabled() {
        cluster(config, &mut report).await;
    }
    report
}

/// Redis answers, this instance's heartbeat is there, and which other instances are alive.
async fn cluster(config: &Config, report: &mut Report) {
    let what = "cluster";
    let seen = match crate::cluster::inspect(&config.cluster).await {
        Ok(seen) => seen,
        Err(e) => {
            return report.push(
                Status::Fail,
                what,
                format!(
                    "Redis (cluster.redis_url) does not answer: {e}; joins are refused until it does"
                ),
            );
        }
    };
    let me = crate::cluster::configured_id(&config.cluster, &config.server.state_dir);
    let names: Vec<&str> = seen.alive.iter().map(|(id, _)| id.as_str()).collect();
    let list = if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    };
    let silent = if seen.silent.is_empty() {
        String::new()
    } else {
        format!(
            "; silent (their peers leave their rooms once another instance notices): {}",
            seen.silent.join(", ")
        )
    };
    match me {
        Some(me) if names.contains(&me.as_str()) => report.push(
            Status::Ok,
            what,
            format!("Redis answers; instances alive: {list} (this one: {me}){silent}"),
        ),
        Some(me) => report.push(
            Status::Fail,
            what,
            format!(
                "Redis answers, but this instance ({me}) has no heartbeat there: is switchboard running with this config? \
                 instances alive: {list}{silent}"
            ),
        ),
        None => report.push(
            Status::Warn,
            what,
            format!(
                "Redis answers; instances alive: {list}{silent}; this instance has no id yet (it is generated on first start)"
            ),
        ),
    }
}

fn certificate(config: &Config, report: &mut Report) {
    let what = "certificate";
    if config.acme.enabled
        && crate::tls::acme_stored(config, time::OffsetDateTime::now_utc()).is_none()
    {
        report.push(
            Status::Warn,
            what,
            format!(
                "acme.enabled, but no valid certificate for {:?} was obtained yet; the log says why \
                 (\"ACME certificate not obtained\"): the names must resolve to this host and reach port 443",
                config.acme.domains
            ),
        );
        return;
    }
    match crate::tls::inspect(config) {
        Ok(None) => report.push(
            Status::Warn,
            what,
            "none generated yet; the server generates a self-signed one on first start",
        ),
        Ok(Some(info)) => {
            let days = (info.not_after - time::OffsetDateTime::now_utc()).whole_days();
            let names = info.names.join(", ");
            let summary = format!(
                "{} for {names}, expires in {days} days ({})",
                info.path.display(),
                info.not_after.date()
            );
            if info.generated {
                report.push(
                    Status::Warn,
                    what,
                    format!(
                        "{summary}; self-signed, so browsers warn: set https.cert and https.key for a certificate they trust"
                    ),
                );
            } else if days < 21 {
                report.push(
                    Status::Warn,
                    what,
                    format!("{summary}; renew it soon (new files are picked up without a restart)"),
                );
            } else {
                report.push(Status::Ok, what, summary);
            }
        }
        Err(e) => report.push(Status::Fail, what, e.to_string()),
    }
}

/// Where to reach a listener bound to `addr` from this machine.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

/// An IPv6 wildcard on a host without IPv6 is skipped by the server too.
fn ipv6_missing(addr: SocketAddr) -> bool {
    addr.is_ipv6() && std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_err()
}

fn advice(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            format!("{e}: is switchboard running with this config? (systemctl status switchboard)")
        }
        _ => e.to_string(),
    }
}

fn probe_advice(e: &ProbeError) -> String {
    match e {
        ProbeError::Io(io) => advice(io),
        ProbeError::Timeout => format!("{e}: is switchboard running, and does a firewall drop it?"),
        other => other.to_string(),
    }
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 3 s"))?
}

async fn healthz<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    host: &str,
) -> Result<(), String> {
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut head = vec![0u8; 64];
        let n = stream.read(&mut head).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&head[..n]).into_owned())
    };
    match tokio::time::timeout(TIMEOUT, exchange).await {
        Err(_) => Err("no HTTP answer within 3 s".to_owned()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(text)) if text.starts_with("HTTP/1.1 200") => Ok(()),
        Ok(Ok(text)) => Err(format!(
            "unexpected answer: {}",
            text.lines().next().unwrap_or("")
        )),
    }
}

async fn tls_connect(
    addr: SocketAddr,
    alpn: &[u8],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tcp = connect(addr).await.map_err(|e| advice(&e))?;
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    tokio::time::timeout(
        TIMEOUT,
        crate::tls::probe_connector(alpn).connect(name, tcp),
    )
    .await
    .map_err(|_| "no TLS handshake within 3 s".to_owned())?
    .map_err(|e| format!("TLS handshake failed: {e}"))
}

async fn listeners(config: &Config, report: &mut Report) {
    for &addr in &config.https.listen {
        if ipv6_missing(addr) {
            continue;
        }
        let to = reachable(addr);
        let what = format!("https {addr}");
        let result = match tls_connect(to, b"http/1.1").await {
            Ok(mut tls) => healthz(&mut tls, &to.to_string()).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => report.push(Status::Ok, what, "TLS handshake and /healthz answered"),
            Err(e) => report.push(Status::Fail, what, e),
        }
    }
    for &addr in &config.admin.listen {
        let to = reachable(addr);
        let what = format!("admin {addr}");
        let result = match connect(to).await {
            Ok(mut tcp) => healthz(&mut tcp, &to.to_string()).await,
            Err(e) => Err(advice(&e)),
        };
        match result {
            Ok(()) => report.push(Status::Ok, what, "/healthz answered"),
            Err(e) => report.push(Status::Fail, what, e),
        }
    }
    if !config.turn.enabled {
        return;
    }
    for &addr in &config.turn.udp_listen {
        if ipv6_missing(addr) {
            continue;
        }
        let what = format!("stun/turn udp {addr}");
        match probe::binding_udp(reachable(addr)).await {
            Ok(seen) => report.push(
                Status::Ok,
                what,
                format!("STUN binding answered (saw us as {seen})"),
            ),
            Err(e) => report.push(Status::Fail, what, probe_advice(&e)),
        }
    }
    for &addr in &config.turn.tcp_listen {
        if ipv6_missing(addr) {
            continue;
        }
        let what = format!("stun/turn tcp {addr}");
        let result = match connect(reachable(addr)).await {
            Ok(mut tcp) => probe::binding_stream(&mut tcp)
                .await
                .map_err(|e| probe_advice(&e)),
            Err(e) => Err(advice(&e)),
        };
        match result {
            Ok(_) => report.push(Status::Ok, what, "STUN binding answered"),
            Err(e) => report.push(Status::Fail, what, e),
        }
    }
    for &addr in &config.turn.tls_listen {
        if ipv6_missing(addr) {
            continue;
        }
        let what = format!("turn tls {addr}");
        let result = match tls_connect(reachable(addr), b"stun.turn").await {
            Ok(mut tls) => probe::binding_stream(&mut tls)
                .await
                .map_err(|e| probe_advice(&e)),
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => report.push(Status::Ok, what, "TLS handshake and STUN binding answered"),
            Err(e) => report.push(Status::Fail, what, e),
        }
    }
}

/// Addresses peers on the Internet cannot reach.
fn private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

fn relay_address(config: &Config, report: &mut Report) {
    let t = &config.turn;
    let what = "relay address";
    if let Some(ip) = t.external_ip {
        if private(ip) {
            report.push(
                Status::Fail,
                what,
                format!("turn.external_ip = {ip} is not a public address; set it to the address peers reach this host at"),
            );
        } else {
            report.push(
                Status::Ok,
                what,
                format!("relays are advertised as {ip} (turn.external_ip)"),
            );
        }
        return;
    }
    let ip = t.relay_ip.unwrap_or_else(crate::net::default_relay_ip);
    if private(ip) {
        report.push(
            Status::Warn,
            what,
            format!(
                "relays are advertised as {ip}, which peers outside this network cannot reach; \
                 behind 1:1 NAT (cloud VMs) set turn.external_ip to the public address"
            ),
        );
    } else {
        report.push(Status::Ok, what, format!("relays are advertised as {ip}"));
    }
}

/// A `turn.public_host` that is an IP address puts it in the `turns:` URLs, which Firefox
/// ignores ("TLS requires FQDN"): its users behind networks that let only 443 out get no relay.
fn tls_host_warning(public_host: Option<&str>) -> Option<String> {
    let host = public_host?;
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>().is_ok().then(|| {
        format!(
            "turn.public_host = {host} is an IP address: Firefox ignores TURN over TLS (turns:) URLs that \
             name an IP, so Firefox users behind networks that let only 443 out get no relay; set it to a \
             DNS name that is on the certificate"
        )
    })
}

fn secret(config: &Config) -> Result<Secret, String> {
    if let Some(s) = config.turn.secrets.first() {
        return Ok(s.clone());
    }
    let path = config
        .server
        .state_dir
        .join(crate::secrets::TURN_SECRET_FILE);
    std::fs::read_to_string(&path)
        .map(|s| Secret::new(s.trim().to_owned()))
        .map_err(|e| {
            format!(
                "cannot read {} ({e}); run doctor as root or as user switchboard",
                path.display()
            )
        })
}

async fn relay_self_test(config: &Config, report: &mut Report) {
    let what = "relay self-test";
    let Some(&listener) = config.turn.udp_listen.iter().find(|a| !ipv6_missing(**a)) else {
        report.push(
            Status::Warn,
            what,
            "skipped: no UDP listener (turn.udp_listen)",
        );
        return;
    };
    let secret = match secret(config) {
        Ok(s) => s,
        Err(e) => return report.push(Status::Warn, what, format!("skipped: {e}")),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let room = RoomId::parse("switchboard-doctor").expect("valid room name");
    let username = auth::room_username(now + 60, &room);
    let password = auth::rest_password(&secret, &username);
    match echo(reachable(listener), &username, &password).await {
        Ok((a, b, took)) => report.push(
            Status::Ok,
            what,
            format!(
                "allocated {a} and {b}, a message went through the relay and back in {} ms",
                took.as_millis()
            ),
        ),
        Err(e) => report.push(Status::Fail, what, e),
    }
}

/// Two allocations that permit each other; a message from A to B and back.
async fn echo(
    server: SocketAddr,
    username: &str,
    password: &str,
) -> Result<(SocketAddr, SocketAddr, Duration), String> {
    let step = |step: &'static str| {
        move |e: ProbeError| {
            let hint = match &e {
                ProbeError::Refused { code: 401, .. } => {
                    "; the credential was refused: the secret doctor used (turn.secrets, or the turn-secret file) \
                     differs from the running server's; after changing the config, reload (systemctl reload switchboard)"
                }
                ProbeError::Refused { code: 508, .. } | ProbeError::Refused { code: 486, .. } => {
                    "; an allocation quota is full (turn.max_allocations*)"
                }
                _ => "",
            };
            format!("{step}: {}{hint}", probe_advice(&e))
        }
    };
    let started = Instant::now();
    let mut a = probe::Client::new(server, username, password)
        .await
        .map_err(step("client"))?;
    let mut b = probe::Client::new(server, username, password)
        .await
        .map_err(step("client"))?;
    let relay_a = a.allocate().await.map_err(step("allocate"))?;
    let relay_b = b.allocate().await.map_err(step("allocate"))?;
    let result = async {
        a.permit(relay_b).await.map_err(step("create permission"))?;
        b.permit(relay_a).await.map_err(step("create permission"))?;
        a.send(relay_b, b"switchboard doctor ping")
            .await
            .map_err(step("send"))?;
        let (from, data) = b.recv().await.map_err(step("relay to peer"))?;
        if from != relay_a || data != b"switchboard doctor ping" {
            return Err(format!(
                "relay to peer: got {} bytes from {from}, expected the ping from {relay_a}",
                data.len()
            ));
        }
        b.send(relay_a, b"switchboard doctor pong")
            .await
            .map_err(step("send"))?;
        let (from, data) = a.recv().await.map_err(step("relay back"))?;
        if from != relay_b || data != b"switchboard doctor pong" {
            return Err(format!(
                "relay back: got {} bytes from {from}, expected the pong from {relay_b}",
                data.len()
            ));
        }
        Ok(())
    }
    .await;
    a.release().await;
    b.release().await;
    result.map(|()| (relay_a, relay_b, started.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ip_address_as_public_host_is_warned_of_for_firefox() {
        assert!(tls_host_warning(Some("203.0.113.5")).is_some());
        assert!(tls_host_warning(Some("[2001:db8::5]")).is_some());
        assert!(tls_host_warning(Some("calls.example.org")).is_none());
        assert!(tls_host_warning(None).is_none());
    }

    #[test]
    fn private_addresses_are_told_apart() {
        for ip in [
            "10.1.2.3",
            "192.168.1.1",
            "172.20.0.1",
            "100.64.0.1",
            "127.0.0.1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["198.51.100.7", "8.8.8.8", "2001:db8::1", "100.128.0.1"] {
            assert!(!private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn the_report_counts_and_marks_failures() {
        let mut r = Report::default();
        r.push(Status::Ok, "a", "fine");
        r.push(Status::Fail, "b", "broken");
        assert!(r.failed());
        let text = r.render();
        assert!(
            text.contains("[ ok ] a: fine") && text.contains("[FAIL] b: broken"),
            "{text}"
        );
        assert!(
            text.ends_with("2 checks: 1 ok, 0 warnings, 1 failed\n"),
            "{text}"
        );
    }
}
