"""``melody top URL --api-key KEY``: a hub's live numbers in a terminal, from its HTTP API.

Every ``--interval`` seconds it asks the hub's ``stats`` and ``topics`` endpoints (the HTTP API
must be enabled: ``hub.enable_http_api(api_key)``) and prints sessions, messages and bytes per
second in and out (the difference of two readings over the time between them), frames dropped
and messages refused by the rate limit, queued frames, the backplane's state, and the topics
with the most subscribers. Plain ANSI (the screen is cleared between readings when the output
is a terminal), no curses. ``--once`` prints one reading, its rates measured over one interval,
and exits: for scripts and tests.

With ``melody serve --workers N`` and no backplane, each request reaches one worker (the kernel
picks it): the numbers are that worker's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["main", "api_url", "fetch", "render"]

_CLEAR = "\x1b[H\x1b[2J"
_BOLD, _DIM, _RESET = "\x1b[1m", "\x1b[2m", "\x1b[0m"


def api_url(url: str) -> str:
    """The HTTP API's base URL from what the user typed: ``ws``/``wss`` become
    ``http``/``https``; a URL without a path gets melody's default ``/api``."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https"):
        raise ValueError(f"melody top needs an http(s) or ws(s) URL, not {url!r}")
    path = parts.path.rstrip("/") or "/api"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


def fetch(base: str, name: str, key: str, fields: dict[str, Any] | None = None,
          timeout: float = 5.0) -> Any:
    """``POST <base>/<name>`` with ``fields`` as JSON and the key as a Bearer token; the
    answer's JSON. Raises OSError (``urllib.error.HTTPError`` for a non-200 answer)."""
    body = json.dumps(fields or {}).encode()
    request = urllib.request.Request(
        f"{base}/{name}", data=body, method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _rate(now: dict[str, Any], before: dict[str, Any] | None, name: str,
          seconds: float) -> float | None:
    if before is None or seconds <= 0 or name not in now or name not in before:
        return None
    return max(0.0, float(now[name] - before[name]) / seconds)


def _bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop returns


def render(base: str, stats: dict[str, Any], before: dict[str, Any] | None, seconds: float,
           topics: dict[str, Any], *, color: bool = False) -> str:
    """One screen of numbers: ``stats`` now, rates against ``before`` taken ``seconds``
    earlier (None: totals only), ``topics`` as the ``topics`` endpoint answers."""
    bold, dim, reset = (_BOLD, _DIM, _RESET) if color else ("", "", "")

    def per_second(name: str, as_bytes: bool = False) -> str:
        rate = _rate(stats, before, name, seconds)
        if rate is None:
            return "-"
        return f"{_bytes(rate)}/s" if as_bytes else f"{rate:.1f}/s"

    lines = [
        f"{bold}melody top{reset}  {base}  {time.strftime('%H:%M:%S')}",
        "",
        f"sessions        {stats.get('sessions', 0):>10}   connects {stats.get('connects', 0)}"
        f"  disconnects {stats.get('disconnects', 0)}",
        f"messages in     {per_second('messages_in'):>10}   total {stats.get('messages_in', 0)}",
        f"messages out    {per_second('messages_out'):>10}   total {stats.get('messages_out', 0)}",
        f"bytes in        {per_second('bytes_in', True):>10}   total {stats.get('bytes_in', 0)}",
        f"bytes out       {per_second('bytes_out', True):>10}   total {stats.get('bytes_out', 0)}",
        f"dropped         {stats.get('frames_dropped', 0):>10}   rate limited "
        f"{stats.get('messages_rate_limited', 0)}",
        f"queued frames   {stats.get('queued_frames', 0):>10}   deepest "
        f"{stats.get('max_queue_depth', 0)}",
    ]
    backplane = {k[len("backplane_"):]: v for k, v in stats.items()
                 if k.startswith("backplane_")}
    if backplane:
        state = "connected" if backplane.get("connected") else "DOWN"
        details = ", ".join(f"{k} {backplane[k]}" for k in
                            ("published", "received", "dropped_outgoing", "lost_while_down")
                            if k in backplane)
        lines.append(f"backplane       {state:>10}   {details}")
    else:
        lines.append(f"backplane       {'none':>10}")
    listed = topics.get("topics", [])
    lines += ["", f"{bold}topics{reset}          {topics.get('total', len(listed)):>10}"
              f"   {dim}top {len(listed)} by subscribers:{reset}",
              f"{dim}{'subscribers':>12}  topic{reset}"]
    lines += [f"{entry['sessions']:>12}  {entry['topic']}" for entry in listed]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="melody top", description="a melody hub's live numbers, from its HTTP API")
    parser.add_argument("url", help="the hub's HTTP API (http://host:port/api; ws:// works, "
                                    "and a URL without a path means /api)")
    parser.add_argument("--api-key", default=os.environ.get("MELODY_API_KEY"),
                        help="the key of hub.enable_http_api (default: $MELODY_API_KEY)")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between readings (default 1)")
    parser.add_argument("--topics", type=int, default=10, metavar="N",
                        help="show the N topics with the most subscribers (default 10)")
    parser.add_argument("--once", action="store_true",
                        help="print one reading (rates over one interval) and exit")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run ``melody top``; returns the exit code (0, 1 when the hub cannot be read)."""
    args = _parser().parse_args(argv)
    stream = out if out is not None else sys.stdout
    if not args.api_key:
        print("melody top: --api-key (or MELODY_API_KEY) is required", file=sys.stderr)
        return 2
    if not 0 < args.interval <= 3600 or not 1 <= args.topics <= 1000:
        print("melody top: --interval is in (0, 3600] and --topics in 1..1000",
              file=sys.stderr)
        return 2
    try:
        base = api_url(args.url)
    except ValueError as exc:
        print(f"melody top: {exc}", file=sys.stderr)
        return 2
    color = stream.isatty()
    before: dict[str, Any] | None = None
    taken = 0.0
    try:
        while True:
            try:
                stats = fetch(base, "stats", args.api_key)
                topics = fetch(base, "topics", args.api_key, {"limit": args.topics})
            except urllib.error.HTTPError as exc:
                print(f"melody top: {base}: HTTP {exc.code}"
                      + (" (wrong API key?)" if exc.code == 401 else ""), file=sys.stderr)
                return 1
            except OSError as exc:
                print(f"melody top: {base}: {exc}", file=sys.stderr)
                return 1
            now = time.monotonic()
            if before is not None or not args.once:
                screen = render(base, stats, before, now - taken, topics, color=color)
                stream.write((_CLEAR if color and not args.once else "") + screen)
                stream.flush()
                if args.once:
                    return 0
            before, taken = stats, now
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
