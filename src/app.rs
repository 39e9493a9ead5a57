//! Binding and running: `Listeners::bind` binds every configured socket,
//! `run` serves them until the shutdown token fires, then drains.
//!
//! Tests call the same two functions with their own config and token.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{Apply, Config, Secret};
use crate::http;
use crate::net::{self, Bound};
use crate::secrets;
use crate::signaling::hub::Hub;
use crate::signaling::legacy::Directory;
use crate::signaling::sio::SioRooms;
use crate::state::{AppState, Live, TurnState};
use crate::tls::{self, TlsMaterial};
use crate::turn::auth::NonceKey;
use crate::turn::core::{Core, CoreConfig, Membership};
use crate::turn::ice::TurnOffer;
use crate::turn::policy::{Cidr, PeerPolicy};
use crate::turn::server::{StreamLimits, TurnServer, UdpRelayBinder};

/// How long a TURN nonce stays valid.
const NONCE_LIFETIME_S: u64 = 600;

/// Every bound socket, before anything is served.
pub struct Listeners {
    pub https: Vec<TcpListener>,
    pub redirect: Vec<TcpListener>,
    /// Groups of sockets sharing one address (SO_REUSEPORT), one receive loop each.
    pub turn_udp: Vec<Vec<UdpSocket>>,
    pub turn_tcp: Vec<TcpListener>,
    pub turn_tls: Vec<TcpListener>,
    /// Plain `ws://` listeners for the plain-WebSocket dialect.
    pub legacy_ws: Vec<TcpListener>,
    /// The admin listener: `/metrics` and the admin API.
    pub admin: Vec<TcpListener>,
}

impl Listeners {
    /// Binds every listener in `config`.
    ///
    /// # Errors
    /// A listener cannot be bound; the error names the address and config key.
    pub fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let tcp = |addrs: &[SocketAddr], what, key| -> anyhow::Result<Vec<TcpListener>> {
            let mut out = Vec::new();
            for &addr in addrs {
                match net::bind_tcp(addr, what, key)? {
                    Bound::Listener(l) => out.push(l),
                    Bound::NoIpv6 => {
                        warn!(listener = what, %addr, "IPv6 is not available on this host, skipping")
                    }
                }
            }
            Ok(out)
        };
        let https = tcp(&config.https.listen, "HTTPS", "https.listen")?;
        if https.is_empty() {
            anyhow::bail!("no HTTPS listener could be bound (config key `https.listen`)");
        }
        let redirect = tcp(
            &config.http_redirect.listen,
            "HTTP redirect",
            "http_redirect.listen",
        )?;
        let legacy_ws = tcp(
            &config.signaling.legacy_ws_listen,
            "plain WebSocket",
            "signaling.legacy_ws_listen",
        )?;
        let admin = tcp(&config.admin.listen, "admin", "admin.listen")?;
        let turn = &config.turn;
        let (mut turn_udp, mut turn_tcp, mut turn_tls) = (Vec::new(), Vec::new(), Vec::new());
        if turn.enabled {
            let loops = std::thread::available_parallelism().map_or(1, usize::from);
            for &addr in &turn.udp_listen {
                match net::bind_udp(addr, loops, "TURN UDP", "turn.udp_listen")? {
                    Bound::Listener(s) => turn_udp.push(s),
                    Bound::NoIpv6 => {
                        warn!(listener = "TURN UDP", %addr, "IPv6 is not available on this host, skipping")
                    }
                }
            }
            turn_tcp = tcp(&turn.tcp_listen, "TURN TCP", "turn.tcp_listen")?;
            turn_tls = tcp(&turn.tls_listen, "TURN TLS", "turn.tls_listen")?;
        }
        Ok(Listeners {
            https,
            redirect,
            turn_udp,
            turn_tcp,
            turn_tls,
            legacy_ws,
            admin,
        })
    }
}

