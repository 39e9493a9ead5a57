// The socket.io room server of the WebRTC codelab ('create or join', two per room,
// 'message' relayed to the other peer), on socket.io 4.
// One change for the benchmark: the codelab broadcasts 'message' to every socket on the
// server (socket.broadcast.emit), which is O(connections) per message; here it goes to
// the sender's room, as Switchboard does, so that the two are compared on equal work.
// PORT (default 8080); CERT and KEY (PEM paths) serve wss:// instead of ws://.
import { readFileSync } from 'node:fs';
import { createServer as createHttps } from 'node:https';
import { createServer as createHttp } from 'node:http';
import { Server } from 'socket.io';

const port = Number(process.env.PORT || 8080);
const host = process.env.HOST || '127.0.0.1';
const server = process.env.CERT
  ? createHttps({ cert: readFileSync(process.env.CERT), key: readFileSync(process.env.KEY) })
  : createHttp();
const io = new Server(server, { cors: { origin: '*' } });

io.sockets.on('connection', (socket) => {
  socket.on('message', (message) => {
    for (const room of socket.rooms) {
      if (room !== socket.id) socket.to(room).emit('message', message);
    }
  });

  socket.on('create or join', (room) => {
    const clientsInRoom = io.sockets.adapter.rooms.get(room);
    const numClients = clientsInRoom ? clientsInRoom.size : 0;
    if (numClients === 0) {
      socket.join(room);
      socket.emit('created', room, socket.id);
    } else if (numClients === 1) {
      io.sockets.in(room).emit('join', room);
      socket.join(room);
      socket.emit('joined', room, socket.id);
      io.sockets.in(room).emit('ready');
    } else {
      socket.emit('full', room);
    }
  });
});

server.listen(port, host);
console.error(`socket.io room server on ${process.env.CERT ? 'https' : 'http'}://${host}:${port}`);
