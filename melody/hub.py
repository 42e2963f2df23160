"""The hub: handlers, the set of sessions, and broadcast (Go melody's ``Melody``)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from melody._core.fanout import Group
from melody._core.fanout import broadcast_binary as _fanout_binary
from melody._core.fanout import broadcast_text as _fanout_text
from melody._core.protocol import Dispatch, WebSocketProtocol, heartbeat
from melody.codecs import JSON as _JSON
from melody.codecs import Codec
from melody.config import OVERFLOW_POLICIES, Config
from melody.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    AckTimeout,
    DecodeError,
    HandshakeTimeout,
    HubClosed,
    InvalidPayload,
    MessageBufferFull,
    MessageTooBig,
    PongTimeout,
    ProtocolError,
    RateLimited,
    SessionClosed,
    TopicLimitExceeded,
    WriteTimeout,
)
from melody.logs import error_fields
from melody.routing import Authorizer, Router
from melody.session import Session

if TYPE_CHECKING:
    import ssl as _ssl

    from melody.asgi import AsgiAdapter
    from melody.backplane import Backplane
    from melody.middleware import Middleware


__all__ = ["Melody"]

logger = logging.getLogger("melody")

F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound="Middleware")


def _noop(*_: Any) -> None:
    return None


class Melody:
    """A WebSocket hub: register handlers, serve, broadcast.

    ::

        hub = melody.Melody()

        @hub.handle_message
        def echo(session, msg):
            hub.broadcast(msg)

        melody.run(hub, port=5000)

    Handlers are plain functions (called inline on the event loop: the fast path) or ``async
    def`` functions (run as tasks; one session's calls run one after another, in arrival
    order, unless ``Config.concurrent_message_handling``). Every registration method returns
    its argument, so each works as a decorator.
    """

    def __init__(self, config: Config | None = None, *,
                 backplane: Backplane | None = None, codec: Codec | None = None) -> None:
        #: The hub's configuration (immutable).
        self.config = config if config is not None else Config()
        #: Shares broadcasts and publishes with other hub processes (e.g. RedisBackplane).
        self.backplane = backplane
        # Every registered connection, and one group per topic: what broadcasts walk.
        self._all = Group()
        self._topics: dict[str, Group] = {}
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.Server] = []
        self._heartbeat: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

        self._on_connect: Callable[..., Any] | None = None
        self._on_disconnect: Callable[..., Any] | None = None
        self._on_text: Callable[..., Any] | None = None
        self._on_binary: Callable[..., Any] | None = None
        self._on_sent_text: Callable[..., Any] | None = None
        self._on_sent_binary: Callable[..., Any] | None = None
        self._on_error: Callable[..., Any] | None = None
        self._on_close: Callable[..., Any] | None = None
        self._on_pong: Callable[..., Any] | None = None
        self._upgrade_hook: Callable[..., Any] | None = None
        self._any_async = False
        #: What messages are (``melody.codecs``): None passes ``str``/``bytes`` through.
        self.codec = codec
        # What broadcast_json/publish_json/write_json encode with: the hub's codec when it is
        # a text one (so a custom JSON codec is used), else orjson.
        self._json: Codec = codec if codec is not None and not codec.binary else _JSON
        self._router: Router | None = None
        # Counters of the codec and routing layer, reported by stats().
        self._message_stats = {"decode_errors": 0, "unroutable": 0, "denied": 0,
                               "subscriptions_refused": 0,
                               "ack_timeouts": 0}
        self._backplane_stopping: asyncio.Task[None] | None = None
        self._http_hook: Callable[..., Any] | None = None

        cfg = self.config
        d = Dispatch()
        d.write_wait = cfg.write_wait
        d.close_timeout = cfg.close_timeout
        d.handshake_timeout = cfg.handshake_timeout
        d.max_header_size = cfg.max_header_size
        d.max_message_size = cfg.max_message_size
        d.queue_limit = cfg.message_buffer_size
        d.write_buffer_high = cfg.write_buffer_high
        d.read_buffer_size = cfg.read_buffer_size
        d.queue_bytes_limit = cfg.message_buffer_bytes
        d.overflow_policy = OVERFLOW_POLICIES.index(cfg.overflow_policy)
        d.direct_writes = cfg.direct_writes
        limit = cfg.rate_limit
        if limit is not None:
            d.rate_limited = True
            d.rate_messages = limit.messages_per_second
            d.burst_messages = limit.burst_messages
            # No byte limit is an effectively infinite bucket (one double compare per message).
            d.rate_bytes = limit.bytes_per_second or 1e300
            if limit.bytes_per_second is None:
                d.burst_bytes = 1e300
            else:
                d.burst_bytes = limit.burst_bytes or 2 * limit.bytes_per_second
            d.rate_close = limit.policy == "close"
            d.on_rate_limit = self._rate_limited
        d.on_disconnect = self._disconnected
        d.on_protocol_error = self._protocol_error
        d.on_timeout = self._timeout
        d.on_handler_error = self._report
        self._dispatch = d
        # Handshake middleware (hub.use) and what runs when a session ends (the Upgrader's
        # bookkeeping: disconnect logs and metrics, handshake on_close callbacks).
        self._middleware: list[Middleware] = []
        self._on_session_end: list[Callable[[Session], None]] = []
        from melody.server import Upgrader

        self._upgrader = d.on_request = Upgrader(self)
        self._rebuild_dispatch()

    # -- handler registration (Go: HandleConnect, HandleMessage, ...) ----------------------------

    def handle_connect(self, fn: F) -> F:
        """``fn(session)``: a session was upgraded and registered."""
        self._on_connect = fn
        self._rebuild_dispatch()
        return fn

    def handle_disconnect(self, fn: F) -> F:
        """``fn(session)``: a session ended (after its close handshake, or when TCP dropped)."""
        self._on_disconnect = fn
        self._rebuild_dispatch()
        return fn

    def handle_message(self, fn: F) -> F:
        """``fn(session, msg: str)``: a text message arrived.

        With a codec (``Melody(codec=...)``) ``msg`` is the decoded object, from text and
        binary messages alike; with routes (:meth:`route`) the router gets it instead.
        """
        self._on_text = fn
        self._rebuild_dispatch()
        return fn

    def handle_message_binary(self, fn: F) -> F:
        """``fn(session, msg: bytes)``: a binary message arrived."""
        self._on_binary = fn
        self._rebuild_dispatch()
        return fn

    def handle_sent_message(self, fn: F) -> F:
        """``fn(session, msg: str)``: a text message was handed to the session's socket.

        Costs one Python call per recipient of every broadcast: register it only when needed.
        """
        self._on_sent_text = fn
        self._rebuild_dispatch()
        return fn

    def handle_sent_message_binary(self, fn: F) -> F:
        """``fn(session, msg: bytes)``: a binary message was handed to the session's socket."""
        self._on_sent_binary = fn
        self._rebuild_dispatch()
        return fn

    def handle_error(self, fn: F) -> F:
        """``fn(session, error)``: something went wrong for a session.

        Receives ``MessageBufferFull``, ``ProtocolError`` (and its ``InvalidPayload`` and
        ``MessageTooBig``), ``PongTimeout``, ``WriteTimeout``, with a codec ``DecodeError``
        (and its subclasses) and ``AckTimeout``, and exceptions raised by the other
        handlers. Without an error handler they are logged on the ``melody`` logger.
        """
        self._on_error = fn
        self._rebuild_dispatch()
        return fn

    def handle_close(self, fn: F) -> F:
        """``fn(session, code, reason)``: the peer sent a close frame (the reply is automatic)."""
        self._on_close = fn
        self._rebuild_dispatch()
        return fn

    def handle_pong(self, fn: F) -> F:
        """``fn(session)``: a pong arrived (an answer to the hub's heartbeat ping)."""
        self._on_pong = fn
        self._rebuild_dispatch()
        return fn

    def handle_upgrade(self, fn: F) -> F:
        """``fn(request) -> keys | None``: decide an upgrade before the session exists.

        Go's ``HandleRequestWithKeys``: return a dict to accept with those keys on the session,
        None or True to accept with none; raise ``melody.errors.HandshakeError(status, reason,
        headers)`` to refuse (e.g. 401 for a bad token). May be ``async def``; reading from the
        client pauses while it runs.
        """
        self._upgrade_hook = fn
        return fn

    def handle_http(self, fn: F) -> F:
        """``fn(request) -> response | None`` answers plain GETs that are not upgrades.

        Return ``bytes``/``str`` (a 200 body), ``(status, headers, body)``, or None for 404.
        Useful for a health check or a small page; may be ``async def``.
        """
        self._http_hook = fn
        return fn

    def use(self, middleware: M) -> M:
        """Add a handshake middleware, run on every upgrade request before its session exists.

        ``middleware(handshake, call_next)`` is an async callable (see ``melody.middleware``):
        it may refuse (raise ``HandshakeError``), add ``handshake.keys``, or ``await
        call_next(handshake)``. Middlewares run in the order they were added, before
        ``handle_upgrade``. Returns its argument, so it works as a decorator.
        """
        self._middleware.append(middleware)
        return middleware

    def _rebuild_dispatch(self) -> None:
        # The compiled connection calls these directly: a sync handler is called with no
        # wrapper at all; an async one goes through the per-session queue.
        d = self._dispatch
        handlers = (self._on_connect, self._on_disconnect, self._on_text, self._on_binary,
                    self._on_sent_text, self._on_sent_binary, self._on_close, self._on_pong)
        # With no async handler no session ever has pending calls: hand the compiled
        # connection the user's functions themselves, no wrapper in between.
        self._any_async = any(inspect.iscoroutinefunction(h) for h in handlers if h is not None)
        d.on_text = self._wrap_event(self._on_text)
        d.on_binary = self._wrap_event(self._on_binary)
        if self.codec is not None:
            # Decoded inline, then handed on exactly as a raw message would have been. Without
            # a codec nothing of this runs: the raw path keeps no wrapper.
            d.on_text = d.on_binary = self._decoding(
                self._wrap_event(self._router if self._router is not None else self._on_text))
        d.on_close = self._wrap_event(self._on_close) if self._on_close else None
        d.on_pong = self._wrap_event(self._on_pong) if self._on_pong else None

    def _wrap_event(self, fn: Callable[..., Any] | None) -> Callable[..., Any]:
        if fn is None:
            return _noop
        if not self._any_async:
            return fn
        if inspect.iscoroutinefunction(fn):
            def schedule(session: Session, *args: Any) -> None:
                self._enqueue(session, fn, args)

            return schedule

        def ordered(session: Session, *args: Any) -> None:
            # A sync handler after pending async ones keeps the session's order.
            if session._inbox:
                self._enqueue(session, fn, args)
            else:
                fn(session, *args)

        return ordered

    # -- running handlers ------------------------------------------------------------------------

    def _call(self, session: Session, fn: Callable[..., Any] | None, *args: Any) -> None:
        """Run a handler: inline when sync and nothing is pending, else queued/scheduled."""
        if fn is None:
            return
        if inspect.iscoroutinefunction(fn) or session._inbox:
            self._enqueue(session, fn, args)
            return
        try:
            fn(session, *args)
        except Exception as exc:
            self._report(session, exc)

    def _enqueue(self, session: Session, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        loop = self._loop or asyncio.get_running_loop()
        if self.config.concurrent_message_handling:
            self._enqueue_concurrent(loop, session, fn, args)
            return
        if session._inbox is None:
            session._inbox = deque()
        session._inbox.append((fn, args))
        if len(session._inbox) >= self.config.message_buffer_size and not session._paused:
            # Async handlers lag behind the socket: stop reading this peer until they catch up.
            transport = session._proto.transport
            if transport is not None:
                session._paused = True
                transport.pause_reading()
        if not session._draining:
            session._draining = True
            self._spawn(loop, self._drain(session))

    def _enqueue_concurrent(self, loop: asyncio.AbstractEventLoop, session: Session,
                            fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        # At most max_concurrent_handlers tasks per session. Past the bound a call waits in the
        # session's inbox, in arrival order (sync calls behind it too), and reading from the
        # peer pauses, as in the sequential mode: what a fast sender costs is the one read
        # that was being parsed, never a task per message.
        if not session._inbox and session._running < self.config.max_concurrent_handlers:
            self._start_concurrent(loop, session, fn, args)
            return
        if session._inbox is None:
            session._inbox = deque()
        session._inbox.append((fn, args))
        if not session._paused:
            transport = session._proto.transport
            if transport is not None:
                session._paused = True
                transport.pause_reading()

    async def _run_concurrently(
        self, session: Session, fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> None:
        try:
            await self._run_one(session, fn, args)
        finally:
            session._running -= 1
            self._release_concurrent(session)

    def _release_concurrent(self, session: Session) -> None:
        # A handler task ended: start what waited for its slot, then read again once half of
        # the slots are free and nothing waits.
        limit = self.config.max_concurrent_handlers
        inbox = session._inbox
        while inbox and session._running < limit:
            fn, args = inbox.popleft()
            self._start_concurrent(self._loop or asyncio.get_running_loop(), session, fn, args)
        if session._paused and not inbox and session._running <= limit // 2:
            session._paused = False
            transport = session._proto.transport
            if transport is not None:
                transport.resume_reading()

    def _start_concurrent(self, loop: asyncio.AbstractEventLoop, session: Session,
                          fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        # An async call takes a slot and a task; a sync one runs now, in its turn.
        if inspect.iscoroutinefunction(fn):
            session._running += 1
            self._spawn(loop, self._run_concurrently(session, fn, args))
            return
        try:
            fn(session, *args)
        except Exception as exc:
            self._report(session, exc)

    def _spawn(self, loop: asyncio.AbstractEventLoop, coro: Any) -> None:
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_one(
        self, session: Session, fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> None:
        try:
            result = fn(session, *args)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            self._report(session, exc)

    async def _drain(self, session: Session) -> None:
        inbox = session._inbox
        assert inbox is not None
        limit = self.config.message_buffer_size
        try:
            while inbox:
                fn, args = inbox.popleft()
                await self._run_one(session, fn, args)
                if session._paused and len(inbox) <= limit // 2:
                    session._paused = False
                    transport = session._proto.transport
                    if transport is not None:
                        transport.resume_reading()
        finally:
            session._draining = False

    def _report(self, session: Session | None, error: BaseException) -> None:
        handler = self._on_error
        if handler is None:
            if isinstance(error, (ProtocolError, MessageBufferFull, PongTimeout, WriteTimeout,
                                  RateLimited, DecodeError, AckTimeout, HandshakeTimeout)):
                logger.info("session %r: %s", session, error,
                            extra=error_fields(session, error))
            elif session is None:
                logger.error("hub: %s", error, exc_info=error, extra=error_fields(session, error))
            else:
                logger.error("session %r: handler raised", session, exc_info=error,
                             extra=error_fields(session, error))
            return
        try:
            result = handler(session, error)
            if inspect.isawaitable(result):
                loop = self._loop or asyncio.get_running_loop()
                self._spawn(loop, self._await_error_handler(session, result))
        except Exception:
            logger.exception("handle_error raised while handling %r", error)

    async def _await_error_handler(self, session: Session | None, result: Awaitable[Any]) -> None:
        try:
            await result
        except Exception:
            logger.exception("async handle_error raised")

    def _sent(self, session: Session, msg: Any, binary: bool) -> None:
        fn = self._on_sent_binary if binary else self._on_sent_text
        self._call(session, fn, msg)

    # -- the session registry --------------------------------------------------------------------

    def _register(self, proto: WebSocketProtocol, session: Session) -> None:
        self._all.add(proto)
        self._dispatch.connects += 1
        self._call(session, self._on_connect)

    def _disconnected(self, proto: WebSocketProtocol) -> None:
        if not self._all.discard(proto):
            return
        self._dispatch.disconnects += 1
        session: Session | None = proto.session
        if session is not None:
            if session._topics:
                for topic in session._topics:
                    self._leave(proto, topic)
                session._topics = None
            for hook in self._on_session_end:
                hook(session)
            self._call(session, self._on_disconnect)

    def _protocol_error(self, session: Session, code: int, reason: str) -> None:
        if code == 1007:
            error: ProtocolError = InvalidPayload(reason)
        elif code == 1009:
            error = MessageTooBig(reason)
        else:
            error = ProtocolError(reason, code)
        self._report(session, error)

    def _rate_limited(self, session: Session, size: int) -> None:
        self._report(session, RateLimited(f"inbound rate limit exceeded ({size} bytes)"))

    def _timeout(self, session: Session, kind: str) -> None:
        if kind == "write":
            self._report(session, WriteTimeout(
                f"peer read nothing for {self.config.write_wait}s: dropped as a slow reader"))

    def sessions(self) -> list[Session]:
        """A snapshot of the registered sessions, closing ones included (Go: ``Sessions()``).

        A session leaves the list when its connection ends, when ``handle_disconnect`` runs.
        """
        return [p.session for p in self._all]

    def __len__(self) -> int:
        """The number of connected sessions (Go: ``Len()``)."""
        return len(self._all)

    def is_closed(self) -> bool:
        """True after :meth:`close` (Go: ``IsClosed()``)."""
        return self._closed

    # -- broadcast (Go: Broadcast, BroadcastFilter, BroadcastOthers, BroadcastMultiple, ...) -----

    def _fan_out(
        self,
        msg: Any,
        binary: bool,
        targets: Group | list[WebSocketProtocol],
        exclude: WebSocketProtocol | None = None,
        predicate: Callable[[Session], bool] | None = None,
    ) -> int:
        # The one broadcast primitive under every public variant (as Go's broadcastFilter).
        if self._closed:
            raise HubClosed("hub is closed")
        return self._deliver(msg, binary, targets, exclude, predicate)

    def _deliver(
        self,
        msg: Any,
        binary: bool,
        targets: Group | list[WebSocketProtocol],
        exclude: WebSocketProtocol | None = None,
        predicate: Callable[[Session], bool] | None = None,
    ) -> int:
        sent_handler = self._on_sent_binary if binary else self._on_sent_text
        recipients: list[WebSocketProtocol] | None = [] if sent_handler is not None else None
        d = self._dispatch
        d.broadcasts += 1
        if isinstance(targets, Group):
            fan_out = targets.broadcast_binary if binary else targets.broadcast_text
            sent, dropped = fan_out(msg, exclude, predicate, recipients)
        else:
            fan = _fanout_binary if binary else _fanout_text
            sent, dropped = fan(targets, msg, exclude, predicate, recipients)
        if dropped:
            for proto in dropped:
                self._report(proto.session, MessageBufferFull("message buffer full: dropped"))
        if recipients:
            payload = bytes(msg) if binary else msg
            for proto in recipients:
                self._call(proto.session, sent_handler, payload)
        return int(sent)

    def broadcast(self, msg: str) -> int:
        """Send a text message to every session; the frame is built once for all.

        Returns how many sessions it was handed to. Raises ``HubClosed`` after :meth:`close`.
        Never waits for a slow reader (see ``Config.message_buffer_size``).
        """
        self._share(None, msg, False)
        return self._fan_out(msg, False, self._all)

    def _share(self, topic: str | None, msg: Any, binary: bool) -> None:
        # Hand the message to the other nodes once (not once per node); they frame it once.
        if self.backplane is not None and not self._closed:
            payload = bytes(msg) if binary else msg.encode("utf-8")
            self.backplane.publish(topic, binary, payload)

    def _deliver_remote(self, topic: str | None, binary: bool, payload: bytes) -> int:
        """Deliver a message that another node published (called by the backplane)."""
        if self._closed:
            return 0
        msg: Any = payload if binary else payload.decode("utf-8")
        if topic is None:
            return self._deliver(msg, binary, self._all)
        group = self._topics.get(topic)
        return self._deliver(msg, binary, group) if group is not None else 0

    def broadcast_filter(self, msg: str, fn: Callable[[Session], bool]) -> int:
        """Send ``msg`` to the sessions for which ``fn(session)`` is true (one call each)."""
        return self._fan_out(msg, False, self._all, None, fn)

    def broadcast_others(self, msg: str, session: Session) -> int:
        """Send ``msg`` to every session except ``session`` (typically the sender)."""
        self._share(None, msg, False)
        return self._fan_out(msg, False, self._all, session._proto)

    def broadcast_multiple(self, msg: str, sessions: Iterable[Session]) -> int:
        """Send ``msg`` to each of ``sessions`` (framed once, as every broadcast)."""
        return self._fan_out(msg, False, [s._proto for s in sessions])

    def broadcast_binary(self, msg: bytes | bytearray | memoryview) -> int:
        """Binary :meth:`broadcast`."""
        self._share(None, msg, True)
        return self._fan_out(msg, True, self._all)

    def broadcast_binary_filter(
        self, msg: bytes | bytearray | memoryview, fn: Callable[[Session], bool]
    ) -> int:
        """Binary :meth:`broadcast_filter`."""
        return self._fan_out(msg, True, self._all, None, fn)

    def broadcast_binary_others(
        self, msg: bytes | bytearray | memoryview, session: Session
    ) -> int:
        """Binary :meth:`broadcast_others`."""
        self._share(None, msg, True)
        return self._fan_out(msg, True, self._all, session._proto)

    def broadcast_binary_multiple(
        self, msg: bytes | bytearray | memoryview, sessions: Iterable[Session]
    ) -> int:
        """Binary :meth:`broadcast_multiple`."""
        return self._fan_out(msg, True, [s._proto for s in sessions])

    # -- codecs, routing, acks, authorization (melody.codecs, melody.routing) ----------------

    def _decoding(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        assert self.codec is not None
        decode = self.codec.decode

        def on_message(session: Session, msg: Any) -> None:
            try:
                obj = decode(msg)
            except DecodeError as exc:
                self._bad_message(session, exc)
                return
            handler(session, obj)

        return on_message

    def _bad_message(self, session: Session, error: DecodeError) -> None:
        codec = self.codec
        assert codec is not None
        self._message_stats["decode_errors"] += 1
        self._report(session, error)
        if session.is_closed:
            return
        if codec.on_invalid == "reply":
            self._send_encoded(session, codec.reply(None, None, False, error.reason))
        else:
            session.close_with_msg(error.code, error.reason)

    def _send_encoded(self, session: Session, payload: str | bytes) -> None:
        # A codec's output: binary frames for a binary codec, text otherwise.
        assert self.codec is not None
        if self.codec.binary:
            session.write_binary(payload if isinstance(payload, bytes) else payload.encode())
        else:
            session.write(payload if isinstance(payload, str) else payload.decode("utf-8"))

    def _json_text(self, obj: Any) -> str:
        text = self._json.encode(obj)
        return text if isinstance(text, str) else text.decode("utf-8")

    def _routing(self) -> Router:
        if self.codec is None:
            raise ValueError("routing needs a codec: Melody(codec=melody.codecs.JSON)")
        if self._router is None:
            self._router = Router(self, self.codec)
        return self._router

    def route(self, type: str | int, *, timeout: float | None = 10.0) -> Callable[[F], F]:
        """Decorator: ``fn(session, data)`` handles messages of ``type`` (see melody.routing).

        ``type`` is the JSON ``type`` field (a str) or a Packet command (an int). When the
        message carries an ``id``, the return value (awaited for ``async def``) goes back as
        ``{"id": id, "ok": true, "data": value}``; an async handler running longer than
        ``timeout`` seconds (None: no limit) is cancelled and answered ``"timeout"``. Dispatch
        is one dict lookup. With routes, ``handle_message`` is no longer called: unknown
        types go to :meth:`route_fallback` or get an error reply. Raises ValueError when the
        hub has no codec.
        """
        router = self._routing()

        def register(fn: F) -> F:
            router.add(type, fn, timeout)
            self._rebuild_dispatch()
            return fn

        return register

    def route_fallback(self, fn: F) -> F:
        """``fn(session, msg)`` (the whole decoded message) gets messages whose type has no
        route; its return value is the ack, as for :meth:`route`. Raises ValueError when the
        hub has no codec."""
        self._routing().set_fallback(fn, 10.0)
        self._rebuild_dispatch()
        return fn

    def authorize(self, fn: Authorizer) -> Authorizer:
        """Let clients subscribe and publish, as decided by ``fn(session, action, topic)``.

        Turns on the built-in route types ``subscribe``, ``unsubscribe`` and ``publish``
        (wire format in ``melody.routing``); ``fn`` returns True to allow ``action``
        (``"subscribe"`` or ``"publish"``) on ``topic``. Denied requests get the error reply
        ``"forbidden"`` and are counted in ``stats()["denied"]``. ``fn`` is called inline for
        every request: keep it cheap (``melody.auth.roles`` reads roles from session keys).
        Server-side ``hub.subscribe``/``publish`` calls are not checked. Raises ValueError
        when the hub has no codec.
        """
        self._routing().set_authorizer(fn)
        self._rebuild_dispatch()
        return fn

    def broadcast_json(self, obj: Any) -> int:
        """Send ``obj`` as JSON to every session: encoded once, framed once, for all.

        Encodes with the hub's codec when it is a text codec, else with
        ``melody.codecs.JSON`` (orjson). Returns how many sessions took it; raises TypeError
        when ``obj`` cannot be encoded, ``HubClosed`` after :meth:`close`.
        """
        text = self._json_text(obj)
        self._share(None, text, False)
        return self._fan_out(text, False, self._all)

    def publish_json(self, topic: str, obj: Any) -> int:
        """:meth:`publish` ``obj`` as JSON (encoded once, as :meth:`broadcast_json`)."""
        return self._publish(topic, self._json_text(obj), False, None)

    # -- topics (rooms) ---------------------------------------------------------------------

    def subscribe(self, session: Session, topic: str) -> bool:
        """Add ``session`` to ``topic``; False if it was subscribed already. O(1).

        Subscriptions end with the session. Raises ``SessionClosed`` for a closed session and
        ``TopicLimitExceeded`` (a ``ValueError``) when the session already holds
        ``Config.max_topics_per_session`` topics or the name is longer than
        ``Config.max_topic_length`` UTF-8 bytes.
        """
        if session.is_closed:
            raise SessionClosed("session is closed")
        held = session._topics
        if held is not None and topic in held:
            return False
        self._check_subscription(held, topic)
        group = self._topics.get(topic)
        if group is None:
            group = self._topics[topic] = Group()
            if self.backplane is not None:
                self.backplane.subscribe(topic)
        if not group.add(session._proto):
            return False
        if session._topics is None:
            session._topics = set()
        session._topics.add(topic)
        return True

    def _check_subscription(self, held: set[str] | None, topic: str) -> None:
        # What one session can make the hub hold through topics: at most
        # max_topics_per_session entries (each a Group slot and, with a backplane, a channel)
        # of at most max_topic_length bytes each.
        cfg = self.config
        # Characters bound bytes from below (<= 4 bytes each): encode only near the bound.
        if len(topic) * 4 > cfg.max_topic_length and (
                len(topic) > cfg.max_topic_length
                or len(topic.encode("utf-8", "surrogatepass")) > cfg.max_topic_length):
            self._message_stats["subscriptions_refused"] += 1
            raise TopicLimitExceeded(
                f"topic name over max_topic_length ({cfg.max_topic_length} bytes)")
        if held is not None and len(held) >= cfg.max_topics_per_session:
            self._message_stats["subscriptions_refused"] += 1
            raise TopicLimitExceeded(
                f"session is subscribed to {len(held)} topics"
                f" (max_topics_per_session={cfg.max_topics_per_session})")

    def unsubscribe(self, session: Session, topic: str) -> bool:
        """Remove ``session`` from ``topic``; False if it was not subscribed. O(1)."""
        if not session._topics or topic not in session._topics:
            return False
        session._topics.discard(topic)
        self._leave(session._proto, topic)
        return True

    def _leave(self, proto: WebSocketProtocol, topic: str) -> None:
        group = self._topics.get(topic)
        if group is not None:
            group.discard(proto)
            if not len(group):
                del self._topics[topic]
                if self.backplane is not None:
                    self.backplane.unsubscribe(topic)

    def publish(self, topic: str, msg: str) -> int:
        """Send a text message to the subscribers of ``topic``; returns how many took it.

        Costs in proportion to the topic's subscribers (not to all sessions); framed once.
        """
        return self._publish(topic, msg, False, None)

    def publish_binary(self, topic: str, msg: bytes | bytearray | memoryview) -> int:
        """Binary :meth:`publish`."""
        return self._publish(topic, msg, True, None)

    def publish_others(self, topic: str, msg: str, session: Session) -> int:
        """:meth:`publish` to every subscriber but ``session`` (the sender)."""
        return self._publish(topic, msg, False, session._proto)

    def publish_binary_others(
        self, topic: str, msg: bytes | bytearray | memoryview, session: Session
    ) -> int:
        """Binary :meth:`publish_others`."""
        return self._publish(topic, msg, True, session._proto)

    def _publish(self, topic: str, msg: Any, binary: bool,
                 exclude: WebSocketProtocol | None) -> int:
        if self._closed:
            raise HubClosed("hub is closed")
        self._share(topic, msg, binary)
        group = self._topics.get(topic)
        return self._fan_out(msg, binary, group, exclude) if group is not None else 0

    def topic_len(self, topic: str) -> int:
        """How many sessions of this hub are subscribed to ``topic`` (see cluster_topic_len)."""
        group = self._topics.get(topic)
        return len(group) if group is not None else 0

    async def cluster_topic_len(self, topic: str) -> int:
        """Subscribers of ``topic`` on every node sharing this hub's backplane (this one too).

        Without a backplane, the same as :meth:`topic_len`.
        """
        if self.backplane is None:
            return self.topic_len(topic)
        return await self.backplane.cluster_topic_len(topic)

    def topics(self) -> list[str]:
        """The topics with at least one subscriber here."""
        return list(self._topics)

    # -- stats ------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters from the compiled core, cheap to read: sessions, topics, connects and
        disconnects, messages and bytes in and out, broadcasts, frames dropped, writes (system
        calls handed to the transports), and the queue depths (total and deepest) of sessions
        whose peers are not keeping up. Costs one pass over the sessions for the queues.
        """
        stats: dict[str, int] = self._dispatch.stats()
        total = deepest = 0
        for proto in self._all.members():
            depth = proto.queued
            if depth:
                total += depth
                deepest = max(deepest, depth)
        stats["sessions"] = len(self._all)
        stats["topics"] = len(self._topics)
        stats["queued_frames"] = total
        stats["max_queue_depth"] = deepest
        stats.update(self._message_stats)
        # upgrade_deadline_exceeded, http_deadline_exceeded, decisions_pending.
        stats.update(self._upgrader.stats())
        if self.backplane is not None:
            for key, value in self.backplane.stats().items():
                stats[f"backplane_{key}"] = value
        return stats

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every session with 1000 and refuse new ones (Go: ``Close()``).

        Raises ``HubClosed`` if already closed.
        """
        self.close_with_msg(CLOSE_NORMAL, "")

    def close_with_msg(self, code: int = CLOSE_GOING_AWAY, reason: str = "") -> None:
        """Close every session with ``code``/``reason``; refuse new ones (Go: ``CloseWithMsg``)."""
        if self._closed:
            raise HubClosed("hub is already closed")
        self._closed = True
        # Upgrades still being decided would otherwise hold their slots until their deadline.
        self._upgrader.cancel_pending("hub is closed")
        for proto in self._all.members():
            proto.close(code, reason)
        for server in self._servers:
            server.close()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self.backplane is not None and self._loop is not None:
            self._backplane_stopping = self._loop.create_task(self.backplane.stop())

    async def shutdown(self, timeout: float = 10.0, *, batch_size: int = 1000,
                       batch_interval: float = 0.1) -> None:
        """Drain the hub gracefully; what ``melody.run`` and ``melody serve`` do on SIGTERM.

        Stops accepting (the listening sockets close; upgrades in progress get 503; broadcasts
        raise ``HubClosed``), then sends close 1001 (Going Away) to every session, at most
        ``batch_size`` sessions every ``batch_interval`` seconds (batches grow so that all
        closes are sent within ``timeout / 2``), so that clients do not all reconnect at once.
        Each close frame goes out after the frames already queued for its session: a message
        accepted by ``write``/``broadcast`` before the shutdown reaches every peer that keeps
        reading. Sessions that have not completed the close handshake ``timeout`` seconds after
        the call are aborted; ``handle_disconnect`` runs for every session, and its async
        handler tasks are awaited (within the timeout). Returns when all that is done.
        """
        from melody.server import shutdown

        await shutdown(self, timeout, batch_size=batch_size, batch_interval=batch_interval)

    async def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until every session has ended (after :meth:`close`), at most ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while len(self._all) and (deadline is None or loop.time() < deadline):
            await asyncio.sleep(0.01)
        for proto in self._all.members():
            proto.abort()
        for server in self._servers:
            await server.wait_closed()
        if self._backplane_stopping is not None:
            # The backplane's goodbye (unsubscribe, presence cleanup) is part of closing.
            await self._backplane_stopping

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None and self._loop is not loop:
            raise RuntimeError("a hub serves on one event loop")
        first = self._loop is None
        self._loop = loop
        self._dispatch.loop = loop
        if self._heartbeat is None:
            self._schedule_heartbeat()
        if first and self.backplane is not None:
            self._spawn(loop, self._start_backplane())

    async def _start_backplane(self) -> None:
        assert self.backplane is not None
        try:
            await self.backplane.start(self)
        except Exception as exc:
            logger.warning("backplane could not connect yet (%s); it keeps retrying", exc)
            self._report(None, exc)

    def _schedule_heartbeat(self) -> None:
        cfg = self.config
        # Pings may run up to one tick late; a tick under (pong_wait - ping_period) keeps a peer
        # that answers every ping from ever being taken for dead.
        tick = min(cfg.ping_period, (cfg.pong_wait - cfg.ping_period) / 2)
        assert self._loop is not None
        self._heartbeat = self._loop.call_later(max(tick, 0.005), self._beat)

    def _beat(self) -> None:
        self._heartbeat = None
        if self._closed:
            return
        assert self._loop is not None
        cfg = self.config
        dead = heartbeat(self._all.members(), self._loop.time(), cfg.ping_period, cfg.pong_wait)
        for proto in dead:
            self._report(proto.session, PongTimeout(
                f"nothing received for {cfg.pong_wait}s: peer considered dead"))
            proto.abort()
        self._schedule_heartbeat()

    async def serve(
        self,
        host: str | None = "127.0.0.1",
        port: int = 8000,
        *,
        ssl: _ssl.SSLContext | None = None,
        reuse_port: bool = False,
        backlog: int = 1024,
        sock: Any = None,
    ) -> asyncio.Server:
        """Start listening inside the running loop; return the started ``asyncio.Server``.

        ``await hub.serve(...)`` returns at once; keep the loop running (for example with
        ``await server.serve_forever()``). Port 0 picks a free port: read it from
        ``server.sockets[0].getsockname()``.
        """
        from melody.server import serve

        return await serve(self, host, port, ssl=ssl, reuse_port=reuse_port, backlog=backlog,
                           sock=sock)

    @property
    def asgi(self) -> AsgiAdapter:
        """This hub as an ASGI app for WebSocket connections (Starlette, FastAPI, uvicorn).

        ``WebSocketRoute("/ws", hub.asgi)``; FastAPI: ``app.add_api_websocket_route("/ws",
        hub.asgi.endpoint)``. Its sessions share handlers, broadcasts and topics with those of
        :meth:`serve`, which stays the fast path (see ``melody.asgi``).
        """
        from melody.asgi import AsgiAdapter

        return AsgiAdapter(self)

    def __repr__(self) -> str:
        return f"<Melody sessions={len(self._all)} closed={self._closed}>"
