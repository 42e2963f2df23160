"""The hub's HTTP API: publish, broadcast, reach users, read presence, history and stats, list
sessions and topics and disconnect one session, over HTTP with an API key
(``hub.enable_http_api``). Off unless enabled.

Every endpoint is ``POST <path>/<name>`` with a JSON object as its body (empty for
``stats``) and answers JSON; the endpoints, their fields and the errors are in
``docs/protocol.md`` ("HTTP API"). :class:`HttpApi` decides a request in two steps, with no
I/O of its own, so that both servers drive it:

* :meth:`HttpApi.check` on the request head, before any body is read: 401 for a missing or
  wrong key (compared in constant time, no detail given), then 404, 405, 411 and 413;
* :meth:`HttpApi.answer` with the body: 400 for bad JSON or fields, 501 for presence on a hub
  that has none, 503 when the hub is closed or its backplane unreachable.

melody's own server reads the body (``Content-Length``, at most ``max_body_bytes``) and
answers on the connection, within ``Config.handshake_timeout`` (504 past it), then closes it.
Under ASGI the object is itself an ASGI app for ``http`` scopes: mount it in the framework's
router (Starlette ``Mount("/api", app=api)``); it answers ``<mount>/<name>``.
"""

from __future__ import annotations

import dataclasses
import heapq
import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from melody.errors import BackplaneError, HubClosed, check_close_code
from melody.logs import peer_text

if TYPE_CHECKING:
    from melody.hub import Melody
    from melody.session import Session

__all__ = ["ApiResponse", "HttpApi"]

_JSON_HEADERS = (("Content-Type", "application/json"),)
#: What every endpoint accepts (all of them take a JSON body, as Centrifugo's server API).
_METHOD = "POST"


class ApiResponse(NamedTuple):
    """An answer: status, headers (no framing headers), body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class _Endpoint(NamedTuple):
    """A request that passed :meth:`HttpApi.check`: the endpoint and its body's length."""

    name: str
    length: int


def _error(status: int, message: str, *extra: tuple[str, str]) -> ApiResponse:
    return ApiResponse(status, _JSON_HEADERS + extra, orjson.dumps({"error": message}))


def _ok(result: Any) -> ApiResponse:
    return ApiResponse(200, _JSON_HEADERS, orjson.dumps(_plain(result)))


_UNAUTHORIZED = ApiResponse(401, (("WWW-Authenticate", "Bearer"),), b"")


class _BadRequest(Exception):
    """A request body the endpoint cannot take: answered 400 with this message."""


