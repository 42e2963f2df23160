"""Helpers for the cluster tests: a redis-server of the test's own, hub processes, clients that
count what they receive, and bounded waiting. Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

HOST = "127.0.0.1"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

#: Upper bound of any single wait. Never reached when things work: it only turns a hang into a
#: failure that says what was awaited.
WAIT = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def redis_ping(port: int, timeout: float = 1.0) -> bool:
    """True if a Redis answers PING on 127.0.0.1:port (raw RESP: no client library needed)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def nats_ping(port: int, timeout: float = 1.0) -> bool:
    """True if a nats-server answers PING on 127.0.0.1:port (raw protocol: the server sends
    its INFO line first, then answers PONG)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
            seen = b""
            while b"PONG" not in seen and len(seen) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                seen += chunk
            return True
    except OSError:
        return False


class NatsServer:
    """A ``nats-server -js`` subprocess on 127.0.0.1, restartable on its port. Each start gets
    an empty JetStream store: a restart loses everything, as a Redis without persistence
    does (what the epoch tests need)."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.dir = log_dir
        self.log = log_dir / f"nats-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def start(self, timeout: float = WAIT, keep_store: bool = False) -> None:
        """Start (again); with ``keep_store``, on the store of the last start (a restart
        that loses nothing JetStream wrote to disk)."""
        binary = shutil.which("nats-server") or (
            "/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None)
        if binary is None:
            raise RuntimeError("nats-server is not installed (Debian: apt-get install "
                               "nats-server) and MELODY_NATS_URL is not set")
        if not keep_store or not self.starts:
            self.starts += 1
        store = self.dir / f"nats-store-{self.port}-{self.starts}"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "-js", "-a", HOST, "-p", str(self.port), "-sd", str(store)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not nats_ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nats-server did not start on port {self.port}:\n"
                                   + self.log.read_text(errors="replace")[-2000:])
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without a goodbye, as in a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=WAIT)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


#: A broker a test may kill and restart: a RedisServer or a NatsServer.
Broker = Any


def is_nats(url: str) -> bool:
    """True for a NATS URL (the backplane is then a NatsBackplane)."""
    return url.startswith(("nats://", "tls://"))


def make_backplane(url: str, prefix: str, **settings: Any) -> Any:
    """The backplane of ``url``: a NatsBackplane for ``nats://``, else a RedisBackplane,
    with ``settings`` (the names both take)."""
    if is_nats(url):
        from melody.backplane.nats import NatsBackplane

        return NatsBackplane(url, channel_prefix=prefix, **settings)
    from melody.backplane.redis import RedisBackplane

    return RedisBackplane(url, channel_prefix=prefix, **settings)


class RedisServer:
    """A ``redis-server`` subprocess on 127.0.0.1 with no persistence, restartable on its port."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.log = log_dir / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, timeout: float = WAIT) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (Debian: apt-get install "
                               "redis-server) and MELODY_REDIS_URL is not set")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", HOST, "--save", "",
                 "--appendonly", "no"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not redis_ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n"
                                   + self.log.read_text(errors="replace")[-2000:])
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without a goodbye, as in a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=WAIT)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


class HubNode:
    """One ``cluster_hub.py`` process (a hub with the backplane of ``redis_url``, which may
    also be a ``nats://`` URL) on its own port."""

    def __init__(self, redis_url: str, prefix: str, log_dir: Path, name: str,
                 loop: str = "asyncio", script: Path | None = None) -> None:
        """``script``: the hub program to run (``cluster_hub.py`` by default); it must take
        ``--loop`` and print ``READY <port>`` as ``cluster_hub.py`` does."""
        self.name = name
        self.log = log_dir / f"hub-{name}.log"
        env = dict(os.environ, MELODY_BACKPLANE_URL=redis_url, MELODY_CHANNEL_PREFIX=prefix,
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        if is_nats(redis_url):
            env.pop("MELODY_REDIS_URL", None)
        else:
            env["MELODY_REDIS_URL"] = redis_url
        program = script if script is not None else HERE / "cluster_hub.py"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(program), "--loop", loop],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env,
                cwd=HERE)
        self.port = 0
        self.stopped = False

    def wait_ready(self, timeout: float = WAIT) -> None:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        # The first line is READY <port>; readline blocks, so a reader thread bounds it.
        result: list[bytes] = []

        def read() -> None:
            assert self.process.stdout is not None
            result.append(self.process.stdout.readline())

        import threading

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        thread.join(max(0.0, deadline - time.monotonic()))
        line = result[0].decode() if result else ""
        if not line.startswith("READY "):
            raise AssertionError(f"hub {self.name} did not start: {line!r}\n{self.read_log()}")
        self.port = int(line.split()[1])

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/"

    def alive(self) -> bool:
        return self.process.poll() is None

    def read_log(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self) -> int:
        """SIGTERM and wait (kill after 10 s); the exit code (0 for a clean stop)."""
        self.stopped = True
        code = stop_process(self.process)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code


def server_port(server: object) -> int:
    """The port of what ``hub.serve`` returns (an asyncio or a uvloop ``Server``)."""
    sockets: Any = getattr(server, "sockets")  # noqa: B009 - not on AbstractServer's type
    return int(sockets[0].getsockname()[1])


def is_counted(message: str | bytes) -> bool:
    return (message.startswith(b"m:") if isinstance(message, bytes)
            else message.startswith("m:"))


