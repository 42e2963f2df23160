"""Topics in one process: the compiled Group's structure at scale, the hub's bookkeeping and its
calls into a backplane, and publish over real sockets.

The structure tests use ``WebSocketProtocol`` objects with no transport, opened by hand
(``state = STATE_OPEN``): what is tested is membership, not writing.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import pytest
from cluster_support import Client, server_port, wait_until

import melody
from melody._core.constants import STATE_CLOSED, STATE_OPEN
from melody._core.fanout import Group
from melody._core.protocol import WebSocketProtocol
from melody._hubstate import state_of
from melody.backplane import Backplane
from melody.errors import SessionClosed
from melody.handshake import parse_request

BIG_TOPIC = 100_000
MANY_TOPICS = 2_000


def _protocols(hub: melody.Melody, count: int) -> list[WebSocketProtocol]:
    protocols = []
    for _ in range(count):
        proto = WebSocketProtocol(state_of(hub).dispatch)
        proto.state = STATE_OPEN
        protocols.append(proto)
    return protocols


def _sessions(hub: melody.Melody, count: int) -> list[melody.Session]:
    request = parse_request(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    sessions = []
    for proto in _protocols(hub, count):
        session = melody.Session(hub, proto, request)
        proto.session = session
        state_of(hub).connections.add(proto)
        sessions.append(session)
    return sessions


class RecordingBackplane(Backplane):
    """Records what the hub asks of its backplane."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, object]] = []

    async def start(self, hub: melody.Melody) -> None:
        self.calls.append(("start", None))

    async def stop(self) -> None:
        self.calls.append(("stop", None))

    def publish(self, topic: str | None, binary: bool, payload: bytes) -> None:
        self.calls.append(("publish", (topic, binary, payload)))

    def subscribe(self, topic: str) -> None:
        self.calls.append(("subscribe", topic))

    def unsubscribe(self, topic: str) -> None:
        self.calls.append(("unsubscribe", topic))

    async def cluster_topic_len(self, topic: str) -> int:
        return 42

    def of(self, kind: str) -> list[object]:
        return [arg for name, arg in self.calls if name == kind]