def _plain(value: Any) -> Any:
    # What orjson can write: named tuples (a presence entry, a StreamPosition) as objects
    # rather than arrays; dataclasses as objects.
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        # A named tuple: _asdict is its documented public method, despite the underscore.
        named: Any = value
        return {k: _plain(v) for k, v in named._asdict().items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return value


class HttpApi:
    """The HTTP API of one hub (see the module docstring); made by ``hub.enable_http_api``."""

    __slots__ = ("_endpoints", "_key", "hub", "max_body_bytes", "path")

    def __init__(self, hub: Melody, api_key: str, *, path: str = "/api",
                 max_body_bytes: int = 1 << 20) -> None:
        if not isinstance(api_key, str) or len(api_key) < 16:
            raise ValueError("api_key must be a str of at least 16 characters "
                             "(secrets.token_urlsafe(32) makes a good one)")
        if not isinstance(path, str) or not path.startswith("/") or path.endswith("/"):
            raise ValueError(f"path must start with '/' and not end with one, not {path!r}")
        if type(max_body_bytes) is not int or not 0 < max_body_bytes <= 64 << 20:
            raise ValueError("max_body_bytes must be an int in 1..64 MiB")
        #: The hub the API acts on.
        self.hub = hub
        #: Where the endpoints are: ``<path>/<name>``.
        self.path = path
        #: The largest request body read (413 above it).
        self.max_body_bytes = max_body_bytes
        self._key = api_key.encode("utf-8")
        self._endpoints: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "publish": self._publish, "broadcast": self._broadcast,
            "send_to_user": self._send_to_user, "disconnect_user": self._disconnect_user,
            "presence": self._presence, "presence_stats": self._presence_stats,
            "history": self._history, "stats": self._stats, "sessions": self._sessions,
            "topics": self._topics, "disconnect": self._disconnect}

    # -- deciding a request ---------------------------------------------------------------

    def matches(self, path: str) -> bool:
        """True when ``path`` is the API's (``<path>`` or under it)."""
        return path == self.path or path.startswith(self.path + "/")

    def authorized(self, headers: Any) -> bool:
        """True when ``headers`` (with a case-insensitive ``get``) carry the key, as
        ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; compared in constant time."""
        given = headers.get("Authorization")
        if given is not None:
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer":
                return False
            given = token.strip()
        else:
            given = headers.get("X-API-Key")
        if given is None:
            return False
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self._key)

    def check(self, method: str, name: str, headers: Any) -> ApiResponse | _Endpoint:
        """Judge a request from its head: an immediate answer, or the endpoint whose body
        (``length`` bytes) is to be read. ``name`` is the path after ``<path>/``."""
        if not self.authorized(headers):
            return _UNAUTHORIZED
        if name not in self._endpoints:
            return _error(404, f"no endpoint {name!r}; there are: "
                               + ", ".join(sorted(self._endpoints)))
        if method != _METHOD:
            return _error(405, f"{name} takes POST", ("Allow", _METHOD))
        if "Transfer-Encoding" in headers:
            return _error(411, "send the body with a Content-Length")
        declared = headers.get("Content-Length") or "0"
        if not declared.isdigit():
            return _error(400, "Content-Length is not a number")
        length = int(declared)
        if length > self.max_body_bytes:
            return _error(413, f"body over {self.max_body_bytes} bytes")
        return _Endpoint(name, length)

    def endpoint_name(self, path: str) -> str:
        """The endpoint ``path`` names (what follows ``<path>/``)."""
        return path[len(self.path) + 1:] if path.startswith(self.path + "/") else ""

    async def answer(self, name: str, body: bytes) -> ApiResponse:
        """Run endpoint ``name`` (checked by :meth:`check`) with the request's ``body``."""
        if body.strip():
            try:
                fields = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                return _error(400, f"the body is not JSON: {exc}")
        else:
            fields = {}
        if not isinstance(fields, dict):
            return _error(400, "the body is a JSON object")
        try:
            return _ok(await self._endpoints[name](fields))
        except _BadRequest as exc:
            return _error(400, str(exc))
        except (ValueError, TypeError) as exc:  # the hub refused the fields
            return _error(400, str(exc))
        except HubClosed as exc:
            return _error(503, str(exc))
        except BackplaneError as exc:
            return _error(503, str(exc))
        except NotImplementedError as exc:
            return _error(501, str(exc))

    # -- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        """The API as an ASGI app for ``http`` scopes (mount it in a framework's router)."""
        if scope.get("type") != "http":
            raise ValueError("the HTTP API serves 'http' scopes")
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        name = self.endpoint_name(path) if self.matches(path) else path.lstrip("/")
        headers = _AsgiHeaders(scope.get("headers") or ())
        checked = self.check(scope.get("method", ""), name, headers)
        if isinstance(checked, _Endpoint):
            body = bytearray()
            while True:
                message = await receive()
                if message.get("type") == "http.disconnect":
                    return
                body += message.get("body", b"")
                if len(body) > self.max_body_bytes:
                    checked = _error(413, f"body over {self.max_body_bytes} bytes")
                    break
                if not message.get("more_body", False):
                    break
            if isinstance(checked, _Endpoint):
                checked = await self.answer(checked.name, bytes(body))
        await send({"type": "http.response.start", "status": checked.status, "headers": [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in checked.headers]
            + [(b"content-length", str(len(checked.body)).encode())]})
        await send({"type": "http.response.body", "body": checked.body})

    # -- the endpoints ----------------------------------------------------------------------

    async def _publish(self, fields: dict[str, Any]) -> dict[str, Any]:
        topic = _text(fields, "topic")
        hub = self.hub
        if "text" in fields:
            sessions = hub.publish(topic, _text(fields, "text"))
        else:
            sessions = hub.publish_json(topic, _data(fields))
        return {"sessions": sessions}

    async def _broadcast(self, fields: dict[str, Any]) -> dict[str, Any]:
        hub = self.hub
        if "text" in fields:
            return {"sessions": hub.broadcast(_text(fields, "text"))}
        return {"sessions": hub.broadcast_json(_data(fields))}

    async def _send_to_user(self, fields: dict[str, Any]) -> dict[str, Any]:
        user = _text(fields, "user")
        hub = self.hub
        if "text" in fields:
            return {"sessions": hub.send_to_user(user, _text(fields, "text"))}
        return {"sessions": hub.send_to_user_json(user, _data(fields))}

    async def _disconnect_user(self, fields: dict[str, Any]) -> dict[str, Any]:
        code = fields.get("code", 1000)
        reason = fields.get("reason", "")
        if type(code) is not int or not isinstance(reason, str):
            raise _BadRequest("code is an int and reason a string")
        return {"sessions": self.hub.disconnect_user(_text(fields, "user"), code, reason)}

    async def _presence(self, fields: dict[str, Any]) -> Any:
        return await self._hub_call("presence", _text(fields, "topic"))

    async def _presence_stats(self, fields: dict[str, Any]) -> Any:
        return await self._hub_call("presence_stats", _text(fields, "topic"))

    async def _hub_call(self, method: str, topic: str) -> Any:
        # Presence is another part of the hub (issue 13, item 4): called when the hub has it.
        call = getattr(self.hub, method, None)
        if call is None:
            raise NotImplementedError("presence not available")
        return {"topic": topic, method: await call(topic)}

    async def _history(self, fields: dict[str, Any]) -> dict[str, Any]:
        topic = _text(fields, "topic")
        since, limit = fields.get("since"), fields.get("limit")
        for name, value in (("since", since), ("limit", limit)):
            if value is not None and type(value) is not int:
                raise _BadRequest(f"{name} is an int or null")
        page = await self.hub.history(topic, since=since, limit=limit)
        return {"topic": topic,
                "publications": [{"offset": p.offset, "data": orjson.loads(p.data)}
                                 for p in page.publications],
                "position": {"offset": page.position.offset, "epoch": page.position.epoch}}

    async def _stats(self, fields: dict[str, Any]) -> dict[str, int]:
        return self.hub.stats()

    # -- introspection: sessions, topics, disconnecting one session ------------------------

    async def _sessions(self, fields: dict[str, Any]) -> dict[str, Any]:
        # A page of at most `limit` sessions in the order they connected, after `cursor`
        # (the `next` of the previous page): one pass over the sessions and a heap of
        # limit + 1, never a reply or a sort of them all.
        limit = _limit(fields, SESSIONS_PAGE, MAX_SESSIONS_PAGE)
        cursor = fields.get("cursor")
        after: tuple[float, int] | None = None
        if cursor is not None:
            after = _parse_cursor(cursor)
        sessions = self.hub.sessions()
        keyed = ((s.connected_at, id(s), s) for s in sessions)
        if after is not None:
            keyed = (k for k in keyed if (k[0], k[1]) > after)
        page = heapq.nsmallest(limit + 1, keyed, key=lambda k: (k[0], k[1]))
        more = len(page) > limit
        page = page[:limit]
        result: dict[str, Any] = {"sessions": [_session_info(s) for _, _, s in page],
                                  "total": len(sessions)}
        result["next"] = f"{page[-1][0]!r}:{page[-1][1]:x}" if more else None
        return result

    async def _topics(self, fields: dict[str, Any]) -> dict[str, Any]:
        # The `limit` topics with the most subscribers here (a heap, not a sort of them all).
        limit = _limit(fields, TOPICS_PAGE, MAX_TOPICS_PAGE)
        hub = self.hub
        names = hub.topics()
        top = heapq.nlargest(limit, ((hub.topic_len(t), t) for t in names),
                             key=lambda pair: pair[0])
        return {"topics": [{"topic": t, "sessions": n} for n, t in top], "total": len(names)}

    async def _disconnect(self, fields: dict[str, Any]) -> dict[str, Any]:
        session_id = _text(fields, "session")
        code = fields.get("code", 1000)
        reason = fields.get("reason", "")
        if type(code) is not int or not isinstance(reason, str):
            raise _BadRequest("code is an int and reason a string")
        check_close_code(code)
        for session in self.hub.sessions():
            if session.has_id(session_id) and not session.is_closed:
                session.close_with_msg(code, reason)
                return {"sessions": 1}
        return {"sessions": 0}

    def __repr__(self) -> str:
        return f"<HttpApi {self.path}>"


