"""RFC 6455 5.2 payload lengths at the extremes, against every extreme limit, on the core in use.

A 64-bit length field may announce up to 2**63-1 bytes. With ``max_message_size`` near
PY_SSIZE_T_MAX (``sys.maxsize``, a natural way to say "no limit") such a header passed the size
check and the header-plus-payload sum wrapped negative in the compiled parser, which then masked
far past its buffer: SIGSEGV. So the matrix runs in a child process, where a crash is a failed
assertion instead of the end of the test run, and the child reports each case's outcome.

Every case must end in one of two ways: the message is over the limit and the connection fails
with 1009 at once, from the header alone; or it is within the limit and the connection waits for
the payload, holding no more than the bytes that really arrived.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

#: The extreme integers the hardening issue names, as payload lengths and as limits.
EXTREMES = [0, 1, 2**31, 2**32, 2**53, 2**63 - 1, sys.maxsize]

CHILD = textwrap.dedent(
    """
    import json, struct, sys
    from melody._core.connection import Connection

    lengths, limits = json.loads(sys.argv[1])
    out = []
    for is_server in (True, False):
        for limit in limits:
            for length in lengths:
                conn = Connection(is_server=is_server, max_message_size=limit)
                # A binary frame with the 64-bit length form, masked from a client.
                head = bytes([0x82, (0x80 if is_server else 0) | 127]) + struct.pack("!Q", length)
                if is_server:
                    head += b"\\x01\\x02\\x03\\x04"
                events = conn.receive_data(head + b"x" * min(length, 64))
                # An event's second item: a close code, or a payload reported by its length.
                shown = [[e[0], e[1] if isinstance(e[1], int) else len(e[1])] for e in events]
                out.append([is_server, limit, length, shown, conn.buffered])
    print(json.dumps(out))
    """
)


def run_matrix(lengths: list[int], limits: list[int]) -> list[list[object]]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([lengths, limits])],
        capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )
    assert proc.returncode == 0, (
        f"the parser crashed (exit {proc.returncode}) on an extreme length:\n{proc.stderr[-2000:]}")
    result: list[list[object]] = json.loads(proc.stdout)
    return result


def test_5_2_extreme_64_bit_lengths_against_extreme_limits_never_crash() -> None:
    limits = [limit for limit in EXTREMES if limit >= 1]
    cases = run_matrix(EXTREMES, limits)
    assert len(cases) == 2 * len(limits) * len(EXTREMES)
    for is_server, limit, length, events, buffered in cases:
        assert isinstance(limit, int) and isinstance(length, int)
        where = f"server={is_server} limit={limit} length={length}"
        if length > limit:
            assert events == [["fail", 1009]], where
        elif length <= 64:
            # The whole frame arrived: one binary message, nothing left over.
            assert events == [["binary", length]], where
            assert buffered == 0, where
        else:
            # Within the limit: waiting for the rest, holding only what arrived.
            assert events == [], where
            assert isinstance(buffered, int) and 0 < buffered <= 64 + 14, where


def test_5_2_the_64_bit_high_bit_still_fails_1002_with_the_largest_limit() -> None:
    cases = run_matrix([2**63, 2**64 - 1], [sys.maxsize])
    for _, _, _, events, _ in cases:
        assert events == [["fail", 1002]]


TRICKLE = textwrap.dedent(
    """
    import struct, sys
    from melody._core.connection import Connection

    length = int(sys.argv[1])
    conn = Connection(is_server=True, max_message_size=sys.maxsize)
    head = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", length) + b"\x01\x02\x03\x04"
    assert conn.receive_data(head) == []
    sent = len(head)
    for _ in range(16):
        assert conn.receive_data(b"y" * 65536) == []
        sent += 65536
    assert conn.buffered == sent, (conn.buffered, sent)
    print("ok")
    """
)


@pytest.mark.parametrize("length", [2**31, 2**32, 2**53, 2**63 - 1])
def test_5_2_a_huge_announced_length_grows_memory_only_with_the_bytes_sent(length: int) -> None:
    proc = subprocess.run([sys.executable, "-c", TRICKLE, str(length)], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
