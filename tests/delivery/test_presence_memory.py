"""Presence and join/leave on one hub (the memory engine), over real sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

import melody
from melody import Melody

pytestmark = pytest.mark.asyncio

Serve = Callable[..., Awaitable[str]]
WAIT = 5.0


def presence_hub() -> Melody:
    hub = Melody(codec=melody.codecs.JSON)
    hub.authorize(lambda session, action, topic: True)
    hub.configure_topic("room:*", presence=True, join_leave=True)
    hub.configure_topic("quiet:*", presence=True)

    @hub.handle_connect
    def name(session: melody.Session) -> None:
        user = session.request.query_params.get("user")
        session.user = user[0] if isinstance(user, list) else user

    return hub


async def request(ws: ClientConnection, msg_id: int, kind: str, data: Any) -> Any:
    await ws.send(json.dumps({"type": kind, "id": msg_id, "data": data}))
    async with asyncio.timeout(WAIT):
        while True:
            reply = json.loads(await ws.recv())
            if reply.get("id") == msg_id:
                assert reply["ok"] is True, reply
                return reply["data"]


async def next_of(ws: ClientConnection, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        while True:
            message = json.loads(await ws.recv())
            if message.get("type") == kind:
                return message


async def test_presence_lists_the_subscribers_with_user_and_connect_time(serve: Serve) -> None:
    hub = presence_hub()
    url = await serve(hub)
    async with connect(url + "?user=ann") as a, connect(url + "?user=bob") as b, \
            connect(url + "?user=ann") as c:
        for ws in (a, b, c):
            await request(ws, 1, "subscribe", "quiet:1")
        entries = await hub.presence("quiet:1")
        assert len(entries) == 3
        assert sorted(e["user"] for e in entries.values()) == ["ann", "ann", "bob"]
        for sid, entry in entries.items():
            assert entry["session"] == sid and entry["node"] == "local"
            assert entry["connected_at"] > 1.7e9  # Unix seconds
        assert await hub.presence_stats("quiet:1") == {"sessions": 3, "users": 2}
        # Over the wire, for a subscriber.
        assert await request(a, 2, "presence_stats", "quiet:1") == {"sessions": 3, "users": 2}
        assert len(await request(a, 3, "presence", "quiet:1")) == 3
        await request(b, 2, "unsubscribe", "quiet:1")
        assert await hub.presence_stats("quiet:1") == {"sessions": 2, "users": 1}
    async with asyncio.timeout(WAIT):
        while await hub.presence("quiet:1"):
            await asyncio.sleep(0.01)  # disconnects remove the rest


async def test_join_and_leave_reach_the_other_subscribers(serve: Serve) -> None:
    hub = presence_hub()
    url = await serve(hub)
    async with connect(url + "?user=ann") as a:
        await request(a, 1, "subscribe", "room:1")
        async with connect(url + "?user=bob") as b:
            await request(b, 1, "subscribe", "room:1")
            join = await next_of(a, "join")
            assert join["topic"] == "room:1" and join["info"]["user"] == "bob"
            bob = join["info"]["session"]
        leave = await next_of(a, "leave")
        assert leave["info"]["session"] == bob and leave["info"]["user"] == "bob"


async def test_presence_is_for_subscribers_and_configured_topics_only(serve: Serve) -> None:
    hub = presence_hub()
    url = await serve(hub)
    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "presence", "id": 1, "data": "quiet:1"}))
        reply = json.loads(await ws.recv())
        assert reply == {"id": 1, "ok": False, "error": "forbidden"}
        await request(ws, 2, "subscribe", "plain")
        await ws.send(json.dumps({"type": "presence", "id": 3, "data": "plain"}))
        reply = json.loads(await ws.recv())
        assert reply["ok"] is False and "keeps no presence" in reply["error"]
    with pytest.raises(ValueError):
        await hub.presence("plain")
