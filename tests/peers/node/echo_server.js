// A WebSocket echo server on Node `ws`: text stays text, binary stays binary.
// Prints `LISTENING <port>` once bound to 127.0.0.1 on a port the system picks.
'use strict';
const { WebSocketServer } = require('ws');

const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, maxPayload: 1 << 20 });
wss.on('listening', () => {
  process.stdout.write(`LISTENING ${wss.address().port}\n`);
});
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});
