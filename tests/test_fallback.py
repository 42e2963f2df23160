"""The interpreted engine: how it is selected, and that it behaves exactly as the compiled one.

Selection is checked in subprocesses (the choice is made once, when ``melody._core`` is first
imported): ``MELODY_NO_EXTENSIONS=1`` loads every engine module from its ``.py`` and nothing
compiled; extension modules that cannot be imported (hidden by a ``sys.meta_path`` finder, as
on a platform without a wheel) fall back with a RuntimeWarning, or raise ImportError under
``MELODY_EXPECT_COMPILED=1``.

Behaviour is checked differentially in this process: Hypothesis feeds the same input to a
compiled object and to the same class run by the interpreter (``melody._core.interpreted()``,
the ``.py`` sources loaded beside the compiled modules) and wants the same results,
exceptions, events, close codes and output bytes. For the pure-mode modules this checks that
compiling changed nothing (C integer types, typed arguments); for the C kernels, that the short
Python versions agree with the C ones. A server's frames are
deterministic and compared byte for byte; a client's are masked with different random keys,
so they are compared once unmasked. These need the compiled core in this process and skip
under ``MELODY_NO_EXTENSIONS=1``.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import melody._core as core
from melody._core.constants import ADMIT_OK, ADMIT_REFUSED, SEND_OK, STATE_OPEN

_interpreted = core.interpreted()
pure_connection = _interpreted.connection
pure_deflate = _interpreted.deflate
pure_frames = _interpreted.frames
pure_mask = _interpreted.mask
pure_packet = _interpreted.packet
pure_utf8 = _interpreted.utf8
pure_protocol = _interpreted.protocol
pure_fanout = _interpreted.fanout

ROOT = Path(__file__).resolve().parent.parent
CORE_DIR = ROOT / "melody" / "_core"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def extensions_built() -> bool:
    return all(
        any((CORE_DIR / f"{name}{suffix}").exists() for suffix in EXTENSION_SUFFIXES)
        for name in core.COMPILED_MODULES
    )


needs_extensions = pytest.mark.skipif(
    not extensions_built(), reason="the compiled core is not built in this tree")


# --- selection, in subprocesses --------------------------------------------------------------

# Imports melody and reports what was loaded, as JSON on the last line of stdout.
REPORT = textwrap.dedent("""
    import importlib.machinery, json, sys, warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            import melody, melody._core as core
        except ImportError as exc:
            print(json.dumps({"import_error": str(exc)}))
            raise SystemExit(0)
        from melody.hub import Melody
        Melody()  # the Python layer builds its Dispatch and Groups on whichever core loaded
    modules = {name: mod for name, mod in sys.modules.items()
               if name.startswith("melody._core.")}
    print(json.dumps({
        "compiled": [melody.COMPILED, core.COMPILED],
        "files": {name: modules[f"melody._core.{name}"].__file__ for name in core.MODULES},
        "stray": sorted(name for name in modules if name.count(".") > 2),
        "extensions": sorted(name for name, mod in modules.items() if isinstance(
            getattr(mod, "__loader__", None), importlib.machinery.ExtensionFileLoader)),
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
        "import_error": None,
    }))
""")

# Hides the extension modules of melody._core named in HIDE, as on a platform without a wheel.
HIDE_EXTENSIONS = textwrap.dedent("""
    import importlib.machinery, sys
    class HideExtensions:
        def find_spec(self, name, path=None, target=None):
            if name.rpartition(".")[0] == "melody._core" and name.rpartition(".")[2] in HIDE:
                spec = importlib.machinery.PathFinder.find_spec(name, path, target)
                if spec is not None and isinstance(
                        spec.loader, importlib.machinery.ExtensionFileLoader):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, HideExtensions())
