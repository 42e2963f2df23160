"""A hub's topics with history: numbered publications, history reads, and recovery.

``Streams`` is owned by the hub's state (``state_of(hub).streams``). For a topic whose
options keep history it:

* numbers and stores each publication, then delivers it to the topic's subscribers as
  ``{"type": "publish", "topic": T, "offset": N, "data": D}`` (framed once for all, like any
  publish), the publisher included;
* answers history reads;
* subscribes a session *from a position* (:meth:`subscribe_from`): the publications it missed
  since ``(offset, epoch)``, then the live stream, with no gap and no duplicate between them.

Two engines. Without a backplane, the streams live in this process (:class:`MemoryHistory`):
storing and delivering happen in one step, and so do reading the history and joining the
topic's group, so nothing can land between them. With a backplane that stores history
(``RedisBackplane``), a publication is numbered and stored by Redis and published in the same
atomic step (a Lua script), and every node, the publishing one included, delivers it when it
comes back from Redis: the order of offsets is the order of delivery on every node. There the
hard part is a publication landing while a recovering session's history is being read; so the
node first makes sure it receives the topic (the SUBSCRIBE is confirmed), collects the live
publications of the topic for that session, reads the history, waits until it has read every
message Redis had queued for it by then (publications older than the page may still be on
their way on the other connection), and then, in one step, hands
the session the history after its position, the collected publications after the history's
end, and adds it to the group: every offset once, in order. ``NatsBackplane`` keeps the same
steps on JetStream: its stream's sequence numbers the publications, and every node delivers
them from a consumer in that order (see ``melody.backplane.nats_streams``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

import orjson

from melody.delivery.engines import backplane_keeping
from melody.delivery.history import (
    HistoryPage,
    MemoryHistory,
    StoredPublication,
    StreamPosition,
    recovery,
)
from melody.delivery.options import TopicOptions, TopicTable
from melody.errors import BackplaneError, SessionClosed

if TYPE_CHECKING:
    from melody._hubstate import HubState
    from melody.session import Session

__all__ = ["HistoryStore", "Recovery", "Streams", "publication_text"]

#: Attempts at a recovery whose backplane reconnected meanwhile (a live publication may have
#: been lost while it was down, so the collected ones cannot be trusted).
_RECOVERY_ATTEMPTS = 3


class Recovery(NamedTuple):
    """What :meth:`Streams.subscribe_from` did."""

    #: True when every publication after the given position was handed over (or none was
    #: missed); False when the client must refetch its state (another epoch, or history no
    #: longer holds what it missed), or when no position was given.
    recovered: bool
    #: The stream's position when its history was read. ``publications`` may go past it:
    #: those published while the session was joining.
    position: StreamPosition
    #: What the session gets before the live stream, oldest first: the missed publications
    #: (when recovered) and those published while it was joining (any case).
    publications: list[StoredPublication]
    #: True when the subscription is new (False: the session was subscribed already).
    subscribed: bool


class HistoryStore(Protocol):
    """What a backplane that stores history offers (``RedisBackplane`` and
    ``NatsBackplane`` do)."""

    stores_history: bool

    def publish_stream(self, topic: str, data: str, options: TopicOptions) -> None: ...

    async def read_stream(self, topic: str, since: int | None, limit: int | None,
                          options: TopicOptions) -> HistoryPage: ...

    async def wait_subscribed(self, topic: str) -> None: ...

    async def wait_caught_up(self) -> None: ...

    def subscribe(self, topic: str) -> None: ...

    def unsubscribe(self, topic: str) -> None: ...

    def stats(self) -> dict[str, int]: ...


def publication_text(topic: str, offset: int, data: str) -> str:
    """The message a subscriber gets for one publication (``data`` is JSON text)."""
    return ('{"type":"publish","topic":' + orjson.dumps(topic).decode("utf-8")
            + ',"offset":' + str(offset) + ',"data":' + data + '}')


class _Joining:
    """A session joining a topic from a position: the publications that arrive meanwhile."""

    __slots__ = ("arrived",)

    def __init__(self) -> None:
        self.arrived: list[StoredPublication] = []


class Streams:
    """The topics with history of one hub (see the module docstring)."""

    def __init__(self, state: HubState) -> None:
        self._state = state
        #: ``hub.configure_topic``'s patterns.
        self.table = TopicTable()
        #: The streams when no backplane stores them.
        self.memory = MemoryHistory()
        self._joining: dict[str, list[_Joining]] = {}

    def options(self, topic: str) -> TopicOptions | None:
        """The options of ``topic`` if it keeps history, else None (one truth test when
        nothing is configured)."""
        if not self.table:
            return None
        options = self.table.lookup(topic)
        return options if options is not None and options.history else None

    def _store(self) -> HistoryStore | None:
        # The backplane when it stores history; None for the memory engine.
        store: HistoryStore | None = backplane_keeping(self._state, "stores_history",
                                                       "history")
        return store

    # -- publishing -----------------------------------------------------------------------------

    def publish(self, topic: str, data: str, options: TopicOptions) -> int:
        """Number, store and deliver one publication (``data``: JSON text). Returns how many
        sessions here took it; with a storing backplane, how many are subscribed here (they
        get it once Redis has stored it)."""
        store = self._store()
        if store is None:
            position = self.memory.append(topic, data, options.history_size,
                                          options.history_ttl)
            return self.deliver(topic, position.offset, data)
        store.publish_stream(topic, data, options)
        group = self._state.topics.get(topic)
        return len(group) if group is not None else 0

    def deliver(self, topic: str, offset: int, data: str) -> int:
        """Deliver publication ``offset`` of ``topic`` to its subscribers here (the memory
        engine at publish, the backplane when Redis sends it)."""
        state = self._state
        joining = self._joining.get(topic)
        if joining:
            publication = StoredPublication(offset, data)
            for join in joining:
                join.arrived.append(publication)
        group = state.topics.get(topic)
        if group is None or state.closed:
            return 0
        return state.deliver(publication_text(topic, offset, data), False, group)

    # -- reading ----------------------------------------------------------------------------------

    async def history(self, topic: str, since: int | None = None,
                      limit: int | None = None) -> HistoryPage:
        """The kept publications of ``topic`` after offset ``since`` (None: all kept), oldest
        first, at most ``limit``; and the stream's position."""
        if self.options(topic) is None:
            raise ValueError(f"topic {topic!r} keeps no history (see hub.configure_topic)")
        if limit is not None and (type(limit) is not int or limit < 0):
            raise ValueError("limit must be an int >= 0 or None")
        if since is not None and (type(since) is not int or since < 0):
            raise ValueError("since must be an offset (an int >= 0) or None")
        store = self._store()
        if store is None:
            return self.memory.read(topic, since or 0, limit)
        options = self.options(topic)
        assert options is not None
        return await store.read_stream(topic, since or 0, limit, options)

    # -- joining from a position ----------------------------------------------------------------

    async def subscribe_from(self, session: Session, topic: str,
                             since: StreamPosition | None) -> Recovery:
        """Subscribe ``session`` to ``topic`` and hand over what it missed since ``since``.

        Returns the :class:`Recovery`; the caller sends ``publications`` to the session in the
        same step it gets them (before anything else can be delivered): the router puts them
        in the subscribe reply.
        """
        options = self.options(topic)
        if options is None:
            raise ValueError(f"topic {topic!r} keeps no history (see hub.configure_topic)")
        state = self._state
        store = self._store()
        if store is None:
            if since is None:
                page = HistoryPage([], self.memory.position(topic))
            else:
                page = self.memory.read(topic, since.offset, options.history_size)
            return self._join(session, topic, page, since, [])
        for _ in range(_RECOVERY_ATTEMPTS):
            outages = store.stats().get("outages", 0)
            join = _Joining()
            self._joining.setdefault(topic, []).append(join)
            try:
                store.subscribe(topic)
                await store.wait_subscribed(topic)
                page = await store.read_stream(
                    topic, since.offset if since is not None else None,
                    options.history_size if since is not None else 0, options)
                # What Redis published before the read may still be on its way to this node
                # (the page came on another connection): once it has all been read, those
                # are in ``arrived`` (and skipped: the page has them), never live after the
                # join.
                await store.wait_caught_up()
                if store.stats().get("outages", 0) == outages:
                    # Still in the step that read the page: nothing can arrive before the join.
                    return self._join(session, topic, page, since, join.arrived)
            finally:
                joining = self._joining[topic]
                joining.remove(join)
                if not joining:
                    del self._joining[topic]
                if topic not in state.topics:
                    store.unsubscribe(topic)  # the join failed: nobody here wants it
        raise BackplaneError(f"could not subscribe to {topic!r} from a position: the "
                             "backplane reconnected during every attempt")

    def _join(self, session: Session, topic: str, page: HistoryPage,
              since: StreamPosition | None, arrived: list[StoredPublication]) -> Recovery:
        missed: list[StoredPublication]
        if since is None:
            recovered, missed = False, []
        else:
            recovered, missed = recovery(page, since)
        top = page.position.offset
        missed.extend(p for p in arrived if p.offset > top)
        if session.is_closed:
            # It left while the history was read: no group may keep its connection.
            raise SessionClosed("session closed while subscribing")
        subscribed = self._state.subscribe(session, topic)
        return Recovery(recovered, page.position, missed, subscribed)
