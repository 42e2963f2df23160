"""Clients that do not read: the bounded queue, MessageBufferFull, WriteTimeout, and the close
frame that still gets out. Broadcast never waits for them and the other clients lose nothing.

The slow client is a raw socket with a small SO_RCVBUF that never reads: once the kernel buffers
between hub and client are full, the hub's transport passes ``write_buffer_high`` (1024, the
smallest allowed), frames queue up to ``message_buffer_size`` (4), and the next is dropped.
Each round broadcasts one numbered 64 KiB message and waits until the healthy clients got it, so
that only the slow client ever falls behind; rounds are bounded.
"""

from __future__ import annotations

import asyncio
import struct

import pytest
from e2e_support import WAIT, Recorder

from melody._core.frames import OP_BINARY
from melody.errors import MessageBufferFull, WriteTimeout

pytestmark = pytest.mark.asyncio

SIZE = 64 * 1024
#: Far more than the loopback kernel buffers can absorb (a few MiB) at SIZE per round.
MAX_ROUNDS = 2000
AFTER_FULL = 6  # rounds broadcast after the first drop

SLOW = {"message_buffer_size": 4, "write_buffer_high": 1024}


def numbered(i: int) -> bytes:
    return struct.pack("!I", i) + bytes([i % 251]) * (SIZE - 4)


class Setup:
    def __init__(self, hub, rec, healthy, slow_raw, slow):
        self.hub = hub
        self.rec = rec
        self.healthy = healthy
        self.slow_raw = slow_raw
        self.slow = slow
        self.returns: list[int] = []
        self.rounds = 0
        self.queued_at_first_drop = -1


async def overflow(serve_hub, ws_connect, raw_connect, **config) -> Setup:
    """Two healthy websockets clients and one raw client that never reads; broadcast numbered
    messages until the slow client's queue overflowed, then AFTER_FULL more."""
    hub, url = await serve_hub(**SLOW, **config)
    rec = Recorder(hub, skip=("sent_message_binary",))
    healthy = [await ws_connect(url, max_size=None) for _ in range(2)]
    slow_raw = await raw_connect(url, path="/slow", rcvbuf=4096)
    await rec.wait("connect", 3)
    (slow,) = [s for s in rec.sessions("connect") if s.request.path == "/slow"]
    setup = Setup(hub, rec, healthy, slow_raw, slow)

    extra = None
    for i in range(MAX_ROUNDS):
        msg = numbered(i)
        setup.returns.append(hub.broadcast_binary(msg))
        setup.rounds += 1
        for ws in healthy:
            assert await asyncio.wait_for(ws.recv(), WAIT) == msg
        if slow.dropped and extra is None:
            setup.queued_at_first_drop = slow.queued
            extra = AFTER_FULL
        if extra is not None:
            extra -= 1
            if extra == 0:
                break
    assert slow.dropped, f"the slow client never overflowed in {MAX_ROUNDS} rounds"
    return setup


async def test_a_client_that_never_reads_overflows_its_queue_only(serve_hub, ws_connect,
                                                                  raw_connect) -> None:
    s = await overflow(serve_hub, ws_connect, raw_connect, write_wait=30)
    slow = s.slow

    # Each overflow is reported once, to the slow session only, and the session stays open.
    errors = s.rec.errors()
    assert errors and all(isinstance(e, MessageBufferFull) for e in errors)
    assert set(s.rec.sessions("error")) == {slow}
    assert len(errors) == slow.dropped
    assert s.queued_at_first_drop == 4
    assert not slow.is_closed and slow.queued <= 4
    assert s.rec.of("disconnect") == []
    # The return value counts the sessions a message was handed to: a dropped one is not.
    first_drop = next(i for i, n in enumerate(s.returns) if n == 2)
    assert s.returns[:first_drop] == [3] * first_drop
    assert s.returns.count(2) == slow.dropped
    assert set(s.returns) == {2, 3}
    # The healthy clients got every message (checked round by round in overflow()) and never
    # had to queue.
    for session in s.hub.sessions():
        if session is not slow:
            assert session.queued == 0 and session.dropped == 0


async def test_writes_to_a_full_session_are_dropped_and_reported(serve_hub, ws_connect,
                                                                raw_connect) -> None:
    s = await overflow(serve_hub, ws_connect, raw_connect, write_wait=30)
    sent: list[bytes] = []
    s.hub.handle_sent_message_binary(lambda session, msg: sent.append(msg))
    before_errors = len(s.rec.errors())
    before = s.slow.dropped
    s.slow.write_binary(b"direct")  # does not raise: reported instead (Go semantics)
    s.slow.write("direct text")
    assert s.slow.dropped == before + 2
    assert len(s.rec.errors()) == before_errors + 2
    assert all(isinstance(e, MessageBufferFull) for e in s.rec.errors())
    assert sent == []  # nothing dropped counts as sent


