"""The upgrade decision has a deadline: ``Config.handshake_timeout`` bounds the middleware chain
and an async ``handle_upgrade`` (or ``handle_http``), not only the client's request.

The hardening issue's case: ``ConnectionLimit(max_total=5)`` followed by a middleware that takes
"forever" (a JWKS lookup for an attacker-chosen ``kid``), a 1 s handshake timeout. Each stuck
upgrade must be cut off at its deadline: its task cancelled (the middleware's ``finally`` runs),
its ``on_close`` callbacks run once (the slot comes back), the client answered 504 if it is still
connected, the cut counted and reported; the next well-behaved client is accepted, not 503.

Also the bounds checked at construction by the shipped middleware (``melody.limits``). Real
servers on 127.0.0.1 port 0, real clients, on asyncio and on uvloop; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
import uvicorn
from e2e_support import WAIT, RawClient, port_of, upgrade_request, wait_until
from prod_support import echo
from websockets.asyncio.client import ClientConnection

from melody import Config, HandshakeTimeout, Melody, Session
from melody._hubstate import state_of
from melody.handshake import Request
from melody.middleware import MAX_LEEWAY, AccessLog, CallNext, ConnectionLimit, Handshake, JWTAuth
from melody.server import upgrader_of

Serve = Callable[..., Awaitable[tuple[Melody, str]]]
Connect = Callable[..., Awaitable[ClientConnection]]

#: The deadline of these tests (the issue's): short, so that a test waits about a second.
DEADLINE = 1.0
#: Upgrades sent to a path other than this one get stuck.
OK_PATH = "/ok"


class Stuck:
    """A middleware that never decides (the JWKS lookup that never answers), except for
    requests to ``OK_PATH``. Counts the upgrades it holds and those whose ``finally`` ran."""

    def __init__(self) -> None:
        self.forever = asyncio.Event()  # never set by these tests: "sleeps 12 s", for ever
        self.entered = 0
        self.unwound = 0

    async def __call__(self, handshake: Handshake, call_next: CallNext) -> None:
        if handshake.request.path != OK_PATH:
            self.entered += 1
            try:
                await self.forever.wait()
            finally:
                self.unwound += 1
        await call_next(handshake)


def record_errors(hub: Melody) -> list[BaseException]:
    errors: list[BaseException] = []

    @hub.handle_error
    def on_error(session: Session | None, error: BaseException) -> None:
        errors.append(error)

    return errors


async def send_stuck(url: str, count: int, path: str = "/jwks-slow") -> list[RawClient]:
    """Open ``count`` raw clients and send each an upgrade request that will get stuck."""
    port = port_of(url)
    clients = []
    for _ in range(count):
        client = await RawClient.open(port)
        client.send(upgrade_request(port, path))
        clients.append(client)
    return clients


async def answer_or_drop(client: RawClient) -> int | None:
    """The status the server answered, or None if it dropped the connection without one.
    Waits at most WAIT seconds (then fails)."""
    try:
        return (await client.read_response()).status
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def decision_tasks() -> list[asyncio.Task[Any]]:
    """Tasks still deciding a request (the Upgrader's), on this loop."""
    return [t for t in asyncio.all_tasks()
            if not t.done() and t.get_coro().__qualname__.startswith("Upgrader.")]  # type: ignore[union-attr]


async def assert_nothing_left(hub: Melody) -> None:
    await wait_until(lambda: not decision_tasks(), "no decision task left")
    assert upgrader_of(hub).stats()["decisions_pending"] == 0


async def echo_once(ws: ClientConnection) -> None:
    async with asyncio.timeout(WAIT):
        await ws.send("still serving")
        assert await ws.recv() == "still serving"


# -- the middleware chain -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_stuck_middleware_gives_back_its_connection_limit_slots_at_the_deadline(
        serve_hub: Serve, ws_connect: Connect) -> None:
    hub = echo(Melody(Config(handshake_timeout=DEADLINE)))
    limit = ConnectionLimit(max_total=5)
    stuck = Stuck()
    hub.use(limit)
    hub.use(stuck)
    errors = record_errors(hub)
    _, url = await serve_hub(hub)
    clients = await send_stuck(url, 5)
    await wait_until(lambda: stuck.entered == 5, "five upgrades stuck in the middleware")
    assert limit.active == 5
    # Each is cut off at its deadline and answered 504 (the core's own handshake timer is only a
    # backstop a second later); never 503.
    for client in clients:
        assert await answer_or_drop(client) == 504
        client.close()
    await wait_until(lambda: limit.active == 0, "the five slots given back")
    await wait_until(lambda: stuck.unwound == 5, "the stuck middleware's finally ran")
    # The sixth, well-behaved client is accepted (101), not refused with 503.
    ws = await ws_connect(url + OK_PATH)
    await echo_once(ws)
    assert limit.active == 1
    assert upgrader_of(hub).upgrade_deadline_exceeded == 5
    assert hub.stats()["upgrade_deadline_exceeded"] == 5  # and in the hub's stats
    assert [(type(e), getattr(e, "status", None)) for e in errors] == [(HandshakeTimeout, 504)] * 5
    assert "handshake_timeout (1s)" in str(errors[0])
    await ws.close()
    await wait_until(lambda: limit.active == 0, "the sixth slot given back at disconnect")
    await assert_nothing_left(hub)


