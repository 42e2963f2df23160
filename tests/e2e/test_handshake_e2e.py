"""The opening handshake over real sockets (RFC 6455 section 4): refusals with the right HTTP
status and headers, the hooks that decide, and the limits on what a client may send."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import pytest
from e2e_support import WAIT, RawClient, Recorder, port_of, upgrade_request, ws_key

from melody import Melody
from melody._core.frames import OP_BINARY, OP_TEXT, encode_frame
from melody.errors import HandshakeError

pytestmark = pytest.mark.asyncio

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def refused(url: str, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``head``; return the response, after checking the hub then closed TCP."""
    raw = await RawClient.open(port_of(url))
    try:
        response = await raw.request(head)
        if response.status != 101:
            assert response.headers.get("connection", "").lower() == "close"
            await raw.expect_eof()
        return response.status, response.headers, response.body
    finally:
        raw.close()


async def test_accept_response_follows_section_4_2_2(hub_url, raw_connect) -> None:
    _hub, url = hub_url
    raw = await raw_connect(url, upgrade=False)
    key = ws_key()
    response = await raw.request(upgrade_request(port_of(url), "/chat", key=key))
    assert response.status == 101
    assert response.headers["upgrade"].lower() == "websocket"
    assert response.headers["connection"].lower() == "upgrade"
    expected = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    assert response.headers["sec-websocket-accept"] == expected
    assert "sec-websocket-extensions" not in response.headers
    assert "sec-websocket-protocol" not in response.headers


async def test_missing_key_is_400(hub_url) -> None:
    hub, url = hub_url
    rec = Recorder(hub)
    status, _headers, body = await refused(
        url, upgrade_request(port_of(url), omit=("Sec-WebSocket-Key",)))
    assert status == 400
    assert b"Sec-WebSocket-Key" in body
    assert rec.events == [] and len(hub) == 0


async def test_key_that_is_not_16_bytes_is_400(hub_url) -> None:
    _hub, url = hub_url
    status, _, _ = await refused(
        url, upgrade_request(port_of(url), key=base64.b64encode(b"short").decode()))
    assert status == 400


async def test_version_8_is_426_naming_version_13(hub_url) -> None:
    _hub, url = hub_url
    status, headers, _ = await refused(url, upgrade_request(port_of(url), version="8"))
    assert status == 426
    assert headers["sec-websocket-version"] == "13"


async def test_post_upgrade_is_405(hub_url) -> None:
    _hub, url = hub_url
    status, headers, _ = await refused(url, upgrade_request(port_of(url), method="POST"))
    assert status == 405
    assert headers["allow"] == "GET"


async def test_missing_host_and_http_1_0_are_400(hub_url) -> None:
    _hub, url = hub_url
    status, _, _ = await refused(url, upgrade_request(port_of(url), omit=("Host",)))
    assert status == 400
    head = upgrade_request(port_of(url)).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    status, _, _ = await refused(url, head)
    assert status == 400


async def test_garbage_instead_of_http_is_400(hub_url) -> None:
    _hub, url = hub_url
    status, _, _ = await refused(url, b"\x16\x03\x01 hello there\r\n\r\n")
    assert status == 400


