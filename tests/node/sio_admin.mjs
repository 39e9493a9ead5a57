// A socket.io client (the codelab's "create or join") that waits to be disconnected by the
// server: prints "joined" once in its room, then "disconnected: <reason>" and exits 0.
// SB_URL is the https:// base URL, SB_ROOM the room.
import { io } from 'sio4';

const socket = io(process.env.SB_URL, { forceNew: true, reconnection: false });
const timer = setTimeout(() => {
  console.log('timed out waiting to be disconnected');
  process.exit(1);
}, 30000);
socket.on('created', () => console.log('joined'));
socket.on('connect', () => socket.emit('create or join', process.env.SB_ROOM));
socket.on('disconnect', (reason) => {
  console.log('disconnected: ' + reason);
  clearTimeout(timer);
  process.exit(0);
});
