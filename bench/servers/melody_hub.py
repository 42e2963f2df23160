"""The benchmark hub on melody: "B..." is broadcast to every session, anything else echoed.

    python bench/servers/melody_hub.py --port 0     # prints "READY <port>" once listening
    python bench/servers/melody_hub.py --port 0 --redis redis://127.0.0.1:6379   # a node

A text message starting with "{" is a JSON object: decoded, and broadcast with
``hub.broadcast_json`` (serialized once with orjson for every session; the ``json`` workload).
With ``--redis`` the hub is one node of a cluster sharing that Redis (``melody.RedisBackplane``):
a broadcast on any node reaches the sessions of every node (the ``cluster`` workload). With
``--workers W`` it is served as ``melody serve --workers W`` serves it: W processes on one port,
one hub through the workers' machine-local bus (no Redis); ``/stats`` then also names every
worker's pid (``pids``) so that ``melody bench`` adds up their CPU, RSS and counters.

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
        if _IN_WORKERS:
            body["pids"] = _worker_pids()
        if hasattr(hub, "stats"):
            body["stats"] = hub.stats()
        return 200, [("Content-Type", "application/json")], json.dumps(body).encode()

    return hub


# Set in the worker processes of --workers (make_worker_hub).
_IN_WORKERS = False


def make_worker_hub() -> melody.Melody:
    """The hub of one worker of ``--workers W`` (``melody.workers`` calls it: a factory)."""
    global _IN_WORKERS
    _IN_WORKERS = True
    return make_hub()


def _worker_pids() -> list[int]:
    """Every worker of this one's supervisor (its children), this one included."""
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/task/{parent}/children") as f:
            return sorted(int(p) for p in f.read().split())
    except (OSError, ValueError):  # not Linux: this process only
        return [os.getpid()]


def serve_workers(host: str, port: int, workers: int) -> int:
    """``melody serve melody_hub:make_worker_hub --factory --workers W``, announcing READY once
    every worker answers ``/stats``."""
    import socket
    import threading
    import urllib.request

    from melody.workers import run_workers

    if port == 0:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [here, os.environ.get("PYTHONPATH")]))

    def announce() -> None:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://{host}:{port}/stats", timeout=1) as r:
                    if len(json.loads(r.read()).get("pids", [])) >= workers:
                        print(f"READY {port}", flush=True)
                        return
            except (OSError, ValueError):
                pass
            threading.Event().wait(0.1)

    threading.Thread(target=announce, daemon=True).start()
    return run_workers("melody_hub:make_worker_hub", workers, host, port, factory=True,
                       log_level="warning")


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
    parser.add_argument("--workers", type=int, default=1, metavar="W",
                        help="serve from W worker processes, one hub (melody serve --workers)")
    args = parser.parse_args()
    if args.workers > 1:
        raise SystemExit(serve_workers(args.host, args.port, args.workers))
    melody.install_uvloop()
    asyncio.run(main(args.host, args.port, args.redis, not args.no_direct_writes))
