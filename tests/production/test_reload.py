"""Live reconfiguration in one process: ``hub.reload(path)`` and ``hub.reconfigure(mapping)``
on a served hub, with ``websockets`` clients. JWT key rotation (new upgrades and the refresh
of a session already open), a rate limit applied to a session already open, a lower
connection limit that closes nobody, and every kind of refused settings changing nothing.
``melody serve --config`` with SIGHUP, and ``--workers``, are in test_reload_serve.py."""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from prod_support import upgrade_status
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from melody import Melody, RateLimit
from melody.codecs import JSON
from melody.config import Config
from melody.errors import ConfigError
from melody.middleware import ConnectionLimit, HandshakeRateLimit, JWTAuth, OriginAllowList

pytestmark = pytest.mark.asyncio

Serve = Callable[..., Awaitable[tuple[Melody, str]]]
Connect = Callable[..., Awaitable[ClientConnection]]

OLD = "old-secret-for-tests-0123456789abcdef"
NEW = "new-secret-for-tests-0123456789abcdef"
_ids = itertools.count(1)


def token(key: str, sub: str = "ada", lifetime: float = 600) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + lifetime)}, key, algorithm="HS256")


def app(*middleware: Any, config: Config | None = None) -> Melody:
    hub = Melody(config, codec=JSON)
    for mw in middleware:
        hub.use(mw)

    @hub.route("echo")
    def echo(session: Any, data: Any) -> Any:
        return data

    return hub


async def request(ws: ClientConnection, kind: str, data: Any = None) -> dict[str, Any]:
    """Send a request in the JSON envelope; its reply (or raise ConnectionClosed)."""
    msg_id = next(_ids)
    await ws.send(json.dumps({"type": kind, "id": msg_id, "data": data}))
    async with asyncio.timeout(5):
        while True:
            reply = json.loads(await ws.recv())
            if reply.get("id") == msg_id:
                return dict(reply)


async def refused(url: str, ws_connect: Connect, **kwargs: Any) -> int:
    """The HTTP status an upgrade is refused with (fails if it is accepted)."""
    with pytest.raises(InvalidStatus) as info:
        await ws_connect(url, **kwargs)
    return int(info.value.response.status_code)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def test_jwt_rotation_new_upgrades_and_refresh_of_an_open_session(
        serve_hub: Serve, ws_connect: Connect, tmp_path: Path) -> None:
    auth = JWTAuth(OLD, algorithms=["HS256"])
    hub, url = await serve_hub(app(auth))
    before = await ws_connect(url, additional_headers={"Authorization": f"Bearer {token(OLD)}"})
    assert await refused(url, ws_connect,
                         additional_headers={"Authorization": f"Bearer {token(NEW)}"}) == 401
    refresh = await request(before, "refresh", {"token": token(NEW)})
    assert refresh == {"id": refresh["id"], "ok": False, "error": "bad signature"}

    # The rotation window: the new key first, the old one still accepted.
    settings = write(tmp_path / "s.toml", f'[jwt]\nkeys = ["{NEW}", "{OLD}"]\n')
    changes = hub.reload(settings)
    assert list(changes) == ["jwt.keys"]
    assert len(changes["jwt.keys"][1]) == 2
    assert OLD not in repr(changes) and NEW not in repr(changes)  # fingerprints only
    new = await ws_connect(url, additional_headers={"Authorization": f"Bearer {token(NEW)}"})
    old = await ws_connect(url, additional_headers={"Authorization": f"Bearer {token(OLD)}"})
    # The session opened before the reload refreshes with a token of the new key.
    assert (await request(before, "refresh", {"token": token(NEW)}))["ok"] is True
    assert (await request(before, "echo", "still here"))["data"] == "still here"

    # The window closes: only the new key; every session stays open.
    write(settings, f'[jwt]\nkeys = ["{NEW}"]\n')
    assert hub.reload() == {"jwt.keys": (changes["jwt.keys"][1],
                                         changes["jwt.keys"][1][:1])}
    assert await refused(url, ws_connect,
                         additional_headers={"Authorization": f"Bearer {token(OLD)}"}) == 401
    assert (await request(old, "refresh", {"token": token(OLD)}))["error"] == "bad signature"
    for ws in (before, new, old):
        assert (await request(ws, "echo", 1))["data"] == 1
    assert len(hub) == 3


