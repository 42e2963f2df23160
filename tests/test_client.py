"""``melody.connect``: the client against real servers on 127.0.0.1, port 0, on asyncio and uvloop.

Three kinds of peer: a melody hub, the ``websockets`` library's server (an independent
implementation: it refuses unmasked client frames, so every exchange with it checks masking),
and a raw asyncio server that writes chosen bytes (invalid handshakes, masked server frames, a
server that never answers a ping, one that does not read).

Every test body runs once per event loop (the ``run`` fixture: ``asyncio.Runner`` with the
loop's factory) under an overall timeout; every wait inside is bounded. No test measures time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve

import melody
from melody import Config, Melody, Session
from melody.errors import (
    ConnectionClosed,
    HandshakeError,
    MessageTooBig,
    ProtocolError,
)
from melody.handshake import accept_key

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


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(WAIT):
            while not predicate():
                await asyncio.sleep(0.002)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for: {what}") from None


async def bounded(aw: Awaitable[T]) -> T:
    async with asyncio.timeout(WAIT):
        return await aw


# -- servers ---------------------------------------------------------------------------------------


def echo_hub(**fields: Any) -> Melody:
    """A hub that echoes every message to its sender."""
    hub = Melody(Config(**fields))

    @hub.handle_message
    def echo(session: Session, msg: str) -> None:
        session.write(msg)

    @hub.handle_message_binary
    def echo_binary(session: Session, msg: bytes) -> None:
        session.write_binary(msg)

    return hub


@contextlib.asynccontextmanager
async def serving(hub: Melody, port: int = 0, **kwargs: Any) -> AsyncIterator[str]:
    """Serve ``hub`` on 127.0.0.1; yield its ``ws://`` URL; close it at the end."""
    server = await hub.serve(HOST, port, **kwargs)
    port = server.sockets[0].getsockname()[1]
    scheme = "wss" if kwargs.get("ssl") else "ws"
    try:
        yield f"{scheme}://{HOST}:{port}"
    finally:
        if not hub.is_closed():
            hub.close()
        await hub.wait_closed(timeout=1.0)


async def ws_echo(ws: ServerConnection) -> None:
    with contextlib.suppress(Exception):
        async for msg in ws:
            await ws.send(msg)


@contextlib.asynccontextmanager
async def ws_server(handler: Callable[[ServerConnection], Awaitable[None]] = ws_echo,
                    port: int = 0, **kwargs: Any) -> AsyncIterator[str]:
    """The ``websockets`` server running ``handler``; yields its URL."""
    kwargs.setdefault("max_size", 4 << 20)
    kwargs.setdefault("ping_interval", None)
    async with ws_serve(handler, HOST, port, **kwargs) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://{HOST}:{port}"


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: RawHandler) -> AsyncIterator[str]:
    """A TCP server that reads the request head and hands it to ``handler``; yields its URL."""
    tasks: list[asyncio.Task[None]] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            await handler(reader, writer, head)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_client, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"ws://{HOST}:{port}"
    finally:
        server.close()
        # Handlers end when the client's side closes; cancel only what is still stuck.
        if tasks:
            await asyncio.wait(tasks, timeout=WAIT)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def key_of(head: bytes) -> str:
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "sec-websocket-key":
            return value.strip()
    raise AssertionError("no Sec-WebSocket-Key in the request")


def accept_101(head: bytes, extra: str = "") -> bytes:
    return (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(key_of(head))}\r\n{extra}\r\n").encode("latin-1")


def server_frame(opcode: int, payload: bytes, *, fin: bool = True,
                 mask: bytes | None = None) -> bytes:
    """A frame as a server writes it (unmasked unless ``mask`` is given, which is a violation)."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    mask_bit = 0x80 if mask is not None else 0
    if n < 126:
        head = struct.pack("!BB", first, mask_bit | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if mask is not None:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return head + mask + payload
    return head + payload


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes | None, bytes]:
    """``(opcode, mask key or None, unmasked payload)`` of the next frame a client sent."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    mask = await reader.readexactly(4) if b1 & 0x80 else None
    payload = await reader.readexactly(n)
    if mask is not None:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return b0 & 0x0F, mask, payload


