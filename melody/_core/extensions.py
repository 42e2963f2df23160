"""permessage-deflate negotiation (RFC 7692 section 7.1, the grammar of RFC 6455 section 9.1).

Runs once per connection, at the upgrade: plain Python in every build (it is not part of the
compiled engine). It reads the client's ``Sec-WebSocket-Extensions`` offers, picks the
parameters, and builds the ``Deflater``/``Inflater`` pair of the ``deflate`` kernel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from .deflate import Deflater, Inflater

__all__ = [
    "EXTENSION_NAME",
    "DeflateParams",
    "accept_response",
    "build_offer",
    "negotiate",
    "parse_extensions",
]

EXTENSION_NAME = "permessage-deflate"


_TCHAR = frozenset(
    "!#$%&'*+-.^_`|~0123456789"
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_WINDOW_BITS = ("8", "9", "10", "11", "12", "13", "14", "15")


def _skip_ows(s: str, i: int) -> int:
    n = len(s)
    while i < n and (s[i] == " " or s[i] == "\t"):
        i += 1
    return i


def _token(s: str, i: int, what: str) -> tuple[str, int]:
    n, start = len(s), i
    while i < n and s[i] in _TCHAR:
        i += 1
    if i == start:
        found = repr(s[i]) if i < n else "end of header"
        raise ValueError(f"expected {what} at position {i}, found {found}")
    return s[start:i], i


def _is_token(s: str) -> bool:
    if not s:
        return False
    return all(c in _TCHAR for c in s)


def _quoted(s: str, i: int) -> tuple[str, int]:
    # RFC 7230 3.2.6: quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE
    n, start = len(s), i
    chars: list[str] = []
    i += 1
    while i < n:
        c = s[i]
        if c == '"':
            return "".join(chars), i + 1
        if c == "\\":
            i += 1
            if i == n:
                break
            c = s[i]
            o = ord(c)
            if not (c == "\t" or 0x20 <= o <= 0x7E or 0x80 <= o <= 0xFF):
                raise ValueError(f"invalid quoted-pair at position {i}")
        else:
            o = ord(c)
            if not (c == "\t" or c == " " or c == "!" or 0x23 <= o <= 0x5B
                    or 0x5D <= o <= 0x7E or 0x80 <= o <= 0xFF):
                raise ValueError(f"invalid character {c!r} in quoted string at position {i}")
        chars.append(c)
        i += 1
    raise ValueError(f"unterminated quoted string at position {start}")


def _parse_value(s: str, out: list[tuple[str, list[tuple[str, str | None]]]]) -> None:
    i, n, before = 0, len(s), len(out)
    while True:
        i = _skip_ows(s, i)
        if i == n:
            break
        if s[i] == ",":
            # RFC 7230 section 7: empty list elements are allowed and ignored.
            i += 1
            continue
        name, i = _token(s, i, "extension name")
        params: list[tuple[str, str | None]] = []
        i = _skip_ows(s, i)
        while i < n and s[i] == ";":
            i = _skip_ows(s, i + 1)
            pname, i = _token(s, i, "parameter name")
            i = _skip_ows(s, i)
            pvalue: str | None = None
            if i < n and s[i] == "=":
                i = _skip_ows(s, i + 1)
                if i < n and s[i] == '"':
                    pvalue, i = _quoted(s, i)
                    # RFC 6455 9.1: an unquoted value must be a token, and so must be a
                    # quoted one once unescaped.
                    if not _is_token(pvalue):
                        raise ValueError(f"quoted value {pvalue!r} of {pname} is not a token")
                else:
                    pvalue, i = _token(s, i, f"value of {pname}")
                i = _skip_ows(s, i)
            params.append((pname, pvalue))
        if i < n:
            if s[i] != ",":
                raise ValueError(f"unexpected {s[i]!r} at position {i}")
            i += 1
        out.append((name, params))
    if len(out) == before:
        raise ValueError("no extension in header value")


def parse_extensions(
    header_values: str | Iterable[str],
) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Parse ``Sec-WebSocket-Extensions`` values (RFC 6455 section 9.1).

    Each value (one header line; a single ``str`` is one line) is a comma-separated list of
    ``name; param; param=value; param="quoted value"``. Returns ``[(name, [(param, value or
    None), ...]), ...]`` in order, quoted values unescaped. Raises ValueError on any syntax
    error.
    """
    out: list[tuple[str, list[tuple[str, str | None]]]] = []
    if isinstance(header_values, str):
        header_values = [header_values]
    for value in header_values:
        if not isinstance(value, str):
            raise ValueError(f"header value must be str, not {type(value).__name__}")
        _parse_value(value, out)
    return out


