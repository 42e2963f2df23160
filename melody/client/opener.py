"""The entry point: :func:`connect`, and :class:`Connect`, the awaitable it returns."""

from __future__ import annotations

import ssl as _ssl
from collections.abc import Callable, Coroutine, Generator, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar, overload

from melody.client.connection import ClientConnection, _open_connection
from melody.client.options import _USER_AGENT, _make_options, _parse_url
from melody.client.reconnecting import OnConnect, ReconnectingClient
from melody.client.refresh import RefreshToken

__all__ = ["Connect", "connect"]

_C = TypeVar("_C", ClientConnection, ReconnectingClient)


class Connect(Generic[_C]):
    """What :func:`connect` returns: await it for the connection, or use ``async with``.

    ``await`` opens the connection (a :class:`ReconnectingClient` can be started only once).
    ``async with`` opens it, gives it to the block and closes it (1000) when the block exits,
    whether normally or by an exception.
    """

    __slots__ = ("_entered", "_opener")

    def __init__(self, opener: Callable[[], Coroutine[Any, Any, _C]]) -> None:
        self._opener: Callable[[], Coroutine[Any, Any, _C]] = opener
        self._entered: _C | None = None

    def __await__(self) -> Generator[Any, None, _C]:
        """Open the connection (see :func:`connect` for what can be raised)."""
        return self._opener().__await__()

    async def __aenter__(self) -> _C:
        """Open the connection for the ``async with`` block."""
        self._entered = await self._opener()
        return self._entered

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        """Close the connection with 1000 (nothing to do if it is closed already)."""
        entered, self._entered = self._entered, None
        if entered is not None:
            await entered.close()


@overload
def connect(
    url: str,
    *,
    subprotocols: Sequence[str] = ...,
    headers: Sequence[tuple[str, str]] | Mapping[str, str] = ...,
    origin: str | None = ...,
    compression: bool = ...,
    max_message_size: int = ...,
    max_queue: int | None = ...,
    open_timeout: float | None = ...,
    close_timeout: float = ...,
    ping_interval: float | None = ...,
    ping_timeout: float | None = ...,
    ssl: _ssl.SSLContext | None = ...,
    user_agent: str | None = ...,
    refresh_token: RefreshToken | None = ...,
    reconnect: Literal[False] = ...,
) -> Connect[ClientConnection]: ...


@overload
def connect(
    url: str,
    *,
    subprotocols: Sequence[str] = ...,
    headers: Sequence[tuple[str, str]] | Mapping[str, str] = ...,
    origin: str | None = ...,
    compression: bool = ...,
    max_message_size: int = ...,
    max_queue: int | None = ...,
    open_timeout: float | None = ...,
    close_timeout: float = ...,
    ping_interval: float | None = ...,
    ping_timeout: float | None = ...,
    ssl: _ssl.SSLContext | None = ...,
    user_agent: str | None = ...,
    refresh_token: RefreshToken | None = ...,
    reconnect: Literal[True],
    on_connect: OnConnect | None = ...,
    backoff_initial: float = ...,
    backoff_max: float = ...,
    backoff_factor: float = ...,
    jitter: float = ...,
    max_attempts: int | None = ...,
    send_timeout: float | None = ...,
) -> Connect[ReconnectingClient]: ...


