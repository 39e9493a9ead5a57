// Switchboard call page: room form at "/", lobby then call at "/r/<room>".
//
// One RTCPeerConnection per remote peer (mesh), negotiated with the "perfect
// negotiation" pattern, so glare, late joiners, device switches and screen sharing
// need no special cases: every change of tracks goes through onnegotiationneeded.
// window.switchboardState() exposes a snapshot for tests and debugging.
'use strict';

(() => {
  const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;
  const NAME_KEY = 'switchboard-name';
  // ?relay forces every path through TURN (to check a TURN setup); ?relay=udp|tcp|tls
  // also keeps only that transport's TURN URLs.
  const params = new URLSearchParams(location.search);
  const RELAY = params.has('relay') ? (params.get('relay') || 'any') : null;
  // ?ice=stun keeps only STUN servers (a control: behind symmetric NAT, calls then fail).
  const STUN_ONLY = params.get('ice') === 'stun';
  // ?autojoin joins at once, without the lobby (for embedding, kiosks and scripts).
  const AUTOJOIN = params.has('autojoin');
  // ?token=… is a join token from the application that sent this link (rooms it controls).
  const TOKEN = params.get('token');
  const TOKEN_ERRORS = {
    token_required: 'This room needs an invitation link from the application that runs it.',
    token_invalid: 'This invitation link is not valid.',
    token_expired: 'This invitation link has expired: ask for a new one.',
    token_room_mismatch: 'This invitation link is for another room.',
  };
  const $ = (id) => document.getElementById(id);

  const state = {
    phase: 'starting',      // home | lobby | starting | joining | joined | ended | error
    room: null,
    peerId: null,
    error: null,
    localMedia: false,
    iceServers: [],
    peers: new Map(),       // id -> Peer
    names: new Map(),       // id -> display name of every other member of the room
    reconnecting: false,    // the socket dropped; a resume (or a rejoin) is pending
    rejoins: 0,             // welcomes after the first one
    resumes: 0,             // places taken back after a dropped socket
    iceRestarts: 0,         // ICE restarts asked for after a resume
    sharing: false,
    switches: 0,            // devices switched mid-call
    micLevel: 0,            // 0..1, the microphone's level now
    meterTicks: 0,          // how often the level was measured
    linkCopied: null,       // 'clipboard' | 'selected' once the copy button was used
    roles: { publish: true, kick: false },  // what this page may do in the room (its token's)
  };

  let ws = null;
  const pendingMedia = new Map(); // id -> `media` signal of a peer not connected yet
  let localStream = null;   // camera and microphone
  let screenStream = null;  // the shared screen, while sharing
  let hungUp = false;
  let joinedOnce = false;
  let reconnectDelay = 1000;
  let reconnectTimer = null;
  // Resuming after a dropped socket: the token the server gave, the seq of the last message
  // received, and when the last one was acknowledged.
  let resumeToken = null;
  let lastSeq = 0;
  let ackTimer = null;
  let droppedAt = 0;
  const formerSelves = new Set();
  let unsent = [];          // signals made while the socket was down, for after the resume
  const RESUME_FOR_MS = 25000;  // a little less than the server's default grace (30 s)
  let statusText = '';

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

  // The status line is a live region: written only when its text changes.
  function setStatus(text) {
    if (text === statusText) return;
    statusText = text;
    $('status').textContent = text;
  }

  function myName() {
    return sessionStorage.getItem(NAME_KEY) || '';
  }

  // ---------- start page ----------

  // A room name nobody can guess (80 random bits), proposed on the start page: a room is
  // as private as its name. A person can still type their own.
  function randomRoom() {
    const alphabet = 'abcdefghijkmnpqrstuvwxyz23456789'; // 32 signs, no look-alikes
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    const signs = Array.from(bytes, (b) => alphabet[b & 31]).join('');
    return signs.match(/.{4}/g).join('-');
  }

  function home() {
    state.phase = 'home';
    $('home').hidden = false;
    const input = $('room-input');
    $('name-input').value = myName();
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
      if (name) sessionStorage.setItem(NAME_KEY, name);
      location.assign('/r/' + encodeURIComponent(room));
    });
  }

  // ---------- room: lobby, then call ----------

  async function room(name) {
    state.room = name;
    $('room').hidden = false;
    $('room-label').textContent = 'Room ' + name +
      (RELAY ? ' (relay only' + (RELAY === 'any' ? '' : ', ' + RELAY) + ')' : '');
    $('room-link').value = location.origin + location.pathname;
    $('rejoin-link').href = location.pathname + location.search;
    document.title = name + ' · Switchboard';
    $('display-name').value = myName();
    $('mic-btn').addEventListener('click', () => setEnabled('audio', !trackEnabled('audio')));
    $('cam-btn').addEventListener('click', () => setEnabled('video', !trackEnabled('video')));
    $('share-btn').addEventListener('click', () => (screenStream ? stopSharing() : startSharing()));
    $('hangup-btn').addEventListener('click', hangUp);
    $('copy-btn').addEventListener('click', copyLink);
    $('camera-select').addEventListener('change', () => switchDevice('video', $('camera-select').value));
    $('mic-select').addEventListener('change', () => switchDevice('audio', $('mic-select').value));
    $('speaker-select').addEventListener('change', () => setSpeaker($('speaker-select').value));
    $('prejoin').addEventListener('submit', (ev) => {
      ev.preventDefault();
      join();
    });
    // An AudioContext made before any gesture starts suspended: resume it on the first one.
    document.addEventListener('pointerdown', resumeAudio);
    document.addEventListener('keydown', resumeAudio);
    if (navigator.mediaDevices && navigator.mediaDevices.addEventListener) {
      navigator.mediaDevices.addEventListener('devicechange', () => { listDevices(); });
    }

    $('join-btn').disabled = true;
    await openMedia();
    $('join-btn').disabled = false;
    setInterval(refreshStats, 1000);
    if (AUTOJOIN) {
      join();
    } else {
      state.phase = 'lobby';
      setStatus(state.localMedia ? 'Check your camera and microphone, then join.' : 'Ready to join.');
      document.body.classList.add('in-lobby');
      $('join-btn').focus();
    }
  }

  async function openMedia() {
    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError('Camera and microphone need a secure context: open this page over https:// ' +
        '(or http://localhost). You can still receive the other participants.');
      return;
    }
    try {
      localStream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
      state.localMedia = true;
      $('local-video').srcObject = localStream;
      play($('local-video'));
      startMeter();
    } catch (err) {
      const denied = err && (err.name === 'NotAllowedError' || err.name === 'SecurityError');
      showError(denied
        ? 'Camera/microphone access was denied. Allow it in the browser\'s site settings and reload; ' +
          'until then you only receive.'
        : 'No camera or microphone could be opened (' + (err && err.name) + '); you only receive.');
    }
    updateToggles();
    // Not awaited: Firefox answers enumerateDevices only once the tab has focus, and a
    // background tab (?autojoin) must not wait for that to join.
    listDevices();
  }

  function join() {
    if (state.phase !== 'lobby' && state.phase !== 'starting') return;
    const name = $('display-name').value.trim();
    if (name) sessionStorage.setItem(NAME_KEY, name);
    else sessionStorage.removeItem(NAME_KEY);
    document.body.classList.remove('in-lobby');
    $('prejoin').hidden = true;
    $('people-panel').hidden = false;
    $('devices-panel').open = false;
    $('hangup-btn').hidden = false;
    $('share-btn').hidden = !(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia);
    $('local-caption').textContent = name ? 'You (' + name + ')' : 'You';
    renderPeople();
    connect();
  }

  // ---------- local media: toggles, devices, meter ----------

  function tracksOf(kind) {
    if (!localStream) return [];
    return kind === 'audio' ? localStream.getAudioTracks() : localStream.getVideoTracks();
  }

  function trackEnabled(kind) {
    const tracks = tracksOf(kind);
    return tracks.length > 0 && tracks[0].enabled;
  }

  function setEnabled(kind, enabled) {
    tracksOf(kind).forEach((t) => { t.enabled = enabled; });
    updateToggles();
    for (const peer of state.peers.values()) sendSignal(peer, { media: mediaState() });
  }

  // What the others are told about this side's camera and microphone, so their tile can
  // say "Camera off" and "muted" instead of showing black frames and silence.
  function mediaState() {
    return { camera: trackEnabled('video'), mic: trackEnabled('audio') };
  }

  function updateToggles() {
    const mic = $('mic-btn');
    const cam = $('cam-btn');
    const micOn = trackEnabled('audio');
    const camOn = trackEnabled('video');
    mic.disabled = tracksOf('audio').length === 0;
    cam.disabled = tracksOf('video').length === 0;
    // Pressed means "muted" / "camera off": the button's label says what pressing does.
    mic.setAttribute('aria-pressed', String(!micOn && !mic.disabled));
    cam.setAttribute('aria-pressed', String(!camOn && !cam.disabled));
    mic.textContent = micOn || mic.disabled ? 'Mute' : 'Unmute';
    cam.textContent = camOn || cam.disabled ? 'Camera off' : 'Camera on';
    document.querySelector('.tile.local').classList.toggle('video-off', !camOn);
  }

  async function listDevices() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
    let devices = [];
    try {
      devices = await navigator.mediaDevices.enumerateDevices();
    } catch {
      return;
    }
    const current = (kind) => {
      const track = tracksOf(kind)[0];
      return track && track.getSettings ? track.getSettings().deviceId : undefined;
    };
    fill($('camera-select'), devices.filter((d) => d.kind === 'videoinput'), current('video'), 'Camera');
    fill($('mic-select'), devices.filter((d) => d.kind === 'audioinput'), current('audio'), 'Microphone');
    const outputs = devices.filter((d) => d.kind === 'audiooutput' && d.deviceId);
    const canPick = 'setSinkId' in HTMLMediaElement.prototype && outputs.length > 0;
    $('speaker-row').hidden = !canPick;
    if (canPick) fill($('speaker-select'), outputs, $('speaker-select').value || 'default', 'Speaker');
  }

  function fill(select, devices, selected, what) {
    select.replaceChildren(...devices.map((d, i) => {
      const option = document.createElement('option');
      option.value = d.deviceId;
      option.textContent = d.label || what + ' ' + (i + 1);
      return option;
    }));
    if (selected && devices.some((d) => d.deviceId === selected)) select.value = selected;
    select.disabled = devices.length < 2;
  }

  // Opens `deviceId` for `kind` and puts its track everywhere the old one was: the
  // preview, and every peer connection's sender (replaceTrack, so no renegotiation).
  async function switchDevice(kind, deviceId) {
    if (!localStream) return;
    const old = tracksOf(kind)[0];
    if (old && old.getSettings().deviceId === deviceId) return;
    const enabled = old ? old.enabled : true;
    const open = async () => {
      const stream = await navigator.mediaDevices.getUserMedia({ [kind]: { deviceId: { exact: deviceId } } });
      return kind === 'audio' ? stream.getAudioTracks()[0] : stream.getVideoTracks()[0];
    };
    let track;
    try {
      try {
        track = await open();
      } catch (err) {
        // Some devices cannot be open twice at once: let go of the old one and try again.
        if (!old || err.name !== 'NotReadableError') throw err;
        old.stop();
        track = await open();
      }
    } catch (err) {
      showError('Could not switch to that ' + (kind === 'audio' ? 'microphone' : 'camera') +
        ' (' + (err && err.name) + ').');
      return;
    }
    track.enabled = enabled;
    // The new track goes out before the old one stops, so the others see no gap.
    await Promise.all([...state.peers.values()].map((peer) => {
      const sender = peer.senders[kind];
      return sender ? sender.replaceTrack(track).catch((err) => note(peer, 'replaceTrack failed: ' + err))
        : null;
    }));
    if (old) {
      old.stop();
      localStream.removeTrack(old);
    }
    localStream.addTrack(track);
    if (kind === 'audio') startMeter();
    else {
      $('local-video').srcObject = localStream;
      play($('local-video'));
    }
    state.switches += 1;
    updateToggles();
    listDevices();
  }

  function setSpeaker(deviceId) {
    document.querySelectorAll('.tile.remote video').forEach((video) => {
      if (video.setSinkId) video.setSinkId(deviceId).catch(() => {});
    });
  }

  let audioContext = null;
  let meterSource = null;
  let meterTimer = null;

  function resumeAudio() {
    if (audioContext && audioContext.state === 'suspended') audioContext.resume().catch(() => {});
  }

  // The microphone's level: the RMS of the analyser's waveform, ten times a second
  // (a timer, not animation frames, which background tabs do not get).
  function startMeter() {
    const track = tracksOf('audio')[0];
    if (!track || !window.AudioContext) return;
    try {
      if (!audioContext) audioContext = new AudioContext();
      if (meterSource) meterSource.disconnect();
      meterSource = audioContext.createMediaStreamSource(new MediaStream([track]));
      const analyser = audioContext.createAnalyser();
      analyser.fftSize = 512;
      meterSource.connect(analyser);
      const samples = new Float32Array(analyser.fftSize);
      clearInterval(meterTimer);
      meterTimer = setInterval(() => {
        analyser.getFloatTimeDomainData(samples);
        let sum = 0;
        for (const s of samples) sum += s * s;
        const live = track.enabled && track.readyState === 'live';
        const level = live ? Math.min(1, Math.sqrt(sum / samples.length) * 4) : 0;
        state.micLevel = Math.round(level * 1000) / 1000;
        state.meterTicks += 1;
        $('mic-meter').value = level;
      }, 100);
    } catch (err) {
      console.warn('no microphone level', err);
    }
  }

  // ---------- screen sharing ----------

  async function startSharing() {
    try {
      screenStream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    } catch (err) {
      screenStream = null;
      if (err && err.name !== 'NotAllowedError') {
        showError('Screen sharing is not available here (' + (err && err.name) + ').');
      }
      return;
    }
    const track = screenStream.getVideoTracks()[0];
    // The browser's own "Stop sharing" ends the track.
    track.addEventListener('ended', stopSharing);
    state.sharing = true;
    $('share-btn').setAttribute('aria-pressed', 'true');
    $('share-btn').textContent = 'Stop sharing';
    showScreenTile();
    for (const peer of state.peers.values()) addScreen(peer);
    setStatus('You are sharing your screen');
  }

  function stopSharing() {
    if (!screenStream) return;
    const stream = screenStream;
    screenStream = null;
    stream.getTracks().forEach((t) => t.stop());
    state.sharing = false;
    $('share-btn').setAttribute('aria-pressed', 'false');
    $('share-btn').textContent = 'Share screen';
    const tile = document.querySelector('.tile.local-screen');
    if (tile) tile.remove();
    for (const peer of state.peers.values()) {
      sendSignal(peer, { media: { screen: null } });
      if (peer.senders.screen) {
        try { peer.pc.removeTrack(peer.senders.screen); } catch { /* closed */ }
        peer.senders.screen = null;
      }
    }
    setStatus('You stopped sharing your screen');
  }

  function showScreenTile() {
    const fig = document.createElement('figure');
    fig.className = 'tile local-screen';
    const video = document.createElement('video');
    video.autoplay = true;
    video.playsInline = true;
    video.muted = true;
    video.srcObject = screenStream;
    const caption = document.createElement('figcaption');
    caption.textContent = 'Your screen';
    fig.append(video, caption);
    $('videos').append(fig);
    play(video);
  }

  // Tells the peer which stream is the screen, then adds its track: the signals keep
  // their order, so the peer knows before the track arrives.
  function addScreen(peer) {
    if (!screenStream || peer.senders.screen) return;
    sendSignal(peer, { media: { screen: screenStream.id } });
    peer.senders.screen = peer.pc.addTrack(screenStream.getVideoTracks()[0], screenStream);
  }

  // ---------- copy link ----------

  async function copyLink() {
    const link = $('room-link');
    try {
      await navigator.clipboard.writeText(link.value);
      state.linkCopied = 'clipboard';
      setStatus('Link copied');
    } catch {
      // No clipboard access (permissions, an old browser): select the link for the person.
      link.focus();
      link.select();
      state.linkCopied = 'selected';
      setStatus('Link selected: press Ctrl+C (⌘C) to copy it');
    }
  }

  // ---------- signaling ----------

  function connect() {
    reconnectTimer = null;
    // Left while a reconnection was pending: stay out.
    if (hungUp) return;
    state.phase = 'joining';
    if (!state.reconnecting) setStatus('Connecting to server…');
    ws = new WebSocket(wsUrl());
    ws.onopen = () => {
      if (resumeToken && Date.now() - droppedAt < RESUME_FOR_MS) {
        ws.send(JSON.stringify({ type: 'resume', token: resumeToken, last_seq: lastSeq }));
        return;
      }
      if (resumeToken) {
        // Too late to take the place back: the calls start over with a new membership.
        giveUpPlace();
      }
      sendJoin();
    };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (typeof msg.seq === 'number') received(msg.seq);
      onServerMessage(msg);
    };
    ws.onclose = (ev) => {
      clearTimeout(ackTimer);
      ackTimer = null;
      const resumable = resumeToken && !hungUp
        && (state.phase === 'joined' || state.reconnecting)
        && !(ev.code === 1008 && ev.reason === 'closed by the server operator');
      if (resumable) {
        // The calls go on (media does not need this socket) while a new one takes the
        // place back; the room sees nothing. Attempts that fail keep trying, with the
        // backoff, until the place is surely gone.
        if (state.phase === 'joined') droppedAt = Date.now();
      } else {
        resumeToken = null;
        dropPeers();
      }
      if (hungUp || state.phase === 'error') return;
      // Removed by the operator (a kick, or the room closed): not a network failure, so
      // the page does not come back on its own.
      if (ev.code === 1008 && ev.reason === 'closed by the server operator') {
        state.phase = 'ended';
        setStatus('Removed from the call by the server operator');
        endControls();
        return;
      }
      state.phase = 'joining';
      state.reconnecting = true;
      $('banner').hidden = false;
      setStatus('Disconnected from server' + (ev.reason ? ' (' + ev.reason + ')' : '') + '; reconnecting…');
      // A resume is tried at once, then with the usual backoff.
      reconnectTimer = setTimeout(connect, resumable && reconnectDelay === 1000 ? 0 : reconnectDelay);
      reconnectDelay = Math.min(reconnectDelay * 2, 10000);
    };
  }

  function sendJoin() {
    state.reconnecting = false;
    send({ type: 'join', room: state.room, name: myName() || undefined, token: TOKEN || undefined, resume: true });
  }

  // The old place is given up: until the server ends it, the room may still list the old
  // peer id, which is this page's own former self and no one to call.
  function giveUpPlace() {
    resumeToken = null;
    unsent = [];
    if (state.peerId) formerSelves.add(state.peerId);
    dropPeers();
  }

  function dropPeers() {
    for (const id of [...state.peers.keys()]) removePeer(id);
    state.names.clear();
    pendingMedia.clear();
    renderPeople();
  }

  // A numbered message arrived: acknowledged within a second, so the server can forget it.
  function received(seq) {
    lastSeq = seq;
    if (ackTimer === null) {
      ackTimer = setTimeout(() => {
        ackTimer = null;
        send({ type: 'ack', seq: lastSeq });
      }, 1000);
    }
  }

  function wsUrl() {
    return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
  }

  function send(msg) {
    if (ws && ws.readyState === WebSocket.OPEN && !state.reconnecting) {
      ws.send(JSON.stringify(msg));
    } else if (msg.type === 'signal' && resumeToken) {
      // The place is being taken back: the offer or candidate goes once it is.
      unsent.push(msg);
    }
  }

  function onServerMessage(msg) {
    switch (msg.type) {
      case 'welcome':
        clearErrorUnlessMedia();
        reconnectDelay = 1000;
        if (joinedOnce) state.rejoins += 1;
        joinedOnce = true;
        state.reconnecting = false;
        $('banner').hidden = true;
        state.phase = 'joined';
        state.peerId = msg.peer_id;
        state.iceServers = msg.ice_servers || [];
        state.roles = msg.roles || { publish: true, kick: false };
        resumeToken = msg.resume_token || null;
        lastSeq = 0;
        if (!state.roles.publish) receiveOnly();
        state.names.clear();
        for (const p of msg.peers) {
          if (formerSelves.has(p.id)) continue;
          state.names.set(p.id, p.name || null);
          addPeer(p);
        }
        renderPeople();
        updateStatus();
        break;
      case 'resumed': {
        // The same place: the calls go on; the network may have changed, so ICE restarts.
        reconnectDelay = 1000;
        state.resumes += 1;
        state.reconnecting = false;
        $('banner').hidden = true;
        state.phase = 'joined';
        state.iceServers = msg.ice_servers || [];
        resumeToken = msg.resume_token;
        const present = new Set(msg.peers.map((p) => p.id));
        for (const id of [...state.peers.keys()]) if (!present.has(id)) removePeer(id);
        for (const p of msg.peers) state.names.set(p.id, p.name || null);
        for (const msg of unsent.splice(0)) send(msg);
        for (const peer of state.peers.values()) {
          try { peer.pc.setConfiguration(rtcConfig()); } catch { /* keep old */ }
          restartIce(peer);
        }
        renderPeople();
        updateStatus();
        break;
      }
      case 'ice_servers':
        // Fresh credentials before the old ones expire.
        state.iceServers = msg.ice_servers || [];
        for (const peer of state.peers.values()) {
          try { peer.pc.setConfiguration(rtcConfig()); } catch { /* keep old */ }
        }
        break;
      case 'peer_joined':
        if (formerSelves.has(msg.peer.id)) break;
        // The newcomer makes the first offer; the connection is created when it arrives.
        // Offering from both sides at once (glare) is legal, but Chromium can stall ICE
        // gathering after the implicit rollback it causes.
        state.names.set(msg.peer.id, msg.peer.name || null);
        renderPeople();
        setStatus(displayName(msg.peer.id, msg.peer.name) + ' joined');
        break;
      case 'peer_left': {
        if (formerSelves.delete(msg.peer_id)) break;
        const name = displayName(msg.peer_id, state.names.get(msg.peer_id));
        state.names.delete(msg.peer_id);
        pendingMedia.delete(msg.peer_id);
        removePeer(msg.peer_id);
        renderPeople();
        setStatus(name + ' left');
        break;
      }
      case 'signal':
        onSignal(msg.from, msg.payload);
        break;
      case 'error':
        if (msg.code === 'resume_failed') {
          // The place is gone: join anew, as a new member.
          giveUpPlace();
          sendJoin();
          break;
        }
        if (msg.code === 'room_full' || msg.code === 'bad_room' || msg.code === 'too_many_rooms'
            || msg.code === 'room_closed' || msg.code === 'kicked' || msg.code === 'bad_name'
            || TOKEN_ERRORS[msg.code]) {
          state.phase = 'error';
          state.reconnecting = false;
          $('banner').hidden = true;
          setStatus('Not joined');
          showError(msg.code === 'room_full'
            ? 'This room is full. Try again later or choose another room.'
            : TOKEN_ERRORS[msg.code] || msg.message);
          endControls();
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

  function displayName(id, name) {
    return name || 'Guest ' + id.slice(0, 4);
  }

  function renderPeople() {
    const list = $('people');
    const me = document.createElement('li');
    me.textContent = (myName() || 'You') + ' (you)';
    const others = [...state.names.entries()].map(([id, name]) => {
      const li = document.createElement('li');
      const peer = state.peers.get(id);
      li.textContent = displayName(id, name) + (peer && peer.remoteMic === false ? ' (muted)' : '');
      li.dataset.peer = id;
      return li;
    });
    list.replaceChildren(me, ...others);
    $('people-count').textContent = '(' + (others.length + 1) + ')';
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
    return { iceServers: fewerUrls(iceServers), iceTransportPolicy: RELAY ? 'relay' : 'all' };
  }

  // Firefox warns (a console error) with five or more ICE server URLs, which this server's
  // own list reaches with TURN over TLS on two ports. A STUN URL on the host and port of a
  // TURN/UDP URL is then left out: the TURN allocation reports the same mapped address.
  function fewerUrls(iceServers) {
    const count = iceServers.reduce((n, s) => n + [].concat(s.urls).length, 0);
    if (count < 5) return iceServers;
    const at = (url) => url.replace(/^[a-z]+:/, '').split('?')[0];
    const turnUdp = new Set(iceServers.flatMap((s) => [].concat(s.urls))
      .filter((u) => u.startsWith('turn:') && !/transport=tcp/.test(u)).map(at));
    return iceServers
      .map((s) => Object.assign({}, s, {
        urls: [].concat(s.urls).filter((u) => !(u.startsWith('stun:') && turnUdp.has(at(u)))),
      }))
      .filter((s) => s.urls.length > 0);
  }

  function addPeer(info) {
    if (state.peers.has(info.id)) return state.peers.get(info.id);
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
      screenTile: null,
      remoteScreenId: null,  // the id of the peer's screen stream, from its `media` signal
      remoteCamera: null,    // whether its camera and microphone are on, from the same
      remoteMic: null,
      remoteStreams: new Map(), // stream id -> MediaStream
      senders: { audio: null, video: null, screen: null },
      stats: { candidateType: null, relayProtocol: null, framesDecoded: 0 },
      history: [],           // the last negotiation steps, for debugging
      candidates: { sent: 0, received: 0, failed: 0 },
      everConnected: false,
      everFailed: false,
    };
    state.peers.set(info.id, peer);
    if (pendingMedia.has(info.id)) {
      onMedia(peer, pendingMedia.get(info.id));
      pendingMedia.delete(info.id);
    }

    pc.onnegotiationneeded = async () => {
      note(peer, 'negotiationneeded');
      try {
        peer.makingOffer = true;
        await pc.setLocalDescription();
        sendSignal(peer, { description: pc.localDescription });
      } catch (err) {
        note(peer, 'negotiation failed: ' + err);
        console.error('negotiation failed', err);
      } finally {
        peer.makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      peer.candidates.sent += 1;
      sendSignal(peer, { candidate: candidate ? candidate.toJSON() : null });
    };
    pc.ontrack = ({ track, streams }) => {
      const stream = streams[0] || new MediaStream([track]);
      peer.remoteStreams.set(stream.id, stream);
      stream.onremovetrack = () => {
        if (stream.getTracks().length === 0 && stream.id === peer.remoteScreenId) dropScreen(peer);
      };
      placeStream(peer, stream);
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
      sendSignal(peer, { media: mediaState() });
      for (const track of localStream.getTracks()) {
        peer.senders[track.kind] = pc.addTrack(track, localStream);
      }
    } else {
      pc.addTransceiver('audio', { direction: 'recvonly' });
      pc.addTransceiver('video', { direction: 'recvonly' });
    }
    addScreen(peer);
    return peer;
  }

  // Shows a remote stream in the peer's main tile, or in a tile of its own when the
  // peer said it is its screen.
  function placeStream(peer, stream) {
    if (stream.id === peer.remoteScreenId) {
      if (!peer.screenTile) peer.screenTile = makeTile({ id: peer.id, name: peer.name }, true);
      const video = peer.screenTile.querySelector('video');
      if (video.srcObject !== stream) {
        video.srcObject = stream;
        play(video, peer.screenTile);
      }
    } else {
      const video = peer.tile.querySelector('video');
      if (video.srcObject !== stream) {
        video.srcObject = stream;
        play(video, peer.tile);
      }
    }
  }

  function dropScreen(peer) {
    if (peer.screenTile) {
      peer.screenTile.remove();
      peer.screenTile = null;
    }
  }

  function onMedia(peer, media) {
    if (typeof media.camera === 'boolean') {
      peer.remoteCamera = media.camera;
      peer.tile.classList.toggle('video-off', !media.camera);
    }
    if (typeof media.mic === 'boolean') {
      peer.remoteMic = media.mic;
      peer.tile.querySelector('figcaption').textContent =
        displayName(peer.id, peer.name) + (media.mic ? '' : ' (muted)');
      renderPeople();
    }
    if (!('screen' in media)) return;
    const before = peer.remoteScreenId;
    peer.remoteScreenId = media.screen || null;
    if (before && before !== peer.remoteScreenId) {
      dropScreen(peer);
      peer.remoteStreams.delete(before);
    }
    const stream = peer.remoteScreenId && peer.remoteStreams.get(peer.remoteScreenId);
    if (!stream) return;
    placeStream(peer, stream);
    // The screen came before this signal and took the main tile: give it back.
    const main = peer.tile.querySelector('video');
    if (main.srcObject === stream) {
      const other = [...peer.remoteStreams.values()].find((s) => s !== stream);
      main.srcObject = other || null;
      if (other) play(main, peer.tile);
    }
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
    // A newcomer announces its media before its first offer; the connection is made when
    // the offer comes (making it now would offer from both sides at once).
    if (!state.peers.has(from) && payload && payload.media) {
      pendingMedia.set(from, Object.assign(pendingMedia.get(from) || {}, payload.media));
      return;
    }
    // A connection starts with the other's offer; anything else from a peer without one
    // (a candidate after it left, say) would make a ghost tile.
    const isOffer = payload && payload.description && payload.description.type === 'offer';
    if (!state.peers.has(from) && !isOffer) return;
    const peer = state.peers.get(from) || addPeer({ id: from, name: state.names.get(from) });
    // Handle one signal at a time per peer, in arrival order.
    peer.queue = peer.queue.then(() => handleSignal(peer, payload)).catch((err) => {
      note(peer, 'signal failed: ' + err);
      console.error('signal failed', err);
    });
  }

  // One side of a pair restarts ICE: the one that is the DTLS server now (it offered
  // last time). The other's offer would be answered `a=setup:active` (browsers' answers
  // always are), changing the DTLS roles, which Chromium refuses ("Failed to set SSL
  // role"); both at once would be glare. The side that is not asks the other.
  function restartIce(peer) {
    state.iceRestarts += 1;
    if (dtlsServer(peer.pc)) peer.pc.restartIce();
    else send({ type: 'signal', to: peer.id, payload: { restartIce: true } });
  }

  function dtlsServer(pc) {
    const sdp = pc.currentLocalDescription ? pc.currentLocalDescription.sdp : '';
    return /a=setup:(passive|actpass)/.test(sdp);
  }

  async function handleSignal(peer, payload) {
    const pc = peer.pc;
    if (payload && payload.restartIce) {
      if (dtlsServer(pc)) pc.restartIce();
      return;
    }
    if (payload && payload.media) {
      onMedia(peer, payload.media);
    } else if (payload && payload.description) {
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
    dropScreen(peer);
    state.peers.delete(id);
  }

  function makeTile(info, screen) {
    const fig = document.createElement('figure');
    fig.className = screen ? 'tile remote screen' : 'tile remote';
    fig.dataset.peer = info.id;
    const video = document.createElement('video');
    video.autoplay = true;
    video.playsInline = true;
    const sink = $('speaker-select').value;
    if (sink && video.setSinkId && !$('speaker-row').hidden) video.setSinkId(sink).catch(() => {});
    const caption = document.createElement('figcaption');
    const name = displayName(info.id, info.name);
    caption.textContent = screen ? name + '’s screen' : name;
    fig.append(video, caption);
    if (!screen) {
      const quality = document.createElement('span');
      quality.className = 'quality';
      quality.textContent = 'connecting…';
      fig.append(quality);
    }
    $('videos').append(fig);
    return fig;
  }

  // Autoplay with sound may be refused before any user gesture: play muted and offer unmute.
  function play(video, tile) {
    video.play().catch((err) => {
      // A new srcObject interrupts the previous play(): nothing to do.
      if (err && err.name === 'AbortError') return;
      if (!tile || video.muted) return;
      video.muted = true;
      video.play().catch(() => {});
      if (tile.querySelector('.unmute')) return;
      const btn = document.createElement('button');
      btn.type = 'button';
      btn.className = 'unmute';
      btn.textContent = 'Unmute';
      btn.setAttribute('aria-label', 'Unmute ' + tile.querySelector('figcaption').textContent);
      btn.onclick = () => { video.muted = false; btn.remove(); };
      tile.append(btn);
    });
  }

  // The token lets this page only receive: its camera and microphone are released, and the
  // connections it makes or answers are receive-only.
  let receivingOnly = false;
  function receiveOnly() {
    if (receivingOnly) return;
    receivingOnly = true;
    if (localStream) localStream.getTracks().forEach((t) => t.stop());
    localStream = null;
    state.localMedia = false;
    clearInterval(meterTimer);
    state.micLevel = 0;
    $('local-video').srcObject = null;
    $('share-btn').hidden = true;
    $('local-caption').textContent += ' · watching';
    updateToggles();
  }

  function endControls() {
    if (localStream) localStream.getTracks().forEach((t) => t.stop());
    stopSharing();
    clearInterval(meterTimer);
    state.micLevel = 0;
    $('hangup-btn').disabled = true;
    $('share-btn').disabled = true;
    $('rejoin-link').hidden = false;
  }

  function hangUp() {
    hungUp = true;
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    if ((!ws || ws.readyState !== WebSocket.OPEN) && resumeToken) {
      // The socket is down and the room still holds the place: take it back to leave it,
      // so the others see the leave now rather than when the place times out.
      const token = resumeToken;
      const bye = new WebSocket(wsUrl());
      bye.onopen = () => {
        bye.send(JSON.stringify({ type: 'resume', token, last_seq: lastSeq }));
        bye.send(JSON.stringify({ type: 'leave' }));
        bye.close(1000);
      };
    }
    resumeToken = null;
    send({ type: 'leave' });
    stopSharing();
    for (const id of [...state.peers.keys()]) removePeer(id);
    if (ws) ws.close(1000);
    state.phase = 'ended';
    state.reconnecting = false;
    $('banner').hidden = true;
    setStatus('Call ended');
    endControls();
  }

  // ---------- status and connection quality ----------

  async function refreshStats() {
    for (const peer of state.peers.values()) {
      try {
        const report = await peer.pc.getStats();
        let pairId = null;
        let selected = null;
        let framesDecoded = 0;
        let lost = 0;
        let received = 0;
        const screenTrack = peer.screenTile && peer.screenTile.querySelector('video').srcObject;
        const screenId = screenTrack && screenTrack.getVideoTracks()[0] ? screenTrack.getVideoTracks()[0].id : null;
        let screenFrames = 0;
        report.forEach((s) => {
          if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
          // Firefox has no transport stats: its selected pair says so itself.
          if (s.type === 'candidate-pair' && s.selected) selected = s;
          if (s.type === 'inbound-rtp') {
            lost += Math.max(0, s.packetsLost || 0);
            received += s.packetsReceived || 0;
            if (s.kind === 'video') {
              if (screenId && s.trackIdentifier === screenId) screenFrames += s.framesDecoded || 0;
              else framesDecoded += s.framesDecoded || 0;
            }
          }
        });
        const pair = (pairId && report.get(pairId)) || selected;
        const local = pair && report.get(pair.localCandidateId);
        const remote = pair && report.get(pair.remoteCandidateId);
        let rtt = null;
        if (pair && typeof pair.currentRoundTripTime === 'number') {
          rtt = pair.currentRoundTripTime;
        } else if (pair && pair.responsesReceived > 0 && typeof pair.totalRoundTripTime === 'number') {
          rtt = pair.totalRoundTripTime / pair.responsesReceived;
        }
        peer.stats = {
          candidateType: local ? local.candidateType : null,
          remoteCandidateType: remote ? remote.candidateType : null,
          relayProtocol: local && local.relayProtocol ? local.relayProtocol : null,
          relayUrl: local && local.url ? local.url : null,
          framesDecoded,
          screenFramesDecoded: screenFrames,
          rtt: rtt === null ? null : Math.round(rtt * 1000),
          packetLoss: received + lost > 0 ? Math.round((lost / (received + lost)) * 1000) / 10 : null,
        };
        showQuality(peer);
      } catch { /* the connection closed meanwhile */ }
    }
    updateStatus();
  }

  function pathOf(stats) {
    if (!stats.candidateType) return null;
    return stats.candidateType + (stats.relayProtocol ? '/' + stats.relayProtocol : '');
  }

  function showQuality(peer) {
    const el = peer.tile.querySelector('.quality');
    if (!el) return;
    const s = peer.stats;
    const connection = peer.pc.connectionState;
    if (connection !== 'connected') {
      el.textContent = connection === 'failed' ? 'connection failed' : connection + '…';
      el.dataset.level = 'bad';
      return;
    }
    const parts = [];
    if (s.rtt !== null) parts.push(s.rtt + ' ms');
    if (s.packetLoss !== null) parts.push(s.packetLoss.toFixed(1) + '% loss');
    if (pathOf(s)) parts.push(pathOf(s));
    el.textContent = parts.join(' · ');
    const bad = (s.rtt !== null && s.rtt > 400) || (s.packetLoss !== null && s.packetLoss > 5);
    const fair = (s.rtt !== null && s.rtt > 150) || (s.packetLoss !== null && s.packetLoss > 1);
    el.dataset.level = bad ? 'bad' : fair ? 'fair' : 'good';
  }

  function updateStatus() {
    if (state.phase !== 'joined') return;
    const peers = [...state.peers.values()];
    if (peers.length === 0) {
      setStatus(state.names.size > 0 ? 'Connecting…' : 'Waiting for others to join this room…');
      return;
    }
    const connected = peers.filter((p) => p.pc.connectionState === 'connected').length;
    const failed = peers.filter((p) => p.pc.connectionState === 'failed').length;
    const others = peers.length === 1 ? '1 other person' : peers.length + ' other people';
    setStatus(connected === peers.length
      ? 'In the call with ' + others
      : 'Connected to ' + connected + ' of ' + others + (failed ? ' · ' + failed + ' failed, retrying' : '…'));
  }

  window.switchboardState = () => ({
    phase: state.phase,
    room: state.room,
    relay: RELAY,
    peerId: state.peerId,
    error: state.error,
    localMedia: state.localMedia,
    iceServers: state.iceServers,
    status: statusText,
    banner: $('banner') ? !$('banner').hidden : false,
    reconnecting: state.reconnecting,
    reconnectPending: reconnectTimer !== null,
    rejoins: state.rejoins,
    resumes: state.resumes,
    iceRestarts: state.iceRestarts,
    sharing: state.sharing,
    micLevel: state.micLevel,
    meterTicks: state.meterTicks,
    // 'running' once the level is measured; Firefox without an audio output device
    // (headless on a machine with no sound card) keeps every AudioContext 'suspended'.
    meter: audioContext ? audioContext.state : 'none',
    micOn: trackEnabled('audio'),
    camOn: trackEnabled('video'),
    linkCopied: state.linkCopied,
    roles: state.roles,
    switches: state.switches,
    localVideoWidth: $('local-video') ? $('local-video').videoWidth : 0,
    devices: {
      camera: tracksOf('video').map((t) => t.getSettings().deviceId)[0] || null,
      microphone: tracksOf('audio').map((t) => t.getSettings().deviceId)[0] || null,
      cameras: $('camera-select') ? [...$('camera-select').options].map((o) => o.value) : [],
      microphones: $('mic-select') ? [...$('mic-select').options].map((o) => o.value) : [],
      speakers: $('speaker-row') && !$('speaker-row').hidden
        ? [...$('speaker-select').options].map((o) => o.value) : [],
    },
    people: [...document.querySelectorAll('#people li')].map((li) => li.textContent),
    peers: [...state.peers.values()].map((p) => {
      const video = p.tile.querySelector('video');
      const screen = p.screenTile && p.screenTile.querySelector('video');
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
        path: pathOf(p.stats),
        rtt: p.stats.rtt === undefined ? null : p.stats.rtt,
        packetLoss: p.stats.packetLoss === undefined ? null : p.stats.packetLoss,
        quality: p.tile.querySelector('.quality') ? p.tile.querySelector('.quality').textContent : null,
        camera: p.remoteCamera,
        mic: p.remoteMic,
        framesDecoded: p.stats.framesDecoded,
        videoWidth: video.videoWidth,
        videoHeight: video.videoHeight,
        screen: screen ? {
          framesDecoded: p.stats.screenFramesDecoded || 0,
          videoWidth: screen.videoWidth,
          videoHeight: screen.videoHeight,
        } : null,
        history: p.history.slice(),
      };
    }),
  });

  // ---------- start ----------

  const match = location.pathname.match(/^\/r\/([^/]+)\/?$/);
  if (match) {
    const name = decodeURIComponent(match[1]);
    if (ROOM_RE.test(name)) {
      room(name);
    } else {
      showError('Invalid room name: use 1 to 64 letters, digits, "_" or "-".');
    }
  } else {
    home();
  }
})();
