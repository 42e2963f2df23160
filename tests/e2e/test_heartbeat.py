"""The hub's heartbeat: pings every ``ping_period``; a peer silent for ``pong_wait`` is dropped."""

from __future__ import annotations

import asyncio

import pytest
from e2e_support import Recorder, wait_until

from melody._core.frames import OP_PING, OP_PONG, OP_TEXT
from melody.errors import PongTimeout

FAST = {"ping_period": 0.1, "pong_wait": 0.4}

pytestmark = [pytest.mark.asyncio, pytest.mark.hub_config(**FAST)]


async def test_a_silent_raw_client_is_dropped_after_pong_wait(hub_url, ws_connect,
                                                              raw_connect) -> None:
    hub, url = hub_url
    rec = Recorder(hub)
    healthy = await ws_connect(url)
    raw = await raw_connect(url)  # never answers a ping, never sends anything
    await rec.wait("connect", 2)
    silent = rec.sessions("connect")[1]

    await rec.wait("disconnect")
    assert rec.sessions("disconnect") == [silent]
    (error,) = rec.errors()
    assert isinstance(error, PongTimeout)
    assert rec.sessions("error") == [silent]
    assert silent.is_closed and silent.close_code == 1006
    # The raw client was pinged before it was dropped, and then saw TCP close.
    first = await raw.recv_frame()
    assert first.opcode == OP_PING
    with pytest.raises((asyncio.IncompleteReadError, ConnectionResetError)):
        while True:
            await raw.recv_frame()
    assert hub.sessions() != [] and silent not in hub.sessions()
    await healthy.send("alive")
    await rec.wait("message")


async def test_a_websockets_client_survives_several_pong_waits(hub_url, ws_connect) -> None:
    hub, url = hub_url
    rec = Recorder(hub)
    ws = await ws_connect(url)  # answers every ping by itself
    await rec.wait("connect")
    (session,) = rec.sessions("connect")
    # Ten pongs span well over two pong_wait periods of nothing but heartbeat traffic.
    await rec.wait("pong", 10)
    assert not session.is_closed
    assert rec.errors() == [] and rec.of("disconnect") == []
    await ws.send("still here")
    assert await rec.wait("message") == [("still here",)]


async def test_a_raw_client_answering_pings_stays(hub_url, raw_connect) -> None:
    hub, url = hub_url
    rec = Recorder(hub)
    raw = await raw_connect(url)
    await rec.wait("connect")
    # Six pings come at least ping_period apart: longer than pong_wait in all.
    for _ in range(6):
        ping = await raw.recv_frame()
        assert ping.opcode == OP_PING and ping.fin
        raw.send_frame(OP_PONG, ping.payload)
    await rec.wait("pong", 6)
    assert rec.errors() == [] and rec.of("disconnect") == []


async def test_any_traffic_counts_as_a_sign_of_life(hub_url, raw_connect) -> None:
    # melody counts any inbound frame (not only pongs) as life: messages keep a peer that
    # never answers pings alive.
    hub, url = hub_url
    rec = Recorder(hub)
    raw = await raw_connect(url)
    await rec.wait("connect")
    pings = 0
    while pings < 6:
        frame = await raw.recv_frame()
        assert frame.opcode == OP_PING
        pings += 1
        raw.send_frame(OP_TEXT, str(pings).encode())
    await rec.wait("message", 6)
    assert rec.errors() == [] and rec.of("disconnect") == []


async def test_a_client_that_stops_answering_is_dropped(hub_url, ws_connect) -> None:
    hub, url = hub_url
    rec = Recorder(hub)
    ws = await ws_connect(url)
    await rec.wait("pong", 2)
    # Stop reading: the client's pongs stop with it.
    ws.transport.pause_reading()
    await rec.wait("disconnect")
    (error,) = rec.errors()
    assert isinstance(error, PongTimeout)
    await wait_until(lambda: len(hub) == 0, "hub empty")
    ws.transport.abort()