def _read_params(
    params: list[tuple[str, str | None]], request: bool
) -> tuple[bool, bool, int | None, int | bool | None]:
    # Returns (server_no_context_takeover, client_no_context_takeover, server_max_window_bits,
    # client_max_window_bits); the bits are None when absent, and client_max_window_bits is
    # True for the valueless form only an offer may use (7.1.2.2).
    seen: set[str] = set()
    snct = cnct = False
    sbits: int | None = None
    cbits: int | bool | None = None
    for name, value in params:
        if name in seen:
            raise ValueError(f"duplicate parameter {name}")
        seen.add(name)
        if name == "server_no_context_takeover" or name == "client_no_context_takeover":
            if value is not None:
                raise ValueError(f"{name} takes no value")
            if name == "server_no_context_takeover":
                snct = True
            else:
                cnct = True
        elif name == "server_max_window_bits" or name == "client_max_window_bits":
            if value is None:
                if name == "client_max_window_bits" and request:
                    cbits = True
                    continue
                raise ValueError(f"{name} needs a value")
            # 7.1.2: a decimal integer from 8 to 15 without leading zeros.
            if value not in _WINDOW_BITS:
                raise ValueError(f"invalid {name} value {value!r}")
            if name == "server_max_window_bits":
                sbits = int(value)
            else:
                cbits = int(value)
        else:
            raise ValueError(f"unknown parameter {name}")
    return snct, cnct, sbits, cbits


def _check_bits(name: str, value: object, low: int) -> None:
    if type(value) is not int or not low <= value <= 15:
        raise ValueError(f"{name} must be an int between {low} and 15, not {value!r}")


@dataclasses.dataclass(frozen=True)
class DeflateParams:
    """The agreed permessage-deflate parameters of one connection (RFC 7692 section 7.1).

    ``server_*`` apply to what the server compresses, ``client_*`` to what the client
    compresses. Window bits are 8..15 (a side cannot compress with 8, see :class:`Deflater`;
    the negotiation functions never agree to that). ``echo_server_max_window_bits`` records
    that the offer carried ``server_max_window_bits``, which the response must then repeat even
    at 15 (7.1.2.1); it takes no part in ``==``. Raises ValueError on out-of-range values.
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15
    # How the response is spelled, not what was agreed: left out of == and hash.
    echo_server_max_window_bits: bool = dataclasses.field(default=False, compare=False)

    def __post_init__(self) -> None:
        _check_bits("server_max_window_bits", self.server_max_window_bits, 8)
        _check_bits("client_max_window_bits", self.client_max_window_bits, 8)

    def response_header(self) -> str:
        """The ``Sec-WebSocket-Extensions`` value a server sends to accept with these values.

        ``client_max_window_bits`` is sent only below 15 (:func:`negotiate` lowers it only when
        the offer allowed it); ``server_max_window_bits`` below 15 or when echoed.
        """
        parts = [EXTENSION_NAME]
        if self.server_no_context_takeover:
            parts.append("server_no_context_takeover")
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if self.server_max_window_bits != 15 or self.echo_server_max_window_bits:
            parts.append(f"server_max_window_bits={self.server_max_window_bits}")
        if self.client_max_window_bits != 15:
            parts.append(f"client_max_window_bits={self.client_max_window_bits}")
        return "; ".join(parts)

    def server_deflater(self, level: int = 6, mem_level: int = 8) -> Deflater:
        """A :class:`Deflater` for the server's outgoing messages."""
        return Deflater(self.server_max_window_bits, self.server_no_context_takeover, level,
                        mem_level)

    def server_inflater(self) -> Inflater:
        """An :class:`Inflater` for the messages the server receives."""
        return Inflater(self.client_max_window_bits, self.client_no_context_takeover)

    def client_deflater(self, level: int = 6, mem_level: int = 8) -> Deflater:
        """A :class:`Deflater` for the client's outgoing messages."""
        return Deflater(self.client_max_window_bits, self.client_no_context_takeover, level,
                        mem_level)

    def client_inflater(self) -> Inflater:
        """An :class:`Inflater` for the messages the client receives."""
        return Inflater(self.server_max_window_bits, self.server_no_context_takeover)


