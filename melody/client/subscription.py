"""A topic the client receives: ``sub = await conn.subscribe("chat:1")``, ``async for pub in sub``.

Speaks the JSON router's built-in ``subscribe``/``unsubscribe`` (``docs/protocol.md``). For a
topic with history each publication carries an offset, and the subscription remembers the
last one it delivered together with the stream's epoch: a resubscribe (a
``ReconnectingClient`` makes one by itself after every reconnect) sends that position, and
the hub hands over what was missed, then the live stream. ``recovered`` says after each
(re)subscribe whether that worked; when it is False the application must refetch its state
(``on_resubscribe`` is the place). Offsets also make delivery exactly-once within the history
window: a publication at or below the last offset is dropped as a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["Publication", "Subscription"]

logger = logging.getLogger("melody.client")


class Publication(NamedTuple):
    """One message of a topic: its decoded ``data`` and, for a topic with history, its
    ``offset`` (None otherwise)."""

    topic: str
    data: Any
    offset: int | None


class Subscription:
    """The publications of one topic, in order; iterate with ``async for``.

    Attributes after each (re)subscribe: ``recovered`` (True: everything missed since the
    last position was delivered; False: the application must refetch its state; None: the
    topic keeps no history, or nothing was asked), ``epoch`` and ``offset`` (the position:
    the last publication delivered into this subscription, or the stream's position at the
    subscribe), ``resubscribes`` (how many times it was resubscribed), ``duplicates``
    (publications dropped because their offset was not above ``offset``), ``dropped``
    (publications that found the queue full: ``max_queue``; each is also logged).
    """

    __slots__ = ("_closed", "_held", "_queue", "_waiter", "dropped", "duplicates", "epoch",
                 "gaps", "max_queue", "offset", "on_resubscribe", "recover", "recovered",
                 "repair", "resubscribes", "topic")

    def __init__(self, topic: str, *, recover: bool = True, offset: int | None = None,
                 epoch: str | None = None, max_queue: int = 10_000) -> None:
        if not isinstance(topic, str) or not topic:
            raise ValueError("a topic is a non-empty string")
        if (offset is None) != (epoch is None):
            raise ValueError("a position is an offset and an epoch, both or neither")
        if type(max_queue) is not int or max_queue < 1:
            raise ValueError("max_queue must be an int >= 1")
        self.topic = topic
        #: Whether resubscribes ask for what was missed (topics with history).
        self.recover = recover
        self.offset = offset
        self.epoch = epoch
        self.recovered: bool | None = None
        self.resubscribes = 0
        self.duplicates = 0
        self.dropped = 0
        self.max_queue = max_queue
        #: Called with the subscription after every successful (re)subscribe, once its
        #: ``recovered`` is known (sync or async; errors are logged).
        self.on_resubscribe: Callable[[Subscription], Any] | None = None
        #: Offset jumps seen (a live publication after a missing one), each repaired by a
        #: resubscribe from the position (what it brought comes first, then what was held).
        self.gaps = 0
        #: Set by the connection the subscription is attached to: resubscribe it from its
        #: position (called on a gap).
        self.repair: Callable[[], None] | None = None
        # While a gap is being repaired: the live publications that arrived meanwhile.
        self._held: list[Publication] | None = None
        self._queue: deque[Publication] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed: BaseException | None = None

    def __repr__(self) -> str:
        return (f"<Subscription {self.topic!r} offset={self.offset} epoch={self.epoch!r} "
                f"recovered={self.recovered}>")

    # -- what the connection calls -----------------------------------------------------------

    def position(self) -> dict[str, Any]:
        """The ``data`` of the subscribe request: the topic, and the position to recover
        from when there is one and ``recover`` is on."""
        data: dict[str, Any] = {"topic": self.topic}
        if self.recover and self.offset is not None and self.epoch is not None:
            data["offset"] = self.offset
            data["epoch"] = self.epoch
        return data

    def subscribed(self, reply: Any) -> None:
        """Apply the hub's reply to a subscribe: the position, whether it recovered, and the
        publications it carries (before any live one: they are handed over first)."""
        held, self._held = self._held, None
        if not isinstance(reply, dict):
            self.recovered = None  # a topic without history answers true/false
            return
        self._apply(reply)
        for publication in held or ():
            self.feed(publication)  # what arrived during a gap's repair, duplicates dropped

    def _apply(self, reply: dict[str, Any]) -> None:
        asked = "offset" in self.position()
        epoch = reply.get("epoch")
        if not asked or not reply.get("recovered"):
            # Start over from the stream's position (what was missed is gone).
            self.offset = None
        self.recovered = bool(reply.get("recovered")) if asked else None
        for item in reply.get("publications") or ():
            self.feed(Publication(self.topic, item.get("data"), item.get("offset")))
        self.epoch = epoch if isinstance(epoch, str) else None
        top = reply.get("offset")
        if type(top) is int and (self.offset is None or self.offset < top):
            self.offset = top

    def feed(self, publication: Publication) -> None:
        """One publication for this topic, from the hub."""
        offset = publication.offset
        if offset is not None:
            if self._held is not None:
                self._held.append(publication)  # a gap is being repaired: after its reply
                return
            if self.offset is not None and offset <= self.offset:
                self.duplicates += 1
                return
            if (self.offset is not None and offset > self.offset + 1 and self.recover
                    and self.repair is not None):
                # Publications are missing (the cluster's broker dropped live messages during
                # an outage): resubscribe from the position; this one waits for the reply.
                self.gaps += 1
                logger.warning("subscription %r: offsets %d to %d missing, recovering",
                               self.topic, self.offset + 1, offset - 1)
                self._held = [publication]
                self.repair()
                return
            self.offset = offset
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            logger.warning("subscription %r: queue full (%d), publication %s dropped",
                           self.topic, self.max_queue, offset)
            return
        self._queue.append(publication)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self, error: BaseException) -> None:
        """No more publications: the iteration ends with ``error`` once the queue is empty
        (``StopAsyncIteration`` after an unsubscribe)."""
        self._closed = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- what the application calls ------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Publication:
        while not self._queue:
            if self._closed is not None:
                if isinstance(self._closed, StopAsyncIteration):
                    raise StopAsyncIteration
                raise self._closed
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    async def get(self, timeout: float | None = None) -> Publication:
        """The next publication (TimeoutError after ``timeout`` seconds; None: wait)."""
        async with asyncio.timeout(timeout):
            return await self.__anext__()

    def pending(self) -> int:
        """Publications received and not yet taken."""
        return len(self._queue)

