# cython: language_level=3
"""The sans-I/O WebSocket connection (RFC 6455 sections 5 to 7, RFC 7692 for compression).

``Connection`` parses frames from bytes it is given and produces events and frames to send; it
never touches a socket. The asyncio protocol (``protocol.pyx``) subclasses it and overrides the
``_on_*`` and ``send_frame`` hooks, so that in a server the events go straight to the hub with
no intermediate list; used on its own (tests, other I/O) it collects events in a list returned
by ``receive_data`` and frames in ``data_to_send``.

Failing fast is deliberate: a frame header is judged as soon as its first two bytes arrive (bad
opcode, reserved bits, an unmasked client frame, a message over ``max_message_size``), before
any payload is buffered, and text is checked for UTF-8 as it arrives, not when it is complete.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_FORMAT
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8, PyUnicode_AsUTF8AndSize
from cpython.memoryview cimport PyMemoryView_FromObject
cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX
from libc.stdlib cimport malloc, free, realloc
from libc.string cimport memcpy, memmove

from melody._core.frames cimport (
    OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, FIN_BIT, RSV1_BIT,
    build_frame, build_close_frame,
)
from melody._core.mask cimport mask_inplace
from melody._core.utf8 cimport Utf8Validator


# Reads of every connection of this process land here first (see Connection in the .pxd).
# 256 KiB: larger than a socket's usual receive window, so one read rarely needs two calls.
DEF SCRATCH_SIZE = 262144
cdef unsigned char* _scratch = <unsigned char*>malloc(SCRATCH_SIZE)
if _scratch == NULL:
    raise MemoryError("melody: cannot allocate the shared read buffer")

cdef Py_ssize_t _one = 1
cdef char* _format_B = b"B"


cdef inline bint _valid_close_code(int code) noexcept nogil:
    # RFC 6455 7.4.1-7.4.2: 1004-1006 and 1015 are reserved and never sent; 1012-1014 are
    # registered with IANA since; 3000-4999 are for libraries and applications.
    return (1000 <= code <= 1003) or (1007 <= code <= 1014) or (3000 <= code <= 4999)


cdef class Connection:
    """A WebSocket connection after its opening handshake, as a pure state machine.

    ``is_server`` decides the masking rules: a server requires masked frames from its peer and
    sends unmasked ones; a client the reverse, with a fresh random key per frame.
    """

    def __cinit__(self, *args, **kwargs):
        self._cur = NULL
        self._priv = NULL
        self._msg = NULL
        # Per-connection objects are made on first use: a server connection never needs the
        # event and output lists (its subclass dispatches directly), and only text that arrives
        # in pieces needs the incremental validator. Idle connections stay small.
        self._events = None
        self._outgoing = None
        self._utf8 = None
        self.close_code = 0
        self.close_reason = ""
        self.compress_min_size = 0

    def __init__(self, bint is_server=True, Py_ssize_t max_message_size=1 << 20,
                 Py_ssize_t read_buffer_size=16384):
        if max_message_size < 1:
            raise ValueError("max_message_size must be >= 1")
        self.is_server = is_server
        self.max_message_size = max_message_size
        self._base_cap = max(read_buffer_size, 1024)
        self.state = STATE_OPEN

    def __dealloc__(self):
        if self._priv != NULL:
            free(self._priv)
            self._priv = NULL
        if self._msg != NULL:
            free(self._msg)
            self._msg = NULL

    # -- the read buffer -------------------------------------------------------------------

    def __getbuffer__(self, Py_buffer* view, int flags):
        # Exports the region chosen by the last get_buffer(); asyncio and uvloop recv into it.
        if self._read_ptr == NULL:
            raise BufferError("get_buffer() was not called")
        view.buf = self._read_ptr
        view.len = self._read_len
        view.readonly = 0
        view.itemsize = 1
        view.format = _format_B if (flags & PyBUF_FORMAT) else NULL
        view.ndim = 1
        view.shape = &self._read_len
        view.strides = &_one
        view.suboffsets = NULL
        view.internal = NULL
        view.obj = self

    def __releasebuffer__(self, Py_buffer* view):
        pass

    def get_buffer(self, Py_ssize_t sizehint=-1):
        """Where the next read goes (asyncio.BufferedProtocol): a view of our buffer.

        asyncio calls ``len()`` on it, so it is a memoryview over the connection's own
        buffer export (``__getbuffer__``), not the connection object itself.
        """
        cdef Py_ssize_t live = self._end - self._start
        if live == 0:
            self._read_ptr = _scratch
            self._read_len = SCRATCH_SIZE
        else:
            # An incomplete frame is pending in the private buffer: read straight after it,
            # with room for at least the rest of the frame when its size is known.
            if self._priv_cap - self._end < 4096:
                self._reserve(max(4096, self._growth()))
            self._read_ptr = self._priv + self._end
            self._read_len = self._priv_cap - self._end
        return PyMemoryView_FromObject(self)

    def buffer_updated(self, Py_ssize_t nbytes):
        """``nbytes`` were read into the region last returned by get_buffer: process them."""
        if self._read_ptr == _scratch:
            self._cur = _scratch
            self._start = 0
            self._end = nbytes
        else:
            self._end += nbytes
        self._read_ptr = NULL
        try:
            self._process(nbytes)
        finally:
            self._settle()

    cdef int _reserve(self, Py_ssize_t extra) except -1:
        # Make the private buffer hold the live bytes plus ``extra`` more, moving the live bytes
        # there if they are in the scratch buffer.
        cdef Py_ssize_t live = self._end - self._start
        cdef Py_ssize_t want = live + extra
        cdef Py_ssize_t cap
        cdef unsigned char* fresh
        if self._cur != NULL and self._cur == self._priv:
            if self._priv_cap - self._end >= extra:
                return 0
            if self._priv_cap >= want:
                memmove(self._priv, self._priv + self._start, live)
                self._start = 0
                self._end = live
                return 0
            cap = max(want, self._base_cap)
            # Written so that nothing overflows with max_message_size near PY_SSIZE_T_MAX.
            if cap < 2 * self._priv_cap and self._priv_cap <= (self.max_message_size - 16) // 2 + 16:
                cap = 2 * self._priv_cap
            fresh = <unsigned char*>malloc(cap)
            if fresh == NULL:
                raise MemoryError()
            memcpy(fresh, self._priv + self._start, live)
            free(self._priv)
        else:
            cap = max(want, self._base_cap)
            fresh = <unsigned char*>malloc(cap)
            if fresh == NULL:
                raise MemoryError()
            if live:
                memcpy(fresh, self._cur + self._start, live)
            if self._priv != NULL:
                free(self._priv)
        self._priv = fresh
        self._priv_cap = cap
        self._cur = fresh
        self._start = 0
        self._end = live
        return 0

    cdef Py_ssize_t _growth(self) noexcept:
        # Room to make for the rest of the frame: never more than has arrived so far (the
        # buffer doubles) nor less than 64 KiB, so that memory follows the bytes a peer really
        # sent, not the length its header claims.
        cdef Py_ssize_t live = self._end - self._start
        cdef Py_ssize_t missing = self._need - live
        if missing <= 0:
            return 0
        return min(missing, max(live, 65536))

    cdef int _settle(self) except -1:
        # After processing: nothing left -> hold no memory; leftovers -> keep them privately.
        cdef Py_ssize_t live = self._end - self._start
        if live == 0:
            self._start = 0
            self._end = 0
            self._cur = NULL
            if self._priv != NULL:
                free(self._priv)
                self._priv = NULL
                self._priv_cap = 0
        elif self._cur != self._priv:
            self._reserve(self._growth())
        elif self._need > self._priv_cap - self._start:
            self._reserve(self._growth())
        return 0

    # -- sans-I/O entry points ---------------------------------------------------------------

    def receive_data(self, object data):
        """Feed received bytes; return the events they completed, in order.

        Events are tuples: ``("text", str)``, ``("binary", bytes)``, ``("ping", bytes)``,
        ``("pong", bytes)``, ``("close", code, reason)`` (the peer closed; the reply is queued)
        and ``("fail", code, reason)`` (a protocol violation; a close with ``code`` is queued).
        """
        cdef Py_buffer view
        cdef Py_ssize_t nbytes
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            nbytes = view.len
            if nbytes:
                self._reserve(nbytes)
                memcpy(self._cur + self._end, view.buf, nbytes)
                self._end += nbytes
        finally:
            PyBuffer_Release(&view)
        try:
            self._process(nbytes)
        finally:
            self._settle()
        events = self._events
        self._events = None
        return events if events is not None else []

    def data_to_send(self):
        """The frames produced since the last call, joined."""
        if self._outgoing is None:
            return b""
        out = b"".join(self._outgoing)
        self._outgoing = None
        return out

    @property
    def buffered(self):
        """Bytes received but not yet parsed (an incomplete frame)."""
        return self._end - self._start

    # -- parsing -------------------------------------------------------------------------------

    cdef int _process(self, Py_ssize_t nbytes) except -1:
        if self.state == STATE_CLOSED:
            # Nothing after a failure or a finished close handshake is ever parsed: drop it
            # rather than let a peer that keeps sending grow our memory.
            self._start = self._end
            return 0
        return self._parse()

    cdef int _parse(self) except -1:
        cdef unsigned char* p
        cdef unsigned char* payload
        cdef Py_ssize_t avail, hlen, done, got, total
        cdef unsigned long long length
        cdef unsigned char b0, b1
        cdef int opcode, i
        cdef bint fin, masked, compressed, text_stream
        cdef object data

        while self.state == STATE_OPEN or self.state == STATE_CLOSING:
            avail = self._end - self._start
            if avail < 2:
                self._need = 2
                return 0
            p = self._cur + self._start
            b0 = p[0]
            b1 = p[1]
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
                    return 0
                length = (<unsigned long long>p[2] << 8) | p[3]
                hlen = 4
            elif length == 127:
                if avail < 10:
                    self._need = 10
                    return 0
                length = 0
                for i in range(8):
                    length = (length << 8) | p[2 + i]
                if length >> 63:
                    return self._fail(1002, "payload length with the most significant bit set")
                hlen = 10
            if masked:
                hlen += 4
            # Refuse an oversize message from its header, before buffering its payload.
            if opcode < 8 and length > <unsigned long long>max(
                    self.max_message_size - self._msg_len, 0):
                return self._fail(
                    1009, f"message over max_message_size ({self.max_message_size} bytes)")
            # No sum of a header length and a 63-bit payload length is ever formed before the
            # payload is known to be here: with max_message_size near 2**63 it would wrap
            # negative and the payload pointer would run past the buffer. Compare what has
            # arrived against what is announced instead; both sides stay in range.
            if avail < hlen or length > <unsigned long long>(avail - hlen):
                # What the buffer must grow to: the whole frame, saturated (the buffer only
                # grows as bytes really arrive, see _growth).
                if length > <unsigned long long>(PY_SSIZE_T_MAX - hlen):
                    self._need = PY_SSIZE_T_MAX
                else:
                    self._need = hlen + <Py_ssize_t>length
                # Check text as it arrives so that invalid UTF-8 fails fast (Autobahn 6.4.*).
                text_stream = not compressed and (
                    opcode == OP_TEXT or (opcode == OP_CONT and self._msg_opcode == OP_TEXT
                                          and not self._msg_compressed))
                if text_stream and avail > hlen:
                    got = avail - hlen
                    done = self._frame_done
                    if got > done:
                        if masked:
                            mask_inplace(p + hlen + done, got - done, p + hlen - 4, done)
                        self._frame_done = got
                        if self._validator().feed_ptr(p + hlen + done, got - done) < 0:
                            return self._fail(1007, "invalid UTF-8 in a text message")
                return 0

            total = hlen + <Py_ssize_t>length    # <= avail: in range
            payload = p + hlen
            done = self._frame_done
            if masked and <Py_ssize_t>length > done:
                mask_inplace(payload + done, <Py_ssize_t>length - done, payload - 4, done)
            self._start += total
            self._frame_done = 0
            self._need = 0

            if opcode >= 8:
                # Control frames cost the peer's inbound budget too (a ping flood is traffic
                # like any): one refused is neither answered nor reported.
                if opcode != OP_CLOSE and not self._admit_frame(<Py_ssize_t>length):
                    continue
                if opcode == OP_PING:
                    data = PyBytes_FromStringAndSize(<char*>payload, <Py_ssize_t>length)
                    if self.state == STATE_OPEN:
                        self.send_frame(build_frame(FIN_BIT | OP_PONG, payload, <Py_ssize_t>length,
                                                    not self.is_server), True)
                    self._on_ping(data)
                elif opcode == OP_PONG:
                    self._on_pong(PyBytes_FromStringAndSize(<char*>payload, <Py_ssize_t>length))
                else:
                    self._close_frame(payload, <Py_ssize_t>length)
                continue

            if opcode != OP_CONT and fin:
                # A whole message in one frame: the common case, no reassembly copy.
                if compressed:
                    try:
                        data = self.inflater.decompress_ptr(payload, <Py_ssize_t>length,
                                                            self.max_message_size)
                    except OverflowError:
                        return self._fail(1009, "decompressed message over max_message_size")
                    except ValueError:
                        return self._fail(1007, "invalid compressed data")
                    payload = <unsigned char*>PyBytes_AS_STRING(data)
                    length = PyBytes_GET_SIZE(data)
                if opcode == OP_TEXT:
                    if done:
                        self._validator().reset_state()
                    try:
                        data = PyUnicode_DecodeUTF8(<char*>payload, <Py_ssize_t>length, NULL)
                    except UnicodeDecodeError:
                        return self._fail(1007, "invalid UTF-8 in a text message")
                elif not compressed:
                    data = PyBytes_FromStringAndSize(<char*>payload, <Py_ssize_t>length)
                self.message_size = <Py_ssize_t>length
                self._deliver(opcode, data)
                continue

            # Fragmented message (section 5.4): reassemble; check text fragment by fragment.
            if opcode != OP_CONT:
                self._msg_opcode = opcode
                self._msg_compressed = compressed
            self._msg_append(payload, <Py_ssize_t>length)
            if (self._msg_opcode == OP_TEXT and not self._msg_compressed
                    and <Py_ssize_t>length > done):
                if self._validator().feed_ptr(payload + done, <Py_ssize_t>length - done) < 0:
                    return self._fail(1007, "invalid UTF-8 in a text message")
            if not fin:
                # Each fragment but the last costs a message's token, so a stream of empty
                # fragments is bounded like a stream of messages; one refused fragment refuses
                # its whole message, dropped when it completes.
                if not self._msg_refused and not self._admit_frame(<Py_ssize_t>length):
                    self._msg_refused = True
                continue
            if self._msg_refused:
                self._msg_reset()
                continue
            opcode = self._msg_opcode
            self.message_size = self._msg_len
            try:
                if self._msg_compressed:
                    try:
                        data = self.inflater.decompress_ptr(self._msg, self._msg_len,
                                                            self.max_message_size)
                    except OverflowError:
                        return self._fail(1009, "decompressed message over max_message_size")
                    except ValueError:
                        return self._fail(1007, "invalid compressed data")
                    self.message_size = PyBytes_GET_SIZE(data)
                    if opcode == OP_TEXT:
                        try:
                            data = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(data),
                                                        PyBytes_GET_SIZE(data), NULL)
                        except UnicodeDecodeError:
                            return self._fail(1007, "invalid UTF-8 in a text message")
                elif opcode == OP_TEXT:
                    if not self._validator().is_complete():
                        return self._fail(1007, "text message ends inside a UTF-8 sequence")
                    data = PyUnicode_DecodeUTF8(<char*>self._msg, self._msg_len, NULL)
                else:
                    data = PyBytes_FromStringAndSize(<char*>self._msg, self._msg_len)
            finally:
                self._msg_reset()
            self._deliver(opcode, data)
        return 0

    cdef Utf8Validator _validator(self):
        if self._utf8 is None:
            self._utf8 = Utf8Validator()
        return self._utf8

    cdef int _event(self, tuple event) except -1:
        if self._events is None:
            self._events = []
        self._events.append(event)
        return 0

    cdef int _msg_append(self, const unsigned char* data, Py_ssize_t length) except -1:
        cdef Py_ssize_t cap
        cdef unsigned char* grown
        if self._msg_len + length > self._msg_cap:
            cap = max(self._msg_len + length, 2 * self._msg_cap, 4096)
            if cap > self.max_message_size:
                cap = max(self._msg_len + length, self.max_message_size)
            grown = <unsigned char*>realloc(self._msg, cap)
            if grown == NULL:
                raise MemoryError()
            self._msg = grown
            self._msg_cap = cap
        if length:
            memcpy(self._msg + self._msg_len, data, length)
            self._msg_len += length
        return 0

    cdef void _msg_reset(self) noexcept:
        if self._msg != NULL:
            free(self._msg)
            self._msg = NULL
        self._msg_len = 0
        self._msg_cap = 0
        self._msg_opcode = 0
        self._msg_compressed = False
        self._msg_refused = False
        if self._utf8 is not None:
            self._utf8.reset_state()

    cdef int _deliver(self, int opcode, object data) except -1:
        # After our close frame went out, data is no longer delivered (section 1.4).
        if self.state != STATE_OPEN:
            return 0
        if opcode == OP_TEXT:
            return self._on_text(data)
        return self._on_binary(data)

    cdef int _close_frame(self, const unsigned char* payload, Py_ssize_t length) except -1:
        cdef int code
        cdef object reason = ""
        if length == 0:
            code = 1005
        elif length == 1:
            return self._fail(1002, "close frame with a 1-byte payload")
        else:
            code = (payload[0] << 8) | payload[1]
            if not _valid_close_code(code):
                return self._fail(1002, f"invalid close code {code}")
            try:
                reason = PyUnicode_DecodeUTF8(<char*>payload + 2, length - 2, NULL)
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
        return self._on_close(code, reason)

    cdef int _fail(self, int code, object reason) except -1:
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
        return self._on_fail(code, reason)

    # -- sending ------------------------------------------------------------------------------

    cdef bytes frame_message(self, int opcode, const unsigned char* data, Py_ssize_t length):
        """The frame for one whole message, compressed when permessage-deflate is on."""
        cdef bytes packed
        if self.deflater is not None and length >= self.compress_min_size:
            packed = self.deflater.compress_ptr(data, length)
            return build_frame(FIN_BIT | RSV1_BIT | opcode,
                               <unsigned char*>PyBytes_AS_STRING(packed),
                               PyBytes_GET_SIZE(packed), not self.is_server)
        return build_frame(FIN_BIT | opcode, data, length, not self.is_server)

    def send_text(self, str text):
        """Send a text message; returns a SEND_* status (SEND_CLOSED once closing)."""
        cdef Py_ssize_t n
        cdef const char* utf8
        cdef int admitted
        if self.state != STATE_OPEN:
            return SEND_CLOSED
        admitted = self.admit()
        if admitted == ADMIT_REFUSED:
            return SEND_DROPPED
        utf8 = PyUnicode_AsUTF8AndSize(text, &n)
        status = self.send_frame(self.frame_message(OP_TEXT, <const unsigned char*>utf8, n),
                                 False)
        return SEND_DROPPED_OLDEST if admitted == ADMIT_DROPPED_OLDEST else status

    def send_binary(self, object data):
        """Send a binary message (any bytes-like object); returns a SEND_* status."""
        cdef Py_buffer view
        cdef int admitted
        if self.state != STATE_OPEN:
            return SEND_CLOSED
        admitted = self.admit()
        if admitted == ADMIT_REFUSED:
            return SEND_DROPPED
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            frame = self.frame_message(OP_BINARY, <const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        status = self.send_frame(frame, False)
        return SEND_DROPPED_OLDEST if admitted == ADMIT_DROPPED_OLDEST else status

    def send_ping(self, object data=b""):
        """Send a ping with up to 125 bytes of payload."""
        return self._send_control(OP_PING, data)

    def send_pong(self, object data=b""):
        """Send an unsolicited pong (a heartbeat that expects no answer)."""
        return self._send_control(OP_PONG, data)

    def _send_control(self, int opcode, object data):
        cdef Py_buffer view
        if self.state != STATE_OPEN:
            return SEND_CLOSED
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if view.len > 125:
                raise ValueError("control frame payload over 125 bytes")
            frame = build_frame(FIN_BIT | opcode, <const unsigned char*>view.buf, view.len,
                                not self.is_server)
        finally:
            PyBuffer_Release(&view)
        return self.send_frame(frame, True)

    def send_close(self, int code=1000, object reason=""):
        """Start the closing handshake; returns SEND_CLOSED if it had started already."""
        return self.send_close_frame(code, reason)

    cdef int send_close_frame(self, int code, object reason) except -1:
        # 7.4.1: send only what a peer may accept (1005, 1006 and 1015 never, nor the
        # unassigned 1004 and 1016-2999); 0 means "no status" (an empty payload).
        if code != 0 and not _valid_close_code(code):
            raise ValueError(f"close code {code} may not be sent")
        if self.state != STATE_OPEN:
            return SEND_CLOSED
        self.state = STATE_CLOSING
        self.close_code = code
        self.close_reason = reason
        return self.send_frame(build_close_frame(code, reason, not self.is_server), True)

    # -- hooks: a subclass sends and dispatches for real ---------------------------------------

    cdef int admit(self) except -1:
        """Whether one more data message may be queued (an ADMIT_* value).

        Asked *before* a message is compressed: with context takeover a compressed message
        that is then dropped would leave the peer's decompressor out of step.
        """
        return ADMIT_OK

    cdef int send_frame(self, bytes frame, bint control) except -1:
        if self._outgoing is None:
            self._outgoing = []
        self._outgoing.append(frame)
        return SEND_OK

    cdef int _on_text(self, object text) except -1:
        self._event(("text", text))
        return 0

    cdef int _on_binary(self, object data) except -1:
        self._event(("binary", data))
        return 0

    cdef bint _admit_frame(self, Py_ssize_t length) except -1:
        # The sans-I/O connection has no budget: every frame is admitted. The server's
        # protocol charges its inbound rate limit here.
        return True

    cdef int _on_ping(self, object payload) except -1:
        self._event(("ping", payload))
        return 0

    cdef int _on_pong(self, object payload) except -1:
        self._event(("pong", payload))
        return 0

    cdef int _on_close(self, int code, object reason) except -1:
        self._event(("close", code, reason))
        return 0

    cdef int _on_fail(self, int code, object reason) except -1:
        self._event(("fail", code, reason))
        return 0
