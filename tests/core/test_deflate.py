"""RFC 7692 (permessage-deflate) for ``melody._core.deflate``: compression and negotiation."""

from __future__ import annotations

import dataclasses
import os
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from melody._core.deflate import Deflater, Inflater
from melody._core.extensions import (
    EXTENSION_NAME,
    DeflateParams,
    accept_response,
    build_offer,
    negotiate,
    parse_extensions,
)

TAIL = b"\x00\x00\xff\xff"
MiB = 1 << 20
NO_LIMIT = sys.maxsize

messages = st.one_of(
    st.binary(max_size=3000),
    # Compressible text, so that matches (and matches into earlier messages) occur.
    st.text(alphabet="ab ,\n", max_size=3000).map(str.encode),
)
window_bits = st.integers(min_value=9, max_value=15)


def py_compress(data: bytes, compressor: zlib._Compress) -> bytes:
    """Section 7.2.1 done with Python's zlib: sync flush, then strip the empty stored block."""
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def py_decompress(payload: bytes, decompressor: zlib._Decompress) -> bytes:
    """Section 7.2.2 done with Python's zlib: append 00 00 ff ff and inflate."""
    out = decompressor.decompress(payload + TAIL)
    assert not decompressor.unconsumed_tail and not decompressor.eof
    return out


# --- 7.2.1 Compression ---------------------------------------------------------------------


def test_7_2_1_sync_flush_tail_stripped() -> None:
    payload = Deflater().compress(b"Hello, Hello, Hello")
    assert not payload.endswith(TAIL)
    # Putting the tail back gives exactly a sync-flushed raw deflate stream.
    assert py_decompress(payload, zlib.decompressobj(-15)) == b"Hello, Hello, Hello"


def test_7_2_1_matches_python_zlib_byte_for_byte() -> None:
    # Same library, same settings: the only difference allowed is the stripped tail.
    data = b"permessage-deflate " * 50
    ours = Deflater(12, False, 6, 8)
    theirs = zlib.compressobj(6, zlib.DEFLATED, -12, 8)
    for _ in range(3):
        assert ours.compress(data) == py_compress(data, theirs)


@pytest.mark.parametrize("bits", range(9, 16))
@pytest.mark.parametrize("no_context_takeover", [False, True])
def test_7_2_1_output_inflates_with_python_zlib(bits: int, no_context_takeover: bool) -> None:
    deflater = Deflater(bits, no_context_takeover)
    inflater = zlib.decompressobj(-bits)
    for i in range(20):
        data = (b"message %d " % i) * (i * 37) + os.urandom(i)
        if no_context_takeover:
            inflater = zlib.decompressobj(-bits)
        assert py_decompress(deflater.compress(data), inflater) == data


def test_7_2_1_context_takeover_refers_to_earlier_messages() -> None:
    data = os.urandom(2000)  # incompressible alone, free the second time round
    deflater = Deflater()
    first, second = deflater.compress(data), deflater.compress(data)
    assert len(first) > len(data) and len(second) < 50


def test_7_2_1_no_context_takeover_compresses_each_message_alone() -> None:
    data = os.urandom(2000)
    deflater = Deflater(no_context_takeover=True)
    first, second = deflater.compress(data), deflater.compress(data)
    # The stream is reset after each message: the same input gives the same bytes, and each
    # payload inflates on a fresh stream.
    assert first == second
    assert py_decompress(second, zlib.decompressobj(-15)) == data


def test_7_2_1_accepts_any_contiguous_buffer() -> None:
    deflater, inflater = Deflater(), Inflater()
    for data in (b"abc", bytearray(b"abc"), memoryview(b"xabcx")[1:4]):
        assert inflater.decompress(deflater.compress(data), 3) == b"abc"
    assert inflater.decompress(bytearray(deflater.compress(b"abc")), 3) == b"abc"
    with pytest.raises(TypeError):
        deflater.compress("abc")  # type: ignore[arg-type]
    with pytest.raises(BufferError):
        deflater.compress(memoryview(b"abcdef")[::2])


