// A Node `ws` client of connman's WebSocket server, for the WS-01 to WS-04 tests.
// Usage: node ws_server_client.js <url> <mode> [args...]; prints one line per outcome on stdout.
//   too_big <tries> <bytes>  connect, send one binary message of <bytes>, print `CLOSE <code>` when the socket closes
//   echo                     send text then binary, print `TEXT <data>` and `BINARY <hex>` for the echoes, close
//   silent <ms>              send nothing for <ms> (answering pings), print `PINGS <n>` then `OPEN` or `CLOSE <code>`
//   close                    close with 1000 at once, print `CLOSE <code>` once the TCP connection has closed
'use strict';
const WebSocket = require('ws');

const [url, mode, ...args] = process.argv.slice(2);
const say = (line) => process.stdout.write(`${line}\n`);

function once(onOpen) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.on('error', () => {});
    ws.on('open', () => onOpen(ws));
    ws.on('close', (code) => resolve(code));
  });
}

async function main() {
  switch (mode) {
    case 'too_big': {
      const [tries, bytes] = args.map(Number);
      for (let i = 0; i < tries; i++) {
        const code = await once((ws) => ws.send(Buffer.alloc(bytes, 7)));
        say(`CLOSE ${code}`);
      }
      break;
    }
    case 'echo': {
      const code = await once((ws) => {
        let seen = 0;
        ws.on('message', (data, isBinary) => {
          say(isBinary ? `BINARY ${Buffer.from(data).toString('hex')}` : `TEXT ${data.toString()}`);
          if (++seen === 2) ws.close(1000);
        });
        ws.send('héllo');
        ws.send(Buffer.from([1, 2, 3]));
      });
      say(`CLOSE ${code}`);
      break;
    }
    case 'silent': {
      const ms = Number(args[0]);
      let pings = 0;
      let closed = null;
      const ws = new WebSocket(url);
      ws.on('error', () => {});
      ws.on('ping', () => { pings += 1; });
      ws.on('close', (code) => { closed = code; });
      await new Promise((resolve) => ws.on('open', resolve));
      await new Promise((resolve) => setTimeout(resolve, ms));
      say(`PINGS ${pings}`);
      say(closed === null ? 'OPEN' : `CLOSE ${closed}`);
      ws.terminate();
      break;
    }
    case 'close': {
      const code = await once((ws) => ws.close(1000, 'bye'));
      say(`CLOSE ${code}`);
      break;
    }
    default:
      say(`UNKNOWN ${mode}`);
  }
}

main().then(() => process.exit(0));
