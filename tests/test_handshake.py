"""The opening handshake, sans-I/O: RFC 6455 section 4 over RFC 7230 message syntax.

Tests are named after the section they check (``test_4_2_1_...`` for RFC 6455,
``test_rfc7230_...`` for HTTP/1.1 syntax). No socket is opened: requests are bytes, responses are
bytes, and the wsproto and websockets sans-I/O protocol objects stand in for real peers.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping, Sequence

import h11
import pytest
import websockets.client
import websockets.http11
import websockets.server
import websockets.uri
import wsproto
import wsproto.events
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.typing import Subprotocol

from melody.errors import HandshakeError
from melody.handshake import (
    Headers,
    Request,
    accept_key,
    build_accept_response,
    build_client_request,
    build_response,
    error_response,
    is_upgrade_request,
    origin_allowed,
    parse_request,
    parse_response_head,
    requested_subprotocols,
    select_subprotocol,
    validate_upgrade,
)

# RFC 6455 section 1.2/1.3: the sample nonce and the accept value it must produce.
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

# The client handshake of RFC 6455 section 1.2, field for field.
RFC_REQUEST_FIELDS: list[tuple[str, str]] = [
    ("Host", "server.example.com"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", RFC_KEY),
    ("Origin", "http://example.com"),
    ("Sec-WebSocket-Protocol", "chat, superchat"),
    ("Sec-WebSocket-Version", "13"),
]


def head(fields: Sequence[tuple[str, str]], request_line: str = "GET /chat HTTP/1.1") -> bytes:
    """A request head with CRLF line endings, as a client would send it."""
    lines = [request_line, *(f"{name}: {value}" for name, value in fields)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def upgrade(
    *,
    drop: Sequence[str] = (),
    replace: Mapping[str, str] | None = None,
    add: Sequence[tuple[str, str]] = (),
    request_line: str = "GET /chat HTTP/1.1",
) -> Request:
    """The RFC 6455 section 1.2 request, parsed, with fields dropped, replaced or added."""
    replace = replace or {}
    fields = [
        (name, replace.get(name, value)) for name, value in RFC_REQUEST_FIELDS if name not in drop
    ]
    return parse_request(head([*fields, *add], request_line))


def refusal(request: Request) -> HandshakeError:
    """The HandshakeError validate_upgrade raises for ``request`` (fails if it accepts)."""
    with pytest.raises(HandshakeError) as caught:
        validate_upgrade(request)
    return caught.value


# --- RFC 6455 section 1.3: Sec-WebSocket-Accept ---------------------------------------------


def test_1_3_accept_key_of_rfc_example() -> None:
    assert accept_key(RFC_KEY) == RFC_ACCEPT


def test_1_3_accept_key_is_base64_sha1_of_key_and_guid() -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    expected = base64.b64encode(hashlib.sha1(key.encode() + guid).digest()).decode()
    assert accept_key(key) == expected


# --- RFC 7230 section 3 / 5.3: parsing the request head -------------------------------------


def test_1_2_rfc_example_request_parses() -> None:
    request = parse_request(head(RFC_REQUEST_FIELDS))
    assert request.method == "GET"
    assert request.target == "/chat"
    assert request.path == "/chat"
    assert request.query == ""
    assert request.http_version == "HTTP/1.1"
    assert request.headers.items() == RFC_REQUEST_FIELDS


def test_rfc7230_5_3_1_origin_form_splits_path_and_query() -> None:
    request = parse_request(head([("Host", "a")], "GET /chat/room1?token=x&a=&a=2 HTTP/1.1"))
    assert request.target == "/chat/room1?token=x&a=&a=2"
    assert request.path == "/chat/room1"
    assert request.query == "token=x&a=&a=2"
    assert request.query_params == {"token": ["x"], "a": ["", "2"]}


def test_rfc7230_5_3_1_path_and_query_are_not_percent_decoded() -> None:
    request = parse_request(head([], "GET /a%20b?q=%41 HTTP/1.1"))
    assert request.path == "/a%20b"
    assert request.query == "q=%41"
    assert request.query_params == {"q": ["A"]}


def test_rfc7230_5_3_1_query_params_are_computed_once() -> None:
    request = parse_request(head([], "GET /?x=1 HTTP/1.1"))
    assert request.query_params is request.query_params


def test_rfc7230_5_3_1_no_query_gives_empty_string_and_params() -> None:
    request = parse_request(head([]))
    assert request.query == ""
    assert request.query_params == {}


@pytest.mark.parametrize(
    ("target", "host", "path", "query"),
    [
        ("http://example.com/chat?x=1", "example.com", "/chat", "x=1"),
        ("https://example.com:8443/a/b", "example.com:8443", "/a/b", ""),
        ("ws://example.com", "example.com", "/", ""),
        ("wss://example.com?x=1", "example.com", "/", "x=1"),
    ],
)
def test_rfc7230_5_3_2_absolute_form_is_accepted(
    target: str, host: str, path: str, query: str
) -> None:
    request = parse_request(head([("Host", host)], f"GET {target} HTTP/1.1"))
    assert (request.target, request.path, request.query) == (target, path, query)


def test_rfc7230_3_5_empty_lines_before_request_line_are_ignored() -> None:
    request = parse_request(b"\r\n" + head([("Host", "a")]))
    assert request.path == "/chat"
    assert request.headers["Host"] == "a"


def test_rfc7230_3_2_4_value_is_stripped_of_ows() -> None:
    request = parse_request(b"GET / HTTP/1.1\r\nHost: \t example.com \t\r\nX-Empty:\r\n\r\n")
    assert request.headers["Host"] == "example.com"
    assert request.headers["X-Empty"] == ""


def test_rfc7230_3_2_htab_inside_value_is_kept() -> None:
    request = parse_request(b"GET / HTTP/1.1\r\nX-Tab: a\tb\r\n\r\n")
    assert request.headers["X-Tab"] == "a\tb"


def test_rfc7230_3_2_6_obs_text_in_value_survives_as_latin_1() -> None:
    request = parse_request(b"GET / HTTP/1.1\r\nX-Name: caf\xe9\r\n\r\n")
    assert request.headers["X-Name"] == "caf\xe9"


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_parse_request_accepts_any_byte_buffer(wrap: type) -> None:
    request = parse_request(wrap(head(RFC_REQUEST_FIELDS)))
    assert validate_upgrade(request) == RFC_KEY


def test_request_is_slotted_and_has_a_repr() -> None:
    request = parse_request(head(RFC_REQUEST_FIELDS))
    assert not hasattr(request, "__dict__")
    assert "'/chat'" in repr(request)
    assert "server.example.com" in repr(request)


def test_request_can_be_built_directly() -> None:
    request = Request("GET", "/x?y=1", headers=[("Host", "a")])
    assert (request.path, request.query, request.http_version) == ("/x", "y=1", "HTTP/1.1")
    assert isinstance(request.headers, Headers)


MALFORMED_REQUESTS = [
    # (id, block, a fragment the reason must contain)
    ("empty", b"\r\n\r\n", "empty"),
    ("no-final-crlf-crlf", b"GET / HTTP/1.1\r\nHost: a\r\n", "CRLF CRLF"),
    ("missing-version", b"GET /chat\r\n\r\n", "request line"),
    ("missing-target", b"GET HTTP/1.1\r\n\r\n", "request line"),
    ("double-space", b"GET  /chat HTTP/1.1\r\n\r\n", "request line"),
    ("trailing-field", b"GET /chat HTTP/1.1 x\r\n\r\n", "request line"),
    ("method-not-token", b"G(T /chat HTTP/1.1\r\n\r\n", "method"),
    ("lowercase-http", b"GET /chat http/1.1\r\n\r\n", "HTTP version"),
    ("two-digit-version", b"GET /chat HTTP/11.1\r\n\r\n", "HTTP version"),
    ("version-without-minor", b"GET /chat HTTP/1\r\n\r\n", "HTTP version"),
    ("relative-target", b"GET chat HTTP/1.1\r\n\r\n", "request-target"),
    ("asterisk-form", b"OPTIONS * HTTP/1.1\r\n\r\n", "request-target"),
    ("authority-form", b"CONNECT example.com:443 HTTP/1.1\r\n\r\n", "request-target"),
    ("ftp-target", b"GET ftp://example.com/ HTTP/1.1\r\n\r\n", "request-target"),
    ("empty-authority", b"GET http:///chat HTTP/1.1\r\n\r\n", "request-target"),
    ("fragment", b"GET /chat#top HTTP/1.1\r\n\r\n", "fragment"),
    ("non-ascii-target", b"GET /caf\xe9 HTTP/1.1\r\n\r\n", "request-target"),
    ("control-in-target", b"GET /a\x01b HTTP/1.1\r\n\r\n", "request-target"),
    ("obs-fold-space", b"GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n", "obs-fold"),
    ("obs-fold-tab", b"GET / HTTP/1.1\r\nX-A: a\r\n\tb\r\n\r\n", "obs-fold"),
    ("whitespace-first-header", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", "obs-fold"),
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: a\n\r\n\r\n", "bare LF"),
    ("bare-lf-between-headers", b"GET / HTTP/1.1\r\nHost: a\nX-B: b\r\n\r\n", "bare LF"),
    ("bare-cr-between-headers", b"GET / HTTP/1.1\r\nHost: a\rX-B: b\r\n\r\n", "bare CR"),
    ("no-colon", b"GET / HTTP/1.1\r\nHost a\r\n\r\n", "no colon"),
    ("empty-name", b"GET / HTTP/1.1\r\n: a\r\n\r\n", "empty name"),
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "before the colon"),
    ("space-in-name", b"GET / HTTP/1.1\r\nX Y: a\r\n\r\n", "not a token"),
    ("separator-in-name", b"GET / HTTP/1.1\r\nX(Y): a\r\n\r\n", "not a token"),
    ("non-ascii-name", b"GET / HTTP/1.1\r\nX-\xe9: a\r\n\r\n", "non-ASCII"),
    ("nul-in-value", b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", "control character"),
    ("soh-in-value", b"GET / HTTP/1.1\r\nX-A: \x01\r\n\r\n", "control character"),
    ("esc-in-value", b"GET / HTTP/1.1\r\nX-A: \x1b[31m\r\n\r\n", "control character"),
    ("del-in-value", b"GET / HTTP/1.1\r\nX-A: a\x7f\r\n\r\n", "control character"),
]


@pytest.mark.parametrize(
    ("block", "fragment"),
    [pytest.param(block, fragment, id=name) for name, block, fragment in MALFORMED_REQUESTS],
)
def test_rfc7230_3_malformed_request_head_is_400(block: bytes, fragment: str) -> None:
    with pytest.raises(HandshakeError) as caught:
        parse_request(block)
    assert caught.value.status == 400
    assert fragment in caught.value.reason


# --- RFC 7230 section 3.2: header fields ----------------------------------------------------


def test_rfc7230_3_2_field_names_are_case_insensitive() -> None:
    headers = Headers([("Sec-WebSocket-Key", RFC_KEY)])
    assert headers["sec-websocket-key"] == RFC_KEY
    assert headers.get("SEC-WEBSOCKET-KEY") == RFC_KEY
    assert "Sec-Websocket-Key" in headers
    assert headers.get_all("sec-WebSocket-key") == [RFC_KEY]


def test_rfc7230_3_2_2_repeated_fields_keep_every_value_in_order() -> None:
    headers = Headers([("Connection", "keep-alive"), ("X-A", "1"), ("connection", "Upgrade")])
    assert headers.get_all("Connection") == ["keep-alive", "Upgrade"]
    assert headers["Connection"] == "keep-alive"
    assert headers.get("connection") == "keep-alive"


def test_rfc7230_3_2_headers_keep_original_spelling_and_order() -> None:
    fields = [("Host", "a"), ("x-lower", "1"), ("X-UPPER", "2"), ("host", "b")]
    headers = Headers(fields)
    assert headers.items() == fields
    assert list(headers) == ["Host", "x-lower", "X-UPPER", "host"]
    assert headers.keys() == ["Host", "x-lower", "X-UPPER", "host"]
    assert headers.values() == ["a", "1", "2", "b"]
    assert len(headers) == 4


def test_headers_absent_name() -> None:
    headers = Headers([("Host", "a")])
    with pytest.raises(KeyError):
        headers["Origin"]
    assert headers.get("Origin") is None
    assert headers.get("Origin", "x") == "x"
    assert headers.get_all("Origin") == []
    assert "Origin" not in headers
    assert 1 not in headers


def test_headers_are_a_mapping_and_immutable() -> None:
    assert isinstance(Headers(), Mapping)
    headers = Headers([("Host", "a")])
    with pytest.raises(TypeError):
        headers["Host"] = "b"  # type: ignore[index]
    with pytest.raises(AttributeError):
        headers.extra = 1  # type: ignore[attr-defined]
    headers.get_all("Host").append("b")
    headers.items().append(("X", "y"))
    assert headers.items() == [("Host", "a")]


def test_headers_equality_and_repr() -> None:
    assert Headers([("Host", "a")]) == Headers([("host", "a")])
    assert Headers([("Host", "a")]) != Headers([("Host", "b")])
    assert Headers([("Host", "a")]) != Headers([("Host", "a"), ("Host", "a")])
    assert Headers([("Host", "a")]) != {"Host": "a"}
    assert repr(Headers([("Host", "a")])) == "Headers([('Host', 'a')])"


# --- RFC 6455 section 4.2.1: reading the client's opening handshake -------------------------


def test_4_2_1_rfc_example_is_valid_and_returns_key() -> None:
    request = upgrade()
    assert is_upgrade_request(request)
    assert validate_upgrade(request) == RFC_KEY


@pytest.mark.parametrize("value", ["websocket", "WebSocket", "h2c, websocket", " websocket "])
def test_4_2_1_upgrade_request_is_recognised(value: str) -> None:
    assert is_upgrade_request(upgrade(replace={"Upgrade": value}))


def test_4_2_1_upgrade_token_in_second_upgrade_header_is_recognised() -> None:
    request = upgrade(replace={"Upgrade": "h2c"}, add=[("Upgrade", "websocket")])
    assert is_upgrade_request(request)
    assert validate_upgrade(request) == RFC_KEY


def test_4_2_1_plain_get_is_not_an_upgrade_request() -> None:
    assert not is_upgrade_request(parse_request(head([("Host", "a")], "GET /health HTTP/1.1")))
    assert not is_upgrade_request(upgrade(replace={"Upgrade": "h2c"}))


@pytest.mark.parametrize("method", ["POST", "HEAD", "get"])
def test_4_2_1_method_other_than_get_is_405_with_allow(method: str) -> None:
    error = refusal(upgrade(request_line=f"{method} /chat HTTP/1.1"))
    assert error.status == 405
    assert error.headers == [("Allow", "GET")]
    assert method in error.reason


def test_4_2_1_http_1_0_is_400() -> None:
    error = refusal(upgrade(request_line="GET /chat HTTP/1.0"))
    assert error.status == 400
    assert "HTTP/1.1" in error.reason


# HTTP/2.0 and other major versions: see test_rfc9112_2_3_other_major_version_is_505.
@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.2", "HTTP/1.9"])
def test_4_2_1_http_1_1_or_higher_is_accepted(version: str) -> None:
    assert validate_upgrade(upgrade(request_line=f"GET /chat {version}")) == RFC_KEY


# (id, changes to the RFC example, expected status, header the reason must name)
BAD_UPGRADES = [
    ("host-missing", {"drop": ["Host"]}, 400, "Host"),
    ("host-repeated", {"add": [("Host", "other.example.com")]}, 400, "Host"),
    ("host-empty", {"replace": {"Host": ""}}, 400, "Host"),
    ("upgrade-missing", {"drop": ["Upgrade"]}, 400, "Upgrade"),
    ("upgrade-other-protocol", {"replace": {"Upgrade": "h2c"}}, 400, "Upgrade"),
    ("upgrade-substring-only", {"replace": {"Upgrade": "websockets"}}, 400, "Upgrade"),
    ("connection-missing", {"drop": ["Connection"]}, 400, "Connection"),
    ("connection-keep-alive", {"replace": {"Connection": "keep-alive"}}, 400, "Connection"),
    ("connection-substring-only", {"replace": {"Connection": "upgraded"}}, 400, "Connection"),
    ("version-missing", {"drop": ["Sec-WebSocket-Version"]}, 426, "Sec-WebSocket-Version"),
    ("version-8", {"replace": {"Sec-WebSocket-Version": "8"}}, 426, "Sec-WebSocket-Version"),
    ("version-list", {"replace": {"Sec-WebSocket-Version": "13, 8"}}, 426, "Sec-WebSocket-Version"),
    (
        "version-repeated",
        {"add": [("Sec-WebSocket-Version", "13")]},
        426,
        "Sec-WebSocket-Version",
    ),
    ("key-missing", {"drop": ["Sec-WebSocket-Key"]}, 400, "Sec-WebSocket-Key"),
    (
        "key-repeated",
        {"add": [("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA==")]},
        400,
        "Sec-WebSocket-Key",
    ),
    (
        "key-not-base64",
        {"replace": {"Sec-WebSocket-Key": "!!!!!!!!!!!!!!!!!!!!!!=="}},
        400,
        "Sec-WebSocket-Key",
    ),
    (
        "key-15-bytes",
        {"replace": {"Sec-WebSocket-Key": base64.b64encode(b"x" * 15).decode()}},
        400,
        "Sec-WebSocket-Key",
    ),
    (
        "key-17-bytes",
        {"replace": {"Sec-WebSocket-Key": base64.b64encode(b"x" * 17).decode()}},
        400,
        "Sec-WebSocket-Key",
    ),
    (
        "key-unpadded",
        {"replace": {"Sec-WebSocket-Key": RFC_KEY.rstrip("=")}},
        400,
        "Sec-WebSocket-Key",
    ),
    (
        "key-non-ascii",
        {"replace": {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25j\xe9Q=="}},
        400,
        "Sec-WebSocket-Key",
    ),
    ("key-empty", {"replace": {"Sec-WebSocket-Key": ""}}, 400, "Sec-WebSocket-Key"),
]


@pytest.mark.parametrize(
    ("changes", "status", "header"),
    [
        pytest.param(changes, status, header, id=name)
        for name, changes, status, header in BAD_UPGRADES
    ],
)
def test_4_2_1_bad_upgrade_is_refused_naming_the_header(
    changes: dict[str, object], status: int, header: str
) -> None:
    error = refusal(upgrade(**changes))  # type: ignore[arg-type]
    assert error.status == status
    assert header in error.reason


def test_4_2_1_missing_key_is_400() -> None:
    error = refusal(upgrade(drop=["Sec-WebSocket-Key"]))
    assert (error.status, error.reason) == (400, "Sec-WebSocket-Key header is missing")


def test_4_4_unsupported_version_is_426_naming_version_13() -> None:
    error = refusal(upgrade(replace={"Sec-WebSocket-Version": "8"}))
    assert error.status == 426
    assert error.headers == [("Sec-WebSocket-Version", "13")]


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"replace": {"Upgrade": "WebSocket"}}, id="upgrade-any-case"),
        pytest.param({"replace": {"Upgrade": "h2c, websocket"}}, id="upgrade-in-list"),
        pytest.param({"replace": {"Connection": "UPGRADE"}}, id="connection-any-case"),
        pytest.param({"replace": {"Connection": "keep-alive, Upgrade"}}, id="connection-in-list"),
        pytest.param(
            {"replace": {"Connection": "keep-alive"}, "add": [("Connection", "upgrade")]},
            id="connection-in-second-header",
        ),
        pytest.param({"drop": ["Origin", "Sec-WebSocket-Protocol"]}, id="optional-fields-absent"),
        pytest.param({"replace": {"Host": "server.example.com:8080"}}, id="host-with-port"),
    ],
)
def test_4_2_1_acceptable_variations_pass(changes: dict[str, object]) -> None:
    assert validate_upgrade(upgrade(**changes)) == RFC_KEY  # type: ignore[arg-type]


def test_4_2_1_any_random_16_byte_key_passes() -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    assert validate_upgrade(upgrade(replace={"Sec-WebSocket-Key": key})) == key


def test_4_2_1_reason_quotes_long_client_values_briefly() -> None:
    error = refusal(upgrade(replace={"Upgrade": "x" * 5000}))
    assert len(error.reason) < 200


# --- RFC 6455 sections 1.9 and 4.2.2: subprotocols ------------------------------------------


def test_4_2_1_requested_subprotocols_in_client_order() -> None:
    request = upgrade(
        replace={"Sec-WebSocket-Protocol": " chat ,superchat,, "},
        add=[("Sec-WebSocket-Protocol", "v2.proto")],
    )
    assert requested_subprotocols(request) == ["chat", "superchat", "v2.proto"]


def test_4_2_1_no_subprotocol_header_requests_none() -> None:
    assert requested_subprotocols(upgrade(drop=["Sec-WebSocket-Protocol"])) == []


def test_4_2_2_server_preference_wins_subprotocol_selection() -> None:
    request = upgrade(replace={"Sec-WebSocket-Protocol": "chat, superchat"})
    assert select_subprotocol(request, ["superchat", "chat"]) == "superchat"
    assert select_subprotocol(request, ["chat", "superchat"]) == "chat"
    assert select_subprotocol(request, ["mqtt", "chat"]) == "chat"


def test_4_2_2_no_common_subprotocol_selects_none() -> None:
    request = upgrade(replace={"Sec-WebSocket-Protocol": "chat"})
    assert select_subprotocol(request, ["mqtt"]) is None
    assert select_subprotocol(request, []) is None
    assert select_subprotocol(request, ["Chat"]) is None  # names are case-sensitive
    assert select_subprotocol(upgrade(drop=["Sec-WebSocket-Protocol"]), ["chat"]) is None


# --- RFC 6455 section 10.2 / RFC 6454: origin ------------------------------------------------


def with_origin(origin: str | None, host: str = "example.com") -> Request:
    """An upgrade request carrying ``origin`` (or none) and ``host``."""
    fields = [("Host", host)]
    if origin is not None:
        fields.append(("Origin", origin))
    return parse_request(head(fields))


def test_10_2_no_allow_list_accepts_any_origin() -> None:
    assert origin_allowed(with_origin("https://evil.example"), None)
    assert origin_allowed(with_origin("null"), None)


def test_10_2_request_without_origin_is_allowed() -> None:
    assert origin_allowed(with_origin(None), ["https://example.com"])


@pytest.mark.parametrize(
    ("origin", "allowed", "expected"),
    [
        ("https://example.com", ["https://example.com"], True),
        ("HTTPS://Example.COM", ["https://example.com"], True),
        ("https://example.com", ["HTTPS://EXAMPLE.COM"], True),
        ("https://example.com", ["https://example.com/"], True),
        ("https://example.com", ["https://other.com", "https://example.com"], True),
        ("http://example.com", ["https://example.com"], False),
        ("https://example.com.evil.com", ["https://example.com"], False),
        ("https://example.com/path", ["https://example.com"], False),
        ("null", ["https://example.com"], False),
        ("", ["https://example.com"], False),
    ],
)
def test_rfc6454_exact_origin(origin: str, allowed: list[str], expected: bool) -> None:
    assert origin_allowed(with_origin(origin), allowed) is expected


@pytest.mark.parametrize(
    ("origin", "allowed", "expected"),
    [
        ("https://example.com:443", ["https://example.com"], True),
        ("https://example.com", ["https://example.com:443"], True),
        ("http://example.com:80", ["http://example.com"], True),
        ("wss://example.com:443", ["wss://example.com"], True),
        ("https://example.com:8443", ["https://example.com"], False),
        ("https://example.com:8443", ["https://example.com:8443"], True),
        ("https://example.com:80", ["https://example.com"], False),
        ("http://[::1]:8080", ["http://[::1]:8080"], True),
        ("http://[::1]:8080", ["http://[::1]"], False),
    ],
)
def test_rfc6454_default_ports_are_normalised(
    origin: str, allowed: list[str], expected: bool
) -> None:
    assert origin_allowed(with_origin(origin), allowed) is expected


def test_rfc6454_origin_with_impossible_port_never_matches() -> None:
    assert not origin_allowed(with_origin("http://example.com:99999"), ["http://example.com"])
    assert not origin_allowed(
        with_origin("http://example.com", "example.com:99999"), ["same-origin"]
    )


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("https://app.example.com", True),
        ("https://a.b.example.com", True),
        ("https://APP.Example.com:443", True),
        ("https://example.com", False),
        ("https://evilexample.com", False),
        ("http://app.example.com", False),
        ("https://app.example.com:8443", False),
        ("https://app.example.com.evil.com", False),
        ("https://*.example.com", False),
    ],
)
def test_rfc6454_wildcard_host_entry(origin: str, expected: bool) -> None:
    assert origin_allowed(with_origin(origin), ["https://*.example.com"]) is expected


def test_rfc6454_star_entry_allows_any_origin_even_null() -> None:
    assert origin_allowed(with_origin("https://anything.example"), ["*"])
    assert origin_allowed(with_origin("null"), ["https://example.com", "*"])


@pytest.mark.parametrize(
    ("origin", "host", "expected"),
    [
        ("https://example.com", "example.com", True),
        ("https://example.com", "EXAMPLE.com:443", True),
        ("http://example.com", "example.com:80", True),
        ("http://example.com:8080", "example.com:8080", True),
        ("http://example.com:8080", "example.com", False),
        ("https://example.com", "example.com:80", False),
        ("https://evil.com", "example.com", False),
        ("null", "example.com", False),
    ],
)
def test_rfc6454_same_origin_entry_compares_with_host(
    origin: str, host: str, expected: bool
) -> None:
    assert origin_allowed(with_origin(origin, host), ["same-origin"]) is expected


def test_rfc6454_several_origin_headers_are_refused() -> None:
    request = parse_request(
        head([("Host", "a"), ("Origin", "https://a.com"), ("Origin", "https://b.com")])
    )
    assert not origin_allowed(request, ["https://a.com", "https://b.com"])
    assert origin_allowed(request, ["*"])


@pytest.mark.parametrize(
    "entry",
    ["example.com", "https://", "https://a.com/path", "*.example.com", "https://a.com:99999"],
)
def test_malformed_allowed_origin_entry_raises_value_error(entry: str) -> None:
    with pytest.raises(ValueError, match="allowed origin"):
        origin_allowed(with_origin("https://example.org"), [entry])


# --- RFC 7230 section 3.3 and RFC 6455 section 4.2.2: building responses --------------------


def test_rfc7230_3_3_2_response_with_body_has_type_length_and_close() -> None:
    assert build_response(404, body=b"not found\n") == (
        b"HTTP/1.1 404 Not Found\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 10\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b"not found\n"
    )


def test_rfc7230_3_3_2_empty_body_still_has_content_length() -> None:
    assert (
        build_response(200) == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )


def test_rfc7230_6_1_keep_alive_response_omits_connection_close() -> None:
    assert build_response(200, close=False) == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def test_rfc7230_3_3_caller_headers_come_first_and_are_not_duplicated() -> None:
    response = build_response(
        200,
        [("Content-Type", "text/html"), ("Connection", "keep-alive"), ("X-A", "1")],
        b"<p>",
    )
    assert response == (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/html\r\n"
        b"Connection: keep-alive\r\n"
        b"X-A: 1\r\n"
        b"Content-Length: 3\r\n"
        b"\r\n"
        b"<p>"
    )


def test_rfc7230_3_3_2_bodiless_statuses_carry_no_length() -> None:
    assert build_response(101, [("Upgrade", "websocket")]) == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
    )
    assert build_response(204) == b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
    with pytest.raises(ValueError):
        build_response(204, body=b"x")


def test_rfc7230_3_1_2_unknown_status_has_empty_reason_phrase() -> None:
    assert build_response(599).startswith(b"HTTP/1.1 599 \r\n")
    for status in (99, 600):
        with pytest.raises(ValueError):
            build_response(status)


@pytest.mark.parametrize(
    "header",
    [
        ("X-A", "a\r\nSet-Cookie: x=1"),
        ("X-A", "a\nb"),
        ("X-A", "a\rb"),
        ("X-A\r\nSet-Cookie", "x"),
    ],
)
def test_rfc7230_3_2_header_injection_is_refused(header: tuple[str, str]) -> None:
    with pytest.raises(ValueError, match="header injection"):
        build_response(200, [header])
    with pytest.raises(ValueError, match="header injection"):
        build_accept_response(RFC_KEY, extra_headers=[header])
    with pytest.raises(ValueError, match="header injection"):
        build_client_request("a", "/", RFC_KEY, extra_headers=[header])


@pytest.mark.parametrize(
    "header",
    [("", "x"), ("X Y", "x"), ("X:Y", "x"), ("X-A", "a\x00b"), ("X-A", "\u20ac")],
)
def test_rfc7230_3_2_invalid_outgoing_header_is_refused(header: tuple[str, str]) -> None:
    with pytest.raises(ValueError):
        build_response(200, [header])


@pytest.mark.parametrize("name", ["Content-Length", "transfer-encoding"])
def test_rfc7230_3_3_framing_headers_are_computed_not_passed(name: str) -> None:
    with pytest.raises(ValueError):
        build_response(200, [(name, "0")])


def test_rfc7230_response_is_readable_by_h11() -> None:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
    client.receive_data(build_response(404, body=b"no such path\n"))
    response = client.next_event()
    assert isinstance(response, h11.Response)
    assert response.status_code == 404
    data = client.next_event()
    assert isinstance(data, h11.Data)
    assert data.data == b"no such path\n"
    assert isinstance(client.next_event(), h11.EndOfMessage)


def test_4_2_2_accept_response_for_rfc_example() -> None:
    assert build_accept_response(RFC_KEY) == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + RFC_ACCEPT.encode() + b"\r\n"
        b"\r\n"
    )


def test_4_2_2_accept_response_with_subprotocol_extensions_and_extras() -> None:
    response = build_accept_response(
        RFC_KEY,
        subprotocol="chat",
        extensions="permessage-deflate; server_no_context_takeover",
        extra_headers=[("Set-Cookie", "sid=1")],
    )
    assert response == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + RFC_ACCEPT.encode() + b"\r\n"
        b"Sec-WebSocket-Protocol: chat\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n"
        b"Set-Cookie: sid=1\r\n"
        b"\r\n"
    )


@pytest.mark.parametrize("subprotocol", ["", "chat, superchat", "chat\r\nX: y"])
def test_4_2_2_accept_response_subprotocol_must_be_a_token(subprotocol: str) -> None:
    with pytest.raises(ValueError):
        build_accept_response(RFC_KEY, subprotocol=subprotocol)


def test_4_2_2_refusal_carries_status_headers_and_reason() -> None:
    error = refusal(upgrade(replace={"Sec-WebSocket-Version": "8"}))
    status, headers = parse_response_head(error_response(error).split(b"\r\n\r\n")[0] + b"\r\n\r\n")
    assert status == 426
    assert headers["Sec-WebSocket-Version"] == "13"
    assert headers["Connection"] == "close"
    assert error_response(error).endswith(b"\r\n\r\n" + error.reason.encode() + b"\n")


def test_4_2_2_method_refusal_carries_allow() -> None:
    response = error_response(refusal(upgrade(request_line="POST /chat HTTP/1.1")))
    assert response.startswith(b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\n")


# --- RFC 6455 section 4.1: the client side ---------------------------------------------------


def test_4_1_client_request_for_rfc_example() -> None:
    request = build_client_request(
        "server.example.com",
        "/chat",
        RFC_KEY,
        subprotocols=["chat", "superchat"],
        origin="http://example.com",
    )
    assert request == (
        b"GET /chat HTTP/1.1\r\n"
        b"Host: server.example.com\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + RFC_KEY.encode() + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Origin: http://example.com\r\n"
        b"Sec-WebSocket-Protocol: chat, superchat\r\n"
        b"\r\n"
    )


@pytest.mark.parametrize(
    ("host", "path", "subprotocols"),
    [
        ("a", "chat", []),
        ("a", "/a b", []),
        ("a", "/a#b", []),
        ("", "/", []),
        ("a\r\nX: y", "/", []),
        ("a", "/", ["chat, superchat"]),
    ],
)
def test_4_1_client_request_refuses_bad_input(
    host: str, path: str, subprotocols: list[str]
) -> None:
    with pytest.raises(ValueError):
        build_client_request(host, path, RFC_KEY, subprotocols=subprotocols)


def test_4_1_response_head_of_rfc_example() -> None:
    status, headers = parse_response_head(build_accept_response(RFC_KEY, subprotocol="chat"))
    assert status == 101
    assert headers["sec-websocket-accept"] == RFC_ACCEPT
    assert headers["Sec-WebSocket-Protocol"] == "chat"


def test_rfc7230_3_1_2_status_line_without_reason_phrase_parses() -> None:
    assert parse_response_head(b"HTTP/1.1 101\r\nUpgrade: websocket\r\n\r\n")[0] == 101
    assert parse_response_head(b"HTTP/1.1 404 \r\n\r\n")[0] == 404


@pytest.mark.parametrize(
    "block",
    [
        b"HTTP/1.1 101 Switching Protocols\r\n",
        b"HTTP/1.1 1O1 Switching Protocols\r\n\r\n",
        b"HTTP/1.1101 Switching Protocols\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 101 OK\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\n folded\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nUpgrade : websocket\r\n\r\n",
    ],
)
def test_4_1_malformed_response_head_is_502(block: bytes) -> None:
    with pytest.raises(HandshakeError) as caught:
        parse_response_head(block)
    assert caught.value.status == 502


def test_4_round_trip_client_to_server_and_back() -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    request_bytes = build_client_request(
        "example.com:8080",
        "/chat/room1?token=x",
        key,
        subprotocols=["superchat", "chat"],
        origin="http://example.com:8080",
        extra_headers=[("Cookie", "sid=1")],
    )
    request = parse_request(request_bytes)
    assert is_upgrade_request(request)
    assert validate_upgrade(request) == key
    assert origin_allowed(request, ["same-origin"])
    assert request.path == "/chat/room1"
    assert request.query_params == {"token": ["x"]}
    assert request.headers["Cookie"] == "sid=1"
    subprotocol = select_subprotocol(request, ["chat", "superchat"])
    assert subprotocol == "chat"
    status, headers = parse_response_head(build_accept_response(key, subprotocol))
    assert status == 101
    assert headers["Upgrade"].lower() == "websocket"
    assert headers["Connection"].lower() == "upgrade"
    assert headers["Sec-WebSocket-Accept"] == accept_key(key)
    assert headers["Sec-WebSocket-Protocol"] == "chat"


# --- Strict where leniency is request smuggling or origin confusion ----------------------------
# RFC 9112 (HTTP/1.1 message syntax, which obsoletes RFC 7230) and RFC 6454 (origins).


@pytest.mark.parametrize("version", ["HTTP/9.9", "HTTP/2.0", "HTTP/3.0", "HTTP/0.9"])
def test_rfc9112_2_3_other_major_version_is_505(version: str) -> None:
    for block in (head(RFC_REQUEST_FIELDS, f"GET /ws {version}"),
                  head([("Host", "a")], f"GET /health {version}")):
        with pytest.raises(HandshakeError) as caught:
            parse_request(block)
        assert caught.value.status == 505
        assert version in caught.value.reason


def test_rfc9112_2_3_other_major_version_of_a_built_request_is_505() -> None:
    error = refusal(Request("GET", "/ws", "HTTP/9.9", RFC_REQUEST_FIELDS))
    assert error.status == 505


def test_rfc9110_15_6_6_505_response_has_its_reason_phrase() -> None:
    with pytest.raises(HandshakeError) as caught:
        parse_request(head(RFC_REQUEST_FIELDS, "GET /ws HTTP/9.9"))
    response = error_response(caught.value)
    assert response.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n")
    assert b"Connection: close\r\n" in response


@pytest.mark.parametrize(
    "request_line",
    ["GET /ws HTTP/1.1 ", "GET /ws HTTP/1.1\t", "GET /ws HTTP/1.10", "GET /ws HTTP/1.1x",
     "GET /ws HTTP/ 1.1", "GET /ws HTTPS/1.1", "GET /ws HTTP/1.1.1", " GET /ws HTTP/1.1"],
)
def test_rfc9112_2_3_malformed_version_is_400(request_line: str) -> None:
    with pytest.raises(HandshakeError) as caught:
        parse_request(head(RFC_REQUEST_FIELDS, request_line))
    assert caught.value.status == 400


def test_rfc9112_2_3_http_1_0_plain_get_still_parses_but_cannot_upgrade() -> None:
    assert parse_request(head([("Host", "a")], "GET /health HTTP/1.0")).path == "/health"
    assert refusal(upgrade(request_line="GET /chat HTTP/1.0")).status == 400


@pytest.mark.parametrize(
    ("fields", "header"),
    [
        pytest.param([("Content-Length", "5")], "Content-Length", id="content-length-5"),
        pytest.param([("Content-Length", "00007")], "Content-Length", id="content-length-7"),
        pytest.param([("Content-Length", "9" * 5000)], "Content-Length", id="content-length-huge"),
        pytest.param([("Transfer-Encoding", "chunked")], "Transfer-Encoding", id="chunked"),
        pytest.param([("Transfer-Encoding", "identity")], "Transfer-Encoding", id="identity"),
        pytest.param([("transfer-encoding", "gzip, chunked")], "Transfer-Encoding", id="gzip"),
    ],
)
def test_rfc6455_4_1_upgrade_with_a_body_is_400(
    fields: list[tuple[str, str]], header: str
) -> None:
    # The server reads the head only; a body would then be parsed as WebSocket frames.
    error = refusal(upgrade(add=fields))
    assert error.status == 400
    assert header in error.reason


@pytest.mark.parametrize("value", ["0", "000"])
def test_rfc6455_4_1_upgrade_with_content_length_zero_is_accepted(value: str) -> None:
    assert validate_upgrade(upgrade(add=[("Content-Length", value)])) == RFC_KEY


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param([("Content-Length", "5"), ("Transfer-Encoding", "chunked")], id="cl-and-te"),
        pytest.param([("Transfer-Encoding", "chunked"), ("Content-Length", "0")], id="te-and-cl"),
        pytest.param([("Content-Length", "5"), ("Content-Length", "5")], id="cl-repeated"),
        pytest.param([("Content-Length", "5"), ("Content-Length", "6")], id="cl-conflicting"),
        pytest.param([("Content-Length", "5, 5")], id="cl-list"),
        pytest.param([("Content-Length", "-1")], id="cl-negative"),
        pytest.param([("Content-Length", "+5")], id="cl-plus"),
        pytest.param([("Content-Length", "0x5")], id="cl-hex"),
        pytest.param([("Content-Length", "5 5")], id="cl-space"),
        pytest.param([("Content-Length", "")], id="cl-empty"),
    ],
)
def test_rfc9112_6_3_ambiguous_framing_is_400_on_any_request(
    fields: list[tuple[str, str]]
) -> None:
    for block in (head([*RFC_REQUEST_FIELDS, *fields]), head([("Host", "a"), *fields])):
        with pytest.raises(HandshakeError) as caught:
            parse_request(block)
        assert caught.value.status == 400
        assert "Content-Length" in caught.value.reason


def test_rfc9112_6_plain_get_with_a_body_keeps_parsing() -> None:
    # A plain request is answered once and the connection closed: its body is never read.
    request = parse_request(head([("Host", "a"), ("Content-Length", "5")], "GET /health HTTP/1.1"))
    assert not is_upgrade_request(request)


SMUGGLING_HEADS = [
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n"),
    ("tab-before-colon", b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length\t: 5\r\n\r\n"),
    ("obs-fold-te", b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"),
    ("bare-lf-te", b"GET / HTTP/1.1\r\nHost: a\nTransfer-Encoding: chunked\r\n\r\n"),
    ("bare-cr-cl", b"GET / HTTP/1.1\r\nHost: a\rContent-Length: 5\r\n\r\n"),
    ("nul-in-cl", b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\x00\r\n\r\n"),
    ("vertical-tab-in-te", b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0bchunked\r\n\r\n"),
]


@pytest.mark.parametrize(
    "block", [pytest.param(block, id=name) for name, block in SMUGGLING_HEADS]
)
def test_rfc9112_5_request_smuggling_classics_are_400(block: bytes) -> None:
    with pytest.raises(HandshakeError) as caught:
        parse_request(block)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("target", "host", "path"),
    [
        ("http://server.example.com/chat?x=1", "server.example.com", "/chat"),
        ("http://server.example.com:80/chat", "server.example.com", "/chat"),
        ("http://SERVER.example.com/chat", "server.example.COM:80", "/chat"),
        ("wss://server.example.com/chat", "server.example.com:443", "/chat"),
        ("ws://127.0.0.1:8000", "127.0.0.1:8000", "/"),
        ("http://[::1]:8000/chat", "[::1]:8000", "/chat"),
    ],
)
def test_rfc9112_3_2_2_absolute_form_naming_the_host_is_accepted(
    target: str, host: str, path: str
) -> None:
    request = upgrade(replace={"Host": host}, request_line=f"GET {target} HTTP/1.1")
    assert request.path == path
    assert validate_upgrade(request) == RFC_KEY


@pytest.mark.parametrize(
    ("target", "hosts"),
    [
        pytest.param("http://evil.com/chat", ["server.example.com"], id="other-host"),
        pytest.param("http://server.example.com:8080/chat", ["server.example.com"],
                     id="other-port"),
        pytest.param("https://server.example.com/chat", ["server.example.com:80"],
                     id="other-default-port"),
        pytest.param("http://server.example.com.evil.com/chat", ["server.example.com"],
                     id="suffix-host"),
        pytest.param("http://user@server.example.com/chat", ["server.example.com"],
                     id="userinfo"),
        pytest.param("http://user:pw@server.example.com/chat", ["server.example.com"],
                     id="userinfo-password"),
        pytest.param("http://server.example.com/chat", [], id="no-host-header"),
        pytest.param("http://server.example.com/chat", ["server.example.com"] * 2,
                     id="two-host-headers"),
        pytest.param("http://evil.com%2f@server.example.com/chat", ["server.example.com"],
                     id="percent-in-authority"),
        pytest.param("http://server.example.com\\@evil.com/chat", ["server.example.com"],
                     id="backslash-in-authority"),
        pytest.param("http://server.example.com:/chat", ["server.example.com"],
                     id="empty-port"),
        pytest.param("http://server.example.com:99999/chat", ["server.example.com:99999"],
                     id="impossible-port"),
    ],
)
def test_rfc9112_3_2_2_absolute_form_naming_another_authority_is_400(
    target: str, hosts: list[str]
) -> None:
    fields = [(n, v) for n, v in RFC_REQUEST_FIELDS if n != "Host"]
    fields += [("Host", host) for host in hosts]
    with pytest.raises(HandshakeError) as caught:
        parse_request(head(fields, f"GET {target} HTTP/1.1"))
    assert caught.value.status == 400
    assert "request-target" in caught.value.reason


def test_rfc9112_3_2_2_built_request_checks_absolute_form_against_host() -> None:
    with pytest.raises(HandshakeError) as caught:
        Request("GET", "http://evil.com/ws", headers=[("Host", "server.example.com")])
    assert caught.value.status == 400
    assert Request("GET", "http://a.com/ws", headers=[("Host", "a.com")]).path == "/ws"


@pytest.mark.parametrize(
    "target", ["*", "server.example.com:80", "server.example.com", "evil.com/chat"]
)
def test_rfc9112_3_2_asterisk_and_authority_form_are_400(target: str) -> None:
    with pytest.raises(HandshakeError) as caught:
        parse_request(head(RFC_REQUEST_FIELDS, f"GET {target} HTTP/1.1"))
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "host",
    ["server.example.com/chat", "user@server.example.com", "server.example.com:99999",
     "server.example.com:0", "server.example.com:", ":80", "server.example.com:80:80",
     "evil.com\\.example.com", "evil.com%2f.example.com", "[::1", "::1", "[::1]x",
     "[fe80::1%25eth0]", "a..com", "-a.com", "a-.com", "a b", "*.example.com",
     "caf\xe9.com", "x" * 64 + ".com", ".".join(["a" * 63] * 4), "256.0.0.1", "1.2.3",
     "0x7f.0.0.1", "127.000.0.1", "12345"],
)
def test_rfc9112_3_2_upgrade_with_malformed_host_is_400(host: str) -> None:
    error = refusal(upgrade(replace={"Host": host}))
    assert error.status == 400
    assert "Host" in error.reason


@pytest.mark.parametrize(
    "host",
    ["localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "[::ffff:1.2.3.4]",
     "melody_hub:5000", "SERVER.Example.com", "example.com.", "xn--caf-dma.com",
     "a" * 63 + ".com", "1.2.3.4.nip.io"],
)
def test_rfc9112_3_2_upgrade_with_valid_host_passes(host: str) -> None:
    assert validate_upgrade(upgrade(replace={"Host": host})) == RFC_KEY


WILDCARD_ORIGINS = [
    ("https://evil.com\\.example.com", False),
    ("https://evil.com%2f.example.com", False),
    ("https://evil.com%2E.example.com", False),
    ("https://user@app.example.com", False),
    ("https://evil.com@app.example.com", False),
    ("https://evil.com/.example.com", False),
    ("https://evil.com?.example.com", False),
    ("https://evil.com#.example.com", False),
    ("https://a.example.com.evil.com", False),
    ("https://.example.com", False),
    ("https://a..example.com", False),
    ("https://-a.example.com", False),
    ("https://a .example.com", False),
    ("https://app.example.com.", False),
    ("https://app.example.com:443/", False),
    ("https://app.example.com:0", False),
    ("https://app.example.com:", False),
    ("https://app.example.com:65536", False),
    ("https://app.example.com:+443", False),
    ("https://\xe1pp.example.com", False),
    ("https://example.com", False),
    ("https:/app.example.com", False),
    ("https:app.example.com", False),
    ("//app.example.com", False),
    ("null", False),
    ("https://app.example.com", True),
    ("https://a.b.example.com", True),
    ("https://APP.EXAMPLE.COM", True),
    ("HTTPS://app.example.com:443", True),
    ("https://my_app.example.com", True),
]


@pytest.mark.parametrize(("origin", "expected"), WILDCARD_ORIGINS)
def test_rfc6454_6_2_wildcard_matches_only_serialised_origins(origin: str, expected: bool) -> None:
    assert origin_allowed(with_origin(origin), ["https://*.example.com"]) is expected


@pytest.mark.parametrize(
    ("origin", "allowed", "expected"),
    [
        ("https://example.com:443", ["https://example.com"], True),
        ("https://example.com", ["https://example.com:443"], True),
        ("https://example.com.", ["https://example.com"], False),
        ("https://example.com", ["https://example.com."], False),
        ("https://example.com.", ["https://example.com."], True),
        ("https://ex%61mple.com", ["https://example.com"], False),
        ("https://example.com\\", ["https://example.com"], False),
        ("https://user@example.com", ["https://example.com"], False),
        ("http://[0:0::1]:8080", ["http://[::1]:8080"], True),
        ("http://[::1]:8080", ["http://[0:0:0:0:0:0:0:1]:8080"], True),
        ("http://[fe80::1%25eth0]", ["http://[fe80::1]"], False),
        ("http://127.0.0.1:8000", ["http://127.0.0.1:8000"], True),
        ("http://127.1:8000", ["http://127.0.0.1:8000"], False),
        ("http://0x7f.0.0.1:8000", ["http://127.0.0.1:8000"], False),
        ("chrome-extension://abcdefghijklmnop", ["chrome-extension://abcdefghijklmnop"], True),
    ],
)
def test_rfc6454_6_2_exact_origin_compares_parsed_tuples(
    origin: str, allowed: list[str], expected: bool
) -> None:
    assert origin_allowed(with_origin(origin), allowed) is expected


@pytest.mark.parametrize(
    ("origin", "host", "expected"),
    [
        ("http://ex\\ample.com", "ex\\ample.com", False),
        ("http://a%2fb", "a%2fb", False),
        ("http://example.com", "example.com/", False),
        ("http://example.com", "user@example.com", False),
        ("http://[::1]:8080", "[0::1]:8080", True),
        ("http://example.com.", "example.com.", True),
        ("http://example.com", "example.com.", False),
    ],
)
def test_rfc6454_same_origin_parses_host_like_the_origin(
    origin: str, host: str, expected: bool
) -> None:
    request = Request("GET", "/", headers=[("Host", host), ("Origin", origin)])
    assert origin_allowed(request, ["same-origin"]) is expected


def test_rfc6454_6_2_non_ascii_that_lowercases_to_ascii_is_not_matched() -> None:
    # "\u212a" (KELVIN SIGN).lower() is "k": a forged origin must not turn into a listed one.
    fields = [("Host", "kelvin.example.com"), ("Origin", "https://\u212aelvin.example.com")]
    request = Request("GET", "/", headers=fields)
    assert not origin_allowed(request, ["https://kelvin.example.com", "https://*.example.com"])
    assert not origin_allowed(request, ["same-origin"])


def test_rfc6454_7_3_null_matches_only_star() -> None:
    assert origin_allowed(with_origin("null"), ["*"])
    assert not origin_allowed(with_origin("null"), ["same-origin", "https://*.example.com"])
    with pytest.raises(ValueError, match="null"):
        origin_allowed(with_origin("https://example.com"), ["null"])


@pytest.mark.parametrize(
    "entry",
    ["https://*.0.0.1", "https://*.*.example.com", "https://*example.com", "https://*.",
     "https://evil.com\\.example.com", "https://evil.com%2f.example.com", "https://a..com",
     "https://[::1", "https://a.com:0", "https://a.com?x", "https://user@a.com"],
)
def test_rfc6454_malformed_allowed_entry_raises_value_error(entry: str) -> None:
    with pytest.raises(ValueError, match="allowed origin"):
        origin_allowed(with_origin("https://example.org"), [entry])


# --- Cross-checks against independent implementations ---------------------------------------


def test_4_wsproto_client_request_is_valid_and_our_accept_satisfies_it() -> None:
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    sent = client.send(
        wsproto.events.Request(
            host="example.com", target="/chat?x=1", subprotocols=["chat", "superchat"]
        )
    )
    request = parse_request(sent)
    assert (request.path, request.query) == ("/chat", "x=1")
    assert is_upgrade_request(request)
    key = validate_upgrade(request)
    subprotocol = select_subprotocol(request, ["superchat"])
    client.receive_data(build_accept_response(key, subprotocol))
    events = list(client.events())
    assert len(events) == 1
    assert isinstance(events[0], wsproto.events.AcceptConnection)
    assert events[0].subprotocol == "superchat"


def test_4_wsproto_client_sees_our_refusal_as_reject() -> None:
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    client.send(wsproto.events.Request(host="example.com", target="/chat"))
    client.receive_data(error_response(HandshakeError(403, "origin not allowed")))
    events = list(client.events())
    assert isinstance(events[0], wsproto.events.RejectConnection)
    assert events[0].status_code == 403
    body = b"".join(bytes(e.data) for e in events if isinstance(e, wsproto.events.RejectData))
    assert body == b"origin not allowed\n"


def test_4_websockets_client_accepts_our_response() -> None:
    client = websockets.client.ClientProtocol(
        websockets.uri.parse_uri("ws://example.com/chat"), subprotocols=[Subprotocol("chat")]
    )
    client.send_request(client.connect())
    request = parse_request(b"".join(client.data_to_send()))
    key = validate_upgrade(request)
    client.receive_data(build_accept_response(key, select_subprotocol(request, ["chat"])))
    assert client.handshake_exc is None
    assert client.subprotocol == "chat"


def test_4_websockets_server_accepts_our_request() -> None:
    server = websockets.server.ServerProtocol(subprotocols=[Subprotocol("chat")])
    server.receive_data(
        build_client_request("example.com", "/x?y=1", RFC_KEY, subprotocols=["chat"])
    )
    [request] = server.events_received()
    assert isinstance(request, websockets.http11.Request)
    server.send_response(server.accept(request))
    status, headers = parse_response_head(b"".join(server.data_to_send()))
    assert status == 101
    assert headers["Sec-WebSocket-Accept"] == RFC_ACCEPT
    assert headers["Sec-WebSocket-Protocol"] == "chat"


# --- Properties ------------------------------------------------------------------------------

tokens = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcXYZ", min_size=1, max_size=12)
# Visible ASCII and obs-text, without DEL (a control character the parser refuses).
field_values = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=20,
)
# Pieces that make a mangled head likely to get past the request line, so that the header code
# and the validators see hostile input too.
head_pieces = st.sampled_from(
    [
        "GET / HTTP/1.1",
        "GET /chat?x=1 HTTP/1.1",
        "GET http://a HTTP/1.1",
        "Host: a",
        "Host: [::1]:8",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {RFC_KEY}",
        "Sec-WebSocket-Version: 13",
        "Origin: https://a.example.com",
        "Origin: null",
        "Sec-WebSocket-Protocol: chat",
        " folded",
        ":",
        "",
        "\r",
        "\n",
        "\x00",
        "\xe9",
    ]
)


@settings(deadline=None)
@given(st.binary(max_size=300))
def test_parse_request_raises_only_handshake_error_on_any_bytes(data: bytes) -> None:
    try:
        parse_request(data + b"\r\n\r\n")
    except HandshakeError as error:
        assert error.status in (400, 505)


@settings(deadline=None, max_examples=300)
@given(
    st.lists(st.one_of(head_pieces, st.text(max_size=10)), max_size=12),
    st.sampled_from(["\r\n", "\n"]),
)
def test_hostile_heads_raise_only_handshake_error_anywhere(pieces: list[str], eol: str) -> None:
    block = (eol.join(pieces) + "\r\n\r\n").encode("utf-8")
    try:
        request = parse_request(block)
    except HandshakeError as error:
        assert error.status in (400, 505)
        return
    is_upgrade_request(request)
    requested_subprotocols(request)
    select_subprotocol(request, ["chat"])
    origin_allowed(request, ["same-origin", "https://*.example.com", "http://a:8"])
    assert isinstance(request.query_params, dict)
    try:
        validate_upgrade(request)
    except HandshakeError as error:
        assert error.status in (400, 405, 426)
        error_response(error)


@settings(deadline=None)
@given(st.binary(max_size=300))
def test_parse_response_head_raises_only_handshake_error_on_any_bytes(data: bytes) -> None:
    try:
        parse_response_head(data + b"\r\n\r\n")
    except HandshakeError as error:
        assert error.status == 502


@settings(deadline=None)
@given(st.lists(st.tuples(tokens, field_values), max_size=8))
def test_rfc7230_3_2_fields_survive_a_round_trip(fields: list[tuple[str, str]]) -> None:
    request = parse_request(head(fields))
    assert request.headers.items() == fields
