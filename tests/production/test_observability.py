"""Prometheus metrics on /metrics and /healthz, and the structured log records."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import textwrap
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from e2e_support import Recorder, wait_until
from prod_support import ServedCLI, echo, http_get, round_trip, scrape, upgrade_status
from websockets.asyncio.client import ClientConnection

from melody import Config, Melody, Session
from melody._core.frames import OP_CONT, OP_TEXT
from melody._hubstate import state_of
from melody.config import RateLimit
from melody.logs import JsonFormatter
from melody.metrics import close_code_class, enable

pytestmark = pytest.mark.asyncio

Serve = Callable[..., Awaitable[tuple[Melody, str]]]
Connect = Callable[..., Awaitable[ClientConnection]]
Raw = Callable[..., Awaitable[Any]]


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_sessions_messages_broadcasts_rejections_disconnects(
        serve_hub: Serve, ws_connect: Connect, raw_connect: Raw) -> None:
    hub = echo(Melody(Config(allowed_origins=["https://ok.example"])))
    _, url = await serve_hub(hub, metrics=True)
    a = await ws_connect(url)
    b = await ws_connect(url)
    for i in range(3):
        await a.send(f"m{i}")
        assert await a.recv() == f"m{i}"
    await wait_until(lambda: len(hub) == 2, "two sessions")
    assert hub.broadcast("all") == 2
    assert hub.broadcast("again") == 2
    for ws in (a, b):
        assert [await ws.recv(), await ws.recv()] == ["all", "again"]
    response, client = await upgrade_status(url, "/", [("Origin", "https://evil.example")])
    client.close()
    assert response.status == 403

    samples = await scrape(url)
    assert value(samples, "melody_sessions") == 2
    assert value(samples, "melody_connects_total") == 2
    assert value(samples, "melody_messages_received_total") == 3
    assert value(samples, "melody_messages_sent_total") == 3 + 4
    assert value(samples, "melody_broadcasts_total") == 2
    assert value(samples, "melody_broadcast_fanout_seconds_count") == 2
    assert value(samples, "melody_broadcast_fanout_seconds_bucket", le="+Inf") == 2
    assert value(samples, "melody_handshake_rejections_total", status="403") == 1
    assert value(samples, "melody_received_bytes_total") > 0
    assert value(samples, "melody_sent_bytes_total") > 0
    assert value(samples, "process_open_fds") > 0  # the hub's own registry has the process

    # Three endings: a normal close, a dropped TCP connection, a protocol failure.
    await a.close()
    raw = await raw_connect(url)
    raw.close()
    bad = await raw_connect(url)
    bad.send_frame(OP_TEXT, b"\xce", fin=False)
    bad.send_frame(OP_CONT, b"\xff", fin=True)
    await bad.expect_failure(1007)
    await wait_until(lambda: len(hub) == 1, "only b is left")
    samples = await scrape(url)
    assert value(samples, "melody_disconnects_total", reason="normal") == 1
    assert value(samples, "melody_disconnects_total", reason="abnormal") == 1
    assert value(samples, "melody_disconnects_total", reason="protocol") == 1
    assert value(samples, "melody_sessions") == 1


async def test_metrics_count_rate_limited_and_queue_full_drops(serve_hub: Serve,
                                                                raw_connect: Raw) -> None:
    hub = Melody(Config(rate_limit=RateLimit(messages_per_second=0.001, burst_messages=2),
                        message_buffer_size=1, write_buffer_high=1024))
    rec = Recorder(hub)
    _, url = await serve_hub(hub, metrics=True)
    raw = await raw_connect(url)
    for _ in range(5):
        raw.send_frame(OP_TEXT, b"x")
    await rec.wait("message", 2)
    await wait_until(lambda: hub.stats()["messages_rate_limited"] == 3, "3 over the limit")
    samples = await scrape(url)
    assert value(samples, "melody_frames_dropped_total", reason="rate_limited") == 3
    assert value(samples, "melody_frames_dropped_total", reason="queue_full") == 0


async def test_healthz_and_metrics_only_when_enabled(serve_hub: Serve) -> None:
    hub = echo(Melody())
    _, url = await serve_hub(hub)
    assert (await http_get(url, "/metrics")).status == 404
    assert (await http_get(url, "/healthz")).status == 404

    hub2 = echo(Melody())
    _, url2 = await serve_hub(hub2, metrics=True)
    response = await http_get(url2, "/healthz")
    assert (response.status, response.body) == (200, b"ok\n")
    assert (await http_get(url2, "/other")).status == 404
    # Closed (shutting down): load balancers are told to stop sending clients.
    state_of(hub2).closed = True
    try:
        assert (await http_get(url2, "/healthz")).status == 503
    finally:
        state_of(hub2).closed = False


async def test_user_http_handler_still_answers_other_paths(serve_hub: Serve) -> None:
    hub = Melody()
    hub.handle_http(lambda request: b"page" if request.path == "/" else None)
    _, url = await serve_hub(hub, metrics=True)
    assert (await http_get(url, "/")).body == b"page"
    assert (await http_get(url, "/metrics")).status == 200


async def test_the_message_path_is_wrapped_only_with_metrics_on(serve_hub: Serve) -> None:
    hub = Melody()

    def on_message(session: Session, msg: str) -> None:
        pass

    hub.handle_message(on_message)
    _, _url = await serve_hub(hub)
    # Without metrics the compiled core calls the user's function itself: no wrapper.
    assert state_of(hub).dispatch.on_text is on_message
    assert state_of(hub).probe is None
    # With them, the handler is timed (melody_handler_seconds): the one wrapper is the probe's.
    metrics = enable(hub)
    assert enable(hub) is metrics  # idempotent
    assert state_of(hub).probe is metrics.handlers
    assert state_of(hub).dispatch.on_text is not on_message


async def test_metrics_on_a_given_registry(serve_hub: Serve) -> None:
    registry = prometheus_client.CollectorRegistry()
    mine = prometheus_client.Counter("app_things", "Things.", registry=registry)
    mine.inc(4)
    hub = echo(Melody())
    enable(hub, registry=registry)
    _, url = await serve_hub(hub)  # enabled before serve: no metrics=True needed
    await round_trip(url)
    samples = await scrape(url)
    assert value(samples, "app_things_total") == 4
    assert value(samples, "melody_connects_total") == 1


async def test_close_code_classes() -> None:
    assert [close_code_class(c) for c in (1000, 1001, 1005, 1006, 1002, 1007, 1009, 1008,
                                          1011, 1015, 4000, 2000)] == [
        "normal", "going_away", "no_status", "abnormal", "protocol", "protocol", "protocol",
        "policy", "server_error", "tls", "application", "other"]


# -- structured logs ------------------------------------------------------------------------------


async def test_connect_and_disconnect_records_carry_fields(
        serve_hub: Serve, ws_connect: Connect, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="melody.session")
    hub = echo(Melody())
    _, url = await serve_hub(hub)
    ws = await ws_connect(url + "/room")
    await ws.send("x")
    await ws.recv()
    await ws.close(4001, "bye")
    await wait_until(lambda: len(hub) == 0, "session ended")
    connect, disconnect = [r for r in caplog.records if r.name == "melody.session"]
    f: Any = connect
    assert (f.event, f.path) == ("connect", "/room")
    assert f.peer.startswith("127.0.0.1:")
    g: Any = disconnect
    assert (g.event, g.close_code, g.close_reason, g.session_id) == (
        "disconnect", 4001, "bye", f.session_id)
    assert g.duration >= 0


async def test_error_records_carry_fields_when_no_error_handler(
        serve_hub: Serve, raw_connect: Raw, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="melody")
    hub = Melody(Config(max_message_size=10))
    _, url = await serve_hub(hub)
    raw = await raw_connect(url, "/big")
    raw.send_frame(OP_TEXT, b"y" * 11)
    await raw.expect_failure(1009)
    await wait_until(lambda: any(getattr(r, "event", None) == "error" for r in caplog.records),
                     "an error record")
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "error"]
    r: Any = record
    assert (r.error, r.close_code, r.path) == ("MessageTooBig", 1009, "/big")


async def test_json_formatter_writes_extra_fields() -> None:
    record = logging.LogRecord("melody.session", logging.INFO, __file__, 1, "disconnect %s",
                               ("x",), None)
    record.__dict__.update(event="disconnect", close_code=1001, duration=0.5, peer=None)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "disconnect x"
    assert line["level"] == "INFO" and line["logger"] == "melody.session"
    assert (line["event"], line["close_code"], line["duration"], line["peer"]) == (
        "disconnect", 1001, 0.5, None)
    assert line["ts"].endswith("Z")


# -- the command line -----------------------------------------------------------------------------

APP = textwrap.dedent('''
    import melody

    hub = melody.Melody()

    @hub.handle_message
    def echo(session, msg):
        session.write(msg)
''')


@pytest.mark.slow
async def test_cli_metrics_flag(tmp_path: Path) -> None:
    (tmp_path / "metricsapp.py").write_text(APP)
    served = await asyncio.to_thread(ServedCLI, ["serve", "metricsapp:hub", "--metrics"],
                                     tmp_path)
    try:
        await round_trip(served.url)

        def get(path: str) -> bytes:
            with urllib.request.urlopen(f"http://127.0.0.1:{served.port}{path}",
                                        timeout=10) as response:
                return bytes(response.read())

        assert await asyncio.to_thread(get, "/healthz") == b"ok\n"
        text = (await asyncio.to_thread(get, "/metrics")).decode()
        assert "melody_connects_total 1.0" in text
        assert "melody_broadcast_fanout_seconds_bucket" in text
    finally:
        code, log = await asyncio.to_thread(served.stop, signal.SIGTERM)
    assert code == 0, log
    assert "disconnect 127.0.0.1:" in log  # the session records reach the CLI's log
