//! Binding and running: `Listeners::bind` binds every configured socket,
//! `run` serves them until the shutdown token fires, then drains.
//!
//! Tests call the same two functions with their own config and token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::http;
use crate::net::{self, Bound};
use crate::state::AppState;
use crate::tls::TlsMaterial;

/// Every bound socket, before anything is served.
pub struct Listeners {
    pub https: Vec<TcpListener>,
    pub redirect: Vec<TcpListener>,
}

impl Listeners {
    /// Binds every listener in `config`.
    ///
    /// # Errors
    /// A listener cannot be bound; the error names the address and config key.
    pub fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let bind_all = |addrs: &[SocketAddr], what, key| -> anyhow::Result<Vec<TcpListener>> {
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
        let https = bind_all(&config.https.listen, "HTTPS", "https.listen")?;
        if https.is_empty() {
            anyhow::bail!("no HTTPS listener could be bound (config key `https.listen`)");
        }
        let redirect = bind_all(
            &config.http_redirect.listen,
            "HTTP redirect",
            "http_redirect.listen",
        )?;
        Ok(Listeners { https, redirect })
    }
}

/// Serves until `shutdown` fires, then closes connections within `server.shutdown_timeout_s`.
///
/// # Errors
/// A listener's local address cannot be read.
pub async fn run(
    config: Config,
    listeners: Listeners,
    tls: TlsMaterial,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = Arc::new(AppState::new(&config, shutdown.clone()));
    let router = http::router(Arc::clone(&app));
    let tasks = app.tasks.clone();

    let mut https_port = None;
    for listener in listeners.https {
        let addr = listener
            .local_addr()
            .context("reading the HTTPS listener address")?;
        https_port.get_or_insert(addr.port());
        info!(listener = "https", %addr, "listening");
        tasks.spawn(http::server::serve_https(
            listener,
            Arc::clone(&tls.server_config),
            router.clone(),
            shutdown.clone(),
            tasks.clone(),
        ));
    }
    let https_port = https_port.context("no HTTPS listener")?;
    for listener in listeners.redirect {
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
    app.set_ready(true);
    info!(fingerprint = %tls.fingerprint, "ready");

    shutdown.cancelled().await;
    app.set_ready(false);
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
