"""Codecs (``melody.codecs``): the Packet layout without sockets, then real clients on 127.0.0.1.

The codec-level tests need no socket: Packet parse/build (compiled or pure core, whichever is
loaded) and the JSON decode errors. The end-to-end ones run each body on asyncio and uvloop
(the ``run`` fixture), talk to a hub served on port 0 with the ``websockets`` client, and bound
every wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import melody
from melody import Melody, Session
from melody._core import packet as core_packet
from melody.codecs import JSON, JSONCodec, Packet, PacketCodec, PacketMessage
from melody.errors import (
    BadMagic,
    DecodeError,
    InvalidJSON,
    LengthMismatch,
    UnsupportedData,
    UnsupportedVersion,
)

HOST = "127.0.0.1"
#: Upper bound of any single wait; only reached when something is broken.
WAIT = 5.0
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
T = TypeVar("T")
Runner = Callable[[Callable[[], Awaitable[Any]]], Any]


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Runner:
    """``run(main)``: run the coroutine function ``main`` on a fresh loop of the given kind."""
    factory = LOOPS[request.param]

    def runner(main: Callable[[], Awaitable[T]]) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(30):
                return await main()

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(bounded())

    return runner


async def bounded(aw: Awaitable[T]) -> T:
    async with asyncio.timeout(WAIT):
        return await aw


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(WAIT):
            while not predicate():
                await asyncio.sleep(0.002)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for: {what}") from None


@contextlib.asynccontextmanager
async def serving(hub: Melody) -> AsyncIterator[str]:
    """Serve ``hub`` on 127.0.0.1 port 0; yield its URL; close it at the end."""
    server = await hub.serve(HOST, 0)
    try:
        yield f"ws://{HOST}:{server.sockets[0].getsockname()[1]}"
    finally:
        if not hub.is_closed():
            hub.close()
        await hub.wait_closed(timeout=1.0)


def client(url: str) -> Any:
    return connect(url, proxy=None, ping_interval=None, open_timeout=WAIT, close_timeout=1)


async def close_code(ws: ClientConnection) -> int | None:
    """Read until the hub closes; the close code it sent."""
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(WAIT):
            while True:
                await ws.recv()
    return ws.close_code


def header(command: int = 1, payload_len: int = 0, *, magic: int = 0x4D45, version: int = 1,
           msg_id: int = 0, flags: int = 0) -> bytes:
    return struct.pack(">HBBHII", magic, version, flags, command, msg_id, payload_len)


# -- the Packet layout, no socket -----------------------------------------------------------------


def test_packet_layout_is_the_documented_header() -> None:
    data = Packet.build(0x0102, b"hi", 7, melody.codecs.FLAG_REPLY)
    assert data == header(0x0102, 2, msg_id=7, flags=1) + b"hi"
    assert len(data) == core_packet.HEADER_SIZE + 2
    assert Packet.decode(data) == PacketMessage(0x0102, b"hi", 7, 1)


@pytest.mark.parametrize("payload", [b"", b"x", bytes(range(256)) * 300])
def test_packet_round_trip(payload: bytes) -> None:
    for buf in (payload, bytearray(payload), memoryview(payload)):
        data = Packet.encode(PacketMessage(65535, buf, 2**32 - 1, 0xFF))
        assert Packet.decode(data) == PacketMessage(65535, payload, 2**32 - 1, 0xFF)
    assert Packet.decode(Packet.encode((3, payload))) == PacketMessage(3, payload)


MALFORMED_PACKETS = [
    # (name, data, error, close code)
    ("empty", b"", LengthMismatch, 1007),
    ("truncated header", header(1, 0)[:9], LengthMismatch, 1007),
    ("truncated payload", header(1, 10) + b"12345", LengthMismatch, 1007),
    ("oversize length", header(1, 0xFFFFFFFF) + b"abc", LengthMismatch, 1007),
    ("trailing bytes", header(1, 1) + b"ab", LengthMismatch, 1007),
    ("wrong magic", header(1, 0, magic=0x1234), BadMagic, 1002),
    ("unknown version", header(1, 0, version=2), UnsupportedVersion, 1002),
]


@pytest.mark.parametrize(("name", "data", "error", "code"), MALFORMED_PACKETS,
                         ids=[m[0] for m in MALFORMED_PACKETS])
def test_malformed_packets_are_named_errors(name: str, data: bytes, error: type[DecodeError],
                                            code: int) -> None:
    with pytest.raises(error) as info:
        Packet.decode(data)
    assert info.value.code == code
    assert isinstance(info.value, DecodeError)


def test_packet_codec_refuses_text_and_bad_fields() -> None:
    with pytest.raises(UnsupportedData) as info:
        Packet.decode("text")
    assert info.value.code == 1003
    with pytest.raises(ValueError):
        Packet.build(0x10000)
    with pytest.raises(ValueError):
        Packet.build(1, b"", -1)
    with pytest.raises(ValueError):
        PacketCodec(magic=0x10000)
    with pytest.raises(TypeError):
        Packet.encode({"not": "a packet"})
    # Another magic number is another protocol.
    other = PacketCodec(magic=0xBEEF)
    with pytest.raises(BadMagic):
        other.decode(Packet.build(1))
    assert other.decode(other.build(1, b"ok")).payload == b"ok"


@pytest.mark.parametrize("text", ["{", "", "[1,]", "nan", '{"a": 1}x', b"\xff\xfe"])
def test_invalid_json_is_invalid_json(text: str | bytes) -> None:
    with pytest.raises(InvalidJSON) as info:
        JSON.decode(text)
    assert info.value.code == 1007


def test_json_codec() -> None:
    assert JSON.decode('{"a": [1, 2]}') == {"a": [1, 2]}
    assert JSON.decode(b'{"a": null}') == {"a": None}
    assert JSON.encode({"a": "é"}) == '{"a":"é"}'
    with pytest.raises(TypeError):
        JSON.encode(object())
    with pytest.raises(ValueError):
        JSONCodec(on_invalid="ignore")  # type: ignore[arg-type]


# -- end to end -----------------------------------------------------------------------------------


class CountingJSON(JSONCodec):
    """JSON that counts its encodes: a broadcast must encode once, whatever the audience."""

    def __init__(self) -> None:
        super().__init__()
        self.encodes = 0

    def encode(self, obj: Any) -> str:
        self.encodes += 1
        return super().encode(obj)


def test_json_round_trip(run: Runner) -> None:
    hub = Melody(codec=JSON)
    received: list[Any] = []

    @hub.handle_message
    def on_message(session: Session, msg: Any) -> None:
        received.append(msg)
        session.write_json({"echo": msg})

    async def main() -> None:
        async with serving(hub) as url, client(url) as ws:
            await ws.send('{"type": "hello", "n": [1, 2.5, "é"]}')
            assert orjson.loads(await bounded(ws.recv())) == {
                "echo": {"type": "hello", "n": [1, 2.5, "é"]}}
            # JSON in a binary message is decoded as well; the answer is text.
            await ws.send(b'{"b": true}')
            reply = await bounded(ws.recv())
            assert isinstance(reply, str) and orjson.loads(reply) == {"echo": {"b": True}}
        assert received == [{"type": "hello", "n": [1, 2.5, "é"]}, {"b": True}]

    run(main)


def test_broadcast_json_encodes_once(run: Runner) -> None:
    codec = CountingJSON()
    hub = Melody(codec=codec)

    async def main() -> None:
        async with serving(hub) as url:
            clients = [await client(url) for _ in range(5)]
            try:
                await wait_until(lambda: len(hub) == 5, "5 sessions")
                assert hub.broadcast_json({"price": 1.25, "sym": "ABC"}) == 5
                assert codec.encodes == 1
                for ws in clients:
                    assert orjson.loads(await bounded(ws.recv())) == {"price": 1.25, "sym": "ABC"}
                session = hub.sessions()[0]
                hub.subscribe(session, "t")
                assert hub.publish_json("t", [1]) == 1
                assert codec.encodes == 2
            finally:
                for ws in clients:
                    await ws.close()

    run(main)


def test_broadcast_json_without_a_codec_uses_orjson(run: Runner) -> None:
    hub = Melody()

    async def main() -> None:
        async with serving(hub) as url, client(url) as ws:
            await wait_until(lambda: len(hub) == 1, "a session")
            assert hub.broadcast_json({"a": 1}) == 1
            assert await bounded(ws.recv()) == '{"a":1}'
            with pytest.raises(TypeError):
                hub.broadcast_json({"a": object()})

    run(main)


def test_packet_round_trip_e2e(run: Runner) -> None:
    hub = Melody(codec=Packet)
    received: list[PacketMessage] = []

    @hub.handle_message
    def on_message(session: Session, msg: PacketMessage) -> None:
        received.append(msg)
        session.write_binary(Packet.build(msg.command + 1, msg.payload[::-1]))

    async def main() -> None:
        async with serving(hub) as url, client(url) as ws:
            await ws.send(Packet.build(0x10, b"abc", 5))
            reply = await bounded(ws.recv())
            assert isinstance(reply, bytes)
            assert Packet.decode(reply) == PacketMessage(0x11, b"cba")
        assert received == [PacketMessage(0x10, b"abc", 5, 0)]

    run(main)


MALFORMED_E2E = [
    # (name, codec, message, error, close code)
    ("bad JSON", JSON, "{not json", InvalidJSON, 1007),
    ("bad JSON in binary", JSON, b"\x80\x81", InvalidJSON, 1007),
    ("truncated packet", Packet, header(1, 0)[:5], LengthMismatch, 1007),
    ("wrong magic", Packet, header(1, 0, magic=0xCAFE), BadMagic, 1002),
    ("unknown version", Packet, header(1, 0, version=9), UnsupportedVersion, 1002),
    ("oversize length", Packet, header(1, 1 << 31) + b"xy", LengthMismatch, 1007),
    ("text to Packet", Packet, "hello", UnsupportedData, 1003),
]


@pytest.mark.parametrize(("name", "codec", "message", "error", "code"), MALFORMED_E2E,
                         ids=[m[0] for m in MALFORMED_E2E])
def test_malformed_input_closes_with_a_named_error(
        run: Runner, name: str, codec: melody.codecs.Codec, message: str | bytes,
        error: type[DecodeError], code: int) -> None:
    hub = Melody(codec=codec)
    errors: list[BaseException] = []
    handled: list[Any] = []
    hub.handle_error(lambda session, exc: errors.append(exc))
    hub.handle_message(lambda session, msg: handled.append(msg))

    async def main() -> None:
        async with serving(hub) as url, client(url) as ws:
            await ws.send(message)
            assert await close_code(ws) == code
            assert len(errors) == 1 and type(errors[0]) is error, errors
            assert hub.stats()["decode_errors"] == 1
            assert handled == []

    run(main)


def test_on_invalid_reply_keeps_the_session(run: Runner) -> None:
    hub = Melody(codec=JSONCodec(on_invalid="reply"))
    errors: list[BaseException] = []
    hub.handle_error(lambda session, exc: errors.append(exc))
    hub.handle_message(lambda session, msg: session.write_json({"got": msg}))

    async def main() -> None:
        async with serving(hub) as url, client(url) as ws:
            await ws.send("{oops")
            reply = orjson.loads(await bounded(ws.recv()))
            assert reply["id"] is None and reply["ok"] is False
            assert reply["error"].startswith("invalid JSON")
            await ws.send("[1]")
            assert orjson.loads(await bounded(ws.recv())) == {"got": [1]}
            assert [type(e) for e in errors] == [InvalidJSON]
            assert hub.stats()["decode_errors"] == 1

    run(main)


def test_packet_on_invalid_reply_is_an_error_packet(run: Runner) -> None:
    hub = Melody(codec=PacketCodec(on_invalid="reply"))
    hub.handle_error(lambda session, exc: None)

    async def main() -> None:
        async with serving(hub) as url, client(url) as ws:
            await ws.send(header(1, 0, magic=1))
            reply = Packet.decode(await bounded(ws.recv()))
            assert reply.command == 0 and reply.id == 0
            assert reply.flags == melody.codecs.FLAG_REPLY | melody.codecs.FLAG_ERROR
            assert reply.payload.startswith(b"wrong magic number")

    run(main)


def test_handler_exceptions_never_escape(run: Runner) -> None:
    hub = Melody(codec=JSON)
    errors: list[BaseException] = []
    hub.handle_error(lambda session, exc: errors.append(exc))

    @hub.handle_message
    def boom(session: Session, msg: Any) -> None:
        raise RuntimeError(msg["why"])

    async def main() -> None:
        async with serving(hub) as url, client(url) as ws:
            await ws.send('{"why": "bad"}')
            await wait_until(lambda: bool(errors), "the error reported")
            assert isinstance(errors[0], RuntimeError)
            await ws.send('{"why": "again"}')
            await wait_until(lambda: len(errors) == 2, "the session still works")

    run(main)


def test_msgpack_example_codec(run: Runner) -> None:
    msgpack = pytest.importorskip("msgpack")
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "examples" / "msgpack_codec.py"
    spec = importlib.util.spec_from_file_location("msgpack_codec_example", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    hub: Melody = example.hub

    async def main() -> None:
        async with serving(hub) as url, client(url) as a, client(url) as b:
            await wait_until(lambda: len(hub) == 2, "2 sessions")
            await a.send(msgpack.packb({"type": "chat.send", "id": 1, "data": {"text": "hi"}}))
            got_a = [msgpack.unpackb(await bounded(a.recv())) for _ in range(2)]
            got_b = msgpack.unpackb(await bounded(b.recv()))
            chat = {"type": "chat", "data": {"text": "hi"}}
            assert chat in got_a and {"id": 1, "ok": True, "data": 2} in got_a
            assert got_b == chat
            await a.send(b"\xc1")  # never used in msgpack
            assert await close_code(a) == 1007

    run(main)
