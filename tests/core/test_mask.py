"""RFC 6455 section 5.3 (client-to-server masking) for ``melody._core.mask``."""

from __future__ import annotations

import os
from collections.abc import Callable
from itertools import pairwise
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from melody._core.mask import mask, mask_into

if TYPE_CHECKING:
    from typing_extensions import Buffer

keys = st.binary(min_size=4, max_size=4)
offsets = st.integers(min_value=0, max_value=2**40)


def reference(data: bytes, key: bytes, offset: int = 0) -> bytes:
    """Section 5.3 literally: octet i of the payload is XOR-ed with octet (i MOD 4) of the key."""
    return bytes(b ^ key[(offset + i) % 4] for i, b in enumerate(data))


def fast_reference(data: bytes, key: bytes) -> bytes:
    """The same as ``reference`` at offset 0, as one big-integer XOR (for megabyte inputs)."""
    n = len(data)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def test_5_7_single_frame_masked_text_hello() -> None:
    # RFC 6455 section 5.7: 0x81 0x85 0x37 0xfa 0x21 0x3d 0x7f 0x9f 0x4d 0x51 0x58 is a masked
    # text frame whose payload is "Hello".
    key = bytes.fromhex("37fa213d")
    masked = bytes.fromhex("7f9f4d5158")
    assert mask(masked, key) == b"Hello"
    assert mask(b"Hello", key) == masked
    buf = bytearray(masked)
    mask_into(buf, key)
    assert buf == b"Hello"


def test_5_3_every_length_and_offset_matches_reference() -> None:
    # Every length through the 8-byte bulk, the tail, and their boundaries, at every phase.
    key = bytes.fromhex("a1b2c3d4")
    data = os.urandom(100)
    for length in range(101):
        chunk = data[:length]
        assert mask(chunk, key) == reference(chunk, key)
        for offset in range(9):
            buf = bytearray(chunk)
            mask_into(buf, key, offset)
            assert buf == reference(chunk, key, offset), (length, offset)


@settings(deadline=None)
@given(data=st.binary(max_size=100), key=keys, offset=offsets)
def test_5_3_matches_reference(data: bytes, key: bytes, offset: int) -> None:
    assert mask(data, key) == reference(data, key)
    buf = bytearray(data)
    mask_into(buf, key, offset)
    assert buf == reference(data, key, offset)


@settings(deadline=None)
@given(
    data=st.binary(max_size=100),
    key=keys,
    offset=offsets,
    before=st.integers(0, 9),
    after=st.integers(0, 9),
)
def test_5_3_touches_nothing_outside_the_buffer(
    data: bytes, key: bytes, offset: int, before: int, after: int
) -> None:
    # A slice of a larger buffer: the bytes either side must survive (no overrun in the tail).
    backing = bytearray(b"\xee" * before + data + b"\x77" * after)
    mask_into(memoryview(backing)[before : before + len(data)], key, offset)
    assert backing[:before] == b"\xee" * before
    assert backing[before + len(data) :] == b"\x77" * after
    assert backing[before : before + len(data)] == reference(data, key, offset)


@settings(deadline=None)
@given(data=st.binary(max_size=300), key=keys, offset=offsets)
def test_5_3_masking_twice_is_identity(data: bytes, key: bytes, offset: int) -> None:
    assert mask(mask(data, key), key) == data
    buf = bytearray(data)
    mask_into(buf, key, offset)
    mask_into(buf, key, offset)
    assert buf == data


@settings(deadline=None)
@given(data=st.data(), payload=st.binary(max_size=300), key=keys)
def test_5_3_unmasking_in_pieces_equals_unmasking_whole(
    data: st.DataObject, payload: bytes, key: bytes
) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(payload)), max_size=10)))
    bounds = [0, *cuts, len(payload)]
    buf = bytearray(payload)
    view = memoryview(buf)
    for start, end in pairwise(bounds):
        # The offset is how many payload bytes were unmasked before this piece.
        mask_into(view[start:end], key, start)
    assert buf == mask(payload, key)


@pytest.mark.parametrize("extra", [0, 1, 3, 7])
@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_5_3_one_mebibyte(extra: int, offset: int) -> None:
    # Large enough to take the path that releases the GIL.
    key = bytes.fromhex("0badf00d")
    payload = os.urandom((1 << 20) + extra)
    rotated = key[offset:] + key[:offset]
    expected = fast_reference(payload, rotated)
    assert mask(payload, rotated) == expected
    buf = bytearray(payload)
    mask_into(buf, key, offset)
    assert buf == expected
    mask_into(buf, key, offset)
    assert buf == payload


@pytest.mark.parametrize(
    "key", [b"", b"\x01", b"\x01\x02\x03", b"\x01\x02\x03\x04\x05", b"12345678"]
)
def test_5_3_key_must_be_four_bytes(key: bytes) -> None:
    with pytest.raises(ValueError, match="4 bytes"):
        mask(b"payload", key)
    buf = bytearray(b"payload")
    with pytest.raises(ValueError, match="4 bytes"):
        mask_into(buf, key)
    assert buf == b"payload"


@pytest.mark.parametrize(
    "make",
    [
        lambda: b"payload",
        lambda: memoryview(b"payload"),
        lambda: memoryview(bytearray(b"payload")).toreadonly(),
    ],
    ids=["bytes", "memoryview-of-bytes", "readonly-memoryview"],
)
def test_mask_into_refuses_read_only_buffers(make: Callable[[], Buffer]) -> None:
    target = make()
    with pytest.raises(TypeError, match="writable"):
        mask_into(target, b"abcd")
    assert bytes(target) == b"payload"


def test_not_bytes_like_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        mask("text", b"abcd")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mask(b"data", "abcd")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mask_into("text", b"abcd")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mask_into(None, b"abcd")  # type: ignore[arg-type]


def test_negative_offset_is_refused() -> None:
    buf = bytearray(b"payload")
    with pytest.raises(ValueError, match="offset"):
        mask_into(buf, b"abcd", -1)
    assert buf == b"payload"


def test_non_contiguous_buffers_are_refused() -> None:
    strided = memoryview(bytearray(range(16)))[::2]
    with pytest.raises(BufferError):
        mask(strided, b"abcd")
    with pytest.raises(BufferError):
        mask_into(strided, b"abcd")


def test_accepts_bytes_like_inputs() -> None:
    key = b"\x01\x02\x03\x04"
    payload = bytes(range(40))
    expected = reference(payload, key)
    assert mask(bytearray(payload), key) == expected
    assert mask(memoryview(payload), bytearray(key)) == expected
    assert mask(memoryview(payload)[5:30], memoryview(key)) == reference(payload[5:30], key)
    # The result is always a new bytes object; the input is untouched.
    source = bytearray(payload)
    out = mask(source, key)
    assert type(out) is bytes
    assert source == payload

    backing = bytearray(payload)
    mask_into(memoryview(backing)[5:30], key, 5)
    assert backing == payload[:5] + expected[5:30] + payload[30:]

    empty = bytearray()
    mask_into(empty, key, 3)
    assert empty == b""
    assert mask(b"", key) == b""
