"""``melody serve cluster_hub:hub --workers 2``: one port, two worker processes, a Redis backplane.

The supervisor runs as the real command (``python -m melody serve``) with its log in a file;
the workers' pids come from their log lines and from what each client's worker reports.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from cluster_support import HERE, HOST, ROOT, WAIT, Client, fence, node_stats, wait_until

pytestmark = pytest.mark.asyncio

Clients = Callable[..., Awaitable[Client]]

SERVING = re.compile(r"workers serving cluster_hub:hub on ws://127\.0\.0\.1:(\d+) \((.+)\)")
WORKER = re.compile(r"worker (\d+) \(pid (\d+)\) serving on ws://")


class Supervisor:
    def __init__(self, tmp_path: Path, redis_url: str | None, prefix: str, *args: str,
                 app: str = "cluster_hub:hub", env: dict[str, str] | None = None) -> None:
        self.log = tmp_path / "supervisor.log"
        environment = dict(os.environ, MELODY_CHANNEL_PREFIX=prefix,
                           PYTHONPATH=os.pathsep.join([str(ROOT),
                                                       os.environ.get("PYTHONPATH", "")]))
        environment.pop("MELODY_REDIS_URL", None)
        if redis_url:
            environment["MELODY_REDIS_URL"] = redis_url
        environment.update(env or {})
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "melody", "serve", app, "--workers", "2",
                 "--host", HOST, "--port", "0", *args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=HERE,
                env=environment)
        self.port = 0
        self.mode = ""

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def started(self) -> dict[int, int]:
        """Wait for the port and both workers; returns worker id -> pid."""
        await wait_until(lambda: SERVING.search(self.text()) is not None,
                         "the supervisor's port", every=0.05)
        match = SERVING.search(self.text())
        assert match is not None
        self.port, self.mode = int(match.group(1)), match.group(2)
        await wait_until(lambda: len(self.workers()) == 2, "two workers serving", every=0.05)
        return self.workers()

    def workers(self) -> dict[int, int]:
        """Worker id -> pid of the latest start of each."""
        return {int(w): int(p) for w, p in WORKER.findall(self.text())}

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/"

    async def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.process.wait, WAIT)


@pytest.fixture
def supervisors(tmp_path: Path) -> Iterator[list[Supervisor]]:
    started: list[Supervisor] = []
    yield started
    for supervisor in started:
        if supervisor.process.poll() is None:
            supervisor.process.kill()
            supervisor.process.wait()
            pytest.fail("the supervisor was still running:\n" + supervisor.text()[-3000:])


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def _pid(client: Client) -> int:
    return int((await client.info())["pid"])


async def _clients_on(url: str, clients: Clients, pids: set[int],
                      limit: int = 64) -> dict[int, Client]:
    """Open clients until one is on each of ``pids``; returns pid -> one client there."""
    found: dict[int, Client] = {}
    for n in range(limit):
        client = await clients(url, f"c{n}")
        pid = await _pid(client)
        assert pid in pids, (pid, pids)
        found.setdefault(pid, client)
        if set(found) == pids:
            return found
    raise AssertionError(f"{limit} connections all went to {set(found)}, not to all of {pids}")


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
    on = await _clients_on(supervisor.url, clients, pids)
    everyone = [await clients(supervisor.url, f"extra{n}") for n in range(6)] + list(on.values())
    where = {client: await _pid(client) for client in everyone}
    for client in on.values():
        await wait_until(_backplane_up(client), "the worker's backplane")

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
    on = await _clients_on(supervisor.url, clients, {reborn, survivor})
    await wait_until(_backplane_up(on[reborn]), "the new worker's backplane")
    living = [c for c in everyone if where[c] != victim] + list(on.values())
    await on[reborn].send("bc m:reborn")
    await fence([on[reborn], on[survivor]], living)
    assert all(c.received()["m:reborn"] == 1 for c in living)

    # SIGTERM: every worker closes its sessions (1001) and exits; the supervisor exits 0.
    assert await supervisor.stop() == 0, supervisor.text()[-3000:]
    await wait_until(lambda: all(c.closed.is_set() for c in living), "clients closed")
    assert all(c.ws.close_code == 1001 for c in living)
    assert _gone(reborn) and _gone(survivor)
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
        pid = await _pid(client)
        assert pid in pids
        senders.setdefault(pid, client)
        await wait_until(_backplane_up(client), "the backplane")
    for pid, client in senders.items():
        await client.send(f"bc m:from:{pid}")
    await fence(senders.values(), everyone)
    for client in everyone:
        assert client.received() == Counter({f"m:from:{pid}": 1 for pid in senders})
    assert await supervisor.stop() == 0, supervisor.text()[-3000:]


async def test_without_a_backplane_a_broadcast_stays_in_its_worker(
        tmp_path: Path, prefix: str, clients: Clients, supervisors: list[Supervisor]) -> None:
    supervisor = Supervisor(tmp_path, None, prefix)
    supervisors.append(supervisor)
    pids = set((await supervisor.started()).values())
    on = await _clients_on(supervisor.url, clients, pids)
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
