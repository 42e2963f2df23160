"""The benchmark hub on the websockets library: "B..." broadcast to all, anything else echoed.

    python bench/servers/websockets_hub.py --port 0     # prints "READY <port>" once listening

``websockets.asyncio.server.serve`` with ``websockets.broadcast``, on uvloop, compression off.
A JSON object ("{...") is decoded and broadcast after one ``json.dumps`` (the ``json`` workload).
"""

from __future__ import annotations

import argparse
import json

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve

CLIENTS: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    CLIENTS.add(ws)
    try:
        async for msg in ws:
            if isinstance(msg, str) and msg.startswith("B"):
                broadcast(CLIENTS, msg)
            elif isinstance(msg, str) and msg.startswith("{"):
                broadcast(CLIENTS, json.dumps(json.loads(msg)))
            else:
                await ws.send(msg)
    finally:
        CLIENTS.discard(ws)


async def main(host: str, port: int) -> None:
    # backlog as melody's default, so that the connect workload measures the server.
    async with serve(handler, host, port, compression=None, backlog=1024) as server:
        print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    args = parser.parse_args()
    uvloop.run(main(args.host, args.port))
