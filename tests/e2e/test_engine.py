"""The fan-out engine's policies end to end: overflow policies, inbound rate limits, topics,
write coalescing (with and without direct writes) and the hub's counters. Real sockets, on
asyncio and uvloop."""

from __future__ import annotations

import asyncio
import struct

import pytest
from e2e_support import WAIT, Recorder, wait_until

from melody._core.frames import OP_BINARY, OP_CLOSE, OP_TEXT, encode_close, encode_frame
from melody._hubstate import state_of
from melody.config import RateLimit
from melody.errors import MessageBufferFull, RateLimited

pytestmark = pytest.mark.asyncio

SIZE = 64 * 1024
MAX_ROUNDS = 2000
SLOW = {"message_buffer_size": 4, "write_buffer_high": 1024, "write_wait": 30}


def numbered(i: int) -> bytes:
    return struct.pack("!I", i) + bytes([i % 251]) * (SIZE - 4)


async def fill_slow_reader(serve_hub, ws_connect, raw_connect, **config):
    """One healthy client and one raw client that never reads; broadcast numbered messages
    until the slow client overflowed, then 6 more rounds."""
    hub, url = await serve_hub(**SLOW, **config)
    rec = Recorder(hub, skip=("sent_message_binary",))
    healthy = await ws_connect(url, max_size=None)
    raw = await raw_connect(url, path="/slow", rcvbuf=4096)
    await rec.wait("connect", 2)
    (slow,) = [s for s in rec.sessions("connect") if s.request.path == "/slow"]
    rounds, extra = 0, None
    for i in range(MAX_ROUNDS):
        hub.broadcast_binary(numbered(i))
        rounds += 1
        assert await asyncio.wait_for(healthy.recv(), WAIT) == numbered(i)
        if (slow.dropped or slow.is_closed) and extra is None:
            extra = 6
        if extra is not None:
            extra -= 1
            if extra == 0:
                break
    assert slow.dropped, "the slow reader never overflowed"
    return hub, rec, slow, raw, rounds


async def read_until_close(raw):
    seqs = []
    while True:
        frame = await raw.recv_data()
        if frame.opcode != OP_BINARY:
            return seqs, frame
        seqs.append(struct.unpack("!I", frame.payload[:4])[0])


async def test_drop_oldest_keeps_the_newest_messages(serve_hub, ws_connect, raw_connect):
    hub, rec, slow, raw, rounds = await fill_slow_reader(
        serve_hub, ws_connect, raw_connect, overflow_policy="drop_oldest")
    assert all(isinstance(e, MessageBufferFull) for e in rec.errors())
    assert len(rec.errors()) == slow.dropped
    assert hub.stats()["frames_dropped"] == slow.dropped
    slow.close_with_msg(4000, "done")
    seqs, close = await read_until_close(raw)
    assert close.close == (4000, "done")
    # In order, no duplicates, the last rounds all there (the oldest queued ones made room).
    assert seqs == sorted(set(seqs))
    assert seqs[-1] == rounds - 1
    assert len(seqs) == rounds - slow.dropped
    assert set(range(rounds - 4, rounds)) <= set(seqs)


async def test_close_policy_gives_up_on_a_slow_consumer_with_1008(serve_hub, ws_connect,
                                                                   raw_connect):
    hub, rec, slow, raw, rounds = await fill_slow_reader(
        serve_hub, ws_connect, raw_connect, overflow_policy="close")
    assert slow.is_closed
    seqs, close = await read_until_close(raw)
    assert close.opcode == OP_CLOSE and close.close[0] == 1008
    assert seqs == sorted(set(seqs)) and len(seqs) < rounds
    raw.send_close(1000)
    await raw.expect_eof()
    await rec.wait("disconnect")
    assert hub.stats()["frames_dropped"] >= 1


async def test_rate_limit_drops_and_reports_excess_messages(serve_hub, ws_connect):
    hub, url = await serve_hub(rate_limit=RateLimit(messages_per_second=0.001,
                                                   burst_messages=5))
    rec = Recorder(hub)
    ws = await ws_connect(url)
    for i in range(20):
        await ws.send(f"m{i}")
    await wait_until(lambda: len(rec.of("message")) + len(rec.errors()) == 20, "20 outcomes")
    delivered = [args[0] for args in rec.of("message")]
    assert delivered == [f"m{i}" for i in range(5)]
    assert len(rec.errors()) == 15 and all(isinstance(e, RateLimited) for e in rec.errors())
    assert hub.stats()["messages_rate_limited"] == 15
    await ws.send("still open")  # the drop policy keeps the session


