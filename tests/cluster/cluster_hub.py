"""The hub the cluster tests run in their own processes: a command relay over WebSocket.

Configured by the environment: ``MELODY_BACKPLANE_URL`` (``redis://`` for a RedisBackplane,
``nats://`` for a NatsBackplane; else ``MELODY_REDIS_URL``; no backplane when neither is
set) and ``MELODY_CHANNEL_PREFIX``. The backplane uses short intervals so that outages and presence
settle quickly. Served two ways:

- ``python cluster_hub.py --loop uvloop|asyncio``: one node on 127.0.0.1, port 0; prints
  ``READY <port>`` once serving with its backplane connected; stops on SIGTERM (exit 0).
- ``melody serve cluster_hub:hub --workers 2``: the ``hub`` attribute, one per worker.

A client sends one command per text message; replies start with the command's name:

==================== ==========================================================================
``sub T`` / ``unsub T``  subscribe / unsubscribe this session; reply ``sub T True``
``pub T M``          ``hub.publish(T, M)``; ``pubo`` publish_others; ``pubb`` publish_binary
``bc M``             ``hub.broadcast(M)``; ``bco`` broadcast_others; ``bcb`` broadcast_binary
``info``             reply ``info {json}``: pid, worker id, topics of this session, hub.stats()
``ctl T``            reply ``ctl T N``: ``await hub.cluster_topic_len(T)`` (``N`` is ``error``
                     when it raised)
``user U``           ``session.user = U``; reply ``user U``
``touser U M``       ``hub.send_to_user(U, M)``; ``kick U``: ``hub.disconnect_user(U, 4000)``
``pres T``           reply ``pres T {json}``: ``await hub.presence(T)`` (``error`` if it raised)
``pubj T M``         ``hub.publish_json(T, M)`` (``hist:*`` keeps history); reply only on error
``hsub T [O E]``     ``await hub.subscribe_from(session, T, O, E)``; reply ``hsub T {json}``
                     (recovered, offset, epoch, n) after the missed publications
==================== ==========================================================================

``GET /info`` answers the same JSON (without the session's topics) over plain HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import os
import signal
import sys
from typing import Any

from cluster_support import make_backplane

import melody
from melody._hubstate import state_of

HOST = "127.0.0.1"


def make_hub() -> melody.Melody:
    url = os.environ.get("MELODY_BACKPLANE_URL") or os.environ.get("MELODY_REDIS_URL")
    backplane = None
    if url:
        backplane = make_backplane(
            url,
            os.environ.get("MELODY_CHANNEL_PREFIX", "melody-test"),
            timeout=2.0,
            reconnect_min=0.05,
            reconnect_max=0.5,
            health_check_interval=1.0,
            presence_interval=0.1,
            presence_ttl=3.0,
            report_interval=0.0,
        )
    hub = melody.Melody(backplane=backplane)
    # Topics whose subscribers are tracked cluster-wide (test_cluster_presence.py).
    hub.configure_topic("pres:*", presence=True, join_leave=True)
    # Topics with history (tests/cluster/test_worker_bus.py: history across workers).
    hub.configure_topic("hist:*", history_size=50)
    errors: list[str] = []

    def info(session: melody.Session | None) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "worker": os.environ.get("MELODY_WORKER_ID"),
            "topics": sorted(session.topics) if session is not None else None,
            "stats": hub.stats(),
            "errors": errors[-20:],
        }

    @hub.handle_message
    async def on_message(session: melody.Session, text: str) -> None:
        command, _, rest = text.partition(" ")
        if command in ("sub", "unsub"):
            done = (hub.subscribe if command == "sub" else hub.unsubscribe)(session, rest)
            session.write(f"{command} {rest} {done}")
        elif command in ("pub", "pubo", "pubb"):
            topic, _, msg = rest.partition(" ")
            if command == "pub":
                hub.publish(topic, msg)
            elif command == "pubo":
                hub.publish_others(topic, msg, session)
            else:
                hub.publish_binary(topic, msg.encode())
        elif command == "bc":
            hub.broadcast(rest)
        elif command == "bco":
            hub.broadcast_others(rest, session)
        elif command == "bcb":
            hub.broadcast_binary(rest.encode())
        elif command == "info":
            session.write("info " + json.dumps(info(session)))
        elif command == "ctl":
            try:
                count: object = await hub.cluster_topic_len(rest)
            except melody.MelodyError:
                count = "error"
            session.write(f"ctl {rest} {count}")
        elif command == "user":
            session.user = rest
            session.write(f"user {rest}")
        elif command == "touser":
            user, _, msg = rest.partition(" ")
            hub.send_to_user(user, msg)
        elif command == "kick":
            hub.disconnect_user(rest, 4000, "kicked")
        elif command == "pres":
            try:
                entries: object = json.dumps(await hub.presence(rest))
            except melody.MelodyError:
                entries = "error"
            session.write(f"pres {rest} {entries}")
        elif command == "pubj":
            topic, _, msg = rest.partition(" ")
            try:
                hub.publish_json(topic, msg)
            except melody.MelodyError as exc:
                session.write(f"pubj error {exc}")
        elif command == "hsub":
            topic, *position = rest.split(" ")
            offset, epoch = (int(position[0]), position[1]) if position else (None, None)
            try:
                result = await hub.subscribe_from(session, topic, offset, epoch)
                answer = json.dumps({"recovered": result.recovered,
                                     "offset": result.position.offset,
                                     "epoch": result.position.epoch,
                                     "n": len(result.publications)})
            except melody.MelodyError as exc:
                answer = f"error {exc}"
            session.write(f"hsub {topic} {answer}")
        else:
            session.write(f"unknown {command}")

    @hub.handle_error
    def on_error(session: melody.Session | None, error: BaseException) -> None:
        errors.append(f"{type(error).__name__}: {error}")

    @hub.handle_http
    def on_http(request: melody.Request) -> str | None:
        if request.path == "/info":
            return json.dumps(info(None))
        return None

    return hub


hub = make_hub()


def _watch_shutdown(loop: asyncio.AbstractEventLoop) -> None:
    # The test stops this process with SIGTERM and kills it after 10 s; a stop that hangs
    # should say where: the asyncio tasks at 5 s (if the loop still runs), every thread's
    # stack at 7 s (if it does not, or asyncio.run is stuck ending).
    def dump_tasks() -> None:
        print("shutdown still running after 5 s; asyncio tasks:", file=sys.stderr, flush=True)
        for task in asyncio.all_tasks(loop):
            task.print_stack(file=sys.stderr)
        sys.stderr.flush()

    loop.call_later(5, dump_tasks)
    faulthandler.dump_traceback_later(7, exit=False)


async def _main() -> int:
    server: Any = await hub.serve(HOST, 0)  # asyncio's or uvloop's Server: both have sockets
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    backplane = hub.backplane
    if backplane is not None:
        deadline = loop.time() + 20
        while not backplane.stats()["connected"]:
            if loop.time() > deadline:
                print("backplane did not connect", file=sys.stderr, flush=True)
                return 2
            await asyncio.sleep(0.01)
    print(f"READY {port}", flush=True)
    await stop.wait()
    _watch_shutdown(loop)
    server.close()
    hub.close_with_msg(melody.errors.CLOSE_GOING_AWAY, "stopping")
    await hub.wait_closed(timeout=2)
    pending = [task for task in state_of(hub).tasks if not task.done()]
    if pending:
        await asyncio.wait(pending, timeout=2)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args()
    if args.loop == "uvloop":
        melody.install_uvloop()
    sys.exit(asyncio.run(_main()))
