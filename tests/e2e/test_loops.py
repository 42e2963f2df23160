"""The e2e suite really runs each test on both event loops."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.asyncio


async def test_each_test_runs_on_the_loop_its_id_names(request: pytest.FixtureRequest) -> None:
    loop = asyncio.get_running_loop()
    if request.node.callspec.id.endswith("uvloop"):
        import uvloop

        assert isinstance(loop, uvloop.Loop)
    else:
        assert request.node.callspec.id.endswith("asyncio")
        assert type(loop).__module__.startswith("asyncio")


async def test_hub_fixture_serves_on_port_zero(hub_url, ws_connect) -> None:
    hub, url = hub_url
    assert url.startswith("ws://127.0.0.1:") and not url.endswith(":0")
    assert hub.sessions() == [] and len(hub) == 0
    ws = await ws_connect(url)
    await ws.send("hi")
    async with asyncio.timeout(5):
        while len(hub) != 1:
            await asyncio.sleep(0.005)
    assert hub.sessions()[0].request.path == "/"
