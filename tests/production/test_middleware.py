"""The handshake middleware chain and the shipped middlewares, end to end over 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from e2e_support import Recorder, port_of, upgrade_request, wait_until
from prod_support import echo, raw_from, round_trip, upgrade_status
from websockets.asyncio.client import ClientConnection

from melody import Config, HandshakeError, Melody, Session
from melody._hubstate import state_of
from melody.middleware import (
    AccessLog,
    CallNext,
    ConnectionLimit,
    Handshake,
    HandshakeRateLimit,
    JWTAuth,
    OriginAllowList,
)

pytestmark = pytest.mark.asyncio

Serve = Callable[..., Awaitable[tuple[Melody, str]]]
Connect = Callable[..., Awaitable[ClientConnection]]

SECRET = "s3cret-for-tests-only-0123456789abcdef"


def token(claims: dict[str, Any] | None = None, key: Any = SECRET, alg: str = "HS256",
          **extra: Any) -> str:
    body: dict[str, Any] = {"sub": "alice", "aud": "chat", "exp": int(time.time()) + 300}
    body.update(claims or {})
    body.update(extra)
    return jwt.encode(body, key, algorithm=alg)


# -- the chain ------------------------------------------------------------------------------------


async def test_chain_runs_in_order_and_attaches_keys(serve_hub: Serve, ws_connect: Connect) -> None:
    hub = Melody()
    order: list[str] = []

    def named(name: str) -> Any:
        async def mw(handshake: Handshake, call_next: CallNext) -> None:
            order.append(f"{name}>")
            handshake.keys[name] = True
            await call_next(handshake)
            order.append(f"<{name}")
        return mw

    hub.use(named("a"))
    hub.use(named("b"))

    @hub.handle_upgrade
    async def upgrade(request: Any) -> dict[str, Any]:
        order.append("hook")
        return {"from_hook": request.path}

    rec = Recorder(hub)
    _, url = await serve_hub(hub)
    ws = await ws_connect(url + "/room")
    await rec.wait("connect")
    session = rec.sessions("connect")[0]
    assert order == ["a>", "b>", "hook", "<b", "<a"]
    assert session.keys == {"a": True, "b": True, "from_hook": "/room"}
    await ws.send("hi")
    assert (await rec.wait("message"))[0] == ("hi",)


async def test_refusal_carries_status_headers_and_body(serve_hub: Serve) -> None:
    hub = Melody()
    reached: list[str] = []

    @hub.use
    async def deny(handshake: Handshake, call_next: CallNext) -> None:
        if handshake.request.query_params.get("ok") != ["1"]:
            raise HandshakeError(402, "pay first", [("X-Price", "5")])
        await call_next(handshake)

    @hub.use
    async def after(handshake: Handshake, call_next: CallNext) -> None:
        reached.append(handshake.request.path)
        await call_next(handshake)

    echo(hub)
    _, url = await serve_hub(hub)
    response, client = await upgrade_status(url, "/x")
    client.close()
    assert response.status == 402
    assert response.headers["x-price"] == "5"
    assert response.body == b"pay first\n"
    assert reached == []
    await round_trip(url + "/y?ok=1")
    assert reached == ["/y"]


async def test_middleware_exception_is_500_and_reported(serve_hub: Serve) -> None:
    hub = Melody()
    errors: list[tuple[Any, BaseException]] = []
    hub.handle_error(lambda s, e: errors.append((s, e)))

    @hub.use
    async def broken(handshake: Handshake, call_next: CallNext) -> None:
        raise LookupError("database down")

    _, url = await serve_hub(hub)
    response, client = await upgrade_status(url)
    client.close()
    assert response.status == 500
    assert response.body == b"internal error\n"
    assert len(errors) == 1 and errors[0][0] is None and isinstance(errors[0][1], LookupError)


async def test_inner_refusals_reach_outer_middleware_and_on_close_runs(serve_hub: Serve,
                                                                       ws_connect: Connect) -> None:
    hub = Melody(Config(paths=["/forbidden", "/chat"]))
    seen: list[Any] = []
    closed: list[str] = []

    @hub.use
    async def outer(handshake: Handshake, call_next: CallNext) -> None:
        handshake.on_close(lambda: closed.append(handshake.request.path))
        try:
            await call_next(handshake)
        except HandshakeError as exc:
            seen.append(exc.status)
            raise
        seen.append("ok")

    @hub.handle_upgrade
    def upgrade(request: Any) -> bool:
        return request.path != "/forbidden"

    rec = Recorder(hub)
    _, url = await serve_hub(hub)
    for path, status in (("/forbidden", 403), ("/nowhere", 404)):
        response, client = await upgrade_status(url, path)
        client.close()
        assert response.status == status
    assert seen == [403, 404]
    assert closed == ["/forbidden", "/nowhere"]
    ws = await ws_connect(url + "/chat")
    await rec.wait("connect")
    assert seen[-1] == "ok" and closed == ["/forbidden", "/nowhere"]
    await ws.close()
    await rec.wait("disconnect")
    await wait_until(lambda: closed[-1:] == ["/chat"], "on_close at disconnect")


async def test_no_middleware_keeps_the_inline_path(serve_hub: Serve) -> None:
    # The fast path decides inside the read callback: no task is spawned per upgrade.
    hub = echo(Melody())
    _, url = await serve_hub(hub)
    spawned: list[Any] = []
    state = state_of(hub)
    original = state.spawn
    state.spawn = lambda coro, loop=None: (spawned.append(coro), original(coro, loop))[1]  # type: ignore[method-assign]
    await round_trip(url)
    assert spawned == []


# -- JWTAuth --------------------------------------------------------------------------------------


def _rsa() -> tuple[Any, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, public


def _ec() -> tuple[Any, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, public


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256"])
async def test_jwt_accepts_a_valid_token_and_claims_land_in_keys(
        serve_hub: Serve, ws_connect: Connect, alg: str) -> None:
    if alg == "HS256":
        signing, verifying = SECRET, SECRET
    else:
        signing, verifying = _rsa() if alg == "RS256" else _ec()
    hub = Melody()
    hub.use(JWTAuth(verifying, algorithms=[alg], audience="chat"))
    rec = Recorder(hub)
    _, url = await serve_hub(hub)
    await ws_connect(url, additional_headers={
        "Authorization": f"Bearer {token(key=signing, alg=alg, room='lobby')}"})
    await rec.wait("connect")
    session = rec.sessions("connect")[0]
    assert session["claims"]["sub"] == "alice"
    assert session["claims"]["room"] == "lobby"


@pytest.mark.parametrize("where", ["header", "query", "cookie"])
async def test_jwt_token_from_header_query_or_cookie(serve_hub: Serve, where: str) -> None:
    hub = Melody()
    hub.use(JWTAuth(SECRET, algorithms=["HS256"], audience="chat", cookie="session_token",
                    claims_key=None))
    rec = Recorder(hub)
    _, url = await serve_hub(hub)
    t = token()
    path, headers = "/", []
    if where == "header":
        headers = [("Authorization", f"Bearer {t}")]
    elif where == "query":
        path = f"/?token={t}"
    else:
        headers = [("Cookie", f"theme=dark; session_token={t}")]
    response, client = await upgrade_status(url, path, headers)
    assert response.status == 101
    await rec.wait("connect")
    assert rec.sessions("connect")[0]["sub"] == "alice"  # claims_key=None: one key per claim
    client.close()


@pytest.mark.parametrize(("make", "description"), [
    (lambda: None, None),
    (lambda: token(exp=int(time.time()) - 60), "token expired"),
    (lambda: token(aud="billing"), "wrong audience"),
    (lambda: token(key="another-secret-of-enough-length-000"), "bad signature"),
    (lambda: token(nbf=int(time.time()) + 600), "token not yet valid"),
    (lambda: jwt.encode({"sub": "x", "aud": "chat"}, SECRET, algorithm="HS256"),
     "missing claim exp"),
    (lambda: jwt.encode({"sub": "x", "aud": "chat", "exp": int(time.time()) + 60}, None,
                        algorithm="none"), "algorithm not allowed"),
    (lambda: "not.a.jwt", "malformed token"),
])
async def test_jwt_refuses_with_401_and_www_authenticate(
        serve_hub: Serve, make: Callable[[], str | None], description: str | None) -> None:
    hub = Melody()
    hub.use(JWTAuth(SECRET, algorithms=["HS256"], audience="chat"))
    rec = Recorder(hub)
    _, url = await serve_hub(hub)
    t = make()
    headers = [("Authorization", f"Bearer {t}")] if t is not None else []
    response, client = await upgrade_status(url, "/", headers)
    client.close()
    assert response.status == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="melody"')
    if description is None:
        assert "error=" not in challenge
        assert response.body == b"authentication required\n"
    else:
        assert f'error="invalid_token", error_description="{description}"' in challenge
        assert response.body == f"invalid token: {description}\n".encode()
    assert rec.sessions("connect") == []


async def test_jwt_algorithm_confusion_is_refused(serve_hub: Serve) -> None:
    # An HS256 token signed with the RSA *public* key must not pass an RS256 verifier.
    _, public = _rsa()
    hub = Melody()
    hub.use(JWTAuth(public, algorithms=["RS256"]))
    _, url = await serve_hub(hub)
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(
        b'{"sub":"mallory","exp":9999999999}')
    signature = hmac.new(public, signing_input, hashlib.sha256).digest()
    forged = (signing_input + b"." + b64(signature)).decode()
    response, client = await upgrade_status(url, "/", [("Authorization", f"Bearer {forged}")])
    client.close()
    assert response.status == 401


async def test_jwt_key_callable_may_be_async(serve_hub: Serve, ws_connect: Connect) -> None:
    hub = Melody()
    asked: list[str] = []

    async def key_for(t: str) -> str:
        asked.append(jwt.get_unverified_header(t)["kid"])
        await asyncio.sleep(0)
        return SECRET

    hub.use(JWTAuth(key_for, algorithms=["HS256"], audience="chat"))
    _, url = await serve_hub(echo(hub))
    t = jwt.encode({"sub": "a", "aud": "chat", "exp": int(time.time()) + 60}, SECRET,
                   algorithm="HS256", headers={"kid": "k1"})
    ws = await ws_connect(f"{url}/?token={t}")
    await ws.send("x")
    assert await ws.recv() == "x"
    assert asked == ["k1"]


async def test_jwt_construction_checks() -> None:
    with pytest.raises(ValueError):
        JWTAuth(SECRET, algorithms=[])
    with pytest.raises(ValueError):
        JWTAuth(SECRET, algorithms=["none"])
    with pytest.raises(ValueError):
        JWTAuth(SECRET, algorithms="HS256")


# -- OriginAllowList ------------------------------------------------------------------------------


async def test_origin_allow_list(serve_hub: Serve) -> None:
    hub = echo(Melody())
    hub.use(OriginAllowList(["https://app.example.com", "https://*.example.org"],
                            same_origin=True))
    _, url = await serve_hub(hub)
    port = url.rsplit(":", 1)[1]
    cases = [
        ("https://app.example.com", 101),
        ("https://eu.example.org", 101),
        ("https://example.org", 403),
        ("https://evil.example.com", 403),
        (f"http://127.0.0.1:{port}", 101),  # same origin: the Host header's host:port
        ("null", 403),
        (None, 101),  # no Origin: not a browser
    ]
    for origin, status in cases:
        headers = [("Origin", origin)] if origin is not None else []
        response, client = await upgrade_status(url, "/", headers)
        client.close()
        assert response.status == status, (origin, response)
        if status == 403:
            assert response.body == b"origin not allowed\n"


async def test_origin_required(serve_hub: Serve) -> None:
    hub = Melody()
    hub.use(OriginAllowList(["https://app.example.com"], require_origin=True))
    _, url = await serve_hub(hub)
    response, client = await upgrade_status(url)
    client.close()
    assert response.status == 403


async def test_origin_allow_list_checks_entries_at_construction() -> None:
    with pytest.raises(ValueError):
        OriginAllowList(["https://app.example.com/path"])
    with pytest.raises(ValueError):
        OriginAllowList("https://app.example.com")
    with pytest.raises(ValueError):
        OriginAllowList([])


# -- HandshakeRateLimit ---------------------------------------------------------------------------


async def test_handshake_rate_limit_per_ip_429_with_retry_after(serve_hub: Serve) -> None:
    hub = echo(Melody())
    # 3 at once, then one every 100 s: the refusals below do not depend on how fast this runs.
    limit = HandshakeRateLimit(per_ip=0.01, burst=3)
    hub.use(limit)
    _, url = await serve_hub(hub)
    held = []
    for _ in range(3):
        response, client = await upgrade_status(url, source="127.0.0.2")
        assert response.status == 101
        held.append(client)
    for _ in range(2):  # refusals spend nothing: still refused, still ~100 s to wait
        response, client = await upgrade_status(url, source="127.0.0.2")
        client.close()
        assert response.status == 429
        assert 90 <= int(response.headers["retry-after"]) <= 100
    # Another address has its own bucket; closing connections gives no token back (a rate,
    # not a count of open connections).
    for client in held:
        client.close()
    response, other = await upgrade_status(url, source="127.0.0.3")
    other.close()
    assert response.status == 101
    response, client = await upgrade_status(url, source="127.0.0.2")
    client.close()
    assert response.status == 429
    assert limit.refused == {"per_ip": 3, "total": 0}
    assert limit.addresses == 2


async def test_handshake_rate_limit_total_503_spends_no_per_ip_token(serve_hub: Serve) -> None:
    hub = echo(Melody())
    limit = HandshakeRateLimit(per_ip=0.01, burst=2, total=0.01, total_burst=3)
    hub.use(limit)
    _, url = await serve_hub(hub)

    async def status(source: str) -> int:
        response, client = await upgrade_status(url, source=source)
        client.close()
        return int(response.status)

    assert [await status(s) for s in ("127.0.0.2", "127.0.0.3", "127.0.0.4")] == [101] * 3
    assert await status("127.0.0.2") == 503  # the total is spent; 127.0.0.2 has one left
    assert limit.refused == {"per_ip": 0, "total": 1}
    # Without the total limit, 127.0.0.2 still has the token the 503 did not spend, and
    # only that one.
    limit.configure(0.01, 2)
    assert [await status("127.0.0.2") for _ in range(2)] == [101, 429]


# -- ConnectionLimit ------------------------------------------------------------------------------


async def test_connection_limit_total_503_and_release(serve_hub: Serve,
                                                      ws_connect: Connect) -> None:
    hub = echo(Melody())
    limit = ConnectionLimit(max_total=3, retry_after=7)
    hub.use(limit)
    rec = Recorder(hub, skip=("message", "message_binary"))
    _, url = await serve_hub(hub)
    clients = [await ws_connect(url) for _ in range(3)]
    assert limit.active == 3
    response, raw = await upgrade_status(url)
    raw.close()
    assert response.status == 503
    assert response.headers["retry-after"] == "7"
    await clients[0].close()
    await rec.wait("disconnect")
    await wait_until(lambda: limit.active == 2, "slot released at disconnect")
    await round_trip(url)  # takes the freed slot, then gives it back
    await wait_until(lambda: limit.active == 2, "slot released again")


async def test_connection_limit_per_ip_429(serve_hub: Serve) -> None:
    hub = echo(Melody())
    limit = ConnectionLimit(max_per_ip=2, retry_after=3)
    hub.use(limit)
    _, url = await serve_hub(hub)
    held = []
    for _ in range(2):
        response, client = await upgrade_status(url, source="127.0.0.2")
        assert response.status == 101
        held.append(client)
    response, client = await upgrade_status(url, source="127.0.0.2")
    client.close()
    assert response.status == 429 and response.headers["retry-after"] == "3"
    # Another address is not affected.
    response, other = await upgrade_status(url, source="127.0.0.3")
    assert response.status == 101
    assert limit.active_for("127.0.0.2") == 2 and limit.active_for("127.0.0.3") == 1
    other.close()
    for client in held:
        client.close()
    await wait_until(lambda: limit.active == 0, "every slot released")
    assert limit.active_for("127.0.0.2") == 0


async def test_connection_limit_released_when_a_later_middleware_refuses(serve_hub: Serve) -> None:
    hub = Melody()
    limit = ConnectionLimit(max_total=1)
    hub.use(limit)
    hub.use(JWTAuth(SECRET, algorithms=["HS256"]))
    _, url = await serve_hub(hub)
    for _ in range(3):
        response, client = await upgrade_status(url)
        client.close()
        assert response.status == 401  # never 503: each refusal gave its slot back
    assert limit.active == 0


async def test_connection_limit_released_when_client_leaves_mid_handshake(serve_hub: Serve) -> None:
    hub = Melody()
    limit = ConnectionLimit(max_total=5)
    hub.use(limit)
    gate = asyncio.Event()

    @hub.use
    async def slow(handshake: Handshake, call_next: CallNext) -> None:
        await gate.wait()
        await call_next(handshake)

    _, url = await serve_hub(hub)
    client = await raw_from(url, "127.0.0.1")
    client.send(upgrade_request(port_of(url)))
    await wait_until(lambda: limit.active == 1, "slot taken")
    client.close()
    await asyncio.sleep(0.05)
    gate.set()
    await wait_until(lambda: limit.active == 0, "slot released after the client left")


# -- AccessLog ------------------------------------------------------------------------------------


async def test_access_log_one_record_per_upgrade(serve_hub: Serve,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="melody.access")
    hub = echo(Melody())
    hub.use(AccessLog())
    hub.use(JWTAuth(SECRET, algorithms=["HS256"], audience="chat"))
    _, url = await serve_hub(hub)
    await round_trip(f"{url}/chat?token={token()}")
    response, client = await upgrade_status(url, "/chat?token=bad")
    client.close()
    assert response.status == 401
    response, client = await upgrade_status(url, "/")
    client.close()
    assert response.status == 401
    records = [r for r in caplog.records if r.name == "melody.access"]
    assert [(r.outcome, r.status) for r in records] == [  # type: ignore[attr-defined]
        ("accepted", 101), ("rejected", 401), ("rejected", 401)]
    first = records[0]
    assert first.path == "/chat"  # type: ignore[attr-defined]  # never the query (token)
    assert first.peer.startswith("127.0.0.1:")  # type: ignore[attr-defined]
    assert first.event == "upgrade"  # type: ignore[attr-defined]
    assert first.duration >= 0  # type: ignore[attr-defined]
    assert "token" not in first.getMessage()
    assert records[1].reason == "invalid token: malformed token"  # type: ignore[attr-defined]


async def test_access_log_sees_builtin_refusals(serve_hub: Serve,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="melody.access")
    hub = Melody(Config(allowed_origins=["https://ok.example"], paths=["/ws"]))
    hub.use(AccessLog())
    _, url = await serve_hub(hub)
    for path, headers, status in (("/ws", [("Origin", "https://bad.example")], 403),
                                  ("/other", [], 404)):
        response, client = await upgrade_status(url, path, headers)
        client.close()
        assert response.status == status
    records = [r for r in caplog.records if r.name == "melody.access"]
    assert [r.status for r in records] == [403, 404]  # type: ignore[attr-defined]


async def test_hub_use_in_session_keys_visible_in_handlers(serve_hub: Serve,
                                                           ws_connect: Connect) -> None:
    hub = Melody()
    hub.use(JWTAuth(SECRET, algorithms=["HS256"], audience="chat"))

    @hub.handle_message
    def whoami(session: Session, msg: str) -> None:
        session.write(session["claims"]["sub"])

    _, url = await serve_hub(hub)
    ws = await ws_connect(f"{url}/?token={token(sub='bob')}")
    await ws.send("who?")
    assert await ws.recv() == "bob"


async def test_a_refusal_with_unsendable_headers_becomes_500(serve_hub: Serve) -> None:
    # A header value with CR/LF would split the response: melody answers 500 instead of
    # raising inside the read callback (which left the client hanging until the timeout).
    hub = Melody()

    @hub.use
    async def injecting(handshake: Handshake, call_next: CallNext) -> None:
        raise HandshakeError(401, "no", [("X-Note", "a\r\nSet-Cookie: evil=1")])

    _, url = await serve_hub(hub)
    response, client = await upgrade_status(url)
    client.close()
    assert response.status == 500 and "set-cookie" not in response.headers

    hub2 = Melody()
    hub2.handle_upgrade(lambda request: (_ for _ in ()).throw(
        HandshakeError(401, "no", [("X-Note", "a\r\nb")])))
    _, url2 = await serve_hub(hub2)
    response, client = await upgrade_status(url2)
    client.close()
    assert response.status == 500


async def test_on_open_runs_before_handle_connect_and_a_failure_closes(
        serve_hub: Serve, ws_connect: Connect) -> None:
    hub = Melody()
    order: list[str] = []
    errors: list[BaseException] = []

    @hub.use
    async def mw(handshake: Handshake, call_next: CallNext) -> None:
        fail = handshake.request.query_params.get("fail")

        def opened(session: Session) -> None:
            order.append(f"open {session.user}")
            if fail:
                raise RuntimeError("setup failed")

        handshake.user = "ada"
        handshake.on_open(opened)
        await call_next(handshake)

    hub.handle_connect(lambda s: order.append(f"connect {s.user}"))
    hub.handle_error(lambda s, e: errors.append(e))
    _, url = await serve_hub(hub)
    await ws_connect(url)
    await wait_until(lambda: order == ["open ada", "connect ada"], "open, then connect")
    ws = await ws_connect(url + "/?fail=1")
    await wait_until(lambda: ws.close_code is not None, "closed")
    assert ws.close_code == 1011
    assert [str(e) for e in errors] == ["setup failed"]
