"""``melody serve cluster_hub:hub --workers 2``: one port, two worker processes, sharing over a
Redis backplane, over the machine-local bus (none configured), or not at all (--no-worker-bus).

The supervisor runs as the real command (``python -m melody serve``) with its log in a file;
the workers' pids come from their log lines and from what each client's worker reports.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cluster_support import (
    WAIT,
    Client,
    Supervisor,
    clients_on,
    fence,
    gone,
    node_stats,
    pid_of,
    wait_until,
)

pytestmark = pytest.mark.asyncio

Clients = Callable[..., Awaitable[Client]]


def _bus_linked(client: Client, peers: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await node_stats(client)).get("backplane_peers") == peers
    return check


def _backplane_up(client: Client) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        stats = await node_stats(client)
        return stats["backplane_connected"] == 1 and stats["backplane_channels"] == 1
    return check


async def test_two_workers_share_the_port_restart_and_stop_cleanly(
        tmp_path: Path, redis_url: str, prefix: str, clients: Clients,
        supervisors: list[Supervisor]) -> None:
    supervisor = Supervisor(tmp_path, redis_url, prefix)
    supervisors.append(supervisor)
    workers = await supervisor.started()
    assert supervisor.mode == "SO_REUSEPORT"
    pids = set(workers.values())
    assert len(pids) == 2

    # Connections spread over both workers (the kernel hashes each connection to one).
    on = await clients_on(supervisor.url, clients, pids)
    everyone = [await clients(supervisor.url, f"extra{n}") for n in range(6)] + list(on.values())
    where = {client: await pid_of(client) for client in everyone}
    for client in on.values():
        await wait_until(_backplane_up(client), "the worker's backplane")
    # With a RedisBackplane configured the workers share over Redis: no bus is made.
    assert "backplane_peers" not in await node_stats(next(iter(on.values())))

    # A broadcast from either worker reaches every client once.
    for pid, client in on.items():
        await client.send(f"bc m:from:{pid}")
    await fence(on.values(), everyone)
    expected = Counter({f"m:from:{pid}": 1 for pid in pids})
    for client in everyone:
        assert client.received() == expected, client.name

    # A worker that dies is restarted (a new pid) and serves again.
    victim_id, victim = next(iter(workers.items()))
    os.kill(victim, signal.SIGKILL)
    dropped = [c for c in everyone if where[c] == victim]
    await wait_until(lambda: all(c.closed.is_set() for c in dropped), "its clients dropped")
    await wait_until(lambda: f"(pid {victim}) exited with signal SIGKILL" in supervisor.text(),
                     "the supervisor noticed the dead worker")
    await wait_until(lambda: supervisor.workers().get(victim_id, victim) != victim,
                     "the worker restarted")
    reborn = supervisor.workers()[victim_id]
    survivor = (pids - {victim}).pop()
    on = await clients_on(supervisor.url, clients, {reborn, survivor})
    await wait_until(_backplane_up(on[reborn]), "the new worker's backplane")
    living = [c for c in everyone if where[c] != victim] + list(on.values())
    await on[reborn].send("bc m:reborn")
    await fence([on[reborn], on[survivor]], living)
    assert all(c.received()["m:reborn"] == 1 for c in living)

    # SIGTERM: every worker closes its sessions (1001) and exits; the supervisor exits 0.
    assert await supervisor.stop() == 0, supervisor.text()[-3000:]
    await wait_until(lambda: all(c.closed.is_set() for c in living), "clients closed")
    assert all(c.ws.close_code == 1001 for c in living)
    assert gone(reborn) and gone(survivor)
    assert "Traceback" not in supervisor.text(), supervisor.text()[-3000:]


async def test_shared_socket_fallback_serves_and_shares_broadcasts(
        tmp_path: Path, redis_url: str, prefix: str, clients: Clients,
        supervisors: list[Supervisor]) -> None:
    supervisor = Supervisor(tmp_path, redis_url, prefix, env={"MELODY_NO_REUSEPORT": "1"})
    supervisors.append(supervisor)
    pids = set((await supervisor.started()).values())
    assert supervisor.mode == "one shared socket"
    everyone = [await clients(supervisor.url, f"c{n}") for n in range(8)]
    # Which worker accepts is up to the kernel here: only membership is checked.
    senders: dict[int, Client] = {}
    for client in everyone:
        pid = await pid_of(client)
        assert pid in pids
        senders.setdefault(pid, client)
        await wait_until(_backplane_up(client), "the backplane")
    for pid, client in senders.items():
        await client.send(f"bc m:from:{pid}")
    await fence(senders.values(), everyone)
    for client in everyone:
        assert client.received() == Counter({f"m:from:{pid}": 1 for pid in senders})
    assert await supervisor.stop() == 0, supervisor.text()[-3000:]


async def test_without_a_backplane_the_workers_share_over_the_bus(
        tmp_path: Path, prefix: str, clients: Clients, supervisors: list[Supervisor]) -> None:
    # Before issue 15 a broadcast stayed in its worker here; now the workers link over the
    # machine-local bus (tests/cluster/test_worker_bus.py covers it in depth).
    supervisor = Supervisor(tmp_path, None, prefix)
    supervisors.append(supervisor)
    pids = set((await supervisor.started()).values())
    on = await clients_on(supervisor.url, clients, pids)
    first, second = on.values()
    for client in (first, second):
        await wait_until(_bus_linked(client, 1), "the workers linked")
    await first.send("bc m:shared")
    await fence([first], [first, second])
    assert first.received() == second.received() == Counter({"m:shared": 1})
    info = json.loads((await first.command("info"))[5:])
    assert "backplane_channels" not in info["stats"]  # no Redis
    assert await supervisor.stop() == 0


async def test_no_worker_bus_keeps_each_worker_a_hub_of_its_own(
        tmp_path: Path, prefix: str, clients: Clients, supervisors: list[Supervisor]) -> None:
    supervisor = Supervisor(tmp_path, None, prefix, "--no-worker-bus")
    supervisors.append(supervisor)
    pids = set((await supervisor.started()).values())
    on = await clients_on(supervisor.url, clients, pids)
    first, second = on.values()
    await first.send("bc m:local")
    await first.send("info")  # a reply after the broadcast: it has been handed out
    await wait_until(lambda: first.counts["m:local"] == 1, "the sender's own worker")
    await second.command("info")
    assert second.received() == Counter()
    info = json.loads((await first.command("info"))[5:])
    assert "backplane_connected" not in info["stats"]
    assert await supervisor.stop() == 0


async def test_a_worker_that_cannot_load_the_hub_stops_the_supervisor(
        tmp_path: Path, prefix: str, supervisors: list[Supervisor]) -> None:
    supervisor = Supervisor(tmp_path, None, prefix, app="no_such_module:hub")
    supervisors.append(supervisor)
    code = await asyncio.to_thread(supervisor.process.wait, WAIT)
    assert code == 3, supervisor.text()
    assert "cannot import 'no_such_module'" in supervisor.text()
