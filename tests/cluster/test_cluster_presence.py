"""Presence and join/leave across nodes: a real broker (redis-server, and nats-server with
JetStream: the test runs on both), hub processes, real sockets.

A hub process (``cluster_hub.py``: presence_interval 0.1 s, presence_ttl 3 s) holds the
sessions; a node in this process reads presence and receives join/leave. Killing the hub
process with SIGKILL (no goodbye to the broker) must make its sessions leave presence within
``presence_ttl`` of its last refresh.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from cluster_support import Client, HubNode, make_backplane, wait_until
from websockets.asyncio.client import connect

import melody
from melody import Melody

pytestmark = pytest.mark.asyncio

PRESENCE_TTL = 3.0  # cluster_hub.py's
Clients = Callable[..., Awaitable[Client]]


@pytest_asyncio.fixture
async def reader(broker: str, prefix: str) -> AsyncIterator[Melody]:
    """A node in this process on the same broker and prefix, serving nothing but reads."""
    hub = Melody(codec=melody.codecs.JSON, backplane=make_backplane(
        broker, prefix, presence_interval=0.1, presence_ttl=PRESENCE_TTL))
    hub.authorize(lambda session, action, topic: True)
    hub.configure_topic("pres:*", presence=True, join_leave=True)
    server = await hub.serve("127.0.0.1", 0)
    hub.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"  # type: ignore[attr-defined]
    await wait_until(lambda: hub.backplane is not None and hub.backplane.connected,
                     "the reader's backplane connected")
    yield hub
    await hub.shutdown(timeout=2.0)


async def test_presence_is_cluster_wide_and_a_killed_node_drops_out_within_the_ttl(
        broker: str, prefix: str, tmp_path: Path, clients: Clients,
        reader: Melody) -> None:
    # Not the hub_nodes fixture: that one wants its nodes to exit cleanly, this one is killed.
    node = HubNode(broker, prefix, tmp_path, "doomed")
    try:
        node.wait_ready()
        await _presence_across_a_killed_node(node, clients, reader)
    finally:
        if node.alive():
            node.process.kill()
        node.stop()


async def _presence_across_a_killed_node(node: HubNode, clients: Clients,
                                         reader: Melody) -> None:
    first = await clients(node.url, "first")
    second = await clients(node.url, "second")
    for client in (first, second):
        await client.subscribe("pres:room")
    async with connect(reader.url) as local:  # type: ignore[attr-defined]
        await local.send(json.dumps({"type": "subscribe", "id": 1, "data": "pres:room"}))
        async def count() -> bool:
            return len(await reader.presence("pres:room")) == 3
        await wait_until(count, "three sessions in presence, two of them on the other node")
        entries = await reader.presence("pres:room")
        nodes = {entry["node"] for entry in entries.values()}
        assert len(nodes) == 2 and reader.backplane.node_id.hex() in nodes
        assert await reader.presence_stats("pres:room") == {"sessions": 3, "users": 0}
        # A session leaving on the other node reaches this one as a leave message. (The
        # process's clients get join/leave messages too: skip them to find the reply.)
        await first.send("unsub pres:room")
        async with asyncio.timeout(5.0):
            while (reply := await first.replies.get()) != "unsub pres:room True":
                assert json.loads(reply)["type"] in ("join", "leave"), reply
        async with asyncio.timeout(5.0):
            while True:
                message = json.loads(await local.recv())
                if message.get("type") == "leave":
                    break

        async def two() -> bool:
            return len(await reader.presence("pres:room")) == 2
        await wait_until(two, "the unsubscribed session gone")
        # The doomed node's last write of its entry is made to happen now: `second` leaves and
        # joins again (the join is a write). The entry cannot expire before PRESENCE_TTL after
        # the join was asked for, however late a loaded machine lets the node refresh it (a
        # starved node's periodic refresh may be seconds old at the kill, so the kill's own
        # time bounds nothing).
        for command in ("unsub pres:room", "sub pres:room"):
            rejoined = time.monotonic()
            await second.send(command)
            async with asyncio.timeout(5.0):
                while (reply := await second.replies.get()) != f"{command} True":
                    assert json.loads(reply)["type"] in ("join", "leave"), reply
        await wait_until(two, "the session that joined again back in presence")
        node.process.kill()  # SIGKILL: the node says nothing to the broker

        async def alone() -> bool:
            return len(await reader.presence("pres:room")) == 1
        await wait_until(alone, "the killed node's session gone", timeout=PRESENCE_TTL + 3.0)
        # Never before its entry could have expired: nothing but the broker's expiry (NATS) or
        # the readers' ttl window (Redis) may drop the entry of a node that said nothing.
        assert time.monotonic() - rejoined > PRESENCE_TTL - 0.5
