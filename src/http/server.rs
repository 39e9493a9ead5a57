//! Accept loops: HTTPS (TLS, then HTTP/1.1 or HTTP/2 with WebSocket upgrades)
//! and the optional plain-HTTP listener that only redirects to HTTPS.
//!
//! Each loop stops accepting when the shutdown token fires; open HTTP
//! connections are then closed gracefully. Upgraded WebSockets belong to
//! their dialect (`signaling`) and watch the token themselves.

use std::convert::Infallible;
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
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;
use tracing::{debug, warn};

use super::admission::{self, Activity, Admission, Admitted, Next};
use super::demux::{self, Prefixed, Protocol};
use crate::forwarded::{self, Proxies, ProxyHeader};
use crate::turn::Turn;

/// Time a client gets to finish the TLS handshake, and to send request headers; and a
/// connection asked to close gets to finish.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings: one after this much silence, and the connection is dropped when its
/// answer takes longer than the timeout.
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent HTTP/2 streams per connection: a page needs a handful.
const HTTP2_MAX_STREAMS: u32 = 100;
/// Request headers: at most this many bytes (HTTP/1.1 buffer, HTTP/2 header list).
const MAX_HTTP1_BUFFER: usize = 64 * 1024;
const MAX_HEADER_LIST: u32 = 64 * 1024;

/// Serves `router` over TLS on `listener` until `shutdown` fires. With `turn`,
/// connections that speak STUN (plain, or inside TLS) go to the TURN server.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    admission: Admission,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    turn: Option<Arc<Turn>>,
) {
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
        // Refused before anything else is spent on it: closed at once.
        let Some(admitted) = admission.admit(remote) else {
            continue;
        };
        let tls = Arc::clone(&tls);
        let router = router.clone();
        let shutdown = shutdown.clone();
        let turn = turn.clone();
        tasks.spawn(async move {
            let (mut tcp, mut admitted) = (tcp, admitted);
            // No Nagle, and keepalive (a TURN client on this port that vanishes takes
            // its allocation along).
            crate::net::prepare_stream(&tcp);
            // The handshake counts against the deadline of the first request.
            let handshake_by = admitted
                .first_request_by
                .min(Instant::now() + HANDSHAKE_TIMEOUT);
            let Some(remote) = proxied_client(&mut tcp, remote, &mut admitted, handshake_by).await
            else {
                return;
            };
            if let Some(turn) = &turn {
                // Plain-TCP TURN sends a STUN header where TLS sends a ClientHello.
                let mut head = [0u8; demux::SNIFF_LEN];
                let n = match tokio::time::timeout_at(handshake_by, tcp.peek(&mut head)).await {
                    Ok(Ok(n)) => n,
                    Ok(Err(_)) => return,
                    Err(_) => return admitted.timed_out(remote),
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
            let accept = crate::tls::stream::accept(tls, tcp);
            let mut tls = match tokio::time::timeout_at(handshake_by, accept).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return debug!(%remote, error = %e, "TLS handshake failed"),
                Err(_) => return admitted.timed_out(remote),
            };
            let Some(turn) = turn else {
                return serve_connection(tls, remote, router, shutdown, admitted).await;
            };
            // Inside TLS, the first bytes tell TURN from HTTP; both clients speak first.
            let head = match tokio::time::timeout_at(handshake_by, demux::read_head(&mut tls)).await
            {
                Ok(Ok(head)) => head,
                Ok(Err(_)) => return,
                Err(_) => return admitted.timed_out(remote),
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
                serve_connection(stream, remote, router, shutdown, admitted).await;
            }
        });
    }
}

/// `router` as one connection's service: every request gets the client's address
/// (`ConnectInfo`) and a deadline on its body, and reports to the connection's `Activity`
/// while it runs.
#[derive(Clone)]
struct Tracked {
    router: Router,
    remote: SocketAddr,
    activity: Arc<Activity>,
    body_timeout: Duration,
    /// Set when `remote` is a trusted proxy: its requests name the client.
    proxies: Option<Arc<Proxies>>,
}

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let busy = self.activity.begin();
        let mut request =
            request.map(|body| axum::body::Body::new(TimeoutBody::new(self.body_timeout, body)));
        let client = match &self.proxies {
            Some(proxies) => proxies.forwarded_client(self.remote, request.headers()),
            None => self.remote,
        };
        request.extensions_mut().insert(ConnectInfo(client));
        let response = self.router.clone().oneshot(request);
        Box::pin(async move {
            let response = response.await;
            drop(busy);
            response
        })
    }
}

/// Serves one connection: HTTP/1.1 with upgrades, or HTTP/2.
pub async fn serve_connection<S>(
    io: S,
    remote: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
    admitted: Admitted,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .max_buf_size(MAX_HTTP1_BUFFER);
    // A dead HTTP/2 peer is found by pings, whatever its streams are doing.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(HTTP2_PING_INTERVAL))
        .keep_alive_timeout(HTTP2_PING_TIMEOUT)
        .max_concurrent_streams(HTTP2_MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST);
    let (service, activity) = tracked(router, remote, &admitted);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    drive(
        conn,
        |c| c.graceful_shutdown(),
        remote,
        &shutdown,
        &admitted,
        &activity,
    )
    .await;
}

/// The service of one connection and the `Activity` it reports to.
fn tracked(router: Router, remote: SocketAddr, admitted: &Admitted) -> (Tracked, Arc<Activity>) {
    let activity = Arc::new(Activity::default());
    let service = Tracked {
        router,
        remote,
        activity: Arc::clone(&activity),
        body_timeout: admitted.body_timeout,
        proxies: admitted.proxies.clone(),
    };
    (service, activity)
}

