//! Reference ceiling for signaling: a minimal WebSocket echo server on
//! tokio-tungstenite (ws://, or wss:// with --cert/--key), one task per socket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Parser)]
#[command(about = "Minimal WebSocket echo server (reference ceiling for signaling)")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:18090")]
    listen: SocketAddr,
    /// PEM certificate chain: serve wss:// instead of ws://.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    tokio::runtime::Runtime::new()?.block_on(serve(args))
}

async fn serve(args: Args) -> Result<()> {
    let tls = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| cert.display().to_string())?
                .collect::<Result<Vec<_>, _>>()?;
            let key =
                PrivateKeyDer::from_pem_file(key).with_context(|| key.display().to_string())?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(chain, key)?;
            Some(TlsAcceptor::from(Arc::new(config)))
        }
        _ => None,
    };
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!("ws-echo listening on {}", listener.local_addr()?);
    // The same small buffers Switchboard uses, so that RSS per connection compares.
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 4096;
    config.write_buffer_size = 0;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(stream) => echo(stream, config).await,
                    Err(e) => Err(e.into()),
                },
                None => echo(tcp, config).await,
            };
            drop(result);
        });
    }
}

async fn echo<S>(stream: S, config: WebSocketConfig) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut ws = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
    while let Some(msg) = ws.next().await {
        let msg = msg?;
        if msg.is_text() || msg.is_binary() {
            ws.send(msg).await?;
        }
    }
    Ok(())
}
