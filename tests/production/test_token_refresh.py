"""Auth for the whole connection: ``JWTAuth`` closes a session at its token's ``exp`` (4001)
unless a ``refresh`` message brought a fresh token, verified like the first; melody's client
does that by itself with ``refresh_token``. Real sockets, real tokens (PyJWT), short ``exp``s:
each test waits at most a few seconds, bounded."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest
from e2e_support import wait_until

import melody
from melody import Melody, RequestError, Session
from melody.codecs import JSON
from melody.errors import CLOSE_TOKEN_EXPIRED, ConnectionClosed
from melody.middleware import JWTAuth

pytestmark = pytest.mark.asyncio

Serve = Callable[..., Awaitable[tuple[Melody, str]]]

SECRET = "s3cret-for-tests-only-0123456789abcdef"
_jti = itertools.count()


def token(lifetime: float, sub: str = "ada", key: str = SECRET, **claims: Any) -> str:
    body: dict[str, Any] = {"sub": sub, "aud": "chat", "exp": int(time.time() + lifetime),
                            "jti": str(next(_jti))}
    body.update(claims)
    return jwt.encode(body, key, algorithm="HS256")


def jwt_hub(**options: Any) -> tuple[Melody, list[Session]]:
    hub = Melody(codec=JSON)
    hub.use(JWTAuth(SECRET, algorithms=["HS256"], audience="chat", **options))
    sessions: list[Session] = []
    hub.handle_connect(sessions.append)

    @hub.route("echo")
    def echo(session: Session, data: Any) -> Any:
        return data

    return hub, sessions


async def test_expired_token_closes_the_session_with_4001(serve_hub: Serve) -> None:
    hub, sessions = jwt_hub()
    _, url = await serve_hub(hub)
    conn = await melody.connect(url, headers={"Authorization": f"Bearer {token(2)}"})
    started = time.time()
    # Alive before exp: a request goes through.
    assert await conn.request("echo", "hi", timeout=2) == "hi"
    assert sessions[0].user == "ada"
    async with asyncio.timeout(5):
        await conn.wait_closed()
    assert conn.close_code == CLOSE_TOKEN_EXPIRED == 4001
    assert conn.close_reason == "token expired"
    assert time.time() - started < 3.5  # at exp (at most 2 s away), not at some later tick
    await wait_until(lambda: len(hub) == 0, "session gone")
    assert sessions[0].lease is None  # the timer went with the session


async def test_refresh_pushes_the_deadline_and_replaces_the_claims(serve_hub: Serve) -> None:
    hub, sessions = jwt_hub()
    _, url = await serve_hub(hub)
    first = token(2)
    conn = await melody.connect(url + f"/?token={first}")
    fresh = token(60, role="admin")
    reply = await conn.request("refresh", {"token": fresh}, timeout=2)
    assert reply == {"exp": float(jwt.decode(fresh, options={"verify_signature": False})["exp"])}
    assert sessions[0]["claims"]["role"] == "admin"
    # Past the first token's exp (plus a margin), the session still answers.
    exp = jwt.decode(first, options={"verify_signature": False})["exp"]
    await asyncio.sleep(max(0.0, exp - time.time()) + 0.5)
    assert conn.open
    assert await conn.request("echo", "still here", timeout=2) == "still here"
    await conn.close()
    await wait_until(lambda: len(hub) == 0, "closed")
    assert sessions[0].lease is None


@pytest.mark.parametrize(("bad", "why"), [
    (lambda: token(60, sub="mallory"), "token is for another user"),
    (lambda: token(60, key="another-secret-another-secret-12345"), "bad signature"),
    (lambda: token(-5), "token expired"),
    (lambda: token(60, aud="elsewhere"), "wrong audience"),
    (lambda: "not.a.jwt", "malformed token"),
    (lambda: 42, 'refresh takes {"token": "<jwt>"}'),
])
async def test_a_refused_refresh_changes_nothing(serve_hub: Serve, bad: Callable[[], Any],
                                                 why: str) -> None:
    hub, sessions = jwt_hub()
    _, url = await serve_hub(hub)
    conn = await melody.connect(url, headers={"Authorization": f"Bearer {token(2)}"})
    with pytest.raises(RequestError) as info:
        await conn.request("refresh", {"token": bad()}, timeout=2)
    assert str(info.value) == why
    assert sessions[0]["claims"]["sub"] == "ada"
    async with asyncio.timeout(5):
        await conn.wait_closed()
    assert conn.close_code == CLOSE_TOKEN_EXPIRED


async def test_refresh_is_an_ordinary_route_without_jwt(serve_hub: Serve) -> None:
    # Only a session with a lease has "refresh" answered by the hub; others route it.
    hub = Melody(codec=JSON)

    @hub.route("refresh")
    def mine(session: Session, data: Any) -> str:
        return "the application's refresh"

    _, url = await serve_hub(hub)
    async with melody.connect(url) as conn:
        assert await conn.request("refresh", {"token": "x"}, timeout=2) == \
            "the application's refresh"


async def test_client_refresh_token_keeps_the_session_open(serve_hub: Serve) -> None:
    hub, sessions = jwt_hub()
    _, url = await serve_hub(hub)
    issued: list[str] = []

    async def refresh_token() -> str:
        issued.append(token(3))
        return issued[-1]

    conn = await melody.connect(url, headers={"Authorization": f"Bearer {token(2)}"},
                                refresh_token=refresh_token)
    try:
        hub.send_to_user("ada", "before")
        assert await asyncio.wait_for(conn.recv(), 2) == "before"
        # Long enough for the first token and at least one refreshed one to have expired.
        await asyncio.sleep(4.5)
        assert conn.open, (conn.close_code, conn.close_reason)
        assert len(issued) >= 2
        assert conn.token == issued[-1]
        await wait_until(lambda: sessions[0]["claims"]["jti"] == jwt.decode(
            issued[-1], options={"verify_signature": False})["jti"], "latest claims")
        hub.send_to_user("ada", "after")
        assert await asyncio.wait_for(conn.recv(), 2) == "after"
    finally:
        await conn.close()


async def test_client_without_refresh_token_is_closed(serve_hub: Serve) -> None:
    # The control for the test above: the same token, no refresh_token.
    hub, _ = jwt_hub()
    _, url = await serve_hub(hub)
    conn = await melody.connect(url, headers={"Authorization": f"Bearer {token(2)}"})
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(5):
            await conn.recv()
    assert info.value.code == CLOSE_TOKEN_EXPIRED


async def test_reconnecting_client_presents_a_fresh_token(serve_hub: Serve) -> None:
    # The URL's token expires within the refresh margin: the client fetches a fresh one before
    # connecting, presents it in the URL's place, and presents it again on reconnection
    # (still fresh: no second fetch), never the expiring one.
    hub, sessions = jwt_hub()
    _, url = await serve_hub(hub)
    issued: list[str] = []

    def refresh_token() -> str:
        issued.append(token(60))
        return issued[-1]

    stale = token(1.5)
    client = await melody.connect(url + f"/?token={stale}", reconnect=True,
                                  backoff_initial=0.01, refresh_token=refresh_token)

    def jti(t: str) -> Any:
        return jwt.decode(t, options={"verify_signature": False})["jti"]

    try:
        await wait_until(lambda: len(sessions) == 1, "connected")
        assert len(issued) == 1
        assert sessions[0]["claims"]["jti"] == jti(issued[0]) != jti(stale)
        assert client.connection is not None and client.connection.token == issued[0]
        sessions[0].close_with_msg(1012, "restart")
        await wait_until(lambda: len(sessions) == 2 and len(hub) == 1, "reconnected")
        assert sessions[1]["claims"]["jti"] == jti(issued[0])
        assert len(issued) == 1
    finally:
        await client.close()