@pytest.mark.parametrize("size", [64 * 1024, 3 * MiB + 1])
def test_7_2_1_large_messages_round_trip(size: int) -> None:
    # Sizes at and past the point where the GIL is released, incompressible and compressible,
    # so both the deflateBound guess and the inflate buffer growth are exercised.
    deflater, inflater = Deflater(), Inflater()
    for data in (os.urandom(size), b"z" * size, (b"0123456789abcdef" * (size // 16 + 1))[:size]):
        payload = deflater.compress(data)
        assert inflater.decompress(payload, size) == data
    # The context-takeover stream stays in step with Python's zlib across the big messages.
    python = zlib.decompressobj(-15)
    deflater = Deflater()
    for data in (b"z" * size, os.urandom(size)):
        assert py_decompress(deflater.compress(data), python) == data


def test_7_2_1_threads_compress_with_their_own_objects() -> None:
    # Large messages release the GIL inside zlib; each thread's pair must stay consistent.
    def work(seed: int) -> int:
        deflater, inflater = Deflater(), Inflater()
        for i in range(5):
            data = bytes([seed, i]) * 200_000 + os.urandom(1000)
            assert inflater.decompress(deflater.compress(data), len(data)) == data
        return seed

    with ThreadPoolExecutor(4) as pool:
        # result() re-raises a worker's failure here.
        assert sorted(pool.map(work, range(4))) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window_bits": 8}, "cannot be honoured"),
        ({"window_bits": 16}, "between 9 and 15"),
        ({"window_bits": 0}, "between 9 and 15"),
        ({"level": 10}, "level"),
        ({"level": -2}, "level"),
        ({"mem_level": 0}, "mem_level"),
        ({"mem_level": 10}, "mem_level"),
    ],
)
def test_7_2_1_deflater_rejects_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Deflater(**kwargs)


def test_7_2_1_deflater_attributes() -> None:
    deflater = Deflater(10, True, 1, 5)
    assert (deflater.window_bits, deflater.no_context_takeover) == (10, True)
    assert (deflater.level, deflater.mem_level) == (1, 5)
    assert "window_bits=10" in repr(deflater)
    inflater = Inflater(8, True)
    assert (inflater.window_bits, inflater.no_context_takeover) == (8, True)
    with pytest.raises(ValueError):
        Inflater(7)
    with pytest.raises(ValueError):
        Inflater(16)


# --- 7.2.2 Decompression -------------------------------------------------------------------


@settings(deadline=None)
@given(
    st.lists(messages, min_size=1, max_size=12),
    window_bits,
    st.booleans(),
    st.integers(min_value=0, max_value=9),
)
def test_7_2_2_round_trip_many_messages_one_pair(
    batch: list[bytes], bits: int, no_context_takeover: bool, level: int
) -> None:
    deflater = Deflater(bits, no_context_takeover, level)
    inflater = Inflater(bits, no_context_takeover)
    for data in batch:
        assert inflater.decompress(deflater.compress(data), len(data)) == data


@settings(deadline=None)
@given(st.lists(messages, min_size=1, max_size=12), window_bits, st.booleans())
def test_7_2_2_python_zlib_output_inflates(
    batch: list[bytes], bits: int, no_context_takeover: bool
) -> None:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -bits)
    inflater = Inflater(bits, no_context_takeover)
    for data in batch:
        if no_context_takeover:
            compressor = zlib.compressobj(6, zlib.DEFLATED, -bits)
        assert inflater.decompress(py_compress(data, compressor), NO_LIMIT) == data


@settings(deadline=None)
@given(st.lists(messages, min_size=1, max_size=12), window_bits)
def test_7_2_2_our_output_inflates_with_python_zlib(batch: list[bytes], bits: int) -> None:
    deflater = Deflater(bits)
    decompressor = zlib.decompressobj(-bits)
    for data in batch:
        assert py_decompress(deflater.compress(data), decompressor) == data


def test_7_2_2_window_bits_8_accepts_a_9_bit_stream() -> None:
    # zlib before 1.2.9 compressed with 9 when asked for 8, so an 8-bit inflater takes 9.
    compressor = zlib.compressobj(6, zlib.DEFLATED, -9)
    inflater = Inflater(8)
    data = os.urandom(400) * 3  # matches 400 bytes back: beyond 256, within 512
    assert inflater.decompress(py_compress(data, compressor), NO_LIMIT) == data


def test_7_2_2_max_size_is_inclusive() -> None:
    data = b"exactly this long " * 1000
    payload = Deflater(no_context_takeover=True).compress(data)
    assert Inflater().decompress(payload, len(data)) == data
    with pytest.raises(OverflowError):
        Inflater().decompress(payload, len(data) - 1)
    assert Inflater().decompress(b"\x00", 0) == b""
    with pytest.raises(OverflowError):
        Inflater().decompress(Deflater().compress(b"x"), 0)
    with pytest.raises(ValueError, match="max_size"):
        Inflater().decompress(payload, -1)


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff\xff\xff",  # reserved block type 11
        b"\x07",  # reserved block type, again
        b"\x00\x05\x00\x00\x00Hello",  # stored block whose NLEN is not ~LEN
        bytes.fromhex("f248cdc9c907"),  # "Hello" with its last byte cut off
        bytes.fromhex("f248cdc9c90700") + TAIL,  # tail not stripped by the sender
        bytes.fromhex("f200110000"),  # refers 5 bytes back into an empty window
    ],
)
def test_7_2_2_corrupt_data_raises_value_error(payload: bytes) -> None:
    with pytest.raises(ValueError, match="invalid compressed data"):
        Inflater().decompress(payload, NO_LIMIT)


