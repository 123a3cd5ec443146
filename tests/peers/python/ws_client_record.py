"""A WebSocket server on Python `websockets` for the reconnecting client's tests.

Echoes every message (text stays text, binary stays binary) and prints `GOT t:<text>` or `GOT b:<hex>` for it, in
the order received (`GOT t:#<length>` or `GOT b:#<length>` for one over 256 bytes, so that a reader that falls
behind never blocks the server on a full pipe). argv[1]: the port to bind on 127.0.0.1 (0 or absent: one the system picks). Prints
`LISTENING <port>` once bound.
"""

import asyncio
import sys

from websockets.asyncio.server import serve


async def record(ws):
    async for message in ws:
        kind = "t" if isinstance(message, str) else "b"
        if len(message) > 256:
            print(f"GOT {kind}:#{len(message)}", flush=True)
        elif kind == "t":
            print(f"GOT t:{message}", flush=True)
        else:
            print(f"GOT b:{message.hex()}", flush=True)
        await ws.send(message)


async def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    async with serve(record, "127.0.0.1", port, max_size=1 << 20) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"LISTENING {bound}", flush=True)
        await server.serve_forever()


asyncio.run(main())
