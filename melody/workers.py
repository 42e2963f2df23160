"""Several worker processes serving one hub on one port: ``melody serve app:hub --workers N``.

A supervisor process starts N workers, each a fresh interpreter that imports the hub itself
(``python -m melody.workers``: nothing is pickled or forked from the supervisor) and serves it on
the shared port; it restarts a worker that dies and stops them all on SIGTERM or SIGINT.

Sharing the port
    On Linux each worker listens on its own socket with ``SO_REUSEPORT`` and the kernel spreads
    new connections over them by a hash of the addresses; the supervisor holds the port (bound,
    not listening, so it takes no connections) so that ``--port 0`` has one port for all and a
    restarting worker finds its port free. Other POSIX systems either lack ``SO_REUSEPORT`` or
    do not balance with it (macOS and the BSDs give every connection to one socket), so there
    the supervisor binds and listens itself and every worker accepts on that one inherited
    socket (the pre-fork model: the kernel hands each connection to one waiting worker, less
    evenly). ``MELODY_NO_REUSEPORT=1`` in the environment forces that mode on Linux too.
    Windows is not supported: run one process per port behind a load balancer. Either way the
    first address ``host`` resolves to is bound (use ``0.0.0.0`` or ``::`` for all).

One hub across the workers
    Each worker is a separate process with its own sessions; together they act as one hub.
    Without a backplane of the application's own, the supervisor makes a private directory
    (mode 0700, removed when it stops) and the workers link to each other there over Unix
    sockets (``melody.backplane.local.WorkerBus``): ``broadcast*`` and ``publish*`` in any
    worker reach the sessions of every worker (framed once per worker; a topic only reaches
    the workers with subscribers for it), ``cluster_topic_len``, presence and
    ``send_to_user``/``disconnect_user`` span them, and a restarted worker links again.
    ``len(hub)`` and ``topic_len`` still count one worker's sessions. Topics with history are
    kept by one owner worker each (in its memory; a restarted owner starts them over with a
    new epoch, and while it is down their publications raise ``BackplaneError``). A hub
    configured with a backplane (``Melody(backplane=melody.RedisBackplane(url))``) keeps it:
    its workers then share over Redis, with the other machines on it, and no bus is made.
    ``run_workers(bus=False)`` (``melody serve --no-worker-bus``) gives the old behaviour:
    workers that share nothing. Windows has no ``--workers``, hence no bus.

Stopping
    SIGTERM or SIGINT to the supervisor is forwarded to the workers as SIGTERM; each closes its
    sessions with 1001 and exits. Workers still running after ``stop_timeout`` seconds are
    killed (a second signal kills them at once). The exit code is 0 when every worker stopped
    by itself with 0, 1 otherwise, 3 when a worker could not load the hub or bind its socket
    (the supervisor then stops instead of restarting it forever).

Reloading
    With ``config`` (``melody serve --config``) every worker applies it at start, and SIGHUP to
    the supervisor is forwarded to every worker, each of which reloads it (``hub.reload``); a
    restarted worker reads the file as it is then. A worker that cannot apply it at its first
    start exits as one that cannot load the hub (the supervisor stops: a broken deployment
    fails at once). A *restarted* worker that finds the file broken (edited, not yet
    signalled) logs why and applies the last settings a worker accepted instead, which the
    workers keep in the supervisor's private directory: a crash never turns a bad edit into
    a stopped service, and the next SIGHUP after the fix brings it in line.

Restarts
    A worker that exits while the supervisor runs is restarted after ``0.1 * 2**(n-1)`` seconds
    (at most ``restart_backoff_max``), ``n`` counting its consecutive short-lived runs (a run of
    ``10`` seconds or more resets it), so a crash loop slows down instead of spinning.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from melody.backplane.local import BUS_DIR_ENV

if TYPE_CHECKING:
    import ssl as _ssl

    from melody.hub import Melody

__all__ = ["run_workers", "reuse_port_balances", "EXIT_BOOT_ERROR"]

logger = logging.getLogger("melody.workers")

#: Where a worker keeps the last settings file a worker accepted (set by the supervisor).
LAST_GOOD_ENV = "MELODY_CONFIG_LAST_GOOD"
#: Set for a worker that the supervisor started again after it exited.
RESTARTED_ENV = "MELODY_WORKER_RESTARTED"
#: A worker's exit code when it cannot load the hub or bind: the supervisor gives up.
EXIT_BOOT_ERROR = 3
#: A run at least this long (seconds) resets a worker's crash count.
_HEALTHY_RUN = 10.0
_POLL = 0.05
# Set by a stop signal that arrives in a worker before its event loop handles signals.
_early_stop = False
# Set by a SIGHUP that arrives in a worker before its event loop handles it.
_early_reload = False
# The settings file a restarted worker could not apply (it runs on the last good settings):
# what its SIGHUP reads again.
_fallback_source: str | None = None
# Where this melody was imported from, and where installed packages live.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SITE_DIRS = {os.path.abspath(p) for p in (*site.getsitepackages(),
                                           site.getusersitepackages())}


def reuse_port_balances() -> bool:
    """True where ``SO_REUSEPORT`` spreads connections over the listening sockets (Linux),
    unless ``MELODY_NO_REUSEPORT=1`` asks for the shared-socket mode."""
    if os.environ.get("MELODY_NO_REUSEPORT") == "1":
        return False
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _bind(host: str | None, port: int, *, reuse_port: bool) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class _Worker:
    slot: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float = 0.0
    spawned: int = 0


class _Supervisor:
    def __init__(self, command: list[str], workers: int, listener: socket.socket,
                 inherit: bool, stop_timeout: float, restart_backoff_max: float,
                 reloads: bool = False, bus_dir: str | None = None,
                 last_good: str | None = None) -> None:
        self.command = command
        self.last_good = last_good
        self.reloads = reloads
        self.reloads_pending = 0
        self.bus_dir = bus_dir
        self.workers = [_Worker(slot) for slot in range(1, workers + 1)]
        self.listener = listener
        self.inherit = inherit
        self.stop_timeout = stop_timeout
        self.restart_backoff_max = restart_backoff_max
        self.signals = 0

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self.reloads_pending += 1  # forwarded by the supervising loop

    def _forward_reload(self) -> None:
        # Every running worker reads the configuration again (one starting now reads it
        # as it is at its start).
        self.reloads_pending = 0
        logger.info("SIGHUP: workers reload their configuration")
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGHUP)

    def _spawn(self, worker: _Worker) -> None:
        env = dict(os.environ)
        env["MELODY_WORKER_ID"] = str(worker.slot)
        env["MELODY_WORKERS"] = str(len(self.workers))
        env.pop(BUS_DIR_ENV, None)
        if self.bus_dir is not None:
            env[BUS_DIR_ENV] = self.bus_dir
        env.pop(LAST_GOOD_ENV, None)
        env.pop(RESTARTED_ENV, None)
        if self.last_good is not None:
            env[LAST_GOOD_ENV] = self.last_good
        if worker.spawned:
            env[RESTARTED_ENV] = "1"
        worker.spawned += 1
        if _PACKAGE_ROOT not in _SITE_DIRS:
            # A source checkout: the worker must import this same melody.
            path = env.get("PYTHONPATH")
            env["PYTHONPATH"] = (path + os.pathsep if path else "") + _PACKAGE_ROOT
        fds = (self.listener.fileno(),) if self.inherit else ()
        worker.process = subprocess.Popen(
            [*self.command, "--worker-id", str(worker.slot)],
            stdin=subprocess.DEVNULL, env=env, pass_fds=fds)
        worker.started = time.monotonic()
        logger.debug("started worker %d (pid %d)", worker.slot, worker.process.pid)

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        if self.reloads:
            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_sighup)
        try:
            code = self._supervise()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code

    def _supervise(self) -> int:
        for worker in self.workers:
            self._spawn(worker)
        boot_error = False
        while not self.signals and not boot_error:
            if self.reloads_pending:
                self._forward_reload()
            now = time.monotonic()
            for worker in self.workers:
                process = worker.process
                if process is None:
                    if now >= worker.restart_at:
                        self._spawn(worker)
                    continue
                code = process.poll()
                if code is None:
                    continue
                worker.process = None
                if code == EXIT_BOOT_ERROR:
                    logger.error("worker %d (pid %d) could not load the hub or bind: stopping",
                                 worker.slot, process.pid)
                    boot_error = True
                    break
                if now - worker.started >= _HEALTHY_RUN:
                    worker.failures = 0
                worker.failures += 1
                delay = min(self.restart_backoff_max, 0.1 * 2 ** min(worker.failures - 1, 20))
                worker.restart_at = now + delay
                logger.warning("worker %d (pid %d) exited with %s; restarting in %.1fs",
                               worker.slot, process.pid, _describe(code), delay)
            time.sleep(_POLL)
        code = self._stop()
        return EXIT_BOOT_ERROR if boot_error else code

    def _stop(self) -> int:
        running = [w.process for w in self.workers if w.process is not None]
        logger.info("stopping %d workers", len(running))
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        signals = self.signals
        deadline = time.monotonic() + self.stop_timeout
        while (any(p.poll() is None for p in running) and time.monotonic() < deadline
               and self.signals <= max(signals, 1)):
            time.sleep(_POLL)
        clean = True
        for process in running:
            if process.poll() is None:
                logger.warning("worker pid %d still running: killing it", process.pid)
                process.kill()
                process.wait()
                clean = False
            elif process.returncode != 0:
                logger.warning("worker pid %d exited with %s while stopping", process.pid,
                               _describe(process.returncode))
                clean = False
        self.listener.close()
        return 0 if clean else 1


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


def run_workers(
    app: str,
    workers: int,
    host: str | None = "127.0.0.1",
    port: int = 8000,
    *,
    factory: bool = False,
    certfile: str | None = None,
    keyfile: str | None = None,
    use_uvloop: bool = True,
    log_level: str = "info",
    config: str | None = None,
    backlog: int = 1024,
    stop_timeout: float = 30.0,
    restart_backoff_max: float = 30.0,
    bus: bool = True,
) -> int:
    """Serve ``app`` (``module:attribute``) from ``workers`` processes on one port; block until
    SIGTERM/SIGINT, then stop them and return the exit code (see the module docstring).

    ``bus``: link the workers into one hub when the hub has no backplane of its own (see "One
    hub across the workers" in the module docstring).

    Raises ValueError for ``workers < 1`` and ``OSError`` when the port cannot be bound; on
    Windows, raises ``SystemExit`` (not supported).
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if sys.platform == "win32":
        raise SystemExit("melody: --workers needs a POSIX system (Linux, macOS, BSD); on "
                         "Windows run one process per port behind a load balancer")
    reuse_port = reuse_port_balances()
    listener = _bind(host, port, reuse_port=reuse_port)
    inherit = not reuse_port
    if inherit:
        listener.listen(backlog)
        listener.set_inheritable(True)
    bound = listener.getsockname()
    command = [sys.executable, "-m", "melody.workers", app,
               "--host", str(bound[0]), "--port", str(bound[1]),
               "--log-level", log_level, "--backlog", str(backlog)]
    if inherit:
        command += ["--fd", str(listener.fileno())]
    if factory:
        command.append("--factory")
    if certfile:
        command += ["--certfile", certfile]
    if keyfile:
        command += ["--keyfile", keyfile]
    if not use_uvloop:
        command.append("--no-uvloop")
    if config:
        command += ["--config", config]
    scheme = "wss" if certfile else "ws"
    logger.info("melody supervisor (pid %d): %d workers serving %s on %s://%s:%s (%s)",
                os.getpid(), workers, app, scheme, bound[0], bound[1],
                "SO_REUSEPORT" if reuse_port else "one shared socket")
    bus_dir = _make_bus_dir() if bus and workers > 1 else None
    # The last settings file a worker accepted, for a restarted worker that finds the file
    # broken (see "Reloading"): in the bus's private directory, or one of its own.
    private_dir: str | None = None
    last_good: str | None = None
    if config and config.endswith(".toml"):
        private_dir = bus_dir or _make_bus_dir()
        last_good = os.path.join(private_dir, "settings.last-good.toml")
    supervisor = _Supervisor(command, workers, listener, inherit, stop_timeout,
                             restart_backoff_max, reloads=bool(config),
                             bus_dir=bus_dir, last_good=last_good)
    try:
        return supervisor.run()
    finally:
        for folder in {bus_dir, private_dir}:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)


