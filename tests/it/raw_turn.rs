//! A TURN client over UDP that speaks just enough (Allocate, Refresh) to watch credentials
//! and allocations come and go, with the error code of every refusal.

use std::net::SocketAddr;

use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::error_code::ErrorCodeAttribute;
use stun::message::{
    CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter, METHOD_ALLOCATE, METHOD_REFRESH, Message,
    MessageType, Method, Setter,
};
use stun::textattrs::TextAttribute;
use switchboard::signaling::protocol::{IceServer, ServerMsg};
use tokio::net::UdpSocket;

use crate::harness::DEADLINE;

/// A TURN client over UDP that speaks just enough (Allocate, Refresh) to watch a revocation.
pub struct RawTurn {
    socket: UdpSocket,
    server: SocketAddr,
    username: String,
    password: String,
    realm: String,
    nonce: String,
}

impl RawTurn {
    pub async fn new(server: SocketAddr, entry: &IceServer) -> RawTurn {
        RawTurn {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
            username: entry.username.clone().expect("username"),
            password: entry.credential.clone().expect("credential"),
            realm: String::new(),
            nonce: String::new(),
        }
    }

    async fn exchange(&self, method: Method, attrs: Vec<Box<dyn Setter>>, auth: bool) -> Message {
        let mut setters: Vec<Box<dyn Setter>> = vec![
            Box::new(stun::agent::TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
        ];
        setters.extend(attrs);
        if auth {
            setters.push(Box::new(TextAttribute::new(
                ATTR_USERNAME,
                self.username.clone(),
            )));
            setters.push(Box::new(TextAttribute::new(ATTR_REALM, self.realm.clone())));
            setters.push(Box::new(TextAttribute::new(ATTR_NONCE, self.nonce.clone())));
            setters.push(Box::new(
                stun::integrity::MessageIntegrity::new_long_term_integrity(
                    self.username.clone(),
                    self.realm.clone(),
                    self.password.clone(),
                ),
            ));
        }
        let mut request = Message::new();
        request.build(&setters).unwrap();
        self.socket
            .send_to(&request.raw, self.server)
            .await
            .unwrap();
        let mut buf = vec![0u8; 1500];
        let n = tokio::time::timeout(DEADLINE, self.socket.recv(&mut buf))
            .await
            .expect("TURN answer in time")
            .unwrap();
        let mut answer = Message::new();
        answer.raw = buf[..n].to_vec();
        answer.decode().unwrap();
        answer
    }

    fn code(answer: &Message) -> Option<u16> {
        if answer.typ.class == CLASS_SUCCESS_RESPONSE {
            return None;
        }
        let mut code = ErrorCodeAttribute::default();
        code.get_from(answer).expect("an error code");
        Some(code.code.0)
    }

    /// Allocates (after the 401 that brings realm and nonce); `Err(code)` on refusal.
    pub async fn allocate(&mut self) -> Result<(), u16> {
        let transport = || -> Vec<Box<dyn Setter>> {
            vec![Box::new(turn::proto::reqtrans::RequestedTransport {
                protocol: turn::proto::PROTO_UDP,
            })]
        };
        let challenge = self.exchange(METHOD_ALLOCATE, transport(), false).await;
        assert_eq!(Self::code(&challenge), Some(401));
        self.realm = TextAttribute::get_from_as(&challenge, ATTR_REALM)
            .unwrap()
            .text;
        self.nonce = TextAttribute::get_from_as(&challenge, ATTR_NONCE)
            .unwrap()
            .text;
        let answer = self.exchange(METHOD_ALLOCATE, transport(), true).await;
        Self::code(&answer).map_or(Ok(()), Err)
    }

    pub async fn refresh(&self) -> Result<(), u16> {
        let lifetime: Vec<Box<dyn Setter>> = vec![Box::new(turn::proto::lifetime::Lifetime(
            std::time::Duration::from_secs(600),
        ))];
        let answer = self.exchange(METHOD_REFRESH, lifetime, true).await;
        Self::code(&answer).map_or(Ok(()), Err)
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
