"""Serving a hub: the upgrade decision, ``serve`` inside a loop, blocking ``run``, shutdown."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from melody._core.extensions import negotiate
from melody._core.protocol import WebSocketProtocol
from melody.errors import CLOSE_GOING_AWAY, HandshakeError, HandshakeTimeout
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
from melody.logs import error_fields, log_connect, log_disconnect
from melody.middleware import CallNext, Handshake, Middleware, build_chain, run_cleanups
from melody.session import Session

if TYPE_CHECKING:
    import ssl as _ssl

    from melody.hub import Melody
    from melody.metrics import HubMetrics

__all__ = ["serve", "run", "serve_until_stopped", "shutdown", "Upgrader", "upgrader_of"]

logger = logging.getLogger("melody.server")

#: Defaults of :func:`shutdown` (and ``Melody.shutdown``).
SHUTDOWN_TIMEOUT = 10.0
SHUTDOWN_BATCH_SIZE = 1000
SHUTDOWN_BATCH_INTERVAL = 0.1


class _Pending:
    """A request answered from a task (the middleware chain, an async ``handle_upgrade`` or
    ``handle_http``), until it is settled: by its own outcome, by its deadline, or by a
    shutdown, whichever comes first (``Upgrader._settle``); the others then do nothing."""

    __slots__ = ("deadline", "handshake", "proto", "settled", "task", "timer", "upgrade")

    def __init__(self, proto: WebSocketProtocol, handshake: Handshake | None, upgrade: bool,
                 deadline: float) -> None:
        self.proto = proto
        self.handshake = handshake
        self.upgrade = upgrade
        #: Loop time by which the answer must be decided.
        self.deadline = deadline
        self.settled = False
        self.task: asyncio.Task[Any] | None = None
        self.timer: asyncio.TimerHandle | None = None


class Upgrader:
    """Decides each HTTP request a connection reads (``Dispatch.on_request``).

    Upgrade requests go through the hub's middleware chain (``hub.use``), whose innermost step
    validates them (RFC 6455 4.2.1), checks the configured paths and origins and asks the hub's
    ``handle_upgrade`` hook; they are answered with 101 or an HTTP error. Without middleware
    this is decided inline, in the read callback. Plain requests go to ``/metrics`` and
    ``/healthz`` when metrics are enabled, else to ``handle_http`` (404 without one).

    A decision made in a task (the middleware chain, an async ``handle_upgrade`` or
    ``handle_http``) has ``Config.handshake_timeout`` seconds from the request's arrival. At
    the deadline its task is cancelled (``CancelledError`` goes through the middleware, so
    their ``finally`` blocks run), the handshake's ``on_close`` callbacks run (a
    ``ConnectionLimit`` slot is given back), the client gets 504 if its connection is still
    open, and a ``HandshakeTimeout`` (a ``HandshakeError``, 504) goes to ``handle_error``.
    :func:`shutdown` ends the decisions in progress the same way, with 503.

    Also keeps, per accepted session, its start time and its handshake's ``on_close``
    callbacks, run when the hub reports the session ended.
    """

    __slots__ = ("_chain", "_chain_of", "_live", "_pending", "http_deadline_exceeded", "hub",
                 "metrics", "upgrade_deadline_exceeded")

    def __init__(self, hub: Melody) -> None:
        self.hub = hub
        #: The hub's Prometheus metrics once ``melody.metrics.enable`` ran, else None.
        self.metrics: HubMetrics | None = None
        #: Upgrade decisions (middleware chain or async ``handle_upgrade``) cut off at their
        #: deadline, on this server and on the ASGI path.
        self.upgrade_deadline_exceeded = 0
        #: Async ``handle_http`` answers cut off at their deadline.
        self.http_deadline_exceeded = 0
        self._chain: CallNext | None = None
        self._chain_of: list[Middleware] = []
        # Per accepted session: (time.monotonic() at accept, on_close callbacks or None).
        self._live: dict[Session, tuple[float, list[Callable[[], object]] | None]] = {}
        # The requests being decided in a task now, by connection.
        self._pending: dict[WebSocketProtocol, _Pending] = {}
        hub._on_session_end.append(self._ended)

    def stats(self) -> dict[str, int]:
        """``upgrade_deadline_exceeded``, ``http_deadline_exceeded`` and ``decisions_pending``
        (requests being decided in a task now)."""
        return {"upgrade_deadline_exceeded": self.upgrade_deadline_exceeded,
                "http_deadline_exceeded": self.http_deadline_exceeded,
                "decisions_pending": len(self._pending)}

    def __call__(self, proto: WebSocketProtocol, block: bytes) -> None:
        hub = self.hub
        try:
            request = parse_request(block)
        except HandshakeError as exc:
            return self._refuse(proto, exc)
        if not is_upgrade_request(request):
            return self._plain(proto, request)
        if hub._middleware:
            return self._start_chain(proto, request)
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
            self._accept(proto, request, key, None)
            return None
        try:
            decision = hook(request)
        except HandshakeError as exc:
            return self._refuse(proto, exc)
        except Exception as exc:
            logger.exception("handle_upgrade raised")
            hub._report(None, exc)
            return self._refuse(proto, HandshakeError(500, "internal error"))
        if inspect.isawaitable(decision):
            self._defer(proto, None, True, self._await_hook, request, key, decision)
            return None
        self._accept(proto, request, key, decision)
        return None

    async def _await_hook(self, pending: _Pending, request: Request, key: str,
                          awaitable: Any) -> None:
        proto = pending.proto
        try:
            decision = await awaitable
        except HandshakeError as exc:
            if self._settle(pending):
                self._refuse(proto, exc)
            return None
        except Exception as exc:
            logger.exception("handle_upgrade raised")
            self.hub._report(None, exc)
            if self._settle(pending):
                self._refuse(proto, HandshakeError(500, "internal error"))
            return None
        if not self._settle(pending):
            return None  # its deadline or a shutdown ended it meanwhile
        if self.hub.is_closed():
            # The hub closed while the hook ran: a session accepted now would never be closed.
            return self._refuse(proto, HandshakeError(503, "hub is closed"))
        self._accept(proto, request, key, decision)
        proto.start()
        return None

    # -- decisions made in a task, and their deadline ---------------------------------------------

    def _defer(self, proto: WebSocketProtocol, handshake: Handshake | None, upgrade: bool,
               body: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        # Reading from this client pauses until the task decides (see ProtocolCore._handshake).
        # The deadline counts from now, when the request has been read: the client's own time
        # to send it is bounded by the core's handshake timer, the decision's by this one.
        loop = asyncio.get_running_loop()
        pending = _Pending(proto, handshake, upgrade,
                           loop.time() + self.hub.config.handshake_timeout)
        self.hub._spawn(loop, self._decide(pending, body(pending, *args)))

    async def _decide(self, pending: _Pending, body: Coroutine[Any, Any, None]) -> None:
        # The timer is armed once the task runs, so that it always has a task to cancel.
        pending.task = asyncio.current_task()
        self._pending[pending.proto] = pending
        pending.timer = asyncio.get_running_loop().call_at(pending.deadline, self._expire,
                                                           pending)
        if self.hub.is_closed() and pending.task is not None:
            # A shutdown began before this task ran: end it at its first suspension, with 503.
            pending.task.cancel()
        try:
            await body
        finally:
            if self._settle(pending):
                # Cancelled from outside before it decided (the loop is being torn down).
                self._end(pending, HandshakeError(503, "server shutting down"))

    def _settle(self, pending: _Pending) -> bool:
        """Mark ``pending`` decided; False if it already was (its outcome is then ignored)."""
        if pending.settled:
            return False
        pending.settled = True
        if self._pending.get(pending.proto) is pending:
            del self._pending[pending.proto]
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None
        return True

    def _expire(self, pending: _Pending) -> None:
        pending.timer = None
        if not self._settle(pending):
            return
        exc = self.deadline_passed(pending.upgrade)
        self._end(pending, exc)
        self.hub._report(None, exc)

    def deadline_passed(self, upgrade: bool = True) -> HandshakeError:
        """Count a decision cut off at ``Config.handshake_timeout``; return the error to answer
        and report (504: the server, not the client, ran out of time)."""
        seconds = self.hub.config.handshake_timeout
        if upgrade:
            self.upgrade_deadline_exceeded += 1
            what = "upgrade (handshake middleware or handle_upgrade)"
        else:
            self.http_deadline_exceeded += 1
            what = "handle_http"
        return HandshakeTimeout(f"{what} not decided within handshake_timeout ({seconds:g}s)")

    def _end(self, pending: _Pending, exc: HandshakeError) -> None:
        # End an undecided request: its on_close callbacks now (even if a middleware ignores
        # the cancellation, its slot is given back), the refusal if the client is still
        # connected (a no-op otherwise), then cancel the task so that the middleware unwind.
        handshake = pending.handshake
        if handshake is not None:
            handshake.status = exc.status
            handshake._close()
        if pending.upgrade:
            self._refuse(pending.proto, exc)
        else:
            pending.proto.reject(error_response(exc))
        task = pending.task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def cancel_pending(self, reason: str = "server shutting down") -> int:
        """End every request being decided in a task now, as its deadline would but with 503
        and ``reason`` (:func:`shutdown` calls it). Returns how many there were."""
        ended = 0
        for pending in list(self._pending.values()):
            if self._settle(pending):
                self._end(pending, HandshakeError(503, reason))
                ended += 1
        return ended

    # -- the middleware chain --------------------------------------------------------------------

    def _start_chain(self, proto: WebSocketProtocol, request: Request) -> None:
        hub = self.hub
        if self._chain is None or self._chain_of != hub._middleware:
            self._chain_of = list(hub._middleware)
            self._chain = build_chain(self._chain_of, self._endpoint)
        transport = proto.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        self._defer(proto, Handshake(request, peer), True, self._run_chain, self._chain)

    async def _run_chain(self, pending: _Pending, chain: CallNext) -> None:
        proto = pending.proto
        handshake = pending.handshake
        assert handshake is not None
        try:
            await chain(handshake)
            if self.hub.is_closed():
                raise HandshakeError(503, "hub is closed")
        except HandshakeError as exc:
            if self._settle(pending):
                handshake.status = exc.status
                handshake._close()
                self._refuse(proto, exc)
            return None
        except Exception as exc:
            logger.exception("handshake middleware raised")
            self.hub._report(None, exc)
            if self._settle(pending):
                handshake.status = 500
                handshake._close()
                self._refuse(proto, HandshakeError(500, "internal error"))
            return None
        if not self._settle(pending):
            return None  # its deadline or a shutdown ended it meanwhile
        cleanups, handshake._cleanups = handshake._cleanups, None
        session = self._accept(proto, handshake.request, handshake._key, handshake.keys,
                               cleanups)
        if session is None:
            # The client left (or the handshake timed out) while the chain ran.
            if cleanups:
                run_cleanups(cleanups)
            return None
        handshake.status = 101
        proto.start()
        return None

    async def _endpoint(self, handshake: Handshake) -> None:
        # The innermost step of every chain: what the inline path checks, then handle_upgrade.
        hub = self.hub
        cfg = hub.config
        request = handshake.request
        handshake._key = validate_upgrade(request)
        if hub.is_closed():
            raise HandshakeError(503, "hub is closed")
        if cfg.paths is not None and request.path not in cfg.paths:
            raise HandshakeError(404, f"no WebSocket endpoint at {request.path}")
        if not origin_allowed(request, cfg.allowed_origins):
            raise HandshakeError(403, "origin not allowed")
        hook = hub._upgrade_hook
        if hook is None:
            return
        decision = hook(request)
        if inspect.isawaitable(decision):
            decision = await decision
        if decision is False:
            raise HandshakeError(403, "refused")
        if isinstance(decision, dict):
            handshake.keys.update(decision)

    # -- outcomes --------------------------------------------------------------------------------

    def _accept(self, proto: WebSocketProtocol, request: Request, key: str, decision: Any,
                cleanups: list[Callable[[], object]] | None = None) -> Session | None:
        hub = self.hub
        cfg = hub.config
        if decision is False:
            self._refuse(proto, HandshakeError(403, "refused"))
            return None
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
        self._live[session] = (time.monotonic(), cleanups)
        log_connect(session)
        hub._register(proto, session)
        return session

    def _ended(self, session: Session) -> None:
        # Called by the hub when a session's connection ended (Melody._on_session_end).
        entry = self._live.pop(session, None)
        if self.metrics is not None:
            self.metrics.disconnected(session.close_code)
        if entry is None:
            log_disconnect(session, None)
            return
        started, cleanups = entry
        log_disconnect(session, time.monotonic() - started)
        if cleanups:
            run_cleanups(cleanups)

    def _refuse(self, proto: WebSocketProtocol, exc: HandshakeError) -> None:
        logger.debug("upgrade refused: %s", exc)
        if self.metrics is not None:
            self.metrics.rejected(exc.status)
        try:
            response = error_response(exc)
        except ValueError:
            # A HandshakeError whose headers cannot be sent (CR/LF in a value, ...).
            logger.error("cannot send the refusal %r: invalid status or headers", exc,
                         extra=error_fields(None, exc))
            response = build_response(500, (), b"internal error\n")
        proto.reject(response)

    # -- plain HTTP --------------------------------------------------------------------------------

    def _plain(self, proto: WebSocketProtocol, request: Request) -> None:
        metrics = self.metrics
        if metrics is not None and request.method == "GET":
            if request.path == "/metrics":
                return proto.reject(build_response(
                    200, [("Content-Type", metrics.content_type)], metrics.render()))
            if request.path == "/healthz":
                if self.hub.is_closed():
                    return proto.reject(build_response(503, (), b"shutting down\n"))
                return proto.reject(build_response(200, (), b"ok\n"))
        hook = self.hub._http_hook
        if hook is None:
            return proto.reject(build_response(404, (), b"not found\n"))
        try:
            result = hook(request)
        except Exception:
            logger.exception("handle_http raised")
            return proto.reject(build_response(500, (), b"internal error\n"))
        if inspect.isawaitable(result):
            self._defer(proto, None, False, self._await_plain, result)
            return None
        return proto.reject(_http_response(result))

    async def _await_plain(self, pending: _Pending, awaitable: Any) -> None:
        proto = pending.proto
        try:
            result = await awaitable
        except Exception:
            logger.exception("handle_http raised")
            if self._settle(pending):
                proto.reject(build_response(500, (), b"internal error\n"))
            return None
        if self._settle(pending):
            proto.reject(_http_response(result))
        return None


def upgrader_of(hub: Melody) -> Upgrader:
    """The :class:`Upgrader` deciding ``hub``'s requests."""
    upgrader = hub._dispatch.on_request
    if not isinstance(upgrader, Upgrader):
        raise RuntimeError("this hub's requests are not decided by melody.server.Upgrader")
    return upgrader


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
    metrics: bool = False,
) -> asyncio.Server:
    """Listen for WebSocket connections to ``hub`` in the running loop; return the server.

    ``ssl`` serves wss://. ``metrics=True`` also answers ``GET /metrics`` (Prometheus) and
    ``GET /healthz`` on the same port (see :mod:`melody.metrics`; needs prometheus_client).
    """
    loop = asyncio.get_running_loop()
    if metrics:
        from melody.metrics import enable

        enable(hub)
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


