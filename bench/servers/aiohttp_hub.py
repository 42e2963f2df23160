"""The benchmark hub on aiohttp: "B..." broadcast to all, anything else echoed to its sender.

    python bench/servers/aiohttp_hub.py --port 0     # prints "READY <port>" once listening

``web.WebSocketResponse`` with a set of connections, on uvloop, compression off. A JSON object
("{...") is decoded with ``msg.json()`` and serialized once with ``json.dumps`` for all peers
(``send_json`` to each would serialize once per peer: the fair idiom for a broadcast is this).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json

import uvloop
from aiohttp import WSMsgType, web

CLIENTS: set[web.WebSocketResponse] = set()


async def handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    CLIENTS.add(ws)
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            if msg.data.startswith("B"):
                # A copy: the set may change while a send waits for a slow reader to drain.
                for peer in list(CLIENTS):
                    with contextlib.suppress(ConnectionResetError):
                        await peer.send_str(msg.data)
            elif msg.data.startswith("{"):
                data = json.dumps(msg.json())
                for peer in list(CLIENTS):
                    with contextlib.suppress(ConnectionResetError):
                        await peer.send_str(data)
            else:
                await ws.send_str(msg.data)
    finally:
        CLIENTS.discard(ws)
    return ws


async def main(host: str, port: int) -> None:
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    # backlog as melody's default, so that the connect workload measures the server.
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    print(f"READY {runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    args = parser.parse_args()
    uvloop.run(main(args.host, args.port))