""")


def report(env: dict[str, str] | None = None, hide: tuple[str, ...] = ()) -> dict[str, Any]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MELODY_")}
    environ.update(env or {})
    code = (f"HIDE = {set(hide)!r}\n" + HIDE_EXTENSIONS if hide else "") + REPORT
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def assert_pure(result: dict[str, Any]) -> None:
    assert result["import_error"] is None
    assert result["compiled"] == [False, False]
    assert result["stray"] == [], "modules below the engine's package"
    assert result["extensions"] == [], "an extension module was loaded next to the pure core"
    assert sorted(result["files"]) == sorted(core.MODULES)
    for name, path in result["files"].items():
        assert Path(path).parts[-2:] == ("_core", f"{name}.py"), path


def test_no_extensions_loads_the_pure_core_silently() -> None:
    result = report({"MELODY_NO_EXTENSIONS": "1"})
    assert_pure(result)
    assert result["warnings"] == []


@needs_extensions
def test_the_compiled_core_is_the_default_and_satisfies_expect_compiled() -> None:
    for env in ({}, {"MELODY_EXPECT_COMPILED": "1"}, {"MELODY_NO_EXTENSIONS": "0"}):
        result = report(env)
        assert result["import_error"] is None, env
        assert result["compiled"] == [True, True], env
        assert result["warnings"] == []
        assert sorted(result["extensions"]) == sorted(
            f"melody._core.{n}" for n in core.COMPILED_MODULES)


def test_missing_extensions_fall_back_loudly() -> None:
    result = report(hide=tuple(core.COMPILED_MODULES))
    assert_pure(result)
    assert len(result["warnings"]) == 1, result["warnings"]
    warning = result["warnings"][0]
    assert warning.startswith("RuntimeWarning: melody's compiled core could not be imported")
    assert "No module named 'melody._core." in warning


@needs_extensions
@pytest.mark.parametrize("hidden", ["fanout", "packet", "mask"])
def test_a_partial_build_falls_back_whole(hidden: str) -> None:
    # Some extensions load before the missing one fails: none of them may stay in use.
    result = report(hide=(hidden,))
    assert_pure(result)
    assert f"No module named 'melody._core.{hidden}'" in result["warnings"][0]


@pytest.mark.parametrize(
    ("env", "hide"),
    [({"MELODY_EXPECT_COMPILED": "1"}, tuple(core.COMPILED_MODULES)),
     ({"MELODY_EXPECT_COMPILED": "1"}, ("protocol",)),
     ({"MELODY_EXPECT_COMPILED": "1", "MELODY_NO_EXTENSIONS": "1"}, ())],
    ids=["extensions-hidden", "one-extension-hidden", "no-extensions-asked-for"],
)
def test_expect_compiled_without_the_compiled_core_raises(
        env: dict[str, str], hide: tuple[str, ...]) -> None:
    result = report(env, hide)
    assert result["import_error"] is not None
    assert "MELODY_EXPECT_COMPILED=1" in result["import_error"]


def test_the_pure_package_imports_nothing_compiled() -> None:
    # With every extension hidden the pure modules still import: they never reach for one.
    result = report({"MELODY_NO_EXTENSIONS": "1"}, hide=tuple(core.COMPILED_MODULES))
    assert_pure(result)


# --- differential: the compiled objects against their pure twins ------------------------------

if core.COMPILED:
    from melody._core import connection as c_connection
    from melody._core import deflate as c_deflate
    from melody._core import fanout as c_fanout
    from melody._core import frames as c_frames
    from melody._core import mask as c_mask
    from melody._core import packet as c_packet
    from melody._core import protocol as c_protocol
    from melody._core import utf8 as c_utf8

needs_compiled = pytest.mark.skipif(
    not core.COMPILED,
    reason="the differential tests need the compiled core in this process "
           "(MELODY_NO_EXTENSIONS=1 runs the pure core only)")

DIFF = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def outcome(fn: Any, *args: Any, **kwargs: Any) -> tuple[str, Any]:
    """``("ok", result)`` or ``("raised", type name, message)``: what both sides must agree on."""
    try:
        return "ok", fn(*args, **kwargs)
    except Exception as exc:  # the type and the message are compared
        return "raised", f"{type(exc).__name__}: {exc}"


def xor(data: bytes, key: bytes) -> bytes:
    n = len(data)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0,
          key: bytes | None = None, length: int | None = None) -> bytes:
    """Section 5.2 literally; ``length`` overrides the length field, ``key=None`` is unmasked."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0 if key is None else 0x80
    if n <= 125:
        head = bytes([b0, mbit | n])
    elif n <= 0xFFFF:
        head = bytes([b0, mbit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, mbit | 127]) + struct.pack("!Q", n)
    return head + (payload if key is None else key + xor(payload, key))


def unmasked_frames(data: bytes) -> list[tuple[int, int, bool, bytes]]:
    """(first byte, mask bit, length encoding, unmasked payload) of each frame in ``data``."""
    out = []
    i = 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        n, i = b1 & 0x7F, i + 2
        if n == 126:
            n, i = struct.unpack("!H", data[i : i + 2])[0], i + 2
        elif n == 127:
            n, i = struct.unpack("!Q", data[i : i + 8])[0], i + 8
        key = b""
        if b1 & 0x80:
            key, i = data[i : i + 4], i + 4
        payload = data[i : i + n]
        i += n
        out.append((b0, b1 & 0x80, b1 & 0x7F == n, xor(payload, key) if key else payload))
    assert i == len(data)
    return out


INVALID_UTF8 = [b"\xff", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xed\xa0", b"\xf4\x90\x80\x80",
                b"\xe2\x82", b"\xf0\x9f\x98", b"\xe0\x80", b"\xf5", b"\xc1\xbf"]