class Client:
    """A websockets client that counts every ``m:...`` message it receives (text and binary
    apart) and hands the other messages (command replies) to :meth:`command`."""

    def __init__(self, ws: ClientConnection, name: str) -> None:
        self.ws = ws
        self.name = name
        self.counts: Counter[str | bytes] = Counter()
        self.replies: asyncio.Queue[str] = asyncio.Queue()
        self.closed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, url: str, name: str = "") -> Client:
        ws = await connect(url, proxy=None, ping_interval=None, open_timeout=WAIT,
                           close_timeout=2, max_queue=None)
        return cls(ws, name or url)

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if is_counted(message):
                    self.counts[message] += 1
                else:
                    assert isinstance(message, str)
                    self.replies.put_nowait(message)
        except Exception:
            pass
        finally:
            self.closed.set()

    async def send(self, text: str) -> None:
        await self.ws.send(text)

    async def command(self, text: str) -> str:
        """Send a command and return its reply (the next message that is not counted)."""
        await self.ws.send(text)
        return await asyncio.wait_for(self.replies.get(), WAIT)

    async def info(self) -> dict[str, Any]:
        reply = await self.command("info")
        assert reply.startswith("info "), reply
        result: dict[str, Any] = json.loads(reply[5:])
        return result

    async def subscribe(self, topic: str) -> None:
        assert await self.command(f"sub {topic}") == f"sub {topic} True"

    async def unsubscribe(self, topic: str) -> None:
        assert await self.command(f"unsub {topic}") == f"unsub {topic} True"

    async def cluster_topic_len(self, topic: str) -> str:
        reply = await self.command(f"ctl {topic}")
        prefix = f"ctl {topic} "
        assert reply.startswith(prefix), reply
        return reply[len(prefix):]

    def received(self) -> Counter[str | bytes]:
        """What was counted, fences left out."""
        return Counter({k: v for k, v in self.counts.items()
                        if not (k.startswith(b"m:fence:") if isinstance(k, bytes)
                                else k.startswith("m:fence:"))})

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 3)
        self.ws.transport.abort()
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task


async def wait_until(predicate: Callable[[], bool | Awaitable[bool]], what: str,
                     timeout: float = WAIT, every: float = 0.02) -> None:
    """Poll ``predicate`` (sync or async) until it holds; fail after ``timeout`` seconds."""

    async def poll() -> None:
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await asyncio.sleep(every)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for: {what}") from None


async def fence(senders: Iterable[Client], receivers: Iterable[Client]) -> None:
    """Wait until every receiver has everything the senders' hubs published before now.

    Each sender's hub broadcasts one fence message after the commands the sender already sent
    (one session's commands run in order, a node publishes to Redis in order, and Redis keeps
    one publisher's order for every subscriber). Once a receiver holds every fence, any copy
    of an earlier message, duplicates included, has arrived too.
    """
    senders = list(senders)
    receivers = list(receivers)
    tag = uuid.uuid4().hex[:8]
    fences = [f"m:fence:{tag}:{i}" for i in range(len(senders))]
    for sender, name in zip(senders, fences):
        await sender.send(f"bc {name}")
    await wait_until(lambda: all(all(r.counts[f] >= 1 for f in fences) for r in receivers),
                     f"fences {fences} at every client")
    for receiver in receivers:
        for name in fences:
            assert receiver.counts[name] == 1, (receiver.name, name, receiver.counts[name])


async def node_stats(client: Client) -> dict[str, int]:
    stats: dict[str, int] = (await client.info())["stats"]
    return stats


# -- melody serve --workers N ------------------------------------------------------------

SERVING = re.compile(r"workers serving cluster_hub:hub on ws://127\.0\.0\.1:(\d+) \((.+)\)")
WORKER = re.compile(r"worker (\d+) \(pid (\d+)\) serving on ws://")


class Supervisor:
    """``python -m melody serve cluster_hub:hub --workers N`` with its log in a file."""

    def __init__(self, tmp_path: Path, redis_url: str | None, prefix: str, *args: str,
                 app: str = "cluster_hub:hub", env: dict[str, str] | None = None,
                 workers: int = 2) -> None:
        self.count = workers
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
                [sys.executable, "-m", "melody", "serve", app, "--workers", str(workers),
                 "--host", HOST, "--port", "0", *args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=HERE,
                env=environment)
        self.port = 0
        self.mode = ""

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def started(self) -> dict[int, int]:
        """Wait for the port and every worker; returns worker id -> pid."""
        await wait_until(lambda: SERVING.search(self.text()) is not None,
                         "the supervisor's port", every=0.05)
        match = SERVING.search(self.text())
        assert match is not None
        self.port, self.mode = int(match.group(1)), match.group(2)
        await wait_until(lambda: len(self.workers()) == self.count, "every worker serving",
                         every=0.05)
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


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def pid_of(client: Client) -> int:
    return int((await client.info())["pid"])


async def clients_on(url: str, clients: Callable[..., Awaitable[Client]], pids: set[int],
                      limit: int = 64) -> dict[int, Client]:
    """Open clients until one is on each of ``pids``; returns pid -> one client there."""
    found: dict[int, Client] = {}
    for n in range(limit):
        client = await clients(url, f"c{n}")
        pid = await pid_of(client)
        assert pid in pids, (pid, pids)
        found.setdefault(pid, client)
        if set(found) == pids:
            return found
    raise AssertionError(f"{limit} connections all went to {set(found)}, not to all of {pids}")