#: Sessions per page of ``sessions`` unless ``limit`` says otherwise, and the most.
SESSIONS_PAGE, MAX_SESSIONS_PAGE = 100, 1000
#: Topics answered by ``topics`` unless ``limit`` says otherwise, and the most.
TOPICS_PAGE, MAX_TOPICS_PAGE = 100, 1000


def _limit(fields: dict[str, Any], default: int, most: int) -> int:
    limit = fields.get("limit", default)
    if type(limit) is not int or not 1 <= limit <= most:
        raise _BadRequest(f"limit is an int in 1..{most}")
    return limit


def _parse_cursor(cursor: Any) -> tuple[float, int]:
    # "<connected_at>:<hex>", as the previous page's "next" gave it.
    if isinstance(cursor, str):
        stamp, _, ident = cursor.partition(":")
        try:
            return float(stamp), int(ident, 16)
        except ValueError:
            pass
    raise _BadRequest("cursor is the 'next' of the previous page")


def _session_info(session: Session) -> dict[str, Any]:
    return {"id": session.id, "user": session.user, "remote": peer_text(session.remote_addr),
            "path": session.request.path, "topics": sorted(session.topics),
            "queued": session.queued, "queued_bytes": session.queued_bytes,
            "connected_at": session.connected_at}


def _text(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value:
        raise _BadRequest(f"{name} is a non-empty string")
    return value


def _data(fields: dict[str, Any]) -> Any:
    if "data" not in fields:
        raise _BadRequest("data (any JSON) or text (a string) is required")
    return fields["data"]


class _AsgiHeaders:
    """An ASGI scope's headers with the case-insensitive ``get`` and ``in`` of ``Headers``."""

    __slots__ = ("_fields",)

    def __init__(self, raw: Any) -> None:
        self._fields: dict[str, str] = {}
        for name, value in raw:
            self._fields.setdefault(bytes(name).decode("latin-1").lower(),
                                    bytes(value).decode("latin-1"))

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._fields.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields
