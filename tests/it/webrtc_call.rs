//! A real WebRTC call between two webrtc-rs peers, signaled through Switchboard
//! and forced through its TURN relay (`iceTransportPolicy: relay`).

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard::signaling::protocol::{IceServer, PeerId, ServerMsg};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use webrtc::api::APIBuilder;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::MediaEngine;
use webrtc::data_channel::RTCDataChannel;
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;

use crate::harness::{Client, DEADLINE, TestServer};

/// A peer connection whose outgoing signals land in a queue.
async fn peer_connection(
    ice: &[IceServer],
) -> (Arc<RTCPeerConnection>, mpsc::UnboundedReceiver<Value>) {
    let mut media = MediaEngine::default();
    media.register_default_codecs().unwrap();
    let registry = register_default_interceptors(Registry::new(), &mut media).unwrap();
    let api = APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build();
    // webrtc-rs is given the UDP TURN URL only: this test is about the relay, not TLS trust.
    let ice_servers = ice
        .iter()
        .filter_map(|s| {
            let urls: Vec<String> = s
                .urls
                .iter()
                .filter(|u| u.ends_with("transport=udp"))
                .cloned()
                .collect();
            (!urls.is_empty()).then(|| RTCIceServer {
                urls,
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
        })
        .collect();
    let config = RTCConfiguration {
        ice_servers,
        ice_transport_policy: RTCIceTransportPolicy::Relay,
        ..Default::default()
    };
    let pc = Arc::new(api.new_peer_connection(config).await.unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    pc.on_ice_candidate(Box::new(move |c| {
        let tx = tx.clone();
        Box::pin(async move {
            if let Some(c) = c
                && let Ok(init) = c.to_json()
            {
                let _ = tx.send(json!({"candidate": init}));
            }
        })
    }));
    (pc, rx)
}

/// Relays signals between `pc` and the socket until the test ends.
fn pump(
    mut ws: Client,
    pc: Arc<RTCPeerConnection>,
    mut out: mpsc::UnboundedReceiver<Value>,
    other: PeerId,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(payload) = out.recv() => {
                    let msg = json!({"type": "signal", "to": other, "payload": payload});
                    if ws.ws.send(Message::text(msg.to_string())).await.is_err() {
                        return;
                    }
                }
                frame = ws.ws.next() => {
                    let Some(Ok(Message::Text(text))) = frame else {
                        if frame.is_none() { return; }
                        continue;
                    };
                    let Ok(ServerMsg::Signal { payload, .. }) = serde_json::from_str::<ServerMsg>(&text) else {
                        continue;
                    };
                    let payload = payload.value();
                    if let Some(desc) = payload.get("description") {
                        let desc: RTCSessionDescription = serde_json::from_value(desc.clone()).unwrap();
                        let is_offer = desc.sdp_type == webrtc::peer_connection::sdp::sdp_type::RTCSdpType::Offer;
                        pc.set_remote_description(desc).await.unwrap();
                        if is_offer {
                            let answer = pc.create_answer(None).await.unwrap();
                            pc.set_local_description(answer.clone()).await.unwrap();
                            let msg = json!({"type": "signal", "to": other, "payload": {"description": answer}});
                            ws.ws.send(Message::text(msg.to_string())).await.unwrap();
                        }
                    } else if let Some(c) = payload.get("candidate") {
                        let init: RTCIceCandidateInit = serde_json::from_value(c.clone()).unwrap();
                        let _ = pc.add_ice_candidate(init).await;
                    }
                }
            }
        }
    });
}

async fn selected_types(pc: &RTCPeerConnection) -> (RTCIceCandidateType, RTCIceCandidateType) {
    let pair = pc
        .sctp()
        .transport()
        .ice_transport()
        .get_selected_candidate_pair()
        .await
        .expect("a selected pair");
    (pair.local.typ, pair.remote.typ)
}

fn ice_of(welcome: &ServerMsg) -> Vec<IceServer> {
    match welcome {
        ServerMsg::Welcome { ice_servers, .. } => ice_servers.clone(),
        other => panic!("not a welcome: {other:?}"),
    }
}

