"""Topic history in Redis, for ``RedisBackplane``: numbered, stored and published in one step.

Keys (``P`` is the backplane's ``channel_prefix``, ``T`` the topic):

``P:stream:T``
    A Redis stream of the topic's publications, entry id ``<offset>-1``, fields ``d`` (the
    data, JSON text) and ``t`` (Redis time in ms when stored); trimmed to ``history_size``
    entries and, with ``history_ttl``, expiring that long after the last publish (reads also
    skip entries older than ``history_ttl``, so a busy topic keeps nothing older either).
``P:stream:T:meta``
    A hash: ``e`` the epoch, ``s`` the last offset given. It expires ``meta_ttl`` seconds
    after the topic's last publish or read. When it is missing (never made, expired, lost to
    a flush or a failover to a replica that had not received it) the next publish or read
    starts a new epoch at offset 0 and drops what the stream held: clients then learn that
    they cannot recover, rather than getting offsets that mean something else.

One Lua script numbers a publication (HINCRBY), stores it (XADD) and PUBLISHes it on the
topic's channel, atomically: every node receives a topic's publications in offset order, and
a publication is in the stream before any node can deliver it. The message on the channel is
an envelope flagged ``FLAG_STREAM`` whose payload is ``<offset>:<data>``; nodes deliver these
when they come back from Redis, their own included (see ``melody.delivery.streams``).

Publishing never waits: publications queue (at most ``max_queue``; past it they are dropped,
counted and reported, as plain publishes are) and one task sends them in batches of up to
``max_batch`` scripts per round trip on the command connection.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from melody.backplane.base import FLAG_STREAM, NODE_ID_SIZE
from melody.backplane.redis_keys import RedisKeys
from melody.delivery.history import HistoryPage, StoredPublication, StreamPosition, new_epoch
from melody.delivery.options import TopicOptions

__all__ = ["PUBLISH_SCRIPT", "RedisStreams", "parse_stream_payload", "publish_args",
           "stream_head"]

#: Both scripts start here: the topic's epoch, or a new one (ARGV[1]) with the stream dropped
#: and the offsets restarted when the meta hash is missing (see the module docstring).
_EPOCH = b"""
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', epoch, 's', 0)
end
"""

#: KEYS: stream, meta. ARGV: new epoch, max entries, data, ttl ms (0: none), meta ttl ms,
#: channel, envelope head (node id and flags).
PUBLISH_SCRIPT = _EPOCH + b"""
local offset = redis.call('HINCRBY', KEYS[2], 's', 1)
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], offset .. '-1', 'd', ARGV[3], 't', ms)
if ARGV[4] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
else
  redis.call('PERSIST', KEYS[1])
end
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[7] .. offset .. ':' .. ARGV[3])
return {offset, epoch}
"""

#: KEYS: stream, meta. ARGV: new epoch, since (-1: position only), limit, ttl ms (0: none),
#: meta ttl ms. Returns {epoch, top offset, {id, data, id, data, ...}}.
READ_SCRIPT = _EPOCH + b"""
redis.call('PEXPIRE', KEYS[2], ARGV[5])
local top = tonumber(redis.call('HGET', KEYS[2], 's'))
local since = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local out = {}
if since >= 0 and limit > 0 and top > since then
  local entries = redis.call('XRANGE', KEYS[1], (since + 1) .. '-0', '+', 'COUNT', limit)
  local oldest = 0
  if ARGV[4] ~= '0' then
    local now = redis.call('TIME')
    oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[4])
  end
  for _, entry in ipairs(entries) do
    local fields = entry[2]
    local data, stamp = nil, 0
    for i = 1, #fields, 2 do
      if fields[i] == 'd' then data = fields[i + 1] elseif fields[i] == 't' then
        stamp = tonumber(fields[i + 1]) end
    end
    if data and stamp > oldest then
      table.insert(out, entry[1])
      table.insert(out, data)
    end
  end
end
return {epoch, top, out}
"""

RoundTrip = Callable[[list[tuple[Any, ...]]], Awaitable[list[Any]]]


def publish_args(options: TopicOptions, data: bytes, meta_ttl_ms: int, channel: bytes,
                 head: bytes) -> tuple[Any, ...]:
    """:data:`PUBLISH_SCRIPT`'s ARGV for one publication of ``data`` (JSON text, UTF-8) on
    ``channel``, in an envelope that starts with ``head`` (a node id and ``FLAG_STREAM``):
    what a hub's writer and ``melody.Publisher`` both send, so that their publications are
    the same bytes."""
    return (new_epoch(), options.history_size, data,
            int(options.history_ttl * 1000) if options.history_ttl else 0, meta_ttl_ms,
            channel, head)


def stream_head(node_id: bytes) -> bytes:
    """The head of a ``FLAG_STREAM`` envelope sent by ``node_id``."""
    return node_id + bytes((FLAG_STREAM,))


def parse_stream_payload(payload: bytes) -> tuple[int, str]:
    """``(offset, data)`` of a ``FLAG_STREAM`` envelope's payload; ValueError if malformed."""
    head, sep, data = payload.partition(b":")
    if not sep or not head.isdigit():
        raise ValueError("stream publication without an offset")
    return int(head), data.decode("utf-8")


