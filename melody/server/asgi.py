"""Serving a hub's WebSocket endpoint from an ASGI server, beside a Starlette or FastAPI app.

``hub.asgi`` is an ASGI application for ``websocket`` connections. Route it like any ASGI app::

    from starlette.applications import Starlette
    from starlette.routing import Route, WebSocketRoute

    app = Starlette(routes=[Route("/", home), WebSocketRoute("/ws", hub.asgi)])

    # FastAPI: app.add_api_websocket_route("/ws", hub.asgi.endpoint)
    #          app.router.add_websocket_route("/ws", hub.asgi), or app.mount("/ws", hub.asgi)

Sessions that arrive this way live in the same hub as those of melody's own server: the same
handlers run for them, broadcasts and topics reach both kinds, and ``len(hub)``,
``hub.sessions()`` and ``hub.stats()`` count both. The upgrade goes through what the native
server applies: the ``hub.use`` middleware chain, ``Config.paths``, ``allowed_origins`` and
``subprotocols``, and the ``handle_upgrade`` hook (sync or async). A refusal is sent with its
HTTP status where the server supports the ``websocket.http.response`` extension (uvicorn does),
as a close before the accept (which servers answer with 403) otherwise. Inbound rate limits
(``Config.rate_limit``) apply; ``session.remote_addr`` is the scope's ``client``.

Writes go to the ASGI ``send`` at once. While one is held up by the server (the peer stopped
reading), later ones wait in the session's queue of ``Config.message_buffer_size`` messages
under ``Config.overflow_policy``, and a peer that takes nothing for ``Config.write_wait`` is
dropped, as on the native path.

What the ASGI server does instead of melody: the socket, framing, permessage-deflate
(``Config.compression`` does not apply; configure the server) and liveness (ASGI has no ping,
so the hub's heartbeat neither pings these sessions nor drops them, and ``session.ping()`` does
nothing; uvicorn pings every ``ws_ping_interval`` seconds). ``Config.max_message_size`` is
enforced on each message once the server has read it (close 1009): set the server's own limit
(uvicorn's ``ws_max_size``) to match, so that a larger one is stopped at its frame header.
``handle_close`` fires when the peer closed with a status code: ASGI reports a dropped TCP
connection as 1005 or 1006, which do not fire it. Every message costs a round through the
server's ASGI layer: melody's own server (``hub.serve``, ``melody serve``) is the fast path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

from melody._hubstate import state_of
from melody.errors import CLOSE_GOING_AWAY, HandshakeError
from melody.handshake import Headers, Request
from melody.middleware import Handshake, run_cleanups
from melody.server.asgi_connection import AsgiConnection
from melody.server.native import upgrader_of
from melody.server.upgrade import UpgradeDecision
from melody.session import Session

if TYPE_CHECKING:
    from melody._core.protocol import WebSocketProtocol
    from melody.hub import Melody

__all__ = ["AsgiAdapter", "request_from_scope"]

logger = logging.getLogger("melody.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_NOT_WEBSOCKET = b"this endpoint speaks WebSocket only: send an Upgrade: websocket request\n"


def request_from_scope(scope: Scope) -> Request:
    """The upgrade request of an ASGI ``websocket`` scope, as melody's native server sees one.

    ``path`` is the raw path the client sent (``scope["raw_path"]``, percent-encoding kept, so
    ``Config.paths`` compares the same strings on both paths); headers keep their order and
    repeats. Raises ``HandshakeError(400)`` for a path that is not origin-form.
    """
    raw_path = scope.get("raw_path")
    if raw_path:
        path = bytes(raw_path).decode("latin-1")
    else:
        path = quote(str(scope.get("path") or "/"), safe="/:@!$&'()*+,;=-._~%")
    query = bytes(scope.get("query_string") or b"").decode("latin-1")
    target = f"{path}?{query}" if query else path
    headers = Headers(
        (bytes(name).decode("latin-1"), bytes(value).decode("latin-1"))
        for name, value in scope.get("headers") or ()
    )
    return Request("GET", target, "HTTP/" + str(scope.get("http_version", "1.1")), headers)


class AsgiAdapter:
    """A hub as an ASGI application (``hub.asgi``): one instance serves every connection.

    ``websocket`` scopes become sessions of the hub; ``http`` scopes are answered with 426
    Upgrade Required; any other scope type (``lifespan``) raises ``ValueError``, which is how an
    ASGI app declines it.
    """

    __slots__ = ("_endpoint", "hub")

    def __init__(self, hub: Melody) -> None:
        #: The hub the sessions join.
        self.hub = hub
        self._endpoint: Callable[..., Awaitable[None]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI 3 entry point."""
        kind = scope.get("type")
        if kind == "websocket":
            await self._serve(scope, receive, send)
        elif kind == "http":
            await send({"type": "http.response.start", "status": 426, "headers": [
                (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(_NOT_WEBSOCKET)).encode()),
            ]})
            await send({"type": "http.response.body", "body": _NOT_WEBSOCKET})
        else:
            raise ValueError(
                f"melody's ASGI adapter serves 'websocket' scopes (and answers 'http' with 426), "
                f"not {kind!r}")

    @property
    def endpoint(self) -> Callable[..., Awaitable[None]]:
        """The adapter as ``async def endpoint(websocket: starlette.websockets.WebSocket)``.

        For routers that call endpoints with a Starlette ``WebSocket`` rather than an ASGI
        triple: FastAPI's ``app.add_api_websocket_route("/ws", hub.asgi.endpoint)`` and
        ``@app.websocket``. Raises ImportError without Starlette.
        """
        if self._endpoint is None:
            from starlette.websockets import WebSocket

            adapter = self

            async def melody_endpoint(websocket: WebSocket) -> None:
                await adapter(websocket.scope, websocket.receive, websocket.send)

            # FastAPI finds the WebSocket parameter by its annotation: give it the class itself
            # (this module's annotations are strings, resolved in this module's namespace).
            melody_endpoint.__annotations__ = {"websocket": WebSocket, "return": None}
            self._endpoint = melody_endpoint
        return self._endpoint

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub = self.hub
        first = await receive()
        if first.get("type") != "websocket.connect":
            return  # the client left before the server handed us the connection
        state = state_of(hub)
        decision = upgrader_of(hub)
        loop = asyncio.get_running_loop()
        if state.loop is not loop:
            try:
                state.attach(loop)
            except RuntimeError as exc:
                state.report(None, exc)
                return await _refuse(decision, scope, send, HandshakeError(500, "internal error"))
        try:
            request = request_from_scope(scope)
        except HandshakeError as exc:
            return await _refuse(decision, scope, send, exc)
        client = scope.get("client")
        handshake = Handshake(request, tuple(client) if client is not None else None)
        # The same chain as the native path: hub.use middleware around the hub's own checks,
        # with the same deadline (the ASGI server may bound the handshake, or may not). The
        # ASGI server has made the RFC 6455 checks.
        chain = decision.chain(decision.decide)
        deadline = asyncio.timeout(None)

        def expire() -> None:
            # Say why before the cancellation reaches the middleware (AccessLog reads it).
            handshake.status = 504
            deadline.reschedule(loop.time())

        timer = loop.call_later(state.config.handshake_timeout, expire)
        try:
            try:
                async with deadline:
                    await chain(handshake)
            finally:
                timer.cancel()
            if deadline.expired():
                # A middleware swallowed the cancellation and went on: too late all the same.
                raise TimeoutError
            if state.closed:
                # The hub closed while the chain ran: a session accepted now would never be
                # closed.
                raise HandshakeError(503, "hub is closed")
        except asyncio.CancelledError:
            # The ASGI server cancelled this connection (it is shutting down): give back what
            # the middleware took.
            handshake.end()
            raise
        except Exception as exc:
            if deadline.expired():
                # The chain ran past Config.handshake_timeout: it was cancelled (the
                # middleware's finally blocks ran); 504, as on the native path.
                error = decision.deadline_passed()
                state.report(None, error)
            elif isinstance(exc, HandshakeError):
                error = exc
            else:
                logger.exception("handle_upgrade or a handshake middleware raised")
                state.report(None, exc)
                error = HandshakeError(500, "internal error")
            handshake.status = error.status
            handshake.end()
            return await _refuse(decision, scope, send, error)
        subprotocol = decision.subprotocol(request)
        conn = AsgiConnection(state.dispatch, send, dict(scope))
        # The hub and Session use only what ProtocolCore gives both kinds of connection.
        proto = cast("WebSocketProtocol", conn)
        session = Session(hub, proto, request, handshake.keys or None, subprotocol,
                          handshake.user)
        try:
            await send({"type": "websocket.accept", "subprotocol": subprotocol})
        except Exception as exc:
            if not _gone(exc):
                raise
            handshake.end()
            return  # the client left during the handshake: no session ever existed
        handshake.status = 101
        cleanups = handshake.take_on_close()
        conn.open(session)
        if state.closed:
            if cleanups:
                run_cleanups(cleanups)
            conn.close(CLOSE_GOING_AWAY, "hub is closed")
        else:
            # Connect/disconnect logs, metrics, on_close callbacks, handle_connect.
            decision.admit(proto, session, cleanups, handshake.take_on_open())
        await conn.run(receive)


async def _refuse(decision: UpgradeDecision, scope: Scope, send: Send,
                  exc: HandshakeError) -> None:
    """Refuse before the accept: the HTTP status where the server can send one, else a close."""
    logger.debug("upgrade refused: %s", exc)
    decision.refused(exc.status)
    try:
        if "websocket.http.response" in (scope.get("extensions") or {}):
            body = (exc.reason + "\n").encode("utf-8")
            headers = [(b"content-type", b"text/plain; charset=utf-8"),
                       (b"content-length", str(len(body)).encode())]
            headers += [(name.encode("latin-1"), value.encode("latin-1"))
                        for name, value in exc.headers]
            await send({"type": "websocket.http.response.start", "status": exc.status,
                        "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            # Without the extension a close before the accept is the only refusal ASGI has;
            # servers answer it with 403.
            await send({"type": "websocket.close", "code": 1008, "reason": exc.reason[:120]})
    except Exception as error:
        if not _gone(error):
            raise


def _gone(exc: BaseException) -> bool:
    # uvicorn raises ClientDisconnected (an OSError), Starlette's wrapper WebSocketDisconnect.
    return isinstance(exc, OSError) or type(exc).__name__ == "WebSocketDisconnect"
