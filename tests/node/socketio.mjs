// Drives Switchboard's socket.io dialect with a real socket.io client, as the codelab
// room server's and the video-call app's clients do. SB_URL is the https:// base URL,
// SB_CLIENT picks the client: "sio2" (socket.io-client 2.x) or "sio4" (4.x).
import assert from 'node:assert/strict';

const URL = process.env.SB_URL;
const which = process.env.SB_CLIENT;
const mod = await import(which);
const io = which === 'sio2' ? mod.default : mod.io;

/** Connects and collects every event into per-event queues. */
async function client() {
  const socket = io(URL, { forceNew: true, reconnection: false });
  const queues = new Map();
  const waiters = new Map();
  const push = (event, args) => {
    const w = waiters.get(event);
    if (w && w.length) return w.shift()(args);
    if (!queues.has(event)) queues.set(event, []);
    queues.get(event).push(args);
  };
  if (socket.onAny) {
    socket.onAny((event, ...args) => push(event, args));
  } else {
    // socket.io-client 2.x has no onAny: listen to the events of both tutorials.
    for (const e of ['created', 'join', 'joined', 'ready', 'full', 'message', 'ipaddr', 'log', 'ice_servers',
      'room_created', 'room_joined', 'full_room', 'start_call', 'webrtc_offer', 'webrtc_answer',
      'webrtc_ice_candidate', 'switchboard_error']) {
      socket.on(e, (...args) => push(e, args));
    }
  }
  await new Promise((resolve, reject) => {
    socket.on('connect', resolve);
    socket.on('connect_error', reject);
  });
  return {
    socket,
    id: () => socket.id,
    emit: (...args) => socket.emit(...args),
    close: () => socket.close(),
    next: (event) => new Promise((resolve, reject) => {
      const q = queues.get(event);
      if (q && q.length) return resolve(q.shift());
      const timer = setTimeout(() => reject(new Error(`no '${event}' within 10 s`)), 10000);
      if (!waiters.has(event)) waiters.set(event, []);
      waiters.get(event).push((args) => { clearTimeout(timer); resolve(args); });
    }),
    pending: (event) => (queues.get(event) || []).length,
  };
}

const suffix = `${which}-${process.pid}`;

// ---- Codelab room server ----
const room = `codelab-${suffix}`;
const a = await client();
const b = await client();
const c = await client();

a.emit('create or join', room);
const created = await a.next('created');
assert.equal(created[0], room);
assert.equal(typeof created[1], 'string');
const iceA = (await a.next('ice_servers'))[0];
assert.ok(iceA.ice_servers.some((s) => s.urls.some((u) => u.startsWith('turn:')) && s.credential), 'room-scoped TURN');

b.emit('create or join', room);
assert.deepEqual(await a.next('join'), [room]);
const joined = await b.next('joined');
assert.equal(joined[0], room);
await a.next('ready');
await b.next('ready');

c.emit('create or join', room);
assert.deepEqual(await c.next('full'), [room]);

// A bad room name gets its coded error, and not the tutorial's "full" (which would send the
// page to another room): a later join's answer comes after anything sent before it.
c.emit('create or join', 'no spaces here');
assert.equal((await c.next('switchboard_error'))[0].code, 'bad_room');
c.emit('create or join', `${room}-c`);
assert.equal((await c.next('created'))[0], `${room}-c`);
assert.equal(c.pending('full'), 0, 'a bad room name must not be answered "full"');

// With signaling.socketio_log on, the codelab's server log lines reach the client.
const logLine = await a.next('log');
assert.equal(logLine[0], 'Message from server:');
// ipaddr answers with the configured public address only.
a.emit('ipaddr');
assert.deepEqual(await a.next('ipaddr'), ['127.0.0.1']);

