"""OpenTelemetry spans of a served hub, recorded by the SDK's in-memory exporter: the upgrade
and its middleware, each route call and handled message, the trace context a client sends in
the handshake headers or in a message's ``meta``, sampling, and no cost without a provider."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import wait_until
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from melody import Config, Melody, Session, codecs
from melody._hubstate import state_of
from melody.errors import HandshakeError, RequestError
from melody.middleware import CallNext, Handshake
from melody.tracing import configured_provider, enable, tracing_of

pytestmark = pytest.mark.asyncio

Serve = Callable[..., Awaitable[tuple[Melody, str]]]
Connect = Callable[..., Awaitable[ClientConnection]]

# A client's trace: W3C traceparent "00-<trace id>-<parent span id>-<flags>".
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
MESSAGE_TRACE = "0af7651916cd43dd8448eb211c80319c"
MESSAGE_SPAN = "b7ad6b7169203331"


def traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    # A provider of the test's own (the global one can be set once per process).
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def one(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    spans = named(exporter, name)
    assert len(spans) == 1, (name, [s.name for s in exporter.get_finished_spans()])
    return spans[0]


def hexid(value: int, width: int) -> str:
    return format(value, f"0{width}x")


class Tenant:
    """Middleware: the tenant header goes to the session's keys."""

    async def __call__(self, handshake: Handshake, call_next: CallNext) -> None:
        tenant = handshake.request.headers.get("X-Tenant")
        if tenant is None:
            raise HandshakeError(400, "X-Tenant header required")
        handshake.keys["tenant"] = tenant
        await call_next(handshake)


class Audit:
    """Middleware that only passes the request on."""

    async def __call__(self, handshake: Handshake, call_next: CallNext) -> None:
        await call_next(handshake)


def traced_hub(provider: TracerProvider, **config: Any) -> Melody:
    hub = Melody(Config(**config), codec=codecs.JSON)
    hub.handle_error(lambda session, error: None)  # the failures below are expected
    tracer = provider.get_tracer("app")

    @hub.route("chat.send")
    def send(session: Session, data: Any) -> Any:
        # What the handler does under its own span is a child of the route's span.
        with tracer.start_as_current_span("db.insert"):
            return data

    @hub.route("chat.later")
    async def later(session: Session, data: Any) -> Any:
        await asyncio.sleep(0)
        with tracer.start_as_current_span("db.select"):
            await asyncio.sleep(0)
        return data

    @hub.route("chat.fail")
    def fail(session: Session, data: Any) -> Any:
        raise ValueError("broken handler")

    @hub.route("chat.refuse")
    def refuse(session: Session, data: Any) -> Any:
        raise RequestError("not allowed")

    @hub.route("chat.stuck", timeout=0.05)
    async def stuck(session: Session, data: Any) -> Any:
        await asyncio.sleep(30)

    enable(hub, tracer_provider=provider)
    return hub


async def call(ws: ClientConnection, msg: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(msg))
    reply: dict[str, Any] = json.loads(await ws.recv())
    assert reply["id"] == msg["id"], reply
    return reply


async def test_upgrade_span_with_middleware_children_joins_the_client_trace(
        serve_hub: Serve, ws_connect: Connect, provider: TracerProvider,
        exporter: InMemorySpanExporter) -> None:
    hub = traced_hub(provider, paths=["/ws"])
    hub.use(Tenant())
    hub.use(Audit())
    _, url = await serve_hub(hub)
    port = int(url.rsplit(":", 1)[1])
    ws = await ws_connect(f"{url}/ws", user_agent_header="test-agent/1.0", additional_headers={
        "traceparent": traceparent(CLIENT_TRACE, CLIENT_SPAN), "X-Tenant": "acme"})
    assert (await call(ws, {"type": "chat.send", "id": 1, "data": "hi"}))["data"] == "hi"

    upgrade = one(exporter, "GET /ws")
    assert upgrade.kind is SpanKind.SERVER
    # Its parent is the span the client named in the handshake's traceparent.
    assert upgrade.parent is not None and upgrade.parent.is_remote
    assert hexid(upgrade.parent.span_id, 16) == CLIENT_SPAN
    assert hexid(upgrade.context.trace_id, 32) == CLIENT_TRACE
    attributes = dict(upgrade.attributes or {})
    assert attributes["http.request.method"] == "GET"
    assert attributes["url.path"] == "/ws"
    assert attributes["url.scheme"] == "http"
    assert attributes["network.peer.address"] == "127.0.0.1"
    assert isinstance(attributes["network.peer.port"], int)
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == port
    assert attributes["user_agent.original"] == "test-agent/1.0"
    assert attributes["http.response.status_code"] == 101
    assert "error.type" not in attributes
    assert upgrade.status.status_code is StatusCode.UNSET

    # The middleware, nested as the chain runs: Tenant (first registered) around Audit.
    tenant = one(exporter, "melody middleware Tenant")
    audit = one(exporter, "melody middleware Audit")
    assert tenant.parent is not None and tenant.parent.span_id == upgrade.context.span_id
    assert audit.parent is not None and audit.parent.span_id == tenant.context.span_id
    assert tenant.context.trace_id == upgrade.context.trace_id

    # The route call: a child of the handshake's client context, linked to the upgrade.
    route = one(exporter, "melody route chat.send")
    assert route.kind is SpanKind.CONSUMER
    assert route.parent is not None and hexid(route.parent.span_id, 16) == CLIENT_SPAN
    assert [link.context.span_id for link in route.links] == [upgrade.context.span_id]
    attributes = dict(route.attributes or {})
    assert attributes["messaging.system"] == "melody"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.operation.name"] == "chat.send"
    assert attributes["melody.route"] == "chat.send"
    assert attributes["messaging.message.id"] == "1"
    assert len(str(attributes["melody.session.id"])) == 16
    # What the handler did under its own span is the route span's child.
    db = one(exporter, "db.insert")
    assert db.parent is not None and db.parent.span_id == route.context.span_id


