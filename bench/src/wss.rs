//! WebSocket clients over TLS (wss://) from a chosen source address, trusting one
//! certificate (Switchboard's self-signed one); the same TLS setup serves TURN over TLS.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A rustls client configuration that trusts the certificates in the PEM file `ca`.
///
/// # Errors
/// The file cannot be read or holds no usable certificate.
pub fn client_tls(ca: &Path) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("{}", ca.display()))? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Opens `url` (ws:// or wss://, served at `server`) from `source`.
///
/// # Errors
/// The connection, the TLS handshake or the upgrade fails.
pub async fn connect(
    url: &str,
    server: SocketAddr,
    source: IpAddr,
    connector: Option<Connector>,
) -> Result<Ws> {
    let tcp = tcp_from(source, server).await?;
    // tungstenite zero-fills its read buffer up to `read_buffer_size` before every read:
    // at the default 128 KiB that memset was a third of sig-load's CPU. Below the 3 KB
    // offer and answer (2 KiB), every large frame reallocated the buffer instead: 14 % of
    // the generator's CPU in the burst, most of it growing the heap.
    let config = Some(WebSocketConfig::default().read_buffer_size(4096));
    let (ws, _) =
        tokio_tungstenite::client_async_tls_with_config(url, tcp, config, connector).await?;
    Ok(ws)
}

/// A TCP connection to `to` from `source` (any port), with Nagle off.
///
/// # Errors
/// The bind or the connect fails.
pub async fn tcp_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if to.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(to).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}
