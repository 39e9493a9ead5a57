//! Binding and running: `Listeners::bind` binds every configured socket,
//! `run` serves them until the shutdown token fires, then drains.
//!
//! `main` is their one caller; the integration tests start the binary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{Apply, Config, Secret};
use crate::http;
use crate::net::{self, Bound};
use crate::secrets;
use crate::signaling::host::{Host, Live};
use crate::state::{Access, AppState};
use crate::tls::{self, TlsMaterial};

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
    drain: CancellationToken,
) -> anyhow::Result<()> {
    let tasks = TaskTracker::new();
    let cluster = if config.cluster.enabled() {
        Some(crate::cluster::Cluster::new(
            &config.cluster,
            &config.server.state_dir,
            config.turn.public_host.as_deref(),
        )?)
    } else {
        None
    };
    let sharing = cluster
        .as_ref()
        .map(|c| c as &dyn crate::signaling::registry::Sharing);
    // Before the dialects, whose registries tell them of joins and leaves.
    let webhooks = crate::webhooks::Webhooks::start(&config.webhooks, &tasks, shutdown.clone());
    let observer = webhooks
        .as_ref()
        .map(|w| Arc::clone(w) as Arc<dyn crate::signaling::observed::Observer>);
    let dialects = crate::signaling::dialects(&config.signaling, sharing, observer);
    // After the dialects: the link rebuilds their rooms from Redis when it connects.
    if let Some(cluster) = &cluster {
        cluster.start(&tasks, shutdown.clone());
    }
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
        Some(Arc::new(crate::turn::handle::start(
            &config,
            dialects.membership(),
            &tls,
            (turn_udp, turn_tcp, turn_tls),
            &https_addrs,
            &tasks,
            &shutdown,
        )?))
    } else {
        None
    };
    if let (Some(turn), Some(webhooks)) = (&turn, &webhooks) {
        turn.on_close(Arc::clone(webhooks) as Arc<dyn crate::turn::Closing>);
    }
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
    let host = Arc::new(Host::new(
        Live::new(&config),
        turn,
        dialects.membership(),
        shutdown.clone(),
        tasks.clone(),
    ));
    if let Some(cluster) = &cluster {
        let weak = Arc::downgrade(&host);
        cluster.on_remote_leave(move |scope, peer| {
            if let Some(host) = weak.upgrade() {
                host.peer_left(&scope, &peer);
            }
        });
        let weak = Arc::downgrade(&host);
        cluster.on_remote_message(move |scope, peer, data| {
            if let Some(host) = weak.upgrade() {
                host.announce_signal(scope, peer, data);
            }
        });
        let weak = Arc::downgrade(&host);
        cluster.on_operator(move |action| {
            if let Some(host) = weak.upgrade() {
                crate::admin::carry_out(&host, action);
            }
        });
    }
    let app = Arc::new(
        AppState::new(host, dialects, Access::new(&config, admin_token), cluster)
            .with_webhooks(webhooks),
    );
    // A real certificate (configured, or ACME's) gets HSTS; the generated one does not.
    let hsts = config.https.cert.is_some() || config.acme.enabled;
    let router = http::router(Arc::clone(&app), hsts);

    let turn_on_https = app
        .host
        .turn
        .as_ref()
        .filter(|_| config.turn.on_https_port)
        .map(Arc::clone);
    let https_tls = tls.https_server_config(turn_on_https.is_some());
    // HTTPS, the redirect and the plain WebSocket listeners share the connection caps.
    let capped = http::admission::Admission::new(
        Some(Arc::clone(&app.http_connections)),
        Arc::clone(&app.host),
    );
    for listener in https {
        let addr = listener
            .local_addr()
            .context("reading the HTTPS listener address")?;
        info!(listener = "https", %addr, turn = turn_on_https.is_some(), "listening");
        tasks.spawn(http::server::serve_https(
            listener,
            Arc::clone(&https_tls),
            router.clone(),
            capped.clone(),
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
            capped.clone(),
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
            capped.clone(),
            shutdown.clone(),
            tasks.clone(),
        ));
    }
    for listener in admin {
        let addr = listener
            .local_addr()
            .context("reading the admin listener address")?;
        info!(listener = "admin", %addr, "listening");
        // Off loopback, /metrics (room and peer counts, traffic) needs the token too.
        let public = !addr.ip().is_loopback();
        if public {
            warn!(
                %addr,
                "the admin listener is reachable from other hosts (admin.listen): /metrics needs the admin token too; prefer a loopback address behind a firewall"
            );
        }
        tasks.spawn(http::server::serve_plain(
            listener,
            crate::admin::router(Arc::clone(&app), public),
            // Not capped: a flood of the public listeners must not lock the operator out.
            http::admission::Admission::operator(Arc::clone(&app.host)),
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
    // A drain (SIGUSR1, `switchboard drain`, the admin API) ends in a shutdown once no
    // socket or allocation is left here, or at `server.drain_timeout_s`.
    let mut drain_check = tokio::time::interval(Duration::from_millis(500));
    drain_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = drain.cancelled(), if !app.host.draining() => app.host.start_drain(),
            _ = drain_check.tick() => {
                if app.host.draining() {
                    let deadline = *drain_deadline.get_or_insert_with(|| {
                        let timeout = Duration::from_secs(config.server.drain_timeout_s);
                        info!(timeout_s = timeout.as_secs(), "draining: no new sockets, joins or allocations; waiting for the calls here to end");
                        tokio::time::Instant::now() + timeout
                    });
                    let sockets = app.host.limiter.total();
                    let allocations = app.host.turn.as_ref().map_or(0, |t| t.allocation_count());
                    if sockets == 0 && allocations == 0 {
                        info!("drained: no calls left here, shutting down");
                        shutdown.cancel();
                    } else if tokio::time::Instant::now() >= deadline {
                        warn!(sockets, allocations, "drain deadline (server.drain_timeout_s) reached, shutting down");
                        shutdown.cancel();
                    }
                }
            }
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
    app.host.signals.shut_down();
    let (rooms, peers) = app.dialects.counts().iter().fold((0, 0), |(r, p), (_, c)| {
        (r + c.rooms.unwrap_or(0), p + c.peers)
    });
    info!(
        rooms,
        peers,
        connections = app.host.limiter.total(),
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
    let secrets = match &app.host.turn {
        Some(_) => Some(crate::turn::handle::load_secrets(&new)?),
        None => None,
    };

    tls.replace(&loaded);
    if let (Some(turn), Some(secrets)) = (&app.host.turn, secrets) {
        turn.reconfigure(&new, secrets);
    }
    if let Some(webhooks) = &app.webhooks {
        webhooks.set_config(&new.webhooks);
    }
    app.set_live(Live::new(&new), Access::new(&new, admin_token));
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
