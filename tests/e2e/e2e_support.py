"""Helpers for the end-to-end tests: a raw WebSocket client over asyncio streams, an event
recorder for the hub's handlers, and bounded waiting.

The raw client speaks just enough RFC 6455 to misbehave on purpose: it builds frames with
``melody._core.frames.encode_frame`` (masked, as a client must, unless a test says otherwise) and
reads the server's frames byte for byte, so that a test sees exactly what went on the wire.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from melody._core.frames import OP_CLOSE, OP_PING, encode_close, encode_frame

#: The event loops every socket test runs on, through pytest-asyncio's
#: ``pytest_asyncio_loop_factories`` hook (Windows has no uvloop: the default loop only).
LOOP_FACTORIES: dict[str, Any] = {"asyncio": asyncio.new_event_loop}
if sys.platform != "win32":
    import uvloop

    LOOP_FACTORIES["uvloop"] = uvloop.new_event_loop

HOST = "127.0.0.1"

#: Upper bound for any single wait in these tests. Never reached when melody behaves: it only
#: turns a hang into a failure that says what was awaited.
WAIT = 5.0


def port_of(url: str) -> int:
    """The port of a ``ws://127.0.0.1:PORT[/...]`` URL."""
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``predicate`` on the running loop until it holds; fail after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for: {what}") from None


class Recorder:
    """Registers a handler for every hub event and records the calls, in order.

    ``events`` holds tuples ``(name, session, *args)``. Pass ``skip`` to leave some handlers
    unregistered (a test that registers its own).
    """

    NAMES = ("connect", "disconnect", "message", "message_binary", "sent_message",
             "sent_message_binary", "error", "close", "pong")

    def __init__(self, hub: Any, skip: tuple[str, ...] = ()) -> None:
        self.events: list[tuple[Any, ...]] = []
        for name in self.NAMES:
            if name in skip:
                continue
            getattr(hub, f"handle_{name}")(self._recorder(name))

    def _recorder(self, name: str) -> Callable[..., None]:
        def record(session: Any, *args: Any) -> None:
            self.events.append((name, session, *args))

        record.__name__ = f"record_{name}"
        return record

    def of(self, name: str, session: Any = None) -> list[tuple[Any, ...]]:
        """The arguments (after the session) recorded for ``name``, optionally of one session."""
        return [e[2:] for e in self.events
                if e[0] == name and (session is None or e[1] is session)]

    def sessions(self, name: str) -> list[Any]:
        return [e[1] for e in self.events if e[0] == name]

    def errors(self, session: Any = None) -> list[BaseException]:
        return [args[0] for args in self.of("error", session)]

    async def wait(self, name: str, count: int = 1, session: Any = None) -> list[tuple[Any, ...]]:
        """Wait until ``name`` was recorded ``count`` times; return the recorded arguments."""
        await wait_until(lambda: len(self.of(name, session)) >= count,
                         f"{count} x handle_{name}")
        return self.of(name, session)


@dataclass
class Frame:
    fin: bool
    rsv1: bool
    opcode: int
    payload: bytes

    @property
    def close(self) -> tuple[int, str]:
        """``(code, reason)`` of a close frame (1005 when it carries no code)."""
        assert self.opcode == OP_CLOSE, f"expected a close frame, got opcode {self.opcode:#x}"
        if not self.payload:
            return 1005, ""
        return struct.unpack("!H", self.payload[:2])[0], self.payload[2:].decode("utf-8")


def ws_key() -> str:
    return base64.b64encode(os.urandom(16)).decode("ascii")


def upgrade_request(port: int, path: str = "/", headers: list[tuple[str, str]] | None = None,
                    *, key: str | None = None, method: str = "GET", version: str = "13",
                    omit: tuple[str, ...] = ()) -> bytes:
    """A client upgrade request head written out by hand (so that tests can break any part)."""
    fields = [
        ("Host", f"{HOST}:{port}"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key or ws_key()),
        ("Sec-WebSocket-Version", version),
    ]
    fields = [(n, v) for n, v in fields if n not in omit]
    fields.extend(headers or ())
    lines = [f"{method} {path} HTTP/1.1"] + [f"{n}: {v}" for n, v in fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]  # lowercased names; a repeated name keeps its last value
    body: bytes


