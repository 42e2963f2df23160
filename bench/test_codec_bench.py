"""Codec micro-benchmarks: melody's compiled core vs wsproto and the websockets library.

Three operations at 64 B, 4 KiB and 1 MiB, each checked for correctness inside the benchmark
test (a figure without its check is not a figure):

* parse: a server reading one masked client frame (RFC 6455 5.2-5.3), payload compared;
* build: a server building one unmasked frame, bytes compared with the RFC layout;
* mask: XOR with a 4-byte key (5.3), compared with a reference and undone.

In the test suite they run once each as plain tests (``--benchmark-disable``); for figures::

    python -m pytest bench/test_codec_bench.py --benchmark-enable --benchmark-group-by=group

pytest-benchmark then prints one table per operation and size, melody beside its peers.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("pytest_benchmark")
wsproto_frames = pytest.importorskip("wsproto.frame_protocol")
ws_frames = pytest.importorskip("websockets.frames")
ws_streams = pytest.importorskip("websockets.streams")
ws_utils = pytest.importorskip("websockets.utils")

from melody._core.connection import Connection  # noqa: E402
from melody._core.frames import OP_BINARY, encode_frame  # noqa: E402
from melody._core.mask import mask as melody_mask  # noqa: E402

try:
    from websockets.speedups import apply_mask as ws_apply_mask_c
except ImportError:  # websockets built without its C extension
    ws_apply_mask_c = None

SIZES = {"64B": 64, "4KiB": 4096, "1MiB": 1 << 20}
SEED = 20240601
KEY = bytes([0x37, 0xFA, 0x21, 0x3D])


def payload_of(size: int) -> bytes:
    """Deterministic pseudo-random bytes (a fixed seed: every run measures the same input)."""
    return random.Random(SEED + size).randbytes(size)


def reference_mask(data: bytes, key: bytes) -> bytes:
    """XOR with the repeating key, written plainly (section 5.3) as the check's reference."""
    n = len(data)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def reference_frame(opcode: int, payload: bytes, key: bytes | None) -> bytes:
    """One FIN frame laid out by hand from RFC 6455 5.2 (the shortest length encoding)."""
    n = len(payload)
    mask_bit = 0x80 if key is not None else 0
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, mask_bit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, mask_bit | 127, n)
    if key is None:
        return head + payload
    return head + key + reference_mask(payload, key)


# -- parse: the server side reads a masked client frame -------------------------------------------


def parse_melody(frame: bytes) -> bytes:
    conn = _melody_server
    events = conn.receive_data(frame)
    assert len(events) == 1 and events[0][0] == "binary", events
    return events[0][1]  # type: ignore[no-any-return]


_melody_server = Connection(is_server=True, max_message_size=2 << 20)


def parse_wsproto(frame: bytes) -> bytes:
    proto = _wsproto_server
    proto.receive_bytes(frame)
    frames = list(proto.received_frames())
    assert len(frames) == 1, frames
    return bytes(frames[0].payload)


_wsproto_server = wsproto_frames.FrameProtocol(client=False, extensions=[])


def parse_websockets(frame: bytes) -> bytes:
    reader = ws_streams.StreamReader()
    reader.feed_data(frame)
    parser = ws_frames.Frame.parse(reader.read_exact, mask=True, max_size=None)
    try:
        next(parser)
    except StopIteration as done:
        return bytes(done.value.data)
    raise AssertionError("websockets' parser wanted more data for a whole frame")


PARSERS: dict[str, Callable[[bytes], bytes]] = {
    "melody": parse_melody,
    "wsproto": parse_wsproto,
    "websockets": parse_websockets,
}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("impl", list(PARSERS))
def test_parse(benchmark: Any, impl: str, size: str) -> None:
    payload = payload_of(SIZES[size])
    frame = reference_frame(OP_BINARY, payload, KEY)
    benchmark.group = f"parse masked client frame {size}"
    result = benchmark(PARSERS[impl], frame)
    assert result == payload


# -- build: the server side frames a message (unmasked) -------------------------------------------


def build_melody(payload: bytes) -> bytes:
    return encode_frame(OP_BINARY, payload)


def build_wsproto(payload: bytes) -> bytes:
    return bytes(_wsproto_server.send_data(payload, fin=True))


def build_websockets(payload: bytes) -> bytes:
    return ws_frames.Frame(ws_frames.Opcode.BINARY, payload).serialize(mask=False)


BUILDERS: dict[str, Callable[[bytes], bytes]] = {
    "melody": build_melody,
    "wsproto": build_wsproto,
    "websockets": build_websockets,
}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("impl", list(BUILDERS))
def test_build(benchmark: Any, impl: str, size: str) -> None:
    payload = payload_of(SIZES[size])
    benchmark.group = f"build server frame {size}"
    result = benchmark(BUILDERS[impl], payload)
    assert result == reference_frame(OP_BINARY, payload, None)


# -- mask / unmask --------------------------------------------------------------------------------


def mask_wsproto(data: bytes, key: bytes) -> bytes:
    # A fresh masker per message, as wsproto makes one per frame.
    return bytes(wsproto_frames.XorMaskerSimple(key).process(data))


MASKERS: dict[str, Callable[[bytes, bytes], bytes] | None] = {
    "melody": melody_mask,
    "wsproto": mask_wsproto,
    "websockets-c": ws_apply_mask_c,
    "websockets-python": ws_utils.apply_mask,
}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("impl", list(MASKERS))
def test_mask(benchmark: Any, impl: str, size: str) -> None:
    masker = MASKERS[impl]
    if masker is None:
        pytest.skip(f"{impl} is not available")
    data = payload_of(SIZES[size])
    benchmark.group = f"mask/unmask {size}"
    result = benchmark(masker, data, KEY)
    assert result == reference_mask(data, KEY)
    assert masker(result, KEY) == data