async def test_the_close_frame_follows_the_queued_messages(serve_hub, ws_connect,
                                                          raw_connect) -> None:
    s = await overflow(serve_hub, ws_connect, raw_connect, write_wait=30)
    slow, raw = s.slow, s.slow_raw
    slow.close_with_msg(4008, "too slow")  # a control frame is queued even over the limit
    assert slow.is_closed

    # The client starts reading: every message that was not dropped, in order, then the close.
    seqs = []
    while True:
        frame = await raw.recv_data()
        if frame.opcode != OP_BINARY:
            break
        (seq,) = struct.unpack("!I", frame.payload[:4])
        assert frame.payload == numbered(seq)
        seqs.append(seq)
    assert frame.close == (4008, "too slow")
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert len(seqs) == s.rounds - slow.dropped
    assert seqs[0] == 0
    raw.send_close(4008)
    await raw.expect_eof()
    await s.rec.wait("disconnect")
    assert s.rec.sessions("disconnect") == [slow]
    assert slow.close_code == 4008


async def test_a_slow_reader_is_aborted_after_write_wait(serve_hub, ws_connect,
                                                        raw_connect) -> None:
    # The kernel absorbs a few MiB for a peer that reads nothing; keep broadcasting until the
    # hub's own buffer stays full for write_wait and the peer is dropped as a slow reader.
    hub, url = await serve_hub(**SLOW, write_wait=0.3)
    rec = Recorder(hub, skip=("sent_message_binary",))
    healthy = [await ws_connect(url, max_size=None) for _ in range(2)]
    await raw_connect(url, path="/slow", rcvbuf=4096)
    await rec.wait("connect", 3)
    (slow,) = [s for s in rec.sessions("connect") if s.request.path == "/slow"]
    for i in range(MAX_ROUNDS):
        if rec.of("disconnect"):
            break
        msg = numbered(i)
        hub.broadcast_binary(msg)
        for ws in healthy:
            assert await asyncio.wait_for(ws.recv(), WAIT) == msg
    await rec.wait("disconnect")
    assert rec.sessions("disconnect") == [slow]
    timeouts = [e for e in rec.errors() if isinstance(e, WriteTimeout)]
    assert len(timeouts) == 1
    assert set(rec.sessions("error")) == {slow}
    assert slow.is_closed and slow.close_code == 1006
    assert hub.broadcast("after") == 2
    for ws in healthy:
        assert await asyncio.wait_for(ws.recv(), WAIT) == "after"
    assert len(hub) == 2


async def test_a_reader_that_catches_up_gets_the_rest(serve_hub, ws_connect,
                                                     raw_connect) -> None:
    # After an overflow the client reads everything: the session is healthy again and new
    # messages arrive without loss.
    s = await overflow(serve_hub, ws_connect, raw_connect, write_wait=30)
    slow, raw = s.slow, s.slow_raw
    dropped = slow.dropped
    seqs = []
    while len(seqs) < s.rounds - dropped:
        frame = await raw.recv_data()
        seqs.append(struct.unpack("!I", frame.payload[:4])[0])
    assert seqs == sorted(seqs)
    assert slow.queued == 0
    assert s.hub.broadcast("fresh") == 3
    frame = await raw.recv_data()
    assert frame.payload == b"fresh"
    assert slow.dropped == dropped and not slow.is_closed


async def test_broadcast_returns_while_a_client_reads_nothing(serve_hub, raw_connect,
                                                             ws_connect) -> None:
    # Many large messages in one go, nothing awaited between them: every call returns, the
    # non-reader's queue stays bounded, and the healthy client then reads all of them.
    hub, url = await serve_hub(message_buffer_size=4, write_buffer_high=1024, write_wait=30)
    rec = Recorder(hub)
    await raw_connect(url, rcvbuf=4096)
    healthy = await ws_connect(url, max_size=None)
    await rec.wait("connect", 2)
    slow, fast = rec.sessions("connect")
    count = 200
    for i in range(count):
        hub.broadcast_binary_multiple(numbered(i), [slow])
    assert slow.queued <= 4 and slow.dropped > 0
    for i in range(30):
        fast.write_binary(numbered(i))
    got = [await asyncio.wait_for(healthy.recv(), WAIT) for _ in range(30)]
    assert got == [numbered(i) for i in range(30)]
    assert not slow.is_closed
