"""Server-to-client requests over real sockets: ``session.call`` answered by melody's client
(``@conn.route``), by a ``ReconnectingClient``, and by a hand-written ``websockets`` peer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from e2e_support import WAIT, wait_until
from websockets.asyncio.client import ClientConnection

import melody
from melody import Config, Melody, Session
from melody.codecs import JSON, Packet
from melody.errors import AckTimeout, RequestError, SessionClosed, TooManyCalls

pytestmark = pytest.mark.asyncio

Serve = Callable[..., Awaitable[tuple[Melody, str]]]
Connect = Callable[..., Awaitable[ClientConnection]]


async def one_session(hub: Melody) -> Session:
    await wait_until(lambda: len(hub) >= 1, "a session")
    return hub.sessions()[-1]


async def test_call_answered_by_sync_and_async_routes(serve_hub: Serve) -> None:
    hub, url = await serve_hub(Melody(codec=JSON))
    async with melody.connect(url) as conn:
        @conn.route("add")
        def add(data: Any) -> int:
            return int(data["a"]) + int(data["b"])

        @conn.route("confirm")
        async def confirm(data: Any) -> dict[str, Any]:
            await asyncio.sleep(0)
            return {"confirmed": data}

        session = await one_session(hub)
        async with asyncio.timeout(WAIT):
            results = await asyncio.gather(
                *(session.call("add", {"a": i, "b": 10}) for i in range(20)),
                session.call("confirm", "order 7"))
        assert results[:20] == [i + 10 for i in range(20)]
        assert results[20] == {"confirmed": "order 7"}
        # Replies never reach recv: the next thing there is what the hub sends after.
        session.write("after")
        async with asyncio.timeout(WAIT):
            assert await conn.recv() == "after"


async def test_client_errors_become_request_error(serve_hub: Serve) -> None:
    hub, url = await serve_hub(Melody(codec=JSON))
    async with melody.connect(url) as conn:
        @conn.route("refuse")
        def refuse(data: Any) -> None:
            raise RequestError("not now")

        @conn.route("crash")
        async def crash(data: Any) -> None:
            raise KeyError("secret detail")

        session = await one_session(hub)
        with pytest.raises(RequestError, match=r"^not now$"):
            await session.call("refuse", None, timeout=WAIT)
        with pytest.raises(RequestError, match=r"^internal error$"):
            await session.call("crash", None, timeout=WAIT)


async def test_wire_format_and_late_replies(serve_hub: Serve, ws_connect: Connect) -> None:
    # A hand-written peer sees the documented request and answers it by hand.
    hub, url = await serve_hub(Melody(codec=JSON))
    ws = await ws_connect(url)
    session = await one_session(hub)
    call = asyncio.ensure_future(session.call("ask", [1, 2], timeout=WAIT))
    async with asyncio.timeout(WAIT):
        request = orjson.loads(await ws.recv())
    assert set(request) == {"type", "id", "data"}
    assert request["type"] == "ask" and request["data"] == [1, 2]
    assert isinstance(request["id"], str) and request["id"].startswith("s")
    await ws.send(orjson.dumps({"id": request["id"], "ok": True, "data": "yes"}).decode())
    async with asyncio.timeout(WAIT):
        assert await call == "yes"
    # A second call times out; its reply comes too late and is dropped, counted.
    with pytest.raises(AckTimeout):
        await session.call("ask", None, timeout=0.05)
    late = orjson.loads(await ws.recv())
    await ws.send(orjson.dumps({"id": late["id"], "ok": True, "data": 1}).decode())
    await wait_until(lambda: hub.stats()["late_replies"] == 1, "late reply counted")
    assert hub.stats()["call_timeouts"] == 1
    assert session.calls == {}


async def test_pending_calls_fail_when_the_session_ends(serve_hub: Serve,
                                                       ws_connect: Connect) -> None:
    hub, url = await serve_hub(Melody(codec=JSON))
    ws = await ws_connect(url)
    session = await one_session(hub)
    calls = [asyncio.ensure_future(session.call("never", i, timeout=None)) for i in range(5)]
    await wait_until(lambda: len(session.calls or ()) == 5, "five calls pending")
    await ws.close()
    async with asyncio.timeout(WAIT):
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, SessionClosed) for o in outcomes), outcomes
    assert session.calls is None
    with pytest.raises(SessionClosed):
        await session.call("again", None)


async def test_pending_calls_are_bounded(serve_hub: Serve, ws_connect: Connect) -> None:
    hub, url = await serve_hub(Melody(Config(max_pending_calls=3), codec=JSON))
    ws = await ws_connect(url)
    session = await one_session(hub)
    calls = [asyncio.ensure_future(session.call("slow", i, timeout=WAIT)) for i in range(3)]
    await wait_until(lambda: len(session.calls or ()) == 3, "three calls pending")
    with pytest.raises(TooManyCalls):
        await session.call("one more", None)
    # The refused one was not sent: the peer sees exactly three requests, answers them.
    for _ in range(3):
        async with asyncio.timeout(WAIT):
            request = orjson.loads(await ws.recv())
        await ws.send(orjson.dumps({"id": request["id"], "ok": True,
                                    "data": request["data"]}).decode())
    async with asyncio.timeout(WAIT):
        assert await asyncio.gather(*calls) == [0, 1, 2]


async def test_a_handler_may_await_a_call_on_its_own_session(serve_hub: Serve) -> None:
    # Sequential handling: the reply must not queue behind the handler that awaits it.
    hub, url = await serve_hub(Melody(codec=JSON))

    @hub.route("checkout")
    async def checkout(session: Session, data: Any) -> str:
        answer = await session.call("confirm", data, timeout=WAIT)
        return f"confirmed: {answer}"

    async with melody.connect(url) as conn:
        @conn.route("confirm")
        def confirm(data: Any) -> str:
            return f"yes to {data}"

        async with asyncio.timeout(WAIT):
            assert await conn.request("checkout", "cart 1") == "confirmed: yes to cart 1"


async def test_unrouted_request_stays_in_the_stream(serve_hub: Serve) -> None:
    hub, url = await serve_hub(Melody(codec=JSON))
    async with melody.connect(url) as conn:
        @conn.route("known")
        def known(data: Any) -> int:
            return 1

        session = await one_session(hub)
        pending = asyncio.ensure_future(session.call("unknown", 5, timeout=WAIT))
        async with asyncio.timeout(WAIT):
            request = orjson.loads(await conn.recv())
        assert request["type"] == "unknown"
        await conn.send(orjson.dumps({"id": request["id"], "ok": False,
                                      "error": "by hand"}).decode())
        with pytest.raises(RequestError, match="by hand"):
            await pending


async def test_reconnecting_client_routes_survive_reconnection(serve_hub: Serve) -> None:
    hub, url = await serve_hub(Melody(codec=JSON))
    client = await melody.connect(url, reconnect=True, backoff_initial=0.01)
    try:
        @client.route("whoami")
        def whoami(data: Any) -> str:
            return f"client {data}"

        session = await one_session(hub)
        assert await session.call("whoami", 1, timeout=WAIT) == "client 1"
        session.close_with_msg(1012, "restart")
        await wait_until(lambda: len(hub) == 1 and hub.sessions()[0] is not session,
                         "reconnected")
        assert await hub.sessions()[0].call("whoami", 2, timeout=WAIT) == "client 2"
    finally:
        await client.close()


async def test_call_needs_a_json_envelope_codec(serve_hub: Serve, ws_connect: Connect) -> None:
    for hub in (Melody(), Melody(codec=Packet)):
        hub, url = await serve_hub(hub)
        await ws_connect(url)
        session = await one_session(hub)
        with pytest.raises(RuntimeError, match="codec"):
            await session.call("x", None)