async def test_jwt_audience_issuer_and_leeway_reload_for_upgrades_and_refresh(
        serve_hub: Serve, ws_connect: Connect, tmp_path: Path) -> None:
    def claimed(aud: str, iss: str, lifetime: float = 600) -> str:
        return jwt.encode({"sub": "ada", "aud": aud, "iss": iss,
                           "exp": int(time.time() + lifetime)}, OLD, algorithm="HS256")

    auth = JWTAuth(OLD, algorithms=["HS256"], audience="chat", issuer="https://a.example")
    hub, url = await serve_hub(app(auth))
    open_one = await ws_connect(url, additional_headers={
        "Authorization": f"Bearer {claimed('chat', 'https://a.example')}"})
    moved = claimed("chat-v2", "https://b.example")
    assert await refused(url, ws_connect,
                         additional_headers={"Authorization": f"Bearer {moved}"}) == 401

    settings = write(tmp_path / "s.toml", '[jwt]\naudience = ["chat-v2", "chat"]\n'
                     'issuer = "https://b.example"\nleeway = 30\n')
    changes = hub.reload(settings)
    assert changes == {"jwt.audience": ("chat", ["chat-v2", "chat"]),
                       "jwt.issuer": ("https://a.example", "https://b.example"),
                       "jwt.leeway": (0.0, 30.0)}
    # New upgrades are checked against the new audience and issuer; the open session stays,
    # and its refresh is verified against them too.
    await ws_connect(url, additional_headers={"Authorization": f"Bearer {moved}"})
    assert (await request(open_one, "refresh",
                          {"token": claimed("chat", "https://a.example")}))["ok"] is False
    assert (await request(open_one, "refresh", {"token": moved}))["ok"] is True
    # The leeway: a token that expired 10 s ago is still inside 30 s of it.
    late = claimed("chat", "https://b.example", lifetime=-10)
    await ws_connect(url, additional_headers={"Authorization": f"Bearer {late}"})

    # Left out again, each comes back to the application's value.
    write(settings, "")
    assert set(hub.reload()) == {"jwt.audience", "jwt.issuer", "jwt.leeway"}
    assert (auth.audience, auth.issuer, auth.leeway) == ("chat", "https://a.example", 0.0)
    assert await refused(url, ws_connect,
                         additional_headers={"Authorization": f"Bearer {moved}"}) == 401
    assert len(hub) == 3


async def test_handshake_rate_limit_reloads_and_left_out_keys_come_back(
        serve_hub: Serve, tmp_path: Path) -> None:
    limit = HandshakeRateLimit(per_ip=1000.0, burst=1000)
    hub, url = await serve_hub(app(limit))

    async def status() -> int:
        response, client = await upgrade_status(url, source="127.0.0.5")
        client.close()
        return int(response.status)

    assert [await status() for _ in range(3)] == [101] * 3
    settings = write(tmp_path / "s.toml", "[handshake_rate_limit]\nper_ip = 0.01\nburst = 2\n")
    changes = hub.reload(settings)
    assert changes == {"handshake_rate_limit.per_ip": (1000.0, 0.01),
                       "handshake_rate_limit.burst": (1000, 2)}
    # The address's bucket kept its tokens (capped at the new burst of 2), then refills at
    # one per 100 s.
    assert [await status() for _ in range(3)] == [101, 101, 429]
    write(settings, "")
    assert set(hub.reload()) == {"handshake_rate_limit.per_ip", "handshake_rate_limit.burst"}
    assert (limit.per_ip, limit.burst) == (1000.0, 1000)
    await asyncio.sleep(0.01)  # the empty bucket refills at the restored 1000/s: 10 tokens
    assert await status() == 101
    # A hub without the middleware refuses the table.
    needs = re.escape("needs a melody.middleware.HandshakeRateLimit")
    with pytest.raises(ConfigError, match=needs):
        app().reconfigure({"handshake_rate_limit": {"per_ip": 1}})


