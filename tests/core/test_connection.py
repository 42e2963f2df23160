"""RFC 6455 sections 5 to 8 (and RFC 7692) for the sans-I/O ``melody._core.connection``.

No socket is opened: bytes go in through ``receive_data`` (or the ``get_buffer`` /
``buffer_updated`` pair asyncio uses), events and frames come out. Test names start with the
RFC section they check. Frames sent *to* a connection are built by ``frame()`` below, a literal
reading of section 5.2 that can also build every malformed frame; frames a connection sends are
read back by ``read_frames()``, equally independent of melody.
"""

from __future__ import annotations

import itertools
import os
import random
import struct
import zlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melody._core.connection import Connection
from melody._core.constants import SEND_CLOSED, SEND_OK, STATE_CLOSED, STATE_CLOSING, STATE_OPEN
from melody._core.deflate import Deflater, Inflater
from melody._core.extensions import DeflateParams
from melody._core.frames import encode_close

MiB = 1 << 20
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
TAIL = b"\x00\x00\xff\xff"

# --- helpers: an independent frame builder and reader ---------------------------------------


def xor(data: bytes, key: bytes) -> bytes:
    n = len(data)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    rsv2: bool = False,
    rsv3: bool = False,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """One frame as a client sends it (``mask=False`` for a server's); ``length`` overrides the
    header's payload length (the payload is still ``payload``)."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (0x20 if rsv2 else 0)
    b0 |= (0x10 if rsv3 else 0) | opcode
    mbit = 0x80 if mask else 0
    if n <= 125:
        head = bytes([b0, mbit | n])
    elif n <= 0xFFFF:
        head = bytes([b0, mbit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, mbit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + xor(payload, key)


def close_frame(code: int | None = None, reason: bytes = b"", *, mask: bool = True) -> bytes:
    payload = b"" if code is None else struct.pack("!H", code) + reason
    return frame(OP_CLOSE, payload, mask=mask)


class Sent(NamedTuple):
    fin: bool
    rsv: int
    opcode: int
    key: bytes | None
    payload: bytes


def read_frames(data: bytes) -> list[Sent]:
    """Section 5.2 read literally: every frame in ``data``, which must end on a frame."""
    out = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        n = b1 & 0x7F
        pos += 2
        if n == 126:
            (n,) = struct.unpack("!H", data[pos : pos + 2])
            pos += 2
        elif n == 127:
            (n,) = struct.unpack("!Q", data[pos : pos + 8])
            pos += 8
        key = None
        if b1 & 0x80:
            key = data[pos : pos + 4]
            pos += 4
        payload = data[pos : pos + n]
        assert len(payload) == n, "truncated frame"
        pos += n
        if key is not None:
            payload = xor(payload, key)
        out.append(Sent(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF, key, payload))
    return out


def close_code_of(sent: Sent) -> int | None:
    assert sent.opcode == OP_CLOSE
    if not sent.payload:
        return None
    return int(struct.unpack("!H", sent.payload[:2])[0])


def server(**kwargs: Any) -> Connection:
    return Connection(is_server=True, **kwargs)


def client(**kwargs: Any) -> Connection:
    return Connection(is_server=False, **kwargs)


def feed_in_pieces(conn: Connection, data: bytes, cuts: list[int]) -> list[Any]:
    """``receive_data`` with ``data`` cut at the positions ``cuts``."""
    events: list[Any] = []
    last = 0
    for cut in [*sorted(cuts), len(data)]:
        events += conn.receive_data(data[last:cut])
        last = cut
    return events


def feed_buffered(conn: Connection, data: bytes, sizes: Iterator[int]) -> list[Any]:
    """The asyncio.BufferedProtocol path: reads of at most ``next(sizes)`` bytes."""
    pos = 0
    while pos < len(data):
        view = conn.get_buffer(-1)
        n = min(len(view), next(sizes), len(data) - pos)
        assert n > 0
        view[:n] = data[pos : pos + n]
        view.release()
        conn.buffer_updated(n)
        pos += n
    # On a bare Connection the events of buffer_updated wait for the next receive_data.
    return conn.receive_data(b"")


def assert_failed(conn: Connection, events: list[Any], code: int) -> None:
    """Section 7.1.7: one ('fail', code, reason) event last, a close with ``code`` sent, and
    nothing more read."""
    assert events, "no event: the violation was not detected"
    assert events[-1][:2] == ("fail", code), events
    assert isinstance(events[-1][2], str) and events[-1][2]
    assert [e for e in events if e[0] == "fail"] == events[-1:]
    sent = read_frames(conn.data_to_send())
    assert sent, "no close frame was sent"
    assert sent[-1].opcode == OP_CLOSE
    assert close_code_of(sent[-1]) == code
    assert len(sent[-1].payload) <= 125
    assert (conn.state, conn.close_code) == (STATE_CLOSED, code)
    # Later input is ignored: no event, nothing sent, the state stays.
    assert conn.receive_data(frame(OP_TEXT, b"later", mask=conn.is_server)) == []
    assert conn.receive_data(frame(OP_PING, b"later", mask=conn.is_server)) == []
    assert conn.data_to_send() == b""
    assert (conn.state, conn.close_code) == (STATE_CLOSED, code)
    assert conn.send_text("x") == SEND_CLOSED
    assert conn.send_close() == SEND_CLOSED
    assert conn.data_to_send() == b""


# --- construction ------------------------------------------------------------------------------


def test_connection_defaults() -> None:
    conn = Connection()
    assert conn.is_server
    assert conn.state == STATE_OPEN
    assert conn.max_message_size == MiB
    assert (conn.close_code, conn.close_reason) == (0, "")
    assert conn.inflater is None and conn.deflater is None
    assert conn.buffered == 0
    assert conn.data_to_send() == b""
    assert conn.receive_data(b"") == []
    assert (conn.message_budget, conn.stalled) == (-1, False)


@pytest.mark.parametrize("size", [0, -1])
def test_connection_rejects_max_message_size_below_1(size: int) -> None:
    with pytest.raises(ValueError):
        Connection(max_message_size=size)


def test_connection_receive_data_takes_any_bytes_like() -> None:
    conn = server()
    data = frame(OP_TEXT, b"abc")
    assert conn.receive_data(bytearray(data)) == [("text", "abc")]
    assert conn.receive_data(memoryview(data)) == [("text", "abc")]
    with pytest.raises(TypeError):
        conn.receive_data("text")  # type: ignore[arg-type]


# --- 5.2 Base framing --------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536, 3 * MiB + 5])
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_5_2_single_frame_every_length_encoding(opcode: int, length: int) -> None:
    conn = server(max_message_size=4 * MiB)
    payload = (b"0123456789abcdef" * (length // 16 + 1))[:length]
    events = conn.receive_data(frame(opcode, payload))
    expected = payload.decode() if opcode == OP_TEXT else payload
    assert events == [("text" if opcode == OP_TEXT else "binary", expected)]
    assert conn.buffered == 0
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536, 2 * MiB])
def test_5_2_single_frame_fed_byte_by_byte_or_in_chunks(length: int) -> None:
    payload = os.urandom(length)
    data = frame(OP_BINARY, payload)
    # Byte by byte through the header, then in chunks (a 2 MiB frame byte by byte is slow).
    conn = server(max_message_size=4 * MiB)
    events = []
    for i in range(min(len(data), 200)):
        events += conn.receive_data(data[i : i + 1])
    for i in range(200, len(data), 65537):
        events += conn.receive_data(data[i : i + 65537])
    assert events == [("binary", payload)]
    assert conn.buffered == 0


def test_5_2_byte_by_byte_equals_whole() -> None:
    stream = b"".join(
        [
            frame(OP_TEXT, "héllo wörld €𝄞".encode()),
            frame(OP_BINARY, bytes(range(256)) * 3),
            frame(OP_TEXT, b"frag", fin=False),
            frame(OP_PING, b"p"),
            frame(OP_CONT, "mént €".encode()[:5], fin=False),
            frame(OP_CONT, "mént €".encode()[5:]),
            frame(OP_PONG, b""),
            frame(OP_BINARY, b"\x00" * 70000),
            close_frame(1000, b"bye"),
        ]
    )
    whole = server()
    expected = whole.receive_data(stream)
    assert [e[0] for e in expected] == ["text", "binary", "ping", "text", "pong", "binary", "close"]
    assert expected[3] == ("text", "fragmént €")
    one = server()
    events = []
    for i in range(len(stream)):
        events += one.receive_data(stream[i : i + 1])
    assert events == expected
    assert one.data_to_send() == whole.data_to_send()


def test_5_2_buffered_protocol_path_equals_receive_data() -> None:
    stream = b"".join(frame(OP_BINARY, os.urandom(n)) for n in (0, 10, 300, 70000, 300000))
    expected = server().receive_data(stream)
    for size in (1, 7, 4096, 65536, 1 << 30):
        conn = server()
        assert feed_buffered(conn, stream, itertools.repeat(size)) == expected
        assert conn.buffered == 0


# Arbitrary split points over a stream of several messages give the same events.

_texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
_message: st.SearchStrategy[tuple[str, Any, list[int]]] = st.one_of(
    st.tuples(st.just("text"), _texts, st.lists(st.integers(0, 200), max_size=3)),
    st.tuples(
        st.just("binary"), st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=3)
    ),
    st.tuples(st.just("ping"), st.binary(max_size=125), st.just([])),
    st.tuples(st.just("pong"), st.binary(max_size=125), st.just([])),
    st.tuples(st.just("big"), st.integers(126, 70000), st.just([])),
)


def build_stream(messages: list[tuple[str, Any, list[int]]]) -> tuple[bytes, list[Any]]:
    """Client frames for ``messages`` (fragmented at the given byte offsets) and the events a
    server must report for them."""
    data = []
    expected: list[Any] = []
    for kind, value, cuts in messages:
        if kind in ("ping", "pong"):
            data.append(frame(OP_PING if kind == "ping" else OP_PONG, value))
            expected.append((kind, value))
            continue
        if kind == "big":
            kind, value = "binary", bytes([value % 256]) * value
        raw = value.encode() if kind == "text" else value
        bounds = sorted({c for c in cuts if c <= len(raw)} | {0, len(raw)})
        if len(bounds) == 1:
            bounds = [0, 0]
        pieces = [raw[a:b] for a, b in itertools.pairwise(bounds)]
        for i, piece in enumerate(pieces):
            opcode = (OP_TEXT if kind == "text" else OP_BINARY) if i == 0 else OP_CONT
            data.append(frame(opcode, piece, fin=i == len(pieces) - 1))
        expected.append((kind, value))
    return b"".join(data), expected


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(_message, min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=12),
    read_size=st.integers(1, 5000),
)
def test_5_2_arbitrary_split_points_give_the_same_events(
    messages: list[tuple[str, Any, list[int]]], cuts: list[int], read_size: int
) -> None:
    stream, expected = build_stream(messages)
    whole = server()
    assert whole.receive_data(stream) == expected
    pongs = [s for s in read_frames(whole.data_to_send())]
    assert [s.payload for s in pongs] == [v for k, v in expected if k == "ping"]
    assert all(s.opcode == OP_PONG and s.key is None for s in pongs)

    split = server()
    assert feed_in_pieces(split, stream, [c % (len(stream) + 1) for c in cuts]) == expected
    assert split.buffered == 0

    buffered = server()
    assert feed_buffered(buffered, stream, itertools.repeat(read_size)) == expected
    assert buffered.buffered == 0


@pytest.mark.parametrize(
    "bits",
    [dict(rsv1=True), dict(rsv2=True), dict(rsv3=True), dict(rsv1=True, rsv2=True, rsv3=True)],
)
@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY, OP_PING, OP_CLOSE])
def test_5_2_rsv_bits_without_extension_fail_1002(opcode: int, bits: dict[str, bool]) -> None:
    conn = server()
    assert_failed(conn, conn.receive_data(frame(opcode, b"x", **bits)), 1002)


def test_5_2_rsv_bit_on_a_continuation_fails_1002() -> None:
    conn = server()
    events = conn.receive_data(frame(OP_TEXT, b"a", fin=False) + frame(OP_CONT, b"b", rsv2=True))
    assert_failed(conn, events, 1002)


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
def test_5_2_unknown_opcodes_fail_1002(opcode: int) -> None:
    conn = server()
    assert_failed(conn, conn.receive_data(frame(opcode, b"payload")), 1002)


@pytest.mark.parametrize("opcode", [3, 11])
def test_5_2_unknown_opcode_fails_from_the_first_two_bytes(opcode: int) -> None:
    conn = server()
    data = frame(opcode, b"x" * 1000)
    assert_failed(conn, conn.receive_data(data[:2]), 1002)


def test_5_2_unknown_opcode_inside_fragmented_message_fails_1002() -> None:
    conn = server()
    events = conn.receive_data(frame(OP_TEXT, b"a", fin=False) + frame(5, b"b"))
    assert_failed(conn, events, 1002)


def test_5_2_length_with_the_64_bit_high_bit_set_fails_1002() -> None:
    conn = server()
    head = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", (1 << 63) | 5)
    # Only the header arrives: the length alone is enough to fail.
    assert_failed(conn, conn.receive_data(head), 1002)


def test_5_2_length_with_the_64_bit_high_bit_set_fails_1002_even_with_a_large_limit() -> None:
    conn = server(max_message_size=(1 << 63) - 1)
    head = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 1 << 63)
    assert_failed(conn, conn.receive_data(head + b"\x00" * 8), 1002)


def test_5_2_non_minimal_length_encoding_is_accepted() -> None:
    # "the minimal number of bytes MUST be used" binds the sender; a receiver may be liberal.
    key = b"\x01\x02\x03\x04"
    payload = b"hello"
    data16 = bytes([0x81, 0x80 | 126]) + struct.pack("!H", 5) + key + xor(payload, key)
    data64 = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 5) + key + xor(payload, key)
    conn = server()
    assert conn.receive_data(data16 + data64) == [("text", "hello"), ("text", "hello")]


def test_5_2_a_partial_frame_is_buffered_and_no_more() -> None:
    conn = server()
    data = frame(OP_BINARY, b"x" * 1000)
    assert conn.receive_data(data[:500]) == []
    assert conn.buffered == 500
    assert conn.receive_data(data[500:] + data[:3]) == [("binary", b"x" * 1000)]
    assert conn.buffered == 3
    assert conn.receive_data(data[3:]) == [("binary", b"x" * 1000)]
    assert conn.buffered == 0


# --- 5.1 / 5.3 Masking -------------------------------------------------------------------------


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY, OP_PING, OP_PONG, OP_CLOSE])
def test_5_1_unmasked_client_frame_fails_1002(opcode: int) -> None:
    conn = server()
    assert_failed(conn, conn.receive_data(frame(opcode, b"", mask=False)), 1002)


def test_5_1_unmasked_continuation_fails_1002() -> None:
    conn = server()
    events = conn.receive_data(frame(OP_TEXT, b"a", fin=False) + frame(OP_CONT, b"b", mask=False))
    assert_failed(conn, events, 1002)


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY, OP_PING, OP_PONG, OP_CLOSE])
def test_5_1_masked_frame_to_a_client_fails_1002(opcode: int) -> None:
    conn = client()
    events = conn.receive_data(frame(opcode, b"", mask=True))
    assert_failed(conn, events, 1002)


def test_5_1_client_close_after_failure_is_masked() -> None:
    conn = client()
    conn.receive_data(frame(OP_TEXT, b"x", mask=True))
    (sent,) = read_frames(conn.data_to_send())
    assert sent.key is not None and close_code_of(sent) == 1002


def test_5_1_server_sends_unmasked_frames() -> None:
    conn = server()
    assert conn.send_text("héllo") == SEND_OK
    assert conn.send_binary(b"\x00\x01") == SEND_OK
    assert conn.send_binary(bytearray(b"ba")) == SEND_OK
    assert conn.send_binary(memoryview(b"mv")) == SEND_OK
    assert conn.send_ping(b"pi") == SEND_OK
    assert conn.send_pong(b"po") == SEND_OK
    sent = read_frames(conn.data_to_send())
    assert [(s.fin, s.rsv, s.opcode, s.key, s.payload) for s in sent] == [
        (True, 0, OP_TEXT, None, "héllo".encode()),
        (True, 0, OP_BINARY, None, b"\x00\x01"),
        (True, 0, OP_BINARY, None, b"ba"),
        (True, 0, OP_BINARY, None, b"mv"),
        (True, 0, OP_PING, None, b"pi"),
        (True, 0, OP_PONG, None, b"po"),
    ]
    assert conn.data_to_send() == b""


def test_5_3_client_sends_masked_frames_with_fresh_keys() -> None:
    conn = client()
    for _ in range(100):
        assert conn.send_binary(b"same payload") == SEND_OK
    sent = read_frames(conn.data_to_send())
    assert len(sent) == 100
    assert all(s.key is not None and s.payload == b"same payload" for s in sent)
    assert len({s.key for s in sent}) >= 90


def test_5_3_client_masks_every_kind_of_frame() -> None:
    conn = client()
    conn.send_text("t" * 200)
    conn.send_binary(b"b" * 70000)
    conn.send_ping(b"ping")
    conn.send_pong(b"")
    conn.send_close(1001, "bye")
    sent = read_frames(conn.data_to_send())
    assert all(s.key is not None for s in sent)
    assert [(s.opcode, s.payload) for s in sent] == [
        (OP_TEXT, b"t" * 200),
        (OP_BINARY, b"b" * 70000),
        (OP_PING, b"ping"),
        (OP_PONG, b""),
        (OP_CLOSE, b"\x03\xe9bye"),
    ]


def test_5_1_client_accepts_unmasked_server_frames() -> None:
    conn = client()
    data = (
        frame(OP_TEXT, "héllo".encode(), mask=False)
        + frame(OP_BINARY, b"\x00" * 70000, mask=False)
        + frame(OP_TEXT, b"fr", fin=False, mask=False)
        + frame(OP_PING, b"hb", mask=False)
        + frame(OP_CONT, b"ag", mask=False)
        + frame(OP_PONG, b"pong", mask=False)
    )
    assert conn.receive_data(data) == [
        ("text", "héllo"),
        ("binary", b"\x00" * 70000),
        ("ping", b"hb"),
        ("text", "frag"),
        ("pong", b"pong"),
    ]
    # The client's pong is masked.
    (pong,) = read_frames(conn.data_to_send())
    assert (pong.opcode, pong.payload) == (OP_PONG, b"hb") and pong.key is not None


def test_5_5_1_client_initiated_close_handshake() -> None:
    conn = client()
    assert conn.send_close(1000, "done") == SEND_OK
    assert conn.state == STATE_CLOSING
    (sent,) = read_frames(conn.data_to_send())
    assert sent.key is not None and sent.payload == b"\x03\xe8done"
    assert conn.receive_data(frame(OP_TEXT, b"late", mask=False)) == []
    assert conn.receive_data(close_frame(1000, mask=False)) == [("close", 1000, "")]
    assert conn.state == STATE_CLOSED
    assert conn.data_to_send() == b""


def test_5_1_client_close_handshake() -> None:
    conn = client()
    conn.receive_data(close_frame(1001, b"restart", mask=False))
    assert conn.state == STATE_CLOSED
    (reply,) = read_frames(conn.data_to_send())
    assert reply.key is not None and close_code_of(reply) == 1001


# --- 5.4 Fragmentation ---------------------------------------------------------------------------


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_5_4_fragmented_message(opcode: int) -> None:
    conn = server()
    data = (
        frame(opcode, b"one ", fin=False)
        + frame(OP_CONT, b"two ", fin=False)
        + frame(OP_CONT, b"", fin=False)
        + frame(OP_CONT, b"three")
    )
    kind, value = ("text", "one two three") if opcode == OP_TEXT else ("binary", b"one two three")
    assert conn.receive_data(data) == [(kind, value)]


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_5_4_empty_fragments_make_an_empty_message(opcode: int) -> None:
    conn = server()
    events = conn.receive_data(frame(opcode, b"", fin=False) + frame(OP_CONT, b""))
    assert events == [("text", "")] if opcode == OP_TEXT else [("binary", b"")]


def test_5_4_large_fragmented_message_crossing_length_encodings() -> None:
    conn = server(max_message_size=4 * MiB)
    parts = [os.urandom(n) for n in (125, 126, 65535, 65536, MiB)]
    data = frame(OP_BINARY, parts[0], fin=False)
    data += b"".join(frame(OP_CONT, p, fin=False) for p in parts[1:-1])
    data += frame(OP_CONT, parts[-1])
    assert conn.receive_data(data) == [("binary", b"".join(parts))]


def test_5_4_control_frame_interleaved_in_fragmented_message() -> None:
    conn = server()
    data = (
        frame(OP_TEXT, b"Hel", fin=False)
        + frame(OP_PING, b"ping 1")
        + frame(OP_CONT, b"lo, ", fin=False)
        + frame(OP_PONG, b"pong")
        + frame(OP_PING, b"")
        + frame(OP_CONT, b"world")
    )
    assert conn.receive_data(data) == [
        ("ping", b"ping 1"),
        ("pong", b"pong"),
        ("ping", b""),
        ("text", "Hello, world"),
    ]
    assert [(s.opcode, s.payload) for s in read_frames(conn.data_to_send())] == [
        (OP_PONG, b"ping 1"),
        (OP_PONG, b""),
    ]


def test_5_4_close_interleaved_in_fragmented_message_closes() -> None:
    conn = server()
    data = frame(OP_BINARY, b"part", fin=False) + close_frame(1000) + frame(OP_CONT, b"rest")
    assert conn.receive_data(data) == [("close", 1000, "")]
    assert conn.state == STATE_CLOSED


def test_5_4_continuation_without_start_fails_1002() -> None:
    conn = server()
    assert_failed(conn, conn.receive_data(frame(OP_CONT, b"orphan")), 1002)


def test_5_4_continuation_after_a_complete_message_fails_1002() -> None:
    conn = server()
    events = conn.receive_data(frame(OP_TEXT, b"done") + frame(OP_CONT, b"more"))
    assert events[0] == ("text", "done")
    assert_failed(conn, events, 1002)


@pytest.mark.parametrize("first", [OP_TEXT, OP_BINARY])
@pytest.mark.parametrize("second", [OP_TEXT, OP_BINARY])
@pytest.mark.parametrize("second_fin", [True, False])
def test_5_4_new_data_frame_inside_fragmented_message_fails_1002(
    first: int, second: int, second_fin: bool
) -> None:
    conn = server()
    events = conn.receive_data(frame(first, b"a", fin=False) + frame(second, b"b", fin=second_fin))
    assert_failed(conn, events, 1002)


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_5_5_fragmented_control_frame_fails_1002(opcode: int) -> None:
    conn = server()
    assert_failed(conn, conn.receive_data(frame(opcode, b"\x03\xe8", fin=False)), 1002)


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
@pytest.mark.parametrize("length", [126, 127, 65536])
def test_5_5_control_payload_over_125_fails_1002(opcode: int, length: int) -> None:
    conn = server()
    data = frame(opcode, b"\x03\xe8" + b"a" * (length - 2))
    # The header alone decides: feed only its first two bytes.
    assert_failed(conn, conn.receive_data(data[:2]), 1002)
    conn = server()
    assert_failed(conn, conn.receive_data(data), 1002)


def test_5_5_control_payload_of_125_is_accepted() -> None:
    conn = server()
    assert conn.receive_data(frame(OP_PING, b"p" * 125)) == [("ping", b"p" * 125)]
    assert read_frames(conn.data_to_send())[0].payload == b"p" * 125


def test_5_5_control_frames_are_not_bound_by_max_message_size() -> None:
    conn = server(max_message_size=4)
    assert conn.receive_data(frame(OP_PING, b"p" * 100)) == [("ping", b"p" * 100)]
    assert conn.receive_data(close_frame(1000, b"a long reason")) == [
        ("close", 1000, "a long reason")
    ]


# --- 5.5.2 / 5.5.3 Ping and Pong ----------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"x", os.urandom(125)])
def test_5_5_2_ping_queues_pong_with_the_same_payload(payload: bytes) -> None:
    conn = server()
    assert conn.receive_data(frame(OP_PING, payload)) == [("ping", payload)]
    (pong,) = read_frames(conn.data_to_send())
    assert (pong.fin, pong.rsv, pong.opcode, pong.key, pong.payload) == (
        True,
        0,
        OP_PONG,
        None,
        payload,
    )


def test_5_5_2_each_ping_gets_its_pong_in_order() -> None:
    conn = server()
    conn.receive_data(b"".join(frame(OP_PING, bytes([i])) for i in range(10)))
    assert [s.payload for s in read_frames(conn.data_to_send())] == [bytes([i]) for i in range(10)]


def test_5_5_3_pong_event_and_no_reply() -> None:
    conn = server()
    assert conn.receive_data(frame(OP_PONG, b"heartbeat")) == [("pong", b"heartbeat")]
    assert conn.data_to_send() == b""


def test_5_5_2_send_ping_rejects_payload_over_125() -> None:
    conn = server()
    with pytest.raises(ValueError):
        conn.send_ping(b"x" * 126)
    with pytest.raises(ValueError):
        conn.send_pong(b"x" * 126)
    assert conn.data_to_send() == b""
    assert conn.state == STATE_OPEN


# --- 5.5.1 / 7 Closing -----------------------------------------------------------------------


VALID_CODES = [
    1000,
    1001,
    1002,
    1003,
    1007,
    1008,
    1009,
    1010,
    1011,
    1012,
    1013,
    1014,
    3000,
    3999,
    4000,
    4999,
]
INVALID_CODES = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


@pytest.mark.parametrize("code", VALID_CODES)
def test_5_5_1_close_echoes_code(code: int) -> None:
    conn = server()
    events = conn.receive_data(close_frame(code, "reason ✓".encode()))
    assert events == [("close", code, "reason ✓")]
    (reply,) = read_frames(conn.data_to_send())
    assert reply.opcode == OP_CLOSE and reply.fin and reply.key is None
    assert close_code_of(reply) == code
    assert (conn.state, conn.close_code, conn.close_reason) == (STATE_CLOSED, code, "reason ✓")


def test_5_5_1_empty_close_is_1005_and_gets_an_empty_reply() -> None:
    conn = server()
    assert conn.receive_data(close_frame()) == [("close", 1005, "")]
    (reply,) = read_frames(conn.data_to_send())
    assert (reply.opcode, reply.payload) == (OP_CLOSE, b"")
    assert (conn.state, conn.close_code) == (STATE_CLOSED, 1005)


def test_5_5_1_close_with_1_byte_payload_fails_1002() -> None:
    conn = server()
    assert_failed(conn, conn.receive_data(frame(OP_CLOSE, b"\x03")), 1002)


@pytest.mark.parametrize("code", INVALID_CODES)
def test_7_4_1_invalid_close_codes_fail_1002(code: int) -> None:
    conn = server()
    assert_failed(conn, conn.receive_data(close_frame(code, b"why")), 1002)


@pytest.mark.parametrize(
    "reason", [b"\xff", b"ok\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80"]
)
def test_5_5_1_close_reason_with_invalid_utf8_fails_1007(reason: bytes) -> None:
    conn = server()
    assert_failed(conn, conn.receive_data(close_frame(1000, reason)), 1007)


def test_5_5_1_input_after_the_peers_close_is_ignored() -> None:
    conn = server()
    events = conn.receive_data(close_frame(1000) + frame(OP_TEXT, b"late") + frame(OP_PING))
    assert events == [("close", 1000, "")]
    assert len(read_frames(conn.data_to_send())) == 1  # the close reply; no pong
    assert conn.receive_data(frame(OP_TEXT, b"later")) == []
    assert conn.data_to_send() == b""
    assert conn.send_text("no") == SEND_CLOSED
    assert conn.send_close() == SEND_CLOSED
    assert conn.data_to_send() == b""


def test_5_5_1_server_initiated_close_handshake() -> None:
    conn = server()
    assert conn.send_close(1001, "shutting down") == SEND_OK
    assert conn.state == STATE_CLOSING
    assert (conn.close_code, conn.close_reason) == (1001, "shutting down")
    (sent,) = read_frames(conn.data_to_send())
    assert sent.opcode == OP_CLOSE and sent.payload == b"\x03\xe9shutting down"
    # Nothing more is sent once closing.
    assert conn.send_text("x") == SEND_CLOSED
    assert conn.send_binary(b"x") == SEND_CLOSED
    assert conn.send_ping() == SEND_CLOSED
    assert conn.send_close() == SEND_CLOSED
    assert conn.data_to_send() == b""
    # Section 1.4: data the peer sent before seeing our close is read but not delivered.
    events = conn.receive_data(
        frame(OP_TEXT, b"in flight") + frame(OP_BINARY, b"a", fin=False) + frame(OP_CONT, b"b")
    )
    assert events == []
    assert conn.state == STATE_CLOSING
    # The peer's close finishes the handshake; it needs no reply.
    assert conn.receive_data(close_frame(1001)) == [("close", 1001, "")]
    assert conn.state == STATE_CLOSED
    assert conn.data_to_send() == b""
    assert conn.receive_data(frame(OP_TEXT, b"after")) == []


def test_5_5_1_peer_close_without_code_while_closing() -> None:
    conn = server()
    conn.send_close(1000)
    conn.data_to_send()
    assert conn.receive_data(close_frame()) == [("close", 1005, "")]
    assert conn.state == STATE_CLOSED
    assert conn.data_to_send() == b""


def test_5_5_1_pong_is_still_reported_while_closing() -> None:
    conn = server()
    conn.send_close(1000)
    conn.data_to_send()
    assert conn.receive_data(frame(OP_PONG, b"late")) == [("pong", b"late")]


def test_7_1_7_violation_while_closing_fails_without_second_close() -> None:
    conn = server()
    conn.send_close(1000)
    conn.data_to_send()
    events = conn.receive_data(frame(OP_TEXT, b"\xff"))
    assert events[-1][:2] == ("fail", 1007)
    assert conn.state == STATE_CLOSED
    assert conn.data_to_send() == b""  # our close frame went out already


def test_5_5_1_send_close_with_code_0_sends_empty_payload() -> None:
    conn = server()
    conn.send_close(0)
    (sent,) = read_frames(conn.data_to_send())
    assert sent.payload == b""


def test_5_5_1_send_close_cuts_long_reason_on_a_code_point() -> None:
    conn = server()
    conn.send_close(1000, "é" * 100)
    (sent,) = read_frames(conn.data_to_send())
    assert len(sent.payload) <= 125
    assert sent.payload[2:].decode("utf-8") == "é" * 61


def test_5_5_1_encode_close_cuts_long_reason_on_a_code_point() -> None:
    (sent,) = read_frames(encode_close(1000, "é" * 100))
    assert len(sent.payload) <= 125
    assert sent.payload[2:].decode("utf-8") == "é" * 61


@pytest.mark.parametrize("code", [-1, 65536, 70000, 1004, 1005, 1006, 1015, 1016, 2999])
def test_7_4_1_send_close_refuses_codes_that_cannot_be_sent(code: int) -> None:
    # A code outside 16 bits would be truncated on the wire (70000 becomes 4464), and 1005,
    # 1006 and 1015 "MUST NOT be set as a status code in a Close control frame by an
    # endpoint" (7.4.1); encode_close already refuses the former with ValueError.
    conn = server()
    with pytest.raises(ValueError):
        conn.send_close(code)
    assert conn.state == STATE_OPEN
    assert conn.data_to_send() == b""


# --- 7.1.7 Failing: what happens after -----------------------------------------------------------


def test_7_1_7_input_after_failure_is_not_buffered() -> None:
    # Nothing after a failure is ever parsed, so none of it may be kept: a peer that keeps
    # sending must not grow the connection's memory (the server's ProtocolCore drops it;
    # the bare Connection must too).
    conn = server()
    assert_failed(conn, conn.receive_data(frame(OP_CONT, b"x")), 1002)
    for _ in range(10):
        assert conn.receive_data(b"\x00" * 100000) == []
    assert conn.buffered == 0


def test_7_1_7_input_after_the_close_handshake_is_not_buffered() -> None:
    conn = server()
    conn.receive_data(close_frame(1000) + b"\x00" * 1000)
    conn.receive_data(b"\x00" * 1000)
    assert conn.buffered == 0


def test_7_1_7_messages_before_the_violation_are_delivered() -> None:
    conn = server()
    events = conn.receive_data(frame(OP_TEXT, b"ok") + frame(OP_PING, b"p") + frame(3))
    assert events[:2] == [("text", "ok"), ("ping", b"p")]
    assert_failed(conn, events, 1002)


def test_7_1_7_close_frame_carries_the_failure_reason() -> None:
    conn = server()
    conn.receive_data(frame(OP_CONT, b""))
    (sent,) = read_frames(conn.data_to_send())
    assert close_code_of(sent) == 1002
    assert sent.payload[2:].decode("utf-8") == conn.close_reason


# --- 10.4 max_message_size ----------------------------------------------------------------------


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
@pytest.mark.parametrize("length", [1001, 65536, 1 << 40])
def test_10_4_message_over_max_size_fails_1009_from_the_header(opcode: int, length: int) -> None:
    conn = server(max_message_size=1000)
    data = frame(opcode, b"", length=length)
    # Only the length fields, not even the masking key: the failure needs no payload.
    header = data[: len(data) - 4]
    events = conn.receive_data(header)
    assert conn.buffered == 0
    assert_failed(conn, events, 1009)


def test_10_4_message_of_exactly_max_size_is_accepted() -> None:
    conn = server(max_message_size=1000)
    assert conn.receive_data(frame(OP_BINARY, b"x" * 1000)) == [("binary", b"x" * 1000)]
    data = frame(OP_TEXT, b"y" * 600, fin=False) + frame(OP_CONT, b"y" * 400)
    assert conn.receive_data(data) == [("text", "y" * 1000)]


def test_10_4_fragmented_message_crossing_the_limit_fails_1009() -> None:
    conn = server(max_message_size=1000)
    events = conn.receive_data(frame(OP_BINARY, b"x" * 600, fin=False))
    assert events == []
    # The second fragment's header is enough to know the total crosses the limit.
    second = frame(OP_CONT, b"x" * 401)
    assert_failed(conn, conn.receive_data(second[:4]), 1009)


def test_10_4_many_small_fragments_crossing_the_limit_fail_1009() -> None:
    conn = server(max_message_size=1000)
    data = frame(OP_TEXT, b"a" * 10, fin=False)
    data += b"".join(frame(OP_CONT, b"a" * 10, fin=False) for _ in range(98))
    assert conn.receive_data(data) == []
    assert_failed(conn, conn.receive_data(frame(OP_CONT, b"a" * 11)), 1009)


def test_10_4_limit_applies_per_message() -> None:
    conn = server(max_message_size=1000)
    data = b"".join(frame(OP_BINARY, b"z" * 1000) for _ in range(5))
    assert conn.receive_data(data) == [("binary", b"z" * 1000)] * 5


# --- 8.1 / 5.6 UTF-8 ----------------------------------------------------------------------------


INVALID_UTF8 = [
    b"\xff",  # never valid
    b"\x80",  # a lone continuation byte
    b"\xc0\xaf",  # overlong '/'
    b"\xe0\x80\xaf",  # overlong, 3 bytes
    b"\xed\xa0\x80",  # an encoded surrogate (U+D800)
    b"\xf4\x90\x80\x80",  # over U+10FFFF
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",  # Autobahn 6.4
]


@pytest.mark.parametrize("bad", INVALID_UTF8)
def test_8_1_invalid_utf8_fails_fast_1007(bad: bytes) -> None:
    conn = server()
    assert_failed(conn, conn.receive_data(frame(OP_TEXT, b"ok " + bad + b" tail")), 1007)


@pytest.mark.parametrize("bad", INVALID_UTF8)
def test_8_1_invalid_utf8_in_the_first_fragment_fails_before_later_fragments(bad: bytes) -> None:
    conn = server()
    events = conn.receive_data(frame(OP_TEXT, b"ok " + bad, fin=False))
    assert_failed(conn, events, 1007)


def test_8_1_invalid_utf8_in_a_middle_fragment_fails_at_once() -> None:
    conn = server()
    assert conn.receive_data(frame(OP_TEXT, "κόσ".encode(), fin=False)) == []
    assert_failed(conn, conn.receive_data(frame(OP_CONT, b"\xed\xa0\x80", fin=False)), 1007)


@pytest.mark.parametrize("position", [0, 50, 65535, 200000])
def test_8_1_invalid_utf8_in_a_partly_received_frame_fails_before_the_rest(position: int) -> None:
    conn = server(max_message_size=4 * MiB)
    payload = bytearray(b"a" * MiB)
    payload[position] = 0xFF
    data = frame(OP_TEXT, bytes(payload))
    header = len(data) - MiB
    events = conn.receive_data(data[: header + position + 1])
    assert conn.buffered == 0
    assert_failed(conn, events, 1007)


def test_8_1_invalid_utf8_in_a_partly_received_continuation_fails_before_the_rest() -> None:
    conn = server(max_message_size=4 * MiB)
    assert conn.receive_data(frame(OP_TEXT, b"start ", fin=False)) == []
    data = frame(OP_CONT, b"b" * 1000 + b"\xc3\x28" + b"c" * MiB)
    assert_failed(conn, conn.receive_data(data[:1200]), 1007)


def test_8_1_invalid_utf8_partly_received_byte_by_byte() -> None:
    conn = server()
    data = frame(OP_TEXT, "ünïcode ".encode() * 20 + b"\xe2\x82\x28" + b"x" * 1000)
    events: list[Any] = []
    fed = 0
    while not events:
        events = conn.receive_data(data[fed : fed + 1])
        fed += 1
    # Fails on the byte that cannot continue the sequence (header 4 + mask 4 + 9*20 + 3).
    assert fed == 8 + len("ünïcode ".encode()) * 20 + 3
    assert_failed(conn, events, 1007)


@pytest.mark.parametrize("fragmented", [False, True])
def test_8_1_message_ending_inside_a_sequence_fails_1007(fragmented: bool) -> None:
    conn = server()
    if fragmented:
        data = frame(OP_TEXT, b"euro: ", fin=False) + frame(OP_CONT, b"\xe2\x82")
    else:
        data = frame(OP_TEXT, b"euro: \xe2\x82")
    assert_failed(conn, conn.receive_data(data), 1007)


def test_8_1_truncated_sequence_then_new_message_is_not_spliced() -> None:
    # A partial sequence at the end of one text message must not be completed by the next.
    conn = server()
    data = frame(OP_TEXT, b"\xe2", fin=False) + frame(OP_CONT, b"\x82")
    data += frame(OP_TEXT, b"\xac")
    assert_failed(conn, conn.receive_data(data), 1007)


@pytest.mark.parametrize("char", ["é", "€", "𝄞", "\U0010ffff"])
def test_8_1_multibyte_characters_split_across_fragments_are_accepted(char: str) -> None:
    raw = ("a" + char + char).encode()
    # Every way of cutting the message into three fragments.
    for i in range(len(raw) + 1):
        for j in range(i, len(raw) + 1):
            conn = server()
            data = (
                frame(OP_TEXT, raw[:i], fin=False)
                + frame(OP_CONT, raw[i:j], fin=False)
                + frame(OP_CONT, raw[j:])
            )
            assert conn.receive_data(data) == [("text", "a" + char + char)], (i, j)


def test_8_1_multibyte_characters_split_across_reads_are_accepted() -> None:
    text = "aé€𝄞" * 5000
    raw = text.encode()
    for data in (
        frame(OP_TEXT, raw),
        frame(OP_TEXT, raw[:9999], fin=False) + frame(OP_CONT, raw[9999:]),
    ):
        rng = random.Random(len(data))
        for _ in range(5):
            cuts = sorted(rng.sample(range(len(data)), 40))
            assert feed_in_pieces(server(), data, cuts) == [("text", text)]
        # One byte at a time across the whole first frame header and some payload.
        conn = server()
        events = []
        for i in range(3000):
            events += conn.receive_data(data[i : i + 1])
        events += conn.receive_data(data[3000:])
        assert events == [("text", text)]


@settings(deadline=None, max_examples=60)
@given(
    text=st.text(max_size=300),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
    reads=st.lists(st.integers(0, 2000), max_size=6),
)
def test_8_1_any_text_in_any_fragments_and_reads(
    text: str, cuts: list[int], reads: list[int]
) -> None:
    stream, expected = build_stream([("text", text, cuts)])
    conn = server()
    assert feed_in_pieces(conn, stream, [r % (len(stream) + 1) for r in reads]) == expected


@settings(deadline=None, max_examples=200)
@given(raw=st.binary(max_size=40), cut=st.integers(0, 40), read=st.integers(0, 60))
def test_8_1_arbitrary_bytes_are_judged_like_strict_decode(raw: bytes, cut: int, read: int) -> None:
    try:
        expected = raw.decode("utf-8")
    except UnicodeDecodeError:
        expected = None
    cut = min(cut, len(raw))
    data = frame(OP_TEXT, raw[:cut], fin=False) + frame(OP_CONT, raw[cut:])
    conn = server()
    events = feed_in_pieces(conn, data, [min(read, len(data))])
    if expected is None:
        assert_failed(conn, events, 1007)
    else:
        assert events == [("text", expected)]


# --- RFC 7692 permessage-deflate through the Connection --------------------------------------


def deflate_pair(**params: Any) -> tuple[Connection, Deflater, Inflater]:
    """A server with permessage-deflate on, and the client's compressor and decompressor."""
    p = DeflateParams(**params)
    conn = server()
    conn.inflater = p.server_inflater()
    conn.deflater = p.server_deflater()
    return conn, p.client_deflater(), p.client_inflater()


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
def test_7692_6_1_compressed_single_frame(opcode: int) -> None:
    conn, deflater, _ = deflate_pair()
    text = "compress me, compress me, compress me ✓" * 10
    payload = deflater.compress(text.encode())
    assert len(payload) < len(text.encode())
    events = conn.receive_data(frame(opcode, payload, rsv1=True))
    assert events == [("text", text)] if opcode == OP_TEXT else [("binary", text.encode())]


