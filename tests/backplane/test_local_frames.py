"""The worker bus's frames (``melody.backplane.local_frames``), without a socket."""

from __future__ import annotations

import pytest

from melody.backplane import local_frames as frames
from melody.backplane.base import encode_user_envelope

NODE = bytes(range(16))


def _stream() -> tuple[bytes, list[tuple[int, bytes]]]:
    payload = "é€😀".encode()
    head = frames.message_head("room:1", False, len(payload))
    wire = [
        frames.hello(3, NODE),
        head + payload,
        frames.message_head(None, True, 3) + b"\x00\x01\x02",
        frames.interest("room:1", True),
        frames.interest("room:1", False),
        frames.user(encode_user_envelope(NODE, "bob", False, b"hi")),
        frames.ask(7, frames.ASK_PRESENCE, "pres:x"),
        frames.answer(7, b"{}"),
        frames.append("hist:1", 100, None, '{"n":1}'),
        frames.append("hist:1", 5, 2.5, "[]"),
        frames.stream("hist:1", 42, '"é"'),
        frames.ask(8, frames.ASK_HISTORY, "hist:1", 3, 10),
    ]
    decoded = frames.FrameDecoder(1 << 20).feed(b"".join(wire))
    return b"".join(wire), decoded


def test_every_frame_round_trips() -> None:
    _, decoded = _stream()
    kinds = [kind for kind, _ in decoded]
    assert kinds == [frames.HELLO, frames.MESSAGE, frames.MESSAGE, frames.SUBSCRIBE,
                     frames.UNSUBSCRIBE, frames.USER, frames.ASK, frames.ANSWER, frames.APPEND,
                     frames.APPEND, frames.STREAM, frames.ASK]
    assert frames.parse_hello(decoded[0][1]) == (3, NODE)
    assert frames.parse_message(decoded[1][1]) == ("room:1", False, "é€😀".encode())
    assert frames.parse_message(decoded[2][1]) == (None, True, b"\x00\x01\x02")
    assert decoded[3][1] == b"room:1"
    assert frames.parse_ask(decoded[6][1]) == (7, frames.ASK_PRESENCE, "pres:x", None, None)
    assert frames.parse_answer(decoded[7][1]) == (7, b"{}")
    assert frames.parse_append(decoded[8][1]) == ("hist:1", 100, None, '{"n":1}')
    assert frames.parse_append(decoded[9][1]) == ("hist:1", 5, 2.5, "[]")
    assert frames.parse_stream(decoded[10][1]) == ("hist:1", 42, '"é"')
    assert frames.parse_ask(decoded[11][1]) == (8, frames.ASK_HISTORY, "hist:1", 3, 10)


def test_a_stream_split_anywhere_gives_the_same_frames() -> None:
    wire, whole = _stream()
    for step in (1, 2, 5, 17, 64):
        decoder = frames.FrameDecoder(1 << 20)
        got: list[tuple[int, bytes]] = []
        for i in range(0, len(wire), step):
            got += decoder.feed(wire[i:i + step])
        assert got == whole, step
        assert decoder.buffered == 0


def test_a_partial_frame_waits_for_its_end() -> None:
    decoder = frames.FrameDecoder(1 << 20)
    frame = frames.interest("t", True)
    assert decoder.feed(frame[:-1]) == []
    assert decoder.buffered == len(frame) - 1
    assert decoder.feed(frame[-1:]) == [(frames.SUBSCRIBE, b"t")]


def test_an_oversized_or_unknown_frame_is_refused() -> None:
    with pytest.raises(frames.FrameError):
        frames.FrameDecoder(100).feed((101).to_bytes(4, "big") + b"\x02")
    with pytest.raises(frames.FrameError):
        frames.FrameDecoder(100).feed((0).to_bytes(4, "big") + b"\x02")
    with pytest.raises(frames.FrameError):
        frames.FrameDecoder(100).feed((1).to_bytes(4, "big") + b"\x63")


def test_malformed_bodies_are_refused() -> None:
    with pytest.raises(frames.FrameError):
        frames.parse_hello(b"\x00\x01" + NODE + bytes((frames.VERSION + 1,)))
    with pytest.raises(frames.FrameError):
        frames.parse_message(b"\x04\x00\x00")  # unknown flag
    with pytest.raises(frames.FrameError):
        frames.parse_message(b"\x00\x00\x09ab")  # topic longer than the body
    with pytest.raises(frames.FrameError):
        frames.parse_ask(b"\x00\x00\x00\x01\x09" + bytes(16) + b"t")
    with pytest.raises(frames.FrameError):
        frames.parse_stream(b"\x00" * 9 + b"\x05ab")
    with pytest.raises(ValueError):
        frames.interest("x" * 70_000, True)
