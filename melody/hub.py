"""The hub: handlers, the set of sessions, and broadcast (Go melody's ``Melody``)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from melody._core.fanout import Group
from melody._core.protocol import WebSocketProtocol
from melody._hubstate import HubState
from melody.codecs import Codec
from melody.config import Config
from melody.delivery.history import HistoryPage, StreamPosition
from melody.delivery.options import TopicOptions
from melody.delivery.streams import Recovery, publication_text
from melody.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    BackplaneError,
    HubClosed,
    SessionClosed,
    check_close_code,
)
from melody.http_api import HttpApi
from melody.reload import Reloader, Source
from melody.routing import Authorizer, Router
from melody.server.asgi import AsgiAdapter
from melody.server.lifecycle import serve as _serve
from melody.server.lifecycle import shutdown as _shutdown
from melody.server.native import Upgrader
from melody.session import Session

if TYPE_CHECKING:
    import ssl as _ssl

    from melody.backplane import Backplane
    from melody.middleware import Middleware


__all__ = ["Melody"]

F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound="Middleware")


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
        #: The hub's configuration (an immutable object; :meth:`reload` replaces it with
        #: another when the allowed origins or the rate limit change).
        self.config = config if config is not None else Config()
        #: Shares broadcasts and publishes with other hub processes (e.g. RedisBackplane).
        self.backplane = backplane
        #: What messages are (``melody.codecs``): None passes ``str``/``bytes`` through.
        self.codec = codec
        # Everything the hub's layers share (sessions, topics, handlers, tasks, hooks).
        self._state = state = HubState(self, self.config, codec)
        self._backplane_stopping: asyncio.Task[None] | None = None
        self._reloads: Reloader | None = None
        # Decides each HTTP request its connections read (upgrades, plain GETs).
        self._upgrader = state.dispatch.on_request = Upgrader(state)
        state.rebuild_dispatch()

    # -- handler registration (Go: HandleConnect, HandleMessage, ...) ----------------------------

    def handle_connect(self, fn: F) -> F:
        """``fn(session)``: a session was upgraded and registered."""
        self._state.on_connect = fn
        self._state.rebuild_dispatch()
        return fn

    def handle_disconnect(self, fn: F) -> F:
        """``fn(session)``: a session ended (after its close handshake, or when TCP dropped)."""
        self._state.on_disconnect = fn
        self._state.rebuild_dispatch()
        return fn

    def handle_message(self, fn: F) -> F:
        """``fn(session, msg: str)``: a text message arrived.

        With a codec (``Melody(codec=...)``) ``msg`` is the decoded object, from text and
        binary messages alike; with routes (:meth:`route`) the router gets it instead.
        """
        self._state.on_text = fn
        self._state.rebuild_dispatch()
        return fn

    def handle_message_binary(self, fn: F) -> F:
        """``fn(session, msg: bytes)``: a binary message arrived."""
        self._state.on_binary = fn
        self._state.rebuild_dispatch()
        return fn

    def handle_sent_message(self, fn: F) -> F:
        """``fn(session, msg: str)``: a text message was handed to the session's socket.

        Costs one Python call per recipient of every broadcast: register it only when needed.
        """
        self._state.on_sent_text = fn
        self._state.rebuild_dispatch()
        return fn

    def handle_sent_message_binary(self, fn: F) -> F:
        """``fn(session, msg: bytes)``: a binary message was handed to the session's socket."""
        self._state.on_sent_binary = fn
        self._state.rebuild_dispatch()
        return fn

    def handle_error(self, fn: F) -> F:
        """``fn(session, error)``: something went wrong for a session.

        Receives ``MessageBufferFull``, ``ProtocolError`` (and its ``InvalidPayload`` and
        ``MessageTooBig``), ``PongTimeout``, ``WriteTimeout``, with a codec ``DecodeError``
        (and its subclasses) and ``AckTimeout``, and exceptions raised by the other
        handlers. Without an error handler they are logged on the ``melody`` logger.
        """
        self._state.on_error = fn
        self._state.rebuild_dispatch()
        return fn

    def handle_close(self, fn: F) -> F:
        """``fn(session, code, reason)``: the peer sent a close frame (the reply is automatic)."""
        self._state.on_close = fn
        self._state.rebuild_dispatch()
        return fn

    def handle_pong(self, fn: F) -> F:
        """``fn(session)``: a pong arrived (an answer to the hub's heartbeat ping)."""
        self._state.on_pong = fn
        self._state.rebuild_dispatch()
        return fn

    def handle_upgrade(self, fn: F) -> F:
        """``fn(request) -> keys | None``: decide an upgrade before the session exists.

        Go's ``HandleRequestWithKeys``: return a dict to accept with those keys on the session,
        None or True to accept with none; raise ``melody.errors.HandshakeError(status, reason,
        headers)`` to refuse (e.g. 401 for a bad token). May be ``async def``; reading from the
        client pauses while it runs.
        """
        self._state.upgrade_hook = fn
        return fn

    def handle_http(self, fn: F) -> F:
        """``fn(request) -> response | None`` answers plain GETs that are not upgrades.

        Return ``bytes``/``str`` (a 200 body), ``(status, headers, body)``, or None for 404.
        Useful for a health check or a small page; may be ``async def``.
        """
        self._state.http_hook = fn
        return fn

    def enable_http_api(self, api_key: str, *, path: str = "/api",
                        max_body_bytes: int = 1 << 20) -> HttpApi:
        """Answer the HTTP API under ``path`` (off until called): ``POST <path>/publish``,
        ``broadcast``, ``send_to_user``, ``disconnect_user``, ``presence``,
        ``presence_stats``, ``history``, ``stats``, and for introspection ``sessions`` (a
        page at a time), ``topics`` and ``disconnect`` (one session), JSON in and out (see
        ``docs/protocol.md``, "HTTP API"; ``melody top`` reads it).

        Every request carries ``api_key`` as ``Authorization: Bearer <key>`` or ``X-API-Key``
        (compared in constant time; 401 with no detail otherwise); bodies over
        ``max_body_bytes`` get 413. A method call rather than a ``Config`` field so that the
        key need not sit in a configuration object that is logged or printed. melody's own
        server answers it on the port it serves; under ASGI, mount the returned object (an
        ASGI app) in the framework's router. Calling it again replaces the key and path.
        Raises ValueError for a key under 16 characters or a bad path.
        """
        api = HttpApi(self, api_key, path=path, max_body_bytes=max_body_bytes)
        self._state.http_api = api
        return api

    # -- live reconfiguration (melody.reload) ----------------------------------------------

    def reload(self, source: Source | None = None) -> dict[str, tuple[Any, Any]]:
        """Read the reloadable settings from ``source`` and apply what changed, closing no
        connection; return what changed, ``{name: (old, new)}`` (empty when nothing did).

        ``source`` is a TOML file's path or a function returning the same mapping (see
        ``melody.reload`` and docs/configuration.rst); it is remembered, and ``reload()``
        without one (what SIGHUP does under ``melody serve --config``) reads it again. The
        settings are the allowed origins, the JWT keys and algorithms, the rate limit, the
        connection limits and the log level; a key the source leaves out keeps the value
        the application gave it. Logs one INFO line listing the changes.

        Raises :class:`~melody.errors.ConfigError` (and logs it at ERROR) when the source
        cannot be read or a value is refused: then nothing changed. Raises RuntimeError
        without a source, given now or before. Costs a file read and a few object
        constructions; call it from the hub's event loop thread.
        """
        return self._reloader().reload(source)

    def reconfigure(self, settings: Mapping[str, Any], *,
                    relative_to: str | os.PathLike[str] | None = None,
                    ) -> dict[str, tuple[Any, Any]]:
        """Apply reloadable ``settings`` given as a mapping (the shape of the TOML file), as
        :meth:`reload` does from a source; returns what changed. ``key_files`` are read
        relative to ``relative_to`` (a folder; default the current directory). Raises
        :class:`~melody.errors.ConfigError` and changes nothing when a value is refused."""
        folder = Path(relative_to) if relative_to is not None else None
        return self._reloader().apply(settings, folder, "hub.reconfigure")

    @property
    def config_source(self) -> Source | None:
        """Where :meth:`reload` reads from: the last source given, or None."""
        return self._reloads.source if self._reloads is not None else None

    def _reloader(self) -> Reloader:
        # Made at the first reload, once the application registered its middleware: it
        # records the application's values, which the keys a source leaves out return to.
        if self._reloads is None:
            self._reloads = Reloader(self)
        return self._reloads

    def use(self, middleware: M) -> M:
        """Add a handshake middleware, run on every upgrade request before its session exists.

        ``middleware(handshake, call_next)`` is an async callable (see ``melody.middleware``):
        it may refuse (raise ``HandshakeError``), add ``handshake.keys``, or ``await
        call_next(handshake)``. Middlewares run in the order they were added, before
        ``handle_upgrade``. Returns its argument, so it works as a decorator.
        """
        self._state.middleware.append(middleware)
        return middleware

    # -- the session registry --------------------------------------------------------------------

    def sessions(self) -> list[Session]:
        """A snapshot of the registered sessions, closing ones included (Go: ``Sessions()``).

        A session leaves the list when its connection ends, when ``handle_disconnect`` runs.
        """
        return [p.session for p in self._state.connections]

    def __len__(self) -> int:
        """The number of connected sessions (Go: ``Len()``)."""
        return len(self._state.connections)

    def is_closed(self) -> bool:
        """True after :meth:`close` (Go: ``IsClosed()``)."""
        return self._state.closed

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
        state = self._state
        if state.closed:
            raise HubClosed("hub is closed")
        return state.deliver(msg, binary, targets, exclude, predicate)

    def broadcast(self, msg: str) -> int:
        """Send a text message to every session; the frame is built once for all.

        Returns how many sessions it was handed to. Raises ``HubClosed`` after :meth:`close`.
        Never waits for a slow reader (see ``Config.message_buffer_size``).

        A hub that was never served has no sessions of its own. Without a backplane this,
        and every ``broadcast*``/``publish*``, then returns 0: nothing could be delivered and
        nothing is lost. With a ``RedisBackplane`` that was never started (neither by serving
        nor by hand) it raises ``BackplaneError`` rather than drop the message: a process that
        runs no hub publishes with ``melody.Publisher``. The same holds for
        :meth:`send_to_user`, :meth:`disconnect_user` and the ``publish*`` methods.
        """
        self._share(None, msg, False)
        return self._fan_out(msg, False, self._state.connections)

    def _share(self, topic: str | None, msg: Any, binary: bool) -> None:
        # Hand the message to the other nodes once (not once per node); they frame it once.
        if self.backplane is not None and not self._state.closed:
            self._require_started_backplane()
            payload = bytes(msg) if binary else msg.encode("utf-8")
            self.backplane.publish(topic, binary, payload)

    def _require_started_backplane(self) -> None:
        # A backplane that was never started (the hub never served, backplane.start never
        # called) would drop every message without a word (issue 13): raise instead. A
        # backplane without a ``started`` attribute (written against the earlier contract,
        # or a test double) is taken as started, as before.
        backplane = self.backplane
        if (backplane is not None and self._state.loop is None
                and not getattr(backplane, "started", True)):
            raise BackplaneError(
                f"this hub was never served, so its {type(backplane).__name__} was never "
                "started: the message would reach no node. Serve the hub first (hub.serve, "
                "melody.run; with hub.asgi it starts at its first WebSocket connection), or "
                "publish with melody.Publisher from a process that runs no hub")

    def _deliver_remote(self, topic: str | None, binary: bool, payload: bytes) -> int:
        # Kept for backplanes written against the earlier contract; melody's own use
        # melody._hubstate.state_of(hub).deliver_remote.
        return self._state.deliver_remote(topic, binary, payload)

    def _report(self, session: Session | None, error: BaseException) -> None:
        # Kept for backplanes written against the earlier contract (hub._report(None, error));
        # melody's own use melody._hubstate.state_of(hub).report.
        self._state.report(session, error)

    def broadcast_filter(self, msg: str, fn: Callable[[Session], bool]) -> int:
        """Send ``msg`` to the sessions for which ``fn(session)`` is true (one call each)."""
        return self._fan_out(msg, False, self._state.connections, None, fn)

    def broadcast_others(self, msg: str, session: Session) -> int:
        """Send ``msg`` to every session except ``session`` (typically the sender)."""
        self._share(None, msg, False)
        return self._fan_out(msg, False, self._state.connections, session.proto)

    def broadcast_multiple(self, msg: str, sessions: Iterable[Session]) -> int:
        """Send ``msg`` to each of ``sessions`` (framed once, as every broadcast)."""
        return self._fan_out(msg, False, [s.proto for s in sessions])

    def broadcast_binary(self, msg: bytes | bytearray | memoryview) -> int:
        """Binary :meth:`broadcast`."""
        self._share(None, msg, True)
        return self._fan_out(msg, True, self._state.connections)

    def broadcast_binary_filter(
        self, msg: bytes | bytearray | memoryview, fn: Callable[[Session], bool]
    ) -> int:
        """Binary :meth:`broadcast_filter`."""
        return self._fan_out(msg, True, self._state.connections, None, fn)

    def broadcast_binary_others(
        self, msg: bytes | bytearray | memoryview, session: Session
    ) -> int:
        """Binary :meth:`broadcast_others`."""
        self._share(None, msg, True)
        return self._fan_out(msg, True, self._state.connections, session.proto)

    def broadcast_binary_multiple(
        self, msg: bytes | bytearray | memoryview, sessions: Iterable[Session]
    ) -> int:
        """Binary :meth:`broadcast_multiple`."""
        return self._fan_out(msg, True, [s.proto for s in sessions])

    # -- users (session.user): every session of one user, on every node --------------------

    def send_to_user(self, user: str, msg: str) -> int:
        """Send a text message to every session of ``user`` (``session.user``), framed once.

        With a backplane the other nodes get it too and deliver it to that user's sessions
        there. Returns how many sessions *of this node* took it (the other nodes' are not
        counted: they are not known without a round trip). Raises ``HubClosed`` after
        :meth:`close`. Costs a dict lookup plus the user's sessions here, and one backplane
        message whatever the number of nodes.
        """
        return self._to_user(user, msg, False)

    def send_to_user_binary(self, user: str, msg: bytes | bytearray | memoryview) -> int:
        """Binary :meth:`send_to_user`."""
        return self._to_user(user, msg, True)

    def send_to_user_json(self, user: str, obj: Any) -> int:
        """:meth:`send_to_user` ``obj`` as JSON (encoded once, as :meth:`broadcast_json`);
        TypeError when it cannot be encoded."""
        return self._to_user(user, self._state.json_text(obj), False)

    def _to_user(self, user: str, msg: Any, binary: bool) -> int:
        state = self._state
        if state.closed:
            raise HubClosed("hub is closed")
        if self.backplane is not None:
            self._require_started_backplane()
            payload = bytes(msg) if binary else msg.encode("utf-8")
            self.backplane.send_to_user(user, binary, payload)
        return state.deliver_user(user, binary, msg)

    def disconnect_user(self, user: str, code: int = CLOSE_NORMAL, reason: str = "") -> int:
        """Close every session of ``user`` with ``code`` and ``reason``, here and, with a
        backplane, on every other node (e.g. after a logout or a ban).

        Returns how many sessions of this node it closed (others' are not counted). Raises
        ``HubClosed`` after :meth:`close`, ValueError for a code that may not be sent (RFC
        6455 7.4; 4000-4999 are the application's).
        """
        state = self._state
        if state.closed:
            raise HubClosed("hub is closed")
        check_close_code(code)
        if self.backplane is not None:
            self._require_started_backplane()
            self.backplane.disconnect_user(user, code, reason)
        return state.disconnect_user(user, code, reason)

    def user_sessions(self, user: str) -> list[Session]:
        """The open sessions of ``user`` on this node (a snapshot)."""
        return self._state.user_sessions(user)

    # -- codecs, routing, acks, authorization (melody.codecs, melody.routing) ----------------

    def _routing(self) -> Router:
        if self.codec is None:
            raise ValueError("routing needs a codec: Melody(codec=melody.codecs.JSON)")
        state = self._state
        if state.router is None:
            state.router = Router(self, self.codec)
        return state.router

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
            self._state.rebuild_dispatch()
            return fn

        return register

    def route_fallback(self, fn: F) -> F:
        """``fn(session, msg)`` (the whole decoded message) gets messages whose type has no
        route; its return value is the ack, as for :meth:`route`. Raises ValueError when the
        hub has no codec."""
        self._routing().set_fallback(fn, 10.0)
        self._state.rebuild_dispatch()
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
        self._state.rebuild_dispatch()
        return fn

    def broadcast_json(self, obj: Any) -> int:
        """Send ``obj`` as JSON to every session: encoded once, framed once, for all.

        Encodes with the hub's codec when it is a text codec, else with
        ``melody.codecs.JSON`` (orjson). Returns how many sessions took it; raises TypeError
        when ``obj`` cannot be encoded, ``HubClosed`` after :meth:`close`.
        """
        text = self._state.json_text(obj)
        self._share(None, text, False)
        return self._fan_out(text, False, self._state.connections)

    def publish_json(self, topic: str, obj: Any) -> int:
        """:meth:`publish` ``obj`` as JSON (encoded once, as :meth:`broadcast_json`).

        To a topic with history (:meth:`configure_topic`) ``obj`` is the publication's
        ``data``; with a ``RedisBackplane`` that cannot take it (Redis unreachable, queue
        full) it raises ``BackplaneError`` rather than lose it.
        """
        text = self._state.json_text(obj)
        options = self._state.streams.options(topic)
        if options is not None:
            return self._publish_stream(topic, text, options)
        return self._publish(topic, text, False, None)

    # -- topics with history (melody.delivery) -------------------------------------------------

    def configure_topic(self, pattern: str, *, history_size: int = 0,
                        history_ttl: float | None = None, presence: bool = False,
                        join_leave: bool = False) -> TopicOptions:
        """Set the options of the topics matching ``pattern`` (a name or a glob: ``chat:*``).

        ``history_size`` > 0 keeps the topic's last ``history_size`` publications (for at most
        ``history_ttl`` seconds when given) and numbers them: each publication gets an offset,
        strictly increasing per topic, and the topic's stream an epoch that changes when the
        stream may have lost entries (a restart of the memory engine, a Redis flush). Its
        subscribers then receive ``{"type": "publish", "topic": T, "offset": N, "data": D}``
        (``publish(topic, text)``: ``D`` is the text as a JSON string; ``publish_json``: the
        object), the publisher's own session included, and a client that resubscribes with
        the last ``(offset, epoch)`` it saw gets what it missed (:meth:`subscribe_from`; the
        JSON router's built-in ``subscribe`` takes ``{"topic", "offset", "epoch"}``). The
        history lives in this process, or in Redis with a ``RedisBackplane`` (shared by every
        node). When several patterns match a topic the most specific wins (an exact name, then
        the glob with the most literal characters, then the last configured). Topics that match
        nothing keep today's behaviour and cost. Binary publishes to a topic with history raise
        TypeError. With a ``RedisBackplane`` the pattern is also written to Redis
        (``P:topic-options``), where ``melody.Publisher`` reads which topics keep history.

        ``presence=True`` keeps who is subscribed, on every node (:meth:`presence`,
        :meth:`presence_stats`); ``join_leave=True`` sends the topic's subscribers
        ``{"type": "join"|"leave", "topic": T, "info": {"session", "user", "connected_at",
        "node"}}`` when a session subscribes or leaves (see ``melody.delivery.presence``).
        """
        options = TopicOptions(history_size=history_size, history_ttl=history_ttl,
                               presence=presence, join_leave=join_leave)
        self._state.streams.table.configure(pattern, options)
        # A backplane that tells publishers without a hub (melody.Publisher) which topics
        # keep history: RedisBackplane writes it to Redis.
        share = getattr(self.backplane, "share_topic_options", None)
        if share is not None:
            share(pattern, options)
        return options

    def _publish_stream(self, topic: str, data: str, options: TopicOptions) -> int:
        if self._state.closed:
            raise HubClosed("hub is closed")
        self._require_started_backplane()
        return self._state.streams.publish(topic, data, options)

    async def history(self, topic: str, *, since: int | None = None,
                      limit: int | None = None) -> HistoryPage:
        """The kept publications of a topic with history: those after offset ``since``
        (None: every one kept), oldest first, at most ``limit``; and the stream's current
        ``position`` (offset and epoch). ``page.publications[i].data`` is JSON text.

        Raises ValueError for a topic without history, ``BackplaneError`` when Redis is
        unreachable.
        """
        return await self._state.streams.history(topic, since, limit)

    async def presence(self, topic: str) -> dict[str, dict[str, Any]]:
        """Who is subscribed to ``topic`` (configured with ``presence=True``) on every node:
        session id -> ``{"session", "user", "connected_at", "node"}``. Raises ValueError for
        a topic without presence, ``BackplaneError`` when Redis is unreachable."""
        self._presence_options(topic)
        return await self._state.presence.read(topic)

    async def presence_stats(self, topic: str) -> dict[str, int]:
        """``{"sessions": n, "users": m}`` for ``topic`` on every node (see :meth:`presence`)."""
        self._presence_options(topic)
        return await self._state.presence.stats(topic)

    def _presence_options(self, topic: str) -> None:
        table = self._state.streams.table
        options = table.lookup(topic) if table else None
        if options is None or not options.presence:
            raise ValueError(f"topic {topic!r} keeps no presence (see hub.configure_topic)")

    async def subscribe_from(self, session: Session, topic: str, offset: int | None = None,
                             epoch: str | None = None) -> Recovery:
        """Subscribe ``session`` to a topic with history, from position ``(offset, epoch)``.

        The session is sent, as ordinary publication messages, every publication after
        ``offset`` that it missed, then gets the live stream, with no gap and no duplicate
        between the two, even while others publish, and across nodes with a
        ``RedisBackplane``. ``recovered`` in the result is False when that was impossible
        (another epoch, or the history no longer holds them all, or no position given): the
        client must then refetch its state; ``position`` is where the stream stood. Raises
        as :meth:`subscribe`, and ValueError for a topic without history.
        """
        if session.is_closed:
            raise SessionClosed("session is closed")
        since = None
        if offset is not None or epoch is not None:
            if type(offset) is not int or not isinstance(epoch, str):
                raise ValueError("a position is an int offset and a str epoch, both given")
            since = StreamPosition(offset, epoch)
        result = await self._state.streams.subscribe_from(session, topic, since)
        for publication in result.publications:
            session.write(publication_text(topic, publication.offset, publication.data))
        return result

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
        return self._state.subscribe(session, topic)

    def unsubscribe(self, session: Session, topic: str) -> bool:
        """Remove ``session`` from ``topic``; False if it was not subscribed. O(1)."""
        return self._state.unsubscribe(session, topic)

    def publish(self, topic: str, msg: str) -> int:
        """Send a text message to the subscribers of ``topic``; returns how many took it.

        Costs in proportion to the topic's subscribers (not to all sessions); framed once.
        Raises ``BackplaneError`` on a hub whose ``RedisBackplane`` was never started (see
        :meth:`broadcast`).
        """
        return self._publish(topic, msg, False, None)

    def publish_binary(self, topic: str, msg: bytes | bytearray | memoryview) -> int:
        """Binary :meth:`publish`."""
        return self._publish(topic, msg, True, None)

    def publish_others(self, topic: str, msg: str, session: Session) -> int:
        """:meth:`publish` to every subscriber but ``session`` (the sender)."""
        return self._publish(topic, msg, False, session.proto)

    def publish_binary_others(
        self, topic: str, msg: bytes | bytearray | memoryview, session: Session
    ) -> int:
        """Binary :meth:`publish_others`."""
        return self._publish(topic, msg, True, session.proto)

    def _publish(self, topic: str, msg: Any, binary: bool,
                 exclude: WebSocketProtocol | None) -> int:
        if self._state.closed:
            raise HubClosed("hub is closed")
        options = self._state.streams.options(topic)
        if options is not None:
            # A publication with an offset, to every subscriber (the sender too: its client
            # keeps its position by the offsets it sees).
            if binary:
                raise TypeError(f"topic {topic!r} keeps history: its publications are text "
                                "(JSON), not binary")
            return self._publish_stream(topic, self._state.json_text(msg), options)
        self._share(topic, msg, binary)
        group = self._state.topics.get(topic)
        return self._fan_out(msg, binary, group, exclude) if group is not None else 0

    def topic_len(self, topic: str) -> int:
        """How many sessions of this hub are subscribed to ``topic`` (see cluster_topic_len)."""
        group = self._state.topics.get(topic)
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
        return list(self._state.topics)

    # -- stats ------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters from the compiled core, cheap to read: sessions, topics, connects and
        disconnects, messages and bytes in and out, broadcasts, frames dropped, writes (system
        calls handed to the transports), and the queue depths (total and deepest) of sessions
        whose peers are not keeping up. Costs one pass over the sessions for the queues.
        """
        state = self._state
        stats: dict[str, int] = state.dispatch.stats()
        total = deepest = 0
        for proto in self._state.connections.members():
            depth = proto.queued
            if depth:
                total += depth
                deepest = max(deepest, depth)
        stats["sessions"] = len(self._state.connections)
        stats["topics"] = len(state.topics)
        stats["queued_frames"] = total
        stats["max_queue_depth"] = deepest
        stats.update(state.message_stats)
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
        state = self._state
        if state.closed:
            raise HubClosed("hub is already closed")
        state.closed = True
        # Upgrades still being decided would otherwise hold their slots until their deadline.
        self._upgrader.cancel_pending("hub is closed")
        for proto in self._state.connections.members():
            proto.close(code, reason)
        state.stop_accepting()
        if self.backplane is not None and state.loop is not None:
            self._backplane_stopping = state.loop.create_task(self.backplane.stop())

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
        await _shutdown(self, timeout, batch_size=batch_size, batch_interval=batch_interval)

    async def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until every session has ended (after :meth:`close`), at most ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while len(self._state.connections) and (deadline is None or loop.time() < deadline):
            await asyncio.sleep(0.01)
        for proto in self._state.connections.members():
            proto.abort()
        for server in self._state.servers:
            await server.wait_closed()
        if self._backplane_stopping is not None:
            # The backplane's goodbye (unsubscribe, presence cleanup) is part of closing.
            await self._backplane_stopping

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
        return await _serve(self, host, port, ssl=ssl, reuse_port=reuse_port, backlog=backlog,
                            sock=sock)

    @property
    def asgi(self) -> AsgiAdapter:
        """This hub as an ASGI app for WebSocket connections (Starlette, FastAPI, uvicorn).

        ``WebSocketRoute("/ws", hub.asgi)``; FastAPI: ``app.add_api_websocket_route("/ws",
        hub.asgi.endpoint)``. Its sessions share handlers, broadcasts and topics with those of
        :meth:`serve`, which stays the fast path (see ``melody.asgi``).
        """
        return AsgiAdapter(self)

    def __repr__(self) -> str:
        return f"<Melody sessions={len(self._state.connections)} closed={self._state.closed}>"