def test_7692_6_1_compressed_fragmented_message() -> None:
    conn, deflater, _ = deflate_pair()
    text = "".join(f"line {i}: héllo\n" for i in range(2000))
    payload = deflater.compress(text.encode())
    pieces = [payload[i : i + 100] for i in range(0, len(payload), 100)]
    data = frame(OP_TEXT, pieces[0], fin=False, rsv1=True)
    data += b"".join(frame(OP_CONT, p, fin=False) for p in pieces[1:-1])
    data += frame(OP_PING, b"in between")
    data += frame(OP_CONT, pieces[-1])
    assert conn.receive_data(data) == [("ping", b"in between"), ("text", text)]


def test_7692_context_takeover_across_messages() -> None:
    conn, deflater, _ = deflate_pair()
    messages = [f"message {i} " * 20 for i in range(20)]
    data = b"".join(frame(OP_TEXT, deflater.compress(m.encode()), rsv1=True) for m in messages)
    assert feed_in_pieces(conn, data, list(range(0, len(data), 7))) == [
        ("text", m) for m in messages
    ]


def test_7692_uncompressed_messages_are_still_accepted() -> None:
    conn, _, _ = deflate_pair()
    assert conn.receive_data(frame(OP_TEXT, b"plain")) == [("text", "plain")]


