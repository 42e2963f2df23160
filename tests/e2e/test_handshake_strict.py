"""A strict opening handshake over real sockets: what a lax parser would let through.

Each hostile request goes to a real hub on 127.0.0.1 (asyncio and uvloop) as raw bytes. The
test reads the status line as it went on the wire, checks that the connection was closed
rather than upgraded, and that no handler ran — in particular that a body smuggled behind an
upgrade request never reached ``handle_message`` as a WebSocket frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from e2e_support import HOST, WAIT, RawClient, Recorder, port_of, upgrade_request, ws_key

from melody import Melody
from melody._core.frames import OP_TEXT, encode_frame

pytestmark = pytest.mark.asyncio

Serve = Callable[..., Awaitable[tuple[Melody, str]]]

# A masked text frame, as a client sends it: what a smuggled body would be read as.
SMUGGLED_FRAME = encode_frame(OP_TEXT, b"smuggled", mask=True)
REASONS = {400: b"Bad Request", 403: b"Forbidden", 505: b"HTTP Version Not Supported"}


def head(port: int, request_line: str = "GET / HTTP/1.1",
         fields: list[tuple[str, str]] | None = None, *, host: str | None = None) -> bytes:
    """An otherwise valid upgrade request with ``request_line``, extra ``fields`` and ``host``."""
    lines = [request_line, f"Host: {host if host is not None else f'{HOST}:{port}'}",
             "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {ws_key()}",
             "Sec-WebSocket-Version: 13", *(f"{n}: {v}" for n, v in fields or ())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def exchange(url: str, data: bytes) -> tuple[bytes, bytes]:
    """Send ``data``; return the response's status line and body once the hub closed TCP."""
    raw = await RawClient.open(port_of(url))
    try:
        raw.send(data)
        async with asyncio.timeout(WAIT):
            response = await raw.reader.read()  # to EOF: the hub must close, not upgrade
    except ConnectionResetError:
        raise AssertionError("the hub reset the connection instead of answering") from None
    finally:
        raw.close()
    status_line, _, rest = response.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"\r\nconnection: close" in b"\r\n" + headers.lower(), response
    return status_line, body


async def assert_refused(hub: Melody, url: str, data: bytes, status: int) -> bytes:
    """``data`` must get ``status`` with its reason phrase, no upgrade, and no handler call."""
    rec = Recorder(hub)
    status_line, body = await exchange(url, data)
    assert status_line == b"HTTP/1.1 %d %s" % (status, REASONS[status]), (status_line, body)
    await asyncio.sleep(0.05)  # a message parsed from a smuggled body would arrive by now
    assert rec.events == [], rec.events
    assert len(hub) == 0
    return body


# -- RFC 9112 section 2.3: HTTP-version ------------------------------------------------------


@pytest.mark.parametrize(("version", "status"), [
    ("HTTP/9.9", 505), ("HTTP/2.0", 505), ("HTTP/0.9", 505), ("HTTP/3.0", 505),
    ("HTTP/1.0", 400), ("HTTP/1.1 ", 400), ("HTTP/1.10", 400), ("http/1.1", 400),
])
async def test_upgrade_over_other_http_versions_is_refused(
        hub_url: tuple[Melody, str], version: str, status: int) -> None:
    hub, url = hub_url
    await assert_refused(hub, url, head(port_of(url), f"GET / {version}"), status)


# -- RFC 9112 section 6: no body behind an upgrade request -----------------------------------


def chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)


BODIES: list[tuple[str, list[tuple[str, str]], bytes]] = [
    ("content-length", [("Content-Length", str(len(SMUGGLED_FRAME)))], SMUGGLED_FRAME),
    ("chunked", [("Transfer-Encoding", "chunked")], chunked(SMUGGLED_FRAME)),
    ("cl-and-te", [("Content-Length", "4"), ("Transfer-Encoding", "chunked")],
     chunked(SMUGGLED_FRAME)),
    ("cl-repeated", [("Content-Length", "0"), ("Content-Length", str(len(SMUGGLED_FRAME)))],
     SMUGGLED_FRAME),
]


@pytest.mark.parametrize("middleware", [False, True], ids=["inline", "middleware"])
@pytest.mark.parametrize(("fields", "body"),
                         [pytest.param(f, b, id=name) for name, f, b in BODIES])
