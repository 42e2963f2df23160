"""Keeping a JWT fresh on an open connection: ``connect(..., refresh_token=fn)``.

A hub with ``melody.middleware.JWTAuth`` closes a session with 4001 (``"token expired"``) at
its token's ``exp`` unless a ``refresh`` message brought a fresh token first (docs/protocol.md,
"Token refresh"). The client reads ``exp`` from the token it connected with (the payload is
decoded, not verified: the client only needs to know when, the server checks), calls
``refresh_token()`` (sync or async, returning the new token) some time before, and sends
``{"type": "refresh", "id": n, "data": {"token": new}}``; then it waits for the new token's
``exp``, and so on.

When: at the later of ``REFRESH_MARGIN`` seconds before ``exp`` and two thirds of the way from
now to ``exp`` (a token valid for an hour is refreshed 30 s before it expires, one valid for 3
s after 2 s). A refresh that fails (the callable raised, the server refused) is logged on the
``melody.client`` logger and tried again halfway to ``exp``, until ``exp``.

The token is found in the ``Authorization: Bearer`` header, else in the URL's ``token`` query
parameter (``JWTAuth``'s defaults).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import orjson

from melody.errors import ConnectionClosed

if TYPE_CHECKING:
    from melody.client.connection import ClientConnection

__all__ = ["RefreshToken", "REFRESH_MARGIN", "token_expiry", "find_token", "keep_fresh",
           "fetch_token"]

logger = logging.getLogger("melody.client")

#: ``refresh_token``: a function (or coroutine function) of no argument returning a new token.
RefreshToken = Callable[[], "str | Awaitable[str]"]

#: Refresh at most this many seconds before ``exp``.
REFRESH_MARGIN = 30.0


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying it; None if there is none or the
    token is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, (int, float)) and not isinstance(exp, bool):
        return float(exp)
    return None


def find_token(url: str, headers: Sequence[tuple[str, str]]) -> str | None:
    """The token a connection presents: ``Authorization: Bearer``, else ``?token=``."""
    for name, value in headers:
        if name.lower() == "authorization":
            scheme, _, rest = value.strip().partition(" ")
            if scheme.lower() == "bearer" and rest.strip():
                return rest.strip()
    values = parse_qs(urlsplit(url).query).get("token")
    return values[0] if values else None


def refresh_delay(exp: float, now: float) -> float:
    """Seconds to wait before refreshing a token that expires at ``exp``."""
    remaining = exp - now
    return max(remaining - REFRESH_MARGIN, remaining * 2 / 3, 0.0)


async def fetch_token(refresh_token: RefreshToken) -> str:
    """Call ``refresh_token`` (awaiting it if it is async); TypeError unless it gave a str."""
    token: Any = refresh_token()
    if inspect.isawaitable(token):
        token = await token
    if not isinstance(token, str) or not token:
        raise TypeError(f"refresh_token returned {type(token).__name__}, not a token str")
    return token


async def keep_fresh(conn: ClientConnection, refresh_token: RefreshToken) -> None:
    """The refresh task of ``conn`` (cancelled when the connection ends)."""
    while True:
        token = conn.token
        exp = token_expiry(token) if token is not None else None
        if exp is None:
            return  # nothing expires
        await asyncio.sleep(refresh_delay(exp, time.time()))
        while True:
            try:
                new = await fetch_token(refresh_token)
                await conn.request("refresh", {"token": new})
            except ConnectionClosed:
                return
            except Exception as exc:
                left = exp - time.time()
                logger.warning("%s: token refresh failed (%r); %s", conn.url, exc,
                               f"retrying in {left / 2:.1f} s" if left > 1 else "giving up")
                if left <= 1:
                    return
                await asyncio.sleep(left / 2)
                continue
            conn.token = new
            break