async def test_plain_get_without_upgrade_is_404(hub_url) -> None:
    _hub, url = hub_url
    status, _, _ = await refused(url, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 404


async def test_handle_http_answers_plain_gets(serve_hub) -> None:
    hub = Melody()
    seen = []

    @hub.handle_http
    def pages(request):
        seen.append((request.method, request.path, request.query))
        if request.path == "/health":
            return "ok\n"
        if request.path == "/busy":
            return (503, [("Retry-After", "5")], b"busy")
        if request.path == "/boom":
            raise RuntimeError("page failed")
        return None

    hub, url = await serve_hub(hub)
    status, headers, body = await refused(url, b"GET /health?full=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body) == (200, b"ok\n")
    status, headers, body = await refused(url, b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, headers["retry-after"], body) == (503, "5", b"busy")
    status, _, _ = await refused(url, b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 404
    status, _, _ = await refused(url, b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 500
    assert seen[0] == ("GET", "/health", "full=1")
    assert len(seen) == 4
    # Upgrades still work next to the hook.
    raw = await RawClient.connect(port_of(url))
    raw.close()


async def test_async_handle_http(serve_hub) -> None:
    hub = Melody()

    @hub.handle_http
    async def page(request):
        await asyncio.sleep(0.01)
        return b"<h1>hi</h1>"

    hub, url = await serve_hub(hub)
    status, _, body = await refused(url, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body) == (200, b"<h1>hi</h1>")


async def test_paths_restrict_where_upgrades_are_accepted(serve_hub) -> None:
    _hub, url = await serve_hub(paths=["/ws"])
    port = port_of(url)
    status, _, _ = await refused(url, upgrade_request(port, "/other"))
    assert status == 404
    status, _, _ = await refused(url, upgrade_request(port, "/ws/"))
    assert status == 404
    raw = await RawClient.connect(port, "/ws?token=1")
    raw.close()
    raw = await RawClient.connect(port, "/ws")
    raw.close()


async def test_allowed_origins_refuse_other_origins_with_403(serve_hub) -> None:
    hub, url = await serve_hub(allowed_origins=["https://ok.example"])
    port = port_of(url)
    rec = Recorder(hub)
    status, _, _ = await refused(
        url, upgrade_request(port, headers=[("Origin", "https://evil.example")]))
    assert status == 403
    status, _, _ = await refused(
        url, upgrade_request(port, headers=[("Origin", "http://ok.example")]))
    assert status == 403
    ok = await RawClient.connect(port, headers=[("Origin", "https://ok.example")])
    no_origin = await RawClient.connect(port)  # not a browser: no Origin, allowed
    await rec.wait("connect", 2)
    ok.close()
    no_origin.close()


async def test_handle_upgrade_refusal_with_401(serve_hub) -> None:
    hub = Melody()
    rec = Recorder(hub)

    @hub.handle_upgrade
    def check_token(request):
        if request.query_params.get("token") != ["s3cret"]:
            raise HandshakeError(401, "bad token", [("WWW-Authenticate", "Bearer")])
        return {"token": "s3cret"}

    hub, url = await serve_hub(hub)
    port = port_of(url)
    status, headers, body = await refused(url, upgrade_request(port, "/?token=nope"))
    assert status == 401
    assert headers["www-authenticate"] == "Bearer"
    assert b"bad token" in body
    assert rec.events == []
    raw = await RawClient.connect(port, "/?token=s3cret")
    await rec.wait("connect")
    assert rec.sessions("connect")[0]["token"] == "s3cret"
    raw.close()


async def test_handle_upgrade_returning_false_is_403(serve_hub) -> None:
    hub = Melody()
    hub.handle_upgrade(lambda request: False)
    hub, url = await serve_hub(hub)
    status, _, _ = await refused(url, upgrade_request(port_of(url)))
    assert status == 403


async def test_handle_upgrade_raising_is_500_and_reported(serve_hub) -> None:
    hub = Melody()
    rec = Recorder(hub)
    failure = RuntimeError("hook bug")

    @hub.handle_upgrade
    def broken(request):
        raise failure

    hub, url = await serve_hub(hub)
    status, _, _ = await refused(url, upgrade_request(port_of(url)))
    assert status == 500
    assert rec.of("error") == [(failure,)]
    assert rec.sessions("error") == [None]


async def test_async_handle_upgrade_refusal(serve_hub) -> None:
    hub = Melody()

    @hub.handle_upgrade
    async def check(request):
        await asyncio.sleep(0.01)
        raise HandshakeError(401, "no")

    hub, url = await serve_hub(hub)
    status, _, _ = await refused(url, upgrade_request(port_of(url)))
    assert status == 401


@pytest.mark.parametrize("hook", ["none", "sync", "async"])
async def test_frames_pipelined_behind_the_request_are_not_lost(serve_hub, hook) -> None:
    # The client sends its first frames in the same write as the request, before the 101.
    hub = Melody()
    if hook == "sync":
        hub.handle_upgrade(lambda request: {"who": "sync"})
    elif hook == "async":
        async def decide(request):
            await asyncio.sleep(0.02)
            return {"who": "async"}

        hub.handle_upgrade(decide)

    @hub.handle_message
    def echo(session, msg):
        session.write(f"{session.get('who')}:{msg}")

    @hub.handle_message_binary
    def echo_binary(session, msg):
        session.write_binary(msg)

    hub, url = await serve_hub(hub)
    port = port_of(url)
    raw = await RawClient.open(port)
    raw.send(upgrade_request(port) + encode_frame(OP_TEXT, b"one", mask=True)
             + encode_frame(OP_BINARY, b"\x02", mask=True)
             + encode_frame(OP_TEXT, b"three", mask=True))
    response = await raw.read_response()
    assert response.status == 101
    who = {"none": "None", "sync": "sync", "async": "async"}[hook]
    assert (await raw.recv_data()).payload == f"{who}:one".encode()
    assert (await raw.recv_data()).payload == b"\x02"
    assert (await raw.recv_data()).payload == f"{who}:three".encode()
    raw.close()


async def test_header_block_over_max_header_size_is_431(serve_hub) -> None:
    _hub, url = await serve_hub(max_header_size=1024)
    port = port_of(url)
    big = upgrade_request(port, headers=[("X-Filler", "f" * 2000)])
    status, _, _ = await refused(url, big)
    assert status == 431
    # A head that never ends is refused as soon as it passes the limit.
    raw = await RawClient.open(port)
    raw.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"f" * 1100)
    response = await raw.read_response()
    assert response.status == 431
    await raw.expect_eof()
    raw.close()
    # Just under the limit is fine.
    ok = upgrade_request(port, headers=[("X-Filler", "f" * 700)])
    assert len(ok) < 1024
    raw = await RawClient.open(port)
    assert (await raw.request(ok)).status == 101
    raw.close()


async def test_a_half_sent_request_is_dropped_after_handshake_timeout(serve_hub) -> None:
    hub, url = await serve_hub(handshake_timeout=0.3)
    rec = Recorder(hub)
    raw = await RawClient.open(port_of(url))
    raw.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
    await raw.expect_eof(timeout=WAIT)  # no response at all: TCP is dropped
    raw.close()
    silent = await RawClient.open(port_of(url))  # connects and sends nothing
    await silent.expect_eof(timeout=WAIT)
    silent.close()
    assert rec.events == [] and len(hub) == 0


async def test_a_completed_handshake_is_not_timed_out(serve_hub) -> None:
    hub, url = await serve_hub(handshake_timeout=0.2)
    rec = Recorder(hub)
    raw = await RawClient.connect(port_of(url))
    await rec.wait("connect")
    await asyncio.sleep(0.4)  # longer than handshake_timeout
    raw.send_frame(OP_TEXT, b"still here")
    assert await rec.wait("message") == [("still here",)]
    assert rec.of("disconnect") == []
    raw.close()


async def test_an_upgrade_after_hub_close_on_an_open_connection_is_503(serve_hub) -> None:
    hub, url = await serve_hub()
    rec = Recorder(hub)
    raw = await RawClient.open(port_of(url))  # TCP accepted before the hub closed
    await asyncio.sleep(0)
    hub.close()
    response = await raw.request(upgrade_request(port_of(url)))
    assert response.status == 503
    await raw.expect_eof()
    raw.close()
    assert rec.events == [] and len(hub) == 0


async def test_an_async_handle_upgrade_that_finishes_after_hub_close_is_refused(
        serve_hub) -> None:
    # The sync path refuses upgrades to a closed hub with 503; the async path must too, or a
    # session is registered in a hub that is closed (and that nothing will ever close).
    hub = Melody()
    rec = Recorder(hub)
    deciding = asyncio.Event()
    release = asyncio.Event()

    @hub.handle_upgrade
    async def slow_auth(request):
        deciding.set()
        await release.wait()
        return {"user": "late"}

    hub, url = await serve_hub(hub)
    raw = await RawClient.open(port_of(url))
    raw.send(upgrade_request(port_of(url)))
    await asyncio.wait_for(deciding.wait(), WAIT)
    hub.close()
    release.set()
    response = await raw.read_response()
    raw.close()
    assert response.status == 503, "a closed hub accepted a session (101)"
    assert rec.of("connect") == []
    assert len(hub) == 0


async def test_a_request_dribbled_byte_by_byte_is_accepted(serve_hub) -> None:
    hub, url = await serve_hub()
    raw = await RawClient.open(port_of(url))
    head = upgrade_request(port_of(url), "/slowly?x=1")
    await raw.dribble(head, 1)
    response = await raw.read_response()
    assert response.status == 101
    raw.send_frame(OP_TEXT, b"hi")
    rec = Recorder(hub)  # registered late on purpose: only the message is awaited
    await rec.wait("message")
    raw.close()
