"""Ask a Redis server for its own counters: the ``cluster`` workload's broker check and more.

The ``cluster`` workload must show that one broadcast costs one message on the broker, not
one per node or per session. The figure comes from the broker itself (``INFO commandstats``,
``cmdstat_publish:calls=N``), not from the hubs' own counters, so a hub that published twice
could not hide it. A few lines of RESP over a plain socket: the harness needs no Redis client.
"""

from __future__ import annotations

import socket
from urllib.parse import unquote, urlsplit

__all__ = ["RedisProbeError", "command_calls", "info", "publish_calls"]


class RedisProbeError(RuntimeError):
    """The Redis server could not be asked (unreachable, refused, unexpected answer)."""


def _command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def _read_reply(sock: socket.socket) -> bytes:
    """One RESP reply: a simple string or a bulk string; an error reply raises."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise RedisProbeError("Redis closed the connection")
        data += chunk
    line, _, rest = data.partition(b"\r\n")
    if line.startswith(b"-"):
        raise RedisProbeError(f"Redis answered: {line[1:].decode(errors='replace')}")
    if line.startswith(b"+"):
        return line[1:]
    if not line.startswith(b"$"):
        raise RedisProbeError(f"unexpected Redis reply {line[:40]!r}")
    size = int(line[1:])
    while len(rest) < size + 2:
        chunk = sock.recv(65536)
        if not chunk:
            raise RedisProbeError("Redis closed the connection")
        rest += chunk
    return rest[:size]


def info(url: str, section: str = "default", timeout: float = 5.0) -> dict[str, str]:
    """``INFO <section>`` of the Redis at ``url`` (``redis://[:password@]host:port``) as a
    dict of its ``key:value`` lines (comments and blank lines left out). Raises
    RedisProbeError."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise RedisProbeError(f"only redis:// URLs are supported, got {url!r}")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 6379
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if parts.password is not None:
                user = unquote(parts.username or "default").encode()
                sock.sendall(_command(b"AUTH", user, unquote(parts.password).encode()))
                _read_reply(sock)
            sock.sendall(_command(b"INFO", section.encode()))
            text = _read_reply(sock)
    except OSError as exc:
        raise RedisProbeError(f"cannot reach Redis at {host}:{port}: {exc}") from exc
    out: dict[str, str] = {}
    for line in text.decode(errors="replace").splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(":")
            out[key] = value
    return out


def command_calls(stats: dict[str, str], command: str) -> int:
    """The ``calls`` of ``command`` (lower case: ``eval``, ``publish``) in the answer of
    :func:`info` for the ``commandstats`` section; 0 when Redis has not executed it yet."""
    line = stats.get(f"cmdstat_{command}", "")
    for field in line.split(","):
        key, _, value = field.partition("=")
        if key == "calls":
            return int(value)
    return 0


def publish_calls(url: str, timeout: float = 5.0) -> int:
    """How many PUBLISH commands the Redis at ``url`` (``redis://[:password@]host:port``) has
    executed since it started (or since ``CONFIG RESETSTAT``). Raises RedisProbeError."""
    return command_calls(info(url, "commandstats", timeout), "publish")
