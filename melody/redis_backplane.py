"""A backplane over Redis pub/sub: hubs in several processes or machines share broadcasts.

::

    hub = melody.Melody(backplane=melody.RedisBackplane("redis://127.0.0.1:6379/0"))

Every node (one hub in one process) publishes each ``broadcast*``/``publish*`` to Redis once and
receives the other nodes' messages on one subscriber connection; the hub frames each message
once for all its sessions. Needs the ``redis`` package (``pip install 'melody[redis]'``; its
hiredis parser is used when ``hiredis`` is installed).

Channels and keys (``P`` is ``channel_prefix``)
    ``P:all`` carries hub-wide broadcasts; ``P:topic:<topic>`` one topic, and a node subscribes
    to it only while it has a local subscriber (interest-based routing: Redis sends a topic's
    messages only to the nodes that want them). Presence for :meth:`cluster_topic_len` lives in
    ``P:nodes`` (a set of node ids), ``P:node:<id>:alive`` (a key that expires
    ``presence_ttl`` seconds after the node's last refresh) and ``P:node:<id>:topics`` (a hash
    topic -> local subscriber count, with the same expiry). Nodes that share a prefix form one
    cluster; use different prefixes for independent hubs on one Redis.

Delivery
    Redis pub/sub is at-most-once: a message reaches the nodes subscribed at the moment Redis
    processes the PUBLISH, once each, in the order one node published them; nothing is stored.
    A node's own messages come back from Redis and are ignored by node id (the hub delivered
    them locally when they were sent). A new topic subscription takes effect on the other nodes'
    messages after one round trip to Redis.

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

Publishing never blocks: messages wait in a queue of ``max_queue`` messages, written by one task
that sends up to ``max_batch`` PUBLISHes per round trip; when the queue is full a message is
dropped and counted (``dropped_outgoing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from melody.backplane import Backplane, decode_envelope, encode_envelope, new_node_id
from melody.errors import BackplaneError

try:
    from redis.asyncio.connection import ConnectionPool
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "melody.RedisBackplane needs the redis package: pip install 'melody[redis]'") from exc

if TYPE_CHECKING:
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


class RedisBackplane(Backplane):
    """A :class:`~melody.backplane.Backplane` over Redis pub/sub (see the module docstring).

    ``url`` is a redis-py URL (``redis://[[user]:password@]host:port/db``, ``rediss://`` for
    TLS, ``unix:///path.sock``); ``redis_options`` go to redis-py's connections (for example
    ``password=`` or ``ssl_ca_certs=``). Durations are seconds:

    - ``channel_prefix``: namespace of the channels and keys; nodes sharing it form one hub.
    - ``max_queue`` / ``max_batch``: outgoing messages held at most / sent per round trip.
    - ``timeout``: to connect, and for a command's reply, before Redis counts as unreachable.
    - ``reconnect_min`` / ``reconnect_max``: the reconnect delay doubles from one to the other
      (each delay drawn from its upper half, so that nodes do not reconnect in step).
    - ``health_check_interval``: PING period on the subscriber connection.
    - ``presence_interval`` / ``presence_ttl``: how often this node writes its topic counts
      (one pass over its topics, a dict lookup each, plus one round trip) / how long they
      count after its last write.
    - ``report_interval``: at most one ``handle_error`` report per this many seconds.

    Three connections per node: subscriber, publisher, commands (presence). Raises ValueError
    for a bad URL or setting; connecting happens in :meth:`start`, which the hub calls when it
    starts serving.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        channel_prefix: str = "melody",
        max_queue: int = 10_000,
        max_batch: int = 512,
        timeout: float = 5.0,
        reconnect_min: float = 0.1,
        reconnect_max: float = 10.0,
        health_check_interval: float = 5.0,
        presence_interval: float = 1.0,
        presence_ttl: float = 15.0,
        report_interval: float = 10.0,
        **redis_options: Any,
    ) -> None:
        super().__init__()
        if not channel_prefix:
            raise ValueError("channel_prefix must not be empty")
        if max_queue < 1 or max_batch < 1:
            raise ValueError("max_queue and max_batch must be at least 1")
        for name, value in (("timeout", timeout), ("reconnect_min", reconnect_min),
                            ("health_check_interval", health_check_interval),
                            ("presence_interval", presence_interval)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if reconnect_max < reconnect_min:
            raise ValueError("reconnect_max must be >= reconnect_min")
        if presence_ttl <= presence_interval:
            raise ValueError("presence_ttl must be longer than presence_interval")
        if report_interval < 0:
            raise ValueError("report_interval must be >= 0")
        # Parsing the URL here makes a bad one fail at construction, not at serve time.
        pool = ConnectionPool.from_url(url, **redis_options)
        self._connection_class: Any = pool.connection_class
        self._connection_kwargs: dict[str, Any] = dict(pool.connection_kwargs)
        self.url = url
        #: Prefix of every channel and key this backplane uses.
        self.channel_prefix = channel_prefix
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._timeout = timeout
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        self._health_interval = health_check_interval
        self._presence_interval = presence_interval
        self._presence_ttl_ms = int(presence_ttl * 1000)
        self._report_interval = report_interval

        prefix = channel_prefix.encode()
        self._broadcast_channel = prefix + b":all"
        self._topic_prefix = prefix + b":topic:"
        self._nodes_key = prefix + b":nodes"
        self._pid = os.getpid()
        self._set_identity()

        self._hub: Melody | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._stopping = False
        self._up = False
        self._down_since: float | None = None
        self._ever_up = False

        # Channel -> topic (None for the broadcast channel) of everything this node wants.
        self._channel_topics: dict[bytes, str | None] = {self._broadcast_channel: None}
        # Subscription changes not yet sent to Redis (channel -> wanted), and what was sent.
        self._changes: dict[bytes, bool] = {}
        self._sent: set[bytes] = set()
        # Channels Redis confirmed (subscribe replies seen on the subscriber connection).
        self._confirmed: set[bytes] = set()
        self._control_wake: asyncio.Event | None = None
        self._last_rx = 0.0

        self._queue: deque[tuple[bytes, bytes, bytes]] = deque()
        self._write_wake: asyncio.Event | None = None
        self._in_flight = 0

        # Presence: topic -> count last written to Redis.
        self._written: dict[str, int] = {}
        self._command_lock: asyncio.Lock | None = None
        self._command_conn: Any = None

        self._last_report = float("-inf")
        self._suppressed = 0
        self._counters = dict.fromkeys(
            ("published", "publish_batches", "received", "ignored_own", "malformed",
             "dropped_outgoing", "lost_while_down", "outages", "reconnects",
             "connect_failures"), 0)

    def _set_identity(self) -> None:
        self._node_hex = self.node_id.hex().encode()
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
        """Remove this node's presence, unsubscribe and disconnect; publish nothing more."""
        if self._stopping:
            return
        self._stopping = True
        was_up = self._up
        self._up = False
        if was_up and self._command_conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._command([
                    (b"DEL", self._alive_key, self._topics_key),
                    (b"SREM", self._nodes_key, self._node_hex),
                ]), self._timeout)
        first = self._first
        if first is not None and not first.done():
            first.set_exception(BackplaneError("stopped before connecting"))
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._queue.clear()

    def publish(self, topic: str | None, binary: bool, payload: bytes) -> None:
        """Queue one message for the other nodes (``topic`` None: hub-wide). Never blocks.

        Dropped and counted when Redis is unreachable (``lost_while_down``) or the queue is
        full (``dropped_outgoing``).
        """
        if not self._up:
            self._counters["lost_while_down"] += 1
            return
        queue = self._queue
        if len(queue) >= self._max_queue:
            self._counters["dropped_outgoing"] += 1
            self._complain(BackplaneError(
                f"outgoing queue full ({self._max_queue} messages): message dropped"))
            return
        channel = self._broadcast_channel if topic is None else self._topic_channel(topic)
        queue.append((b"PUBLISH", channel, encode_envelope(self.node_id, binary, payload)))
        wake = self._write_wake
        if wake is not None and not wake.is_set():
            wake.set()

    def subscribe(self, topic: str) -> None:
        """Start receiving ``topic`` from Redis (this node has a subscriber for it now)."""
        channel = self._topic_channel(topic)
        self._channel_topics[channel] = topic
        self._change(channel, True)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic`` (this node's last subscriber left)."""
        channel = self._topic_channel(topic)
        if self._channel_topics.pop(channel, None) is not None:
            self._change(channel, False)

    def _change(self, channel: bytes, wanted: bool) -> None:
        self._changes[channel] = wanted
        wake = self._control_wake
        if self._up and wake is not None and not wake.is_set():
            wake.set()

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

        ``connected`` (0/1), ``channels`` (subscriptions Redis confirmed), ``queued``,
        ``published`` and ``publish_batches`` (round trips), ``received`` (from other nodes),
        ``ignored_own`` (this node's echoes), ``malformed``, ``dropped_outgoing`` (queue
        full), ``lost_while_down`` (published while Redis was unreachable, or queued when
        the connection broke), ``outages`` (connections lost), ``reconnects`` (connections
        made after an outage or a failed start), ``connect_failures`` (attempts that failed).
        """
        stats = dict(self._counters)
        stats["connected"] = int(self._up)
        stats["channels"] = len(self._confirmed)
        stats["queued"] = len(self._queue)
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

    def _backoff(self, attempt: int) -> float:
        delay = min(self._reconnect_max, self._reconnect_min * 2 ** min(attempt, 30))
        return random.uniform(delay / 2, delay)

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
        await subscriber.send_command(b"SUBSCRIBE", self._broadcast_channel)
        reply = await subscriber.read_response(timeout=self._timeout)
        if not (isinstance(reply, list) and reply[:2] == [b"subscribe", self._broadcast_channel]):
            raise BackplaneError(f"unexpected reply to SUBSCRIBE: {reply!r}")
        publisher = self._connection("pub", self._timeout)
        connections.append(publisher)
        await publisher.connect()
        commands = self._connection("cmd", self._timeout)
        connections.append(commands)
        await commands.connect()
        return subscriber, publisher, commands

    def _went_up(self, commands: Any) -> None:
        loop = self._loop
        assert loop is not None and self._control_wake is not None
        self._command_conn = commands
        self._confirmed = {self._broadcast_channel}
        self._sent = {self._broadcast_channel}
        # Resubscribe everything wanted; the topics' presence is rewritten in full.
        self._changes = dict.fromkeys(self._channel_topics, True)
        self._written = {}
        self._last_rx = loop.time()
        self._up = True
        self._control_wake.set()
        if self._down_since is not None:
            self._counters["reconnects"] += 1
            logger.warning("redis backplane reconnected to %s after %.1fs (%d messages lost "
                           "while down so far)", self._where(), loop.time() - self._down_since,
                           self._counters["lost_while_down"])
            self._down_since = None
        elif not self._ever_up:
            logger.info("redis backplane connected to %s as node %s", self._where(),
                        self._node_hex.decode())
        self._ever_up = True
        first = self._first
        if first is not None and not first.done():
            first.set_result(None)

    def _went_down(self, error: BaseException) -> None:
        loop = self._loop
        assert loop is not None
        self._up = False
        self._down_since = loop.time()
        self._counters["outages"] += 1
        lost = len(self._queue) + self._in_flight
        self._counters["lost_while_down"] += lost
        self._queue.clear()
        self._in_flight = 0
        self._confirmed = set()
        if self._stopping:
            return
        logger.warning("redis backplane lost %s: %s; serving local sessions only until it is "
                       "back (%d queued messages lost)", self._where(), error, lost)
        self._complain(BackplaneError(f"redis at {self._where()} unreachable: {error}"), error)

    def _connect_failed(self, error: BaseException, attempt: int) -> None:
        loop = self._loop
        assert loop is not None
        self._counters["connect_failures"] += 1
        logger.debug("redis backplane: connecting to %s failed (attempt %d): %s",
                     self._where(), attempt + 1, error)
        first = self._first
        if first is not None and not first.done():
            # start() raises this one to the hub, which reports it: not twice.
            first.set_exception(error)
            self._down_since = self._last_report = loop.time()
            return
        self._complain(BackplaneError(
            f"cannot reach redis at {self._where()} (attempt {attempt + 1}): {error}"), error)

    def _complain(self, error: BackplaneError, cause: BaseException | None = None) -> None:
        # Report to handle_error, at most once per report_interval (an outage retries often).
        loop = self._loop
        hub = self._hub
        if loop is None or hub is None or self._stopping:
            return
        now = loop.time()
        if now - self._last_report < self._report_interval:
            self._suppressed += 1
            return
        self._last_report = now
        if self._suppressed:
            error.args = (f"{error.args[0]} ({self._suppressed} more since the last report)",)
            self._suppressed = 0
        if cause is not None:
            error.__cause__ = cause
        hub._report(None, error)

    async def _serve(self, subscriber: Any, publisher: Any, commands: Any) -> None:
        loop = self._loop
        assert loop is not None
        tasks = [
            loop.create_task(self._read(subscriber)),
            loop.create_task(self._control(subscriber)),
            loop.create_task(self._write(publisher)),
            loop.create_task(self._refresh()),
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
        hub = self._hub
        assert loop is not None and hub is not None
        read = subscriber.read_response
        topics = self._channel_topics
        node_id = self.node_id
        counters = self._counters
        deliver = hub._deliver_remote
        while True:
            reply = await read()
            self._last_rx = loop.time()
            kind = reply[0]
            if kind == b"message":
                try:
                    node, binary, payload = decode_envelope(reply[2])
                except ValueError as exc:
                    counters["malformed"] += 1
                    self._complain(BackplaneError(f"malformed message ignored: {exc}"))
                    continue
                if node == node_id:
                    counters["ignored_own"] += 1
                    continue
                channel = reply[1]
                if channel not in topics:
                    continue  # a topic unsubscribed while its messages were on the way
                counters["received"] += 1
                try:
                    deliver(topics[channel], binary, payload)
                except Exception as exc:
                    hub._report(None, exc)
            elif kind == b"subscribe":
                self._confirmed.add(reply[1])
            elif kind == b"unsubscribe":
                self._confirmed.discard(reply[1])

    async def _control(self, subscriber: Any) -> None:
        # The only writer on the subscriber connection: subscription changes and PINGs. Any
        # reply between two PINGs proves the connection alive; none means Redis hangs.
        loop = self._loop
        wake = self._control_wake
        assert loop is not None and wake is not None
        next_ping = loop.time() + self._health_interval
        pinged_at: float | None = None
        while True:
            if self._changes:
                changes, self._changes = self._changes, {}
                sent = self._sent
                add = [c for c, want in changes.items() if want and c not in sent]
                remove = [c for c, want in changes.items() if not want and c in sent]
                for channels, command in ((add, b"SUBSCRIBE"), (remove, b"UNSUBSCRIBE")):
                    for i in range(0, len(channels), _SUBSCRIBE_CHUNK):
                        await subscriber.send_command(
                            command, *channels[i:i + _SUBSCRIBE_CHUNK], check_health=False)
                sent.update(add)
                sent.difference_update(remove)
            now = loop.time()
            if now >= next_ping:
                if pinged_at is not None and self._last_rx < pinged_at:
                    raise BackplaneError(
                        f"no reply to PING within {self._health_interval}s: redis hangs")
                pinged_at = now
                await subscriber.send_command(b"PING", check_health=False)
                next_ping = now + self._health_interval
            wake.clear()
            if not self._changes:
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), max(next_ping - now, 0.0))

    async def _write(self, publisher: Any) -> None:
        queue = self._queue
        wake = self._write_wake
        assert wake is not None
        counters = self._counters
        pack = publisher.pack_commands
        send = publisher.send_packed_command
        read = publisher.read_response
        while True:
            if not queue:
                wake.clear()
                await wake.wait()
                continue
            count = min(len(queue), self._max_batch)
            batch = [queue.popleft() for _ in range(count)]
            self._in_flight = count
            await send(pack(batch), check_health=False)
            for _ in range(count):
                await read()
            self._in_flight = 0
            counters["published"] += count
            counters["publish_batches"] += 1

    async def _refresh(self) -> None:
        # Presence: liveness key, node set, and the local counts that changed.
        hub = self._hub
        assert hub is not None
        ttl = self._presence_ttl_ms
        while True:
            # One pass over the local topics (a dict lookup each): only changes are written.
            topics = hub._topics
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
            commands.append((b"PEXPIRE", self._topics_key, ttl))
            replies = await self._command(commands)
            if replies[-1] == 0:
                written.clear()  # the hash is gone (expired or flushed): rewrite it in full
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

    def __repr__(self) -> str:
        state = "connected" if self._up else "disconnected"
        return f"<RedisBackplane {self._where()} prefix={self.channel_prefix!r} {state}>"


async def _close_all(connections: list[Any]) -> None:
    for conn in connections:
        with contextlib.suppress(Exception):
            await conn.disconnect(nowait=True)
