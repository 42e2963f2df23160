"""chat: every message a browser sends is broadcast to every connected browser.

Go melody's ``examples/chat`` in Python. The hub serves its own page (``handle_http``) and the
WebSocket endpoint on the same port, so there is no web framework in between::

    python examples/chat/main.py --port 5000          # then open http://127.0.0.1:5000/ twice
    melody serve examples.chat.main:hub --port 5000   # the same hub, from the repository root
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import melody

PAGE = (Path(__file__).parent / "index.html").read_bytes()
HTML = [("Content-Type", "text/html; charset=utf-8")]

# Only /ws upgrades; any other path gets 404 before a session exists.
hub = melody.Melody(melody.Config(paths=["/ws"]))


@hub.handle_http
def page(request: melody.Request) -> tuple[int, list[tuple[str, str]], bytes] | None:
    """Plain GETs: the chat page at ``/``; None makes every other path a 404."""
    if request.path == "/":
        return 200, HTML, PAGE
    return None


@hub.handle_message
def on_message(session: melody.Session, msg: str) -> None:
    # Framed once, the same bytes written to every session (the sender's own tab included, as
    # in Go's example: a tab shows its message when the hub has relayed it).
    hub.broadcast(msg)


def announce(server: asyncio.Server) -> None:
    """Called by melody.run once listening: say where (the real port when --port 0)."""
    host, port = server.sockets[0].getsockname()[:2]
    print(f"chat: open http://{host}:{port}/ in two browser tabs (Ctrl-C stops)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="melody example: a broadcast chat")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port, 0 for any free one (5000)")
    args = parser.parse_args()
    # Serves until Ctrl-C or SIGTERM, then closes every session with 1001 (going away) and
    # waits for them to go (Melody.shutdown). uvloop when it is installed.
    melody.run(hub, args.host, args.port, ready=announce)


if __name__ == "__main__":
    main()
