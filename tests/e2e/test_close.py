"""The closing handshake from both sides (RFC 6455 sections 5.5.1 and 7), and TCP dropping."""

from __future__ import annotations

import asyncio

import pytest
from e2e_support import WAIT, Recorder
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from melody._core.frames import OP_TEXT

pytestmark = pytest.mark.asyncio


async def test_client_normal_close_1000(hub_url, ws_connect) -> None:
    hub, url = hub_url
    rec = Recorder(hub)
    ws = await ws_connect(url)
    await rec.wait("connect")
    await ws.close()
    assert ws.close_code == 1000  # the hub echoed the code
    await rec.wait("disconnect")
    (session,) = rec.sessions("connect")
    assert rec.of("close") == [(1000, "")]
    assert session.close_code == 1000 and session.close_reason == ""
    assert [e[0] for e in rec.events][-2:] == ["close", "disconnect"]
    assert rec.errors() == []


async def test_client_close_code_and_reason_reach_handle_close(hub_url, ws_connect) -> None:
    hub, url = hub_url
    rec = Recorder(hub)
    ws = await ws_connect(url)
    await rec.wait("connect")
    await ws.close(4000, "bye for now ✓")
    assert ws.close_code == 4000
    await rec.wait("disconnect")
    (session,) = rec.sessions("connect")
    assert rec.of("close") == [(4000, "bye for now ✓")]
    assert session.close_code == 4000
    assert session.close_reason == "bye for now ✓"
    assert len(hub) == 0


async def test_close_frame_without_a_code_is_1005_and_echoed_empty(hub_url,
                                                                    raw_connect) -> None:
    hub, url = hub_url
    rec = Recorder(hub)
    raw = await raw_connect(url)
    raw.send_close(0)  # an empty close payload
    frame = await raw.recv_data()
    assert frame.payload == b""  # section 5.5.1: no code received, none echoed
    await raw.expect_eof()
    await rec.wait("disconnect")
    assert rec.of("close") == [(1005, "")]
    assert rec.sessions("connect")[0].close_code == 1005


async def test_the_server_echoes_the_close_and_drops_tcp_first(hub_url, raw_connect) -> None:
    hub, url = hub_url
    rec = Recorder(hub)
    raw = await raw_connect(url)
    raw.send_close(3001, "app done")
    assert await raw.expect_close() == (3001, "")
    await raw.expect_eof()  # section 7.1.1: the server closes TCP without waiting
    await rec.wait("disconnect")
    assert rec.of("close") == [(3001, "app done")]


async def test_abrupt_tcp_drop_is_a_disconnect_with_1006(hub_url, ws_connect) -> None:
    hub, url = hub_url
    rec = Recorder(hub)
    ws = await ws_connect(url)
    await rec.wait("connect")
    ws.transport.abort()
    await rec.wait("disconnect")
    (session,) = rec.sessions("connect")
    assert session.close_code == 1006 and session.is_closed
    assert rec.of("close") == []
    assert len(hub) == 0 and hub.sessions() == []


async def test_raw_tcp_drop_and_half_close_are_1006(hub_url, raw_connect) -> None:
    hub, url = hub_url
    rec = Recorder(hub)
    dropped = await raw_connect(url)
    half = await raw_connect(url)
    await rec.wait("connect", 2)
    dropped.close()
    half.writer.write_eof()  # FIN without a close frame
    await half.expect_eof()
    await rec.wait("disconnect", 2)
    assert [s.close_code for s in rec.sessions("disconnect")] == [1006, 1006]
    assert rec.of("close") == []


async def test_messages_after_the_servers_close_are_not_delivered(hub_url, raw_connect) -> None:
    hub, url = hub_url
    rec = Recorder(hub)
    raw = await raw_connect(url)
    await rec.wait("connect")
    (session,) = rec.sessions("connect")
    session.close_with_msg(4002, "closing")
    # The client has not read the close yet: its message crosses ours (section 1.4).
    raw.send_frame(OP_TEXT, b"too late")
    assert await raw.expect_close() == (4002, "closing")
    raw.send_close(4002)
    await raw.expect_eof()
    await rec.wait("disconnect")
    assert rec.of("message") == []
    assert session.close_code == 4002


