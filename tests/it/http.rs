//! HTTP routes and listeners of the real binary: page, health, redirect, certificate reuse.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{TestServer, http_get};

#[tokio::test]
async fn page_health_and_room_urls() {
    let server = TestServer::start("");
    let (status, head, body) = server.https_get("/").await;
    assert_eq!(status, 200);
    assert!(body.contains("<title>Switchboard</title>") && body.contains("/static/call.js"));
    let head_lower = head.to_ascii_lowercase();
    assert!(
        head_lower.contains(&format!("connect-src 'self' wss://{};", server.https)),
        "{head}"
    );
    // The generated self-signed certificate must stay clickable-through: no HSTS.
    assert!(!head_lower.contains("strict-transport-security"), "{head}");

    let (status, _, body) = server.https_get("/r/team-standup_1").await;
    assert_eq!(status, 200);
    assert!(body.contains("id=\"room\""));

    let (status, _, body) = server.https_get("/r/bad.name").await;
    assert_eq!(status, 400);
    assert!(
        body.contains("Invalid room name") && body.contains("'.'"),
        "{body}"
    );

    let (status, head, body) = server.https_get("/static/call.js").await;
    assert_eq!(status, 200);
    assert!(head.contains("text/javascript") && body.contains("switchboardState"));

    assert_eq!(server.https_get("/healthz").await.0, 200);
    let (status, _, body) = server.https_get("/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    assert_eq!(server.https_get("/nope").await.0, 404);
}

#[tokio::test]
async fn plain_http_listener_only_redirects() {
    let server = TestServer::start("[http_redirect]\nlisten = [\"127.0.0.1:0\"]\n");
    let plain = server.listener("http_redirect");
    let mut tcp = TcpStream::connect(plain).await.unwrap();
    let (status, head, _) = http_get(
        &mut tcp,
        &format!("127.0.0.1:{}", plain.port()),
        "/r/abc?x=1",
    )
    .await;
    assert_eq!(status, 308);
    let expected = format!(
        "location: https://127.0.0.1:{}/r/abc?x=1",
        server.https.port()
    );
    assert!(head.to_ascii_lowercase().contains(&expected), "{head}");
}

#[tokio::test]
async fn generated_certificate_is_reused_across_restarts() {
    let keep = crate::harness::temp_dir();
    let state = keep.path().join("state");
    let overrides = format!("[server]\nstate_dir = \"{}\"\n", state.display());
    let first = TestServer::start(&overrides);
    let fp1 = first.wait_log("generated self-signed certificate")["fingerprint"].clone();
    drop(first);
    let second = TestServer::start(&overrides);
    let fp2 = second.wait_log("reusing self-signed certificate")["fingerprint"].clone();
    assert!(fp1.as_str().is_some_and(|f| f.len() == 95), "{fp1}");
    assert_eq!(fp1, fp2);
}

/// Reads until the server closes the connection; `Err` with what arrived if it has not
/// closed within `within`. A reset counts as closed.
async fn closed_within<S>(stream: &mut S, within: Duration) -> Result<Duration, Vec<u8>>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let start = std::time::Instant::now();
    let mut got = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut got)).await {
        Ok(_) => Ok(start.elapsed()),
        Err(_) => Err(got),
    }
}

/// A TLS connection to the server, offering `alpn`.
async fn tls_connect(
    server: &TestServer,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    try_tls_connect(server, alpn).await.expect("TLS handshake")
}

async fn try_tls_connect(
    server: &TestServer,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut config = (*server.client_tls()).clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(server.https).await?;
    let name = rustls_pki_types::ServerName::IpAddress(server.https.ip().into());
    connector.connect(name, tcp).await
}

/// Connections over the per-source cap are closed when accepted, before any TLS work, and
/// counted; those under it are served.
#[tokio::test]
async fn https_connections_over_the_per_source_cap_are_closed_at_once() {
    let server = TestServer::start("[https]\nmax_connections_per_source = 3\n");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(server.https).await.unwrap());
    }
    let mut refused = TcpStream::connect(server.https).await.unwrap();
    // Without the cap, the server waits for this one's TLS handshake for 10 s.
    let closed = closed_within(&mut refused, Duration::from_secs(5)).await;
    assert!(closed.is_ok(), "the fourth connection was held");
    let refusals = server
        .metric(
            "switchboard_signaling_refusals_total",
            &[("limit", "https.max_connections_per_source")],
        )
        .await;
    assert!(refusals >= 1.0, "{refusals}");
    // One held connection goes: its slot comes back once the server has seen it close.
    drop(held.pop());
    let start = std::time::Instant::now();
    loop {
        // Refused (reset during the handshake) until the server has seen the close.
        if let Ok(mut tls) = try_tls_connect(&server, b"http/1.1").await {
            let (status, _, _) =
                crate::harness::http_get(&mut tls, &server.https.to_string(), "/healthz").await;
            assert_eq!(status, 200);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "slot never freed"
        );
        tokio::task::yield_now().await;
    }
}

