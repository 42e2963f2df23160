"""OpenTelemetry traces: a span for each upgrade (its middleware as child spans) and for each
handled message or route call, joined to the trace a client sends.

On when ``opentelemetry-api`` is installed (``pip install melody[otel]``) and the application
configured a tracer provider before serving (``opentelemetry.trace.set_tracer_provider`` with
the SDK's ``TracerProvider``, or the ``opentelemetry-instrument`` agent): ``melody.serve`` and
``hub.serve`` look once, when they start, and do nothing more when there is none. Turn it on
explicitly, e.g. with a provider of its own or for the ASGI adapter, with
:func:`enable`. What is recorded is the configured sampler's decision. The spans:

``GET`` (or ``GET /ws`` when ``Config.paths`` names the path), kind SERVER, one per upgrade on
melody's own server (the ASGI adapter's upgrades are the ASGI server's to trace), from the
request head to the answer; HTTP semantic conventions: ``http.request.method``, ``url.path``,
``url.scheme``, ``network.peer.address``, ``network.peer.port``, ``server.address``,
``server.port``, ``user_agent.original``, ``network.protocol.name``/``version``,
``http.response.status_code`` (101 when accepted) and ``error.type`` (the status, for 4xx and
5xx; 5xx also sets the ERROR status). The query string is not recorded (it often carries a
token). Its parent is the context the client sent in the handshake's
``traceparent``/``tracestate`` headers (the global propagator: W3C Trace Context by default),
if any.

``melody middleware <Name>``, kind INTERNAL: one per middleware (``hub.use``) the upgrade went
through, nested as the chain is (the first registered is the outermost); a refusal sets
``http.response.status_code`` on the middleware that raised it.

``melody route <name>`` for a routed message (``hub.route``; ``<name>`` the registered name,
``_fallback``, or ``_unknown`` for a type with no route), ``melody message``/``melody
message_binary`` for ``handle_message``/``handle_message_binary``, ``melody connect``,
``melody disconnect``, ``melody close``, ``melody pong``: kind CONSUMER, the messaging semantic
conventions for processing a received message (``messaging.system`` ``"melody"``,
``messaging.operation.type`` ``"process"``, ``messaging.operation.name`` the route or handler
kind, ``messaging.message.id`` the request's ``id``, ``messaging.message.body.size`` for raw
messages), plus ``melody.session.id`` and, for routes, ``melody.route``. The span is current
while the handler runs (an async one until it completes), so that what the handler calls
(a database client's instrumentation, ``tracer.start_as_current_span``) becomes its child. Its
parent is the context in the message's ``meta`` field (``{"type": ..., "meta":
{"traceparent": "00-...", "tracestate": "..."}}``, see ``docs/protocol.md``) when there is one,
else the context of the handshake headers; it links to its session's upgrade span. A handler
that raises or times out sets the ERROR status, ``error.type`` and an exception event; a
``RequestError`` refusal only sets ``melody.outcome`` ``"refused"``.

Costs: nothing without a configured provider (the handlers run unwrapped: no call into
OpenTelemetry); with one, a span per handled message (``bench/handler_overhead.py``), and with a
sampler that drops it, the sampler's decision and a non-recording span.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from melody._hubstate import state_of
from melody.errors import HandshakeError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Link, Span, TracerProvider

    from melody._core.protocol import WebSocketProtocol
    from melody.handshake import Request
    from melody.hub import Melody
    from melody.middleware import CallNext, Handshake, Middleware
    from melody.session import Session

__all__ = ["Tracing", "enable", "enable_if_configured", "tracing_of", "META_FIELD"]

#: The field of a routed message that carries its trace context (``traceparent``, ...).
META_FIELD = "meta"

_SCOPE = "melody"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("melody")
    except Exception:  # pragma: no cover - not installed as a distribution
        return "0"


def configured_provider() -> TracerProvider | None:
    """The global tracer provider when the application set one, else None. Imports nothing:
    an application that configured OpenTelemetry has imported ``opentelemetry.trace``."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    return provider  # type: ignore[no-any-return]


def enable_if_configured(hub: Melody) -> Tracing | None:
    """Turn tracing on for ``hub`` when a global tracer provider is configured (what serving
    does once, at start); return it, or None (and nothing changes)."""
    state = state_of(hub)
    if state.tracing is not None:
        return state.tracing
    provider = configured_provider()
    return enable(hub, provider) if provider is not None else None


