"""Prometheus metrics for a hub, served on ``/metrics`` by the hub's own server.

Off unless enabled: ``melody serve app:hub --metrics``, ``melody.run(hub, metrics=True)``,
``await melody.serve(hub, metrics=True)``, or :func:`enable` before ``hub.serve()``. Needs
``prometheus_client`` (``pip install melody[metrics]``). The same port then answers
``GET /metrics`` (the Prometheus text format) and ``GET /healthz`` (``200 ok`` while serving,
``503`` once the hub is closing, so that a load balancer stops sending clients).

The message and byte counters are the compiled core's own (``hub.stats()``), read at scrape
time by a custom collector. Python records what happens rarely or once per broadcast (handshake
refusals by HTTP status, disconnects by close-code class, the duration of each broadcast's
fan-out) and, per handler call, its duration and outcome: two clock reads, a bucket search and
a few increments in the engine (``melody._core.timing``: no lock, no label lookup), exported at
scrape time. The
``bench/handler_overhead.py`` figures in ``bench/README.md`` say what that costs an echo.

The ``handler`` label is bounded by the application's code, never by what clients send: a
route's registered name for routed messages (``hub.route``; ``subscribe``, ``publish``, ... for
the built-in topic routes; ``_fallback`` for ``hub.route_fallback``; ``_unknown`` counts, in the
error counter only, messages that named no route when there is no fallback), else the handler
kind: ``message``, ``message_binary``, ``connect``, ``disconnect``, ``close``, ``pong``,
``sent_message``, ``sent_message_binary``. An async
handler is timed from its start to its completion (not its wait in the session's queue).

=========================================  =========  ==========================================
metric                                     type       labels
=========================================  =========  ==========================================
``melody_sessions``                        gauge
``melody_topics``                          gauge
``melody_connects_total``                  counter
``melody_disconnects_total``               counter    ``reason``: normal, going_away, no_status,
                                                      abnormal, protocol, policy, server_error,
                                                      tls, application, other
``melody_messages_received_total``         counter
``melody_messages_sent_total``             counter    (per recipient: a broadcast to N is N)
``melody_received_bytes_total``            counter    (wire bytes, handshakes and frames)
``melody_sent_bytes_total``                counter    (frame bytes)
``melody_broadcasts_total``                counter
``melody_frames_dropped_total``            counter    ``reason``: queue_full (outbound, a slow
                                                      reader), rate_limited (inbound)
``melody_writes_total``                    counter    (transport writes)
``melody_subscriptions_refused_total``     counter    (over max_topics_per_session or
                                                      max_topic_length)
``melody_queued_frames``                   gauge      (frames waiting for slow readers)
``melody_max_queue_depth``                 gauge
``melody_handshake_rejections_total``      counter    ``status``
``melody_broadcast_fanout_seconds``        histogram
``melody_handler_seconds``                 histogram  ``handler`` (see above)
``melody_handler_errors_total``            counter    ``handler``; ``error``: exception (raised;
                                                      a ``RequestError`` refusal is not an
                                                      error), timeout (an async route past its
                                                      ``timeout``), unknown_route
``melody_backplane_*``                     gauge      (with a backplane: its own stats)
=========================================  =========  ==========================================

Served from a registry of the hub's own (with the process and GC collectors) unless
``registry=`` is given (e.g. ``prometheus_client.REGISTRY`` to serve your own metrics too).
``/metrics`` is public on the WebSocket port: keep that port behind your proxy or firewall.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any

from melody._core.timing import Histogram, Timed
from melody._hubstate import state_of

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from melody.hub import Melody
    from melody.session import Session

__all__ = ["HubMetrics", "HandlerMetrics", "enable", "close_code_class", "FANOUT_BUCKETS",
           "HANDLER_BUCKETS"]

#: Histogram buckets of the fan-out duration, in seconds (5 µs to 1 s).
FANOUT_BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
                  2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0)

#: Histogram buckets of a handler call's duration, in seconds (10 µs to 10 s): sync handlers
#: take microseconds, async ones that wait on a database or a service up to seconds.
HANDLER_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
                   5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_CODE_CLASSES = {1000: "normal", 1001: "going_away", 1005: "no_status", 1006: "abnormal",
                 1002: "protocol", 1003: "protocol", 1007: "protocol", 1009: "protocol",
                 1010: "protocol", 1008: "policy", 1011: "server_error",
                 1012: "server_error", 1013: "server_error", 1014: "server_error",
                 1015: "tls"}

# (stats key, metric name, help) of the core's counters.
_COUNTERS = (
    ("connects", "melody_connects", "Sessions accepted."),
    ("messages_in", "melody_messages_received", "Messages received from clients."),
    ("messages_out", "melody_messages_sent",
     "Messages handed to sessions (a broadcast to N sessions counts N)."),
    ("bytes_in", "melody_received_bytes", "Bytes read from client sockets."),
    ("bytes_out", "melody_sent_bytes", "Frame bytes handed to client sockets."),
    ("broadcasts", "melody_broadcasts", "Broadcasts and publishes made."),
    ("writes", "melody_writes", "Transport write calls made."),
    ("subscriptions_refused", "melody_subscriptions_refused",
     "Subscriptions refused by max_topics_per_session or max_topic_length."),
)
_GAUGES = (
    ("sessions", "melody_sessions", "Sessions connected now."),
    ("topics", "melody_topics", "Topics with at least one subscriber."),
    ("queued_frames", "melody_queued_frames", "Frames queued for sessions not reading."),
    ("max_queue_depth", "melody_max_queue_depth", "Deepest queue of one session."),
)


def close_code_class(code: int) -> str:
    """The ``reason`` label of a disconnect with close ``code`` (1006: no close frame).

    A classification for the label, not the rule of which codes may be sent or received (that
    is ``melody._core.frames.is_valid_close_code``): codes that never travel in a frame (1005,
    1006, 1015) have labels too.
    """
    label = _CODE_CLASSES.get(code)
    if label is not None:
        return label
    return "application" if 3000 <= code <= 4999 else "other"


class _CoreCollector:
    """Reads ``hub.stats()`` at scrape time: the core's counters cost nothing between scrapes."""

    def __init__(self, hub: Melody) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.hub.stats()
        for key, name, doc in _COUNTERS:
            yield CounterMetricFamily(name, doc, value=stats.get(key, 0))
        dropped = CounterMetricFamily(
            "melody_frames_dropped", "Messages dropped, by reason.", labels=["reason"])
        dropped.add_metric(["queue_full"], stats.get("frames_dropped", 0))
        dropped.add_metric(["rate_limited"], stats.get("messages_rate_limited", 0))
        yield dropped
        for key, name, doc in _GAUGES:
            yield GaugeMetricFamily(name, doc, value=stats.get(key, 0))
        for key, value in stats.items():
            if key.startswith("backplane_"):
                yield GaugeMetricFamily(f"melody_{key}", f"Backplane stat {key[10:]}.",
                                        value=value)