def connect(
    url: str,
    *,
    subprotocols: Sequence[str] = (),
    headers: Sequence[tuple[str, str]] | Mapping[str, str] = (),
    origin: str | None = None,
    compression: bool = False,
    max_message_size: int = 1 << 20,
    max_queue: int | None = 64,
    open_timeout: float | None = 10.0,
    close_timeout: float = 5.0,
    ping_interval: float | None = None,
    ping_timeout: float | None = None,
    ssl: _ssl.SSLContext | None = None,
    user_agent: str | None = _USER_AGENT,
    refresh_token: RefreshToken | None = None,
    reconnect: bool = False,
    on_connect: OnConnect | None = None,
    backoff_initial: float = 0.1,
    backoff_max: float = 10.0,
    backoff_factor: float = 2.0,
    jitter: float = 0.5,
    max_attempts: int | None = None,
    send_timeout: float | None = 10.0,
) -> Connect[ClientConnection] | Connect[ReconnectingClient]:
    """Open a WebSocket connection to ``url`` (``ws://`` or ``wss://``).

    ``await melody.connect(url)`` returns a :class:`ClientConnection`; ``async with
    melody.connect(url) as conn:`` closes it at the end of the block. With ``reconnect=True``
    the result is a :class:`ReconnectingClient` instead.

    - ``subprotocols``: offered in preference order; the server's choice is ``conn.subprotocol``.
    - ``headers``: extra request headers (pairs or a mapping), e.g. ``Authorization``; the
      WebSocket headers, ``Host`` and ``Origin`` are the handshake's own. A ``user:password@``
      in the URL becomes Basic authorization. ``origin``: the ``Origin`` header, if any.
    - ``compression``: offer permessage-deflate (RFC 7692); used if the server accepts.
    - ``max_message_size``: a larger incoming message (compressed or inflated) fails the
      connection with 1009.
    - ``max_queue``: received messages held for :meth:`~ClientConnection.recv` before the
      socket stops being read (None: unbounded).
    - ``open_timeout``: bound on TCP connect, TLS and the opening handshake (None: none).
      ``close_timeout``: bound on the closing handshake.
    - ``ping_interval``: send a keepalive ping this often (None: never); no pong within
      ``ping_timeout`` (default: ``ping_interval``) fails the connection with 1011.
    - ``ssl``: the ``ssl.SSLContext`` for ``wss://`` (default: ``ssl.create_default_context()``).
    - ``user_agent``: the ``User-Agent`` header (None: not sent).
    - ``refresh_token``: for a hub with ``JWTAuth``, which closes the session (4001) at its
      token's ``exp``: a function or coroutine function returning a fresh token, called
      before the connection's token (from ``Authorization: Bearer`` or ``?token=``) expires;
      the token goes to the hub in a ``refresh`` message (see ``melody.client.refresh``).
    - ``reconnect`` and the parameters after it: see :class:`ReconnectingClient`.

    Raises, when awaited: ``OSError`` when no TCP (or TLS) connection can be made (e.g.
    ConnectionRefusedError, ``ssl.SSLCertVerificationError``); :class:`HandshakeError` when the
    server refuses the upgrade (``status`` is its HTTP status, ``reason`` quotes its body,
    ``headers`` are its response headers) or answers with an invalid 101 (status 502: wrong
    ``Sec-WebSocket-Accept``, a subprotocol or extension that was not offered...);
    ``ConnectionError`` when the server closes before answering; ``TimeoutError`` after
    ``open_timeout``. Raises ValueError immediately for an invalid URL or setting.
    """
    if reconnect:
        client = ReconnectingClient(
            url, subprotocols=subprotocols, headers=headers, origin=origin,
            compression=compression, max_message_size=max_message_size, max_queue=max_queue,
            open_timeout=open_timeout, close_timeout=close_timeout,
            ping_interval=ping_interval, ping_timeout=ping_timeout, ssl=ssl,
            user_agent=user_agent, refresh_token=refresh_token, on_connect=on_connect,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max, backoff_factor=backoff_factor, jitter=jitter,
            max_attempts=max_attempts, send_timeout=send_timeout)
        return Connect(client.start)
    if on_connect is not None:
        raise ValueError("on_connect is for reconnect=True")
    _parse_url(url)
    options = _make_options(subprotocols, headers, origin, compression, max_message_size,
                            max_queue, open_timeout, close_timeout, ping_interval,
                            ping_timeout, ssl, user_agent)

    def opener() -> Coroutine[Any, Any, ClientConnection]:
        return _open_connection(url, options, refresh_token=refresh_token)

    return Connect(opener)
