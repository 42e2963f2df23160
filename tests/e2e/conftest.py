"""Fixtures for the end-to-end tests: real sockets on 127.0.0.1, port 0, on asyncio and uvloop.

Every async test here (each module sets ``pytestmark = pytest.mark.asyncio``) runs twice: once on
the default asyncio loop and once on uvloop, through pytest-asyncio's
``pytest_asyncio_loop_factories`` hook (the test id ends in ``[asyncio]`` or ``[uvloop]``). The
async fixtures below run on the same loop as the test that uses them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from e2e_support import HOST, LOOP_FACTORIES, RawClient, port_of
from websockets.asyncio.client import ClientConnection, connect

from melody import Config, Melody


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    return LOOP_FACTORIES


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "hub_config(**fields): the melody.Config the hub_url fixture serves with")


@pytest_asyncio.fixture(loop_scope="function")
async def serve_hub() -> AsyncIterator[Callable[..., Awaitable[tuple[Melody, str]]]]:
    """A factory: ``hub, url = await serve_hub(hub_or_none, **config_fields)``.

    Serves the hub (a new ``Melody(Config(**config_fields))`` when none is given) on 127.0.0.1
    port 0 and returns it with its ``ws://`` URL. Every hub served is closed at teardown and its
    sessions waited for (aborted after a second).
    """
    hubs: list[Melody] = []

    async def start(hub: Melody | None = None, **fields: Any) -> tuple[Melody, str]:
        if hub is None:
            hub = Melody(Config(**fields))
        server = await hub.serve(HOST, 0)
        hubs.append(hub)
        port = server.sockets[0].getsockname()[1]
        return hub, f"ws://{HOST}:{port}"

    yield start
    for hub in hubs:
        if not hub.is_closed():
            hub.close()
        await hub.wait_closed(timeout=1.0)


@pytest_asyncio.fixture(loop_scope="function")
async def hub_url(request: pytest.FixtureRequest,
                  serve_hub: Callable[..., Awaitable[tuple[Melody, str]]]) -> tuple[Melody, str]:
    """``(hub, url)``: a hub served on port 0, closed at teardown.

    Its Config comes from ``@pytest.mark.hub_config(**fields)`` when the test has one.
    Handlers may be registered on the hub after it started serving.
    """
    marker = request.node.get_closest_marker("hub_config")
    fields = dict(marker.kwargs) if marker else {}
    return await serve_hub(**fields)


@pytest_asyncio.fixture(loop_scope="function")
async def ws_connect() -> AsyncIterator[Callable[..., Awaitable[ClientConnection]]]:
    """A factory: ``ws = await ws_connect(url, **kwargs)`` opens a ``websockets`` client.

    Defaults: no proxy, no client keepalive pings (the hub's heartbeat is what is tested),
    short timeouts. Every client is closed at teardown.
    """
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
    """A factory: ``raw = await raw_connect(url, path="/", headers=None, upgrade=True)``.

    Opens a raw TCP connection (``e2e_support.RawClient``) to the hub at ``url``; with
    ``upgrade`` (the default) it completes the opening handshake. Aborted at teardown.
    """
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