async def test_rate_limit_counts_bytes_too(serve_hub, ws_connect):
    hub, url = await serve_hub(rate_limit=RateLimit(
        messages_per_second=1000, burst_messages=1000, bytes_per_second=0.001,
        burst_bytes=1000))
    rec = Recorder(hub)
    ws = await ws_connect(url)
    await ws.send("x" * 600)
    await ws.send("y" * 600)  # 1200 bytes > 1000: refused
    await ws.send("z" * 300)
    await wait_until(lambda: len(rec.of("message")) + len(rec.errors()) == 3, "3 outcomes")
    assert [args[0][0] for args in rec.of("message")] == ["x", "z"]


async def test_rate_limit_close_policy_closes_with_1008(serve_hub, ws_connect):
    import websockets

    _hub, url = await serve_hub(rate_limit=RateLimit(messages_per_second=0.001,
                                                   burst_messages=2, policy="close"))
    ws = await ws_connect(url)
    for i in range(3):
        await ws.send(f"m{i}")
    with pytest.raises(websockets.ConnectionClosed) as closed:
        for _ in range(10):
            await asyncio.wait_for(ws.recv(), WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_topics_route_only_to_subscribers(serve_hub, ws_connect):
    hub, url = await serve_hub()
    rec = Recorder(hub)
    clients = [await ws_connect(f"{url}/c{i}") for i in range(3)]
    await rec.wait("connect", 3)
    by_path = {s.request.path: s for s in rec.sessions("connect")}
    a, b, c = by_path["/c0"], by_path["/c1"], by_path["/c2"]
    assert hub.subscribe(a, "room") and hub.subscribe(b, "room")
    assert not hub.subscribe(a, "room")  # already a member
    hub.subscribe(c, "other")
    assert hub.topic_len("room") == 2 and sorted(hub.topics()) == ["other", "room"]
    assert a.topics == frozenset({"room"})
    assert await hub.cluster_topic_len("room") == 2  # no backplane: this node only

    assert hub.publish("room", "to room") == 2
    assert await asyncio.wait_for(clients[0].recv(), WAIT) == "to room"
    assert await asyncio.wait_for(clients[1].recv(), WAIT) == "to room"
    assert hub.publish_others("room", "not to a", a) == 1
    assert await asyncio.wait_for(clients[1].recv(), WAIT) == "not to a"
    assert hub.publish_binary("other", b"\x01") == 1
    assert await asyncio.wait_for(clients[2].recv(), WAIT) == b"\x01"
    assert hub.publish("nobody", "x") == 0

    assert hub.unsubscribe(b, "room") and not hub.unsubscribe(b, "room")
    assert hub.publish("room", "only a") == 1
    assert await asyncio.wait_for(clients[0].recv(), WAIT) == "only a"
    # Nothing else arrived where it should not have.
    for ws in clients[1:]:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.2)

    # Subscriptions end with the session.
    await clients[0].close()
    await rec.wait("disconnect")
    assert hub.topic_len("room") == 0 and "room" not in hub.topics()


async def test_a_burst_of_broadcasts_leaves_in_one_write_per_session(serve_hub, ws_connect):
    hub, url = await serve_hub()
    rec = Recorder(hub)
    clients = [await ws_connect(url) for _ in range(3)]
    await rec.wait("connect", 3)
    await asyncio.sleep(0.05)
    before = hub.stats()
    for i in range(100):  # one loop iteration: no await in between
        hub.broadcast(f"b{i}")
    for ws in clients:
        got = [await asyncio.wait_for(ws.recv(), WAIT) for _ in range(100)]
        assert got == [f"b{i}" for i in range(100)]
    after = hub.stats()
    assert after["messages_out"] - before["messages_out"] == 300
    assert after["broadcasts"] - before["broadcasts"] == 100
    # 300 frames, one write per session: broadcast frames are never written directly, all 100
    # leave together at the end of the iteration (heartbeat pings may add a write, not 100).
    assert after["writes"] - before["writes"] <= 3 + 3


async def test_stats_count_traffic_and_sessions(serve_hub, ws_connect):
    hub, url = await serve_hub()
    hub.handle_message(lambda s, m: s.write(m))
    ws = await ws_connect(url)
    for i in range(10):
        await ws.send(f"{i:03d}")
        assert await asyncio.wait_for(ws.recv(), WAIT) == f"{i:03d}"
    stats = hub.stats()
    assert stats["sessions"] == 1 and stats["connects"] == 1
    assert stats["messages_in"] == 10 and stats["messages_out"] == 10
    assert stats["bytes_in"] >= 10 * (3 + 6) and stats["bytes_out"] >= 10 * (3 + 2)
    await ws.close()
    await wait_until(lambda: hub.stats()["disconnects"] == 1, "disconnect counted")
    assert hub.stats()["sessions"] == 0


