"""Presence in Redis, for ``RedisBackplane``: who is subscribed to a topic, on every node.

Keys (``P`` is the backplane's ``channel_prefix``, ``T`` the topic):

``P:presence:T``
    A hash: session id -> the entry's JSON (``{"session", "user", "connected_at", "node"}``).
``P:presence:T:exp``
    A sorted set: session id -> when the entry expires (Unix milliseconds, the writing node's
    clock: keep the nodes' clocks in sync, as NTP does, to within a fraction of
    ``presence_ttl``).

A node writes an entry when its session subscribes and deletes it when it leaves; and every
``presence_interval`` it rewrites all of its own entries with a new expiry (so that entries a
Redis restart lost come back within one interval). A read first drops the expired entries,
then returns the rest, in one script: the sessions of a node that died without a word leave
every read ``presence_ttl`` seconds after its last refresh. Both keys also expire
``presence_ttl`` after the last write, so a topic nobody is in leaves nothing behind.

Writes never wait: they queue (at most ``max_queue`` commands, then dropped and reported)
and one task sends them in batches on the command connection.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from melody.backplane.redis_keys import RedisKeys

__all__ = ["RedisPresence"]

#: KEYS: hash, expiry set. ARGV: now (ms). Returns HGETALL of what is left.
READ_SCRIPT = b"""
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for i = 1, #gone, 1000 do
  redis.call('HDEL', KEYS[1], unpack(gone, i, math.min(i + 999, #gone)))
end
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
end
return redis.call('HGETALL', KEYS[1])
"""

RoundTrip = Callable[[list[tuple[Any, ...]]], Awaitable[list[Any]]]


class RedisPresence:
    """The presence half of a ``RedisBackplane`` (see the module docstring)."""

    __slots__ = ("_max_batch", "_max_queue", "_prefix", "counters", "queue", "ttl_ms", "wake")

    def __init__(self, keys: RedisKeys, *, ttl: float, max_queue: int, max_batch: int) -> None:
        self._prefix = keys.presence_prefix
        #: Milliseconds an entry lives without a refresh.
        self.ttl_ms = int(ttl * 1000)
        self._max_queue = max_queue
        self._max_batch = max_batch
        self.queue: deque[tuple[Any, ...]] = deque()
        self.wake: asyncio.Event | None = None
        self.counters = {"presence_writes": 0, "presence_errors": 0, "presence_dropped": 0}

    def keys(self, topic: str) -> tuple[bytes, bytes]:
        """The hash and the expiry set of ``topic``."""
        key = self._prefix + topic.encode("utf-8", "surrogatepass")
        return key, key + b":exp"

    def _expiry(self) -> int:
        return int(time.time() * 1000) + self.ttl_ms

    def _queue(self, *commands: tuple[Any, ...]) -> bool:
        if len(self.queue) + len(commands) > self._max_queue:
            self.counters["presence_dropped"] += len(commands)
            return False
        self.queue.extend(commands)
        wake = self.wake
        if wake is not None and not wake.is_set():
            wake.set()
        return True

    def add(self, topic: str, session_id: str, info: str) -> bool:
        """Queue the entry of a session that joined (False: the queue is full)."""
        key, exp = self.keys(topic)
        sid = session_id.encode()
        return self._queue((b"HSET", key, sid, info.encode("utf-8")),
                           (b"ZADD", exp, self._expiry(), sid),
                           (b"PEXPIRE", key, self.ttl_ms), (b"PEXPIRE", exp, self.ttl_ms))

    def remove(self, topic: str, session_id: str) -> bool:
        """Queue the removal of a session's entry (False: the queue is full)."""
        key, exp = self.keys(topic)
        sid = session_id.encode()
        return self._queue((b"HDEL", key, sid), (b"ZREM", exp, sid))

    def refresh_commands(self, local: dict[str, dict[str, str]]) -> list[tuple[Any, ...]]:
        """The commands that rewrite this node's entries with a new expiry (two per topic
        plus the key expiries)."""
        expiry = self._expiry()
        commands: list[tuple[Any, ...]] = []
        for topic, entries in local.items():
            if not entries:
                continue
            key, exp = self.keys(topic)
            fields: list[Any] = []
            scores: list[Any] = []
            for sid, info in entries.items():
                encoded = sid.encode()
                fields += (encoded, info.encode("utf-8"))
                scores += (expiry, encoded)
            commands += [(b"HSET", key, *fields), (b"ZADD", exp, *scores),
                         (b"PEXPIRE", key, self.ttl_ms), (b"PEXPIRE", exp, self.ttl_ms)]
        return commands

    def clear(self) -> None:
        """Forget what was queued (Redis went away: the next refresh rewrites it all)."""
        self.queue.clear()

    async def write(self, round_trip: RoundTrip,
                    report: Callable[[BaseException], None]) -> None:
        """The writer task: send the queued commands, ``max_batch`` per round trip."""
        queue = self.queue
        wake = self.wake = asyncio.Event()
        while True:
            if not queue:
                wake.clear()
                await wake.wait()
                continue
            batch = [queue.popleft() for _ in range(min(len(queue), self._max_batch))]
            for reply in await round_trip(batch):
                if isinstance(reply, BaseException):
                    self.counters["presence_errors"] += 1
                    report(reply)
            self.counters["presence_writes"] += len(batch)

    async def read(self, round_trip: RoundTrip, topic: str) -> dict[str, str]:
        """The live entries of ``topic``: session id -> info JSON."""
        key, exp = self.keys(topic)
        (reply,) = await round_trip([(b"EVAL", READ_SCRIPT, 2, key, exp,
                                      int(time.time() * 1000))])
        if isinstance(reply, BaseException):
            raise reply
        return {reply[i].decode(): reply[i + 1].decode("utf-8")
                for i in range(0, len(reply), 2)}