class RawClient:
    """A TCP connection to the hub driven by hand: HTTP, then frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.response: HttpResponse | None = None

    @classmethod
    async def open(cls, port: int, *, rcvbuf: int | None = None) -> RawClient:
        """Open TCP only. ``rcvbuf`` shrinks SO_RCVBUF before connecting, so that a client that
        stops reading fills up after a predictable, small amount."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
        except BaseException:
            sock.close()
            raise
        # A StreamReader limit far above any frame these tests read.
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 24)
        return cls(reader, writer)

    async def request(self, head: bytes) -> HttpResponse:
        """Send an HTTP request head; read the response head and its Content-Length body."""
        self.writer.write(head)
        return await self.read_response()

    async def read_response(self) -> HttpResponse:
        async with asyncio.timeout(WAIT):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = b""
            length = int(headers.get("content-length", "0"))
            if length:
                body = await self.reader.readexactly(length)
        self.response = HttpResponse(status, headers, body)
        return self.response

    @classmethod
    async def connect(cls, port: int, path: str = "/", headers: list[tuple[str, str]] | None = None,
                      *, rcvbuf: int | None = None) -> RawClient:
        """Open TCP and complete the opening handshake (asserting 101)."""
        client = await cls.open(port, rcvbuf=rcvbuf)
        response = await client.request(upgrade_request(port, path, headers))
        assert response.status == 101, response
        return client

    # -- frames ------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def dribble(self, data: bytes, piece: int, *, every: int = 1,
                      timeout: float = 4 * WAIT) -> None:
        """Send ``data`` in ``piece``-byte writes, letting the loop run after every ``every``
        writes, so that the hub receives it in many small reads."""
        async with asyncio.timeout(timeout):
            for n, i in enumerate(range(0, len(data), piece)):
                self.writer.write(data[i:i + piece])
                if n % every == 0:
                    await self.writer.drain()
                    await asyncio.sleep(0)
            await self.writer.drain()

    def send_frame(self, opcode: int, payload: bytes = b"", *, fin: bool = True,
                   rsv1: bool = False, mask: bool = True) -> None:
        self.writer.write(encode_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=mask))

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        self.writer.write(encode_close(code, reason, mask=True))

    async def recv_frame(self, timeout: float = WAIT) -> Frame:
        async with asyncio.timeout(timeout):
            b0, b1 = await self.reader.readexactly(2)
            assert not b1 & 0x80, "the server masked a frame (RFC 6455 5.1 forbids it)"
            assert not b0 & 0x30, "the server set RSV2/RSV3"
            length = b1 & 0x7F
            if length == 126:
                length = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            payload = await self.reader.readexactly(length)
        return Frame(bool(b0 & 0x80), bool(b0 & 0x40), b0 & 0x0F, payload)

    async def recv_data(self, timeout: float = WAIT) -> Frame:
        """The next frame that is not a ping (heartbeat pings may come at any time)."""
        while True:
            frame = await self.recv_frame(timeout)
            if frame.opcode != OP_PING:
                return frame

    async def expect_close(self, timeout: float = WAIT) -> tuple[int, str]:
        """The next non-ping frame must be a close: return its ``(code, reason)``."""
        frame = await self.recv_data(timeout)
        return frame.close

    async def expect_eof(self, timeout: float = WAIT) -> None:
        """The server must close TCP: nothing but EOF (or a reset) may follow."""
        async with asyncio.timeout(timeout):
            try:
                rest = await self.reader.read()
            except ConnectionResetError:
                return
        assert rest == b"", f"expected the server to close TCP, got {rest[:60]!r}"

    async def expect_failure(self, code: int) -> str:
        """The server fails the connection: a close with ``code``, then TCP closed. Returns
        the reason."""
        got, reason = await self.expect_close()
        assert got == code, f"close code {got} ({reason!r}), expected {code}"
        await self.expect_eof()
        return reason

    def close(self) -> None:
        self.writer.transport.abort()
