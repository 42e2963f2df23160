"""The sans-I/O WebSocket connection (RFC 6455 sections 5 to 7, RFC 7692 for compression).

The pure-Python twin of the compiled ``connection`` module: the same state machine, the same
events, close codes and output bytes. ``Connection`` parses frames from bytes it is given and
produces events and frames to send; it never touches a socket. The asyncio protocol
(``protocol.py``) subclasses it and overrides the ``_on_*`` and ``send_frame`` hooks.

Failing fast is deliberate: a frame header is judged as soon as its first two bytes arrive (bad
opcode, reserved bits, an unmasked client frame, a message over ``max_message_size``), before
any payload is buffered, and text is checked for UTF-8 as it arrives, not when it is complete.

Where the compiled class keeps a C buffer, this one keeps the unparsed bytes as one object:
the bytes just read while a read is being parsed, and a ``bytearray`` holding only the start of
an incomplete frame between reads (nothing at all on an idle connection).
"""

from __future__ import annotations

import operator
from typing import Any

from melody._core._pure._buffer import simple_view
from melody._core._pure.deflate import Deflater, Inflater
from melody._core._pure.frames import (
    FIN_BIT,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RSV1_BIT,
    build_close_frame,
    build_frame,
)
from melody._core._pure.mask import xor
from melody._core._pure.utf8 import Utf8Validator

STATE_HANDSHAKE = 0
STATE_OPEN = 1
STATE_CLOSING = 2
STATE_CLOSED = 3
STATE_UPGRADING = 4

SEND_OK = 0
SEND_QUEUED = 1
SEND_DROPPED = 2
SEND_CLOSED = 3
SEND_DROPPED_OLDEST = 4

ADMIT_REFUSED = 0
ADMIT_OK = 1
ADMIT_DROPPED_OLDEST = 2

# Reads of every connection land here first (see get_buffer): parsing is synchronous, and the
# bytes are copied out before buffer_updated returns, so one buffer serves the process.
# 256 KiB: larger than a socket's usual receive window, so one read rarely needs two calls.
_SCRATCH_SIZE = 262144
_scratch = bytearray(_SCRATCH_SIZE)
# Our own view, to copy from; get_buffer hands out a new one each time (a caller may release it).
_scratch_view = memoryview(_scratch)

_SSIZE_MAX = (1 << 63) - 1


def _ssize(value: Any) -> int:
    # What a Cython Py_ssize_t argument takes: anything with __index__ that fits.
    number = operator.index(value)
    if not -_SSIZE_MAX - 1 <= number <= _SSIZE_MAX:
        raise OverflowError("Python int too large to convert to C ssize_t")
    return number


def _valid_close_code(code: int) -> bool:
    # RFC 6455 7.4.1-7.4.2: 1004-1006 and 1015 are reserved and never sent; 1012-1014 are
    # registered with IANA since; 3000-4999 are for libraries and applications.
    return (1000 <= code <= 1003) or (1007 <= code <= 1014) or (3000 <= code <= 4999)


