"""What one client can make the hub hold, and the bound on each (the hardening issue's defects
2 and 3 and its audit): topics per session and topic names, handler tasks under
``concurrent_message_handling``, and pings and empty fragments against the inbound rate limit.

Real hubs on 127.0.0.1 port 0, real ``websockets``/``melody.connect`` clients or raw sockets,
on asyncio and uvloop; every wait bounded. Each test fails on a hub without the bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from e2e_support import RawClient, wait_until
from prod_support import echo, round_trip, scrape
from websockets.asyncio.client import ClientConnection

import melody
from melody import Config, Melody, RateLimit, Session, TopicLimitExceeded
from melody._core.frames import OP_BINARY, OP_CONT, OP_PING, OP_PONG, OP_TEXT, encode_frame
from melody.codecs import JSON

pytestmark = pytest.mark.asyncio

Serve = Callable[..., Awaitable[tuple[Melody, str]]]
Connect = Callable[..., Awaitable[ClientConnection]]
Raw = Callable[..., Awaitable[RawClient]]


# -- topics ---------------------------------------------------------------------------------


async def test_hub_subscribe_refuses_past_max_topics_per_session(
        serve_hub: Serve, ws_connect: Connect) -> None:
    hub = Melody(Config(max_topics_per_session=50))
    sessions: list[Session] = []
    hub.handle_connect(sessions.append)
    _, url = await serve_hub(hub)
    await ws_connect(url)
    await wait_until(lambda: len(sessions) == 1, "one session")
    (session,) = sessions
    for i in range(50):
        assert hub.subscribe(session, f"room:{i}") is True
    # Subscribing again to a held topic is not a new one: no error, nothing changes.
    assert hub.subscribe(session, "room:0") is False
    with pytest.raises(TopicLimitExceeded, match="max_topics_per_session=50"):
        hub.subscribe(session, "room:50")
    with pytest.raises(ValueError):  # TopicLimitExceeded is a ValueError
        hub.subscribe(session, "room:51")
    assert len(session.topics) == 50
    assert hub.stats()["subscriptions_refused"] == 2
    # Leaving one makes room for another.
    assert hub.unsubscribe(session, "room:0") is True
    assert hub.subscribe(session, "room:50") is True


@pytest.mark.parametrize("name", ["a" * 257, "é" * 129, "\U0001f600" * 65])
async def test_hub_subscribe_refuses_topic_names_over_max_topic_length_bytes(
        serve_hub: Serve, ws_connect: Connect, name: str) -> None:
    hub = Melody()  # the defaults: 256 bytes
    sessions: list[Session] = []
    hub.handle_connect(sessions.append)
    _, url = await serve_hub(hub)
    await ws_connect(url)
    await wait_until(lambda: len(sessions) == 1, "one session")
    with pytest.raises(TopicLimitExceeded, match="max_topic_length"):
        hub.subscribe(sessions[0], name)
    assert hub.topics() == [] and sessions[0].topics == frozenset()
    # Exactly at the bound is fine.
    assert hub.subscribe(sessions[0], "b" * 256) is True
    assert hub.subscribe(sessions[0], "é" * 128) is True


async def test_routed_subscribe_loop_is_refused_with_an_error_reply(serve_hub: Serve) -> None:
    hub = Melody(Config(max_topics_per_session=100), codec=JSON)
    hub.authorize(lambda session, action, topic: topic.startswith("public:"))
    _, url = await serve_hub(hub, metrics=True)
    async with melody.connect(url) as conn:
        for i in range(100):
            assert await conn.request("subscribe", f"public:{i}", timeout=5) is True
        # The hostile client of the issue: huge names, then a loop of small ones.
        with pytest.raises(melody.RequestError, match="max_topic_length"):
            await conn.request("subscribe", "public:" + "x" * (1 << 19), timeout=5)
        for i in range(100, 300):
            with pytest.raises(melody.RequestError, match="max_topics_per_session"):
                await conn.request("subscribe", f"public:{i}", timeout=5)
        assert len(hub.topics()) == 100
        assert hub.stats()["subscriptions_refused"] == 201
        samples = await scrape(url)
        assert samples[("melody_subscriptions_refused_total", ())] == 201
        # The session is still served: unsubscribe and subscribe again works.
        assert await conn.request("unsubscribe", "public:0", timeout=5) is True
        assert await conn.request("subscribe", "public:new", timeout=5) is True


# -- concurrent handlers ----------------------------------------------------------------------


async def test_concurrent_handlers_are_bounded_per_session_and_nothing_is_dropped(
        serve_hub: Serve, raw_connect: Raw) -> None:
    bound = 8
    hub = Melody(Config(concurrent_message_handling=True, max_concurrent_handlers=bound))
    release = asyncio.Event()
    running = peak = 0
    started: list[str] = []
    done: list[str] = []

    @hub.handle_message
    async def slow(session: Session, msg: str) -> None:
        nonlocal running, peak
        if msg == "ping?":  # round_trip's check that the hub still serves
            session.write(msg)
            return
        running += 1
        peak = max(peak, running)
        started.append(msg)
        try:
            await release.wait()
        finally:
            running -= 1
            done.append(msg)

    _, url = await serve_hub(hub)
    raw = await raw_connect(url)
    count = 5000
    # Many small frames in one write: what made the hub spawn one task per frame (565 MiB in
    # 7 s in the measurement).
    raw.send(b"".join(encode_frame(OP_TEXT, f"m{i}".encode(), mask=True) for i in range(count)))
    await wait_until(lambda: running == bound, "the bound reached")
    await asyncio.sleep(0.2)  # more frames had every chance to start tasks
    assert peak == bound
    release.set()
    await wait_until(lambda: len(done) == count, f"all {count} handled", timeout=30)
    assert peak == bound
    # Started in arrival order (they run concurrently, so they may finish in any order).
    assert started == [f"m{i}" for i in range(count)]
    await round_trip(url)


async def test_concurrent_mode_keeps_sync_handlers_behind_waiting_async_ones(
        serve_hub: Serve, ws_connect: Connect) -> None:
    hub = Melody(Config(concurrent_message_handling=True, max_concurrent_handlers=1))
    release = asyncio.Event()
    order: list[Any] = []

    @hub.handle_message
    async def text(session: Session, msg: str) -> None:
        order.append(msg)
        await release.wait()

    @hub.handle_message_binary
    def binary(session: Session, msg: bytes) -> None:
        order.append(msg)

    _, url = await serve_hub(hub)
    ws = await ws_connect(url)
    await ws.send("a")
    await ws.send("b")
    await ws.send(b"c")
    await wait_until(lambda: order == ["a"], "the first handler running")
    await asyncio.sleep(0.1)
    assert order == ["a"]  # "b" waits for the one slot, b"c" waits behind it
    release.set()
    await wait_until(lambda: order == ["a", "b", b"c"], "the rest in order")


# -- pings and fragments cost the inbound rate limit ------------------------------------------


async def test_a_ping_flood_is_charged_to_the_rate_limit(serve_hub: Serve,
                                                         raw_connect: Raw) -> None:
    hub = echo(Melody(Config(rate_limit=RateLimit(messages_per_second=0.001,
                                                  burst_messages=10))))
    _, url = await serve_hub(hub)
    raw = await raw_connect(url)
    raw.send(encode_frame(OP_PING, b"p", mask=True) * 1000)
    await wait_until(lambda: hub.stats()["messages_rate_limited"] == 990, "990 pings refused")
    pongs = 0
    while True:
        try:
            frame = await raw.recv_frame(timeout=0.5)
        except TimeoutError:
            break
        assert frame.opcode == OP_PONG
        pongs += 1
    assert pongs <= 10  # the burst, coalesced or not; never one per ping
    await round_trip(url)


async def test_empty_fragments_are_charged_and_their_message_dropped(
        serve_hub: Serve, raw_connect: Raw) -> None:
    hub = Melody(Config(rate_limit=RateLimit(messages_per_second=0.001, burst_messages=50)))
    got: list[bytes] = []
    hub.handle_message_binary(lambda session, msg: got.append(msg))
    _, url = await serve_hub(hub)
    raw = await raw_connect(url)
    flood = [encode_frame(OP_BINARY, b"x", fin=False, mask=True)]
    flood += [encode_frame(OP_CONT, b"", fin=False, mask=True)] * 10_000
    flood.append(encode_frame(OP_CONT, b"y", fin=True, mask=True))
    raw.send(b"".join(flood))
    # 50 tokens pay for 50 fragments; the 51st is refused, and with it the whole message.
    await wait_until(lambda: hub.stats()["messages_rate_limited"] == 1, "one refusal")
    await asyncio.sleep(0.2)
    assert got == []
    assert hub.stats()["messages_rate_limited"] == 1  # counted once per message, not per frame


async def test_a_ping_flood_closes_under_the_close_policy(serve_hub: Serve,
                                                          raw_connect: Raw) -> None:
    hub = Melody(Config(rate_limit=RateLimit(messages_per_second=0.001, burst_messages=5,
                                             policy="close")))
    _, url = await serve_hub(hub)
    raw = await raw_connect(url)
    raw.send(encode_frame(OP_PING, b"", mask=True) * 100)
    code = None
    async with asyncio.timeout(10):
        while code is None:
            frame = await raw.recv_frame()
            if frame.opcode == 0x8:
                code = int.from_bytes(frame.payload[:2], "big")
    assert code == 1008
    raw.send_frame(OP_TEXT, b"")  # ignored after the close
