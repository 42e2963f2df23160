"""Session identity over real sockets: ``session.id``, ``session.user`` and the hub's
``send_to_user`` / ``disconnect_user`` on one node (tests/cluster/test_cluster_users.py has
them across nodes)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from e2e_support import WAIT, wait_until
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from melody import Melody, Session
from melody._hubstate import state_of
from melody.errors import HubClosed
from melody.middleware import CallNext, Handshake

pytestmark = pytest.mark.asyncio

Serve = Callable[..., Awaitable[tuple[Melody, str]]]
Connect = Callable[..., Awaitable[ClientConnection]]


def user_from_query(hub: Melody) -> None:
    """A middleware naming the user from ``?user=...`` (what an auth middleware does)."""
    async def name_user(handshake: Handshake, call_next: CallNext) -> None:
        values = handshake.request.query_params.get("user")
        if values:
            handshake.user = values[0]
        await call_next(handshake)

    hub.use(name_user)


async def test_session_id_is_unique_stable_and_url_safe(serve_hub: Serve,
                                                        ws_connect: Connect) -> None:
    hub, url = await serve_hub()
    sessions: list[Session] = []
    hub.handle_connect(sessions.append)
    for _ in range(20):
        await ws_connect(url)
    await wait_until(lambda: len(sessions) == 20, "20 sessions")
    ids = [s.id for s in sessions]
    assert len(set(ids)) == 20
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{16}", i) for i in ids), ids
    assert [s.id for s in sessions] == ids  # read again: the same
    assert sessions[0].id in repr(sessions[0])


async def test_log_records_carry_session_id_and_user(serve_hub: Serve, ws_connect: Connect,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    hub, url = await serve_hub()
    user_from_query(hub)
    sessions: list[Session] = []
    hub.handle_connect(sessions.append)
    with caplog.at_level(logging.INFO, logger="melody.session"):
        ws = await ws_connect(url + "/?user=ada")
        await wait_until(lambda: len(sessions) == 1, "connected")
        await ws.close()
        await wait_until(lambda: len(hub) == 0, "disconnected")
    records = [r for r in caplog.records if r.name == "melody.session"]
    assert [getattr(r, "event", None) for r in records] == ["connect", "disconnect"]
    for record in records:
        assert getattr(record, "session_id", None) == sessions[0].id
        assert getattr(record, "user", None) == "ada"


async def test_user_from_middleware_and_setter(serve_hub: Serve, ws_connect: Connect) -> None:
    hub, url = await serve_hub()
    user_from_query(hub)
    seen: dict[str, Any] = {}
    sessions: list[Session] = []

    @hub.handle_connect
    def connected(session: Session) -> None:
        seen.setdefault("at_connect", []).append(session.user)
        sessions.append(session)

    await ws_connect(url + "/?user=ada")
    await ws_connect(url)
    await wait_until(lambda: len(sessions) == 2, "two sessions")
    assert seen["at_connect"] == ["ada", None]
    assert hub.user_sessions("ada") == [sessions[0]]
    # The application names the second one later (a login route, say), then renames it.
    sessions[1].user = "bob"
    assert hub.user_sessions("bob") == [sessions[1]]
    sessions[1].user = "carol"
    assert hub.user_sessions("bob") == []
    assert hub.user_sessions("carol") == [sessions[1]]
    with pytest.raises(TypeError):
        sessions[1].user = 42  # type: ignore[assignment]


async def test_send_to_user_reaches_every_session_of_that_user_only(
        serve_hub: Serve, ws_connect: Connect) -> None:
    hub, url = await serve_hub()
    user_from_query(hub)
    ada1 = await ws_connect(url + "/?user=ada")
    ada2 = await ws_connect(url + "/?user=ada")
    bob = await ws_connect(url + "/?user=bob")
    anon = await ws_connect(url)
    await wait_until(lambda: len(hub) == 4, "four sessions")

    assert hub.send_to_user("ada", "hello ada") == 2
    assert hub.send_to_user_json("ada", {"n": 1}) == 2
    assert hub.send_to_user_binary("ada", b"\x00\x01") == 2
    assert hub.send_to_user("nobody", "lost") == 0
    assert hub.send_to_user("bob", "hello bob") == 1
    for ws in (ada1, ada2):
        async with asyncio.timeout(WAIT):
            assert await ws.recv() == "hello ada"
            assert orjson.loads(await ws.recv()) == {"n": 1}
            assert await ws.recv() == b"\x00\x01"
    async with asyncio.timeout(WAIT):
        assert await bob.recv() == "hello bob"
    # Nothing else reached bob or the anonymous session: a marker broadcast comes first.
    hub.broadcast("marker")
    for ws in (bob, anon):
        async with asyncio.timeout(WAIT):
            assert await ws.recv() == "marker"


async def test_disconnect_user_closes_its_sessions_with_the_code(
        serve_hub: Serve, ws_connect: Connect) -> None:
    hub, url = await serve_hub()
    user_from_query(hub)
    ada1 = await ws_connect(url + "/?user=ada")
    ada2 = await ws_connect(url + "/?user=ada")
    bob = await ws_connect(url + "/?user=bob")
    await wait_until(lambda: len(hub) == 3, "three sessions")
    with pytest.raises(ValueError):
        hub.disconnect_user("ada", 1005)
    assert hub.disconnect_user("ada", 4003, "banned") == 2
    for ws in (ada1, ada2):
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(WAIT):
                await ws.recv()
        assert ws.close_code == 4003 and ws.close_reason == "banned"
    await wait_until(lambda: len(hub) == 1, "ada's sessions gone")
    assert hub.user_sessions("ada") == []
    assert "ada" not in state_of(hub).users  # the index holds no empty entry
    assert hub.disconnect_user("ada") == 0
    hub.broadcast("still here")
    async with asyncio.timeout(WAIT):
        assert await bob.recv() == "still here"


async def test_user_index_is_emptied_by_disconnects(serve_hub: Serve,
                                                    ws_connect: Connect) -> None:
    hub, url = await serve_hub()
    user_from_query(hub)
    clients = [await ws_connect(url + f"/?user=u{i % 3}") for i in range(9)]
    await wait_until(lambda: len(hub) == 9, "nine sessions")
    assert sorted(state_of(hub).users) == ["u0", "u1", "u2"]
    assert sum(len(s) for s in state_of(hub).users.values()) == 9
    for ws in clients:
        await ws.close()
    await wait_until(lambda: len(hub) == 0, "all gone")
    assert state_of(hub).users == {}


async def test_user_methods_raise_on_a_closed_hub(serve_hub: Serve) -> None:
    hub, _ = await serve_hub()
    hub.close()
    with pytest.raises(HubClosed):
        hub.send_to_user("ada", "x")
    with pytest.raises(HubClosed):
        hub.send_to_user_json("ada", {})
    with pytest.raises(HubClosed):
        hub.disconnect_user("ada")