def _apply_config(hub: Melody, spec: str, apply: Any) -> None:
    """``--config`` at a worker's start; for a restarted worker, the last good settings when
    the file is refused (raises SystemExit, as ``apply``, when there are none)."""
    last_good = os.environ.get(LAST_GOOD_ENV)
    try:
        before = _read_bytes(spec)
        apply(hub, spec)
    except SystemExit as exc:
        if os.environ.get(RESTARTED_ENV) != "1" or last_good is None or not os.path.exists(
                last_good):
            raise
        import tomllib

        from melody.errors import ConfigError
        try:
            with open(last_good, "rb") as f:
                settings = tomllib.load(f)
            # Relative key_files resolve against the real file's folder, as they did.
            hub.reconfigure(settings, relative_to=os.path.dirname(os.path.abspath(spec)))
        except (OSError, ValueError, ConfigError):
            raise exc from None
        global _fallback_source
        _fallback_source = os.path.abspath(spec)  # SIGHUP reads the file again
        logger.error("%s; this restarted worker applies the last settings the workers "
                     "accepted instead: fix the file and send SIGHUP", exc)
        return
    if last_good is not None and before is not None and before == _read_bytes(spec):
        _save_atomically(last_good, before)


def _remember_settings(spec: str, last_good: str) -> None:
    # After a reload that applied: the file's bytes, if they did not change meanwhile (the
    # reload read them an instant ago; a file being rewritten is left for the next SIGHUP).
    data = _read_bytes(spec)
    if data is not None:
        _save_atomically(last_good, data)


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _save_atomically(path: str, data: bytes) -> None:
    # Several workers write the same content: each through its own temporary file, renamed
    # over the target, so a reader never sees half a file.
    tmp = f"{path}.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("cannot keep the last good settings in %s: %s", path, exc)