keys = st.binary(min_size=4, max_size=4)
texts = st.text(max_size=40).map(str.encode)
payloads = st.one_of(
    st.binary(max_size=40),
    texts,
    st.tuples(texts, st.sampled_from(INVALID_UTF8), texts).map(lambda t: t[0] + t[1] + t[2]),
    st.sampled_from([126, 200, 65535, 65536, 70000]).map(
        lambda n: ("é€a\U0001f600" * (n // 9 + 1)).encode()[:n]),
)
close_codes = st.one_of(
    st.sampled_from([0, 999, 1000, 1001, 1004, 1005, 1006, 1007, 1011, 1014, 1015, 1016, 2999,
                     3000, 4999, 5000, 65535]),
    st.integers(0, 65535),
)


@st.composite
def stream_items(draw: st.DrawFn) -> tuple[Any, ...]:
    """One piece of a peer's byte stream, described for ``build_stream``."""
    kind = draw(st.sampled_from(["message"] * 5 + ["control", "frame", "close", "deflated"]))
    if kind in ("message", "deflated"):
        opcode = draw(st.sampled_from([OP_TEXT, OP_BINARY]))
        data = draw(payloads)
        cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
        controls = draw(st.lists(st.tuples(st.sampled_from([OP_PING, OP_PONG]),
                                           st.binary(max_size=125)), max_size=2))
        return kind, opcode, data, cuts, controls
    if kind == "control":
        return kind, draw(st.sampled_from([OP_PING, OP_PONG])), draw(st.binary(max_size=130))
    if kind == "close":
        payload = draw(st.one_of(
            st.just(b""), st.binary(min_size=1, max_size=1),
            st.tuples(close_codes, st.one_of(texts, st.sampled_from(INVALID_UTF8))).map(
                lambda t: struct.pack("!H", t[0]) + t[1][:123])))
        return kind, payload
    opcode = draw(st.one_of(st.sampled_from([0, 1, 2, 8, 9, 10]), st.integers(0, 15)))
    fin = draw(st.booleans())
    rsv = draw(st.sampled_from([0, 0, 0, 0, 1, 2, 4, 7]))
    special = draw(st.sampled_from(["plain"] * 4 + ["msb", "garbage-deflate", "mask-flip"]))
    data = draw(payloads if special != "garbage-deflate" else st.binary(max_size=30))
    return "frame", opcode, fin, rsv, special, data


def build_stream(items: list[tuple[Any, ...]], *, masked: bool, key: bytes,
                 compressor: Any) -> bytes:
    """The bytes of ``items``: masked with ``key`` (a client's frames) or not (a server's);
    ``deflated`` messages are compressed with ``compressor`` (context takeover or not)."""
    k = key if masked else None
    out = []
    for item in items:
        kind = item[0]
        if kind in ("message", "deflated"):
            _, opcode, data, cuts, controls = item
            rsv = 0
            if kind == "deflated":
                data = compressor(data)
                cuts = [min(c, len(data)) for c in cuts]
                rsv = 4
            bounds = [0, *cuts, len(data)]
            pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
            for i, piece in enumerate(pieces):
                last = i == len(pieces) - 1
                out.append(frame(opcode if i == 0 else OP_CONT, piece, fin=last,
                                 rsv=rsv if i == 0 else 0, key=k))
                if not last:
                    out.extend(frame(op, p, key=k) for op, p in controls)
        elif kind == "control":
            out.append(frame(item[1], item[2], key=k))
        elif kind == "close":
            out.append(frame(OP_CLOSE, item[1], key=k))
        else:
            _, opcode, fin, rsv, special, data = item
            if special == "mask-flip":
                out.append(frame(opcode, data, fin=fin, rsv=rsv, key=None if masked else key))
            elif special == "msb":
                out.append(frame(opcode, b"", fin=fin, rsv=rsv, key=k,
                                 length=(1 << 63) | len(data)))
            else:
                out.append(frame(opcode, data, fin=fin, rsv=rsv, key=k))
    return b"".join(out)


def snapshot(conn: Any, events: list[Any], sent: bytes, is_server: bool) -> tuple[Any, ...]:
    frames_out: Any = sent if is_server else unmasked_frames(sent)
    return (events, frames_out, conn.state, conn.close_code, conn.close_reason, conn.buffered,
            conn.message_size, conn.message_budget, conn.stalled)


@st.composite
def connection_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    is_server = draw(st.booleans())
    deflate = draw(st.sampled_from([None, None, (15, False), (15, True), (9, False), (12, True)]))
    items = draw(st.lists(stream_items(), min_size=1, max_size=8))
    sends = draw(st.lists(st.one_of(
        st.tuples(st.just("text"), st.text(max_size=300)),
        st.tuples(st.just("binary"), st.binary(max_size=300)),
        st.tuples(st.just("ping"), st.binary(max_size=126)),
        st.tuples(st.just("close"), st.tuples(close_codes, st.text(max_size=130))),
    ), max_size=4))
    return {
        "is_server": is_server,
        "deflate": deflate,
        "items": items,
        "key": draw(keys),
        "max_message_size": draw(st.sampled_from([1 << 20, 1 << 20, 1 << 40, 1, 100, 5000])),
        "cuts": draw(st.lists(st.integers(0, 1 << 17), max_size=6)),
        "buffered": draw(st.booleans()),
        "truncate": draw(st.integers(0, 3)) == 0,
        "sends": sends,
        "compress_min_size": draw(st.sampled_from([0, 0, 50])),
        "message_budget": draw(st.sampled_from([-1, -1, 0, 1, 2])),
    }


def run_connection(module: Any, deflate_module: Any, s: dict[str, Any], data: bytes,
                   cuts: list[int]) -> list[tuple[Any, ...]]:
    """Feed ``data`` cut at ``cuts`` to a Connection of ``module`` (with its message budget),
    lift the budget, then make the sends; the observable state after each step."""
    conn = module.Connection(is_server=s["is_server"], max_message_size=s["max_message_size"])
    if s["deflate"] is not None:
        bits, no_context_takeover = s["deflate"]
        conn.inflater = deflate_module.Inflater(bits, no_context_takeover)
        conn.deflater = deflate_module.Deflater(bits, no_context_takeover)
        conn.compress_min_size = s["compress_min_size"]
    conn.message_budget = s["message_budget"]
    steps = []
    last = 0
    for cut in [*cuts, len(data)]:
        piece = data[last:cut]
        last = cut
        if s["buffered"]:
            pos = 0
            while pos < len(piece):
                view = conn.get_buffer(-1)
                n = min(len(view), len(piece) - pos)
                view[:n] = piece[pos : pos + n]
                view.release()
                conn.buffer_updated(n)
                pos += n
            events = conn.receive_data(b"")
        else:
            events = conn.receive_data(piece)
        steps.append(snapshot(conn, events, conn.data_to_send(), s["is_server"]))
    # Lift the budget: what it held is parsed now.
    conn.message_budget = -1
    steps.append(snapshot(conn, conn.receive_data(b""), conn.data_to_send(), s["is_server"]))
    for kind, arg in s["sends"]:
        if kind == "text":
            result = outcome(conn.send_text, arg)
        elif kind == "binary":
            result = outcome(conn.send_binary, arg)
        elif kind == "ping":
            result = outcome(conn.send_ping, arg)
        else:
            result = outcome(conn.send_close, *arg)
        steps.append((result, *snapshot(conn, [], conn.data_to_send(), s["is_server"])))
    return steps


@needs_compiled
@DIFF
@given(s=connection_scenarios())
def test_connection_pure_equals_compiled(s: dict[str, Any]) -> None:
    # Without permessage-deflate, RSV1 frames still arrive (and must fail alike).
    bits, no_context_takeover = s["deflate"] or (15, False)
    stream = zlib.compressobj(6, zlib.DEFLATED, -bits)

    def compressor(data: bytes) -> bytes:
        nonlocal stream
        out = stream.compress(data) + stream.flush(zlib.Z_SYNC_FLUSH)
        if no_context_takeover:
            stream = zlib.compressobj(6, zlib.DEFLATED, -bits)
        return out[:-4]

    # The compressor is stateful: build the stream once, feed the same bytes to both sides.
    data = build_stream(s["items"], masked=s["is_server"], key=s["key"], compressor=compressor)
    if s["truncate"] and data:
        data = data[: len(data) - 1 - s["cuts"][0] % len(data)] if s["cuts"] else data[:-1]
    cuts = sorted({c % (len(data) + 1) for c in s["cuts"]})
    compiled = run_connection(c_connection, c_deflate, s, data, cuts)
    pure = run_connection(pure_connection, pure_deflate, s, data, cuts)
    assert pure == compiled


@needs_compiled
@DIFF
@given(data=st.binary(max_size=600), key=st.binary(min_size=0, max_size=6),
       offset=st.integers(0, 2**40))
def test_mask_pure_equals_compiled(data: bytes, key: bytes, offset: int) -> None:
    assert outcome(pure_mask.mask, data, key) == outcome(c_mask.mask, data, key)
    mine, theirs = bytearray(data), bytearray(data)
    assert (outcome(pure_mask.mask_into, mine, key, offset)
            == outcome(c_mask.mask_into, theirs, key, offset))
    assert mine == theirs


utf8_pieces = st.one_of(
    st.text(max_size=20).map(str.encode), st.sampled_from(INVALID_UTF8), st.binary(max_size=6),
    st.sampled_from([b"\xed", b"\xf4", b"\xf0", b"\xe0", b"\xbf", b"\x9f", b"\xa0\x80"]),
)


@needs_compiled
@DIFF
@given(parts=st.lists(utf8_pieces, max_size=12), cuts=st.lists(st.integers(0, 200), max_size=8))
def test_utf8_pure_equals_compiled(parts: list[bytes], cuts: list[int]) -> None:
    data = b"".join(parts)
    assert pure_utf8.validate(data) == c_utf8.validate(data)
    mine, theirs = pure_utf8.Utf8Validator(), c_utf8.Utf8Validator()
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    view = memoryview(data)
    for a, b in itertools.pairwise(bounds):
        assert mine.feed(view[a:b]) == theirs.feed(view[a:b])
        assert (mine.consumed, mine.complete()) == (theirs.consumed, theirs.complete())
    mine.reset()
    theirs.reset()
    assert (mine.consumed, mine.complete()) == (theirs.consumed, theirs.complete()) == (0, True)


@needs_compiled
@DIFF
@given(opcode=st.integers(-2, 17), payload=payloads, fin=st.booleans(), rsv1=st.booleans(),
       code=st.one_of(close_codes, st.integers(-5, 70000)),
       reason=st.one_of(st.text(max_size=140), st.binary(max_size=140)))
def test_frames_pure_equal_compiled(opcode: int, payload: bytes, fin: bool, rsv1: bool,
                                    code: int, reason: str | bytes) -> None:
    kwargs = {"fin": fin, "rsv1": rsv1}
    assert (outcome(pure_frames.encode_frame, opcode, payload, **kwargs)
            == outcome(c_frames.encode_frame, opcode, payload, **kwargs))
    mine = outcome(pure_frames.encode_frame, opcode, payload, mask=True, **kwargs)
    theirs = outcome(c_frames.encode_frame, opcode, payload, mask=True, **kwargs)
    assert mine[0] == theirs[0]
    if mine[0] == "ok":
        assert unmasked_frames(mine[1]) == unmasked_frames(theirs[1])
    else:
        assert mine == theirs
    assert outcome(pure_frames.encode_close, code, reason) == outcome(
        c_frames.encode_close, code, reason)
    mine = outcome(pure_frames.encode_close, code, reason, mask=True)
    theirs = outcome(c_frames.encode_close, code, reason, mask=True)
    assert mine[0] == theirs[0]
    if mine[0] == "ok":
        assert unmasked_frames(mine[1]) == unmasked_frames(theirs[1])
    close_payload = struct.pack("!H", code & 0xFFFF) + (
        reason.encode() if isinstance(reason, str) else reason)
    for p in (close_payload, close_payload[:1], b""):
        assert outcome(pure_frames.parse_close, p) == outcome(c_frames.parse_close, p)
    assert pure_frames.is_valid_close_code(code) == c_frames.is_valid_close_code(code)
    for name in pure_frames.__all__:
        if name.startswith("OP_"):
            assert getattr(pure_frames, name) == getattr(c_frames, name)


deflate_params = st.tuples(st.integers(9, 15), st.booleans(), st.integers(-1, 9),
                           st.integers(1, 9))
deflate_messages = st.lists(st.one_of(
    st.binary(max_size=300), st.text(max_size=200).map(str.encode),
    st.tuples(st.binary(min_size=1, max_size=8), st.integers(1, 20000)).map(
        lambda t: (t[0] * t[1])[: t[1]]),
    st.sampled_from([b"", bytes(70000), os.urandom(70000)]),
), max_size=8)


@needs_compiled
@DIFF
@given(params=deflate_params, messages=deflate_messages)
def test_deflate_round_trips_pure_equal_compiled(params: tuple[int, bool, int, int],
                                                 messages: list[bytes]) -> None:
    bits, no_context_takeover, level, mem_level = params
    mine = pure_deflate.Deflater(bits, no_context_takeover, level, mem_level)
    theirs = c_deflate.Deflater(bits, no_context_takeover, level, mem_level)
    assert repr(mine) == repr(theirs)
    inflaters: list[Any] = [pure_deflate.Inflater(bits, no_context_takeover),
                            c_deflate.Inflater(bits, no_context_takeover)]
    for data in messages:
        payload = mine.compress(data)
        assert payload == theirs.compress(data)
        for inflater in inflaters:
            assert inflater.decompress(payload, len(data)) == data


@st.composite
def inflater_inputs(draw: st.DrawFn) -> tuple[int, bool, list[tuple[bytes, int]]]:
    """Payloads for one Inflater: valid ones (sync-flushed, final blocks, several blocks)
    mixed with truncated, corrupted, tail-keeping and random ones, each with a size limit."""
    bits = draw(st.integers(8, 15))
    no_context_takeover = draw(st.booleans())
    stream = zlib.compressobj(draw(st.integers(0, 9)), zlib.DEFLATED, -max(bits, 9))
    out = []
    for _ in range(draw(st.integers(1, 8))):
        data = draw(st.one_of(st.binary(max_size=200), st.text(max_size=100).map(str.encode),
                              st.integers(0, 5000).map(lambda n: b"ab" * n)))
        how = draw(st.sampled_from(["sync", "sync", "sync", "finish", "two", "truncate",
                                    "flip", "keep-tail", "random", "empty"]))
        if how == "random":
            payload = draw(st.binary(max_size=40))
        elif how == "empty":
            payload = b""
        elif how == "finish":
            payload = stream.compress(data) + stream.flush(zlib.Z_FINISH)
            stream = zlib.compressobj(6, zlib.DEFLATED, -max(bits, 9), zdict=data or b"x")
        else:
            payload = stream.compress(data) + stream.flush(zlib.Z_SYNC_FLUSH)
            if how == "two":
                payload += stream.compress(data[::-1]) + stream.flush(zlib.Z_SYNC_FLUSH)
            if how != "keep-tail":
                payload = payload[:-4]
            if how == "truncate" and payload:
                payload = payload[: draw(st.integers(0, len(payload) - 1))]
            elif how == "flip" and payload:
                i = draw(st.integers(0, len(payload) - 1))
                payload = payload[:i] + bytes([payload[i] ^ draw(st.integers(1, 255))]) + (
                    payload[i + 1 :])
        limit = draw(st.sampled_from([sys.maxsize, 1 << 20, len(data), max(len(data) - 1, 0),
                                      0, 10]))
        out.append((payload, limit))
    return bits, no_context_takeover, out


@needs_compiled
@DIFF
@given(case=inflater_inputs())
def test_inflater_verdicts_pure_equal_compiled(case: tuple[int, bool, list[tuple[bytes, int]]]
                                               ) -> None:
    bits, no_context_takeover, payloads_ = case
    mine = pure_deflate.Inflater(bits, no_context_takeover)
    theirs = c_deflate.Inflater(bits, no_context_takeover)
    assert repr(mine) == repr(theirs)
    for payload, limit in payloads_:
        assert outcome(mine.decompress, payload, limit) == outcome(theirs.decompress, payload,
                                                                   limit)


def test_inflater_final_blocks_and_boundaries_pure() -> None:
    # Cases the random inputs rarely reach, on the pure Inflater (and the compiled one when it
    # is loaded): a message that is only a BFINAL block, one referring back past it, one
    # keeping its own 00 00 ff ff, one cut inside a stored block, one of empty final blocks.
    text = b"context takeover " * 40
    final = zlib.compressobj(6, zlib.DEFLATED, -15)
    final_only = final.compress(text) + final.flush(zlib.Z_FINISH)
    again = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=text)
    referring = again.compress(text) + again.flush(zlib.Z_SYNC_FLUSH)
    alone = zlib.compressobj(6, zlib.DEFLATED, -15)
    kept_tail = alone.compress(text) + alone.flush(zlib.Z_SYNC_FLUSH)
    modules = [pure_deflate] + ([c_deflate] if core.COMPILED else [])
    for module in modules:
        inflater = module.Inflater()
        assert inflater.decompress(final_only, sys.maxsize) == text
        assert inflater.decompress(referring[:-4], sys.maxsize) == text
        assert inflater.decompress(final_only + referring[:-4], sys.maxsize) == text + text
        for payload in (kept_tail, bytes.fromhex("000a00f5ff4865")):
            with pytest.raises(ValueError, match="block boundary"):
                module.Inflater().decompress(payload, sys.maxsize)
        with pytest.raises(ValueError, match="too many final blocks"):
            module.Inflater().decompress(b"\x03\x00" * 100_000 + b"\x00", sys.maxsize)
        # At the size limit exactly, then one byte over.
        payload = module.Deflater().compress(text)
        assert module.Inflater().decompress(payload, len(text)) == text
        with pytest.raises(OverflowError):
            module.Inflater().decompress(payload, len(text) - 1)


def packet_outcome(fn: Any, *args: Any) -> tuple[Any, ...]:
    try:
        return "ok", fn(*args)
    except Exception as exc:  # the type, the message and a PacketError's status are compared
        return "raised", type(exc).__name__, str(exc), getattr(exc, "status", None)


packet_fields = st.one_of(st.integers(-3, 0x1_0000_0003),
                          st.sampled_from([0, 1, 0xFF, 0x100, 0xFFFF, 0x10000, 0xFFFFFFFF, True]))


@needs_compiled
@DIFF
@given(command=packet_fields, payload=st.binary(max_size=40), msg_id=packet_fields,
       flags=packet_fields, magic=packet_fields, junk=st.binary(max_size=30),
       cut=st.integers(0, 60), other_magic=st.integers(-(2**31), 2**31 - 1))
def test_packet_pure_equals_compiled(command: int, payload: bytes, msg_id: int, flags: int,
                                     magic: int, junk: bytes, cut: int,
                                     other_magic: int) -> None:
    built = packet_outcome(c_packet.build, command, payload, msg_id, flags, magic)
    assert packet_outcome(pure_packet.build, command, payload, msg_id, flags, magic) == built
    whole = built[1] if built[0] == "ok" else junk
    for data in (whole, junk, whole[:cut], whole + junk, bytearray(whole)):
        for m in (c_packet.DEFAULT_MAGIC, other_magic, magic if magic < 2**31 else 0):
            assert (packet_outcome(pure_packet.parse, data, m)
                    == packet_outcome(c_packet.parse, data, m))
    for name in c_packet.__all__:
        if name.isupper():
            assert getattr(pure_packet, name) == getattr(c_packet, name), name


# --- differential: the server protocol and the fan-out loop ---------------------------------
#
# The same bytes through a compiled ProtocolCore and an interpreted one, each over a transport
# that records what it is given and an event loop whose callbacks run when the test says: the
# same handler calls, the same bytes written, the same state and counters.

HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             b"Sec-WebSocket-Version: 13\r\n\r\n")
RESPONSE = b"HTTP/1.1 101 Switching Protocols\r\n\r\n"


class RecordingTransport:
    """What asyncio's transport offers the protocol, recording each call in one shared log."""

    def __init__(self, log: list[Any], name: int) -> None:
        self.log = log
        self.name = name

    def write(self, data: bytes) -> None:
        self.log.append((self.name, "write", bytes(data)))

    def writelines(self, items: list[bytes]) -> None:
        self.log.append((self.name, "writelines", [bytes(x) for x in items]))

    def close(self) -> None:
        self.log.append((self.name, "close"))

    def abort(self) -> None:
        self.log.append((self.name, "abort"))

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.log.append((self.name, "limits", high))

    def pause_reading(self) -> None:
        self.log.append((self.name, "pause_reading"))

    def resume_reading(self) -> None:
        self.log.append((self.name, "resume_reading"))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class ManualLoop:
    """The loop methods the protocol calls; call_soon callbacks run on ``run_ready``."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log
        self.ready: list[Any] = []

    def call_soon(self, callback: Any, *args: Any) -> None:
        self.ready.append((callback, args))

    def call_later(self, delay: float, callback: Any, *args: Any) -> Any:
        self.log.append(("call_later", delay, getattr(callback, "__name__", "?")))

        class Handle:
            def cancel(self) -> None:
                pass
        return Handle()

    def time(self) -> float:
        return 100.0

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        self.log.append(("exception", context["message"], repr(context.get("exception"))))

    def run_ready(self) -> None:
        while self.ready:
            callback, args = self.ready.pop(0)
            callback(*args)


def make_dispatch(protocol_module: Any, log: list[Any], s: dict[str, Any]) -> Any:
    d = protocol_module.Dispatch()
    d.loop = ManualLoop(log)
    d.queue_limit = s["queue_limit"]
    d.overflow_policy = s["overflow_policy"]
    d.max_message_size = s["max_message_size"]
    d.direct_writes = s["direct_writes"]

    def on_request(proto: Any, block: bytes) -> None:
        log.append(("request", block))
        if s["refuse"]:
            proto.reject(b"HTTP/1.1 403 Forbidden\r\n\r\n")
        else:
            log.append(("accept", proto.accept(RESPONSE, "session")))

    def on_text(session: Any, text: str) -> None:
        log.append(("text", session, text))
        if s["echo"]:
            log.append(("echo", proto_of[session].send_text(text)))

    def on_binary(session: Any, data: bytes) -> None:
        log.append(("binary", session, data))
        if s["echo"]:
            log.append(("echo", proto_of[session].send_binary(data)))

    proto_of: dict[str, Any] = {}
    d.on_request = on_request
    d.on_text = on_text
    d.on_binary = on_binary
    d.on_pong = lambda session: log.append(("pong", session))
    d.on_close = lambda session, code, reason: log.append(("close", session, code, reason))
    d.on_protocol_error = lambda session, code, reason: log.append(
        ("protocol_error", session, code, reason))
    d.on_disconnect = lambda proto: log.append(("disconnect", proto.close_code))
    d.on_handler_error = lambda session, exc: log.append(("handler_error", repr(exc)))
    return d, proto_of


def run_protocol(protocol_module: Any, s: dict[str, Any], data: bytes,
                 cuts: list[int]) -> list[Any]:
    log: list[Any] = []
    d, proto_of = make_dispatch(protocol_module, log, s)
    proto = protocol_module.WebSocketProtocol(d)
    proto_of["session"] = proto
    proto.connection_made(RecordingTransport(log, 0))
    last = 0
    for step, cut in enumerate([*cuts, len(data)]):
        piece = data[last:cut]
        last = cut
        if step == s["pause_at"]:
            proto.pause_writing()
            log.append(("paused", proto.writing_paused))
        if step == s["resume_at"]:
            proto.resume_writing()
        pos = 0
        while pos < len(piece):
            view = proto.get_buffer(-1)
            n = min(len(view), len(piece) - pos)
            view[:n] = piece[pos : pos + n]
            view.release()
            proto.buffer_updated(n)
            pos += n
        d.loop.run_ready()
        log.append(("step", proto.state, proto.close_code, proto.buffered, proto.queued,
                    proto.queued_bytes, proto.dropped))
    for kind, arg in s["sends"]:
        if kind == "text":
            log.append(("send", outcome(proto.send_text, arg)))
        elif kind == "binary":
            log.append(("send", outcome(proto.send_binary, arg)))
        elif kind == "ping":
            log.append(("send", outcome(proto.send_ping, arg)))
        else:
            log.append(("send", outcome(proto.close, *arg)))
        d.loop.run_ready()
    proto.connection_lost(None)
    log.append(("stats", d.stats(), proto.state, proto.close_code))
    return log


@st.composite
def protocol_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    items = draw(st.lists(stream_items().filter(lambda item: item[0] != "deflated"),
                          min_size=1, max_size=8))
    return {
        "items": items,
        "key": draw(keys),
        "split_handshake": draw(st.integers(0, len(HANDSHAKE))),
        "cuts": draw(st.lists(st.integers(0, 1 << 17), max_size=6)),
        "refuse": draw(st.integers(0, 7)) == 0,
        "echo": draw(st.booleans()),
        "queue_limit": draw(st.sampled_from([0, 1, 2, 256])),
        "overflow_policy": draw(st.sampled_from([0, 1, 2])),
        "max_message_size": draw(st.sampled_from([1 << 20, 100, 5000])),
        "direct_writes": draw(st.booleans()),
        "pause_at": draw(st.integers(-1, 6)),
        "resume_at": draw(st.integers(-1, 6)),
        "sends": draw(st.lists(st.one_of(
            st.tuples(st.just("text"), st.text(max_size=300)),
            st.tuples(st.just("binary"), st.binary(max_size=300)),
            st.tuples(st.just("ping"), st.binary(max_size=126)),
            st.tuples(st.just("close"), st.tuples(close_codes, st.text(max_size=130))),
        ), max_size=4)),
    }


@needs_compiled
@DIFF
@given(s=protocol_scenarios())
def test_protocol_interpreted_equals_compiled(s: dict[str, Any]) -> None:
    frames_data = build_stream(s["items"], masked=True, key=s["key"], compressor=None)
    data = HANDSHAKE + frames_data
    cuts = sorted({s["split_handshake"], *(c % (len(data) + 1) for c in s["cuts"])})
    compiled = run_protocol(c_protocol, s, data, cuts)
    interpreted = run_protocol(pure_protocol, s, data, cuts)
    assert interpreted == compiled


def run_fanout(protocol_module: Any, fanout_module: Any, s: dict[str, Any]) -> list[Any]:
    log: list[Any] = []
    d, _ = make_dispatch(protocol_module, log, {**s, "refuse": False, "echo": False,
                                                "max_message_size": 1 << 20})
    group = fanout_module.Group()
    protos = []
    for i in range(s["connections"]):
        proto = protocol_module.WebSocketProtocol(d)
        proto.connection_made(RecordingTransport(log, i))
        view = proto.get_buffer(-1)
        view[: len(HANDSHAKE)] = HANDSHAKE
        view.release()
        proto.buffer_updated(len(HANDSHAKE))
        protos.append(proto)
        log.append(("added", group.add(proto)))
    for i in s["paused"]:
        if i < len(protos):
            protos[i].pause_writing()
    for i in s["closed"]:
        if i < len(protos):
            protos[i].abort()
    for i in s["removed"]:
        if i < len(protos):
            log.append(("discarded", group.discard(protos[i])))
    for kind, payload, exclude, odd_only, via_group, same_iteration in s["broadcasts"]:
        excluded = protos[exclude] if exclude is not None and exclude < len(protos) else None
        predicate = (lambda session: protos.index(session) % 2 == 1) if odd_only else None
        for proto in protos:
            proto.session = proto
        recipients: list[Any] = []
        if via_group:
            send = group.broadcast_text if kind == "text" else group.broadcast_binary
            result = send(payload, excluded, predicate, recipients)
        else:
            send = (fanout_module.broadcast_text if kind == "text"
                    else fanout_module.broadcast_binary)
            result = send(group.members(), payload, excluded, predicate, recipients)
        sent, dropped = result
        log.append(("broadcast", sent, None if dropped is None else
                    [protos.index(p) for p in dropped], [protos.index(p) for p in recipients]))
        if not same_iteration:  # else: a burst of broadcasts in one loop iteration
            d.loop.run_ready()
    d.loop.run_ready()
    for i, proto in enumerate(protos):
        log.append(("end", i, proto.state, proto.queued, proto.queued_bytes, proto.dropped,
                    i in group, len(group)))
    log.append(("stats", d.stats()))
    return log


@st.composite
def fanout_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(0, 6))
    indexes = st.integers(0, max(n - 1, 0))
    return {
        "connections": n,
        "paused": draw(st.lists(indexes, max_size=3)),
        "closed": draw(st.lists(indexes, max_size=2)),
        "removed": draw(st.lists(indexes, max_size=2)),
        "queue_limit": draw(st.sampled_from([0, 1, 2, 256])),
        "overflow_policy": draw(st.sampled_from([0, 1, 2])),
        "direct_writes": draw(st.booleans()),
        "broadcasts": draw(st.lists(st.tuples(
            st.sampled_from(["text", "binary"]),
            st.one_of(st.text(max_size=200), st.binary(max_size=200)),
            st.one_of(st.none(), indexes), st.booleans(), st.booleans(), st.booleans(),
        ).map(lambda t: (t[0], t[1] if (t[0] == "text") == isinstance(t[1], str)
                         else (t[1].decode("latin-1") if t[0] == "text" else t[1].encode()),
                         *t[2:])), max_size=6)),
    }


@needs_compiled
@DIFF
@given(s=fanout_scenarios())
def test_fanout_interpreted_equals_compiled(s: dict[str, Any]) -> None:
    compiled = run_fanout(c_protocol, c_fanout, s)
    interpreted = run_fanout(pure_protocol, pure_fanout, s)
    assert interpreted == compiled


def foreign_class(protocol_module: Any) -> type:
    """A plain-Python ForeignConnection of ``protocol_module`` that records what reaches it."""

    class Recorder(protocol_module.ForeignConnection):  # type: ignore[misc,name-defined]
        __slots__ = ("log", "name", "budget")

        def admit_message(self) -> int:
            self.log.append((self.name, "admit", self.budget))
            if self.budget == 0:
                return ADMIT_REFUSED
            self.budget -= 1
            return ADMIT_OK

        def write_message(self, opcode: int, message: Any) -> int:
            self.log.append((self.name, "message", opcode, type(message).__name__,
                             bytes(message) if opcode == OP_BINARY else message))
            return SEND_OK

        def write_close(self, code: int, reason: Any) -> int:
            self.log.append((self.name, "close", code, reason))
            return SEND_OK

    return Recorder


def run_foreign(protocol_module: Any, fanout_module: Any, s: dict[str, Any]) -> list[Any]:
    log: list[Any] = []
    d, _ = make_dispatch(protocol_module, log, {**s, "refuse": False, "echo": False,
                                                "max_message_size": 1 << 20,
                                                "overflow_policy": 0, "queue_limit": 256,
                                                "direct_writes": False})
    group = fanout_module.Group()
    native = protocol_module.WebSocketProtocol(d)
    native.connection_made(RecordingTransport(log, "native"))
    view = native.get_buffer(-1)
    view[: len(HANDSHAKE)] = HANDSHAKE
    view.release()
    native.buffer_updated(len(HANDSHAKE))
    native.session = "native"
    group.add(native)
    Recorder = foreign_class(protocol_module)
    foreign = Recorder(d)
    foreign.log, foreign.name, foreign.budget = log, "foreign", s["budget"]
    # Only while the far side holds a send up is admission asked (else every message goes).
    foreign.send_waiting = s["waiting"]
    foreign.session = "foreign"
    foreign.state = STATE_OPEN
    group.add(foreign)
    for kind, payload in s["steps"]:
        if kind == "text":
            log.append(("sent", group.broadcast_text(payload, None, None, None)[0]))
        elif kind == "binary":
            log.append(("sent", group.broadcast_binary(payload, None, None, None)[0]))
        elif kind == "write":
            log.append(("write", outcome(foreign.send_text, payload)))
        elif kind == "receive":
            foreign.receive_message(OP_TEXT, payload, len(payload.encode()))
        elif kind == "ping":
            log.append(("ping", outcome(foreign.send_ping, b"x")))
        else:
            log.append(("close", outcome(foreign.close, 1000, payload)))
        d.loop.run_ready()
    log.append(("end", foreign.state, foreign.close_code, foreign.message_size, d.stats()))
    return log


@st.composite
def foreign_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "budget": draw(st.integers(0, 4)),
        "waiting": draw(st.booleans()),
        "steps": draw(st.lists(st.one_of(
            st.tuples(st.sampled_from(["text", "write", "receive", "close"]),
                      st.text(max_size=60)),
            st.tuples(st.just("binary"), st.binary(max_size=60)),
            st.tuples(st.just("ping"), st.none()),
        ), max_size=8)),
    }


@needs_compiled
@DIFF
@given(s=foreign_scenarios())
def test_foreign_connection_interpreted_equals_compiled(s: dict[str, Any]) -> None:
    # The hooks the ASGI adapter answers, reached the same way by both builds of the fan-out
    # and the connection, beside a native connection in the same group.
    compiled = run_foreign(c_protocol, c_fanout, s)
    interpreted = run_foreign(pure_protocol, pure_fanout, s)
    assert interpreted == compiled
    messages = [entry for entry in compiled if entry[1:2] == ("message",)]
    asked = [entry for entry in compiled if entry[1:2] == ("admit",)]
    if s["waiting"]:
        assert len(messages) <= s["budget"]  # admission refused the rest
    else:
        assert asked == []  # a far side that keeps up is never asked
