//! What a peer is told about this server's STUN/TURN: the `ice_servers` entries
//! with a credential minted for that peer in that room of its dialect.

use std::net::SocketAddr;

use crate::config::{Config, Secret};
use crate::model::{IceServer, PeerId, RoomId};

use super::auth::{self, Scope};

/// The ICE servers of the config's `[[ice_servers]]` tables, handed out as they are.
pub fn configured(config: &Config) -> Vec<IceServer> {
    config
        .ice_servers
        .iter()
        .map(|c| IceServer {
            urls: c.urls.clone(),
            username: c.username.clone(),
            credential: c.credential.as_ref().map(|s| s.expose().to_owned()),
        })
        .collect()
}

/// The bound TURN ports and the minting secret, fixed at start.
#[derive(Debug, Clone)]
pub struct TurnOffer {
    /// Host name for the URLs; `None` means the host the browser used to reach us.
    pub public_host: Option<String>,
    pub udp_port: Option<u16>,
    pub tcp_port: Option<u16>,
    pub tls_port: Option<u16>,
    /// The HTTPS port, when TURN shares it (`turn.on_https_port`).
    pub https_port: Option<u16>,
    /// The first configured (or the generated) secret.
    pub secret: Secret,
    pub ttl_s: u64,
}

impl TurnOffer {
    /// What a server started with `config` offers, from the configured ports (for the
    /// `credentials` command, which runs beside the server rather than in it).
    pub fn from_config(config: &Config, secret: Secret) -> TurnOffer {
        let t = &config.turn;
        let first = |v: &[SocketAddr]| v.first().map(SocketAddr::port);
        TurnOffer {
            public_host: t.public_host.clone(),
            udp_port: first(&t.udp_listen),
            tcp_port: first(&t.tcp_listen),
            tls_port: first(&t.tls_listen),
            https_port: first(&config.https.listen).filter(|_| t.on_https_port),
            secret,
            ttl_s: t.credential_ttl_s,
        }
    }

    /// The STUN and TURN entries for `peer` in `scope` (its dialect and room), valid for
    /// `ttl_s` from `now_unix`, with the allocations its room may hold when a join token
    /// said (`room_allocations`). `request_host` is the host (no port) of the page's request,
    /// used without `public_host`.
    pub fn ice_servers(
        &self,
        now_unix: u64,
        scope: &Scope,
        peer: &PeerId,
        room_allocations: Option<u32>,
        request_host: &str,
    ) -> Vec<IceServer> {
        let expires = now_unix + self.ttl_s;
        let username = auth::peer_username_within(expires, scope, peer, room_allocations);
        self.with_username(username, request_host)
    }

    /// The STUN and TURN entries with a room credential (`switchboard credentials`, the ICE API),
    /// valid for `ttl_s` from `now_unix`.
    pub fn room_ice_servers(
        &self,
        now_unix: u64,
        ttl_s: u64,
        room: &RoomId,
        request_host: &str,
    ) -> Vec<IceServer> {
        self.with_username(auth::room_username(now_unix + ttl_s, room), request_host)
    }

    fn with_username(&self, username: String, request_host: &str) -> Vec<IceServer> {
        let host = self.public_host.as_deref().unwrap_or(request_host);
        let credential = auth::rest_password(&self.secret, &username);
        let mut turn_urls = Vec::new();
        if let Some(p) = self.udp_port {
            turn_urls.push(format!("turn:{host}:{p}?transport=udp"));
        }
        if let Some(p) = self.tcp_port {
            turn_urls.push(format!("turn:{host}:{p}?transport=tcp"));
        }
        if let Some(p) = self.tls_port {
            turn_urls.push(format!("turns:{host}:{p}?transport=tcp"));
        }
        if let Some(p) = self.https_port.filter(|p| Some(*p) != self.tls_port) {
            turn_urls.push(format!("turns:{host}:{p}?transport=tcp"));
        }
        let mut servers = Vec::new();
        if let Some(p) = self.udp_port.or(self.tcp_port) {
            servers.push(IceServer {
                urls: vec![format!("stun:{host}:{p}")],
                username: None,
                credential: None,
            });
        }
        if !turn_urls.is_empty() {
            servers.push(IceServer {
                urls: turn_urls,
                username: Some(username),
                credential: Some(credential),
            });
        }
        servers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_use_the_request_host_and_the_credential_verifies() {
        let offer = TurnOffer {
            public_host: None,
            udp_port: Some(3478),
            tcp_port: Some(3478),
            tls_port: Some(5349),
            https_port: Some(443),
            secret: Secret::new("0123456789abcdef".into()),
            ttl_s: 600,
        };
        let room = RoomId::parse("r").unwrap();
        let peer = PeerId::random();
        let scope = Scope::native(room);
        let servers = offer.ice_servers(1000, &scope, &peer, None, "[::1]");
        assert_eq!(servers[0].urls, vec!["stun:[::1]:3478"]);
        assert_eq!(
            servers[1].urls,
            vec![
                "turn:[::1]:3478?transport=udp",
                "turn:[::1]:3478?transport=tcp",
                "turns:[::1]:5349?transport=tcp",
                "turns:[::1]:443?transport=tcp"
            ]
        );
        let username = servers[1].username.clone().unwrap();
        assert_eq!(username, format!("1600:{peer}@r"));
        let found = auth::lookup(&username, std::slice::from_ref(&offer.secret), &[]).unwrap();
        assert_eq!(
            found.passwords,
            vec![servers[1].credential.clone().unwrap()]
        );
        assert_eq!(found.owner, auth::Owner::Peer { scope, peer });
    }
}
