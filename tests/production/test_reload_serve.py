"""``melody serve app:hub --config settings.toml`` as a real command: SIGHUP reloads the file
(origins refused before are accepted after, the connection open before keeps working), a bad
file changes nothing and is logged, and with ``--workers 2`` the supervisor forwards SIGHUP to
both workers (each checked through a connection that its pid answers on)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import HOST, WAIT
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parent.parent.parent
A, B = "https://a.example", "https://b.example"
APP = textwrap.dedent("""
    import os

    import melody
    from melody.codecs import JSON

    hub = melody.Melody(codec=JSON)


    @hub.route("pid")
    def pid(session, data):
        return os.getpid()
""")
SERVING = re.compile(r"serving on ws://127\.0\.0\.1:(\d+)")
SUPERVISOR = re.compile(r"workers serving app:hub on ws://127\.0\.0\.1:(\d+)")
WORKER = re.compile(r"worker (\d+) \(pid (\d+)\) serving on ws://")


class Served:
    """``python -m melody serve app:hub ARGS --port 0`` with its log in a file."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.log = folder / "server.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "melody", "serve", "app:hub", "--host", HOST,
                 "--port", "0", *args],
                cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT)
        self.port = 0

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.text()))

    async def wait_for(self, what: str, predicate: Any) -> None:
        """Poll the log until ``predicate(text)``; fail (with the log) after WAIT * 4 s."""
        for _ in range(int(WAIT * 4 / 0.02)):
            if predicate(self.text()):
                return
            if self.process.poll() is not None:
                break
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}; log:\n{self.text()}")

    async def started(self, pattern: re.Pattern[str]) -> None:
        await self.wait_for("the port", lambda text: pattern.search(text) is not None)
        match = pattern.search(self.text())
        assert match is not None
        self.port = int(match.group(1))

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(WAIT * 6)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "settings.toml").write_text(f'allowed_origins = ["{A}"]\n')
    yield tmp_path


@pytest.fixture
def served(folder: Path) -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for server in started:
        server.stop()


async def open_client(url: str, origin: str) -> ClientConnection:
    return await connect(url, origin=Origin(origin), proxy=None, open_timeout=WAIT,
                         close_timeout=1, ping_interval=None)


async def pid_of(ws: ClientConnection) -> int:
    await ws.send(json.dumps({"type": "pid", "id": 1}))
    async with asyncio.timeout(WAIT):
        reply = json.loads(await ws.recv())
    assert reply["ok"] is True
    return int(reply["data"])


async def refused_status(url: str, origin: str) -> int:
    with pytest.raises(InvalidStatus) as info:
        ws = await open_client(url, origin)
        await ws.close()
    return int(info.value.response.status_code)


async def test_sighup_reloads_origins_keeps_connections_and_refuses_a_bad_file(
        folder: Path, served: list[Served]) -> None:
    server = Served(folder, "--config", "settings.toml")
    served.append(server)
    await server.started(SERVING)
    url = server.url
    assert server.count("reloaded") == 1  # applied at start
    before = await open_client(url, A)
    pid = await pid_of(before)
    assert pid == server.process.pid
    assert await refused_status(url, B) == 403

    (folder / "settings.toml").write_text(f'allowed_origins = ["{B}"]\n')
    server.process.send_signal(signal.SIGHUP)
    await server.wait_for("the reload", lambda text: text.count("reloaded") == 2)
    assert f"allowed_origins: ['{A}'] -> ['{B}']" in server.text()
    after = await open_client(url, B)
    assert await refused_status(url, A) == 403
    assert await pid_of(before) == await pid_of(after) == pid  # the same process, still open

    for bad in (f'allowed_origins = ["{A}"\n',          # not TOML
                f'allowed_origins = "{A}"\n',           # not a list
                f'allowed_origins = ["{A}"]\nextra = 1\n'):  # an unknown key
        refusals = server.count("refused, nothing changed")
        (folder / "settings.toml").write_text(bad)
        server.process.send_signal(signal.SIGHUP)
        await server.wait_for("the refusal", lambda text, n=refusals:
                              text.count("refused, nothing changed") == n + 1)
        assert re.search(r"ERROR melody\.reload: reload of .*settings\.toml refused",
                         server.text())
        await (await open_client(url, B)).close()   # the new origin still accepted
        assert await refused_status(url, A) == 403  # the old one still refused
    assert await pid_of(before) == pid
    assert server.count("reloaded") == 2
    await before.close()
    await after.close()
    assert server.stop() == 0


async def test_a_bad_file_at_start_stops_serve_with_the_reason(folder: Path) -> None:
    (folder / "settings.toml").write_text('allowed_origins = "https://a.example"\n')
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "melody", "serve", "app:hub", "--port", "0",
                         "--config", "settings.toml"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=WAIT * 6)
    assert done.returncode != 0
    assert "allowed_origins is a list of strings" in done.stderr


async def connections_to_both(url: str, origin: str, pids: set[int],
                              keep: list[ClientConnection]) -> dict[int, ClientConnection]:
    """Open connections until one reached each worker of ``pids`` (the kernel spreads them
    by a hash of the addresses); the others are closed. Bounded: 64 attempts."""
    found: dict[int, ClientConnection] = {}
    for _ in range(64):
        ws = await open_client(url, origin)
        pid = await pid_of(ws)
        if pid in found:
            await ws.close()
        else:
            found[pid] = ws
            keep.append(ws)
        if set(found) == pids:
            return found
    raise AssertionError(f"reached only workers {sorted(found)} of {sorted(pids)}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing")
