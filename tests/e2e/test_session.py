"""The Session API over a real connection: keys, the upgrade request, addresses, subprotocols,
writes after close, and the close the client sees."""

from __future__ import annotations

import asyncio

import pytest
from e2e_support import WAIT, Recorder, wait_until
from websockets.exceptions import ConnectionClosed, InvalidStatus

from melody import Melody, Session
from melody.errors import HandshakeError, KeyNotFound, SessionClosed

pytestmark = pytest.mark.asyncio


async def one_session(hub, url, ws_connect, path: str = "", **kwargs):
    """Connect one websockets client; return it, its session and the hub's event recorder."""
    rec = Recorder(hub)
    ws = await ws_connect(url + path, **kwargs)
    await rec.wait("connect")
    (session,) = rec.sessions("connect")
    return ws, session, rec


async def test_keys_set_get_must_get_unset_and_mapping_access(hub_url, ws_connect) -> None:
    hub, url = hub_url
    ws, session, _ = await one_session(hub, url, ws_connect)
    assert isinstance(session, Session)
    assert session.get("user") is None and session.get("user", "anon") == "anon"
    with pytest.raises(KeyNotFound):
        session.must_get("user")
    with pytest.raises(KeyError):  # KeyNotFound is a KeyError too
        session["user"]
    assert "user" not in session and list(session) == []

    session.set("user", "ada")
    session["room"] = 7
    assert session.get("user") == "ada" and session.must_get("room") == 7
    assert session["user"] == "ada"
    assert "user" in session and sorted(session) == ["room", "user"]
    assert session.keys == {"user": "ada", "room": 7}

    session.unset("user")
    session.unset("never-set")  # no error
    assert "user" not in session
    del session["room"]
    with pytest.raises(KeyNotFound):
        del session["room"]
    assert session.keys == {}
    # Keys live on while the session is open and are readable after it closed.
    session["last"] = True
    await ws.close()
    await asyncio.wait_for(ws.wait_closed(), WAIT)
    assert session["last"] is True


async def test_keys_from_handle_upgrade_are_on_the_session(serve_hub, ws_connect) -> None:
    hub = Melody()

    @hub.handle_upgrade
    def authenticate(request):
        return {"user": request.query_params["user"][0], "token": request.headers["X-Token"]}

    seen = {}

    @hub.handle_connect
    def on_connect(session):
        seen.update(session.keys)
        session.write(session.must_get("user"))

    hub, url = await serve_hub(hub)
    ws = await ws_connect(f"{url}/?user=grace", additional_headers={"X-Token": "t0k"})
    assert await asyncio.wait_for(ws.recv(), WAIT) == "grace"
    assert seen == {"user": "grace", "token": "t0k"}


async def test_keys_from_an_async_handle_upgrade(serve_hub, ws_connect) -> None:
    hub = Melody()

    @hub.handle_upgrade
    async def authenticate(request):
        await asyncio.sleep(0.01)
        return {"user": request.path.rsplit("/", 1)[1]}

    @hub.handle_message
    def who(session, msg):
        session.write(f"{session['user']}:{msg}")

    hub, url = await serve_hub(hub)
    ws = await ws_connect(f"{url}/u/linus")
    await ws.send("hi")
    assert await asyncio.wait_for(ws.recv(), WAIT) == "linus:hi"


async def test_handle_upgrade_returning_none_or_true_accepts_without_keys(serve_hub,
                                                                         ws_connect) -> None:
    for decision in (None, True):
        hub = Melody()
        hub.handle_upgrade(lambda request, d=decision: d)
        hub, url = await serve_hub(hub)
        ws, session, _ = await one_session(hub, url, ws_connect)
        assert session.keys == {}
        await ws.close()


async def test_handle_upgrade_can_refuse(serve_hub, ws_connect) -> None:
    hub = Melody()

    @hub.handle_upgrade
    def refuse(request):
        raise HandshakeError(401, "bad token", [("WWW-Authenticate", "Bearer")])

    rec = Recorder(hub)
    hub, url = await serve_hub(hub)
    with pytest.raises(InvalidStatus) as info:
        await ws_connect(url)
    assert info.value.response.status_code == 401
    assert info.value.response.headers["WWW-Authenticate"] == "Bearer"
    assert rec.events == [] and len(hub) == 0


async def test_request_is_visible_in_handle_connect(hub_url, ws_connect) -> None:
    hub, url = hub_url
    seen = {}

    @hub.handle_connect
    def on_connect(session):
        r = session.request
        seen.update(path=r.path, query=r.query, params=r.query_params, method=r.method,
                    header=r.headers.get("X-Client"), missing=r.headers.get("X-Nope"),
                    host=r.headers["Host"])

    await ws_connect(f"{url}/chat/room%201?a=1&b=two&a=3&empty=",
                     additional_headers={"X-Client": "e2e"})
    await wait_until(lambda: bool(seen), "handle_connect")
    assert seen["path"] == "/chat/room%201"
    assert seen["query"] == "a=1&b=two&a=3&empty="
    assert seen["params"] == {"a": ["1", "3"], "b": ["two"], "empty": [""]}
    assert seen["method"] == "GET"
    assert seen["header"] == "e2e" and seen["missing"] is None
    assert seen["host"] == url.removeprefix("ws://")


