"""Introspection over the HTTP API (``sessions`` with a limit and a cursor, ``topics``,
``disconnect``) and ``melody top --once`` against a live hub: real sockets, ``websockets``
clients, ``http.client`` for the API, the real command in a subprocess for ``top``."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_support import HOST, WAIT, port_of, wait_until
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from melody import Melody, Session

pytestmark = pytest.mark.asyncio

KEY = "introspection-key-0123456789"
ROOT = Path(__file__).resolve().parent.parent.parent
Serve = Callable[..., Awaitable[tuple[Melody, str]]]
Connect = Callable[..., Awaitable[ClientConnection]]


def _post(port: int, name: str, fields: dict[str, Any], key: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(HOST, port, timeout=WAIT)
    try:
        conn.request("POST", f"/api/{name}", body=json.dumps(fields).encode(),
                     headers={"Authorization": f"Bearer {key}"})
        response = conn.getresponse()
        body = response.read()
        return response.status, json.loads(body) if body else None
    finally:
        conn.close()


async def api(url: str, name: str, fields: dict[str, Any] | None = None, *,
              key: str = KEY) -> tuple[int, Any]:
    return await asyncio.to_thread(_post, port_of(url), name, fields or {}, key)


def room_hub() -> Melody:
    """Each session joins the topics named by its path: ``/a,b`` joins ``a`` and ``b``; the
    query's ``user`` names its user."""
    hub = Melody()
    hub.enable_http_api(KEY)

    @hub.handle_connect
    def join(session: Session) -> None:
        for topic in filter(None, session.request.path.strip("/").split(",")):
            hub.subscribe(session, topic)
        users = session.request.query_params.get("user")
        if users:
            session.user = users[0]

    @hub.handle_message
    def echo(session: Session, msg: str) -> None:
        session.write(msg)

    return hub


async def test_sessions_in_pages_with_limit_and_cursor(serve_hub: Serve,
                                                       ws_connect: Connect) -> None:
    hub, url = await serve_hub(room_hub())
    paths = ["/a,b?user=ada", "/a", "/a,c", "/b?user=bob", "/"]
    clients = [await ws_connect(url + path) for path in paths]
    await wait_until(lambda: len(hub) == 5, "five sessions")
    listed: list[dict[str, Any]] = []
    cursor = None
    pages = []
    for _ in range(10):  # bounded: 3 pages expected
        fields: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            fields["cursor"] = cursor
        status, page = await api(url, "sessions", fields)
        assert status == 200, page
        assert page["total"] == 5
        pages.append(len(page["sessions"]))
        listed += page["sessions"]
        cursor = page["next"]
        if cursor is None:
            break
    assert pages == [2, 2, 1]
    by_remote = {entry["remote"]: entry for entry in listed}
    assert len(by_remote) == len({e["id"] for e in listed}) == 5
    for ws, path in zip(clients, paths, strict=True):
        local = ws.transport.get_extra_info("sockname")
        entry = by_remote[f"{local[0]}:{local[1]}"]
        assert entry["path"] == path.split("?")[0]
        assert entry["topics"] == sorted(filter(None, path.split("?")[0].strip("/").split(",")))
        assert entry["user"] == ({"ada"} & set(path.split("=")) or {"bob"} & set(
            path.split("=")) or {None}).pop()
        assert entry["queued"] == entry["queued_bytes"] == 0
        assert isinstance(entry["connected_at"], float)
    # In the order they connected.
    assert [e["connected_at"] for e in listed] == sorted(e["connected_at"] for e in listed)
    assert {s.id for s in hub.sessions()} == {e["id"] for e in listed}

    for bad in ({"limit": 0}, {"limit": 1001}, {"limit": "2"}, {"cursor": "nonsense"},
                {"cursor": 7}):
        status, answer = await api(url, "sessions", bad)
        assert status == 400, (bad, answer)
    assert (await api(url, "sessions", key="wrong-key-wrong-key-0000"))[0] == 401


