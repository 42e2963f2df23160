"""``melody serve cluster_hub:hub --workers N`` without Redis: the workers form one hub over the
machine-local bus (``melody.backplane.local.WorkerBus``).

Real processes: the supervisor runs as the real command; clients land on workers as the kernel
spreads them (SO_REUSEPORT) and ask their worker who it is. Every message carries a sequence
number and is counted per client, so a loss or a duplicate fails the test; fences (one more
broadcast per sending worker, after the messages under test on the same link) say when
everything has arrived.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cluster_support import (
    WAIT,
    Client,
    Supervisor,
    clients_on,
    fence,
    node_stats,
    pid_of,
    wait_until,
)

from melody.backplane.local import WorkerBus

pytestmark = pytest.mark.asyncio

Clients = Callable[..., Awaitable[Client]]
BUS_DIR = re.compile(r"worker bus: slot \d+ listening on (\S+)/\d+\.sock")


def _linked(client: Client, peers: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await node_stats(client)).get("backplane_peers") == peers
    return check


async def _presence(client: Client, topic: str) -> dict[str, Any]:
    reply = await client.command(f"pres {topic}")
    prefix = f"pres {topic} "
    assert reply.startswith(prefix), reply
    entries: dict[str, Any] = json.loads(reply[len(prefix):])
    return entries


async def _count(client: Client, topic: str) -> int:
    return int(await client.cluster_topic_len(topic))


async def test_three_workers_share_broadcasts_topics_presence_and_users(
        tmp_path: Path, prefix: str, clients: Clients, supervisors: list[Supervisor]) -> None:
    supervisor = Supervisor(tmp_path, None, prefix, workers=3)
    supervisors.append(supervisor)
    pids = set((await supervisor.started()).values())
    assert len(pids) == 3
    on = await clients_on(supervisor.url, clients, pids)
    a, b, c = (on[pid] for pid in sorted(on))
    for client in on.values():
        await wait_until(_linked(client, 2), "every worker linked to the two others")
    extra = [await clients(supervisor.url, f"extra{n}") for n in range(6)]
    everyone = [a, b, c, *extra]

    # Broadcasts from every worker reach every session of every worker, each exactly once.
    for client in (a, b, c):
        for i in range(20):
            await client.send(f"bc m:{client.name}:{i}")
    await fence([a, b, c], everyone)
    expected = Counter({f"m:{s.name}:{i}": 1 for s in (a, b, c) for i in range(20)})
    for client in everyone:
        assert client.received() == expected, client.name
        client.counts.clear()

    # A topic reaches its subscribers only; a worker without subscribers reads nothing of it.
    await a.subscribe("room")
    for asker in (b, c):  # the answer comes after a's announcement on the same link
        assert await _count(asker, "room") == 1
    quiet = await node_stats(c)
    sender = await node_stats(b)
    for i in range(10):
        await b.send(f"pub room m:room:{i}")
    await fence([b], everyone)
    assert a.received() == Counter({f"m:room:{i}": 1 for i in range(10)})
    for client in (b, c):
        assert client.received() == Counter(), client.name
    after = await node_stats(c)
    assert after["backplane_received"] == quiet["backplane_received"] + 1  # the fence only
    assert after["backplane_ignored_unwanted"] == quiet["backplane_ignored_unwanted"]
    sent = await node_stats(b)
    assert sent["backplane_skipped_uninterested"] - sender["backplane_skipped_uninterested"] == 10
    assert sent["backplane_written"] - sender["backplane_written"] == 10 + 2  # + the fence
    assert all(s["backplane_dropped_outgoing"] == 0 for s in (after, sent))

    # cluster_topic_len counts every worker's subscribers.
    await b.subscribe("room")
    await extra[0].subscribe("room")
    assert {await _count(client, "room") for client in (a, b, c)} == {3}

    # Presence spans the workers; join/leave too.
    await a.subscribe("pres:lobby")
    # Interest takes one hop: once b's worker has counted a, it sends a the join.
    assert await _count(b, "pres:lobby") == 1
    await b.subscribe("pres:lobby")
    joined = json.loads(await asyncio.wait_for(a.replies.get(), WAIT))  # b's join, from afar
    assert joined["type"] == "join" and joined["topic"] == "pres:lobby"
    entries = await _presence(c, "pres:lobby")
    assert len(entries) == 2
    assert len({info["node"] for info in entries.values()}) == 2

    # A user's sessions on any worker get send_to_user and disconnect_user, once each.
    for client in (a, c):
        assert await client.command("user ann") == "user ann"
    await b.send("touser ann m:for-ann")
    await fence([b], [a, c])
    assert a.counts["m:for-ann"] == c.counts["m:for-ann"] == 1
    assert b.counts["m:for-ann"] == 0
    await b.send("kick ann")
    await wait_until(lambda: a.closed.is_set() and c.closed.is_set(), "ann's sessions closed")
    assert a.ws.close_code == c.ws.close_code == 4000
    # b's presence entry is all that is left (a's session is gone).
    await wait_until(lambda: _presence_size(extra[1], "pres:lobby", 1), "a left presence")
    assert await supervisor.stop() == 0, supervisor.text()[-3000:]
    assert "Traceback" not in supervisor.text(), supervisor.text()[-3000:]
    # The supervisor removed the bus's private directory.
    directories = set(BUS_DIR.findall(supervisor.text()))
    assert len(directories) == 1
    assert not Path(directories.pop()).exists()


async def test_in_shared_socket_mode_the_workers_link_too(
        tmp_path: Path, prefix: str, clients: Clients, supervisors: list[Supervisor]) -> None:
    # The mode of macOS and the BSDs (one inherited listening socket), forced on Linux.
    supervisor = Supervisor(tmp_path, None, prefix, env={"MELODY_NO_REUSEPORT": "1"})
    supervisors.append(supervisor)
    await supervisor.started()
    assert supervisor.mode == "one shared socket"
    everyone = [await clients(supervisor.url, f"c{n}") for n in range(6)]
    for client in everyone:
        await wait_until(_linked(client, 1), "the workers linked")
    await everyone[0].send("bc m:shared")
    await fence([everyone[0]], everyone)
    for client in everyone:
        assert client.received() == Counter({"m:shared": 1})
    assert await supervisor.stop() == 0, supervisor.text()[-3000:]


async def _presence_size(client: Client, topic: str, size: int) -> bool:
    return len(await _presence(client, topic)) == size


async def test_a_killed_worker_is_replaced_and_rejoins_the_bus(
        tmp_path: Path, prefix: str, clients: Clients, supervisors: list[Supervisor]) -> None:
    supervisor = Supervisor(tmp_path, None, prefix)
    supervisors.append(supervisor)
    workers = await supervisor.started()
    on = await clients_on(supervisor.url, clients, set(workers.values()))
    for client in on.values():
        await wait_until(_linked(client, 1), "the workers linked")
    # Worker 1 is the lower slot: the survivor dialed it and must dial its successor.
    victim = workers[1]
    survivor = workers[2]
    await on[victim].subscribe("pres:room")
    await on[survivor].subscribe("pres:room")
    assert len(await _presence(on[survivor], "pres:room")) == 2
    # A topic whose history the victim keeps (its owner: the lower slot).
    kept = _owned_topics(2)[1]
    publications: list[dict[str, Any]] = []
    before = await _hsub(on[survivor], kept, publications)
    await on[survivor].send(f"pubj {kept} first")
    await _publications(on[survivor], lambda seen: len(seen) == 1, publications)
    assert publications[0]["offset"] == before["offset"] + 1 == 1

    os.kill(victim, signal.SIGKILL)
    await wait_until(lambda: on[victim].closed.is_set(), "the victim's client dropped")
    # The dead worker's sessions leave presence and the counts as soon as its link closes.
    await wait_until(lambda: _presence_size(on[survivor], "pres:room", 1),
                     "the dead worker's presence dropped")
    assert await _count(on[survivor], "pres:room") == 1
    await wait_until(lambda: supervisor.workers().get(1, victim) != victim,
                     "worker 1 restarted")
    reborn = supervisor.workers()[1]
    fresh = await clients_on(supervisor.url, clients, {reborn, survivor})
    new, old = fresh[reborn], fresh[survivor]
    await wait_until(_linked(new, 1), "the new worker linked")
    await wait_until(_linked(old, 1), "the survivor linked to the new worker")
    living = [on[survivor], new, old]

    # Broadcasts cross in both directions, once each.
    await new.send("bc m:from-reborn")
    await old.send("bc m:from-survivor")
    await fence([new, old], living)
    for client in living:
        assert client.received() == Counter({"m:from-reborn": 1, "m:from-survivor": 1})
        client.counts.clear()

    # The new worker's subscriptions are announced; presence and counts include it.
    await new.subscribe("pres:room")
    assert await _count(old, "pres:room") == 2
    await old.send("pub pres:room m:to-room")
    await fence([old], living)
    assert new.counts["m:to-room"] == 1 and on[survivor].counts["m:to-room"] == 1
    assert len(await _presence(old, "pres:room")) == 2  # old: not in the room, no join
    stats = await node_stats(old)
    assert stats["backplane_peer_losses"] == 1
    # The restarted owner starts the topic's history over, with a new epoch: a client at
    # the old position is told to refetch (the memory engine's rule).
    after = await _hsub(old, kept, [], f"1 {before['epoch']}")
    assert after["recovered"] is False and after["epoch"] != before["epoch"], after
    assert await pid_of(new) == reborn
    assert await supervisor.stop() == 0, supervisor.text()[-3000:]


def _owned_topics(slots: int) -> dict[int, str]:
    """One ``hist:`` topic owned by each slot (the bus's stable hash)."""
    found: dict[int, str] = {}
    for n in range(1000):
        topic = f"hist:{n}"
        found.setdefault(WorkerBus("/tmp", 1, slots).owner(topic), topic)
        if len(found) == slots:
            return found
    raise AssertionError("no topic for every slot")


async def _publications(client: Client, until: Callable[[list[dict[str, Any]]], bool],
                        seen: list[dict[str, Any]]) -> str | None:
    """Read ``client``'s uncounted messages into ``seen`` (the publications) until
    ``until(seen)``; returns the first other reply met (or None)."""
    other: str | None = None
    while not until(seen):
        message = await asyncio.wait_for(client.replies.get(), WAIT)
        if message.startswith('{"type":"publish"'):
            seen.append(json.loads(message))
        elif other is None:
            other = message
    return other


async def _client_on(url: str, clients: Clients, pid: int, limit: int = 64) -> Client:
    for n in range(limit):
        client = await clients(url, f"on{pid}-{n}")
        if await pid_of(client) == pid:
            return client
    raise AssertionError(f"{limit} connections, none on pid {pid}")


async def _hsub(client: Client, topic: str, seen: list[dict[str, Any]],
                position: str = "") -> dict[str, Any]:
    await client.send(f"hsub {topic} {position}".rstrip())
    reply: str | None = None
    while reply is None:
        message = await asyncio.wait_for(client.replies.get(), WAIT)
        if message.startswith('{"type":"publish"'):
            seen.append(json.loads(message))
        else:
            reply = message
    prefix = f"hsub {topic} "
    assert reply.startswith(prefix), reply
    result: dict[str, Any] = json.loads(reply[len(prefix):])
    return result


async def test_history_is_kept_by_one_owner_worker_per_topic(
        tmp_path: Path, prefix: str, clients: Clients, supervisors: list[Supervisor]) -> None:
    supervisor = Supervisor(tmp_path, None, prefix)
    supervisors.append(supervisor)
    workers = await supervisor.started()
    on = await clients_on(supervisor.url, clients, set(workers.values()))
    for client in on.values():
        await wait_until(_linked(client, 1), "the workers linked")
    x, y = on[workers[1]], on[workers[2]]
    for owner, topic in _owned_topics(2).items():
        seen: dict[Client, list[dict[str, Any]]] = {x: [], y: []}
        for client in (x, y):
            result = await _hsub(client, topic, seen[client])
            assert result["recovered"] is False and result["offset"] == 0, result
        # Both workers publish; the owner numbers: one order, every offset once, everywhere.
        for i in range(5):
            await x.send(f"pubj {topic} x{i}")
            await y.send(f"pubj {topic} y{i}")

        def ten(publications: list[dict[str, Any]]) -> bool:
            return len(publications) >= 10

        def ended(publications: list[dict[str, Any]]) -> bool:
            return any(p["data"] == "end" for p in publications)

        for client in (x, y):
            assert await _publications(client, ten, seen[client]) is None
        # Offset 11, sent on the owner's links after 1..10: once it is in, a duplicate of an
        # earlier one would be in too.
        await x.send(f"pubj {topic} end")
        for client in (x, y):
            assert await _publications(client, ended, seen[client]) is None
            assert [p["offset"] for p in seen[client]] == list(range(1, 12)), owner
        assert seen[x] == seen[y]
        assert sorted(p["data"] for p in seen[x][:10]) == sorted(
            [f"x{i}" for i in range(5)] + [f"y{i}" for i in range(5)])
        # A session on either worker recovers from a position, from the owner's history.
        epoch = (await _hsub(x, topic, []))["epoch"]
        for n, worker in enumerate((1, 2)):
            late = await _client_on(supervisor.url, clients, workers[worker])
            got: list[dict[str, Any]] = []
            result = await _hsub(late, topic, got, f"3 {epoch}")
            assert result == {"recovered": True, "offset": 11, "epoch": epoch, "n": 8}, n
            assert [p["offset"] for p in got] == list(range(4, 12))
    assert await supervisor.stop() == 0, supervisor.text()[-3000:]