def test_7692_6_1_rsv1_on_a_continuation_frame_fails_1002() -> None:
    conn, deflater, _ = deflate_pair()
    payload = deflater.compress(b"x" * 100)
    data = frame(OP_BINARY, payload[:3], fin=False, rsv1=True)
    data += frame(OP_CONT, payload[3:], rsv1=True)
    assert_failed(conn, conn.receive_data(data), 1002)


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
def test_7692_6_1_rsv1_on_a_control_frame_fails_1002(opcode: int) -> None:
    conn, _, _ = deflate_pair()
    assert_failed(conn, conn.receive_data(frame(opcode, b"", rsv1=True)), 1002)


@pytest.mark.parametrize("fragmented", [False, True])
def test_7692_deflate_bomb_fails_1009(fragmented: bool) -> None:
    conn, _, _ = deflate_pair()
    conn.max_message_size = MiB
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = c.compress(b"\x00" * (64 * MiB)) + c.flush(zlib.Z_SYNC_FLUSH)
    bomb = bomb[:-4]
    assert len(bomb) < MiB // 8
    if fragmented:
        data = frame(OP_BINARY, bomb[:10], fin=False, rsv1=True) + frame(OP_CONT, bomb[10:])
    else:
        data = frame(OP_BINARY, bomb, rsv1=True)
    assert_failed(conn, conn.receive_data(data), 1009)


