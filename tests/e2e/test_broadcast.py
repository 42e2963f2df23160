"""Every broadcast variant with five real clients: who receives what, how often, what it returns.

To prove that a client did *not* receive a message, every test ends with a fence: one last
broadcast to all. A connection delivers in order, so whatever a client read before the fence is
exactly what it was sent.
"""

from __future__ import annotations

import asyncio

import pytest
from e2e_support import WAIT, Recorder, wait_until
from websockets.exceptions import ConnectionClosed

from melody import Melody
from melody.errors import HubClosed

pytestmark = pytest.mark.asyncio

N = 5
FENCE = "--fence--"


class Room:
    """N websockets clients on one hub; ``sessions[i]`` is the session of ``clients[i]``."""

    def __init__(self, hub, clients, sessions, recorder):
        self.hub = hub
        self.clients = clients
        self.sessions = sessions
        self.rec = recorder

    async def received(self) -> list[list[object]]:
        """Broadcast the fence; return what each client got before it, in client order."""
        assert self.hub.broadcast(FENCE) == len([s for s in self.sessions if not s.is_closed])
        out = []
        for ws in self.clients:
            got = []
            async with asyncio.timeout(WAIT):
                while (msg := await ws.recv()) != FENCE:
                    got.append(msg)
            out.append(got)
        return out


async def open_room(hub_url, ws_connect, n: int = N) -> Room:
    hub, url = hub_url
    rec = Recorder(hub)
    clients = []
    for i in range(n):
        clients.append(await ws_connect(f"{url}/room?id={i}"))
    await rec.wait("connect", n)
    by_id = {s.request.query_params["id"][0]: s for s in rec.sessions("connect")}
    sessions = [by_id[str(i)] for i in range(n)]
    return Room(hub, clients, sessions, rec)


def ident(session) -> int:
    return int(session.request.query_params["id"][0])


async def test_broadcast_reaches_every_session_once(hub_url, ws_connect) -> None:
    room = await open_room(hub_url, ws_connect)
    assert room.hub.broadcast("hello all") == N
    assert room.hub.broadcast("ünïcode ✓") == N
    assert await room.received() == [["hello all", "ünïcode ✓"]] * N


async def test_broadcast_binary_reaches_every_session_once(hub_url, ws_connect) -> None:
    room = await open_room(hub_url, ws_connect)
    assert room.hub.broadcast_binary(b"\x00\x01") == N
    assert room.hub.broadcast_binary(bytearray(b"ba")) == N
    assert room.hub.broadcast_binary(memoryview(b"xmvx")[1:3]) == N
    got = await room.received()
    assert got == [[b"\x00\x01", b"ba", b"mv"]] * N
    assert all(type(m) is bytes for msgs in got for m in msgs)


async def test_broadcast_filter_sends_only_where_the_predicate_holds(hub_url,
                                                                     ws_connect) -> None:
    room = await open_room(hub_url, ws_connect)
    asked = []

    def odd(session):
        asked.append(ident(session))
        return ident(session) % 2 == 1

    assert room.hub.broadcast_filter("odd", odd) == 2
    assert sorted(asked) == list(range(N))
    assert room.hub.broadcast_filter("none", lambda s: False) == 0
    assert await room.received() == [[], ["odd"], [], ["odd"], []]


async def test_broadcast_binary_filter(hub_url, ws_connect) -> None:
    room = await open_room(hub_url, ws_connect)
    assert room.hub.broadcast_binary_filter(b"lo", lambda s: ident(s) < 2) == 2
    assert await room.received() == [[b"lo"], [b"lo"], [], [], []]


async def test_broadcast_others_skips_the_given_session(hub_url, ws_connect) -> None:
    room = await open_room(hub_url, ws_connect)
    assert room.hub.broadcast_others("not for 2", room.sessions[2]) == N - 1
    assert await room.received() == [["not for 2"]] * 2 + [[]] + [["not for 2"]] * 2


async def test_broadcast_binary_others(hub_url, ws_connect) -> None:
    room = await open_room(hub_url, ws_connect)
    assert room.hub.broadcast_binary_others(b"\xfe", room.sessions[0]) == N - 1
    assert await room.received() == [[]] + [[b"\xfe"]] * (N - 1)


async def test_broadcast_multiple_sends_to_exactly_those_sessions(hub_url, ws_connect) -> None:
    room = await open_room(hub_url, ws_connect)
    chosen = [room.sessions[4], room.sessions[1]]
    assert room.hub.broadcast_multiple("picked", chosen) == 2
    assert room.hub.broadcast_multiple("nobody", []) == 0
    assert room.hub.broadcast_multiple("gen", (s for s in room.sessions if ident(s) == 3)) == 1
    assert await room.received() == [[], ["picked"], [], ["gen"], ["picked"]]


