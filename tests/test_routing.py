"""Typed routing, acks and topic authorization (``melody.routing``, ``melody.auth``).

Real clients on 127.0.0.1 port 0 (``melody.connect`` for ``request``, the ``websockets`` client
for the raw wire format and for Packet), every body on asyncio and uvloop, every wait bounded.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from test_codecs import Runner, bounded, client, run, serving, wait_until

import melody
from melody import Melody, RequestError, Session
from melody.auth import roles, session_roles
from melody.codecs import JSON, Packet, PacketMessage
from melody.errors import AckTimeout, ConnectionClosed

__all__ = ["run"]  # the fixture, shared with test_codecs


def routed_hub() -> tuple[Melody, list[BaseException]]:
    hub = Melody(codec=JSON)
    errors: list[BaseException] = []
    hub.handle_error(lambda session, exc: errors.append(exc))

    @hub.route("add")
    def add(session: Session, data: Any) -> int:
        return int(data["a"]) + int(data["b"])

    @hub.route("slow", timeout=0.05)
    async def slow(session: Session, data: Any) -> str:
        await asyncio.sleep(data)
        return "done"

    @hub.route("refuse")
    def refuse(session: Session, data: Any) -> None:
        raise RequestError("room is full")

    @hub.route("crash")
    async def crash(session: Session, data: Any) -> None:
        raise KeyError("secret detail")

    return hub, errors


def test_route_and_ack_with_melody_connect(run: Runner) -> None:
    hub, errors = routed_hub()

    async def main() -> None:
        async with serving(hub) as url, melody.connect(url) as conn:
            assert await conn.request("add", {"a": 2, "b": 3}, timeout=5) == 5
            assert await conn.request("slow", 0, timeout=5) == "done"
            # Requests in flight together are matched by id, not by order.
            results = await asyncio.gather(
                conn.request("slow", 0.01, timeout=5),
                conn.request("add", {"a": 1, "b": 1}, timeout=5))
            assert results == ["done", 2]
            with pytest.raises(RequestError, match="room is full"):
                await conn.request("refuse", None, timeout=5)
            with pytest.raises(RequestError, match=r"^internal error$"):
                await conn.request("crash", None, timeout=5)
            assert [type(e) for e in errors] == [KeyError]
            # Other messages still reach recv: replies are taken out only while awaited.
            hub.broadcast_json({"type": "news"})
            assert orjson.loads(await bounded(conn.recv())) == {"type": "news"}

    run(main)


def test_wire_format_and_messages_without_id(run: Runner) -> None:
    hub, _ = routed_hub()

    async def main() -> None:
        async with serving(hub) as url, client(url) as ws:
            await ws.send('{"type": "add", "id": "x1", "data": {"a": 1, "b": 2}}')
            assert await bounded(ws.recv()) == '{"id":"x1","ok":true,"data":3}'
            # No id: no success reply...
            await ws.send('{"type": "add", "data": {"a": 1, "b": 2}}')
            # ...but a failure is answered, with "id": null.
            await ws.send('{"type": "refuse"}')
            assert await bounded(ws.recv()) == '{"id":null,"ok":false,"error":"room is full"}'

    run(main)


UNROUTABLE = [
    ('{"type": "nope", "id": 4}', '{"id":4,"ok":false,"error":"unknown type: \'nope\'"}'),
    ('{"id": 5, "data": 1}', '{"id":5,"ok":false,"error":"message has no type"}'),
    ('[1, 2]', '{"id":null,"ok":false,"error":"message has no type"}'),
    ('{"type": 7, "id": 6}', '{"id":6,"ok":false,"error":"message has no type"}'),
]


@pytest.mark.parametrize(("message", "reply"), UNROUTABLE)
def test_unknown_types_get_an_error_reply(run: Runner, message: str, reply: str) -> None:
    hub, _ = routed_hub()

    async def main() -> None:
        async with serving(hub) as url, client(url) as ws:
            await ws.send(message)
            assert await bounded(ws.recv()) == reply
            assert hub.stats()["unroutable"] == 1

    run(main)


def test_unknown_types_go_to_the_fallback(run: Runner) -> None:
    hub, _ = routed_hub()
    seen: list[Any] = []

    @hub.route_fallback
    async def fallback(session: Session, msg: Any) -> str:
        seen.append(msg)
        return "fallback"

    async def main() -> None:
        async with serving(hub) as url, melody.connect(url) as conn:
            assert await conn.request("nope", [1], timeout=5) == "fallback"
            assert await conn.request("add", {"a": 1, "b": 1}, timeout=5) == 2
            assert seen == [{"type": "nope", "id": 1, "data": [1]}]
            assert hub.stats()["unroutable"] == 0

    run(main)


def test_ack_timeouts(run: Runner) -> None:
    hub, errors = routed_hub()
    release = asyncio.Event()

    @hub.route("wait", timeout=None)
    async def wait(session: Session, data: Any) -> str:
        await release.wait()
        return "released"

    async def main() -> None:
        async with serving(hub) as url, melody.connect(url) as conn:
            # The server's limit: the handler is cancelled, the reply says so.
            with pytest.raises(RequestError, match=r"^timeout$"):
                await conn.request("slow", 10, timeout=5)
            assert hub.stats()["ack_timeouts"] == 1
            assert [type(e) for e in errors] == [AckTimeout]
            # The client's limit: TimeoutError, and the late reply is not mistaken for another.
            with pytest.raises(TimeoutError):
                await conn.request("wait", None, timeout=0.05)
            release.set()
            late = orjson.loads(await bounded(conn.recv()))
            assert late == {"id": 2, "ok": True, "data": "released"}
            assert await conn.request("add", {"a": 0, "b": 0}, timeout=5) == 0

    run(main)


def test_request_fails_when_the_connection_closes(run: Runner) -> None:
    hub = Melody(codec=JSON)

    @hub.route("close")
    def close(session: Session, data: Any) -> None:
        session.close()

    async def main() -> None:
        async with serving(hub) as url, melody.connect(url) as conn:
            with pytest.raises(ConnectionClosed):
                await conn.request("close", None, timeout=5)

    run(main)


def test_reconnecting_client_request(run: Runner) -> None:
    hub, _ = routed_hub()

    async def main() -> None:
        async with serving(hub) as url, melody.connect(url, reconnect=True) as client_:
            assert await client_.request("add", {"a": 4, "b": 4}, timeout=5) == 8

    run(main)


def test_async_routes_keep_arrival_order(run: Runner) -> None:
    hub = Melody(codec=JSON)
    order: list[int] = []

    @hub.route("slow")
    async def slow(session: Session, data: int) -> None:
        await asyncio.sleep(0.02)
        order.append(data)

    @hub.route("fast")
    def fast(session: Session, data: int) -> None:
        order.append(data)

    async def main() -> None:
        async with serving(hub) as url, client(url) as ws:
            await ws.send('{"type": "slow", "data": 1}')
            await ws.send('{"type": "fast", "data": 2}')
            await ws.send('{"type": "slow", "data": 3}')
            await ws.send('{"type": "fast", "data": 4}')
            await wait_until(lambda: len(order) == 4, "four messages")
            assert order == [1, 2, 3, 4]

    run(main)


def test_packet_routing_by_command(run: Runner) -> None:
    hub = Melody(codec=Packet)

    @hub.route(0x0101)
    def upper(session: Session, payload: bytes) -> bytes:
        return payload.upper()

    @hub.route(0x0102, timeout=0.05)
    async def stall(session: Session, payload: bytes) -> bytes:
        await asyncio.sleep(10)
        return b""

    hub.handle_error(lambda session, exc: None)

    async def main() -> None:
        async with serving(hub) as url, client(url) as ws:
            await ws.send(Packet.build(0x0101, b"abc", 9))
            assert Packet.decode(await bounded(ws.recv())) == PacketMessage(
                0x0101, b"ABC", 9, melody.codecs.FLAG_REPLY)
            await ws.send(Packet.build(0x0102, b"", 10))
            assert Packet.decode(await bounded(ws.recv())) == PacketMessage(
                0x0102, b"timeout", 10, melody.codecs.FLAG_REPLY | melody.codecs.FLAG_ERROR)
            await ws.send(Packet.build(0x0999, b"", 11))
            reply = Packet.decode(await bounded(ws.recv()))
            assert reply.id == 11 and reply.payload == b"unknown type: 2457"

    run(main)


def test_routing_needs_a_codec() -> None:
    hub = Melody()
    with pytest.raises(ValueError, match="codec"):
        hub.route("x")
    with pytest.raises(ValueError, match="codec"):
        hub.authorize(lambda session, action, topic: True)


# -- authorization ------------------------------------------------------------------------------


def authorized_hub() -> Melody:
    hub = Melody(codec=JSON)

    @hub.handle_upgrade
    def keys(request: melody.Request) -> dict[str, Any]:
        # As a verified JWT would: the claims in the session's keys.
        return {"claims": {"roles": request.query_params.get("roles", [])}}

    hub.authorize(roles(
        {"public:*": "*", "chat:*": {"user", "admin"}, "admin": {"admin"}},
        publish={"chat:*": {"admin"}},
    ))
    return hub


def test_subscribe_denied_and_allowed(run: Runner) -> None:
    hub = authorized_hub()

    async def main() -> None:
        async with serving(hub) as url, melody.connect(url + "/?roles=user") as user:
            assert await user.request("subscribe", "chat:1", timeout=5) is True
            assert await user.request("subscribe", "chat:1", timeout=5) is False
            assert await user.request("subscribe", "public:news", timeout=5) is True
            for topic in ("admin", "other"):
                with pytest.raises(RequestError, match=r"^forbidden$"):
                    await user.request("subscribe", topic, timeout=5)
            with pytest.raises(RequestError, match="topic"):
                await user.request("subscribe", 42, timeout=5)
            assert hub.stats()["denied"] == 2
            assert sorted(hub.sessions()[0].topics) == ["chat:1", "public:news"]
            assert await user.request("unsubscribe", "chat:1", timeout=5) is True
            assert hub.topic_len("chat:1") == 0

    run(main)


def test_publish_is_authorized_and_reaches_subscribers(run: Runner) -> None:
    hub = authorized_hub()

    async def main() -> None:
        async with serving(hub) as url, melody.connect(url + "/?roles=user") as user, \
                melody.connect(url + "/?roles=admin") as admin:
            assert await user.request("subscribe", "chat:1", timeout=5) is True
            with pytest.raises(RequestError, match=r"^forbidden$"):
                await user.request("publish", {"topic": "chat:1", "data": "spam"}, timeout=5)
            assert await admin.request("publish", {"topic": "chat:1", "data": {"m": 1}},
                                       timeout=5) == 1
            assert orjson.loads(await bounded(user.recv())) == {
                "type": "publish", "topic": "chat:1", "data": {"m": 1}}
            with pytest.raises(RequestError, match="publish takes"):
                await admin.request("publish", "chat:1", timeout=5)
            assert hub.stats()["denied"] == 1

    run(main)


def test_an_application_route_overrides_a_builtin(run: Runner) -> None:
    hub = authorized_hub()

    @hub.route("subscribe")
    def mine(session: Session, data: Any) -> str:
        return "mine"

    async def main() -> None:
        async with serving(hub) as url, melody.connect(url) as conn:
            assert await conn.request("subscribe", "admin", timeout=5) == "mine"

    run(main)


class FakeSession:
    def __init__(self, **keys: Any) -> None:
        self.keys = keys

    def get(self, key: str, default: Any = None) -> Any:
        return self.keys.get(key, default)


@pytest.mark.parametrize(("keys", "key", "expected"), [
    ({"claims": {"roles": ["a", "b"]}}, "claims.roles", {"a", "b"}),
    ({"roles": "a b"}, "roles", {"a", "b"}),
    ({"claims.roles": ["x"]}, "claims.roles", {"x"}),
    ({"claims": {"roles": 3}}, "claims.roles", set()),
    ({"claims": "nope"}, "claims.roles", set()),
    ({}, "claims.roles", set()),
])
def test_session_roles(keys: dict[str, Any], key: str, expected: set[str]) -> None:
    assert session_roles(FakeSession(**keys), key) == expected  # type: ignore[arg-type]


def test_roles_patterns() -> None:
    decide = roles({"room:vip": {"vip"}, "room:*": {"user"}, "*": "*"},
                   publish={"room:?": {"user"}}, key="roles")
    user: Any = FakeSession(roles=["user"])
    vip: Any = FakeSession(roles=["vip"])
    assert decide(user, "subscribe", "room:1")
    assert not decide(user, "subscribe", "room:vip")  # the exact name wins over the glob
    assert decide(vip, "subscribe", "room:vip")
    assert decide(FakeSession(), "subscribe", "lobby")  # type: ignore[arg-type]
    assert decide(user, "publish", "room:1")
    assert not decide(user, "publish", "room:12")
    assert not decide(vip, "publish", "room:1")