class RedisStreams:
    """The history half of a ``RedisBackplane`` (see the module docstring)."""

    __slots__ = ("_keys", "_max_batch", "_max_queue", "counters", "meta_ttl_ms", "queue",
                 "wake")

    def __init__(self, keys: RedisKeys, *, max_queue: int, max_batch: int,
                 meta_ttl: float) -> None:
        self._keys = keys
        self._max_queue = max_queue
        self._max_batch = max_batch
        #: Milliseconds a topic's epoch and offset outlive its last publish or read.
        self.meta_ttl_ms = int(meta_ttl * 1000)
        #: Publications waiting for Redis: (stream key, meta key, channel, data, options).
        self.queue: deque[tuple[bytes, bytes, bytes, bytes, TopicOptions]] = deque()
        self.wake: asyncio.Event | None = None
        self.counters = {"stream_published": 0, "stream_errors": 0, "stream_batches": 0}

    def keys(self, topic: str) -> tuple[bytes, bytes]:
        """The stream key and the meta key of ``topic``."""
        return self._keys.stream(topic)

    def full(self) -> bool:
        """True when one more publication would pass ``max_queue``."""
        return len(self.queue) >= self._max_queue

    def add(self, topic: str, channel: bytes, data: str, options: TopicOptions) -> None:
        """Queue one publication (the caller checked :meth:`full`)."""
        stream, meta = self.keys(topic)
        self.queue.append((stream, meta, channel, data.encode("utf-8"), options))
        wake = self.wake
        if wake is not None and not wake.is_set():
            wake.set()

    def clear(self) -> int:
        """Forget the queue (Redis went away); how many publications were in it."""
        lost = len(self.queue)
        self.queue.clear()
        return lost

    async def write(self, round_trip: RoundTrip, report: Callable[[BaseException], None],
                    head: bytes) -> None:
        """The writer task: send the queued publications, ``max_batch`` per round trip, each
        published in an envelope that starts with ``head`` (node id and FLAG_STREAM)."""
        queue = self.queue
        wake = self.wake = asyncio.Event()
        while True:
            if not queue:
                wake.clear()
                await wake.wait()
                continue
            batch = [queue.popleft() for _ in range(min(len(queue), self._max_batch))]
            commands = [
                (b"EVAL", PUBLISH_SCRIPT, 2, stream, meta,
                 *publish_args(options, data, self.meta_ttl_ms, channel, head))
                for stream, meta, channel, data, options in batch]
            replies = await round_trip(commands)
            self.counters["stream_batches"] += 1
            for reply in replies:
                if isinstance(reply, BaseException):
                    self.counters["stream_errors"] += 1
                    report(reply)
                else:
                    self.counters["stream_published"] += 1

    async def read(self, round_trip: RoundTrip, topic: str, since: int | None,
                   limit: int | None, options: TopicOptions) -> HistoryPage:
        """The page of ``topic`` after ``since`` (None: the position only)."""
        stream, meta = self.keys(topic)
        count = options.history_size if limit is None else min(limit, options.history_size)
        (reply,) = await round_trip([
            (b"EVAL", READ_SCRIPT, 2, stream, meta, new_epoch(),
             -1 if since is None else since, count,
             int(options.history_ttl * 1000) if options.history_ttl else 0, self.meta_ttl_ms)])
        if isinstance(reply, BaseException):
            raise reply
        epoch, top, flat = reply
        publications = [
            StoredPublication(int(flat[i].split(b"-", 1)[0]), flat[i + 1].decode("utf-8"))
            for i in range(0, len(flat), 2)]
        return HistoryPage(publications, StreamPosition(int(top), epoch.decode("utf-8")))


def is_stream_envelope(data: bytes) -> bool:
    """True for an envelope flagged ``FLAG_STREAM`` (a look at one byte, no copy)."""
    return len(data) > NODE_ID_SIZE and bool(data[NODE_ID_SIZE] & FLAG_STREAM)
