// Switchboard connectivity check at "/diag": joins a throwaway room for ICE servers with
// fresh credentials, then gathers candidates once per path (host, STUN, and TURN over each
// transport, relay-only) and says which work from this network, and why not when they fail.
// window.switchboardState() exposes the results for tests.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const GATHER_MS = 8000;
  const state = { phase: 'starting', results: [], error: null, summary: null };
  window.switchboardState = () => JSON.parse(JSON.stringify(state));

  function fail(message) {
    state.phase = 'error';
    state.error = message;
    $('error').textContent = message;
    $('error').hidden = false;
    $('summary').textContent = 'The check could not run.';
  }

  // ICE servers with credentials: join a random room, take them from "welcome".
  function iceServers() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
      const room = 'diag-' + Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, '0')).join('');
      ws.onopen = () => ws.send(JSON.stringify({ type: 'join', room }));
      ws.onerror = () => reject(new Error('The signaling socket (/ws) did not open.'));
      ws.onmessage = (ev) => {
        const msg = JSON.parse(ev.data);
        if (msg.type === 'welcome') resolve({ ws, servers: msg.ice_servers || [] });
        else if (msg.type === 'error') reject(new Error('The server refused the check: ' + msg.message));
      };
    });
  }

  function describe(url) {
    const m = /^(stun|turns?):([^?]*?)(?::(\d+))?(?:\?transport=(udp|tcp))?$/.exec(url) || [];
    const scheme = m[1], port = m[3] || (scheme === 'turns' ? '5349' : '3478');
    const transport = scheme === 'turns' ? 'tls' : (m[4] || 'udp');
    return { scheme, host: m[2], port, transport };
  }

  // One gathering with `config`; resolves with the candidates and candidate errors seen,
  // or with the browser's refusal of the configuration (Firefox refuses, for one, a server
  // on a port it blocks, such as 9).
  async function gather(config) {
    let pc;
    try {
      pc = new RTCPeerConnection(config);
    } catch (e) {
      return { candidates: [], errors: [], refused: String(e && e.message || e) };
    }
    const candidates = [], errors = [];
    pc.createDataChannel('diag');
    const done = new Promise((resolve) => {
      const timer = setTimeout(resolve, GATHER_MS);
      pc.onicecandidate = (ev) => {
        if (ev.candidate && ev.candidate.candidate) {
          candidates.push({ type: ev.candidate.type, protocol: ev.candidate.protocol,
            address: ev.candidate.address, port: ev.candidate.port,
            relayProtocol: ev.candidate.relayProtocol || null });
        } else if (!ev.candidate) { clearTimeout(timer); resolve(); }
      };
      pc.onicecandidateerror = (ev) => errors.push({ code: ev.errorCode, text: ev.errorText, url: ev.url });
    });
    await pc.setLocalDescription(await pc.createOffer());
    await done;
    pc.close();
    return { candidates, errors };
  }

  function reasonFor(kind, server, errors) {
    const e = errors.find((x) => x.code);
    if (e && (e.code === 401 || e.code === 431)) return 'the server refused the credential (' + e.code + ' ' + e.text + ')';
    if (e && e.code === 701) {
      return 'no answer from ' + server + ': this network (or a firewall) blocks ' +
        describe(server).transport.toUpperCase() + ' to port ' + describe(server).port;
    }
    if (e) return e.code + ' ' + e.text;
    if (kind === 'srflx') {
      return 'no server-reflexive address: either no NAT lies between this browser and the server ' +
        '(the host address is what the server sees), or UDP to the STUN port is blocked';
    }
    if (kind === 'host') return 'the browser found no local address';
    return 'no relayed address within ' + GATHER_MS / 1000 + ' s from ' + server;
  }

  function show(result) {
    state.results.push(result);
    const row = document.createElement('tr');
    for (const text of [result.label, result.server || '', result.ok ? 'works: ' + result.detail : 'no: ' + result.reason]) {
      const cell = document.createElement('td');
      cell.textContent = text;
      row.append(cell);
    }
    row.className = result.ok ? 'ok' : 'fail';
    $('results').append(row);
  }

  async function probe(label, kind, server, config, match) {
    const { candidates, errors, refused } = await gather(config);
    const found = candidates.filter(match);
    const result = { label, kind, server, ok: found.length > 0, candidates: found, errors };
    if (result.ok) {
      const c = found[0];
      result.detail = c.type + ' ' + (c.address || '(hidden)') + (c.port ? ':' + c.port : '');
    } else if (refused) {
      result.reason = 'this browser refuses the server: ' + refused;
    } else {
      result.reason = reasonFor(kind, server, errors);
    }
    show(result);
    return result;
  }

  async function run() {
    let session;
    try {
      session = await iceServers();
    } catch (e) {
      fail(e.message);
      return;
    }
    state.phase = 'checking';
    const stunUrls = [], turns = [];
    for (const s of session.servers) {
      for (const url of s.urls) {
        if (url.startsWith('stun:')) stunUrls.push(url);
        else turns.push({ url, username: s.username, credential: s.credential });
      }
    }
    await probe('host (direct, same network)', 'host', null, { iceServers: [] }, (c) => c.type === 'host');
    for (const url of stunUrls) {
      await probe('server-reflexive (STUN)', 'srflx', url, { iceServers: [{ urls: url }] }, (c) => c.type === 'srflx');
    }
    for (const t of turns) {
      const d = describe(t.url);
      await probe('relay over ' + d.transport + ' (port ' + d.port + ')', 'relay', t.url,
        { iceServers: [{ urls: t.url, username: t.username, credential: t.credential }], iceTransportPolicy: 'relay' },
        (c) => c.type === 'relay');
    }
    session.ws.send(JSON.stringify({ type: 'leave' }));
    session.ws.close();
    const relays = state.results.filter((r) => r.kind === 'relay');
    const working = relays.filter((r) => r.ok);
    if (relays.length === 0) {
      state.summary = 'This server offers no TURN relay: calls between networks that block each other will fail.';
    } else if (working.length === 0) {
      state.summary = 'No TURN transport works from this network, so calls that need a relay will fail. ' +
        'Reasons are in the table; ask for UDP 3478, or TCP to the TURN/TLS port (443 works in most networks), to be allowed.';
    } else {
      state.summary = 'Calls can be relayed from this network over ' +
        working.map((r) => r.label.replace('relay over ', '')).join(', ') + '.';
    }
    $('summary').textContent = state.summary;
    state.phase = 'done';
  }

  if (!window.RTCPeerConnection) fail('This browser has no WebRTC (RTCPeerConnection).');
  else run().catch((e) => fail(String(e && e.message || e)));
})();