@pytest.mark.asyncio
async def test_a_middleware_that_swallows_the_cancellation_still_gives_its_slot_back_once(
        serve_hub: Serve) -> None:
    hub = Melody(Config(handshake_timeout=DEADLINE))
    limit = ConnectionLimit(max_total=1)
    late = asyncio.Event()
    swallowed = []

    async def stubborn(handshake: Handshake, call_next: CallNext) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.append(handshake)  # wrong, but it happens: it goes on regardless
            await late.wait()
        await call_next(handshake)

    hub.use(limit)
    hub.use(stubborn)
    _, url = await serve_hub(hub)
    try:
        [client] = await send_stuck(url, 1)
        await wait_until(lambda: limit.active == 1, "slot taken")
        assert await answer_or_drop(client) == 504
        client.close()
        # The slot comes back at the deadline although the chain has not finished...
        await wait_until(lambda: limit.active == 0 and len(swallowed) == 1, "slot given back")
        assert len(decision_tasks()) == 1
        # ... and the chain's late success changes nothing: no session, no second release.
        late.set()
        await wait_until(lambda: not decision_tasks(), "the late chain finished")
        assert limit.active == 0 and len(hub) == 0
        assert upgrader_of(hub).upgrade_deadline_exceeded == 1
    finally:
        late.set()  # so that the loop's teardown can end the stubborn task whatever happened


@pytest.mark.asyncio
async def test_a_client_that_leaves_mid_decision_frees_its_slot_by_the_deadline(
        serve_hub: Serve) -> None:
    # Reading is paused while the chain decides, so the server learns of the client's leaving
    # no earlier than the deadline; by then the chain is cancelled and the slot is back.
    hub = Melody(Config(handshake_timeout=DEADLINE))
    limit = ConnectionLimit(max_total=5)
    stuck = Stuck()
    hub.use(limit)
    hub.use(stuck)
    _, url = await serve_hub(hub)
    [client] = await send_stuck(url, 1)
    await wait_until(lambda: limit.active == 1, "slot taken")
    client.close()
    await wait_until(lambda: limit.active == 0 and stuck.unwound == 1,
                     "slot given back and the chain cancelled")
    await assert_nothing_left(hub)


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["shutdown", "close"])
async def test_shutdown_ends_upgrades_in_progress_with_503_and_frees_their_slots(
        serve_hub: Serve, how: str) -> None:
    # A deadline far away: what ends the chain here is the graceful shutdown, or hub.close()
    # (Go's Close) without one.
    hub = Melody(Config(handshake_timeout=60.0))
    limit = ConnectionLimit(max_total=5)
    stuck = Stuck()
    hub.use(limit)
    hub.use(stuck)
    _, url = await serve_hub(hub)
    [client] = await send_stuck(url, 1)
    await wait_until(lambda: limit.active == 1, "slot taken")
    if how == "shutdown":
        async with asyncio.timeout(WAIT):
            await hub.shutdown(timeout=2.0)
    else:
        hub.close()
    assert limit.active == 0
    assert hub.stats()["decisions_pending"] == 0
    assert await answer_or_drop(client) == 503
    client.close()
    await wait_until(lambda: stuck.unwound == 1, "the stuck middleware's finally ran")
    await assert_nothing_left(hub)
    assert upgrader_of(hub).upgrade_deadline_exceeded == 0


