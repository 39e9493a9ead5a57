// The plain-WebSocket tutorial server (login / offer / answer / candidate / leave),
// as its clients expect it: JSON in, JSON out, users addressed by login name.
// PORT (default 9090); CERT and KEY (PEM paths) serve wss:// instead of ws://.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import { WebSocketServer } from 'ws';

const port = Number(process.env.PORT || 9090);
const host = process.env.HOST || '127.0.0.1';
let wss;
if (process.env.CERT) {
  const server = createServer({ cert: readFileSync(process.env.CERT), key: readFileSync(process.env.KEY) });
  wss = new WebSocketServer({ server });
  server.listen(port, host);
} else {
  wss = new WebSocketServer({ port, host });
}

const users = {};

function sendTo(connection, message) {
  connection.send(JSON.stringify(message));
}

wss.on('connection', (connection) => {
  connection.on('message', (message) => {
    let data;
    try {
      data = JSON.parse(message);
    } catch {
      data = {};
    }
    switch (data.type) {
      case 'login':
        if (users[data.name]) {
          sendTo(connection, { type: 'login', success: false });
        } else {
          users[data.name] = connection;
          connection.name = data.name;
          sendTo(connection, { type: 'login', success: true });
        }
        break;
      case 'offer': {
        const conn = users[data.name];
        if (conn != null) {
          connection.otherName = data.name;
          sendTo(conn, { type: 'offer', offer: data.offer, name: connection.name });
        }
        break;
      }
      case 'answer': {
        const conn = users[data.name];
        if (conn != null) {
          connection.otherName = data.name;
          sendTo(conn, { type: 'answer', answer: data.answer });
        }
        break;
      }
      case 'candidate': {
        const conn = users[data.name];
        if (conn != null) {
          sendTo(conn, { type: 'candidate', candidate: data.candidate });
        }
        break;
      }
      case 'leave': {
        const conn = users[data.name];
        if (conn != null) {
          conn.otherName = null;
          sendTo(conn, { type: 'leave' });
        }
        break;
      }
      default:
        sendTo(connection, { type: 'error', message: 'Command not found: ' + data.type });
    }
  });
  connection.on('close', () => {
    if (connection.name) {
      delete users[connection.name];
      if (connection.otherName) {
        const conn = users[connection.otherName];
        if (conn != null) {
          conn.otherName = null;
          sendTo(conn, { type: 'leave' });
        }
      }
    }
  });
});

console.error(`ws tutorial server on ${process.env.CERT ? 'wss' : 'ws'}://${host}:${port}`);
