"""A backplane over NATS: hubs in several processes or machines share one logical hub.

::

    hub = melody.Melody(backplane=melody.NatsBackplane("nats://127.0.0.1:4222"))

The same contract as ``RedisBackplane`` (see :mod:`melody.backplane`), on a ``nats-server``
(2.9 or later) with JetStream enabled (``nats-server -js``), through the ``nats-py`` client
(``pip install 'melody[nats]'``). Users who run NATS need no Redis.

Subjects (see ``melody.backplane.nats_subjects``; ``P`` is ``channel_prefix``)
    ``P.all`` carries hub-wide broadcasts, ``P.user`` the messages and disconnects for one
    user's sessions (every node subscribes both), ``P.t.<token>`` one topic's messages, where
    the token is the topic's hex (NATS subjects forbid spaces, ``.`` and wildcards, which
    topics may hold). A node subscribes a topic's subject only while it has a local
    subscriber: NATS routes by interest, so a topic's messages reach only the nodes that
    want them, at no cost to the others.

What NATS gives that Redis does not
    ``no_echo``: the server never sends a node its own messages, so they cost nothing here
    (``ignored_own`` stays 0 unless a server ignores the option). History offsets are
    JetStream stream sequences, numbered by the server (``melody.backplane.nats_streams``);
    presence and node counts expire by JetStream's ``max_age``, with no node clock involved
    (``melody.backplane.nats_presence``).

What it does not
    Core NATS is at-most-once, like Redis pub/sub: a message reaches the nodes subscribed
    when the server routes it. Order is kept per subject (per topic, and for broadcasts),
    not across subjects: nats-py hands each subscription's messages to its own task.
    Each topic with history is a JetStream stream, and a node following it
    holds one consumer per topic: fine for thousands of such topics, not for millions;
    streams are not deleted when a topic goes quiet (use a new prefix to start over).

While NATS is unreachable
    As with Redis: the hub keeps serving its own sessions; what this node publishes meanwhile
    is lost (``lost_while_down``, with what was queued when the connection broke), and so is
    what others publish while this node is away, except publications with history: JetStream
    keeps them, and after the reconnect this node's followers resume at the offset they
    expect next (same epoch), so its sessions get them late but in order. The outage is
    logged, reported to ``handle_error(None, BackplaneError)`` at most once per
    ``report_interval``, counted (``outages``, ``connect_failures``); the backplane
    reconnects with exponential backoff and jitter from ``reconnect_min`` to
    ``reconnect_max`` (nats-py's own reconnection is off: this class resubscribes and
    rewrites presence itself, ``reconnects``). A server that hangs is detected by nats-py's
    PING every ``health_check_interval`` seconds (two unanswered: the connection is closed).

Presence staleness
    ``cluster_topic_len`` adds this node's exact count to the counts the other nodes last
    wrote (every ``presence_interval``, the changed ones); a node that dies stops counting
    ``presence_ttl`` seconds after its last write at most. A node that stops writes 0 for its
    topics before it goes. Raises ``BackplaneError`` while NATS is unreachable.

Publishing never blocks
    As ``RedisBackplane``: a queue of at most ``max_queue`` messages and ``max_queue_bytes``
    bytes, sent by one task in batches of ``max_batch`` messages and ``max_batch_bytes`` bytes
    then one PING round trip; what does not fit is dropped and counted with its reason
    (``dropped_outgoing_queue_full``, ``dropped_outgoing_queue_bytes``,
    ``dropped_outgoing_too_large``: over ``max_message_bytes`` or the server's
    ``max_payload``, 1 MiB by default).

Topic options
    What ``configure_topic`` set is written to the stream ``P_options`` when the backplane
    connects and when ``configure_topic`` is called (``melody.backplane.nats_options``):
    ``melody.NatsPublisher`` reads it to know which topics keep history.

Subscription churn
    ``subscribe``/``unsubscribe`` only mark a subject; one task sends the net changes, then
    one PING, and sends nothing more until its PONG (``subscribe_batches``). A subject whose
    last local subscriber leaves stays subscribed ``unsubscribe_linger`` seconds (at most
    ``max_lingering`` of them), so a session that joins and leaves in a loop costs one SUB.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from melody._hubstate import state_of
from melody.backplane.base import (
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
from melody.backplane.broker import BrokerLink
from melody.backplane.nats_options import write_topic_options
from melody.backplane.nats_presence import NatsPresence
from melody.backplane.nats_streams import NatsStreams
from melody.backplane.nats_subjects import NatsNames
from melody.delivery.history import HistoryPage
from melody.delivery.options import TopicOptions
from melody.errors import BackplaneError
from melody.limits import MAX_BUFFER_BYTES, MAX_COUNT, check_int, check_seconds

try:
    import nats
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "melody.NatsBackplane needs the nats-py package: pip install 'melody[nats]'") from exc

if TYPE_CHECKING:
    from melody._hubstate import HubState
    from melody.hub import Melody

__all__ = ["NatsBackplane", "BackplaneError"]

logger = logging.getLogger("melody.backplane")

_T = TypeVar("_T")

# nats-server's default max_payload; the server's own figure is used once connected.
_DEFAULT_MAX_PAYLOAD = 1 << 20

_DROP_REASONS = ("dropped_outgoing_queue_full", "dropped_outgoing_queue_bytes",
                 "dropped_outgoing_too_large")


class NatsBackplane(BrokerLink, Backplane):
    """A :class:`~melody.backplane.Backplane` over NATS and JetStream (see the module
    docstring).

    ``url`` is a NATS URL (``nats://[user:password@]host:port``, ``tls://`` for TLS; a list
    of several for a cluster); ``nats_options`` go to ``nats.connect`` (for example
    ``user_credentials=`` or ``tls=``). The settings mean what they mean for
    ``RedisBackplane``; durations are seconds:

    - ``channel_prefix``: namespace of the subjects and streams (letters, digits, ``-``,
      ``_``); nodes sharing it form one hub.
    - ``max_queue`` / ``max_queue_bytes`` / ``max_message_bytes`` / ``max_batch`` /
      ``max_batch_bytes``: the outgoing queue's bounds and batches (see "Publishing never
      blocks").
    - ``unsubscribe_linger`` / ``max_lingering``: see "Subscription churn".
    - ``timeout``: to connect, and for a reply (JetStream API, PING) before the server
      counts as unreachable.
    - ``reconnect_min`` / ``reconnect_max``: the reconnect delay's bounds.
    - ``health_check_interval``: nats-py's PING period, and the idle heartbeat of the
      consumers that follow topics with history.
    - ``presence_interval`` / ``presence_ttl``: how often this node writes its counts and
      presence entries / how long they live after the last write (the presence stream's
      ``max_age``; the first node to make the stream sets it for the prefix).
    - ``history_storage``: ``"file"`` (history survives a server restart) or ``"memory"``.
    - ``report_interval``: at most one ``handle_error`` report per this many seconds.

    One connection per node. Raises ValueError for a bad setting; connecting happens in
    :meth:`start`, which the hub calls when it starts serving.
    """

    _broker_name = "nats"

    def _interest_key(self, topic: str) -> str:
        return self.names.topic(topic)

    def _is_subscribed(self, key: Any) -> bool:
        return key in self._subs

    def _message_limit(self) -> tuple[int, str]:
        if self._max_payload < self.max_message_bytes:
            return self._max_payload, "the server's max_payload"
        return self.max_message_bytes, "max_message_bytes"


    #: Topics configured with history are numbered and stored by JetStream.
    stores_history = True
    #: Topics configured with presence are tracked in a JetStream stream.
    keeps_presence = True

    def __init__(
        self,
        url: str | list[str] = "nats://127.0.0.1:4222",
        *,
        channel_prefix: str = "melody",
        max_queue: int = 10_000,
        max_queue_bytes: int = 8 << 20,
        max_message_bytes: int = 1 << 20,
        max_batch: int = 512,
        max_batch_bytes: int = 1 << 20,
        unsubscribe_linger: float = 1.0,
        max_lingering: int = 10_000,
        timeout: float = 5.0,
        reconnect_min: float = 0.1,
        reconnect_max: float = 10.0,
        health_check_interval: float = 5.0,
        presence_interval: float = 1.0,
        presence_ttl: float = 15.0,
        history_storage: str = "file",
        report_interval: float = 10.0,
        **nats_options: Any,
    ) -> None:
        super().__init__()
        self.names = names = NatsNames(channel_prefix)
        check_int("max_queue", max_queue, 1, MAX_COUNT)
        check_int("max_queue_bytes", max_queue_bytes, 64 << 10, MAX_BUFFER_BYTES)
        check_int("max_message_bytes", max_message_bytes, 1 << 10, max_queue_bytes)
        check_int("max_batch", max_batch, 1, MAX_COUNT)
        check_int("max_batch_bytes", max_batch_bytes, 1 << 10, 64 << 20)
        check_int("max_lingering", max_lingering, 0, MAX_COUNT)
        check_seconds("unsubscribe_linger", unsubscribe_linger, allow_zero=True)
        for name, value in (("timeout", timeout), ("reconnect_min", reconnect_min),
                            ("health_check_interval", health_check_interval),
                            ("presence_interval", presence_interval)):
            check_seconds(name, value)
        check_seconds("reconnect_max", reconnect_max, low=reconnect_min, allow_zero=True)
        check_seconds("presence_ttl", presence_ttl, low=presence_interval)
        check_seconds("report_interval", report_interval, allow_zero=True)
        if history_storage not in ("file", "memory"):
            raise ValueError("history_storage must be 'file' or 'memory'")
        urls = [url] if isinstance(url, str) else list(url)
        if not urls or not all(isinstance(u, str) and "://" in u for u in urls):
            raise ValueError(f"not a NATS URL: {url!r}")
        self.url = url
        self.channel_prefix = channel_prefix
        self.max_queue_bytes = max_queue_bytes
        self.max_message_bytes = max_message_bytes
        self._urls = urls
        self._nats_options = nats_options
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._max_batch_bytes = max_batch_bytes
        self._linger = float(unsubscribe_linger)
        self._max_lingering = max_lingering
        self._timeout = float(timeout)
        self._reconnect_min = float(reconnect_min)
        self._reconnect_max = float(reconnect_max)
        self._health_interval = float(health_check_interval)
        self._presence_interval = float(presence_interval)
        self._presence_ttl = float(presence_ttl)
        self._report_interval = float(report_interval)
        self._streams: NatsStreams = NatsStreams(
            names, storage=history_storage, max_queue=max_queue, max_batch=max_batch,
            timeout=timeout, heartbeat=health_check_interval)
        self._presence: NatsPresence = NatsPresence(
            names, ttl=presence_ttl, max_queue=max_queue, max_batch=max_batch, timeout=timeout)
        self._pid = os.getpid()

        self._hub: Melody | None = None
        self._state: HubState | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._nc: Any = None
        self._stopping = False
        self._up = False
        self._down_since: float | None = None
        self._ever_up = False
        self._max_payload = _DEFAULT_MAX_PAYLOAD

        # Subject -> topic of every topic this node wants; lingering subjects (deadline, in
        # the order left); subscriptions the server has (subject -> nats-py Subscription);
        # subjects whose wanted state differs from it; subjects the server confirmed.
        self._wanted: dict[str, str | None] = {}
        self._lingering: dict[str, float] = {}
        self._subs: dict[str, Any] = {}
        # Subject -> topic of the topic subscriptions the server has (to unfollow their
        # streams when they go).
        self._sub_topics: dict[str, str] = {}
        self._dirty: set[str] = set()
        self._confirmed: set[str] = set()
        self._confirm_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._control_wake: asyncio.Event | None = None

        self._queue: deque[tuple[str, bytes]] = deque()
        self._queued_bytes = 0
        self._in_flight = 0
        self._in_flight_bytes = 0
        self._write_wake: asyncio.Event | None = None

        # Topic -> count last written; when all were last written (loop time).
        self._written: dict[str, int] = {}
        self._written_all = float("-inf")

        self._last_report = float("-inf")
        self._suppressed = 0
        self._counters = dict.fromkeys(
            ("published", "publish_batches", "received", "ignored_own", "ignored_unwanted",
             "malformed", "dropped_outgoing", *_DROP_REASONS, "lost_while_down",
             "subscribe_batches", "subscribed_channels", "unsubscribed_channels",
             "subscribe_coalesced", "linger_resumed", "linger_expired", "linger_evicted",
             "outages", "reconnects", "connect_failures"), 0)

    # -- the contract ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while connected to NATS and subscribed to the hub-wide subject."""
        return self._up

    @property
    def started(self) -> bool:
        """True once :meth:`start` was called, whether or not NATS has been reached yet."""
        return self._task is not None

    async def start(self, hub: Melody) -> None:
        """Connect, subscribe to the hub-wide and user subjects, begin delivering into
        ``hub``. Returns once subscribed; if the first attempt fails it raises
        ``BackplaneError`` and keeps trying in the background. RuntimeError when called
        twice."""
        if self._task is not None:
            raise RuntimeError("NatsBackplane.start called twice")
        if os.getpid() != self._pid:
            self._pid = os.getpid()  # made before a fork: a node id of this process's own
            self.node_id = new_node_id()
        loop = asyncio.get_running_loop()
        self._hub = hub
        self._state = state_of(hub)
        self._loop = loop
        self._control_wake = asyncio.Event()
        self._write_wake = asyncio.Event()
        self._first = loop.create_future()
        self._task = loop.create_task(self._supervise())
        try:
            await self._first
        except Exception as exc:
            if self._stopping:
                return
            raise BackplaneError(f"cannot reach nats at {self._where()}: {exc} (retrying in "
                                 "the background)") from exc

    async def stop(self) -> None:
        """Write 0 for this node's counts, then disconnect; publish nothing more.
        Takes at most ``timeout`` seconds (half of it for the goodbye), whatever the broker
        does: a hub's shutdown must not hang on it."""
        if self._stopping:
            return
        self._stopping = True
        deadline = asyncio.get_running_loop().time() + self._timeout
        was_up, self._up = self._up, False
        if was_up and self._nc is not None:
            node = self.node_id.hex()
            goodbye = [(self.names.count(node, topic), b"0") for topic in self._written]
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._presence.publish_now(goodbye), self._timeout / 2)
        first = self._first
        if first is not None and not first.done():
            first.set_exception(BackplaneError("stopped before connecting"))
        await self._end_task(deadline)
        self._queue.clear()
        self._queued_bytes = 0

    def publish(self, topic: str | None, binary: bool, payload: bytes) -> None:
        """Queue one message for the other nodes (``topic`` None: hub-wide). Never blocks;
        dropped and counted as ``RedisBackplane.publish`` is."""
        size = ENVELOPE_OVERHEAD + len(payload)
        if not self._admit(size):
            return
        subject = self.names.broadcast if topic is None else self.names.topic(topic)
        self._push(subject, encode_envelope(self.node_id, binary, payload))

    def send_to_user(self, user: str, binary: bool, payload: bytes) -> None:
        """Queue a message for ``user``'s sessions on the other nodes (``P.user``)."""
        envelope = encode_user_envelope(self.node_id, user, binary, payload)
        if self._admit(len(envelope)):
            self._push(self.names.user, envelope)

    def disconnect_user(self, user: str, code: int, reason: str) -> None:
        """Queue the closing of ``user``'s sessions on the other nodes (``P.user``)."""
        envelope = encode_disconnect_envelope(self.node_id, user, code, reason)
        if self._admit(len(envelope)):
            self._push(self.names.user, envelope)

    def _push(self, subject: str, envelope: bytes) -> None:
        self._queue.append((subject, envelope))
        self._queued_bytes += len(envelope)
        wake = self._write_wake
        if wake is not None and not wake.is_set():
            wake.set()

    # -- topics with history (melody.delivery.streams' HistoryStore) ------------------------

    def publish_stream(self, topic: str, data: str, options: TopicOptions) -> None:
        """Queue one publication of a topic with history: JetStream numbers and stores it,
        and every node following the topic delivers it (this one too). Never blocks.
        Raises ``BackplaneError`` when NATS is unreachable or the queue is full."""
        if not self._up:
            self._counters["lost_while_down"] += 1
            raise BackplaneError(f"nats at {self._where()} unreachable: publication to "
                                 f"{topic!r} not stored")
        if self._streams.full():
            self._counters["dropped_outgoing"] += 1
            self._counters["dropped_outgoing_queue_full"] += 1
            raise BackplaneError(f"outgoing history queue full ({self._max_queue} "
                                 "publications): publication not stored")
        size = len(data.encode("utf-8"))
        limit = min(self.max_message_bytes, self._max_payload)
        if size > limit:
            # The server would refuse it (max_payload); nats-py raises before sending.
            self._counters["dropped_outgoing"] += 1
            self._counters["dropped_outgoing_too_large"] += 1
            raise BackplaneError(f"publication of {size} bytes over the limit of {limit} "
                                 "bytes: not stored")
        self._streams.add(topic, data, options)

    async def read_stream(self, topic: str, since: int | None, limit: int | None,
                          options: TopicOptions) -> HistoryPage:
        """The history of ``topic`` after ``since`` (None: the position only). Raises
        ``BackplaneError`` when NATS is unreachable."""
        self._require_up()
        return await self._guard(self._streams.read(topic, since, limit, options))

    async def wait_subscribed(self, topic: str) -> None:
        """Return once the server has this node's subscription to ``topic`` (and, for a
        topic with history, its consumer): from then on every message and publication of
        it reaches this node. Raises ``BackplaneError`` when NATS is unreachable or does not
        confirm within ``timeout``."""
        subject = self.names.topic(topic)
        if subject in self._confirmed:
            options = self._history_options(topic)
            if options is not None and not self._streams.follows(topic):
                # Subscribed before the topic was configured with history: follow it now.
                await self._guard(self._streams.follow(topic, options))
            return
        self._require_up()
        assert self._loop is not None
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._confirm_waiters.setdefault(subject, []).append(waiter)
        try:
            async with asyncio.timeout(self._timeout):
                await waiter
        except TimeoutError:
            raise BackplaneError(f"nats did not confirm the subscription to {topic!r} "
                                 f"within {self._timeout} s") from None
        finally:
            waiters = self._confirm_waiters.get(subject)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._confirm_waiters[subject]

    async def wait_caught_up(self) -> None:
        """Return once this node has delivered every publication stored before the history
        reads made so far (see ``nats_streams``). Raises ``BackplaneError`` when NATS goes
        away or does not deliver within ``timeout``."""
        self._require_up()
        await self._streams.wait_caught_up()

    # -- topic options, shared with publishers (melody.NatsPublisher) -------------------------

    def share_topic_options(self, pattern: str, options: TopicOptions) -> None:
        """Write ``pattern``'s options to the options stream (``hub.configure_topic`` calls
        it; see ``melody.backplane.nats_options``). Never blocks: written in a task when
        connected, else with the whole table when the connection is made."""
        if not self._up or self._loop is None or self._state is None:
            return
        self._state.spawn(self._share_options({pattern: options}), self._loop)
        if options.history:
            # Topics subscribed here before they kept history: their publications now go to
            # a stream, which this node must follow to deliver them.
            for topic in set(self._sub_topics.values()):
                if (self._history_options(topic) is not None
                        and not self._streams.follows(topic)):
                    self._state.spawn(self._follow(topic), self._loop)

    async def _follow(self, topic: str) -> None:
        options = self._history_options(topic)
        if options is None:
            return
        try:
            await self._streams.follow(topic, options)
        except Exception as exc:
            self._complain(BackplaneError(f"cannot follow the history of {topic!r}: {exc}"),
                           exc)

    async def _share_options(self, patterns: dict[str, TopicOptions]) -> None:
        try:
            await write_topic_options(self._nc, self.names, patterns, self._timeout)
        except Exception as exc:
            self._complain(BackplaneError(f"writing the topic options failed: {exc}"), exc)

    # -- presence (melody.delivery.presence's PresenceStore) -----------------------------------

    def presence_add(self, topic: str, session_id: str, info: str) -> None:
        """Write a session's presence entry (now, and at every refresh while it stays)."""
        if self._up and not self._presence.add(topic, session_id, info):
            self._complain(BackplaneError("presence queue full: entry written at the next "
                                          "refresh"))

    def presence_remove(self, topic: str, session_id: str) -> None:
        """Delete a session's presence entry (if NATS is down, it expires by itself)."""
        if self._up and not self._presence.remove(topic, session_id):
            self._complain(BackplaneError("presence queue full: entry left to expire"))

    async def presence_read(self, topic: str) -> dict[str, str]:
        """The live presence entries of ``topic`` on every node. Raises ``BackplaneError``
        when NATS is unreachable."""
        self._require_up()
        return await self._guard(self._presence.read(topic))

    async def cluster_topic_len(self, topic: str) -> int:
        """Subscribers of ``topic`` on all live nodes: this node's exact count plus the
        counts the others last wrote. Raises ``BackplaneError`` while NATS is unreachable."""
        hub = self._hub
        local = hub.topic_len(topic) if hub is not None else 0
        if not self._up:
            raise BackplaneError("nats is unreachable: cluster-wide counts are unavailable")
        others = await self._guard(self._presence.counts(topic, self.node_id.hex()))
        return local + others

    async def _guard(self, work: Awaitable[_T]) -> _T:
        # Await a request; a failure of the connection or of JetStream becomes
        # BackplaneError, as the contract says.
        try:
            return await work
        except (BackplaneError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise BackplaneError(f"nats at {self._where()}: {exc}") from exc

    def _require_up(self) -> None:
        if not self._up or self._loop is None:
            raise BackplaneError(f"nats at {self._where()} unreachable")

    # -- subscriptions ----------------------------------------------------------------------

    def _history_options(self, topic: str) -> TopicOptions | None:
        state = self._state
        return state.streams.options(topic) if state is not None else None

    async def _control(self, nc: Any) -> None:
        # The only task that changes subscriptions: the net changes, then one PING; nothing
        # more until its PONG. Topics with history get their stream followed too.
        loop = self._loop
        wake = self._control_wake
        assert loop is not None and wake is not None
        counters = self._counters
        while True:
            wake.clear()
            now = loop.time()
            while self._lingering:
                subject, deadline = next(iter(self._lingering.items()))
                if deadline > now:
                    break
                del self._lingering[subject]
                counters["linger_expired"] += 1
                self._mark(subject)
            if self._dirty:
                dirty, self._dirty = self._dirty, set()
                added: list[str] = []
                for subject in dirty:
                    topic = self._wanted.get(subject)
                    wanted = topic is not None or subject in self._lingering
                    if wanted and subject not in self._subs:
                        self._subs[subject] = await nc.subscribe(subject, cb=self._on_topic)
                        if topic is not None:
                            self._sub_topics[subject] = topic
                        added.append(subject)
                        counters["subscribed_channels"] += 1
                    elif not wanted and subject in self._subs:
                        # Unconfirmed before the first await: a join meanwhile must wait for
                        # the subscription made again, not take this one for live.
                        sub = self._subs.pop(subject)
                        self._confirmed.discard(subject)
                        gone = self._sub_topics.pop(subject, None)
                        counters["unsubscribed_channels"] += 1
                        await sub.unsubscribe()
                        if gone is not None:
                            await self._streams.unfollow(gone)
                counters["subscribe_batches"] += 1
                for subject in added:
                    topic = self._wanted.get(subject)
                    options = self._history_options(topic) if topic is not None else None
                    if topic is not None and options is not None:
                        try:
                            await self._streams.follow(topic, options)
                        except Exception as exc:
                            self._fail_waiters(subject, exc)
                            self._complain(BackplaneError(
                                f"cannot follow the history of {topic!r}: {exc}"), exc)
                            continue
                await nc.flush(timeout=self._timeout)
                for subject in added:
                    if subject in self._subs:
                        self._confirm(subject)
            if self._dirty:
                continue
            delay = (next(iter(self._lingering.values())) - loop.time()
                     if self._lingering else None)
            if delay is None:
                await wake.wait()
            elif delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await wake.wait()

    def _confirm(self, subject: str) -> None:
        self._confirmed.add(subject)
        for waiter in self._confirm_waiters.pop(subject, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _fail_waiters(self, subject: str | None, error: BaseException) -> None:
        if subject is None:
            waiting, self._confirm_waiters = self._confirm_waiters, {}
            pending = [w for ws in waiting.values() for w in ws]
        else:
            pending = self._confirm_waiters.pop(subject, [])
        for waiter in pending:
            if not waiter.done():
                waiter.set_exception(BackplaneError(f"nats: {error}"))

    # -- receiving ------------------------------------------------------------------------

    async def _on_topic(self, msg: Any) -> None:
        state = self._state
        assert state is not None
        data = msg.data
        counters = self._counters
        if is_from(data, self.node_id):
            counters["ignored_own"] += 1
            return
        topic = self._wanted.get(msg.subject)
        if topic is None:
            counters["ignored_unwanted"] += 1  # lingering, or left while on the way
            return
        self._deliver(state, topic, data)

    async def _on_broadcast(self, msg: Any) -> None:
        state = self._state
        assert state is not None
        if is_from(msg.data, self.node_id):
            self._counters["ignored_own"] += 1
            return
        self._deliver(state, None, msg.data)

    def _deliver(self, state: HubState, topic: str | None, data: bytes) -> None:
        counters = self._counters
        try:
            _, binary, payload = decode_envelope(data)
        except ValueError as exc:
            counters["malformed"] += 1
            self._complain(BackplaneError(f"malformed message ignored: {exc}"))
            return
        counters["received"] += 1
        try:
            state.deliver_remote(topic, binary, payload)
        except Exception as exc:
            state.report(None, exc)

    async def _on_user(self, msg: Any) -> None:
        state = self._state
        assert state is not None
        data = msg.data
        counters = self._counters
        if is_from(data, self.node_id):
            counters["ignored_own"] += 1
            return
        try:
            _, flags, user, payload = decode_user_envelope(data)
            if flags & FLAG_DISCONNECT:
                code = int.from_bytes(payload[:2], "big")
                reason = payload[2:].decode("utf-8")
            else:
                binary = bool(flags & 1)
                text: Any = payload if binary else payload.decode("utf-8")
        except ValueError as exc:
            counters["malformed"] += 1
            self._complain(BackplaneError(f"malformed user message ignored: {exc}"))
            return
        counters["received"] += 1
        try:
            if flags & FLAG_DISCONNECT:
                state.disconnect_user(user, code, reason)
            else:
                state.deliver_user(user, binary, text)
        except Exception as exc:
            state.report(None, exc)

    def _deliver_publication(self, topic: str, offset: int, data: str) -> None:
        state = self._state
        assert state is not None
        self._counters["received"] += 1
        try:
            state.streams.deliver(topic, offset, data)
        except Exception as exc:
            state.report(None, exc)

    # -- sending ----------------------------------------------------------------------------

    async def _write(self, nc: Any) -> None:
        queue = self._queue
        wake = self._write_wake
        assert wake is not None
        counters = self._counters
        max_batch, max_bytes = self._max_batch, self._max_batch_bytes
        while True:
            if not queue:
                wake.clear()
                await wake.wait()
                continue
            batch = [queue.popleft()]
            size = len(batch[0][1])
            while queue and len(batch) < max_batch:
                more = len(queue[0][1])
                if size + more > max_bytes:
                    break
                batch.append(queue.popleft())
                size += more
            self._in_flight = len(batch)
            self._in_flight_bytes = size
            for subject, envelope in batch:
                await nc.publish(subject, envelope)
            # One PING round trip per batch: the server has read the batch when it answers,
            # so a stalled server holds at most max_batch_bytes of this node's in nats-py.
            await nc.flush(timeout=self._timeout)
            self._in_flight = 0
            self._in_flight_bytes = 0
            self._queued_bytes -= size
            counters["published"] += len(batch)
            counters["publish_batches"] += 1

    async def _refresh(self, nc: Any) -> None:
        # Counts (the changed ones; all of them every third of presence_ttl), this node's
        # presence entries, and the followers whose heartbeats stopped.
        state = self._state
        loop = self._loop
        assert state is not None and loop is not None
        node = self.node_id.hex()
        names = self.names
        while True:
            now = loop.time()
            full = now - self._written_all >= self._presence_ttl / 3
            if full:
                self._written_all = now
            written = self._written
            messages: list[tuple[str, bytes]] = []
            topics = state.topics
            for topic, group in topics.items():
                count = len(group)
                if full or written.get(topic) != count:
                    written[topic] = count
                    messages.append((names.count(node, topic), b"%d" % count))
            for topic in [t for t in written if t not in topics]:
                del written[topic]
                messages.append((names.count(node, topic), b"0"))
            for topic, entries in state.presence.local().items():
                for sid, info in entries.items():
                    messages.append((names.presence(topic, sid), info.encode("utf-8")))
            await self._presence.publish_now(messages)
            for topic in self._streams.stale(loop.time()):
                options = self._history_options(topic)
                if options is not None:
                    try:
                        await self._streams.refollow(topic, options)
                    except Exception as exc:
                        self._complain(BackplaneError(
                            f"cannot follow the history of {topic!r}: {exc}"), exc)
            await asyncio.sleep(self._presence_interval)

    def stats(self) -> dict[str, int]:
        """Counters, as ``RedisBackplane.stats`` (the same names where they mean the same).

        Gauges: ``connected``, ``channels`` (subscriptions the server confirmed: the hub-wide
        subject and the topics), ``queued``, ``queued_bytes``, ``lingering``,
        ``pending_changes``, ``stream_queued``, ``stream_followers`` (topics whose stream
        this node follows). Counters: those of ``RedisBackplane`` (``publish_syncs`` aside),
        and ``stream_followers_made`` (consumers made, again after a reconnect or a lost
        heartbeat), ``stream_skipped`` (offsets gone from a stream before its follower
        delivered them), ``presence_writes``, ``presence_dropped``.
        """
        stats = dict(self._counters)
        stats.update(self._streams.counters)
        stats.update(self._presence.counters)
        stats["stream_queued"] = len(self._streams.queue)
        stats["stream_followers"] = len(self._streams.following())
        stats["connected"] = int(self._up)
        stats["channels"] = len(self._confirmed)
        stats["queued"] = len(self._queue) + self._in_flight
        stats["queued_bytes"] = self._queued_bytes
        stats["lingering"] = len(self._lingering)
        stats["pending_changes"] = len(self._dirty)
        return stats

    # -- connection lifetime --------------------------------------------------------------

    def _where(self) -> str:
        return ",".join(u.rpartition("@")[2] for u in self._urls)

    async def _connect(self, closed: asyncio.Event) -> Any:
        async def on_closed() -> None:
            closed.set()

        async def on_error(error: Exception) -> None:
            logger.debug("nats backplane: %s", error)

        options: dict[str, Any] = {
            "servers": self._urls, "allow_reconnect": False, "no_echo": True,
            # nats-py retries a refused first connect until each server failed more than
            # max_reconnect_attempts times (0 means forever): fail fast, this class retries.
            "max_reconnect_attempts": 1, "reconnect_time_wait": 0,
            "connect_timeout": self._timeout, "ping_interval": self._health_interval,
            "max_outstanding_pings": 2, "closed_cb": on_closed, "disconnected_cb": on_closed,
            "error_cb": on_error, "name": f"melody-{self.node_id.hex()[:12]}",
            "flush_timeout": self._timeout}
        options.update(self._nats_options)
        nc: Any = await nats.connect(**options)
        try:
            self._max_payload = int(nc.max_payload or _DEFAULT_MAX_PAYLOAD)
            subs = {self.names.broadcast: await nc.subscribe(self.names.broadcast,
                                                             cb=self._on_broadcast),
                    self.names.user: await nc.subscribe(self.names.user, cb=self._on_user)}
            await self._presence.bind(nc)
            # Before start() returns: a publisher reads the hubs' topics with history.
            state = self._state
            if state is not None:
                await write_topic_options(nc, self.names, state.streams.table.patterns(),
                                          self._timeout)
            await nc.flush(timeout=self._timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                await nc.close()
            raise
        self._subs = subs
        return nc

    async def _supervise(self) -> None:
        attempt = 0
        while not self._stopping:
            closed = asyncio.Event()
            try:
                nc = await self._connect(closed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._connect_failed(exc, attempt)
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                continue
            attempt = 0
            self._went_up(nc)
            try:
                await self._serve(nc, closed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._went_down(exc)
            finally:
                self._up = False
                self._nc = None
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), self._timeout)
            if not self._stopping:
                await asyncio.sleep(self._backoff(0))

    def _went_up(self, nc: Any) -> None:
        loop = self._loop
        assert loop is not None and self._control_wake is not None
        self._nc = nc
        self._streams.bind(nc, self._deliver_publication)
        self._streams.retain({t for t in self._wanted.values() if t is not None})
        self._confirmed = {self.names.broadcast}
        self._lingering.clear()
        self._dirty = set(self._wanted)
        self._written = {}
        self._written_all = float("-inf")
        self._announce_up()

    def _forget_connection(self, error: BaseException) -> None:
        self._fail_waiters(None, error)
        self._in_flight_bytes = 0
        self._subs = {}
        self._sub_topics = {}

    def _stream_failed(self, error: BaseException) -> None:
        self._complain(BackplaneError(f"storing a publication failed: {error}"), error)

    async def _serve(self, nc: Any, closed: asyncio.Event) -> None:
        loop = self._loop
        assert loop is not None
        tasks = [
            loop.create_task(closed.wait()),
            loop.create_task(self._control(nc)),
            loop.create_task(self._write(nc)),
            loop.create_task(self._refresh(nc)),
            loop.create_task(self._streams.write(self._stream_failed)),
            loop.create_task(self._presence.write()),
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

    def __repr__(self) -> str:
        state = "connected" if self._up else "disconnected"
        return f"<NatsBackplane {self._where()} prefix={self.channel_prefix!r} {state}>"
