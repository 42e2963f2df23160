"""Topic history on JetStream, for ``NatsBackplane``: one stream per topic.

Offsets
    Each topic with history has a JetStream stream of its own, ``P_h_<digest>`` (see
    ``nats_subjects``), holding the one subject ``P.h.<token>``. A publication's offset *is*
    its stream sequence: JetStream numbers a stream's messages 1, 2, 3, ... as it stores
    them, one after the other, whichever node publishes, so offsets are strictly increasing
    and contiguous per topic with no counter of melody's own and no compare-and-set: the
    store numbers. (One stream for all topics would number them all together, leaving gaps
    in every topic's offsets.) The stream is made with ``max_msgs = history_size`` and,
    with ``history_ttl``, ``max_age = history_ttl``: JetStream trims and expires; the
    sequence keeps counting when entries go, so offsets never restart within an epoch. The
    limits are those of the node that made the stream; a later ``configure_topic`` with other
    limits leaves an existing stream as it is.

Epochs
    The stream's ``description`` holds its epoch (``melody epoch=<random>``), chosen by the
    node that creates the stream (the first publish, history read or subscription of the
    topic). A stream that is gone (a server restarted without its store, memory storage, a
    stream deleted by hand) is made again with another epoch and offsets from 1: clients
    holding the old epoch learn they cannot recover. Nodes racing to create it agree: the
    server keeps the first stream and refuses the others (a different description), which
    then read the one kept.

Delivery
    Publications are published to ``P.h.<token>`` with a reply subject: the server stores
    them and answers with the sequence. No node delivers them from its own publish: every
    node with subscribers of the topic, the publishing one included, *follows* the stream
    with an ephemeral push consumer (no acks, an idle heartbeat) and delivers in sequence
    order, as the Redis engine delivers in the order Redis published. A follower starts at
    the stream's last sequence plus one when it is made; ``wait_subscribed`` returns once it
    exists, so every later publication reaches the node. ``wait_caught_up`` waits until the
    followers have delivered up to the last sequence of every history page read so far (a
    publication stored before the read may still be on its way): the join in
    ``melody.delivery.streams`` then hands over page and live stream with no gap and no
    duplicate. A follower whose heartbeats stop (a stream deleted under it, a consumer lost)
    is made again from the next sequence it expects (from 1 when the stream was made again:
    another epoch); after a reconnect every follower is.

Reads
    A history read asks the stream's state (first and last sequence, epoch), then fetches
    the page with an ephemeral pull consumer (one batch request, ``no_wait``), then deletes
    it: four round trips, whatever the page's size.

Publishing never waits: publications queue (at most ``max_queue``; past it the caller gets
``BackplaneError``) and one task sends up to ``max_batch`` per round trip, then reads the
server's acknowledgements.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from typing import Any

from melody.backplane.nats_subjects import NatsNames
from melody.delivery.history import HistoryPage, StoredPublication, StreamPosition, new_epoch
from melody.delivery.options import TopicOptions
from melody.errors import BackplaneError

try:
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
    from nats.js.errors import APIError, BadRequestError, NotFoundError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "melody.NatsBackplane needs the nats-py package: pip install 'melody[nats]'") from exc

__all__ = ["NatsStreams", "ack_error", "ensure_stream", "fetch"]

_EPOCH_TAG = "melody epoch="
# JetStream's error code for "a stream of that name exists with another configuration".
_STREAM_NAME_IN_USE = 10058

Deliver = Callable[[str, int, str], None]


def _status(msg: Any) -> str | None:
    # The status of a control message (heartbeat, "no messages", "no responders"), else None.
    headers = msg.headers
    if not headers:
        return None
    status: str | None = headers.get("Status")
    return status


async def fetch(nc: Any, js: Any, stream: str, timeout: float, batch: int | None = None,
                **config: Any) -> list[Any]:
    """The messages of ``stream`` an ephemeral pull consumer made with ``config`` holds
    when made (at most ``batch``), oldest first: one consumer, batch requests until the
    server says it has no more, then the consumer is deleted. Raises ``BackplaneError`` when
    the server does not answer within ``timeout``.

    The end is the server's "no messages" status, never the consumer's ``num_pending``: under
    load nats-server 2.9 reported fewer pending than a last-per-subject consumer then held,
    and a read that stopped at that count returned part of the presence (a CI run saw one of
    two live entries)."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=queue.put)
    name = None
    try:
        info = await js.add_consumer(stream, ConsumerConfig(
            ack_policy=AckPolicy.NONE, mem_storage=True, inactive_threshold=max(timeout, 1.0),
            **config))
        name = info.name
        limit = batch if batch is not None else None
        if limit is not None and limit <= 0:
            return []
        # A request a little larger than what the server says it has: it answers with what
        # it has and, when that is fewer, the "no messages" status that ends the read.
        chunk = max(int(info.num_pending or 0) + 16, 64)
        out: list[Any] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    ask = chunk if limit is None else min(chunk, limit - len(out))
                    await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
                                     json.dumps({"batch": ask, "no_wait": True}).encode(),
                                     reply=inbox)
                    got = 0
                    while got < ask:
                        msg = await queue.get()
                        if _status(msg) is not None:
                            break  # the consumer has no more
                        out.append(msg)
                        got += 1
                    if got < ask or (limit is not None and len(out) >= limit):
                        return out
        except TimeoutError:
            raise BackplaneError(f"nats did not deliver a history page of {stream} within "
                                 f"{timeout} s") from None
    finally:
        await sub.unsubscribe()
        if name is not None:
            # Fire and forget: the server deletes it anyway once inactive.
            await nc.publish(f"$JS.API.CONSUMER.DELETE.{stream}.{name}", b"")


