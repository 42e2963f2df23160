"""Every size, count and duration a user sets is checked against a lower and an upper bound at
construction (``melody.limits``): the extreme integers and the special floats are either
accepted (within the documented range) or refused with ``ValueError`` naming the setting, and
never reach the compiled core, where a value near 2**63 used to wrap (the hardening issue's
defect 1: ``Config(max_message_size=sys.maxsize)`` crashed the process on one frame header).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import pytest

import melody
from melody import Compression, Config, RateLimit
from melody.limits import MAX_BUFFER_BYTES, MAX_COUNT, MAX_MESSAGE_SIZE, MAX_SECONDS

#: The extreme integers the issue names.
EXTREMES = [0, 1, 2**31, 2**32, 2**53, 2**63 - 1, sys.maxsize]
#: Values no numeric setting accepts.
NEVER = [-1, math.nan, math.inf, -math.inf, True, "10", None]

# (what, make(value), lowest accepted, highest accepted, integer-only)
Setting = tuple[str, Callable[[Any], Any], float, float, bool]


def config(name: str, **extra: Any) -> Callable[[Any], Any]:
    return lambda value: Config(**{name: value, **extra})


SETTINGS: list[Setting] = [
    ("Config.max_message_size", config("max_message_size"), 1, MAX_MESSAGE_SIZE, True),
    ("Config.message_buffer_size", config("message_buffer_size"), 1, MAX_COUNT, True),
    ("Config.message_buffer_bytes", config("message_buffer_bytes"), 1, MAX_BUFFER_BYTES, True),
    ("Config.max_concurrent_handlers", config("max_concurrent_handlers"), 1, MAX_COUNT, True),
    ("Config.max_topics_per_session", config("max_topics_per_session"), 1, MAX_COUNT, True),
    ("Config.max_topic_length", config("max_topic_length"), 1, MAX_MESSAGE_SIZE, True),
    ("Config.max_header_size", config("max_header_size"), 256, MAX_MESSAGE_SIZE, True),
    ("Config.write_buffer_high", config("write_buffer_high"), 1024, MAX_BUFFER_BYTES, True),
    ("Config.read_buffer_size", config("read_buffer_size"), 1024, MAX_MESSAGE_SIZE, True),
    ("Config.write_wait", config("write_wait"), 1e-9, MAX_SECONDS, False),
    ("Config.handshake_timeout", config("handshake_timeout"), 1e-9, MAX_SECONDS, False),
    ("Config.close_timeout", config("close_timeout"), 1e-9, MAX_SECONDS, False),
    # pong_wait must stay above ping_period: pair each with a value that keeps the other valid.
    ("Config.pong_wait", config("pong_wait", ping_period=1e-10), 1e-9, MAX_SECONDS, False),
    ("Config.ping_period", config("ping_period", pong_wait=MAX_SECONDS), 1e-9,
     MAX_SECONDS * 0.999, False),
    ("Compression.level", lambda v: Compression(level=v), 0, 9, True),
    ("Compression.min_size", lambda v: Compression(min_size=v), 0, MAX_MESSAGE_SIZE, True),
    ("Compression.server_max_window_bits", lambda v: Compression(server_max_window_bits=v),
     9, 15, True),
    ("Compression.client_max_window_bits", lambda v: Compression(client_max_window_bits=v),
     8, 15, True),
    ("RateLimit.messages_per_second", lambda v: RateLimit(messages_per_second=v), 1e-9,
     MAX_COUNT, False),
    ("RateLimit.burst_messages", lambda v: RateLimit(burst_messages=v), 1, MAX_COUNT, False),
    ("RateLimit.bytes_per_second", lambda v: RateLimit(bytes_per_second=v), 1e-9,
     MAX_BUFFER_BYTES, False),
    ("RateLimit.burst_bytes", lambda v: RateLimit(burst_bytes=v), 1, MAX_BUFFER_BYTES, False),
    ("connect max_message_size", lambda v: melody.connect("ws://127.0.0.1:9/",
                                                          max_message_size=v),
     1, MAX_MESSAGE_SIZE, True),
    ("connect max_queue", lambda v: melody.connect("ws://127.0.0.1:9/", max_queue=v),
     1, MAX_COUNT, True),
    ("connect open_timeout", lambda v: melody.connect("ws://127.0.0.1:9/", open_timeout=v),
     1e-9, MAX_SECONDS, False),
    ("connect close_timeout", lambda v: melody.connect("ws://127.0.0.1:9/", close_timeout=v),
     1e-9, MAX_SECONDS, False),
    ("connect ping_interval", lambda v: melody.connect("ws://127.0.0.1:9/", ping_interval=v),
     1e-9, MAX_SECONDS, False),
    ("connect ping_timeout", lambda v: melody.connect("ws://127.0.0.1:9/", ping_timeout=v),
     1e-9, MAX_SECONDS, False),
    ("connect max_attempts", lambda v: melody.connect("ws://127.0.0.1:9/", reconnect=True,
                                                      max_attempts=v), 1, MAX_COUNT, True),
    ("connect backoff_max", lambda v: melody.connect("ws://127.0.0.1:9/", reconnect=True,
                                                     backoff_initial=1e-9, backoff_max=v),
     1e-9, MAX_SECONDS, False),
    ("connect send_timeout", lambda v: melody.connect("ws://127.0.0.1:9/", reconnect=True,
                                                      send_timeout=v), 0, MAX_SECONDS, False),
]


def close_if_needed(made: Any) -> None:
    # melody.connect returns an awaitable that has not connected yet; nothing to close, but
    # drop the coroutine-free object cleanly.
    del made


@pytest.mark.parametrize("setting", SETTINGS, ids=[s[0] for s in SETTINGS])
@pytest.mark.parametrize("value", EXTREMES, ids=[f"{v:#x}" for v in EXTREMES])
def test_extreme_integers_are_accepted_within_the_range_and_refused_outside(
        setting: Setting, value: int) -> None:
    name, make, low, high, _ = setting
    if low <= value <= high:
        close_if_needed(make(value))
    else:
        with pytest.raises(ValueError, match=name.split(".")[-1].split(" ")[-1]):
            make(value)


@pytest.mark.parametrize("setting", SETTINGS, ids=[s[0] for s in SETTINGS])
@pytest.mark.parametrize("value", NEVER, ids=repr)
def test_negative_nan_infinite_bool_and_non_numbers_are_refused(setting: Setting,
                                                                value: Any) -> None:
    name, make, *_ = setting
    if value is None and name.startswith(("connect open_timeout", "connect ping",
                                           "connect max_queue", "connect max_attempts",
                                           "connect send_timeout", "RateLimit.bytes",
                                           "RateLimit.burst_bytes")):
        make(value)  # None is these settings' documented "no limit"/"never"
        return
    with pytest.raises(ValueError):
        make(value)


@pytest.mark.parametrize("setting", SETTINGS, ids=[s[0] for s in SETTINGS])
def test_both_ends_of_every_range_are_accepted(setting: Setting) -> None:
    _, make, low, high, integer = setting
    for value in (low, high):
        close_if_needed(make(int(value) if integer else value))


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s[4]], ids=lambda s: s[0])
def test_one_past_either_end_is_refused(setting: Setting) -> None:
    _, make, low, high, _ = setting
    for value in (int(low) - 1, int(high) + 1):
        with pytest.raises(ValueError):
            make(value)


def test_the_largest_config_serves_a_frame_announcing_2_63_minus_1_bytes() -> None:
    """The issue's crash, end to end in the sans-I/O core: the largest max_message_size a
    Config allows and the largest length a header can announce fail with 1009, no crash."""
    import struct

    from melody._core.connection import Connection

    conn = Connection(is_server=True, max_message_size=Config(
        max_message_size=MAX_MESSAGE_SIZE).max_message_size)
    head = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 2**63 - 1) + b"\x01\x02\x03\x04"
    events = conn.receive_data(head)
    assert [e[:2] for e in events] == [("fail", 1009)]