def test_a_group_of_100k_members_adds_and_discards_exactly() -> None:
    hub = melody.Melody()
    protocols = _protocols(hub, BIG_TOPIC)
    group = Group()
    assert all(group.add(p) for p in protocols)
    assert not group.add(protocols[0])
    assert len(group) == BIG_TOPIC
    rng = random.Random(4)
    leaving = rng.sample(protocols, BIG_TOPIC // 2)
    for proto in leaving:
        assert group.discard(proto)
    assert not group.discard(leaving[0])
    gone = set(leaving)
    staying = [p for p in protocols if p not in gone]
    assert len(group) == len(staying)
    assert set(group.members()) == set(staying)
    assert all(p in group for p in staying) and not any(p in group for p in leaving[:1000])
    for proto in staying:
        group.discard(proto)
    assert len(group) == 0 and group.members() == []


def test_a_topic_with_100k_subscribers() -> None:
    backplane = RecordingBackplane()
    hub = melody.Melody(backplane=backplane)
    sessions = _sessions(hub, BIG_TOPIC)
    for session in sessions:
        assert hub.subscribe(session, "big")
    assert hub.topic_len("big") == BIG_TOPIC
    assert hub.topics() == ["big"]
    assert backplane.of("subscribe") == ["big"]  # the first subscriber only
    for session in sessions[: BIG_TOPIC - 1]:
        assert hub.unsubscribe(session, "big")
    assert hub.topic_len("big") == 1 and backplane.of("unsubscribe") == []
    assert hub.unsubscribe(sessions[-1], "big")
    assert hub.topic_len("big") == 0 and hub.topics() == []
    assert backplane.of("unsubscribe") == ["big"]  # the last one left


def test_a_session_in_2000_topics_leaves_them_all_when_it_ends() -> None:
    backplane = RecordingBackplane()
    # More topics than the default max_topics_per_session (1,000), which a server may raise.
    hub = melody.Melody(melody.Config(max_topics_per_session=MANY_TOPICS), backplane=backplane)
    alone, other = _sessions(hub, 2)
    topics = [f"topic-{i}" for i in range(MANY_TOPICS)]
    for topic in topics:
        assert hub.subscribe(alone, topic)
        assert not hub.subscribe(alone, topic)  # subscribing twice is a no-op
    hub.subscribe(other, topics[0])
    assert alone.topics == frozenset(topics)
    assert len(hub.topics()) == MANY_TOPICS
    assert all(hub.topic_len(t) == 1 for t in topics[1:]) and hub.topic_len(topics[0]) == 2
    assert len(backplane.of("subscribe")) == MANY_TOPICS
    for topic in topics[1000:1500]:
        assert hub.unsubscribe(alone, topic)
        assert not hub.unsubscribe(alone, topic)
    assert len(alone.topics) == MANY_TOPICS - 500
    # The connection ends: every subscription goes with it (as on a real disconnect).
    state_of(hub).disconnected(alone.link.proto)
    assert alone.topics == frozenset()
    assert hub.topics() == [topics[0]] and hub.topic_len(topics[0]) == 1
    assert sorted(map(str, backplane.of("unsubscribe"))) == sorted(topics[1:])
    alone.link.proto.state = STATE_CLOSED
    with pytest.raises(SessionClosed):
        hub.subscribe(alone, "late")
    assert not hub.unsubscribe(alone, topics[0])


def test_publish_shares_with_the_backplane_once_and_only_topics_with_subscribers_deliver() -> None:
    backplane = RecordingBackplane()
    hub = melody.Melody(backplane=backplane)
    (session,) = _sessions(hub, 1)
    hub.subscribe(session, "room")
    hub.publish("room", "text")
    hub.publish_binary("empty", b"\x00bin")
    hub.publish_others("room", "others", session)
    hub.broadcast("all")
    assert backplane.of("publish") == [
        ("room", False, b"text"), ("empty", True, b"\x00bin"), ("room", False, b"others"),
        (None, False, b"all")]


@pytest.mark.asyncio
async def test_cluster_topic_len_asks_the_backplane_and_falls_back_to_local() -> None:
    hub = melody.Melody()
    (session,) = _sessions(hub, 1)
    hub.subscribe(session, "t")
    assert await hub.cluster_topic_len("t") == 1
    assert await melody.Melody(backplane=RecordingBackplane()).cluster_topic_len("t") == 42


@pytest.mark.asyncio
async def test_publish_over_sockets_reaches_exactly_the_subscribers(
        clients: Callable[..., Awaitable[Client]]) -> None:
    hub = melody.Melody()

    @hub.handle_message
    def on_message(session: melody.Session, text: str) -> None:
        command, _, rest = text.partition(" ")
        if command == "sub":
            session.write(f"sub {rest} {hub.subscribe(session, rest)}")
        elif command == "unsub":
            session.write(f"unsub {rest} {hub.unsubscribe(session, rest)}")
        elif command == "pub":
            topic, _, msg = rest.partition(" ")
            session.write(f"pub {hub.publish(topic, msg)}")
        elif command == "pubo":
            topic, _, msg = rest.partition(" ")
            session.write(f"pubo {hub.publish_others(topic, msg, session)}")
        elif command == "pubb":
            topic, _, msg = rest.partition(" ")
            session.write(f"pubb {hub.publish_binary(topic, msg.encode())}")

    url = f"ws://127.0.0.1:{server_port(await hub.serve('127.0.0.1', 0))}/"
    try:
        a, b, c = [await clients(url, name) for name in "abc"]
        await a.subscribe("room")
        await b.subscribe("room")
        await c.subscribe("elsewhere")
        assert await c.command("pub room m:1") == "pub 2"
        assert await a.command("pubo room m:2") == "pubo 1"
        assert await c.command("pubb room m:3") == "pubb 2"
        assert await c.command("pub nobody m:4") == "pub 0"
        await b.unsubscribe("room")
        assert await c.command("pub room m:5") == "pub 1"
        await a.command("pub elsewhere m:6")
        await wait_until(lambda: a.counts["m:5"] == 1 and c.counts["m:6"] == 1, "the last")
        assert a.received() == {"m:1": 1, b"m:3": 1, "m:5": 1}
        assert b.received() == {"m:1": 1, "m:2": 1, b"m:3": 1}
        assert c.received() == {"m:6": 1}
        assert hub.topic_len("room") == 1
        await a.close()  # subscriptions end with the session
        await wait_until(lambda: hub.topic_len("room") == 0, "a's subscription ended")
        assert hub.topics() == ["elsewhere"]
    finally:
        hub.close()
        await hub.wait_closed(timeout=2)