class HandlerMetrics:
    """Times every handler call and counts its errors, by ``handler`` label (a
    :class:`~melody._hubstate.HandlerProbe`, installed by :class:`HubMetrics`).

    One engine :class:`~melody._core.timing.Histogram` per label, read at scrape time: no lock
    and no label lookup per call (the hub's handlers all run on its one loop). A synchronous
    handler or route is wrapped in a compiled :class:`~melody._core.timing.Timed`.
    ``histograms`` has one entry per label seen, so its size is bounded by the routes and
    handler kinds the application registered.
    """

    __slots__ = ("errors", "histograms")

    def __init__(self) -> None:
        #: The duration histogram (and count of exceptions) of each handler label seen.
        self.histograms: dict[str, Histogram] = {}
        #: Timeouts and unknown routes, by handler label.
        self.errors: dict[tuple[str, str], int] = {}

    def histogram(self, handler: str) -> Histogram:
        """The histogram of ``handler`` (made on first use)."""
        histogram = self.histograms.get(handler)
        if histogram is None:
            histogram = self.histograms[handler] = Histogram(HANDLER_BUCKETS)
        return histogram

    def wrap(self, handler: str, fn: Callable[..., Any],
             ignored: tuple[type[BaseException], ...] = ()) -> Callable[..., Any]:
        """``fn``, a synchronous handler, timed by the engine (the probe's fast path)."""
        return Timed(fn, self.histogram(handler), ignored)

    def enter(self, session: Session, handler: str, message: Any, routed: bool) -> float:
        """The call starts: the clock."""
        return perf_counter()

    def exit(self, handler: str, token: float, outcome: str | None,
             error: BaseException | None) -> None:
        """The call ended (``token`` is :meth:`enter`'s clock): observe its duration and
        count an error outcome."""
        elapsed = perf_counter() - token
        if outcome is not None:
            if outcome == "unknown_route":
                # No handler ran: nothing to time.
                key = (handler, outcome)
                self.errors[key] = self.errors.get(key, 0) + 1
                return
            if outcome == "exception":
                self.histogram(handler).failed()
            elif outcome == "timeout":
                key = (handler, outcome)
                self.errors[key] = self.errors.get(key, 0) + 1
        self.histogram(handler).observe(elapsed)

    def collect(self) -> Iterator[Metric]:
        """The ``melody_handler_seconds`` histogram and ``melody_handler_errors_total``."""
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        seconds = HistogramMetricFamily(
            "melody_handler_seconds",
            "Time handler calls took, by route name or handler kind (async: to completion).",
            labels=["handler"])
        errors = CounterMetricFamily(
            "melody_handler_errors",
            "Handler calls that failed, by route name or handler kind and error.",
            labels=["handler", "error"])
        bounds = [repr(b) for b in HANDLER_BUCKETS] + ["+Inf"]
        labels = set(self.histograms) | {handler for handler, _ in self.errors}
        for handler in sorted(labels):
            histogram = self.histograms.get(handler)
            exceptions = 0
            if histogram is not None:
                counts, total, exceptions = histogram.snapshot()
                if any(counts):
                    running = 0
                    buckets = []
                    for bound, count in zip(bounds, counts, strict=True):
                        running += count
                        buckets.append((bound, running))
                    seconds.add_metric([handler], buckets, total)
            errors.add_metric([handler, "exception"], exceptions)
            for error in ("timeout", "unknown_route"):
                errors.add_metric([handler, error], self.errors.get((handler, error), 0))
        yield seconds
        yield errors