async def test_slow_async_handlers_pause_reading_and_lose_nothing(serve_hub, ws_connect):
    # message_buffer_size 4: the session's inbox pauses reading at 4 pending calls and resumes
    # at 2, many times over; every message is still handled, in order.
    hub, url = await serve_hub(message_buffer_size=4)
    handled: list[str] = []

    @hub.handle_message
    async def slow(session, msg):
        await asyncio.sleep(0.002)
        handled.append(msg)

    ws = await ws_connect(url)
    for i in range(60):
        await ws.send(f"m{i}")
    await wait_until(lambda: len(handled) == 60, "60 messages handled")
    assert handled == [f"m{i}" for i in range(60)]
    (session,) = hub.sessions()
    assert not session.link.paused


# Direct writes (Config.direct_writes, on by default): a session's first frame of a loop
# iteration goes to the transport at once, the frames after it leave together at the end of
# the iteration. Off, every frame waits for the end of the iteration. Both must deliver every
# frame, in order, and cost what they promise in transport write calls.
WRITE_MODES = pytest.mark.parametrize("direct", [True, False], ids=["direct", "deferred"])


async def serve_in_mode(serve_hub, direct: bool, **config):
    hub, url = await serve_hub(direct_writes=direct, **config)
    # The Config reaches the compiled core.
    assert state_of(hub).dispatch.direct_writes is direct
    return hub, url


@WRITE_MODES
async def test_a_lone_write_costs_one_write_call(serve_hub, ws_connect, direct):
    hub, url = await serve_in_mode(serve_hub, direct)
    rec = Recorder(hub, skip=("message",))
    hub.handle_message(lambda s, m: s.write(m))
    ws = await ws_connect(url)
    await rec.wait("connect")
    (session,) = rec.sessions("connect")
    for i in range(5):
        before = hub.stats()["writes"]
        session.write(f"lone {i}")
        # Direct: handed to the transport before write() returned; deferred: at the end of
        # this loop iteration.
        assert hub.stats()["writes"] - before == (1 if direct else 0)
        assert await asyncio.wait_for(ws.recv(), WAIT) == f"lone {i}"
        assert hub.stats()["writes"] - before == 1
    for i in range(5):  # an echo: the reply is written from the read callback
        before = hub.stats()["writes"]
        await ws.send(f"echo {i}")
        assert await asyncio.wait_for(ws.recv(), WAIT) == f"echo {i}"
        assert hub.stats()["writes"] - before == 1


@WRITE_MODES
async def test_a_burst_of_broadcasts_from_a_handler_costs_one_write_per_session(
        serve_hub, ws_connect, direct):
    hub, url = await serve_in_mode(serve_hub, direct)
    rec = Recorder(hub, skip=("message",))
    count = 50

    @hub.handle_message
    def burst(session, msg):
        for i in range(count):  # one synchronous run: one loop iteration
            hub.broadcast(f"{msg} {i}")

    clients = [await ws_connect(url) for _ in range(3)]
    await rec.wait("connect", 3)
    for round_ in range(3):
        before = hub.stats()
        await clients[round_].send(f"r{round_}")
        for ws in clients:
            got = [await asyncio.wait_for(ws.recv(), WAIT) for _ in range(count)]
            assert got == [f"r{round_} {i}" for i in range(count)]
        after = hub.stats()
        assert after["messages_out"] - before["messages_out"] == 3 * count
        # Deferred: all 50 in one write at the end of the iteration. Direct: the first burst
        # writes its first frame at once and the other 49 at the end (two writes); having seen
        # a burst, the hub gathers the next bursts' frames whole (one write).
        expected = 2 if direct and round_ == 0 else 1
        assert after["writes"] - before["writes"] == 3 * expected