def test_7692_inflated_message_of_exactly_max_size_is_accepted() -> None:
    conn, deflater, _ = deflate_pair()
    conn.max_message_size = 100000
    assert conn.receive_data(frame(OP_BINARY, deflater.compress(b"\x01" * 100000), rsv1=True)) == [
        ("binary", b"\x01" * 100000)
    ]


def test_7692_corrupt_compressed_data_fails() -> None:
    conn, _, _ = deflate_pair()
    assert_failed(conn, conn.receive_data(frame(OP_BINARY, b"\xff\xff\xff\xff", rsv1=True)), 1007)


@pytest.mark.parametrize("fragmented", [False, True])
def test_7692_compressed_text_with_invalid_utf8_fails_1007(fragmented: bool) -> None:
    conn, deflater, _ = deflate_pair()
    payload = deflater.compress(b"valid then \xed\xa0\x80")
    if fragmented:
        data = frame(OP_TEXT, payload[:2], fin=False, rsv1=True) + frame(OP_CONT, payload[2:])
    else:
        data = frame(OP_TEXT, payload, rsv1=True)
    assert_failed(conn, conn.receive_data(data), 1007)


def test_7692_send_text_produces_rsv1_frames_a_client_inflater_decodes() -> None:
    conn, _, inflater = deflate_pair()
    unique = os.urandom(300).hex()
    messages = [unique, "", "x", unique + "é"]
    for m in messages:
        assert conn.send_text(m) == SEND_OK
    conn.send_binary(b"\x00" * 10000)
    sent = read_frames(conn.data_to_send())
    assert all(s.rsv == 4 and s.fin and s.key is None for s in sent)
    assert [s.opcode for s in sent] == [OP_TEXT] * 4 + [OP_BINARY]
    got = [inflater.decompress(s.payload, MiB) for s in sent]
    assert got == [m.encode() for m in messages] + [b"\x00" * 10000]
    # Context takeover: the repeated message compresses to much less than the first.
    assert len(sent[3].payload) < len(sent[0].payload) // 2