async def test_broadcast_binary_multiple(hub_url, ws_connect) -> None:
    room = await open_room(hub_url, ws_connect)
    assert room.hub.broadcast_binary_multiple(b"m", room.sessions[1:3]) == 2
    assert await room.received() == [[], [b"m"], [b"m"], [], []]


async def test_every_variant_in_one_sequence(hub_url, ws_connect) -> None:
    room = await open_room(hub_url, ws_connect)
    hub, s = room.hub, room.sessions
    assert hub.broadcast("a") == 5
    assert hub.broadcast_filter("b", lambda x: ident(x) >= 3) == 2
    assert hub.broadcast_others("c", s[3]) == 4
    assert hub.broadcast_multiple("d", [s[0]]) == 1
    assert hub.broadcast_binary(b"A") == 5
    assert hub.broadcast_binary_filter(b"B", lambda x: ident(x) == 1) == 1
    assert hub.broadcast_binary_others(b"C", s[4]) == 4
    assert hub.broadcast_binary_multiple(b"D", [s[2], s[3]]) == 2
    assert await room.received() == [
        ["a", "c", "d", b"A", b"C"],
        ["a", "c", b"A", b"B", b"C"],
        ["a", "c", b"A", b"C", b"D"],
        ["a", "b", b"A", b"C", b"D"],
        ["a", "b", "c", b"A"],
    ]


def sent_log(room: Room, binary: bool = False) -> list[tuple[int, object]]:
    name = "sent_message_binary" if binary else "sent_message"
    return sorted((ident(e[1]), e[2]) for e in room.rec.events if e[0] == name)


async def test_handle_sent_message_runs_once_per_recipient(hub_url, ws_connect) -> None:
    room = await open_room(hub_url, ws_connect)
    hub, s = room.hub, room.sessions
    assert hub.broadcast("t") == N
    assert hub.broadcast_multiple("m", [s[3], s[1]]) == 2
    assert hub.broadcast_binary(b"b") == N
    assert hub.broadcast_binary_multiple(b"bm", [s[1], s[2]]) == 2
    assert sent_log(room) == sorted([(i, "t") for i in range(N)] + [(1, "m"), (3, "m")])
    assert sent_log(room, binary=True) == sorted(
        [(i, b"b") for i in range(N)] + [(1, b"bm"), (2, b"bm")])
    await room.received()


def not_sent_to(log: list[tuple[int, object]], expected: list[tuple[int, object]]) -> list:
    """Sent-handler calls for (session, message) pairs that were never sent."""
    return [call for call in log if call not in expected]


async def test_handle_sent_message_skips_the_session_broadcast_others_excluded(
        hub_url, ws_connect) -> None:
    room = await open_room(hub_url, ws_connect)
    assert room.hub.broadcast_others("o", room.sessions[0]) == N - 1
    assert room.hub.broadcast_binary_others(b"o", room.sessions[4]) == N - 1
    assert await room.received() == [[b"o"]] + [["o", b"o"]] * 3 + [["o"]]
    # Session 0 was not sent "o", session 4 not b"o": no sent handler may say otherwise.
    expected = sorted([(i, "o") for i in range(1, N)] + [(i, FENCE) for i in range(N)])
    expected_binary = [(i, b"o") for i in range(N - 1)]
    assert not_sent_to(sent_log(room), expected) == []
    assert not_sent_to(sent_log(room, binary=True), expected_binary) == []
    assert sent_log(room) == expected
    assert sent_log(room, binary=True) == expected_binary


async def test_handle_sent_message_skips_sessions_the_filter_rejected(hub_url,
                                                                      ws_connect) -> None:
    room = await open_room(hub_url, ws_connect)
    assert room.hub.broadcast_filter("f", lambda s: ident(s) == 2) == 1
    assert room.hub.broadcast_binary_filter(b"f", lambda s: ident(s) != 2) == N - 1
    assert await room.received() == [[b"f"], [b"f"], ["f"], [b"f"], [b"f"]]
    expected = sorted([(2, "f")] + [(i, FENCE) for i in range(N)])
    expected_binary = [(i, b"f") for i in (0, 1, 3, 4)]
    assert not_sent_to(sent_log(room), expected) == []
    assert not_sent_to(sent_log(room, binary=True), expected_binary) == []
    assert sent_log(room) == expected
    assert sent_log(room, binary=True) == expected_binary


async def test_handle_sent_message_binary_gets_bytes_whatever_was_broadcast(
        hub_url, ws_connect) -> None:
    # The handler is documented as fn(session, msg: bytes), as Session.write_binary delivers it.
    room = await open_room(hub_url, ws_connect, n=2)
    hub, s = room.hub, room.sessions
    s[0].write_binary(bytearray(b"w"))
    hub.broadcast_binary(bytearray(b"ba"))
    hub.broadcast_binary_multiple(memoryview(b"mv"), [s[1]])
    got = [(ident(e[1]), e[2]) for e in room.rec.events if e[0] == "sent_message_binary"]
    assert [type(m) for _, m in got] == [bytes] * 4
    assert sorted(got) == [(0, b"ba"), (0, b"w"), (1, b"ba"), (1, b"mv")]
    await room.received()


