"""Fixtures for the cluster tests: a real Redis (and a real nats-server), hub processes sharing
it, counting clients.

Redis: ``MELODY_REDIS_URL`` when set (``.ci/run`` starts a redis-server and exports it);
otherwise a ``redis-server`` of the test session's own on a free port, no persistence. When
neither works the tests FAIL: they are never skipped for want of a Redis. Tests that kill and
restart the broker always use an instance of their own (``own_redis``).

NATS the same way: ``MELODY_NATS_URL`` when set, else a ``nats-server -js`` of the session's
own; ``own_nats`` for the tests that restart it. The contract tests take ``broker`` (or
``own_broker``), parametrized over both engines.

Every test gets a channel prefix of its own, so tests sharing one Redis never see each other's
messages or presence keys.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import pytest_asyncio
from cluster_support import (
    Client,
    HubNode,
    NatsServer,
    RedisServer,
    Supervisor,
    nats_ping,
    redis_ping,
)

# The cluster tests fork hub processes and run a local redis-server: POSIX only. Windows CI
# covers the rest of the suite; the backplane itself is pure asyncio and portable.
if sys.platform == "win32":
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a Redis every test may share (never restarted)."""
    url = os.environ.get("MELODY_REDIS_URL")
    if url:
        parsed = urlparse(url)
        if parsed.hostname not in ("127.0.0.1", "localhost") or not redis_ping(
                parsed.port or 6379, timeout=5.0):
            pytest.fail(f"MELODY_REDIS_URL={url} does not answer PING on 127.0.0.1")
        yield url
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(f"no Redis for the cluster tests: {exc}")
    yield server.url
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may kill and restart on the same port."""
    server = RedisServer(tmp_path)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(f"cannot start a redis-server for this test: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a nats-server with JetStream every test may share (never restarted):
    ``MELODY_NATS_URL`` when set (``.ci/run`` starts one), else one of the session's own.
    Neither: the tests fail, as they do without a Redis."""
    url = os.environ.get("MELODY_NATS_URL")
    if url:
        parsed = urlparse(url)
        if parsed.hostname not in ("127.0.0.1", "localhost") or not nats_ping(
                parsed.port or 4222, timeout=5.0):
            pytest.fail(f"MELODY_NATS_URL={url} does not answer PING on 127.0.0.1")
        yield url
        return
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(f"no nats-server for the cluster tests: {exc}")
    yield server.url
    server.stop()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test's own, which it may kill and restart on the same port (each
    start with an empty store)."""
    server = NatsServer(tmp_path)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(f"cannot start a nats-server for this test: {exc}")
    yield server
    server.stop()


ENGINES = ["redis", pytest.param("nats", marks=pytest.mark.nats)]


@pytest.fixture(params=ENGINES)
def broker(request: pytest.FixtureRequest) -> str:
    """The URL of a shared broker, once per backplane engine: the contract tests take this
    one, and ``cluster_support.make_backplane`` (or ``HubNode``) turns it into a
    RedisBackplane or a NatsBackplane."""
    name = "redis_url" if request.param == "redis" else "nats_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture(params=ENGINES)
def own_broker(request: pytest.FixtureRequest) -> RedisServer | NatsServer:
    """A broker of this test's own (``own_redis`` or ``own_nats``), once per engine."""
    name = "own_redis" if request.param == "redis" else "own_nats"
    server: RedisServer | NatsServer = request.getfixturevalue(name)
    return server


@pytest.fixture
def prefix() -> str:
    """A channel prefix of this test's own."""
    return f"melody-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def hub_nodes(tmp_path: Path, prefix: str) -> Iterator[Callable[..., list[HubNode]]]:
    """A factory: ``nodes = hub_nodes(redis_url, count)`` starts ``count`` hub processes.

    They alternate uvloop and asyncio (``loop=`` picks one for all); ``script=`` runs another
    hub program than ``cluster_hub.py`` (see ``HubNode``). At teardown each is stopped with
    SIGTERM and must exit with 0; a hub process that died on its own or hung fails the test.
    """
    started: list[HubNode] = []

    def start(url: str, count: int, *, loop: str | None = None,
              script: Path | None = None) -> list[HubNode]:
        nodes = [HubNode(url, prefix, tmp_path, f"{len(started) + i}",
                         loop=loop or ("uvloop" if i % 2 == 0 else "asyncio"), script=script)
                 for i in range(count)]
        started.extend(nodes)
        for node in nodes:
            node.wait_ready()
        return nodes

    yield start
    failures = []
    for node in started:
        died = not node.stopped and not node.alive()
        code = node.stop()
        if died or code != 0:
            failures.append(f"hub {node.name}: died={died} exit={code}\n{node.read_log()}")
    assert not failures, "\n".join(failures)


@pytest_asyncio.fixture
async def clients() -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    """A factory: ``client = await clients(url, name)``; every client is closed at teardown."""
    opened: list[Client] = []

    async def open_client(url: str, name: str = "") -> Client:
        client = await Client.open(url, name)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        await client.close()


@pytest.fixture
def supervisors(tmp_path: Path) -> Iterator[list[Supervisor]]:
    started: list[Supervisor] = []
    yield started
    for supervisor in started:
        if supervisor.process.poll() is None:
            supervisor.process.kill()
            supervisor.process.wait()
            pytest.fail("the supervisor was still running:\n" + supervisor.text()[-3000:])