def test_7692_no_context_takeover_frames_decode_on_their_own() -> None:
    conn, _, _ = deflate_pair(server_no_context_takeover=True)
    for _ in range(3):
        conn.send_text("same message " * 10)
    sent = read_frames(conn.data_to_send())
    assert len({s.payload for s in sent}) == 1
    fresh = Inflater(no_context_takeover=True)
    assert fresh.decompress(sent[2].payload, MiB) == b"same message " * 10


def test_7692_compress_min_size_sends_small_messages_plain() -> None:
    conn, _, inflater = deflate_pair()
    conn.compress_min_size = 100
    conn.send_text("short")
    conn.send_text("long " * 40)
    short, long = read_frames(conn.data_to_send())
    assert (short.rsv, short.payload) == (0, b"short")
    assert long.rsv == 4 and inflater.decompress(long.payload, MiB) == b"long " * 40


def test_7692_client_connection_sends_masked_compressed_frames() -> None:
    p = DeflateParams()
    conn = client()
    conn.deflater = p.client_deflater()
    conn.inflater = p.client_inflater()
    conn.send_text("to the server " * 10)
    (sent,) = read_frames(conn.data_to_send())
    assert sent.key is not None and sent.rsv == 4
    assert p.server_inflater().decompress(sent.payload, MiB) == b"to the server " * 10
    reply = p.server_deflater().compress(b"to the client")
    assert conn.receive_data(frame(OP_TEXT, reply, rsv1=True, mask=False)) == [
        ("text", "to the client")
    ]


