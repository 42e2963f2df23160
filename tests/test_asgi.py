"""The ASGI adapter end to end: a hub served by uvicorn + Starlette and by melody's own server.

Real sockets on 127.0.0.1 (port 0), each test on asyncio and on uvloop. A Starlette app routes
``/ws`` to ``hub.asgi``, ``/ws-endpoint`` to ``hub.asgi.endpoint`` (the form FastAPI's
``add_api_websocket_route`` uses), mounts the adapter at ``/mounted``, and serves a plain page
at ``/`` on the same port; the same hub also listens natively. Clients are the ``websockets``
library's, or a raw socket where a test needs a peer that stops reading. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route, WebSocketRoute
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import melody
from melody import Config, Melody, Session
from melody.config import RateLimit
from melody.errors import HandshakeError, MessageBufferFull, MessageTooBig, WriteTimeout
from melody.middleware import CallNext, Handshake

HOST = "127.0.0.1"
#: Upper bound of any single wait: reached only when something is broken.
WAIT = 5.0

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Callable[[], Awaitable[None]]], None]:
    """``run(body)``: run the async ``body`` on a fresh loop of the parametrized kind."""

    def runner(body: Callable[[], Awaitable[None]]) -> None:
        loop = LOOPS[request.param]()
        try:
            loop.run_until_complete(asyncio.wait_for(body(), 60))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    return runner


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` until it holds; fail after WAIT seconds saying what was awaited."""
    try:
        async with asyncio.timeout(WAIT):
            while not predicate():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for: {what}") from None


async def recv(ws: ClientConnection) -> str | bytes:
    async with asyncio.timeout(WAIT):
        return await ws.recv()


@dataclass
class Stack:
    """A hub served by uvicorn + Starlette (``asgi_url``) and natively (``native_url``)."""

    hub: Melody
    asgi_port: int
    native_url: str
    clients: list[ClientConnection] = field(default_factory=list)
    errors: list[tuple[Session | None, BaseException]] = field(default_factory=list)

    def url(self, path: str = "/ws") -> str:
        return f"ws://{HOST}:{self.asgi_port}{path}"

    async def connect(self, url: str | None = None, **kwargs: Any) -> ClientConnection:
        kwargs.setdefault("proxy", None)
        kwargs.setdefault("ping_interval", None)
        kwargs.setdefault("open_timeout", WAIT)
        kwargs.setdefault("close_timeout", 1)
        ws = await connect(url or self.url(), **kwargs)
        self.clients.append(ws)
        return ws


async def _homepage(request: StarletteRequest) -> PlainTextResponse:
    return PlainTextResponse("home page")


