"""The life of melody's own server: ``serve`` inside a loop, blocking ``run``, shutdown."""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from melody._core.protocol import WebSocketProtocol
from melody._hubstate import state_of
from melody.errors import CLOSE_GOING_AWAY
from melody.metrics import enable as enable_metrics
from melody.reload import install_sighup
from melody.server.native import Upgrader
from melody.tracing import enable_if_configured as enable_tracing_if_configured

if TYPE_CHECKING:
    import ssl as _ssl

    from melody.hub import Melody

__all__ = ["serve", "run", "serve_until_stopped", "shutdown", "install_uvloop",
           "SHUTDOWN_TIMEOUT", "SHUTDOWN_BATCH_SIZE", "SHUTDOWN_BATCH_INTERVAL"]

logger = logging.getLogger("melody.server")

#: Defaults of :func:`shutdown` (and ``Melody.shutdown``).
SHUTDOWN_TIMEOUT = 10.0
SHUTDOWN_BATCH_SIZE = 1000
SHUTDOWN_BATCH_INTERVAL = 0.1


async def serve(
    hub: Melody,
    host: str | None = "127.0.0.1",
    port: int = 8000,
    *,
    ssl: _ssl.SSLContext | None = None,
    reuse_port: bool = False,
    backlog: int = 1024,
    sock: Any = None,
    metrics: bool = False,
) -> asyncio.Server:
    """Listen for WebSocket connections to ``hub`` in the running loop; return the server.

    ``ssl`` serves wss://. ``metrics=True`` also answers ``GET /metrics`` (Prometheus) and
    ``GET /healthz`` on the same port (see :mod:`melody.metrics`; needs prometheus_client).

    Every connection is a file descriptor: the process's soft ``RLIMIT_NOFILE`` (often
    1,024) is raised to its hard limit here, as Go's runtime does at start; the hard limit
    is the administrator's (``ulimit -Hn``, systemd's ``LimitNOFILE``) and is logged.
    """
    raise_open_file_limit()
    loop = asyncio.get_running_loop()
    if metrics:
        enable_metrics(hub)
    # Spans only when the application configured a tracer provider (looked up once, here).
    enable_tracing_if_configured(hub)
    state = state_of(hub)
    state.attach(loop)
    dispatch = state.dispatch

    def factory() -> WebSocketProtocol:
        return WebSocketProtocol(dispatch)

    if sock is not None:
        server = await loop.create_server(factory, sock=sock, ssl=ssl, backlog=backlog)
    else:
        server = await loop.create_server(
            factory, host, port, ssl=ssl, backlog=backlog,
            reuse_port=reuse_port or None, reuse_address=True)
    state.servers.append(server)
    return server


_file_limit_raised = False


