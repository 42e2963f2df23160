"""A machine-local backplane: the workers of ``melody serve --workers N`` form one hub.

::

    melody serve app:hub --workers 4        # no Redis: the workers share over this bus

The supervisor (``melody.workers``) makes a private directory (mode 0700) and passes it to the
workers (``MELODY_BUS_DIR``); a worker whose hub has no backplane of its own gets a
:class:`WorkerBus` on it. A hub configured with a backplane (``RedisBackplane``) keeps it: the
workers then share over Redis, with every other machine on it, and this bus is not made.

Links
    Peer to peer, no broker process: worker slot ``i`` listens on ``<dir>/<i>.sock`` (a Unix
    stream socket) and dials every lower slot; so each pair of workers has one link, made by
    the higher slot. A worker that dies closes its links (the kernel does it, SIGKILL
    included): its peers forget its interest and, since they ask rather than copy, its
    sessions' presence and counts at once. The supervisor restarts it on the same slot; it
    listens on the same path again and dials the lower slots, while the higher ones, which
    lost their link, dial it every ``reconnect_interval`` seconds until it answers. Each end
    of a new link sends HELLO (slot, node id, version) and the topics it has subscribers for.

Delivery
    A ``broadcast*`` is written to every peer, a ``publish*`` only to the peers that announced
    a subscriber for its topic (interest-based routing: a worker without subscribers for a
    topic reads nothing of it); each receiving worker frames the message once for all its
    sessions. The payload is one bytes object, written once per interested peer (never
    copied per peer). A peer's messages arrive in the order it published them; nothing is
    stored or re-sent (at most once, as Redis pub/sub): what is published while a link is
    down does not reach that worker. A new subscription takes effect for the other workers'
    messages once they have read its announcement (one hop on the socket).
    ``send_to_user``/``disconnect_user`` go to every peer.

Interest churn
    ``subscribe``/``unsubscribe`` mark a topic; the net change of everything marked in one
    turn of the event loop is written in one batch, before the messages of that turn: a
    session that joins and leaves within one turn costs nothing (``subscribe_coalesced``).

Counts and presence
    ``cluster_topic_len`` and ``presence_read`` ask every live peer (an ASK on the link,
    answered after every interest change the peer made before it) and add this worker's own
    answer: exact, one round trip on the local sockets; a peer that dies meanwhile counts as
    having nothing; one that does not answer within ``timeout`` seconds makes them raise
    ``BackplaneError``. Presence entries stay with the worker that holds the session, so a
    dead worker's entries are gone as soon as its link closes.

History
    A topic with history (``hub.configure_topic(..., history_size=N)``) has one owner worker,
    a stable hash of the topic over the slots (:meth:`WorkerBus.owner`; the same on every
    worker, since all know ``slots``). The owner numbers and keeps the topic's publications
    in its memory (``MemoryHistory``): a publication made on another worker goes to it (an
    APPEND on their link), it numbers it, delivers it to its own subscribers and sends it
    (a STREAM) to every worker with subscribers, the publishing one included, which deliver
    it when it comes: one order of offsets on every worker. History reads and recoveries
    (``hub.history``, ``hub.subscribe_from``) ask the owner on the same link as its STREAMs,
    so a page never overtakes a publication sent before it: no gap, no duplicate. While the
    owner is down (dead, restarting) its topics' publications and reads raise
    ``BackplaneError``; the restarted owner starts their streams over with a new epoch, so a
    client at an old position is told to refetch (the memory engine's rule for a restart).
    The history lives in one process: it is lost with it, and bounded by its memory only
    (``history_size``/``history_ttl``). A bus made without ``slots`` keeps no history:
    publishing to such topics raises ``BackplaneError``.

Publishing never blocks
    Each peer has its own outgoing queue: frames wait there while the socket's send buffer is
    full (the kernel's, then the transport's up to its high-water mark). A message that
    would make a peer's held messages pass ``max_queue`` or its held bytes (queued plus the
    transport's buffer) pass ``max_queue_bytes`` is not written to that peer; ``dropped_outgoing``
    counts every such drop per peer, with its reason in ``dropped_outgoing_queue_full``,
    ``dropped_outgoing_queue_bytes`` or ``dropped_outgoing_too_large`` (over
    ``max_message_bytes``, dropped for all). The first drop in each ``report_interval`` is
    reported to ``handle_error(None, BackplaneError)``. Control frames (interest, questions,
    answers) are never dropped: they are bounded by the topics and the questions pending.

Platforms
    Linux and macOS (and the BSDs): Unix stream sockets, paths under 104 bytes (the
    supervisor's directory is short). Windows has no ``--workers`` (see ``melody.workers``),
    so no bus: run one process per port behind a load balancer, with a ``RedisBackplane``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import zlib
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import orjson

from melody._hubstate import state_of
from melody.backplane import local_frames as frames
from melody.backplane.base import (
    FLAG_DISCONNECT,
    Backplane,
    decode_user_envelope,
    encode_disconnect_envelope,
    encode_user_envelope,
    new_node_id,
)
from melody.backplane.reporting import ReportsTrouble
from melody.delivery.history import HistoryPage, MemoryHistory, StoredPublication, StreamPosition
from melody.errors import BackplaneError
from melody.limits import MAX_BUFFER_BYTES, MAX_COUNT, MAX_MESSAGE_SIZE, check_int, check_seconds

if TYPE_CHECKING:
    from melody._hubstate import HubState
    from melody.delivery.options import TopicOptions
    from melody.hub import Melody

__all__ = ["WorkerBus", "BUS_DIR_ENV", "socket_path"]

logger = logging.getLogger("melody.backplane")

#: The environment variable through which the supervisor hands the bus directory to workers.
BUS_DIR_ENV = "MELODY_BUS_DIR"
_DROP_REASONS = ("dropped_outgoing_queue_full", "dropped_outgoing_queue_bytes",
                 "dropped_outgoing_too_large")
# The longest frame a peer may send: a message (at most max_message_bytes plus its head) or a
# presence answer. Only guards against a corrupt stream; the peer is this machine's worker.
_MAX_FRAME = MAX_MESSAGE_SIZE + (1 << 20)
# The transport's own buffer before it pauses us: past it, frames wait in the peer's queue.
_HIGH_WATER = 256 << 10


def socket_path(directory: str, slot: int) -> str:
    """Where worker ``slot`` listens."""
    return os.path.join(directory, f"{slot}.sock")


class _Link(asyncio.Protocol):
    # One Unix stream connection to one peer worker (dialed or accepted).

    def __init__(self, made: Callable[[_Link], None],
                 frame: Callable[[_Link, int, bytes], None],
                 malformed: Callable[[_Link, Exception], None],
                 lost: Callable[[_Link], None], target: int | None) -> None:
        # What the bus does with a link's events (the bus owns every link's bookkeeping).
        self._made = made
        self._on_frame = frame
        self._on_malformed = malformed
        self._lost = lost
        #: The slot this link was dialed to (None for an accepted one).
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.decoder = frames.FrameDecoder(_MAX_FRAME)
        #: The peer's slot once its HELLO arrived (None before: nothing is sent to it).
        self.slot: int | None = None
        #: Topics the peer has subscribers for.
        self.topics: set[str] = set()
        # Frames (bytes objects) waiting for the transport, and how many are messages.
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.pending_messages = 0
        self.paused = False
        self.closed = False
        #: Questions sent on this link and not answered yet.
        self.asked: set[int] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have its methods.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        self._made(self)

    def data_received(self, data: bytes) -> None:
        try:
            received = self.decoder.feed(data)
            for kind, body in received:
                self._on_frame(self, kind, body)
                if self.closed:
                    return
        except (frames.FrameError, ValueError) as exc:
            self._on_malformed(self, exc)

    def eof_received(self) -> bool | None:
        return False  # close: a peer that stops writing is gone

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._lost(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.flush()

    def held_bytes(self) -> int:
        transport = self.transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        return self.pending_bytes + buffered

    def push(self, *pieces: bytes, message: bool = False) -> None:
        # Queue frames (already admitted); written at the bus's next flush.
        for piece in pieces:
            self.pending.append(piece)
            self.pending_bytes += len(piece)
        if message:
            self.pending_messages += 1

    def flush(self) -> None:
        transport = self.transport
        if self.paused or self.closed or transport is None or not self.pending:
            return
        pieces = list(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        self.pending_messages = 0
        # One call for the whole turn's frames: one system call when the socket takes them.
        transport.writelines(pieces)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class WorkerBus(ReportsTrouble, Backplane):
    """A :class:`~melody.backplane.Backplane` between the workers of one machine (see the
    module docstring).

    ``directory`` holds the workers' sockets (at most 90 bytes: Unix socket paths are short);
    ``slot`` is this worker's number (1..65535, ``MELODY_WORKER_ID``); ``slots`` how many
    workers there are (``MELODY_WORKERS``; needed for topics with history, which it spreads
    over the workers; None: no history). Durations are seconds:

    - ``max_queue`` / ``max_queue_bytes``: messages / bytes held at most for one peer, in
      this bus's queue and the transport's buffer (1..2**31 / 64 KiB..64 GiB).
    - ``max_message_bytes``: the largest payload sent at all (1 KiB..1 GiB and at most
      ``max_queue_bytes``); larger ones are dropped and counted.
    - ``timeout``: how long ``cluster_topic_len`` and ``presence_read`` wait for a peer's
      answer.
    - ``reconnect_interval``: how often a link to a lower slot that is down is dialed again.
    - ``report_interval``: at most one ``handle_error`` report per this many seconds.

    ValueError for a bad setting. Listening and dialing happen in :meth:`start`, which the hub
    calls when it starts serving.
    """

    _drop_prefix = "worker bus: "

    #: Presence is kept by each worker for its own sessions and read from all.
    keeps_presence = True

    def __init__(self, directory: str, slot: int, slots: int | None = None, *,
                 max_queue: int = 10_000,
                 max_queue_bytes: int = 8 << 20, max_message_bytes: int = 4 << 20,
                 timeout: float = 5.0, reconnect_interval: float = 0.1,
                 report_interval: float = 10.0) -> None:
        super().__init__()
        check_int("slot", slot, 1, 0xFFFF)
        if slots is not None:
            check_int("slots", slots, slot, 0xFFFF)
        check_int("max_queue", max_queue, 1, MAX_COUNT)
        check_int("max_queue_bytes", max_queue_bytes, 64 << 10, MAX_BUFFER_BYTES)
        check_int("max_message_bytes", max_message_bytes, 1 << 10,
                  min(MAX_MESSAGE_SIZE, max_queue_bytes))
        check_seconds("timeout", timeout)
        check_seconds("reconnect_interval", reconnect_interval, high=60.0)
        check_seconds("report_interval", report_interval, allow_zero=True)
        path = socket_path(directory, slot)
        if len(path.encode()) > 100:
            raise ValueError(f"bus socket path {path!r} too long for a Unix socket")
        self.directory = directory
        self.slot = slot
        #: How many worker slots there are (``MELODY_WORKERS``): what picks a topic's owner.
        self.slots = slots
        #: Topics with history are kept (by their owner worker) when the slots are known.
        self.stores_history = slots is not None
        # The streams of the topics this worker owns.
        self._history = MemoryHistory()
        self.path = path
        self.max_queue_bytes = max_queue_bytes
        self.max_message_bytes = max_message_bytes
        self._max_queue = max_queue
        self._timeout = float(timeout)
        self._reconnect = float(reconnect_interval)
        self._report_interval = float(report_interval)
        self._pid = os.getpid()

        self._hub: Melody | None = None
        self._state: HubState | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._dialer: asyncio.Task[None] | None = None
        self._stopping = False
        # Every open link, and the live ones (HELLO received) by the peer's slot.
        self._links: set[_Link] = set()
        self._peers: dict[int, _Link] = {}
        # Interest: what this worker wants, what its peers were last told, what changed.
        self._wanted: set[str] = set()
        self._announced: set[str] = set()
        self._dirty: set[str] = set()
        self._flush_handle: asyncio.Handle | None = None
        # Questions to peers: request id -> (link, future of the answer or None if it died).
        self._next_request = 0
        self._questions: dict[int, tuple[_Link, asyncio.Future[bytes | None]]] = {}
        self._last_report = float("-inf")
        self._suppressed = 0
        self._counters = dict.fromkeys(
            ("published", "written", "skipped_uninterested", "received", "ignored_unwanted",
             "malformed", "dropped_outgoing", *_DROP_REASONS, "interest_sent",
             "subscribe_coalesced", "peer_links", "peer_losses", "dial_failures", "asked",
             "ask_timeouts", "stream_published", "stream_forwarded", "stream_received"), 0)

    # -- lifetime --------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """True once :meth:`start` was called."""
        return self._server is not None

    @property
    def peers(self) -> list[int]:
        """The slots of the workers linked to this one now."""
        return sorted(self._peers)

    async def start(self, hub: Melody) -> None:
        """Listen on this slot's socket and dial the lower slots (returns after the first
        attempt at each, linked or not: a peer still starting is dialed again). OSError when
        the socket cannot be made; RuntimeError when called twice."""
        if self._server is not None:
            raise RuntimeError("WorkerBus.start called twice")
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self.node_id = new_node_id()
        loop = asyncio.get_running_loop()
        self._hub = hub
        self._state = state_of(hub)
        self._loop = loop
        # A previous run of this slot (killed) left its socket file: listen there again.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._server = await loop.create_unix_server(self._new_link, self.path)
        await self._dial_all()
        self._dialer = loop.create_task(self._redial())
        logger.info("worker bus: slot %d listening on %s, linked to %s", self.slot, self.path,
                    self.peers or "no peer yet")

    async def stop(self) -> None:
        """Close every link and the socket; publish nothing more."""
        if self._stopping:
            return
        self._stopping = True
        if self._dialer is not None:
            self._dialer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dialer
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.flush()
            transport = link.transport
            if transport is not None:
                transport.close()  # after what is buffered: the last messages still go
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self._fail_questions(None)

    def _new_link(self, target: int | None = None) -> _Link:
        return _Link(self._link_made, self._frame, self._malformed, self._link_lost, target)

    async def _dial_all(self) -> None:
        loop = self._loop
        assert loop is not None
        for slot in range(1, self.slot):
            if slot in self._peers or self._stopping or any(
                    link.target == slot for link in self._links):
                continue
            try:
                await asyncio.wait_for(loop.create_unix_connection(
                    functools.partial(self._new_link, slot), socket_path(self.directory, slot)),
                    self._timeout)
            except (OSError, TimeoutError):
                # Not started yet, or restarting: the next round dials again.
                self._counters["dial_failures"] += 1

    async def _redial(self) -> None:
        while True:
            await asyncio.sleep(self._reconnect)
            await self._dial_all()  # a dict lookup per lower slot when all are linked

    def _link_made(self, link: _Link) -> None:
        if self._stopping:
            link.close()
            return
        self._links.add(link)
        # HELLO, then every topic wanted now; a change still marked follows in the next flush
        # (SUBSCRIBE and UNSUBSCRIBE are idempotent at the peer, so the overlap is harmless).
        link.push(frames.hello(self.slot, self.node_id))
        for topic in self._wanted:
            link.push(frames.interest(topic, True))
        link.flush()

    def _link_lost(self, link: _Link) -> None:
        self._links.discard(link)
        if link.slot is not None and self._peers.get(link.slot) is link:
            del self._peers[link.slot]
            self._counters["peer_losses"] += 1
            if not self._stopping:
                logger.info("worker bus: slot %d lost its link to slot %d", self.slot,
                            link.slot)
        for request in link.asked:
            entry = self._questions.get(request)
            if entry is not None and not entry[1].done():
                entry[1].set_result(None)  # a dead peer has no sessions to count
        link.asked.clear()

    # -- frames from a peer ------------------------------------------------------------------

    def _frame(self, link: _Link, kind: int, body: bytes) -> None:
        state = self._state
        assert state is not None
        if link.slot is None:
            if kind != frames.HELLO:
                raise frames.FrameError("first frame is not HELLO")
            slot, _ = frames.parse_hello(body)
            old = self._peers.get(slot)
            if old is not None and old is not link:
                old.close()  # a stale link of a worker that restarted: the new one wins
                self._link_lost(old)
            link.slot = slot
            self._peers[slot] = link
            self._counters["peer_links"] += 1
            return
        if kind == frames.MESSAGE:
            topic, binary, payload = frames.parse_message(body)
            if topic is not None and topic not in state.topics:
                self._counters["ignored_unwanted"] += 1  # left while it was on its way
                return
            self._counters["received"] += 1
            try:
                state.deliver_remote(topic, binary, payload)
            except Exception as exc:
                state.report(None, exc)
        elif kind == frames.SUBSCRIBE:
            link.topics.add(body.decode("utf-8", "surrogatepass"))
        elif kind == frames.UNSUBSCRIBE:
            link.topics.discard(body.decode("utf-8", "surrogatepass"))
        elif kind == frames.USER:
            self._user_message(state, body)
        elif kind == frames.STREAM:
            topic, offset, text = frames.parse_stream(body)
            self._counters["stream_received"] += 1
            try:
                state.streams.deliver(topic, offset, text)
            except Exception as exc:
                state.report(None, exc)
        elif kind == frames.APPEND:
            topic, size, ttl, text = frames.parse_append(body)
            if self.slots is None or self.owner(topic) != self.slot:
                raise frames.FrameError(f"APPEND of {topic!r} to a worker that does not own it")
            self._append(topic, size, ttl, text)
        elif kind == frames.ASK:
            self._answer(link, *frames.parse_ask(body))
        elif kind == frames.ANSWER:
            request, answer = frames.parse_answer(body)
            entry = self._questions.get(request)
            link.asked.discard(request)
            if entry is not None and not entry[1].done():
                entry[1].set_result(answer)
        else:
            raise frames.FrameError(f"unexpected frame kind {kind}")

    def _user_message(self, state: HubState, body: bytes) -> None:
        _, flags, user, payload = decode_user_envelope(body)
        if flags & FLAG_DISCONNECT:
            code = int.from_bytes(payload[:2], "big")
            reason = payload[2:].decode("utf-8")
        else:
            binary = bool(flags & 1)
            msg: Any = payload if binary else payload.decode("utf-8")
        self._counters["received"] += 1
        try:
            if flags & FLAG_DISCONNECT:
                state.disconnect_user(user, code, reason)
            else:
                state.deliver_user(user, binary, msg)
        except Exception as exc:
            state.report(None, exc)

    def _answer(self, link: _Link, request: int, what: int, topic: str, since: int | None,
                limit: int | None) -> None:
        hub = self._hub
        state = self._state
        assert hub is not None and state is not None
        if what == frames.ASK_TOPIC_LEN:
            data = str(hub.topic_len(topic)).encode()
        elif what == frames.ASK_PRESENCE:
            data = orjson.dumps(state.presence.local().get(topic, {}))
        elif what == frames.ASK_HISTORY:
            page = self._read_here(topic, since, limit)
            data = orjson.dumps([page.position.offset, page.position.epoch,
                                 [list(p) for p in page.publications]])
        else:
            data = b""  # ASK_SYNC: the answer itself is the point
        self._flush_interest()  # the answer comes after every interest change made before it
        link.push(frames.answer(request, data))
        link.flush()

    def _malformed(self, link: _Link, error: Exception) -> None:
        self._counters["malformed"] += 1
        self._complain(BackplaneError(f"worker bus: link to slot {link.slot} closed: {error}"))
        link.close()

    # -- the contract ------------------------------------------------------------------------

    def publish(self, topic: str | None, binary: bool, payload: bytes) -> None:
        """Queue one message for the peers that want it (``topic`` None: all). Never blocks;
        O(peers); the payload is not copied (its frame head is built once for all)."""
        counters = self._counters
        counters["published"] += 1
        peers = self._peers
        if not peers:
            return
        if len(payload) > self.max_message_bytes:
            self._drop("dropped_outgoing_too_large",
                       f"message of {len(payload)} bytes over max_message_bytes="
                       f"{self.max_message_bytes}", len(peers))
            return
        head: bytes | None = None
        for link in peers.values():
            if topic is not None and topic not in link.topics:
                counters["skipped_uninterested"] += 1
                continue
            if head is None:
                head = frames.message_head(topic, binary, len(payload))
            if self._admit(link, len(head) + len(payload)):
                link.push(head, payload, message=True)
                counters["written"] += 1
        if head is not None:
            self._schedule_flush()

    def _admit(self, link: _Link, size: int) -> bool:
        if link.pending_messages >= self._max_queue:
            self._drop("dropped_outgoing_queue_full",
                       f"queue for worker {link.slot} full ({self._max_queue} messages)")
            return False
        if link.held_bytes() + size > self.max_queue_bytes:
            self._drop("dropped_outgoing_queue_bytes",
                       f"queue for worker {link.slot} full (max_queue_bytes="
                       f"{self.max_queue_bytes})")
            return False
        return True

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        self._flush_interest()
        for link in self._links:
            link.flush()

    def _flush_interest(self) -> None:
        # The net interest changes since the last flush, queued on every link ahead of the
        # messages of this turn.
        dirty = self._dirty
        if not dirty:
            return
        self._dirty = set()
        changes: list[bytes] = []
        for topic in dirty:
            wanted = topic in self._wanted
            if wanted == (topic in self._announced):
                self._counters["subscribe_coalesced"] += 1
                continue
            if wanted:
                self._announced.add(topic)
            else:
                self._announced.discard(topic)
            changes.append(frames.interest(topic, wanted))
        if not changes:
            return
        self._counters["interest_sent"] += len(changes)
        for link in self._links:
            if link.pending:
                # Interest goes before the messages already queued this turn: a message to a
                # topic and its subscription may then be reordered, never a message lost.
                link.pending.extendleft(reversed(changes))
                link.pending_bytes += sum(map(len, changes))
            else:
                link.push(*changes)

    def subscribe(self, topic: str) -> None:
        """Announce to the peers that this worker has subscribers for ``topic`` (batched)."""
        self._wanted.add(topic)
        self._mark(topic)

    def unsubscribe(self, topic: str) -> None:
        """Announce that this worker's last subscriber of ``topic`` left (batched)."""
        self._wanted.discard(topic)
        self._mark(topic)

    def _mark(self, topic: str) -> None:
        self._dirty.add(topic)
        self._schedule_flush()

    def send_to_user(self, user: str, binary: bool, payload: bytes) -> None:
        """Queue a message for ``user``'s sessions on every peer. Never blocks; dropped and
        counted as :meth:`publish` is."""
        self._to_every_peer(encode_user_envelope(self.node_id, user, binary, payload))

    def disconnect_user(self, user: str, code: int, reason: str) -> None:
        """Queue the closing of ``user``'s sessions on every peer."""
        self._to_every_peer(encode_disconnect_envelope(self.node_id, user, code, reason))

    def _to_every_peer(self, envelope: bytes) -> None:
        self._counters["published"] += 1
        if not self._peers:
            return
        if len(envelope) > self.max_message_bytes:
            self._drop("dropped_outgoing_too_large", f"user message of {len(envelope)} bytes "
                       f"over max_message_bytes={self.max_message_bytes}", len(self._peers))
            return
        frame = frames.user(envelope)
        for link in self._peers.values():
            if self._admit(link, len(frame)):
                link.push(frame, message=True)
                self._counters["written"] += 1
        self._schedule_flush()

    async def _ask_all(self, what: int, topic: str) -> list[bytes]:
        # One question to every live peer; the answers of those still alive at the end.
        answers = await self._ask(list(self._peers.values()), what, topic)
        return [data for data in answers if data is not None]

    async def _ask_owner(self, owner: int, what: int, topic: str, since: int | None = None,
                         limit: int | None = None) -> bytes:
        link = self._peers.get(owner)
        if link is not None:
            (data,) = await self._ask([link], what, topic, since, limit)
            if data is not None:
                return data
        raise BackplaneError(f"worker {owner}, which keeps the history of {topic!r}, is not "
                             "linked to this one (restarting?)")

    async def _ask(self, links: list[_Link], what: int, topic: str, since: int | None = None,
                   limit: int | None = None) -> list[bytes | None]:
        # One question to each of ``links``; each answer, or None for a link that died.
        loop = self._loop
        if loop is None:
            raise BackplaneError("worker bus not started")
        self._flush_interest()
        waiting: list[asyncio.Future[bytes | None]] = []
        requests: list[int] = []
        for link in links:
            self._next_request = request = (self._next_request + 1) & 0xFFFFFFFF
            future: asyncio.Future[bytes | None] = loop.create_future()
            self._questions[request] = (link, future)
            link.asked.add(request)
            link.push(frames.ask(request, what, topic, since, limit))
            link.flush()
            waiting.append(future)
            requests.append(request)
        self._counters["asked"] += len(waiting)
        try:
            if waiting:
                async with asyncio.timeout(self._timeout):
                    await asyncio.wait(waiting)
        except TimeoutError:
            late = [self._questions[r][0].slot for r, f in zip(requests, waiting)
                    if not f.done()]
            self._counters["ask_timeouts"] += 1
            raise BackplaneError(f"worker bus: workers {late} did not answer within "
                                 f"{self._timeout} s") from None
        finally:
            for request in requests:
                entry = self._questions.pop(request, None)
                if entry is not None:
                    entry[0].asked.discard(request)
        return [f.result() for f in waiting]

    def _fail_questions(self, result: bytes | None) -> None:
        for _, future in self._questions.values():
            if not future.done():
                future.set_result(result)

    async def cluster_topic_len(self, topic: str) -> int:
        """Subscribers of ``topic`` on every live worker: this one's count plus each peer's
        answer (one round trip on the local sockets). ``BackplaneError`` when a peer does not
        answer within ``timeout``."""
        hub = self._hub
        local = hub.topic_len(topic) if hub is not None else 0
        answers = await self._ask_all(frames.ASK_TOPIC_LEN, topic)
        return local + sum(int(data) for data in answers)

    def presence_add(self, topic: str, session_id: str, info: str) -> None:
        """Nothing to send: the entry stays in this worker (``state.presence.local()``),
        where :meth:`presence_read` on any worker asks for it."""

    def presence_remove(self, topic: str, session_id: str) -> None:
        """Nothing to send (see :meth:`presence_add`)."""

    async def presence_read(self, topic: str) -> dict[str, str]:
        """The presence entries of ``topic`` on every live worker (one round trip)."""
        state = self._state
        entries: dict[str, str] = dict(state.presence.local().get(topic, {})
                                       if state is not None else {})
        for data in await self._ask_all(frames.ASK_PRESENCE, topic):
            entries.update(orjson.loads(data))
        return entries

    # -- topics with history (melody.delivery.streams' HistoryStore) -------------------------

    def owner(self, topic: str) -> int:
        """The slot of the worker that numbers and keeps ``topic``'s history: a stable hash
        of the topic over the slots (the same on every worker). ValueError without ``slots``."""
        if self.slots is None:
            raise ValueError("WorkerBus made without slots keeps no history")
        return zlib.crc32(topic.encode("utf-8", "surrogatepass")) % self.slots + 1

    def publish_stream(self, topic: str, data: str, options: TopicOptions) -> None:
        """Have ``topic``'s owner number, keep and deliver one publication: at once when this
        worker owns it, else in an APPEND on the link to the owner. Every worker with
        subscribers, this one included, delivers it when the owner sends it. Never blocks.

        Raises ``BackplaneError`` when the owner is not linked (it died and is restarting) or
        its queue is full: a publication that would be numbered is never dropped in silence."""
        owner = self.owner(topic)
        if owner == self.slot:
            self._append(topic, options.history_size, options.history_ttl, data)
            return
        link = self._peers.get(owner)
        if link is None:
            raise BackplaneError(f"worker {owner}, which keeps the history of {topic!r}, is "
                                 "not linked to this one (restarting?): publication not stored")
        frame = frames.append(topic, options.history_size, options.history_ttl, data)
        if not self._admit(link, len(frame)):
            raise BackplaneError(f"queue for worker {owner} full: publication to {topic!r} "
                                 "not stored")
        link.push(frame, message=True)
        self._counters["stream_forwarded"] += 1
        self._schedule_flush()

    def _append(self, topic: str, size: int, ttl: float | None, data: str) -> None:
        # This worker owns ``topic``: number and keep the publication, deliver it here, and
        # send it to every peer with subscribers (before any later answer on those links).
        state = self._state
        assert state is not None
        position = self._history.append(topic, data, size, ttl)
        self._counters["stream_published"] += 1
        frame: bytes | None = None
        for link in self._peers.values():
            if topic not in link.topics:
                continue
            if frame is None:
                frame = frames.stream(topic, position.offset, data)
            if self._admit(link, len(frame)):
                link.push(frame, message=True)
        if frame is not None:
            self._schedule_flush()
        try:
            state.streams.deliver(topic, position.offset, data)
        except Exception as exc:
            state.report(None, exc)

    def _read_here(self, topic: str, since: int | None, limit: int | None) -> HistoryPage:
        if since is None:
            return HistoryPage([], self._history.position(topic))
        return self._history.read(topic, since, limit)

    async def read_stream(self, topic: str, since: int | None, limit: int | None,
                          options: TopicOptions) -> HistoryPage:
        """The history of ``topic`` after ``since`` (None: the position only), from its
        owner. Raises ``BackplaneError`` when the owner is not linked or does not answer
        within ``timeout``."""
        owner = self.owner(topic)
        if owner == self.slot:
            return self._read_here(topic, since, limit)
        data = await self._ask_owner(owner, frames.ASK_HISTORY, topic, since, limit)
        offset, epoch, entries = orjson.loads(data)
        return HistoryPage([StoredPublication(o, d) for o, d in entries],
                           StreamPosition(offset, epoch))

    async def wait_subscribed(self, topic: str) -> None:
        """Return once ``topic``'s owner has read this worker's interest in it (subscribe it
        first): from then on it sends this worker every publication. ``BackplaneError`` when
        the owner is not linked or does not answer within ``timeout``."""
        owner = self.owner(topic)
        if owner != self.slot:
            await self._ask_owner(owner, frames.ASK_SYNC, topic)

    async def wait_caught_up(self) -> None:
        """Nothing to wait for: a topic's publications and its history pages come from its
        owner on one link, in order, so the publications sent before a page have been
        delivered here when the page arrives."""

    def stats(self) -> dict[str, int]:
        """Counters (``backplane_<name>`` in ``hub.stats()``).

        Gauges: ``connected`` (1 while listening), ``slot``, ``peers`` (workers linked now),
        ``peer_topics`` (topics the peers announced, summed), ``queued`` and ``queued_bytes``
        (held for all peers: this bus's queues plus the transports' buffers).

        Counters: ``published`` (messages handed to the bus), ``written`` (message frames
        queued for a peer: a broadcast counts once per peer), ``skipped_uninterested``
        (publications not written to a peer without subscribers for the topic),
        ``received``, ``ignored_unwanted`` (arrived after the last local subscriber left),
        ``malformed`` (a link closed for a bad frame), ``dropped_outgoing`` and its reasons
        ``dropped_outgoing_queue_full``, ``dropped_outgoing_queue_bytes``,
        ``dropped_outgoing_too_large``; ``interest_sent`` (topic changes announced),
        ``subscribe_coalesced`` (changes cancelled within one turn), ``peer_links`` (links
        made), ``peer_losses``, ``dial_failures``, ``asked`` (questions to peers),
        ``ask_timeouts``. Topics with history: ``stream_published`` (numbered here, as their
        owner), ``stream_forwarded`` (sent to their owner), ``stream_received`` (from owners).
        """
        stats = dict(self._counters)
        stats["connected"] = int(self._server is not None and not self._stopping)
        stats["slot"] = self.slot
        stats["peers"] = len(self._peers)
        stats["peer_topics"] = sum(len(link.topics) for link in self._peers.values())
        stats["queued"] = sum(link.pending_messages for link in self._links)
        stats["queued_bytes"] = sum(link.held_bytes() for link in self._links)
        return stats

    def __repr__(self) -> str:
        return f"<WorkerBus slot={self.slot} {self.path!r} peers={self.peers}>"
