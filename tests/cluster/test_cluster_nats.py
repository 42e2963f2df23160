"""What only NatsBackplane has to get right: topic names NATS subjects cannot hold, JetStream
streams lost or kept across restarts; and melody.NatsPublisher. A real nats-server with
JetStream (the session's, or one of the test's own), two hubs in this process, melody's
client. (The contract tests, shared with RedisBackplane, run on NATS through the ``broker``
fixture.)"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from cluster_support import NatsServer, free_port, wait_until

import melody
from melody import Melody
from melody.backplane.nats import NatsBackplane
from melody.backplane.nats_subjects import NatsNames, topic_token
from melody.errors import BackplaneError
from melody.middleware import CallNext, Handshake
from melody.nats_publisher import AsyncNatsPublisher

pytestmark = pytest.mark.nats

WAIT = 10.0
ROOT = Path(__file__).resolve().parents[2]
Nodes = Callable[..., Awaitable[list[tuple[Melody, str]]]]

#: Topics with what NATS subjects forbid or give a meaning to: dots (token separators),
#: wildcards, spaces, non-ASCII, one of the longest a hub takes by default (256 bytes: 512 hex
#: digits), and a topic that is another's first token.
ODD_TOPICS = ["a.b", "a.*", ">", "chat room", "å:ü", "x" * 256, "a"]


async def name_user(handshake: Handshake, call_next: CallNext) -> None:
    values = handshake.request.query_params.get("user")
    if values:
        handshake.user = values[0]
    await call_next(handshake)


@pytest_asyncio.fixture
async def nodes(prefix: str) -> AsyncIterator[Nodes]:
    """A factory: ``[(hub, url), ...] = await nodes(nats_url, count)``; closed at teardown."""
    started: list[Melody] = []

    async def start(url: str, count: int = 2) -> list[tuple[Melody, str]]:
        out = []
        for _ in range(count):
            hub = Melody(codec=melody.codecs.JSON, backplane=NatsBackplane(
                url, channel_prefix=prefix, reconnect_min=0.05, reconnect_max=0.2,
                timeout=2.0, health_check_interval=0.2, presence_interval=0.1))
            hub.authorize(lambda session, action, topic: True)
            hub.use(name_user)
            hub.configure_topic("room*", history_size=100)
            server = await hub.serve("127.0.0.1", 0)
            started.append(hub)
            out.append((hub, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"))
        await wait_until(lambda: all(h.backplane is not None and h.backplane.connected
                                     for h, _ in out), "backplanes connected")
        return out

    yield start
    for hub in started:
        if not hub.is_closed():
            await hub.shutdown(timeout=2.0)


def test_topic_tokens_are_subject_safe_and_distinct() -> None:
    tokens = [topic_token(t) for t in [*ODD_TOPICS, "x" * 300]]
    assert len(set(tokens)) == len(tokens)
    for token in tokens:
        assert token.isalnum() and token.isascii(), token
    assert topic_token("x" * 300).startswith("s") and len(topic_token("x" * 300)) == 65
    names = NatsNames("p")
    assert names.topic("a.b") == "p.t.x612e62"
    with pytest.raises(ValueError):
        NatsNames("p.q")


@pytest.mark.asyncio
async def test_topics_nats_subjects_cannot_hold_reach_exactly_their_subscribers(
        nats_url: str, nodes: Nodes) -> None:
    (a, _), (b, url_b) = await nodes(nats_url)
    async with melody.connect(url_b) as every, melody.connect(url_b) as only_a:
        for topic in ODD_TOPICS:
            await every.subscribe(topic)
        await only_a.subscribe("a")
        backplane = a.backplane
        assert backplane is not None

        async def b_has_them_all() -> bool:
            stats = b.backplane.stats() if b.backplane is not None else {}
            return stats.get("channels") == 1 + len(ODD_TOPICS)

        await wait_until(b_has_them_all, "node b subscribed every topic")
        for i, topic in enumerate(ODD_TOPICS):
            a.publish(topic, f"m:{i}")
        async with asyncio.timeout(WAIT):
            got = sorted([await every.recv() for _ in ODD_TOPICS])
        assert got == sorted(f"m:{i}" for i in range(len(ODD_TOPICS)))
        async with asyncio.timeout(WAIT):
            assert await only_a.recv() == f"m:{ODD_TOPICS.index('a')}"
        a.publish("a", "m:end")
        async with asyncio.timeout(WAIT):
            assert await only_a.recv() == "m:end"  # and nothing of the others before it
    assert b.backplane is not None and b.backplane.stats()["malformed"] == 0


@pytest.mark.asyncio
async def test_a_topic_configured_with_history_after_it_was_subscribed_is_followed(
        nats_url: str, nodes: Nodes) -> None:
    (a, _), (b, url_b) = await nodes(nats_url)
    async with melody.connect(url_b) as conn:
        sub = await conn.subscribe("late:1")  # no history yet: a plain subscription on b
        backplane = b.backplane
        assert isinstance(backplane, NatsBackplane)
        await wait_until(lambda: backplane.stats()["channels"] == 2, "node b subscribed")
        for hub in (a, b):
            hub.configure_topic("late:*", history_size=10)
        # Its consumer made: from then on every publication of the stream reaches node b.
        await wait_until(lambda: backplane.stats()["stream_followers_made"] == 1,
                         "node b follows the topic's new stream")
        a.publish_json("late:1", {"n": 1})
        got = await sub.get(WAIT)
        assert (got.offset, got.data) == (1, {"n": 1})


@pytest.mark.asyncio
async def test_a_stream_deleted_under_its_followers_gets_a_new_epoch_and_flows_again(
        nats_url: str, nodes: Nodes, prefix: str) -> None:
    (a, _), (b, url_b) = await nodes(nats_url)
    topic = "room x.y"  # history, and a name with a space and a dot
    async with melody.connect(url_b) as conn:
        sub = await conn.subscribe(topic)
        a.publish_json(topic, "one")
        first = await sub.get(WAIT)
        assert (first.offset, first.data) == (1, "one")
        old_epoch = sub.epoch
    backplane = b.backplane
    assert isinstance(backplane, NatsBackplane)
    async with melody.connect(url_b) as conn:
        await conn.subscribe(topic)  # node b follows the stream while it is deleted
        made = backplane.stats()["stream_followers_made"]
        nc = await nats.connect(nats_url)
        try:
            await nc.jetstream().delete_stream(NatsNames(prefix).history(topic)[0])
        finally:
            await nc.close()
        # The follower's heartbeats stop; it is made again on the new stream.
        before = backplane.stats()["received"]
        a.publish_json(topic, "two")  # makes the stream again: another epoch, offset 1
        await wait_until(lambda: backplane.stats()["stream_followers_made"] > made,
                         "node b followed the new stream")
        await wait_until(lambda: backplane.stats()["received"] == before + 1,
                         "node b delivered the new epoch's first publication")
    page = await b.history(topic, since=0)
    assert page.position.epoch != old_epoch
    assert [(p.offset, p.data) for p in page.publications] == [(1, '"two"')]
    async with melody.connect(url_b) as conn:
        sub = await conn.subscribe(topic, offset=1, epoch=old_epoch)
        assert sub.recovered is False and sub.epoch == page.position.epoch


@pytest.mark.asyncio
async def test_a_restart_that_keeps_the_store_keeps_the_epoch_and_the_offsets(
        own_nats: NatsServer, nodes: Nodes) -> None:
    (a, _), (b, url_b) = await nodes(own_nats.url)
    async with melody.connect(url_b) as conn:
        sub = await conn.subscribe("room:1")
        for i in range(3):
            a.publish_json("room:1", i)
        got = [await sub.get(WAIT) for _ in range(3)]
        assert [p.offset for p in got] == [1, 2, 3]
        position = (sub.offset, sub.epoch)
        b_backplane = b.backplane
        assert isinstance(b_backplane, NatsBackplane)
        made = b_backplane.stats()["stream_followers_made"]
        own_nats.kill()
        own_nats.start(keep_store=True)  # file storage: JetStream kept the stream
        for hub in (a, b):
            backplane = hub.backplane
            assert isinstance(backplane, NatsBackplane)
            await wait_until(lambda bp=backplane: bp.connected and bp.stats()["reconnects"] >= 1,
                             "reconnected")
        await wait_until(lambda: b_backplane.stats()["stream_followers_made"] > made,
                         "node b follows the stream again")
        a.publish_json("room:1", "live after the restart")
        live = await sub.get(WAIT)
        assert (live.offset, live.data) == (4, "live after the restart")
    a.publish_json("room:1", "while away")
    await wait_until(lambda: a.backplane is not None
                     and a.backplane.stats()["stream_published"] == 5, "stored")
    async with melody.connect(url_b) as conn:
        sub = await conn.subscribe("room:1", offset=position[0], epoch=position[1])
        assert sub.recovered is True and sub.epoch == position[1]
        got = [await sub.get(WAIT) for _ in range(2)]
        assert [(p.offset, p.data) for p in got] == [(4, "live after the restart"),
                                                    (5, "while away")]


PUBLISHER = textwrap.dedent("""
    import json, sys
    import melody
    with melody.NatsPublisher(sys.argv[1], channel_prefix=sys.argv[2]) as pub:
        position = pub.publish_json("room:p", {"from": "publisher"})
        plain = pub.publish("news", "hello")
        pub.broadcast("to all")
        pub.send_to_user("ada", "mail")
        print(json.dumps({"offset": position.offset, "epoch": position.epoch,
                          "plain": plain}))
