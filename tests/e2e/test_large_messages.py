"""Large and fragmented messages: 1 MiB+ echoes, fragment streams, and frames that arrive in
many TCP pieces (the read buffer grows and the mask and UTF-8 check resume mid-frame)."""

from __future__ import annotations

import asyncio
import itertools
import os
import random

import pytest
from e2e_support import WAIT, Recorder
from websockets.exceptions import ConnectionClosed

from melody._core.frames import OP_BINARY, OP_CONT, OP_TEXT, encode_frame

pytestmark = pytest.mark.asyncio

BIG = 4 << 20  # max_message_size for these tests
MIB = 1 << 20


def mixed_text(n_chars: int, seed: int = 7) -> str:
    """Text of 1-, 2-, 3- and 4-byte UTF-8 characters, deterministic."""
    rng = random.Random(seed)
    alphabet = "aZ9 ~éßñ€中文✓𝄞😀"
    return "".join(rng.choice(alphabet) for _ in range(n_chars))


async def echo_hub(serve_hub, **config):
    hub, url = await serve_hub(**config)
    rec = Recorder(hub, skip=("message", "message_binary", "sent_message",
                              "sent_message_binary"))

    @hub.handle_message
    def echo(session, msg):
        rec.events.append(("message", session, len(msg)))
        session.write(msg)

    @hub.handle_message_binary
    def echo_binary(session, msg):
        rec.events.append(("message_binary", session, len(msg)))
        session.write_binary(msg)

    return hub, url, rec


async def test_binary_over_one_mib_round_trips(serve_hub, ws_connect) -> None:
    _hub, url, rec = await echo_hub(serve_hub, max_message_size=BIG)
    ws = await ws_connect(url, max_size=None)
    data = os.urandom(MIB + MIB // 2)
    await ws.send(data)
    assert await asyncio.wait_for(ws.recv(), WAIT) == data
    assert rec.errors() == []


async def test_multibyte_text_over_one_mib_round_trips(serve_hub, ws_connect) -> None:
    _hub, url, rec = await echo_hub(serve_hub, max_message_size=BIG)
    ws = await ws_connect(url, max_size=None)
    text = mixed_text(600_000)
    assert len(text.encode()) > MIB
    await ws.send(text)
    assert await asyncio.wait_for(ws.recv(), WAIT) == text
    assert rec.errors() == []


async def test_exactly_max_message_size_is_accepted(serve_hub, ws_connect) -> None:
    _hub, url, rec = await echo_hub(serve_hub)  # the default: 1 MiB
    ws = await ws_connect(url, max_size=MIB)
    data = bytes(MIB)
    await ws.send(data)
    assert await asyncio.wait_for(ws.recv(), WAIT) == data
    await ws.send(bytes(MIB + 1))
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(ws.recv(), WAIT)
    assert info.value.rcvd.code == 1009
    await rec.wait("disconnect")


async def test_fragments_from_a_sync_iterable(serve_hub, ws_connect) -> None:
    _hub, url, rec = await echo_hub(serve_hub, max_message_size=BIG)
    ws = await ws_connect(url, max_size=None)
    chunks = [os.urandom(100_000) for _ in range(15)]
    await ws.send(chunks)
    assert await asyncio.wait_for(ws.recv(), WAIT) == b"".join(chunks)
    texts = [mixed_text(40_000, seed=i) for i in range(10)]
    await ws.send(texts)
    assert await asyncio.wait_for(ws.recv(), WAIT) == "".join(texts)
    assert rec.of("message_binary") == [(1_500_000,)]


async def test_fragments_from_an_async_iterable(serve_hub, ws_connect) -> None:
    _hub, url, _rec = await echo_hub(serve_hub, max_message_size=BIG)
    ws = await ws_connect(url, max_size=None)

    async def fragments():
        for i in range(12):
            await asyncio.sleep(0)
            yield mixed_text(50_000, seed=100 + i)

    await ws.send(fragments())
    expected = "".join(mixed_text(50_000, seed=100 + i) for i in range(12))
    assert len(expected.encode()) > MIB
    assert await asyncio.wait_for(ws.recv(), WAIT) == expected

    async def binary_fragments():
        for i in range(3):
            yield bytes([i]) * 500_000

    await ws.send(binary_fragments())
    expected_binary = b"".join(bytes([i]) * 500_000 for i in range(3))
    assert await asyncio.wait_for(ws.recv(), WAIT) == expected_binary


async def test_large_broadcast_to_several_clients(serve_hub, ws_connect) -> None:
    hub, url = await serve_hub(max_message_size=BIG)
    rec = Recorder(hub)
    clients = [await ws_connect(url, max_size=None) for _ in range(4)]
    await rec.wait("connect", 4)
    data = os.urandom(2 * MIB)
    text = mixed_text(300_000, seed=3)
    assert hub.broadcast_binary(data) == 4
    assert hub.broadcast(text) == 4
    for ws in clients:
        assert await asyncio.wait_for(ws.recv(), WAIT) == data
        assert await asyncio.wait_for(ws.recv(), WAIT) == text


@pytest.mark.parametrize("piece", [1, 7, 997, 65_537])
async def test_a_big_masked_frame_in_odd_tcp_pieces(serve_hub, raw_connect, piece) -> None:
    # Pieces not aligned to the 4-byte mask nor to UTF-8 sequences: the hub unmasks and checks
    # text as it arrives, resuming mid-frame each time.
    _hub, url, rec = await echo_hub(serve_hub, max_message_size=BIG)
    raw = await raw_connect(url)
    size = 20_000 if piece < 100 else 300_000
    text = mixed_text(size, seed=piece)
    data = encode_frame(OP_TEXT, text.encode(), mask=True)
    await raw.dribble(data, piece, every=64 if piece < 100 else 1)
    echoed = await raw.recv_data()
    assert echoed.opcode == OP_TEXT
    assert echoed.payload.decode() == text
    assert rec.errors() == []


async def test_many_fragments_in_odd_pieces(serve_hub, raw_connect) -> None:
    _hub, url, rec = await echo_hub(serve_hub, max_message_size=BIG)
    raw = await raw_connect(url)
    text = mixed_text(200_000, seed=11).encode()
    # Fragment boundaries cut through UTF-8 sequences on purpose.
    cuts = [0, 1, 2, 3, 1001, 50_001, 50_002, 300_003, len(text)]
    stream = b""
    for n, (a, b) in enumerate(itertools.pairwise(cuts)):
        opcode = OP_TEXT if n == 0 else OP_CONT
        stream += encode_frame(opcode, text[a:b], fin=b == len(text), mask=True)
    await raw.dribble(stream, 4093)
    echoed = await raw.recv_data()
    assert echoed.payload == text
    raw.send_frame(OP_BINARY, b"after")
    assert (await raw.recv_data()).payload == b"after"
    assert rec.errors() == []
