"""Fuzzing the frame parser and the handshake parser: no crash, no hang, and every rejection a
proper close code or HTTP status.

Three layers, each bounded: hypothesis against the sans-I/O ``Connection`` and
``parse_request``/``validate_upgrade`` (a few hundred examples each); a seeded random fuzz
against a running hub (bytes as the handshake, bytes after it) with a healthy client checked
after; and atheris (coverage-guided, when it is installed) for a bounded number of runs in a
subprocess.
"""

from __future__ import annotations

import asyncio
import os
import random
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from e2e_support import HOST, RawClient, port_of, upgrade_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prod_support import echo, round_trip

from melody import Config, HandshakeError, Melody
from melody._core.connection import Connection
from melody._core.constants import STATE_CLOSED
from melody.handshake import error_response, is_upgrade_request, parse_request, validate_upgrade

Serve = Callable[..., Awaitable[tuple[Melody, str]]]

#: Close codes the hub fails a connection with (RFC 6455 7.4.1).
FAIL_CODES = {1002, 1007, 1009}
#: HTTP statuses the handshake parser and validator refuse with.
HANDSHAKE_STATUSES = {400, 405, 426, 505}

FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of the unmasked frames a server connection produced."""
    frames, i = [], 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        assert not b1 & 0x80, "server frames are never masked"
        n, i = b1 & 0x7F, i + 2
        if n == 126:
            n, i = struct.unpack("!H", data[i:i + 2])[0], i + 2
        elif n == 127:
            n, i = struct.unpack("!Q", data[i:i + 8])[0], i + 8
        frames.append((b0 & 0x0F, data[i:i + n]))
        i += n
    return frames


def check_connection(chunks: list[bytes], max_size: int = 4096) -> None:
    conn = Connection(True, max_size)
    events = []
    for chunk in chunks:
        events.extend(conn.receive_data(chunk))
        if conn.state == STATE_CLOSED:
            break
    out = server_frames(conn.data_to_send())
    fails = [e for e in events if e[0] == "fail"]
    for event in events:
        assert event[0] in ("text", "binary", "ping", "pong", "close", "fail"), event
        if event[0] == "text":
            assert isinstance(event[1], str)
        if event[0] in ("text", "binary"):
            assert len(event[1]) <= max_size
    if fails:
        assert len(fails) == 1 and events[-1] is fails[0], "nothing is delivered after a failure"
        code = fails[0][1]
        assert code in FAIL_CODES, fails
        close = out[-1]
        assert close[0] == 0x8 and struct.unpack("!H", close[1][:2])[0] == code
        assert conn.state == STATE_CLOSED and conn.close_code == code


def masked(opcode: int, payload: bytes, fin: bool, rsv: int, key: bytes) -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    stream = (key * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    return head + key + body


frames_strategy = st.lists(
    st.builds(
        masked,
        opcode=st.sampled_from([0, 1, 2, 8, 9, 10, 3, 11]),
        payload=st.one_of(st.binary(max_size=200), st.text(max_size=60).map(str.encode),
                          st.binary(min_size=4000, max_size=5000)),
        fin=st.booleans(),
        rsv=st.sampled_from([0, 0, 0, 1, 2, 4]),
        key=st.binary(min_size=4, max_size=4)),
    max_size=12)


@FUZZ
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=6))
def test_frame_parser_survives_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    points = [*sorted(set(cuts)), len(data)]
    chunks, start = [], 0
    for point in points:
        chunks.append(data[start:point])
        start = max(start, point)
    check_connection(chunks)


@FUZZ
@given(frames=frames_strategy, split=st.integers(1, 64))
def test_frame_parser_survives_frame_sequences(frames: list[bytes], split: int) -> None:
    stream = b"".join(frames)
    check_connection([stream[i:i + split] for i in range(0, len(stream), split)] or [b""])


#: The extreme integers of the hardening issue, as announced lengths and as limits.
EXTREMES = [0, 1, 2**31, 2**32, 2**53, 2**63 - 1, sys.maxsize]


def announced(opcode: int, length: int, fin: bool, key: bytes, body: bytes) -> bytes:
    """A masked frame header announcing ``length`` (16- or 64-bit form), then ``body``: the
    payload a hostile peer actually sends, usually far less than it announced."""
    head = bytes([(0x80 if fin else 0) | opcode])
    if length < 65536 and length >= 126:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    elif length < 126:
        head += bytes([0x80 | length])
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length & (2**64 - 1))
    return head + key + body


@FUZZ
@given(frames=st.lists(st.builds(
           announced, opcode=st.sampled_from([0, 1, 2, 9]),
           length=st.one_of(st.sampled_from(EXTREMES), st.integers(0, 2**64 - 1)),
           fin=st.booleans(), key=st.binary(min_size=4, max_size=4),
           body=st.binary(max_size=300)), min_size=1, max_size=4),
       limit=st.one_of(st.sampled_from([n for n in EXTREMES if n >= 1]),
                       st.integers(1, sys.maxsize)),
       split=st.integers(1, 64))
def test_frame_parser_survives_extreme_lengths_against_extreme_limits(
        frames: list[bytes], limit: int, split: int) -> None:
    stream = b"".join(frames)
    check_connection([stream[i:i + split] for i in range(0, len(stream), split)], limit)


header_line = st.one_of(
    st.sampled_from(["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Host: x",
                     "Sec-WebSocket-Version: 8", "Connection: keep-alive, Upgrade",
                     " folded", "Bad Header: x", "Origin: null"]),
    st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=255), max_size=40))


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "get", "G\x00T", ""]),
       target=st.one_of(st.sampled_from(["/", "/chat?x=1", "*", "http://h/p", "ws://h/",
                                         "/a#frag", "//x", ""]), st.text(max_size=30)),
       version=st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1", "http/1.1"]),
       lines=st.lists(header_line, max_size=8))
def test_handshake_parser_refuses_with_a_status(method: str, target: str, version: str,
                                                lines: list[str]) -> None:
    head = "\r\n".join([f"{method} {target} {version}", *lines]) + "\r\n\r\n"
    check_head(head.encode("latin-1", "replace"))


@FUZZ
@given(raw=st.binary(max_size=400))
def test_handshake_parser_survives_arbitrary_bytes(raw: bytes) -> None:
    check_head(raw + b"\r\n\r\n")


def check_head(block: bytes) -> None:
    try:
        request = parse_request(block)
        if is_upgrade_request(request):
            key = validate_upgrade(request)
            assert isinstance(key, str) and key
    except HandshakeError as exc:
        assert exc.status in HANDSHAKE_STATUSES, exc
        response = error_response(exc)  # always a sendable response
        assert response.startswith(f"HTTP/1.1 {exc.status} ".encode())


# -- against a running hub --------------------------------------------------------------------

CASES = 150


@pytest.mark.asyncio
async def test_random_bytes_against_a_running_hub(serve_hub: Serve) -> None:
    hub = echo(Melody(Config(handshake_timeout=1.0, max_message_size=8192)))
    _, url = await serve_hub(hub)
    port = port_of(url)
    rng = random.Random(20240607)
    valid_head = upgrade_request(port)

    async def one(case: int) -> None:
        if case % 2:
            # Garbage (or a mangled request) as the handshake: an HTTP error, or dropped.
            head = bytearray(valid_head)
            for _ in range(rng.randint(1, 8)):
                head[rng.randrange(len(head))] = rng.randrange(256)
            payload = bytes(head) if case % 4 == 1 else rng.randbytes(rng.randint(1, 300))
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(payload)
            answer = b""
            try:
                # Until the hub closes, or answers 101 (a mutation that kept the request valid).
                async with asyncio.timeout(5):
                    while chunk := await reader.read(65536):
                        answer += chunk
                        if answer.startswith(b"HTTP/1.1 101 ") and b"\r\n\r\n" in answer:
                            break
            except ConnectionResetError:
                pass
            writer.transport.abort()
            if answer:
                status = int(answer.split(b" ", 2)[1])
                assert status == 101 or 400 <= status <= 431, answer[:60]
            return
        # Garbage after a valid handshake: the connection stays open or fails with a code.
        client = await RawClient.connect(port)
        try:
            data = rng.randbytes(rng.randint(1, 400))
            client.send(data)
            client.send_frame(0x9, b"probe")  # a ping: a pong if the connection survived
            try:
                frame = await client.recv_frame(timeout=1.0)
            except TimeoutError:
                # The garbage announced a frame longer than what followed: the hub waits for
                # the rest of it (bounded by pong_wait), holding at most max_message_size.
                return
            if frame.opcode == 0x8:
                assert frame.close[0] in FAIL_CODES | {1000}, frame
            else:
                assert frame.opcode in (0x1, 0x2, 0xA), frame
        except (asyncio.IncompleteReadError, ConnectionResetError):
            pass  # the hub dropped the connection (e.g. after a close the fuzz sent)
        finally:
            client.close()

    for start in range(0, CASES, 25):
        await asyncio.gather(*(one(case) for case in range(start, start + 25)))
    await round_trip(url)
    async with asyncio.timeout(10):
        while len(hub):
            await asyncio.sleep(0.01)


# -- atheris --------------------------------------------------------------------------------------

ATHERIS_TARGET = '''
import struct
import sys

import atheris

with atheris.instrument_imports():
    from melody import HandshakeError
    from melody._core.connection import Connection
    from melody._core.constants import STATE_CLOSED
    from melody.handshake import error_response, is_upgrade_request, parse_request, validate_upgrade


def one(data: bytes) -> None:
    which, body = (data[0] % 2, data[1:]) if data else (0, b"")
    if which:
        try:
            request = parse_request(body + b"\\r\\n\\r\\n")
            if is_upgrade_request(request):
                validate_upgrade(request)
        except HandshakeError as exc:
            assert exc.status in (400, 405, 426), exc
            error_response(exc)
        return
    conn = Connection(True, 4096)
    for event in conn.receive_data(body):
        if event[0] == "fail":
            assert event[1] in (1002, 1007, 1009), event
            assert conn.state == STATE_CLOSED


atheris.Setup(sys.argv, one)
atheris.Fuzz()
'''


@pytest.mark.slow
def test_atheris_frame_and_handshake_parsers(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    target = tmp_path / "fuzz_target.py"
    target.write_text(ATHERIS_TARGET)
    root = Path(__file__).resolve().parent.parent.parent
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, str(target), "-runs=30000", "-seed=1", "-max_len=512",
         "-timeout=10"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 30000 runs" in result.stderr, result.stderr[-3000:]