""")


@pytest.mark.asyncio
async def test_a_nats_publisher_in_another_process_reaches_both_nodes(
        nats_url: str, nodes: Nodes, prefix: str) -> None:
    (a, url_a), (b, url_b) = await nodes(nats_url)
    async with melody.connect(url_a + "?user=ada") as on_a, \
            melody.connect(url_b + "?user=bob") as on_b:
        subs = [await conn.subscribe("room:p") for conn in (on_a, on_b)]
        for conn in (on_a, on_b):
            await conn.subscribe("news")
        a.publish_json("room:p", "from a hub")
        for sub in subs:
            assert (await sub.get(WAIT)).offset == 1
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(ROOT), os.environ.get("PYTHONPATH", "")]))
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", PUBLISHER, nats_url, prefix],
            capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        # The hubs' configuration said room:* keeps history: the next offset, same epoch.
        assert (result["offset"], result["epoch"]) == (2, subs[0].epoch)
        assert result["plain"] is None  # NATS does not count a message's receivers
        for sub in subs:
            got = await sub.get(WAIT)
            assert (got.offset, got.data) == (2, {"from": "publisher"})
        async with asyncio.timeout(WAIT):
            assert sorted([await on_a.recv() for _ in range(3)]) == ["hello", "mail", "to all"]
            assert sorted([await on_b.recv() for _ in range(2)]) == ["hello", "to all"]
    page = await b.history("room:p", since=0)
    assert [p.offset for p in page.publications] == [1, 2]


def test_the_redis_publisher_points_a_nats_url_to_the_nats_publisher() -> None:
    for cls in (melody.Publisher, melody.AsyncPublisher):
        with pytest.raises(ValueError, match="NatsPublisher"):
            cls("nats://127.0.0.1:4222")


@pytest.mark.asyncio
async def test_an_async_nats_publisher_raises_when_nats_is_unreachable_or_closed(
        nats_url: str, nodes: Nodes, prefix: str) -> None:
    await nodes(nats_url, 1)  # a hub: it writes the topic options
    async with AsyncNatsPublisher(nats_url, channel_prefix=prefix) as pub:
        assert "room*" in await pub.refresh_topic_options()
        position = await pub.publish_json("room:q", [1])
        assert position is not None and position.offset == 1
        with pytest.raises(TypeError):
            await pub.publish_binary("room:q", b"history is JSON")
    with pytest.raises(BackplaneError):
        await pub.broadcast("closed")
    nowhere = AsyncNatsPublisher(f"nats://127.0.0.1:{free_port()}", timeout=1.0)
    with pytest.raises(BackplaneError):
        await nowhere.broadcast("nobody")
    await nowhere.aclose()