# --- the message budget (melody's own: a bounded receive queue) --------------------------------
# At budget 0 the parser stops before a whole frame that would complete a data message, and
# before everything behind it; raising the budget and calling receive_data(b"") resumes.


def test_budget_0_holds_a_completing_frame_and_the_ping_and_close_behind_it() -> None:
    conn = client()
    conn.message_budget = 0
    data = (frame(OP_TEXT, b"first", mask=False) + frame(OP_PING, b"p", mask=False)
            + close_frame(1000, mask=False))
    assert conn.receive_data(data) == []
    assert conn.stalled and conn.buffered == len(data)
    assert conn.data_to_send() == b""  # no pong, no close reply: nothing behind was parsed
    assert conn.state == STATE_OPEN
    # Parsing again with no room changes nothing.
    assert conn.receive_data(b"") == []
    assert conn.stalled and conn.buffered == len(data)
    conn.message_budget = 1
    assert conn.receive_data(b"") == [("text", "first"), ("ping", b"p"), ("close", 1000, "")]
    assert not conn.stalled and conn.buffered == 0 and conn.message_budget == 0
    sent = read_frames(conn.data_to_send())
    assert [(s.opcode, s.payload) for s in sent] == [
        (OP_PONG, b"p"), (OP_CLOSE, struct.pack("!H", 1000))]


