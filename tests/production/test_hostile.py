"""Hostile peers against a running hub: each gets a clear error (an HTTP status, a close code or
a dropped connection), nothing is lost for the others, nothing crashes. In every test a healthy
``websockets`` client does a round trip while the attack runs and a fresh one after it."""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from e2e_support import HOST, RawClient, Recorder, port_of, upgrade_request, wait_until
from prod_support import echo, open_fds, round_trip
from websockets.asyncio.client import ClientConnection

from melody import Config, Melody, Session
from melody._core.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    encode_frame,
)
from melody._hubstate import state_of
from melody.config import RateLimit
from melody.errors import MessageBufferFull, RateLimited
from melody.limits import MAX_MESSAGE_SIZE
from melody.server import upgrader_of

pytestmark = pytest.mark.asyncio

Serve = Callable[..., Awaitable[tuple[Melody, str]]]
Connect = Callable[..., Awaitable[ClientConnection]]
Raw = Callable[..., Awaitable[RawClient]]


class Healthy:
    """A well-behaved client kept open through an attack."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.n = 0

    async def check(self) -> None:
        self.n += 1
        text = f"healthy {self.n}"
        async with asyncio.timeout(10):
            await self.ws.send(text)
            assert await self.ws.recv() == text


async def hostile_hub(serve_hub: Serve, ws_connect: Connect,
                      **fields: Any) -> tuple[Melody, str, Healthy]:
    hub = echo(Melody(Config(**fields)))
    _, url = await serve_hub(hub)
    healthy = Healthy(await ws_connect(url))
    await healthy.check()
    return hub, url, healthy


async def cut(reader: asyncio.StreamReader) -> bytes:
    """Read until the server closes the connection (EOF or reset); return what it sent."""
    data = b""
    try:
        while chunk := await reader.read(65536):
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    return data


# -- slowloris and oversized heads --------------------------------------------------------------


async def _slowloris(port: int, head: bytes, every: float) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    closed = asyncio.create_task(cut(reader))
    try:
        for i in range(len(head)):
            if closed.done():
                break
            writer.write(head[i:i + 1])
            await asyncio.sleep(every)
        return await closed
    finally:
        writer.transport.abort()


@pytest.mark.slow
async def test_slowloris_a_thousand_handshakes_a_byte_at_a_time(serve_hub: Serve,
                                                                ws_connect: Connect) -> None:
    hub, url, healthy = await hostile_hub(serve_hub, ws_connect, handshake_timeout=1.5)
    port = port_of(url)
    baseline = open_fds()
    head = upgrade_request(port)  # ~170 bytes: at 10 bytes a second, far past the timeout
    attackers = [asyncio.create_task(_slowloris(port, head, 0.1)) for _ in range(1000)]
    await asyncio.sleep(0.3)
    await healthy.check()  # during
    await round_trip(url)
    async with asyncio.timeout(60):
        answers = await asyncio.gather(*attackers)
    assert answers == [b""] * 1000  # each was cut without a response: the handshake timeout
    assert len(hub) == 1
    await healthy.check()  # after
    await round_trip(url)
    await wait_until(lambda: open_fds() <= baseline, "the attackers' sockets are gone")


async def test_headers_that_never_end(serve_hub: Serve, ws_connect: Connect) -> None:
    hub, url, healthy = await hostile_hub(serve_hub, ws_connect, handshake_timeout=1.0,
                                          max_header_size=4096)
    port = port_of(url)
    # Slowly: a header line every 50 ms, each well under the size limit -> handshake timeout.
    slow_head = b"GET / HTTP/1.1\r\n" + b"X-Pad: 0123456789\r\n" * 10_000
    slow = [asyncio.create_task(_slowloris_lines(port, slow_head)) for _ in range(50)]
    # Fast: headers streaming at full speed -> 431 at max_header_size.
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"GET / HTTP/1.1\r\n" + b"X-Pad: 0123456789\r\n" * 2000)
    fast = await asyncio.wait_for(cut(reader), 10)
    writer.transport.abort()
    assert fast == b"" or fast.startswith(b"HTTP/1.1 431 "), fast[:80]
    await healthy.check()
    async with asyncio.timeout(30):
        assert await asyncio.gather(*slow) == [b""] * 50
    await healthy.check()
    await round_trip(url)
    assert len(hub) == 1


async def _slowloris_lines(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    closed = asyncio.create_task(cut(reader))
    try:
        for line in head.split(b"\r\n"):
            if closed.done():
                break
            writer.write(line + b"\r\n")
            await asyncio.sleep(0.05)
        return await closed
    finally:
        writer.transport.abort()


async def test_a_one_megabyte_request_line(serve_hub: Serve, ws_connect: Connect) -> None:
    hub, url, healthy = await hostile_hub(serve_hub, ws_connect)
    reader, writer = await asyncio.open_connection(HOST, port_of(url))
    writer.write(b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await asyncio.wait_for(cut(reader), 10)
    writer.transport.abort()
    # 431 once max_header_size (16 KiB) is passed; the rest is never read, so the kernel may
    # reset the connection before the client reads the response.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:80]
    await healthy.check()
    await round_trip(url)
    assert len(hub) == 1


# -- frame headers and message sizes -------------------------------------------------------------


def header_claiming(length: int, opcode: int = OP_BINARY) -> bytes:
    """A masked frame header announcing a ``length``-byte payload (the payload never comes)."""
    return bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", length) + os.urandom(4)


@pytest.mark.parametrize(("length", "code"), [(1 << 63, 1002), ((1 << 63) - 1, 1009),
                                              (1 << 40, 1009)])
async def test_frames_claiming_huge_payloads(serve_hub: Serve, ws_connect: Connect,
                                             raw_connect: Raw, length: int, code: int) -> None:
    _hub, url, healthy = await hostile_hub(serve_hub, ws_connect)
    raw = await raw_connect(url)
    raw.send(header_claiming(length))
    await raw.expect_failure(code)
    await healthy.check()
    await round_trip(url)


@pytest.mark.parametrize("length", [0, 1, 2**31, 2**32, 2**53, 2**63 - 1, sys.maxsize])
async def test_extreme_announced_lengths_against_the_largest_limit(
        serve_hub: Serve, ws_connect: Connect, raw_connect: Raw, length: int) -> None:
    # The largest max_message_size a Config accepts (sys.maxsize itself is refused: it used to
    # wrap the parser's arithmetic and crash the process, tests/core/test_extreme_lengths.py).
    _hub, url, healthy = await hostile_hub(serve_hub, ws_connect,
                                           max_message_size=MAX_MESSAGE_SIZE)
    raw = await raw_connect(url)
    if length <= 1:
        raw.send_frame(OP_BINARY, b"x" * length)
        assert (await raw.recv_data()).payload == b"x" * length
    else:
        raw.send(header_claiming(length))
        await raw.expect_failure(1009)
    await healthy.check()
    await round_trip(url)


@pytest.mark.parametrize("fragmented", [False, True])
async def test_messages_just_below_at_and_above_max_message_size(
        serve_hub: Serve, ws_connect: Connect, raw_connect: Raw, fragmented: bool) -> None:
    limit = 64 * 1024
    _hub, url, healthy = await hostile_hub(serve_hub, ws_connect, max_message_size=limit)
    raw = await raw_connect(url)

    def send(payload: bytes) -> None:
        if not fragmented:
            raw.send_frame(OP_BINARY, payload)
            return
        third = len(payload) // 3
        raw.send_frame(OP_BINARY, payload[:third], fin=False)
        raw.send_frame(OP_CONT, payload[third:2 * third], fin=False)
        raw.send_frame(OP_CONT, payload[2 * third:])

    for size in (limit - 1, limit):
        payload = os.urandom(size)
        send(payload)
        frame = await raw.recv_data()
        assert (frame.opcode, frame.payload) == (OP_BINARY, payload)
    send(os.urandom(limit + 1))
    await raw.expect_failure(1009)
    await healthy.check()
    await round_trip(url)


TAIL = b"\x00\x00\xff\xff"


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


@pytest.mark.parametrize("fragmented", [False, True])
async def test_a_deflate_bomb(serve_hub: Serve, ws_connect: Connect, fragmented: bool) -> None:
    _hub, url, healthy = await hostile_hub(serve_hub, ws_connect, compression=True,
                                          max_message_size=1 << 20)
    raw = await RawClient.connect(port_of(url),
                                  headers=[("Sec-WebSocket-Extensions", "permessage-deflate")])
    try:
        bomb = deflate(b"\x00" * (256 << 20))  # 256 MiB inflated, about 256 KiB on the wire
        assert len(bomb) < (1 << 20)
        if fragmented:
            pieces = [bomb[i:i + 4096] for i in range(0, len(bomb), 4096)]
            raw.send_frame(OP_BINARY, pieces[0], fin=False, rsv1=True)
            for piece in pieces[1:]:
                raw.send_frame(OP_CONT, piece, fin=False)
            raw.send_frame(OP_CONT, b"", fin=True)
        else:
            raw.send_frame(OP_BINARY, bomb, rsv1=True)
        await healthy.check()
        await raw.expect_failure(1009)
    finally:
        raw.close()
    await healthy.check()
    await round_trip(url)


# -- fragments, UTF-8, close and control frames ---------------------------------------------------


async def test_thousands_of_tiny_fragments(serve_hub: Serve, ws_connect: Connect,
                                           raw_connect: Raw) -> None:
    hub, url, healthy = await hostile_hub(serve_hub, ws_connect, max_message_size=20_000)
    raw = await raw_connect(url)
    text = ("fragment-é-" * 2000)[:15_000].encode()
    pieces = [text[i:i + 1] for i in range(len(text))]  # é split across fragments too
    frames = [encode_frame(OP_TEXT, pieces[0], fin=False, mask=True)]
    frames += [encode_frame(OP_CONT, p, fin=False, mask=True) for p in pieces[1:-1]]
    frames.append(encode_frame(OP_CONT, pieces[-1], fin=True, mask=True))
    stream = b"".join(frames)
    sender = asyncio.create_task(raw.dribble(stream, 4096))
    await healthy.check()  # during
    await sender
    frame = await raw.recv_data()
    assert (frame.opcode, frame.payload) == (OP_TEXT, text)
    # Past max_message_size, fragment by fragment: 1009.
    # (exactly one byte over: nothing follows the frame that fails, so no reset races the close)
    over = [encode_frame(OP_BINARY, b"x", fin=False, mask=True)]
    over += [encode_frame(OP_CONT, b"x", fin=False, mask=True) for _ in range(20_000)]
    await raw.dribble(b"".join(over), 8192)
    await raw.expect_failure(1009)
    # Endless empty fragments cost the attacker as much as the hub and hold no memory.
    raw2 = await raw_connect(url)
    empty = encode_frame(OP_CONT, b"", fin=False, mask=True)
    raw2.send_frame(OP_BINARY, b"", fin=False)
    await raw2.dribble(empty * 100_000, 65536)
    await healthy.check()
    await round_trip(url)
    assert len(hub) == 2


@pytest.mark.parametrize(("first", "second", "outcome"), [
    (b"caf\xc3", b"\xa9", "delivered"),      # valid once joined
    (b"caf\xc3", b"\x28", 1007),             # invalid continuation byte in the next fragment
    (b"\xf4\x90", b"\x80\x80", 1007),        # above U+10FFFF, split
    (b"\xed\xa0", b"\x80", 1007),            # a UTF-16 surrogate, split
])
async def test_utf8_split_across_fragments(serve_hub: Serve, ws_connect: Connect,
                                           raw_connect: Raw, first: bytes, second: bytes,
                                           outcome: Any) -> None:
    _hub, url, healthy = await hostile_hub(serve_hub, ws_connect)
    raw = await raw_connect(url)
    raw.send_frame(OP_TEXT, first, fin=False)
    raw.send_frame(OP_CONT, second, fin=True)
    if outcome == "delivered":
        frame = await raw.recv_data()
        assert frame.payload == first + second
    else:
        await raw.expect_failure(outcome)
    await healthy.check()
    await round_trip(url)


async def test_a_close_frame_with_a_one_byte_payload(serve_hub: Serve, ws_connect: Connect,
                                                     raw_connect: Raw) -> None:
    _hub, url, healthy = await hostile_hub(serve_hub, ws_connect)
    raw = await raw_connect(url)
    raw.send_frame(OP_CLOSE, b"\x03")
    await raw.expect_failure(1002)
    await healthy.check()
    await round_trip(url)


async def test_pings_flooding_at_line_rate_from_a_reading_client(
        serve_hub: Serve, ws_connect: Connect, raw_connect: Raw) -> None:
    _hub, url, healthy = await hostile_hub(serve_hub, ws_connect)
    raw = await raw_connect(url)
    pings = 20_000
    pongs = 0

    async def read_pongs() -> None:
        nonlocal pongs
        while pongs < pings:
            frame = await raw.recv_frame(timeout=20)
            if frame.opcode == OP_PONG:
                pongs += 1

    reader = asyncio.create_task(read_pongs())
    await raw.dribble(encode_frame(OP_PING, b"p" * 125, mask=True) * pings, 1 << 16, every=4)
    await healthy.check()  # during
    async with asyncio.timeout(30):
        await reader
    assert pongs == pings
    raw.send_frame(OP_TEXT, b"still here")
    assert (await raw.recv_data()).payload == b"still here"
    await healthy.check()
    await round_trip(url)


async def test_pings_flooding_from_a_client_that_never_reads_stay_bounded(
        serve_hub: Serve, ws_connect: Connect, raw_connect: Raw) -> None:
    limit = 1 << 20
    hub, url, healthy = await hostile_hub(serve_hub, ws_connect, message_buffer_bytes=limit,
                                          write_wait=30)
    raw = await raw_connect(url, rcvbuf=4096)
    await wait_until(lambda: len(hub) == 2, "two sessions")
    (proto,) = [s.link.proto for s in hub.sessions() if s.remote_addr[1] ==
                raw.writer.get_extra_info("sockname")[1]]
    burst = encode_frame(OP_PING, b"p" * 125, mask=True) * 2000
    worst = 0
    for _ in range(200):  # 50 MB of pings
        raw.send(burst)
        await raw.writer.drain()
        transport = proto.transport
        held = proto.queued_bytes + (transport.get_write_buffer_size() if transport else 0)
        worst = max(worst, held)
        if transport is None:
            break
    await healthy.check()
    assert worst <= 2 * limit, f"{worst} bytes held for one client that never reads"


# -- a client that never reads ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["drop_newest", "close"])
async def test_a_client_that_never_reads_while_the_hub_broadcasts_100_mb(
        serve_hub: Serve, ws_connect: Connect, policy: str) -> None:
    limit = 2 << 20
    hub = echo(Melody(Config(message_buffer_bytes=limit, message_buffer_size=100_000,
                             overflow_policy=policy, write_wait=2.0)))

    @hub.handle_connect
    def join(session: Session) -> None:
        if session.request.path == "/firehose":
            hub.subscribe(session, "firehose")

    rec = Recorder(hub, skip=("message", "message_binary", "connect"))
    _, url = await serve_hub(hub)
    healthy = Healthy(await ws_connect(url))
    await healthy.check()
    sleeper = await RawClient.connect(port_of(url), "/firehose", rcvbuf=4096)
    try:
        await wait_until(lambda: hub.topic_len("firehose") == 1, "the sleeper subscribed")
        (session,) = [s for s in hub.sessions() if s.request.path == "/firehose"]
        proto = session.link.proto
        chunk = os.urandom(64 * 1024)
        worst = 0
        sent = 0
        for i in range(1600):  # 100 MiB
            sent += hub.publish_binary("firehose", chunk)
            transport = proto.transport
            if transport is not None:
                worst = max(worst, proto.queued_bytes + transport.get_write_buffer_size())
            if i % 50 == 0:
                await healthy.check()  # the hub keeps serving during the firehose
        # Memory held for the sleeper is bounded by its byte bound (plus the transport's
        # high-water mark and the message that crossed it), never by the 100 MiB sent.
        assert worst <= limit + Config().write_buffer_high + 2 * len(chunk), worst
        if policy == "drop_newest":
            assert hub.stats()["frames_dropped"] > 1000
            assert session.dropped > 1000 and not session.is_closed
            assert any(isinstance(e, MessageBufferFull) for e in rec.errors(session))
        else:
            # Closed with 1008 at the first overflow; the close frame waits behind the queue
            # for a peer that never reads, so write_wait drops the connection.
            assert session.close_code == 1008
            assert hub.stats()["frames_dropped"] > 0  # the queue it had was discarded
            await rec.wait("disconnect", session=session)
        await healthy.check()
    finally:
        sleeper.close()
    await wait_until(lambda: len(hub) == 1, "only the healthy client is left")
    await round_trip(url)


# -- rate limits ------------------------------------------------------------------------------


async def test_rate_limit_drop_policy(serve_hub: Serve, ws_connect: Connect,
                                      raw_connect: Raw) -> None:
    hub = Melody(Config(rate_limit=RateLimit(messages_per_second=0.001, burst_messages=20)))
    got: list[str] = []

    @hub.handle_message
    def on_message(session: Session, msg: str) -> None:
        if msg.startswith("flood"):
            got.append(msg)
        else:
            session.write(msg)

    errors: list[BaseException] = []
    hub.handle_error(lambda s, e: errors.append(e))
    _, url = await serve_hub(hub)
    healthy = Healthy(await ws_connect(url))
    raw = await raw_connect(url)
    raw.send(b"".join(encode_frame(OP_TEXT, f"flood {i}".encode(), mask=True)
                      for i in range(1000)))
    await healthy.check()  # its own bucket: unaffected
    await wait_until(lambda: hub.stats()["messages_rate_limited"] == 980, "980 dropped")
    assert got == [f"flood {i}" for i in range(20)]  # the burst passed, in order
    assert len(errors) == 980 and all(isinstance(e, RateLimited) for e in errors)
    assert hub.stats()["messages_in"] >= 1000
    # The session stays open under the drop policy. A ping would not show it: pings cost the
    # same bucket (an empty one now), so it goes unanswered; a close frame is never charged.
    raw.send_frame(OP_PING, b"alive?")
    await wait_until(lambda: hub.stats()["messages_rate_limited"] == 981, "the ping refused")
    raw.send_close(1000)
    assert await raw.expect_close() == (1000, "")
    await round_trip(url)


async def test_rate_limit_close_policy_and_byte_bucket(serve_hub: Serve, ws_connect: Connect,
                                                       raw_connect: Raw) -> None:
    hub = echo(Melody(Config(rate_limit=RateLimit(
        messages_per_second=1000, burst_messages=1000, bytes_per_second=0.001,
        burst_bytes=1000, policy="close"))))
    rec = Recorder(hub, skip=("message", "message_binary"))
    _, url = await serve_hub(hub)
    raw = await raw_connect(url)
    for _ in range(3):
        raw.send_frame(OP_BINARY, b"b" * 300)
        assert (await raw.recv_data()).payload == b"b" * 300
    raw.send_frame(OP_BINARY, b"b" * 300)  # 1200 bytes > the 1000-byte bucket
    # A closing handshake (not a failure): the hub waits for the client's close reply.
    assert await raw.expect_close() == (1008, "rate limit exceeded")
    raw.send_close(1008)
    await raw.expect_eof()
    await rec.wait("disconnect")
    assert hub.stats()["messages_rate_limited"] == 1
    assert any(isinstance(e, RateLimited) for e in rec.errors())
    await round_trip(url)  # a new session has a full bucket of its own


# -- churn ----------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_ten_thousand_connections_dropped_without_a_close_frame(
        serve_hub: Serve, ws_connect: Connect) -> None:
    hub, url, healthy = await hostile_hub(serve_hub, ws_connect)
    port = port_of(url)
    await asyncio.sleep(0)
    tasks_before = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    fds_before = open_fds()
    connects_before = hub.stats()["connects"]

    async def churn(i: int) -> None:
        client = await RawClient.connect(port)
        if i % 3 == 0:
            client.send_frame(OP_TEXT, b"half a message", fin=False)
        if i % 2:
            client.writer.close()  # FIN, no close frame
        else:
            client.close()  # RST

    total, batch = 10_000, 500
    for start in range(0, total, batch):
        async with asyncio.timeout(60):
            await asyncio.gather(*(churn(i) for i in range(start, start + batch)))
        if start % 2500 == 0:
            await healthy.check()  # during
    await wait_until(lambda: len(hub) == 1, "every dropped session ended", timeout=60)
    stats = hub.stats()
    assert stats["connects"] - connects_before == total
    assert stats["disconnects"] == total
    assert len(upgrader_of(hub)._live) == 1  # no per-session bookkeeping left behind
    await wait_until(lambda: open_fds() <= fds_before, "no leaked file descriptors", timeout=30)
    await wait_until(lambda: not state_of(hub).tasks, "no hub tasks left")
    tasks_after = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    assert tasks_after <= tasks_before, tasks_after - tasks_before
    await healthy.check()  # after
    await round_trip(url)
