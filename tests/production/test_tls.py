"""wss:// end to end, with a CA and a certificate made at test time by trustme."""

from __future__ import annotations

import asyncio
import signal
import ssl
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trustme
from e2e_support import Recorder
from prod_support import ServedCLI, echo, http_get, round_trip
from websockets.asyncio.client import ClientConnection, connect

from melody import Melody

pytestmark = pytest.mark.asyncio

Serve = Callable[..., Awaitable[tuple[Melody, str]]]
Connect = Callable[..., Awaitable[ClientConnection]]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1", "localhost")


@pytest.fixture
def server_ssl(server_cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    return context


@pytest.fixture
def client_ssl(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    return context


async def test_wss_round_trip_and_broadcast(serve_hub: Serve, ws_connect: Connect,
                                            server_ssl: ssl.SSLContext,
                                            client_ssl: ssl.SSLContext) -> None:
    hub = echo(Melody())
    rec = Recorder(hub, skip=("message", "message_binary"))
    _, url = await serve_hub(hub, ssl=server_ssl)
    assert url.startswith("wss://")
    a = await ws_connect(url, ssl=client_ssl)
    b = await ws_connect(url, ssl=client_ssl)
    await a.send("over tls")
    assert await a.recv() == "over tls"
    await a.send(b"\x00\xff" * 40_000)
    assert await a.recv() == b"\x00\xff" * 40_000
    await rec.wait("connect", 2)
    assert hub.broadcast("to all") == 2
    assert await a.recv() == "to all" and await b.recv() == "to all"
    session = rec.sessions("connect")[0]
    assert session.link.proto.transport.get_extra_info("ssl_object") is not None


async def test_wss_refuses_a_client_that_does_not_trust_the_certificate(
        serve_hub: Serve, server_ssl: ssl.SSLContext) -> None:
    hub = echo(Melody())
    _, url = await serve_hub(hub, ssl=server_ssl)
    untrusting = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)  # system CAs only
    with pytest.raises(ssl.SSLCertVerificationError):
        async with asyncio.timeout(5):
            async with connect(url, ssl=untrusting, proxy=None):
                pass
    await round_trip(url, ssl=_trusting(url, server_ssl))


def _trusting(url: str, server_ssl: ssl.SSLContext) -> ssl.SSLContext:
    # A client context that skips verification: only to show that the hub still serves.
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def test_wss_with_metrics(serve_hub: Serve, server_ssl: ssl.SSLContext,
                                client_ssl: ssl.SSLContext) -> None:
    hub = echo(Melody())
    _, url = await serve_hub(hub, ssl=server_ssl, metrics=True)
    await round_trip(url, ssl=client_ssl)
    response = await http_get(url, "/healthz", ssl=client_ssl)
    assert (response.status, response.body) == (200, b"ok\n")


APP = textwrap.dedent('''
    import melody

    hub = melody.Melody()

    @hub.handle_message
    def echo(session, msg):
        session.write("echo:" + msg)
''')


@pytest.mark.slow
async def test_cli_serves_wss_with_certfile_and_keyfile(
        tmp_path: Path, server_cert: trustme.LeafCert, client_ssl: ssl.SSLContext) -> None:
    (tmp_path / "tlsapp.py").write_text(APP)
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(certfile))
    server_cert.private_key_pem.write_to_path(str(keyfile))
    served = await asyncio.to_thread(
        ServedCLI, ["serve", "tlsapp:hub", "--certfile", str(certfile), "--keyfile", str(keyfile),
                    "--no-uvloop"], tmp_path)
    try:
        assert served.scheme == "wss"
        async with asyncio.timeout(10):
            async with connect(served.url, ssl=client_ssl, proxy=None) as ws:
                await ws.send("hello")
                assert await ws.recv() == "echo:hello"
    finally:
        code, log = await asyncio.to_thread(served.stop, signal.SIGTERM)
    assert code == 0, log