def enable(hub: Melody, tracer_provider: TracerProvider | None = None,
           propagator: TextMapPropagator | None = None) -> Tracing:
    """Trace ``hub``'s upgrades and handler calls with ``tracer_provider`` (default: the global
    one) and ``propagator`` (default: the global one, W3C Trace Context unless configured).

    Idempotent: a second call returns the first's :class:`Tracing`. Raises ``RuntimeError``
    when ``opentelemetry-api`` is not installed (``pip install 'melody[otel]'``).
    """
    state = state_of(hub)
    if state.tracing is None:
        state.tracing = Tracing(hub, tracer_provider, propagator)
        state.add_probe(state.tracing)
    return state.tracing


def tracing_of(hub: Melody) -> Tracing | None:
    """``hub``'s :class:`Tracing`, or None when it is not traced (the handlers then run
    without any call into OpenTelemetry)."""
    return state_of(hub).tracing


class _SessionTrace:
    # What a traced session's message spans start from: the handshake's context, and the
    # link to the upgrade span (made once, shared by every span of the session).
    __slots__ = ("links", "parent")

    def __init__(self, parent: Context | None, links: tuple[Link, ...] | None) -> None:
        self.parent = parent
        self.links = links


class Tracing:
    """The spans of one hub (made by :func:`enable`); a
    :class:`~melody._hubstate.HandlerProbe`."""

    def __init__(self, hub: Melody, tracer_provider: TracerProvider | None,
                 propagator: TextMapPropagator | None) -> None:
        try:
            from opentelemetry import context, propagate, trace
            from opentelemetry.trace import Link, SpanKind, Status, StatusCode
        except ImportError as exc:  # pragma: no cover - exercised without the extra
            raise RuntimeError(
                "melody tracing needs opentelemetry-api: pip install 'melody[otel]'") from exc
        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self.tracer = provider.get_tracer(_SCOPE, _version())
        self._state = state_of(hub)
        self._propagator = propagator if propagator is not None else propagate.get_global_textmap()
        self._trace = trace
        self._context = context
        self._link = Link
        self._kind = SpanKind
        self._status = Status
        self._error = StatusCode.ERROR
        # Upgrades in progress (their span; emptied as they are answered), then accepted
        # sessions (what their messages start from; weak: kept for the disconnect handler,
        # which runs after the session ended, and gone with the session).
        self._upgrades: dict[WebSocketProtocol, tuple[Span, Context | None]] = {}
        self._sessions: weakref.WeakKeyDictionary[Session, _SessionTrace] = (
            weakref.WeakKeyDictionary())
        # Span names, made once per label.
        self._names: dict[tuple[str, bool], str] = {}

    # -- the upgrade ----------------------------------------------------------------------------

    def extract(self, carrier: Any) -> Context | None:
        """The context a client sent in ``carrier`` (headers, or a message's ``meta``), or
        None when it carries no valid span context."""
        ctx = self._propagator.extract(carrier)
        span_context = self._trace.get_current_span(ctx).get_span_context()
        return ctx if span_context.is_valid else None

    def upgrade_started(self, proto: WebSocketProtocol, request: Request, tls: bool) -> None:
        """An upgrade request arrived on ``proto``: start its span."""
        parent = self.extract(request.headers)
        paths = self._state.config.paths
        name = f"{request.method} {request.path}" if paths and request.path in paths \
            else request.method
        attributes: dict[str, Any] = {
            "http.request.method": request.method,
            "url.path": request.path,
            "url.scheme": "https" if tls else "http",
            "network.protocol.name": "http",
            "network.protocol.version": request.http_version.partition("/")[2] or "1.1",
        }
        transport = proto.transport
        if transport is not None:
            peer = transport.get_extra_info("peername")
            if isinstance(peer, tuple) and len(peer) >= 2:
                attributes["network.peer.address"] = str(peer[0])
                attributes["network.peer.port"] = int(peer[1])
            sock = transport.get_extra_info("sockname")
            if isinstance(sock, tuple) and len(sock) >= 2:
                attributes["server.port"] = int(sock[1])
        host = request.headers.get("Host")
        if host:
            attributes["server.address"] = _host_only(host)
        agent = request.headers.get("User-Agent")
        if agent:
            attributes["user_agent.original"] = agent
        span = self.tracer.start_span(name, context=parent, kind=self._kind.SERVER,
                                      attributes=attributes)
        self._upgrades[proto] = (span, parent)

    def activate_upgrade(self, proto: WebSocketProtocol) -> None:
        """Make ``proto``'s upgrade span current in the running task (the middleware chain's:
        the task's context ends with it)."""
        entry = self._upgrades.get(proto)
        if entry is not None:
            self._context.attach(self._trace.set_span_in_context(entry[0]))

    def upgrade_ended(self, proto: WebSocketProtocol, status: int,
                      session: Session | None = None) -> None:
        """The upgrade on ``proto`` was answered with ``status`` (101: ``session`` accepted;
        0: the client left first): end its span."""
        entry = self._upgrades.pop(proto, None)
        if entry is None:
            return
        span, parent = entry
        if status:
            span.set_attribute("http.response.status_code", status)
            if status >= 400:
                span.set_attribute("error.type", str(status))
            if status >= 500:
                span.set_status(self._status(self._error))
        if session is not None:
            upgrade = span.get_span_context()
            self._sessions[session] = _SessionTrace(
                parent, (self._link(upgrade),) if upgrade.is_valid else None)
        span.end()

    def traced_middleware(self, mw: Middleware) -> Middleware:
        """``mw`` in a span of its own (a child of what is current: the upgrade span, or the
        span of the middleware around it)."""
        kind = self._kind.INTERNAL
        name = f"melody middleware {_name_of(mw)}"
        tracer = self.tracer
        status, error_code = self._status, self._error

        async def traced(handshake: Handshake, call_next: CallNext) -> None:
            with tracer.start_as_current_span(name, kind=kind, record_exception=False,
                                              set_status_on_exception=False) as span:
                try:
                    await mw(handshake, call_next)
                except HandshakeError as exc:
                    span.set_attribute("http.response.status_code", exc.status)
                    raise
                except Exception as exc:
                    span.record_exception(exc)
                    span.set_attribute("error.type", _error_type(exc))
                    span.set_status(status(error_code, str(exc)))
                    raise

        return traced

    # -- handler calls (the HandlerProbe) ---------------------------------------------------

    def enter(self, session: Session, handler: str, message: Any, routed: bool) -> Any:
        """Start the span of a handler call and make it current; the token is for
        :meth:`exit`."""
        names = self._names
        name = names.get((handler, routed))
        if name is None:
            name = names[(handler, routed)] = (
                f"melody route {handler}" if routed else f"melody {handler}")
        traced = self._sessions.get(session)
        parent = traced.parent if traced is not None else None
        if routed and type(message) is dict:
            meta = message.get(META_FIELD)
            if isinstance(meta, Mapping):
                parent = self.extract(meta) or parent
        span = self.tracer.start_span(name, context=parent, kind=self._kind.CONSUMER,
                                      links=traced.links if traced is not None else None)
        if span.is_recording():
            span.set_attributes(self._attributes(session, handler, message, routed))
        token = self._context.attach(self._trace.set_span_in_context(span))
        return span, token

    def wrap(self, handler: str, fn: Any, ignored: Any = ()) -> None:
        """None: handler calls go through :meth:`enter` and :meth:`exit`."""
        return None

    def _attributes(self, session: Session, handler: str, message: Any,
                    routed: bool) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "messaging.system": "melody",
            "messaging.operation.type": "process",
            "messaging.operation.name": handler,
            "melody.session.id": session.id,
        }
        if routed:
            attributes["melody.route"] = handler
            if type(message) is dict:
                msg_id = message.get("id")
                if isinstance(msg_id, (int, str)) and not isinstance(msg_id, bool):
                    attributes["messaging.message.id"] = str(msg_id)
        elif isinstance(message, (bytes, bytearray, memoryview)):
            attributes["messaging.message.body.size"] = len(message)
        elif isinstance(message, str):
            attributes["messaging.message.body.size"] = len(message.encode("utf-8",
                                                                           "surrogatepass"))
        return attributes

    def exit(self, handler: str, token: Any, outcome: str | None,
             error: BaseException | None) -> None:
        """End the span of a handler call: the outcome, the error if any."""
        span, context_token = token
        self._context.detach(context_token)
        if outcome is not None and span.is_recording():
            span.set_attribute("melody.outcome", outcome)
            if outcome in ("exception", "timeout"):
                if error is not None:
                    span.record_exception(error)
                span.set_attribute("error.type", _error_type(error) if error else outcome)
                span.set_status(self._status(self._error, str(error) if error else outcome))
        span.end()


def _error_type(error: BaseException | None) -> str:
    if error is None:
        return "_OTHER"
    cls = type(error)
    return cls.__qualname__ if cls.__module__ == "builtins" else \
        f"{cls.__module__}.{cls.__qualname__}"


def _name_of(mw: Any) -> str:
    name = getattr(mw, "__qualname__", None)
    if isinstance(name, str):
        return name
    return type(mw).__qualname__


def _host_only(host: str) -> str:
    # The Host header without its port ("[::1]:8000" -> "::1").
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host