async def ensure_stream(js: Any, names: NatsNames, topic: str, options: TopicOptions,
                        storage: StorageType = StorageType.FILE) -> tuple[str, Any]:
    """The epoch and state (``first_seq``, ``last_seq``) of ``topic``'s stream, made with
    ``options`` and a new epoch if missing (what hubs and ``melody.NatsPublisher`` both do).
    One round trip (two when it is made)."""
    stream, subject = names.history(topic)
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        config = StreamConfig(
            name=stream, subjects=[subject], description=_EPOCH_TAG + new_epoch(),
            max_msgs=options.history_size, max_age=options.history_ttl or None,
            storage=storage)
        try:
            info = await js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise
            info = await js.stream_info(stream)  # another node made it first
    description = info.config.description or ""
    if not description.startswith(_EPOCH_TAG):
        raise BackplaneError(f"stream {stream} was not made by melody (no epoch in its "
                             "description)")
    return description[len(_EPOCH_TAG):], info.state


def ack_error(msg: Any) -> str | None:
    """What went wrong with a publication, from JetStream's answer (None: it is stored):
    a status (``"503"``: no stream takes the subject) or the error's description."""
    status = _status(msg)
    if status is not None:
        return status
    try:
        answer = json.loads(msg.data)
    except ValueError:
        return f"unreadable answer {msg.data[:100]!r}"
    if "error" in answer:
        return str(answer["error"].get("description", answer["error"]))
    return None


class _Follower:
    """This node following one topic's stream (see "Delivery" in the module docstring)."""

    __slots__ = ("epoch", "generation", "last_seen", "next", "sub", "topic")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.epoch: str | None = None
        #: The sequence the follower expects next; everything before it was delivered.
        self.next = 1
        self.sub: Any = None
        self.generation = 0
        self.last_seen = 0.0


