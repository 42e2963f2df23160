"""Fixtures for the production tests: hubs served on 127.0.0.1 port 0 (optionally with TLS or
metrics), ``websockets`` clients and raw clients, on asyncio and on uvloop.

The raw client, the handler recorder and bounded waiting come from ``tests/e2e/e2e_support.py``
(its folder is put on ``sys.path`` here); what only these tests need is in ``prod_support.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

from e2e_support import HOST, LOOP_FACTORIES, RawClient, port_of
from websockets.asyncio.client import ClientConnection, connect

from melody import Config, Melody


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    return LOOP_FACTORIES


@pytest.fixture(scope="session", autouse=True)
def _raise_nofile() -> Iterator[None]:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit: the slowloris and churn tests hold
    a few thousand sockets (both ends live in this process)."""
    if resource is None:  # Windows: no such limit to raise
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


Served = tuple[Melody, str]


@pytest_asyncio.fixture(loop_scope="function")
async def serve_hub() -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    """``hub, url = await serve_hub(hub=None, *, ssl=None, metrics=False, **config_fields)``.

    Serves the hub on 127.0.0.1 port 0 and returns its ``ws://`` (``wss://`` with ``ssl``)
    URL. Every hub is shut down at teardown (if the test did not) with a short timeout.
    """
    from melody.server import serve

    hubs: list[Melody] = []

    async def start(hub: Melody | None = None, *, ssl: Any = None, metrics: bool = False,
                    **fields: Any) -> Served:
        if hub is None:
            hub = Melody(Config(**fields))
        elif fields:
            raise TypeError("pass Config fields or a hub, not both")
        server = await serve(hub, HOST, 0, ssl=ssl, metrics=metrics)
        hubs.append(hub)
        port = server.sockets[0].getsockname()[1]
        return hub, f"{'wss' if ssl else 'ws'}://{HOST}:{port}"

    yield start
    for hub in hubs:
        if not hub.is_closed():
            await hub.shutdown(timeout=2.0)
        else:
            await hub.wait_closed(timeout=1.0)


@pytest_asyncio.fixture(loop_scope="function")
async def ws_connect() -> AsyncIterator[Callable[..., Awaitable[ClientConnection]]]:
    """``ws = await ws_connect(url, **kwargs)``: a ``websockets`` client, closed at teardown."""
    clients: list[ClientConnection] = []

    async def open_client(url: str, **kwargs: Any) -> ClientConnection:
        kwargs.setdefault("proxy", None)
        kwargs.setdefault("ping_interval", None)
        kwargs.setdefault("open_timeout", 5)
        kwargs.setdefault("close_timeout", 1)
        ws = await connect(url, **kwargs)
        clients.append(ws)
        return ws

    yield open_client
    for ws in clients:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await ws.close()
        ws.transport.abort()


@pytest_asyncio.fixture(loop_scope="function")
async def raw_connect() -> AsyncIterator[Callable[..., Awaitable[RawClient]]]:
    """``raw = await raw_connect(url, path="/", headers=None, *, upgrade=True, rcvbuf=None)``."""
    clients: list[RawClient] = []

    async def open_raw(url: str, path: str = "/", headers: list[tuple[str, str]] | None = None,
                       *, upgrade: bool = True, rcvbuf: int | None = None) -> RawClient:
        port = port_of(url)
        if upgrade:
            client = await RawClient.connect(port, path, headers, rcvbuf=rcvbuf)
        else:
            client = await RawClient.open(port, rcvbuf=rcvbuf)
        clients.append(client)
        return client

    yield open_raw
    for client in clients:
        client.close()