async def shutdown(
    hub: Melody,
    timeout: float = SHUTDOWN_TIMEOUT,
    *,
    batch_size: int = SHUTDOWN_BATCH_SIZE,
    batch_interval: float = SHUTDOWN_BATCH_INTERVAL,
    code: int = CLOSE_GOING_AWAY,
    reason: str = "server shutting down",
    _abort_now: asyncio.Event | None = None,
) -> None:
    """Drain ``hub`` gracefully; the implementation of ``Melody.shutdown`` (see there)."""
    if timeout <= 0 or batch_size < 1 or batch_interval < 0:
        raise ValueError("shutdown needs timeout > 0, batch_size >= 1, batch_interval >= 0")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    abort_now = _abort_now or asyncio.Event()
    d = hub._dispatch
    saved_close_timeout = d.close_timeout
    try:
        first = not hub._closed
        hub._closed = True
        # Upgrades being decided (middleware, async hooks) end now with 503 and give back what
        # they hold, such as ConnectionLimit slots; those that arrive later get 503 too.
        upgrader = d.on_request
        if isinstance(upgrader, Upgrader):
            upgrader.cancel_pending()
        if first:
            # Stop accepting: no new TCP connections.
            for server in hub._servers:
                server.close()
            if hub._heartbeat is not None:
                hub._heartbeat.cancel()
                hub._heartbeat = None
            if hub.backplane is not None:
                hub._spawn(loop, hub.backplane.stop())
            protos = hub._all.members()
            # The closes go out in batches so that clients do not all reconnect at once; the
            # batches grow if needed so that every close is sent within half of the timeout.
            batches = math.ceil(len(protos) / batch_size)
            if batches > 1 and batch_interval > 0:
                most = max(1, int(timeout / 2 / batch_interval) + 1)
                if batches > most:
                    batch_size = math.ceil(len(protos) / most)
            for start in range(0, len(protos), batch_size):
                if start:
                    await _sleep_unless(abort_now, batch_interval)
                if abort_now.is_set():
                    break
                # A close frame waits behind the frames already queued for its session, so
                # that every message accepted before now is delivered to a peer that keeps
                # reading; each session then has until the deadline to answer the close.
                d.close_timeout = max(deadline - loop.time(), 0.001)
                for proto in protos[start:start + batch_size]:
                    proto.close(code, reason)
        while len(hub._all) and loop.time() < deadline and not abort_now.is_set():
            await _sleep_unless(abort_now, 0.01)
        # What is left did not answer in time: drop it. connection_lost then reports each.
        for proto in hub._all.members():
            proto.abort()
        grace = loop.time() + 1.0
        while len(hub._all) and loop.time() < grace:
            await asyncio.sleep(0.005)
        for proto in hub._all.members():
            # A transport that never reported connection_lost: end the session by hand, so
            # that handle_disconnect runs for every session all the same.
            hub._disconnected(proto)
        # Let handle_disconnect (and other handler) tasks finish, within the timeout.
        pending = {t for t in hub._tasks if t is not asyncio.current_task()}
        if pending:
            await asyncio.wait(pending, timeout=max(deadline - loop.time(), 0.5))
        for server in hub._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), max(deadline - loop.time(), 0.5))
            except TimeoutError:
                logger.warning("server %r still had connections at the shutdown deadline",
                               server)
    finally:
        d.close_timeout = saved_close_timeout


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    if event.is_set():
        return
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        pass