def _make_bus_dir() -> str:
    # Unix socket paths are short (104 bytes on macOS, 108 on Linux) and macOS's TMPDIR is
    # long: past 64 bytes, /tmp is used instead. mkdtemp makes it 0700: only this user's
    # processes can reach the workers' sockets.
    base = tempfile.gettempdir()
    if len(base) > 64 and os.path.isdir("/tmp"):
        base = "/tmp"
    return tempfile.mkdtemp(prefix="melody-", dir=base)


# -- the worker process ---------------------------------------------------------------------


async def _serve_worker(hub: Melody, sock: socket.socket, ssl: _ssl.SSLContext | None,
                        worker_id: int, backlog: int) -> None:
    from melody.reload import install_sighup, reload_logged

    loop = asyncio.get_running_loop()
    parent = os.getppid()
    await hub.serve(sock=sock, ssl=ssl, backlog=backlog)  # hub.shutdown closes it
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if _early_stop:
        stop.set()
    last_good = os.environ.get(LAST_GOOD_ENV)
    config = hub.config_source or _fallback_source

    def remember() -> None:
        if last_good is not None and isinstance(config, str):
            _remember_settings(config, last_good)

    if install_sighup(hub, loop, on_reloaded=remember, source=config) and _early_reload:
        if reload_logged(hub, config):  # a SIGHUP came while the hub was loading
            remember()
    name = sock.getsockname()
    logger.info("worker %d (pid %d) serving on %s://%s:%s", worker_id, os.getpid(),
                "wss" if ssl else "ws", name[0], name[1])

    async def watch_parent() -> None:
        # A supervisor killed with SIGKILL cannot stop its workers: they stop themselves.
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        logger.warning("worker %d: supervisor gone, stopping", worker_id)
        stop.set()

    watcher = loop.create_task(watch_parent())
    try:
        await stop.wait()
    finally:
        watcher.cancel()
        # Stopping already: a second signal (Ctrl-C reaches the workers and the supervisor,
        # which forwards SIGTERM) must not kill the shutdown half-way, not even after the loop
        # restored the default handlers on closing. Blocked, it dies with the process.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        # The same drain as ``melody serve`` without workers: 1001 to every session, the
        # hub's tasks (the backplane's stop: presence removal) awaited, all within the timeout.
        await hub.shutdown()


