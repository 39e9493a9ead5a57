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

use crate::harness::{Client, DEADLINE, TestServer, peer_id};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_webrtc_rs_peers_talk_through_the_relay() {
    let server = TestServer::start("");
    let mut ws_a = server.client().await;
    let welcome_a = ws_a.join("webrtc-rs", Some("a")).await;
    let mut ws_b = server.client().await;
    let welcome_b = ws_b.join("webrtc-rs", Some("b")).await;
    let (id_a, id_b) = (peer_id(&welcome_a), peer_id(&welcome_b));
    assert!(matches!(ws_a.recv().await, ServerMsg::PeerJoined { .. }));
    let ice = |w: &ServerMsg| match w {
        ServerMsg::Welcome { ice_servers, .. } => ice_servers.clone(),
        _ => unreachable!(),
    };
    let (pc_a, out_a) = peer_connection(&ice(&welcome_a)).await;
    let (pc_b, out_b) = peer_connection(&ice(&welcome_b)).await;

    // a answers every message with "pong".
    pc_a.on_data_channel(Box::new(|dc: Arc<RTCDataChannel>| {
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
    // b, the newcomer, opens a channel, offers, and sends "ping" once it is open.
    let dc = pc_b.create_data_channel("ping", None).await.unwrap();
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

    let offer = pc_b.create_offer(None).await.unwrap();
    pc_b.set_local_description(offer.clone()).await.unwrap();
    ws_b.send(json!({"type": "signal", "to": id_a, "payload": {"description": offer}}))
        .await;
    pump(ws_a, Arc::clone(&pc_a), out_a, id_b);
    pump(ws_b, Arc::clone(&pc_b), out_b, id_a);

    let reply = tokio::time::timeout(DEADLINE * 2, done_rx)
        .await
        .expect("data channel round trip in time")
        .unwrap();
    assert_eq!(reply, "pong:ping");
    for pc in [&pc_a, &pc_b] {
        assert_eq!(
            selected_types(pc).await,
            (RTCIceCandidateType::Relay, RTCIceCandidateType::Relay)
        );
    }
    pc_a.close().await.unwrap();
    pc_b.close().await.unwrap();
}
