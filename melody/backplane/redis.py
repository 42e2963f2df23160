"""A backplane over Redis pub/sub: hubs in several processes or machines share broadcasts.

::

    hub = melody.Melody(backplane=melody.RedisBackplane("redis://127.0.0.1:6379/0"))

Every node (one hub in one process) publishes each ``broadcast*``/``publish*`` to Redis once and
receives the other nodes' messages on one subscriber connection; the hub frames each message
once for all its sessions. Needs the ``redis`` package (``pip install 'melody[redis]'``; its
hiredis parser is used when ``hiredis`` is installed).

Channels and keys (``P`` is ``channel_prefix``)
    ``P:all`` carries hub-wide broadcasts; ``P:user`` the messages and disconnects for one user's
    sessions (``hub.send_to_user``, ``hub.disconnect_user``: every node subscribes to it, since
    a user's sessions may be on any node; the envelope names the user);
    ``P:topic:<topic>`` one topic, and a node subscribes to it only while it has a local
    subscriber (interest-based routing: Redis sends a topic's
    messages only to the nodes that want them). Presence for :meth:`cluster_topic_len` lives in
    ``P:nodes`` (a set of node ids), ``P:node:<id>:alive`` (a key that expires
    ``presence_ttl`` seconds after the node's last refresh) and ``P:node:<id>:topics`` (a hash
    topic -> local subscriber count, with the same expiry). Nodes that share a prefix form one
    cluster; use different prefixes for independent hubs on one Redis.

Topic options
    What ``hub.configure_topic`` set is written to the hash ``P:topic-options`` (pattern ->
    JSON of ``TopicOptions``): every pattern when the backplane connects (before ``start``
    returns, and again after each reconnect), each new one when ``configure_topic`` is
    called, and the whole table again when the hash has gone (a flush; checked with the
    presence refresh). ``melody.Publisher`` reads it, so the hubs' configuration stays the one
    source of which topics keep history. Hubs sharing a prefix should configure the same
    topics; when they disagree on a pattern, the most recent write wins (the hub that
    connected or called ``configure_topic`` last): the publishers follow it, while each hub
    keeps using its own table for its own publishes. Patterns are never removed from the
    hash (a hub cannot unconfigure one either); use a new prefix to start over.

Delivery
    Redis pub/sub is at-most-once: a message reaches the nodes subscribed at the moment Redis
    processes the PUBLISH, once each, in the order one node published them; nothing is stored.
    A new topic subscription takes effect on the other nodes' messages after one round trip to
    Redis (plus at most ``subscribe_interval`` when subscriptions churn, see below).

Own messages
    Redis pub/sub has no "no echo" option (NATS has one; Redis has not): a node subscribed to a
    channel receives its own PUBLISHes to it, every hub-wide broadcast included. They are
    recognised by the node id at the head of the envelope, before the payload is decoded or
    copied, and dropped (``ignored_own``); redis-py has still read them off the socket once.
    What is bounded is what they can cost: Redis queues them in this node's subscriber output
    buffer, and Redis cuts a subscriber whose buffer passes ``client-output-buffer-limit
    pubsub`` (32 MB at once, or 8 MB for 60 s, by default). So after every ``max_batch_bytes``
    published the writer waits until the subscriber connection has read everything Redis had
    queued for it (a PING on that connection, whose reply comes after all of it): this node's
    own echoes never hold more than about ``max_batch_bytes`` in Redis, however long the
    queue, and the other nodes get a backlog at the pace this node reads its own.
    Not done, and why: skipping the PUBLISH of a topic no other node holds. The presence
    hashes that would tell are written every ``presence_interval``; a node whose subscription
    Redis has just confirmed would have its messages skipped for up to that long, breaking the
    one-round-trip promise above, silently.

While Redis is unreachable
    The hub keeps serving: local sessions, local broadcasts and local publishes work as without
    a backplane. What is lost: every message this node publishes while it knows Redis is down
    (counted in ``stats()["lost_while_down"]``, together with the messages that were queued or
    in flight when the connection broke: they are never re-sent); and every message other nodes
    publish while this node's subscriber connection is down (Redis keeps nothing for an absent
    subscriber; this node cannot count those, the publishing nodes count theirs when they too
    see the outage). The outage is logged on the ``melody.backplane`` logger, reported to
    ``handle_error(None, BackplaneError)`` (at most once per ``report_interval`` seconds) and
    counted (``outages``, ``connect_failures``); the backplane reconnects with exponential
    backoff and jitter (``reconnect_min`` doubling up to ``reconnect_max`` seconds), then
    resubscribes every channel this node needs and rewrites its presence (``reconnects``).
    A Redis that hangs without closing the connection is detected by a PING every
    ``health_check_interval`` seconds left unanswered until the next one, and by commands
    unanswered for ``timeout`` seconds. A node too slow to read what it subscribed to is
    disconnected by Redis itself (``client-output-buffer-limit pubsub``): an outage like any.

Presence staleness
    ``await hub.cluster_topic_len(topic)`` adds this node's exact count to the counts the other
    live nodes last wrote. A node writes its counts every ``presence_interval`` seconds (only the
    topics whose count changed), so another node's count is at most ``presence_interval``
    seconds plus one round trip old. A node that dies without stopping stops counting
    ``presence_ttl`` seconds after its last refresh at the latest (its keys expire). It raises
    ``BackplaneError`` while Redis is unreachable.

Publishing never blocks
    Messages wait in a queue of at most ``max_queue`` messages and ``max_queue_bytes`` bytes
    (envelopes, counted until Redis has answered their PUBLISH: in flight included), written by
    one task that sends up to ``max_batch`` PUBLISHes and ``max_batch_bytes`` bytes per round
    trip (one message at least), so that the backlog left by a stalled Redis goes out in
    steps, not in one burst. A message that does not fit is dropped, never a queued one:
    ``dropped_outgoing`` counts them all, ``dropped_outgoing_queue_full`` (``max_queue``
    reached), ``dropped_outgoing_queue_bytes`` (``max_queue_bytes`` reached) and
    ``dropped_outgoing_too_large`` (an envelope over ``max_message_bytes``, which could never
    be queued) say why. The first drop in each ``report_interval`` is also reported.

Subscription churn
    ``subscribe``/``unsubscribe`` only mark a channel; the subscriber connection's task sends
    what changed in one write (SUBSCRIBE and UNSUBSCRIBE of up to 1,000 channels each) and
    sends nothing more until Redis has answered it, and not sooner than ``subscribe_interval``
    after the previous batch. A channel whose changes cancel out before they are sent costs
    nothing (``subscribe_coalesced``). A channel whose last local subscriber leaves stays
    subscribed ``unsubscribe_linger`` seconds (at most ``max_lingering`` channels; past it the
    longest-lingering is let go at once): a subscriber coming back within that time costs no
    command (``linger_resumed``). The trade-off: for that long Redis still sends this node the
    topic's messages, which it drops on arrival at the cost of reading them
    (``ignored_unwanted``). So a session that subscribes and leaves in a loop costs Redis one
    SUBSCRIBE, and any churn at most one SUBSCRIBE and one UNSUBSCRIBE (per 1,000 channels)
    per ``subscribe_interval``, and per round trip to Redis. The changes
    pending in memory are one entry per channel whose wanted state differs from what Redis
    was sent: at most the hub's topics plus the lingering channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from melody._hubstate import state_of
from melody.backplane import (
    ENVELOPE_OVERHEAD,
    FLAG_DISCONNECT,
    Backplane,
    decode_envelope,
    decode_user_envelope,
    encode_disconnect_envelope,
    encode_envelope,
    encode_user_envelope,
    is_from,
    new_node_id,
)
from melody.backplane.base import NODE_ID_SIZE
from melody.backplane.broker import BrokerLink
from melody.backplane.redis_keys import RedisKeys
from melody.backplane.redis_presence import RedisPresence
from melody.backplane.redis_streams import (
    RedisStreams,
    is_stream_envelope,
    parse_stream_payload,
    stream_head,
)
from melody.delivery.history import HistoryPage
from melody.delivery.options import TopicOptions
from melody.errors import BackplaneError
from melody.limits import MAX_BUFFER_BYTES, MAX_COUNT, check_int, check_seconds

try:
    from redis.asyncio.connection import ConnectionPool
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ResponseError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "melody.RedisBackplane needs the redis package: pip install 'melody[redis]'") from exc

if TYPE_CHECKING:
    from melody._hubstate import HubState
    from melody.hub import Melody

try:  # redis-py >= 8
    from redis.maint_notifications import MaintNotificationsConfig

    _MAINT_OFF: Any = MaintNotificationsConfig(enabled=False)
except ImportError:  # pragma: no cover - older redis-py has no such feature
    _MAINT_OFF = None

__all__ = ["RedisBackplane", "BackplaneError"]

logger = logging.getLogger("melody.backplane")

# Most channels per SUBSCRIBE/UNSUBSCRIBE command when (re)subscribing many topics at once.
_SUBSCRIBE_CHUNK = 1000
# Redis refuses a bulk string longer than proto-max-bulk-len (512 MB by default): a PUBLISH
# larger than that is a protocol error that closes the connection.
_MAX_MESSAGE_BYTES = 512 << 20
# The longest sensible pause between two batches of subscription changes: past it a new
# subscriber would wait long for its first message.
_MAX_SUBSCRIBE_INTERVAL = 60.0

_DROP_REASONS = ("dropped_outgoing_queue_full", "dropped_outgoing_queue_bytes",
                 "dropped_outgoing_too_large")


class RedisBackplane(BrokerLink, Backplane):
    """A :class:`~melody.backplane.Backplane` over Redis pub/sub (see the module docstring).

    ``url`` is a redis-py URL (``redis://[[user]:password@]host:port/db``, ``rediss://`` for
    TLS, ``unix:///path.sock``); ``redis_options`` go to redis-py's connections (for example
    ``password=`` or ``ssl_ca_certs=``). Durations are seconds:

    - ``channel_prefix``: namespace of the channels and keys; nodes sharing it form one hub.
    - ``max_queue`` / ``max_queue_bytes``: outgoing messages / envelope bytes held at most,
      queued or in flight (1..2**31 / 64 KiB..64 GiB). Keep the bytes well below the
      subscribers' ``client-output-buffer-limit pubsub`` (32 MB hard, 8 MB soft by default).
    - ``max_message_bytes``: the largest envelope (payload plus 17 bytes) sent at all
      (1 KiB..512 MiB and at most ``max_queue_bytes``); larger ones are dropped and counted.
    - ``max_batch`` / ``max_batch_bytes``: PUBLISHes / bytes per round trip (1..2**31 /
      1 KiB..64 MiB; one message at least). ``max_batch_bytes`` is also how much of this
      node's own echo Redis may hold for it before the writer waits for the reader.
    - ``unsubscribe_linger`` / ``max_lingering``: how long a channel stays subscribed after
      its last local subscriber left (0..30 days, 0: unsubscribe at once) / how many such
      channels at most (0..2**31).
    - ``subscribe_interval``: the least time between two batches of SUBSCRIBE/UNSUBSCRIBE
      (0..60; the first change after a quiet spell goes at once).
    - ``timeout``: to connect, and for a command's reply, before Redis counts as unreachable.
    - ``reconnect_min`` / ``reconnect_max``: the reconnect delay doubles from one to the other
      (each delay drawn from its upper half, so that nodes do not reconnect in step).
    - ``health_check_interval``: PING period on the subscriber connection.
    - ``presence_interval`` / ``presence_ttl``: how often this node writes its topic counts
      (one pass over its topics, a dict lookup each, plus one round trip) / how long they
      count after its last write.
    - ``report_interval``: at most one ``handle_error`` report per this many seconds.

    Every duration is finite, above zero unless said otherwise and at most 30 days; every
    number is checked at construction (bools refused). Three connections per node:
    subscriber, publisher, commands (presence). Raises ValueError for a bad URL or setting;
    connecting happens in :meth:`start`, which the hub calls when it starts serving.
    """

    _broker_name = "redis"

    def _interest_key(self, topic: str) -> bytes:
        return self._topic_channel(topic)

    def _is_subscribed(self, key: Any) -> bool:
        return key in self._sent


    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        channel_prefix: str = "melody",
        max_queue: int = 10_000,
        max_queue_bytes: int = 8 << 20,
        max_message_bytes: int = 4 << 20,
        max_batch: int = 512,
        max_batch_bytes: int = 1 << 20,
        unsubscribe_linger: float = 1.0,
        max_lingering: int = 10_000,
        subscribe_interval: float = 0.01,
        timeout: float = 5.0,
        reconnect_min: float = 0.1,
        reconnect_max: float = 10.0,
        health_check_interval: float = 5.0,
        presence_interval: float = 1.0,
        presence_ttl: float = 15.0,
        report_interval: float = 10.0,
        history_meta_ttl: float = 86_400.0,
        **redis_options: Any,
    ) -> None:
        super().__init__()
        if not channel_prefix:
            raise ValueError("channel_prefix must not be empty")
        check_int("max_queue", max_queue, 1, MAX_COUNT)
        check_int("max_queue_bytes", max_queue_bytes, 64 << 10, MAX_BUFFER_BYTES)
        check_int("max_message_bytes", max_message_bytes, 1 << 10,
                  min(_MAX_MESSAGE_BYTES, max_queue_bytes))
        check_int("max_batch", max_batch, 1, MAX_COUNT)
        check_int("max_batch_bytes", max_batch_bytes, 1 << 10, 64 << 20)
        check_int("max_lingering", max_lingering, 0, MAX_COUNT)
        check_seconds("unsubscribe_linger", unsubscribe_linger, allow_zero=True)
        check_seconds("subscribe_interval", subscribe_interval, allow_zero=True,
                      high=_MAX_SUBSCRIBE_INTERVAL)
        for name, value in (("timeout", timeout), ("reconnect_min", reconnect_min),
                            ("health_check_interval", health_check_interval),
                            ("presence_interval", presence_interval)):
            check_seconds(name, value)
        check_seconds("reconnect_max", reconnect_max, low=reconnect_min, allow_zero=True)
        check_seconds("presence_ttl", presence_ttl, low=presence_interval)
        check_seconds("report_interval", report_interval, allow_zero=True)
        check_seconds("history_meta_ttl", history_meta_ttl, low=1.0)
        # Parsing the URL here makes a bad one fail at construction, not at serve time.
        pool = ConnectionPool.from_url(url, **redis_options)
        self._connection_class: Any = pool.connection_class
        self._connection_kwargs: dict[str, Any] = dict(pool.connection_kwargs)
        self.url = url
        #: Prefix of every channel and key this backplane uses.
        self.channel_prefix = channel_prefix
        #: Envelope bytes held at most for Redis, queued or in flight.
        self.max_queue_bytes = max_queue_bytes
        #: The largest envelope sent (payload plus ``ENVELOPE_OVERHEAD`` bytes).
        self.max_message_bytes = max_message_bytes
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._max_batch_bytes = max_batch_bytes
        self._linger = float(unsubscribe_linger)
        self._max_lingering = max_lingering
        self._subscribe_interval = float(subscribe_interval)
        self._timeout = float(timeout)
        self._reconnect_min = float(reconnect_min)
        self._reconnect_max = float(reconnect_max)
        self._health_interval = float(health_check_interval)
        self._presence_interval = float(presence_interval)
        self._presence_ttl_ms = int(presence_ttl * 1000)
        self._report_interval = float(report_interval)

        #: The channels and keys of ``channel_prefix`` (shared with ``melody.Publisher``).
        self.keys = keys = RedisKeys(channel_prefix)
        # Topics with history (hub.configure_topic): stored and numbered in Redis.
        self._streams: RedisStreams = RedisStreams(
            keys, max_queue=max_queue, max_batch=max_batch, meta_ttl=history_meta_ttl)
        self._confirm_waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        # Topics with presence: who is subscribed, written by each node for its sessions.
        self._presence: RedisPresence = RedisPresence(
            keys, ttl=presence_ttl, max_queue=max_queue, max_batch=max_batch)
        self._broadcast_channel = keys.broadcast
        self._user_channel = keys.user
        self._topic_prefix = keys.topic_prefix
        self._nodes_key = keys.nodes
        self._pid = os.getpid()
        self._set_identity()

        self._hub: Melody | None = None
        # The hub's state: where messages from other nodes are delivered, errors reported.
        self._state: HubState | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._stopping = False
        self._up = False
        self._down_since: float | None = None
        self._ever_up = False

        # Channel -> topic (None for the broadcast channel) of everything this node wants.
        self._wanted: dict[bytes, str | None] = {self._broadcast_channel: None}
        # Channels with no local subscriber kept subscribed until a deadline (loop time), in
        # the order they were left, which is the order of their deadlines.
        self._lingering: dict[bytes, float] = {}
        # Channels Redis was told to subscribe (on this connection), and the channels whose
        # wanted state (in _wanted or _lingering) differs from it: what is to be sent.
        self._sent: set[bytes] = set()
        self._dirty: set[bytes] = set()
        # Channels Redis confirmed (subscribe replies seen on the subscriber connection).
        self._confirmed: set[bytes] = set()
        self._control_wake: asyncio.Event | None = None
        self._last_rx = 0.0
        # PINGs on the subscriber connection carry a sequence number; the reader notes the
        # last one answered. A reply proves that everything Redis queued for this connection
        # before it has been read.
        self._ping_sent = 0
        self._pong_seen = 0
        self._sync_wanted = False
        # Waiting for the PING reply that proves the reader caught up: (PING number, future).
        self._sync_waiters: list[tuple[int, asyncio.Future[None]]] = []

        self._queue: deque[tuple[bytes, bytes, bytes]] = deque()
        self._queued_bytes = 0
        self._write_wake: asyncio.Event | None = None
        self._in_flight = 0

        # Presence: topic -> count last written to Redis.
        self._written: dict[str, int] = {}
        self._command_lock: asyncio.Lock | None = None
        self._command_conn: Any = None

        self._last_report = float("-inf")
        self._suppressed = 0
        self._counters = dict.fromkeys(
            ("published", "publish_batches", "publish_syncs", "received", "ignored_own",
             "ignored_unwanted", "malformed", "dropped_outgoing", *_DROP_REASONS,
             "lost_while_down", "subscribe_batches", "subscribed_channels",
             "unsubscribed_channels", "subscribe_coalesced", "linger_resumed",
             "linger_expired", "linger_evicted", "outages", "reconnects",
             "connect_failures"), 0)

    def _set_identity(self) -> None:
        self._node_hex = self.node_id.hex().encode()
        self._stream_head = stream_head(self.node_id)
        base = self.channel_prefix.encode() + b":node:" + self._node_hex
        self._alive_key = base + b":alive"
        self._topics_key = base + b":topics"

    def _node_keys(self, node_hex: bytes) -> tuple[bytes, bytes]:
        base = self.channel_prefix.encode() + b":node:" + node_hex
        return base + b":alive", base + b":topics"

    def _topic_channel(self, topic: str) -> bytes:
        return self._topic_prefix + topic.encode("utf-8", "surrogatepass")

    # -- the contract ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while connected to Redis and subscribed to the hub-wide channel."""
        return self._up

    @property
    def started(self) -> bool:
        """True once :meth:`start` was called (by the hub when it began serving, or by
        hand), whether or not Redis has been reached yet. A hub whose backplane was never
        started raises instead of publishing (nothing would reach the other nodes)."""
        return self._task is not None

    async def start(self, hub: Melody) -> None:
        """Connect, subscribe to the hub-wide channel, begin delivering into ``hub``.

        Returns once subscribed. If the first attempt fails (within ``timeout``) it raises
        ``BackplaneError`` and keeps trying in the background, as after any outage. Raises
        RuntimeError when called twice.
        """
        if self._task is not None:
            raise RuntimeError("RedisBackplane.start called twice")
        if os.getpid() != self._pid:
            # Made before a fork: two processes must not share one node id (each would
            # ignore the other's messages as its own).
            self._pid = os.getpid()
            self.node_id = new_node_id()
            self._set_identity()
        loop = asyncio.get_running_loop()
        self._hub = hub
        self._state = state_of(hub)
        self._loop = loop
        self._control_wake = asyncio.Event()
        self._write_wake = asyncio.Event()
        self._command_lock = asyncio.Lock()
        self._first = loop.create_future()
        self._task = loop.create_task(self._supervise())
        try:
            await self._first
        except Exception as exc:
            if self._stopping:
                return  # the hub closed while connecting
            raise BackplaneError(
                f"cannot reach redis at {self._where()}: {exc} (retrying in the background)"
            ) from exc

    async def stop(self) -> None:
        """Remove this node's presence, unsubscribe and disconnect; publish nothing more.
        Takes at most ``timeout`` seconds (half of it for the goodbye), whatever the broker
        does: a hub's shutdown must not hang on it."""
        if self._stopping:
            return
        self._stopping = True
        deadline = asyncio.get_running_loop().time() + self._timeout
        was_up = self._up
        self._up = False
        if was_up and self._command_conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._command([
                    (b"DEL", self._alive_key, self._topics_key),
                    (b"SREM", self._nodes_key, self._node_hex),
                ]), self._timeout / 2)
        first = self._first
        if first is not None and not first.done():
            first.set_exception(BackplaneError("stopped before connecting"))
        await self._end_task(deadline)
        self._queue.clear()
        self._queued_bytes = 0

    def publish(self, topic: str | None, binary: bool, payload: bytes) -> None:
        """Queue one message for the other nodes (``topic`` None: hub-wide). Never blocks.

        Dropped and counted when Redis is unreachable (``lost_while_down``), and when it does
        not fit (``dropped_outgoing``, with the reason: see "Publishing never blocks" in the
        module docstring). O(1); the payload is copied once, into its envelope, if queued.
        """
        size = ENVELOPE_OVERHEAD + len(payload)
        if not self._admit(size):
            return
        channel = self._broadcast_channel if topic is None else self._topic_channel(topic)
        self._push(channel, encode_envelope(self.node_id, binary, payload), size)

    def _push(self, channel: bytes, envelope: bytes, size: int) -> None:
        # Queue an admitted envelope for the writer task.
        self._queue.append((b"PUBLISH", channel, envelope))
        self._queued_bytes += size
        wake = self._write_wake
        if wake is not None and not wake.is_set():
            wake.set()

    # -- topics with history (melody.delivery.streams' HistoryStore) ------------------------

    #: This backplane stores history: topics configured with it are numbered in Redis.
    stores_history = True

    def publish_stream(self, topic: str, data: str, options: TopicOptions) -> None:
        """Queue one publication of a topic with history: Redis numbers it, stores it and
        publishes it to every node (this one too), in one step. Never blocks.

        Raises ``BackplaneError`` when Redis is unreachable (not connected yet, or an outage)
        or the queue is full: a publication that would be numbered is never dropped in
        silence, the caller learns it was not taken (counted as ``lost_while_down`` and
        ``dropped_outgoing_queue_full``)."""
        if not self._up:
            self._counters["lost_while_down"] += 1
            raise BackplaneError(f"redis at {self._where()} unreachable: publication to "
                                 f"{topic!r} not stored")
        if self._streams.full():
            self._counters["dropped_outgoing"] += 1
            self._counters["dropped_outgoing_queue_full"] += 1
            raise BackplaneError(f"outgoing history queue full ({self._max_queue} "
                                 "publications): publication not stored")
        self._streams.add(topic, self._topic_channel(topic), data, options)

    async def read_stream(self, topic: str, since: int | None, limit: int | None,
                          options: TopicOptions) -> HistoryPage:
        """The history of ``topic`` after ``since`` (None: the position only). Raises
        ``BackplaneError`` when Redis is unreachable."""
        return await self._streams.read(self._round_trip, topic, since, limit, options)

    async def wait_subscribed(self, topic: str) -> None:
        """Return once Redis has confirmed this node's subscription to ``topic`` (subscribe
        it first): from then on every publication to it reaches this node. Raises
        ``BackplaneError`` when Redis is unreachable or does not confirm within ``timeout``."""
        channel = self._topic_channel(topic)
        if channel in self._confirmed:
            return
        if not self._up or self._loop is None:
            raise BackplaneError(f"redis at {self._where()} unreachable")
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._confirm_waiters.setdefault(channel, []).append(waiter)
        try:
            async with asyncio.timeout(self._timeout):
                await waiter
        except TimeoutError:
            raise BackplaneError(f"redis did not confirm the subscription to {topic!r} "
                                 f"within {self._timeout} s") from None
        finally:
            waiters = self._confirm_waiters.get(channel)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._confirm_waiters[channel]

    def _confirmed_channel(self, channel: bytes) -> None:
        self._confirmed.add(channel)
        for waiter in self._confirm_waiters.pop(channel, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _fail_confirm_waiters(self, error: BaseException) -> None:
        waiters, self._confirm_waiters = self._confirm_waiters, {}
        for pending in waiters.values():
            for waiter in pending:
                if not waiter.done():
                    waiter.set_exception(BackplaneError(f"redis went away: {error}"))

    # -- presence (melody.delivery.presence's PresenceStore) -----------------------------------

    #: This backplane keeps presence: topics configured with it are tracked in Redis.
    keeps_presence = True

    def presence_add(self, topic: str, session_id: str, info: str) -> None:
        """Write a session's presence entry (now, and at every refresh while it stays)."""
        if self._up and not self._presence.add(topic, session_id, info):
            self._complain(BackplaneError("presence queue full: entry written at the next "
                                          "refresh"))

    def presence_remove(self, topic: str, session_id: str) -> None:
        """Delete a session's presence entry (if Redis is down, it expires by itself)."""
        if self._up and not self._presence.remove(topic, session_id):
            self._complain(BackplaneError("presence queue full: entry left to expire"))

    async def presence_read(self, topic: str) -> dict[str, str]:
        """The live presence entries of ``topic`` on every node. Raises ``BackplaneError``
        when Redis is unreachable."""
        return await self._presence.read(self._round_trip, topic)

    def _stream_failed(self, error: BaseException) -> None:
        self._complain(BackplaneError(f"storing a publication failed: {error}"), error)

    # -- topic options, shared with publishers (melody.Publisher) ----------------------------

    def share_topic_options(self, pattern: str, options: TopicOptions) -> None:
        """Write ``pattern``'s options to ``P:topic-options`` (``hub.configure_topic`` calls
        it), so that a ``melody.Publisher`` numbers and stores its publications to those
        topics as the hubs do. Never blocks: written in a task when connected; otherwise the
        whole table is written when the connection is made (see "Topic options" in the module
        docstring). A failed write is reported like an outage."""
        if not self._up or self._loop is None or self._state is None:
            return
        command = (b"HSET", self.keys.topic_options, pattern.encode("utf-8", "surrogatepass"),
                   options.to_json())
        self._state.spawn(self._share_options(command), self._loop)

    async def _share_options(self, command: tuple[Any, ...]) -> None:
        try:
            await self._command([command])
        except Exception as exc:
            self._complain(BackplaneError(f"writing the topic options failed: {exc}"), exc)

    def _topic_options_command(self) -> tuple[Any, ...] | None:
        # One HSET of every pattern the hub configured, or None when it configured none.
        state = self._state
        patterns = state.streams.table.patterns() if state is not None else {}
        if not patterns:
            return None
        fields: list[bytes] = []
        for pattern, options in patterns.items():
            fields.append(pattern.encode("utf-8", "surrogatepass"))
            fields.append(options.to_json())
        return (b"HSET", self.keys.topic_options, *fields)

    def send_to_user(self, user: str, binary: bool, payload: bytes) -> None:
        """Queue a message for ``user``'s sessions on the other nodes (``P:user``). Never
        blocks; dropped and counted as :meth:`publish` is (same queue, same bounds).
        ValueError for a user name over 65,535 UTF-8 bytes."""
        envelope = encode_user_envelope(self.node_id, user, binary, payload)
        if self._admit(len(envelope)):
            self._push(self._user_channel, envelope, len(envelope))

    def disconnect_user(self, user: str, code: int, reason: str) -> None:
        """Queue the closing of ``user``'s sessions on the other nodes (``P:user``); as
        :meth:`send_to_user`."""
        envelope = encode_disconnect_envelope(self.node_id, user, code, reason)
        if self._admit(len(envelope)):
            self._push(self._user_channel, envelope, len(envelope))

    async def cluster_topic_len(self, topic: str) -> int:
        """Subscribers of ``topic`` on all live nodes: this node's exact count plus the
        counts the others last wrote (see "Presence staleness" in the module docstring).

        Two round trips to Redis. Raises ``BackplaneError`` while Redis is unreachable.
        """
        hub = self._hub
        local = hub.topic_len(topic) if hub is not None else 0
        if not self._up:
            raise BackplaneError("redis is unreachable: cluster-wide counts are unavailable")
        try:
            (members,) = await self._command([(b"SMEMBERS", self._nodes_key)])
            others = [m for m in members if m != self._node_hex]
            if not others:
                return local
            commands: list[tuple[Any, ...]] = []
            for node in others:
                alive, topics = self._node_keys(node)
                commands.append((b"EXISTS", alive))
                commands.append((b"HGET", topics, topic.encode("utf-8", "surrogatepass")))
            replies = await self._command(commands)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise BackplaneError(f"presence query failed: {exc}") from exc
        total = local
        dead = []
        for i, node in enumerate(others):
            if replies[2 * i]:
                total += int(replies[2 * i + 1] or 0)
            else:
                dead.append(node)
        if dead:
            # Forget nodes whose liveness key expired (their counts expire on their own).
            with contextlib.suppress(Exception):
                await self._command([(b"SREM", self._nodes_key, *dead)])
        return total

    def stats(self) -> dict[str, int]:
        """Counters (the hub shows them as ``backplane_<name>`` in ``hub.stats()``).

        Gauges: ``connected`` (0/1), ``channels`` (subscriptions Redis confirmed: the
        hub-wide channel and the topics; the user channel, always subscribed, is not counted),
        ``queued`` and ``queued_bytes`` (held for Redis, in flight included), ``lingering``
        (channels kept after their last subscriber left), ``pending_changes`` (channels whose
        SUBSCRIBE or UNSUBSCRIBE is still to be sent).

        Counters: ``published`` and ``publish_batches`` (round trips), ``publish_syncs``
        (waits for this node's echoes to be read), ``received`` (from other nodes),
        ``ignored_own`` (this node's echoes), ``ignored_unwanted`` (messages of a channel with
        no local subscriber: lingering, or in flight when it was left), ``malformed``,
        ``dropped_outgoing`` (all drops) and its reasons ``dropped_outgoing_queue_full``,
        ``dropped_outgoing_queue_bytes``, ``dropped_outgoing_too_large``;
        ``lost_while_down`` (published while Redis was unreachable, or queued when the
        connection broke); ``subscribe_batches`` (round trips of subscription changes),
        ``subscribed_channels`` and ``unsubscribed_channels`` (channels in those commands),
        ``subscribe_coalesced`` (changes cancelled before being sent), ``linger_resumed``,
        ``linger_expired``, ``linger_evicted`` (let go early, ``max_lingering`` reached);
        ``outages`` (connections lost), ``reconnects`` (connections made after an outage or
        a failed start), ``connect_failures`` (attempts that failed). Topics with history:
        ``stream_published`` (publications Redis stored and published), ``stream_errors``
        (scripts Redis refused), ``stream_batches`` (their round trips), gauge ``stream_queued``.
        """
        stats = dict(self._counters)
        stats.update(self._streams.counters)
        stats.update(self._presence.counters)
        stats["stream_queued"] = len(self._streams.queue)
        stats["connected"] = int(self._up)
        stats["channels"] = len(self._confirmed)
        stats["queued"] = len(self._queue) + self._in_flight
        stats["queued_bytes"] = self._queued_bytes
        stats["lingering"] = len(self._lingering)
        stats["pending_changes"] = len(self._dirty)
        return stats

    # -- connection lifetime --------------------------------------------------------------

    def _where(self) -> str:
        kwargs = self._connection_kwargs
        if "path" in kwargs:
            return str(kwargs["path"])
        return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"

    def _connection(self, role: str, socket_timeout: float | None) -> Any:
        kwargs = dict(self._connection_kwargs)
        kwargs.update(
            # Reconnecting is this class's job: redis-py must fail fast, not retry.
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=self._timeout,
            socket_timeout=socket_timeout,
            health_check_interval=0,
            # RESP2: pub/sub messages arrive as plain replies on the subscriber connection.
            protocol=2,
            client_name=f"melody-{self._node_hex[:12].decode()}-{role}",
        )
        if _MAINT_OFF is not None:
            # redis-py 8 turns on "maintenance notifications" by default, which it supports
            # only with hiredis or RESP3: on RESP2 without hiredis every connect would fail.
            # This backplane reconnects by itself and needs none of it.
            kwargs["maint_notifications_config"] = _MAINT_OFF
        return self._connection_class(**kwargs)

    async def _supervise(self) -> None:
        attempt = 0
        while not self._stopping:
            connections: list[Any] = []
            try:
                subscriber, publisher, commands = await self._connect(connections)
            except asyncio.CancelledError:
                await _close_all(connections)
                raise
            except Exception as exc:
                await _close_all(connections)
                self._connect_failed(exc, attempt)
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                continue
            attempt = 0
            self._went_up(commands)
            try:
                await self._serve(subscriber, publisher, commands)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._went_down(exc)
            finally:
                self._up = False
                self._command_conn = None
                await _close_all(connections)
            if not self._stopping:
                await asyncio.sleep(self._backoff(0))

    async def _connect(self, connections: list[Any]) -> tuple[Any, Any, Any]:
        subscriber = self._connection("sub", None)
        connections.append(subscriber)
        await subscriber.connect()
        await subscriber.send_command(b"SUBSCRIBE", self._broadcast_channel, self._user_channel)
        for channel in (self._broadcast_channel, self._user_channel):
            reply = await subscriber.read_response(timeout=self._timeout)
            if not (isinstance(reply, list) and reply[:2] == [b"subscribe", channel]):
                raise BackplaneError(f"unexpected reply to SUBSCRIBE: {reply!r}")
        publisher = self._connection("pub", self._timeout)
        connections.append(publisher)
        await publisher.connect()
        commands = self._connection("cmd", self._timeout)
        connections.append(commands)
        await commands.connect()
        share = self._topic_options_command()
        if share is not None:
            # Before start() returns: a publisher reads the hub's topics with history from then.
            await commands.send_command(*share)
            await commands.read_response()
        return subscriber, publisher, commands

    def _went_up(self, commands: Any) -> None:
        loop = self._loop
        assert loop is not None and self._control_wake is not None
        self._command_conn = commands
        self._confirmed = {self._broadcast_channel}
        self._sent = {self._broadcast_channel}
        # Resubscribe everything wanted (lingering channels are let go: this connection never
        # had them); the topics' presence is rewritten in full.
        self._lingering.clear()
        self._dirty = set(self._wanted)
        self._dirty.discard(self._broadcast_channel)
        self._pong_seen = self._ping_sent
        self._sync_wanted = False
        self._fail_sync_waiters(BackplaneError("redis reconnected"))
        self._written = {}
        self._last_rx = loop.time()
        self._announce_up()

    def _forget_connection(self, error: BaseException) -> None:
        self._fail_confirm_waiters(error)
        self._fail_sync_waiters(BackplaneError(f"redis went away: {error}"))

    async def _serve(self, subscriber: Any, publisher: Any, commands: Any) -> None:
        loop = self._loop
        assert loop is not None
        tasks = [
            loop.create_task(self._read(subscriber)),
            loop.create_task(self._control(subscriber)),
            loop.create_task(self._write(publisher)),
            loop.create_task(self._refresh()),
            loop.create_task(self._streams.write(self._round_trip, self._stream_failed,
                                                 self._stream_head)),
            loop.create_task(self._presence.write(self._round_trip, self._stream_failed)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            error = task.exception()
            if error is not None:
                raise error
        raise BackplaneError("connection closed")

    # -- the four tasks of a connection ---------------------------------------------------

    async def _read(self, subscriber: Any) -> None:
        loop = self._loop
        state = self._state
        wake = self._control_wake
        assert loop is not None and state is not None and wake is not None
        read = subscriber.read_response
        topics = self._wanted
        node_id = self.node_id
        counters = self._counters
        deliver = state.deliver_remote
        user_channel = self._user_channel
        while True:
            reply = await read()
            self._last_rx = loop.time()
            kind = reply[0]
            if kind == b"message":
                data = reply[2]
                if is_stream_envelope(data):
                    # A publication of a topic with history: every node delivers it, the one
                    # that published it too (in offset order: see redis_streams).
                    self._deliver_stream(topics.get(reply[1]), data)
                    continue
                # Own echoes and unwanted channels are dropped before the payload is copied.
                if is_from(data, node_id):
                    counters["ignored_own"] += 1
                    continue
                channel = reply[1]
                if channel == user_channel:
                    self._user_message(state, data)
                    continue
                if channel not in topics:
                    counters["ignored_unwanted"] += 1  # lingering, or left while on the way
                    continue
                try:
                    _, binary, payload = decode_envelope(data)
                except ValueError as exc:
                    counters["malformed"] += 1
                    self._complain(BackplaneError(f"malformed message ignored: {exc}"))
                    continue
                counters["received"] += 1
                try:
                    deliver(topics[channel], binary, payload)
                except Exception as exc:
                    state.report(None, exc)
            elif kind == b"subscribe":
                self._confirmed_channel(reply[1])
            elif kind == b"unsubscribe":
                self._confirmed.discard(reply[1])
            elif kind == b"pong":
                self._pong(reply[1])
                wake.set()

    def _deliver_stream(self, topic: str | None, data: bytes) -> None:
        state = self._state
        assert state is not None
        counters = self._counters
        if topic is None:
            counters["ignored_unwanted"] += 1
            return
        try:
            offset, text = parse_stream_payload(data[NODE_ID_SIZE + 1:])
        except ValueError as exc:
            counters["malformed"] += 1
            self._complain(BackplaneError(f"malformed message ignored: {exc}"))
            return
        counters["received"] += 1
        try:
            state.streams.deliver(topic, offset, text)
        except Exception as exc:
            state.report(None, exc)

    def _user_message(self, state: HubState, data: bytes) -> None:
        # A message or a disconnect for one user's sessions, from another node.
        counters = self._counters
        try:
            _, flags, user, payload = decode_user_envelope(data)
            if flags & FLAG_DISCONNECT:
                code = int.from_bytes(payload[:2], "big")
                reason = payload[2:].decode("utf-8")
            else:
                binary = bool(flags & 1)
                msg: Any = payload if binary else payload.decode("utf-8")
        except ValueError as exc:  # UnicodeDecodeError included
            counters["malformed"] += 1
            self._complain(BackplaneError(f"malformed user message ignored: {exc}"))
            return
        counters["received"] += 1
        try:
            if flags & FLAG_DISCONNECT:
                state.disconnect_user(user, code, reason)
            else:
                state.deliver_user(user, binary, msg)
        except Exception as exc:
            state.report(None, exc)

    def _pong(self, data: bytes) -> None:
        try:
            seq = int(data)
        except ValueError:
            return  # not one of ours
        self._pong_seen = max(self._pong_seen, seq)
        if self._sync_waiters:
            waiting = []
            for number, future in self._sync_waiters:
                if seq >= number:
                    if not future.done():
                        future.set_result(None)
                else:
                    waiting.append((number, future))
            self._sync_waiters = waiting

    async def _sync(self) -> None:
        # Wait until the subscriber connection has read all Redis had queued for it so far:
        # the reply to a PING sent from now on comes after all of it.
        loop = self._loop
        wake = self._control_wake
        assert loop is not None and wake is not None
        future: asyncio.Future[None] = loop.create_future()
        self._sync_waiters.append((self._ping_sent + 1, future))
        self._sync_wanted = True
        wake.set()
        self._counters["publish_syncs"] += 1
        await future

    async def wait_caught_up(self) -> None:
        """Return once this node has read and delivered every message Redis had queued for it
        when this was called (a PING on the subscriber connection, whose reply comes after
        them). Raises ``BackplaneError`` when Redis goes away first or does not answer within
        ``timeout``."""
        if not self._up:
            raise BackplaneError(f"redis at {self._where()} unreachable")
        try:
            async with asyncio.timeout(self._timeout):
                await self._sync()
        except TimeoutError:
            raise BackplaneError(f"redis did not answer a PING within {self._timeout} s"
                                 ) from None

    def _fail_sync_waiters(self, error: BaseException) -> None:
        waiters, self._sync_waiters = self._sync_waiters, []
        for _, future in waiters:
            if not future.done():
                future.set_exception(error)

    def _expire_lingering(self, now: float) -> None:
        lingering = self._lingering
        while lingering:
            channel, deadline = next(iter(lingering.items()))
            if deadline > now:
                return
            del lingering[channel]
            self._counters["linger_expired"] += 1
            self._mark(channel)

    def _changes_to_send(self) -> list[tuple[bytes, ...]]:
        # The net changes, as SUBSCRIBE/UNSUBSCRIBE commands of up to _SUBSCRIBE_CHUNK channels.
        dirty, self._dirty = self._dirty, set()
        sent, topics, lingering = self._sent, self._wanted, self._lingering
        add = [c for c in dirty if c not in sent and (c in topics or c in lingering)]
        remove = [c for c in dirty if c in sent and c not in topics and c not in lingering]
        sent.update(add)
        sent.difference_update(remove)
        counters = self._counters
        counters["subscribed_channels"] += len(add)
        counters["unsubscribed_channels"] += len(remove)
        commands: list[tuple[bytes, ...]] = []
        for channels, command in ((add, b"SUBSCRIBE"), (remove, b"UNSUBSCRIBE")):
            for i in range(0, len(channels), _SUBSCRIBE_CHUNK):
                commands.append((command, *channels[i:i + _SUBSCRIBE_CHUNK]))
        return commands

    async def _control(self, subscriber: Any) -> None:
        # The only writer on the subscriber connection: subscription changes and PINGs. Any
        # reply between two health PINGs proves the connection alive; none means Redis hangs.
        # A batch of changes ends with a PING, and the next batch waits for its reply: one
        # batch per round trip, whatever the hub asks meanwhile (it is coalesced).
        loop = self._loop
        wake = self._control_wake
        assert loop is not None and wake is not None
        interval = self._subscribe_interval
        next_ping = loop.time() + self._health_interval
        pinged_at: float | None = None
        batch_ping = 0  # the PING that closes the last batch of changes
        last_batch = float("-inf")
        while True:
            now = loop.time()
            self._expire_lingering(now)
            commands: list[tuple[bytes, ...]] = []
            if (self._dirty and self._pong_seen >= batch_ping
                    and now >= last_batch + interval):
                commands = self._changes_to_send()
            ping = bool(commands) or self._sync_wanted
            if now >= next_ping:
                if pinged_at is not None and self._last_rx < pinged_at:
                    raise BackplaneError(
                        f"no reply to PING within {self._health_interval}s: redis hangs")
                pinged_at = now
                next_ping = now + self._health_interval
                ping = True
            if ping:
                self._sync_wanted = False
                self._ping_sent += 1
                if commands:
                    batch_ping = self._ping_sent
                    last_batch = now
                    self._counters["subscribe_batches"] += 1
                commands.append((b"PING", b"%d" % self._ping_sent))
                await subscriber.send_packed_command(
                    subscriber.pack_commands(commands), check_health=False)
            wake.clear()
            if self._sync_wanted:
                continue
            deadline = next_ping
            if self._lingering:
                deadline = min(deadline, next(iter(self._lingering.values())))
            if self._dirty and self._pong_seen >= batch_ping:
                deadline = min(deadline, last_batch + interval)
            # Otherwise the reply to the batch's PING wakes this task (the reader sets wake).
            delay = deadline - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), delay)

    async def _write(self, publisher: Any) -> None:
        queue = self._queue
        wake = self._write_wake
        assert wake is not None
        counters = self._counters
        pack = publisher.pack_commands
        send = publisher.send_packed_command
        read = publisher.read_response
        max_batch, max_bytes = self._max_batch, self._max_batch_bytes
        unsynced = 0  # bytes published since the subscriber connection last caught up
        while True:
            if not queue:
                wake.clear()
                await wake.wait()
                continue
            # Up to max_batch messages and max_batch_bytes bytes, one message at least: the
            # backlog a stalled Redis leaves goes out in steps, not in one burst.
            batch = [queue.popleft()]
            size = len(batch[0][2])
            while queue and len(batch) < max_batch:
                more = len(queue[0][2])
                if size + more > max_bytes:
                    break
                batch.append(queue.popleft())
                size += more
            count = len(batch)
            self._in_flight = count
            await send(pack(batch), check_health=False)
            for _ in range(count):
                await read()
            self._in_flight = 0
            self._queued_bytes -= size
            counters["published"] += count
            counters["publish_batches"] += 1
            unsynced += size
            if unsynced >= max_bytes:
                # Redis has queued these for every subscriber, this node's own subscriber
                # connection too (its echo: Redis has no no-echo option). Let that connection
                # read them before sending more, so that what Redis holds for it stays about
                # max_batch_bytes, far from client-output-buffer-limit pubsub.
                unsynced = 0
                await self._sync()

    async def _refresh(self) -> None:
        # Presence: liveness key, node set, and the local counts that changed.
        state = self._state
        assert state is not None
        ttl = self._presence_ttl_ms
        while True:
            # One pass over the local topics (a dict lookup each): only changes are written.
            topics = state.topics
            written = self._written
            changed: list[Any] = []
            for topic, group in topics.items():
                count = len(group)
                if written.get(topic) != count:
                    written[topic] = count
                    changed.append(topic.encode("utf-8", "surrogatepass"))
                    changed.append(count)
            gone: list[str] = []
            if len(written) > len(topics):  # written now holds every topic: the rest left
                gone = [topic for topic in written if topic not in topics]
                for topic in gone:
                    del written[topic]
            commands: list[tuple[Any, ...]] = [
                (b"SET", self._alive_key, b"1", b"PX", ttl),
                (b"SADD", self._nodes_key, self._node_hex),
            ]
            if changed:
                commands.append((b"HSET", self._topics_key, *changed))
            if gone:
                commands.append((b"HDEL", self._topics_key,
                                 *(t.encode("utf-8", "surrogatepass") for t in gone)))
            share = self._topic_options_command()
            if share is not None:
                commands.insert(0, (b"EXISTS", self.keys.topic_options))
            commands.append((b"PEXPIRE", self._topics_key, ttl))
            expired = len(commands) - 1  # its reply: 0 when the hash was gone
            # Presence entries of this node's sessions, rewritten with a new expiry.
            commands += self._presence.refresh_commands(state.presence.local())
            replies = await self._command(commands)
            if replies[expired] == 0:
                written.clear()  # the hash is gone (expired or flushed): rewrite it in full
            if share is not None and replies[0] == 0:
                await self._command([share])  # the topic options were flushed: rewrite them
            await asyncio.sleep(self._presence_interval)

    async def _command(self, commands: Iterable[tuple[Any, ...]]) -> list[Any]:
        # One pipelined round trip on the command connection (shared, hence the lock).
        conn = self._command_conn
        lock = self._command_lock
        if conn is None or lock is None:
            raise BackplaneError("redis is unreachable")
        commands = list(commands)

        async def round_trip() -> list[Any]:
            async with lock:
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
                return [await conn.read_response() for _ in commands]

        # Shielded: a caller cancelled half-way (wait_for around cluster_topic_len) must not
        # leave unread replies on the connection for the next command to take as its own.
        return await asyncio.shield(round_trip())

    async def _round_trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        # _command, but a command Redis refused comes back as its error in the list (every
        # reply is read: none is left on the connection for the next caller).
        conn = self._command_conn
        lock = self._command_lock
        if conn is None or lock is None or not self._up:
            raise BackplaneError(f"redis at {self._where()} unreachable")

        async def round_trip() -> list[Any]:
            async with lock:
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
                replies: list[Any] = []
                for _ in commands:
                    try:
                        replies.append(await conn.read_response())
                    except ResponseError as exc:
                        replies.append(exc)
                return replies

        try:
            return await asyncio.shield(round_trip())
        except (OSError, ConnectionError, TimeoutError) as exc:
            raise BackplaneError(f"redis at {self._where()}: {exc}") from exc

    def __repr__(self) -> str:
        state = "connected" if self._up else "disconnected"
        return f"<RedisBackplane {self._where()} prefix={self.channel_prefix!r} {state}>"


async def _close_all(connections: list[Any]) -> None:
    for conn in connections:
        with contextlib.suppress(Exception):
            await conn.disconnect(nowait=True)
