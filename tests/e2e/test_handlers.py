"""Every hub handler, sync and async, seen through a real ``websockets`` client."""

from __future__ import annotations

import asyncio

import pytest
from e2e_support import WAIT, Recorder, wait_until

from melody import Config, Melody

pytestmark = pytest.mark.asyncio


async def test_sync_handlers_see_a_whole_session_in_order(serve_hub, ws_connect) -> None:
    hub = Melody()
    rec = Recorder(hub, skip=("message", "message_binary"))

    @hub.handle_message
    def echo(session, msg):
        rec.events.append(("message", session, msg))
        session.write(msg.upper())

    @hub.handle_message_binary
    def echo_binary(session, msg):
        rec.events.append(("message_binary", session, msg))
        session.write_binary(msg[::-1])

    hub, url = await serve_hub(hub)
    ws = await ws_connect(url)
    await ws.send("héllo wörld")
    assert await asyncio.wait_for(ws.recv(), WAIT) == "HÉLLO WÖRLD"
    await ws.send(b"\x00\x01\x02\xff")
    assert await asyncio.wait_for(ws.recv(), WAIT) == b"\xff\x02\x01\x00"
    await ws.close()
    await rec.wait("disconnect")

    (session,) = rec.sessions("connect")
    assert [e[0] for e in rec.events] == [
        "connect", "message", "sent_message", "message_binary", "sent_message_binary",
        "close", "disconnect"]
    assert all(e[1] is session for e in rec.events)
    assert rec.of("message") == [("héllo wörld",)]
    assert rec.of("sent_message") == [("HÉLLO WÖRLD",)]
    assert rec.of("message_binary") == [(b"\x00\x01\x02\xff",)]
    assert type(rec.of("message_binary")[0][0]) is bytes
    assert rec.of("sent_message_binary") == [(b"\xff\x02\x01\x00",)]
    assert rec.of("close") == [(1000, "")]
    assert rec.errors() == []
    assert session.is_closed and session.close_code == 1000
    assert len(hub) == 0 and hub.sessions() == []


async def test_async_handlers_are_awaited(serve_hub, ws_connect) -> None:
    hub = Melody()
    events: list[tuple[str, object]] = []

    @hub.handle_connect
    async def on_connect(session):
        await asyncio.sleep(0)
        events.append(("connect", session))
        session.write("welcome")

    @hub.handle_message
    async def on_message(session, msg):
        await asyncio.sleep(0)
        events.append(("message", msg))
        session.write(f"echo:{msg}")

    @hub.handle_message_binary
    async def on_binary(session, msg):
        await asyncio.sleep(0)
        events.append(("binary", msg))
        session.write_binary(msg * 2)

    @hub.handle_sent_message
    async def on_sent(session, msg):
        events.append(("sent", msg))

    @hub.handle_sent_message_binary
    async def on_sent_binary(session, msg):
        events.append(("sent_binary", msg))

    @hub.handle_close
    async def on_close(session, code, reason):
        await asyncio.sleep(0)
        events.append(("close", (code, reason)))

    @hub.handle_disconnect
    async def on_disconnect(session):
        await asyncio.sleep(0)
        events.append(("disconnect", session))

    hub, url = await serve_hub(hub)
    ws = await ws_connect(url)
    assert await asyncio.wait_for(ws.recv(), WAIT) == "welcome"
    await ws.send("a")
    assert await asyncio.wait_for(ws.recv(), WAIT) == "echo:a"
    await ws.send(b"ab")
    assert await asyncio.wait_for(ws.recv(), WAIT) == b"abab"
    await ws.close(4001, "done")
    await wait_until(lambda: any(e[0] == "disconnect" for e in events), "async handle_disconnect")

    session = events[0][1]
    assert events == [
        ("connect", session), ("sent", "welcome"), ("message", "a"), ("sent", "echo:a"),
        ("binary", b"ab"), ("sent_binary", b"abab"), ("close", (4001, "done")),
        ("disconnect", session)]