def test_budget_counts_down_and_resumes_in_order() -> None:
    conn = server()
    data = b"".join(frame(OP_TEXT if i % 2 else OP_BINARY, str(i).encode()) for i in range(7))
    expected = [("text", str(i)) if i % 2 else ("binary", str(i).encode()) for i in range(7)]
    conn.message_budget = 2
    assert conn.receive_data(data) == expected[:2]
    assert conn.message_budget == 0 and conn.stalled
    assert conn.buffered == len(data) - len(frame(OP_BINARY, b"0")) * 2
    conn.message_budget = 3
    assert conn.receive_data(b"") == expected[2:5]
    assert conn.message_budget == 0 and conn.stalled
    conn.message_budget = 10
    assert conn.receive_data(b"") == expected[5:]
    assert conn.message_budget == 8 and not conn.stalled and conn.buffered == 0
    # Unlimited stays unlimited.
    conn.message_budget = -1
    assert conn.receive_data(data) == expected
    assert conn.message_budget == -1 and not conn.stalled


def test_budget_stops_before_the_message_there_is_no_room_for_wherever_reads_split() -> None:
    # Whatever the split between two reads and the budget, the messages that complete (FIN on
    # a data or continuation frame; not a ping, not a first fragment) are counted, and the
    # parser stops right before the first one there is no room for.
    frames = [
        (frame(OP_TEXT, b"t" * 5), True),
        (frame(OP_PING, b"abc"), False),               # a ping between messages
        (frame(OP_BINARY, b"f" * 200, fin=False), False),  # first fragment: 16-bit length
        (frame(OP_CONT, b"l" * 70000), True),          # last fragment: 64-bit length
        (frame(OP_BINARY, b""), True),                 # empty
        (frame(OP_TEXT, b"x" * 125), True),
    ]
    data = b"".join(f for f, _ in frames)
    expected = server().receive_data(data)
    starts = list(itertools.accumulate((len(f) for f, _ in frames), initial=0))
    held_at = [start for start, (_, completes) in zip(starts, frames) if completes]
    splits = sorted({*range(0, 300), *range(70200, 70260), len(data) - 1, len(data)})
    for room in range(len(held_at) + 1):
        for split in splits:
            conn = server()
            conn.message_budget = room
            events = conn.receive_data(data[:split]) + conn.receive_data(data[split:])
            if room < len(held_at):
                assert conn.stalled and conn.buffered == len(data) - held_at[room], (room, split)
                assert events == server().receive_data(data[:held_at[room]]), (room, split)
            else:
                assert not conn.stalled and events == expected, (room, split)
            assert conn.message_budget == (0 if room < len(held_at) else room - len(held_at))
            conn.message_budget = -1
            assert events + conn.receive_data(b"") == expected


