"""permessage-deflate (RFC 7692) end to end: websockets' default offer, broadcast to compressed
and plain clients, window sizes, context takeover, and decompression bombs over a raw socket."""

from __future__ import annotations

import asyncio
import os
import struct
import zlib

import pytest
from e2e_support import WAIT, RawClient, Recorder, port_of
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from melody import Compression
from melody._core.frames import OP_BINARY, OP_CONT, OP_TEXT
from melody.errors import MessageTooBig, ProtocolError

pytestmark = pytest.mark.asyncio

TAIL = b"\x00\x00\xff\xff"


def deflate(data: bytes, compressor=None) -> bytes:
    """One message compressed as RFC 7692 7.2.1 says: raw deflate, sync flush, tail removed."""
    c = compressor or zlib.compressobj(wbits=-15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def inflate(payload: bytes) -> bytes:
    return zlib.decompressobj(wbits=-15).decompress(payload + TAIL)


async def echo_hub(serve_hub, **config):
    hub, url = await serve_hub(**config)
    rec = Recorder(hub, skip=("message", "message_binary"))

    @hub.handle_message
    def echo(session, msg):
        rec.events.append(("message", session, msg))
        session.write(msg)

    @hub.handle_message_binary
    def echo_binary(session, msg):
        rec.events.append(("message_binary", session, msg))
        session.write_binary(msg)

    return hub, url, rec


MESSAGES = [
    "small",
    "ü" * 40 + "€" * 40,
    b"\x00\x01small",
    ("lorem ipsum dolor sit amet ✓ " * 3600)[:100_000],
    os.urandom(100 * 1024),
    b"",
    "",
]


async def test_messages_round_trip_with_websockets_default_deflate(serve_hub,
                                                                   ws_connect) -> None:
    _hub, url, rec = await echo_hub(serve_hub, compression=True)
    ws = await ws_connect(url)  # compression="deflate" is websockets' default
    extensions = ws.response.headers["Sec-WebSocket-Extensions"]
    assert extensions.startswith("permessage-deflate")
    assert "server_no_context_takeover" in extensions
    for _ in range(2):  # twice: the client's context takeover must hold across messages
        for msg in MESSAGES:
            await ws.send(msg)
            assert await asyncio.wait_for(ws.recv(), WAIT) == msg
    assert rec.errors() == []


async def test_without_compression_the_offer_is_declined(hub_url, ws_connect) -> None:
    hub, url = hub_url

    @hub.handle_message
    def echo(session, msg):
        session.write(msg)

    ws = await ws_connect(url)
    assert "Sec-WebSocket-Extensions" not in ws.response.headers
    await ws.send("x" * 5000)
    assert await asyncio.wait_for(ws.recv(), WAIT) == "x" * 5000


async def test_the_hub_really_compresses_above_min_size(serve_hub, raw_connect) -> None:
    hub, url = await serve_hub(compression=Compression(min_size=64))
    rec = Recorder(hub)
    raw = await raw_connect(url, headers=[("Sec-WebSocket-Extensions", "permessage-deflate")])
    assert raw.response.headers["sec-websocket-extensions"].startswith("permessage-deflate")
    await rec.wait("connect")
    (session,) = rec.sessions("connect")
    big = "compress me " * 200
    session.write(big)
    session.write("tiny")
    session.write_binary(b"\x07" * 5000)
    first = await raw.recv_data()
    assert first.rsv1 and first.opcode == OP_TEXT
    assert len(first.payload) < len(big) // 10
    assert inflate(first.payload) == big.encode()
    second = await raw.recv_data()
    assert not second.rsv1 and second.payload == b"tiny"
    third = await raw.recv_data()
    assert third.rsv1 and third.opcode == OP_BINARY
    assert inflate(third.payload) == b"\x07" * 5000


async def test_raw_client_messages_with_context_takeover(serve_hub, raw_connect) -> None:
    _hub, url, rec = await echo_hub(serve_hub, compression=True)
    raw = await raw_connect(url, headers=[("Sec-WebSocket-Extensions", "permessage-deflate")])
    c = zlib.compressobj(wbits=-15)
    texts = ["hello hello hello", "hello hello hello again", "héllo"]
    for text in texts:
        raw.send_frame(OP_TEXT, deflate(text.encode(), c), rsv1=True)
    # A compressed message split into fragments: RSV1 on the first frame only.
    payload = deflate(b"fragmented " * 50, c)
    raw.send_frame(OP_BINARY, payload[:5], fin=False, rsv1=True)
    raw.send_frame(OP_CONT, payload[5:10], fin=False)
    raw.send_frame(OP_CONT, payload[10:])
    await rec.wait("message_binary")
    assert [m for (m,) in rec.of("message")] == texts
    assert rec.of("message_binary") == [(b"fragmented " * 50,)]
    assert rec.errors() == []


async def test_broadcast_to_compressed_and_plain_clients(serve_hub, ws_connect) -> None:
    hub, url = await serve_hub(compression=True)
    rec = Recorder(hub)
    clients = [await ws_connect(url) for _ in range(3)]
    clients.append(await ws_connect(url, compression=None))
    clients.append(await ws_connect(url, extensions=[
        ClientPerMessageDeflateFactory(server_max_window_bits=10)], compression=None))
    await rec.wait("connect", 5)
    assert "Sec-WebSocket-Extensions" not in clients[3].response.headers
    assert "server_max_window_bits=10" in clients[4].response.headers["Sec-WebSocket-Extensions"]
    text = "broadcast ✓ " * 9000
    data = bytes(range(256)) * 400
    assert hub.broadcast(text) == 5
    assert hub.broadcast_binary(data) == 5
    assert hub.broadcast("short") == 5
    for ws in clients:
        assert await asyncio.wait_for(ws.recv(), WAIT) == text
        assert await asyncio.wait_for(ws.recv(), WAIT) == data
        assert await asyncio.wait_for(ws.recv(), WAIT) == "short"


async def test_broadcast_with_server_context_takeover(serve_hub, ws_connect) -> None:
    # Each connection then keeps its own compressor history: messages refer to earlier ones.
    hub, url = await serve_hub(compression=Compression(server_no_context_takeover=False))
    rec = Recorder(hub)
    clients = [await ws_connect(url) for _ in range(3)]
    await rec.wait("connect", 3)
    assert all("server_no_context_takeover" not in ws.response.headers[
        "Sec-WebSocket-Extensions"] for ws in clients)
    msgs = [f"repeated payload {i % 3} " * 50 for i in range(10)]
    for msg in msgs:
        assert hub.broadcast(msg) == 3
    hub.broadcast_others("not for 0", rec.sessions("connect")[0])
    hub.broadcast("end " * 100)
    for i, ws in enumerate(clients):
        got = [await asyncio.wait_for(ws.recv(), WAIT) for _ in range(len(msgs))]
        assert got == msgs
        if i != 0:
            assert await asyncio.wait_for(ws.recv(), WAIT) == "not for 0"
        assert await asyncio.wait_for(ws.recv(), WAIT) == "end " * 100


async def test_a_deflate_bomb_is_refused_with_1009(serve_hub, ws_connect) -> None:
    _hub, url, rec = await echo_hub(serve_hub, compression=True, max_message_size=1 << 20)
    healthy = await ws_connect(url)
    await rec.wait("connect")
    raw = await RawClient.connect(port_of(url),
                                  headers=[("Sec-WebSocket-Extensions", "permessage-deflate")])
    try:
        bomb = deflate(b"\x00" * (4 << 20))  # 4 MiB of zeros in a few KiB
        assert len(bomb) < 8192
        raw.send_frame(OP_BINARY, bomb, rsv1=True)
        await raw.expect_failure(1009)
    finally:
        raw.close()
    await rec.wait("disconnect")
    (error,) = rec.errors()
    assert type(error) is MessageTooBig
    await healthy.send("fine")
    assert await asyncio.wait_for(healthy.recv(), WAIT) == "fine"


async def test_a_fragmented_deflate_bomb_is_refused_with_1009(serve_hub, raw_connect) -> None:
    _hub, url, rec = await echo_hub(serve_hub, compression=True, max_message_size=64 * 1024)
    raw = await raw_connect(url, headers=[("Sec-WebSocket-Extensions", "permessage-deflate")])
    bomb = deflate(b"A" * (1 << 20))
    half = len(bomb) // 2
    raw.send_frame(OP_TEXT, bomb[:half], fin=False, rsv1=True)
    raw.send_frame(OP_CONT, bomb[half:])
    await raw.expect_failure(1009)
    await rec.wait("disconnect")
    assert [type(e) for e in rec.errors()] == [MessageTooBig]


async def test_just_under_max_message_size_inflates_fine(serve_hub, raw_connect) -> None:
    _hub, url, rec = await echo_hub(serve_hub, compression=True, max_message_size=64 * 1024)
    raw = await raw_connect(url, headers=[("Sec-WebSocket-Extensions", "permessage-deflate")])
    data = b"\x00" * (64 * 1024)
    raw.send_frame(OP_BINARY, deflate(data), rsv1=True)
    await rec.wait("message_binary")
    assert rec.of("message_binary") == [(data,)]
    echoed = await raw.recv_data()
    assert echoed.rsv1 and inflate(echoed.payload) == data


async def test_invalid_compressed_data_fails_the_connection(serve_hub, raw_connect) -> None:
    _hub, url, rec = await echo_hub(serve_hub, compression=True)
    raw = await raw_connect(url, headers=[("Sec-WebSocket-Extensions", "permessage-deflate")])
    raw.send_frame(OP_BINARY, b"\xff\xff\xff\xff not deflate", rsv1=True)
    code, _ = await raw.expect_close()
    assert code in (1002, 1007)
    await raw.expect_eof()
    await rec.wait("disconnect")
    (error,) = rec.errors()
    assert isinstance(error, ProtocolError) and error.code == code


async def test_invalid_utf8_inside_compressed_text_is_1007(serve_hub, raw_connect) -> None:
    _hub, url, rec = await echo_hub(serve_hub, compression=True)
    raw = await raw_connect(url, headers=[("Sec-WebSocket-Extensions", "permessage-deflate")])
    raw.send_frame(OP_TEXT, deflate(b"valid then \xff\xfe"), rsv1=True)
    await raw.expect_failure(1007)
    await rec.wait("disconnect")
    assert rec.of("message") == []


async def test_rsv1_on_a_continuation_frame_is_1002(serve_hub, raw_connect) -> None:
    _hub, url, _rec = await echo_hub(serve_hub, compression=True)
    raw = await raw_connect(url, headers=[("Sec-WebSocket-Extensions", "permessage-deflate")])
    payload = deflate(b"abc" * 100)
    raw.send_frame(OP_TEXT, payload[:4], fin=False, rsv1=True)
    raw.send_frame(OP_CONT, payload[4:], rsv1=True)
    await raw.expect_failure(1002)


@pytest.mark.parametrize("send", ["write", "broadcast"])
async def test_a_dropped_message_does_not_corrupt_a_context_takeover_stream(
        serve_hub, raw_connect, send) -> None:
    # With server context takeover every message may refer back to the ones before it. A
    # message dropped for a full queue never reaches the client, so it must not enter the
    # compressor's history either: otherwise the next message refers to bytes the client never
    # saw and inflates to garbage.
    hub, url = await serve_hub(compression=Compression(server_no_context_takeover=False),
                               message_buffer_size=4, write_buffer_high=1024, write_wait=30)
    rec = Recorder(hub)
    raw = await raw_connect(url, headers=[("Sec-WebSocket-Extensions", "permessage-deflate")],
                            rcvbuf=4096)
    assert raw.response.headers["sec-websocket-extensions"] == "permessage-deflate"
    await rec.wait("connect")
    (session,) = rec.sessions("connect")

    fresh = [os.urandom(4096) for _ in range(4000)]

    def message(i: int) -> bytes:
        # Each message repeats the previous one's random part: it compresses to a reference.
        return struct.pack("!I", i) + fresh[i] + (fresh[i - 1] if i else b"")

    def deliver(i: int) -> None:
        if send == "write":
            session.write_binary(message(i))
        else:
            hub.broadcast_binary(message(i))

    sent = 0
    while not session.dropped and sent < len(fresh) - 1:
        deliver(sent)  # the client reads nothing yet: the kernel buffers, then the queue fill
        sent += 1
    assert session.dropped == 1, f"no overflow after {sent} messages"

    inflater = zlib.decompressobj(wbits=-15)
    for _ in range(sent - 1):  # everything but the dropped one, in order
        frame = await raw.recv_data()
        data = inflater.decompress(frame.payload + TAIL)
        (seq,) = struct.unpack("!I", data[:4])
        assert data == message(seq)
    deliver(sent)  # refers to the dropped message's bytes
    frame = await raw.recv_data()
    try:
        data = inflater.decompress(frame.payload + TAIL)
    except zlib.error as exc:
        raise AssertionError(f"the message after the drop does not inflate: {exc}") from None
    assert data == message(sent), "the message after the drop inflated to different bytes"
