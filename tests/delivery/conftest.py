"""Fixtures for the delivery tests: hubs served on 127.0.0.1 port 0, closed at teardown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest_asyncio

from melody import Melody


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """A factory: ``url = await serve(hub, port=0)``; every hub is closed at teardown."""
    hubs: list[Melody] = []

    async def start(hub: Melody, port: int = 0) -> str:
        server = await hub.serve("127.0.0.1", port)
        hubs.append(hub)
        return f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"

    yield start
    for hub in hubs:
        if not hub.is_closed():
            hub.close()
        await hub.wait_closed(timeout=1.0)
