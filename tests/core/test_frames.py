"""RFC 6455 section 5.2 (base framing) and 5.5.1 / 7.4 (close payloads) for
``melody._core.frames``.

The oracle is a literal reading of the section 5.2 diagram written here in Python: a header
parser that knows nothing of melody, so that the encoder is not checked against itself.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from melody._core.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    encode_close,
    encode_frame,
    is_valid_close_code,
    parse_close,
)

MiB = 1 << 20


class Parsed(NamedTuple):
    fin: bool
    rsv: int  # RSV1..3 as the 3 bits 0b(rsv1)(rsv2)(rsv3)
    opcode: int
    key: bytes | None
    payload: bytes
    header_len: int


def unmask(data: bytes, key: bytes) -> bytes:
    n = len(data)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def parse_one(frame: bytes) -> Parsed:
    """Section 5.2 read literally; asserts the frame is exactly one frame long."""
    b0, b1 = frame[0], frame[1]
    length = b1 & 0x7F
    pos = 2
    if length == 126:
        (length,) = struct.unpack("!H", frame[2:4])
        pos = 4
    elif length == 127:
        (length,) = struct.unpack("!Q", frame[2:10])
        pos = 10
    key = None
    if b1 & 0x80:
        key = frame[pos : pos + 4]
        pos += 4
    payload = frame[pos:]
    assert len(payload) == length, "frame length disagrees with its header"
    if key is not None:
        payload = unmask(payload, key)
    return Parsed(bool(b0 & 0x80), (b0 >> 4) & 0x7, b0 & 0x0F, key, payload, pos)


# --- 5.2 Base framing protocol ---------------------------------------------------------------


def test_5_2_opcode_values() -> None:
    # Section 11.8: the registered opcodes.
    assert (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG) == (0, 1, 2, 8, 9, 10)


@pytest.mark.parametrize(
    ("length", "header_len", "len7"),
    [
        (0, 2, 0),
        (1, 2, 1),
        (125, 2, 125),
        (126, 4, 126),
        (127, 4, 126),
        (65535, 4, 126),
        (65536, 10, 127),
        (3 * MiB + 7, 10, 127),
    ],
)
def test_5_2_payload_length_uses_minimal_encoding(length: int, header_len: int, len7: int) -> None:
    # "the minimal number of bytes MUST be used to encode the length".
    payload = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    frame = encode_frame(OP_BINARY, payload)
    assert len(frame) == header_len + length
    assert frame[1] == len7  # mask bit clear: a server frame
    parsed = parse_one(frame)
    assert parsed.header_len == header_len
    assert parsed.payload == payload
    assert (parsed.fin, parsed.rsv, parsed.opcode, parsed.key) == (True, 0, OP_BINARY, None)


@pytest.mark.parametrize("opcode", range(16))
@pytest.mark.parametrize("fin", [True, False])
@pytest.mark.parametrize("rsv1", [True, False])
def test_5_2_first_byte_carries_fin_rsv1_opcode(opcode: int, fin: bool, rsv1: bool) -> None:
    frame = encode_frame(opcode, b"abc", fin=fin, rsv1=rsv1)
    assert frame[0] == (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    assert parse_one(frame).payload == b"abc"


@pytest.mark.parametrize("opcode", [-1, 16, 255, 1 << 20])
def test_5_2_opcode_outside_4_bits_raises(opcode: int) -> None:
    with pytest.raises(ValueError, match="opcode"):
        encode_frame(opcode, b"")


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_5_2_payload_is_any_bytes_like(kind: type) -> None:
    assert encode_frame(OP_TEXT, kind(b"hi")) == b"\x81\x02hi"


def test_5_2_payload_that_is_not_bytes_like_raises() -> None:
    with pytest.raises(TypeError):
        encode_frame(OP_TEXT, "text")  # type: ignore[arg-type]


def test_5_2_payload_is_copied() -> None:
    data = bytearray(b"abcd")
    frame = encode_frame(OP_BINARY, data)
    data[:] = b"wxyz"
    assert frame == b"\x82\x04abcd"


@settings(deadline=None)
@given(
    opcode=st.integers(0, 15),
    payload=st.one_of(st.binary(max_size=300), st.integers(65530, 65540).map(bytes)),
    fin=st.booleans(),
    rsv1=st.booleans(),
    mask=st.booleans(),
)
def test_5_2_frames_parse_back(
    opcode: int, payload: bytes, fin: bool, rsv1: bool, mask: bool
) -> None:
    parsed = parse_one(encode_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=mask))
    assert parsed.payload == payload
    assert (parsed.fin, parsed.rsv, parsed.opcode) == (fin, 4 if rsv1 else 0, opcode)
    assert (parsed.key is not None) == mask


# --- 5.3 Client-to-server masking ------------------------------------------------------------


def test_5_3_masked_frame_sets_mask_bit_and_masks_payload() -> None:
    payload = b"Hello" * 100
    frame = encode_frame(OP_TEXT, payload, mask=True)
    assert frame[1] & 0x80
    parsed = parse_one(frame)
    assert parsed.key is not None and len(parsed.key) == 4
    assert parsed.payload == payload
    # The bytes on the wire are not the payload (with overwhelming probability).
    assert frame[parsed.header_len :] != payload


def test_5_3_masking_keys_are_unpredictable() -> None:
    # "The masking key MUST be derived from a strong source of entropy": fresh per frame.
    # 3000 frames cross several refills of the key pool (1024 keys each).
    keys = [parse_one(encode_frame(OP_BINARY, b"x", mask=True)).key for _ in range(3000)]
    assert len(set(keys[:100])) >= 90
    assert len(set(keys)) >= 2990
    # Not a counter or a constant byte pattern either.
    assert len({k[0] for k in keys if k is not None}) > 200


def test_5_3_masked_empty_and_large_frames() -> None:
    for n in (0, 125, 126, 65535, 65536):
        parsed = parse_one(encode_frame(OP_BINARY, b"\xaa" * n, mask=True))
        assert parsed.payload == b"\xaa" * n
        assert parsed.header_len == {0: 6, 125: 6, 126: 8, 65535: 8, 65536: 14}[n]


# --- 5.5.1 Close payloads --------------------------------------------------------------------


def test_5_5_1_close_frame_carries_code_then_reason() -> None:
    frame = encode_close(1001, "going away")
    assert frame == b"\x88\x0c\x03\xe9going away"


def test_5_5_1_close_code_zero_sends_empty_payload() -> None:
    assert encode_close(0) == b"\x88\x00"
    assert encode_close(0, "ignored without a code") == b"\x88\x00"


def test_5_5_1_close_default_is_1000() -> None:
    assert encode_close() == b"\x88\x02\x03\xe8"


def test_5_5_1_close_reason_is_cut_to_125_bytes_on_a_code_point() -> None:
    # 2-byte characters: 123 bytes would split one, so 122 are kept.
    parsed = parse_one(encode_close(1000, "é" * 100))
    assert len(parsed.payload) == 2 + 122
    assert parsed.payload[2:].decode("utf-8") == "é" * 61
    # 4-byte characters: 120 bytes.
    parsed = parse_one(encode_close(1000, "\U0001f600" * 40))
    assert parsed.payload[2:].decode("utf-8") == "\U0001f600" * 30
    # ASCII fills the 123 bytes exactly.
    assert len(parse_one(encode_close(1000, "a" * 500)).payload) == 125


def test_5_5_1_close_reason_may_be_bytes() -> None:
    assert encode_close(1000, b"raw") == b"\x88\x05\x03\xe8raw"


def test_5_5_1_masked_close() -> None:
    parsed = parse_one(encode_close(4000, "x", mask=True))
    assert parsed.key is not None
    assert parsed.payload == b"\x0f\xa0x"


@pytest.mark.parametrize("code", [-1, 65536, 1 << 20])
def test_5_5_1_close_code_outside_16_bits_raises(code: int) -> None:
    with pytest.raises(ValueError):
        encode_close(code)


def test_5_5_1_parse_empty_close_is_1005() -> None:
    assert parse_close(b"") == (1005, "")


def test_5_5_1_parse_one_byte_close_raises() -> None:
    with pytest.raises(ValueError):
        parse_close(b"\x03")


@pytest.mark.parametrize(
    "code",
    [
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
    ],
)
def test_7_4_parse_valid_codes(code: int) -> None:
    assert parse_close(struct.pack("!H", code) + "ok ✓".encode()) == (code, "ok ✓")
    assert parse_close(bytearray(struct.pack("!H", code))) == (code, "")
    assert is_valid_close_code(code)


@pytest.mark.parametrize("code", [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_7_4_1_parse_invalid_codes_raises(code: int) -> None:
    assert not is_valid_close_code(code)
    with pytest.raises(ValueError):
        parse_close(struct.pack("!H", code))


def test_8_1_parse_close_reason_invalid_utf8_raises() -> None:
    with pytest.raises(UnicodeDecodeError):
        parse_close(b"\x03\xe8\xff")
    with pytest.raises(ValueError):
        parse_close(b"\x03\xe8\xed\xa0\x80")  # an encoded surrogate


@given(code=st.integers(0, 65535), reason=st.text(max_size=200))
def test_7_4_encode_then_parse_close(code: int, reason: str) -> None:
    parsed = parse_one(encode_close(code, reason))
    assert parsed.opcode == OP_CLOSE and parsed.fin and len(parsed.payload) <= 125
    if code == 0:
        assert parse_close(parsed.payload) == (1005, "")
    elif is_valid_close_code(code):
        got_code, got_reason = parse_close(parsed.payload)
        assert got_code == code
        assert reason.encode("utf-8", "surrogatepass").startswith(got_reason.encode())
    else:
        with pytest.raises(ValueError):
            parse_close(parsed.payload)


@given(st.integers(0, 65535))
def test_7_4_valid_close_codes_are_exactly_the_sendable_ones(code: int) -> None:
    sendable = code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999
    assert is_valid_close_code(code) is sendable