class NatsStreams:
    """The history half of a ``NatsBackplane`` (see the module docstring)."""

    def __init__(self, names: NatsNames, *, storage: str, max_queue: int, max_batch: int,
                 timeout: float, heartbeat: float) -> None:
        self._names = names
        self._storage = StorageType.FILE if storage == "file" else StorageType.MEMORY
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._timeout = timeout
        self._heartbeat = heartbeat
        self._nc: Any = None
        self._js: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deliver: Deliver | None = None
        #: Publications waiting for the server: (topic, data, options).
        self.queue: deque[tuple[str, bytes, TopicOptions]] = deque()
        self.wake: asyncio.Event | None = None
        # Topic -> epoch of the streams known to exist on this connection.
        self._epochs: dict[str, str] = {}
        self._followers: dict[str, _Follower] = {}
        # Topic -> (epoch, last sequence) of the history pages read: what wait_caught_up
        # waits for the followers to have delivered.
        self._goals: dict[str, tuple[str, int]] = {}
        self._progress = asyncio.Event()
        self.counters = {"stream_published": 0, "stream_errors": 0, "stream_batches": 0,
                         "stream_followers_made": 0, "stream_skipped": 0}

    # -- connection ---------------------------------------------------------------------------

    def bind(self, nc: Any, deliver: Deliver) -> None:
        """Use connection ``nc`` (just made); deliver followed publications to ``deliver``."""
        self._nc = nc
        self._js = nc.jetstream(timeout=self._timeout)
        self._loop = asyncio.get_running_loop()
        self._deliver = deliver
        self._epochs.clear()
        self._goals.clear()
        now = self._loop.time()
        for follower in self._followers.values():
            # Gone with the old connection; the backplane follows again every topic it
            # subscribes again (not a stale one yet: the refresh must not race it).
            follower.sub = None
            follower.generation += 1
            follower.last_seen = now

    def clear(self) -> int:
        """Forget the queue (the connection went away); how many publications were in it."""
        lost = len(self.queue)
        self.queue.clear()
        return lost

    def follows(self, topic: str) -> bool:
        """True when this node follows ``topic``'s stream."""
        return topic in self._followers

    def following(self) -> list[str]:
        """The topics this node follows."""
        return list(self._followers)

    # -- streams ------------------------------------------------------------------------------

    async def ensure(self, topic: str, options: TopicOptions) -> tuple[str, Any]:
        """The epoch and state of ``topic``'s stream, made if missing. One round trip (two
        when it is made)."""
        if self._js is None:
            raise BackplaneError("nats is unreachable")
        epoch, state = await ensure_stream(self._js, self._names, topic, options,
                                           self._storage)
        self._epochs[topic] = epoch
        return epoch, state

    # -- publishing ---------------------------------------------------------------------------

    def full(self) -> bool:
        """True when one more publication would pass ``max_queue``."""
        return len(self.queue) >= self._max_queue

    def add(self, topic: str, data: str, options: TopicOptions) -> None:
        """Queue one publication (the caller checked :meth:`full`)."""
        self.queue.append((topic, data.encode("utf-8"), options))
        wake = self.wake
        if wake is not None and not wake.is_set():
            wake.set()

    async def write(self, report: Callable[[BaseException], None]) -> None:
        """The writer task: publish the queued publications, ``max_batch`` per round trip,
        and count the server's answers (a stream found missing is made again, once)."""
        nc = self._nc
        loop = asyncio.get_running_loop()
        queue = self.queue
        wake = self.wake = asyncio.Event()
        inbox = nc.new_inbox()
        acks: dict[str, asyncio.Future[Any]] = {}

        async def on_ack(msg: Any) -> None:
            future = acks.pop(msg.subject, None)
            if future is not None and not future.done():
                future.set_result(msg)

        await nc.subscribe(inbox + ".*", cb=on_ack)
        number = 0
        while True:
            if not queue:
                wake.clear()
                await wake.wait()
                continue
            batch = [queue.popleft() for _ in range(min(len(queue), self._max_batch))]
            for attempt in range(2):
                batch = await self._with_streams(batch, report)
                futures = []
                for topic, data, _ in batch:
                    number += 1
                    reply = f"{inbox}.{number}"
                    future: asyncio.Future[Any] = loop.create_future()
                    acks[reply] = future
                    futures.append(future)
                    await nc.publish(self._names.history(topic)[1], data, reply=reply)
                try:
                    async with asyncio.timeout(self._timeout):
                        answers = await asyncio.gather(*futures)
                except TimeoutError:
                    raise BackplaneError(f"nats did not acknowledge {len(batch)} "
                                         f"publications within {self._timeout} s") from None
                self.counters["stream_batches"] += 1
                missing = []
                for item, answer in zip(batch, answers):
                    error = ack_error(answer)
                    if error is None:
                        self.counters["stream_published"] += 1
                    elif error == "503" and attempt == 0:
                        self._epochs.pop(item[0], None)  # the stream went: make it again
                        missing.append(item)
                    else:
                        self.counters["stream_errors"] += 1
                        report(BackplaneError(f"publication to {item[0]!r} not stored: "
                                              f"{error}"))
                if not missing:
                    break
                batch = missing

    async def _with_streams(self, batch: list[tuple[str, bytes, TopicOptions]],
                            report: Callable[[BaseException], None]
                            ) -> list[tuple[str, bytes, TopicOptions]]:
        # The publications of ``batch`` whose stream exists (made when missing); those whose
        # stream JetStream refuses to make (a limit of the account, a name in use by another
        # kind of stream) are counted and reported, not sent.
        refused: dict[str, BaseException] = {}
        for topic, _, options in batch:
            if topic not in self._epochs and topic not in refused:
                try:
                    await self.ensure(topic, options)
                except (APIError, BackplaneError) as exc:
                    refused[topic] = exc
        if not refused:
            return batch
        for topic, error in refused.items():
            report(BackplaneError(f"publications to {topic!r} not stored: {error}"))
        kept = [item for item in batch if item[0] not in refused]
        self.counters["stream_errors"] += len(batch) - len(kept)
        return kept

    # -- reading ------------------------------------------------------------------------------

    async def read(self, topic: str, since: int | None, limit: int | None,
                   options: TopicOptions) -> HistoryPage:
        """The page of ``topic`` after ``since`` (None: the position only)."""
        epoch, state = await self.ensure(topic, options)
        top = state.last_seq
        self._goals[topic] = (epoch, top)
        position = StreamPosition(top, epoch)
        count = options.history_size if limit is None else min(limit, options.history_size)
        if since is None or count <= 0 or top <= since:
            return HistoryPage([], position)
        start = max(since + 1, state.first_seq)
        if start > top:
            return HistoryPage([], position)
        stream = self._names.history(topic)[0]
        messages = await fetch(self._nc, self._js, stream, self._timeout,
                               min(count, top - start + 1),
                               deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                               opt_start_seq=start)
        publications = []
        for msg in messages:
            offset = msg.metadata.sequence.stream
            if offset > top:
                break
            publications.append(StoredPublication(offset, msg.data.decode("utf-8")))
        return HistoryPage(publications, position)

    # -- following ----------------------------------------------------------------------------

    async def follow(self, topic: str, options: TopicOptions) -> None:
        """Follow ``topic``'s stream from its next publication (kept following if already).
        Returns once the consumer exists."""
        follower = self._followers.get(topic)
        if follower is None:
            follower = self._followers[topic] = _Follower(topic)
        if follower.sub is not None:
            return
        await self._start(follower, options)

    async def refollow(self, topic: str, options: TopicOptions) -> None:
        """Make ``topic``'s consumer again, from the sequence it expects next (from the
        stream's next one when the stream has another epoch now)."""
        follower = self._followers.get(topic)
        if follower is None:
            return
        old = follower.sub
        follower.sub = None
        follower.generation += 1
        if old is not None:
            await old.unsubscribe()
        await self._start(follower, options)

    async def _start(self, follower: _Follower, options: TopicOptions) -> None:
        nc = self._nc
        loop = self._loop
        assert loop is not None
        epoch, state = await self.ensure(follower.topic, options)
        if follower.epoch is None:
            # A new follower: from the stream's next publication.
            follower.next = state.last_seq + 1
        elif follower.epoch != epoch:
            # The stream was made again while followed: every publication of the new epoch
            # is one this node has not delivered.
            follower.next = 1
        follower.epoch = epoch
        follower.generation += 1
        generation = follower.generation

        async def on_msg(msg: Any) -> None:
            self._on_publication(follower, generation, msg)

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=on_msg)
        follower.sub = sub
        follower.last_seen = loop.time()
        stream = self._names.history(follower.topic)[0]
        try:
            await self._js.add_consumer(stream, ConsumerConfig(
                deliver_subject=inbox, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=follower.next, ack_policy=AckPolicy.NONE,
                idle_heartbeat=self._heartbeat, mem_storage=True))
        except BaseException:
            follower.sub = None
            await sub.unsubscribe()
            raise
        self.counters["stream_followers_made"] += 1

    def _on_publication(self, follower: _Follower, generation: int, msg: Any) -> None:
        if generation != follower.generation or follower.sub is None:
            return  # a message of a consumer made before the last reset
        loop = self._loop
        assert loop is not None and self._deliver is not None
        follower.last_seen = loop.time()
        if _status(msg) is not None:
            return  # an idle heartbeat
        offset = msg.metadata.sequence.stream
        if offset < follower.next:
            return  # delivered already (a consumer made again overlaps)
        if offset > follower.next:
            # Expired or trimmed before it could be delivered: history no longer has it.
            self.counters["stream_skipped"] += offset - follower.next
        follower.next = offset + 1
        self._progress.set()
        self._deliver(follower.topic, offset, msg.data.decode("utf-8"))

    async def unfollow(self, topic: str) -> None:
        """Stop following ``topic`` (the server deletes the ephemeral consumer once nobody
        listens to its subject)."""
        follower = self._followers.pop(topic, None)
        self._goals.pop(topic, None)
        if follower is not None and follower.sub is not None:
            follower.generation += 1
            sub, follower.sub = follower.sub, None
            await sub.unsubscribe()

    def stale(self, now: float) -> list[str]:
        """The followed topics whose consumer sent nothing, not even a heartbeat, for three
        heartbeat periods (or whose consumer could not be made that long ago)."""
        limit = 3 * self._heartbeat
        return [topic for topic, f in self._followers.items() if now - f.last_seen > limit]

    def retain(self, topics: set[str]) -> None:
        """Stop following every topic not in ``topics`` (after a reconnect: their consumers
        went with the old connection)."""
        for topic in [t for t in self._followers if t not in topics]:
            del self._followers[topic]
            self._goals.pop(topic, None)

    async def wait_caught_up(self) -> None:
        """Return once every follower has delivered the last publication of every history
        page read for its topic so far. Raises ``BackplaneError`` after ``timeout``."""
        try:
            async with asyncio.timeout(self._timeout):
                while True:
                    behind = False
                    for topic, (epoch, top) in list(self._goals.items()):
                        follower = self._followers.get(topic)
                        if follower is None or follower.epoch != epoch:
                            del self._goals[topic]  # nothing here can deliver it
                        elif follower.next > top:
                            del self._goals[topic]
                        else:
                            behind = True
                    if not behind:
                        return
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            raise BackplaneError("nats did not deliver the stream up to the history read "
                                 f"within {self._timeout} s") from None