async def test_topics_by_subscribers(serve_hub: Serve, ws_connect: Connect) -> None:
    hub, url = await serve_hub(room_hub())
    for path in ["/a,b", "/a", "/a,c", "/b", "/d"]:
        await ws_connect(url + path)
    await wait_until(lambda: len(hub) == 5, "five sessions")
    status, answer = await api(url, "topics", {"limit": 2})
    assert status == 200
    assert answer == {"topics": [{"topic": "a", "sessions": 3}, {"topic": "b", "sessions": 2}],
                      "total": 4}
    status, answer = await api(url, "topics")
    assert {t["topic"]: t["sessions"] for t in answer["topics"]} == {"a": 3, "b": 2, "c": 1,
                                                                     "d": 1}


async def test_disconnect_one_session_with_its_code_and_reason(serve_hub: Serve,
                                                               ws_connect: Connect) -> None:
    hub, url = await serve_hub(room_hub())
    target, other = await ws_connect(url + "/a"), await ws_connect(url + "/a")
    await wait_until(lambda: len(hub) == 2, "two sessions")
    _, page = await api(url, "sessions")
    local = target.transport.get_extra_info("sockname")
    session_id = next(e["id"] for e in page["sessions"]
                      if e["remote"] == f"{local[0]}:{local[1]}")
    assert await api(url, "disconnect", {"session": session_id, "code": 4003,
                                         "reason": "kicked"}) == (200, {"sessions": 1})
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(WAIT):
            await target.recv()
    assert target.close_code == 4003
    assert target.close_reason == "kicked"
    await other.send("still here")
    async with asyncio.timeout(WAIT):
        assert await other.recv() == "still here"
    await wait_until(lambda: len(hub) == 1, "one session left")
    # Gone, or never there: nothing to close.
    assert await api(url, "disconnect", {"session": session_id}) == (200, {"sessions": 0})
    assert (await api(url, "disconnect", {"session": session_id, "code": 1005}))[0] == 400
    assert (await api(url, "disconnect", {}))[0] == 400


async def run_top(*args: str) -> tuple[int, str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "melody", "top", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(WAIT * 6):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_melody_top_once_prints_the_live_numbers(serve_hub: Serve,
                                                       ws_connect: Connect) -> None:
    hub, url = await serve_hub(room_hub())
    clients = [await ws_connect(url + path) for path in ["/a,b", "/a", "/c"]]
    for ws in clients:
        await ws.send("hello")
        async with asyncio.timeout(WAIT):
            assert await ws.recv() == "hello"
    await wait_until(lambda: hub.stats()["messages_in"] == 3, "three messages in")
    code, out, err = await run_top(f"http://{HOST}:{port_of(url)}/api", "--api-key", KEY,
                                   "--once", "--interval", "0.1", "--topics", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"melody top  http://{HOST}:{port_of(url)}/api")
    assert "\x1b[" not in out  # not a terminal: no ANSI codes
    fields = {line[:16].strip(): line[16:].split() for line in lines[1:] if line[:16].strip()}
    assert fields["sessions"][0] == "3"
    assert fields["messages in"][-2:] == ["total", "3"]
    assert fields["messages out"][-2:] == ["total", "3"]
    assert fields["dropped"][0] == "0"
    assert fields["backplane"] == ["none"]
    assert fields["topics"] == ["3", "top", "2", "by", "subscribers:"]
    assert lines[-2:] == [f"{2:>12}  a", f"{1:>12}  b"]

    # ws:// and a bare host:port work too (the path defaults to /api).
    code, out, _ = await run_top(f"ws://{HOST}:{port_of(url)}", "--api-key", KEY, "--once",
                                 "--interval", "0.1")
    assert code == 0 and "sessions" in out
    code, out, err = await run_top(url, "--api-key", "wrong-key-wrong-key-0000", "--once")
    assert code == 1 and "HTTP 401" in err and out == ""