class HubMetrics:
    """The Prometheus metrics of one hub (made by :func:`enable`)."""

    def __init__(self, hub: Melody, registry: CollectorRegistry | None = None) -> None:
        try:
            import prometheus_client as prom
        except ImportError as exc:  # pragma: no cover - exercised without the extra
            raise RuntimeError(
                "melody metrics need prometheus_client: pip install 'melody[metrics]'") from exc
        own = registry is None
        if registry is None:
            registry = prom.CollectorRegistry()
        self.registry: CollectorRegistry = registry
        if own:
            prom.ProcessCollector(registry=self.registry)
            prom.PlatformCollector(registry=self.registry)
            prom.GCCollector(registry=self.registry)
        self.registry.register(_CoreCollector(hub))
        self.rejections = prom.Counter(
            "melody_handshake_rejections", "Upgrade requests refused, by HTTP status.",
            ["status"], registry=self.registry)
        self.disconnects = prom.Counter(
            "melody_disconnects", "Sessions ended, by close-code class.", ["reason"],
            registry=self.registry)
        self.fanout = prom.Histogram(
            "melody_broadcast_fanout_seconds",
            "Time to hand one broadcast to every recipient.", buckets=FANOUT_BUCKETS,
            registry=self.registry)
        self._generate = prom.generate_latest
        self.content_type: str = prom.CONTENT_TYPE_LATEST
        #: Handler durations and errors (``melody_handler_seconds``, ``..._errors_total``).
        self.handlers = HandlerMetrics()
        self.registry.register(self.handlers)
        # Every broadcast and publish variant, and every delivery of another node's message,
        # is one fan-out: the hub times it once observed (hubs without metrics pay nothing).
        state = state_of(hub)
        state.observe_fanout(self.fanout.observe)
        state.add_probe(self.handlers)

    def rejected(self, status: int) -> None:
        """Count an upgrade refused with ``status``."""
        self.rejections.labels(str(status)).inc()

    def disconnected(self, code: int) -> None:
        """Count a session that ended with close ``code``."""
        self.disconnects.labels(close_code_class(code)).inc()

    def render(self) -> bytes:
        """The registry in the Prometheus text format (``content_type``)."""
        return self._generate(self.registry)


def enable(hub: Melody, registry: CollectorRegistry | None = None) -> HubMetrics:
    """Turn on metrics for ``hub`` and serve ``/metrics`` and ``/healthz``; return them.

    Idempotent: a second call returns the first call's :class:`HubMetrics` (``registry`` is
    then ignored). Raises ``RuntimeError`` when prometheus_client is not installed.
    """
    state = state_of(hub)
    if state.metrics is None:
        state.metrics = HubMetrics(hub, registry)
    return state.metrics