class Connection:
    """A WebSocket connection after its opening handshake, as a pure state machine.

    ``is_server`` decides the masking rules: a server requires masked frames from its peer and
    sends unmasked ones; a client the reverse, with a fresh random key per frame.
    """

    __slots__ = (
        "_base_cap",
        "_buf",
        "_events",
        "_frame_done",
        "_is_server",
        "_msg",
        "_msg_compressed",
        "_msg_opcode",
        "_msg_refused",
        "_outgoing",
        "_start",
        "_utf8",
        "close_code",
        "close_reason",
        "compress_min_size",
        "deflater",
        "inflater",
        "max_message_size",
        "message_size",
        "state",
    )

    _is_server: bool
    max_message_size: int
    state: int
    # The unparsed bytes are _buf[_start:]; _buf is None when there are none.
    _buf: bytes | bytearray | None
    _start: int
    _base_cap: int
    # The frame being received: how many payload bytes were already unmasked and checked.
    _frame_done: int
    # The fragmented message being reassembled.
    _msg_opcode: int
    _msg_compressed: bool
    _msg_refused: bool
    _msg: bytearray | None
    _utf8: Utf8Validator | None
    deflater: Deflater | None
    inflater: Inflater | None
    compress_min_size: int
    _events: list[tuple[Any, ...]] | None
    _outgoing: list[bytes] | None
    message_size: int
    close_code: int
    close_reason: str

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # The compiled class's __cinit__ (and C's zeroed fields): every field has a value even
        # if a subclass never calls Connection.__init__.
        self = super().__new__(cls)
        self._is_server = False
        self.max_message_size = 0
        self.state = 0
        self._buf = None
        self._start = 0
        self._base_cap = 0
        self._frame_done = 0
        self._msg_opcode = 0
        self._msg_compressed = False
        self._msg_refused = False
        self._msg = None
        # Per-connection objects are made on first use: a server connection never needs the
        # event and output lists (its subclass dispatches directly), and only text that
        # arrives in pieces needs the incremental validator. Idle connections stay small.
        self._utf8 = None
        self._events = None
        self._outgoing = None
        self.deflater = None
        self.inflater = None
        self.compress_min_size = 0
        self.message_size = 0
        self.close_code = 0
        self.close_reason = ""
        return self

    def __init__(
        self,
        is_server: bool = True,
        max_message_size: int = 1 << 20,
        read_buffer_size: int = 16384,
    ) -> None:
        max_message_size = _ssize(max_message_size)
        read_buffer_size = _ssize(read_buffer_size)
        if max_message_size < 1:
            raise ValueError("max_message_size must be >= 1")
        self._is_server = bool(is_server)
        self.max_message_size = max_message_size
        self._base_cap = max(read_buffer_size, 1024)
        self.state = STATE_OPEN

    @property
    def is_server(self) -> bool:
        """True for the server end (peer frames must be masked, ours are not)."""
        return self._is_server

    # -- the read buffer -------------------------------------------------------------------

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next read goes (asyncio.BufferedProtocol): a writable view.

        A view of the process-wide scratch buffer, valid until ``buffer_updated``.
        """
        return memoryview(_scratch)

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were read into the region last returned by get_buffer: process them.

        On a bare Connection the events this produces are kept until the next
        ``receive_data`` call, which returns them first (``receive_data(b"")`` collects them);
        a subclass (the server protocol) dispatches them as they come.
        """
        if nbytes:
            self._append(_scratch_view[:nbytes].tobytes())
        try:
            self._process(nbytes)
        finally:
            self._settle()

    def _append(self, data: bytes) -> None:
        # After _settle, _buf is None or a bytearray starting at the first unparsed byte.
        buf = self._buf
        if buf is None:
            self._buf = data
            self._start = 0
        elif type(buf) is bytearray:
            buf += data
        else:
            fresh = bytearray(buf[self._start :])
            fresh += data
            self._buf = fresh
            self._start = 0

    def _settle(self) -> None:
        # After processing: nothing left -> hold no memory; leftovers -> keep only them, in a
        # bytearray of our own that later reads extend.
        buf = self._buf
        if buf is None:
            return
        start = self._start
        if start >= len(buf):
            self._buf = None
            self._start = 0
        elif type(buf) is not bytearray:
            self._buf = bytearray(buf[start:] if start else buf)
            self._start = 0
        elif start:
            del buf[:start]
            self._start = 0

    def _own_buffer(self) -> bytearray:
        # The unparsed bytes in a bytearray of our own, from _start 0 (to unmask in place).
        buf = self._buf
        if type(buf) is bytearray:
            return buf
        fresh = bytearray(buf[self._start :]) if buf is not None else bytearray()
        self._buf = fresh
        self._start = 0
        return fresh

    def _drop_input(self) -> None:
        if self._buf is not None:
            self._start = len(self._buf)

    # -- sans-I/O entry points ---------------------------------------------------------------

    def receive_data(self, data: Any) -> list[tuple[Any, ...]]:
        """Feed received bytes; return the events they completed, in order.

        Events are tuples: ``("text", str)``, ``("binary", bytes)``, ``("ping", bytes)``,
        ``("pong", bytes)``, ``("close", code, reason)`` (the peer closed; the reply is queued)
        and ``("fail", code, reason)`` (a protocol violation; a close with ``code`` is queued).
        """
        if type(data) is not bytes:
            view = simple_view(data)
            data = view.tobytes()
            view.release()
        nbytes = len(data)
        if nbytes:
            self._append(data)
        try:
            self._process(nbytes)
        finally:
            self._settle()
        events = self._events
        self._events = None
        return events if events is not None else []

    def data_to_send(self) -> bytes:
        """The frames produced since the last call, joined."""
        if self._outgoing is None:
            return b""
        out = b"".join(self._outgoing)
        self._outgoing = None
        return out

    @property
    def buffered(self) -> int:
        """Bytes received but not yet parsed (an incomplete frame)."""
        buf = self._buf
        return 0 if buf is None else len(buf) - self._start

    # -- parsing -------------------------------------------------------------------------------

    def _process(self, nbytes: int) -> None:
        if self.state == STATE_CLOSED:
            # Nothing after a failure or a finished close handshake is ever parsed: drop it
            # rather than let a peer that keeps sending grow our memory.
            self._drop_input()
            return
        self._parse()

    def _parse(self) -> None:
        while True:
            state = self.state
            if state != STATE_OPEN and state != STATE_CLOSING:
                return
            buf = self._buf
            if buf is None:
                return
            start = self._start
            avail = len(buf) - start
            if avail < 2:
                return
            b0 = buf[start]
            b1 = buf[start + 1]
            fin = b0 & 0x80
            opcode = b0 & 0x0F
            masked = (b1 & 0x80) != 0

            # Section 5.2: RSV2/RSV3 have no extension to give them meaning; RSV1 only with
            # permessage-deflate, and only on the first frame of a data message (RFC 7692 6.1).
            if b0 & 0x30:
                return self._fail(1002, "reserved bits RSV2/RSV3 set")
            compressed = (b0 & RSV1_BIT) != 0
            if compressed and (self.inflater is None or opcode == OP_CONT or opcode >= 8):
                return self._fail(1002, "reserved bit RSV1 set without permessage-deflate")
            if opcode >= 8:
                if opcode > OP_PONG:
                    return self._fail(1002, f"unknown control opcode {opcode:#x}")
                if not fin:
                    return self._fail(1002, "fragmented control frame")
                if (b1 & 0x7F) > 125:
                    return self._fail(1002, "control frame payload over 125 bytes")
            elif opcode == OP_CONT:
                if self._msg_opcode == 0:
                    return self._fail(1002, "continuation frame with no message to continue")
            elif opcode == OP_TEXT or opcode == OP_BINARY:
                if self._msg_opcode != 0:
                    return self._fail(1002, "new data frame inside a fragmented message")
            else:
                return self._fail(1002, f"unknown data opcode {opcode:#x}")
            # Section 5.1: clients mask every frame, servers none.
            if masked != self._is_server:
                return self._fail(1002, "unmasked frame from a client" if self._is_server
                                  else "masked frame from a server")

            length = b1 & 0x7F
            hlen = 2
            if length == 126:
                if avail < 4:
                    return
                length = (buf[start + 2] << 8) | buf[start + 3]
                hlen = 4
            elif length == 127:
                if avail < 10:
                    return
                length = int.from_bytes(buf[start + 2 : start + 10], "big")
                if length >> 63:
                    return self._fail(1002, "payload length with the most significant bit set")
                hlen = 10
            if masked:
                hlen += 4
            # Refuse an oversize message from its header, before buffering its payload.
            if opcode < 8:
                msg = self._msg
                room = self.max_message_size - (len(msg) if msg is not None else 0)
                if length > (room if room > 0 else 0):
                    return self._fail(
                        1009, f"message over max_message_size ({self.max_message_size} bytes)")
            total = hlen + length
            if avail < total:
                # Check text as it arrives so that invalid UTF-8 fails fast (Autobahn 6.4.*).
                if avail > hlen and not compressed and (
                        opcode == OP_TEXT or (opcode == OP_CONT and self._msg_opcode == OP_TEXT
                                              and not self._msg_compressed)):
                    got = avail - hlen
                    done = self._frame_done
                    if got > done:
                        own = self._own_buffer()
                        p = self._start + hlen
                        if masked:
                            own[p + done : p + got] = xor(
                                own[p + done : p + got], bytes(own[p - 4 : p]), done)
                        self._frame_done = got
                        if not self._validator().feed(own[p + done : p + got]):
                            return self._fail(1007, "invalid UTF-8 in a text message")
                return

            p = start + hlen
            done = self._frame_done
            payload: bytes
            if masked and length > done:
                key = bytes(buf[p - 4 : p])
                if done:
                    payload = bytes(buf[p : p + done]) + xor(
                        buf[p + done : p + length], key, done)
                else:
                    payload = xor(buf[p : p + length], key, 0)
            else:
                payload = bytes(buf[p : p + length])
            self._start = start + total
            self._frame_done = 0

            if opcode >= 8:
                # Control frames cost the peer's inbound budget too (a ping flood is traffic
                # like any): one refused is neither answered nor reported.
                if opcode != OP_CLOSE and not self._admit_frame(length):
                    continue
                if opcode == OP_PING:
                    if self.state == STATE_OPEN:
                        self.send_frame(build_frame(FIN_BIT | OP_PONG, payload,
                                                    not self._is_server), True)
                    self._on_ping(payload)
                elif opcode == OP_PONG:
                    self._on_pong(payload)
                else:
                    self._close_frame(payload)
                continue

            data: Any
            if opcode != OP_CONT and fin:
                # A whole message in one frame: the common case, no reassembly copy.
                if compressed:
                    assert self.inflater is not None
                    try:
                        payload = self.inflater.decompress(payload, self.max_message_size)
                    except OverflowError:
                        return self._fail(1009, "decompressed message over max_message_size")
                    except ValueError:
                        return self._fail(1007, "invalid compressed data")
                if opcode == OP_TEXT:
                    if done:
                        self._validator().reset()
                    try:
                        data = payload.decode("utf-8")
                    except UnicodeDecodeError:
                        return self._fail(1007, "invalid UTF-8 in a text message")
                else:
                    data = payload
                self.message_size = len(payload)
                self._deliver(opcode, data)
                continue

            # Fragmented message (section 5.4): reassemble; check text fragment by fragment.
            if opcode != OP_CONT:
                self._msg_opcode = opcode
                self._msg_compressed = compressed
            msg = self._msg
            if msg is None:
                self._msg = msg = bytearray(payload)
            else:
                msg += payload
            if (self._msg_opcode == OP_TEXT and not self._msg_compressed and length > done
                    and not self._validator().feed(payload[done:] if done else payload)):
                return self._fail(1007, "invalid UTF-8 in a text message")
            if not fin:
                # Each fragment but the last costs a message's token, so a stream of empty
                # fragments is bounded like a stream of messages; one refused fragment refuses
                # its whole message, dropped when it completes.
                if not self._msg_refused and not self._admit_frame(length):
                    self._msg_refused = True
                continue
            if self._msg_refused:
                self._msg_reset()
                continue
            opcode = self._msg_opcode
            self.message_size = len(msg)
            try:
                if self._msg_compressed:
                    assert self.inflater is not None
                    try:
                        inflated = self.inflater.decompress(msg, self.max_message_size)
                    except OverflowError:
                        return self._fail(1009, "decompressed message over max_message_size")
                    except ValueError:
                        return self._fail(1007, "invalid compressed data")
                    self.message_size = len(inflated)
                    if opcode == OP_TEXT:
                        try:
                            data = inflated.decode("utf-8")
                        except UnicodeDecodeError:
                            return self._fail(1007, "invalid UTF-8 in a text message")
                    else:
                        data = inflated
                elif opcode == OP_TEXT:
                    if not self._validator().complete():
                        return self._fail(1007, "text message ends inside a UTF-8 sequence")
                    data = msg.decode("utf-8")
                else:
                    data = bytes(msg)
            finally:
                self._msg_reset()
            self._deliver(opcode, data)

    def _validator(self) -> Utf8Validator:
        utf8 = self._utf8
        if utf8 is None:
            self._utf8 = utf8 = Utf8Validator()
        return utf8

    def _event(self, event: tuple[Any, ...]) -> None:
        if self._events is None:
            self._events = []
        self._events.append(event)

    def _msg_reset(self) -> None:
        self._msg = None
        self._msg_opcode = 0
        self._msg_compressed = False
        self._msg_refused = False
        if self._utf8 is not None:
            self._utf8.reset()

    def _deliver(self, opcode: int, data: Any) -> None:
        # After our close frame went out, data is no longer delivered (section 1.4).
        if self.state != STATE_OPEN:
            return
        if opcode == OP_TEXT:
            self._on_text(data)
        else:
            self._on_binary(data)

    def _close_frame(self, payload: bytes) -> None:
        length = len(payload)
        reason = ""
        if length == 0:
            code = 1005
        elif length == 1:
            return self._fail(1002, "close frame with a 1-byte payload")
        else:
            code = (payload[0] << 8) | payload[1]
            if not _valid_close_code(code):
                return self._fail(1002, f"invalid close code {code}")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                return self._fail(1007, "close reason is not valid UTF-8")
        was_open = self.state == STATE_OPEN
        self.close_code = code
        self.close_reason = reason
        # Section 5.5.1: answer with a close echoing the code; then the server drops TCP.
        self.state = STATE_CLOSED
        if was_open:
            self.send_frame(build_close_frame(0 if code == 1005 else code, "",
                                              not self._is_server), True)
        self._msg_reset()
        self._on_close(code, reason)

    def _fail(self, code: int, reason: str) -> None:
        # Section 7.1.7, "Fail the WebSocket Connection": send a close with the reason (unless
        # one was sent already) and stop reading.
        was_open = self.state == STATE_OPEN
        self.state = STATE_CLOSED
        self.close_code = code
        self.close_reason = reason
        self._msg_reset()
        self._frame_done = 0
        # Nothing more is parsed: drop what is buffered.
        self._drop_input()
        if was_open:
            self.send_frame(build_close_frame(code, reason, not self._is_server), True)
        self._on_fail(code, reason)

    # -- sending ------------------------------------------------------------------------------

    def frame_message(self, opcode: int, data: Any) -> bytes:
        """The frame for one whole message, compressed when permessage-deflate is on.

        ``data`` is ``bytes`` or a flat byte view (the compiled method's pointer and length).
        """
        deflater = self.deflater
        if deflater is not None and len(data) >= self.compress_min_size:
            packed = deflater.compress(data)
            return build_frame(FIN_BIT | RSV1_BIT | opcode, packed, not self._is_server)
        return build_frame(FIN_BIT | opcode, data, not self._is_server)

    def send_text(self, text: str) -> int:
        """Send a text message; returns a SEND_* status (SEND_CLOSED once closing)."""
        if type(text) is not str:
            if text is not None:
                raise TypeError(f"Argument 'text' has incorrect type (expected str, "
                                f"got {type(text).__name__})")
        if self.state != STATE_OPEN:
            return SEND_CLOSED
        admitted = self.admit()
        if admitted == ADMIT_REFUSED:
            return SEND_DROPPED
        if text is None:
            raise TypeError("bad argument type for built-in operation")
        status = self.send_frame(self.frame_message(OP_TEXT, text.encode("utf-8")), False)
        return SEND_DROPPED_OLDEST if admitted == ADMIT_DROPPED_OLDEST else status

    def send_binary(self, data: Any) -> int:
        """Send a binary message (any bytes-like object); returns a SEND_* status."""
        if self.state != STATE_OPEN:
            return SEND_CLOSED
        admitted = self.admit()
        if admitted == ADMIT_REFUSED:
            return SEND_DROPPED
        if type(data) is bytes:
            frame = self.frame_message(OP_BINARY, data)
        else:
            view = simple_view(data)
            try:
                frame = self.frame_message(OP_BINARY, view)
            finally:
                view.release()
        status = self.send_frame(frame, False)
        return SEND_DROPPED_OLDEST if admitted == ADMIT_DROPPED_OLDEST else status

    def send_ping(self, data: Any = b"") -> int:
        """Send a ping with up to 125 bytes of payload."""
        return self._send_control(OP_PING, data)

    def send_pong(self, data: Any = b"") -> int:
        """Send an unsolicited pong (a heartbeat that expects no answer)."""
        return self._send_control(OP_PONG, data)

    def _send_control(self, opcode: int, data: Any) -> int:
        opcode = operator.index(opcode)
        if self.state != STATE_OPEN:
            return SEND_CLOSED
        view = data if type(data) is bytes else simple_view(data)
        if len(view) > 125:
            raise ValueError("control frame payload over 125 bytes")
        frame = build_frame(FIN_BIT | opcode, view, not self._is_server)
        return self.send_frame(frame, True)

    def send_close(self, code: int = 1000, reason: str = "") -> int:
        """Start the closing handshake; returns SEND_CLOSED if it had started already."""
        return self.send_close_frame(operator.index(code), reason)

    def send_close_frame(self, code: int, reason: Any) -> int:
        # 7.4.1: send only what a peer may accept (1005, 1006 and 1015 never, nor the
        # unassigned 1004 and 1016-2999); 0 means "no status" (an empty payload).
        if code != 0 and not _valid_close_code(code):
            raise ValueError(f"close code {code} may not be sent")
        if self.state != STATE_OPEN:
            return SEND_CLOSED
        self.state = STATE_CLOSING
        self.close_code = code
        self.close_reason = reason
        return self.send_frame(build_close_frame(code, reason, not self._is_server), True)

    # -- hooks: a subclass sends and dispatches for real ---------------------------------------

    def admit(self) -> int:
        """Whether one more data message may be queued (an ADMIT_* value).

        Asked *before* a message is compressed: with context takeover a compressed message
        that is then dropped would leave the peer's decompressor out of step.
        """
        return ADMIT_OK

    def send_frame(self, frame: bytes, control: bool) -> int:
        if self._outgoing is None:
            self._outgoing = []
        self._outgoing.append(frame)
        return SEND_OK

    def _on_text(self, text: str) -> None:
        self._event(("text", text))

    def _on_binary(self, data: bytes) -> None:
        self._event(("binary", data))

    def _admit_frame(self, length: int) -> bool:
        # The sans-I/O connection has no budget: every frame is admitted. The server's
        # protocol charges its inbound rate limit here.
        return True

    def _on_ping(self, payload: bytes) -> None:
        self._event(("ping", payload))

    def _on_pong(self, payload: bytes) -> None:
        self._event(("pong", payload))

    def _on_close(self, code: int, reason: str) -> None:
        self._event(("close", code, reason))

    def _on_fail(self, code: int, reason: str) -> None:
        self._event(("fail", code, reason))
