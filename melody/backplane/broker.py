"""What the backplanes over an external broker (Redis, NATS) share, beside
:mod:`melody.backplane.reporting`: admission to the bounded outgoing queue, the topics this node
wants (subscribe and unsubscribe coalesced, a topic let go only after a linger), and how a
failed connect is told.

Each broker names a topic its own way (a Redis channel, a NATS subject: the *key* here) and
knows which keys it has told the broker to deliver (:meth:`BrokerLink._is_subscribed`); the
rest is the same rules, kept once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from typing import Any, Protocol

from melody.backplane.reporting import ReportsTrouble
from melody.errors import BackplaneError

__all__ = ["BrokerLink"]


class _ForgetsEntries(Protocol):
    def clear(self) -> None: ...


class _DropsFollowed(Protocol):
    def clear(self) -> int:
        """Drop what is on its way; return how many publications that loses."""
        ...

logger = logging.getLogger("melody.backplane")


class BrokerLink(ReportsTrouble):
    """Mixed into a broker backplane, which sets these attributes and defines the hooks."""

    #: The broker's name in logs and errors ("redis", "nats").
    _broker_name = "broker"
    _up: bool
    _first: asyncio.Future[None] | None
    _down_since: float | None
    _queue: Any  # a deque of what the writer task sends
    _queued_bytes: int
    _in_flight: int
    _max_queue: int
    max_queue_bytes: int
    max_message_bytes: int
    #: key -> topic, for the topics this node has subscribers for (None: the hub-wide
    #: channel, always wanted).
    _wanted: dict[Any, str | None]
    #: key -> when it is let go (unsubscribed at the broker), oldest first.
    _lingering: dict[Any, float]
    _dirty: set[Any]
    _linger: float
    _max_lingering: int
    _control_wake: asyncio.Event | None
    _ever_up: bool
    _confirmed: set[Any]
    _presence: _ForgetsEntries  # the broker's presence engine
    _streams: _DropsFollowed  # the broker's history engine
    node_id: bytes
    _timeout: float
    _task: asyncio.Task[None] | None

    # -- hooks ---------------------------------------------------------------------------------

    def _interest_key(self, topic: str) -> Hashable:
        """The broker's name for ``topic``."""
        raise NotImplementedError

    def _is_subscribed(self, key: Any) -> bool:
        """True when the broker was told to deliver ``key`` to this node."""
        raise NotImplementedError

    def _message_limit(self) -> tuple[int, str]:
        """The largest envelope this broker takes, in bytes, and the setting that says so."""
        return self.max_message_bytes, "max_message_bytes"

    def _where(self) -> str:
        raise NotImplementedError

    def _forget_connection(self, error: BaseException) -> None:
        """What the broker's own code drops with a lost connection (its waiters, its
        subscription objects): called by :meth:`_went_down`."""

    # -- the outgoing queue ------------------------------------------------------------------

    def _admit(self, size: int) -> bool:
        # Whether an envelope of ``size`` bytes may be queued; if not, it is counted as lost
        # (the broker is down) or dropped, with its reason.
        if not self._up:
            self._counters["lost_while_down"] += 1
            return False
        limit, setting = self._message_limit()
        if size > limit:
            self._drop("dropped_outgoing_too_large",
                       f"message of {size} bytes over {setting}={limit}")
            return False
        if len(self._queue) + self._in_flight >= self._max_queue:
            self._drop("dropped_outgoing_queue_full",
                       f"outgoing queue full ({self._max_queue} messages)")
            return False
        if self._queued_bytes + size > self.max_queue_bytes:
            self._drop("dropped_outgoing_queue_bytes",
                       f"outgoing queue full ({self._queued_bytes} of max_queue_bytes="
                       f"{self.max_queue_bytes} bytes held)")
            return False
        return True

    # -- the topics this node wants --------------------------------------------------------------

    def subscribe(self, topic: str) -> None:
        """Start receiving ``topic`` (this node has a subscriber for it now).

        O(1); the broker is told, if at all, with the next batch of changes.
        """
        key = self._interest_key(topic)
        self._wanted[key] = topic
        if self._lingering.pop(key, None) is not None:
            self._counters["linger_resumed"] += 1  # still subscribed: nothing to send
        self._mark(key)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic`` (this node's last subscriber left).

        O(1). The broker keeps delivering it for ``unsubscribe_linger`` seconds (a topic that
        is left and joined again costs no command), unless it was never subscribed there.
        """
        key = self._interest_key(topic)
        if self._wanted.pop(key, None) is None:
            return
        loop = self._loop
        if (self._up and loop is not None and self._linger > 0 and self._max_lingering > 0
                and self._is_subscribed(key)):
            lingering = self._lingering
            lingering[key] = loop.time() + self._linger
            wake = self._control_wake
            if wake is not None:
                wake.set()  # the control task lets it go at its deadline
            if len(lingering) > self._max_lingering:
                oldest = next(iter(lingering))
                del lingering[oldest]
                self._counters["linger_evicted"] += 1
                self._mark(oldest)
        self._mark(key)

    def _mark(self, key: Any) -> None:
        # Note that ``key``'s wanted state changed; what is sent is the net change.
        if not self._up:
            return  # _went_up subscribes everything wanted
        wanted = key in self._wanted or key in self._lingering
        dirty = self._dirty
        if wanted == self._is_subscribed(key):
            if key in dirty:
                dirty.discard(key)
                self._counters["subscribe_coalesced"] += 1
            return
        dirty.add(key)
        wake = self._control_wake
        if wake is not None and not wake.is_set():
            wake.set()

    # -- connecting ----------------------------------------------------------------------------

    def _connect_failed(self, error: BaseException, attempt: int) -> None:
        loop = self._loop
        assert loop is not None
        self._counters["connect_failures"] += 1
        name = self._broker_name
        logger.debug("%s backplane: connecting to %s failed (attempt %d): %s",
                     name, self._where(), attempt + 1, error)
        first = self._first
        if first is not None and not first.done():
            # start() raises this one to the hub, which reports it: not twice.
            first.set_exception(error)
            self._down_since = self._last_report = loop.time()
            return
        self._complain(BackplaneError(
            f"cannot reach {name} at {self._where()} (attempt {attempt + 1}): {error}"), error)

    def _announce_up(self) -> None:
        # The end of a (re)connect: publishing admitted again, the first start() released.
        loop = self._loop
        assert loop is not None
        self._up = True
        wake = self._control_wake
        if wake is not None:
            wake.set()
        name = self._broker_name
        if self._down_since is not None:
            self._counters["reconnects"] += 1
            logger.warning("%s backplane reconnected to %s after %.1fs (%d messages lost "
                           "while down so far)", name, self._where(),
                           loop.time() - self._down_since, self._counters["lost_while_down"])
            self._down_since = None
        elif not self._ever_up:
            logger.info("%s backplane connected to %s as node %s", name, self._where(),
                        self.node_id.hex())
        self._ever_up = True
        first = self._first
        if first is not None and not first.done():
            first.set_result(None)

    async def _end_task(self, deadline: float) -> None:
        # Stop the connection task by ``deadline`` (loop time), whatever the client library
        # does. A client library may swallow a cancellation (nats-py's flush path catches
        # CancelledError and carries on), which left ``await task`` waiting forever and a hub
        # that never finished its SIGTERM. So: cancel, give its cleanup (closing the
        # connection) half the time left; then cancel again every 0.1 s; past the deadline
        # say so and leave it (the loop is about to end anyway).
        task = self._task
        if task is None or task.done():
            return
        loop = asyncio.get_running_loop()
        deadline = max(deadline, loop.time() + 0.5)
        task.cancel()
        await asyncio.wait({task}, timeout=(deadline - loop.time()) / 2)
        while not task.done():
            if loop.time() >= deadline:
                logger.warning("%s backplane: the connection task did not end within %.1fs of "
                               "stop(); leaving it", self._broker_name, self._timeout)
                return
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("%s backplane: the connection task ended with %r", self._broker_name,
                         task.exception())

    def _went_down(self, error: BaseException) -> None:
        # The connection is lost: what was queued is lost (counted), presence entries and
        # followed streams go with it, and the hub hears of it (throttled).
        loop = self._loop
        assert loop is not None
        self._up = False
        self._down_since = loop.time()
        self._counters["outages"] += 1
        self._presence.clear()
        lost = len(self._queue) + self._in_flight + self._streams.clear()
        self._counters["lost_while_down"] += lost
        self._forget_connection(error)
        self._queue.clear()
        self._queued_bytes = 0
        self._in_flight = 0
        self._confirmed = set()
        self._dirty = set()
        self._lingering.clear()
        if self._stopping:
            return
        name = self._broker_name
        logger.warning("%s backplane lost %s: %s; serving local sessions only until it is "
                       "back (%d queued messages lost)", name, self._where(), error, lost)
        self._complain(BackplaneError(f"{name} at {self._where()} unreachable: {error}"), error)
