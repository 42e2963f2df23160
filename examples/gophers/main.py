"""gophers: everyone's mouse cursor on everyone's screen.

Go melody's ``examples/gophers`` in Python. Each page sends its cursor position (``"X Y"``); the
hub relays it to every *other* page with ``broadcast_others`` and keeps per-connection state in
the session's keys (its id and last position) instead of a map guarded by a lock.

Hub to page: ``iam ID`` (your id), ``join ID``, ``set ID X Y``, ``leave ID``. ::

    python examples/gophers/main.py --port 5000          # then open http://127.0.0.1:5000/ twice
    melody serve examples.gophers.main:hub --port 5000   # the same hub, from the repository root
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from pathlib import Path

import melody

PAGE = (Path(__file__).parent / "index.html").read_bytes()
HTML = [("Content-Type", "text/html; charset=utf-8")]
LIMIT = 100_000  # pixels: a position outside 0..LIMIT is clamped, not relayed as sent

hub = melody.Melody(melody.Config(paths=["/ws"]))
# Handlers run on the event loop, one at a time: a plain counter needs no lock.
ids = itertools.count(1)


@hub.handle_http
def page(request: melody.Request) -> tuple[int, list[tuple[str, str]], bytes] | None:
    return (200, HTML, PAGE) if request.path == "/" else None


@hub.handle_connect
def arrive(session: melody.Session) -> None:
    gopher = next(ids)
    session["id"] = gopher
    session.write(f"iam {gopher}")
    # Tell the newcomer who is already here, and where.
    for other in hub.sessions():
        if other is session or "id" not in other:
            continue
        session.write(f"join {other['id']}")
        position = other.get("position")
        if position is not None:
            session.write(f"set {other['id']} {position[0]} {position[1]}")
    hub.broadcast_others(f"join {gopher}", session)


@hub.handle_message
def move(session: melody.Session, msg: str) -> None:
    try:
        x, y = (min(max(int(v), 0), LIMIT) for v in msg.split())
    except ValueError:
        return  # not "X Y": ignore it rather than relay garbage
    session["position"] = (x, y)
    hub.broadcast_others(f"set {session['id']} {x} {y}", session)


@hub.handle_disconnect
def leave(session: melody.Session) -> None:
    # When the hub itself is closing (Ctrl-C) nobody is left to tell: broadcasting would
    # raise HubClosed.
    if not hub.is_closed():
        hub.broadcast_others(f"leave {session['id']}", session)


def announce(server: asyncio.Server) -> None:
    """Called by melody.run once listening: say where (the real port when --port 0)."""
    host, port = server.sockets[0].getsockname()[:2]
    print(f"gophers: open http://{host}:{port}/ in two browser windows (Ctrl-C stops)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="melody example: shared cursors")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port, 0 for any free one (5000)")
    args = parser.parse_args()
    # Serves until Ctrl-C or SIGTERM, then closes every session with 1001 (going away) and
    # waits for them to go (Melody.shutdown). uvloop when it is installed.
    melody.run(hub, args.host, args.port, ready=announce)


if __name__ == "__main__":
    main()
