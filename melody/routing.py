"""Typed routing and acks: ``@hub.route("chat.send")``, replies matched by id.

With a codec (``Melody(codec=melody.codecs.JSON)``) and at least one route, every decoded message
is dispatched by its type (JSON ``type``, Packet command) with one dict lookup. Wire format
(JSON codec; the Packet codec carries the same fields in its header)::

    client -> hub   {"type": "chat.send", "id": 7, "data": {...}}     id optional (int or str)
    hub -> client   {"id": 7, "ok": true, "data": <the handler's return value>}
                    {"id": 7, "ok": false, "error": "<message>"}

- A message with an ``id`` gets exactly one reply with that id: the handler's return value
  (an ``async def`` handler is awaited), or an error: ``"timeout"`` when an async handler
  runs past its route's ``timeout`` (it is cancelled), the text of a
  :class:`~melody.errors.RequestError` it raised, or ``"internal error"`` for any other
  exception (which goes to ``handle_error``).
- A message without an ``id`` gets no success reply; failures still get an error reply, with
  ``"id": null``.
- A type with no route goes to ``@hub.route_fallback`` when there is one, else gets the error
  reply ``"unknown type: ..."`` (counted in ``hub.stats()["unroutable"]``).

Handlers are ``fn(session, data)`` (the fallback: ``fn(session, msg)``, the whole message).
Sync handlers run inline on the loop (no task); async ones go through the session's queue, so
one session's messages are handled in arrival order (see ``Config.concurrent_message_handling``).

With ``hub.authorize(fn)`` the hub also answers three built-in types (a route of your own with
the same name takes precedence)::

    {"type": "subscribe",   "id": 1, "data": "room:1"}   -> {"id": 1, "ok": true, "data": true}
    {"type": "unsubscribe", "id": 2, "data": "room:1"}   -> {"id": 2, "ok": true, "data": true}
    {"type": "publish",     "id": 3, "data": {"topic": "room:1", "data": {...}}}
                                                         -> {"id": 3, "ok": true, "data": <n>}

(``subscribe``/``unsubscribe`` answer whether anything changed; ``publish`` how many sessions
here took the message.)

A topic with history (``hub.configure_topic(pattern, history_size=...)``) takes a position to
recover from, and its reply says where the stream stands and carries what was missed::

    {"type": "subscribe", "id": 4, "data": {"topic": "chat:1", "offset": 41, "epoch": "Xy3_a9Qz"}}
        -> {"id": 4, "ok": true, "data": {"subscribed": true, "recovered": true, "offset": 44,
            "epoch": "Xy3_a9Qz", "publications": [{"offset": 42, "data": ...}, ...]}}

and its subscribers receive ``{"type": "publish", "topic": T, "offset": N, "data": ...}`` (the
publisher too). The whole protocol is in ``docs/protocol.md``.

``fn(session, action, topic) -> bool`` decides ``"subscribe"`` and ``"publish"``; a refusal is the
error reply ``"forbidden"``, counted in ``hub.stats()["denied"]``. Subscribers of a topic receive
``{"type": "publish", "topic": "room:1", "data": {...}}`` (not the publisher itself).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from melody._hubstate import state_of
from melody.delivery.history import StreamPosition
from melody.delivery.streams import publication_text
from melody.errors import (
    AckTimeout,
    BackplaneError,
    RequestError,
    SessionClosed,
    TopicLimitExceeded,
)

if TYPE_CHECKING:
    from melody._hubstate import HandlerProbe, HubState
    from melody.codecs import Codec
    from melody.hub import Melody
    from melody.session import Session

__all__ = ["Authorizer", "Router"]  # RequestError lives in melody.errors

#: ``fn(session, action, topic) -> bool``: ``action`` is ``"subscribe"`` or ``"publish"``.
Authorizer = Callable[["Session", str, str], bool]

BUILTIN_TYPES = ("subscribe", "unsubscribe", "publish", "presence", "presence_stats")

# What a built-in handler returns when it answers later, from a task (subscribe to a topic
# with history): the dispatcher then sends no reply of its own.
_REPLIED_LATER: Any = object()


#: The handler label (metrics, spans) of the fallback route and of messages that named no
#: route: fixed, never the type a client sent, so that the label set stays the routes'.
FALLBACK_LABEL = "_fallback"
UNKNOWN_LABEL = "_unknown"


class _Route:
    __slots__ = ("fn", "is_async", "label", "timed", "timeout", "whole")

    def __init__(self, fn: Callable[..., Any], timeout: float | None, whole: bool,
                 label: str) -> None:
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn)
        self.timeout = timeout
        self.whole = whole
        #: The route's registered name as a string: what metrics and spans call it.
        self.label = label
        #: ``fn`` is the probe's own wrapper (HandlerProbe.wrap): no enter/exit around it.
        self.timed = False

    def watched(self, probe: HandlerProbe | None) -> _Route:
        """This route as dispatched under ``probe``: a sync one in the probe's own wrapper
        when it has one, else itself."""
        if probe is None or self.is_async:
            return self
        wrapped = probe.wrap(self.label, self.fn, (RequestError,))
        if wrapped is None:
            return self
        route = _Route(wrapped, self.timeout, self.whole, self.label)
        route.timed = True
        return route


class Router:
    """The hub's message handler when routes are registered; made by ``hub.route``.

    Not constructed by applications: use ``hub.route``, ``hub.route_fallback`` and
    ``hub.authorize``.
    """

    __slots__ = ("_authorizer", "_builtins", "_codec", "_fallback", "_hub", "_probe", "_routes",
                 "_state", "_table", "_watched_fallback")

    def __init__(self, hub: Melody, codec: Codec) -> None:
        self._hub = hub
        self._state: HubState = state_of(hub)
        self._codec = codec
        self._routes: dict[Hashable, _Route] = {}
        self._builtins: dict[Hashable, _Route] = {}
        # What dispatch looks up: the built-ins overlaid with the application's routes.
        self._table: dict[Hashable, _Route] = {}
        self._fallback: _Route | None = None
        self._watched_fallback: _Route | None = None
        self._authorizer: Authorizer | None = None
        self._probe: HandlerProbe | None = None

    # -- registration --------------------------------------------------------------------------

    def add(self, key: Hashable, fn: Callable[..., Any], timeout: float | None) -> None:
        self._routes[key] = _Route(fn, timeout, False, str(key))
        self._rebuild()

    def set_fallback(self, fn: Callable[..., Any], timeout: float | None) -> None:
        self._fallback = _Route(fn, timeout, True, FALLBACK_LABEL)
        self._rebuild()

    def watch(self, probe: HandlerProbe | None) -> None:
        """Dispatch under ``probe`` (the hub's, after any change): route calls are watched."""
        self._probe = probe
        self._rebuild()

    def _rebuild(self) -> None:
        # What dispatch looks up: the built-ins overlaid with the application's routes, each
        # as watched by the probe.
        probe = self._probe
        self._table = {key: route.watched(probe)
                       for key, route in {**self._builtins, **self._routes}.items()}
        fallback = self._fallback
        self._watched_fallback = fallback.watched(probe) if fallback is not None else None

    def set_authorizer(self, fn: Authorizer) -> None:
        self._authorizer = fn
        self._builtins = {
            # Whole message: a subscribe to a topic with history answers by itself, later.
            "subscribe": _Route(self._subscribe, None, True, "subscribe"),
            "unsubscribe": _Route(self._unsubscribe, None, False, "unsubscribe"),
            "publish": _Route(self._publish, None, False, "publish"),
            "presence": _Route(self._presence, None, False, "presence"),
            "presence_stats": _Route(self._presence_stats, None, False, "presence_stats"),
        }
        self._rebuild()

    # -- dispatch ------------------------------------------------------------------------------

    def __call__(self, session: Session, msg: Any) -> None:
        """Dispatch one decoded message (called by the hub for every message)."""
        key, msg_id, data = self._codec.envelope(msg)
        route = self._table.get(key) if key is not None else None
        if route is None:
            route = self._watched_fallback
            if route is None:
                self._state.message_stats["unroutable"] += 1
                probe = self._probe
                if probe is not None:
                    probe.exit(UNKNOWN_LABEL, probe.enter(session, UNKNOWN_LABEL, msg, True),
                               "unknown_route", None)
                what = f"unknown type: {key!r}" if key is not None else "message has no type"
                self._reply(session, msg, msg_id, False, what)
                return
        arg = msg if route.whole else data
        if route.is_async:
            # Unwatched (no probe), the call runs as the task's coroutine itself.
            run = self._call_async if self._probe is None else self._run_async
            self._state.enqueue(session, run, (route, msg, msg_id, arg))
        elif session.inbox:
            # Async calls are pending for this session: keep its arrival order.
            self._state.enqueue(session, self._run_sync, (route, msg, msg_id, arg))
        else:
            self._run_sync(session, route, msg, msg_id, arg)

    def _run_sync(self, session: Session, route: _Route, msg: Any, msg_id: Any,
                  arg: Any) -> None:
        # With a probe (metrics, tracing) the call is watched, its reply included, unless
        # the probe's own wrapper is the route's function; without one this is two attribute
        # reads more than the call itself.
        probe = self._probe if not route.timed else None
        token = probe.enter(session, route.label, msg, True) if probe is not None else None
        outcome: str | None = None
        error: BaseException | None = None
        try:
            result = route.fn(session, arg)
        except RequestError as exc:
            outcome = "refused"
            self._reply(session, msg, msg_id, False, str(exc))
        except Exception as exc:
            outcome, error = "exception", exc
            self._state.report(session, exc)
            self._reply(session, msg, msg_id, False, "internal error")
        else:
            if msg_id is not None and result is not _REPLIED_LATER:
                self._reply(session, msg, msg_id, True, result)
        finally:
            if probe is not None:
                probe.exit(route.label, token, outcome, error)

    async def _run_async(self, session: Session, route: _Route, msg: Any, msg_id: Any,
                         arg: Any) -> None:
        probe = self._probe
        token = probe.enter(session, route.label, msg, True) if probe is not None else None
        outcome: str | None = None
        error: BaseException | None = None
        try:
            outcome, error = await self._call_async(session, route, msg, msg_id, arg)
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            if probe is not None:
                probe.exit(route.label, token, outcome, error)

    async def _call_async(self, session: Session, route: _Route, msg: Any, msg_id: Any,
                          arg: Any) -> tuple[str | None, BaseException | None]:
        # The call and its reply; returns the outcome for the probe (None: success).
        deadline = asyncio.timeout(route.timeout)
        try:
            async with deadline:
                result = await route.fn(session, arg)
        except RequestError as exc:
            self._reply(session, msg, msg_id, False, str(exc))
            return "refused", None
        except TimeoutError as exc:
            if not deadline.expired():
                self._state.report(session, exc)
                self._reply(session, msg, msg_id, False, "internal error")
                return "exception", exc
            self._state.message_stats["ack_timeouts"] += 1
            timeout = AckTimeout(
                f"handler for {self._codec.envelope(msg)[0]!r} ran past {route.timeout} s")
            self._state.report(session, timeout)
            self._reply(session, msg, msg_id, False, "timeout")
            return "timeout", timeout
        except Exception as exc:
            self._state.report(session, exc)
            self._reply(session, msg, msg_id, False, "internal error")
            return "exception", exc
        if msg_id is not None:
            self._reply(session, msg, msg_id, True, result)
        return None, None

    def _reply(self, session: Session, request: Any, msg_id: Any, ok: bool,
               value: Any) -> None:
        if session.is_closed:
            return  # nobody to answer: the session ended while the handler ran
        codec = self._codec
        try:
            payload = codec.reply(request, msg_id, ok, value)
        except (TypeError, ValueError) as exc:
            self._state.report(session, exc)
            payload = codec.reply(request, msg_id, False, "reply not serializable")
        self._state.send_encoded(session, payload)

    # -- the built-in topic routes (with hub.authorize) -----------------------------------------

    def _check(self, session: Session, action: str, topic: str) -> None:
        authorizer = self._authorizer
        assert authorizer is not None
        if not authorizer(session, action, topic):
            self._state.message_stats["denied"] += 1
            raise RequestError("forbidden")

    def _subscribe(self, session: Session, msg: Any) -> Any:
        _, msg_id, data = self._codec.envelope(msg)
        topic, since = _subscription(data)
        self._check(session, "subscribe", topic)
        if self._state.streams.options(topic) is not None:
            # A topic with history: the reply carries its position (and what was missed), and
            # must leave in the step the session joins, so the subscription finishes in a task
            # of the session's queue and answers from there.
            self._state.enqueue(session, self._subscribe_from, (msg, msg_id, topic, since))
            return _REPLIED_LATER
        if since is not None:
            raise RequestError(f"topic {topic!r} keeps no history: nothing to recover")
        try:
            return self._hub.subscribe(session, topic)
        except TopicLimitExceeded as exc:
            raise RequestError(str(exc)) from None

    async def _subscribe_from(self, session: Session, msg: Any, msg_id: Any, topic: str,
                              since: StreamPosition | None) -> None:
        try:
            if session.is_closed:
                return
            result = await self._state.streams.subscribe_from(session, topic, since)
        except TopicLimitExceeded as exc:
            self._reply(session, msg, msg_id, False, str(exc))
            return
        except SessionClosed:
            return  # nobody to answer
        except BackplaneError as exc:
            self._state.report(session, exc)
            self._reply(session, msg, msg_id, False, "history unavailable")
            return
        # Same step as the join above: no publication can reach the session before this.
        if msg_id is None:  # no reply wanted: what was missed comes as publications
            for p in result.publications:
                self._state.send_encoded(session, publication_text(topic, p.offset, p.data))
            return
        self._reply(session, msg, msg_id, True, {
            "subscribed": result.subscribed,
            "recovered": result.recovered,
            "offset": result.position.offset,
            "epoch": result.position.epoch,
            "publications": [{"offset": p.offset, "data": orjson.loads(p.data)}
                             for p in result.publications],
        })

    async def _presence(self, session: Session, data: Any) -> Any:
        # Who is in a topic: for its subscribers only (async: it may read Redis).
        return await self._hub.presence(self._presence_topic(session, data))

    async def _presence_stats(self, session: Session, data: Any) -> Any:
        return await self._hub.presence_stats(self._presence_topic(session, data))

    def _presence_topic(self, session: Session, data: Any) -> str:
        topic = _topic(data)
        if topic not in session.topics:
            self._state.message_stats["denied"] += 1
            raise RequestError("forbidden")
        table = self._state.streams.table
        options = table.lookup(topic) if table else None
        if options is None or not options.presence:
            raise RequestError(f"topic {topic!r} keeps no presence")
        return topic

    def _unsubscribe(self, session: Session, data: Any) -> bool:
        return self._hub.unsubscribe(session, _topic(data))

    def _publish(self, session: Session, data: Any) -> int:
        if not isinstance(data, Mapping) or not isinstance(data.get("topic"), str):
            raise RequestError('publish takes {"topic": str, "data": ...}')
        topic: str = data["topic"]
        self._check(session, "publish", topic)
        if self._state.streams.options(topic) is not None:
            try:
                return self._hub.publish_json(topic, data.get("data"))  # numbered, to all
            except BackplaneError as exc:
                self._state.report(session, exc)
                raise RequestError("history unavailable") from None
        text = self._state.json_text({"type": "publish", "topic": topic, "data": data.get("data")})
        return self._hub.publish_others(topic, text, session)


def _subscription(data: Any) -> tuple[str, StreamPosition | None]:
    # "topic", or {"topic": ..., "offset": n, "epoch": "..."} (a position to recover from).
    if not isinstance(data, Mapping):
        return _topic(data), None
    topic = _topic(data.get("topic"))
    offset, epoch = data.get("offset"), data.get("epoch")
    if offset is None and epoch is None:
        return topic, None
    if type(offset) is not int or offset < 0 or not isinstance(epoch, str) or not epoch:
        raise RequestError('a position is {"offset": int >= 0, "epoch": str}')
    return topic, StreamPosition(offset, epoch)


def _topic(data: Any) -> str:
    if not isinstance(data, str) or not data:
        raise RequestError("the topic must be a non-empty string")
    return data