def _join_bus(hub: Melody, bus_dir: str, worker_id: int) -> None:
    # The hub has no backplane: the workers share over the machine-local bus.
    from melody.backplane.local import WorkerBus

    slots = int(os.environ.get("MELODY_WORKERS", worker_id))
    hub.backplane = WorkerBus(bus_dir, worker_id, max(slots, worker_id))


def _worker_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m melody.workers",
                                     description="one melody worker (started by run_workers)")
    parser.add_argument("app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fd", type=int, help="an inherited listening socket to accept on")
    parser.add_argument("--worker-id", type=int, default=1)
    parser.add_argument("--backlog", type=int, default=1024)
    parser.add_argument("--factory", action="store_true")
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--config")
    args = parser.parse_args(argv)

    def early_stop(signum: int, frame: Any) -> None:
        global _early_stop
        _early_stop = True

    def early_reload(signum: int, frame: Any) -> None:
        global _early_reload
        _early_reload = True

    # Until the event loop takes over, a stop signal must not kill the import half-way,
    # nor a SIGHUP (a reload) kill it at all.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, early_stop)
    if args.config:
        signal.signal(signal.SIGHUP, early_reload)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s [worker {args.worker_id}]: %(message)s")
    from melody._startup import apply_config, load_hub, ssl_context
    from melody.server import install_uvloop

    try:
        hub = load_hub(args.app, factory=args.factory)
        if args.config:
            _apply_config(hub, args.config, apply_config)
        context = ssl_context(args.certfile, args.keyfile)
        if args.fd is not None:
            sock = socket.socket(fileno=args.fd)
        else:
            sock = _bind(args.host, args.port, reuse_port=True)
    except SystemExit as exc:
        logger.error("%s", exc)
        return EXIT_BOOT_ERROR
    except Exception:
        logger.exception("worker %d could not start", args.worker_id)
        return EXIT_BOOT_ERROR
    bus_dir = os.environ.get(BUS_DIR_ENV)
    if bus_dir and hub.backplane is None:
        _join_bus(hub, bus_dir, args.worker_id)
    if not args.no_uvloop:
        install_uvloop()
    try:
        asyncio.run(_serve_worker(hub, sock, context, args.worker_id, args.backlog))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
