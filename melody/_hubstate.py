"""The hub's internal state: the one owner of what the hub's layers share.

:class:`HubState` holds, for one :class:`~melody.hub.Melody`, the session registry and the
topics, the handlers and the dispatch table the compiled connections call, the running of
handlers (inline, queued behind a session's pending async calls, or concurrently up to
``Config.max_concurrent_handlers``), error reporting (``handle_error``), the hub's tasks, and
the hooks that metrics, tracing and backplanes use (:class:`HandlerProbe` watches handler
calls). ``Melody`` is the public face over it; the session, the server, the ASGI adapter,
routing, metrics, tracing and the backplanes use the names below
(:func:`state_of` finds a hub's state), never a private attribute of ``Melody`` or ``Session``.

:class:`SessionLink` is what the hub keeps for one session: its connection, its handler calls
waiting their turn and its topics. ``Session`` is its subclass (one object per connection);
``session.link`` is the session itself, seen as its link.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from melody._core.fanout import Group
from melody._core.fanout import broadcast_binary as _fanout_binary
from melody._core.fanout import broadcast_text as _fanout_text
from melody._core.protocol import Dispatch, WebSocketProtocol, heartbeat
from melody.codecs import JSON as _JSON
from melody.codecs import Codec, PacketCodec
from melody.config import OVERFLOW_POLICIES, Config, RateLimit
from melody.delivery.presence import Presence
from melody.delivery.streams import Streams
from melody.errors import (
    AckTimeout,
    DecodeError,
    HandshakeTimeout,
    InvalidPayload,
    MessageBufferFull,
    MessageTooBig,
    PongTimeout,
    ProtocolError,
    RateLimited,
    RequestError,
    SessionClosed,
    TooManyCalls,
    TopicLimitExceeded,
    WriteTimeout,
)
from melody.logs import error_fields

if TYPE_CHECKING:
    from melody.http_api import HttpApi
    from melody.hub import Melody
    from melody.metrics import HubMetrics
    from melody.middleware import Middleware
    from melody.routing import Router
    from melody.session import Session
    from melody.tracing import Tracing

__all__ = ["HubState", "SessionLink", "Deliver", "HandlerProbe", "Lease", "state_of"]

logger = logging.getLogger("melody")

Targets = Group | list[WebSocketProtocol]

_STATES: weakref.WeakKeyDictionary[Melody, HubState] = weakref.WeakKeyDictionary()

# The ids of session.call requests: "s" and a process-wide counter. A client's own request
# ids are its business (melody's client uses ints); the prefix keeps the two apart on the
# wire, and one counter for all sessions costs no slot per session.
_call_ids = itertools.count(1)


def state_of(hub: Melody) -> HubState:
    """The :class:`HubState` of ``hub`` (a dict lookup: call it once per connection, not per
    message). Raises KeyError for an object that is not a hub."""
    return _STATES[hub]


def _noop(*_: Any) -> None:
    return None


#: The outcomes a :class:`HandlerProbe` hears besides success (None): the handler raised
#: (``"exception"``), an async route ran past its timeout (``"timeout"``), a route refused with
#: ``RequestError`` (``"refused"``), the handler's task was cancelled (``"cancelled"``), or a
#: message named no route and there is no fallback (``"unknown_route"``: no handler ran).
OUTCOMES = ("exception", "timeout", "refused", "cancelled", "unknown_route")


class HandlerProbe(Protocol):
    """What watches handler calls (``melody.metrics``, ``melody.tracing``): :meth:`enter`
    before a handler runs, :meth:`exit` once it is done (an async one: once it completed).

    ``handler`` is a bounded label: a route's registered name (``routed``) or a handler kind
    (``message``, ``message_binary``, ``connect``, ``disconnect``, ``close``, ``pong``), never
    a string a client chose. Installed with :meth:`HubState.add_probe`; a hub without a probe
    runs its handlers with no wrapper and no clock read.
    """

    def enter(self, session: Session, handler: str, message: Any, routed: bool) -> Any:
        """A handler starts with ``message`` (the decoded one for a route, else the raw
        message, or None for connect/disconnect); return what :meth:`exit` gets back."""
        ...

    def exit(self, handler: str, token: Any, outcome: str | None,
             error: BaseException | None) -> None:
        """The handler is done: ``outcome`` None (success) or one of :data:`OUTCOMES`,
        ``error`` the exception when there is one."""
        ...

    def wrap(self, handler: str, fn: Callable[..., Any],
             ignored: tuple[type[BaseException], ...] = ()) -> Callable[..., Any] | None:
        """A wrapper of its own for ``fn``, a synchronous handler, that does what
        :meth:`enter` and :meth:`exit` would (a compiled one, cheaper than two Python calls),
        or None to be called through them. An exception of a type in ``ignored`` (a route's
        ``RequestError``) is the outcome ``"refused"``, not ``"exception"``."""
        ...


class _Probes:
    """Several probes as one: entered in order, exited in reverse (contexts nest)."""

    __slots__ = ("probes",)

    def __init__(self, probes: list[HandlerProbe]) -> None:
        self.probes = probes

    def enter(self, session: Session, handler: str, message: Any, routed: bool) -> Any:
        return [p.enter(session, handler, message, routed) for p in self.probes]

    def exit(self, handler: str, token: Any, outcome: str | None,
             error: BaseException | None) -> None:
        for probe, t in zip(reversed(self.probes), reversed(token), strict=True):
            probe.exit(handler, t, outcome, error)

    def wrap(self, handler: str, fn: Callable[..., Any],
             ignored: tuple[type[BaseException], ...] = ()) -> Callable[..., Any] | None:
        return None


class Deliver(Protocol):
    """The signature of :meth:`HubState.deliver`."""

    def __call__(self, msg: Any, binary: bool, targets: Targets,
                 exclude: WebSocketProtocol | None = None,
                 predicate: Callable[[Session], bool] | None = None) -> int: ...


class Lease(Protocol):
    """What keeps a session open until a deadline, renewable by a ``refresh`` message (made
    by ``melody.middleware.JWTAuth`` for a token's ``exp``); ``session.lease``."""

    def refresh(self, session: Session, data: Any) -> Awaitable[Any]:
        """Check the ``data`` of a ``refresh`` request and push the deadline; the result is
        the reply's data. Raises ``RequestError`` (its text is the error reply) to refuse."""
        ...

    def cancel(self) -> None:
        """The session ended: drop the timer."""
        ...


class SessionExtras:
    """What few sessions have, kept out of every session's own slots (each costs 8 bytes on
    every connection): ``session.call`` requests waiting, a lease, a user."""

    __slots__ = ("calls", "lease", "user")

    def __init__(self) -> None:
        #: ``session.call`` requests waiting for the client's reply, by id.
        self.calls: dict[str, asyncio.Future[Any]] | None = None
        #: What closes the session at a deadline unless refreshed (a JWT's ``exp``).
        self.lease: Lease | None = None
        #: The user the session belongs to (``session.user``).
        self.user: str | None = None


_DRAINING = 1
_PAUSED = 2


class SessionLink:
    """What the hub keeps for one session: its connection, its pending handler calls (run
    one after another, or up to ``max_concurrent_handlers`` at once), its topics, the
    ``session.call`` requests waiting for the client, its lease and its user.

    The base class of ``Session``: these are the hub's fields of the session object, not API.
    Six slots: an idle session is one 144-byte allocation, as before any of these existed;
    the rarely set fields live in a :class:`SessionExtras` made on first use.
    """

    __slots__ = ("extras", "flags", "inbox", "proto", "running", "subscribed")

    def __init__(self, proto: WebSocketProtocol) -> None:
        #: The session's connection (what broadcasts and topic groups hold).
        self.proto = proto
        #: Handler calls waiting their turn (None until first needed).
        self.inbox: deque[tuple[Callable[..., Any], tuple[Any, ...]]] | None = None
        #: _DRAINING (a task runs the inbox), _PAUSED (reading paused: handlers fell behind).
        self.flags = 0
        #: Handler tasks running for this session (concurrent mode only).
        self.running = 0
        #: The topics the session is subscribed to (None until the first subscribe).
        self.subscribed: set[str] | None = None
        #: Calls, lease and user, when the session has any (see SessionExtras).
        self.extras: SessionExtras | None = None

    def extra(self) -> SessionExtras:
        """The session's :class:`SessionExtras`, made if it has none yet."""
        extras = self.extras
        if extras is None:
            extras = self.extras = SessionExtras()
        return extras

    @property
    def draining(self) -> bool:
        """A task is running the inbox (sequential mode)."""
        return bool(self.flags & _DRAINING)

    @draining.setter
    def draining(self, value: bool) -> None:
        self.flags = self.flags | _DRAINING if value else self.flags & ~_DRAINING

    @property
    def paused(self) -> bool:
        """Reading from the peer is paused because the handlers fell behind."""
        return bool(self.flags & _PAUSED)

    @paused.setter
    def paused(self, value: bool) -> None:
        self.flags = self.flags | _PAUSED if value else self.flags & ~_PAUSED

    @property
    def calls(self) -> dict[str, asyncio.Future[Any]] | None:
        """``session.call`` requests waiting for the client's reply, by id (None until the
        first call)."""
        extras = self.extras
        return extras.calls if extras is not None else None

    @calls.setter
    def calls(self, value: dict[str, asyncio.Future[Any]] | None) -> None:
        if value is not None or self.extras is not None:
            self.extra().calls = value

    @property
    def lease(self) -> Lease | None:
        """What closes the session at a deadline unless refreshed (a JWT's ``exp``), or None."""
        extras = self.extras
        return extras.lease if extras is not None else None

    @lease.setter
    def lease(self, value: Lease | None) -> None:
        if value is not None or self.extras is not None:
            self.extra().lease = value

    @property
    def link(self) -> SessionLink:
        """The session seen as what the hub keeps for it (itself)."""
        return self

    def pause_reading(self) -> None:
        """Stop reading from the peer until :meth:`resume_reading` (once)."""
        if not self.paused:
            transport = self.proto.transport
            if transport is not None:
                self.paused = True
                transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the peer again."""
        self.paused = False
        transport = self.proto.transport
        if transport is not None:
            transport.resume_reading()


class HubState:
    """The state one hub's layers share, behind the names they use (see the module docstring).

    Made by ``Melody.__init__``; find a hub's with :func:`state_of`.
    """

    def __init__(self, hub: Melody, config: Config, codec: Codec | None) -> None:
        _STATES[hub] = self
        #: The hub this is the state of (its public face).
        self.hub = hub
        self.config = config
        # What broadcast_json/publish_json/write_json encode with: the hub's codec when it is
        # a text one (so a custom JSON codec is used), else orjson.
        self.json: Codec = codec if codec is not None and not codec.binary else _JSON
        #: Every registered connection: what hub-wide broadcasts walk.
        self.connections = Group()
        #: One group per topic with subscribers here.
        self.topics: dict[str, Group] = {}
        #: True once the hub refuses new sessions and broadcasts (close or shutdown).
        self.closed = False
        #: The loop the hub serves on (set by :meth:`attach`).
        self.loop: asyncio.AbstractEventLoop | None = None
        #: The listening servers, closed with the hub.
        self.servers: list[asyncio.Server] = []
        #: The hub's own tasks (async handlers, upgrade decisions, the backplane's start).
        self.tasks: set[asyncio.Task[Any]] = set()
        #: Counters of the codec and routing layer, reported by ``hub.stats()``.
        self.message_stats = {"decode_errors": 0, "unroutable": 0, "denied": 0,
                              "subscriptions_refused": 0, "ack_timeouts": 0,
                              "call_timeouts": 0, "late_replies": 0}
        #: The sessions of each user (``session.user``) here: what ``hub.send_to_user`` and
        #: ``hub.disconnect_user`` reach. An entry per user with a session, a set member per
        #: session that has a user: bounded by the sessions.
        self.users: dict[str, set[Session]] = {}
        #: The hub's Prometheus metrics once ``melody.metrics.enable`` ran, else None.
        self.metrics: HubMetrics | None = None
        #: Called with each session that ended (the server's bookkeeping: logs, metrics,
        #: handshake ``on_close`` callbacks).
        self.on_session_end: list[Callable[[Session], None]] = []
        #: Called with the seconds each fan-out took (see :meth:`observe_fanout`).
        self.fanout_observers: list[Callable[[float], object]] = []
        #: Hand one message to many connections (see :meth:`observe_fanout`).
        self.deliver: Deliver = self._deliver
        self._heartbeat: asyncio.TimerHandle | None = None
        #: Topics with history: options, the memory engine, recovery (melody.delivery).
        self.streams = Streams(self)
        #: Who is in the topics with presence or join/leave (melody.delivery.presence).
        self.presence = Presence(self)
        #: The HTTP API once ``hub.enable_http_api`` ran (melody.http_api), else None.
        self.http_api: HttpApi | None = None

        # The application's handlers (hub.handle_*), its handshake middleware (hub.use) and
        # its router (hub.route).
        self.on_connect: Callable[..., Any] | None = None
        self.on_disconnect: Callable[..., Any] | None = None
        self.on_text: Callable[..., Any] | None = None
        self.on_binary: Callable[..., Any] | None = None
        self.on_sent_text: Callable[..., Any] | None = None
        self.on_sent_binary: Callable[..., Any] | None = None
        self.on_error: Callable[..., Any] | None = None
        self.on_close: Callable[..., Any] | None = None
        self.on_pong: Callable[..., Any] | None = None
        self.upgrade_hook: Callable[..., Any] | None = None
        self.http_hook: Callable[..., Any] | None = None
        self.middleware: list[Middleware] = []
        self.router: Router | None = None
        self._any_async = False
        #: What watches handler calls (metrics, tracing), or None: see :meth:`add_probe`.
        self.probe: HandlerProbe | None = None
        self._probes: list[HandlerProbe] = []
        #: The connect, disconnect and sent-message handlers as run (wrapped for the probe,
        #: if any).
        self.run_connect: Callable[..., Any] | None = None
        self.run_disconnect: Callable[..., Any] | None = None
        self.run_sent_text: Callable[..., Any] | None = None
        self.run_sent_binary: Callable[..., Any] | None = None
        #: The hub's OpenTelemetry tracing once ``melody.tracing.enable`` ran, else None.
        self.tracing: Tracing | None = None

        d = Dispatch()
        d.write_wait = config.write_wait
        d.close_timeout = config.close_timeout
        d.handshake_timeout = config.handshake_timeout
        d.max_header_size = config.max_header_size
        d.max_message_size = config.max_message_size
        d.queue_limit = config.message_buffer_size
        d.write_buffer_high = config.write_buffer_high
        d.read_buffer_size = config.read_buffer_size
        d.queue_bytes_limit = config.message_buffer_bytes
        d.overflow_policy = OVERFLOW_POLICIES.index(config.overflow_policy)
        d.direct_writes = config.direct_writes
        d.on_rate_limit = self._rate_limited
        self._set_rate_limit(d, config.rate_limit)
        d.on_disconnect = self.disconnected
        d.on_protocol_error = self._protocol_error
        d.on_timeout = self._timeout
        d.on_handler_error = self.report
        #: What the compiled connections call (the handlers, the limits, the counters).
        self.dispatch = d

    @staticmethod
    def _set_rate_limit(d: Dispatch, limit: RateLimit | None) -> None:
        # The buckets are per connection, their rates and bursts the hub's: a new limit
        # holds from each session's next message on (a bucket over a lower burst is cut to
        # it then).
        if limit is None:
            d.rate_limited = False
            return
        d.rate_messages = limit.messages_per_second
        d.burst_messages = limit.burst_messages
        # No byte limit is an effectively infinite bucket (one double compare per message).
        d.rate_bytes = limit.bytes_per_second or 1e300
        if limit.bytes_per_second is None:
            d.burst_bytes = 1e300
        else:
            d.burst_bytes = limit.burst_bytes or 2 * limit.bytes_per_second
        d.rate_close = limit.policy == "close"
        d.rate_limited = True

    def set_config(self, config: Config) -> None:
        """Make ``config`` the hub's (``hub.config`` too), for a reload (``melody.reload``):
        read from then on wherever a field is used; the rate limit is handed to the compiled
        connections at once. Only the fields ``melody.reload`` changes may differ: the others
        were copied into the connections' dispatch table at construction."""
        self.config = config
        self.hub.config = config
        self._set_rate_limit(self.dispatch, config.rate_limit)

    @property
    def codec(self) -> Codec | None:
        """The hub's codec (``hub.codec``), read where it is used."""
        return self.hub.codec

    # -- the dispatch table ----------------------------------------------------------------------

    def rebuild_dispatch(self) -> None:
        """Hand the compiled connections the current handlers (after any registration)."""
        # The compiled connection calls these directly: a sync handler is called with no
        # wrapper at all; an async one goes through the per-session queue.
        d = self.dispatch
        handlers = (self.on_connect, self.on_disconnect, self.on_text, self.on_binary,
                    self.on_sent_text, self.on_sent_binary, self.on_close, self.on_pong)
        # With no async handler no session ever has pending calls: hand the compiled
        # connection the user's functions themselves, no wrapper in between.
        self._any_async = any(inspect.iscoroutinefunction(h) for h in handlers if h is not None)
        probed = self._probed
        d.on_text = self._wrap_event(probed("message", self.on_text))
        d.on_binary = self._wrap_event(probed("message_binary", self.on_binary))
        if self.codec is not None:
            # Decoded inline, then handed on exactly as a raw message would have been. Without
            # a codec nothing of this runs: the raw path keeps no wrapper. The router probes
            # each route call itself (by route name).
            d.on_text = d.on_binary = self._decoding(self._wrap_event(
                self.router if self.router is not None else probed("message", self.on_text)))
        d.on_close = self._wrap_event(probed("close", self.on_close)) if self.on_close else None
        d.on_pong = self._wrap_event(probed("pong", self.on_pong)) if self.on_pong else None
        if self.router is not None:
            self.router.watch(self.probe)
        self.run_connect = probed("connect", self.on_connect)
        self.run_disconnect = probed("disconnect", self.on_disconnect)
        self.run_sent_text = probed("sent_message", self.on_sent_text)
        self.run_sent_binary = probed("sent_message_binary", self.on_sent_binary)

    def add_probe(self, probe: HandlerProbe) -> None:
        """Watch every handler call with ``probe`` from now on (metrics, tracing); the
        dispatch table is rebuilt with the handlers wrapped. Until the first probe, handlers
        run unwrapped: hubs without metrics or tracing pay nothing."""
        self._probes.append(probe)
        self.probe = probe if len(self._probes) == 1 else _Probes(list(self._probes))
        self.rebuild_dispatch()

    def _probed(self, kind: str, fn: Callable[..., Any] | None) -> Callable[..., Any] | None:
        # ``fn`` wrapped for the probe (itself without one); async stays async, so that it is
        # timed to its completion and still goes through the session's queue.
        probe = self.probe
        if fn is None or probe is None:
            return fn
        enter, leave = probe.enter, probe.exit
        handler: Callable[..., Any] = fn
        if inspect.iscoroutinefunction(fn):
            async def probed_async(session: Session, *args: Any) -> None:
                token = enter(session, kind, args[0] if args else None, False)
                try:
                    await handler(session, *args)
                except asyncio.CancelledError:
                    leave(kind, token, "cancelled", None)
                    raise
                except Exception as exc:
                    leave(kind, token, "exception", exc)
                    raise
                leave(kind, token, None, None)

            return probed_async

        wrapped = probe.wrap(kind, fn)
        if wrapped is not None:
            return wrapped

        def probed_sync(session: Session, *args: Any) -> None:
            token = enter(session, kind, args[0] if args else None, False)
            try:
                handler(session, *args)
            except Exception as exc:
                leave(kind, token, "exception", exc)
                raise
            leave(kind, token, None, None)

        return probed_sync

    def _wrap_event(self, fn: Callable[..., Any] | None) -> Callable[..., Any]:
        if fn is None:
            return _noop
        if not self._any_async:
            return fn
        if inspect.iscoroutinefunction(fn):
            def schedule(session: Session, *args: Any) -> None:
                self.enqueue(session, fn, args)

            return schedule

        def ordered(session: Session, *args: Any) -> None:
            # A sync handler after pending async ones keeps the session's order.
            if session.inbox:
                self.enqueue(session, fn, args)
            else:
                fn(session, *args)

        return ordered

    # -- running handlers (the concurrency gate) -------------------------------------------------

    def call(self, session: Session, fn: Callable[..., Any] | None, *args: Any) -> None:
        """Run a handler: inline when sync and nothing is pending, else queued/scheduled."""
        if fn is None:
            return
        if inspect.iscoroutinefunction(fn) or session.inbox:
            self.enqueue(session, fn, args)
            return
        try:
            fn(session, *args)
        except Exception as exc:
            self.report(session, exc)

    def enqueue(self, session: Session, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Run ``fn(session, *args)`` in the session's turn: after its pending calls, or (with
        ``concurrent_message_handling``) in a free handler slot. Pauses reading from a peer
        whose handlers fall behind."""
        loop = self.loop or asyncio.get_running_loop()
        link: SessionLink = session
        if self.config.concurrent_message_handling:
            self._enqueue_concurrent(loop, session, link, fn, args)
            return
        if link.inbox is None:
            link.inbox = deque()
        link.inbox.append((fn, args))
        if len(link.inbox) >= self.config.message_buffer_size:
            # Async handlers lag behind the socket: stop reading this peer until they catch up.
            link.pause_reading()
        if not link.draining:
            link.draining = True
            self.spawn(self._drain(session, link), loop)

    def _enqueue_concurrent(self, loop: asyncio.AbstractEventLoop, session: Session,
                            link: SessionLink, fn: Callable[..., Any],
                            args: tuple[Any, ...]) -> None:
        # At most max_concurrent_handlers tasks per session. Past the bound a call waits in the
        # session's inbox, in arrival order (sync calls behind it too), and reading from the
        # peer pauses, as in the sequential mode: what a fast sender costs is the one read
        # that was being parsed, never a task per message.
        if not link.inbox and link.running < self.config.max_concurrent_handlers:
            self._start_concurrent(loop, session, link, fn, args)
            return
        if link.inbox is None:
            link.inbox = deque()
        link.inbox.append((fn, args))
        link.pause_reading()

    async def _run_concurrently(self, session: Session, link: SessionLink,
                                fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            await self._run_one(session, fn, args)
        finally:
            link.running -= 1
            self._release_concurrent(session, link)

    def _release_concurrent(self, session: Session, link: SessionLink) -> None:
        # A handler task ended: start what waited for its slot, then read again once half of
        # the slots are free and nothing waits.
        limit = self.config.max_concurrent_handlers
        inbox = link.inbox
        while inbox and link.running < limit:
            fn, args = inbox.popleft()
            self._start_concurrent(self.loop or asyncio.get_running_loop(), session, link, fn,
                                   args)
        if link.paused and not inbox and link.running <= limit // 2:
            link.resume_reading()

    def _start_concurrent(self, loop: asyncio.AbstractEventLoop, session: Session,
                          link: SessionLink, fn: Callable[..., Any],
                          args: tuple[Any, ...]) -> None:
        # An async call takes a slot and a task; a sync one runs now, in its turn.
        if inspect.iscoroutinefunction(fn):
            link.running += 1
            self.spawn(self._run_concurrently(session, link, fn, args), loop)
            return
        try:
            fn(session, *args)
        except Exception as exc:
            self.report(session, exc)

    def spawn(self, coro: Coroutine[Any, Any, Any],
              loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` as one of the hub's tasks (awaited by shutdown) on ``loop`` (default:
        the hub's loop, else the running one); return the task."""
        task = (loop or self.loop or asyncio.get_running_loop()).create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _run_one(
        self, session: Session, fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> None:
        try:
            result = fn(session, *args)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            self.report(session, exc)

    async def _drain(self, session: Session, link: SessionLink) -> None:
        inbox = link.inbox
        assert inbox is not None
        limit = self.config.message_buffer_size
        try:
            while inbox:
                fn, args = inbox.popleft()
                await self._run_one(session, fn, args)
                if link.paused and len(inbox) <= limit // 2:
                    link.resume_reading()
        finally:
            link.draining = False

    # -- errors ------------------------------------------------------------------------------

    def report(self, session: Session | None, error: BaseException) -> None:
        """Hand ``error`` to ``handle_error`` (an async one runs as a task); without one, log it
        on the ``melody`` logger. Never raises."""
        handler = self.on_error
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
                self.spawn(self._await_error_handler(result))
        except Exception:
            logger.exception("handle_error raised while handling %r", error)

    async def _await_error_handler(self, result: Awaitable[Any]) -> None:
        try:
            await result
        except Exception:
            logger.exception("async handle_error raised")

    def _protocol_error(self, session: Session, code: int, reason: str) -> None:
        if code == 1007:
            error: ProtocolError = InvalidPayload(reason)
        elif code == 1009:
            error = MessageTooBig(reason)
        else:
            error = ProtocolError(reason, code)
        self.report(session, error)

    def _rate_limited(self, session: Session, size: int) -> None:
        self.report(session, RateLimited(f"inbound rate limit exceeded ({size} bytes)"))

    def _timeout(self, session: Session, kind: str) -> None:
        if kind == "write":
            self.report(session, WriteTimeout(
                f"peer read nothing for {self.config.write_wait}s: dropped as a slow reader"))

    # -- the session registry --------------------------------------------------------------------

    def register(self, proto: WebSocketProtocol, session: Session) -> None:
        """Add an accepted session: broadcasts reach it; ``handle_connect`` runs."""
        self.connections.add(proto)
        self.dispatch.connects += 1
        user = session.user
        if user is not None:
            self.users.setdefault(user, set()).add(session)
        self.call(session, self.run_connect)

    def disconnected(self, proto: WebSocketProtocol) -> None:
        """A connection ended: remove it, its topics; run the end hooks and
        ``handle_disconnect`` (once per connection; later calls do nothing)."""
        if not self.connections.discard(proto):
            return
        self.dispatch.disconnects += 1
        session: Session | None = proto.session
        if session is not None:
            link: SessionLink = session
            if link.subscribed:
                for topic in link.subscribed:
                    self._leave(proto, topic)
                    self._noted_leaving(session, topic)
                link.subscribed = None
            self._forget_user(session, session.user)
            if link.lease is not None:
                link.lease.cancel()
                link.lease = None
            if link.calls:
                # Never leaked: every call still waiting fails now.
                calls, link.calls = link.calls, None
                for future in calls.values():
                    if not future.done():
                        future.set_exception(SessionClosed("session closed before replying"))
            for hook in self.on_session_end:
                hook(session)
            self.call(session, self.run_disconnect)

    def sent(self, session: Session, msg: Any, binary: bool) -> None:
        """Run ``handle_sent_message`` (or its binary twin) for ``msg`` written to ``session``."""
        self.call(session, self.run_sent_binary if binary else self.run_sent_text, msg)

    # -- users ---------------------------------------------------------------------------------

    def user_changed(self, session: Session, old: str | None, new: str | None) -> None:
        """``session.user`` went from ``old`` to ``new``: move it in :attr:`users` (a closed
        session is only removed)."""
        self._forget_user(session, old)
        if new is not None and not session.is_closed and session.proto in self.connections:
            self.users.setdefault(new, set()).add(session)

    def _forget_user(self, session: Session, user: str | None) -> None:
        if user is None:
            return
        held = self.users.get(user)
        if held is not None:
            held.discard(session)
            if not held:
                del self.users[user]

    def user_sessions(self, user: str) -> list[Session]:
        """The open sessions of ``user`` here (a snapshot)."""
        held = self.users.get(user)
        return [s for s in held if not s.is_closed] if held else []

    def deliver_user(self, user: str, binary: bool, msg: Any) -> int:
        """Send ``msg`` to ``user``'s sessions here, framed once; how many took it. 0 once
        closed (a message from another node arriving late)."""
        if self.closed:
            return 0
        sessions = self.user_sessions(user)
        if not sessions:
            return 0
        return self.deliver(msg, binary, [s.proto for s in sessions])

    def disconnect_user(self, user: str, code: int, reason: str) -> int:
        """Close ``user``'s sessions here with ``code``/``reason``; how many were closed."""
        closed = 0
        for session in self.user_sessions(user):
            session.close_with_msg(code, reason)
            closed += 1
        return closed

    # -- server-to-client requests (session.call) -----------------------------------------------

    async def call_client(self, session: Session, kind: str, data: Any,
                          timeout: float | None) -> Any:
        """``session.call`` (see there)."""
        codec = self.codec
        if codec is None or isinstance(codec, PacketCodec):
            raise RuntimeError("session.call needs a codec with the JSON envelope: "
                               "Melody(codec=melody.codecs.JSON)")
        if session.is_closed:
            raise SessionClosed("session is closed")
        link: SessionLink = session
        calls = link.calls
        if calls is None:
            calls = link.calls = {}
        elif len(calls) >= self.config.max_pending_calls:
            raise TooManyCalls(f"session has {len(calls)} calls waiting for replies "
                               f"(max_pending_calls={self.config.max_pending_calls})")
        call_id = f"s{next(_call_ids)}"
        payload = codec.encode({"type": kind, "id": call_id, "data": data})
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        calls[call_id] = future
        deadline = asyncio.timeout(timeout)
        try:
            self.send_encoded(session, payload)
            async with deadline:
                return await future
        except TimeoutError:
            if not deadline.expired():
                raise  # not our timeout
            self.message_stats["call_timeouts"] += 1
            raise AckTimeout(f"no reply to {kind!r} within {timeout} s") from None
        finally:
            if link.calls is not None:
                link.calls.pop(call_id, None)

    def _answered(self, session: Session, msg: dict[Any, Any]) -> bool:
        # True when the hub took ``msg`` itself: a reply to one of its calls, or a refresh.
        kind = msg.get("type")
        if kind is None:
            return "ok" in msg and self._take_reply(session, msg)
        lease = session.lease
        if kind == "refresh" and lease is not None:
            self._refresh(session, lease, msg)
            return True
        return False

    def _take_reply(self, session: Session, reply: dict[Any, Any]) -> bool:
        # A decoded message with "ok" and no "type": the reply to a session.call if its id is
        # one of ours ("s..."). Late ones (after a timeout) are counted and dropped.
        call_id = reply.get("id")
        if type(call_id) is not str or not call_id.startswith("s"):
            return False
        link: SessionLink = session
        future = link.calls.pop(call_id, None) if link.calls else None
        if future is None or future.done():
            self.message_stats["late_replies"] += 1
            return True
        if reply.get("ok") is True:
            future.set_result(reply.get("data"))
        else:
            future.set_exception(RequestError(str(reply.get("error"))))
        return True

    def _refresh(self, session: Session, lease: Lease, request: dict[Any, Any]) -> None:
        # A "refresh" message on a session with a lease: answered by the lease, in a task
        # (checking a token may await a key lookup), never routed.
        self.spawn(self._run_refresh(session, lease, request))

    async def _run_refresh(self, session: Session, lease: Lease,
                           request: dict[Any, Any]) -> None:
        codec = self.codec
        assert codec is not None
        msg_id = codec.envelope(request)[1]
        try:
            result = await lease.refresh(session, request.get("data"))
            ok = True
        except RequestError as exc:
            result, ok = str(exc), False
        except Exception as exc:
            self.report(session, exc)
            result, ok = "internal error", False
        if msg_id is not None and not session.is_closed:
            self.send_encoded(session, codec.reply(request, msg_id, ok, result))

    # -- topics ----------------------------------------------------------------------------------

    def subscribe(self, session: Session, topic: str) -> bool:
        """``hub.subscribe`` for an open session (see there)."""
        link: SessionLink = session
        held = link.subscribed
        if held is not None and topic in held:
            return False
        self._check_subscription(held, topic)
        group = self.topics.get(topic)
        if group is None:
            group = self.topics[topic] = Group()
            backplane = self.hub.backplane
            if backplane is not None:
                backplane.subscribe(topic)
        if not group.add(link.proto):
            return False
        if link.subscribed is None:
            link.subscribed = set()
        link.subscribed.add(topic)
        table = self.streams.table
        if table:
            options = table.lookup(topic)
            if options is not None and options.tracked:
                self.presence.joined(session, topic, options)
        return True

    def _noted_leaving(self, session: Session, topic: str) -> None:
        # Presence and join/leave, for the topics that keep them (one truth test otherwise).
        table = self.streams.table
        if table:
            options = table.lookup(topic)
            if options is not None and options.tracked:
                self.presence.left(session, topic, options)

    def _check_subscription(self, held: set[str] | None, topic: str) -> None:
        # What one session can make the hub hold through topics: at most
        # max_topics_per_session entries (each a Group slot and, with a backplane, a channel)
        # of at most max_topic_length bytes each.
        cfg = self.config
        # Characters bound bytes from below (<= 4 bytes each): encode only near the bound.
        if len(topic) * 4 > cfg.max_topic_length and (
                len(topic) > cfg.max_topic_length
                or len(topic.encode("utf-8", "surrogatepass")) > cfg.max_topic_length):
            self.message_stats["subscriptions_refused"] += 1
            raise TopicLimitExceeded(
                f"topic name over max_topic_length ({cfg.max_topic_length} bytes)")
        if held is not None and len(held) >= cfg.max_topics_per_session:
            self.message_stats["subscriptions_refused"] += 1
            raise TopicLimitExceeded(
                f"session is subscribed to {len(held)} topics"
                f" (max_topics_per_session={cfg.max_topics_per_session})")

    def unsubscribe(self, session: Session, topic: str) -> bool:
        """``hub.unsubscribe`` (see there)."""
        link: SessionLink = session
        if not link.subscribed or topic not in link.subscribed:
            return False
        link.subscribed.discard(topic)
        self._leave(link.proto, topic)
        self._noted_leaving(session, topic)
        return True

    def _leave(self, proto: WebSocketProtocol, topic: str) -> None:
        group = self.topics.get(topic)
        if group is not None:
            group.discard(proto)
            if not len(group):
                del self.topics[topic]
                backplane = self.hub.backplane
                if backplane is not None:
                    backplane.unsubscribe(topic)

    # -- delivery ----------------------------------------------------------------------------

    def _deliver(
        self,
        msg: Any,
        binary: bool,
        targets: Targets,
        exclude: WebSocketProtocol | None = None,
        predicate: Callable[[Session], bool] | None = None,
    ) -> int:
        # Every broadcast and publish variant, local or from another node, comes here once.
        sent_handler = self.run_sent_binary if binary else self.run_sent_text
        recipients: list[WebSocketProtocol] | None = [] if sent_handler is not None else None
        d = self.dispatch
        d.broadcasts += 1
        if isinstance(targets, Group):
            fan_out = targets.broadcast_binary if binary else targets.broadcast_text
            sent, dropped = fan_out(msg, exclude, predicate, recipients)
        else:
            fan = _fanout_binary if binary else _fanout_text
            sent, dropped = fan(targets, msg, exclude, predicate, recipients)
        if dropped:
            for proto in dropped:
                self.report(proto.session, MessageBufferFull("message buffer full: dropped"))
        if recipients:
            payload = bytes(msg) if binary else msg
            for proto in recipients:
                self.call(proto.session, sent_handler, payload)
        return int(sent)

    def _observed_deliver(self, *args: Any, **kwargs: Any) -> int:
        # _deliver, timed for the observers.
        start = time.perf_counter()
        try:
            return self._deliver(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - start
            for observe in self.fanout_observers:
                observe(elapsed)

    def observe_fanout(self, observer: Callable[[float], object]) -> None:
        """Call ``observer(seconds)`` after every fan-out (broadcast, publish, or delivery of a
        message from another node) with the time it took. Until the first observer,
        :attr:`deliver` is the untimed fan-out itself: hubs without observers pay nothing."""
        self.fanout_observers.append(observer)
        self.deliver = self._observed_deliver

    def deliver_remote(self, topic: str | None, binary: bool, payload: bytes) -> int:
        """Deliver a message that another node published (called by the backplane): to every
        session (``topic`` None) or to the subscribers of ``topic`` here. 0 once closed."""
        if self.closed:
            return 0
        msg: Any = payload if binary else payload.decode("utf-8")
        if topic is None:
            return self.deliver(msg, binary, self.connections)
        group = self.topics.get(topic)
        return self.deliver(msg, binary, group) if group is not None else 0

    # -- codecs --------------------------------------------------------------------------------

    def _decoding(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        assert self.codec is not None
        decode = self.codec.decode

        def on_message(session: Session, msg: Any) -> None:
            try:
                obj = decode(msg)
            except DecodeError as exc:
                self._bad_message(session, exc)
                return
            # What the hub answers itself, before any handler or route and whatever the
            # session's pending handlers (a handler awaiting session.call must get its
            # reply): replies to session.call, and "refresh" on a session with a lease.
            # A session that never called and has no lease pays one slot read for it.
            extras = session.extras
            if (extras is not None and (extras.calls is not None or extras.lease is not None)
                    and type(obj) is dict and self._answered(session, obj)):
                return
            handler(session, obj)

        return on_message

    def _bad_message(self, session: Session, error: DecodeError) -> None:
        codec = self.codec
        assert codec is not None
        self.message_stats["decode_errors"] += 1
        self.report(session, error)
        if session.is_closed:
            return
        if codec.on_invalid == "reply":
            self.send_encoded(session, codec.reply(None, None, False, error.reason))
        else:
            session.close_with_msg(error.code, error.reason)

    def send_encoded(self, session: Session, payload: str | bytes) -> None:
        """Write a codec's output: a binary frame for a binary codec, text otherwise."""
        assert self.codec is not None
        if self.codec.binary:
            session.write_binary(payload if isinstance(payload, bytes) else payload.encode())
        else:
            session.write(payload if isinstance(payload, str) else payload.decode("utf-8"))

    def json_text(self, obj: Any) -> str:
        """``obj`` as JSON text (the hub's text codec, else orjson); TypeError if it cannot be."""
        text = self.json.encode(obj)
        return text if isinstance(text, str) else text.decode("utf-8")

    # -- the loop: attaching, heartbeat ----------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve on ``loop`` (a server or the ASGI adapter starts): start the heartbeat and, the
        first time, the backplane. Raises RuntimeError for a second, different loop."""
        if self.loop is not None and self.loop is not loop:
            raise RuntimeError("a hub serves on one event loop")
        first = self.loop is None
        self.loop = loop
        self.dispatch.loop = loop
        if self._heartbeat is None:
            self._schedule_heartbeat()
        if first and self.hub.backplane is not None:
            self.spawn(self._start_backplane(), loop)

    async def _start_backplane(self) -> None:
        backplane = self.hub.backplane
        assert backplane is not None
        try:
            await backplane.start(self.hub)
        except Exception as exc:
            logger.warning("backplane could not connect yet (%s); it keeps retrying", exc)
            self.report(None, exc)

    def stop_accepting(self) -> None:
        """Close the listening servers and stop the heartbeat (the hub is closing)."""
        for server in self.servers:
            server.close()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    def _schedule_heartbeat(self) -> None:
        cfg = self.config
        # Pings may run up to one tick late; a tick under (pong_wait - ping_period) keeps a peer
        # that answers every ping from ever being taken for dead.
        tick = min(cfg.ping_period, (cfg.pong_wait - cfg.ping_period) / 2)
        assert self.loop is not None
        self._heartbeat = self.loop.call_later(max(tick, 0.005), self._beat)

    def _beat(self) -> None:
        self._heartbeat = None
        if self.closed:
            return
        assert self.loop is not None
        cfg = self.config
        dead = heartbeat(self.connections.members(), self.loop.time(), cfg.ping_period,
                         cfg.pong_wait)
        for proto in dead:
            self.report(proto.session, PongTimeout(
                f"nothing received for {cfg.pong_wait}s: peer considered dead"))
            proto.abort()
        self._schedule_heartbeat()