async def test_rate_limit_applies_to_a_session_already_open(
        serve_hub: Serve, ws_connect: Connect) -> None:
    hub, url = await serve_hub(app())
    ws = await ws_connect(url)
    for n in range(20):  # no limit yet
        assert (await request(ws, "echo", n))["data"] == n
    assert hub.reconfigure({"rate_limit": {"messages_per_second": 0.001, "burst_messages": 3,
                                           "policy": "close"}})["rate_limit"][0] is None
    assert hub.config.rate_limit == RateLimit(messages_per_second=0.001, burst_messages=3,
                                              policy="close")
    for n in range(3):  # the burst
        assert (await request(ws, "echo", n))["data"] == n
    with pytest.raises(ConnectionClosed):
        await request(ws, "echo", "one too many")
    assert ws.close_code == 1008
    assert hub.stats()["messages_rate_limited"] == 1

    # Turned off again: a fresh session sends as much as it likes.
    hub.reconfigure({"rate_limit": False})
    assert hub.config.rate_limit is None
    other = await ws_connect(url)
    for n in range(10):
        assert (await request(other, "echo", n))["data"] == n


async def test_lower_connection_limit_keeps_the_sessions_over_it(
        serve_hub: Serve, ws_connect: Connect) -> None:
    limit = ConnectionLimit(max_per_ip=10)
    hub, url = await serve_hub(app(limit))
    clients = [await ws_connect(url) for _ in range(3)]
    assert hub.reconfigure({"connection_limit": {"max_per_ip": 2, "retry_after": 9}}) == {
        "connection_limit.max_per_ip": (10, 2), "connection_limit.retry_after": (5, 9)}
    assert await refused(url, ws_connect) == 429
    for n, ws in enumerate(clients):  # over the new limit, and still served
        assert (await request(ws, "echo", n))["data"] == n
    # Leaving the table out returns to the application's values.
    assert hub.reconfigure({}) == {"connection_limit.max_per_ip": (2, 10),
                                   "connection_limit.retry_after": (9, 5)}
    await ws_connect(url)
    assert limit.active == 4


async def test_origins_change_in_config_and_in_the_allow_list(
        serve_hub: Serve, ws_connect: Connect) -> None:
    allow = OriginAllowList(["https://a.example"])
    hub, url = await serve_hub(app(allow, config=Config(allowed_origins=["https://a.example"])))
    kept = await ws_connect(url, origin="https://a.example")
    assert await refused(url, ws_connect, origin="https://b.example") == 403
    changes = hub.reconfigure({"allowed_origins": ["https://b.example"]})
    assert changes == {"allowed_origins": (["https://a.example"], ["https://b.example"])}
    assert allow.origins == ["https://b.example"]
    assert hub.config.allowed_origins == ("https://b.example",)
    await ws_connect(url, origin="https://b.example")
    assert await refused(url, ws_connect, origin="https://a.example") == 403
    assert (await request(kept, "echo", "kept"))["data"] == "kept"


async def test_a_callable_source_and_the_log_level(serve_hub: Serve) -> None:
    hub, _ = await serve_hub(app())
    current: dict[str, Any] = {"log_level": "debug"}
    melody_logger = logging.getLogger("melody")
    level = melody_logger.level
    try:
        assert hub.reload(lambda: current) == {"log_level": ("notset", "debug")}
        assert melody_logger.level == logging.DEBUG
        assert callable(hub.config_source)
        current["log_level"] = "warning"
        assert hub.reload() == {"log_level": ("debug", "warning")}
        assert hub.reload() == {}
    finally:
        melody_logger.setLevel(level)