async def test_workers_both_reload_on_sighup_to_the_supervisor(
        folder: Path, served: list[Served]) -> None:
    server = Served(folder, "--workers", "2", "--config", "settings.toml")
    served.append(server)
    await server.started(SUPERVISOR)
    await server.wait_for("two workers", lambda text: len(WORKER.findall(text)) == 2)
    pids = {int(pid) for _, pid in WORKER.findall(server.text())}
    assert server.count("reloaded") == 2  # each worker applied the file at start
    clients: list[ClientConnection] = []
    try:
        before = await connections_to_both(server.url, A, pids, clients)
        assert await refused_status(server.url, B) == 403

        (folder / "settings.toml").write_text(f'allowed_origins = ["{B}"]\n')
        server.process.send_signal(signal.SIGHUP)
        await server.wait_for("both workers' reloads", lambda text: text.count("reloaded") == 4)
        for worker_id in (1, 2):
            assert re.search(rf"\[worker {worker_id}\]: reloaded .*-> \['{re.escape(B)}'\]",
                             server.text())
        # Each worker now accepts B and refuses A; the connections of before stay.
        await connections_to_both(server.url, B, pids, clients)
        for _ in range(8):
            assert await refused_status(server.url, A) == 403
        for pid, ws in before.items():
            assert await pid_of(ws) == pid

        # A bad file: both workers refuse it, and both keep B.
        (folder / "settings.toml").write_text("allowed_origins = [\n")
        server.process.send_signal(signal.SIGHUP)
        await server.wait_for("both refusals",
                              lambda text: text.count("refused, nothing changed") == 2)
        await connections_to_both(server.url, B, pids, clients)
        assert server.count("reloaded") == 4
    finally:
        for ws in clients:
            await ws.close()
    assert server.stop() == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing")
async def test_a_restarted_worker_starts_with_the_file_as_it_is_now(
        folder: Path, served: list[Served]) -> None:
    server = Served(folder, "--workers", "2", "--config", "settings.toml")
    served.append(server)
    await server.started(SUPERVISOR)
    await server.wait_for("two workers", lambda text: len(WORKER.findall(text)) == 2)
    workers = {int(w): int(p) for w, p in WORKER.findall(server.text())}
    # Edited but not signalled: the running workers keep A; a worker that restarts reads B.
    (folder / "settings.toml").write_text(f'allowed_origins = ["{B}"]\n')
    os.kill(workers[1], signal.SIGKILL)
    await server.wait_for("worker 1 restarted", lambda text: len(WORKER.findall(text)) == 3)
    restarted = {int(w): int(p) for w, p in WORKER.findall(server.text())}[1]
    assert restarted != workers[1]
    accepted: dict[str, set[int]] = {A: set(), B: set()}
    for attempt in range(64):
        origin = (A, B)[attempt % 2]
        try:
            ws = await open_client(server.url, origin)
        except InvalidStatus as exc:
            assert exc.response.status_code == 403
            continue
        accepted[origin].add(await pid_of(ws))
        await ws.close()
        if accepted[A] and accepted[B]:
            break
    assert accepted == {A: {workers[2]}, B: {restarted}}
    assert server.stop() == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing")
async def test_a_restarted_worker_that_finds_the_file_broken_keeps_the_last_good_settings(
        folder: Path, served: list[Served]) -> None:
    """A bad edit, not yet signalled, then a worker crash: the restarted worker must not
    stop the service (a first start with a broken file does); it logs why and serves with
    the last settings the workers accepted, and a SIGHUP after the fix applies the fix."""
    server = Served(folder, "--workers", "2", "--config", "settings.toml")
    served.append(server)
    await server.started(SUPERVISOR)
    await server.wait_for("two workers", lambda text: len(WORKER.findall(text)) == 2)
    workers = {int(w): int(p) for w, p in WORKER.findall(server.text())}
    # B accepted by a reload first: the last good settings are then B's, not the start's.
    (folder / "settings.toml").write_text(f'allowed_origins = ["{B}"]\n')
    server.process.send_signal(signal.SIGHUP)
    await server.wait_for("both reloads", lambda text: text.count("reloaded") == 4)

    (folder / "settings.toml").write_text("allowed_origins = [\n")  # broken, no SIGHUP
    os.kill(workers[1], signal.SIGKILL)
    await server.wait_for("worker 1 restarted", lambda text: len(WORKER.findall(text)) == 3)
    restarted = {int(w): int(p) for w, p in WORKER.findall(server.text())}[1]
    assert server.process.poll() is None, server.text()
    assert "applies the last settings the workers accepted instead" in server.text()
    clients: list[ClientConnection] = []
    try:
        # Both workers, the restarted one included, accept B and refuse A.
        await connections_to_both(server.url, B, {workers[2], restarted}, clients)
        for _ in range(8):
            assert await refused_status(server.url, A) == 403

        # Fixed and signalled: every worker, the restarted one too, reads the file again.
        (folder / "settings.toml").write_text(f'allowed_origins = ["{A}"]\n')
        reloads = server.count("reloaded")
        server.process.send_signal(signal.SIGHUP)
        await server.wait_for("both reloads",
                              lambda text: text.count("reloaded") == reloads + 2)
        await connections_to_both(server.url, A, {workers[2], restarted}, clients)
    finally:
        for ws in clients:
            await ws.close()
    assert server.stop() == 0
