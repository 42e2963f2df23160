"""Presence and node counts on JetStream, for ``NatsBackplane``: a stream used as a KV.

One stream per prefix, ``P_presence`` (memory storage), holds the subjects
``P.presence.<topic token>.<session id hex>`` (one session's entry: its info JSON) and
``P.count.<node id hex>.<topic token>`` (one node's subscriber count of a topic). It keeps
one message per subject (``max_msgs_per_subject = 1``: a write replaces the last) and drops
every message ``presence_ttl`` seconds after it was written (``max_age``). An empty
message is a deletion (it replaces the entry, and goes at its own age).

A node writes an entry when its session joins and an empty message when it leaves; and
every ``presence_interval`` it writes all its entries again, and the counts that changed
(all of them once per third of ``presence_ttl``), so that what it holds never ages out while
it lives, and what a server restart lost comes back within one interval. A node that dies
without a word stops being written: its entries and counts are gone from every read at most
``presence_ttl`` seconds after its last write (JetStream's own expiry: no clock of melody's
is compared, unlike the Redis engine). A read fetches the last message of each subject under
the topic with one ephemeral pull consumer (see ``nats_streams.fetch``).

Writes never wait: they queue (at most ``max_queue``, then dropped and counted) and one task
publishes them in batches (plain publishes, no acknowledgement), then one PING round trip.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from melody.backplane.nats_streams import fetch
from melody.backplane.nats_subjects import NatsNames
from melody.errors import BackplaneError

try:
    from nats.js.api import DeliverPolicy, StorageType, StreamConfig
    from nats.js.errors import BadRequestError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "melody.NatsBackplane needs the nats-py package: pip install 'melody[nats]'") from exc

__all__ = ["NatsPresence"]

_STREAM_NAME_IN_USE = 10058


class NatsPresence:
    """The presence half of a ``NatsBackplane`` (see the module docstring)."""

    def __init__(self, names: NatsNames, *, ttl: float, max_queue: int, max_batch: int,
                 timeout: float) -> None:
        self._names = names
        self._ttl = ttl
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._timeout = timeout
        self._nc: Any = None
        self._js: Any = None
        self.queue: deque[tuple[str, bytes]] = deque()
        self.wake: asyncio.Event | None = None
        self.counters = {"presence_writes": 0, "presence_dropped": 0}

    async def bind(self, nc: Any) -> None:
        """Use connection ``nc`` (just made); make the stream if missing (one or two round
        trips). A stream of the same name with other limits (another ``presence_ttl``) is
        used as it is."""
        self._nc = nc
        self._js = js = nc.jetstream(timeout=self._timeout)
        config = StreamConfig(
            name=self._names.presence_stream, subjects=self._names.presence_subjects(),
            max_msgs_per_subject=1, max_age=self._ttl, storage=StorageType.MEMORY)
        try:
            await js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise

    def queue_message(self, subject: str, payload: bytes) -> bool:
        """Queue one write (False: the queue is full, it was dropped and counted)."""
        if len(self.queue) >= self._max_queue:
            self.counters["presence_dropped"] += 1
            return False
        self.queue.append((subject, payload))
        wake = self.wake
        if wake is not None and not wake.is_set():
            wake.set()
        return True

    def add(self, topic: str, session_id: str, info: str) -> bool:
        """Queue the entry of a session that joined."""
        return self.queue_message(self._names.presence(topic, session_id), info.encode())

    def remove(self, topic: str, session_id: str) -> bool:
        """Queue the deletion of a session's entry."""
        return self.queue_message(self._names.presence(topic, session_id), b"")

    def clear(self) -> None:
        """Forget what was queued (the connection went: the next refresh writes it all)."""
        self.queue.clear()

    async def write(self) -> None:
        """The writer task: publish the queued writes, ``max_batch`` per round trip."""
        nc = self._nc
        queue = self.queue
        wake = self.wake = asyncio.Event()
        while True:
            if not queue:
                wake.clear()
                await wake.wait()
                continue
            batch = [queue.popleft() for _ in range(min(len(queue), self._max_batch))]
            for subject, payload in batch:
                await nc.publish(subject, payload)
            await nc.flush(timeout=self._timeout)
            self.counters["presence_writes"] += len(batch)

    async def publish_now(self, messages: list[tuple[str, bytes]]) -> None:
        """Publish ``messages`` and wait one round trip (the refresh, and the goodbye)."""
        nc = self._nc
        for subject, payload in messages:
            await nc.publish(subject, payload)
        await nc.flush(timeout=self._timeout)
        self.counters["presence_writes"] += len(messages)

    async def _last_of(self, subject: str) -> list[Any]:
        if self._js is None:
            raise BackplaneError("nats is unreachable")
        return await fetch(self._nc, self._js, self._names.presence_stream, self._timeout,
                           deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                           filter_subject=subject)

    async def read(self, topic: str) -> dict[str, str]:
        """The live entries of ``topic``: session id -> info JSON."""
        entries = {}
        for msg in await self._last_of(self._names.presence(topic)):
            if msg.data:
                sid = bytes.fromhex(msg.subject.rsplit(".", 1)[1]).decode()
                entries[sid] = msg.data.decode("utf-8")
        return entries

    async def counts(self, topic: str, exclude: str) -> int:
        """The sum of the live counts of ``topic`` the nodes other than ``exclude`` (a node
        id in hex) wrote."""
        total = 0
        for msg in await self._last_of(self._names.count(None, topic)):
            node = msg.subject.split(".")[-2]
            if node != exclude and msg.data:
                total += int(msg.data)
        return total
