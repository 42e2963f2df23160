"""One user's sessions across nodes: ``hub.send_to_user`` and ``hub.disconnect_user`` through a
real broker (the ``P:user`` channel of RedisBackplane, the ``P.user`` subject of NatsBackplane:
each test runs on both), two hubs in this process, melody's client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from cluster_support import is_nats, make_backplane, wait_until

import melody
from melody.backplane import (
    FLAG_DISCONNECT,
    decode_user_envelope,
    encode_disconnect_envelope,
    encode_user_envelope,
    new_node_id,
)
from melody.client import ClientConnection
from melody.errors import ConnectionClosed
from melody.middleware import CallNext, Handshake

WAIT = 5.0

Node = tuple[melody.Melody, Any, str]


async def name_user(handshake: Handshake, call_next: CallNext) -> None:
    values = handshake.request.query_params.get("user")
    if values:
        handshake.user = values[0]
    await call_next(handshake)


@pytest_asyncio.fixture
async def nodes(broker: str, prefix: str) -> AsyncIterator[Callable[[], Awaitable[Node]]]:
    started: list[melody.Melody] = []

    async def start() -> Node:
        backplane = make_backplane(broker, prefix)
        hub = melody.Melody(backplane=backplane)
        hub.use(name_user)
        server = await hub.serve("127.0.0.1", 0)
        started.append(hub)
        await wait_until(lambda: backplane.connected, "backplane connected")
        return hub, backplane, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for hub in started:
        if not hub.is_closed():
            hub.close()
        await hub.wait_closed(timeout=2)


async def recv(conn: ClientConnection) -> str | bytes:
    async with asyncio.timeout(WAIT):
        return await conn.recv()


@pytest.mark.asyncio
async def test_send_to_user_reaches_the_users_sessions_on_every_node(
        nodes: Callable[[], Awaitable[Node]], broker: str) -> None:
    hub_a, bp_a, url_a = await nodes()
    hub_b, bp_b, url_b = await nodes()
    async with melody.connect(url_a + "/?user=ada") as ada_a, \
            melody.connect(url_b + "/?user=ada") as ada_b, \
            melody.connect(url_b + "/?user=bob") as bob_b:
        await wait_until(lambda: len(hub_a) == 1 and len(hub_b) == 2, "sessions")
        # Counts are this node's: ada has one session on A (the one on B is not counted).
        assert hub_a.send_to_user("ada", "hello") == 1
        assert hub_a.send_to_user_json("ada", {"n": 2}) == 1
        assert hub_a.send_to_user_binary("ada", b"\x01\x02") == 1
        assert hub_a.send_to_user("bob", "for bob") == 0  # bob is only on B
        for conn in (ada_a, ada_b):
            assert await recv(conn) == "hello"
            assert await recv(conn) == '{"n":2}'
            assert await recv(conn) == b"\x01\x02"
        # Bob got his message, and nothing of ada's before it.
        assert await recv(bob_b) == "for bob"
        assert bp_b.stats()["received"] == 4
        # A's own echoes are recognised and dropped, not delivered twice (NATS never sends
        # them: the backplane connects with no_echo).
        own = 0 if is_nats(broker) else 4
        await wait_until(lambda: bp_a.stats()["ignored_own"] == own, "A's echoes read")
        assert bp_a.stats()["received"] == 0


@pytest.mark.asyncio
async def test_disconnect_user_closes_the_users_sessions_on_every_node(
        nodes: Callable[[], Awaitable[Node]]) -> None:
    hub_a, _, url_a = await nodes()
    hub_b, _, url_b = await nodes()
    ada_a = await melody.connect(url_a + "/?user=ada")
    ada_b = await melody.connect(url_b + "/?user=ada")
    bob_b = await melody.connect(url_b + "/?user=bob")
    try:
        await wait_until(lambda: len(hub_a) == 1 and len(hub_b) == 2, "sessions")
        assert hub_a.disconnect_user("ada", 4003, "banned") == 1
        for conn in (ada_a, ada_b):
            with pytest.raises(ConnectionClosed) as info:
                await recv(conn)
            assert (info.value.code, info.value.reason) == (4003, "banned")
        await wait_until(lambda: len(hub_a) == 0 and len(hub_b) == 1, "ada gone everywhere")
        assert hub_b.user_sessions("bob") != []
        hub_a.send_to_user("bob", "still here")
        assert await recv(bob_b) == "still here"
    finally:
        for conn in (ada_a, ada_b, bob_b):
            await conn.close()


def test_user_envelopes_round_trip_and_refuse_garbage() -> None:
    node = new_node_id()
    data = encode_user_envelope(node, "ådå", True, b"\x00payload")
    assert decode_user_envelope(data) == (node, 1, "ådå", b"\x00payload")
    data = encode_disconnect_envelope(node, "bob", 4003, "banned")
    node_id, flags, user, payload = decode_user_envelope(data)
    assert (node_id, flags & FLAG_DISCONNECT, user) == (node, FLAG_DISCONNECT, "bob")
    assert payload == (4003).to_bytes(2, "big") + b"banned"
    for bad in (b"", node, node + b"\x04\x00\x00", node + b"\x00\x00\x09abc"):
        with pytest.raises(ValueError):
            decode_user_envelope(bad)
    with pytest.raises(ValueError):
        encode_user_envelope(node, "x" * 70_000, False, b"")
