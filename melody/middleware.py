"""Handshake middleware: code that runs on an upgrade request before its session exists.

A middleware is an async callable ``(handshake, call_next)``, the shape of Starlette's
``BaseHTTPMiddleware.dispatch`` and of ASGI middleware::

    class RequireTenant:
        async def __call__(self, handshake: Handshake, call_next: CallNext) -> None:
            tenant = handshake.request.headers.get("X-Tenant")
            if tenant is None:
                raise HandshakeError(400, "X-Tenant header required")
            handshake.keys["tenant"] = tenant      # lands in session.keys
            await call_next(handshake)             # the rest of the chain, then the hub

    hub.use(RequireTenant())

Registered with ``hub.use(mw)``; they run in registration order (the first registered is the
outermost: it sees the request first and the outcome last). The innermost step is the hub's
own: the RFC 6455 checks, ``Config.paths``/``allowed_origins``, then ``handle_upgrade``.

* **Refuse** by raising :class:`melody.errors.HandshakeError` ``(status, reason, headers)``: the
  client gets that status, those headers and the reason as the body. A middleware that wraps
  ``call_next`` sees the refusals of the ones after it as that exception (re-raise it).
* **Attach keys** by writing to ``handshake.keys``; the session starts with them.
* **Name the user** with ``handshake.user = "alice"``: it becomes ``session.user`` (what
  ``hub.send_to_user`` and ``hub.disconnect_user`` reach).
* **Act on the session** with ``handshake.on_open(fn)``: ``fn(session)`` runs once the upgrade
  is accepted, before ``handle_connect``.
* **Clean up** with ``handshake.on_close(fn)``: ``fn()`` runs once when the connection is over —
  at once if the upgrade is refused, at disconnect if it was accepted.
* Any other exception refuses with 500 and goes to ``handle_error`` (session None).
* **Deadline**: the whole chain has ``Config.handshake_timeout`` seconds from the request's
  arrival. Past it the chain is cancelled (``asyncio.CancelledError`` is raised where it waits,
  so ``try``/``finally`` blocks run; do not swallow it), the ``on_close`` callbacks run, the
  client gets 504 if it is still connected, and ``HandshakeTimeout`` (a ``HandshakeError``,
  504) goes to ``handle_error``. A shutdown ends chains in progress the same way, with 503.

Costs: with no middleware the upgrade is decided inline in the read callback. With one or more,
each upgrade runs the chain in a task (reading from that client pauses meanwhile), a few
microseconds plus what the middlewares do; messages never pass through middleware.

Shipped: :class:`JWTAuth` (needs ``pip install melody[jwt]``), :class:`OriginAllowList`,
:class:`ConnectionLimit`, :class:`HandshakeRateLimit`, :class:`AccessLog`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING, Any, Protocol

from melody.errors import CLOSE_TOKEN_EXPIRED, HandshakeError, RequestError
from melody.handshake import Request, origin_allowed
from melody.limits import MAX_COUNT, MAX_SECONDS, check_int, check_rate, check_seconds
from melody.logs import peer_text

if TYPE_CHECKING:
    from melody.session import Session

__all__ = [
    "Handshake",
    "CallNext",
    "Middleware",
    "JWTAuth",
    "InvalidToken",
    "TokenLease",
    "OriginAllowList",
    "ConnectionLimit",
    "HandshakeRateLimit",
    "RateTable",
    "AccessLog",
    "MAX_LEEWAY",
]

#: The largest ``JWTAuth`` leeway (one day). Leeway absorbs clock skew between the token's
#: issuer and this server, seconds or minutes; past a day ``exp`` and ``nbf`` mean nothing.
MAX_LEEWAY = 86400.0


class Handshake:
    """One upgrade request on its way through the middleware chain.

    ``request`` is the parsed request (``path``, ``query_params``, ``headers``); ``peer`` the
    socket's remote address; ``keys`` the dict the session will start with.
    """

    __slots__ = ("_cleanups", "_openers", "keys", "peer", "request", "started", "status",
                 "user")

    request: Request
    peer: Any
    keys: dict[str, Any]
    started: float
    status: int
    user: str | None

    def __init__(self, request: Request, peer: Any = None) -> None:
        self.request = request
        #: The remote address as the socket reports it (``(host, port)`` for TCP), or None.
        self.peer = peer
        #: Keys the session starts with (``session.keys``); middlewares add to it.
        self.keys = {}
        #: ``time.monotonic()`` when the request head had arrived.
        self.started = time.monotonic()
        #: The HTTP status the upgrade ended with (101 when accepted); 0 while undecided.
        self.status = 0
        #: The user the session will belong to (``session.user``), or None.
        self.user = None
        self._cleanups: list[Callable[[], object]] | None = None
        self._openers: list[Callable[[Session], object]] | None = None

    @property
    def client_ip(self) -> str | None:
        """The peer's IP address (the TCP peer: a proxy's address behind a proxy)."""
        if isinstance(self.peer, tuple) and self.peer:
            return str(self.peer[0])
        return None

    def on_close(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` once when this connection is over (refused, or disconnected).

        Callbacks run in the reverse order of registration; one that raises is logged on the
        ``melody`` logger and the others still run.
        """
        if self._cleanups is None:
            self._cleanups = []
        self._cleanups.append(fn)

    def on_open(self, fn: Callable[[Session], object]) -> None:
        """Run ``fn(session)`` once the upgrade is accepted, before ``handle_connect`` (in
        registration order). Not run for a refused upgrade. One that raises is reported to
        ``handle_error`` and its session is closed with 1011."""
        if self._openers is None:
            self._openers = []
        self._openers.append(fn)

    def take_on_open(self) -> list[Callable[[Session], object]] | None:
        """Hand over the ``on_open`` callbacks (None if there are none). Called by the server
        that accepts the upgrade, not by middleware."""
        openers, self._openers = self._openers, None
        return openers

    def end(self) -> None:
        """Run the ``on_close`` callbacks now: the upgrade was refused or abandoned.

        Called by the server that decides the upgrade, not by middleware; a second call (or
        one after :meth:`take_on_close`) does nothing.
        """
        cleanups = self.take_on_close()
        if cleanups:
            run_cleanups(cleanups)

    def take_on_close(self) -> list[Callable[[], object]] | None:
        """Hand over the ``on_close`` callbacks (None if there are none): the upgrade was
        accepted, and they now run when the session ends. Called by the server, not by
        middleware."""
        cleanups, self._cleanups = self._cleanups, None
        return cleanups

    def __repr__(self) -> str:
        return f"<Handshake {peer_text(self.peer)} {self.request.path!r}>"


