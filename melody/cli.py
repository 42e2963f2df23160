"""The ``melody`` command (also ``python -m melody``), in the style of uvicorn.

    melody serve myapp.chat:hub --host 0.0.0.0 --port 5000
    melody serve myapp.chat:hub --config settings.toml      # kill -HUP <pid> reloads it
    melody demo --port 5000
    melody top http://127.0.0.1:5000/api --api-key KEY
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from melody._startup import apply_config, load_hub, ssl_context

__all__ = ["main", "load_hub"]


def _parser() -> argparse.ArgumentParser:
    from melody import __version__

    parser = argparse.ArgumentParser(prog="melody", description="melody WebSocket hub")
    parser.add_argument("--version", action="version", version=f"melody {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser, port: int) -> None:
        sub.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
        sub.add_argument("--port", type=int, default=port, help=f"port (default {port})")
        sub.add_argument("--certfile", help="TLS certificate (PEM): serve wss://")
        sub.add_argument("--keyfile", help="TLS private key (PEM), if not in --certfile")
        sub.add_argument("--no-uvloop", action="store_true", help="use asyncio's default loop")
        sub.add_argument("--reuse-port", action="store_true", help="set SO_REUSEPORT")
        sub.add_argument("--log-level", default="info",
                         choices=["debug", "info", "warning", "error"])
        sub.add_argument("--metrics", action="store_true",
                         help="serve Prometheus /metrics and /healthz on the same port "
                              "(needs prometheus_client: pip install 'melody[metrics]')")

    serve = commands.add_parser("serve", help="serve a hub: melody serve module:attr")
    serve.add_argument("app", help="the hub, as MODULE:ATTRIBUTE (e.g. myapp.chat:hub)")
    serve.add_argument("--factory", action="store_true",
                       help="ATTRIBUTE is a function returning the hub")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="serve from N processes on one port (see melody.workers; "
                            "without a backplane of its own the workers share over a "
                            "machine-local bus)")
    serve.add_argument("--no-worker-bus", action="store_true",
                       help="with --workers: do not link the workers (each is a hub of its "
                            "own unless the hub has a backplane)")
    serve.add_argument("--config", metavar="SOURCE",
                       help="reloadable settings (origins, JWT keys, rate and connection "
                            "limits, log level): a .toml file or MODULE:FUNCTION, applied at "
                            "start and again on SIGHUP (see melody.reload)")
    common(serve, 8000)

    demo = commands.add_parser("demo", help="serve the demo chat hub and its page")
    common(demo, 5000)
    # Parsed by melody.bench and melody.top themselves (see main); listed here so that
    # --help shows them.
    commands.add_parser("bench", add_help=False,
                        help="load-test a WebSocket hub: melody bench URL (see melody bench -h)")
    commands.add_parser("top", add_help=False,
                        help="a hub's live numbers from its HTTP API: melody top URL "
                             "--api-key KEY (see melody top -h)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``melody`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from melody.bench import main as bench_main

        raise SystemExit(bench_main(argv[1:]))
    if argv[:1] == ["top"]:
        from melody.top import main as top_main

        raise SystemExit(top_main(argv[1:]))
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from melody.server import run

    if args.command == "serve" and args.workers != 1:
        from melody.workers import run_workers

        if args.workers < 1:
            raise SystemExit("melody: --workers must be at least 1")
        if args.metrics:
            raise SystemExit("melody: --metrics is per process and not supported with "
                             "--workers yet; call melody.metrics.enable(hub) in the app")
        raise SystemExit(run_workers(
            args.app, args.workers, args.host, args.port, factory=args.factory,
            certfile=args.certfile, keyfile=args.keyfile, use_uvloop=not args.no_uvloop,
            log_level=args.log_level, config=args.config,
            bus=not args.no_worker_bus))
    if args.command == "demo":
        from melody.demo import hub
    else:
        hub = load_hub(args.app, factory=args.factory)
        if args.config:
            if hasattr(signal, "SIGHUP"):
                # A reload asked for before the server handles SIGHUP must not kill it.
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
            apply_config(hub, args.config)
    context = ssl_context(args.certfile, args.keyfile)
    if args.metrics:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise SystemExit("melody: --metrics needs prometheus_client: "
                             "pip install 'melody[metrics]'") from None
    run(hub, args.host, args.port, ssl=context, reuse_port=args.reuse_port,
        use_uvloop=not args.no_uvloop, metrics=args.metrics)


if __name__ == "__main__":
    main()
