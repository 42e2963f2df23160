"""The sans-I/O WebSocket connection (RFC 6455 sections 5 to 7, RFC 7692 for compression).

``Connection`` parses frames from bytes it is given and produces events and frames to send; it
never touches a socket. The asyncio protocol (``protocol.py``) subclasses it and overrides the
``_on_*`` and ``send_frame`` hooks, so that in a server the events go straight to the hub with
no intermediate list; used on its own (tests, other I/O) it collects events in a list returned
by ``receive_data`` and frames in ``data_to_send``.

Failing fast is deliberate: a frame header is judged as soon as its first two bytes arrive (bad
opcode, reserved bits, an unmasked client frame, a message over ``max_message_size``), before
any payload is buffered, and text is checked for UTF-8 as it arrives, not when it is complete.

One source for both builds (Cython's pure-Python mode): ``connection.pxd`` gives the compiled
module its C fields and the C types of the parser's locals; interpreted, this file runs as it
is. The byte work is done by the C kernels ``mask``, ``utf8`` and ``deflate`` on regions of the
read buffer, so neither build copies a payload more than once.
"""

from __future__ import annotations

import operator
from typing import Any

from .constants import (
    ADMIT_DROPPED_OLDEST,
    ADMIT_OK,
    ADMIT_REFUSED,
    FIN_BIT,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RSV1_BIT,
    SEND_CLOSED,
    SEND_DROPPED,
    SEND_DROPPED_OLDEST,
    SEND_OK,
    STATE_CLOSED,
    STATE_CLOSING,
    STATE_OPEN,
)
from .deflate import Deflater, Inflater
from .frames import build_close_frame, build_frame, is_valid_close_code
from .mask import new_buffer, region_bytes, unmask_region
from .utf8 import Utf8Validator, decode_region
from .views import flat

# Reads of every connection of this process land here first (see get_buffer): parsing is
# synchronous, so the buffer is free again when buffer_updated returns, and only the bytes of
# an incomplete frame are copied to a connection's own buffer: an idle connection holds none.
# 256 KiB: larger than a socket's usual receive window, so one read rarely needs two calls.
# It is never resized, so a view of it that a caller still holds can never be invalidated.
_SCRATCH_SIZE = 262144
_scratch = bytearray(_SCRATCH_SIZE)

_SSIZE_MAX = (1 << 63) - 1


def _ssize(value: Any) -> int:
    # What a C Py_ssize_t argument takes: anything with __index__ that fits.
    number = value if type(value) is int else operator.index(value)
    if not -_SSIZE_MAX - 1 <= number <= _SSIZE_MAX:
        raise OverflowError("Python int too large to convert to C ssize_t")
    return number


