"""Topic history: numbered publications, an epoch, and the recovery decision.

Every publication to a topic with history gets an **offset**, strictly increasing per topic
(1, 2, 3, ...), and is kept, at most ``history_size`` of them and (with ``history_ttl``) for
at most that long. A topic's stream has an **epoch**, a short random string chosen when the
stream starts: it changes whenever the stream may have lost entries it had promised (a
memory-engine process restart, a Redis flush or failover), so that a client holding
``(offset, epoch)`` can tell "nothing missed" from "start over".

:class:`MemoryHistory` keeps streams in this process (one node). The Redis engine
(``melody.backplane.redis``) keeps them in Redis for several nodes, with the same
:class:`HistoryPage` answers. :func:`recovery` is the one rule both use to decide what a
resubscribing client gets.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["HistoryPage", "MemoryHistory", "StoredPublication", "StreamPosition", "new_epoch",
           "recovery"]

#: Streams that are checked for expiry per append (amortized sweeping, see MemoryHistory).
_SWEEP_EVERY = 4096


class StreamPosition(NamedTuple):
    """Where a topic's stream stands: the offset of its last publication and its epoch."""

    offset: int
    epoch: str


class StoredPublication(NamedTuple):
    """One stored publication: its offset and its data as JSON text."""

    offset: int
    data: str


class HistoryPage(NamedTuple):
    """What a history read returns: publications after ``since`` (oldest first, at most
    ``limit``) and the stream's position at the moment of the read."""

    publications: list[StoredPublication]
    position: StreamPosition


def new_epoch() -> str:
    """A fresh epoch: 8 random URL-safe characters."""
    return secrets.token_urlsafe(6)


def recovery(page: HistoryPage, since: StreamPosition) -> tuple[bool, list[StoredPublication]]:
    """Whether a client last at ``since`` can be brought up to ``page.position`` from
    ``page`` (read with ``since.offset``), and the publications that do it.

    True with every publication after ``since.offset`` when the epoch is the same and the
    page holds them all, gap-free; True with none when the client is up to date; False
    otherwise (another epoch, entries pushed out or expired, a client ahead of the stream):
    the client must refetch its state.
    """
    top = page.position
    if since.epoch != top.epoch or since.offset > top.offset or since.offset < 0:
        return False, []
    if since.offset == top.offset:
        return True, []
    missed = [p for p in page.publications if p.offset > since.offset]
    if (not missed or missed[0].offset != since.offset + 1
            or missed[-1].offset != top.offset or len(missed) != top.offset - since.offset):
        return False, []
    return True, missed


class _Stream:
    __slots__ = ("entries", "epoch", "offset", "touched")

    def __init__(self, now: float) -> None:
        self.epoch = new_epoch()
        self.offset = 0
        # (offset, data, expires at): oldest first.
        self.entries: deque[tuple[int, str, float]] = deque()
        self.touched = now


class MemoryHistory:
    """Topic streams held in this process (the engine of a hub without a storing backplane).

    A stream starts (with a new epoch) at its topic's first publish or position read; it is
    forgotten once its entries have all expired and nothing touched it for ``idle_ttl``
    seconds (checked a few streams per append), so that topics published once do not pile
    up. A stream without ``history_ttl`` keeps its last ``history_size`` publications for as
    long as the process runs.
    """

    __slots__ = ("_appends", "_clock", "_streams", "idle_ttl")

    def __init__(self, idle_ttl: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._streams: dict[str, _Stream] = {}
        self._clock = clock
        self._appends = 0
        #: Seconds an emptied stream is kept (its epoch and offset) after its last use.
        self.idle_ttl = idle_ttl

    def __len__(self) -> int:
        return len(self._streams)

    def _stream(self, topic: str, now: float) -> _Stream:
        stream = self._streams.get(topic)
        if stream is None:
            stream = self._streams[topic] = _Stream(now)
        stream.touched = now
        return stream

    def append(self, topic: str, data: str, size: int, ttl: float | None) -> StreamPosition:
        """Keep ``data`` as the next publication of ``topic``; its position."""
        now = self._clock()
        stream = self._stream(topic, now)
        stream.offset += 1
        entries = stream.entries
        entries.append((stream.offset, data, now + ttl if ttl is not None else float("inf")))
        while len(entries) > size:
            entries.popleft()
        _expire(entries, now)
        self._appends += 1
        if self._appends % _SWEEP_EVERY == 0:
            self._sweep(now)
        return StreamPosition(stream.offset, stream.epoch)

    def position(self, topic: str) -> StreamPosition:
        """Where ``topic``'s stream stands (starting it if it has none yet)."""
        stream = self._stream(topic, self._clock())
        return StreamPosition(stream.offset, stream.epoch)

    def read(self, topic: str, since: int = 0, limit: int | None = None) -> HistoryPage:
        """The kept publications with an offset above ``since`` (oldest first, at most
        ``limit``), and the stream's position."""
        now = self._clock()
        stream = self._stream(topic, now)
        entries = stream.entries
        _expire(entries, now)
        found: list[StoredPublication] = []
        if entries and entries[-1][0] > since:
            # Offsets are consecutive in a deque with no holes but at its head: index, not scan.
            start = max(0, since + 1 - entries[0][0])
            for i in range(start, len(entries)):
                offset, data, _ = entries[i]
                found.append(StoredPublication(offset, data))
                if limit is not None and len(found) >= limit:
                    break
        return HistoryPage(found, StreamPosition(stream.offset, stream.epoch))

    def _sweep(self, now: float) -> None:
        # A bounded look at the streams at the head of the dict; those kept move to its end,
        # so successive sweeps go round all of them.
        streams = self._streams
        for topic, stream in list(itertools.islice(streams.items(), _SWEEP_EVERY)):
            _expire(stream.entries, now)
            del streams[topic]
            if stream.entries or now - stream.touched <= self.idle_ttl:
                streams[topic] = stream


def _expire(entries: deque[tuple[int, str, float]], now: float) -> None:
    while entries and entries[0][2] <= now:
        entries.popleft()
