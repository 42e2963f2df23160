"""UTF-8 validation of text messages (RFC 6455 sections 5.6 and 8.1, RFC 3629) for
``melody._core.utf8``.

The oracle is Python's strict ``bytes.decode("utf-8")``. It reports the *maximal subpart*
(Unicode chapter 3) of the first ill-formed sequence, which pins down the exact byte at which a
fail-fast validator must give up:

* "invalid start byte": the byte at ``.start`` can never appear there, so we fail on it;
* "invalid continuation byte": ``[.start, .end)`` is a valid prefix of a code point and the
  byte at ``.end`` cannot continue it, so we fail on that byte;
* "unexpected end of data": everything fed is a valid prefix; we must not fail, only be
  incomplete.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from melody._core.utf8 import Utf8Validator, validate

# (kind, index): kind is "valid", "truncated" or "invalid"; index is the first bad byte.
Verdict = tuple[str, int | None]


def decode_error(data: bytes) -> UnicodeDecodeError | None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc
    return None


def python_verdict(data: bytes) -> Verdict:
    exc = decode_error(data)
    if exc is None:
        return "valid", None
    if exc.reason == "unexpected end of data":
        assert exc.end == len(data)
        return "truncated", None
    if exc.reason == "invalid start byte":
        return "invalid", exc.start
    assert exc.reason == "invalid continuation byte", exc.reason
    return "invalid", exc.end


def chunks(data: bytes, cuts: list[int]) -> Iterator[tuple[int, memoryview]]:
    # Views into the whole message, not copies: the byte just past a piece is then the real
    # next byte (not the NUL after a bytes object), so a read past the end would show.
    view = memoryview(data)
    bounds = [0, *sorted(cuts), len(data)]
    for start, end in pairwise(bounds):
        yield start, view[start:end]


def check_against_python(data: bytes, cuts: list[int]) -> None:
    kind, bad = python_verdict(data)
    v = Utf8Validator()
    results = [(start, piece, v.feed(piece)) for start, piece in chunks(data, cuts)]
    accepted = all(ok for _, _, ok in results) and v.complete()
    assert accepted == (kind == "valid")
    assert validate(data) == (kind == "valid")
    if kind == "invalid":
        assert bad is not None
        # Fail fast: the first piece refused is the one holding the bad byte, and every
        # later piece is refused too.
        first = next(i for i, (_, _, ok) in enumerate(results) if not ok)
        start, piece, _ = results[first]
        assert start <= bad < start + len(piece)
        assert not any(ok for _, _, ok in results[first:])
        assert v.consumed == bad
        assert not v.complete()
    else:
        assert all(ok for _, _, ok in results)
        assert v.consumed == len(data)
        assert v.complete() == (kind == "valid")


def byte_by_byte_reject_index(data: bytes) -> int | None:
    v = Utf8Validator()
    view = memoryview(data)
    for i in range(len(data)):
        if not v.feed(view[i : i + 1]):
            return i
    return None


# Pieces that drive the state machine through its interesting corners, mixed with text and
# arbitrary bytes.
INTERESTING = [
    b"\xc0",
    b"\xc1\xbf",
    b"\xc2\x80",
    b"\xdf\xbf",
    b"\xe0\x80\x80",
    b"\xe0\x9f\xbf",
    b"\xe0\xa0\x80",
    b"\xed\x9f\xbf",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xee\x80\x80",
    b"\xef\xbf\xbf",
    b"\xf0\x8f\xbf\xbf",
    b"\xf0\x90\x80\x80",
    b"\xf3\xbf\xbf\xbf",
    b"\xf4\x8f\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf5\x80\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xfe",
    b"\xff",
    b"\x80",
    b"\xbf",
    b"\xe1",
    b"\xe1\x80",
    b"\xf1\x80",
    b"\xf1\x80\x80",
]

texts = st.text().map(lambda s: s.encode("utf-8"))
utf8ish = st.lists(
    st.one_of(texts, st.binary(max_size=4), st.sampled_from(INTERESTING)), max_size=12
).map(b"".join)
any_bytes = st.one_of(st.binary(max_size=64), utf8ish)


@st.composite
def with_cuts(draw: st.DrawFn, source: st.SearchStrategy[bytes]) -> tuple[bytes, list[int]]:
    data = draw(source)
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=8))
    return data, cuts


@settings(deadline=None, max_examples=500)
@given(with_cuts(any_bytes))
def test_8_1_matches_strict_decode_for_any_split(case: tuple[bytes, list[int]]) -> None:
    data, cuts = case
    check_against_python(data, cuts)


@settings(deadline=None, max_examples=300)
@given(any_bytes)
def test_8_1_fails_fast_byte_by_byte(data: bytes) -> None:
    kind, bad = python_verdict(data)
    index = byte_by_byte_reject_index(data)
    assert index == bad
    if kind == "invalid":
        # The bound the fail-fast rule allows: not before the ill-formed sequence starts,
        # not after the byte just past the part Python reports.
        exc = decode_error(data)
        assert exc is not None
        assert index is not None
        assert exc.start <= index <= exc.end


@settings(deadline=None)
@given(with_cuts(texts))
def test_5_6_valid_text_is_accepted_in_any_split(case: tuple[bytes, list[int]]) -> None:
    data, cuts = case
    v = Utf8Validator()
    assert all(v.feed(piece) for _, piece in chunks(data, cuts))
    assert v.complete()
    assert v.consumed == len(data)
    assert validate(data)


# Autobahn TestSuite 6.x in spirit: (id, bytes, expected kind).
AUTOBAHN_6 = [
    ("6.2 kosme", "κόσμε".encode(), "valid"),
    ("6.3 kosme + surrogate", "κόσμε".encode() + b"\xed\xa0\x80edited", "invalid"),
    ("6.5 one-byte U+0000", b"\x00", "valid"),
    ("6.6 first 2-byte U+0080", b"\xc2\x80", "valid"),
    ("6.6 first 3-byte U+0800", b"\xe0\xa0\x80", "valid"),
    ("6.6 first 4-byte U+10000", b"\xf0\x90\x80\x80", "valid"),
    ("6.7 last 1-byte U+007F", b"\x7f", "valid"),
    ("6.7 last 2-byte U+07FF", b"\xdf\xbf", "valid"),
    ("6.7 last 3-byte U+FFFF", b"\xef\xbf\xbf", "valid"),
    ("6.7 last 4-byte U+10FFFF", b"\xf4\x8f\xbf\xbf", "valid"),
    ("6.8 U+D7FF", b"\xed\x9f\xbf", "valid"),
    ("6.8 U+E000", b"\xee\x80\x80", "valid"),
    ("6.8 U+FFFD", b"\xef\xbf\xbd", "valid"),
    ("6.8 U+110000", b"\xf4\x90\x80\x80", "invalid"),
    ("6.8 5-byte form", b"\xf8\x88\x80\x80\x80", "invalid"),
    ("6.8 6-byte form", b"\xfc\x84\x80\x80\x80\x80", "invalid"),
    ("6.10 first continuation", b"\x80", "invalid"),
    ("6.10 last continuation", b"\xbf", "invalid"),
    ("6.10 continuations", b"\x80\xbf\x80\xbf", "invalid"),
    ("6.11 lonely 2-byte start", b"\xc2 ", "invalid"),
    ("6.11 lonely 3-byte start", b"\xe1 ", "invalid"),
    ("6.11 lonely 4-byte start", b"\xf1 ", "invalid"),
    ("6.12 truncated 2-byte", b"\xc2", "truncated"),
    ("6.12 truncated 3-byte", b"\xe1\x80", "truncated"),
    ("6.12 truncated 4-byte", b"\xf1\x80\x80", "truncated"),
    ("6.12 truncated after text", b"abc\xf0\x9f\x98", "truncated"),
    ("6.13 0xFE", b"\xfe", "invalid"),
    ("6.13 0xFF", b"\xff", "invalid"),
    ("6.13 FE FE FF FF", b"\xfe\xfe\xff\xff", "invalid"),
    ("6.14 overlong '/' 2-byte", b"\xc0\xaf", "invalid"),
    ("6.14 overlong '/' 3-byte", b"\xe0\x80\xaf", "invalid"),
    ("6.14 overlong '/' 4-byte", b"\xf0\x80\x80\xaf", "invalid"),
    ("6.15 max overlong 2-byte", b"\xc1\xbf", "invalid"),
    ("6.15 max overlong 3-byte", b"\xe0\x9f\xbf", "invalid"),
    ("6.15 max overlong 4-byte", b"\xf0\x8f\xbf\xbf", "invalid"),
    ("6.16 overlong NUL 2-byte", b"\xc0\x80", "invalid"),
    ("6.16 overlong NUL 3-byte", b"\xe0\x80\x80", "invalid"),
    ("6.17 surrogate U+D800", b"\xed\xa0\x80", "invalid"),
    ("6.17 surrogate U+DB7F", b"\xed\xad\xbf", "invalid"),
    ("6.17 surrogate U+DBFF", b"\xed\xaf\xbf", "invalid"),
    ("6.17 surrogate U+DC00", b"\xed\xb0\x80", "invalid"),
    ("6.17 surrogate U+DFFF", b"\xed\xbf\xbf", "invalid"),
    ("6.18 surrogate pair", b"\xed\xa0\x80\xed\xb0\x80", "invalid"),
    ("6.19 noncharacter U+FFFE", b"\xef\xbf\xbe", "valid"),
    ("6.19 noncharacter U+10FFFE", b"\xf4\x8f\xbf\xbe", "valid"),
    ("6.21 BOM", b"\xef\xbb\xbf", "valid"),
    ("6.22 F5 lead", b"\xf5\x80\x80\x80", "invalid"),
]


@pytest.mark.parametrize(
    ("data", "kind"), [c[1:] for c in AUTOBAHN_6], ids=[c[0] for c in AUTOBAHN_6]
)
def test_autobahn_6_cases(data: bytes, kind: str) -> None:
    assert python_verdict(data)[0] == kind
    assert validate(data) == (kind == "valid")
    assert byte_by_byte_reject_index(data) == python_verdict(data)[1]
    for cut in range(len(data) + 1):
        check_against_python(data, [cut])


def test_6_2_kosme_byte_by_byte() -> None:
    data = "κόσμε".encode()
    v = Utf8Validator()
    for i in range(len(data)):
        assert v.feed(data[i : i + 1])
        try:
            data[: i + 1].decode("utf-8")
        except UnicodeDecodeError:
            boundary = False
        else:
            boundary = True
        assert v.complete() == boundary
    assert v.complete()


@pytest.mark.parametrize("bad", [b"\x80", b"\xc0", b"\xff", b"\xc2 ", b"\xed\xa0\x80"])
@pytest.mark.parametrize("skew", [0, 1, 3, 7])
def test_one_bad_byte_in_long_ascii(bad: bytes, skew: int) -> None:
    # Runs of ASCII are skipped 8 bytes at a time: a bad byte at any place in, before or after
    # a word must still be found, wherever the buffer starts.
    for position in range(80):
        data = b"a" * position + bad + b"b" * (80 - position)
        backing = bytearray(b"#" * skew + data)
        view = memoryview(backing)[skew:]
        assert not validate(view)
        v = Utf8Validator()
        assert not v.feed(view)
        _, expected = python_verdict(data)
        assert v.consumed == expected


@pytest.mark.parametrize("skew", [0, 1, 5])
def test_multibyte_between_ascii_words(skew: int) -> None:
    for position in range(40):
        for char in ("é", "€", "😀"):
            data = ("x" * position + char + "y" * 30 + char).encode()
            assert validate(memoryview(b"#" * skew + data)[skew:])
            # Truncated at every place inside the last code point.
            for cut in range(1, len(char.encode())):
                # A view, so the bytes that would complete the code point follow in memory.
                head = memoryview(data)[:-cut]
                assert not validate(head)
                v = Utf8Validator()
                assert v.feed(head)
                assert not v.complete()


def test_exhaustive_one_and_two_bytes() -> None:
    for a in range(256):
        check_two = [bytes([a, b]) for b in range(256)]
        for data in [bytes([a]), *check_two]:
            kind, bad = python_verdict(data)
            v = Utf8Validator()
            ok = v.feed(data)
            assert validate(data) == (kind == "valid"), data
            assert ok == (kind != "invalid"), data
            assert v.consumed == (bad if kind == "invalid" else len(data)), data


def test_every_lead_and_second_byte_with_any_tail() -> None:
    tails = [b"", b"\x80", b"\xbf", b"A", b"\xc0", b"\x80\x80", b"\xbf\xbf", b"\x80A", b"\x8f\xbf"]
    for lead in range(0xC0, 0x100):
        for second in range(256):
            for tail in tails:
                data = bytes([lead, second]) + tail
                kind, bad = python_verdict(data)
                v = Utf8Validator()
                v.feed(data)
                assert validate(data) == (kind == "valid"), data
                assert v.complete() == (kind == "valid"), data
                assert v.consumed == (bad if kind == "invalid" else len(data)), data


def test_every_scalar_value_is_accepted_and_every_surrogate_refused() -> None:
    text = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    data = text.encode("utf-8")
    assert validate(data)
    rng = random.Random(6455)
    v = Utf8Validator()
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 70_000)
        assert v.feed(data[pos : pos + step])
        pos += step
    assert v.complete()
    for c in range(0xD800, 0xE000):
        encoded = chr(c).encode("utf-8", "surrogatepass")
        v = Utf8Validator()
        assert not v.feed(b"ok" + encoded)
        assert v.consumed == 3  # the byte after ED


@pytest.mark.parametrize("size", [64 * 1024, 1 << 20])
def test_large_messages(size: int) -> None:
    # Large enough to take the path that releases the GIL.
    data = (b"0123456789abcdef" * (size // 16))[:size]
    assert validate(data)
    assert not validate(data + b"\xff")
    assert not validate(data + b"\xe2\x82")
    v = Utf8Validator()
    assert v.feed(data)
    assert v.feed(data + b"\xe2\x82")
    assert not v.complete()
    assert v.feed(b"\xac")
    assert v.complete()
    assert not v.feed(os.urandom(8) + b"\xff" + data)
    assert not v.complete()


def test_failure_is_sticky_until_reset() -> None:
    v = Utf8Validator()
    assert v.feed(b"ab")
    assert not v.feed(b"c\xc0d")
    assert v.consumed == 3
    assert not v.feed(b"plain ascii")
    assert not v.feed(b"")
    assert not v.complete()
    assert v.consumed == 3
    v.reset()
    assert v.consumed == 0
    assert v.complete()
    assert v.feed(b"plain ascii")
    assert v.complete()


def test_reset_drops_an_open_code_point() -> None:
    v = Utf8Validator()
    assert v.feed(b"\xe2\x82")
    assert not v.complete()
    v.reset()
    assert v.complete()
    # After the reset a lone continuation byte is a start byte again, hence invalid.
    assert not v.feed(b"\xac")


def test_empty_input() -> None:
    v = Utf8Validator()
    assert v.feed(b"")
    assert v.complete()
    assert validate(b"")
    assert validate(bytearray())


def test_accepts_bytes_like_and_refuses_the_rest() -> None:
    data = "héllo wörld €😀".encode()
    assert validate(bytearray(data))
    assert validate(memoryview(data)[1:])
    v = Utf8Validator()
    assert v.feed(memoryview(data)[:2])
    assert v.feed(bytearray(data[2:]))
    assert v.complete()
    with pytest.raises(TypeError):
        validate("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        v.feed(None)  # type: ignore[arg-type]
    with pytest.raises(BufferError):
        validate(memoryview(bytearray(16))[::2])