def test_7_2_2_inflater_is_reset_after_an_error() -> None:
    inflater = Inflater()
    with pytest.raises(ValueError):
        inflater.decompress(b"\xff\xff", NO_LIMIT)
    # A message that needs no earlier context decodes on the fresh stream.
    payload = Deflater().compress(b"after the error")
    assert inflater.decompress(payload, NO_LIMIT) == b"after the error"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int | None:
    """VmHWM after resetting it (Linux clear_refs), or None where the reset is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_7_2_2_deflate_bomb_costs_at_most_max_size() -> None:
    # 100 MiB of zeros, compressed a chunk at a time so the test never holds them.
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(MiB)
    bomb = b"".join([compressor.compress(zeros) for _ in range(100)])
    bomb += compressor.flush(zlib.Z_SYNC_FLUSH)[:-4]
    assert len(bomb) < 200_000
    inflater = Inflater()
    rss_before = _rss()
    peak_before = _peak_rss()
    for _ in range(5):
        with pytest.raises(OverflowError):
            inflater.decompress(bomb, MiB)
    peak_after = _peak_rss() if peak_before is not None else None
    if peak_before is not None and peak_after is not None:
        # The buffer is at most max_size + 1 bytes; a few MiB allow for the allocator.
        assert peak_after - peak_before < 4 * MiB
    assert _rss() - rss_before < 4 * MiB
    # The object is reset after the overflow and usable for the next message.
    assert inflater.decompress(Deflater().compress(b"next"), 4) == b"next"


# --- 7.2.3 Examples ------------------------------------------------------------------------


def test_7_2_3_1_hello_example() -> None:
    assert Inflater().decompress(bytes.fromhex("f248cdc9c90700"), 5) == b"Hello"
    assert Deflater().compress(b"Hello") == bytes.fromhex("f248cdc9c90700")


def test_7_2_3_2_sharing_lz77_sliding_window_example() -> None:
    inflater = Inflater()
    assert inflater.decompress(bytes.fromhex("f248cdc9c90700"), 5) == b"Hello"
    assert inflater.decompress(bytes.fromhex("f200110000"), 5) == b"Hello"
    deflater = Deflater()
    assert deflater.compress(b"Hello") == bytes.fromhex("f248cdc9c90700")
    assert deflater.compress(b"Hello") == bytes.fromhex("f200110000")
    # With no context takeover the second payload refers to a window that was dropped.
    inflater = Inflater(no_context_takeover=True)
    inflater.decompress(bytes.fromhex("f248cdc9c90700"), 5)
    with pytest.raises(ValueError, match="too far back"):
        inflater.decompress(bytes.fromhex("f200110000"), 5)


def test_7_2_3_3_deflate_block_with_no_compression_example() -> None:
    assert Inflater().decompress(bytes.fromhex("000500faff48656c6c6f00"), 5) == b"Hello"


def test_7_2_3_4_deflate_block_with_bfinal_set_example() -> None:
    inflater = Inflater()
    assert inflater.decompress(bytes.fromhex("f348cdc9c9070000"), 5) == b"Hello"
    # The stream goes on after the final block, and keeps its window: the next message may
    # refer to "Hello".
    assert inflater.decompress(bytes.fromhex("f200110000"), 5) == b"Hello"
    assert inflater.decompress(bytes.fromhex("f248cdc9c90700"), 5) == b"Hello"


def test_7_2_3_4_bfinal_block_without_trailing_byte_and_blocks_after_it() -> None:
    text = b"context takeover " * 40
    final = zlib.compressobj(6, zlib.DEFLATED, -15)
    final_only = final.compress(text) + final.flush(zlib.Z_FINISH)
    inflater = Inflater()
    # A message that is just a BFINAL block (no trailing 0x00) is accepted too.
    assert inflater.decompress(final_only, NO_LIMIT) == text
    # A message referring back to the text, compressed against it as a dictionary.
    referring = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=text)
    payload = py_compress(text, referring)
    assert len(payload) < 20
    assert inflater.decompress(payload, NO_LIMIT) == text
    # Blocks after a final block inside one message (7.2.1: the next block follows the
    # padding), the later one referring to the earlier.
    again = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=text)
    message = final_only + py_compress(text, again)
    assert Inflater().decompress(message, NO_LIMIT) == text + text


def test_7_2_3_4_many_final_blocks_in_one_message_are_bounded() -> None:
    hello_final = bytes.fromhex("f348cdc9c90700")
    inflater = Inflater()
    assert inflater.decompress(hello_final * 8 + b"\x00", NO_LIMIT) == b"Hello" * 8
    # Past the first few, final blocks are fine when they carry a few hundred bytes each.
    chunks = [os.urandom(300) for _ in range(40)]
    finals = []
    for chunk in chunks:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        finals.append(compressor.compress(chunk) + compressor.flush(zlib.Z_FINISH))
    assert inflater.decompress(b"".join(finals) + b"\x00", NO_LIMIT) == b"".join(chunks)
    # Each final block restarts the stream and copies the window: a message of nothing but
    # empty final blocks (03 00) is refused long before it costs real CPU.
    inflater.decompress(Deflater().compress(os.urandom(40_000)), NO_LIMIT)
    with pytest.raises(ValueError, match="too many final blocks"):
        inflater.decompress(b"\x03\x00" * 500_000 + b"\x00", NO_LIMIT)


def test_7_2_3_5_two_deflate_blocks_in_one_message_example() -> None:
    payload = bytes.fromhex("f248050000 00ffff cac9c90700".replace(" ", ""))
    assert Inflater().decompress(payload, 5) == b"Hello"


def test_7_2_3_6_zero_length_payload_is_an_empty_message() -> None:
    # Not what 7.2.3.6 prescribes, but harmless: nothing is fed, the window is kept.
    inflater = Inflater()
    assert inflater.decompress(bytes.fromhex("f248cdc9c90700"), 5) == b"Hello"
    assert inflater.decompress(b"", 0) == b""
    assert inflater.decompress(bytes.fromhex("f200110000"), 5) == b"Hello"


@pytest.mark.parametrize("no_context_takeover", [False, True])
def test_7_2_3_6_empty_message(no_context_takeover: bool) -> None:
    deflater = Deflater(no_context_takeover=no_context_takeover)
    inflater = Inflater(no_context_takeover=no_context_takeover)
    python = zlib.decompressobj(-15)
    for data in (b"", b"Hello", b"", b"", b"Hello", b""):
        payload = deflater.compress(data)
        if not data:
            assert payload == b"\x00"
        assert inflater.decompress(payload, 5) == data
        if no_context_takeover:
            python = zlib.decompressobj(-15)
        assert py_decompress(payload, python) == data


# --- zlib state: made by the first message, held between messages only with context takeover


def fresh_compress(data: bytes, bits: int = 15, level: int = 6, mem_level: int = 8) -> bytes:
    """``data`` as the first message of a new stream (what no context takeover must give)."""
    return py_compress(data, zlib.compressobj(level, zlib.DEFLATED, -bits, mem_level))


@pytest.mark.parametrize("no_context_takeover", [False, True])
def test_deflater_allocates_on_the_first_message(no_context_takeover: bool) -> None:
    deflater = Deflater(15, no_context_takeover)
    assert deflater.allocated is False
    # An empty message is one constant byte: still nothing to allocate.
    assert deflater.compress(b"") == b"\x00"
    assert deflater.allocated is False
    for i in range(3):
        deflater.compress(b"message %d " % i * 20)
        # The window is the context: kept with context takeover, gone without.
        assert deflater.allocated is (not no_context_takeover)


@pytest.mark.parametrize("no_context_takeover", [False, True])
def test_inflater_allocates_on_the_first_message(no_context_takeover: bool) -> None:
    inflater = Inflater(15, no_context_takeover)
    assert inflater.allocated is False
    assert inflater.decompress(b"", NO_LIMIT) == b""
    assert inflater.allocated is False
    python = zlib.compressobj(6, zlib.DEFLATED, -15)
    for i in range(3):
        data = b"message %d " % i * 20
        if no_context_takeover:
            python = zlib.compressobj(6, zlib.DEFLATED, -15)
        assert inflater.decompress(py_compress(data, python), NO_LIMIT) == data
        assert inflater.allocated is (not no_context_takeover)


@pytest.mark.parametrize("no_context_takeover", [False, True])
def test_inflater_holds_no_state_after_an_error(no_context_takeover: bool) -> None:
    inflater = Inflater(15, no_context_takeover)
    assert inflater.decompress(Deflater().compress(b"first"), NO_LIMIT) == b"first"
    with pytest.raises(ValueError):
        inflater.decompress(b"\xff\xff", NO_LIMIT)
    assert inflater.allocated is False
    with pytest.raises(OverflowError):
        inflater.decompress(Deflater().compress(b"x" * 1000), 10)
    assert inflater.allocated is False
    assert inflater.decompress(Deflater().compress(b"after"), NO_LIMIT) == b"after"


def test_no_context_takeover_output_is_unchanged_and_independent() -> None:
    # Deflaters of several settings take turns, more settings than the compiled core's pool of
    # reset streams holds: every payload is what a new zlib stream makes of that message alone,
    # and inflates alone.
    settings_list = [(15, 6, 8), (10, 6, 8), (15, 1, 8), (15, 6, 5), (12, 9, 9), (9, 0, 1),
                     (15, -1, 8)]
    deflaters = [Deflater(bits, True, level, mem) for bits, level, mem in settings_list]
    inflaters = {bits: Inflater(bits, True) for bits, _, _ in settings_list}
    for round_ in range(3):
        for (bits, level, mem), deflater in zip(settings_list, deflaters):
            data = (b"round %d bits %d level %d " % (round_, bits, level)) * (10 + round_ * 50)
            payload = deflater.compress(data)
            if level != 0:  # level 0's stored blocks are framed by the core itself
                assert payload == fresh_compress(data, bits, level, mem)
            assert py_decompress(payload, zlib.decompressobj(-bits)) == data
            assert inflaters[bits].decompress(payload, NO_LIMIT) == data
            assert not deflater.allocated and not inflaters[bits].allocated


def test_context_takeover_output_is_unchanged_across_messages() -> None:
    # A context-takeover pair keeps its own stream while no-context-takeover objects of the
    # same settings borrow and return theirs in between: the stream stays byte for byte in step
    # with Python's zlib, and later messages refer to earlier ones.
    ours, theirs = Deflater(15, False), zlib.compressobj(6, zlib.DEFLATED, -15, 8)
    inflater, python = Inflater(15, False), zlib.decompressobj(-15)
    others = Deflater(15, True), Inflater(15, True)
    data = os.urandom(1500)
    sizes = []
    for i in range(4):
        payload = ours.compress(data)
        assert payload == py_compress(data, theirs)
        assert inflater.decompress(payload, NO_LIMIT) == data
        assert py_decompress(payload, python) == data
        sizes.append(len(payload))
        other = others[0].compress(b"other %d " % i * 30)
        assert others[1].decompress(other, NO_LIMIT) == b"other %d " % i * 30
    assert sizes[0] > len(data) and max(sizes[1:]) < 50


def test_no_context_takeover_threads_compress_at_once() -> None:
    # Large messages release the GIL inside zlib, so several threads' no-context-takeover
    # objects need a stream each at the same moment.
    def work(seed: int) -> int:
        deflater, inflater = Deflater(15, True), Inflater(15, True)
        for i in range(4):
            data = bytes([seed, i]) * 150_000 + os.urandom(500)
            payload = deflater.compress(data)
            assert payload == fresh_compress(data)
            assert inflater.decompress(payload, len(data)) == data
        return seed

    with ThreadPoolExecutor(4) as pool:
        assert sorted(pool.map(work, range(4))) == [0, 1, 2, 3]


# --- Interoperability with the websockets library ------------------------------------------


@pytest.mark.parametrize("bits", [9, 12, 15])
@pytest.mark.parametrize("no_context_takeover", [False, True])
def test_7_2_interop_with_websockets_permessage_deflate(
    bits: int, no_context_takeover: bool
) -> None:
    pmd = pytest.importorskip("websockets.extensions.permessage_deflate")
    frames = pytest.importorskip("websockets.frames")
    # websockets is the client here: remote = server (us), local = client.
    theirs = pmd.PerMessageDeflate(no_context_takeover, no_context_takeover, bits, bits)
    params = DeflateParams(no_context_takeover, no_context_takeover, bits, bits)
    ours_out, ours_in = params.server_deflater(), params.server_inflater()
    for i in range(10):
        data = (b"interop %d " % i) * (i * 50) + os.urandom(i * 3)
        sent = frames.Frame(frames.Opcode.BINARY, ours_out.compress(data), rsv1=True)
        assert theirs.decode(sent, max_size=None).data == data
        received = theirs.encode(frames.Frame(frames.Opcode.BINARY, data))
        assert received.rsv1
        assert ours_in.decompress(received.data, len(data)) == data


def test_7_1_interop_negotiation_with_websockets() -> None:
    pmd = pytest.importorskip("websockets.extensions.permessage_deflate")
    headers = pytest.importorskip("websockets.headers")
    cases: list[dict[str, Any]] = [
        {},
        {"server_no_context_takeover": True, "client_max_window_bits": 10},
        {"client_no_context_takeover": True, "server_max_window_bits": 11},
        {"client_max_window_bits": None},
    ]
    # websockets' client offer -> our negotiate -> websockets' client accepts our response.
    for kwargs in cases:
        client = pmd.ClientPerMessageDeflateFactory(**kwargs)
        offer = headers.build_extension([(client.name, client.get_request_params())])
        params = negotiate([offer], server_max_window_bits=12, client_max_window_bits=11)
        assert params is not None
        [(name, response)] = headers.parse_extension(params.response_header())
        ext = client.process_response_params(response, [])
        assert ext.remote_max_window_bits == params.server_max_window_bits
        assert ext.local_max_window_bits == params.client_max_window_bits
        assert ext.remote_no_context_takeover == params.server_no_context_takeover
        assert ext.local_no_context_takeover == params.client_no_context_takeover
    # Our offer -> websockets' server -> we accept its response.
    server = pmd.ServerPerMessageDeflateFactory(
        server_max_window_bits=12, client_max_window_bits=10, server_no_context_takeover=True
    )
    offer = build_offer(server_max_window_bits=13)
    [(name, request)] = headers.parse_extension(offer)
    response, ext = server.process_request_params(request, [])
    params = accept_response(headers.build_extension([(name, response)]), offered=offer)
    assert params == DeflateParams(True, False, 12, 10)
    assert ext.local_max_window_bits == params.server_max_window_bits
    assert ext.remote_max_window_bits == params.client_max_window_bits


# --- 7.1 Negotiation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offers", "settings", "response"),
    [
        # No header, or nothing we know.
        ([], {}, None),
        (["x-webkit-deflate-frame"], {}, None),
        (["foo; bar=1, baz"], {}, None),
        # Plain offers, and the server's wishes.
        (["permessage-deflate"], {}, "permessage-deflate"),
        (["foo, permessage-deflate"], {}, "permessage-deflate"),
        (["foo", "permessage-deflate"], {}, "permessage-deflate"),
        (
            ["permessage-deflate"],
            {"server_no_context_takeover": True, "client_no_context_takeover": True},
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
        (
            ["permessage-deflate"],
            {"server_max_window_bits": 10},
            "permessage-deflate; server_max_window_bits=10",
        ),
        # The client asks for no server context takeover: the server must agree.
        (
            ["permessage-deflate; server_no_context_takeover"],
            {},
            "permessage-deflate; server_no_context_takeover",
        ),
        (
            ["permessage-deflate; client_no_context_takeover"],
            {},
            "permessage-deflate; client_no_context_takeover",
        ),
        # server_max_window_bits: the smaller of offer and setting, echoed even at 15.
        (
            ["permessage-deflate; server_max_window_bits=15"],
            {},
            "permessage-deflate; server_max_window_bits=15",
        ),
        (
            ["permessage-deflate; server_max_window_bits=10"],
            {"server_max_window_bits": 12},
            "permessage-deflate; server_max_window_bits=10",
        ),
        (
            ["permessage-deflate; server_max_window_bits=13"],
            {"server_max_window_bits": 12},
            "permessage-deflate; server_max_window_bits=12",
        ),
        (
            ["permessage-deflate; server_max_window_bits=9"],
            {},
            "permessage-deflate; server_max_window_bits=9",
        ),
        # 8 cannot be honoured by zlib: that offer is declined, the next one taken.
        (["permessage-deflate; server_max_window_bits=8"], {}, None),
        (
            ["permessage-deflate; server_max_window_bits=8, permessage-deflate"],
            {},
            "permessage-deflate",
        ),
        # client_max_window_bits: only sent when offered, never above the offer.
        (["permessage-deflate; client_max_window_bits"], {}, "permessage-deflate"),
        (
            ["permessage-deflate; client_max_window_bits"],
            {"client_max_window_bits": 10},
            "permessage-deflate; client_max_window_bits=10",
        ),
        (
            ["permessage-deflate; client_max_window_bits=11"],
            {},
            "permessage-deflate; client_max_window_bits=11",
        ),
        (
            ["permessage-deflate; client_max_window_bits=11"],
            {"client_max_window_bits": 9},
            "permessage-deflate; client_max_window_bits=9",
        ),
        (
            ["permessage-deflate; client_max_window_bits=8"],
            {},
            "permessage-deflate; client_max_window_bits=8",
        ),
        (["permessage-deflate"], {"client_max_window_bits": 10}, "permessage-deflate"),
        (
            ['permessage-deflate; client_max_window_bits="10"'],
            {},
            "permessage-deflate; client_max_window_bits=10",
        ),
        # Unknown, duplicated or invalid parameters decline that offer only.
        (["permessage-deflate; foo"], {}, None),
        (
            ["permessage-deflate; foo, permessage-deflate; client_max_window_bits=12"],
            {},
            "permessage-deflate; client_max_window_bits=12",
        ),
        (["permessage-deflate; server_no_context_takeover; server_no_context_takeover"], {}, None),
        (["permessage-deflate; client_max_window_bits; client_max_window_bits=9"], {}, None),
        (["permessage-deflate; server_max_window_bits=10; server_max_window_bits=10"], {}, None),
        (["permessage-deflate; server_no_context_takeover=1"], {}, None),
        (["permessage-deflate; client_no_context_takeover=true"], {}, None),
        (["permessage-deflate; server_max_window_bits"], {}, None),
        (["permessage-deflate; server_max_window_bits=16"], {}, None),
        (["permessage-deflate; server_max_window_bits=7"], {}, None),
        (["permessage-deflate; server_max_window_bits=x"], {}, None),
        (["permessage-deflate; server_max_window_bits=010"], {}, None),
        (["permessage-deflate; client_max_window_bits=16"], {}, None),
        (["permessage-deflate; client_max_window_bits=-9"], {}, None),
        (['permessage-deflate; server_max_window_bits=""'], {}, None),
        (["permessage-deflate; server_max_window_bits="], {}, None),
        (["permessage-deflate; PERMESSAGE"], {}, None),
        (["Permessage-Deflate"], {}, None),
        # A header that does not parse is ignored as a whole.
        (["permessage-deflate;"], {}, None),
        (["permessage-deflate", "permessage-deflate;;"], {}, None),
        (["permessage-deflate x"], {}, None),
    ],
)
def test_7_1_negotiation_table(
    offers: list[str], settings: dict[str, Any], response: str | None
) -> None:
    params = negotiate(offers, **settings)
    if response is None:
        assert params is None
    else:
        assert params is not None
        assert params.response_header() == response


def test_7_1_negotiated_objects_match_the_params() -> None:
    params = negotiate(
        ["permessage-deflate; client_max_window_bits; server_max_window_bits=11"],
        client_no_context_takeover=True,
        client_max_window_bits=10,
    )
    assert params == DeflateParams(
        server_no_context_takeover=False,
        client_no_context_takeover=True,
        server_max_window_bits=11,
        client_max_window_bits=10,
    )
    deflater, inflater = params.server_deflater(level=1), params.server_inflater()
    assert (deflater.window_bits, deflater.no_context_takeover, deflater.level) == (11, False, 1)
    assert (inflater.window_bits, inflater.no_context_takeover) == (10, True)
    deflater, inflater = params.client_deflater(), params.client_inflater()
    assert (deflater.window_bits, deflater.no_context_takeover) == (10, True)
    assert (inflater.window_bits, inflater.no_context_takeover) == (11, False)


def test_7_1_negotiate_a_single_string_is_one_header_line() -> None:
    params = negotiate("foo, permessage-deflate; server_no_context_takeover")
    assert params is not None and params.server_no_context_takeover


@pytest.mark.parametrize(
    "settings",
    [
        {"server_max_window_bits": 8},
        {"server_max_window_bits": 16},
        {"client_max_window_bits": 7},
        {"client_max_window_bits": 16},
        {"server_max_window_bits": True},
        {"client_max_window_bits": "12"},
    ],
)
def test_7_1_negotiate_rejects_invalid_server_settings(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        negotiate(["permessage-deflate"], **settings)


def test_7_1_deflate_params_validates_and_is_frozen() -> None:
    assert DeflateParams() == DeflateParams(False, False, 15, 15)
    assert DeflateParams().response_header() == "permessage-deflate"
    with pytest.raises(ValueError):
        DeflateParams(server_max_window_bits=16)
    with pytest.raises(ValueError):
        DeflateParams(client_max_window_bits=7)
    params = DeflateParams(server_max_window_bits=8, client_max_window_bits=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.server_max_window_bits = 9  # type: ignore[misc]
    # A side cannot compress with 8, but it can inflate what the other side sends.
    with pytest.raises(ValueError):
        params.server_deflater()
    with pytest.raises(ValueError):
        params.client_deflater()
    assert params.server_inflater().window_bits == 8
    assert params.client_inflater().window_bits == 8


# --- Extension header grammar (RFC 6455 section 9.1) ---------------------------------------


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("permessage-deflate", [("permessage-deflate", [])]),
        (
            "permessage-deflate; client_max_window_bits; server_max_window_bits=10",
            [
                (
                    "permessage-deflate",
                    [("client_max_window_bits", None), ("server_max_window_bits", "10")],
                )
            ],
        ),
        (" a ;b = 1 ;\tc\t, d ", [("a", [("b", "1"), ("c", None)]), ("d", [])]),
        ("a,,b , ,", [("a", []), ("b", [])]),
        ('a; b="10"', [("a", [("b", "10")])]),
        ('a; b="x\\yz"', [("a", [("b", "xyz")])]),
        ('a; b="1", c', [("a", [("b", "1")]), ("c", [])]),
    ],
)
def test_9_1_parse_extensions(value: str, parsed: list[object]) -> None:
    assert parse_extensions([value]) == parsed
    assert parse_extensions(value) == parsed


def test_9_1_parse_extensions_joins_header_lines() -> None:
    assert parse_extensions(["a; x", "b"]) == [("a", [("x", None)]), ("b", [])]
    assert parse_extensions([]) == []


@pytest.mark.parametrize(
    "value",
    [
        "",
        " , ",
        ";",
        "a;",
        "a; ;b",
        "a;=1",
        "a; b=",
        "a; b==1",
        'a; b="1',
        'a; b="1\\',
        'a; b="two words"',
        'a; b=""',
        'a; b="x"y',
        "a b",
        "a; b=1 2",
        "a; b=(1)",
        "ä",
        "a; b=\x00",
        'a; b="\x01"',
    ],
)
def test_9_1_parse_extensions_syntax_errors(value: str) -> None:
    with pytest.raises(ValueError):
        parse_extensions([value])


def test_9_1_parse_extensions_rejects_non_strings() -> None:
    with pytest.raises(ValueError):
        parse_extensions([b"permessage-deflate"])  # type: ignore[list-item]


# --- Client side: build_offer / accept_response --------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "offer"),
    [
        ({}, "permessage-deflate; client_max_window_bits"),
        ({"client_max_window_bits": None}, "permessage-deflate"),
        ({"client_max_window_bits": False}, "permessage-deflate"),
        ({"client_max_window_bits": 12}, "permessage-deflate; client_max_window_bits=12"),
        (
            {
                "client_no_context_takeover": True,
                "server_no_context_takeover": True,
                "client_max_window_bits": 9,
                "server_max_window_bits": 8,
            },
            (
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                "server_max_window_bits=8; client_max_window_bits=9"
            ),
        ),
    ],
)
def test_7_1_build_offer(kwargs: dict[str, Any], offer: str) -> None:
    assert build_offer(**kwargs) == offer


@pytest.mark.parametrize(
    "kwargs",
    [
        {"client_max_window_bits": 8},  # zlib cannot compress with 8
        {"client_max_window_bits": 16},
        {"server_max_window_bits": 7},
        {"server_max_window_bits": 16},
        {"server_max_window_bits": True},
    ],
)
def test_7_1_build_offer_rejects_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        build_offer(**kwargs)


@pytest.mark.parametrize(
    "client",
    [
        {},
        {"client_max_window_bits": None},
        {"client_max_window_bits": 11},
        {"server_no_context_takeover": True},
        {"client_no_context_takeover": True},
        {"server_max_window_bits": 9, "client_max_window_bits": 9},
        {"server_max_window_bits": 15},
    ],
)
@pytest.mark.parametrize(
    "server",
    [
        {},
        {"server_no_context_takeover": True, "client_no_context_takeover": True},
        {"server_max_window_bits": 10, "client_max_window_bits": 12},
        {"client_max_window_bits": 8},
    ],
)
def test_7_1_offer_negotiate_accept_round_trip(
    client: dict[str, Any], server: dict[str, Any]
) -> None:
    offer = build_offer(**client)
    server_params = negotiate([offer], **server)
    assert server_params is not None
    response = server_params.response_header()
    if server_params.client_max_window_bits == 8:
        # The server may ask for 8 when the offer was valueless; zlib cannot do it.
        with pytest.raises(ValueError, match="client_max_window_bits=8"):
            accept_response(response, offered=offer)
        return
    client_params = accept_response(response, offered=offer)
    assert client_params == server_params
    # Messages flow both ways with the objects each side builds.
    pairs = [
        (server_params.server_deflater(), client_params.client_inflater()),
        (client_params.client_deflater(), server_params.server_inflater()),
    ]
    for deflater, inflater in pairs:
        for i in range(5):
            data = b"round trip %d " % i * 100
            assert inflater.decompress(deflater.compress(data), len(data)) == data


@pytest.mark.parametrize(
    ("offer", "response", "expected"),
    [
        ("permessage-deflate", "permessage-deflate", DeflateParams()),
        # The server may add server_no_context_takeover and a smaller server window unasked.
        (
            "permessage-deflate",
            "permessage-deflate; server_no_context_takeover",
            DeflateParams(server_no_context_takeover=True),
        ),
        (
            "permessage-deflate",
            "permessage-deflate; server_max_window_bits=8",
            DeflateParams(server_max_window_bits=8),
        ),
        (
            "permessage-deflate",
            "permessage-deflate; client_no_context_takeover",
            DeflateParams(client_no_context_takeover=True),
        ),
        # What the client offered for itself holds even when the response is silent.
        (
            "permessage-deflate; client_no_context_takeover",
            "permessage-deflate",
            DeflateParams(client_no_context_takeover=True),
        ),
        (
            "permessage-deflate; client_max_window_bits=10",
            "permessage-deflate",
            DeflateParams(client_max_window_bits=10),
        ),
        ("permessage-deflate; client_max_window_bits", "permessage-deflate", DeflateParams()),
        (
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=9",
            DeflateParams(client_max_window_bits=9),
        ),
        (
            "permessage-deflate; server_max_window_bits=12",
            "permessage-deflate; server_max_window_bits=10",
            DeflateParams(server_max_window_bits=10),
        ),
        # Several offers: the response fits the second one.
        (
            "permessage-deflate; server_no_context_takeover, permessage-deflate",
            "permessage-deflate",
            DeflateParams(),
        ),
        (
            "permessage-deflate; server_max_window_bits=10",
            'permessage-deflate; server_max_window_bits="10"',
            DeflateParams(server_max_window_bits=10),
        ),
    ],
)
def test_7_1_accept_response(offer: str, response: str, expected: DeflateParams) -> None:
    assert accept_response(response, offered=offer) == expected


@pytest.mark.parametrize(
    ("offer", "response"),
    [
        ("permessage-deflate", ""),
        ("permessage-deflate", "permessage-deflate;"),
        ("permessage-deflate", "foo"),
        ("permessage-deflate", "permessage-deflate, permessage-deflate"),
        ("permessage-deflate", "permessage-deflate, foo"),
        ("permessage-deflate", "permessage-deflate; foo"),
        ("permessage-deflate", "permessage-deflate; server_no_context_takeover=1"),
        (
            "permessage-deflate",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        ),
        # client_max_window_bits not offered, or valueless in a response.
        ("permessage-deflate", "permessage-deflate; client_max_window_bits=10"),
        (
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits",
        ),
        # Larger than offered.
        (
            "permessage-deflate; client_max_window_bits=10",
            "permessage-deflate; client_max_window_bits=11",
        ),
        (
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=11",
        ),
        # Requested but not granted.
        ("permessage-deflate; server_max_window_bits=10", "permessage-deflate"),
        ("permessage-deflate; server_no_context_takeover", "permessage-deflate"),
        # Granted but cannot be honoured.
        (
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=8",
        ),
        (
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=16",
        ),
        # Nothing offered.
        ("foo", "permessage-deflate"),
    ],
)
def test_7_1_accept_response_rejects(offer: str, response: str) -> None:
    with pytest.raises(ValueError):
        accept_response(response, offered=offer)


def test_extension_name() -> None:
    assert EXTENSION_NAME == "permessage-deflate"
