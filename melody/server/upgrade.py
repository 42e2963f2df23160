"""The upgrade decision: one for melody's own server and for the ASGI adapter.

What decides an upgrade, whichever server read it: the hub's middleware (``hub.use``) around
the hub's own checks (:meth:`UpgradeDecision.check`: 503 once the hub is closed, 404 off
``Config.paths``, 403 for an origin not in ``Config.allowed_origins``) and its
``handle_upgrade`` hook (:func:`keys_of` reads its answer); the subprotocol
(``Config.subprotocols``); the deadline (``Config.handshake_timeout``, counted and answered
504 by :meth:`UpgradeDecision.deadline_passed`); and the bookkeeping of accepted sessions
(:meth:`UpgradeDecision.admit`: the connect and disconnect logs, the disconnect metrics, the
handshake's ``on_close`` callbacks when the session ends).

The transports differ only in how they drive it: the native server (``melody.server.native``)
checks RFC 6455 4.2.1 itself and decides inline in the read callback when no middleware and no
async hook is involved; the ASGI server has made the RFC checks and runs the chain in the
connection's own task.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from melody.errors import CLOSE_INTERNAL_ERROR, HandshakeError, HandshakeTimeout
from melody.handshake import Request, origin_allowed, select_subprotocol
from melody.logs import log_connect, log_disconnect
from melody.middleware import CallNext, Handshake, Middleware, build_chain, run_cleanups

if TYPE_CHECKING:
    from melody._core.protocol import WebSocketProtocol
    from melody._hubstate import HubState
    from melody.metrics import HubMetrics
    from melody.session import Session
    from melody.tracing import Tracing

__all__ = ["UpgradeDecision", "keys_of"]

Cleanups = list[Callable[[], object]]


def _abandon(session: Session) -> None:
    if not session.is_closed:
        session.close_with_msg(CLOSE_INTERNAL_ERROR, "session setup failed")


def keys_of(decision: Any) -> dict[str, Any] | None:
    """What a ``handle_upgrade`` answer means: False refuses (``HandshakeError`` 403), a dict
    accepts with those keys on the session, anything else (None, True) accepts with none."""
    if decision is False:
        raise HandshakeError(403, "refused")
    return decision if isinstance(decision, dict) else None


class UpgradeDecision:
    """How one hub decides its upgrades, and what it keeps of the sessions it accepted."""

    __slots__ = ("_chains", "_live", "http_deadline_exceeded", "state",
                 "upgrade_deadline_exceeded")

    def __init__(self, state: HubState) -> None:
        #: The hub's state (its configuration, hooks, middleware and registry).
        self.state = state
        #: Upgrade decisions (middleware chain or async ``handle_upgrade``) cut off at their
        #: deadline, on the native server and on the ASGI path.
        self.upgrade_deadline_exceeded = 0
        #: Async ``handle_http`` answers cut off at their deadline.
        self.http_deadline_exceeded = 0
        # The middleware chain built around each endpoint, with the middleware it was built of.
        self._chains: dict[CallNext, tuple[list[Middleware], Tracing | None, CallNext]] = {}
        # Per accepted session: (time.monotonic() at accept, on_close callbacks or None).
        self._live: dict[Session, tuple[float, Cleanups | None]] = {}
        state.on_session_end.append(self._ended)

    @property
    def metrics(self) -> HubMetrics | None:
        """The hub's Prometheus metrics once ``melody.metrics.enable`` ran, else None."""
        return self.state.metrics

    @metrics.setter
    def metrics(self, value: HubMetrics | None) -> None:
        self.state.metrics = value

    # -- the decision ------------------------------------------------------------------------

    def check(self, request: Request) -> None:
        """Raise ``HandshakeError`` for what the hub refuses whatever the hooks say: 503 once it
        is closed, 404 for a path not in ``Config.paths``, 403 for an origin not allowed."""
        state = self.state
        cfg = state.config
        if state.closed:
            raise HandshakeError(503, "hub is closed")
        if cfg.paths is not None and request.path not in cfg.paths:
            raise HandshakeError(404, f"no WebSocket endpoint at {request.path}")
        if not origin_allowed(request, cfg.allowed_origins):
            raise HandshakeError(403, "origin not allowed")

    async def decide(self, handshake: Handshake) -> None:
        """The innermost step of every middleware chain: :meth:`check`, then ``handle_upgrade``
        (sync or async), whose keys go to ``handshake.keys``. Raises ``HandshakeError`` to
        refuse."""
        request = handshake.request
        self.check(request)
        hook = self.state.upgrade_hook
        if hook is None:
            return
        decision = hook(request)
        if inspect.isawaitable(decision):
            decision = await decision
        keys = keys_of(decision)
        if keys:
            handshake.keys.update(keys)

    def chain(self, endpoint: CallNext) -> CallNext:
        """The hub's middleware around ``endpoint`` (``endpoint`` itself without middleware);
        built once, and again when ``hub.use`` added one."""
        middleware = self.state.middleware
        if not middleware:
            return endpoint
        tracing = self.state.tracing
        built = self._chains.get(endpoint)
        if built is None or built[0] != middleware or built[1] is not tracing:
            snapshot = list(middleware)
            # Traced, each middleware runs in a span of its own.
            links = snapshot if tracing is None else [tracing.traced_middleware(mw)
                                                      for mw in snapshot]
            built = self._chains[endpoint] = (snapshot, tracing, build_chain(links, endpoint))
        return built[2]

    def subprotocol(self, request: Request) -> str | None:
        """The subprotocol to agree on (``Config.subprotocols``), or None."""
        offered = self.state.config.subprotocols
        return select_subprotocol(request, offered) if offered else None

    def deadline_passed(self, upgrade: bool = True) -> HandshakeError:
        """Count a decision cut off at ``Config.handshake_timeout``; return the error to answer
        and report (504: the server, not the client, ran out of time)."""
        seconds = self.state.config.handshake_timeout
        if upgrade:
            self.upgrade_deadline_exceeded += 1
            what = "upgrade (handshake middleware or handle_upgrade)"
        else:
            self.http_deadline_exceeded += 1
            what = "handle_http"
        return HandshakeTimeout(f"{what} not decided within handshake_timeout ({seconds:g}s)")

    # -- outcomes ----------------------------------------------------------------------------

    def admit(self, proto: WebSocketProtocol, session: Session,
              cleanups: Cleanups | None,
              openers: list[Callable[[Session], object]] | None = None) -> None:
        """Register an accepted session with the hub (``handle_connect`` runs); ``cleanups``
        (the handshake's ``on_close`` callbacks) run when it ends; ``openers`` (its
        ``on_open`` callbacks) run first, with the session."""
        self._live[session] = (time.monotonic(), cleanups)
        if openers:
            for fn in openers:
                try:
                    fn(session)
                except Exception as exc:
                    # A session whose middleware could not finish its setup (a token's
                    # expiry timer, say) must not go on without it. Closed on the next loop
                    # turn, once the server has started it (reading resumed, so that the
                    # client's close reply is read): connect and disconnect both run.
                    self.state.report(session, exc)
                    asyncio.get_running_loop().call_soon(_abandon, session)
                    break
        log_connect(session)
        self.state.register(proto, session)

    def refused(self, status: int) -> None:
        """Count an upgrade refused with ``status`` (in the metrics, when enabled)."""
        metrics = self.state.metrics
        if metrics is not None:
            metrics.rejected(status)

    def _ended(self, session: Session) -> None:
        # Called by the hub when a session's connection ended (HubState.on_session_end).
        entry = self._live.pop(session, None)
        metrics = self.state.metrics
        if metrics is not None:
            metrics.disconnected(session.close_code)
        if entry is None:
            log_disconnect(session, None)
            return
        started, cleanups = entry
        log_disconnect(session, time.monotonic() - started)
        if cleanups:
            run_cleanups(cleanups)