async def test_remote_and_local_addresses(hub_url, ws_connect) -> None:
    hub, url = hub_url
    ws, session, _ = await one_session(hub, url, ws_connect)
    assert tuple(session.remote_addr[:2]) == tuple(ws.local_address[:2])
    assert tuple(session.local_addr[:2]) == tuple(ws.remote_address[:2])
    assert session.remote_addr[0] == "127.0.0.1"
    assert session.local_addr[1] == int(url.rsplit(":", 1)[1])


async def test_subprotocol_is_chosen_in_the_servers_order(serve_hub, ws_connect) -> None:
    hub, url = await serve_hub(subprotocols=["chat.v2", "chat.v1"])
    ws, session, _ = await one_session(hub, url, ws_connect,
                                       subprotocols=["chat.v1", "chat.v2", "other"])
    assert session.subprotocol == "chat.v2"
    assert ws.subprotocol == "chat.v2"


async def test_subprotocol_offered_only_one_supported(serve_hub, ws_connect) -> None:
    hub, url = await serve_hub(subprotocols=["chat.v2", "chat.v1"])
    ws, session, _ = await one_session(hub, url, ws_connect, subprotocols=["chat.v1"])
    assert session.subprotocol == "chat.v1" and ws.subprotocol == "chat.v1"


async def test_no_subprotocol_when_none_is_offered(serve_hub, ws_connect) -> None:
    hub, url = await serve_hub(subprotocols=["chat.v2"])
    ws, session, _ = await one_session(hub, url, ws_connect)
    assert session.subprotocol is None and ws.subprotocol is None


async def test_no_subprotocol_when_the_hub_speaks_none(hub_url, ws_connect) -> None:
    hub, url = hub_url
    _ws, session, _ = await one_session(hub, url, ws_connect, subprotocols=["chat.v1"])
    assert session.subprotocol is None


async def test_writes_after_the_client_left_raise_session_closed(hub_url, ws_connect) -> None:
    hub, url = hub_url
    ws, session, rec = await one_session(hub, url, ws_connect)
    assert not session.is_closed and session.close_code == 0
    assert session.queued == 0 and session.dropped == 0
    await ws.close()
    await rec.wait("disconnect")
    assert session.is_closed
    with pytest.raises(SessionClosed):
        session.write("late")
    with pytest.raises(SessionClosed):
        session.write_binary(b"late")
    with pytest.raises(SessionClosed):
        session.ping()
    with pytest.raises(SessionClosed):
        session.close()
    with pytest.raises(SessionClosed):
        session.close_with_msg(4000, "again")
    assert rec.of("sent_message") == [] and rec.of("sent_message_binary") == []


async def test_writes_while_closing_raise_session_closed(hub_url, ws_connect) -> None:
    hub, url = hub_url
    ws, session, rec = await one_session(hub, url, ws_connect)
    session.write("before")
    session.close()
    assert session.is_closed  # closing counts as closed for writers
    with pytest.raises(SessionClosed):
        session.write("after")
    with pytest.raises(SessionClosed):
        session.write_binary(b"after")
    assert await asyncio.wait_for(ws.recv(), WAIT) == "before"
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(ws.recv(), WAIT)
    assert info.value.rcvd.code == 1000
    await rec.wait("disconnect")
    assert session.close_code == 1000


async def test_close_with_msg_reaches_the_client(hub_url, ws_connect) -> None:
    hub, url = hub_url
    ws, session, rec = await one_session(hub, url, ws_connect)
    session.close_with_msg(4321, "kicked: flood ✗")
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(ws.recv(), WAIT)
    assert info.value.rcvd.code == 4321
    assert info.value.rcvd.reason == "kicked: flood ✗"
    await rec.wait("disconnect")
    assert session.close_code == 4321
    assert len(hub) == 0


async def test_a_long_close_reason_is_cut_to_valid_utf8(hub_url, ws_connect) -> None:
    hub, url = hub_url
    ws, session, _rec = await one_session(hub, url, ws_connect)
    session.close_with_msg(1008, "é" * 100)  # 200 bytes: over the 123 a close frame holds
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(ws.recv(), WAIT)
    assert info.value.rcvd.code == 1008
    assert info.value.rcvd.reason == "é" * 61


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 2999, 5000])
async def test_close_with_msg_refuses_codes_that_may_not_be_sent(hub_url, ws_connect,
                                                                 code) -> None:
    hub, url = hub_url
    ws, session, _ = await one_session(hub, url, ws_connect)
    with pytest.raises(ValueError):
        session.close_with_msg(code, "nope")
    assert not session.is_closed
    session.write("still open")
    assert await asyncio.wait_for(ws.recv(), WAIT) == "still open"


async def test_session_ping_is_answered_with_a_pong(hub_url, ws_connect) -> None:
    hub, url = hub_url
    _ws, session, rec = await one_session(hub, url, ws_connect)
    session.ping(b"are you there")
    await rec.wait("pong")
    with pytest.raises(ValueError):
        session.ping(b"x" * 126)


async def test_abort_drops_tcp_without_a_close_frame(hub_url, ws_connect) -> None:
    hub, url = hub_url
    ws, session, rec = await one_session(hub, url, ws_connect)
    session.abort()
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(ws.recv(), WAIT)
    assert info.value.rcvd is None  # no close frame came
    await rec.wait("disconnect")
    assert session.is_closed and session.close_code == 1006
    assert rec.of("close") == []