async def test_handle_pong_runs_when_the_client_answers_the_heartbeat(serve_hub,
                                                                      ws_connect) -> None:
    hub, url = await serve_hub(ping_period=0.2, pong_wait=1.0)
    rec = Recorder(hub)
    ws = await ws_connect(url)  # websockets answers every ping by itself
    pongs = await rec.wait("pong", 2)
    (session,) = rec.sessions("connect")
    assert all(s is session for s in rec.sessions("pong"))
    assert len(pongs) >= 2
    assert not session.is_closed and rec.errors() == []
    await ws.send("still here")
    await rec.wait("message")


async def test_async_handle_pong(serve_hub, ws_connect) -> None:
    hub, url = await serve_hub(ping_period=0.2, pong_wait=1.0)
    seen: list[object] = []

    @hub.handle_pong
    async def on_pong(session):
        await asyncio.sleep(0)
        seen.append(session)

    await ws_connect(url)
    await wait_until(lambda: len(seen) >= 2, "two async pongs")
    assert seen[0] is seen[1]


async def test_handler_exceptions_go_to_handle_error_and_the_session_lives_on(
        serve_hub, ws_connect) -> None:
    hub = Melody()
    rec = Recorder(hub, skip=("message", "message_binary"))
    boom = ValueError("boom")
    aboom = KeyError("async boom")

    @hub.handle_message
    def on_message(session, msg):
        if msg == "raise":
            raise boom
        session.write(msg)

    @hub.handle_message_binary
    async def on_binary(session, msg):
        raise aboom

    hub, url = await serve_hub(hub)
    ws = await ws_connect(url)
    await ws.send("raise")
    await rec.wait("error")
    await ws.send(b"x")
    await rec.wait("error", 2)
    await ws.send("ok")
    assert await asyncio.wait_for(ws.recv(), WAIT) == "ok"

    (session,) = rec.sessions("connect")
    assert rec.of("error") == [(boom,), (aboom,)]
    assert rec.sessions("error") == [session, session]
    assert not session.is_closed


async def test_async_handle_error_is_awaited(serve_hub, ws_connect) -> None:
    hub = Melody()
    reported: list[BaseException] = []

    @hub.handle_message
    def on_message(session, msg):
        raise RuntimeError(msg)

    @hub.handle_error
    async def on_error(session, error):
        await asyncio.sleep(0)
        reported.append(error)

    hub, url = await serve_hub(hub)
    ws = await ws_connect(url)
    await ws.send("first")
    await ws.send("second")
    await wait_until(lambda: len(reported) == 2, "two async handle_error calls")
    assert [str(e) for e in reported] == ["first", "second"]


async def test_exception_in_handle_connect_is_reported(serve_hub, ws_connect) -> None:
    hub = Melody()
    rec = Recorder(hub, skip=("connect",))

    @hub.handle_connect
    def on_connect(session):
        raise LookupError("no room")

    hub, url = await serve_hub(hub)
    ws = await ws_connect(url)
    (error,) = [e for (e,) in await rec.wait("error")]
    assert isinstance(error, LookupError)
    await ws.send("after")
    assert await rec.wait("message") == [("after",)]


N_ORDERED = 8


async def test_async_handler_calls_of_one_session_run_in_arrival_order(serve_hub,
                                                                       ws_connect) -> None:
    hub = Melody()
    handled: list[int] = []
    active = 0
    most_active = 0

    @hub.handle_message
    async def slow_then_fast(session, msg):
        nonlocal active, most_active
        active += 1
        most_active = max(most_active, active)
        i = int(msg)
        # The first message sleeps longest: run concurrently, they would finish reversed.
        await asyncio.sleep(0.005 * (N_ORDERED - i))
        handled.append(i)
        active -= 1
        session.write(msg)

    hub, url = await serve_hub(hub)
    ws = await ws_connect(url)
    for i in range(N_ORDERED):
        await ws.send(str(i))
    replies = [await asyncio.wait_for(ws.recv(), WAIT) for _ in range(N_ORDERED)]
    assert handled == list(range(N_ORDERED))
    assert replies == [str(i) for i in range(N_ORDERED)]
    assert most_active == 1