/// Serves until `shutdown` fires, then closes connections within `server.shutdown_timeout_s`.
/// Every configuration sent on `reloads` is applied while connections stay (see `reload`).
///
/// # Errors
/// A listener's local address cannot be read, or the TURN secret cannot be stored.
pub async fn run(
    mut config: Config,
    listeners: Listeners,
    tls: TlsMaterial,
    shutdown: CancellationToken,
    mut reloads: mpsc::Receiver<Config>,
) -> anyhow::Result<()> {
    let tasks = TaskTracker::new();
    let s = &config.signaling;
    let hub = Arc::new(Hub::new(s.room_capacity, s.max_rooms));
    let legacy = Arc::new(Directory::default());
    let sio = Arc::new(SioRooms::new(s.socketio_room_capacity, s.max_rooms));
    let Listeners {
        https,
        redirect,
        turn_udp,
        turn_tcp,
        turn_tls,
        legacy_ws,
        admin,
    } = listeners;
    let mut https_addrs = Vec::new();
    for l in &https {
        https_addrs.push(l.local_addr()?);
    }
    let turn = if config.turn.enabled {
        Some(start_turn(
            &config,
            crate::state::membership(Arc::clone(&hub), Arc::clone(&legacy), Arc::clone(&sio)),
            &tls,
            (turn_udp, turn_tcp, turn_tls),
            &https_addrs,
            &tasks,
            &shutdown,
        )?)
    } else {
        None
    };
    let tls = Arc::new(tls);
    if config.acme.enabled {
        tasks.spawn(crate::acme::maintain(
            config.clone(),
            Arc::clone(&tls),
            shutdown.clone(),
        ));
    }
    let has_admin = !admin.is_empty();
    let admin_token = admin_token(&config, has_admin)?;
    let app = Arc::new(AppState::new(
        Live::new(&config, admin_token),
        hub,
        legacy,
        sio,
        turn,
        shutdown.clone(),
        tasks.clone(),
    ));
    let router = http::router(Arc::clone(&app));

    let turn_on_https = app
        .turn
        .as_ref()
        .filter(|_| config.turn.on_https_port)
        .map(|t| Arc::clone(&t.server));
    let https_tls = tls.https_server_config(turn_on_https.is_some());
    for listener in https {
        let addr = listener
            .local_addr()
            .context("reading the HTTPS listener address")?;
        info!(listener = "https", %addr, turn = turn_on_https.is_some(), "listening");
        tasks.spawn(http::server::serve_https(
            listener,
            Arc::clone(&https_tls),
            router.clone(),
            shutdown.clone(),
            tasks.clone(),
            turn_on_https.clone(),
        ));
    }
    let https_port = https_addrs
        .first()
        .map(SocketAddr::port)
        .context("no HTTPS listener")?;
    for listener in redirect {
        let addr = listener
            .local_addr()
            .context("reading the redirect listener address")?;
        info!(listener = "http_redirect", %addr, "listening");
        tasks.spawn(http::server::serve_redirect(
            listener,
            https_port,
            shutdown.clone(),
            tasks.clone(),
        ));
    }
    for listener in legacy_ws {
        let addr = listener
            .local_addr()
            .context("reading the plain WebSocket listener address")?;
        info!(listener = "legacy_ws", %addr, "listening");
        tasks.spawn(http::server::serve_plain(
            listener,
            http::legacy_router(Arc::clone(&app)),
            shutdown.clone(),
            tasks.clone(),
        ));
    }
    for listener in admin {
        let addr = listener
            .local_addr()
            .context("reading the admin listener address")?;
        info!(listener = "admin", %addr, "listening");
        tasks.spawn(http::server::serve_plain(
            listener,
            crate::admin::router(Arc::clone(&app)),
            shutdown.clone(),
            tasks.clone(),
        ));
    }
    app.set_ready(true);
    info!(fingerprint = %tls.fingerprint, "ready");

    // What a reload compares keys that need a restart with: the values the server runs on.
    let started = config.clone();
    let mut cert_files = CertFiles::of(&config);
    let mut cert_check =
        tokio::time::interval(Duration::from_secs(config.https.cert_check_interval_s));
    cert_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(new) = reloads.recv() => match reload(&app, &tls, (&started, &config), new, has_admin) {
                Ok(applied) => {
                    config = applied;
                    cert_files = CertFiles::of(&config);
                    cert_check = tokio::time::interval(Duration::from_secs(config.https.cert_check_interval_s));
                }
                Err(e) => error!(error = format!("{e:#}"), "configuration reload refused, the running configuration stays"),
            },
            _ = cert_check.tick() => {
                if cert_files.changed() {
                    match tls::load_certificate(&config) {
                        Ok(loaded) => {
                            tls.replace(&loaded);
                            cert_files.seen();
                            info!(fingerprint = %loaded.fingerprint, "certificate files changed on disk, now serving the new certificate");
                        }
                        // Half-written (a renewal in progress): keep serving the old one, retry next time.
                        Err(e) => warn!(error = %e, "certificate files changed but cannot be used yet"),
                    }
                }
            }
        }
    }
    app.set_ready(false);
    // The shutdown token reaches the other tasks; socket tasks wait on their own signal.
    app.signals.shut_down();
    let (rooms, peers) = app.hub.counts();
    info!(
        rooms,
        peers,
        connections = app.limiter.total(),
        "shutting down"
    );
    tasks.close();
    let grace = Duration::from_secs(config.server.shutdown_timeout_s);
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        warn!(
            remaining = tasks.len(),
            "shutdown timeout reached, dropping remaining connections"
        );
    }
    info!("stopped");
    Ok(())
}

