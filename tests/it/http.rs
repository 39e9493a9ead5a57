//! HTTP routes and listeners of the real binary: page, health, redirect, certificate reuse.

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
    assert!(body.contains("id=\"call\""));

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