/// Runs an HTTP connection to its end, held to its deadlines (`admission::next`): dropped
/// when no complete request came in time, closed gracefully once idle. When `shutdown`
/// fires, `stop` asks it to finish the request in flight and close. A connection asked to
/// close gets `HANDSHAKE_TIMEOUT` to do so, then is dropped.
async fn drive<C, E>(
    conn: C,
    stop: fn(Pin<&mut C>),
    remote: SocketAddr,
    shutdown: &CancellationToken,
    admitted: &Admitted,
    activity: &Activity,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    // The first look: at the deadline of the first request, or an idle period from now if
    // that is sooner (the first request may come and go before the deadline).
    let check = tokio::time::sleep_until(
        admitted
            .first_request_by
            .min(Instant::now() + admitted.idle_timeout),
    );
    tokio::pin!(check);
    let closing = loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(%remote, error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled() => break "shutting down",
            () = &mut check => match admission::next(admitted, activity, Instant::now()) {
                Next::CheckAt(at) => check.as_mut().reset(at),
                Next::Drop => return admitted.timed_out(remote),
                Next::Close => break "idle",
            },
        }
    };
    debug!(%remote, why = closing, "closing the HTTP connection");
    stop(conn.as_mut());
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn).await {
        Ok(Err(e)) => debug!(%remote, error = %e, "HTTP connection ended with an error"),
        Ok(Ok(())) => {}
        Err(_) => debug!(%remote, "HTTP connection did not close in time, dropped"),
    }
}

/// Serves plain HTTP on `listener`, answering every request with a redirect to
/// the same path on HTTPS port `https_port`.
pub async fn serve_redirect(
    listener: TcpListener,
    https_port: u16,
    admission: Admission,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let router = Router::new()
        .fallback(move |req: Request<axum::body::Body>| async move { redirect(&req, https_port) });
    serve_plain(listener, router, admission, shutdown, tasks).await;
}

/// Serves `router` over plain HTTP (with upgrades) on `listener` until `shutdown` fires.
pub async fn serve_plain(
    listener: TcpListener,
    router: Router,
    admission: Admission,
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
        let Some(admitted) = admission.admit(remote) else {
            continue;
        };
        // Signaling frames are small and latency-bound: no Nagle delay behind a delayed ACK.
        let _ = tcp.set_nodelay(true);
        let (router, shutdown) = (router.clone(), shutdown.clone());
        tasks.spawn(async move {
            let (mut tcp, mut admitted) = (tcp, admitted);
            let by = admitted.first_request_by;
            if let Some(remote) = proxied_client(&mut tcp, remote, &mut admitted, by).await {
                serve_http1(tcp, remote, router, shutdown, admitted).await;
            }
        });
    }
}

/// The client of a connection: `remote`, or when a trusted proxy that sends the PROXY
/// protocol is `remote`, the client its header names (the header is consumed). `None`:
/// no valid header by `by`, and the connection is to be dropped. Requests on the
/// connection believe `X-Forwarded-For` only if the client is a trusted proxy still.
async fn proxied_client(
    tcp: &mut TcpStream,
    remote: SocketAddr,
    admitted: &mut Admitted,
    by: Instant,
) -> Option<SocketAddr> {
    let Some(proxies) = admitted.proxies.clone().filter(|p| p.proxy_protocol) else {
        return Some(remote);
    };
    let client = match tokio::time::timeout_at(by, read_proxy_header(tcp)).await {
        Ok(Ok(client)) => client.unwrap_or(remote),
        Ok(Err(why)) => {
            debug!(%remote, why, "dropping a trusted proxy's connection");
            return None;
        }
        Err(_) => {
            admitted.timed_out(remote);
            return None;
        }
    };
    if !proxies.trusts(client.ip()) {
        admitted.proxies = None;
    }
    Some(client)
}

/// Reads a PROXY protocol header off the front of `tcp`, and not a byte more; its client.
async fn read_proxy_header(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, &'static str> {
    use tokio::io::AsyncReadExt;

    let mut header = Vec::new();
    let mut peeked = [0u8; forwarded::MAX_PROXY_HEADER];
    loop {
        let n = tcp.peek(&mut peeked).await.map_err(|_| "read failed")?;
        if n == 0 {
            return Err("closed before its PROXY header");
        }
        let start = header.len();
        header.extend_from_slice(&peeked[..n]);
        match forwarded::proxy_header(&header)? {
            ProxyHeader::Complete(len, client) => {
                // What of the header is still on the socket (the bytes before `start` were
                // read off it already, as a prefix that was all header).
                let unread = len
                    .checked_sub(start)
                    .ok_or("a PROXY header shorter than its prefix")?;
                let mut rest = vec![0; unread];
                tcp.read_exact(&mut rest).await.map_err(|_| "read failed")?;
                return Ok(client);
            }
            // All of it is header so far: take it off the socket and wait for more.
            ProxyHeader::Incomplete => {
                tcp.read_exact(&mut peeked[..n])
                    .await
                    .map_err(|_| "read failed")?;
            }
        }
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
    admitted: Admitted,
) {
    let (service, activity) = tracked(router, remote, &admitted);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .max_buf_size(MAX_HTTP1_BUFFER)
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    drive(
        conn,
        |c| c.graceful_shutdown(),
        remote,
        &shutdown,
        &admitted,
        &activity,
    )
    .await;
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
