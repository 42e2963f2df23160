"""Malformed traffic over a raw socket (RFC 6455 sections 5 and 7.4).

Each case must make the hub send a close frame with the right code and then close TCP, report
the matching ``melody.errors`` class to ``handle_error``, run ``handle_disconnect``, and keep
serving a healthy ``websockets`` client that was connected all along.
"""

from __future__ import annotations

import asyncio
import struct

import pytest
from e2e_support import WAIT, Recorder

from melody._core.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    encode_frame,
)
from melody.errors import InvalidPayload, MessageTooBig, ProtocolError

pytestmark = pytest.mark.asyncio

MAX = 4096  # max_message_size for these tests


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False,
          mask: bool = True) -> bytes:
    return encode_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=mask)


def with_bits(data: bytes, bits: int) -> bytes:
    return bytes([data[0] | bits]) + data[1:]


def header_only(opcode: int, length: int) -> bytes:
    """A masked frame header announcing ``length`` bytes (64-bit form), with no payload."""
    return bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", length) + b"\x01\x02\x03\x04"


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


# (id, bytes the client sends, close code expected, error class expected)
CASES = [
    ("unmasked-text", frame(OP_TEXT, b"hi", mask=False), 1002, ProtocolError),
    ("unmasked-close", frame(OP_CLOSE, close_payload(1000), mask=False), 1002, ProtocolError),
    ("rsv1-without-deflate", frame(OP_TEXT, b"hi", rsv1=True), 1002, ProtocolError),
    ("rsv2", with_bits(frame(OP_BINARY, b"x"), 0x20), 1002, ProtocolError),
    ("rsv3", with_bits(frame(OP_BINARY, b"x"), 0x10), 1002, ProtocolError),
    ("rsv1-on-ping", frame(OP_PING, b"", rsv1=True), 1002, ProtocolError),
    ("data-opcode-3", frame(0x3, b"x"), 1002, ProtocolError),
    ("data-opcode-7", frame(0x7), 1002, ProtocolError),
    ("control-opcode-0xb", frame(0xB), 1002, ProtocolError),
    ("control-opcode-0xf", frame(0xF, b"x"), 1002, ProtocolError),
    ("fragmented-ping", frame(OP_PING, b"a", fin=False), 1002, ProtocolError),
    ("fragmented-close", frame(OP_CLOSE, close_payload(1000), fin=False), 1002, ProtocolError),
    ("ping-126-bytes", frame(OP_PING, b"p" * 126), 1002, ProtocolError),
    ("pong-126-bytes", frame(OP_PONG, b"p" * 126), 1002, ProtocolError),
    ("close-126-bytes", frame(OP_CLOSE, close_payload(1000, b"r" * 124)), 1002, ProtocolError),
    ("continuation-without-message", frame(OP_CONT, b"x"), 1002, ProtocolError),
    ("final-continuation-without-message", frame(OP_CONT, b""), 1002, ProtocolError),
    ("text-inside-fragmented-message",
     frame(OP_TEXT, b"a", fin=False) + frame(OP_TEXT, b"b"), 1002, ProtocolError),
    ("binary-inside-fragmented-message",
     frame(OP_BINARY, b"a", fin=False) + frame(OP_BINARY, b"b", fin=False), 1002,
     ProtocolError),
    ("invalid-utf8-text", frame(OP_TEXT, b"ok \xff\xfe"), 1007, InvalidPayload),
    ("overlong-utf8", frame(OP_TEXT, b"\xc0\xaf"), 1007, InvalidPayload),
    ("surrogate-utf8", frame(OP_TEXT, b"\xed\xa0\x80"), 1007, InvalidPayload),
    ("text-ends-inside-a-sequence", frame(OP_TEXT, b"abc\xe2\x82"), 1007, InvalidPayload),
    ("fragmented-text-ends-inside-a-sequence",
     frame(OP_TEXT, b"abc\xe2", fin=False) + frame(OP_CONT, b"\x82"), 1007, InvalidPayload),
    ("close-code-1005", frame(OP_CLOSE, close_payload(1005)), 1002, ProtocolError),
    ("close-code-1006", frame(OP_CLOSE, close_payload(1006)), 1002, ProtocolError),
    ("close-code-1004", frame(OP_CLOSE, close_payload(1004)), 1002, ProtocolError),
    ("close-code-1015", frame(OP_CLOSE, close_payload(1015)), 1002, ProtocolError),
    ("close-code-999", frame(OP_CLOSE, close_payload(999)), 1002, ProtocolError),
    ("close-code-0", frame(OP_CLOSE, close_payload(0)), 1002, ProtocolError),
    ("close-code-2999", frame(OP_CLOSE, close_payload(2999)), 1002, ProtocolError),
    ("close-code-5000", frame(OP_CLOSE, close_payload(5000)), 1002, ProtocolError),
    ("close-1-byte-payload", frame(OP_CLOSE, b"\x03"), 1002, ProtocolError),
    ("close-reason-invalid-utf8", frame(OP_CLOSE, close_payload(1000, b"\xff")), 1007,
     InvalidPayload),
    ("binary-over-max", frame(OP_BINARY, b"b" * (MAX + 1)), 1009, MessageTooBig),
    ("text-over-max", frame(OP_TEXT, b"t" * (MAX + 1)), 1009, MessageTooBig),
    ("fragments-over-max",
     frame(OP_BINARY, b"b" * (MAX // 2), fin=False) + frame(OP_CONT, b"b" * (MAX // 2 + 1)),
     1009, MessageTooBig),
    # Only a header: the hub must judge the frame before any payload arrives.
    ("header-claims-2**40-bytes", header_only(OP_BINARY, 1 << 40), 1009, MessageTooBig),
    ("header-claims-2**32-text", header_only(OP_TEXT, 1 << 32), 1009, MessageTooBig),
    ("header-claims-2**63-bytes", header_only(OP_BINARY, 1 << 63), 1002, ProtocolError),
    ("header-claims-2**64-1-bytes", header_only(OP_BINARY, (1 << 64) - 1), 1002, ProtocolError),
    ("continuation-header-over-max",
     frame(OP_TEXT, b"t" * 100, fin=False) + header_only(OP_CONT, MAX), 1009, MessageTooBig),
]


async def open_hub(serve_hub, ws_connect):
    hub, url = await serve_hub(max_message_size=MAX)
    rec = Recorder(hub, skip=("message", "message_binary"))

    @hub.handle_message
    def echo(session, msg):
        rec.events.append(("message", session, msg))
        session.write(msg)

    @hub.handle_message_binary
    def echo_binary(session, msg):
        rec.events.append(("message_binary", session, msg))
        session.write_binary(msg)

    healthy = await ws_connect(url)
    await rec.wait("connect")
    return hub, url, rec, healthy


async def assert_round_trip(ws, text: str) -> None:
    await ws.send(text)
    assert await asyncio.wait_for(ws.recv(), WAIT) == text


@pytest.mark.parametrize(("data", "code", "error_class"),
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
async def test_protocol_violation_fails_the_connection(serve_hub, ws_connect, raw_connect,
                                                       data, code, error_class) -> None:
    hub, url, rec, healthy = await open_hub(serve_hub, ws_connect)
    raw = await raw_connect(url)
    await rec.wait("connect", 2)
    bad = rec.sessions("connect")[1]

    raw.send(data)
    await raw.expect_failure(code)
    await rec.wait("disconnect")
    assert rec.sessions("disconnect") == [bad]
    errors = rec.errors(bad)
    assert len(errors) == 1, errors
    assert type(errors[0]) is error_class
    assert errors[0].code == code
    assert bad.close_code == code
    assert rec.of("message", bad) == [] and rec.of("message_binary", bad) == []
    assert rec.of("close", bad) == []

    await assert_round_trip(healthy, "still serving")
    assert rec.errors() == errors
    assert len(hub) == 1


async def test_invalid_utf8_fails_on_the_bad_fragment_before_the_final_one(
        serve_hub, ws_connect, raw_connect) -> None:
    _hub, url, rec, healthy = await open_hub(serve_hub, ws_connect)
    raw = await raw_connect(url)
    raw.send(frame(OP_TEXT, "fine ✓ ".encode(), fin=False))
    raw.send(frame(OP_CONT, b"still fine ", fin=False))
    raw.send(frame(OP_CONT, b"bad \xf8\x88\x80\x80\x80", fin=False))
    # The final fragment is never sent: the hub must not wait for it.
    await raw.expect_failure(1007)
    await rec.wait("disconnect")
    (error,) = rec.errors()
    assert isinstance(error, InvalidPayload)
    await assert_round_trip(healthy, "ok")


async def test_invalid_utf8_fails_before_the_rest_of_a_large_frame_arrives(
        serve_hub, ws_connect, raw_connect) -> None:
    # One text frame announcing MAX bytes; only its first bytes (already invalid) are sent.
    _hub, url, rec, healthy = await open_hub(serve_hub, ws_connect)
    raw = await raw_connect(url)
    payload = b"\xff" + b"a" * (MAX - 1)
    whole = frame(OP_TEXT, payload)
    raw.send(whole[:200])
    await raw.expect_failure(1007)
    (error,) = [e for (e,) in await rec.wait("error")]
    assert isinstance(error, InvalidPayload)
    await assert_round_trip(healthy, "ok")


async def test_control_frames_may_interleave_with_fragments(serve_hub, ws_connect,
                                                           raw_connect) -> None:
    _hub, url, rec, _healthy = await open_hub(serve_hub, ws_connect)
    raw = await raw_connect(url)
    raw.send(frame(OP_TEXT, "ünï".encode()[:4], fin=False))  # ends inside the ï sequence
    raw.send(frame(OP_PING, b"mid"))
    raw.send(frame(OP_CONT, "ünï".encode()[4:], fin=False))
    raw.send(frame(OP_PONG, b"unsolicited"))
    raw.send(frame(OP_CONT, b"!"))
    pong = await raw.recv_frame()
    assert (pong.opcode, pong.payload) == (OP_PONG, b"mid")
    echoed = await raw.recv_data()
    assert (echoed.opcode, echoed.payload) == (OP_TEXT, "ünï!".encode())
    assert rec.errors() == []


async def test_a_code_point_split_across_fragments_is_valid(serve_hub, ws_connect,
                                                           raw_connect) -> None:
    _hub, url, rec, _healthy = await open_hub(serve_hub, ws_connect)
    raw = await raw_connect(url)
    data = "€𝄞".encode()  # 3 + 4 bytes
    raw.send(frame(OP_TEXT, data[:1], fin=False))
    raw.send(frame(OP_CONT, data[1:5], fin=False))
    raw.send(frame(OP_CONT, data[5:6], fin=False))
    raw.send(frame(OP_CONT, data[6:]))
    echoed = await raw.recv_data()
    assert echoed.payload.decode() == "€𝄞"
    assert rec.errors() == []


async def test_a_frame_dribbled_byte_by_byte_is_reassembled(serve_hub, ws_connect,
                                                           raw_connect) -> None:
    _hub, url, rec, _healthy = await open_hub(serve_hub, ws_connect)
    raw = await raw_connect(url)
    whole = frame(OP_TEXT, ("añ€𝄞" * 20).encode())
    await raw.dribble(whole, 1)
    echoed = await raw.recv_data()
    assert echoed.payload.decode() == "añ€𝄞" * 20
    assert rec.errors() == []
