"""chat: every message a browser sends reaches every connected browser, outages included.

Go melody's ``examples/chat`` in Python. The hub serves its own page (``handle_http``), the
browser client it imports (``/melody-client.js``, ``melody.browser``) and the WebSocket
endpoint on the same port, so there is no web framework in between::

    python examples/chat/main.py --port 5000          # then open http://127.0.0.1:5000/ twice
    python examples/chat/main.py --redis redis://127.0.0.1:6379/0   # history survives restarts
    melody serve examples.chat.main:hub --port 5000   # the same hub, from the repository root

The page speaks the JSON protocol (docs/protocol.md) through the browser client: it subscribes
to the topic ``chat`` and publishes to it. The topic keeps a history (the last 100 messages,
five minutes), so a tab that lost its connection gets what it missed when it comes back, in
order and once; with ``--redis`` the history lives in Redis and survives a restart of the hub.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import melody
import melody.browser
import melody.codecs

PAGE = (Path(__file__).parent / "index.html").read_bytes()
HTML = [("Content-Type", "text/html; charset=utf-8")]

TOPIC = "chat"


def make_hub(redis_url: str | None = None) -> melody.Melody:
    """The chat hub; with ``redis_url`` its history lives in Redis (``RedisBackplane``)."""
    backplane = None
    if redis_url is not None:
        from melody.backplane.redis import RedisBackplane

        backplane = RedisBackplane(redis_url, channel_prefix="melody-chat")
    # Only /ws upgrades; any other path gets 404 before a session exists.
    chat = melody.Melody(melody.Config(paths=["/ws"]), codec=melody.codecs.JSON,
                         backplane=backplane)
    # Numbered publications kept for recovery; the publisher gets its own too (as in Go's
    # example, a tab shows its message when the hub has relayed it).
    chat.configure_topic(TOPIC, history_size=100, history_ttl=300)

    @chat.authorize
    def only_the_chat(session: melody.Session, action: str, topic: str) -> bool:
        return topic == TOPIC

    @chat.handle_http
    def page(request: melody.Request) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """Plain GETs: the chat page at ``/``, the client module; None: 404."""
        if request.path == "/":
            return 200, HTML, PAGE
        return melody.browser.serve_client(request)

    return chat


hub = make_hub()


def announce(server: asyncio.Server) -> None:
    """Called by melody.run once listening: say where (the real port when --port 0)."""
    host, port = server.sockets[0].getsockname()[:2]
    print(f"chat: open http://{host}:{port}/ in two browser tabs (Ctrl-C stops)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="melody example: a broadcast chat")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port, 0 for any free one (5000)")
    parser.add_argument("--redis", metavar="URL", default=None,
                        help="keep the history in Redis (survives a restart of the hub)")
    args = parser.parse_args()
    chat = make_hub(args.redis) if args.redis else hub
    # Serves until Ctrl-C or SIGTERM, then closes every session with 1001 (going away) and
    # waits for them to go (Melody.shutdown). uvloop when it is installed.
    melody.run(chat, args.host, args.port, ready=announce)


if __name__ == "__main__":
    main()
