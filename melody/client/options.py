"""What a client connects to and how: the ``ws://`` URL and the checked settings."""

from __future__ import annotations

import base64
import ssl as _ssl
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from melody.limits import MAX_COUNT, MAX_MESSAGE_SIZE, check_int, check_seconds

# Headers the handshake computes itself; passing them in ``headers`` is refused.
_RESERVED_HEADERS = frozenset((
    "host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
    "sec-websocket-protocol", "sec-websocket-extensions", "origin",
))
_DEFAULT_PORTS = {"ws": 80, "wss": 443}
_USER_AGENT = f"melody Python/{sys.version_info[0]}.{sys.version_info[1]}"


@dataclass(frozen=True)
class _Target:
    secure: bool
    host: str
    port: int
    host_header: str
    resource: str
    authorization: str | None


def _parse_url(url: str) -> _Target:
    """Split a ``ws://`` / ``wss://`` URL (RFC 6455 section 3); ValueError when it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid WebSocket URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{url!r} is not a ws:// or wss:// URL")
    if parts.fragment or url.endswith("#"):
        raise ValueError(f"{url!r}: a WebSocket URL has no fragment (RFC 6455 section 3)")
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r} has no host")
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    default_port = _DEFAULT_PORTS[scheme]
    if port is None:
        port = default_port
    host_header = f"[{host}]" if ":" in host else host
    if port != default_port:
        host_header += f":{port}"
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    # Percent-encode what may not appear in a request-target (non-ASCII, spaces), keeping the
    # escapes and delimiters the caller wrote.
    resource = quote(resource, safe="/?&=%:@!$'()*+,;-._~")
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode("utf-8")).decode("ascii")
    return _Target(scheme == "wss", host, port, host_header, resource, authorization)


@dataclass(frozen=True)
class _Options:
    subprotocols: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]
    origin: str | None
    compression: bool
    max_message_size: int
    max_queue: int | None
    open_timeout: float | None
    close_timeout: float
    ping_interval: float | None
    ping_timeout: float | None
    ssl: _ssl.SSLContext | None
    user_agent: str | None


def _make_options(
    subprotocols: Sequence[str],
    headers: Sequence[tuple[str, str]] | Mapping[str, str],
    origin: str | None,
    compression: bool,
    max_message_size: int,
    max_queue: int | None,
    open_timeout: float | None,
    close_timeout: float,
    ping_interval: float | None,
    ping_timeout: float | None,
    ssl: _ssl.SSLContext | None,
    user_agent: str | None,
) -> _Options:
    if isinstance(subprotocols, str):
        raise TypeError("subprotocols is a sequence of names, not one string")
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    for name, _ in pairs:
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by the handshake; use the matching "
                             "argument (subprotocols, compression, origin) instead")
    # Upper bounds too (melody.limits): a max_message_size near 2**63 is not "no limit", it
    # is arithmetic that wraps.
    check_int("max_message_size", max_message_size, 1, MAX_MESSAGE_SIZE)
    if max_queue is not None:
        check_int("max_queue", max_queue, 1, MAX_COUNT)
    if open_timeout is not None:
        check_seconds("open_timeout", open_timeout)
    check_seconds("close_timeout", close_timeout)
    if ping_interval is not None:
        check_seconds("ping_interval", ping_interval)
    if ping_timeout is not None:
        check_seconds("ping_timeout", ping_timeout)
    return _Options(tuple(subprotocols), tuple((str(n), str(v)) for n, v in pairs), origin,
                    bool(compression), max_message_size, max_queue, open_timeout,
                    close_timeout, ping_interval, ping_timeout, ssl, user_agent)
