"""Serving a hub: the upgrade decision, ``serve`` inside a loop, and blocking ``run``."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import sys
from typing import TYPE_CHECKING, Any

from melody._core.deflate import negotiate
from melody._core.protocol import WebSocketProtocol
from melody.errors import CLOSE_GOING_AWAY, HandshakeError
from melody.handshake import (
    Request,
    build_accept_response,
    build_response,
    error_response,
    is_upgrade_request,
    origin_allowed,
    parse_request,
    select_subprotocol,
    validate_upgrade,
)
from melody.session import Session

if TYPE_CHECKING:
    import ssl as _ssl

    from melody.hub import Melody

__all__ = ["serve", "run", "Upgrader"]

logger = logging.getLogger("melody.server")


class Upgrader:
    """Decides each HTTP request a connection reads (``Dispatch.on_request``).

    Upgrade requests are validated (RFC 6455 4.2.1), checked against the configured paths and
    origins, passed to the hub's ``handle_upgrade`` hook, and answered with 101 or an HTTP error.
    Plain requests go to ``handle_http`` (404 without one).
    """

    __slots__ = ("hub",)

    def __init__(self, hub: Melody) -> None:
        self.hub = hub

    def __call__(self, proto: WebSocketProtocol, block: bytes) -> None:
        hub = self.hub
        try:
            request = parse_request(block)
        except HandshakeError as exc:
            return self._refuse(proto, exc)
        if not is_upgrade_request(request):
            return self._plain(proto, request)
        cfg = hub.config
        try:
            key = validate_upgrade(request)
            if hub.is_closed():
                raise HandshakeError(503, "hub is closed")
            if cfg.paths is not None and request.path not in cfg.paths:
                raise HandshakeError(404, f"no WebSocket endpoint at {request.path}")
            if not origin_allowed(request, cfg.allowed_origins):
                raise HandshakeError(403, "origin not allowed")
        except HandshakeError as exc:
            return self._refuse(proto, exc)
        hook = hub._upgrade_hook
        if hook is None:
            return self._accept(proto, request, key, None)
        try:
            decision = hook(request)
        except HandshakeError as exc:
            return self._refuse(proto, exc)
        except Exception as exc:
            logger.exception("handle_upgrade raised")
            hub._report(None, exc)
            return self._refuse(proto, HandshakeError(500, "internal error"))
        if inspect.isawaitable(decision):
            loop = asyncio.get_running_loop()
            hub._spawn(loop, self._await_hook(proto, request, key, decision))
            return None
        return self._accept(proto, request, key, decision)

    async def _await_hook(self, proto: WebSocketProtocol, request: Request, key: str,
                          pending: Any) -> None:
        try:
            decision = await pending
        except HandshakeError as exc:
            return self._refuse(proto, exc)
        except Exception as exc:
            logger.exception("handle_upgrade raised")
            self.hub._report(None, exc)
            return self._refuse(proto, HandshakeError(500, "internal error"))
        if self.hub.is_closed():
            # The hub closed while the hook ran: a session accepted now would never be closed.
            return self._refuse(proto, HandshakeError(503, "hub is closed"))
        self._accept(proto, request, key, decision)
        proto.start()
        return None

    def _accept(self, proto: WebSocketProtocol, request: Request, key: str,
                decision: Any) -> None:
        hub = self.hub
        cfg = hub.config
        if decision is False:
            return self._refuse(proto, HandshakeError(403, "refused"))
        keys = decision if isinstance(decision, dict) else None
        subprotocol = select_subprotocol(request, cfg.subprotocols) if cfg.subprotocols else None
        extensions = None
        inflater = deflater = None
        min_size = 0
        settings = cfg.compression_settings
        if settings is not None:
            offers = request.headers.get_all("Sec-WebSocket-Extensions")
            params = negotiate(
                offers,
                server_no_context_takeover=settings.server_no_context_takeover,
                client_no_context_takeover=settings.client_no_context_takeover,
                server_max_window_bits=settings.server_max_window_bits,
                client_max_window_bits=settings.client_max_window_bits,
            ) if offers else None
            if params is not None:
                extensions = params.response_header()
                inflater = params.server_inflater()
                deflater = params.server_deflater(settings.level)
                min_size = settings.min_size
        response = build_accept_response(key, subprotocol, extensions)
        session = Session(hub, proto, request, keys, subprotocol)
        if not proto.accept(response, session, inflater, deflater, min_size):
            return None
        hub._register(proto, session)
        return None

    def _refuse(self, proto: WebSocketProtocol, exc: HandshakeError) -> None:
        logger.debug("upgrade refused: %s", exc)
        proto.reject(error_response(exc))

    def _plain(self, proto: WebSocketProtocol, request: Request) -> None:
        hook = self.hub._http_hook
        if hook is None:
            return proto.reject(build_response(404, (), b"not found\n"))
        try:
            result = hook(request)
        except Exception:
            logger.exception("handle_http raised")
            return proto.reject(build_response(500, (), b"internal error\n"))
        if inspect.isawaitable(result):
            loop = asyncio.get_running_loop()
            self.hub._spawn(loop, self._await_plain(proto, result))
            return None
        return proto.reject(_http_response(result))

    async def _await_plain(self, proto: WebSocketProtocol, pending: Any) -> None:
        try:
            result = await pending
        except Exception:
            logger.exception("handle_http raised")
            return proto.reject(build_response(500, (), b"internal error\n"))
        return proto.reject(_http_response(result))


def _http_response(result: Any) -> bytes:
    if result is None:
        return build_response(404, (), b"not found\n")
    if isinstance(result, str):
        result = result.encode()
    if isinstance(result, (bytes, bytearray)):
        return build_response(200, (), bytes(result))
    status, headers, body = result
    if isinstance(body, str):
        body = body.encode()
    return build_response(int(status), list(headers), bytes(body))


async def serve(
    hub: Melody,
    host: str | None = "127.0.0.1",
    port: int = 8000,
    *,
    ssl: _ssl.SSLContext | None = None,
    reuse_port: bool = False,
    backlog: int = 1024,
    sock: Any = None,
) -> asyncio.AbstractServer:
    """Listen for WebSocket connections to ``hub`` in the running loop; return the server."""
    loop = asyncio.get_running_loop()
    hub._attach(loop)
    dispatch = hub._dispatch

    def factory() -> WebSocketProtocol:
        return WebSocketProtocol(dispatch)

    if sock is not None:
        server = await loop.create_server(factory, sock=sock, ssl=ssl, backlog=backlog)
    else:
        server = await loop.create_server(
            factory, host, port, ssl=ssl, backlog=backlog,
            reuse_port=reuse_port or None, reuse_address=True)
    hub._servers.append(server)
    return server


def install_uvloop() -> bool:
    """Make uvloop the event loop policy when it is installed (not on Windows). True if so."""
    if sys.platform == "win32":
        return False
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


async def serve_until_stopped(
    hub: Melody,
    host: str | None = "127.0.0.1",
    port: int = 8000,
    *,
    ssl: _ssl.SSLContext | None = None,
    reuse_port: bool = False,
    ready: Any = None,
) -> None:
    """Serve until SIGINT/SIGTERM, then close every session with 1001 and return."""
    loop = asyncio.get_running_loop()
    server = await serve(hub, host, port, ssl=ssl, reuse_port=reuse_port)
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    installed = []
    for sig in signals:
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # Windows: Ctrl-C arrives as KeyboardInterrupt instead.
    for s in getattr(server, "sockets", None) or ():
        name = s.getsockname()
        scheme = "wss" if ssl else "ws"
        logger.info("melody serving on %s://%s:%s", scheme, name[0], name[1])
    if ready is not None:
        ready(server)
    try:
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        server.close()
        if not hub.is_closed():
            hub.close_with_msg(CLOSE_GOING_AWAY, "server shutting down")
        await hub.wait_closed(timeout=hub.config.close_timeout)


def run(
    hub: Melody,
    host: str | None = "127.0.0.1",
    port: int = 8000,
    *,
    ssl: _ssl.SSLContext | None = None,
    reuse_port: bool = False,
    use_uvloop: bool = True,
) -> None:
    """Serve ``hub`` until Ctrl-C or SIGTERM (blocking). Uses uvloop when it is installed."""
    if use_uvloop:
        install_uvloop()
    try:
        asyncio.run(serve_until_stopped(hub, host, port, ssl=ssl, reuse_port=reuse_port))
    except KeyboardInterrupt:
        pass
