"""The hub's HTTP API (``hub.enable_http_api``) on melody's own server, over real sockets with
a real HTTP client (``http.client``), on asyncio and uvloop: every endpoint, the key check,
the bounds, and the body read in pieces by the compiled connection (``read_body``)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple
from urllib.parse import urlparse

import pytest
from e2e_support import HOST

import melody
from melody import Melody
from melody.client import ClientConnection
from melody.errors import ConnectionClosed
from melody.http_api import HttpApi
from melody.middleware import CallNext, Handshake

pytestmark = pytest.mark.asyncio

KEY = "k" * 20 + "-secret"
WAIT = 5.0
Serve = Callable[..., Awaitable[tuple[Melody, str]]]


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _request(port: int, path: str, body: bytes | None, headers: dict[str, str],
             method: str) -> Reply:
    conn = http.client.HTTPConnection(HOST, port, timeout=WAIT)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                     response.read())
    finally:
        conn.close()


async def call(port: int, name: str, fields: Any = None, *, key: str | None = KEY,
               method: str = "POST", raw: bytes | None = None,
               headers: dict[str, str] | None = None, path: str = "/api") -> Reply:
    """One request in a thread (http.client blocks), with the key as a Bearer token."""
    sent = dict(headers or {})
    if key is not None:
        sent.setdefault("Authorization", f"Bearer {key}")
    body = raw if raw is not None else (None if fields is None else json.dumps(fields).encode())
    if body is not None:
        sent["Content-Type"] = "application/json"
    return await asyncio.to_thread(_request, port, f"{path}/{name}", body, sent, method)


async def name_user(handshake: Handshake, call_next: CallNext) -> None:
    values = handshake.request.query_params.get("user")
    if values:
        handshake.user = values[0]
    await call_next(handshake)


async def served(serve_hub: Serve, **api: Any) -> tuple[Melody, int, str]:
    hub = Melody()
    hub.use(name_user)
    hub.configure_topic("room:*", history_size=10)

    @hub.handle_connect
    def join(session: melody.Session) -> None:
        hub.subscribe(session, "news")

    hub.enable_http_api(KEY, **api)
    hub, url = await serve_hub(hub)
    return hub, urlparse(url).port or 0, url


async def recv(conn: ClientConnection) -> str | bytes:
    async with asyncio.timeout(WAIT):
        return await conn.recv()


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_every_endpoint_answers_json(serve_hub: Serve) -> None:
    hub, port, url = await served(serve_hub)
    async with melody.connect(url + "/?user=ada") as ada, melody.connect(url + "/") as other:
        await until(lambda: len(hub) == 2)
        reply = await call(port, "publish", {"topic": "news", "text": "hi"})
        assert (reply.status, reply.json()) == (200, {"sessions": 2})
        assert reply.headers["content-type"] == "application/json"
        assert (await call(port, "publish", {"topic": "news", "data": {"a": 1}})).json() == {
            "sessions": 2}
        assert (await call(port, "broadcast", {"text": "all"})).json() == {"sessions": 2}
        assert (await call(port, "broadcast", {"data": [1, 2]})).json() == {"sessions": 2}
        for conn in (ada, other):
            assert [await recv(conn) for _ in range(4)] == ["hi", '{"a":1}', "all", "[1,2]"]
        assert (await call(port, "send_to_user", {"user": "ada", "text": "psst"})).json() == {
            "sessions": 1}
        assert (await call(port, "send_to_user", {"user": "ada", "data": {"n": 1}})).json() == {
            "sessions": 1}
        assert [await recv(ada), await recv(ada)] == ["psst", '{"n":1}']

        # History: publications with offsets, data as JSON (not JSON in a string).
        for i in range(3):
            await call(port, "publish", {"topic": "room:1", "data": {"i": i}})
        reply = await call(port, "history", {"topic": "room:1", "since": 1, "limit": 5})
        page = reply.json()
        assert page["publications"] == [{"offset": 2, "data": {"i": 1}},
                                        {"offset": 3, "data": {"i": 2}}]
        assert page["position"]["offset"] == 3 and page["position"]["epoch"]

        stats = (await call(port, "stats")).json()  # no body at all: fine for stats
        assert stats["sessions"] == 2 and stats["topics"] == 1

        reply = await call(port, "disconnect_user", {"user": "ada", "code": 4001,
                                                     "reason": "bye"})
        assert reply.json() == {"sessions": 1}
        with pytest.raises(ConnectionClosed) as info:
            await recv(ada)
        assert (info.value.code, info.value.reason) == (4001, "bye")
        await until(lambda: len(hub) == 1)


class Entry(NamedTuple):
    user: str | None
    node: str


async def test_presence_is_called_when_the_hub_has_it_and_501_when_not(
        serve_hub: Serve) -> None:
    hub, port, _ = await served(serve_hub)
    if not hasattr(Melody, "presence"):
        reply = await call(port, "presence", {"topic": "news"})
        assert (reply.status, reply.json()) == (501, {"error": "presence not available"})
        assert (await call(port, "presence_stats", {"topic": "news"})).status == 501

    async def presence(topic: str) -> dict[str, Entry]:
        return {"s1": Entry("ada", "n1")} if topic == "news" else {}

    async def presence_stats(topic: str) -> dict[str, int]:
        return {"sessions": 1, "users": 1}

    # An instance's own methods win over the class's: the API finds them by name.
    hub.presence = presence  # type: ignore[attr-defined]
    hub.presence_stats = presence_stats  # type: ignore[attr-defined]
    reply = await call(port, "presence", {"topic": "news"})
    assert reply.json() == {"topic": "news",
                            "presence": {"s1": {"user": "ada", "node": "n1"}}}
    reply = await call(port, "presence_stats", {"topic": "news"})
    assert reply.json() == {"topic": "news", "presence_stats": {"sessions": 1, "users": 1}}


async def test_the_key_is_required_and_the_requests_are_bounded(serve_hub: Serve) -> None:
    _, port, _ = await served(serve_hub, max_body_bytes=1024)
    for key in (None, "wrong" * 5, KEY + "x", KEY[:-1]):
        reply = await call(port, "stats", {}, key=key)
        assert (reply.status, reply.body) == (401, b"")  # no detail, whatever is wrong
        assert reply.headers["www-authenticate"] == "Bearer"
    # Even an unknown endpoint is 401 without the key: nothing to learn by probing.
    assert (await call(port, "nope", {}, key=None)).status == 401
    assert (await call(port, "stats", {}, key=None, headers={"X-API-Key": KEY})).status == 200
    assert (await call(port, "stats", {}, key=None,
                       headers={"Authorization": f"Basic {KEY}"})).status == 401

    reply = await call(port, "nope", {})
    assert reply.status == 404 and "publish" in reply.json()["error"]
    reply = await call(port, "stats", method="GET")
    assert (reply.status, reply.headers["allow"]) == (405, "POST")
    reply = await call(port, "publish", raw=b'{"topic": ')
    assert reply.status == 400 and reply.json()["error"].startswith("the body is not JSON")
    assert (await call(port, "publish", raw=b"[1]")).status == 400
    reply = await call(port, "publish", {"text": "no topic"})
    assert (reply.status, reply.json()) == (400, {"error": "topic is a non-empty string"})
    reply = await call(port, "history", {"topic": "news"})  # a topic without history
    assert reply.status == 400 and "keeps no history" in reply.json()["error"]
    reply = await call(port, "disconnect_user", {"user": "ada", "code": 1005})
    assert (reply.status, reply.json()) == (400, {"error": "close code 1005 may not be sent"})
    reply = await call(port, "broadcast", {"text": "x" * 2000})
    assert reply.status == 413
    assert (await call(port, "broadcast", {"text": "x" * 900})).status == 200
    # The API lives under its path only; elsewhere plain requests are what they were.
    assert (await call(port, "stats", {}, path="/other")).status == 404


async def test_a_body_sent_in_pieces_is_read_whole(serve_hub: Serve) -> None:
    hub, port, url = await served(serve_hub)
    async with melody.connect(url + "/") as conn:
        await until(lambda: len(hub) == 1)
        body = json.dumps({"text": "é" * 3000}).encode()
        head = (f"POST /api/broadcast HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {KEY}"
                f"\r\nExpect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n").encode()

        def send_slowly() -> bytes:
            with socket.create_connection((HOST, port), timeout=WAIT) as sock:
                sock.sendall(head)
                # As curl: the body once the server said it wants it.
                assert sock.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
                sock.sendall(body[:10])
                for i in range(10, len(body), 1000):
                    sock.sendall(body[i:i + 1000])
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
                return b"".join(chunks)

        answer = await asyncio.to_thread(send_slowly)
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"sessions":1}')
        assert await recv(conn) == "é" * 3000


async def test_off_by_default_and_the_key_must_be_long_enough(serve_hub: Serve) -> None:
    hub, url = await serve_hub(Melody())
    port = urlparse(url).port or 0
    assert (await call(port, "stats", {})).status == 404
    with pytest.raises(ValueError):
        hub.enable_http_api("short")
    with pytest.raises(ValueError):
        hub.enable_http_api(KEY, path="api/")


async def test_the_api_is_an_asgi_app_too() -> None:
    hub = Melody()
    api = hub.enable_http_api(KEY)
    assert isinstance(api, HttpApi)
    sent: list[dict[str, Any]] = []

    async def asgi(path: str, body: bytes, key: str = KEY) -> tuple[int, Any]:
        sent.clear()
        pieces = [{"type": "http.request", "body": body[:5], "more_body": True},
                  {"type": "http.request", "body": body[5:], "more_body": False}]

        async def receive() -> dict[str, Any]:
            return pieces.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": path, "root_path": "",
                 "headers": [(b"authorization", f"Bearer {key}".encode()),
                             (b"content-length", str(len(body)).encode())]}
        await api(scope, receive, send)
        return sent[0]["status"], sent[1]["body"]

    assert await asgi("/api/broadcast", b'{"text": "hi"}') == (200, b'{"sessions":0}')
    assert await asgi("/broadcast", b'{"text": "hi"}') == (200, b'{"sessions":0}')  # mounted
    assert (await asgi("/api/broadcast", b"{}", key="x" * 20))[0] == 401
    assert (await asgi("/api/stats", b"x" * (2 << 20)))[0] == 413
    hub.close()
    status, body = await asgi("/api/broadcast", b'{"text": "late"}')
    assert (status, json.loads(body)) == (503, {"error": "hub is closed"})


async def test_a_body_that_never_arrives_is_cut_off_by_the_handshake_timer(
        serve_hub: Serve) -> None:
    hub = Melody(melody.Config(handshake_timeout=0.3))
    hub.enable_http_api(KEY)
    hub, url = await serve_hub(hub)
    port = urlparse(url).port or 0
    head = (f"POST /api/stats HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Length: 100\r\n\r\n{{").encode()

    def stall() -> bytes:
        with socket.create_connection((HOST, port), timeout=WAIT) as sock:
            sock.sendall(head)  # 1 byte of the 100 promised, then nothing
            try:
                return sock.recv(65536)
            except ConnectionResetError:
                return b""

    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.to_thread(stall) == b""  # closed, no answer
    assert loop.time() - started < 3.0
    assert hub.stats()["handshake_timeouts"] == 1


async def test_under_uvicorn_and_starlette_the_mounted_api_reaches_asgi_sessions() -> None:
    uvicorn = pytest.importorskip("uvicorn")
    routing = pytest.importorskip("starlette.routing")
    applications = pytest.importorskip("starlette.applications")
    hub = Melody()
    api = hub.enable_http_api(KEY)
    app = applications.Starlette(routes=[routing.WebSocketRoute("/ws", hub.asgi),
                                         routing.Mount("/api", app=api)])
    sock = socket.socket()
    sock.bind((HOST, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started or task.done())
        assert server.started, task
        async with melody.connect(f"ws://{HOST}:{port}/ws") as conn:
            await until(lambda: len(hub) == 1)
            reply = await call(port, "broadcast", {"data": {"via": "asgi"}})
            assert (reply.status, reply.json()) == (200, {"sessions": 1})
            assert await recv(conn) == '{"via":"asgi"}'
            assert (await call(port, "broadcast", {"text": "x"}, key=None)).status == 401
            assert (await call(port, "stats", method="GET")).status == 405
    finally:
        hub.close()
        await hub.wait_closed(timeout=2.0)
        server.should_exit = True
        async with asyncio.timeout(WAIT):
            await task
        sock.close()
