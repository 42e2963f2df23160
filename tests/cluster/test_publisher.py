"""``melody.Publisher`` and ``melody.AsyncPublisher``: publishing with no hub running, through
a real redis-server, to two hubs (two nodes, each its own RedisBackplane) in this process,
with melody's client on real sockets.

What must hold: a publisher in another process reaches the subscribers, users and sessions of
both nodes; its publication to a topic with history gets the topic's next offset and is
recovered by a client like a hub's; it puts the hubs' exact bytes on Redis; the topic options
come from the hubs (and the last one written wins); an unreachable Redis raises.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio
from cluster_support import free_port, wait_until

import melody
from melody.backplane.base import encode_envelope, encode_user_envelope
from melody.backplane.redis_streams import stream_head
from melody.client import ClientConnection
from melody.errors import BackplaneError, ConnectionClosed
from melody.middleware import CallNext, Handshake
from melody.publisher import AsyncPublisher, Publisher
from melody.redis_backplane import RedisBackplane

pytestmark = pytest.mark.asyncio

WAIT = 10.0
ROOT = Path(__file__).resolve().parents[2]
Node = tuple[melody.Melody, RedisBackplane, str]


async def name_user(handshake: Handshake, call_next: CallNext) -> None:
    values = handshake.request.query_params.get("user")
    if values:
        handshake.user = values[0]
    await call_next(handshake)


@pytest_asyncio.fixture
async def nodes(redis_url: str, prefix: str) -> AsyncIterator[Callable[[], Awaitable[Node]]]:
    """A factory: ``hub, backplane, url = await nodes()``: a served hub whose sessions are
    all subscribed to ``news``, with ``room:*`` keeping history; closed at teardown."""
    started: list[melody.Melody] = []

    async def start() -> Node:
        backplane = RedisBackplane(redis_url, channel_prefix=prefix, timeout=2.0)
        hub = melody.Melody(codec=melody.codecs.JSON, backplane=backplane)
        hub.use(name_user)
        hub.authorize(lambda session, action, topic: True)
        hub.configure_topic("room:*", history_size=100)

        @hub.handle_connect
        def join_news(session: melody.Session) -> None:
            hub.subscribe(session, "news")

        server = await hub.serve("127.0.0.1", 0)
        started.append(hub)
        await wait_until(lambda: backplane.connected, "backplane connected")
        return hub, backplane, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for hub in started:
        if not hub.is_closed():
            await hub.shutdown(timeout=2.0)


async def recv(conn: ClientConnection) -> str | bytes:
    async with asyncio.timeout(WAIT):
        return await conn.recv()


PUBLISHER_SCRIPT = textwrap.dedent("""
    import json, sys
    import melody

    url, prefix = sys.argv[1], sys.argv[2]
    with melody.Publisher(url, channel_prefix=prefix) as pub:
        out = {
            "news": pub.publish("news", "n1"),
            "news_json": pub.publish_json("news", {"n": 2}),
            "news_binary": pub.publish_binary("news", b"\\x00\\x01"),
            "broadcast": pub.broadcast("all"),
            "broadcast_json": pub.broadcast_json([1]),
            "broadcast_binary": pub.broadcast_binary(b"\\x02"),
            "user": pub.send_to_user("ada", "u1"),
            "user_json": pub.send_to_user_json("ada", {"u": 2}),
            "user_binary": pub.send_to_user_binary("ada", b"\\x03"),
            "room": list(pub.publish_json("room:1", {"k": 1})),
            "room_text": list(pub.publish("room:1", "plain")),
            "disconnect": pub.disconnect_user("ada", 4001, "bye"),
        }
    print(json.dumps(out))
