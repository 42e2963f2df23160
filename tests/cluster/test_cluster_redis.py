"""Hub processes sharing one real broker through a backplane: Redis (RedisBackplane) and, for
the tests of the contract, NATS too (NatsBackplane: those tests take ``broker`` or
``own_broker`` and run once per engine).

Each hub runs in its own process (``cluster_hub.py``) on its own port; clients are ``websockets``
connections. Counts are exact: a fence (see ``cluster_support.fence``) makes sure every copy of
a message, duplicates included, has arrived before the counts are compared.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from cluster_support import (
    Broker,
    Client,
    HubNode,
    NatsServer,
    RedisServer,
    fence,
    is_nats,
    make_backplane,
    node_stats,
    wait_until,
)

import melody
from melody.redis_backplane import BackplaneError, RedisBackplane

pytestmark = pytest.mark.asyncio

Nodes = Callable[[str, int], list[HubNode]]
Clients = Callable[..., Awaitable[Client]]

ROUNDS = 10


async def _subscribed_everywhere(nodes_clients: list[Client], channels: int) -> None:
    # Redis confirmed the subscriptions of every node: from now on a PUBLISH reaches them all.
    async def confirmed() -> bool:
        for client in nodes_clients:
            stats = await node_stats(client)
            if stats["backplane_channels"] != channels:
                return False
        return True

    await wait_until(confirmed, f"{channels} confirmed channels on every node")


@pytest.mark.parametrize("node_count", [2, 3])
async def test_every_message_arrives_exactly_once_at_every_matching_client(
        broker: str, hub_nodes: Nodes, clients: Clients, node_count: int) -> None:
    nodes = hub_nodes(broker, node_count)
    # Per node: two subscribers of "room" (s1 publishes, s2 uses publish_others) and one
    # client subscribed elsewhere (u: broadcasts, and must get no "room" message).
    s1: list[Client] = []
    s2: list[Client] = []
    u: list[Client] = []
    for node in nodes:
        s1.append(await clients(node.url, f"s1@{node.name}"))
        s2.append(await clients(node.url, f"s2@{node.name}"))
        u.append(await clients(node.url, f"u@{node.name}"))
    for i in range(node_count):
        await s1[i].subscribe("room")
        await s2[i].subscribe("room")
        await u[i].subscribe("other")
    everyone = s1 + s2 + u
    await _subscribed_everywhere(s1, channels=3)  # hub-wide, "room", "other"

    for i in range(node_count):
        for k in range(ROUNDS):
            await s1[i].send(f"pub room m:pub:{i}:{k}")
            await u[i].send(f"bc m:bc:{i}:{k}")
        await s2[i].send(f"pubo room m:po:{i}")
        await u[i].send(f"pubb room m:pb:{i}")
        await u[i].send(f"bco m:bo:{i}")
    await fence(u, everyone)

    for i in range(node_count):
        for who, client in (("s1", s1[i]), ("s2", s2[i]), ("u", u[i])):
            expected: Counter[str | bytes] = Counter()
            for j in range(node_count):
                expected.update(f"m:bc:{j}:{k}" for k in range(ROUNDS))
                if client is not u[j]:
                    expected[f"m:bo:{j}"] = 1
                if who != "u":
                    expected.update(f"m:pub:{j}:{k}" for k in range(ROUNDS))
                    expected[f"m:pb:{j}".encode()] = 1
                    if client is not s2[j]:
                        expected[f"m:po:{j}"] = 1
            assert client.received() == expected, client.name

    # Published once per message (not once per node), and every node ignored its own echoes
    # (NATS sends none: no_echo).
    shared = 2 * ROUNDS + 4  # pub, bc, pubo, pubb, bco and the fence
    echoes = 0 if is_nats(broker) else shared
    for i in range(node_count):
        stats = await node_stats(s1[i])
        assert stats["backplane_published"] == shared

        async def echoes_ignored(client: Client = s1[i]) -> bool:
            return (await node_stats(client))["backplane_ignored_own"] == echoes

        await wait_until(echoes_ignored, f"node {i} ignored its {shared} own messages")
        assert stats["backplane_dropped_outgoing"] == 0
        assert stats["backplane_lost_while_down"] == 0
    assert all(node.alive() for node in nodes)


async def test_topics_route_by_interest(broker: str, hub_nodes: Nodes, clients: Clients,
                                        prefix: str) -> None:
    a, b = hub_nodes(broker, 2)
    alice = await clients(a.url, "alice")
    bob = await clients(b.url, "bob")
    carol = await clients(b.url, "carol")
    r = None if is_nats(broker) else aioredis.from_url(broker)
    channel = f"{prefix}:topic:lonely".encode()

    async def nodes_subscribed() -> int:
        # Redis: its own count of the channel's subscribers. NATS has no client command
        # for that: the topic subscriptions the server acknowledged to each node (its
        # confirmed channels, the hub-wide one left out).
        if r is not None:
            numsub = await r.pubsub_numsub(channel)
            return int(numsub[0][1])
        return sum([(await node_stats(c))["backplane_channels"] - 1 for c in (alice, bob)])

    def nodes_on_channel(count: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await nodes_subscribed() == count
        return check

    try:
        assert await nodes_subscribed() == 0
        await bob.subscribe("lonely")
        await wait_until(nodes_on_channel(1), "node b on the channel")
        await carol.subscribe("lonely")   # a second local subscriber: still one node
        await alice.subscribe("lonely")
        await wait_until(nodes_on_channel(2), "both nodes on it")
        await alice.unsubscribe("lonely")
        await wait_until(nodes_on_channel(1), "node a left")
        await bob.unsubscribe("lonely")
        assert await nodes_subscribed() == 1    # carol is still there
        await carol.close()                      # subscriptions end with the session
        await wait_until(nodes_on_channel(0), "node b left")
        # A publish to a topic nobody subscribes to reaches no node.
        before = (await node_stats(bob))["backplane_received"]
        await alice.send("pub lonely m:nobody")
        await fence([alice], [alice, bob])
        assert (await node_stats(bob))["backplane_received"] == before + 1  # the fence only
        assert bob.received() == Counter() and alice.received() == Counter()
    finally:
        if r is not None:
            await r.aclose()


async def test_cluster_topic_len_sums_over_the_live_nodes(
        broker: str, hub_nodes: Nodes, clients: Clients) -> None:
    nodes = hub_nodes(broker, 3)
    members: list[list[Client]] = []
    for n, node in enumerate(nodes):
        members.append([await clients(node.url, f"{n}.{k}") for k in range(n + 1)])
    for group in members:
        for client in group:
            await client.subscribe("presence")
    probes = [group[0] for group in members]

    def everyone_counts(expected: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return all([await p.cluster_topic_len("presence") == str(expected)
                        for p in probes])
        return check

    await wait_until(everyone_counts(6), "cluster_topic_len 6 on every node")
    assert await probes[0].cluster_topic_len("nothing") == "0"
    await members[2][1].unsubscribe("presence")
    await wait_until(everyone_counts(5), "5 after an unsubscribe")
    await members[1][0].close()  # a closed session leaves its topics
    probes[1] = members[1][1]
    await wait_until(everyone_counts(4), "4 after a disconnect")
    # A stopped node's counts go at once (it deletes its presence keys on stop).
    assert await asyncio.to_thread(nodes[2].stop) == 0  # the loop must answer close frames
    probes.pop()
    await wait_until(everyone_counts(2), "2 after node 2 stopped")


async def test_a_broker_restart_keeps_hubs_alive_and_delivery_resumes(
        own_broker: Broker, hub_nodes: Nodes, clients: Clients) -> None:
    a, b = hub_nodes(own_broker.url, 2)
    a1, a2 = await clients(a.url, "a1"), await clients(a.url, "a2")
    b1, b2 = await clients(b.url, "b1"), await clients(b.url, "b2")
    everyone = [a1, a2, b1, b2]
    for client in everyone:
        await client.subscribe("room")
    await _subscribed_everywhere([a1, b1], channels=2)
    await a1.send("pub room m:before")
    await fence([a1, b1], everyone)
    assert all(c.received() == Counter({"m:before": 1}) for c in everyone)

    own_broker.kill()

    def disconnected(client: Client) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return (await node_stats(client))["backplane_connected"] == 0
        return check

    await wait_until(disconnected(a1), "node a sees the outage")
    await wait_until(disconnected(b1), "node b sees the outage")
    # Local traffic keeps working while the broker is away.
    for k in range(5):
        await a1.send(f"pub room m:down:a:{k}")
        await b1.send(f"bc m:down:b:{k}")
    await wait_until(lambda: all(a2.counts[f"m:down:a:{k}"] == 1 for k in range(5)),
                     "local publishes on node a")
    await wait_until(lambda: all(b2.counts[f"m:down:b:{k}"] == 1 for k in range(5)),
                     "local broadcasts on node b")
    assert a.alive() and b.alive()
    assert await a1.cluster_topic_len("room") == "error"  # no cluster count without a broker

    own_broker.start()

    def back(client: Client) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            stats = await node_stats(client)
            return (stats["backplane_connected"] == 1 and stats["backplane_reconnects"] >= 1
                    and stats["backplane_channels"] == 2)
        return check

    await wait_until(back(a1), "node a reconnected and resubscribed")
    await wait_until(back(b1), "node b reconnected and resubscribed")
    await a1.send("pub room m:after:a")
    await b2.send("pub room m:after:b")
    await fence([a1, b1], everyone)

    local_a = {f"m:down:a:{k}": 1 for k in range(5)}
    local_b = {f"m:down:b:{k}": 1 for k in range(5)}
    after = {"m:before": 1, "m:after:a": 1, "m:after:b": 1}
    for client in (a1, a2):
        assert client.received() == Counter({**after, **local_a}), client.name
    for client in (b1, b2):
        assert client.received() == Counter({**after, **local_b}), client.name
    for client in (a1, b1):
        stats = await node_stats(client)
        assert stats["backplane_lost_while_down"] == 5
        assert stats["backplane_outages"] >= 1
        assert stats["backplane_reconnects"] >= 1
        info = await client.info()
        assert any("BackplaneError" in e for e in info["errors"]), info["errors"]
    # Presence is rewritten after the restart (the new broker started empty).

    async def presence_back() -> bool:
        return await a1.cluster_topic_len("room") == "4"

    await wait_until(presence_back, "presence rewritten in the new Redis")
    assert a.alive() and b.alive()


@pytest.mark.parametrize("engine", [RedisServer,
                                    pytest.param(NatsServer, marks=pytest.mark.nats)])
async def test_a_hub_started_while_the_broker_is_down_reports_it_then_connects(
        tmp_path: Path, engine: type[RedisServer | NatsServer]) -> None:
    server = engine(tmp_path)  # not started yet
    backplane = make_backplane(server.url, f"late-{server.port}", timeout=1.0,
                               reconnect_min=0.05, reconnect_max=0.2)
    hub = melody.Melody(backplane=backplane)
    reported: list[BaseException] = []
    hub.handle_error(lambda session, error: reported.append(error))
    await hub.serve("127.0.0.1", 0)
    try:
        await wait_until(lambda: any(isinstance(e, BackplaneError) for e in reported),
                         "the failed start reported to handle_error")
        assert backplane.stats()["connect_failures"] >= 1 and not backplane.connected
        with pytest.raises(BackplaneError):
            await hub.cluster_topic_len("t")
        hub.broadcast("nobody else hears this")
        assert backplane.stats()["lost_while_down"] == 1
        server.start()
        await wait_until(lambda: backplane.connected, "connected once the broker is up")
        assert backplane.stats()["channels"] == 1
        assert backplane.stats()["reconnects"] == 1
        assert await hub.cluster_topic_len("t") == 0
    finally:
        hub.close()
        await hub.wait_closed(timeout=2)
        await wait_until(lambda: not backplane.connected, "the backplane stopped")
        server.stop()


async def test_a_full_queue_drops_and_counts(broker: str, prefix: str) -> None:
    backplane = make_backplane(broker, prefix, max_queue=3)
    hub = melody.Melody(backplane=backplane)
    await backplane.start(hub)
    try:
        for k in range(10):  # no await in between: the writer task cannot run
            backplane.publish(None, False, b"x%d" % k)
        stats = backplane.stats()
        assert stats["queued"] == 3 and stats["dropped_outgoing"] == 7
        await wait_until(lambda: backplane.stats()["published"] == 3, "the queue drained")
        assert backplane.stats()["publish_batches"] == 1  # three publishes, one round trip
    finally:
        await backplane.stop()


async def test_malformed_messages_are_counted_and_ignored(broker: str, prefix: str) -> None:
    backplane = make_backplane(broker, prefix)
    hub = melody.Melody(backplane=backplane)
    reported: list[BaseException] = []
    hub.handle_error(lambda session, error: reported.append(error))
    await backplane.start(hub)
    messages = [b"short", b"n" * 16 + b"\x80" + b"bad flags", b"n" * 16 + b"\x00" + b"fine"]
    if is_nats(broker):
        import nats

        nc = await nats.connect(broker)
        for message in messages:
            await nc.publish(f"{prefix}.all", message)
        close: Any = nc.close
    else:
        r = aioredis.from_url(broker)
        for message in messages:
            await r.publish(f"{prefix}:all", message)
        close = r.aclose
    try:
        await wait_until(lambda: backplane.stats()["received"] == 1, "the good message")
        assert backplane.stats()["malformed"] == 2
        assert any(isinstance(e, BackplaneError) for e in reported)
    finally:
        await close()
        await backplane.stop()


async def test_bad_settings_fail_at_construction() -> None:
    with pytest.raises(ValueError):
        RedisBackplane("http://127.0.0.1:1")
    with pytest.raises(ValueError):
        RedisBackplane(channel_prefix="")
    with pytest.raises(ValueError):
        RedisBackplane(max_queue=0)
    with pytest.raises(ValueError):
        RedisBackplane(presence_interval=5, presence_ttl=5)
    assert melody.RedisBackplane is RedisBackplane


async def test_bad_nats_settings_fail_at_construction() -> None:
    from melody.backplane.nats import NatsBackplane

    for bad in ({"url": "127.0.0.1:4222"}, {"channel_prefix": ""},
                {"channel_prefix": "has.dot"}, {"channel_prefix": "has space"},
                {"max_queue": 0}, {"presence_interval": 5, "presence_ttl": 5},
                {"history_storage": "disk"}):
        with pytest.raises(ValueError):
            NatsBackplane(**bad)
    assert melody.NatsBackplane is NatsBackplane


async def test_a_cancelled_presence_query_leaves_the_connection_usable(
        broker: str, prefix: str) -> None:
    from melody._core.constants import STATE_OPEN
    from melody._core.protocol import WebSocketProtocol
    from melody._hubstate import state_of
    from melody.handshake import parse_request

    nodes = [melody.Melody(backplane=make_backplane(broker, prefix, presence_interval=0.05))
             for _ in range(2)]
    request = parse_request(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    for _ in range(3):  # three subscribers on the second node, no sockets needed
        proto = WebSocketProtocol(state_of(nodes[1]).dispatch)
        proto.state = STATE_OPEN
        proto.session = melody.Session(nodes[1], proto, request)
        state_of(nodes[1]).connections.add(proto)
        nodes[1].subscribe(proto.session, "x")
    backplanes = [node.backplane for node in nodes if node.backplane is not None]
    for node, backplane in zip(nodes, backplanes, strict=True):
        await backplane.start(node)
    first = nodes[0]
    try:
        async def three() -> bool:
            return await first.cluster_topic_len("x") == 3

        await wait_until(three, "the second node's count")
        for steps in range(12):  # cancel the query at every point of its two round trips
            task = asyncio.ensure_future(first.cluster_topic_len("x"))
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            assert await first.cluster_topic_len("x") == 3
            assert await first.cluster_topic_len("y") == 0
        assert all(backplane.connected for backplane in backplanes)
    finally:
        for backplane in backplanes:
            await backplane.stop()
