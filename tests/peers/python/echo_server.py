"""A WebSocket echo server on Python `websockets`: text stays text, binary stays binary.

Prints `LISTENING <port>` once bound to 127.0.0.1 on a port the system picks.
"""

import asyncio

from websockets.asyncio.server import serve


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def main():
    async with serve(echo, "127.0.0.1", 0, max_size=1 << 20) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"LISTENING {port}", flush=True)
        await server.serve_forever()


asyncio.run(main())
