//! TURN over UDP with the error code of every refusal, to watch credentials and allocations
//! come and go: the probe client of `switchboard doctor`, with the TURN entry of a `welcome`.

use std::net::SocketAddr;
use std::time::Duration;

use switchboard::signaling::protocol::{IceServer, ServerMsg};
use switchboard::turn::probe::{Client, ProbeError};

pub struct RawTurn(Client);

/// The STUN error code of a refusal; anything else fails the test.
fn code(e: ProbeError) -> u16 {
    match e {
        ProbeError::Refused { code, .. } => code,
        other => panic!("expected a refusal, got: {other}"),
    }
}

impl RawTurn {
    pub async fn new(server: SocketAddr, entry: &IceServer) -> RawTurn {
        let username = entry.username.as_deref().expect("username");
        let password = entry.credential.as_deref().expect("credential");
        RawTurn(
            Client::new(server, username, password)
                .await
                .expect("client socket"),
        )
    }

    /// Allocates (after the 401 that brings realm and nonce); `Err(code)` on refusal.
    pub async fn allocate(&mut self) -> Result<(), u16> {
        self.0.allocate().await.map(|_| ()).map_err(code)
    }

    /// The next requests go to `server` (another instance), with the same nonce.
    pub fn set_server(&mut self, server: SocketAddr) {
        self.0.set_server(server);
    }

    /// One Allocate with the nonce the client has: `Err(438)` if the server does not take it.
    pub async fn allocate_once(&mut self) -> Result<(), u16> {
        self.0.allocate_once().await.map(|_| ()).map_err(code)
    }

    /// Releases the allocation (a Refresh with lifetime 0).
    pub async fn release(&self) {
        self.0.release().await;
    }

    pub async fn refresh(&self) -> Result<(), u16> {
        self.0.refresh(Duration::from_secs(600)).await.map_err(code)
    }
}

pub fn turn_entry(welcome: &ServerMsg) -> IceServer {
    let ServerMsg::Welcome { ice_servers, .. } = welcome else {
        panic!("not a welcome: {welcome:?}")
    };
    ice_servers
        .iter()
        .find(|s| s.urls.iter().any(|u| u.starts_with("turn:")))
        .cloned()
        .expect("a TURN entry")
}
