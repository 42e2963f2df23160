"""What only NatsBackplane has to get right: topic names NATS subjects cannot hold, JetStream
streams lost or kept across restarts. A real nats-server with JetStream (the session's, or one
of the test's own), two hubs in this process, melody's client. (The contract tests, shared with
RedisBackplane, run on NATS through the ``broker`` fixture.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import pytest
import pytest_asyncio
from cluster_support import NatsServer, wait_until

import melody
from melody import Melody
from melody.backplane.nats import NatsBackplane
from melody.backplane.nats_subjects import NatsNames, topic_token

WAIT = 10.0
Nodes = Callable[..., Awaitable[list[tuple[Melody, str]]]]

#: Topics with what NATS subjects forbid or give a meaning to: dots (token separators),
#: wildcards, spaces, non-ASCII, one of the longest a hub takes by default (256 bytes: 512 hex
#: digits), and a topic that is another's first token.
ODD_TOPICS = ["a.b", "a.*", ">", "chat room", "å:ü", "x" * 256, "a"]


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
        own_nats.kill()
        own_nats.start(keep_store=True)  # file storage: JetStream kept the stream
        for hub in (a, b):
            backplane = hub.backplane
            assert isinstance(backplane, NatsBackplane)
            await wait_until(lambda bp=backplane: bp.connected and bp.stats()["reconnects"] >= 1,
                             "reconnected")
        await wait_until(lambda: a.backplane is not None and b.backplane is not None
                         and b.backplane.stats()["stream_followers"] == 1,
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