/// The first member: joins `room`, says so on `joined`, answers the newcomer's offer and
/// its data-channel messages; when `stop` fires, returns its selected pair's types.
pub async fn answerer(
    mut ws: Client,
    room: &str,
    joined: oneshot::Sender<()>,
    stop: oneshot::Receiver<()>,
) -> (RTCIceCandidateType, RTCIceCandidateType) {
    let welcome = ws.join(room, Some("a")).await;
    let _ = joined.send(());
    let other = loop {
        if let ServerMsg::PeerJoined { peer } = ws.recv().await {
            break peer.id;
        }
    };
    let (pc, out) = peer_connection(&ice_of(&welcome)).await;
    pc.on_data_channel(Box::new(|dc: Arc<RTCDataChannel>| {
        Box::pin(async move {
            let reply = Arc::clone(&dc);
            dc.on_message(Box::new(move |msg: DataChannelMessage| {
                let reply = Arc::clone(&reply);
                Box::pin(async move {
                    let text = String::from_utf8_lossy(&msg.data).into_owned();
                    let _ = reply.send_text(format!("pong:{text}")).await;
                })
            }));
        })
    }));
    pump(ws, Arc::clone(&pc), out, other);
    let _ = stop.await;
    let types = selected_types(&pc).await;
    pc.close().await.unwrap();
    types
}

/// The newcomer: joins `room`, opens a data channel, offers, sends "ping" and waits for
/// the answer; returns the reply and its selected pair's types.
pub async fn offerer(
    mut ws: Client,
    room: &str,
) -> (String, (RTCIceCandidateType, RTCIceCandidateType)) {
    let welcome = ws.join(room, Some("b")).await;
    let other: PeerId = match &welcome {
        ServerMsg::Welcome { peers, .. } => peers[0].id.clone(),
        _ => unreachable!(),
    };
    let (pc, out) = peer_connection(&ice_of(&welcome)).await;
    let dc = pc.create_data_channel("ping", None).await.unwrap();
    let (done_tx, done_rx) = oneshot::channel::<String>();
    let done_tx = Arc::new(std::sync::Mutex::new(Some(done_tx)));
    dc.on_message(Box::new(move |msg: DataChannelMessage| {
        let done_tx = Arc::clone(&done_tx);
        Box::pin(async move {
            if let Some(tx) = done_tx.lock().unwrap().take() {
                let _ = tx.send(String::from_utf8_lossy(&msg.data).into_owned());
            }
        })
    }));
    let opened = Arc::clone(&dc);
    dc.on_open(Box::new(move || {
        Box::pin(async move {
            opened.send_text("ping".to_owned()).await.unwrap();
        })
    }));
    let offer = pc.create_offer(None).await.unwrap();
    pc.set_local_description(offer.clone()).await.unwrap();
    ws.send(json!({"type": "signal", "to": other, "payload": {"description": offer}}))
        .await;
    pump(ws, Arc::clone(&pc), out, other);
    let reply = tokio::time::timeout(DEADLINE * 2, done_rx)
        .await
        .expect("data channel round trip in time")
        .unwrap();
    let types = selected_types(&pc).await;
    pc.close().await.unwrap();
    (reply, types)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_webrtc_rs_peers_talk_through_the_relay() {
    let server = TestServer::start("");
    let (joined_tx, joined_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel();
    let a = tokio::spawn({
        let ws = server.client().await;
        async move { answerer(ws, "webrtc-rs", joined_tx, stop_rx).await }
    });
    joined_rx.await.unwrap();
    let (reply, b_types) = offerer(server.client().await, "webrtc-rs").await;
    let _ = stop_tx.send(());
    assert_eq!(reply, "pong:ping");
    let relay = (RTCIceCandidateType::Relay, RTCIceCandidateType::Relay);
    assert_eq!(b_types, relay);
    assert_eq!(a.await.unwrap(), relay);
}