async def test_smuggled_body_is_refused_and_never_read_as_frames(
        serve_hub: Serve, middleware: bool, fields: list[tuple[str, str]], body: bytes) -> None:
    hub = Melody()
    if middleware:
        # The chain decides after the read callback returned, with the body already buffered.
        async def passthrough(handshake: Any, call_next: Any) -> None:
            await call_next(handshake)

        hub.use(passthrough)
    hub, url = await serve_hub(hub)
    reason = await assert_refused(hub, url, head(port_of(url), fields=fields) + body, 400)
    assert b"Content-Length" in reason or b"Transfer-Encoding" in reason


async def test_content_length_zero_still_upgrades(hub_url: tuple[Melody, str]) -> None:
    hub, url = hub_url
    rec = Recorder(hub)
    raw = await RawClient.open(port_of(url))
    try:
        response = await raw.request(head(port_of(url), fields=[("Content-Length", "0")]))
        assert response.status == 101
        raw.send(SMUGGLED_FRAME)  # after the 101 the same bytes are a frame, as they should be
        assert await rec.wait("message") == [("smuggled",)]
    finally:
        raw.close()


# -- RFC 9112 section 3.2: request-target and Host --------------------------------------------


async def test_absolute_form_naming_another_host_is_400(hub_url: tuple[Melody, str]) -> None:
    hub, url = hub_url
    port = port_of(url)
    for target in (f"http://evil.example:{port}/", "http://127.0.0.1/",
                   f"http://user@{HOST}:{port}/", f"ftp://{HOST}:{port}/"):
        await assert_refused(hub, url, head(port, f"GET {target} HTTP/1.1"), 400)


async def test_absolute_form_naming_this_host_upgrades(hub_url: tuple[Melody, str]) -> None:
    _hub, url = hub_url
    port = port_of(url)
    raw = await RawClient.open(port)
    try:
        response = await raw.request(head(port, f"GET ws://{HOST}:{port}/chat HTTP/1.1"))
        assert response.status == 101
    finally:
        raw.close()


@pytest.mark.parametrize("target", ["*", "{host}:{port}", "chat"])
async def test_asterisk_authority_and_relative_targets_are_400(
        hub_url: tuple[Melody, str], target: str) -> None:
    hub, url = hub_url
    port = port_of(url)
    line = f"GET {target.format(host=HOST, port=port)} HTTP/1.1"
    await assert_refused(hub, url, head(port, line), 400)


@pytest.mark.parametrize("host", ["", "{host}:{port}/x", "user@{host}:{port}", "{host}:99999",
                                  "evil.com\\.example.com", "a%2fb", "[::1"])
async def test_upgrade_with_malformed_host_is_400(hub_url: tuple[Melody, str], host: str) -> None:
    hub, url = hub_url
    port = port_of(url)
    data = head(port, host=host.format(host=HOST, port=port))
    assert b"Host" in await assert_refused(hub, url, data, 400)


async def test_two_host_headers_are_400(hub_url: tuple[Melody, str]) -> None:
    hub, url = hub_url
    port = port_of(url)
    data = upgrade_request(port, headers=[("Host", f"{HOST}:{port}")])
    await assert_refused(hub, url, data, 400)


# -- RFC 6454: origins ------------------------------------------------------------------------


@pytest.mark.parametrize("origin", [
    "https://evil.com\\.example.com", "https://evil.com%2f.example.com", "https://user@evil.com",
    "https://evil.com/.example.com", "https://a.example.com.evil.com", "https://.example.com",
    "https://app.example.com.", "https://app.example.com:0", "https://example.com", "null",
])
async def test_origin_outside_the_wildcard_is_403(serve_hub: Serve, origin: str) -> None:
    hub, url = await serve_hub(allowed_origins=["https://*.example.com"])
    data = upgrade_request(port_of(url), headers=[("Origin", origin)])
    assert await assert_refused(hub, url, data, 403) == b"origin not allowed\n"


@pytest.mark.parametrize("origin", ["https://app.example.com", "HTTPS://A.B.Example.COM:443"])
async def test_origin_inside_the_wildcard_upgrades(serve_hub: Serve, origin: str) -> None:
    _hub, url = await serve_hub(allowed_origins=["https://*.example.com"])
    raw = await RawClient.connect(port_of(url), headers=[("Origin", origin)])
    raw.close()