def negotiate(
    header_values: str | Iterable[str],
    *,
    server_no_context_takeover: bool = False,
    client_no_context_takeover: bool = False,
    server_max_window_bits: int = 15,
    client_max_window_bits: int = 15,
) -> DeflateParams | None:
    """Accept the first permessage-deflate offer the server can honour (RFC 7692 7.1).

    ``header_values`` are the request's ``Sec-WebSocket-Extensions`` lines. The keyword
    arguments are the server's wishes: a ``*_no_context_takeover`` set here is always sent, a
    window below 15 is sent where the offer allows it. An offer with unknown, duplicated or
    invalid parameters, or demanding ``server_max_window_bits=8``, is skipped. Returns None when
    no offer is acceptable or the header does not parse; raises ValueError for invalid
    settings (server window 9..15, client window 8..15).
    """
    _check_bits("server_max_window_bits", server_max_window_bits, 9)
    _check_bits("client_max_window_bits", client_max_window_bits, 8)
    try:
        offers = parse_extensions(header_values)
    except ValueError:
        return None
    for name, params in offers:
        if name != EXTENSION_NAME:
            continue
        try:
            snct, cnct, sbits, cbits = _read_params(params, True)
        except ValueError:
            continue
        if sbits == 8:
            # zlib cannot compress with a 256-byte window (see Deflater).
            continue
        if cbits is None:
            # The client did not say it understands client_max_window_bits: the response must
            # not carry it, and the client may use the full window.
            cbits = 15
        elif cbits is True:
            cbits = client_max_window_bits
        else:
            cbits = min(cbits, client_max_window_bits)
        return DeflateParams(
            server_no_context_takeover=snct or bool(server_no_context_takeover),
            client_no_context_takeover=cnct or bool(client_no_context_takeover),
            server_max_window_bits=(server_max_window_bits if sbits is None
                                    else min(sbits, server_max_window_bits)),
            client_max_window_bits=cbits,
            echo_server_max_window_bits=sbits is not None,
        )
    return None


def build_offer(
    *,
    client_no_context_takeover: bool = False,
    server_no_context_takeover: bool = False,
    client_max_window_bits: int | bool | None = True,
    server_max_window_bits: int | None = None,
) -> str:
    """The ``Sec-WebSocket-Extensions`` value a client sends to offer permessage-deflate.

    ``client_max_window_bits``: True offers the valueless parameter (the server may then
    choose a window), an int 9..15 a limit, None or False nothing. ``server_max_window_bits``:
    None, or an int 8..15 the server must stay within. Raises ValueError otherwise.
    """
    parts = [EXTENSION_NAME]
    if server_no_context_takeover:
        parts.append("server_no_context_takeover")
    if client_no_context_takeover:
        parts.append("client_no_context_takeover")
    if server_max_window_bits is not None:
        _check_bits("server_max_window_bits", server_max_window_bits, 8)
        parts.append(f"server_max_window_bits={server_max_window_bits}")
    if client_max_window_bits is True:
        parts.append("client_max_window_bits")
    elif client_max_window_bits is not None and client_max_window_bits is not False:
        _check_bits("client_max_window_bits", client_max_window_bits, 9)
        parts.append(f"client_max_window_bits={client_max_window_bits}")
    return "; ".join(parts)


def _accept_one(
    response: tuple[bool, bool, int | None, int | bool | None],
    offer: list[tuple[str, str | None]],
) -> DeflateParams:
    snct, cnct, sbits, cbits = response
    o_snct, o_cnct, o_sbits, o_cbits = _read_params(offer, True)
    if o_snct and not snct:
        raise ValueError("server_no_context_takeover was requested but not granted")
    if o_sbits is not None:
        if sbits is None:
            raise ValueError("server_max_window_bits was requested but not granted")
        if sbits > o_sbits:
            raise ValueError(f"server_max_window_bits={sbits} exceeds the requested {o_sbits}")
    if cbits is None:
        # Without a response value the client keeps its own hint, or the full window.
        cbits = o_cbits if o_cbits is not None and o_cbits is not True else 15
    elif o_cbits is None:
        raise ValueError("client_max_window_bits was not offered")
    elif o_cbits is not True and cbits > o_cbits:
        raise ValueError(f"client_max_window_bits={cbits} exceeds the offered {o_cbits}")
    if cbits == 8:
        raise ValueError("client_max_window_bits=8 cannot be honoured by zlib")
    return DeflateParams(
        server_no_context_takeover=snct,
        client_no_context_takeover=cnct or o_cnct,
        server_max_window_bits=15 if sbits is None else sbits,
        client_max_window_bits=int(cbits),
        echo_server_max_window_bits=sbits is not None,
    )


def accept_response(header_value: str | Iterable[str], *, offered: str) -> DeflateParams:
    """Check a server's ``Sec-WebSocket-Extensions`` response against the client's offer.

    ``offered`` is the value :func:`build_offer` returned (several comma-separated offers are
    allowed; the response must fit one of them). Returns the agreed :class:`DeflateParams`;
    raises ValueError when the response is malformed, names anything but one
    permessage-deflate, or grants what was not offered (the client must then fail the
    connection, RFC 7692 section 5).
    """
    response = parse_extensions(header_value)
    if len(response) != 1 or response[0][0] != EXTENSION_NAME:
        raise ValueError(f"expected one {EXTENSION_NAME} in the response, got {header_value!r}")
    granted = _read_params(response[0][1], False)
    offers = [params for name, params in parse_extensions(offered) if name == EXTENSION_NAME]
    if not offers:
        raise ValueError(f"{EXTENSION_NAME} was not offered")
    error: ValueError | None = None
    for params in offers:
        try:
            return _accept_one(granted, params)
        except ValueError as exc:
            if error is None:
                error = exc
    assert error is not None
    raise error
