//! Accept loops: HTTPS (TLS, then HTTP/1.1 or HTTP/2 with WebSocket upgrades)
//! and the optional plain-HTTP listener that only redirects to HTTPS.
//!
//! Each loop stops accepting when the shutdown token fires; open HTTP
//! connections are then closed gracefully. Upgraded WebSockets belong to
//! their dialect (`signaling`) and watch the token themselves.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tower::util::MapRequest;
use tracing::{debug, warn};

use super::demux::{self, Prefixed, Protocol};
use crate::turn::Turn;

/// Time a client gets to finish the TLS handshake, and to send request headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` over TLS on `listener` until `shutdown` fires. With `turn`,
/// connections that speak STUN (plain, or inside TLS) go to the TURN server.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    turn: Option<Arc<Turn>>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let Ok(local) = listener.local_addr() else {
        return;
    };
    loop {
        let (tcp, remote) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        let turn = turn.clone();
        tasks.spawn(async move {
            // No Nagle, and keepalive (a TURN client on this port that vanishes takes
            // its allocation along).
            crate::net::prepare_stream(&tcp);
            if let Some(turn) = &turn {
                // Plain-TCP TURN sends a STUN header where TLS sends a ClientHello.
                let mut head = [0u8; demux::SNIFF_LEN];
                let n = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut head)).await {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                if demux::sniff(&head[..n]) == Protocol::Stun {
                    // TURN's connection limits apply to it here as on its own listeners.
                    let Some(admitted) = turn.admit_shared(remote) else {
                        return;
                    };
                    return turn
                        .serve_shared(Box::new(tcp), remote, local, false, admitted)
                        .await;
                }
            }
            let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%remote, error = %e, "TLS handshake failed"),
                Err(_) => return debug!(%remote, "TLS handshake timed out"),
            };
            let Some(turn) = turn else {
                return serve_connection(tls, remote, router, shutdown).await;
            };
            // Inside TLS, the first bytes tell TURN from HTTP; both clients speak first.
            let head =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, demux::read_head(&mut tls)).await {
                    Ok(Ok(head)) => head,
                    _ => return,
                };
            let protocol = demux::sniff(&head);
            let stream = Prefixed::new(head, tls);
            if protocol == Protocol::Stun {
                let Some(admitted) = turn.admit_shared(remote) else {
                    return;
                };
                turn.serve_shared(Box::new(stream), remote, local, true, admitted)
                    .await;
            } else {
                serve_connection(stream, remote, router, shutdown).await;
            }
        });
    }
}

/// `router` with the client's address in every request (`ConnectInfo`).
fn with_remote(
    router: Router,
    remote: SocketAddr,
) -> TowerToHyperService<
    MapRequest<Router, impl FnMut(Request<Incoming>) -> Request<Incoming> + Clone + Send + Sync>,
> {
    TowerToHyperService::new(router.map_request(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(remote));
        req
    }))
}

/// Serves one connection: HTTP/1.1 with upgrades, or HTTP/2.
pub async fn serve_connection<S>(
    io: S,
    remote: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT);
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), with_remote(router, remote));
    drive(conn, |c| c.graceful_shutdown(), remote, &shutdown).await;
}

/// Runs an HTTP connection to its end; when `shutdown` fires, `stop` asks it to finish the
/// request in flight and close, and it is awaited until it has.
async fn drive<C, E>(
    conn: C,
    stop: fn(Pin<&mut C>),
    remote: SocketAddr,
    shutdown: &CancellationToken,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            stop(conn.as_mut());
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(%remote, error = %e, "HTTP connection ended with an error");
    }
}

/// Serves plain HTTP on `listener`, answering every request with a redirect to
/// the same path on HTTPS port `https_port`.
pub async fn serve_redirect(
    listener: TcpListener,
    https_port: u16,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let router = Router::new()
        .fallback(move |req: Request<axum::body::Body>| async move { redirect(&req, https_port) });
    serve_plain(listener, router, shutdown, tasks).await;
}

/// Serves `router` over plain HTTP (with upgrades) on `listener` until `shutdown` fires.
pub async fn serve_plain(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let (tcp, remote) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
        };
        // Signaling frames are small and latency-bound: no Nagle delay behind a delayed ACK.
        let _ = tcp.set_nodelay(true);
        tasks.spawn(serve_http1(tcp, remote, router.clone(), shutdown.clone()));
    }
}

/// Serves one plain connection as HTTP/1.1 with upgrades. Unlike `serve_connection`, nothing
/// sniffs for HTTP/2 first, so an upgraded WebSocket can be taken back as the `TcpStream`
/// it is (`Upgraded::downcast`) and run without layers or a lock between its two halves.
async fn serve_http1(
    tcp: TcpStream,
    remote: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) {
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(tcp), with_remote(router, remote))
        .with_upgrades();
    drive(conn, |c| c.graceful_shutdown(), remote, &shutdown).await;
}

fn redirect<B>(req: &Request<B>, https_port: u16) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<axum::http::uri::Authority>().ok());
    let Some(host) = host else {
        return (StatusCode::BAD_REQUEST, "a Host header is required\n").into_response();
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let target = format!("https://{}{port}{path}", host.host());
    match target
        .parse::<Uri>()
        .ok()
        .and_then(|u| HeaderValue::try_from(u.to_string()).ok())
    {
        Some(location) => (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response(),
        None => (StatusCode::BAD_REQUEST, "bad request target\n").into_response(),
    }
}

/// Accept errors are mostly descriptor exhaustion: log, back off briefly, go on.
async fn accept_failed(e: &std::io::Error) {
    warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(host: &str, path: &str, port: u16) -> String {
        let req = Request::builder()
            .uri(path)
            .header("host", host)
            .body(())
            .unwrap();
        let resp = redirect(&req, port);
        assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
        resp.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn redirects_keep_host_and_path_and_swap_the_port() {
        assert_eq!(
            location("example.org:8080", "/r/x?a=1", 8443),
            "https://example.org:8443/r/x?a=1"
        );
        assert_eq!(location("example.org", "/", 443), "https://example.org/");
        assert_eq!(location("[::1]:80", "/a", 8443), "https://[::1]:8443/a");
    }

    #[test]
    fn redirect_without_host_is_a_bad_request() {
        let req = Request::builder().uri("/").body(()).unwrap();
        assert_eq!(redirect(&req, 443).status(), StatusCode::BAD_REQUEST);
    }
}