def raise_open_file_limit() -> int | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (once per process); return the soft
    limit now in force (None where there is no such limit: Windows)."""
    global _file_limit_raised
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if _file_limit_raised:
        return soft
    _file_limit_raised = True
    # An infinite hard limit cannot be a soft one for files on Linux; leave such a system be.
    if hard != resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    logger.info("open-file limit %s: at most about that many connections per process",
                "unlimited" if soft == resource.RLIM_INFINITY else f"{soft:,}")
    return soft


def install_uvloop() -> bool:
    """Make uvloop the event loop policy when it is installed (not on Windows). True if so."""
    if sys.platform == "win32":
        return False
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


async def shutdown(
    hub: Melody,
    timeout: float = SHUTDOWN_TIMEOUT,
    *,
    batch_size: int = SHUTDOWN_BATCH_SIZE,
    batch_interval: float = SHUTDOWN_BATCH_INTERVAL,
    code: int = CLOSE_GOING_AWAY,
    reason: str = "server shutting down",
    _abort_now: asyncio.Event | None = None,
) -> None:
    """Drain ``hub`` gracefully; the implementation of ``Melody.shutdown`` (see there)."""
    if timeout <= 0 or batch_size < 1 or batch_interval < 0:
        raise ValueError("shutdown needs timeout > 0, batch_size >= 1, batch_interval >= 0")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    abort_now = _abort_now or asyncio.Event()
    state = state_of(hub)
    d = state.dispatch
    saved_close_timeout = d.close_timeout
    try:
        first = not state.closed
        state.closed = True
        # Upgrades being decided (middleware, async hooks) end now with 503 and give back what
        # they hold, such as ConnectionLimit slots; those that arrive later get 503 too.
        upgrader = d.on_request
        if isinstance(upgrader, Upgrader):
            upgrader.cancel_pending()
        if first:
            # Stop accepting: no new TCP connections.
            state.stop_accepting()
            if hub.backplane is not None:
                state.spawn(hub.backplane.stop(), loop)
            protos = state.connections.members()
            # The closes go out in batches so that clients do not all reconnect at once; the
            # batches grow if needed so that every close is sent within half of the timeout.
            batches = math.ceil(len(protos) / batch_size)
            if batches > 1 and batch_interval > 0:
                most = max(1, int(timeout / 2 / batch_interval) + 1)
                if batches > most:
                    batch_size = math.ceil(len(protos) / most)
            for start in range(0, len(protos), batch_size):
                if start:
                    await _sleep_unless(abort_now, batch_interval)
                if abort_now.is_set():
                    break
                # A close frame waits behind the frames already queued for its session, so
                # that every message accepted before now is delivered to a peer that keeps
                # reading; each session then has until the deadline to answer the close.
                d.close_timeout = max(deadline - loop.time(), 0.001)
                for proto in protos[start:start + batch_size]:
                    proto.close(code, reason)
        while len(state.connections) and loop.time() < deadline and not abort_now.is_set():
            await _sleep_unless(abort_now, 0.01)
        # What is left did not answer in time: drop it. connection_lost then reports each.
        for proto in state.connections.members():
            proto.abort()
        grace = loop.time() + 1.0
        while len(state.connections) and loop.time() < grace:
            await asyncio.sleep(0.005)
        for proto in state.connections.members():
            # A transport that never reported connection_lost: end the session by hand, so
            # that handle_disconnect runs for every session all the same.
            state.disconnected(proto)
        # Let handle_disconnect (and other handler) tasks finish, within the timeout.
        pending = {t for t in state.tasks if t is not asyncio.current_task()}
        if pending:
            await asyncio.wait(pending, timeout=max(deadline - loop.time(), 0.5))
        for server in state.servers:
            try:
                await asyncio.wait_for(server.wait_closed(), max(deadline - loop.time(), 0.5))
            except TimeoutError:
                logger.warning("server %r still had connections at the shutdown deadline",
                               server)
    finally:
        d.close_timeout = saved_close_timeout


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    if event.is_set():
        return
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        pass


async def serve_until_stopped(
    hub: Melody,
    host: str | None = "127.0.0.1",
    port: int = 8000,
    *,
    ssl: _ssl.SSLContext | None = None,
    reuse_port: bool = False,
    ready: Callable[[asyncio.Server], object] | None = None,
    metrics: bool = False,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
) -> None:
    """Serve until SIGINT/SIGTERM, then ``hub.shutdown(shutdown_timeout)`` and return.

    ``ready(server)`` is called once listening (``server.sockets`` gives the real port when
    ``port=0``). A second signal during the shutdown drops the remaining connections at once.
    SIGHUP reloads the hub's settings from ``hub.config_source`` when it has one (``melody
    serve --config``; see ``melody.reload``); without one SIGHUP keeps its default action.
    """
    loop = asyncio.get_running_loop()
    server = await serve(hub, host, port, ssl=ssl, reuse_port=reuse_port, metrics=metrics)
    stop = asyncio.Event()
    abort_now = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            logger.warning("second signal: dropping the remaining connections")
            abort_now.set()
        stop.set()

    signals = (signal.SIGINT, signal.SIGTERM)
    installed = []
    for sig in signals:
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # Windows: Ctrl-C arrives as KeyboardInterrupt instead.
    if install_sighup(hub, loop):
        installed.append(signal.SIGHUP)
    for s in getattr(server, "sockets", None) or ():
        name = s.getsockname()
        scheme = "wss" if ssl else "ws"
        logger.info("melody serving on %s://%s:%s", scheme, name[0], name[1])
    if ready is not None:
        ready(server)
    try:
        await stop.wait()
        logger.info("shutting down: closing %d sessions (1001), up to %gs", len(hub),
                    shutdown_timeout)
        await shutdown(hub, shutdown_timeout, _abort_now=abort_now)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        server.close()
        if not hub.is_closed():
            hub.close_with_msg(CLOSE_GOING_AWAY, "server shutting down")
            await hub.wait_closed(timeout=hub.config.close_timeout)


def run(
    hub: Melody,
    host: str | None = "127.0.0.1",
    port: int = 8000,
    *,
    ssl: _ssl.SSLContext | None = None,
    reuse_port: bool = False,
    use_uvloop: bool = True,
    metrics: bool = False,
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
    ready: Callable[[asyncio.Server], object] | None = None,
) -> None:
    """Serve ``hub`` until Ctrl-C or SIGTERM (blocking), then shut down gracefully.

    Uses uvloop when it is installed. ``metrics=True`` serves ``/metrics`` and ``/healthz``;
    ``shutdown_timeout`` bounds the drain (see ``Melody.shutdown``). ``ready(server)`` is
    called once listening, e.g. to print the address (the real port when ``port=0``).
    """
    if use_uvloop:
        install_uvloop()
    try:
        asyncio.run(serve_until_stopped(hub, host, port, ssl=ssl, reuse_port=reuse_port,
                                        ready=ready, metrics=metrics,
                                        shutdown_timeout=shutdown_timeout))
    except KeyboardInterrupt:
        pass
