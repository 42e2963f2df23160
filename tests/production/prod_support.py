"""Helpers for the production tests: plain HTTP requests, a healthy-client probe, scraping
``/metrics``, raw clients from another loopback address, and counting file descriptors."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl as _ssl
from typing import Any

from e2e_support import HOST, WAIT, HttpResponse, RawClient, port_of, upgrade_request
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from melody import Melody, Session


def echo(hub: Melody) -> Melody:
    """Register an echo handler (text and binary) on ``hub``; return it."""

    @hub.handle_message
    def on_text(session: Session, msg: str) -> None:
        session.write(msg)

    @hub.handle_message_binary
    def on_binary(session: Session, msg: bytes) -> None:
        session.write_binary(msg)

    return hub


async def http_get(url: str, path: str, headers: list[tuple[str, str]] | None = None, *,
                   ssl: _ssl.SSLContext | None = None) -> HttpResponse:
    """A plain ``GET path`` to the hub at ``url``: the response (status, headers, body)."""
    port = port_of(url)
    reader, writer = await asyncio.open_connection(
        HOST, port, ssl=ssl, server_hostname=HOST if ssl else None)
    client = RawClient(reader, writer)
    lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    lines += [f"{n}: {v}" for n, v in headers or ()]
    try:
        return await client.request(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    finally:
        writer.transport.abort()


async def upgrade_status(url: str, path: str = "/",
                         headers: list[tuple[str, str]] | None = None,
                         *, source: str | None = None) -> tuple[HttpResponse, RawClient]:
    """Send a hand-written upgrade request (from ``source`` address if given); return the
    response and the client (the caller closes it)."""
    client = await raw_from(url, source) if source else await RawClient.open(port_of(url))
    response = await client.request(upgrade_request(port_of(url), path, headers))
    return response, client


async def raw_from(url: str, source: str) -> RawClient:
    """A raw TCP client bound to ``source`` (another 127.x.y.z address) before connecting."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port_of(url)))
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 24)
    return RawClient(reader, writer)


async def round_trip(url: str, text: str = "ping?", **kwargs: Any) -> None:
    """Open a fresh ``websockets`` client, echo ``text`` through the hub, close: the hub still
    serves its other sessions normally."""
    kwargs.setdefault("proxy", None)
    kwargs.setdefault("ping_interval", None)
    kwargs.setdefault("open_timeout", WAIT)
    async with asyncio.timeout(2 * WAIT):
        async with connect(url, **kwargs) as ws:
            await ws.send(text)
            assert await ws.recv() == text


def scrape_text(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse the Prometheus text format into {(sample name, sorted labels): value}."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics from the hub at ``url`` and parse it."""
    response = await http_get(url, "/metrics")
    assert response.status == 200, response
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return scrape_text(response.body.decode())


def open_fds() -> int:
    """File descriptors open in this process now."""
    return len(os.listdir("/proc/self/fd"))


class ServedCLI:
    """``python -m melody ARGS --port 0`` in a subprocess; ``port`` read from its log."""

    def __init__(self, args: list[str], cwd: Any, env: dict[str, str] | None = None) -> None:
        import re
        import subprocess
        import sys
        from pathlib import Path

        root = Path(__file__).resolve().parent.parent.parent
        environ = dict(os.environ if env is None else env)
        environ["PYTHONPATH"] = str(root) + os.pathsep + environ.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "melody", *args, "--port", "0"], cwd=cwd, env=environ,
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        assert self.proc.stderr is not None
        self.lines: list[str] = []
        for _ in range(200):
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            found = re.search(r"serving on (wss?)://[^:]+:(\d+)", line)
            if found:
                self.scheme, self.port = found.group(1), int(found.group(2))
                return
        self.proc.kill()
        raise AssertionError("server did not start:\n" + "".join(self.lines))

    @property
    def url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.port}"

    def stop(self, sig: int) -> tuple[int, str]:
        """Send ``sig``; return the exit code and the rest of stderr."""
        self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=30)
            return self.proc.returncode, "".join(self.lines) + err
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
