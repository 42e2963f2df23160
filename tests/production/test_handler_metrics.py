"""Handler latency and errors on /metrics: ``melody_handler_seconds`` and
``melody_handler_errors_total``, per route for the router and per handler kind otherwise, with
a label set bounded by the application's code (never by what clients send)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from e2e_support import wait_until
from prod_support import scrape
from websockets.asyncio.client import ClientConnection

from melody import Melody, Session, codecs
from melody._hubstate import state_of
from melody.errors import RequestError
from melody.metrics import HANDLER_BUCKETS

pytestmark = pytest.mark.asyncio

Serve = Callable[..., Awaitable[tuple[Melody, str]]]
Connect = Callable[..., Awaitable[ClientConnection]]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def handler_labels(samples: Samples) -> set[str]:
    return {dict(labels)["handler"] for name, labels in samples
            if name.startswith("melody_handler_")}


async def call(ws: ClientConnection, msg: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(msg))
    reply: dict[str, Any] = json.loads(await ws.recv())
    assert reply["id"] == msg["id"], reply
    return reply


ROUTES = {"chat.send", "chat.fail", "chat.refuse", "chat.slow", "chat.stuck"}


def routed_hub() -> Melody:
    hub = Melody(codec=codecs.JSON)
    hub.handle_error(lambda session, error: None)  # the failures below are expected

    @hub.route("chat.send")
    def send(session: Session, data: Any) -> Any:
        return data

    @hub.route("chat.fail")
    def fail(session: Session, data: Any) -> Any:
        raise ValueError("broken handler")

    @hub.route("chat.refuse")
    def refuse(session: Session, data: Any) -> Any:
        raise RequestError("not allowed")

    @hub.route("chat.slow")
    async def slow(session: Session, data: Any) -> Any:
        await asyncio.sleep(0.3)
        return "done"

    @hub.route("chat.stuck", timeout=0.05)
    async def stuck(session: Session, data: Any) -> Any:
        await asyncio.sleep(30)

    return hub


async def test_routes_are_timed_and_their_errors_counted(serve_hub: Serve,
                                                         ws_connect: Connect) -> None:
    hub, url = await serve_hub(routed_hub(), metrics=True)
    ws = await ws_connect(url)
    for i in range(5):
        assert (await call(ws, {"type": "chat.send", "id": i, "data": i}))["ok"] is True
    assert (await call(ws, {"type": "chat.fail", "id": 10}))["error"] == "internal error"
    assert (await call(ws, {"type": "chat.refuse", "id": 11}))["error"] == "not allowed"
    assert (await call(ws, {"type": "chat.slow", "id": 12}))["data"] == "done"
    assert (await call(ws, {"type": "chat.stuck", "id": 13}))["error"] == "timeout"

    samples = await scrape(url)
    # Every call of a route is one observation under its registered name.
    assert value(samples, "melody_handler_seconds_count", handler="chat.send") == 5
    assert value(samples, "melody_handler_seconds_bucket", handler="chat.send",
                 le="+Inf") == 5
    for route in ("chat.fail", "chat.refuse", "chat.slow", "chat.stuck"):
        assert value(samples, "melody_handler_seconds_count", handler=route) == 1, route
    # An async handler is timed to its completion: the slow one slept 0.3 s, so it is past
    # the 0.25 s bucket (a lower bound, with room for a loop whose timers round to the ms).
    assert value(samples, "melody_handler_seconds_bucket", handler="chat.slow",
                 le="0.25") == 0
    assert value(samples, "melody_handler_seconds_sum", handler="chat.slow") > 0.25
    assert value(samples, "melody_handler_seconds_bucket", handler="chat.stuck",
                 le="0.025") == 0
    # Errors: an exception, a timeout; a RequestError refusal is the route's answer, not one.
    assert value(samples, "melody_handler_errors_total", handler="chat.fail",
                 error="exception") == 1
    assert value(samples, "melody_handler_errors_total", handler="chat.stuck",
                 error="timeout") == 1
    for route in ("chat.send", "chat.refuse", "chat.slow"):
        for error in ("exception", "timeout"):
            assert value(samples, "melody_handler_errors_total", handler=route,
                         error=error) == 0, (route, error)
    # The buckets are cumulative and end with +Inf.
    counts = [value(samples, "melody_handler_seconds_bucket", handler="chat.send", le=repr(b))
              for b in HANDLER_BUCKETS]
    assert counts == sorted(counts)
    assert hub.stats()["ack_timeouts"] == 1


async def test_unknown_types_add_one_label_value(serve_hub: Serve, ws_connect: Connect) -> None:
    _, url = await serve_hub(routed_hub(), metrics=True)
    ws = await ws_connect(url)
    assert (await call(ws, {"type": "chat.send", "id": 0}))["ok"] is True
    for i in range(1000):
        await ws.send(json.dumps({"type": f"made-up-{i}", "id": i}))
    for i in range(1000):
        assert json.loads(await ws.recv())["error"] == f"unknown type: 'made-up-{i}'"

    samples = await scrape(url)
    # A thousand client-chosen types are one label value, "_unknown", in the error counter;
    # the other values are the registered routes (with zero counts for the ones not called).
    assert "_unknown" in handler_labels(samples)
    assert handler_labels(samples) <= ROUTES | {"_unknown"}
    assert value(samples, "melody_handler_errors_total", handler="_unknown",
                 error="unknown_route") == 1000
    assert value(samples, "melody_handler_seconds_count", handler="_unknown") == 0
    assert not any("made-up" in v for _, labels in samples for _, v in labels)


async def test_the_fallback_route_has_a_fixed_label(serve_hub: Serve,
                                                    ws_connect: Connect) -> None:
    hub = routed_hub()

    @hub.route_fallback
    def anything(session: Session, msg: Any) -> Any:
        return msg["type"]

    _, url = await serve_hub(hub, metrics=True)
    ws = await ws_connect(url)
    for i in range(20):
        assert (await call(ws, {"type": f"other-{i}", "id": i}))["data"] == f"other-{i}"
    samples = await scrape(url)
    assert "_fallback" in handler_labels(samples)
    assert handler_labels(samples) <= ROUTES | {"_fallback"}
    assert value(samples, "melody_handler_seconds_count", handler="_fallback") == 20


async def test_handler_kinds_without_a_router(serve_hub: Serve, ws_connect: Connect) -> None:
    hub = Melody()
    hub.handle_error(lambda session, error: None)
    seen: list[str] = []

    @hub.handle_connect
    def connected(session: Session) -> None:
        seen.append("connect")

    @hub.handle_disconnect
    async def disconnected(session: Session) -> None:
        await asyncio.sleep(0.05)
        seen.append("disconnect")

    @hub.handle_message
    def text(session: Session, msg: str) -> None:
        if msg == "boom":
            raise ValueError("boom")
        session.write(msg)

    @hub.handle_message_binary
    async def binary(session: Session, msg: bytes) -> None:
        session.write_binary(msg)

    _, url = await serve_hub(hub, metrics=True)
    ws = await ws_connect(url)
    for i in range(3):
        await ws.send(f"t{i}")
        assert await ws.recv() == f"t{i}"
    await ws.send(b"bin")
    assert await ws.recv() == b"bin"
    await ws.send("boom")
    await ws.send("after")
    assert await ws.recv() == "after"  # the failing call ran (and was counted) before it
    await ws.close()
    await wait_until(lambda: "disconnect" in seen, "the async disconnect handler completed")
    await wait_until(lambda: len(hub) == 0, "the session is gone")

    samples = await scrape(url)
    assert value(samples, "melody_handler_seconds_count", handler="message") == 5
    assert value(samples, "melody_handler_seconds_count", handler="message_binary") == 1
    assert value(samples, "melody_handler_seconds_count", handler="connect") == 1
    assert value(samples, "melody_handler_seconds_count", handler="disconnect") == 1
    # The async disconnect handler slept 50 ms: timed to its completion (past 25 ms).
    assert value(samples, "melody_handler_seconds_bucket", handler="disconnect",
                 le="0.025") == 0
    assert value(samples, "melody_handler_errors_total", handler="message",
                 error="exception") == 1
    assert handler_labels(samples) == {"message", "message_binary", "connect", "disconnect"}


async def test_sent_message_handlers_are_timed(serve_hub: Serve, ws_connect: Connect) -> None:
    hub = Melody()
    sent: list[Any] = []

    @hub.handle_message
    def text(session: Session, msg: str) -> None:
        session.write(msg)  # one sent_message
        hub.broadcast_binary(msg.encode())  # one sent_message_binary per session

    @hub.handle_sent_message
    def sent_text(session: Session, msg: str) -> None:
        sent.append(msg)

    @hub.handle_sent_message_binary
    async def sent_binary(session: Session, msg: bytes) -> None:
        sent.append(msg)

    _, url = await serve_hub(hub, metrics=True)
    ws = await ws_connect(url)
    other = await ws_connect(url)
    await wait_until(lambda: len(hub) == 2, "both sessions are registered")
    for i in range(3):
        await ws.send(f"m{i}")
        assert await ws.recv() == f"m{i}"
        assert await ws.recv() == f"m{i}".encode()
        assert await other.recv() == f"m{i}".encode()
    await wait_until(lambda: len(sent) == 9, "every sent handler ran")

    samples = await scrape(url)
    assert value(samples, "melody_handler_seconds_count", handler="sent_message") == 3
    assert value(samples, "melody_handler_seconds_count", handler="sent_message_binary") == 6
    assert handler_labels(samples) == {"message", "sent_message", "sent_message_binary"}


async def test_metrics_off_leaves_handlers_unwrapped(serve_hub: Serve,
                                                     ws_connect: Connect) -> None:
    hub = routed_hub()
    _, url = await serve_hub(hub)
    state = state_of(hub)
    # No probe: the router and the raw handlers run with no wrapper and no clock read.
    assert state.probe is None
    ws = await ws_connect(url)
    assert (await call(ws, {"type": "chat.send", "id": 1, "data": "x"}))["data"] == "x"
