"""Graceful shutdown: ``await hub.shutdown(timeout)`` and SIGTERM/SIGINT on ``melody serve``."""

from __future__ import annotations

import asyncio
import signal
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_support import HOST, port_of, upgrade_request, wait_until
from prod_support import ServedCLI, echo
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from melody import Config, HubClosed, Melody, Session
from melody.middleware import CallNext, Handshake

pytestmark = pytest.mark.asyncio

Serve = Callable[..., Awaitable[tuple[Melody, str]]]
Connect = Callable[..., Awaitable[ClientConnection]]
Raw = Callable[..., Awaitable[Any]]


async def read_all(ws: ClientConnection, slow: bool = False) -> tuple[int, int | None]:
    """Read until the hub closes: (messages read, close code received)."""
    count = 0
    try:
        while True:
            await ws.recv()
            count += 1
            if slow and count % 50 == 0:
                await asyncio.sleep(0.002)  # a slow reader, but one that keeps reading
    except ConnectionClosed as exc:
        return count, exc.rcvd.code if exc.rcvd is not None else None


async def test_messages_accepted_before_shutdown_reach_every_reader(
        serve_hub: Serve, ws_connect: Connect) -> None:
    # Queues large enough that nothing is dropped: every broadcast below is *accepted*.
    hub = Melody(Config(message_buffer_size=100_000, message_buffer_bytes=1 << 30))
    disconnected: list[Session] = []
    hub.handle_disconnect(disconnected.append)
    _, url = await serve_hub(hub)
    n = 8
    clients = [await ws_connect(url, max_queue=4) for _ in range(n)]
    await wait_until(lambda: len(hub) == n, f"{n} sessions")
    readers = [asyncio.create_task(read_all(ws, slow=i % 3 == 0))
               for i, ws in enumerate(clients)]
    messages = 2000
    payload = "x" * 8000  # 16 MB per client: more than the kernel's socket buffers hold
    for i in range(messages):
        assert hub.broadcast(f"{i}:{payload}") == n
    # Much is still queued in melody (not yet handed to the sockets) when the shutdown starts.
    sessions = hub.sessions()
    assert sum(s.queued for s in sessions) > n * messages // 2
    await hub.shutdown(timeout=30)
    async with asyncio.timeout(30):
        results = await asyncio.gather(*readers)
    assert [count for count, _ in results] == [messages] * n
    assert [code for _, code in results] == [1001] * n
    assert sum(s.dropped for s in sessions) == 0
    assert hub.stats()["frames_dropped"] == 0
    assert len(disconnected) == n and len(hub) == 0


async def test_closes_go_out_in_batches(serve_hub: Serve, ws_connect: Connect) -> None:
    hub = echo(Melody())
    _, url = await serve_hub(hub)
    clients = [await ws_connect(url) for _ in range(6)]
    await wait_until(lambda: len(hub) == 6, "6 sessions")
    sessions = hub.sessions()

    def closing() -> int:
        return sum(s.is_closed for s in sessions)

    drain = asyncio.create_task(hub.shutdown(timeout=30, batch_size=2, batch_interval=1.0))
    seen = []
    for expected in (2, 4, 6):
        await wait_until(lambda e=expected: closing() >= e, f"{expected} sessions closing")  # type: ignore[misc]
        seen.append(closing())
    assert seen == [2, 4, 6]
    async with asyncio.timeout(30):
        await drain
    for ws in clients:
        async with asyncio.timeout(5):
            await ws.wait_closed()
        assert ws.close_code == 1001


async def test_batches_grow_to_fit_half_the_timeout(serve_hub: Serve, ws_connect: Connect) -> None:
    hub = echo(Melody())
    _, url = await serve_hub(hub)
    for _ in range(10):
        await ws_connect(url)
    await wait_until(lambda: len(hub) == 10, "10 sessions")
    sessions = hub.sessions()
    # 10 batches of 1 every 2 s would take 18 s; half of the 4 s timeout allows 2 batches.
    drain = asyncio.create_task(hub.shutdown(timeout=4, batch_size=1, batch_interval=2.0))
    await wait_until(lambda: any(s.is_closed for s in sessions), "the first batch")
    assert sum(s.is_closed for s in sessions) == 5
    async with asyncio.timeout(10):
        await drain
    assert len(hub) == 0


async def test_silent_peers_are_aborted_and_every_disconnect_handler_runs(
        serve_hub: Serve, ws_connect: Connect, raw_connect: Raw) -> None:
    hub = echo(Melody())
    finished: list[Session] = []

    @hub.handle_disconnect
    async def on_disconnect(session: Session) -> None:
        await asyncio.sleep(0.05)  # async work that shutdown waits for
        finished.append(session)

    _, url = await serve_hub(hub)
    polite = [await ws_connect(url) for _ in range(3)]
    silent = [await raw_connect(url) for _ in range(2)]  # never answer the close frame
    await wait_until(lambda: len(hub) == 5, "5 sessions")
    await hub.shutdown(timeout=1.0)
    assert len(hub) == 0
    assert len(finished) == 5
    for raw in silent:
        assert (await raw.expect_close())[0] == 1001
        await raw.expect_eof()
    for ws in polite:
        await ws.wait_closed()
        assert ws.close_code == 1001


async def test_shutdown_stops_accepting(serve_hub: Serve, raw_connect: Raw) -> None:
    hub = echo(Melody())
    gate = asyncio.Event()

    @hub.use
    async def slow(handshake: Handshake, call_next: CallNext) -> None:
        await gate.wait()
        await call_next(handshake)

    _, url = await serve_hub(hub)
    pending = await raw_connect(url, upgrade=False)
    pending.send(upgrade_request(port_of(url)))
    await asyncio.sleep(0.05)
    drain = asyncio.create_task(hub.shutdown(timeout=5))
    await wait_until(hub.is_closed, "shutdown started")
    with pytest.raises(HubClosed):
        hub.broadcast("late")
    with pytest.raises(OSError):
        async with asyncio.timeout(5):
            await asyncio.open_connection(HOST, port_of(url))
    gate.set()
    response = await pending.read_response()
    assert response.status == 503  # the upgrade in progress is refused
    async with asyncio.timeout(10):
        await drain


async def test_shutdown_after_close_and_twice(serve_hub: Serve, ws_connect: Connect) -> None:
    hub = echo(Melody())
    _, url = await serve_hub(hub)
    ws = await ws_connect(url)
    await wait_until(lambda: len(hub) == 1, "a session")
    hub.close()
    await hub.shutdown(timeout=2)
    await hub.shutdown(timeout=2)
    await ws.wait_closed()
    assert ws.close_code == 1000 and len(hub) == 0


APP = textwrap.dedent('''
    import sys
    import melody

    hub = melody.Melody()

    @hub.handle_message
    def echo(session, msg):
        session.write(msg)

    @hub.handle_disconnect
    def gone(session):
        print("disconnect", session.close_code, file=sys.stderr, flush=True)
''')


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_cli_signal_drains_and_exits_zero(tmp_path: Path, sig: int) -> None:
    (tmp_path / "drainapp.py").write_text(APP)
    served = await asyncio.to_thread(ServedCLI, ["serve", "drainapp:hub"], tmp_path)
    try:
        clients = [await connect(served.url, proxy=None) for _ in range(3)]
        for ws in clients:
            await ws.send("x")
            assert await ws.recv() == "x"
        code, log = await asyncio.to_thread(served.stop, sig)
        for ws in clients:
            async with asyncio.timeout(5):
                await ws.wait_closed()
            assert ws.close_code == 1001
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
    assert code == 0, log
    assert log.count("disconnect 1001") == 3, log
