// A WebSocket server on Node `ws` for the reconnecting client's tests: echoes every message (text stays text, binary
// stays binary) and prints `GOT t:<text>` or `GOT b:<hex>` for it, in the order received (`GOT t:#<length>` or
// `GOT b:#<length>` for one over 256 bytes, so that a reader that falls behind never blocks the server on a full pipe).
// argv[2]: the port to bind on 127.0.0.1 (0 or absent: one the system picks). Prints `LISTENING <port>` once bound.
'use strict';
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 0);
const wss = new WebSocketServer({ host: '127.0.0.1', port, maxPayload: 1 << 20 });
wss.on('listening', () => {
  process.stdout.write(`LISTENING ${wss.address().port}\n`);
});
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    const bytes = Buffer.from(data);
    const kind = isBinary ? 'b' : 't';
    let shown;
    if (bytes.length > 256) {
      shown = `${kind}:#${bytes.length}`;
    } else {
      shown = isBinary ? `b:${bytes.toString('hex')}` : `t:${bytes.toString()}`;
    }
    process.stdout.write(`GOT ${shown}\n`);
    ws.send(data, { binary: isBinary });
  });
});