async def test_sync_handler_waits_behind_pending_async_ones(serve_hub, ws_connect) -> None:
    # Text is handled by an async handler, binary by a sync one: the session's order holds.
    hub = Melody()
    handled: list[object] = []

    @hub.handle_message
    async def on_text(session, msg):
        await asyncio.sleep(0.01)
        handled.append(msg)

    @hub.handle_message_binary
    def on_binary(session, msg):
        handled.append(msg)

    hub, url = await serve_hub(hub)
    ws = await ws_connect(url)
    sent: list[object] = ["t0", b"b0", "t1", b"b1", b"b2", "t2", b"b3"]
    for msg in sent:
        await ws.send(msg)
    await wait_until(lambda: len(handled) == len(sent), "every message handled")
    assert handled == sent


async def test_concurrent_message_handling_runs_async_handlers_together(serve_hub,
                                                                        ws_connect) -> None:
    hub = Melody(Config(concurrent_message_handling=True))
    n = 5
    started: list[str] = []
    all_started = asyncio.Event()

    @hub.handle_message
    async def rendezvous(session, msg):
        started.append(msg)
        if len(started) == n:
            all_started.set()
        # Only returns once every call has begun: run one at a time, this would never end.
        await all_started.wait()
        session.write(f"done:{msg}")

    hub, url = await serve_hub(hub)
    ws = await ws_connect(url)
    for i in range(n):
        await ws.send(str(i))
    replies = {await asyncio.wait_for(ws.recv(), WAIT) for _ in range(n)}
    assert replies == {f"done:{i}" for i in range(n)}
    assert sorted(started) == [str(i) for i in range(n)]


async def test_without_concurrency_a_blocked_async_handler_holds_the_next_one(
        serve_hub, ws_connect) -> None:
    hub = Melody()
    started: list[str] = []
    release = asyncio.Event()

    @hub.handle_message
    async def gate(session, msg):
        started.append(msg)
        if msg == "first":
            await release.wait()
        session.write(msg)

    hub, url = await serve_hub(hub)
    ws = await ws_connect(url)
    await ws.send("first")
    await ws.send("second")
    await ws.send("ping")  # a round trip through the client's own ping proves both arrived
    await asyncio.wait_for(await ws.ping(), WAIT)
    await wait_until(lambda: started == ["first"], "first handler running")
    for _ in range(5):
        await asyncio.sleep(0)
    assert started == ["first"]
    release.set()
    replies = [await asyncio.wait_for(ws.recv(), WAIT) for _ in range(3)]
    assert replies == ["first", "second", "ping"]
    assert started == ["first", "second", "ping"]


async def test_a_backlog_of_async_calls_pauses_reading_and_loses_nothing(serve_hub,
                                                                        ws_connect) -> None:
    # With message_buffer_size=4 the hub stops reading a client whose async handler lags and
    # resumes as it catches up: every message is still handled, in order.
    hub = Melody(Config(message_buffer_size=4))
    handled: list[int] = []
    release = asyncio.Event()

    @hub.handle_message
    async def gated(session, msg):
        await release.wait()
        handled.append(int(msg))

    hub, url = await serve_hub(hub)
    ws = await ws_connect(url)
    n = 60
    for i in range(n):
        await ws.send(str(i))
    await wait_until(lambda: len(hub) == 1, "session registered")
    release.set()
    await wait_until(lambda: len(handled) == n, f"{n} messages handled")
    assert handled == list(range(n))
    await ws.send("60")
    await wait_until(lambda: handled[-1] == 60, "a message after the backlog")
