"""A Python `websockets` client of connman's WebSocket server, for the WS-01 to WS-04 tests.

Usage: ws_server_client.py <url> <mode> [args...]; prints one line per outcome on stdout.
  too_big <tries> <bytes>  connect, send one binary message of <bytes>, print `CLOSE <code>` (received code)
  echo                     send text then binary, print `TEXT <data>` and `BINARY <hex>` for the echoes, close
  silent <ms>              send nothing for <ms> (answering pings), print `PINGS <n>` then `OPEN` or `CLOSE <code>`
  close                    close with 1000 at once, print `CLOSE <code>` once the TCP connection has closed
"""

import asyncio
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode


def say(line):
    print(line, flush=True)


def code_of(ws):
    # 1006 when no close frame was received: the connection was lost.
    return ws.protocol.close_rcvd.code if ws.protocol.close_rcvd is not None else 1006


async def too_big(url, tries, size):
    for _ in range(tries):
        # No client ping: only the server's behaviour is measured.
        async with connect(url, ping_interval=None, max_size=None) as ws:
            try:
                await ws.send(bytes([7]) * size)
                await ws.recv()
            except ConnectionClosed:
                pass
            await ws.wait_closed()
            say(f"CLOSE {code_of(ws)}")


async def echo(url):
    async with connect(url, ping_interval=None) as ws:
        await ws.send("héllo")
        await ws.send(bytes([1, 2, 3]))
        for _ in range(2):
            msg = await ws.recv()
            if isinstance(msg, str):
                say(f"TEXT {msg}")
            else:
                say(f"BINARY {msg.hex()}")
        await ws.close(1000)
        await ws.wait_closed()
        say(f"CLOSE {code_of(ws)}")


async def silent(url, ms):
    pings = 0
    async with connect(url, ping_interval=None) as ws:
        # websockets answers pings by itself; count them as its protocol receives them.
        receive = ws.protocol.recv_frame

        def counting(frame):
            nonlocal pings
            if frame.opcode == Opcode.PING:
                pings += 1
            return receive(frame)

        ws.protocol.recv_frame = counting
        try:
            await asyncio.wait_for(ws.wait_closed(), ms / 1000)
        except asyncio.TimeoutError:
            pass
        say(f"PINGS {pings}")
        if ws.protocol.close_rcvd is None and ws.protocol.state.name == "OPEN":
            say("OPEN")
        else:
            say(f"CLOSE {code_of(ws)}")


async def close(url):
    async with connect(url, ping_interval=None) as ws:
        await ws.close(1000, "bye")
        await ws.wait_closed()
        say(f"CLOSE {code_of(ws)}")


async def main():
    url, mode, *args = sys.argv[1:]
    if mode == "too_big":
        await too_big(url, int(args[0]), int(args[1]))
    elif mode == "echo":
        await echo(url)
    elif mode == "silent":
        await silent(url, int(args[0]))
    elif mode == "close":
        await close(url)
    else:
        say(f"UNKNOWN {mode}")


asyncio.run(main())
