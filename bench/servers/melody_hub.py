"""The benchmark hub on melody: "B..." is broadcast to every session, anything else echoed.

    python bench/servers/melody_hub.py --port 0     # prints "READY <port>" once listening
    python bench/servers/melody_hub.py --port 0 --redis redis://127.0.0.1:6379   # a node

A text message starting with "{" is a JSON object: decoded, and broadcast with
``hub.broadcast_json`` (serialized once with orjson for every session; the ``json`` workload).
With ``--redis`` the hub is one node of a cluster sharing that Redis (``melody.RedisBackplane``):
a broadcast on any node reaches the sessions of every node (the ``cluster`` workload).

``GET /stats`` answers ``{"server": "melody", "pid": ..., "stats": hub.stats()}`` so that
``melody bench`` finds the pid (RSS, CPU) and checks lost messages against the hub's own drop
counter. uvloop, compression off (melody's default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

import melody
from melody.codecs import JSON


def make_hub(redis_url: str | None = None, direct_writes: bool = True) -> melody.Melody:
    """The hub: broadcast "B..." to all, JSON "{..." to all as JSON, echo the rest, /stats."""
    backplane = melody.RedisBackplane(redis_url) if redis_url else None
    hub = melody.Melody(melody.Config(compression=False, direct_writes=direct_writes),
                        backplane=backplane)
    decode = JSON.decode

    @hub.handle_message
    def on_message(session: melody.Session, msg: str) -> None:
        if msg.startswith("B"):
            hub.broadcast(msg)
        elif msg.startswith("{"):
            hub.broadcast_json(decode(msg))
        else:
            session.write(msg)

    @hub.handle_http
    def stats(request: melody.Request) -> tuple[int, list[tuple[str, str]], bytes] | None:
        if request.path != "/stats":
            return None
        body: dict[str, object] = {"server": "melody", "pid": os.getpid()}
        if hasattr(hub, "stats"):
            body["stats"] = hub.stats()
        return 200, [("Content-Type", "application/json")], json.dumps(body).encode()

    return hub


async def main(host: str, port: int, redis_url: str | None, direct_writes: bool) -> None:
    hub = make_hub(redis_url, direct_writes)
    server = await hub.serve(host, port)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    parser.add_argument("--redis", default=None, metavar="URL",
                        help="join the cluster sharing this Redis (redis://HOST:PORT)")
    parser.add_argument("--no-direct-writes", action="store_true",
                        help="Config(direct_writes=False): every frame waits for the end of"
                             " the loop iteration (to compare)")
    args = parser.parse_args()
    melody.install_uvloop()
    asyncio.run(main(args.host, args.port, args.redis, not args.no_direct_writes))