def run_cleanups(cleanups: list[Callable[[], object]]) -> None:
    """Run ``on_close`` callbacks, last registered first, logging (not raising) failures."""
    for fn in reversed(cleanups):
        try:
            fn()
        except Exception:
            logging.getLogger("melody").exception("handshake on_close callback raised")


#: What a middleware calls to run the rest of the chain.
CallNext = Callable[[Handshake], Awaitable[None]]


class Middleware(Protocol):
    """The middleware interface: ``async def __call__(self, handshake, call_next) -> None``."""

    def __call__(self, handshake: Handshake, call_next: CallNext) -> Awaitable[None]:
        """Decide or decorate ``handshake``; ``await call_next(handshake)`` to go on."""
        ...


def build_chain(middleware: Sequence[Middleware], endpoint: CallNext) -> CallNext:
    """Compose ``middleware`` around ``endpoint``: the first item is the outermost."""
    chain = endpoint
    for mw in reversed(middleware):
        chain = _link(mw, chain)
    return chain


def _link(mw: Middleware, nxt: CallNext) -> CallNext:
    async def step(handshake: Handshake) -> None:
        await mw(handshake, nxt)

    return step


# -- JWT ------------------------------------------------------------------------------------------


class JWTAuth:
    """Accept only upgrades carrying a valid JSON Web Token; its claims go to the session's keys.

    The token is looked for, in this order, in the ``Authorization: Bearer <token>`` header, the
    query parameter ``query_param`` (default ``"token"``: browsers cannot set headers on a
    WebSocket) and the cookie ``cookie`` (off unless named). It is verified with PyJWT against
    ``key`` for one of ``algorithms`` (HS256/384/512 with a shared secret; RS*, PS* and ES*
    with a public key in PEM or a key object): the signature, ``exp`` (required unless
    ``require`` says otherwise), ``nbf``, and ``aud``/``iss`` when ``audience``/``issuer`` are
    given (a token with an ``aud`` claim is refused when no ``audience`` is configured).

    On success ``session.keys[claims_key]`` holds the claims dict (``claims_key=None`` puts each
    claim under its own key) and ``session.user`` the ``sub`` claim (None without one).
    Otherwise the upgrade gets 401 with a ``WWW-Authenticate: Bearer`` header (RFC 6750:
    ``error="invalid_token"`` when a token was given).

    The token holds for the whole connection, not only for its upgrade: at its ``exp`` (plus
    ``leeway``) the session is closed with :data:`melody.errors.CLOSE_TOKEN_EXPIRED` (4001,
    ``"token expired"``) unless the client sent a fresh token before, in a ``refresh``
    message ``{"type": "refresh", "id": n, "data": {"token": "..."}}`` (docs/protocol.md,
    "Token refresh"; melody's client does it with ``connect(..., refresh_token=fn)``). The
    fresh token is verified exactly as the first (key, algorithms, audience, issuer,
    leeway, required claims) and must name the same ``sub``; then the deadline moves to its
    ``exp``, the session's claims are replaced by its claims, and the reply is ``{"id": n,
    "ok": true, "data": {"exp": <exp>}}``. A refused one gets an error reply (``"token
    expired"``, ``"bad signature"``, ``"token is for another user"``, ...) and changes
    nothing. One timer per session (``loop.call_at``), cancelled when it ends. Refresh needs
    a hub with a codec (``Melody(codec=melody.codecs.JSON)``): without one, messages are not
    decoded and the session simply ends at ``exp``. A token without ``exp`` (when
    ``require`` allows it) never expires.

    ``key`` may also be a callable ``key(token) -> key`` (sync or async), e.g. to pick a key by
    ``kid`` from a JWKS: ``key=lambda t: jwks_client.get_signing_key_from_jwt(t).key``; or a
    list of keys, tried in order until one verifies the signature (key rotation: the new key
    first, the old one until the tokens it signed have expired; a bad token then costs one
    check per key). ``key`` and ``algorithms`` may be replaced while the hub serves (what
    ``hub.reload`` does): the next upgrade and the next ``refresh`` use them.

    Costs one signature check per upgrade (HS256 a few µs, RS256 tens of µs, ES256 about 100 µs)
    on the event loop. Raises ``RuntimeError`` at construction when PyJWT is not installed
    (``pip install melody[jwt]``) and ``ValueError`` for an empty or ``"none"`` algorithm list,
    or a ``leeway`` (seconds, or a ``timedelta``) outside 0..:data:`MAX_LEEWAY`.
    """

    def __init__(
        self,
        key: Any,
        *,
        algorithms: Sequence[str],
        audience: str | Sequence[str] | None = None,
        issuer: str | None = None,
        leeway: float | timedelta = 0.0,
        require: Sequence[str] = ("exp",),
        query_param: str | None = "token",
        cookie: str | None = None,
        claims_key: str | None = "claims",
        realm: str = "melody",
    ) -> None:
        try:
            import jwt
        except ImportError as exc:  # pragma: no cover - exercised without the extra
            raise RuntimeError("JWTAuth needs PyJWT: pip install 'melody[jwt]'") from exc
        if isinstance(algorithms, str):
            raise ValueError("algorithms must be a list of names, such as ['HS256']")
        if not algorithms or any(a.lower() == "none" for a in algorithms):
            raise ValueError("algorithms must name at least one signing algorithm, not 'none'")
        if isinstance(leeway, timedelta):
            leeway = leeway.total_seconds()
        leeway = check_seconds("JWTAuth leeway", leeway, high=MAX_LEEWAY, allow_zero=True)
        self._jwt = jwt
        self.key = key
        self.algorithms = list(algorithms)
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self.require = list(require)
        self.query_param = query_param
        self.cookie = cookie
        self.claims_key = claims_key
        self.realm = realm

    def token(self, request: Request) -> str | None:
        """The token the request carries (header, then query parameter, then cookie), or None."""
        auth = request.headers.get("Authorization")
        if auth is not None:
            scheme, _, value = auth.strip().partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return value.strip()
        if self.query_param is not None:
            values = request.query_params.get(self.query_param)
            if values and values[0]:
                return values[0]
        if self.cookie is not None:
            for header in request.headers.get_all("Cookie"):
                jar: SimpleCookie = SimpleCookie()
                try:
                    jar.load(header)
                except CookieError:
                    continue
                morsel = jar.get(self.cookie)
                if morsel is not None and morsel.value:
                    return morsel.value
        return None

    def _refuse(self, description: str | None) -> HandshakeError:
        challenge = f'Bearer realm="{self.realm}"'
        if description is None:
            return HandshakeError(401, "authentication required",
                                  [("WWW-Authenticate", challenge)])
        challenge += f', error="invalid_token", error_description="{description}"'
        return HandshakeError(401, f"invalid token: {description}",
                              [("WWW-Authenticate", challenge)])

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of ``token`` once verified as an upgrade's token is (key, algorithms,
        audience, issuer, leeway, required claims). Raises :class:`InvalidToken` saying
        what was wrong."""
        jwt = self._jwt
        key = self.key
        if callable(key):
            try:
                key = key(token)
                if inspect.isawaitable(key):
                    key = await key
            except jwt.PyJWTError:
                raise InvalidToken("no key for this token") from None
        keys = key if isinstance(key, (list, tuple)) else (key,)
        if not keys:
            raise InvalidToken("no key for this token")
        for candidate in keys[:-1]:
            try:
                return self._decode(token, candidate)
            except (jwt.InvalidSignatureError, jwt.InvalidKeyError):
                continue  # key rotation: perhaps signed with another of the keys
            except (jwt.PyJWTError, ValueError, TypeError) as exc:
                raise _invalid(jwt, exc) from None
        try:
            return self._decode(token, keys[-1])
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise _invalid(jwt, exc) from None

    def _decode(self, token: str, key: Any) -> dict[str, Any]:
        claims: dict[str, Any] = self._jwt.decode(
            token, key, algorithms=self.algorithms, audience=self.audience,
            issuer=self.issuer, leeway=self.leeway, options={"require": self.require})
        return claims

    async def __call__(self, handshake: Handshake, call_next: CallNext) -> None:
        token = self.token(handshake.request)
        if token is None:
            raise self._refuse(None)
        try:
            claims = await self.verify(token)
        except InvalidToken as exc:
            raise self._refuse(str(exc)) from None
        self.store_claims(handshake.keys, claims)
        sub = claims.get("sub")
        user = sub if isinstance(sub, str) else None
        handshake.user = user
        expires = _expiry(claims)

        def open_lease(session: Session) -> None:
            session.lease = TokenLease(self, session, user, expires)

        handshake.on_open(open_lease)
        await call_next(handshake)

    def store_claims(self, keys: dict[str, Any], claims: dict[str, Any]) -> None:
        """Put verified ``claims`` in a session's ``keys`` (under ``claims_key``, or each
        claim under its own name)."""
        if self.claims_key is None:
            keys.update(claims)
        else:
            keys[self.claims_key] = claims


def _invalid(jwt: Any, exc: Exception) -> InvalidToken:
    # What PyJWT's error means, in the words of the 401 and of a refused refresh.
    if isinstance(exc, jwt.ExpiredSignatureError):
        return InvalidToken("token expired")
    if isinstance(exc, jwt.ImmatureSignatureError):
        return InvalidToken("token not yet valid")
    if isinstance(exc, jwt.InvalidAudienceError):
        return InvalidToken("wrong audience")
    if isinstance(exc, jwt.InvalidIssuerError):
        return InvalidToken("wrong issuer")
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return InvalidToken(f"missing claim {exc.claim}")
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return InvalidToken("algorithm not allowed")
    if isinstance(exc, jwt.InvalidSignatureError):
        return InvalidToken("bad signature")
    return InvalidToken("malformed token")


class InvalidToken(Exception):
    """A token :meth:`JWTAuth.verify` refused; the message says why (``"token expired"``,
    ``"bad signature"``, ...)."""


def _expiry(claims: Mapping[str, Any]) -> float | None:
    exp = claims.get("exp")
    # PyJWT has checked that an exp claim is a number.
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


class TokenLease:
    """What :class:`JWTAuth` leaves on a session (``session.lease``): the timer that closes
    it when its token expires, and the handling of ``refresh`` messages that push it back.

    The timer is one ``loop.call_at`` per session, replaced on each refresh and cancelled by
    the hub when the session ends.
    """

    __slots__ = ("auth", "expires", "session", "timer", "user")

    def __init__(self, auth: JWTAuth, session: Session, user: str | None,
                 expires: float | None) -> None:
        self.auth = auth
        self.session = session
        #: The token's ``sub``: a fresh token must name the same.
        self.user = user
        #: The token's ``exp`` (UNIX seconds), or None.
        self.expires = expires
        self.timer: asyncio.TimerHandle | None = None
        self._schedule()

    def _schedule(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.expires is None:
            return
        loop = asyncio.get_running_loop()
        # The token is accepted until exp + leeway (PyJWT's rule), so the session lasts as
        # long. The wall clock gives the distance; the loop's monotonic clock the instant.
        delay = self.expires + self.auth.leeway - time.time()
        self.timer = loop.call_at(loop.time() + max(delay, 0.0), self._expire)

    def _expire(self) -> None:
        self.timer = None
        if not self.session.is_closed:
            self.session.close_with_msg(CLOSE_TOKEN_EXPIRED, "token expired")

    async def refresh(self, session: Session, data: Any) -> Any:
        """Verify the fresh token in ``data`` (``{"token": "..."}``) and move the deadline to
        its ``exp``; the reply's data is ``{"exp": exp}``. Raises ``RequestError`` saying why
        a token is refused (the deadline then stays as it was)."""
        token = data.get("token") if isinstance(data, Mapping) else None
        if not isinstance(token, str) or not token:
            raise RequestError('refresh takes {"token": "<jwt>"}')
        try:
            claims = await self.auth.verify(token)
        except InvalidToken as exc:
            raise RequestError(str(exc)) from None
        sub = claims.get("sub")
        if (sub if isinstance(sub, str) else None) != self.user:
            raise RequestError("token is for another user")
        if session.is_closed:
            raise RequestError("session is closed")
        self.expires = _expiry(claims)
        self._schedule()
        self.auth.store_claims(session.keys, claims)
        return {"exp": self.expires}

    def cancel(self) -> None:
        """The session ended: drop the timer."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