async def test_message_meta_is_the_parent_of_a_route_call(
        serve_hub: Serve, ws_connect: Connect, provider: TracerProvider,
        exporter: InMemorySpanExporter) -> None:
    _, url = await serve_hub(traced_hub(provider))
    ws = await ws_connect(url)  # no traceparent in the handshake
    meta = {"traceparent": traceparent(MESSAGE_TRACE, MESSAGE_SPAN), "tracestate": "k=v"}
    await call(ws, {"type": "chat.later", "id": "a", "data": 1, "meta": meta})
    await call(ws, {"type": "chat.send", "id": "b", "data": 2})

    later = one(exporter, "melody route chat.later")
    assert later.parent is not None and later.parent.is_remote
    assert hexid(later.parent.span_id, 16) == MESSAGE_SPAN
    assert hexid(later.context.trace_id, 32) == MESSAGE_TRACE
    assert later.context.trace_state.get("k") == "v"
    # The async handler's own span is its child: the span is current until it completes.
    db = one(exporter, "db.select")
    assert db.parent is not None and db.parent.span_id == later.context.span_id
    # Without meta and without a handshake traceparent: a trace of its own.
    send = one(exporter, "melody route chat.send")
    assert send.parent is None
    assert send.context.trace_id != later.context.trace_id
    upgrade = one(exporter, "GET")
    assert upgrade.parent is None
    assert [link.context.span_id for link in send.links] == [upgrade.context.span_id]


async def test_failures_set_the_error_status(
        serve_hub: Serve, ws_connect: Connect, provider: TracerProvider,
        exporter: InMemorySpanExporter) -> None:
    _, url = await serve_hub(traced_hub(provider))
    ws = await ws_connect(url)
    assert (await call(ws, {"type": "chat.fail", "id": 1}))["error"] == "internal error"
    assert (await call(ws, {"type": "chat.refuse", "id": 2}))["error"] == "not allowed"
    assert (await call(ws, {"type": "chat.stuck", "id": 3}))["error"] == "timeout"
    assert (await call(ws, {"type": "no.such", "id": 4}))["ok"] is False

    fail = one(exporter, "melody route chat.fail")
    assert fail.status.status_code is StatusCode.ERROR
    assert (fail.attributes or {})["error.type"] == "ValueError"
    assert [e.name for e in fail.events] == ["exception"]
    assert (fail.events[0].attributes or {})["exception.message"] == "broken handler"

    refuse = one(exporter, "melody route chat.refuse")
    assert refuse.status.status_code is StatusCode.UNSET
    assert (refuse.attributes or {})["melody.outcome"] == "refused"

    stuck = one(exporter, "melody route chat.stuck")
    assert stuck.status.status_code is StatusCode.ERROR
    assert (stuck.attributes or {})["melody.outcome"] == "timeout"
    assert (stuck.attributes or {})["error.type"] == "melody.errors.AckTimeout"

    unknown = one(exporter, "melody route _unknown")  # never the type the client sent
    assert (unknown.attributes or {})["melody.outcome"] == "unknown_route"


async def test_a_refused_upgrade_records_its_status(
        serve_hub: Serve, ws_connect: Connect, provider: TracerProvider,
        exporter: InMemorySpanExporter) -> None:
    hub = traced_hub(provider)
    hub.use(Tenant())
    _, url = await serve_hub(hub)
    with pytest.raises(InvalidStatus):
        await ws_connect(url)  # no X-Tenant header: 400
    upgrade = one(exporter, "GET")
    assert (upgrade.attributes or {})["http.response.status_code"] == 400
    assert (upgrade.attributes or {})["error.type"] == "400"
    assert upgrade.status.status_code is StatusCode.UNSET  # a 4xx is the client's error
    tenant = one(exporter, "melody middleware Tenant")
    assert (tenant.attributes or {})["http.response.status_code"] == 400
    assert tenant.parent is not None and tenant.parent.span_id == upgrade.context.span_id