@contextlib.asynccontextmanager
async def serve(hub: Melody | None = None, **fields: Any) -> AsyncIterator[Stack]:
    """Serve ``hub`` (or a new one with ``Config(**fields)``) both ways; tear everything down."""
    if hub is None:
        hub = Melody(Config(**fields))
    app = Starlette(routes=[
        Route("/", _homepage),
        WebSocketRoute("/ws", hub.asgi),
        WebSocketRoute("/ws-endpoint", hub.asgi.endpoint),
        Mount("/mounted", hub.asgi),
    ])
    sock = socket.socket()
    sock.bind((HOST, 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    native = await hub.serve(HOST, 0)
    stack = Stack(hub, sock.getsockname()[1], f"ws://{HOST}:{native.sockets[0].getsockname()[1]}")
    try:
        await wait_until(lambda: server.started or task.done(), "uvicorn to start")
        assert server.started, task
        yield stack
    finally:
        for ws in stack.clients:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await ws.close()
            ws.transport.abort()
        if not hub.is_closed():
            hub.close()
        await hub.wait_closed(timeout=2.0)
        server.should_exit = True
        async with asyncio.timeout(WAIT):
            await task
        sock.close()


def record_errors(stack: Stack) -> None:
    @stack.hub.handle_error
    def on_error(session: Session | None, error: BaseException) -> None:
        stack.errors.append((session, error))


# -- the handlers and the session ---------------------------------------------------------------


def test_echo_text_and_binary(run: Any) -> None:
    async def body() -> None:
        hub = Melody()
        seen: list[Session] = []

        @hub.handle_message
        def on_text(session: Session, msg: str) -> None:
            seen.append(session)
            session.write(msg)

        @hub.handle_message_binary
        def on_binary(session: Session, msg: bytes) -> None:
            session.write_binary(msg)

        async with serve(hub) as stack:
            ws = await stack.connect(stack.url("/ws?room=a&x=%20"))
            for text in ("hello", "héllo ✓ 🎵", "x" * 200, "y" * 70_000):
                await ws.send(text)
                assert await recv(ws) == text
            for data in (b"\x00\x01", bytes(range(256)) * 300):
                await ws.send(data)
                assert await recv(ws) == data
            session = seen[0]
            assert session.request.path == "/ws"
            assert session.request.query_params == {"room": ["a"], "x": [" "]}
            assert session.request.headers["host"] == f"{HOST}:{stack.asgi_port}"
            assert session.remote_addr[0] == HOST
            assert session.local_addr == (HOST, stack.asgi_port)
            assert not session.is_closed
            stats = hub.stats()
            assert stats["messages_in"] == 6 and stats["messages_out"] == 6

    run(body)


def test_every_handler_fires(run: Any) -> None:
    async def body() -> None:
        hub = Melody()
        events: list[tuple[Any, ...]] = []
        hub.handle_connect(lambda s: events.append(("connect",)))
        hub.handle_disconnect(lambda s: events.append(("disconnect", s.close_code)))
        hub.handle_close(lambda s, code, reason: events.append(("close", code, reason)))
        hub.handle_message_binary(lambda s, m: events.append(("binary", m)))
        hub.handle_sent_message(lambda s, m: events.append(("sent", m)))
        hub.handle_error(lambda s, e: events.append(("error", type(e).__name__)))

        @hub.handle_message
        def on_text(session: Session, msg: str) -> None:
            events.append(("message", msg))
            if msg == "raise":
                raise RuntimeError("handler failed")
            session.write(msg.upper())

        async with serve(hub) as stack:
            ws = await stack.connect()
            await wait_until(lambda: ("connect",) in events, "handle_connect")
            await ws.send("hi")
            assert await recv(ws) == "HI"
            await ws.send(b"\x01\x02")
            await ws.send("raise")
            await wait_until(lambda: ("error", "RuntimeError") in events, "handle_error")
            await ws.close(4001, "bye")
            await wait_until(lambda: any(e[0] == "disconnect" for e in events),
                             "handle_disconnect")
            assert events == [
                ("connect",), ("message", "hi"), ("sent", "HI"), ("binary", b"\x01\x02"),
                ("message", "raise"), ("error", "RuntimeError"), ("close", 4001, "bye"),
                ("disconnect", 4001),
            ]
            assert len(hub) == 0

    run(body)


def test_async_handlers_and_upgrade_hook(run: Any) -> None:
    async def body() -> None:
        hub = Melody()

        @hub.handle_upgrade
        async def upgrade(request: melody.Request) -> dict[str, Any]:
            await asyncio.sleep(0)
            token = request.query_params.get("token", [""])[0]
            if token != "secret":
                raise HandshakeError(401, "bad token", [("WWW-Authenticate", "Bearer")])
            return {"user": request.query_params["user"][0]}

        @hub.handle_message
        async def on_text(session: Session, msg: str) -> None:
            await asyncio.sleep(0.001)
            session.write(f"{session.must_get('user')}: {msg}")

        async with serve(hub) as stack:
            ws = await stack.connect(stack.url("/ws?token=secret&user=ada"))
            for i in range(20):
                await ws.send(str(i))
            assert [await recv(ws) for _ in range(20)] == [f"ada: {i}" for i in range(20)]
            with pytest.raises(InvalidStatus) as refused:
                await stack.connect(stack.url("/ws?token=wrong&user=eve"))
            assert refused.value.response.status_code == 401
            assert refused.value.response.headers["WWW-Authenticate"] == "Bearer"
            assert b"bad token" in refused.value.response.body

    run(body)


def test_handshake_middleware_runs_on_the_asgi_path(run: Any) -> None:
    async def body() -> None:
        hub = Melody()
        log: list[str] = []

        @hub.use
        async def tenant(handshake: Handshake, call_next: CallNext) -> None:
            name = handshake.request.headers.get("X-Tenant")
            if name is None:
                raise HandshakeError(400, "X-Tenant header required")
            handshake.keys["tenant"] = name
            handshake.on_close(lambda: log.append(f"released {name}"))
            await call_next(handshake)

        hub.handle_message(lambda s, m: s.write(f"{s['tenant']} {s.request.path}"))
        async with serve(hub) as stack:
            for path in ("/ws", "/ws-endpoint"):
                with pytest.raises(InvalidStatus) as refused:
                    await stack.connect(stack.url(path))
                assert refused.value.response.status_code == 400
                ws = await stack.connect(stack.url(path), additional_headers={"X-Tenant": "acme"})
                await ws.send("?")
                assert await recv(ws) == f"acme {path}"
                await ws.close()
                await wait_until(lambda: log == ["released acme"], "the on_close callback")
                log.clear()

    run(body)


# -- one hub, two servers ---------------------------------------------------------------------


def test_broadcast_reaches_asgi_and_native_sessions(run: Any) -> None:
    async def body() -> None:
        hub = Melody()

        @hub.handle_message
        def on_text(session: Session, msg: str) -> None:
            if msg.startswith("others:"):
                hub.broadcast_others(msg, session)
            else:
                hub.broadcast(msg)

        hub.handle_message_binary(lambda s, m: hub.broadcast_binary(m))

        async with serve(hub) as stack:
            clients = [await stack.connect(stack.url("/ws")),
                       await stack.connect(stack.url("/ws-endpoint")),
                       await stack.connect(stack.url("/mounted/")),
                       await stack.connect(stack.native_url),
                       await stack.connect(stack.native_url + "/room")]
            await wait_until(lambda: len(hub) == 5, "five sessions")
            paths = sorted(s.request.path for s in hub.sessions())
            assert paths == ["/", "/mounted/", "/room", "/ws", "/ws-endpoint"]
            # Every header form (7-bit, 16-bit and 64-bit lengths) and non-ASCII text, sent
            # from either kind of session, reaches all five.
            for sender, msg in [(0, "from asgi"), (3, "from native ✓"), (1, "z" * 300),
                                (4, "w" * 70_000)]:
                await clients[sender].send(msg)
                for ws in clients:
                    assert await recv(ws) == msg
            await clients[2].send(b"\xff" * 1000)
            for ws in clients:
                assert await recv(ws) == b"\xff" * 1000
            await clients[0].send("others: hi")
            for ws in clients[1:]:
                assert await recv(ws) == "others: hi"
            assert hub.broadcast("from the hub") == 5
            for ws in clients:
                assert await recv(ws) == "from the hub"
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await clients[0].recv()  # broadcast_others skipped the sender

    run(body)


def test_topics_span_both_servers(run: Any) -> None:
    async def body() -> None:
        hub = Melody()

        @hub.handle_message
        def on_text(session: Session, msg: str) -> None:
            command, _, arg = msg.partition(" ")
            if command == "join":
                hub.subscribe(session, arg)
                session.write("joined")
            elif command == "say":
                hub.publish("lobby", arg)

        async with serve(hub) as stack:
            asgi_in, native_in = await stack.connect(), await stack.connect(stack.native_url)
            outsider = await stack.connect()
            for ws in (asgi_in, native_in):
                await ws.send("join lobby")
                assert await recv(ws) == "joined"
            assert hub.topic_len("lobby") == 2
            await outsider.send("say hello lobby")
            for ws in (asgi_in, native_in):
                assert await recv(ws) == "hello lobby"
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await outsider.recv()
            await asgi_in.close()
            await wait_until(lambda: hub.topic_len("lobby") == 1, "the ASGI session to leave")

    run(body)


# -- refusals and limits ------------------------------------------------------------------------


def test_origin_and_path_checks_refuse_with_http_status(run: Any) -> None:
    async def body() -> None:
        async with serve(allowed_origins=["https://app.example.com"],
                         paths=["/ws", "/ws-endpoint", "/"]) as stack:
            for path in ("/ws", "/ws-endpoint"):
                with pytest.raises(InvalidStatus) as refused:
                    await stack.connect(stack.url(path), origin="https://evil.example.com")
                assert refused.value.response.status_code == 403
                assert b"origin not allowed" in refused.value.response.body
                ws = await stack.connect(stack.url(path), origin="https://app.example.com")
                await ws.ping()
            with pytest.raises(InvalidStatus) as refused:
                await stack.connect(stack.url("/mounted/elsewhere"))
            assert refused.value.response.status_code == 404
            assert len(stack.hub) == 2

    run(body)


def test_subprotocol_is_negotiated(run: Any) -> None:
    async def body() -> None:
        hub = Melody(Config(subprotocols=("chat.v2", "chat.v1")))
        hub.handle_message(lambda s, m: s.write(str(s.subprotocol)))
        async with serve(hub) as stack:
            ws = await stack.connect(subprotocols=["chat.v1", "chat.v2"])
            assert ws.subprotocol == "chat.v2"
            await ws.send("?")
            assert await recv(ws) == "chat.v2"

    run(body)


def test_oversize_message_closes_with_1009(run: Any) -> None:
    async def body() -> None:
        hub = Melody(Config(max_message_size=1024))
        hub.handle_message(lambda s, m: s.write("ok"))
        async with serve(hub) as stack:
            record_errors(stack)
            ws = await stack.connect()
            await ws.send("a" * 1024)
            assert await recv(ws) == "ok"
            await ws.send("é" * 600)  # 600 characters, 1200 bytes
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
            await wait_until(lambda: len(hub) == 0, "the session to end")
            assert [type(e) for _, e in stack.errors] == [MessageTooBig]
            binary = await stack.connect()
            await binary.send(b"\x00" * 1025)
            with pytest.raises(ConnectionClosed) as closed:
                await recv(binary)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

    run(body)


def test_inbound_rate_limit_applies(run: Any) -> None:
    async def body() -> None:
        hub = Melody(Config(rate_limit=RateLimit(
            messages_per_second=0.001, burst_messages=3, policy="close")))
        hub.handle_message(lambda s, m: s.write(m))
        async with serve(hub) as stack:
            record_errors(stack)
            ws = await stack.connect()
            for i in range(4):
                await ws.send(str(i))
            assert [await recv(ws) for _ in range(3)] == ["0", "1", "2"]
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
            assert hub.stats()["messages_rate_limited"] == 1
            assert [type(e).__name__ for _, e in stack.errors] == ["RateLimited"]

    run(body)


# -- closing -------------------------------------------------------------------------------------


def test_server_close_with_msg_reaches_client(run: Any) -> None:
    async def body() -> None:
        hub = Melody()
        disconnected: list[tuple[int, str]] = []
        hub.handle_disconnect(lambda s: disconnected.append((s.close_code, s.close_reason)))

        @hub.handle_message
        def on_text(session: Session, msg: str) -> None:
            session.write("last words")
            session.close_with_msg(4000, msg)
            with pytest.raises(melody.SessionClosed):
                session.write("too late")

        async with serve(hub) as stack:
            ws = await stack.connect()
            await ws.send("goodbye")
            assert await recv(ws) == "last words"
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "goodbye")
            await wait_until(lambda: disconnected == [(4000, "goodbye")], "handle_disconnect")

    run(body)


def test_hub_close_ends_asgi_and_native_sessions(run: Any) -> None:
    async def body() -> None:
        async with serve() as stack:
            asgi, native = await stack.connect(), await stack.connect(stack.native_url)
            await wait_until(lambda: len(stack.hub) == 2, "two sessions")
            stack.hub.close_with_msg(1001, "maintenance")
            for ws in (asgi, native):
                with pytest.raises(ConnectionClosed) as closed:
                    await recv(ws)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            async with asyncio.timeout(WAIT):
                await stack.hub.wait_closed()
            assert len(stack.hub) == 0
            with pytest.raises(InvalidStatus) as refused:
                await stack.connect()
            assert refused.value.response.status_code == 503

    run(body)


def test_session_abort_drops_the_connection(run: Any) -> None:
    async def body() -> None:
        hub = Melody()
        hub.handle_message(lambda s, m: s.abort())
        async with serve(hub) as stack:
            ws = await stack.connect()
            await ws.send("abort me")
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
            assert closed.value.rcvd is None  # no close frame: TCP just ended
            await wait_until(lambda: len(hub) == 0, "the session to end")
            assert hub.stats()["disconnects"] == 1

    run(body)


# -- heartbeat and backpressure ------------------------------------------------------------------


def test_heartbeat_neither_pings_nor_drops_asgi_sessions(run: Any) -> None:
    async def body() -> None:
        hub = Melody(Config(ping_period=0.02, pong_wait=0.06))
        hub.handle_message(lambda s, m: s.write(m))
        async with serve(hub) as stack:
            record_errors(stack)
            ws = await stack.connect()
            await wait_until(lambda: len(hub) == 1, "the session")
            await asyncio.sleep(0.3)  # many sweeps, several pong_waits of silence
            assert len(hub) == 1 and stack.errors == []
            hub.sessions()[0].ping()  # ignored on this path, without error
            await ws.send("still here")
            assert await recv(ws) == "still here"

    run(body)


def test_sends_suspended_by_a_slow_reader_resume_in_order(run: Any) -> None:
    async def body() -> None:
        hub = Melody(Config(message_buffer_size=10_000))
        async with serve(hub) as stack:
            record_errors(stack)
            # max_queue=1: the client stops reading its socket while nobody calls recv(); a
            # small receive buffer (no autotuning) makes the server's sends wait soon; no
            # permessage-deflate, which would shrink these messages to nothing.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (HOST, stack.asgi_port))
            ws = await stack.connect(max_queue=1, sock=sock, compression=None)
            await wait_until(lambda: len(hub) == 1, "the session")
            session = hub.sessions()[0]
            count, deepest = 300, 0
            for i in range(count):
                if i % 3 == 0:
                    session.write(f"{i:06d}" + "t" * 65530)
                else:
                    hub.broadcast_binary(i.to_bytes(4, "big") + bytes(65532))
                deepest = max(deepest, session.queued)
                await asyncio.sleep(0)
            assert deepest > 0, "the server never had to wait for this reader"
            for i in range(count):
                msg = await recv(ws)
                assert (int(msg[:6]) if isinstance(msg, str)
                        else int.from_bytes(msg[:4], "big")) == i
            await wait_until(lambda: session.queued == 0, "the queue to drain")
            assert stack.errors == [] and session.dropped == 0 and not session.is_closed
            session.write("after the storm")
            assert await recv(ws) == "after the storm"

    run(body)


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest", "close"])
def test_peer_that_stops_reading_overflows_then_times_out(run: Any, policy: str) -> None:
    async def body() -> None:
        hub = Melody(Config(message_buffer_size=4, write_wait=0.3, close_timeout=0.3,
                            overflow_policy=policy))
        async with serve(hub) as stack:
            record_errors(stack)
            _, writer = await raw_upgrade(stack.asgi_port, "/ws")
            try:
                await wait_until(lambda: len(hub) == 1, "the session")
                session = hub.sessions()[0]
                chunk = b"\x00" * 65536
                sent = 0
                # The socket buffers fill, the server's send suspends, then the queue fills.
                while not any(isinstance(e, MessageBufferFull) for _, e in stack.errors):
                    hub.broadcast_binary(chunk)
                    sent += 1
                    assert sent < 2000, "the queue never overflowed"
                    await asyncio.sleep(0)
                assert session.dropped >= 1 and hub.stats()["frames_dropped"] >= 1
                if policy == "close":
                    # Queued data discarded, the close queued behind the suspended send; the
                    # peer never reads it, so close_timeout ends the connection.
                    assert session.is_closed and session.queued == 1
                    with pytest.raises(melody.SessionClosed):
                        session.write("x")
                else:
                    assert session.queued == 4 and not session.is_closed
                    hub.broadcast("one more")  # overflows again: reported, never raised
                await wait_until(lambda: len(hub) == 0, "the slow reader to be dropped")
                if policy != "close":
                    assert any(isinstance(e, WriteTimeout) for _, e in stack.errors)
                assert session.close_code == (1008 if policy == "close" else 1006)
            finally:
                writer.transport.abort()

    run(body)


async def raw_upgrade(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A completed upgrade over a socket that then reads nothing (tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write((f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    async with asyncio.timeout(WAIT):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


# -- the rest of the ASGI contract ---------------------------------------------------------------


def test_plain_http_on_the_same_port(run: Any) -> None:
    async def body() -> None:
        async with serve() as stack:
            assert await http_get(stack.asgi_port, "/") == (200, b"home page")
            status, text = await http_get(stack.asgi_port, "/mounted/")
            assert status == 426 and b"WebSocket only" in text

    run(body)


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        async with asyncio.timeout(WAIT):
            response = await reader.read()
    finally:
        writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), payload


def test_other_scope_types_are_refused(run: Any) -> None:
    async def body() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "lifespan.startup"}

        async def send(message: Any) -> None:
            raise AssertionError("nothing is sent")

        with pytest.raises(ValueError, match="'lifespan'"):
            await Melody().asgi({"type": "lifespan"}, receive, send)

    run(body)


def test_fastapi_routes(run: Any) -> None:
    fastapi = pytest.importorskip("fastapi")

    async def body() -> None:
        hub = Melody()
        hub.handle_message(lambda s, m: hub.broadcast(f"{s.request.path}: {m}"))
        app = fastapi.FastAPI()
        app.add_api_websocket_route("/ws", hub.asgi.endpoint)
        app.router.add_websocket_route("/ws-asgi", hub.asgi)
        app.mount("/mounted", hub.asgi)
        sock = socket.socket()
        sock.bind((HOST, 0))
        server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        port = sock.getsockname()[1]
        try:
            await wait_until(lambda: server.started, "uvicorn to start")
            clients = [await connect(f"ws://{HOST}:{port}{path}", proxy=None)
                       for path in ("/ws", "/ws-asgi", "/mounted/x")]
            await clients[0].send("hi")
            for ws in clients:
                assert await recv(ws) == "/ws: hi"
            for ws in clients:
                await ws.close()
        finally:
            hub.close()
            await hub.wait_closed(timeout=2.0)
            server.should_exit = True
            async with asyncio.timeout(WAIT):
                await task
            sock.close()

    run(body)


@pytest.mark.slow
def test_benchmark_script_runs_and_checks(tmp_path: Any) -> None:
    """``bench/asgi_vs_native.py`` end to end, tiny: both modes, every check passed."""
    import json
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "bench", "asgi_vs_native.py")
    out = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, script, "-n", "20", "--echo-connections", "5", "--duration", "0.3",
         "--warmup", "0.1", "--repeats", "1", "-q", "--json", str(out)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(out.read_text())
    assert document["ok"] is True
    for mode in ("native", "asgi"):
        for check in document["summary"][mode]["checks"].values():
            assert check["ok"] and check["lost"] == 0
    assert document["native_over_asgi"]["echo.roundtrips_per_s"] > 0


def test_user_and_on_open_on_the_asgi_path(run: Any) -> None:
    # handshake.user and handshake.on_open reach the session as on the native server, and a
    # user's sessions on both servers are one user's.
    async def body() -> None:
        hub = Melody()
        opened: list[str] = []

        @hub.use
        async def name_user(handshake: Handshake, call_next: CallNext) -> None:
            handshake.user = handshake.request.headers.get("X-User")
            handshake.on_open(lambda session: opened.append(f"{session.user} {session.id}"))
            await call_next(handshake)

        async with serve(hub) as stack:
            via_asgi = await stack.connect(additional_headers={"X-User": "ada"})
            via_native = await stack.connect(stack.native_url,
                                             additional_headers={"X-User": "ada"})
            other = await stack.connect(additional_headers={"X-User": "bob"})
            await wait_until(lambda: len(hub) == 3, "three sessions")
            ids = sorted(s.id for s in hub.sessions())
            assert sorted(o.split()[1] for o in opened) == ids
            assert hub.send_to_user("ada", "for ada") == 2
            assert await recv(via_asgi) == "for ada"
            assert await recv(via_native) == "for ada"
            assert hub.disconnect_user("ada", 4003, "bye") == 2
            await wait_until(lambda: len(hub) == 1, "ada's sessions closed")
            assert via_asgi.close_code == 4003
            hub.send_to_user("bob", "for bob")
            assert await recv(other) == "for bob"

    run(body)
