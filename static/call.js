// Switchboard call page: lobby at "/", call at "/r/<room>".
//
// One RTCPeerConnection per remote peer (mesh), negotiated with the "perfect
// negotiation" pattern, so glare and late joiners need no special cases.
// window.switchboardState() exposes a snapshot for tests and debugging.
'use strict';

(() => {
  const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;
  // ?relay forces every path through TURN (to check a TURN setup); ?relay=udp|tcp|tls
  // also keeps only that transport's TURN URLs.
  const params = new URLSearchParams(location.search);
    const RELAY = params.has('relay') ? (params.get('relay') || 'any') : null;
  // ?ice=stun keeps only STUN servers (a control: behind symmetric NAT, calls then fail).
  const STUN_ONLY = params.get('ice') === 'stun';
  const $ = (id) => document.getElementById(id);

  const state = {
    phase: 'starting',      // starting | joining | joined | ended | error
    room: null,
    peerId: null,
    error: null,
    localMedia: false,
    iceServers: [],
    peers: new Map(),       // id -> Peer
    names: new Map(),       // id -> display name, for members whose connection is not up yet
  };

  function showError(message) {
    state.error = message;
    const el = $('error');
    el.textContent = message;
    el.hidden = false;
  }

  function clearError() {
    state.error = null;
    $('error').hidden = true;
  }

  function setStatus(text) {
    $('status').textContent = text;
  }

  // ---------- lobby ----------

  // A room name nobody can guess (80 random bits), proposed on the start page: a room is
  // as private as its name. A person can still type their own.
  function randomRoom() {
    const alphabet = 'abcdefghijkmnpqrstuvwxyz23456789'; // 32 signs, no look-alikes
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    const signs = Array.from(bytes, (b) => alphabet[b & 31]).join('');
    return signs.match(/.{4}/g).join('-');
  }

  function lobby() {
    $('lobby').hidden = false;
    const input = $('room-input');
    if (!input.value) {
      input.value = randomRoom();
      input.select();
    }
    $('join-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const room = $('room-input').value.trim();
      if (!ROOM_RE.test(room)) {
        showError('Invalid room name: use 1 to 64 letters, digits, "_" or "-".');
        return;
      }
      const name = $('name-input').value.trim();
      if (name) sessionStorage.setItem('switchboard-name', name);
      location.assign('/r/' + encodeURIComponent(room));
    });
  }

  // ---------- call ----------

  let ws = null;
  let localStream = null;
  let hungUp = false;
  let reconnectDelay = 1000;

  async function call(room) {
    state.room = room;
    $('call').hidden = false;
    $('room-label').textContent = 'Room ' + room;
    $('rejoin-link').href = location.pathname;
    document.title = room + ' · Switchboard';
    $('mic-btn').addEventListener('click', () => toggle('audio', $('mic-btn'), 'Mute', 'Unmute'));
    $('cam-btn').addEventListener('click', () => toggle('video', $('cam-btn'), 'Camera off', 'Camera on'));
    $('hangup-btn').addEventListener('click', hangUp);

    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError('Camera and microphone need a secure context: open this page over https:// ' +
        '(or http://localhost). You can still receive the other participants.');
    } else {
      try {
        localStream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
        state.localMedia = true;
        $('local-video').srcObject = localStream;
      } catch (err) {
        const denied = err && (err.name === 'NotAllowedError' || err.name === 'SecurityError');
        showError(denied
          ? 'Camera/microphone access was denied. Allow it in the browser\'s site settings and reload; ' +
            'until then you only receive.'
          : 'No camera or microphone could be opened (' + (err && err.name) + '); you only receive.');
      }
    }
    connect();
    setInterval(refreshStats, 1000);
  }

  function toggle(kind, button, onLabel, offLabel) {
    if (!localStream) return;
    const tracks = kind === 'audio' ? localStream.getAudioTracks() : localStream.getVideoTracks();
    const enabled = !(tracks[0] && tracks[0].enabled);
    tracks.forEach((t) => { t.enabled = enabled; });
    button.textContent = enabled ? onLabel : offLabel;
    button.setAttribute('aria-pressed', String(!enabled));
  }

  function connect() {
    state.phase = 'joining';
    setStatus('Connecting to server…');
    ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
    if (RELAY) $('room-label').textContent = 'Room ' + state.room + ' (relay only' + (RELAY === 'any' ? '' : ', ' + RELAY) + ')';
    ws.onopen = () => {
      const name = sessionStorage.getItem('switchboard-name') || undefined;
      send({ type: 'join', room: state.room, name });
    };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      onServerMessage(msg);
    };
    ws.onclose = (ev) => {
      for (const id of [...state.peers.keys()]) removePeer(id);
      if (hungUp || state.phase === 'error') return;
      // Removed by the operator (a kick, or the room closed): not a network failure, so
      // the page does not come back on its own.
      if (ev.code === 1008 && ev.reason === 'closed by the server operator') {
        state.phase = 'ended';
        setStatus('Removed from the call by the server operator');
        return;
      }
      state.phase = 'joining';
      setStatus('Disconnected from server' + (ev.reason ? ' (' + ev.reason + ')' : '') + '; reconnecting…');
      setTimeout(connect, reconnectDelay);
      reconnectDelay = Math.min(reconnectDelay * 2, 10000);
    };
  }

  function send(msg) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
  }

  function onServerMessage(msg) {
    switch (msg.type) {
      case 'welcome':
        clearErrorUnlessMedia();
        reconnectDelay = 1000;
        state.phase = 'joined';
        state.peerId = msg.peer_id;
        state.iceServers = msg.ice_servers || [];
        for (const p of msg.peers) addPeer(p);
        updateStatus();
        break;
      case 'ice_servers':
        // Fresh credentials before the old ones expire.
        state.iceServers = msg.ice_servers || [];
        for (const peer of state.peers.values()) {
          try { peer.pc.setConfiguration(rtcConfig()); } catch { /* keep old */ }
        }
        break;
      case 'peer_joined':
        // The newcomer makes the first offer; the connection is created when it arrives.
        // Offering from both sides at once (glare) is legal, but Chromium can stall ICE
        // gathering after the implicit rollback it causes.
        state.names.set(msg.peer.id, msg.peer.name || null);
        updateStatus();
        break;
      case 'peer_left':
        state.names.delete(msg.peer_id);
        removePeer(msg.peer_id);
        updateStatus();
        break;
      case 'signal':
        onSignal(msg.from, msg.payload);
        break;
      case 'error':
        if (msg.code === 'room_full' || msg.code === 'bad_room' || msg.code === 'too_many_rooms'
            || msg.code === 'room_closed' || msg.code === 'kicked') {
          state.phase = 'error';
          setStatus('Not joined');
          showError(msg.code === 'room_full'
            ? 'This room is full. Try again later or choose another room.'
            : msg.message);
          ws.close(1000);
        } else {
          console.warn('server error', msg.code, msg.message);
        }
        break;
      default:
        break;
    }
  }

  function clearErrorUnlessMedia() {
    if (state.localMedia) clearError();
  }

  // ---------- peers and perfect negotiation ----------

  // Keeps, with ?relay=udp|tcp|tls, only the TURN URLs of that transport.
    function rtcConfig() {
    let iceServers = state.iceServers;
    if (STUN_ONLY) {
      iceServers = iceServers
        .map((s) => ({ urls: [].concat(s.urls).filter((u) => u.startsWith('stun:')) }))
        .filter((s) => s.urls.length > 0);
    }
    if (RELAY && RELAY !== 'any') {
      const keep = (url) => (RELAY === 'tls' ? url.startsWith('turns:')
        : url.startsWith('turn:') && url.includes('transport=' + RELAY));
      iceServers = iceServers
        .map((s) => Object.assign({}, s, { urls: [].concat(s.urls).filter(keep) }))
        .filter((s) => s.urls.length > 0);
    }
    return { iceServers, iceTransportPolicy: RELAY ? 'relay' : 'all' };
  }

  function addPeer(info) {
    if (state.peers.has(info.id)) return;
    const pc = new RTCPeerConnection(rtcConfig());
    const peer = {
      id: info.id,
      name: info.name || null,
      pc,
      // The peer with the greater id is polite: it yields on glare.
      polite: state.peerId > info.id,
      makingOffer: false,
      ignoreOffer: false,
      queue: Promise.resolve(),
      tile: makeTile(info),
      stats: { candidateType: null, relayProtocol: null, framesDecoded: 0 },
      history: [],           // the last negotiation steps, for debugging
            candidates: { sent: 0, received: 0, failed: 0 },
      everConnected: false,
      everFailed: false,
    };
    state.peers.set(info.id, peer);

    pc.onnegotiationneeded = async () => {
      note(peer, 'negotiationneeded');
      try {
        peer.makingOffer = true;
        await pc.setLocalDescription();
        sendSignal(peer, { description: pc.localDescription });
      } catch (err) {
        note(peer, 'negotiation failed: ' + err);
        console.warn('negotiation failed', err);
      } finally {
        peer.makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      peer.candidates.sent += 1;
      sendSignal(peer, { candidate: candidate ? candidate.toJSON() : null });
    };
    pc.ontrack = ({ track, streams }) => {
      const video = peer.tile.querySelector('video');
      video.srcObject = streams[0] || new MediaStream([track]);
      play(video, peer.tile);
    };
        pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'connected') peer.everConnected = true;
      if (pc.connectionState === 'failed') {
        peer.everFailed = true;
        pc.restartIce();
      }
      updateStatus();
    };

    if (localStream) {
      for (const track of localStream.getTracks()) pc.addTrack(track, localStream);
    } else {
      pc.addTransceiver('audio', { direction: 'recvonly' });
      pc.addTransceiver('video', { direction: 'recvonly' });
    }
    return peer;
  }

  function note(peer, step) {
    peer.history.push(step + ' [' + peer.pc.signalingState + ']');
    if (peer.history.length > 40) peer.history.shift();
  }

  function sendSignal(peer, payload) {
    if (payload.description) note(peer, 'send ' + payload.description.type);
    send({ type: 'signal', to: peer.id, payload });
  }

  function onSignal(from, payload) {
    const peer = state.peers.get(from) || addPeer({ id: from, name: state.names.get(from) });
    // Handle one signal at a time per peer, in arrival order.
    peer.queue = peer.queue.then(() => handleSignal(peer, payload)).catch((err) => {
      note(peer, 'signal failed: ' + err);
      console.warn('signal failed', err);
    });
  }

  async function handleSignal(peer, payload) {
    const pc = peer.pc;
    if (payload && payload.description) {
      const description = payload.description;
      note(peer, 'recv ' + description.type);
      const collision = description.type === 'offer' && (peer.makingOffer || pc.signalingState !== 'stable');
      peer.ignoreOffer = !peer.polite && collision;
      if (peer.ignoreOffer) {
        note(peer, 'ignored offer');
        return;
      }
      await pc.setRemoteDescription(description);
      if (description.type === 'offer') {
        await pc.setLocalDescription();
        sendSignal(peer, { description: pc.localDescription });
      }
    } else if (payload && 'candidate' in payload) {
      peer.candidates.received += 1;
      try {
        await pc.addIceCandidate(payload.candidate || undefined);
      } catch (err) {
        peer.candidates.failed += 1;
        note(peer, 'candidate failed: ' + err.message);
        if (!peer.ignoreOffer) throw err;
      }
    }
  }

  function removePeer(id) {
    const peer = state.peers.get(id);
    if (!peer) return;
    peer.pc.close();
    peer.tile.remove();
    state.peers.delete(id);
  }

  function makeTile(info) {
    const fig = document.createElement('figure');
    fig.className = 'tile remote';
    const video = document.createElement('video');
    video.autoplay = true;
    video.playsInline = true;
    const caption = document.createElement('figcaption');
    caption.textContent = info.name || 'Guest ' + info.id.slice(0, 4);
    fig.append(video, caption);
    $('videos').append(fig);
    return fig;
  }

  // Autoplay with sound may be refused before any user gesture: play muted and offer unmute.
  function play(video, tile) {
    video.play().catch(() => {
      video.muted = true;
      video.play().catch(() => {});
      if (tile.querySelector('.unmute')) return;
      const btn = document.createElement('button');
      btn.className = 'unmute';
      btn.textContent = 'Unmute';
      btn.onclick = () => { video.muted = false; btn.remove(); };
      tile.append(btn);
    });
  }

  function hangUp() {
    hungUp = true;
    send({ type: 'leave' });
    for (const id of [...state.peers.keys()]) removePeer(id);
    if (localStream) localStream.getTracks().forEach((t) => t.stop());
    if (ws) ws.close(1000);
    state.phase = 'ended';
    setStatus('Call ended');
    $('hangup-btn').disabled = true;
    $('rejoin-link').hidden = false;
  }

  // ---------- status ----------

  async function refreshStats() {
    for (const peer of state.peers.values()) {
      try {
        const report = await peer.pc.getStats();
        let pairId = null;
        let framesDecoded = 0;
        report.forEach((s) => {
          if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
          if (s.type === 'inbound-rtp' && s.kind === 'video') framesDecoded += s.framesDecoded || 0;
        });
        const pair = pairId && report.get(pairId);
        const local = pair && report.get(pair.localCandidateId);
        const remote = pair && report.get(pair.remoteCandidateId);
        peer.stats = {
          candidateType: local ? local.candidateType : null,
          remoteCandidateType: remote ? remote.candidateType : null,
                    relayProtocol: local && local.relayProtocol ? local.relayProtocol : null,
          relayUrl: local && local.url ? local.url : null,
          framesDecoded,
        };
      } catch { /* the connection closed meanwhile */ }
    }
    updateStatus();
  }

  function updateStatus() {
    if (state.phase !== 'joined') return;
    const peers = [...state.peers.values()];
    if (peers.length === 0) {
      setStatus(state.names.size > 0 ? 'Connecting…' : 'Waiting for others to join this room…');
      return;
    }
    const parts = peers.map((p) => {
      const label = p.name || p.id.slice(0, 4);
      const path = p.stats.candidateType
        ? ' via ' + p.stats.candidateType + (p.stats.relayProtocol ? '/' + p.stats.relayProtocol : '')
        : '';
      return label + ': ' + p.pc.connectionState + path;
    });
    const connected = peers.filter((p) => p.pc.connectionState === 'connected').length;
    setStatus(connected + '/' + peers.length + ' connected · ' + parts.join(' · '));
  }

  window.switchboardState = () => ({
    phase: state.phase,
    room: state.room,
    relay: RELAY,
    peerId: state.peerId,
    error: state.error,
    localMedia: state.localMedia,
    iceServers: state.iceServers,
    peers: [...state.peers.values()].map((p) => {
      const video = p.tile.querySelector('video');
      return {
        id: p.id,
        name: p.name,
        polite: p.polite,
        signalingState: p.pc.signalingState,
                connectionState: p.pc.connectionState,
        everConnected: p.everConnected,
        everFailed: p.everFailed,
        iceConnectionState: p.pc.iceConnectionState,
        iceGatheringState: p.pc.iceGatheringState,
        candidates: Object.assign({}, p.candidates),
        candidateType: p.stats.candidateType,
        remoteCandidateType: p.stats.remoteCandidateType || null,
                relayProtocol: p.stats.relayProtocol,
        relayUrl: p.stats.relayUrl || null,
        framesDecoded: p.stats.framesDecoded,
        videoWidth: video.videoWidth,
        videoHeight: video.videoHeight,
        history: p.history.slice(),
      };
    }),
  });

  // ---------- start ----------

  const match = location.pathname.match(/^\/r\/([^/]+)\/?$/);
  if (match) {
    const room = decodeURIComponent(match[1]);
    if (ROOM_RE.test(room)) {
      call(room);
    } else {
      showError('Invalid room name: use 1 to 64 letters, digits, "_" or "-".');
    }
  } else {
    lobby();
  }
})();