async def test_plain_handlers_have_spans(
        serve_hub: Serve, ws_connect: Connect, provider: TracerProvider,
        exporter: InMemorySpanExporter) -> None:
    hub = Melody()
    hub.handle_error(lambda session, error: None)

    @hub.handle_connect
    def connected(session: Session) -> None:
        pass

    @hub.handle_disconnect
    async def disconnected(session: Session) -> None:
        await asyncio.sleep(0)

    @hub.handle_message
    def text(session: Session, msg: str) -> None:
        if msg == "boom":
            raise ValueError("boom")
        session.write(msg)

    enable(hub, tracer_provider=provider)
    _, url = await serve_hub(hub)
    ws = await ws_connect(url, additional_headers={
        "traceparent": traceparent(CLIENT_TRACE, CLIENT_SPAN)})
    await ws.send("héllo")
    assert await ws.recv() == "héllo"
    await ws.send("boom")
    await ws.send("x")
    assert await ws.recv() == "x"
    await ws.close()
    await wait_until(lambda: len(named(exporter, "melody disconnect")) == 1, "disconnect span")

    messages = named(exporter, "melody message")
    assert len(messages) == 3
    sizes = sorted(int((s.attributes or {})["messaging.message.body.size"]) for s in messages)
    assert sizes == [1, 4, 6]  # bytes, not characters: "héllo" is 6
    failed = [s for s in messages if s.status.status_code is StatusCode.ERROR]
    assert len(failed) == 1 and (failed[0].attributes or {})["error.type"] == "ValueError"
    for name in ("melody connect", "melody disconnect", "melody message"):
        for span in named(exporter, name):
            # Every span of the session belongs to the trace the client started.
            assert hexid(span.context.trace_id, 32) == CLIENT_TRACE, name


async def test_sampling_off_records_nothing(serve_hub: Serve, ws_connect: Connect,
                                            exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    hub = traced_hub(provider)
    hub.use(Audit())
    _, url = await serve_hub(hub)
    ws = await ws_connect(url, additional_headers={
        "traceparent": "00-" + CLIENT_TRACE + "-" + CLIENT_SPAN + "-00"})  # not sampled
    for i in range(5):
        assert (await call(ws, {"type": "chat.send", "id": i, "data": i}))["data"] == i
    assert (await call(ws, {"type": "chat.fail", "id": 9}))["ok"] is False
    assert tracing_of(hub) is not None  # traced, but the sampler drops every span
    assert exporter.get_finished_spans() == ()


async def test_no_provider_means_no_tracing(serve_hub: Serve, ws_connect: Connect) -> None:
    # This process never sets a global tracer provider (the tests pass their own).
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert configured_provider() is None
    hub = Melody(codec=codecs.JSON)

    @hub.route("chat.send")
    def send(session: Session, data: Any) -> Any:
        return data

    _, url = await serve_hub(hub)
    # Serving looked once and found none: no probe, so the router and the handlers never
    # call into OpenTelemetry.
    state = state_of(hub)
    assert tracing_of(hub) is None
    assert state.probe is None
    ws = await ws_connect(url)
    assert (await call(ws, {"type": "chat.send", "id": 1, "data": 5}))["data"] == 5


GLOBAL_PROVIDER_SCRIPT = textwrap.dedent('''
    import asyncio, json
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from websockets.asyncio.client import connect
    import melody

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    hub = melody.Melody(codec=melody.codecs.JSON)

    @hub.route("chat.send")
    def send(session, data):
        return data

    async def main():
        server = await melody.serve(hub, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with asyncio.timeout(10):
            async with connect(f"ws://127.0.0.1:{port}", proxy=None) as ws:
                await ws.send(json.dumps({"type": "chat.send", "id": 1, "data": 1}))
                await ws.recv()
        await hub.shutdown(timeout=2)
        print(json.dumps(sorted(s.name for s in exporter.get_finished_spans())))

    asyncio.run(main())
''')


async def test_a_global_provider_turns_tracing_on_when_serving(tmp_path: Path) -> None:
    # In a process of its own: the global provider can be set once per process.
    script = tmp_path / "serve_traced.py"
    script.write_text(GLOBAL_PROVIDER_SCRIPT)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(script), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await child.communicate()
    assert child.returncode == 0, err.decode()
    names = json.loads(out.decode().strip().splitlines()[-1])
    assert "GET" in names
    assert "melody route chat.send" in names