// 'message' reaches the other member of the sender's room, and nobody else.
const other = await client();
other.emit('create or join', `elsewhere-${suffix}`);
await other.next('created');
const offer = { type: 'offer', sdp: 'v=0\r\n' };
a.emit('message', offer);
assert.deepEqual(await b.next('message'), [offer]);
b.emit('message', 'got user media');
assert.deepEqual(await a.next('message'), ['got user media']);
// c (refused) cannot send into the room.
c.emit('message', 'intruder');
b.emit('message', { type: 'answer' });
assert.deepEqual(await a.next('message'), [{ type: 'answer' }]);
assert.equal(a.pending('message'), 0, 'no message from outside the room');
assert.equal(other.pending('message'), 0, 'nothing leaks to another room');

// ---- Video-call app ----
const r2 = `video-${suffix}`;
const e = await client();
const f = await client();
const g = await client();
e.emit('join', r2);
assert.deepEqual(await e.next('room_created'), [r2]);
f.emit('join', r2);
assert.deepEqual(await f.next('room_joined'), [r2]);
g.emit('join', r2);
assert.deepEqual(await g.next('full_room'), [r2]);

f.emit('start_call', r2);
await e.next('start_call');
e.emit('webrtc_offer', { roomId: r2, sdp: { type: 'offer', sdp: 'v=0 offer' } });
assert.deepEqual(await f.next('webrtc_offer'), [{ type: 'offer', sdp: 'v=0 offer' }]);
f.emit('webrtc_answer', { roomId: r2, sdp: { type: 'answer', sdp: 'v=0 answer' } });
assert.deepEqual(await e.next('webrtc_answer'), [{ type: 'answer', sdp: 'v=0 answer' }]);
const ice = { roomId: r2, label: 0, candidate: 'candidate:1 1 udp 1 10.0.0.1 9 typ host' };
e.emit('webrtc_ice_candidate', ice);
assert.deepEqual(await f.next('webrtc_ice_candidate'), [ice]);
// g was refused: what it sends to the room is dropped (the Rust side checks the server log).
g.emit('webrtc_offer', { roomId: r2, sdp: 'intruder' });

// Disconnect cleanup: when e goes, its place in the room is free again.
e.close();
const h = await client();
let placed = false;
for (let i = 0; i < 50 && !placed; i++) {
  h.emit('join', r2);
  const reply = await Promise.race([h.next('room_joined').then(() => 'joined'), h.next('full_room').then(() => 'full')]);
  placed = reply === 'joined';
}
assert.ok(placed, 'the room has space again after a member disconnected');

// A page from a foreign origin is refused, like on /ws.
const evil = io(URL, { forceNew: true, reconnection: false, extraHeaders: { origin: 'https://evil.example' } });
const refusal = await new Promise((resolve) => {
  evil.on('connect', () => resolve('connected'));
  evil.on('connect_error', () => resolve('refused'));
  evil.on('error', () => resolve('refused'));
  setTimeout(() => resolve('no answer'), 10000);
});
assert.equal(refusal, 'refused', 'a foreign origin must be refused');
evil.close();

// An oversized message ends the connection instead of being relayed.
const big = await client();
const gone = new Promise((resolve, reject) => {
  big.socket.on('disconnect', resolve);
  setTimeout(() => reject(new Error('an oversized message did not end the connection within 10 s')), 10000);
});
big.emit('message', 'x'.repeat(Number(process.env.SB_MAX_MESSAGE_BYTES || 65536) * 2));
await gone;

// A client that keeps sending past the rate limit is told so, then disconnected, as on /ws:
// the burst (60) passes, two bursts' worth of strikes are dropped with an error, then it goes.
const flood = await client();
const flooded = new Promise((resolve, reject) => {
  flood.socket.on('disconnect', resolve);
  setTimeout(() => reject(new Error('a flood did not end the connection within 10 s')), 10000);
});
for (let i = 0; i < 400; i++) flood.emit('ipaddr');
await flooded;
assert.equal((await flood.next('switchboard_error'))[0].code, 'rate_limited');

for (const x of [a, b, c, other, f, g, h]) x.close();
console.log(`socket.io dialect with ${which}: OK`);
process.exit(0);