@WRITE_MODES
async def test_a_lone_broadcast_is_written_at_once_after_bursts_end(serve_hub, ws_connect,
                                                                    direct):
    hub, url = await serve_in_mode(serve_hub, direct)
    rec = Recorder(hub, skip=("message",))
    seen: list[int] = []

    @hub.handle_message
    def broadcast(session, msg):
        count = int(msg)
        before = hub.stats()["writes"]
        for i in range(count):
            hub.broadcast(f"{msg}:{i}")
        # Writes made before the handler returned: the frames that went out at once.
        seen.append(hub.stats()["writes"] - before)

    clients = [await ws_connect(url) for _ in range(3)]
    await rec.wait("connect", 3)
    # A lone broadcast, a burst of 20, a lone one (still gathered: the last iteration that
    # wrote was a burst), then lone ones again (written at once).
    for msg in ("1", "20", "1", "1", "1"):
        await clients[0].send(msg)
        for ws in clients:
            got = [await asyncio.wait_for(ws.recv(), WAIT) for _ in range(int(msg))]
            assert got == [f"{msg}:{i}" for i in range(int(msg))]
    if direct:
        assert seen == [3, 3, 0, 3, 3]
    else:
        assert seen == [0, 0, 0, 0, 0]


@WRITE_MODES
async def test_a_reply_then_a_burst_costs_two_writes_for_the_sender(serve_hub, ws_connect,
                                                                     direct):
    hub, url = await serve_in_mode(serve_hub, direct)
    rec = Recorder(hub, skip=("message",))

    @hub.handle_message
    def reply_then_burst(session, msg):
        before = hub.stats()["writes"]
        session.write(f"ack {msg}")
        # Direct: the reply is on its way before the handler returns.
        assert hub.stats()["writes"] - before == (1 if direct else 0)
        for i in range(10):
            hub.broadcast(f"{msg} {i}")

    sender, other = [await ws_connect(url) for _ in range(2)]
    await rec.wait("connect", 2)
    before = hub.stats()["writes"]
    await sender.send("m")
    got = [await asyncio.wait_for(sender.recv(), WAIT) for _ in range(11)]
    assert got == ["ack m"] + [f"m {i}" for i in range(10)]
    assert [await asyncio.wait_for(other.recv(), WAIT) for _ in range(10)] == [
        f"m {i}" for i in range(10)]
    # Direct: the reply alone, then the ten broadcasts in one write; the other session, the
    # burst's first frame at once (no burst was seen before it) and the nine others in one
    # write. Deferred: one write each.
    assert hub.stats()["writes"] - before == (4 if direct else 2)


@WRITE_MODES
async def test_writes_interleaved_with_broadcasts_keep_their_order(serve_hub, ws_connect,
                                                                   raw_connect, direct):
    # write_buffer_high at its minimum, 1024, and messages of up to 700 bytes: the gathered
    # frames pass the mark and leave early several times within one burst.
    hub, url = await serve_in_mode(serve_hub, direct, write_buffer_high=1024)
    rec = Recorder(hub, skip=("message",))
    count = 30

    def own(msg, i):
        return f"{msg} w{i} " + "w" * (i * 97 % 700)

    def shared(msg, i):
        return f"{msg} b{i} " + "b" * (i * 53 % 700)

    @hub.handle_message
    def interleave(session, msg):
        for i in range(count):
            session.write(own(msg, i))
            hub.broadcast(shared(msg, i))
            if i % 7 == 3:
                session.write(own(msg, i) + "!")

    talker = await ws_connect(url, max_size=None)
    listener = await ws_connect(url, max_size=None)
    await rec.wait("connect", 2)
    # Rounds in separate loop iterations: each starts with a direct write again.
    for msg in ("first", "second", "third"):
        await talker.send(msg)
        expected = []
        for i in range(count):
            expected += [own(msg, i), shared(msg, i)]
            if i % 7 == 3:
                expected.append(own(msg, i) + "!")
        got = [await asyncio.wait_for(talker.recv(), WAIT) for _ in expected]
        assert got == expected
        got = [await asyncio.wait_for(listener.recv(), WAIT) for _ in range(count)]
        assert got == [shared(msg, i) for i in range(count)]

    # A message and a close frame in one TCP segment: the hub answers with a burst, then its
    # close reply closes TCP (_close_transport), which must flush the burst first.
    raw = await raw_connect(url)
    await rec.wait("connect", 3)
    raw.send(encode_frame(OP_TEXT, b"last", mask=True) + encode_close(1000, "", mask=True))
    got = []
    frame = await raw.recv_data()
    while frame.opcode != OP_CLOSE:
        got.append(frame.payload.decode())
        frame = await raw.recv_data()
    expected = []
    for i in range(count):
        expected += [own("last", i), shared("last", i)]
        if i % 7 == 3:
            expected.append(own("last", i) + "!")
    assert got == expected
    assert frame.close == (1000, "")
    await raw.expect_eof()
