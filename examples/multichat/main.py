"""multichat: chat rooms chosen by URL path; a room only hears its own messages.

Go melody's ``examples/multichat`` in Python. Go filters every broadcast by comparing request
paths (``BroadcastFilter``), which costs one call per connected session; melody has topics:
``hub.subscribe(session, room)`` once on connect, then ``hub.publish(room, msg)`` reaches the
room's subscribers only, framed once, at a cost proportional to the room, not to the hub.

- ``GET /``: a page to pick a room.
- ``GET /channel/<name>``: the room's page; its socket connects to ``/channel/<name>/ws``
  through the browser client (``/melody-client.js``), which reconnects after an outage.

::

    python examples/multichat/main.py --port 5000          # then open http://127.0.0.1:5000/
    melody serve examples.multichat.main:hub --port 5000   # the same hub, from the repository root
"""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path

import melody
import melody.browser

HERE = Path(__file__).parent
INDEX = (HERE / "index.html").read_bytes()
ROOM = (HERE / "room.html").read_bytes()
HTML = [("Content-Type", "text/html; charset=utf-8")]

# Room names are URL-safe as they are (RFC 3986 unreserved characters): the raw path that the
# hub hands us needs no percent-decoding, and the same name always means the same room.
ROOM_PAGE = re.compile(r"/channel/([A-Za-z0-9_.~-]{1,64})/?")
ROOM_SOCKET = re.compile(r"/channel/([A-Za-z0-9_.~-]{1,64})/ws")

hub = melody.Melody()


@hub.handle_http
def pages(request: melody.Request) -> tuple[int, list[tuple[str, str]], bytes] | None:
    if request.path == "/":
        return 200, HTML, INDEX
    if ROOM_PAGE.fullmatch(request.path):
        return 200, HTML, ROOM
    return melody.browser.serve_client(request)  # /melody-client.js, else None: 404


@hub.handle_upgrade
def pick_room(request: melody.Request) -> dict[str, str]:
    """Decide the room before the session exists (Go: ``HandleRequestWithKeys``).

    The returned dict becomes the session's keys; raising ``HandshakeError`` refuses the
    upgrade with that HTTP status, so no session ever lacks a room.
    """
    match = ROOM_SOCKET.fullmatch(request.path)
    if match is None:
        raise melody.HandshakeError(404, "connect to /channel/<name>/ws")
    return {"room": match.group(1)}


def presence(room: str, what: str) -> str:
    # Notices start with "* " so that pages (and the tests) can tell them from chat lines.
    return f"* {what}: {hub.topic_len(room)} in #{room}"


@hub.handle_connect
def join(session: melody.Session) -> None:
    room = session["room"]
    hub.subscribe(session, room)  # ends by itself when the session does
    hub.publish(room, presence(room, "someone joined"))


@hub.handle_message
def say(session: melody.Session, msg: str) -> None:
    hub.publish(session["room"], msg)


@hub.handle_disconnect
def leave(session: melody.Session) -> None:
    # By now the session has left its topics, so topic_len counts the others. When the hub
    # itself is closing (Ctrl-C) there is nobody left to tell: publish would raise HubClosed.
    if not hub.is_closed():
        room = session["room"]
        hub.publish(room, presence(room, "someone left"))


def announce(server: asyncio.Server) -> None:
    """Called by melody.run once listening: say where (the real port when --port 0)."""
    host, port = server.sockets[0].getsockname()[:2]
    print(f"multichat: open http://{host}:{port}/ (rooms at /channel/<name>; Ctrl-C stops)",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="melody example: chat rooms by URL path")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port, 0 for any free one (5000)")
    args = parser.parse_args()
    # Serves until Ctrl-C or SIGTERM, then closes every session with 1001 (going away) and
    # waits for them to go (Melody.shutdown). uvloop when it is installed.
    melody.run(hub, args.host, args.port, ready=announce)


if __name__ == "__main__":
    main()