""")


async def test_a_publisher_in_another_process_reaches_both_nodes(
        nodes: Callable[[], Awaitable[Node]], redis_url: str, prefix: str,
        tmp_path: Path) -> None:
    hub_a, bp_a, url_a = await nodes()
    hub_b, bp_b, url_b = await nodes()
    async with melody.connect(url_a + "/?user=ada") as ada_a, \
            melody.connect(url_b + "/?user=ada") as ada_b, \
            melody.connect(url_b + "/?user=bob") as bob_b, \
            melody.connect(url_a) as reader_a, melody.connect(url_b) as reader_b:
        sub_a = await reader_a.subscribe("room:1")
        sub_b = await reader_b.subscribe("room:1")
        hub_a.publish_json("room:1", "from a hub")  # offset 1: the publisher's come next
        for sub in (sub_a, sub_b):
            assert (await sub.get(WAIT)).offset == 1
        await wait_until(lambda: len(hub_a) == 2 and len(hub_b) == 3, "sessions")
        # Both nodes subscribed to news and room:1 (and the hub-wide channel): confirmed.
        await wait_until(lambda: bp_a.stats()["channels"] == 3 and bp_b.stats()["channels"] == 3,
                         "subscriptions confirmed")
        script = tmp_path / "publish.py"
        script.write_text(PUBLISHER_SCRIPT)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), redis_url, prefix, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        result = json.loads(out)
        # Redis' replies: the nodes that receive each channel (two nodes, one subscriber
        # connection each).
        assert result["news"] == result["news_json"] == result["news_binary"] == 2
        assert result["broadcast"] == result["broadcast_json"] == 2
        assert result["broadcast_binary"] == 2
        assert result["user"] == result["user_json"] == result["user_binary"] == 2
        assert result["disconnect"] == 2
        epoch = sub_a.epoch
        assert result["room"] == [2, epoch] and result["room_text"] == [3, epoch]

        for conn in (ada_a, ada_b, bob_b, reader_a, reader_b):
            # Every session: news (subscribed at connect), then the broadcasts.
            assert await recv(conn) == "n1"
            assert await recv(conn) == '{"n":2}'
            assert await recv(conn) == b"\x00\x01"
            assert await recv(conn) == "all"
            assert await recv(conn) == "[1]"
            assert await recv(conn) == b"\x02"
        for conn in (ada_a, ada_b):  # ada's sessions, on both nodes
            assert await recv(conn) == "u1"
            assert await recv(conn) == '{"u":2}'
            assert await recv(conn) == b"\x03"
            with pytest.raises(ConnectionClosed) as info:
                await recv(conn)
            assert (info.value.code, info.value.reason) == (4001, "bye")
        for sub in (sub_a, sub_b):
            got = [await sub.get(WAIT), await sub.get(WAIT)]
            assert [(p.offset, p.data) for p in got] == [(2, {"k": 1}), (3, "plain")]
        assert hub_b.user_sessions("bob") != []


async def test_a_publication_gets_the_next_offset_and_is_recovered_on_another_node(
        nodes: Callable[[], Awaitable[Node]], redis_url: str, prefix: str) -> None:
    hub_a, _, url_a = await nodes()
    hub_b, _, url_b = await nodes()
    async with melody.connect(url_b) as conn:
        sub = await conn.subscribe("room:7")
        hub_b.publish_json("room:7", "first")
        assert (await sub.get(WAIT)).offset == 1
        position = (sub.offset, sub.epoch)
    # Published while the client is away, from no hub at all, sync and async.
    with Publisher(redis_url, channel_prefix=prefix) as pub:
        assert await asyncio.to_thread(pub.publish_json, "room:7", "p2") == (2, position[1])
    async with AsyncPublisher(redis_url, channel_prefix=prefix) as apub:
        assert await apub.publish_json("room:7", "p3") == (3, position[1])
        hub_a.publish_json("room:7", "hub4")  # a hub's next one follows
        # Back on the other node, from where it was.
        async with melody.connect(url_a) as conn:
            sub = await conn.subscribe("room:7", offset=position[0], epoch=position[1])
            assert sub.recovered is True
            got = [await sub.get(WAIT) for _ in range(3)]
            assert [(p.offset, p.data) for p in got] == [(2, "p2"), (3, "p3"), (4, "hub4")]
            assert await apub.publish_json("room:7", "live") == (5, position[1])
            live = await sub.get(WAIT)
            assert (live.offset, live.data) == (5, "live")
            assert sub.duplicates == 0 and sub.pending() == 0
    page = await hub_b.history("room:7", since=1)
    assert [(p.offset, json.loads(p.data)) for p in page.publications] == [
        (2, "p2"), (3, "p3"), (4, "hub4"), (5, "live")]


async def test_the_publisher_puts_the_hubs_bytes_on_redis(
        nodes: Callable[[], Awaitable[Node]], redis_url: str, prefix: str) -> None:
    hub, backplane, _ = await nodes()
    listener = redis.asyncio.Redis.from_url(redis_url)
    pubsub = listener.pubsub()
    keys = backplane.keys
    await pubsub.subscribe(keys.broadcast, keys.user, keys.topic("news"), keys.topic("room:9"))
    try:
        for _ in range(4):
            assert (await pubsub.get_message(timeout=WAIT))["type"] == "subscribe"

        async def next_data() -> bytes:
            async with asyncio.timeout(WAIT):
                while True:
                    message = await pubsub.get_message(timeout=WAIT)
                    if message is not None and message["type"] == "message":
                        data: bytes = message["data"]
                        return data

        hub.publish_json("room:9", {"x": 1})  # a hub's publication with history
        hub_bytes = await next_data()
        assert hub_bytes == stream_head(backplane.node_id) + b'1:{"x":1}'
        async with AsyncPublisher(redis_url, channel_prefix=prefix) as pub:
            assert await pub.publish_json("room:9", {"x": 1}) == (2, (
                await hub.history("room:9")).position.epoch)
            assert await next_data() == stream_head(pub.node_id) + b'2:{"x":1}'
            await pub.publish("news", "hello")
            assert await next_data() == encode_envelope(pub.node_id, False, b"hello")
            await pub.broadcast_binary(b"\xff")
            assert await next_data() == encode_envelope(pub.node_id, True, b"\xff")
            await pub.send_to_user("ann", "hi")
            assert await next_data() == encode_user_envelope(pub.node_id, "ann", False, b"hi")
            # The same functions a hub's backplane uses: its broadcast has the same shape.
            hub.broadcast("hello")
            assert await next_data() == encode_envelope(backplane.node_id, False, b"hello")
    finally:
        await pubsub.aclose()
        await listener.aclose()


async def test_topic_options_come_from_the_hubs_and_the_last_written_wins(
        nodes: Callable[[], Awaitable[Node]], redis_url: str, prefix: str) -> None:
    hub_a, _, _ = await nodes()
    hub_b, _, _ = await nodes()
    async with AsyncPublisher(redis_url, channel_prefix=prefix, options_refresh=60) as pub:
        assert await pub.refresh_topic_options() == {
            "room:*": melody.TopicOptions(history_size=100)}
        # Configured after the hubs started: written at once, read on demand.
        hub_a.configure_topic("feed:*", history_size=5, history_ttl=30.0)
        await wait_until(lambda: _has(pub, "feed:*"), "feed:* written", every=0.05)
        assert pub.topic_options("feed:1") == melody.TopicOptions(5, 30.0)
        position = await pub.publish("feed:1", "text")
        assert isinstance(position, melody.StreamPosition) and position.offset == 1
        page = await hub_a.history("feed:1")
        assert [json.loads(p.data) for p in page.publications] == ["text"]
        # Another hub disagrees later: the most recent write wins.
        hub_b.configure_topic("feed:*", history_size=0)
        await wait_until(lambda: _has(pub, "feed:*", melody.TopicOptions()), "overwritten",
                         every=0.05)
        assert await pub.publish("feed:1", "plain") == 0  # no node holds feed:1: no offset
        # Within options_refresh the cached table is used: no round trip per publish.
        assert pub.topic_options("room:1") == melody.TopicOptions(history_size=100)


async def test_the_topic_options_are_written_again_when_redis_lost_them(
        redis_url: str, prefix: str) -> None:
    backplane = RedisBackplane(redis_url, channel_prefix=prefix, presence_interval=0.05)
    hub = melody.Melody(backplane=backplane)
    hub.configure_topic("room:*", history_size=10)
    await backplane.start(hub)
    try:
        async with AsyncPublisher(redis_url, channel_prefix=prefix) as pub:
            assert "room:*" in await pub.refresh_topic_options()  # written before start returned
            listener = redis.asyncio.Redis.from_url(redis_url)
            await listener.delete(backplane.keys.topic_options)  # as a flush would
            await listener.aclose()
            await wait_until(lambda: _has(pub, "room:*"), "rewritten by the presence refresh",
                             every=0.05)
    finally:
        await backplane.stop()


async def _has(pub: AsyncPublisher, pattern: str,
               options: melody.TopicOptions | None = None) -> bool:
    table = await pub.refresh_topic_options()
    return pattern in table and (options is None or table[pattern] == options)


async def test_an_unreachable_redis_raises_and_a_closed_publisher_refuses() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with Publisher(url, timeout=1.0) as pub:
        with pytest.raises(BackplaneError, match=r"redis at redis://127\.0\.0\.1"):
            await asyncio.to_thread(pub.broadcast, "x")
        with pytest.raises(BackplaneError):
            await asyncio.to_thread(pub.publish, "t", "x")  # reading the options fails
    with pytest.raises(BackplaneError, match="closed"):
        pub.broadcast("x")
    async with AsyncPublisher(url, timeout=1.0) as apub:
        with pytest.raises(BackplaneError):
            await apub.send_to_user("ann", "x")
        with pytest.raises(BackplaneError):
            await apub.publish_json("t", 1)
        with pytest.raises(ValueError):
            await apub.disconnect_user("ann", 1005)
    with pytest.raises(BackplaneError, match="closed"):
        await apub.broadcast("x")


async def test_a_hub_whose_redis_backplane_never_started_raises_instead_of_dropping(
        redis_url: str, prefix: str) -> None:
    backplane = RedisBackplane(redis_url, channel_prefix=prefix)
    hub = melody.Melody(backplane=backplane)
    hub.configure_topic("room:*", history_size=10)
    calls: list[Callable[[], object]] = [
        lambda: hub.broadcast("x"), lambda: hub.broadcast_json({}),
        lambda: hub.broadcast_binary(b"x"), lambda: hub.publish("news", "x"),
        lambda: hub.publish_json("news", 1), lambda: hub.publish_binary("news", b"x"),
        lambda: hub.publish("room:1", "x"), lambda: hub.publish_json("room:1", 1),
        lambda: hub.send_to_user("ann", "x"), lambda: hub.send_to_user_json("ann", 1),
        lambda: hub.disconnect_user("ann")]
    for call in calls:
        with pytest.raises(BackplaneError, match=r"melody\.Publisher"):
            call()
    assert backplane.stats()["lost_while_down"] == 0
    # Started by hand (no server): it works through Redis, and other nodes get it.
    await backplane.start(hub)
    try:
        listener = redis.asyncio.Redis.from_url(redis_url)
        pubsub = listener.pubsub()
        await pubsub.subscribe(backplane.keys.broadcast)
        assert (await pubsub.get_message(timeout=WAIT))["type"] == "subscribe"
        assert hub.broadcast("now it goes") == 0  # no session here
        async with asyncio.timeout(WAIT):
            message = None
            while message is None:
                message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                   timeout=WAIT)
        assert message["data"] == encode_envelope(backplane.node_id, False, b"now it goes")
        await pubsub.aclose()
        await listener.aclose()
    finally:
        await backplane.stop()


async def test_a_hub_without_backplane_never_served_delivers_to_its_no_sessions() -> None:
    # Documented: nothing to deliver to and nothing lost, so 0 rather than an error (tests
    # and tools drive unserved hubs with sessions of their own making).
    hub = melody.Melody()
    hub.configure_topic("room:*", history_size=10)
    assert hub.broadcast("x") == 0 and hub.publish("news", "x") == 0
    assert hub.publish_json("room:1", 1) == 0
    assert hub.send_to_user("ann", "x") == 0 and hub.disconnect_user("ann") == 0