async def answer_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the client's frames up to its close; echo the close (the handler then closes TCP)."""
    while True:
        opcode, _, payload = await read_client_frame(reader)
        if opcode == 0x8:
            writer.write(server_frame(0x8, payload[:2]))
            return


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# A self-signed certificate for 127.0.0.1 and localhost, valid until 2124 (test use only).
TEST_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgR3/ZZ26WwnmnX1BE
aCwdks1yrFpEZwUIvwTgb0IO/oGhRANCAATwiF2F27pDEwoscZljnpVrP0Qz1jAi
cCKyDrcpjoL+DhpQyjm7YmrP+tOG3s7xCBQ9+wLsefvmCWWjrzxVAkPx
-----END PRIVATE KEY-----
"""
TEST_CERT = """-----BEGIN CERTIFICATE-----
MIIBXzCCAQWgAwIBAgIUPVY4k7ftkBWD2apCyYqjG/ebeBEwCgYIKoZIzj0EAwIw
FjEUMBIGA1UEAwwLbWVsb2R5IHRlc3QwIBcNMjQwMTAxMDAwMDAwWhgPMjEyNDAx
MDEwMDAwMDBaMBYxFDASBgNVBAMMC21lbG9keSB0ZXN0MFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAE8Ihdhdu6QxMKLHGZY56Vaz9EM9YwInAisg63KY6C/g4aUMo5
u2Jqz/rTht7O8QgUPfsC7Hn75gllo688VQJD8aMvMC0wGgYDVR0RBBMwEYIJbG9j
YWxob3N0hwR/AAABMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIg
RMANycxZyg3AdsKjETQPz0T5Jlx40Oov1QDO8kMVOI4CIQDyfbPUIuzo2QDkOlzI
uK2+efEmWQp05sCrnXKbqhURsw==
-----END CERTIFICATE-----
"""


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """``(server context, client context trusting the test certificate)``."""
    cert = tmp_path / "cert.pem"
    key = tmp_path / "key.pem"
    cert.write_text(TEST_CERT)
    key.write_text(TEST_KEY)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    client.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return server, client


MESSAGES: list[str | bytes] = [
    "",
    "hello",
    "héllo wörld — 🎵 日本語 ✓",
    "é" * (1 << 19),  # 1 MiB of two-byte UTF-8
    b"",
    bytes(range(256)),
    os.urandom(1 << 20),  # 1 MiB
]


# -- round trips -----------------------------------------------------------------------------------


def test_round_trip_with_melody_hub(run: Runner) -> None:
    async def main() -> None:
        async with serving(echo_hub()) as url, melody.connect(url + "/echo?x=1") as conn:
            assert isinstance(conn, melody.ClientConnection)
            assert conn.open and not conn.closed and conn.close_code is None
            for msg in MESSAGES:
                if isinstance(msg, str):
                    await conn.send(msg)
                else:
                    await conn.send_binary(msg)
                got = await bounded(conn.recv())
                assert type(got) is type(msg)
                assert got == msg
            stats = conn.stats()
            assert stats["messages_in"] == stats["messages_out"] == len(MESSAGES)
        assert conn.closed and conn.close_code == 1000

    run(main)


def test_round_trip_with_websockets_server(run: Runner) -> None:
    # The websockets server fails the connection (1002) on an unmasked frame: every echo
    # coming back proves the client masked what it sent.
    received: list[str | bytes] = []

    async def handler(ws: ServerConnection) -> None:
        async for msg in ws:
            received.append(msg)
            await ws.send(msg)

    async def main() -> None:
        async with ws_server(handler) as url, melody.connect(url) as conn:
            for msg in MESSAGES:
                if isinstance(msg, str):
                    await conn.send(msg)
                else:
                    await conn.send_binary(bytearray(msg))
                assert await bounded(conn.recv()) == msg
        assert received == MESSAGES
        assert conn.close_code == 1000

    run(main)


def test_frames_are_masked_with_a_fresh_key_each(run: Runner) -> None:
    frames: list[tuple[int, bytes | None, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      head: bytes) -> None:
        writer.write(accept_101(head))
        for _ in range(4):
            frames.append(await read_client_frame(reader))
        writer.write(server_frame(0x8, struct.pack("!H", 1000)))

    async def main() -> None:
        async with raw_server(handler) as url:
            conn = await melody.connect(url)
            await conn.send("same text")
            await conn.send("same text")
            await conn.send_binary(b"\x00" * 40)
            await conn.close()
        assert [f[0] for f in frames] == [0x1, 0x1, 0x2, 0x8]
        assert [f[2] for f in frames[:3]] == [b"same text", b"same text", b"\x00" * 40]
        keys = [f[1] for f in frames]
        assert all(key is not None for key in keys), "an unmasked client frame"
        assert len(set(keys)) == 4, "mask keys were reused"
        assert struct.unpack("!H", frames[3][2][:2])[0] == 1000

    run(main)


def test_frames_right_behind_the_101_are_delivered(run: Runner) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      head: bytes) -> None:
        # One write: the 101, a text message split in two frames, a binary message.
        writer.write(accept_101(head) + server_frame(0x1, b"hel", fin=False)
                     + server_frame(0x0, b"lo") + server_frame(0x2, b"\x01\x02"))
        await answer_close(reader, writer)

    async def main() -> None:
        async with raw_server(handler) as url:
            conn = await melody.connect(url)
            assert await bounded(conn.recv()) == "hello"
            assert await bounded(conn.recv()) == b"\x01\x02"
            await conn.close()

    run(main)


def test_wss_with_an_ssl_context(run: Runner, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls

    async def main() -> None:
        async with serving(echo_hub(), ssl=server_ctx) as url:
            assert url.startswith("wss://")
            async with melody.connect(url, ssl=client_ctx, compression=True) as conn:
                for msg in MESSAGES:
                    if isinstance(msg, str):
                        await conn.send(msg)
                    else:
                        await conn.send_binary(msg)
                    assert await bounded(conn.recv()) == msg
            # The default context does not trust a self-signed certificate.
            with pytest.raises(ssl.SSLCertVerificationError):
                await melody.connect(url)
            with pytest.raises(ValueError, match="wss"):
                await melody.connect(url.replace("wss://", "ws://"), ssl=client_ctx)

    run(main)


# -- compression, subprotocols, headers ------------------------------------------------------------


def test_compression_negotiated_with_melody(run: Runner) -> None:
    text = "melody compresses well. " * 8000  # ~190 KB

    async def main() -> None:
        async with serving(echo_hub(compression=True)) as url:
            async with melody.connect(url, compression=True) as conn:
                offered = conn.request_headers.get("Sec-WebSocket-Extensions") or ""
                agreed = conn.response_headers.get("Sec-WebSocket-Extensions") or ""
                assert offered.startswith("permessage-deflate")
                assert agreed.startswith("permessage-deflate")
                for _ in range(3):
                    await conn.send(text)
                    assert await bounded(conn.recv()) == text
                await conn.send_binary(text.encode())
                assert await bounded(conn.recv()) == text.encode()
                # Four ~190 KB messages came back in far fewer bytes: they were compressed.
                assert conn.stats()["bytes_in"] < len(text)
            async with melody.connect(url) as plain:
                assert "Sec-WebSocket-Extensions" not in plain.request_headers
                assert "Sec-WebSocket-Extensions" not in plain.response_headers
                await plain.send(text)
                assert await bounded(plain.recv()) == text
                assert plain.stats()["bytes_in"] > len(text)

    run(main)


def test_compression_negotiated_with_websockets(run: Runner) -> None:
    text = "websockets compresses too. " * 5000

    async def main() -> None:
        async with ws_server(compression="deflate") as url:
            async with melody.connect(url, compression=True) as conn:
                agreed = conn.response_headers.get("Sec-WebSocket-Extensions") or ""
                assert agreed.startswith("permessage-deflate")
                for _ in range(3):  # with context takeover, as websockets does by default
                    await conn.send(text)
                    assert await bounded(conn.recv()) == text
                await conn.send_binary(os.urandom(5000))
                assert len(await bounded(conn.recv())) == 5000
                assert conn.stats()["bytes_in"] < len(text)
        async with ws_server(compression=None) as url:
            async with melody.connect(url, compression=True) as conn:
                assert "Sec-WebSocket-Extensions" not in conn.response_headers
                await conn.send(text)
                assert await bounded(conn.recv()) == text

    run(main)


def test_subprotocol_selection(run: Runner) -> None:
    async def main() -> None:
        async with serving(echo_hub(subprotocols=["chat.v2", "chat.v1"])) as url:
            async with melody.connect(url, subprotocols=["chat.v1", "chat.v2"]) as conn:
                assert conn.subprotocol == "chat.v2"  # the server's preference
            async with melody.connect(url, subprotocols=["chat.v1"]) as conn:
                assert conn.subprotocol == "chat.v1"
            async with melody.connect(url) as conn:
                assert conn.subprotocol is None
        async with ws_server(subprotocols=["mqtt"]) as url:
            async with melody.connect(url, subprotocols=["soap", "mqtt"]) as conn:
                assert conn.subprotocol == "mqtt"
                await conn.send("x")
                assert await bounded(conn.recv()) == "x"

    run(main)


def test_request_headers_origin_and_user_agent(run: Runner) -> None:
    seen: list[melody.Request] = []

    async def main() -> None:
        hub = echo_hub()

        @hub.handle_upgrade
        def upgrade(request: melody.Request) -> None:
            seen.append(request)

        async with serving(hub) as url:
            async with melody.connect(
                    url + "/room/é?token=a%20b", origin="https://app.example.com",
                    headers={"X-Trace": "abc"}, user_agent="tester/1") as conn:
                await conn.send("ok")
                assert await bounded(conn.recv()) == "ok"
                assert conn.request_headers["X-Trace"] == "abc"
            async with melody.connect(url, headers=[("X-A", "1"), ("X-A", "2")],
                                      user_agent=None) as conn:
                pass
        request = seen[0]
        assert request.path == "/room/%C3%A9"
        assert request.query_params["token"] == ["a b"]
        assert request.headers["Origin"] == "https://app.example.com"
        assert request.headers["X-Trace"] == "abc"
        assert request.headers["User-Agent"] == "tester/1"
        assert seen[1].headers.get_all("X-A") == ["1", "2"]
        assert "User-Agent" not in seen[1].headers

    run(main)


def test_invalid_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="ws://"):
        melody.connect("http://127.0.0.1/")
    with pytest.raises(ValueError, match="fragment"):
        melody.connect("ws://127.0.0.1/#x")
    with pytest.raises(ValueError, match="no host"):
        melody.connect("ws:///path")
    with pytest.raises(ValueError, match="subprotocols"):
        melody.connect("ws://127.0.0.1/", headers={"Sec-WebSocket-Protocol": "x"})
    with pytest.raises(ValueError, match="max_queue"):
        melody.connect("ws://127.0.0.1/", max_queue=0)
    with pytest.raises(ValueError, match="reconnect"):
        melody.connect("ws://127.0.0.1/", on_connect=print)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="backoff_max"):
        melody.connect("ws://127.0.0.1/", reconnect=True, backoff_initial=2, backoff_max=1)
    with pytest.raises(ValueError, match="jitter"):
        melody.connect("ws://127.0.0.1/", reconnect=True, jitter=2)


# -- refused and failed handshakes -----------------------------------------------------------------


def test_refusal_404_for_a_path_the_hub_does_not_serve(run: Runner) -> None:
    async def main() -> None:
        async with serving(echo_hub(paths=["/ws"])) as url:
            with pytest.raises(HandshakeError) as info:
                await melody.connect(url + "/elsewhere")
            assert info.value.status == 404
            assert "404" in info.value.reason
            assert "no WebSocket endpoint at /elsewhere" in info.value.reason
            async with melody.connect(url + "/ws") as conn:
                await conn.send("in")
                assert await bounded(conn.recv()) == "in"

    run(main)


def test_refusal_401_from_handle_upgrade(run: Runner) -> None:
    async def main() -> None:
        hub = echo_hub()

        @hub.handle_upgrade
        async def upgrade(request: melody.Request) -> dict[str, Any]:
            token = request.headers.get("Authorization")
            if token != "Bearer good":
                raise HandshakeError(401, "bad token", [("WWW-Authenticate", "Bearer")])
            return {"user": "ann"}

        async with serving(hub) as url:
            with pytest.raises(HandshakeError) as info:
                await melody.connect(url, headers={"Authorization": "Bearer bad"})
            assert info.value.status == 401
            assert "bad token" in info.value.reason
            assert ("WWW-Authenticate", "Bearer") in info.value.headers
            async with melody.connect(url, headers={"Authorization": "Bearer good"}) as conn:
                await conn.send("authorised")
                assert await bounded(conn.recv()) == "authorised"

    run(main)


INVALID_101 = {
    "wrong accept": (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
        "Sec-WebSocket-Accept"),
    "no upgrade header": (None, "Upgrade: websocket"),
    "subprotocol not offered": ("Sec-WebSocket-Protocol: other\r\n", "not offered"),
    "extension not offered": ("Sec-WebSocket-Extensions: permessage-deflate\r\n",
                              "not offered"),
    "malformed head": (b"HTTP/1.1 1o1 Nope\r\n\r\n", "invalid response"),
}


@pytest.mark.parametrize("case", sorted(INVALID_101))
def test_invalid_101_is_a_handshake_error(run: Runner, case: str) -> None:
    response, reason = INVALID_101[case]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      head: bytes) -> None:
        if isinstance(response, bytes):
            writer.write(response)
        elif response is None:
            writer.write(f"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Accept: {accept_key(key_of(head))}\r\n\r\n".encode())
        else:
            writer.write(accept_101(head, response))
        await reader.read()

    async def main() -> None:
        async with raw_server(handler) as url:
            with pytest.raises(HandshakeError) as info:
                await melody.connect(url, subprotocols=["mine"])
            assert info.value.status == 502
            assert reason in info.value.reason

    run(main)


def test_connection_refused_is_an_os_error(run: Runner) -> None:
    async def main() -> None:
        with pytest.raises(OSError):
            await melody.connect(f"ws://{HOST}:{free_port()}/")

    run(main)


def test_server_closing_before_answering(run: Runner) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      head: bytes) -> None:
        pass  # close without a response

    async def main() -> None:
        async with raw_server(handler) as url:
            with pytest.raises(ConnectionError, match="before the server answered"):
                await melody.connect(url)

    run(main)


def test_open_timeout(run: Runner) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      head: bytes) -> None:
        await reader.read()  # never answers

    async def main() -> None:
        async with raw_server(handler) as url:
            with pytest.raises(TimeoutError, match="opening handshake"):
                await melody.connect(url, open_timeout=0.05)

    run(main)


# -- ping and pong ---------------------------------------------------------------------------------


def test_ping_returns_when_the_pong_arrives(run: Runner) -> None:
    async def main() -> None:
        for server in (serving(echo_hub()), ws_server()):
            async with server as url, melody.connect(url) as conn:
                latency = await conn.ping(b"abc", timeout=WAIT)
                assert latency >= 0
                # Concurrent pings, one with a duplicate payload: every one is answered.
                latencies = await bounded(asyncio.gather(
                    conn.ping(), conn.ping("x"), conn.ping("x"), conn.ping(b"y" * 125)))
                assert len(latencies) == 4
                assert conn.stats()["pongs_received"] >= 5
                with pytest.raises(ValueError):
                    await conn.ping(b"z" * 126)

    run(main)


def test_ping_timeout_and_keepalive_failure(run: Runner) -> None:
    closes: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      head: bytes) -> None:
        writer.write(accept_101(head))
        while True:
            opcode, _, payload = await read_client_frame(reader)  # pings are never answered
            if opcode == 0x8:
                closes.append(payload)
                return

    async def main() -> None:
        async with raw_server(handler) as url:
            conn = await melody.connect(url)
            with pytest.raises(TimeoutError):
                await conn.ping(timeout=0.01)
            assert conn.open
            await conn.close()
            # Keepalive: no pong within ping_timeout fails the connection with 1011.
            conn = await melody.connect(url, ping_interval=0.01, ping_timeout=0.02)
            with pytest.raises(ConnectionClosed) as info:
                await bounded(conn.recv())
            assert (info.value.code, info.value.reason) == (1011, "keepalive ping timeout")
            await bounded(conn.wait_closed())
            assert conn.close_code == 1011
        assert [struct.unpack("!H", p[:2])[0] for p in closes] == [1000, 1011]

    run(main)


def test_keepalive_pings_are_answered(run: Runner) -> None:
    async def main() -> None:
        async with serving(echo_hub()) as url:
            async with melody.connect(url, ping_interval=0.005) as conn:
                await wait_until(lambda: conn.stats()["pongs_received"] >= 3, "three pongs")
                assert conn.open

    run(main)


def test_server_pings_are_answered(run: Runner) -> None:
    async def main() -> None:
        hub = echo_hub(ping_period=0.01, pong_wait=1.0)
        pongs: list[Session] = []
        hub.handle_pong(pongs.append)
        async with serving(hub) as url, melody.connect(url) as conn:
            await wait_until(lambda: len(pongs) >= 3, "the hub's pings answered")
            assert conn.open

    run(main)


# -- closing ---------------------------------------------------------------------------------------


def test_client_close_code_reaches_the_hub(run: Runner) -> None:
    async def main() -> None:
        hub = echo_hub()
        closes: list[tuple[int, str]] = []

        @hub.handle_close
        def on_close(session: Session, code: int, reason: str) -> None:
            closes.append((code, reason))

        async with serving(hub) as url:
            conn = await melody.connect(url)
            await conn.send("before")
            assert await bounded(conn.recv()) == "before"
            await bounded(conn.close(4001, "client bye"))
            assert conn.closed and not conn.open
            assert (conn.close_code, conn.close_reason) == (4001, "")  # the hub's echo
            await wait_until(lambda: closes == [(4001, "client bye")], "the hub's close")
            with pytest.raises(ConnectionClosed):
                await conn.send("after")
            with pytest.raises(ConnectionClosed):
                await conn.recv()
            await conn.close()  # again: nothing to do
            other = await melody.connect(url)
            for code in (1004, 1005, 1006, 1015, 2999, 5000):
                with pytest.raises(ValueError):
                    await other.close(code)
            assert other.open
            await other.close(1014)

    run(main)


def test_server_close_seen_by_the_iterator(run: Runner) -> None:
    async def main() -> None:
        hub = Melody()

        @hub.handle_message
        def on_message(session: Session, msg: str) -> None:
            for i in range(3):
                session.write(f"{msg}{i}")
            code = int(msg)
            session.close_with_msg(code, f"closing {code}")

        async with serving(hub) as url:
            # An application code: the iterator raises after the messages sent before it.
            conn = await melody.connect(url)
            await conn.send("4002")
            got: list[str | bytes] = []
            with pytest.raises(ConnectionClosed) as info:
                async for msg in conn:
                    got.append(msg)
            assert got == ["40020", "40021", "40022"]
            assert (info.value.code, info.value.reason) == (4002, "closing 4002")
            await bounded(conn.wait_closed())
            assert (conn.close_code, conn.close_reason) == (4002, "closing 4002")
            # 1000 and 1001 end the iteration quietly.
            for code in (1000, 1001):
                conn = await melody.connect(url)
                await conn.send(str(code))
                got = [msg async for msg in conn]
                assert got == [f"{code}{i}" for i in range(3)]
                assert conn.close_code == code

    run(main)


def test_websockets_server_close_codes(run: Runner) -> None:
    async def handler(ws: ServerConnection) -> None:
        code = int(await ws.recv())
        await ws.send("last")
        await ws.close(code, "from websockets")

    async def main() -> None:
        async with ws_server(handler) as url:
            conn = await melody.connect(url)
            await conn.send("1001")
            assert [msg async for msg in conn] == ["last"]
            assert conn.close_code == 1001
            conn = await melody.connect(url)
            await conn.send("4444")
            assert await bounded(conn.recv()) == "last"
            with pytest.raises(ConnectionClosed) as info:
                await bounded(conn.recv())
            assert (info.value.code, info.value.reason) == (4444, "from websockets")

    run(main)


def test_abnormal_drop_is_1006(run: Runner) -> None:
    async def ws_handler(ws: ServerConnection) -> None:
        await ws.recv()
        ws.transport.abort()

    async def main() -> None:
        hub = Melody()

        @hub.handle_message
        def on_message(session: Session, msg: str) -> None:
            session.write("bye")
            session.abort()

        for server in (serving(hub), ws_server(ws_handler)):
            async with server as url:
                conn = await melody.connect(url)
                await conn.send("drop me")
                with pytest.raises(ConnectionClosed) as info:
                    async for _ in conn:
                        pass
                assert info.value.code == 1006
                assert conn.close_code == 1006 and conn.closed

    run(main)


def test_client_max_message_size(run: Runner) -> None:
    async def main() -> None:
        hub = Melody()
        closes: list[int] = []

        @hub.handle_message
        def on_message(session: Session, msg: str) -> None:
            session.write("x" * 1000)
            session.write("y" * 1001)

        @hub.handle_close
        def on_close(session: Session, code: int, reason: str) -> None:
            closes.append(code)

        async with serving(hub) as url:
            conn = await melody.connect(url, max_message_size=1000)
            await conn.send("go")
            assert await bounded(conn.recv()) == "x" * 1000
            with pytest.raises(ConnectionClosed) as info:
                await bounded(conn.recv())
            assert info.value.code == 1009
            assert isinstance(info.value.__cause__, MessageTooBig)
            await wait_until(lambda: closes == [1009], "the hub to see 1009")

    run(main)


def test_masked_server_frame_fails_with_1002(run: Runner) -> None:
    closes: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      head: bytes) -> None:
        writer.write(accept_101(head) + server_frame(0x1, b"ok")
                     + server_frame(0x1, b"masked", mask=b"abcd"))
        opcode, _, payload = await read_client_frame(reader)
        if opcode == 0x8:
            closes.append(payload)

    async def main() -> None:
        async with raw_server(handler) as url:
            conn = await melody.connect(url)
            assert await bounded(conn.recv()) == "ok"
            with pytest.raises(ConnectionClosed) as info:
                await bounded(conn.recv())
            assert info.value.code == 1002
            assert isinstance(info.value.__cause__, ProtocolError)
            await bounded(conn.wait_closed())
        assert [struct.unpack("!H", p[:2])[0] for p in closes] == [1002]

    run(main)


def test_misuse_errors(run: Runner) -> None:
    async def main() -> None:
        async with serving(echo_hub()) as url, melody.connect(url) as conn:
            with pytest.raises(TypeError, match="send_binary"):
                await conn.send(b"bytes")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="send"):
                await conn.send_binary("text")  # type: ignore[arg-type]
            first = asyncio.ensure_future(conn.recv())
            await asyncio.sleep(0)
            with pytest.raises(RuntimeError, match="already waiting"):
                await conn.recv()
            await conn.send("unblock")
            assert await bounded(first) == "unblock"
            with pytest.raises(ValueError, match="123"):
                await conn.close(1000, "é" * 62)
            for code in (999, 1004, 1005, 1006, 1015, 2999, 5000, -1, 1 << 31, 1 << 64):
                with pytest.raises(ValueError, match="may not be sent"):
                    await conn.close(code)
            assert conn.open

    run(main)


# -- backpressure ----------------------------------------------------------------------------------


def test_bounded_queue_pauses_reading_melody(run: Runner) -> None:
    count, max_queue = 1000, 16

    async def main() -> None:
        hub = Melody(Config(message_buffer_size=2 * count))

        @hub.handle_message
        def on_message(session: Session, msg: str) -> None:
            for i in range(count):
                session.write(f"{i:04d}" + "x" * (i % 50))

        async with serving(hub) as url, melody.connect(url, max_queue=max_queue) as conn:
            await conn.send("flood")
            await wait_until(lambda: conn.stats()["read_pauses"] > 0, "reading to pause")
            got = []
            for i in range(count):
                assert conn.queued <= max_queue
                got.append(await bounded(conn.recv()))
                if i % 100 == 0:
                    await asyncio.sleep(0.001)  # a slow reader: the server keeps sending
            assert got == [f"{i:04d}" + "x" * (i % 50) for i in range(count)]
            stats = conn.stats()
            assert stats["queue_peak"] == max_queue
            assert stats["read_pauses"] >= 1
            # The client still works after the flood.
            await conn.send_binary(b"after")
            assert conn.queued == 0

    run(main)


def test_bounded_queue_with_fragments_and_pings(run: Runner) -> None:
    # websockets sends each of these messages as three frames, with pings in between: only the
    # final frame of a message counts against the queue, control frames not at all.
    count, max_queue = 300, 4

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        for i in range(count):
            await ws.send([f"{i}-", "part-", "end"])
            if i % 50 == 0:
                await ws.ping()
            await ws.send(os.urandom(i % 7))
        await ws.close()

    async def main() -> None:
        async with ws_server(handler) as url, melody.connect(url, max_queue=max_queue) as conn:
            await conn.send("go")
            got = []
            async for msg in conn:
                assert conn.queued <= max_queue
                got.append(msg)
                if len(got) % 64 == 0:
                    await asyncio.sleep(0.001)
            assert [m for m in got if isinstance(m, str)] == [
                f"{i}-part-end" for i in range(count)]
            assert [len(m) for m in got if isinstance(m, bytes)] == [i % 7 for i in range(count)]
            assert conn.stats()["queue_peak"] <= max_queue
            assert conn.stats()["read_pauses"] >= 1
            assert conn.close_code == 1000

    run(main)


@pytest.mark.parametrize("slow_reader", [False, True], ids=["fast-reader", "slow-reader"])
def test_bounded_queue_with_frames_cut_anywhere(run: Runner, slow_reader: bool) -> None:
    # Every header length (7-bit, 16-bit, 64-bit), fragments with pings between them, written
    # in chunks of random sizes: frame headers straddle reads (most with a fast reader), the
    # queue fills and reading pauses (most with a slow one). The client must count exactly.
    import random

    rng = random.Random(6455)
    sizes = [0, 1, 2, 5, 17, 125, 126, 127, 128, 300]
    big = [65535, 65536, 70000]  # a few messages with 16- and 64-bit lengths
    expected: list[str | bytes] = []
    stream = bytearray()
    bulk: list[tuple[int, int]] = []  # spans inside large payloads
    for i in range(400):
        size = big[i // 50 % 3] if i % 50 == 25 else sizes[i % len(sizes)]
        if i % 2:
            payload = bytes(rng.getrandbits(8) for _ in range(min(size, 64))) * (
                size // 64 + 1)
            payload = payload[:size]
            expected.append(payload)
            opcode = 0x2
        else:
            text = ("ü" * size)[: size // 2] + str(i)
            payload = text.encode()
            expected.append(text)
            opcode = 0x1
        pieces = rng.choice([1, 2, 3])
        cuts = sorted(rng.randrange(0, len(payload) + 1) for _ in range(pieces - 1))
        parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        for k, part in enumerate(parts):
            if len(part) > 1000:  # written in big chunks; headers and small frames byte-wise
                bulk.append((len(stream) + 20, len(stream) + len(part)))
            stream += server_frame(opcode if k == 0 else 0x0, part, fin=k == len(parts) - 1)
            if k < len(parts) - 1 and rng.random() < 0.5:
                stream += server_frame(0x9, b"p")  # a ping inside a fragmented message
    stream += server_frame(0x8, struct.pack("!H", 1000))

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      head: bytes) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(accept_101(head))
        pos = 0
        spans = iter(bulk)
        span = next(spans, (len(stream), len(stream)))
        while pos < len(stream):
            while pos >= span[1]:
                span = next(spans, (len(stream), len(stream)))
            if span[0] <= pos:
                n = min(span[1] - pos, 40000)
            else:
                n = min(rng.choice([1, 2, 3, 5, 9, 14, 60]), span[0] - pos)
            writer.write(stream[pos:pos + n])
            pos += n
            await writer.drain()
            await asyncio.sleep(0)  # let the client read this piece on its own
        await answer_close(reader, writer)

    async def main() -> None:
        async with raw_server(handler) as url:
            conn = await melody.connect(url, max_queue=3)
            got = []
            async for msg in conn:
                assert conn.queued <= 3
                got.append(msg)
                if slow_reader and len(got) % 5 == 0:
                    await asyncio.sleep(0.001)
            assert len(got) == len(expected)
            assert got == expected
            assert conn.stats()["queue_peak"] <= 3
            assert conn.close_code == 1000

    run(main)


def test_close_while_reading_is_paused(run: Runner) -> None:
    async def main() -> None:
        hub = Melody(Config(message_buffer_size=5000))

        @hub.handle_message
        def on_message(session: Session, msg: str) -> None:
            for i in range(2000):
                session.write(str(i))

        async with serving(hub) as url:
            conn = await melody.connect(url, max_queue=2)
            await conn.send("flood")
            await wait_until(lambda: conn.stats()["read_pauses"] > 0, "reading to pause")
            # The close reply is behind unread messages: close() reads past them.
            await bounded(conn.close())
            assert conn.closed and conn.close_code == 1000
            assert conn.queued <= 2

    run(main)


def test_request_replies_leave_the_queues_room_to_messages(run: Runner) -> None:
    # A reply to request() is taken out of the stream, not queued: the messages behind it are
    # read in its place, one queue's worth, and the rest once recv() makes room.
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      head: bytes) -> None:
        writer.write(accept_101(head))
        await read_client_frame(reader)
        writer.write(server_frame(0x1, b'{"id":1,"ok":true,"data":5}')
                     + server_frame(0x1, b"a") + server_frame(0x1, b"b"))
        await answer_close(reader, writer)

    async def main() -> None:
        async with raw_server(handler) as url:
            conn = await melody.connect(url, max_queue=1)
            assert await bounded(conn.request("add", timeout=None)) == 5
            await wait_until(lambda: conn.queued == 1, "the message behind the reply")
            assert conn.stats()["read_pauses"] == 1
            assert await bounded(conn.recv()) == "a"
            assert await bounded(conn.recv()) == "b"
            await bounded(conn.close())

    run(main)


def test_send_waits_for_the_transport_to_drain(run: Runner) -> None:
    received = 0
    reading = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      head: bytes) -> None:
        nonlocal received
        writer.write(accept_101(head))
        await reading.wait()  # read nothing until told
        while chunk := await reader.read(1 << 16):
            received += len(chunk)

    async def main() -> None:
        nonlocal reading
        reading = asyncio.Event()
        async with raw_server(handler) as url:
            conn = await melody.connect(url)
            chunk = bytes(256 << 10)
            sent = 0
            for _ in range(2000):  # at most 500 MB: the kernel buffers fill long before
                task = asyncio.ensure_future(conn.send_binary(chunk))
                await asyncio.sleep(0)
                if not task.done():
                    break
                task.result()
                sent += 1
            assert not task.done(), "send never waited"
            assert conn.stats()["write_pauses"] >= 1
            reading.set()
            await bounded(task)
            sent += 1
            await wait_until(lambda: received >= sent * len(chunk), "the server to read all")
            conn._abort()

    run(main)


# -- reconnecting ----------------------------------------------------------------------------------


def test_reconnect_after_melody_restart(run: Runner, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="melody.client")

    async def main() -> None:
        hub = echo_hub()
        server = await hub.serve(HOST, 0)
        port = server.sockets[0].getsockname()[1]
        url = f"ws://{HOST}:{port}/feed"
        calls: list[melody.ClientConnection] = []

        async def on_connect(conn: melody.ClientConnection) -> None:
            calls.append(conn)
            await conn.send(f"subscribe {len(calls)}")

        client = await melody.connect(url, reconnect=True, on_connect=on_connect,
                                      backoff_initial=0.005, backoff_max=0.02, jitter=0.5)
        assert isinstance(client, melody.ReconnectingClient)
        try:
            assert client.connected.is_set()
            assert await bounded(client.recv()) == "subscribe 1"
            await client.send("one")
            assert await bounded(client.recv()) == "one"
            assert (client.attempts, client.reconnects, client.failures) == (1, 0, 0)

            hub.close()
            await hub.wait_closed(timeout=1.0)  # the listening socket is closed too
            await wait_until(lambda: client.failures >= 3, "failed reconnection attempts")
            assert not client.connected.is_set()
            assert isinstance(client.last_error, OSError)
            assert client.outages == 1

            hub2 = echo_hub()
            await hub2.serve(HOST, port)
            try:
                await bounded(client.connected.wait())
                assert len(calls) == 2 and calls[1] is client.connection
                assert client.reconnects == 1
                assert client.attempts == client.failures + 2
                assert await bounded(client.recv()) == "subscribe 2"
                await client.send("two")
                assert await bounded(client.recv()) == "two"
                stats = client.stats()
                assert stats["reconnects"] == 1 and stats["connected"] == 1.0
                assert stats["outage_seconds"] > 0
            finally:
                await client.close()
                hub2.close()
                await hub2.wait_closed(timeout=1.0)
            assert client.closed and not client.connected.is_set()
        finally:
            await client.close()
        messages = [r.getMessage() for r in caplog.records if r.name == "melody.client"]
        assert any("lost" in m for m in messages)
        assert any("failed" in m for m in messages)
        assert any("reconnected" in m for m in messages)

    run(main)


def test_reconnect_after_websockets_restart_and_iteration_continues(run: Runner) -> None:
    async def main() -> None:
        port = free_port()
        count = 0

        def on_connect(conn: melody.ClientConnection) -> None:  # a plain function works too
            nonlocal count
            count += 1

        stop = asyncio.Event()

        async def handler(ws: ServerConnection) -> None:
            async for msg in ws:
                await ws.send(msg)
                if msg == "stop":
                    stop.set()

        async with ws_server(handler, port=port) as url:
            client = await melody.connect(url, reconnect=True, on_connect=on_connect,
                                          backoff_initial=0.005, backoff_max=0.02)
            got: list[str | bytes] = []

            async def consume() -> None:
                async for msg in client:
                    got.append(msg)

            consumer = asyncio.ensure_future(consume())
            await client.send("a")
            await client.send("stop")
            await bounded(stop.wait())
            await wait_until(lambda: got == ["a", "stop"], "the first echoes")
        # The server is gone (websockets closed the connection with 1001).
        await wait_until(lambda: client.failures >= 1, "a failed attempt")
        async with ws_server(handler, port=port):
            await bounded(client.connected.wait())
            await client.send("b")
            await wait_until(lambda: got == ["a", "stop", "b"], "the echo after reconnecting")
            assert count == 2 and client.reconnects == 1
            await client.close()
            await bounded(consumer)  # the iteration ended quietly with close()

    run(main)


def test_send_while_disconnected_waits_for_the_reconnection(run: Runner) -> None:
    async def main() -> None:
        hub = echo_hub()
        server = await hub.serve(HOST, 0)
        port = server.sockets[0].getsockname()[1]
        client = await melody.connect(f"ws://{HOST}:{port}", reconnect=True,
                                      backoff_initial=0.005, backoff_max=0.02, send_timeout=WAIT)
        try:
            hub.close()
            await hub.wait_closed(timeout=1.0)
            await wait_until(lambda: not client.connected.is_set(), "the outage")
            pending = asyncio.ensure_future(client.send("held"))
            await asyncio.sleep(0)
            assert not pending.done()
            # send_timeout bounds the wait.
            client.send_timeout = 0.01
            with pytest.raises(ConnectionClosed, match="no reconnection"):
                await client.send("dropped")
            with pytest.raises(ConnectionClosed):
                await client.ping()
            hub2 = echo_hub()
            await hub2.serve(HOST, port)
            await bounded(pending)
            assert await bounded(client.recv()) == "held"
            await client.close()
            hub2.close()
            await hub2.wait_closed(timeout=1.0)
        finally:
            await client.close()

    run(main)


def test_close_during_backoff_stops_reconnecting(run: Runner) -> None:
    async def main() -> None:
        hub = echo_hub()
        server = await hub.serve(HOST, 0)
        port = server.sockets[0].getsockname()[1]
        client = await melody.connect(f"ws://{HOST}:{port}", reconnect=True,
                                      backoff_initial=3600, backoff_max=3600)
        receiver = asyncio.ensure_future(client.recv())
        hub.close()
        await hub.wait_closed(timeout=1.0)
        await wait_until(lambda: client.outages == 1, "the outage")
        assert client.attempts == 1  # sleeping an hour before the next attempt
        await bounded(client.close())
        assert client.closed and client.attempts == 1
        with pytest.raises(ConnectionClosed):
            await bounded(receiver)
        with pytest.raises(ConnectionClosed):
            await client.send("x")
        assert [m async for m in client] == []
        await bounded(client.wait_closed())

    run(main)


def test_reconnect_gives_up_after_max_attempts(run: Runner) -> None:
    async def main() -> None:
        url = f"ws://{HOST}:{free_port()}"
        # Never connected: the last error is raised from connect().
        with pytest.raises(OSError):
            await melody.connect(url, reconnect=True, backoff_initial=0.001, max_attempts=3)
        hub = echo_hub()
        server = await hub.serve(HOST, 0)
        port = server.sockets[0].getsockname()[1]
        client = await melody.connect(f"ws://{HOST}:{port}", reconnect=True,
                                      backoff_initial=0.001, backoff_max=0.002, max_attempts=2)
        hub.close()
        await hub.wait_closed(timeout=1.0)
        with pytest.raises(ConnectionClosed, match="gave up") as info:
            async for _ in client:
                pass
        assert isinstance(info.value.__cause__, OSError)
        assert client.closed and client.failures == 2 and client.attempts == 3
        await client.close()

    run(main)


def test_reconnect_does_not_retry_a_refusal(run: Runner) -> None:
    async def main() -> None:
        hub = echo_hub()

        @hub.handle_upgrade
        def upgrade(request: melody.Request) -> None:
            raise HandshakeError(403, "go away")

        async with serving(hub) as url:
            client = melody.ReconnectingClient(url, backoff_initial=0.001)
            with pytest.raises(HandshakeError) as info:
                await client.start()
            assert info.value.status == 403
            assert client.attempts == 1

    run(main)


def test_on_connect_failure_counts_as_a_failed_attempt(run: Runner) -> None:
    async def main() -> None:
        calls = 0

        async def flaky(conn: melody.ClientConnection) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ConnectionClosed(1006, "simulated drop while subscribing")

        async with serving(echo_hub()) as url:
            async with melody.connect(url, reconnect=True, on_connect=flaky,
                                      backoff_initial=0.001) as client:
                assert calls == 2 and client.attempts == 2 and client.failures == 1
                await client.send("fine")
                assert await bounded(client.recv()) == "fine"

    run(main)