@pytest.mark.asyncio
async def test_access_log_records_the_cut_off_upgrade(serve_hub: Serve,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="melody.access")
    hub = Melody(Config(handshake_timeout=DEADLINE))
    hub.use(AccessLog())
    hub.use(Stuck())
    _, url = await serve_hub(hub)
    [client] = await send_stuck(url, 1)
    assert await answer_or_drop(client) == 504
    client.close()

    def logged() -> list[tuple[Any, ...]]:
        return [(r.outcome, r.status, r.levelno)  # type: ignore[attr-defined]
                for r in caplog.records if r.name == "melody.access"]

    await wait_until(lambda: bool(logged()), "the access log record")
    assert logged() == [("timeout", 504, logging.WARNING)]


# -- async hooks without middleware ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_async_upgrade_hook_that_never_returns_is_cut_off_at_the_deadline(
        serve_hub: Serve, ws_connect: Connect) -> None:
    hub = echo(Melody(Config(handshake_timeout=DEADLINE)))
    forever = asyncio.Event()
    unwound = []

    @hub.handle_upgrade
    async def upgrade(request: Request) -> bool:
        if request.path != OK_PATH:
            try:
                await forever.wait()
            finally:
                unwound.append(request.path)
        return True

    errors = record_errors(hub)
    _, url = await serve_hub(hub)
    assert not state_of(hub).middleware  # the no-middleware path (Upgrader._await_hook)
    clients = await send_stuck(url, 5)
    for client in clients:
        assert await answer_or_drop(client) == 504
        client.close()
    await wait_until(lambda: len(unwound) == 5, "the hook's finally ran for each")
    ws = await ws_connect(url + OK_PATH)
    await echo_once(ws)
    assert upgrader_of(hub).upgrade_deadline_exceeded == 5
    assert [getattr(e, "status", None) for e in errors] == [504] * 5
    await ws.close()
    await assert_nothing_left(hub)


@pytest.mark.asyncio
async def test_an_async_http_hook_that_never_returns_is_cut_off_at_the_deadline(
        serve_hub: Serve) -> None:
    hub = Melody(Config(handshake_timeout=DEADLINE))
    unwound = []

    @hub.handle_http
    async def page(request: Request) -> str:
        try:
            await asyncio.Event().wait()
        finally:
            unwound.append(request.path)
        return "never"

    _, url = await serve_hub(hub)
    client = await RawClient.open(port_of(url))
    client.send(f"GET /page HTTP/1.1\r\nHost: {url[5:]}\r\n\r\n".encode())
    assert await answer_or_drop(client) == 504
    client.close()
    await wait_until(lambda: unwound == ["/page"], "the hook's finally ran")
    assert upgrader_of(hub).http_deadline_exceeded == 1
    assert upgrader_of(hub).upgrade_deadline_exceeded == 0
    await assert_nothing_left(hub)