@pytest.mark.parametrize(("text", "why"), [
    ("bogus = 1\n", "unknown key 'bogus'"),
    ("[rate_limit]\nmessages_per_minute = 3\n", "unknown key rate_limit.messages_per_minute"),
    ('allowed_origins = "https://b.example"\n', "allowed_origins is a list of strings"),
    ('allowed_origins = ["https://b.example/path"]\n', "is not 'scheme://host[:port]'"),
    ("[rate_limit]\nmessages_per_second = -1\n", "messages_per_second must be"),
    ('[rate_limit]\npolicy = "explode"\n', "policy must be 'drop' or 'close'"),
    ('log_level = "loud"\n', "log_level is one of"),
    ("[connection_limit]\nmax_per_ip = 0\n", "max_per_ip must be 1.."),
    ('[jwt]\nkeys = ["x"]\nalgorithms = ["none"]\n', "not 'none'"),
    ('[jwt]\nkey_files = ["missing.pem"]\n', "cannot read"),
    ("[handshake_rate_limit]\nper_ip = 0\n", "per_ip must be a finite number"),
    ("[handshake_rate_limit]\nburst = 1.5\n", "burst must be"),
    ("[handshake_rate_limit]\nper_minute = 3\n", "unknown key handshake_rate_limit.per_minute"),
    ("[jwt]\naudience = 3\n", "jwt.audience is a string or a list of strings"),
    ('[jwt]\nissuer = ""\n', "jwt.issuer is a string"),
    ('[jwt]\nleeway = "long"\n', "jwt.leeway is a number of seconds"),
    ("[jwt]\nleeway = -5\n", "leeway"),
    ("allowed_origins = [\n", "is not valid TOML"),
    # One good change and one bad one: the good one is not applied either.
    ('log_level = "debug"\n[rate_limit]\nburst_messages = "lots"\n', "burst_messages must be"),
])
async def test_refused_settings_change_nothing(serve_hub: Serve, ws_connect: Connect,
                                               tmp_path: Path, text: str, why: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    auth = JWTAuth(OLD, algorithms=["HS256"])
    limit = ConnectionLimit(max_per_ip=5)
    config = Config(allowed_origins=["https://a.example"])
    rate = HandshakeRateLimit(per_ip=1000.0)
    hub, url = await serve_hub(app(limit, rate, auth, config=config))
    good = write(tmp_path / "s.toml", 'allowed_origins = ["https://a.example"]\n')
    hub.reload(good)
    ws = await ws_connect(url, origin="https://a.example",
                          additional_headers={"Authorization": f"Bearer {token(OLD)}"})
    write(good, text)
    with caplog.at_level(logging.ERROR, logger="melody.reload"), \
            pytest.raises(ConfigError, match=re.escape(why)):
        hub.reload()
    assert [r.levelname for r in caplog.records if r.name == "melody.reload"] == ["ERROR"]
    assert "nothing changed" in caplog.records[-1].getMessage()
    assert hub.config is config
    assert (auth.key, auth.algorithms) == (OLD, ["HS256"])
    assert (limit.max_total, limit.max_per_ip, limit.retry_after) == (None, 5, 5)
    assert (rate.per_ip, rate.burst, rate.total) == (1000.0, 1000, None)
    assert logging.getLogger("melody").level == logging.NOTSET
    assert hub.config_source == good.resolve() or hub.config_source == good
    assert (await request(ws, "echo", "alive"))["data"] == "alive"


async def test_a_section_for_middleware_the_hub_does_not_use_is_refused(
        serve_hub: Serve) -> None:
    hub, _ = await serve_hub(app())
    with pytest.raises(ConfigError, match=re.escape("needs a melody.middleware.JWTAuth")):
        hub.reconfigure({"jwt": {"keys": [NEW]}})
    with pytest.raises(ConfigError, match=re.escape("needs a melody.middleware.ConnectionLimit")):
        hub.reconfigure({"connection_limit": {"max_total": 3}})
    with pytest.raises(RuntimeError, match="no configuration source"):
        hub.reload()


async def test_the_example_settings_file_applies_to_the_example_hub(
        serve_hub: Serve, ws_connect: Connect) -> None:
    import examples.reload.app

    example = importlib.reload(examples.reload.app).hub  # a fresh hub for each loop
    root = Path(__file__).resolve().parent.parent.parent
    melody_logger = logging.getLogger("melody")
    level = melody_logger.level
    try:
        changes = example.reload(root / "examples" / "reload" / "settings.toml")
        assert set(changes) == {"log_level", "allowed_origins", "rate_limit", "jwt.keys"}
        assert example.config.rate_limit == RateLimit(
            messages_per_second=20, burst_messages=40, bytes_per_second=65536,
            burst_bytes=1048576, policy="drop")
        _, url = await serve_hub(example)
        ws = await ws_connect(url, origin="https://app.example.com", additional_headers={
            "Authorization": f"Bearer {token('old-secret-change-me-0123456789abcdef')}"})
        assert (await request(ws, "join", "lobby"))["data"] == "lobby"
    finally:
        melody_logger.setLevel(level)
