"""The melody hub the JS client's tests talk to: started by test/helpers.mjs, never by hand.

    python clients/js/test/hub.py --port 0 [--redis URL] [--secret S]

Prints ``hub listening on <port>`` once it serves. What it offers, by name:

- routes ``echo`` (returns its data), ``slow`` (sleeps data seconds, then answers),
  ``fail`` (an error reply), ``ask`` (makes a server-to-client request of type data["type"]
  with data["data"] and returns the client's answer or the error), ``kick`` (closes the
  session with data["code"], data["reason"]), ``ping`` (answers "pong");
- topics ``hist:*`` with history (100 publications, 300 s), presence and join/leave; any
  other topic without history; every session may subscribe and publish;
- with ``--secret``, ``JWTAuth`` (HS256) in front of every upgrade: a token in ``?token=``;
- ``GET /healthz``: ``ok``; ``GET /authcheck?token=``: 401 for a token ``JWTAuth`` would
  refuse, 204 otherwise (what the client's ``probe`` asks in the tests).
- ``--redis URL``: history in Redis (survives a restart of this process).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any
from urllib.parse import parse_qs

import melody
import melody.middleware
from melody.codecs import JSON

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--redis", default=None)
parser.add_argument("--secret", default=None)
args = parser.parse_args()

backplane = None
if args.redis:
    from melody.backplane.redis import RedisBackplane
    backplane = RedisBackplane(args.redis, channel_prefix="melody-js-test")

hub = melody.Melody(melody.Config(), codec=JSON, backplane=backplane)
hub.configure_topic("hist:*", history_size=100, history_ttl=300, presence=True,
                    join_leave=True)
if args.secret:
    hub.use(melody.middleware.JWTAuth(args.secret, algorithms=["HS256"]))


@hub.authorize
def allow(session: melody.Session, action: str, topic: str) -> bool:
    return not topic.startswith("private:")


@hub.handle_http
def http(request: melody.Request) -> tuple[int, list[tuple[str, str]], bytes] | None:
    if request.path == "/healthz":
        return 200, [("Content-Type", "text/plain")], b"ok\n"
    if request.path == "/authcheck" and args.secret:
        # What an application's own endpoint would tell the client's probe: 401 or 204.
        import jwt
        token = (parse_qs(request.query).get("token") or [""])[0]
        try:
            jwt.decode(token, args.secret, algorithms=["HS256"])
        except jwt.PyJWTError:
            return 401, [("Content-Type", "text/plain")], b"bad token\n"
        return 204, [], b""
    return None


@hub.route("echo")
def echo(session: melody.Session, data: object) -> object:
    return data


@hub.route("ping")
def ping(session: melody.Session, data: object) -> str:
    return "pong"


@hub.route("fail")
def fail(session: melody.Session, data: object) -> None:
    raise melody.RequestError("it failed")


@hub.route("slow", timeout=None)
async def slow(session: melody.Session, data: float) -> str:
    await asyncio.sleep(data)
    return "late"


@hub.route("ask", timeout=None)
async def ask(session: melody.Session, data: dict[str, Any]) -> object:
    try:
        return {"answer": await session.call(str(data["type"]), data.get("data"),
                                             timeout=float(data.get("timeout", 5)))}
    except melody.errors.RequestError as exc:
        return {"error": str(exc)}
    except melody.errors.AckTimeout:
        return {"error": "timeout"}


@hub.route("kick")
def kick(session: melody.Session, data: dict[str, Any]) -> None:
    session.close_with_msg(int(data["code"]), str(data.get("reason", "")))


@hub.route("publish_server")
def publish_server(session: melody.Session, data: dict[str, object]) -> int:
    return hub.publish_json(str(data["topic"]), data.get("data"))


@hub.route("binary")
def binary(session: melody.Session, data: str) -> None:
    session.write_binary(data.encode()[::-1])


def ready(server: asyncio.Server) -> None:
    print(f"hub listening on {server.sockets[0].getsockname()[1]}", flush=True)


melody.run(hub, "127.0.0.1", args.port, ready=ready)