async def serve_until_stopped(
    hub: Melody,
    host: str | None = "127.0.0.1",
    port: int = 8000,
    *,
    ssl: _ssl.SSLContext | None = None,
    reuse_port: bool = False,
    ready: Callable[[asyncio.Server], object] | None = None,
    metrics: bool = False,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
) -> None:
    """Serve until SIGINT/SIGTERM, then ``hub.shutdown(shutdown_timeout)`` and return.

    ``ready(server)`` is called once listening (``server.sockets`` gives the real port when
    ``port=0``). A second signal during the shutdown drops the remaining connections at once.
    """
    loop = asyncio.get_running_loop()
    server = await serve(hub, host, port, ssl=ssl, reuse_port=reuse_port, metrics=metrics)
    stop = asyncio.Event()
    abort_now = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            logger.warning("second signal: dropping the remaining connections")
            abort_now.set()
        stop.set()

    signals = (signal.SIGINT, signal.SIGTERM)
    installed = []
    for sig in signals:
        try:
            loop.add_signal_handler(sig, on_signal)
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
        logger.info("shutting down: closing %d sessions (1001), up to %gs", len(hub),
                    shutdown_timeout)
        await shutdown(hub, shutdown_timeout, _abort_now=abort_now)
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
    metrics: bool = False,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
    ready: Callable[[asyncio.Server], object] | None = None,
) -> None:
    """Serve ``hub`` until Ctrl-C or SIGTERM (blocking), then shut down gracefully.

    Uses uvloop when it is installed. ``metrics=True`` serves ``/metrics`` and ``/healthz``;
    ``shutdown_timeout`` bounds the drain (see ``Melody.shutdown``). ``ready(server)`` is
    called once listening, e.g. to print the address (the real port when ``port=0``).
    """
    if use_uvloop:
        install_uvloop()
    try:
        asyncio.run(serve_until_stopped(hub, host, port, ssl=ssl, reuse_port=reuse_port,
                                        ready=ready, metrics=metrics,
                                        shutdown_timeout=shutdown_timeout))
    except KeyboardInterrupt:
        pass
