"""Topics with history on one hub (the memory engine), over real sockets.

The clients are the ``websockets`` library speaking the JSON protocol by hand (what any
client in any language would send, ``docs/protocol.md``) and melody's own client.
"""

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


def history_hub(**topics: int) -> Melody:
    hub = Melody(codec=melody.codecs.JSON)
    hub.authorize(lambda session, action, topic: True)
    for pattern, size in (topics or {"chat:*": 100}).items():
        hub.configure_topic(pattern, history_size=size)
    return hub


async def request(ws: ClientConnection, msg_id: int, kind: str, data: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"type": kind, "id": msg_id, "data": data}))
    async with asyncio.timeout(WAIT):
        while True:
            reply = json.loads(await ws.recv())
            if reply.get("id") == msg_id:
                return reply


async def publications(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    out = []
    async with asyncio.timeout(WAIT):
        while len(out) < count:
            out.append(json.loads(await ws.recv()))
    return out


async def test_a_fresh_subscribe_gets_the_position_and_then_numbered_publications(
        serve: Serve) -> None:
    hub = history_hub()
    url = await serve(hub)
    async with connect(url) as ws:
        reply = await request(ws, 1, "subscribe", {"topic": "chat:1"})
        assert reply["ok"] is True
        data = reply["data"]
        assert data["subscribed"] is True and data["recovered"] is False
        assert data["offset"] == 0 and data["publications"] == []
        epoch = data["epoch"]
        assert hub.publish_json("chat:1", {"n": 1}) == 1
        assert hub.publish("chat:1", "plain text") == 1
        got = await publications(ws, 2)
        assert got == [
            {"type": "publish", "topic": "chat:1", "offset": 1, "data": {"n": 1}},
            {"type": "publish", "topic": "chat:1", "offset": 2, "data": "plain text"},
        ]
        page = await hub.history("chat:1")
        assert page.position == melody.StreamPosition(2, epoch)
        assert [(p.offset, json.loads(p.data)) for p in page.publications] == [
            (1, {"n": 1}), (2, "plain text")]


async def test_a_resubscribe_gets_exactly_what_it_missed_then_the_live_stream(
        serve: Serve) -> None:
    hub = history_hub()
    url = await serve(hub)
    async with connect(url) as ws:
        start = (await request(ws, 1, "subscribe", {"topic": "chat:1"}))["data"]
        for i in range(3):
            hub.publish_json("chat:1", i)
        seen = await publications(ws, 3)
    last = seen[-1]["offset"]
    missed = 7
    for i in range(3, 3 + missed):
        hub.publish_json("chat:1", i)
    async with connect(url) as ws:
        reply = await request(ws, 1, "subscribe",
                              {"topic": "chat:1", "offset": last, "epoch": start["epoch"]})
        data = reply["data"]
        assert data["recovered"] is True
        assert [p["offset"] for p in data["publications"]] == list(range(4, 4 + missed))
        assert [p["data"] for p in data["publications"]] == list(range(3, 3 + missed))
        assert data["offset"] == 3 + missed
        hub.publish_json("chat:1", "live")
        (live,) = await publications(ws, 1)
        assert live["offset"] == 4 + missed and live["data"] == "live"


async def test_publications_that_fell_out_of_history_or_another_epoch_are_not_recovered(
        serve: Serve) -> None:
    hub = history_hub(**{"small": 2})
    url = await serve(hub)
    for i in range(5):
        hub.publish_json("small", i)
    epoch = (await hub.history("small")).position.epoch
    async with connect(url) as ws:
        gone = (await request(ws, 1, "subscribe",
                              {"topic": "small", "offset": 1, "epoch": epoch}))["data"]
        assert gone["recovered"] is False and gone["publications"] == []
        assert gone["offset"] == 5
        await request(ws, 2, "unsubscribe", "small")
        kept = (await request(ws, 3, "subscribe",
                              {"topic": "small", "offset": 3, "epoch": epoch}))["data"]
        assert kept["recovered"] is True
        assert [p["offset"] for p in kept["publications"]] == [4, 5]
        await request(ws, 4, "unsubscribe", "small")
        other = (await request(ws, 5, "subscribe",
                               {"topic": "small", "offset": 5, "epoch": "not-it"}))["data"]
        assert other["recovered"] is False and other["epoch"] == epoch


async def test_a_restarted_memory_engine_says_recovered_false(serve: Serve) -> None:
    first = history_hub()
    url = await serve(first)
    async with melody.connect(url) as conn:
        sub = await conn.subscribe("chat:1")
        first.publish_json("chat:1", "before")
        assert (await sub.get(WAIT)).data == "before"
        position = (sub.offset, sub.epoch)
    first.close()
    await first.wait_closed(timeout=1.0)
    second = history_hub()  # a new process would start the same: no history, a new epoch
    url = await serve(second)
    async with melody.connect(url) as conn:
        sub = await conn.subscribe("chat:1", offset=position[0], epoch=position[1])
        assert sub.recovered is False
        assert sub.epoch != position[1]


async def test_bad_positions_and_binary_publishes_are_refused(serve: Serve) -> None:
    hub = history_hub()
    url = await serve(hub)
    async with connect(url) as ws:
        for i, data in enumerate([{"topic": "chat:1", "offset": -1, "epoch": "e"},
                                  {"topic": "chat:1", "offset": 1},
                                  {"topic": "chat:1", "offset": "1", "epoch": "e"},
                                  {"topic": "plain", "offset": 1, "epoch": "e"}]):
            reply = await request(ws, i + 1, "subscribe", data)
            assert reply["ok"] is False, data
    with pytest.raises(TypeError):
        hub.publish_binary("chat:1", b"x")
    with pytest.raises(ValueError):
        await hub.history("plain")


async def test_topics_without_options_keep_their_old_messages(serve: Serve) -> None:
    hub = history_hub()
    url = await serve(hub)
    async with connect(url) as ws:
        assert (await request(ws, 1, "subscribe", "plain"))["data"] is True
        assert hub.publish("plain", "raw") == 1
        assert await ws.recv() == "raw"


async def test_the_publisher_receives_its_own_numbered_publication(serve: Serve) -> None:
    hub = history_hub()
    url = await serve(hub)
    async with connect(url) as ws:
        await request(ws, 1, "subscribe", {"topic": "chat:1"})
        await ws.send(json.dumps({"type": "publish", "id": 2,
                                  "data": {"topic": "chat:1", "data": {"hi": 1}}}))
        got = await publications(ws, 2)
        assert got[0] == {"type": "publish", "topic": "chat:1", "offset": 1, "data": {"hi": 1}}
        assert got[1] == {"id": 2, "ok": True, "data": 1}


async def test_the_python_client_iterates_publications_and_drops_duplicates(
        serve: Serve) -> None:
    hub = history_hub()
    url = await serve(hub)
    async with melody.connect(url) as conn:
        sub = await conn.subscribe("chat:1")
        assert sub.recovered is None and sub.offset == 0 and sub.epoch
        for i in range(5):
            hub.publish_json("chat:1", i)
        got = [await sub.get(WAIT) for _ in range(5)]
        assert [(p.offset, p.data) for p in got] == [(i + 1, i) for i in range(5)]
        assert sub.offset == 5
        # A replayed offset (a duplicate) is dropped, not delivered twice.
        sub.feed(melody.Publication("chat:1", "again", 5))
        assert sub.duplicates == 1 and sub.pending() == 0
        # Messages that are not publications still reach recv().
        hub.broadcast("hello")
        async with asyncio.timeout(WAIT):
            assert await conn.recv() == "hello"


async def test_a_reconnecting_client_resumes_its_subscription_by_itself(serve: Serve) -> None:
    hub = history_hub()
    url = await serve(hub)
    resubscribed: list[bool | None] = []
    async with melody.connect(url, reconnect=True, backoff_initial=0.05,
                              backoff_max=0.2) as client:
        sub = await client.subscribe(
            "chat:1", on_resubscribe=lambda s: resubscribed.append(s.recovered))
        hub.publish_json("chat:1", 0)
        assert (await sub.get(WAIT)).offset == 1
        for session in hub.sessions():
            session.close()  # the connection drops; publications go on meanwhile
        for i in range(1, 6):
            hub.publish_json("chat:1", i)
        got = [await sub.get(WAIT) for _ in range(5)]
        assert [(p.offset, p.data) for p in got] == [(i + 1, i) for i in range(1, 6)]
        async with asyncio.timeout(WAIT):  # called once the resubscribe's reply was applied
            while not resubscribed:
                await asyncio.sleep(0.01)
        assert resubscribed == [True] and sub.resubscribes == 1
        hub.publish_json("chat:1", "live")
        assert (await sub.get(WAIT)).data == "live"
        assert sub.duplicates == 0


async def test_a_gap_in_the_offsets_is_repaired_from_history(serve: Serve) -> None:
    # Two publications are stored but never reach the client (as when a broker drops live
    # messages during an outage): the next one jumps the offset, and the client recovers
    # the missing two from history before delivering it.
    from melody._hubstate import state_of

    hub = history_hub()
    url = await serve(hub)
    async with melody.connect(url) as conn:
        sub = await conn.subscribe("chat:1")
        hub.publish_json("chat:1", "one")
        assert (await sub.get(WAIT)).offset == 1
        memory = state_of(hub).streams.memory
        memory.append("chat:1", '"lost two"', 100, None)
        memory.append("chat:1", '"lost three"', 100, None)
        hub.publish_json("chat:1", "four")
        got = [await sub.get(WAIT) for _ in range(3)]
        assert [(p.offset, p.data) for p in got] == [(2, "lost two"), (3, "lost three"),
                                                     (4, "four")]
        # "four" came twice on the wire (live, held, and in the repair's reply): once to the
        # application.
        assert sub.gaps == 1 and sub.duplicates == 1
        hub.publish_json("chat:1", "five")
        assert (await sub.get(WAIT)).offset == 5
