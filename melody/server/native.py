"""melody's own server deciding each request its connections read (``Dispatch.on_request``).

:class:`Upgrader` parses the request head, answers plain requests (``/metrics``,
``/healthz``, the HTTP API of ``hub.enable_http_api`` with the body it reads through
``read_body``, ``handle_http``) and drives the hub's upgrade decision
(``melody.server.upgrade``) for upgrades: inline in the read callback when nothing async is
involved, else in a task bounded by ``Config.handshake_timeout``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from melody._core.extensions import negotiate
from melody._core.protocol import WebSocketProtocol
from melody._hubstate import state_of
from melody.errors import HandshakeError
from melody.handshake import (
    Request,
    build_accept_response,
    build_response,
    error_response,
    is_upgrade_request,
    parse_request,
    validate_upgrade,
)
from melody.http_api import ApiResponse
from melody.logs import error_fields
from melody.middleware import CallNext, Handshake, run_cleanups
from melody.server.upgrade import Cleanups, UpgradeDecision, keys_of
from melody.session import Session

if TYPE_CHECKING:
    from melody._hubstate import HubState
    from melody.http_api import HttpApi
    from melody.hub import Melody

__all__ = ["Upgrader", "upgrader_of"]

logger = logging.getLogger("melody.server")


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


class Upgrader(UpgradeDecision):
    """Decides each HTTP request a connection reads (``Dispatch.on_request``).

    Upgrade requests go through the hub's middleware chain (``hub.use``), whose innermost step
    validates them (RFC 6455 4.2.1), checks the configured paths and origins and asks the hub's
    ``handle_upgrade`` hook (the decision of ``melody.server.upgrade``); they are answered with
    101 or an HTTP error. Without middleware this is decided inline, in the read callback.
    Plain requests go to ``/metrics`` and ``/healthz`` when metrics are enabled, else to
    ``handle_http`` (404 without one).

    A decision made in a task (the middleware chain, an async ``handle_upgrade`` or
    ``handle_http``) has ``Config.handshake_timeout`` seconds from the request's arrival. At
    the deadline its task is cancelled (``CancelledError`` goes through the middleware, so
    their ``finally`` blocks run), the handshake's ``on_close`` callbacks run (a
    ``ConnectionLimit`` slot is given back), the client gets 504 if its connection is still
    open, and a ``HandshakeTimeout`` (a ``HandshakeError``, 504) goes to ``handle_error``.
    :func:`~melody.server.shutdown` ends the decisions in progress the same way, with 503.

    Also keeps, per accepted session, its start time and its handshake's ``on_close``
    callbacks, run when the hub reports the session ended.
    """

    __slots__ = ("_keys", "_pending")

    def __init__(self, state: HubState) -> None:
        super().__init__(state)
        # The requests being decided in a task now, by connection.
        self._pending: dict[WebSocketProtocol, _Pending] = {}
        # Sec-WebSocket-Key of the requests whose chain validated them, until accepted.
        self._keys: dict[Handshake, str] = {}

    @property
    def hub(self) -> Melody:
        """The hub whose requests this decides."""
        return self.state.hub

    def stats(self) -> dict[str, int]:
        """``upgrade_deadline_exceeded``, ``http_deadline_exceeded`` and ``decisions_pending``
        (requests being decided in a task now)."""
        return {"upgrade_deadline_exceeded": self.upgrade_deadline_exceeded,
                "http_deadline_exceeded": self.http_deadline_exceeded,
                "decisions_pending": len(self._pending)}

    def __call__(self, proto: WebSocketProtocol, block: bytes) -> None:
        state = self.state
        try:
            request = parse_request(block)
        except HandshakeError as exc:
            return self._refuse(proto, exc)
        if not is_upgrade_request(request):
            return self._plain(proto, request)
        tracing = state.tracing
        if tracing is not None:
            transport = proto.transport
            tracing.upgrade_started(proto, request, transport is not None
                                    and transport.get_extra_info("sslcontext") is not None)
        if state.middleware:
            return self._start_chain(proto, request)
        # The decision inline, in the read callback, unless handle_upgrade is async.
        try:
            key = validate_upgrade(request)
            self.check(request)
        except HandshakeError as exc:
            return self._refuse(proto, exc)
        hook = state.upgrade_hook
        if hook is None:
            self._accept(proto, request, key, None)
            return None
        try:
            decision = hook(request)
        except HandshakeError as exc:
            return self._refuse(proto, exc)
        except Exception as exc:
            logger.exception("handle_upgrade raised")
            state.report(None, exc)
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
            self.state.report(None, exc)
            if self._settle(pending):
                self._refuse(proto, HandshakeError(500, "internal error"))
            return None
        if not self._settle(pending):
            return None  # its deadline or a shutdown ended it meanwhile
        if self.state.closed:
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
                           loop.time() + self.state.config.handshake_timeout)
        self.state.spawn(self._decide(pending, body(pending, *args)), loop)

    async def _decide(self, pending: _Pending, body: Coroutine[Any, Any, None]) -> None:
        # The timer is armed once the task runs, so that it always has a task to cancel.
        pending.task = asyncio.current_task()
        self._pending[pending.proto] = pending
        pending.timer = asyncio.get_running_loop().call_at(pending.deadline, self._expire,
                                                           pending)
        if self.state.closed and pending.task is not None:
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
        self.state.report(None, exc)

    def _end(self, pending: _Pending, exc: HandshakeError) -> None:
        # End an undecided request: its on_close callbacks now (even if a middleware ignores
        # the cancellation, its slot is given back), the refusal if the client is still
        # connected (a no-op otherwise), then cancel the task so that the middleware unwind.
        handshake = pending.handshake
        if handshake is not None:
            handshake.status = exc.status
            handshake.end()
        if pending.upgrade:
            self._refuse(pending.proto, exc)
        else:
            pending.proto.reject(error_response(exc))
        task = pending.task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def cancel_pending(self, reason: str = "server shutting down") -> int:
        """End every request being decided in a task now, as its deadline would but with 503
        and ``reason`` (:func:`~melody.server.shutdown` calls it). Returns how many there
        were."""
        ended = 0
        for pending in list(self._pending.values()):
            if self._settle(pending):
                self._end(pending, HandshakeError(503, reason))
                ended += 1
        return ended

    # -- the middleware chain --------------------------------------------------------------------

    def _start_chain(self, proto: WebSocketProtocol, request: Request) -> None:
        transport = proto.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        self._defer(proto, Handshake(request, peer), True, self._run_chain,
                    self.chain(self._endpoint))

    async def _run_chain(self, pending: _Pending, chain: CallNext) -> None:
        proto = pending.proto
        handshake = pending.handshake
        assert handshake is not None
        tracing = self.state.tracing
        if tracing is not None:
            # The middleware spans are children of the upgrade's (this task's context).
            tracing.activate_upgrade(proto)
        try:
            await chain(handshake)
            if self.state.closed:
                raise HandshakeError(503, "hub is closed")
        except HandshakeError as exc:
            if self._settle(pending):
                handshake.status = exc.status
                handshake.end()
                self._refuse(proto, exc)
            return None
        except Exception as exc:
            logger.exception("handshake middleware raised")
            self.state.report(None, exc)
            if self._settle(pending):
                handshake.status = 500
                handshake.end()
                self._refuse(proto, HandshakeError(500, "internal error"))
            return None
        finally:
            key = self._keys.pop(handshake, "")
        if not self._settle(pending):
            return None  # its deadline or a shutdown ended it meanwhile
        cleanups = handshake.take_on_close()
        session = self._accept(proto, handshake.request, key, handshake.keys, cleanups,
                               handshake)
        if session is None:
            # The client left (or the handshake timed out) while the chain ran.
            if cleanups:
                run_cleanups(cleanups)
            return None
        handshake.status = 101
        proto.start()
        return None

    async def _endpoint(self, handshake: Handshake) -> None:
        # The innermost step of this server's chains: RFC 6455 4.2.1 (the ASGI server makes
        # these checks itself), then the hub's decision.
        self._keys[handshake] = validate_upgrade(handshake.request)
        await self.decide(handshake)

    # -- outcomes --------------------------------------------------------------------------------

    def _accept(self, proto: WebSocketProtocol, request: Request, key: str, decision: Any,
                cleanups: Cleanups | None = None,
                handshake: Handshake | None = None) -> Session | None:
        cfg = self.state.config
        try:
            keys = keys_of(decision)
        except HandshakeError as exc:
            self._refuse(proto, exc)
            return None
        subprotocol = self.subprotocol(request)
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
        user = handshake.user if handshake is not None else None
        session = Session(self.state.hub, proto, request, keys, subprotocol, user)
        tracing = self.state.tracing
        if not proto.accept(response, session, inflater, deflater, min_size):
            if tracing is not None:
                tracing.upgrade_ended(proto, 0)
            return None
        if tracing is not None:
            tracing.upgrade_ended(proto, 101, session)
        self.admit(proto, session, cleanups,
                   handshake.take_on_open() if handshake is not None else None)
        return session

    def _refuse(self, proto: WebSocketProtocol, exc: HandshakeError) -> None:
        logger.debug("upgrade refused: %s", exc)
        self.refused(exc.status)
        tracing = self.state.tracing
        if tracing is not None:
            tracing.upgrade_ended(proto, exc.status)
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
        api = self.state.http_api
        if api is not None and api.matches(request.path):
            return self._api(proto, api, request)
        metrics = self.state.metrics
        if metrics is not None and request.method == "GET":
            if request.path == "/metrics":
                return proto.reject(build_response(
                    200, [("Content-Type", metrics.content_type)], metrics.render()))
            if request.path == "/healthz":
                if self.state.closed:
                    return proto.reject(build_response(503, (), b"shutting down\n"))
                return proto.reject(build_response(200, (), b"ok\n"))
        hook = self.state.http_hook
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


    # -- the HTTP API (hub.enable_http_api) ------------------------------------------------------

    def _api(self, proto: WebSocketProtocol, api: HttpApi, request: Request) -> None:
        # Judged on the head (key, endpoint, method, size) before a byte of body is read;
        # then the body, then the answer in a task bounded by handshake_timeout (504).
        checked = api.check(request.method, api.endpoint_name(request.path), request.headers)
        if isinstance(checked, ApiResponse):
            return proto.reject(build_response(*checked))

        def answer(proto: WebSocketProtocol, body: bytes) -> None:
            self._defer(proto, None, False, self._api_answer, api, checked.name, body)

        proto.read_body(checked.length, answer)
        expect = request.headers.get("Expect")
        if (checked.length and expect is not None and expect.lower() == "100-continue"
                and proto.transport is not None):
            # curl asks before sending a body over 1 KiB, and waits a second for this.
            proto.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    async def _api_answer(self, pending: _Pending, api: HttpApi, name: str,
                          body: bytes) -> None:
        try:
            status, headers, payload = await api.answer(name, body)
            response = build_response(status, headers, payload)
        except Exception as exc:
            logger.exception("HTTP API endpoint %s raised", name)
            self.state.report(None, exc)
            response = build_response(500, (), b"internal error\n")
        if self._settle(pending):
            pending.proto.reject(response)


def upgrader_of(hub: Melody) -> Upgrader:
    """The :class:`Upgrader` deciding ``hub``'s requests."""
    upgrader = state_of(hub).dispatch.on_request
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