/// One deadline runs from accept to the first complete request: a client that connects
/// and says nothing, one that completes TLS and opens HTTP/2 with its preface but asks
/// nothing, and one that sends half a request's headers are all dropped at it.
#[tokio::test]
async fn a_connection_without_a_complete_request_is_dropped_at_the_deadline() {
    let server = TestServer::start("[https]\nrequest_timeout_s = 1\n");
    let limit = Duration::from_secs(5);

    let mut h2 = tls_connect(&server, b"h2").await;
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let waited = closed_within(&mut h2, limit).await;
    assert!(
        waited.is_ok(),
        "an HTTP/2 connection with no request was held"
    );

    let mut half = tls_connect(&server, b"http/1.1").await;
    half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let waited = closed_within(&mut half, limit).await;
    assert!(
        waited.is_ok(),
        "half a request's headers held the connection"
    );

    let mut silent = TcpStream::connect(server.https).await.unwrap();
    let waited = closed_within(&mut silent, limit).await;
    assert!(waited.is_ok(), "a silent TCP connection was held");

    let timeouts = server
        .metric(
            "switchboard_signaling_refusals_total",
            &[("limit", "https.request_timeout_s")],
        )
        .await;
    assert!(timeouts >= 3.0, "{timeouts}");
}

/// A keep-alive connection is closed once it has had no request in flight for
/// `idle_timeout_s`.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let server = TestServer::start("[https]\nidle_timeout_s = 1\n");
    let mut tls = tls_connect(&server, b"http/1.1").await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let closed = closed_within(&mut tls, Duration::from_secs(5)).await;
    let Err(got) = closed else { return };
    panic!(
        "kept open while idle, after: {}",
        String::from_utf8_lossy(&got)
    );
}

/// A request body that stops arriving (a socket.io long-polling POST) ends at the
/// request deadline instead of holding the connection and its session.
#[tokio::test]
async fn a_stalled_request_body_ends_at_the_deadline() {
    let server = TestServer::start("[https]\nrequest_timeout_s = 1\n");
    let host = server.https.to_string();
    let mut tls = tls_connect(&server, b"http/1.1").await;
    let (status, _, body) =
        crate::harness::http_get(&mut tls, &host, "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(status, 200, "{body}");
    let sid = body
        .split("\"sid\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a session id")
        .to_owned();
    let mut tls = tls_connect(&server, b"http/1.1").await;
    let head = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: {host}\r\n\
         Content-Type: text/plain\r\nContent-Length: 100\r\n\r\n40"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let closed = closed_within(&mut tls, Duration::from_secs(5)).await;
    assert!(closed.is_ok(), "a stalled body held the request");
}

/// A signaling socket whose request carries `X-Forwarded-For: xff`; whether it opened.
async fn ws_forwarded_for(
    server: &TestServer,
    xff: &str,
) -> Option<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = server.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", xff.parse().unwrap());
    server.client_with(request).await.ok().map(|c| c.ws)
}

/// `X-Forwarded-For` names the client only when the connection comes from a configured
/// trusted proxy: then per-source limits apply to the clients behind it, and a client's
/// own claim cannot make it someone else.
#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let limits = "[signaling]\nmax_connections_per_ip = 1\n";
    let proxied = TestServer::start(&format!(
        "{limits}[https]\ntrusted_proxies = [\"127.0.0.1\"]\n"
    ));
    let a = ws_forwarded_for(&proxied, "198.51.100.1").await;
    let b = ws_forwarded_for(&proxied, "203.0.113.9, 198.51.100.2").await;
    assert!(a.is_some() && b.is_some(), "two clients behind the proxy");
    let again = ws_forwarded_for(&proxied, "198.51.100.1").await;
    assert!(
        again.is_none(),
        "a second socket of the same client behind the proxy"
    );

    let direct = TestServer::start(limits);
    let a = ws_forwarded_for(&direct, "198.51.100.1").await;
    let b = ws_forwarded_for(&direct, "198.51.100.2").await;
    assert!(a.is_some(), "the first socket");
    assert!(
        b.is_none(),
        "an untrusted X-Forwarded-For made a second client"
    );
}

/// Behind a proxy that sends the PROXY protocol, the header names the client (v1 text,
/// here), before TLS; a trusted proxy's connection without one is dropped, except on the
/// admin listener.
#[tokio::test]
async fn a_proxy_protocol_header_names_the_client() {
    let server = TestServer::start(
        "[signaling]\nmax_connections_per_ip = 1\n\
         [https]\ntrusted_proxies = [\"127.0.0.1\"]\nproxy_protocol = true\n",
    );
    let open = |source: &'static str| {
        let server = &server;
        async move {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut tcp = TcpStream::connect(server.https).await.unwrap();
            let header = format!("PROXY TCP4 {source} 127.0.0.1 40000 443\r\n");
            tcp.write_all(header.as_bytes()).await.unwrap();
            let request = server.ws_url().into_client_request().unwrap();
            tokio_tungstenite::client_async_tls_with_config(
                request,
                tcp,
                None,
                Some(tokio_tungstenite::Connector::Rustls(server.client_tls())),
            )
            .await
            .ok()
            .map(|(ws, _)| ws)
        }
    };
    let a = open("198.51.100.1").await;
    let b = open("198.51.100.2").await;
    assert!(a.is_some() && b.is_some(), "two clients behind the proxy");
    assert!(
        open("198.51.100.1").await.is_none(),
        "the same client twice"
    );

    let plain = try_tls_connect(&server, b"http/1.1").await;
    assert!(
        plain.is_err(),
        "a trusted proxy's connection without a header was served"
    );
    // The admin listener is the operator's, reached directly: no PROXY header is asked of
    // a local client there, though its address is a trusted proxy's (`metric` asserts an
    // answer).
    server
        .metric("switchboard_signaling_refusals_total", &[])
        .await;
}
