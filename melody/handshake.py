"""The HTTP/1.1 WebSocket opening handshake, sans-I/O (RFC 6455 section 4, RFC 9112 syntax).

Nothing here touches a socket: bytes go in, :class:`Request` objects and response bytes come out.
The compiled connection code finds the end of the request head (``b"\\r\\n\\r\\n"``), enforces the
header-size limit and the handshake timeout, and hands the head to :func:`parse_request`. The
server layer then asks :func:`is_upgrade_request`, :func:`validate_upgrade`,
:func:`origin_allowed` and :func:`select_subprotocol`, and writes what
:func:`build_accept_response` or :func:`error_response` built.

Every refusal is a :class:`melody.errors.HandshakeError` whose ``reason`` names the offending part
of the request: it is both the response body and what gets logged.

Strict wherever two parsers could read the same bytes differently (request smuggling) or a
hostile value could pass for a trusted one: only HTTP/1.x is parsed (505 otherwise); ambiguous
message framing is refused, and so is any body behind an upgrade request, which the server would
otherwise read as WebSocket frames; an absolute-form target must name the Host it arrived with;
Host and Origin are parsed as ``host[:port]`` and RFC 6454 serialises origins, never matched as
strings.

The client half (:func:`build_client_request`, :func:`parse_response_head`) lives here too, so that
melody's own client and the tests speak exactly the dialect the server parses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from http import HTTPStatus
from urllib.parse import parse_qs

from melody.errors import HandshakeError

__all__ = [
    "Headers",
    "Request",
    "accept_key",
    "build_accept_response",
    "build_client_request",
    "build_response",
    "error_response",
    "is_upgrade_request",
    "origin_allowed",
    "parse_request",
    "parse_response_head",
    "requested_subprotocols",
    "select_subprotocol",
    "validate_upgrade",
]

# RFC 6455 section 1.3: the GUID appended to Sec-WebSocket-Key before hashing.
_WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# RFC 7230 section 3.2.6: token = 1*tchar. Written out rather than built from string.ascii_* so
# that the class can be read against the RFC.
_TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN = re.compile(f"[{_TCHAR}]+")

# Request line: method SP request-target SP HTTP-version (RFC 7230 section 3.1.1). The target is
# any run of visible ASCII; its form is checked separately so that the error can say what is wrong.
_REQUEST_LINE = re.compile(f"([{_TCHAR}]+) ([\x21-\x7e]+) (HTTP/[0-9]\\.[0-9])")
# Status line (RFC 7230 section 3.1.2). Some servers drop the SP before an empty reason phrase.
_STATUS_LINE = re.compile("(HTTP/[0-9]\\.[0-9]) ([0-9]{3})(?: [\t\x20-\x7e\x80-\xff]*)?")
_HTTP_VERSION = re.compile("HTTP/([0-9])\\.([0-9])")
_DIGITS = re.compile("[0-9]+")

# Field values may hold HTAB, SP, VCHAR and obs-text (0x80-0xFF); any other control character is
# refused, because a CR or NUL that reaches a log line or a proxy is how request smuggling starts.
_VALUE_CTL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
# What build_* accept in an outgoing value: the same set, and nothing that latin-1 cannot encode.
_BAD_OUTGOING_VALUE = re.compile("[^\t\x20-\x7e\x80-\xff]")

# scheme "://" authority, then the rest of an absolute-form target (RFC 9112 section 3.2.2).
_ABSOLUTE_TARGET = re.compile("([A-Za-z][A-Za-z0-9+.\\-]*)://([^/?#]*)(.*)", re.DOTALL)
_ABSOLUTE_SCHEMES = frozenset(("http", "https", "ws", "wss"))

# Hosts as RFC 6454 section 6.2 serialises them, which is what a browser puts in Origin after its
# URL parser has canonicalised the host: lowercase ASCII, no percent-encoding, no userinfo.
_SCHEME = re.compile("[a-z][a-z0-9+.\\-]*")
# A DNS label: letters, digits and inner hyphens, 1-63 characters (RFC 1123 section 2.1). "_" is
# admitted too: container and upstream names carry it (nginx's default Host for an upstream is its
# name, e.g. "melody_hub") and browsers accept it, and it delimits nothing, so no parser can read
# it as the end of the host.
_LABEL = re.compile("[a-z0-9_](?:[a-z0-9_\\-]{0,61}[a-z0-9_])?")
# An IPv4 literal as browsers serialise it: four decimal octets, no leading zeros.
_OCTET = re.compile("25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]")
_IPV6_TEXT = re.compile("[0-9a-f:.]+")
_PORT = re.compile("[0-9]{1,5}")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

_REASON_PHRASES = {status.value: status.phrase for status in HTTPStatus}

# The part of every 101 that does not depend on the key: built once, at import.
_ACCEPT_PREFIX = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)

# How much of a client-supplied value an error reason quotes: enough to recognise it in a log,
# not enough to turn a refusal into an amplifier.
_QUOTE_LIMIT = 60


def _quote(value: str) -> str:
    """``repr`` of a client-supplied value, cut to ``_QUOTE_LIMIT`` characters."""
    if len(value) > _QUOTE_LIMIT:
        return repr(value[:_QUOTE_LIMIT]) + "..."
    return repr(value)


class Headers:
    """HTTP header fields: case-insensitive names, several values per name, arrival order kept.

    Lookups (:meth:`get`, ``headers[name]``, ``name in headers``) ignore the case of the name and
    give the *first* value; :meth:`get_all` gives every value of a name in arrival order. Iteration,
    ``len`` and :meth:`items` cover every field, repeated names included, with names spelled as they
    arrived — so ``len(headers) == len(headers.items())``. The object is registered as a
    :class:`collections.abc.Mapping` (it is not a subclass, because ``items`` returns the full list
    of fields rather than one pair per name). It has no mutating methods.
    """

    __slots__ = ("_by_name", "_fields")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        """Hold ``items`` (name, value) pairs as given; nothing is validated or rewritten."""
        fields = [(name, value) for name, value in items]
        by_name: dict[str, list[str]] = {}
        for name, value in fields:
            key = name.lower()
            values = by_name.get(key)
            if values is None:
                by_name[key] = [value]
            else:
                values.append(value)
        self._fields = fields
        self._by_name = by_name

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (any case), or ``default`` when it is absent."""
        values = self._by_name.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name`` (any case), in arrival order; ``[]`` when absent."""
        values = self._by_name.get(name.lower())
        return list(values) if values else []

    def __getitem__(self, name: str) -> str:
        """The first value of header ``name`` (any case); raises :class:`KeyError` when absent."""
        values = self._by_name.get(name.lower())
        if not values:
            raise KeyError(name)
        return values[0]

    def __contains__(self, name: object) -> bool:
        """Whether a header called ``name`` (any case) is present."""
        return isinstance(name, str) and name.lower() in self._by_name

    def __iter__(self) -> Iterator[str]:
        """Every field name as it arrived, repeated names included."""
        return (name for name, _ in self._fields)

    def __len__(self) -> int:
        """The number of fields, repeated names counted each time."""
        return len(self._fields)

    def keys(self) -> list[str]:
        """Every field name as it arrived, repeated names included."""
        return [name for name, _ in self._fields]

    def values(self) -> list[str]:
        """Every field value, in arrival order."""
        return [value for _, value in self._fields]

    def items(self) -> list[tuple[str, str]]:
        """Every ``(name, value)`` field in arrival order, names spelled as they arrived."""
        return list(self._fields)

    def __eq__(self, other: object) -> bool:
        """Equal to a :class:`Headers` with the same fields in the same order, names in any case.

        Defining equality by content makes instances unhashable, as a Mapping should be.
        """
        if not isinstance(other, Headers):
            return NotImplemented
        theirs = other.items()
        if len(self._fields) != len(theirs):
            return False
        return all(
            a_name.lower() == b_name.lower() and a_value == b_value
            for (a_name, a_value), (b_name, b_value) in zip(self._fields, theirs, strict=False)
        )

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


Mapping.register(Headers)


def _split_target(target: str) -> tuple[str, str, tuple[str, str] | None]:
    """Split a request-target into (path, query, (scheme, authority) or None).

    Origin-form (``/path?query``) is what clients send; its third item is None. Absolute-form
    (``http://host/path``) is what some proxies forward; its scheme and authority come back for
    :func:`_check_target_authority`. Raises ``HandshakeError(400)`` on every other form.
    """
    if "#" in target:
        raise HandshakeError(400, f"request-target {_quote(target)} contains a fragment ('#')")
    if target.startswith("/"):
        path, _, query = target.partition("?")
        return path, query, None
    match = _ABSOLUTE_TARGET.fullmatch(target)
    if match is None:
        raise HandshakeError(
            400, f"request-target {_quote(target)} is neither origin-form nor absolute-form"
        )
    scheme, authority, rest = match.groups()
    scheme = scheme.lower()
    if scheme not in _ABSOLUTE_SCHEMES or not authority:
        raise HandshakeError(400, f"request-target {_quote(target)} is not an http(s) or ws(s) URL")
    if not rest.startswith("/"):  # the regex leaves "", "?query" or "/path..."
        rest = "/" + rest
    path, _, query = rest.partition("?")
    return path, query, (scheme, authority)


def _check_target_authority(target: str, scheme: str, authority: str, headers: Headers) -> None:
    """Refuse (400) an absolute-form target whose authority is not the request's one Host.

    RFC 9112 section 3.2.2 has a server take the target's authority and ignore Host. But a proxy
    or load balancer in front may have routed, authenticated or checked origins on Host: when the
    two differ, the parties disagree about where the request goes, so nobody gets to choose.
    """
    named = _parse_authority(authority, scheme)
    if named is None:
        raise HandshakeError(
            400, f"request-target {_quote(target)} has an authority that is not host[:port]"
        )
    hosts = headers.get_all("Host")
    if len(hosts) != 1 or _parse_authority(hosts[0].strip(" \t"), scheme) != named:
        raise HandshakeError(
            400,
            f"request-target {_quote(target)} names another authority"
            f" than the Host header ({_shown(hosts)})",
        )


class Request:
    """One HTTP request head as it arrived: an upgrade request or a plain GET.

    Built by :func:`parse_request`; one is kept per connection (hence ``__slots__``). ``path`` and
    ``query`` are raw: nothing is percent-decoded, so routing compares what the client sent.
    """

    __slots__ = ("_query_params", "headers", "http_version", "method", "path", "query", "target")

    method: str
    target: str
    path: str
    query: str
    http_version: str
    headers: Headers

    def __init__(
        self,
        method: str,
        target: str,
        http_version: str = "HTTP/1.1",
        headers: Headers | Iterable[tuple[str, str]] = (),
    ) -> None:
        """Build a request; ``path`` and ``query`` are derived from ``target``.

        Raises :class:`HandshakeError` (400) when ``target`` is neither origin-form (``/...``) nor
        an absolute http/https/ws/wss URL, contains a fragment, or is an absolute URL whose
        ``host[:port]`` is not exactly the one ``Host`` header's (default ports compared as equal).
        """
        self.method = method
        self.target = target
        self.path, self.query, absolute = _split_target(target)
        self.http_version = http_version
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self._query_params: dict[str, list[str]] | None = None
        if absolute is not None:
            _check_target_authority(target, absolute[0], absolute[1], self.headers)

    @property
    def query_params(self) -> dict[str, list[str]]:
        """The query string decoded by ``urllib.parse.parse_qs`` (blank values kept).

        Computed on first access and cached: most connections never look at it. The same dict is
        returned each time, so treat it as read-only.
        """
        if self._query_params is None:
            self._query_params = parse_qs(self.query, keep_blank_values=True)
        return self._query_params

    def __repr__(self) -> str:
        return (
            f"Request(method={self.method!r}, target={self.target!r}, "
            f"http_version={self.http_version!r}, headers={self.headers!r})"
        )


def _header_line_error(line: str) -> str:
    """Say why ``line`` is not a valid ``name: value`` field line (called only after it failed)."""
    if "\n" in line:
        return "bare LF in head (lines must end with CRLF)"
    if "\r" in line:
        return "bare CR in head (lines must end with CRLF)"
    name, colon, value = line.partition(":")
    if not colon:
        return f"header line {_quote(line)} has no colon"
    if not name:
        return f"header line {_quote(line)} has an empty name"
    if name != name.rstrip(" \t"):
        # RFC 7230 section 3.2.4: whitespace before the colon MUST be rejected with 400.
        return f"header name {_quote(name)} is followed by whitespace before the colon"
    if any(ord(char) > 0x7F for char in name):
        return f"header name {_quote(name)} contains non-ASCII characters"
    if _TOKEN.fullmatch(name) is None:
        return f"header name {_quote(name)} is not a token"
    return f"header {name} value {_quote(value)} contains a control character"


def _parse_header_lines(lines: list[str]) -> list[tuple[str, str]]:
    """Turn field lines into (name, value) pairs; raise ``HandshakeError(400)`` on any bad line."""
    fields: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            # RFC 7230 section 3.2.4: obs-fold is deprecated and a server may refuse it with 400;
            # unfolding it instead would let two parsers in a chain disagree about the headers.
            raise HandshakeError(
                400, f"obs-fold (line starting with whitespace) is not allowed: {_quote(line)}"
            )
        name, colon, value = line.partition(":")
        if not colon or _TOKEN.fullmatch(name) is None:
            raise HandshakeError(400, _header_line_error(line))
        value = value.strip(" \t")
        if _VALUE_CTL.search(value) is not None:
            raise HandshakeError(400, _header_line_error(line))
        fields.append((name, value))
    return fields


def _split_head(text: str, what: str) -> list[str]:
    """Split a head ending in CRLF CRLF into its lines (a bare LF or CR stays inside a line).

    The line parsers refuse whatever bare LF or CR is left, so that ``a\nb`` cannot be read as
    two lines here and one line by a proxy in front (request smuggling).
    """
    if not text.endswith("\r\n\r\n"):
        raise HandshakeError(400, f"{what} does not end with CRLF CRLF")
    # RFC 7230 section 3.5: a server SHOULD ignore empty lines received before the request line
    # (some clients send a stray CRLF after a previous body).
    start = 0
    while text.startswith("\r\n", start):
        start += 2
    lines = text[start:-4].split("\r\n")
    if not lines[0]:
        raise HandshakeError(400, f"{what} is empty")
    return lines


def parse_request(block: bytes | bytearray | memoryview) -> Request:
    """Parse a request head (request line and header lines, through the final CRLF CRLF).

    Strict where leniency breeds request smuggling, practical elsewhere: the request line must be
    ``METHOD SP request-target SP HTTP/1.x``; every line must end with CRLF; header names must be
    tokens; values are stripped of surrounding spaces and tabs and may not hold control characters
    other than HTAB; obs-fold is refused; ``Content-Length`` must be one decimal number and may not
    come with ``Transfer-Encoding``; an absolute-form target must name the ``Host``. Bytes are
    decoded as latin-1, so any obs-text survives.

    Raises :class:`HandshakeError`: 505 for a well-formed version whose major is not 1
    (``HTTP/2.0``, ``HTTP/9.9``, ``HTTP/0.9``), else 400 with a reason naming the bad part. Costs
    one decode and one pass over the lines; the caller has already bounded the size.
    """
    lines = _split_head(str(block, "latin-1"), "request head")
    request_line = lines[0]
    match = _REQUEST_LINE.fullmatch(request_line)
    if match is None:
        raise HandshakeError(400, _request_line_error(request_line))
    method, target, http_version = match.groups()
    if http_version[5] != "1":
        # RFC 9110 section 15.6.6: 505 is the answer to a major version the server does not
        # speak. HTTP/2 and HTTP/3 never arrive as a text request line (the h2 preface
        # "PRI * HTTP/2.0" does, and gets this), and HTTP/0.9 has no headers to upgrade with.
        raise HandshakeError(
            505, f"HTTP version {http_version} is not supported; this server speaks HTTP/1.1"
        )
    headers = Headers(_parse_header_lines(lines[1:]))
    _check_framing(headers)
    return Request(method, target, http_version, headers)


def _check_framing(headers: Headers) -> None:
    """Refuse (400) a head whose body length two parsers could read differently.

    The server never reads a request body, but a proxy in front does: RFC 9112 section 6.3 makes
    an invalid or repeated Content-Length an unrecoverable framing error, and one beside
    Transfer-Encoding is the classic smuggling pair (section 6.1 lets a server refuse it).
    """
    lengths = headers.get_all("Content-Length")
    if not lengths:
        return
    if "Transfer-Encoding" in headers:
        raise HandshakeError(400, "Content-Length and Transfer-Encoding headers in one request")
    if len(lengths) > 1:
        raise HandshakeError(400, "Content-Length header is repeated")
    if _DIGITS.fullmatch(lengths[0]) is None:
        raise HandshakeError(
            400, f"Content-Length header {_quote(lengths[0])} is not a decimal number"
        )


def _request_line_error(line: str) -> str:
    """Say why ``line`` is not a valid request line (called only after it failed)."""
    if "\n" in line or "\r" in line:
        return "bare LF or CR in request line (lines must end with CRLF)"
    parts = line.split(" ")
    if len(parts) != 3:
        return f"malformed request line {_quote(line)}: expected 'METHOD TARGET HTTP/x.y'"
    method, target, version = parts
    if _TOKEN.fullmatch(method) is None:
        return f"request method {_quote(method)} is not a token"
    if _HTTP_VERSION.fullmatch(version) is None:
        return f"malformed HTTP version {_quote(version)} in request line"
    return f"request-target {_quote(target)} contains characters that are not visible ASCII"


def _tokens(values: Iterable[str]) -> list[str]:
    """The comma-separated elements of one or more header values, stripped, empties dropped."""
    return [item.strip(" \t") for value in values for item in value.split(",") if item.strip(" \t")]


def _has_token(values: Iterable[str], token: str) -> bool:
    """Whether ``token`` (lowercase) is among the comma-separated elements, in any case."""
    return any(item.lower() == token for item in _tokens(values))


def _shown(values: list[str]) -> str:
    """A header's values for an error reason: quoted and comma-joined, or "missing"."""
    return _quote(", ".join(values)) if values else "missing"


def is_upgrade_request(request: Request) -> bool:
    """Whether ``request`` asks for a WebSocket upgrade (an ``Upgrade`` header naming websocket).

    Only that: a plain GET (a health check, a 404) answers False and gets an ordinary HTTP
    response; an upgrade request answers True and then goes through :func:`validate_upgrade`.
    """
    return _has_token(request.headers.get_all("Upgrade"), "websocket")


def validate_upgrade(request: Request) -> str:
    """Check an upgrade request against RFC 6455 section 4.2.1; return its Sec-WebSocket-Key.

    Raises :class:`HandshakeError`:

    * 405 (with ``Allow: GET``) when the method is not GET;
    * 505 when the HTTP version's major is not 1;
    * 400 when the HTTP version is below 1.1 or malformed; the request announces a body
      (``Transfer-Encoding``, or ``Content-Length`` other than 0); ``Host`` is missing, empty,
      repeated or not ``host[:port]``; ``Upgrade`` does not name websocket, ``Connection`` does
      not name upgrade, or ``Sec-WebSocket-Key`` is missing, repeated or not the base64 encoding
      of 16 bytes;
    * 426 (with ``Sec-WebSocket-Version: 13``) when ``Sec-WebSocket-Version`` is missing, repeated
      or not 13 — RFC 6455 section 4.4 tells the client which version to retry with.
    """
    if request.method != "GET":
        raise HandshakeError(
            405,
            f"method {request.method} is not allowed for a WebSocket upgrade",
            [("Allow", "GET")],
        )
    version = _HTTP_VERSION.fullmatch(request.http_version)
    if version is not None and version.group(1) != "1":
        raise HandshakeError(
            505,
            f"HTTP version {request.http_version} is not supported; this server speaks HTTP/1.1",
        )
    # RFC 6455 section 4.1 needs HTTP/1.1 or higher: HTTP/1.0 has no Upgrade. A higher minor
    # (HTTP/1.2) is read as 1.1, as RFC 9110 section 2.5 asks of a recipient.
    if version is None or version.group(2) == "0":
        raise HandshakeError(
            400, f"WebSocket upgrade needs HTTP/1.1 or higher, got {_quote(request.http_version)}"
        )
    headers = request.headers
    _check_no_body(headers)
    hosts = headers.get_all("Host")
    if not hosts:
        raise HandshakeError(400, "Host header is missing")
    if len(hosts) > 1:
        # RFC 9112 section 3.2: more than one Host field MUST be answered with 400.
        raise HandshakeError(400, "Host header is repeated")
    if not hosts[0]:
        raise HandshakeError(400, "Host header is empty")
    if _parse_authority(hosts[0].strip(" \t"), "") is None:
        raise HandshakeError(400, f"Host header {_quote(hosts[0])} is not host[:port]")
    upgrade = headers.get_all("Upgrade")
    if not _has_token(upgrade, "websocket"):
        raise HandshakeError(400, f"Upgrade header is {_shown(upgrade)}, lacks 'websocket'")
    connection = headers.get_all("Connection")
    if not _has_token(connection, "upgrade"):
        raise HandshakeError(400, f"Connection header is {_shown(connection)}, lacks 'upgrade'")
    versions = _tokens(headers.get_all("Sec-WebSocket-Version"))
    if versions != ["13"]:
        raise HandshakeError(
            426,
            f"Sec-WebSocket-Version header is {_shown(versions)};"
            " this server speaks version 13 only",
            [("Sec-WebSocket-Version", "13")],
        )
    keys = headers.get_all("Sec-WebSocket-Key")
    if not keys:
        raise HandshakeError(400, "Sec-WebSocket-Key header is missing")
    if len(keys) > 1:
        raise HandshakeError(400, "Sec-WebSocket-Key header is repeated")
    key = keys[0]
    if not _is_valid_key(key):
        raise HandshakeError(
            400, f"Sec-WebSocket-Key header {_quote(key)} is not base64 of exactly 16 bytes"
        )
    return key


def _check_no_body(headers: Headers) -> None:
    """Refuse (400) an upgrade request that announces a body.

    The server reads the head only and takes every byte after it as WebSocket frames, so a body
    would be parsed as frames the client never framed — while a proxy in front, which did read the
    body, forwarded whatever followed it as a new request. A GET upgrade carries no body (RFC 6455
    section 4.1); ``Content-Length: 0`` says exactly that and is let through.
    """
    if "Transfer-Encoding" in headers:
        raise HandshakeError(
            400, f"Transfer-Encoding header ({_shown(headers.get_all('Transfer-Encoding'))})"
            " on an upgrade request: a body would be read as WebSocket frames"
        )
    lengths = headers.get_all("Content-Length")
    if any(_DIGITS.fullmatch(value) is None or value.strip("0") for value in lengths):
        raise HandshakeError(
            400, f"Content-Length header ({_shown(lengths)}) on an upgrade request:"
            " a body would be read as WebSocket frames"
        )


def _is_valid_key(key: str) -> bool:
    """Whether ``key`` is base64 (with padding) of exactly 16 bytes."""
    # 16 bytes always encode to 24 characters; checking the length first turns away most junk
    # before the decoder runs.
    if len(key) != 24 or not key.isascii():
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        return False


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value for ``key``: base64(SHA-1(key + RFC 6455 GUID)).

    ``key`` is used exactly as received (latin-1 is the inverse of how the head was decoded).
    """
    digest = hashlib.sha1((key + _WEBSOCKET_GUID).encode("latin-1")).digest()
    return base64.b64encode(digest).decode("ascii")


def requested_subprotocols(request: Request) -> list[str]:
    """Every subprotocol the client offered (all Sec-WebSocket-Protocol values), in its order."""
    return _tokens(request.headers.get_all("Sec-WebSocket-Protocol"))


def select_subprotocol(request: Request, supported: Sequence[str]) -> str | None:
    """The first entry of ``supported`` the client offered, or None when there is none.

    The server's order wins over the client's: ``supported`` is the server's preference list
    (``Config.subprotocols``). Names are compared exactly — subprotocol names are case-sensitive.
    """
    offered = set(requested_subprotocols(request))
    if not offered:
        return None
    for name in supported:
        if name in offered:
            return name
    return None


def _parse_host(text: str) -> str | None:
    """The canonical form of a lowercase host, or None when it is not one a browser serialises.

    A host is a DNS name (``_LABEL`` labels, 253 characters at most, a trailing dot allowed and
    kept: ``example.com.`` is another origin than ``example.com`` to a browser), a dotted-quad
    IPv4 literal, or a bracketed IPv6 literal (returned compressed, so ``[0::1]`` is ``[::1]``).
    Whatever else a URL parser would have rewritten or stopped at (``%``, ``\\``, ``@``, ``/``,
    empty labels, zone IDs) makes the whole value invalid rather than being matched as text.
    """
    if text.startswith("["):
        literal = text[1:-1]
        if not text.endswith("]") or _IPV6_TEXT.fullmatch(literal) is None:
            return None
        try:
            return f"[{ipaddress.IPv6Address(literal).compressed}]"
        except ValueError:
            return None
    name = text.removesuffix(".")
    if not name or len(name) > 253:
        return None
    labels = name.split(".")
    if _DIGITS.fullmatch(labels[-1]) is not None:
        # A URL parser reads a host ending in a number as an IPv4 address (WHATWG URL, "ends in
        # a number") and serialises it as a dotted quad: only that form can be a real origin.
        if name == text and len(labels) == 4 and all(_OCTET.fullmatch(x) for x in labels):
            return text
        return None
    if all(_LABEL.fullmatch(label) for label in labels):
        return text
    return None


def _parse_authority(text: str, scheme: str) -> tuple[str, int | None] | None:
    """``(host, port)`` of ``host [":" port]``, or None when it is not exactly that.

    Case is ignored (the host comes back lowercase); the port is 1-65535 as digits only, and None
    when absent or the default of ``scheme`` (80 for http/ws, 443 for https/wss).
    """
    if not text.isascii():
        # Before lower(): "\u212a".lower() is "k", and a forged host must not become a real one.
        return None
    text = text.lower()
    if text.startswith("["):
        end = text.find("]") + 1  # 0 when there is no "]": the host is then "" and refused
        host_text, rest = text[:end], text[end:]
    else:
        host_text, colon, port_text = text.partition(":")
        rest = colon + port_text
    host = _parse_host(host_text)
    if host is None:
        return None
    if not rest:
        return host, None
    if rest[0] != ":" or _PORT.fullmatch(rest[1:]) is None:
        return None
    port = int(rest[1:])
    if not 1 <= port <= 65535:
        return None
    return host, None if port == _DEFAULT_PORTS.get(scheme) else port


def _parse_origin(value: str) -> tuple[str, str, int | None] | None:
    """``(scheme, host, port)`` of an origin serialised as RFC 6454 section 6.2 does.

    That is ``scheme "://" host [":" port]`` and nothing more: no path, query, fragment or
    userinfo, no percent-encoding or backslash. Scheme and host are lowercased, the default port
    becomes None. None for anything else — ``null`` among them, which browsers send from
    sandboxed frames and file: pages.
    """
    if not value.isascii():
        return None  # checked before lower(), for the reason _parse_authority gives
    scheme, separator, authority = value.strip(" \t").lower().partition("://")
    if not separator or _SCHEME.fullmatch(scheme) is None:
        return None
    parsed = _parse_authority(authority, scheme)
    if parsed is None:
        return None
    return scheme, parsed[0], parsed[1]


@lru_cache(maxsize=256)
def _parse_allowed_origin(entry: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` of an allowed-origins entry; the host may start with ``*.``.

    Parsed as strictly as a received Origin; a wildcard's suffix must be a DNS name (not an IP
    literal). Cached because the same few entries are consulted on every connection. Raises
    ValueError for an entry that is not ``scheme://host[:port]`` or ``scheme://*.name[:port]``.
    """
    # A trailing slash is a common slip when copying an origin from the address bar; tolerate it.
    text = entry.strip().lower().removesuffix("/")
    if text == "null":
        # Any page can send "null" (from a sandboxed iframe), so listing it would let every site
        # in while reading as if it let none.
        raise ValueError(
            "allowed origin 'null' cannot be listed: any page can send it from a sandboxed frame;"
            " use '*' to allow every origin"
        )
    scheme, separator, authority = text.partition("://")
    wildcard = authority.startswith("*.")
    parsed = None
    if separator and entry.isascii() and _SCHEME.fullmatch(scheme) is not None:
        parsed = _parse_authority(authority[2:] if wildcard else authority, scheme)
    if parsed is not None and wildcard:
        suffix = parsed[0].removesuffix(".")
        if suffix.startswith("[") or _DIGITS.fullmatch(suffix.rpartition(".")[2]) is not None:
            parsed = None  # "*.0.0.1" would be half an IP address, not a set of subdomains
    if parsed is None:
        raise ValueError(
            f"allowed origin {entry!r} is not 'scheme://host[:port]', "
            "'scheme://*.domain[:port]', '*' or 'same-origin' (ports 1-65535)"
        )
    host, port = parsed
    return scheme, "*." + host if wildcard else host, port


def _same_origin(origin: tuple[str, str, int | None], host_header: str | None) -> bool:
    """Whether the Origin's host[:port] is the request's Host (default ports compared as equal)."""
    if host_header is None:
        return False
    scheme, origin_host, origin_port = origin
    # Host carries no scheme, so its default port is the one the Origin's scheme implies.
    return _parse_authority(host_header.strip(" \t"), scheme) == (origin_host, origin_port)


def _origin_matches(origin: tuple[str, str, int | None], entry: str) -> bool:
    """Whether a parsed Origin satisfies one ``scheme://host[:port]`` or wildcard entry."""
    scheme, host, port = _parse_allowed_origin(entry)
    if scheme != origin[0] or port != origin[2]:
        return False
    if host.startswith("*."):
        # "*.example.com" covers one or more whole labels in front of ".example.com", at any
        # depth, but not example.com itself. Whole labels because the parsed host has no empty
        # label and no character a label cannot hold.
        return origin[1].endswith(host[1:])
    return host == origin[1]


def origin_allowed(request: Request, allowed: Sequence[str] | None) -> bool:
    """Whether the request's Origin is acceptable under ``allowed`` (``Config.allowed_origins``).

    * ``allowed`` None: any origin (Go melody's default).
    * No Origin header: allowed — only browsers send one, and a non-browser client can forge it
      anyway, so its absence says nothing about cross-site use.
    * Otherwise the Origin must be serialised as RFC 6454 section 6.2 does, ``scheme://host[:port]``
      (a DNS name, dotted-quad IPv4 or bracketed IPv6 host; no path, userinfo, percent-encoding
      or backslash), and match an entry, compared with scheme and host lowercased and ports
      80/443 dropped for http/ws and https/wss: ``"*"`` (any origin, even ``null`` or a malformed
      one), an exact origin, a wildcard host such as ``"https://*.example.com"`` (one or more
      labels in front of example.com, not example.com itself), or ``"same-origin"`` (the Origin's
      host[:port] equals the request's Host header, parsed the same way).

    Several Origin headers, a malformed Origin, or ``null`` match only ``"*"``; ``"null"`` cannot
    be an entry. Raises ValueError for a malformed entry in ``allowed``.
    """
    if allowed is None:
        return True
    origins = request.headers.get_all("Origin")
    if not origins:
        return True
    if "*" in allowed:
        return True
    if len(origins) > 1:
        return False
    origin = _parse_origin(origins[0])
    if origin is None:
        return False
    for entry in allowed:
        if entry == "same-origin":
            if _same_origin(origin, request.headers.get("Host")):
                return True
        elif _origin_matches(origin, entry):
            return True
    return False


def _check_outgoing_header(name: str, value: str) -> None:
    """Refuse a header that would corrupt or split the message being built (ValueError)."""
    if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
        raise ValueError(f"header injection: CR or LF in header {name!r}: {value!r}")
    if _TOKEN.fullmatch(name) is None:
        raise ValueError(f"header name {name!r} is not a token")
    if _BAD_OUTGOING_VALUE.search(value) is not None:
        raise ValueError(f"header {name} value {value!r} holds a control or non-latin-1 character")


def build_response(
    status: int,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    close: bool = True,
) -> bytes:
    """Serialise an HTTP/1.1 response: status line, ``headers``, the framing headers, ``body``.

    Added after ``headers``: ``Content-Type: text/plain; charset=utf-8`` when there is a body and
    no Content-Type was given; ``Content-Length`` (also ``0``) except for 1xx, 204 and 304, which
    carry no body (RFC 7230 section 3.3.2); ``Connection: close`` when ``close`` is true, the status
    is not 1xx, and no Connection header was given. No ``Server`` header is added.

    Raises ValueError when a header name or value contains CR or LF (header injection) or is
    otherwise invalid, when ``headers`` carries Content-Length or Transfer-Encoding (the framing is
    this function's job), when ``status`` is outside 100-599, or when a bodiless status gets a body.
    """
    if not 100 <= status <= 599:
        raise ValueError(f"HTTP status {status} is outside 100-599")
    parts = [f"HTTP/1.1 {status} {_REASON_PHRASES.get(status, '')}\r\n"]
    has_content_type = has_connection = False
    for name, value in headers:
        _check_outgoing_header(name, value)
        lowered = name.lower()
        if lowered in ("content-length", "transfer-encoding"):
            raise ValueError(f"{name} is computed from the body; do not pass it")
        has_content_type = has_content_type or lowered == "content-type"
        has_connection = has_connection or lowered == "connection"
        parts.append(f"{name}: {value}\r\n")
    if status < 200 or status in (204, 304):
        if body:
            raise ValueError(f"a {status} response carries no body")
    else:
        if body and not has_content_type:
            parts.append("Content-Type: text/plain; charset=utf-8\r\n")
        parts.append(f"Content-Length: {len(body)}\r\n")
    if close and status >= 200 and not has_connection:
        parts.append("Connection: close\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1") + body


def build_accept_response(
    key: str,
    subprotocol: str | None = None,
    extensions: str | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """The 101 Switching Protocols response accepting the upgrade that sent ``key``.

    Carries ``Upgrade: websocket``, ``Connection: Upgrade``, ``Sec-WebSocket-Accept``, then
    ``Sec-WebSocket-Protocol`` and ``Sec-WebSocket-Extensions`` when given, then ``extra_headers``.
    ``key`` must already have passed :func:`validate_upgrade`. Costs one SHA-1 and a few
    concatenations: the constant prefix is built at import.

    Raises ValueError when ``subprotocol`` is not a token, or a header would be invalid (CR/LF).
    """
    head = _ACCEPT_PREFIX + accept_key(key).encode("ascii") + b"\r\n"
    if subprotocol is None and extensions is None and not extra_headers:
        return head + b"\r\n"
    parts = []
    if subprotocol is not None:
        if _TOKEN.fullmatch(subprotocol) is None:
            raise ValueError(f"subprotocol {subprotocol!r} is not a token")
        parts.append(f"Sec-WebSocket-Protocol: {subprotocol}\r\n")
    if extensions is not None:
        _check_outgoing_header("Sec-WebSocket-Extensions", extensions)
        parts.append(f"Sec-WebSocket-Extensions: {extensions}\r\n")
    for name, value in extra_headers:
        _check_outgoing_header(name, value)
        parts.append(f"{name}: {value}\r\n")
    parts.append("\r\n")
    return head + "".join(parts).encode("latin-1")


def error_response(error: HandshakeError) -> bytes:
    """The response refusing a handshake: ``error.status``, ``error.headers``, reason as body.

    The connection is to be closed after it is written (``Connection: close``).
    """
    return build_response(error.status, error.headers, (error.reason + "\n").encode("utf-8"))


def build_client_request(
    host: str,
    path: str,
    key: str,
    *,
    subprotocols: Sequence[str] = (),
    extensions: str | None = None,
    origin: str | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """The client's GET upgrade request (RFC 6455 section 4.1) for melody's client and tests.

    ``host`` is the Host value (``host[:port]``), ``path`` the origin-form target (``/chat?x=1``),
    ``key`` the base64 nonce (the caller generates it, e.g. from ``os.urandom(16)``, so that tests
    can fix it). Subprotocols are sent in the given order, which is the client's preference.

    Raises ValueError when ``path`` is not origin-form visible ASCII, a subprotocol is not a
    token, or any header would be invalid (CR/LF: header injection).
    """
    if not host:
        raise ValueError("host is empty")
    if not path.startswith("/") or re.fullmatch("[\x21-\x7e]+", path) is None or "#" in path:
        raise ValueError(f"path {path!r} is not an origin-form request-target")
    for name in subprotocols:
        if _TOKEN.fullmatch(name) is None:
            raise ValueError(f"subprotocol {name!r} is not a token")
    fields: list[tuple[str, str]] = [
        ("Host", host),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
    ]
    if origin is not None:
        fields.append(("Origin", origin))
    if subprotocols:
        fields.append(("Sec-WebSocket-Protocol", ", ".join(subprotocols)))
    if extensions is not None:
        fields.append(("Sec-WebSocket-Extensions", extensions))
    fields.extend(extra_headers)
    parts = [f"GET {path} HTTP/1.1\r\n"]
    for name, value in fields:
        _check_outgoing_header(name, value)
        parts.append(f"{name}: {value}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


def parse_response_head(block: bytes) -> tuple[int, Headers]:
    """Status code and headers of an HTTP response head, through the final CRLF CRLF (client side).

    The same line rules as :func:`parse_request`. A malformed head raises :class:`HandshakeError`
    with status 502 — the HTTP code for "the upstream server answered with something invalid" —
    so the client can report it like any other refused handshake.
    """
    try:
        lines = _split_head(str(block, "latin-1"), "response head")
        match = _STATUS_LINE.fullmatch(lines[0])
        if match is None:
            raise HandshakeError(400, f"malformed status line {_quote(lines[0])}")
        fields = _parse_header_lines(lines[1:])
    except HandshakeError as error:
        raise HandshakeError(502, f"invalid response from server: {error.reason}") from None
    return int(match.group(2)), Headers(fields)