# -- origins --------------------------------------------------------------------------------------


class OriginAllowList:
    """Refuse with 403 upgrades whose ``Origin`` is not listed (cross-site WebSocket hijacking).

    ``origins`` holds entries such as ``"https://app.example.com"``, ``"https://*.example.com"``
    (any subdomain, not the bare domain) or ``"*"``; ``same_origin=True`` also accepts an Origin
    whose host[:port] is the request's ``Host`` (the page was served by this server). Matching is
    :func:`melody.handshake.origin_allowed`'s (the same as ``Config.allowed_origins``).

    A request without ``Origin`` comes from a non-browser client (which could forge one anyway)
    and is accepted, unless ``require_origin`` is set. Raises ``ValueError`` at construction for
    a malformed entry.
    """

    def __init__(self, origins: Sequence[str] = (), *, same_origin: bool = False,
                 require_origin: bool = False) -> None:
        if isinstance(origins, str):
            raise ValueError("origins must be a list of origins, not one string")
        entries = list(origins)
        if same_origin:
            entries.append("same-origin")
        if not entries:
            raise ValueError("OriginAllowList needs at least one origin or same_origin=True")
        # Every entry is parsed now, against an origin that matches none, so that a typo fails
        # at startup rather than on the first browser that connects.
        probe = Request("GET", "/", headers=[("Host", "melody.invalid"),
                                             ("Origin", "http://melody-probe.invalid:1")])
        origin_allowed(probe, [e for e in entries if e not in ("*", "same-origin")])
        self.origins = entries
        self.require_origin = require_origin

    async def __call__(self, handshake: Handshake, call_next: CallNext) -> None:
        request = handshake.request
        if "Origin" not in request.headers:
            if self.require_origin:
                raise HandshakeError(403, "Origin header required")
        elif not origin_allowed(request, self.origins):
            raise HandshakeError(403, "origin not allowed")
        await call_next(handshake)


# -- connection limits ----------------------------------------------------------------------------


class ConnectionLimit:
    """Cap concurrent connections: ``max_total`` in all (503) and ``max_per_ip`` per client
    address (429), both refused with ``Retry-After: retry_after``.

    A slot is taken when an upgrade passes this middleware and given back when that connection
    ends (or when a later middleware refuses it). Counts WebSocket connections of this hub,
    upgrades in progress included; connections that never send a complete upgrade request are
    bounded by ``Config.handshake_timeout`` instead. Behind a proxy, pass ``client_ip`` (a
    function of the :class:`Handshake`, e.g. reading ``X-Forwarded-For`` as your proxy sets it):
    the TCP peer is then the proxy. ``retry_after`` is in whole seconds (the header's form).

    An upgrade whose later middleware never decide keeps its slot until the chain's deadline
    (``Config.handshake_timeout`` after the request arrived), not longer: see the module doc.
    Raises ``ValueError`` unless the limits are integers in 1..2**31 (``melody.limits``) and
    ``retry_after`` one in 0..2592000 (30 days).
    """

    def __init__(self, max_total: int | None = None, max_per_ip: int | None = None, *,
                 retry_after: int = 5,
                 client_ip: Callable[[Handshake], str | None] | None = None) -> None:
        if max_total is None and max_per_ip is None:
            raise ValueError("ConnectionLimit needs max_total, max_per_ip or both")
        if max_total is not None:
            check_int("ConnectionLimit max_total", max_total, 1, MAX_COUNT)
        if max_per_ip is not None:
            check_int("ConnectionLimit max_per_ip", max_per_ip, 1, MAX_COUNT)
        check_int("ConnectionLimit retry_after", retry_after, 0, int(MAX_SECONDS))
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.retry_after = retry_after
        self._client_ip = client_ip
        self._active = 0
        self._by_ip: dict[str, int] = {}

    @property
    def active(self) -> int:
        """Connections holding a slot now."""
        return self._active

    def active_for(self, ip: str) -> int:
        """Connections from ``ip`` holding a slot now."""
        return self._by_ip.get(ip, 0)

    async def __call__(self, handshake: Handshake, call_next: CallNext) -> None:
        retry = [("Retry-After", str(self.retry_after))]
        if self.max_total is not None and self._active >= self.max_total:
            raise HandshakeError(503, "server at its connection limit, retry later", retry)
        ip = (self._client_ip(handshake) if self._client_ip is not None
              else handshake.client_ip) or "?"
        if self.max_per_ip is not None and self._by_ip.get(ip, 0) >= self.max_per_ip:
            raise HandshakeError(429, "too many connections from this address", retry)
        self._active += 1
        self._by_ip[ip] = self._by_ip.get(ip, 0) + 1
        handshake.on_close(lambda: self._release(ip))
        await call_next(handshake)

    def _release(self, ip: str) -> None:
        self._active -= 1
        left = self._by_ip[ip] - 1
        if left:
            self._by_ip[ip] = left
        else:
            del self._by_ip[ip]


# -- handshake rate ------------------------------------------------------------------------------


#: The addresses a :class:`HandshakeRateLimit` remembers by default.
DEFAULT_MAX_ADDRESSES = 65536


class RateTable:
    """Token buckets by key, with no clock and no I/O: the arithmetic of
    :class:`HandshakeRateLimit` (tested with explicit times).

    Each key holds up to ``burst`` tokens and gains ``rate`` per second; :meth:`take` spends
    one. At most ``max_keys`` keys are remembered, the least recently seen forgotten first,
    and a key whose bucket has refilled is forgotten as soon as it is seen full: memory is
    bounded by ``max_keys`` whatever the number of addresses a client sprays from (a
    forgotten key starts full again, which is why a per-address limit wants a total one
    beside it).
    """

    __slots__ = ("rate", "burst", "max_keys", "_buckets")

    def __init__(self, rate: float, burst: int, max_keys: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        # key -> (tokens after the last take, when), least recently seen first.
        self._buckets: OrderedDict[Any, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Any, now: float, spend: bool = True) -> float:
        """Spend one of ``key``'s tokens at time ``now`` (seconds, any monotonic origin):
        0.0 if there was one, else the seconds until there will be (nothing is spent).
        ``spend=False`` only asks."""
        buckets = self._buckets
        entry = buckets.pop(key, None)
        if entry is None:
            tokens = float(self.burst)
        else:
            held, stamp = entry
            tokens = min(float(self.burst), held + max(0.0, now - stamp) * self.rate)
        wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
        if spend and not wait:
            tokens -= 1.0
        if tokens < self.burst:  # a full bucket is not worth remembering
            buckets[key] = (tokens, now)
            while len(buckets) > self.max_keys:
                buckets.popitem(last=False)
        return wait


class HandshakeRateLimit:
    """Cap the *rate* of upgrades: ``per_ip`` per second from one client address (at most
    ``burst`` at once), refused with 429, and ``total`` per second in all (at most
    ``total_burst`` at once), refused with 503; both with ``Retry-After`` (whole seconds until
    the next upgrade would pass, at least 1).

    :class:`ConnectionLimit` caps how many connections are open; this caps how fast they
    arrive: a client that reconnects in a loop, a reconnect storm after a deploy, a scanner.
    Refused upgrades cost no token. Bursts default to one second's worth (at least 1). The
    per-address table remembers at most ``max_addresses`` addresses (least recently seen
    forgotten first, see :class:`RateTable`): with addresses sprayed past that, ``total`` is
    what still holds. Behind a proxy, pass ``client_ip`` as for :class:`ConnectionLimit`.
    Register it before :class:`JWTAuth`, so that a refused client costs no signature check.
    Raises ``ValueError`` unless the rates are positive and finite, the bursts integers in
    1..2**31 and at least one limit is given. ``per_ip``, ``burst``, ``total`` and
    ``total_burst`` may be reassigned (``melody serve --config``'s ``[handshake_rate_limit]``
    does): buckets already filled keep their tokens.
    """

    def __init__(self, per_ip: float | None = None, *, burst: int | None = None,
                 total: float | None = None, total_burst: int | None = None,
                 max_addresses: int = DEFAULT_MAX_ADDRESSES,
                 client_ip: Callable[[Handshake], str | None] | None = None) -> None:
        self.max_addresses = check_int("HandshakeRateLimit max_addresses", max_addresses, 1,
                                       MAX_COUNT)
        self._per_ip: RateTable | None = None
        self._total: RateTable | None = None
        self.configure(per_ip, burst, total, total_burst)
        self._client_ip = client_ip
        #: Upgrades refused, by reason (``per_ip``, ``total``).
        self.refused = {"per_ip": 0, "total": 0}

    def configure(self, per_ip: float | None, burst: int | None = None,
                  total: float | None = None, total_burst: int | None = None) -> None:
        """Set the limits (all checked first: a ValueError changes nothing). A table whose
        limit stays keeps its buckets; a burst left None is one second's worth."""
        if per_ip is None and total is None:
            raise ValueError("HandshakeRateLimit needs per_ip, total or both")
        if per_ip is None and burst is not None:
            raise ValueError("HandshakeRateLimit burst needs per_ip")
        if total is None and total_burst is not None:
            raise ValueError("HandshakeRateLimit total_burst needs total")
        ip_plan = _bucket_plan("per_ip", "burst", per_ip, burst)
        total_plan = _bucket_plan("total", "total_burst", total, total_burst)
        self._per_ip = _retuned(self._per_ip, ip_plan, self.max_addresses)
        self._total = _retuned(self._total, total_plan, 1)

    @property
    def per_ip(self) -> float | None:
        """Upgrades per second from one address (None: no per-address limit)."""
        return self._per_ip.rate if self._per_ip is not None else None

    @property
    def burst(self) -> int | None:
        """Upgrades at once from one address."""
        return self._per_ip.burst if self._per_ip is not None else None

    @property
    def total(self) -> float | None:
        """Upgrades per second in all (None: no total limit)."""
        return self._total.rate if self._total is not None else None

    @property
    def total_burst(self) -> int | None:
        """Upgrades at once in all."""
        return self._total.burst if self._total is not None else None

    @property
    def addresses(self) -> int:
        """Addresses remembered now (bounded by ``max_addresses``)."""
        return len(self._per_ip) if self._per_ip is not None else 0

    async def __call__(self, handshake: Handshake, call_next: CallNext) -> None:
        now = time.monotonic()
        per_ip, total = self._per_ip, self._total
        ip = None
        if per_ip is not None:
            ip = (self._client_ip(handshake) if self._client_ip is not None
                  else handshake.client_ip) or "?"
            # Asked first, spent only when both limits pass: a refusal costs no token.
            wait = per_ip.take(ip, now, spend=False)
            if wait:
                self.refused["per_ip"] += 1
                raise HandshakeError(429, "too many connection attempts from this address",
                                     _retry_after(wait))
        if total is not None:
            wait = total.take(None, now)
            if wait:
                self.refused["total"] += 1
                raise HandshakeError(503, "too many connection attempts, retry later",
                                     _retry_after(wait))
        if per_ip is not None:
            per_ip.take(ip, now)
        await call_next(handshake)


def _bucket_plan(name: str, burst_name: str, rate: float | None,
                 burst: int | None) -> tuple[float, int] | None:
    if rate is None:
        return None
    rate = check_rate(f"HandshakeRateLimit {name}", rate)
    if burst is None:
        burst = max(1, math.ceil(rate))
    return rate, check_int(f"HandshakeRateLimit {burst_name}", burst, 1, MAX_COUNT)


def _retuned(table: RateTable | None, plan: tuple[float, int] | None,
             max_keys: int) -> RateTable | None:
    if plan is None:
        return None
    if table is None:
        return RateTable(plan[0], plan[1], max_keys)
    table.rate, table.burst = plan
    return table


def _retry_after(wait: float) -> list[tuple[str, str]]:
    return [("Retry-After", str(max(1, math.ceil(wait))))]


# -- access log -----------------------------------------------------------------------------------


class AccessLog:
    """One ``logging`` record per upgrade request, with its outcome.

    Logged on ``logger`` (default ``melody.access``) at ``level`` (INFO; refusals with status
    500 at ERROR) as ``"<peer> GET <path> <status> <outcome> <ms>ms"`` with ``extra=`` fields
    ``event="upgrade"``, ``outcome`` (``accepted``, ``rejected`` or ``error``), ``status``
    (101 when accepted), ``path`` (without the query string, which may carry a token),
    ``peer``, ``duration`` (seconds from the request head's arrival to the decision) and
    ``reason`` (the refusal's). Register it first so that it sees every refusal. A chain cut
    off by its deadline is logged as ``timeout`` with 504 (at WARNING), one ended by a
    shutdown as ``cancelled`` with 503.
    """

    def __init__(self, logger: logging.Logger | str = "melody.access",
                 level: int = logging.INFO) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.level = level

    async def __call__(self, handshake: Handshake, call_next: CallNext) -> None:
        try:
            await call_next(handshake)
        except HandshakeError as exc:
            self._log(handshake, "rejected", exc.status, exc.reason, self.level)
            raise
        except Exception as exc:
            self._log(handshake, "error", 500, f"{type(exc).__name__}: {exc}", logging.ERROR)
            raise
        except asyncio.CancelledError:
            # The server ended the chain and set the status it answered (504 at the
            # deadline, 503 at a shutdown) before cancelling it.
            if handshake.status == 504:
                self._log(handshake, "timeout", 504, "not decided within handshake_timeout",
                          max(self.level, logging.WARNING))
            else:
                self._log(handshake, "cancelled", handshake.status or 503, "cancelled",
                          self.level)
            raise
        self._log(handshake, "accepted", 101, "", self.level)

    def _log(self, handshake: Handshake, outcome: str, status: int, reason: str,
             level: int) -> None:
        if not self.logger.isEnabledFor(level):
            return
        duration = time.monotonic() - handshake.started
        peer = peer_text(handshake.peer)
        path = handshake.request.path
        self.logger.log(
            level, "%s %s %s %d %s %.1fms", peer, handshake.request.method, path, status,
            outcome, duration * 1000,
            extra={"event": "upgrade", "outcome": outcome, "status": status, "path": path,
                   "peer": peer, "duration": duration, "reason": reason})