def test_budget_0_parses_non_final_fragments_and_holds_the_final_one() -> None:
    conn = client()
    conn.message_budget = 0
    last = frame(OP_CONT, b"ef", mask=False)
    after = frame(OP_BINARY, b"x", mask=False)
    data = (frame(OP_TEXT, b"ab", fin=False, mask=False) + frame(OP_PING, b"p", mask=False)
            + frame(OP_CONT, b"cd", fin=False, mask=False) + last + after)
    assert conn.receive_data(data) == [("ping", b"p")]
    assert conn.stalled and conn.buffered == len(last) + len(after)
    conn.message_budget = 1
    assert conn.receive_data(b"") == [("text", "abcdef")]
    assert conn.stalled and conn.buffered == len(after)
    conn.message_budget = 5
    assert conn.receive_data(b"") == [("binary", b"x")]
    assert not conn.stalled and conn.message_budget == 4


def test_budget_0_holds_only_whole_frames() -> None:
    # A frame that has not all arrived is not held (it is not parsed yet anyway): the stall
    # comes with its last byte, and the bytes behind it are not parsed either.
    conn = client()
    conn.message_budget = 0
    data = frame(OP_BINARY, b"x" * 300, mask=False) + frame(OP_PING, b"p", mask=False)
    assert conn.receive_data(data[:100]) == []
    assert not conn.stalled
    assert conn.receive_data(data[100:]) == []
    assert conn.stalled and conn.buffered == len(data)
    conn.message_budget = 1
    assert conn.receive_data(b"") == [("binary", b"x" * 300), ("ping", b"p")]


def test_budget_0_still_judges_the_held_frame_header() -> None:
    conn = client(max_message_size=100)
    conn.message_budget = 0
    assert_failed(conn, conn.receive_data(frame(OP_TEXT, b"x" * 101, mask=False)), 1009)
    conn = client()
    conn.message_budget = 0
    assert_failed(conn, conn.receive_data(frame(OP_TEXT, b"x")), 1002)  # masked to a client


def test_budget_holds_nothing_once_closing() -> None:
    # After our close frame, data is no longer delivered (section 1.4), so nothing waits for
    # room: the peer's close reply behind its last messages is read at budget 0.
    conn = client()
    conn.message_budget = 0
    data = frame(OP_TEXT, b"late", mask=False) + close_frame(1000, mask=False)
    assert conn.receive_data(data) == []
    assert conn.stalled
    conn.send_close()
    assert conn.receive_data(b"") == [("close", 1000, "")]
    assert not conn.stalled and conn.state == STATE_CLOSED and conn.message_budget == 0


def test_budget_0_buffered_protocol_path() -> None:
    stream = b"".join(frame(OP_BINARY, bytes([n % 256]) * n) for n in (5, 300, 70000, 0, 20))
    expected = server().receive_data(stream)
    conn = server()
    conn.message_budget = 0
    assert feed_buffered(conn, stream, itertools.repeat(4096)) == []
    assert conn.stalled and conn.buffered == len(stream)
    got = []
    while conn.stalled:
        conn.message_budget = 1
        got += conn.receive_data(b"")
    assert got == expected and conn.buffered == 0


@pytest.mark.parametrize("fragmented", [False, True])
def test_8_1_budget_0_fails_fast_on_invalid_utf8_byte_by_byte(fragmented: bool) -> None:
    # The text of a frame held for want of budget is still checked as it arrives.
    conn = server()
    conn.message_budget = 0
    head = frame(OP_TEXT, b"start ", fin=False) if fragmented else b""
    assert conn.receive_data(head) == []
    body = "ünïcode ".encode() * 20
    data = frame(OP_CONT if fragmented else OP_TEXT, body + b"\xe2\x82\x28" + b"x" * 50)
    events: list[Any] = []
    fed = 0
    while not events:
        events = conn.receive_data(data[fed : fed + 1])
        fed += 1
    assert fed == 8 + len(body) + 3
    assert_failed(conn, events, 1007)


@pytest.mark.parametrize("fragmented", [False, True])
def test_8_1_budget_0_checks_a_held_text_frame_that_arrives_whole(fragmented: bool) -> None:
    conn = server()
    conn.message_budget = 0
    head = frame(OP_TEXT, b"start ", fin=False) if fragmented else b""
    data = head + frame(OP_CONT if fragmented else OP_TEXT, b"abc \xc3\x28 def")
    assert_failed(conn, conn.receive_data(data), 1007)


@pytest.mark.parametrize("fragmented", [False, True])
def test_8_1_budget_0_masked_text_byte_by_byte_is_unmasked_once(fragmented: bool) -> None:
    text = "ünïcode 𝄞 " * 30
    raw = text.encode()
    data = (frame(OP_TEXT, raw[:7], fin=False) + frame(OP_CONT, raw[7:]) if fragmented
            else frame(OP_TEXT, raw))
    data += frame(OP_PING, b"behind")
    conn = server()
    conn.message_budget = 0
    for i in range(len(data)):
        assert conn.receive_data(data[i : i + 1]) == []
    assert conn.stalled
    # Held again, then resumed: the payload was unmasked as it came, and only once.
    assert conn.receive_data(b"") == []
    conn.message_budget = 1
    assert conn.receive_data(b"") == [("text", text), ("ping", b"behind")]
    assert conn.buffered == 0


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(_message, min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=12),
    budgets=st.lists(st.integers(-1, 3), min_size=1, max_size=12),
    buffered=st.booleans(),
)
def test_budget_any_schedule_gives_the_same_events(
    messages: list[tuple[str, Any, list[int]]], cuts: list[int], budgets: list[int],
    buffered: bool,
) -> None:
    # Whatever the budget at each read, the data events never exceed it, and once the budget
    # is lifted the events are those of the unbudgeted connection, in the same order.
    stream, expected = build_stream(messages)
    conn = server()
    events: list[Any] = []
    last = 0
    for i, cut in enumerate([*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]):
        budget = budgets[i % len(budgets)]
        conn.message_budget = budget
        if buffered:
            got = feed_buffered(conn, stream[last:cut], itertools.repeat(4096))
        else:
            got = conn.receive_data(stream[last:cut])
        last = cut
        delivered = sum(1 for e in got if e[0] in ("text", "binary"))
        if budget >= 0:
            assert delivered <= budget
            assert conn.message_budget == budget - delivered
        if conn.stalled:
            assert conn.message_budget == 0 and conn.buffered > 0
        events += got
    conn.message_budget = -1
    events += conn.receive_data(b"")
    assert events == expected
    assert not conn.stalled and conn.buffered == 0
