"""One load-generator connection: melody's compiled client codec over a raw asyncio protocol.

A :class:`BenchClient` writes the upgrade request built by :mod:`melody.handshake`, checks the
101 (status and ``Sec-WebSocket-Accept``), then hands every received byte to a sans-I/O
``Connection(is_server=False)`` and acts on its events. No task and no queue per connection:
the event loop calls ``data_received`` and the handling is inline, so one process drives
thousands of connections. Pings are answered by the codec (the pong is queued with the event)
and written back at once.

The payload of every message the harness sends (see :func:`make_payload`) carries its kind,
a sequence number and the sender's ``time.monotonic_ns()``: receivers check order and count
gaps without any shared state, and latency is receive time minus that stamp. Linux's
CLOCK_MONOTONIC is one clock for the whole machine, so stamps compare across processes.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import string
import time
from typing import TYPE_CHECKING, Any, cast

import orjson

from melody._core.connection import Connection
from melody.errors import HandshakeError
from melody.handshake import accept_key, build_client_request, parse_response_head

if TYPE_CHECKING:
    from melody.bench.worker import Target, Worker

__all__ = [
    "HEADER_SIZE",
    "KIND_BROADCAST",
    "KIND_ECHO",
    "KIND_JSON",
    "JSON_HEADER_SIZE",
    "BenchClient",
    "make_payload",
    "seed_padding",
]

#: A text message starting with this is broadcast by the benchmark hub to every connection.
KIND_BROADCAST = "B"
#: Anything else is echoed to its sender; the harness sends these for round trips.
KIND_ECHO = "E"
#: A text message starting with this is a JSON object: the hub decodes it and broadcasts it
#: encoded again as JSON (the ``json`` workload; see :func:`make_json_payload`).
KIND_JSON = "{"

# kind (1) + sequence (10 digits) + " " + monotonic ns (20 digits) + " ", then padding.
HEADER_SIZE = 33
_PAD = "x" * 65536


def seed_padding(seed: int) -> None:
    """Fill the padding of every payload with letters drawn from ``seed``.

    Every process of a run gets the same seed, so the bytes on the wire are the same from one
    run to the next, and not a run of one letter that a compressing peer would shrink to nothing.
    """
    global _PAD
    rng = random.Random(seed)
    _PAD = "".join(rng.choices(string.ascii_letters, k=65536))

# A response head larger than this is not a WebSocket server's 101.
_MAX_HEAD = 16384

_monotonic_ns = time.monotonic_ns
_json_loads = orjson.loads


def make_payload(kind: str, seq: int, stamp_ns: int, size: int) -> str:
    """The text of one benchmark message: ``kind``, ``seq``, ``stamp_ns``, padded to ``size``.

    ``size`` (bytes, all ASCII) is at least :data:`HEADER_SIZE`; raises ValueError otherwise.
    """
    if size < HEADER_SIZE:
        raise ValueError(f"message size must be at least {HEADER_SIZE} bytes")
    return f"{kind}{seq:010d} {stamp_ns:020d} " + _PAD[: size - HEADER_SIZE]


#: The smallest ``--size`` of the json workload: its object with short numbers, no text.
JSON_HEADER_SIZE = len('{"type":"J","seq":1,"ts":1,"text":""}') + 24


def make_json_payload(seq: int, stamp_ns: int, size: int) -> str:
    """The JSON object of one ``json``-workload broadcast, its text padded to ``size`` bytes.

    ``{"type":"J","seq":N,"ts":T,"text":"..."}``, numbers as JSON numbers (zero-padding would
    not be JSON): a message is ``size`` bytes unless the numbers alone make it longer.
    ``size`` is at least :data:`JSON_HEADER_SIZE`; raises ValueError otherwise.
    """
    if size < JSON_HEADER_SIZE:
        raise ValueError(f"JSON message size must be at least {JSON_HEADER_SIZE} bytes")
    head = f'{{"type":"J","seq":{seq},"ts":{stamp_ns},"text":"'
    return head + _PAD[: max(0, size - len(head) - 2)] + '"}'



def upgrade_refused(head: bytes, key: str) -> str | None:
    """Why ``head`` (an HTTP response head, through its blank line) is not the 101 that
    accepts the key ``key``; None when it is."""
    try:
        status, headers = parse_response_head(head)
    except HandshakeError as exc:
        return exc.reason
    if status != 101:
        return f"HTTP {status} instead of 101"
    if headers.get("Sec-WebSocket-Accept") != accept_key(key):
        return "wrong Sec-WebSocket-Accept"
    return None

class BenchClient(asyncio.Protocol):
    """The client end of one WebSocket connection, driven by a :class:`Worker`.

    Broadcasts are checked in order against ``expect`` (the next sequence number due); a
    jump forward counts the skipped messages as lost, a step back counts as out of order.
    Echo replies are checked against ``echo_expect`` the same way.
    """

    __slots__ = (
        "_head",
        "close_received",
        "conn",
        "echo_expect",
        "echo_next",
        "echo_due",
        "echo_on",
        "echo_waiter",
        "error",
        "expect",
        "is_publisher",
        "key",
        "lost_future",
        "opened",
        "target",
        "transport",
        "worker",
    )

    def __init__(self, worker: Worker, target: Target) -> None:
        self.worker = worker
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.conn: Connection | None = None
        self.key = base64.b64encode(os.urandom(16)).decode("ascii")
        self._head = b""
        loop = worker.loop
        self.opened: asyncio.Future[None] = loop.create_future()
        self.lost_future: asyncio.Future[None] = loop.create_future()
        self.close_received = False
        self.expect = 0
        self.echo_next = 0
        self.echo_expect = 0
        self.echo_waiter: asyncio.Future[None] | None = None
        self.echo_on = False
        self.echo_due = 0
        self.is_publisher = False
        self.error: str | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it.
        self.transport = cast("asyncio.Transport", transport)
        target = self.target
        self.transport.write(build_client_request(target.host_header, target.path, self.key))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.worker.client_lost(self)
        if not self.opened.done():
            self.opened.set_exception(
                ConnectionError(self.error or f"connection lost during the handshake: {exc}"))
        if self.echo_waiter is not None and not self.echo_waiter.done():
            self.echo_waiter.set_exception(ConnectionError("connection lost"))
        if not self.lost_future.done():
            self.lost_future.set_result(None)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None:
            self._handshake(data)
            return
        w = self.worker
        sampler = w.latency
        # One receive is one instant: every frame it carried arrived now.
        now = _monotonic_ns() if sampler is not None else 0
        events = conn.receive_data(data)
        # The hot loop of every broadcast workload: locals only, counters written back once.
        expect = self.expect
        got = 0
        # Every receiver expects the same sequence: "B" + 10 digits of each number is made once
        # per process, and the message that is the one expected is recognised by a prefix
        # comparison instead of parsing its number (the load generator must cost the server's
        # side less per frame than the server itself).
        prefixes = w.prefixes
        base = w.prefix_base
        for event in events:
            if event[0] == "text":
                msg = event[1]
                i = expect - base
                if 0 <= i < len(prefixes) and msg.startswith(prefixes[i]):
                    expect += 1
                    got += 1
                    if sampler is not None:
                        sampler.add(now - int(msg[12:32]))
                    continue
                kind = msg[0]
                if kind == "B":
                    if i >= 0 and i == len(prefixes):
                        w.extend_prefixes()
                    seq = int(msg[1:11])
                    stamp = int(msg[12:32]) if sampler is not None else 0
                elif kind == "{":
                    # A broadcast of the json workload: decoded in full (the check is that
                    # the hub sent valid JSON with the fields that were published).
                    try:
                        obj = _json_loads(msg)
                        seq = obj["seq"]
                        stamp = obj["ts"]
                        if obj["type"] != "J" or type(seq) is not int:
                            raise ValueError("not a json-workload message")
                    except (ValueError, KeyError, TypeError):
                        w.unexpected += 1
                        w.note_error(f"invalid JSON broadcast: {msg[:60]!r}")
                        continue
                elif kind == "E":
                    if not now:
                        now = _monotonic_ns()
                    self._echo_reply(msg, now)
                    continue
                else:
                    w.unexpected += 1
                    continue
                # A broadcast off the fast path: a gap, a repeat, or a JSON one.
                if seq != expect:
                    if seq < expect:
                        w.disorder += 1
                        continue
                    w.gaps += seq - expect
                expect = seq + 1
                got += 1
                if sampler is not None:
                    sampler.add(now - stamp)
            else:
                self._control(event)
        self.expect = expect
        if got:
            w.delivered += got
            w.shared[w.o_delivered] = w.delivered
        if self.echo_due:
            self.send_echoes(self.echo_due)
        out = conn.data_to_send()
        if out:
            self.transport.write(out)  # type: ignore[union-attr]
        if self.is_publisher:
            w.publisher_kick()

    def eof_received(self) -> bool | None:
        # The server closes TCP after the closing handshake: let the transport close too.
        return None

    # -- the opening handshake -----------------------------------------------------------------

    def _handshake(self, data: bytes) -> None:
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > _MAX_HEAD:
                self._fail_handshake("response head over 16 KiB")
            else:
                self._head = head
            return
        self._head = b""
        why = upgrade_refused(head[: end + 4], self.key)
        if why is not None:
            self._fail_handshake(why)
            return
        w = self.worker
        self.conn = Connection(is_server=False, max_message_size=w.max_message_size)
        w.client_opened(self)
        self.opened.set_result(None)
        rest = head[end + 4:]
        if rest:
            self.data_received(rest)

    def _fail_handshake(self, reason: str) -> None:
        self.error = reason
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.abort()

    # -- events --------------------------------------------------------------------------------

    def _control(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "close":
            self.close_received = True
        elif kind == "fail":
            self.error = f"protocol error {event[1]}: {event[2]}"
            self.worker.protocol_errors += 1
            self.worker.note_error(self.error)
            self.transport.close()  # type: ignore[union-attr]
        elif kind == "binary":
            self.worker.unexpected += 1
        # "ping": the codec queued the pong already; "pong": nothing to do.

    def _echo_reply(self, msg: str, now: int) -> None:
        w = self.worker
        seq = int(msg[1:11])
        if seq != self.echo_expect:
            if seq < self.echo_expect:
                w.disorder += 1
                return
            w.gaps += seq - self.echo_expect
        self.echo_expect = seq + 1
        w.roundtrips += 1
        w.shared[w.o_roundtrips] = w.roundtrips
        sampler = w.rtt
        if sampler is not None:
            sampler.add(now - int(msg[12:32]))
        waiter = self.echo_waiter
        if waiter is not None:
            self.echo_waiter = None
            if not waiter.done():
                waiter.set_result(None)
        elif self.echo_on and w.echo_running:
            # Answered after the whole read is handled: the requests it frees leave in one write.
            self.echo_due += 1

    # -- sending -------------------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        """Frame ``text`` (masked, by the codec) and write it."""
        conn = self.conn
        assert conn is not None and self.transport is not None
        conn.send_text(text)
        self.transport.write(conn.data_to_send())

    def send_echoes(self, count: int = 1) -> None:
        """Send the next ``count`` echo requests (from sequence ``echo_next``) in one write."""
        conn = self.conn
        assert conn is not None and self.transport is not None
        self.echo_due = 0
        w = self.worker
        size = w.size
        seq = self.echo_next
        stamp = _monotonic_ns()
        for k in range(count):
            conn.send_text(make_payload("E", seq + k, stamp, size))
        self.echo_next = seq + count
        w.echo_sent += count
        self.transport.write(conn.data_to_send())

    def start_close(self) -> None:
        """Begin the closing handshake (1000); the server is expected to answer and drop TCP."""
        conn = self.conn
        if conn is None or self.transport is None or self.transport.is_closing():
            return
        conn.send_close(1000, "")
        out = conn.data_to_send()
        if out:
            self.transport.write(out)

    @property
    def is_open(self) -> bool:
        """True from the 101 until the connection is lost."""
        return self.conn is not None and not self.lost_future.done()