/// Builds the TURN core and starts a task per TURN listener.
fn start_turn(
    config: &Config,
    membership: Membership,
    tls: &TlsMaterial,
    (udp, tcp, tls_listeners): (Vec<Vec<UdpSocket>>, Vec<TcpListener>, Vec<TcpListener>),
    https_addrs: &[SocketAddr],
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> anyhow::Result<TurnState> {
    let t = &config.turn;
    let https_port = https_addrs
        .first()
        .map(SocketAddr::port)
        .context("no HTTPS listener")?;
    let mut own_sockets = https_addrs.to_vec();
    let secrets = turn_secrets(config)?;
    let relay_ip = t.relay_ip.unwrap_or_else(default_relay_ip);
    for (key, ip) in [
        ("turn.relay_ip", Some(relay_ip)),
        ("turn.relay_ipv6", t.relay_ipv6),
    ] {
        if let Some(ip) = ip {
            std::net::UdpSocket::bind((ip, 0)).map_err(|e| {
                anyhow::anyhow!(
                    "cannot bind relay sockets on {ip} (config key `{key}`): {} (it must be an address of this host; \
                     behind 1:1 NAT set turn.external_ip to the public address instead)",
                    net::explain(&e, SocketAddr::new(ip, 0))
                )
            })?;
        }
    }
    for group in &udp {
        own_sockets.push(group[0].local_addr()?);
    }
    for l in tcp.iter().chain(&tls_listeners) {
        own_sockets.push(l.local_addr()?);
    }
    let mut own_ips: Vec<IpAddr> = [Some(relay_ip), t.relay_ipv6, t.external_ip]
        .into_iter()
        .flatten()
        .collect();
    // A wildcard listener answers on every address of the host: none of them is a peer.
    if own_sockets.iter().any(|a| a.ip().is_unspecified()) {
        match net::host_addresses() {
            Ok(addresses) => own_ips.extend(addresses),
            Err(e) => {
                warn!(error = %e, "cannot list this host's addresses; only the configured ones are refused as peers")
            }
        }
    }
    let policy = PeerPolicy::new(
        cidrs(&t.allow_peers),
        cidrs(&t.deny_peers),
        own_sockets,
        own_ips,
    );
    let core_config = core_config(config, secrets.clone());
    let binder = UdpRelayBinder {
        ipv4: relay_ip,
        ipv6: t.relay_ipv6,
        ports: (t.min_port, t.max_port),
    };

    let core = Core::new(
        core_config,
        NonceKey::random(NONCE_LIFETIME_S),
        policy,
        binder,
        membership,
    );
    let server = TurnServer::new(
        core,
        tasks.clone(),
        shutdown.clone(),
        Duration::from_secs(t.grace_period_s),
        StreamLimits {
            max_connections: t.max_connections,
            max_connections_per_source: t.max_connections_per_source,
            source_prefix_v6: t.source_prefix_v6,
            allocate_timeout: Duration::from_secs(t.allocate_timeout_s),
        },
    );
    info!(%relay_ip, external_ip = ?t.external_ip, ports = %format!("{}-{}", t.min_port, t.max_port), realm = %t.realm, "TURN relay");

    let first_port = |addrs: Vec<SocketAddr>| addrs.first().map(SocketAddr::port);
    let mut ports = (Vec::new(), Vec::new(), Vec::new());
    for group in udp {
        let addr = group[0].local_addr()?;
        info!(listener = "turn_udp", %addr, loops = group.len(), "listening");
        ports.0.push(addr);
        for socket in group {
            tasks.spawn(Arc::clone(&server).serve_udp(socket));
        }
    }
    for listener in tcp {
        let addr = listener.local_addr()?;
        info!(listener = "turn_tcp", %addr, "listening");
        ports.1.push(addr);
        tasks.spawn(Arc::clone(&server).serve_stream(listener, None));
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.turn_server_config());
    for listener in tls_listeners {
        let addr = listener.local_addr()?;
        info!(listener = "turn_tls", %addr, "listening");
        ports.2.push(addr);
        tasks.spawn(Arc::clone(&server).serve_stream(listener, Some(acceptor.clone())));
    }
    let offer = TurnOffer {
        public_host: t.public_host.clone(),
        udp_port: first_port(ports.0),
        tcp_port: first_port(ports.1),
        tls_port: first_port(ports.2),
        https_port: t.on_https_port.then_some(https_port),
        secret: secrets[0].clone(),
        ttl_s: t.credential_ttl_s,
    };
    Ok(TurnState {
        server,
        offer: ArcSwap::from_pointee(offer),
    })
}

/// The TURN REST secrets: the configured ones, or the one generated into the state directory.
fn turn_secrets(config: &Config) -> anyhow::Result<Vec<Secret>> {
    Ok(if config.turn.secrets.is_empty() {
        vec![secrets::load_or_generate(
            &config.server.state_dir,
            secrets::TURN_SECRET_FILE,
        )?]
    } else {
        config.turn.secrets.clone()
    })
}

fn core_config(config: &Config, secrets: Vec<Secret>) -> CoreConfig {
    let t = &config.turn;
    CoreConfig {
        realm: t.realm.clone(),
        secrets,
        static_users: t
            .static_users
            .iter()
            .map(|u| (u.username.clone(), u.password.clone()))
            .collect(),
        external_ip: t.external_ip,
        max_allocations_per_credential: t.max_allocations_per_credential,
        max_allocations_per_room: t.max_allocations_per_room,
        max_allocations_per_source: t.max_allocations_per_source,
        max_allocations: t.max_allocations,
        source_prefix_v6: t.source_prefix_v6,
        challenges_per_source_s: t.challenges_per_source_s,
    }
}

fn cidrs(list: &[String]) -> Vec<Cidr> {
    list.iter()
        .map(|c| c.parse().expect("validated with the config"))
        .collect()
}

/// The admin API token: configured, or generated into the state directory (when there is an
/// admin listener to use it).
fn admin_token(config: &Config, has_admin: bool) -> anyhow::Result<Option<Secret>> {
    if !has_admin {
        return Ok(None);
    }
    Ok(Some(match &config.admin.token {
        Some(token) => token.clone(),
        None => secrets::load_or_generate(&config.server.state_dir, secrets::ADMIN_TOKEN_FILE)?,
    }))
}

/// Applies `new` to the running server: certificate, TURN secrets (rotation), static users,
/// quotas and peer lists, credential lifetime and public host, signaling limits, ICE servers,
/// the admin token and API keys. Connections and allocations stay. Everything that can fail
/// happens before anything is applied, so a refused reload changes nothing. Keys that only
/// a restart applies (`config::Apply::Restart`: listen addresses, relay addresses and
/// ports, ...) and that differ from the config the server `started` with are named in a
/// warning, on every reload until they match; the live keys that differ from the `previous`
/// config are named in the `configuration reloaded` line.
///
/// # Errors
/// The new certificate or a generated secret cannot be loaded.
fn reload(
    app: &AppState,
    tls: &TlsMaterial,
    (started, previous): (&Config, &Config),
    new: Config,
    has_admin: bool,
) -> anyhow::Result<Config> {
    let loaded = tls::load_certificate(&new)?;
    let admin_token = admin_token(&new, has_admin)?;
    let secrets = match &app.turn {
        Some(_) => Some(turn_secrets(&new)?),
        None => None,
    };

    tls.replace(&loaded);
    if let (Some(turn), Some(secrets)) = (&app.turn, secrets) {
        turn.server.core.reconfigure(
            core_config(&new, secrets.clone()),
            cidrs(&new.turn.allow_peers),
            cidrs(&new.turn.deny_peers),
        );
        turn.server.set_connection_limits(
            new.turn.max_connections,
            new.turn.max_connections_per_source,
        );
        let offer = turn.offer();
        turn.offer.store(Arc::new(TurnOffer {
            public_host: new.turn.public_host.clone(),
            secret: secrets[0].clone(),
            ttl_s: new.turn.credential_ttl_s,
            ..(*offer).clone()
        }));
    }
    app.set_live(Live::new(&new, admin_token));
    let changed = |from: &Config, apply: Apply| -> Vec<&'static str> {
        from.changes(&new)
            .into_iter()
            .filter(|key| key.apply == apply)
            .map(|key| key.name)
            .collect()
    };
    let restart = changed(started, Apply::Restart);
    if !restart.is_empty() {
        warn!(keys = ?restart, "these settings changed but take effect only after a restart");
    }
    let applied = changed(previous, Apply::Live);
    info!(fingerprint = %loaded.fingerprint, changed = ?applied, "configuration reloaded");
    Ok(new)
}

/// The configured certificate and key files, and what they looked like when last loaded.
struct CertFiles {
    paths: Vec<std::path::PathBuf>,
    stamps: Vec<Option<(std::time::SystemTime, u64)>>,
}

impl CertFiles {
    fn of(config: &Config) -> CertFiles {
        let paths: Vec<_> = [&config.https.cert, &config.https.key]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let mut files = CertFiles {
            stamps: Vec::new(),
            paths,
        };
        files.seen();
        files
    }

    fn current(&self) -> Vec<Option<(std::time::SystemTime, u64)>> {
        self.paths
            .iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect()
    }

    fn changed(&self) -> bool {
        !self.paths.is_empty() && self.current() != self.stamps
    }

    fn seen(&mut self) {
        self.stamps = self.current();
    }
}

/// The IPv4 address of the default route, found without sending anything; loopback without one.
pub(crate) fn default_relay_ip() -> IpAddr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| {
        s.connect("192.0.2.1:9")?;
        s.local_addr()
    });
    match probe {
        Ok(addr) if !addr.ip().is_unspecified() => addr.ip(),
        _ => {
            warn!("no default route: relaying on 127.0.0.1 only (set turn.relay_ip)");
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
    }
}
