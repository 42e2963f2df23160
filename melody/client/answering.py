"""Answering the hub's requests: ``@conn.route(type)``, the client side of ``session.call``.

The hub sends ``{"type": type, "id": "s<n>", "data": data}``: an id that is a string starting
with ``"s"`` marks a request from the server (docs/protocol.md, "Server-to-client requests").
A connection with a route for ``type`` takes such a message out of the stream (``recv`` never
sees it), runs the route's handler ``fn(data)`` (a plain function or a coroutine function) in
a task of its own and sends back ``{"id": "s<n>", "ok": true, "data": <its return value>}``;
an exception becomes ``{"id": "s<n>", "ok": false, "error": ...}`` with the exception's text
for a :class:`~melody.errors.RequestError`, ``"internal error"`` for any other (which is
logged on the ``melody.client`` logger). A request whose type has no route stays in the
stream, for ``recv``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from melody.errors import ConnectionClosed, RequestError

if TYPE_CHECKING:
    from melody.client.connection import ClientConnection

__all__ = ["Routes", "server_request", "answer"]

logger = logging.getLogger("melody.client")

#: Route type -> handler ``fn(data)``.
Routes = dict[str, Callable[[Any], Any]]


def server_request(text: str, routes: Routes) -> tuple[Callable[[Any], Any], str, Any] | None:
    """``(handler, id, data)`` when ``text`` is a request from the server with a route here,
    else None. Called only for text starting with ``{"type":`` (how melody writes them)."""
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(msg, dict):
        return None
    msg_id = msg.get("id")
    kind = msg.get("type")
    if type(msg_id) is not str or not msg_id.startswith("s") or type(kind) is not str:
        return None
    fn = routes.get(kind)
    return (fn, msg_id, msg.get("data")) if fn is not None else None


async def answer(conn: ClientConnection, fn: Callable[[Any], Any], msg_id: str,
                 data: Any) -> None:
    """Run ``fn(data)`` and send the reply to request ``msg_id``."""
    try:
        result = fn(data)
        if inspect.isawaitable(result):
            result = await result
        reply = {"id": msg_id, "ok": True, "data": result}
    except RequestError as exc:
        reply = {"id": msg_id, "ok": False, "error": str(exc)}
    except Exception:
        logger.exception("%s: route handler for server request %s raised", conn.url, msg_id)
        reply = {"id": msg_id, "ok": False, "error": "internal error"}
    try:
        text = orjson.dumps(reply).decode("utf-8")
    except TypeError:
        logger.exception("%s: reply to server request %s not serializable", conn.url, msg_id)
        text = orjson.dumps({"id": msg_id, "ok": False,
                             "error": "reply not serializable"}).decode("utf-8")
    try:
        await conn.send(text)
    except ConnectionClosed:
        pass  # the connection ended while the handler ran: nobody to answer