# -- the ASGI path --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def uvicorn_serving(hub: Melody) -> AsyncIterator[int]:
    """Serve ``hub.asgi`` with uvicorn on 127.0.0.1 port 0; yield the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(hub.asgi, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_until(lambda: server.started or task.done(), "uvicorn to start")
        assert server.started, task
        yield sock.getsockname()[1]
    finally:
        if not hub.is_closed():
            hub.close()
        await hub.wait_closed(timeout=2.0)
        server.should_exit = True
        async with asyncio.timeout(WAIT):
            await task
        sock.close()


@pytest.mark.asyncio
async def test_the_asgi_path_has_the_same_deadline_and_answers_504(
        ws_connect: Connect, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="melody.access")
    hub = echo(Melody(Config(handshake_timeout=DEADLINE)))
    limit = ConnectionLimit(max_total=2)
    stuck = Stuck()
    hub.use(AccessLog())
    hub.use(limit)
    hub.use(stuck)
    errors = record_errors(hub)
    async with uvicorn_serving(hub) as port:
        url = f"ws://127.0.0.1:{port}"
        clients = await send_stuck(url, 2)
        await wait_until(lambda: limit.active == 2, "both slots taken")
        # The ASGI server keeps the connection open: the client gets the 504 itself.
        for client in clients:
            assert await answer_or_drop(client) == 504
            client.close()
        assert limit.active == 0 and stuck.unwound == 2
        ws = await ws_connect(url + OK_PATH)
        await echo_once(ws)
        await ws.close()
    assert upgrader_of(hub).upgrade_deadline_exceeded == 2
    assert [getattr(e, "status", None) for e in errors] == [504] * 2
    assert [(r.outcome, r.status) for r in caplog.records  # type: ignore[attr-defined]
            if r.name == "melody.access"] == [("timeout", 504)] * 2 + [("accepted", 101)]


# -- bounds checked at construction ---------------------------------------------------------------

EXTREMES = [0, 1, 2**31, 2**32, 2**53, 2**63 - 1, sys.maxsize]
NOT_NUMBERS: list[Any] = [True, False, math.nan, math.inf, -math.inf, "5"]


@pytest.mark.parametrize("value", EXTREMES)
@pytest.mark.parametrize("field", ["max_total", "max_per_ip"])
def test_connection_limit_counts_are_bounded_1_to_2_31(field: str, value: int) -> None:
    kwargs: dict[str, Any] = {field: value}
    if 1 <= value <= 2**31:
        assert getattr(ConnectionLimit(**kwargs), field) == value
    else:
        refused = f"ConnectionLimit {field} must be 1..2147483648"
        with pytest.raises(ValueError, match=re.escape(refused)):
            ConnectionLimit(**kwargs)


@pytest.mark.parametrize("value", EXTREMES)
def test_connection_limit_retry_after_is_bounded_0_to_30_days(value: int) -> None:
    if value <= 30 * 24 * 3600:
        assert ConnectionLimit(max_total=1, retry_after=value).retry_after == value
    else:
        with pytest.raises(ValueError, match=re.escape("retry_after must be 0..2592000")):
            ConnectionLimit(max_total=1, retry_after=value)


@pytest.mark.parametrize("value", EXTREMES)
def test_jwt_leeway_is_bounded_0_to_a_day(value: int) -> None:
    if value <= MAX_LEEWAY:
        assert JWTAuth("k" * 32, algorithms=["HS256"], leeway=value).leeway == value
    else:
        with pytest.raises(ValueError, match="leeway must be at most 86400 seconds"):
            JWTAuth("k" * 32, algorithms=["HS256"], leeway=value)


@pytest.mark.parametrize("value", [*NOT_NUMBERS, -1, 2.5])
def test_connection_limit_refuses_what_is_not_a_count(value: Any) -> None:
    for kwargs in ({"max_total": value}, {"max_per_ip": value},
                   {"max_total": 1, "retry_after": value}):
        with pytest.raises(ValueError, match="must be"):
            ConnectionLimit(**kwargs)


@pytest.mark.parametrize("value", [*NOT_NUMBERS, None, -1, -0.5])
def test_jwt_leeway_refuses_what_is_not_a_duration(value: Any) -> None:
    with pytest.raises(ValueError, match="leeway"):
        JWTAuth("k" * 32, algorithms=["HS256"], leeway=value)


def test_jwt_leeway_edges_and_timedelta() -> None:
    assert JWTAuth("k" * 32, algorithms=["HS256"], leeway=MAX_LEEWAY).leeway == MAX_LEEWAY
    assert JWTAuth("k" * 32, algorithms=["HS256"], leeway=timedelta(minutes=2)).leeway == 120
    for too_long in (MAX_LEEWAY + 0.5, timedelta(days=2)):
        with pytest.raises(ValueError, match="leeway"):
            JWTAuth("k" * 32, algorithms=["HS256"], leeway=too_long)


def test_connection_limit_needs_a_limit() -> None:
    with pytest.raises(ValueError, match="max_total, max_per_ip or both"):
        ConnectionLimit()