async def test_chat_relay_from_a_handler(hub_url, ws_connect) -> None:
    room = await open_room(hub_url, ws_connect)
    hub = room.hub

    @hub.handle_message
    def relay(session, msg):
        hub.broadcast_others(f"{ident(session)}:{msg}", session)

    await room.clients[2].send("hi")
    for i in (0, 1, 3, 4):
        assert await asyncio.wait_for(room.clients[i].recv(), WAIT) == "2:hi"
    assert await room.received() == [[]] * N


async def test_closed_sessions_are_skipped_and_not_counted(hub_url, ws_connect) -> None:
    room = await open_room(hub_url, ws_connect)
    hub = room.hub
    gone = room.sessions[1]
    await room.clients[1].close()
    await room.rec.wait("disconnect")
    assert len(hub) == N - 1
    assert gone not in hub.sessions()
    assert gone.is_closed
    assert hub.broadcast("after") == N - 1
    assert hub.broadcast_multiple("multi", room.sessions) == N - 1
    assert hub.broadcast_binary_multiple(b"multi", [gone]) == 0
    live = room.clients[:1] + room.clients[2:]
    for ws in live:
        assert await asyncio.wait_for(ws.recv(), WAIT) == "after"
        assert await asyncio.wait_for(ws.recv(), WAIT) == "multi"


async def test_sessions_and_len_follow_connects_and_disconnects(hub_url, ws_connect) -> None:
    hub, url = hub_url
    rec = Recorder(hub)
    assert len(hub) == 0 and hub.sessions() == [] and not hub.is_closed()
    assert hub.broadcast("to nobody") == 0
    a = await ws_connect(url)
    b = await ws_connect(url)
    await rec.wait("connect", 2)
    assert len(hub) == 2
    assert set(hub.sessions()) == set(rec.sessions("connect"))
    await a.close()
    await rec.wait("disconnect")
    assert len(hub) == 1
    assert hub.sessions() == [rec.sessions("connect")[1]]
    await b.close()
    await rec.wait("disconnect", 2)
    assert len(hub) == 0 and hub.sessions() == []


async def test_hub_close_closes_every_client_then_broadcast_raises(hub_url, ws_connect) -> None:
    room = await open_room(hub_url, ws_connect)
    hub = room.hub
    hub.close()
    assert hub.is_closed()
    for ws in room.clients:
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(WAIT):
                await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1000
    await room.rec.wait("disconnect", N)
    await wait_until(lambda: len(hub) == 0, "hub empty")
    s = room.sessions
    calls = [
        lambda: hub.broadcast("x"),
        lambda: hub.broadcast_filter("x", lambda _: True),
        lambda: hub.broadcast_others("x", s[0]),
        lambda: hub.broadcast_multiple("x", s),
        lambda: hub.broadcast_binary(b"x"),
        lambda: hub.broadcast_binary_filter(b"x", lambda _: True),
        lambda: hub.broadcast_binary_others(b"x", s[0]),
        lambda: hub.broadcast_binary_multiple(b"x", s),
    ]
    for call in calls:
        with pytest.raises(HubClosed):
            call()
    with pytest.raises(HubClosed):
        hub.close()
    assert hub.is_closed()


async def test_hub_close_with_msg_sends_code_and_reason(hub_url, ws_connect) -> None:
    room = await open_room(hub_url, ws_connect, n=2)
    room.hub.close_with_msg(1001, "maintenance")
    for ws in room.clients:
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(WAIT):
                await ws.recv()
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (1001, "maintenance")
    await room.rec.wait("disconnect", 2)
    assert [s.close_code for s in room.sessions] == [1001, 1001]
    with pytest.raises(HubClosed):
        room.hub.close_with_msg(1000, "again")


async def test_a_closed_hub_refuses_new_clients(hub_url, ws_connect) -> None:
    hub, url = hub_url
    hub.close()
    with pytest.raises(OSError):
        async with asyncio.timeout(WAIT):
            await ws_connect(url)
    assert len(hub) == 0


async def test_broadcast_is_framed_once_for_many_clients(serve_hub, ws_connect) -> None:
    # A larger room and a larger message: every client gets the identical bytes.
    hub, url = await serve_hub(Melody())
    rec = Recorder(hub)
    clients = [await ws_connect(url) for _ in range(12)]
    await rec.wait("connect", 12)
    payload = bytes(range(256)) * 400
    assert hub.broadcast_binary(payload) == 12
    for ws in clients:
        assert await asyncio.wait_for(ws.recv(), WAIT) == payload