class Connection:
    """A WebSocket connection after its opening handshake, as a pure state machine.

    ``is_server`` decides the masking rules: a server requires masked frames from its peer and
    sends unmasked ones; a client the reverse, with a fresh random key per frame.
    """

    # The fields (compiled: the C struct in connection.pxd).
    is_server: bool
    max_message_size: int
    state: int
    _cur: Any  # bytearray or None
    _priv: Any  # bytearray or None
    _start: int
    _end: int
    _need: int
    _base_cap: int
    _read_into_scratch: bool
    _frame_done: int
    _msg: Any  # bytearray or None
    _msg_opcode: int
    _msg_compressed: bool
    _msg_refused: bool
    _utf8: Utf8Validator | None
    _events: list[tuple[Any, ...]] | None
    _outgoing: list[bytes] | None
    deflater: Any  # Deflater or None
    inflater: Any  # Inflater or None
    compress_min_size: int
    message_size: int
    close_code: int
    close_reason: str
    message_budget: int
    """How many more data messages the parser may deliver; -1 (the default): no limit.

    Each delivered message takes one from a positive budget. At 0 the parser stops before a
    whole frame that would complete a data message (a final text, binary or continuation frame,
    while the connection is open): it consumes nothing of it nor of what follows, holds those
    bytes (no more memory than they take) and sets :attr:`stalled`. Frames before it are parsed
    as usual, non-final fragments included, and the text of the held frame is still checked
    for UTF-8 as it arrives. To resume, raise the budget and call ``receive_data(b"")``, which
    parses the held bytes again. A client with a bounded receive queue sets it to the room left.
    """
    stalled: bool
    """Whether the last parse stopped at the message budget (see :attr:`message_budget`)."""

    def __init__(self, is_server: bool = True, max_message_size: int = 1 << 20,
                 read_buffer_size: int = 16384) -> None:
        max_message_size = _ssize(max_message_size)
        read_buffer_size = _ssize(read_buffer_size)
        if max_message_size < 1:
            raise ValueError("max_message_size must be >= 1")
        self.is_server = bool(is_server)
        self.max_message_size = max_message_size
        self._base_cap = max(read_buffer_size, 1024)
        self.state = STATE_OPEN
        # The unparsed bytes are _cur[_start:_end]; _cur is the scratch buffer while a read is
        # parsed, _priv (this connection's own) between reads, None when there are none.
        self._cur = None
        self._priv = None
        self._start = 0
        self._end = 0
        self._need = 0
        self._read_into_scratch = False
        # The frame being received: how many payload bytes were already unmasked and checked.
        self._frame_done = 0
        # The fragmented message being reassembled; _msg_refused: a fragment of it was
        # refused by _admit_frame.
        self._msg = None
        self._msg_opcode = 0
        self._msg_compressed = False
        self._msg_refused = False
        # Made on first use: a server connection never needs the event and output lists (its
        # subclass dispatches directly), and only text that arrives in pieces needs the
        # incremental validator. Idle connections stay small.
        self._utf8 = None
        self._events = None
        self._outgoing = None
        self.deflater = None
        self.inflater = None
        self.compress_min_size = 0
        # Bytes of the message being delivered (after reassembly and decompression).
        self.message_size = 0
        self.close_code = 0
        self.close_reason = ""
        self.message_budget = -1
        self.stalled = False

    # -- the read buffer -------------------------------------------------------------------

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next read goes (asyncio.BufferedProtocol): a writable view.

        The process-wide scratch buffer when nothing is pending; otherwise the free room after
        the incomplete frame in this connection's own buffer, with room for at least the rest
        of the frame when its size is known.
        """
        if self._end == self._start:
            self._read_into_scratch = True
            return memoryview(_scratch)
        if self._priv_room() < 4096:
            self._reserve(max(4096, self._growth()))
        self._read_into_scratch = False
        return memoryview(self._priv)[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were read into the region last returned by get_buffer: process them."""
        if self._read_into_scratch:
            self._read_into_scratch = False
            self._cur = _scratch
            self._start = 0
            self._end = nbytes
        else:
            self._end += nbytes
        try:
            self._process(nbytes)
        finally:
            self._settle()

    def _priv_room(self) -> int:
        priv = self._priv
        return 0 if priv is None else len(priv) - self._end

    def _reserve(self, extra: int) -> None:
        # Make the private buffer hold the live bytes plus ``extra`` more, moving the live
        # bytes there if they are in the scratch buffer. A buffer is never resized (a view of
        # it may still be held by the event loop): growing means a new one.
        live = self._end - self._start
        want = live + extra
        priv = self._priv
        cur = self._cur
        if cur is not None and cur is priv:
            cap = len(priv)
            if cap - self._end >= extra:
                return
            if cap >= want:
                priv[0:live] = priv[self._start:self._end]
                self._start = 0
                self._end = live
                return
            fresh_cap = max(want, self._base_cap)
            # Written so that nothing overflows with max_message_size near PY_SSIZE_T_MAX.
            if fresh_cap < 2 * cap and cap <= (self.max_message_size - 16) // 2 + 16:
                fresh_cap = 2 * cap
        else:
            fresh_cap = max(want, self._base_cap)
        fresh = new_buffer(fresh_cap)
        if live:
            fresh[0:live] = cur[self._start:self._end]
        self._priv = fresh
        self._cur = fresh
        self._start = 0
        self._end = live

    def _growth(self) -> int:
        # Room to make for the rest of the frame: never more than has arrived so far (the
        # buffer doubles) nor less than 64 KiB, so that memory follows the bytes a peer really
        # sent, not the length its header claims.
        live = self._end - self._start
        missing = self._need - live
        if missing <= 0:
            return 0
        return min(missing, max(live, 65536))

    def _settle(self) -> None:
        # After processing: nothing left -> hold no memory; leftovers -> keep them privately.
        live = self._end - self._start
        if live == 0:
            self._start = 0
            self._end = 0
            self._cur = None
            self._priv = None
        elif self._cur is not self._priv:
            self._reserve(self._growth())
        elif self._need > len(self._priv) - self._start:
            self._reserve(self._growth())

    # -- sans-I/O entry points ---------------------------------------------------------------

    def receive_data(self, data: Any) -> list[tuple[Any, ...]]:
        """Feed received bytes; return the events they completed, in order.

        Events are tuples: ``("text", str)``, ``("binary", bytes)``, ``("ping", bytes)``,
        ``("pong", bytes)``, ``("close", code, reason)`` (the peer closed; the reply is queued)
        and ``("fail", code, reason)`` (a protocol violation; a close with ``code`` is queued).
        """
        view = data if type(data) is bytes else flat(data)
        nbytes = len(view)
        if nbytes and self._end == self._start:
            # Nothing pending: a buffer of exactly these bytes (one copy, nothing zeroed);
            # _settle frees it, or keeps it for the rest of a frame.
            self._priv = self._cur = bytearray(view)
            self._start = 0
            self._end = nbytes
        elif nbytes:
            self._reserve(nbytes)
            self._cur[self._end:self._end + nbytes] = view
            self._end += nbytes
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
        return self._end - self._start

    # -- parsing -------------------------------------------------------------------------------

    def _process(self, nbytes: int) -> None:
        if self.state == STATE_CLOSED:
            # Nothing after a failure or a finished close handshake is ever parsed: drop it
            # rather than let a peer that keeps sending grow our memory.
            self._start = self._end
            return
        self._parse()

    def _parse(self) -> None:
        self.stalled = False
        while self.state == STATE_OPEN or self.state == STATE_CLOSING:
            avail = self._end - self._start
            if avail < 2:
                self._need = 2
                return
            buf = self._cur
            at = self._start
            b0 = buf[at]
            b1 = buf[at + 1]
            fin = (b0 & 0x80) != 0
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
            if masked != self.is_server:
                return self._fail(1002, "unmasked frame from a client" if self.is_server
                                  else "masked frame from a server")

            length = b1 & 0x7F
            hlen = 2
            if length == 126:
                if avail < 4:
                    self._need = 4
                    return
                length = (buf[at + 2] << 8) | buf[at + 3]
                hlen = 4
            elif length == 127:
                if avail < 10:
                    self._need = 10
                    return
                if buf[at + 2] & 0x80:
                    return self._fail(1002, "payload length with the most significant bit set")
                length = 0
                for i in range(2, 10):
                    length = (length << 8) | buf[at + i]
                hlen = 10
            if masked:
                hlen += 4
            # Refuse an oversize message from its header, before buffering its payload.
            if opcode < 8:
                room = self.max_message_size - self._msg_len()
                if length > (room if room > 0 else 0):
                    return self._fail(
                        1009, f"message over max_message_size ({self.max_message_size} bytes)")
            # No sum of a header length and a 63-bit payload length is formed before the
            # payload is known to be here: compiled, it would wrap with max_message_size near
            # 2**63. Compare what has arrived against what is announced instead.
            whole = avail >= hlen and length <= avail - hlen
            # The message budget: a whole frame that would complete a data message waits, with
            # all behind it, while the budget is 0 (see message_budget).
            stall = (whole and self.message_budget == 0 and fin and opcode < 8
                     and self.state == STATE_OPEN)
            if not whole or stall:
                if stall:
                    self.stalled = True
                    self._need = 0
                else:
                    # What the buffer must grow to: the whole frame, saturated (the buffer only
                    # grows as bytes really arrive, see _growth).
                    self._need = _SSIZE_MAX if length > _SSIZE_MAX - hlen else hlen + length
                # Check text as it arrives so that invalid UTF-8 fails fast (Autobahn 6.4.*),
                # a held frame's included; _frame_done keeps the unmasking from being redone.
                if avail > hlen and not compressed and (
                        opcode == OP_TEXT or (opcode == OP_CONT and self._msg_opcode == OP_TEXT
                                              and not self._msg_compressed)):
                    got = length if whole else avail - hlen
                    done = self._frame_done
                    if got > done:
                        payload = at + hlen
                        if masked:
                            unmask_region(buf, payload + done, got - done, payload - 4, done)
                        self._frame_done = got
                        if not self._validator().feed_region(buf, payload + done, got - done):
                            return self._fail(1007, "invalid UTF-8 in a text message")
                return

            payload = at + hlen
            done = self._frame_done
            if masked and length > done:
                unmask_region(buf, payload + done, length - done, payload - 4, done)
            self._start = at + hlen + length
            self._frame_done = 0
            self._need = 0

            if opcode >= 8:
                # Control frames cost the peer's inbound budget too (a ping flood is traffic
                # like any): one refused is neither answered nor reported.
                if opcode != OP_CLOSE and not self._admit_frame(length):
                    continue
                if opcode == OP_PING:
                    data = region_bytes(buf, payload, length)
                    if self.state == STATE_OPEN:
                        self.send_frame(build_frame(FIN_BIT | OP_PONG, data, not self.is_server),
                                        True)
                    self._on_ping(data)
                elif opcode == OP_PONG:
                    self._on_pong(region_bytes(buf, payload, length))
                else:
                    self._close_frame(region_bytes(buf, payload, length))
                continue

            if opcode != OP_CONT and fin:
                # A whole message in one frame: the common case, no reassembly copy.
                self.message_size = length
                if compressed:
                    data = self._inflated(opcode, buf, payload, length)
                    if data is None:
                        return
                    self._deliver(opcode, data)
                elif opcode == OP_TEXT:
                    if done:
                        self._validator().reset()
                    try:
                        text = decode_region(buf, payload, length)
                    except UnicodeDecodeError:
                        return self._fail(1007, "invalid UTF-8 in a text message")
                    self._deliver(opcode, text)
                else:
                    self._deliver(opcode, region_bytes(buf, payload, length))
                continue

            # Fragmented message (section 5.4): reassemble; check text fragment by fragment.
            if opcode != OP_CONT:
                self._msg_opcode = opcode
                self._msg_compressed = compressed
            if self._msg is None:
                self._msg = bytearray()
            msg = self._msg
            if length:
                msg += region_bytes(buf, payload, length)
            if (self._msg_opcode == OP_TEXT and not self._msg_compressed and length > done
                    and not self._validator().feed_region(buf, payload + done, length - done)):
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
            self._deliver_reassembled()

    def _deliver_reassembled(self) -> None:
        msg = self._msg
        opcode = self._msg_opcode
        self.message_size = len(msg)
        try:
            if self._msg_compressed:
                data = self._inflated(opcode, msg, 0, len(msg))
                if data is None:
                    return
            elif opcode == OP_TEXT:
                if not self._validator().complete():
                    return self._fail(1007, "text message ends inside a UTF-8 sequence")
                data = decode_region(msg, 0, len(msg))
            else:
                data = region_bytes(msg, 0, len(msg))
        finally:
            self._msg_reset()
        self._deliver(opcode, data)

    def _inflated(self, opcode: int, buf: bytearray, start: int, length: int) -> Any:
        # The decompressed message (text decoded), or None once the connection has failed.
        try:
            inflated = self.inflater.decompress_region(buf, start, length, self.max_message_size)
        except OverflowError:
            self._fail(1009, "decompressed message over max_message_size")
            return None
        except ValueError:
            self._fail(1007, "invalid compressed data")
            return None
        self.message_size = len(inflated)
        if opcode != OP_TEXT:
            return inflated
        try:
            return inflated.decode("utf-8")
        except UnicodeDecodeError:
            self._fail(1007, "invalid UTF-8 in a text message")
            return None

    def _msg_len(self) -> int:
        return 0 if self._msg is None else len(self._msg)

    def _validator(self) -> Utf8Validator:
        if self._utf8 is None:
            self._utf8 = Utf8Validator()
        return self._utf8

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
        if self.message_budget > 0:
            self.message_budget -= 1
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
            if not is_valid_close_code(code):
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
                                              not self.is_server), True)
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
        self._start = self._end
        if was_open:
            self.send_frame(build_close_frame(code, reason, not self.is_server), True)
        self._on_fail(code, reason)

    # -- sending ------------------------------------------------------------------------------

    def frame_message(self, opcode: int, data: Any) -> bytes:
        """The frame for one whole message (``bytes`` or a flat byte view), compressed when
        permessage-deflate is on."""
        deflater = self.deflater
        if deflater is not None and len(data) >= self.compress_min_size:
            return build_frame(FIN_BIT | RSV1_BIT | opcode, deflater.compress(data),
                               not self.is_server)
        return build_frame(FIN_BIT | opcode, data, not self.is_server)

    def send_text(self, text: str) -> int:
        """Send a text message; returns a SEND_* status (SEND_CLOSED once closing)."""
        if type(text) is not str:
            raise TypeError(f"Argument 'text' has incorrect type (expected str, "
                            f"got {type(text).__name__})")
        return self._send_message(OP_TEXT, text)

    def send_binary(self, data: Any) -> int:
        """Send a binary message (any bytes-like object); returns a SEND_* status."""
        return self._send_message(OP_BINARY, data)

    def _send_message(self, opcode: int, message: Any) -> int:
        # Admission first (see admit), then the message goes out in this connection's way.
        if self.state != STATE_OPEN:
            return SEND_CLOSED
        admitted = self.admit()
        if admitted == ADMIT_REFUSED:
            return SEND_DROPPED
        status = self._send_admitted(opcode, message)
        return SEND_DROPPED_OLDEST if admitted == ADMIT_DROPPED_OLDEST else status

    def _send_admitted(self, opcode: int, message: Any) -> int:
        # One admitted message (a str for text) as a frame; ForeignConnection overrides this.
        if opcode == OP_TEXT:
            data = message.encode("utf-8")
        else:
            data = message if type(message) is bytes else flat(message)
        return self.send_frame(self.frame_message(opcode, data), False)

    def send_ping(self, data: Any = b"") -> int:
        """Send a ping with up to 125 bytes of payload."""
        return self._send_control(OP_PING, data)

    def send_pong(self, data: Any = b"") -> int:
        """Send an unsolicited pong (a heartbeat that expects no answer)."""
        return self._send_control(OP_PONG, data)

    def _send_control(self, opcode: int, data: Any) -> int:
        if self.state != STATE_OPEN:
            return SEND_CLOSED
        view = flat(data)
        if len(view) > 125:
            raise ValueError("control frame payload over 125 bytes")
        return self.send_frame(build_frame(FIN_BIT | opcode, view, not self.is_server), True)

    def send_close(self, code: int = 1000, reason: str = "") -> int:
        """Start the closing handshake; returns SEND_CLOSED if it had started already."""
        return self.send_close_frame(code, reason)

    def send_close_frame(self, code: int, reason: Any) -> int:
        # 7.4.1: send only what a peer may accept (1005, 1006 and 1015 never, nor the
        # unassigned 1004 and 1016-2999); 0 means "no status" (an empty payload).
        if code != 0 and not is_valid_close_code(code):
            raise ValueError(f"close code {code} may not be sent")
        if self.state != STATE_OPEN:
            return SEND_CLOSED
        self.state = STATE_CLOSING
        self.close_code = code
        self.close_reason = reason
        return self._send_close(code, reason)

    def _send_close(self, code: int, reason: Any) -> int:
        # The close frame of send_close_frame; ForeignConnection overrides this.
        return self.send_frame(build_close_frame(code, reason, not self.is_server), True)

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


__all__ = ["Connection", "Deflater", "Inflater"]
