// Drives Switchboard's plain-WebSocket dialect with the npm `ws` client, the way the
// login/offer/answer tutorial's clients do. SB_URL is the wss:// URL of the dialect;
// NODE_EXTRA_CA_CERTS trusts the server's self-signed certificate.
import assert from 'node:assert/strict';
import WebSocket from 'ws';

const URL = process.env.SB_URL;
const MAX = Number(process.env.SB_MAX_MESSAGE_BYTES || 65536);

/** A client with a queue of received JSON messages. */
function client() {
  const ws = new WebSocket(URL);
  const inbox = [];
  const waiters = [];
  ws.on('message', (data) => {
    const msg = JSON.parse(data.toString());
    const w = waiters.shift();
    if (w) w(msg); else inbox.push(msg);
  });
  const closed = new Promise((resolve) => {
    ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }));
  });
  return {
    closed,
    open: () => new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); }),
    send: (msg) => ws.send(typeof msg === 'string' ? msg : JSON.stringify(msg)),
    close: () => ws.close(),
    next: () => new Promise((resolve, reject) => {
      if (inbox.length) return resolve(inbox.shift());
      const timer = setTimeout(() => reject(new Error('no message within 10 s')), 10000);
      waiters.push((m) => { clearTimeout(timer); resolve(m); });
    }),
  };
}

async function loggedIn(name) {
  const c = client();
  await c.open();
  c.send({ type: 'login', name });
  const reply = await c.next();
  assert.equal(reply.type, 'login');
  assert.equal(reply.success, true, `login as ${name}`);
  return [c, reply];
}

// Login, with TURN servers as an extra field; a taken name is refused.
const [alice, aliceLogin] = await loggedIn('alice');
assert.ok(aliceLogin.ice_servers.some((s) => s.urls.some((u) => u.startsWith('turn:'))), 'login carries TURN');
assert.ok(aliceLogin.ice_servers.some((s) => s.username && s.credential), 'TURN entry has a credential');
const [bob] = await loggedIn('bob');
const impostor = client();
await impostor.open();
impostor.send({ type: 'login', name: 'bob' });
assert.deepEqual(await impostor.next(), { type: 'login', success: false });

// A full negotiation: offer, answer, candidates both ways.
const offer = { type: 'offer', sdp: 'v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n' };
alice.send({ type: 'offer', name: 'bob', offer });
assert.deepEqual(await bob.next(), { type: 'offer', offer, name: 'alice' });
const answer = { type: 'answer', sdp: 'v=0\r\n' };
bob.send({ type: 'answer', name: 'alice', answer });
assert.deepEqual(await alice.next(), { type: 'answer', answer });
const candidate = { candidate: 'candidate:1 1 udp 2122260223 10.0.0.1 54321 typ host', sdpMid: '0', sdpMLineIndex: 0 };
alice.send({ type: 'candidate', name: 'bob', candidate });
assert.deepEqual(await bob.next(), { type: 'candidate', candidate });
bob.send({ type: 'candidate', name: 'alice', candidate });
assert.deepEqual(await alice.next(), { type: 'candidate', candidate });

// Names cannot be probed: an offer to nobody goes nowhere, unanswered, as in the tutorial
// (the next answer alice gets is to her next message)...
alice.send({ type: 'offer', name: 'nobody', offer });
alice.send({ type: 'dance' });
assert.deepEqual(await alice.next(), { type: 'error', message: 'Command not found: dance' });
// ...and an answer, candidate or leave goes only where an offer went between the two, with
// the same refusal for an unknown name as for a known one: nobody answers someone else's offer.
alice.send({ type: 'leave', name: 'nobody' });
assert.equal((await alice.next()).code, 'unknown_name');
const [carol] = await loggedIn('carol');
carol.send({ type: 'answer', name: 'alice', answer });
assert.equal((await carol.next()).code, 'unknown_name');
carol.send({ type: 'candidate', name: 'bob', candidate });
assert.equal((await carol.next()).code, 'unknown_name');

// Unknown type, invalid JSON: answered, connection kept.
alice.send({ type: 'dance' });
assert.deepEqual(await alice.next(), { type: 'error', message: 'Command not found: dance' });
alice.send('{not json');
const bad = await alice.next();
assert.equal(bad.type, 'error');
assert.equal(bad.code, 'bad_request');

// Leave tells the other side.
alice.send({ type: 'leave', name: 'bob' });
assert.deepEqual(await bob.next(), { type: 'leave' });

// Disconnect cleanup: bob's partner is alice (he answered her); when bob goes, alice
// hears "leave" and bob's name is free again.
bob.close();
assert.deepEqual(await alice.next(), { type: 'leave' });
const [bob2] = await loggedIn('bob');

// Messages must come from a logged-in user.
impostor.send({ type: 'offer', name: 'alice', offer });
assert.equal((await impostor.next()).code, 'not_logged_in');

// An oversized message is refused and the socket closed with 1009.
alice.send({ type: 'candidate', name: 'bob', candidate: 'x'.repeat(MAX + 1) });
assert.equal((await alice.next()).code, 'message_too_large');
assert.equal((await alice.closed).code, 1009);
// bob2 (partner of nobody) is unaffected.
bob2.send({ type: 'dance' });
assert.equal((await bob2.next()).message, 'Command not found: dance');

bob2.close();
impostor.close();
console.log('plain-WebSocket dialect: OK');
process.exit(0);
