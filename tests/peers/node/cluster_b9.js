// A socket.io 4.8 node for benchmark B9: nodes share one redis-server through @socket.io/redis-adapter 8.3
// (pub/sub, `pubsub`) or @socket.io/redis-streams-adapter 0.3 (one stream, `streams`).
//
//   node cluster_b9.js <redis port> <pubsub|streams>
//
// Prints `LISTENING <port>` once bound to 127.0.0.1 on a port the system picks (WebSocket transport only). A client
// that emits `go` with `{count, rate, tag}` makes this node `io.emit("m", payload)` `count` times at `rate` per second
// (0: as fast as it can), each payload `<tag>:<seq>:<µs since the epoch>:` padded to 64 bytes; then it prints
// `EMITTED <count>`.
'use strict';
const http = require('http');
const { performance } = require('perf_hooks');
const { Server } = require('socket.io');
const { createClient } = require('redis');
const { createAdapter } = require('@socket.io/redis-adapter');
const { createAdapter: createStreamsAdapter } = require('@socket.io/redis-streams-adapter');

function micros() {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

function payload(tag, seq) {
  const head = `${tag}:${seq}:${micros()}:`;
  return head.length >= 64 ? head : head + 'x'.repeat(64 - head.length);
}

async function main() {
  const [redisPort, mode] = process.argv.slice(2);
  const url = `redis://127.0.0.1:${redisPort}`;
  const pub = createClient({ url });
  // Both clients reconnect by themselves; errors while the broker is down are expected.
  pub.on('error', () => {});
  await pub.connect();
  let adapter;
  if (mode === 'streams') {
    adapter = createStreamsAdapter(pub);
  } else {
    const sub = pub.duplicate();
    sub.on('error', () => {});
    await sub.connect();
    adapter = createAdapter(pub, sub);
  }
  const server = http.createServer();
  const io = new Server(server, { adapter, transports: ['websocket'], serveClient: false });
  io.on('connection', (socket) => {
    socket.on('go', ({ count, rate, tag }) => {
      let seq = 0;
      const start = performance.now();
      const step = () => {
        if (rate > 0) {
          const due = Math.min(count, Math.floor(((performance.now() - start) / 1000) * rate) + 1);
          while (seq < due) io.emit('m', payload(tag, seq++));
        } else {
          const until = Math.min(count, seq + 64);
          while (seq < until) io.emit('m', payload(tag, seq++));
        }
        if (seq < count) {
          if (rate > 0) setTimeout(step, Math.max(0, ((seq / rate) * 1000) - (performance.now() - start)));
          else setImmediate(step);
        } else {
          process.stdout.write(`EMITTED ${count}\n`);
        }
      };
      step();
    });
  });
  server.listen(0, '127.0.0.1', () => {
    process.stdout.write(`LISTENING ${server.address().port}\n`);
  });
}

// While redis-server is down the redis clients (including those the adapters make themselves) fail their commands
// and report errors nobody listens to; a node must live through that, so those errors are counted, not fatal.
let brokerErrors = 0;
process.on('uncaughtException', () => { brokerErrors += 1; });
process.on('unhandledRejection', () => { brokerErrors += 1; });
main().catch((e) => {
  process.stderr.write(`cluster_b9: ${e.stack || e}\n`);
  process.exit(1);
});