async def test_a_client_that_never_answers_the_close_is_dropped_after_close_timeout(
        serve_hub, raw_connect) -> None:
    hub, url = await serve_hub(close_timeout=0.3)
    rec = Recorder(hub)
    raw = await raw_connect(url)
    await rec.wait("connect")
    (session,) = rec.sessions("connect")
    session.close_with_msg(1001, "going away")
    assert await raw.expect_close() == (1001, "going away")
    assert len(hub) == 1  # still counted while the handshake is open
    await raw.expect_eof()  # nothing answered: TCP is dropped
    await rec.wait("disconnect")
    assert len(hub) == 0


async def test_hub_close_waits_for_clients_then_wait_closed_returns(serve_hub,
                                                                   ws_connect) -> None:
    hub, url = await serve_hub()
    rec = Recorder(hub)
    clients = [await ws_connect(url) for _ in range(3)]
    await rec.wait("connect", 3)
    hub.close()
    await asyncio.wait_for(hub.wait_closed(timeout=WAIT), WAIT + 1)
    assert len(hub) == 0
    for ws in clients:
        with pytest.raises(ConnectionClosedOK):
            await asyncio.wait_for(ws.recv(), WAIT)
    assert len(rec.of("disconnect")) == 3
    assert all(s.close_code == 1000 for s in rec.sessions("disconnect"))


async def test_client_close_while_server_sends(hub_url, ws_connect) -> None:
    # Messages queued before the client's close still arrive before its echo.
    hub, url = hub_url
    rec = Recorder(hub)
    ws = await ws_connect(url)
    await rec.wait("connect")
    (session,) = rec.sessions("connect")
    for i in range(20):
        session.write(str(i))
    got = [await asyncio.wait_for(ws.recv(), WAIT) for _ in range(20)]
    assert got == [str(i) for i in range(20)]
    await ws.close(1000)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), WAIT)
    await rec.wait("disconnect")


async def test_a_closing_session_stays_listed_until_the_peer_answers(hub_url,
                                                                     raw_connect) -> None:
    # Session.close_with_msg documents: "The session stays in sessions() until the peer answers
    # (or close_timeout passes); handle_disconnect runs then." len(hub) agrees; sessions() must.
    hub, url = hub_url
    rec = Recorder(hub)
    raw = await raw_connect(url)
    await rec.wait("connect")
    (session,) = rec.sessions("connect")
    session.close_with_msg(4000, "closing")
    assert await raw.expect_close() == (4000, "closing")
    assert len(hub) == 1
    assert session in hub.sessions(), "a closing session vanished from sessions() early"
    assert len(hub.sessions()) == len(hub)
    raw.send_close(4000)
    await rec.wait("disconnect")
    assert hub.sessions() == [] and len(hub) == 0


@pytest.mark.parametrize("async_decision", [False, True])
async def test_a_session_closed_in_handle_connect_reads_the_peers_close_reply(
        serve_hub, ws_connect, async_decision: bool) -> None:
    # With an async upgrade decision (a middleware) reading is paused until the session
    # starts; a session that handle_connect already closed must still read the peer's close
    # reply, or it waits close_timeout (set far beyond the test's bound here) for nothing.
    import melody

    hub = melody.Melody(melody.Config(close_timeout=60.0))
    if async_decision:
        async def passthrough(handshake, call_next) -> None:
            await asyncio.sleep(0)
            await call_next(handshake)

        hub.use(passthrough)
    closes: list[int] = []
    hub.handle_connect(lambda session: session.close_with_msg(1000, "not today"))
    hub.handle_disconnect(lambda session: closes.append(session.close_code))
    _, url = await serve_hub(hub)
    ws = await ws_connect(url)
    async with asyncio.timeout(WAIT):
        await ws.wait_closed()
        while not closes:
            await asyncio.sleep(0.01)
    assert ws.close_code == 1000 and ws.close_reason == "not today"
    assert closes == [1000]
