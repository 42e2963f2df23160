# cython: language_level=3
# distutils: libraries = z
"""permessage-deflate (RFC 7692) over zlib's C API.

Two halves:

* :class:`Deflater` and :class:`Inflater` turn one whole message into its compressed payload and
  back (section 7.2). Each needs a zlib stream only while it works: the stream is made for the
  first message, not with the object, so a session that never sends or receives a compressed
  message holds none. With context takeover the stream then stays (its window is what later
  messages refer to); with ``no_context_takeover`` it is reset after every message and lent
  to the next one through a small shared pool (see ``_POOL_SIZE``), so an idle session holds
  none either.
* :func:`negotiate` (server), :func:`build_offer` and :func:`accept_response` (client) run the
  ``Sec-WebSocket-Extensions`` handshake (section 7.1) and yield a :class:`DeflateParams`, which
  builds the right Deflater and Inflater for either side.
"""

import dataclasses

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.ref cimport Py_XDECREF
from libc.limits cimport UINT_MAX
from libc.string cimport memcmp

cdef extern from "zlib.h" nogil:
    const int Z_OK
    const int Z_STREAM_END
    const int Z_NEED_DICT
    const int Z_STREAM_ERROR
    const int Z_DATA_ERROR
    const int Z_MEM_ERROR
    const int Z_BUF_ERROR
    const int Z_NO_FLUSH
    const int Z_SYNC_FLUSH
    const int Z_DEFLATED
    const int Z_DEFAULT_STRATEGY

    # deflateInit2 and inflateInit2 are macros that pass ZLIB_VERSION and sizeof(z_stream), so
    # a header/library mismatch fails at init instead of corrupting memory.
    int deflateInit2(z_stream* strm, int level, int method, int windowBits, int memLevel,
                     int strategy)
    int deflate(z_stream* strm, int flush)
    int deflateReset(z_stream* strm)
    int deflateEnd(z_stream* strm)
    unsigned long deflateBound(z_stream* strm, unsigned long sourceLen)
    int inflateInit2(z_stream* strm, int windowBits)
    int inflate(z_stream* strm, int flush)
    int inflateReset(z_stream* strm)
    int inflateEnd(z_stream* strm)
    int inflateGetDictionary(z_stream* strm, unsigned char* dictionary, unsigned int* dictLength)
    int inflateSetDictionary(z_stream* strm, const unsigned char* dictionary,
                             unsigned int dictLength)

# The output buffer is a bytes object resized in place (no final copy), so it is handled as a raw
# reference: _PyBytes_Resize may move it, and on failure frees it and stores NULL.
cdef extern from "Python.h":
    PyObject* _bytes_new "PyBytes_FromStringAndSize"(const char* v, Py_ssize_t n) except NULL
    int _bytes_resize "_PyBytes_Resize"(PyObject** b, Py_ssize_t n) except -1
    char* _bytes_ptr "PyBytes_AS_STRING"(PyObject* b)


__all__ = [
    "EXTENSION_NAME",
    "DeflateParams",
    "Deflater",
    "Inflater",
    "accept_response",
    "build_offer",
    "negotiate",
    "parse_extensions",
]

EXTENSION_NAME = "permessage-deflate"

# Section 7.2.1: a sync flush ends with an empty stored block whose last four octets are these;
# the sender strips them and the receiver (7.2.2) puts them back.
cdef const unsigned char* _TAIL = b"\x00\x00\xff\xff"
# Section 7.2.3.6: an empty message is sent as one empty stored block's header byte.
cdef bytes _EMPTY_PAYLOAD = b"\x00"

cdef enum:
    # Below this many bytes of input (or output room), dropping and retaking the GIL costs more
    # than zlib takes for the work; above it other threads run while zlib does.
    _NOGIL_MIN = 65536
    # zlib's inflate() sets data_type bit 7 while it waits for the next block header: the data
    # fed so far ends exactly at a block boundary.
    _AT_BLOCK_BOUNDARY = 128
    # Each block with BFINAL set costs a restart that copies the window twice (up to 64 KiB);
    # a message of back-to-back empty final blocks (2 bytes each) would make that a CPU bomb.
    # Past a few per message, each restart must be paid for with this many input bytes.
    _FREE_RESTARTS = 8
    _BYTES_PER_RESTART = 256


cdef str _zlib_message(z_stream* strm, int ret):
    if strm.msg != NULL:
        return (<bytes>strm.msg).decode("ascii", "replace")
    return f"zlib error {ret}"


# --- zlib streams: made on first use, lent between messages without context takeover --------
#
# What a stream costs (zlib 1.2.13, raw deflate; figures from bench/deflate_memory.py, N=2,000):
#
# * deflate: (1 << (windowBits + 2)) + (1 << (memLevel + 9)) bytes plus a ~6 KiB header, 256 KiB
#   at 15/8. deflateInit2 fills the hash head (2 << (memLevel + 7) bytes: 64 KiB at memLevel 8),
#   so the pages are resident at once; the window and prev tables (128 KiB at window 15, whatever
#   memLevel) fill as data flows. Made up front for every session, with the inflate state below,
#   it cost 90 KiB of RSS per idle session against 3.8 KiB without compression.
# * inflate: a ~7 KiB state; the 1 << windowBits window is allocated at the first output and
#   filled as data flows (10 KiB per session after one small message, up to 39 at window 15).
#
# A session now holds no zlib state until its first compressed message (idle: 4.5 KiB against
# 3.8). Without context takeover a stream after deflateReset/inflateReset is exactly a new one,
# so it need not belong to any session: it is taken from the pool below for one message and
# given back reset. Freeing it instead (deflateEnd) and making the next with deflateInit2 costs
# what the allocator decides. Per 256-byte message (~7 us to compress with the reset): 0.5-1 us
# more while glibc keeps the freed 256 KiB for reuse, ~110 us when it trims them back to the
# kernel and deflateInit2 faults them in again (glibc trims above 128 KiB until a large mmapped
# block has been freed; measured in a C loop and with Python's zlib in a fresh process). Lent
# from the pool, the cost is the reset's whatever the allocator does, and the memory is per
# process: one stream per parameter set in use at once (one deflate and one inflate for a
# single-threaded hub), at most _POOL_SIZE kept. Everything here runs with the GIL held (the
# core is built for GIL builds only), which is the pool's lock.
#
# memLevel stays zlib's default 8 (DeflateParams' default; Compression has no knob). Without
# context takeover, melody's default for the server, the stream is pooled, so memLevel costs
# memory per process, not per session, and 8 is the fastest: 5 compressed a JSON chat mix as
# well but 3-11% slower (the larger the messages, the more). With context takeover each session
# that has compressed once keeps its stream: 87 KiB of RSS after one 256-byte message at
# memLevel 8, 39 at 6, 29 at 5, 23 at 4, growing towards the 256 (8) or 150 (5) KiB of the whole
# state as the window fills; memLevel 5 compressed the JSON mix 0.1-0.2 points worse and 3-22%
# slower. A hub that turns server context takeover on for many sessions should pass mem_level
# (and consider a smaller server_max_window_bits, which shrinks the larger term) deliberately.

cdef enum:
    _POOL_SIZE = 4
    _KIND_DEFLATE = 1 << 12
    _KIND_INFLATE = 2 << 12

cdef z_stream* _pool_stream[_POOL_SIZE]
cdef int _pool_key[_POOL_SIZE]        # 0: empty slot
cdef int _pool_next = 0               # the slot a full pool gives up next (round robin)


cdef inline int _deflate_key(int level, int window_bits, int mem_level) noexcept:
    # level -1..9, window 9..15, memLevel 1..9: four bits each.
    return _KIND_DEFLATE | ((level + 1) << 8) | (window_bits << 4) | mem_level


cdef inline int _inflate_key(int window_bits) noexcept:
    return _KIND_INFLATE | (window_bits << 4)


cdef void _end_stream(z_stream* strm, int key) noexcept:
    if key & _KIND_DEFLATE:
        deflateEnd(strm)
    else:
        inflateEnd(strm)
    PyMem_Free(strm)


cdef z_stream* _pool_take(int key) noexcept:
    cdef int i
    cdef z_stream* strm
    for i in range(_POOL_SIZE):
        if _pool_key[i] == key:
            strm = _pool_stream[i]
            _pool_stream[i] = NULL
            _pool_key[i] = 0
            return strm
    return NULL


cdef void _pool_give(z_stream* strm, int key) noexcept:
    # ``strm`` must be reset already. A full pool frees one of its streams (round robin).
    global _pool_next
    cdef int i
    for i in range(_POOL_SIZE):
        if _pool_key[i] == 0:
            _pool_stream[i] = strm
            _pool_key[i] = key
            return
    i = _pool_next
    _pool_next = (i + 1) % _POOL_SIZE
    _end_stream(_pool_stream[i], _pool_key[i])
    _pool_stream[i] = strm
    _pool_key[i] = key


cdef z_stream* _new_deflate(int level, int window_bits, int mem_level) except NULL:
    cdef z_stream* strm = <z_stream*>PyMem_Calloc(1, sizeof(z_stream))
    cdef int ret
    cdef str message
    if strm == NULL:
        raise MemoryError("no memory for a zlib stream")
    # A negative windowBits asks for raw deflate: no zlib header or checksum (7.2.1).
    ret = deflateInit2(strm, level, Z_DEFLATED, -window_bits, mem_level, Z_DEFAULT_STRATEGY)
    if ret != Z_OK:
        message = _zlib_message(strm, ret)
        PyMem_Free(strm)
        if ret == Z_MEM_ERROR:
            raise MemoryError("zlib could not allocate its deflate state")
        raise RuntimeError(f"deflateInit2 failed: {message}")
    return strm


cdef z_stream* _new_inflate(int window_bits) except NULL:
    cdef z_stream* strm = <z_stream*>PyMem_Calloc(1, sizeof(z_stream))
    cdef int ret
    cdef str message
    if strm == NULL:
        raise MemoryError("no memory for a zlib stream")
    ret = inflateInit2(strm, -window_bits)
    if ret != Z_OK:
        message = _zlib_message(strm, ret)
        PyMem_Free(strm)
        if ret == Z_MEM_ERROR:
            raise MemoryError("zlib could not allocate its inflate state")
        raise RuntimeError(f"inflateInit2 failed: {message}")
    return strm


cdef class Deflater:
    """Compresses whole messages for permessage-deflate (RFC 7692 section 7.2.1).

    ``window_bits`` (9..15) is the LZ77 window the peer agreed to accept; 8 is refused with
    ValueError because zlib cannot compress with a 256-byte window (madler/zlib#171: 1.2.9 and
    later refuse it, older versions silently used 512 bytes, which a peer holding us to 8
    would reject). ``level`` is zlib's
    (-1 default, 0 none .. 9 best), ``mem_level`` its memory/speed trade-off (1..9): the state
    costs about ``2**(window_bits + 2) + 2**(mem_level + 9)`` bytes.

    With ``no_context_takeover`` each message is compressed on its own, so one message's output
    is valid for every peer that agreed to the same or a larger window and to no context
    takeover on the sending side: a broadcast can compress once.

    The zlib state is made by the first non-empty message, not here. With context takeover it
    then stays until the Deflater goes; with ``no_context_takeover`` it is borrowed from a
    pool shared by the process for each message and given back reset, so an idle Deflater holds
    no zlib memory in either case until it has compressed once (``allocated``).
    """

    def __cinit__(self, int window_bits=15, bint no_context_takeover=False, int level=6,
                  int mem_level=8):
        if window_bits == 8:
            raise ValueError(
                "window_bits=8 cannot be honoured: zlib compresses with 9 when asked for 8")
        if not 9 <= window_bits <= 15:
            raise ValueError(f"window_bits must be between 9 and 15, not {window_bits}")
        if not -1 <= level <= 9:
            raise ValueError(f"level must be between -1 and 9, not {level}")
        if not 1 <= mem_level <= 9:
            raise ValueError(f"mem_level must be between 1 and 9, not {mem_level}")
        self.window_bits = window_bits
        self.no_context_takeover = no_context_takeover
        self.level = level
        self.mem_level = mem_level
        self._stream = NULL

    def __dealloc__(self):
        if self._stream != NULL:
            _end_stream(self._stream, _KIND_DEFLATE)
            self._stream = NULL

    @property
    def allocated(self):
        """True while this Deflater holds a zlib stream (see the class docstring)."""
        return self._stream != NULL

    def __repr__(self):
        return (f"Deflater(window_bits={self.window_bits}, "
                f"no_context_takeover={self.no_context_takeover}, level={self.level}, "
                f"mem_level={self.mem_level})")

    cpdef bytes compress(self, object data):
        """Compress one whole message; returns its permessage-deflate payload.

        ``data`` is any C-contiguous bytes-like object. Raises BufferError for a
        non-contiguous buffer, TypeError for anything else.
        """
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self.compress_ptr(<const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef bytes compress_ptr(self, const unsigned char* data, Py_ssize_t length):
        # ``data`` must stay valid and unchanged for the whole call: with a large input the GIL
        # is released while zlib reads it.
        cdef z_stream* strm
        cdef PyObject* out = NULL
        cdef Py_ssize_t cap, produced = 0, fed = 0, chunk, room
        cdef unsigned long long estimate
        cdef int flush, ret
        cdef bint done = False
        cdef bytes result
        if length == 0:
            # Nothing touches the stream, so the window and the sync point are as they were
            # (and a Deflater that has only sent empty messages still needs none).
            return _EMPTY_PAYLOAD
        if length < 0:
            raise ValueError("negative length")
        if self._busy:
            raise RuntimeError("Deflater used by two threads at once")
        strm = self._stream
        if strm == NULL:
            if self.no_context_takeover:
                strm = _pool_take(_deflate_key(self.level, self.window_bits, self.mem_level))
            if strm == NULL:
                strm = _new_deflate(self.level, self.window_bits, self.mem_level)
            self._stream = strm
        # deflateBound is exact for a Z_FINISH of the whole input; the sync flush adds at most
        # an empty stored block (5 bytes) and the bits still pending. A short guess is only a
        # resize; a long one is address space that realloc gives back at the end.
        if <unsigned long long>length <= 0xFFFFFFFFULL:
            estimate = deflateBound(strm, <unsigned long>length)
        else:
            estimate = <unsigned long long>length + (<unsigned long long>length >> 3)
        estimate += 16
        cap = <Py_ssize_t>estimate if estimate < <unsigned long long>PY_SSIZE_T_MAX else length
        self._busy = True
        try:
            out = _bytes_new(NULL, cap)
            while True:
                if strm.avail_in == 0 and fed < length:
                    # avail_in is 32 bits wide: a larger message is fed in pieces.
                    chunk = length - fed
                    if <unsigned long long>chunk > UINT_MAX:
                        chunk = UINT_MAX
                    # zlib.h declares next_in without const unless ZLIB_CONST; it never writes.
                    strm.next_in = <unsigned char*>(data + fed)
                    strm.avail_in = <unsigned int>chunk
                    fed += chunk
                flush = Z_SYNC_FLUSH if fed == length else Z_NO_FLUSH
                if produced == cap:
                    cap = cap + (cap >> 1) + 64 if cap < PY_SSIZE_T_MAX // 2 else PY_SSIZE_T_MAX
                    _bytes_resize(&out, cap)
                room = cap - produced
                if <unsigned long long>room > UINT_MAX:
                    room = UINT_MAX
                strm.next_out = <unsigned char*>_bytes_ptr(out) + produced
                strm.avail_out = <unsigned int>room
                if strm.avail_in >= _NOGIL_MIN:
                    with nogil:
                        ret = deflate(strm, flush)
                else:
                    ret = deflate(strm, flush)
                produced += room - strm.avail_out
                if ret != Z_OK and ret != Z_BUF_ERROR:
                    raise RuntimeError(f"deflate failed: {_zlib_message(strm, ret)}")
                # Done when the flush has consumed everything and left output room unused:
                # with avail_out == 0 zlib may still hold flushed bits.
                if flush == Z_SYNC_FLUSH and strm.avail_in == 0 and strm.avail_out != 0:
                    break
            if produced < 4 or memcmp(<char*>_bytes_ptr(out) + produced - 4, _TAIL, 4) != 0:
                raise RuntimeError("zlib's sync flush did not end with 00 00 ff ff")
            produced -= 4
            _bytes_resize(&out, produced)
            result = <bytes>out
            done = True
            return result
        finally:
            Py_XDECREF(out)
            strm.next_in = NULL
            strm.avail_in = 0
            strm.next_out = NULL
            strm.avail_out = 0
            if self.no_context_takeover:
                # Reset, the stream is as new: it goes back to the pool for the next message.
                self._stream = NULL
                deflateReset(strm)
                _pool_give(strm, _deflate_key(self.level, self.window_bits, self.mem_level))
            elif not done:
                # Whatever was half-compressed is unusable: the next message starts on a new
                # stream, made when it comes.
                self._stream = NULL
                _end_stream(strm, _KIND_DEFLATE)
            self._busy = False


cdef class Inflater:
    """Decompresses whole messages for permessage-deflate (RFC 7692 section 7.2.2).

    ``window_bits`` (8..15) is the LZ77 window the peer agreed to stay within. 8 is inflated
    with a 512-byte window: older zlib compressed with 9 when asked for 8, and the larger window
    accepts every valid 8-bit stream too. With ``no_context_takeover`` the window is dropped
    after each message.

    After any exception the stream is reset; with context takeover a later message that refers
    back to the lost window fails loudly, so the connection should be closed.

    As with :class:`Deflater`, the zlib state (about 7 KiB, and the window once a message has
    been inflated) is made by the first non-empty message; with ``no_context_takeover`` it is
    borrowed from the process's pool for each message, so an idle Inflater holds none
    (``allocated``).
    """

    def __cinit__(self, int window_bits=15, bint no_context_takeover=False):
        if not 8 <= window_bits <= 15:
            raise ValueError(f"window_bits must be between 8 and 15, not {window_bits}")
        self.window_bits = window_bits
        self.no_context_takeover = no_context_takeover
        self._stream = NULL

    def __dealloc__(self):
        if self._stream != NULL:
            _end_stream(self._stream, _KIND_INFLATE)
            self._stream = NULL

    @property
    def allocated(self):
        """True while this Inflater holds a zlib stream (see the class docstring)."""
        return self._stream != NULL

    def __repr__(self):
        return (f"Inflater(window_bits={self.window_bits}, "
                f"no_context_takeover={self.no_context_takeover})")

    cpdef bytes decompress(self, object data, Py_ssize_t max_size):
        """Decompress one whole message (all its frames' payloads concatenated).

        Raises OverflowError as soon as the output would exceed ``max_size`` bytes (memory use
        stays near ``max_size`` whatever the input), ValueError for corrupt data, a message
        that does not end at a block boundary, or more BFINAL blocks than its size pays for.
        Pass ``sys.maxsize`` for no limit.
        """
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self.decompress_ptr(<const unsigned char*>view.buf, view.len, max_size)
        finally:
            PyBuffer_Release(&view)

    cdef int _restart_keep_window(self) except -1:
        # zlib stops at a block with BFINAL set, but RFC 7692 lets more blocks follow
        # (7.2.3.4) and lets later data refer back past it: start a new raw stream with the
        # old window as its dictionary.
        cdef unsigned int n = 0
        cdef unsigned char* window = <unsigned char*>PyMem_Malloc(1 << 15)
        cdef int ret
        if window == NULL:
            raise MemoryError()
        try:
            ret = inflateGetDictionary(self._stream, window, &n)
            if ret == Z_OK:
                ret = inflateReset(self._stream)
            if ret == Z_OK and n:
                ret = inflateSetDictionary(self._stream, window, n)
            if ret != Z_OK:
                raise RuntimeError(f"inflate restart failed: {_zlib_message(self._stream, ret)}")
        finally:
            PyMem_Free(window)
        return 0

    cdef bytes decompress_ptr(self, const unsigned char* data, Py_ssize_t length,
                              Py_ssize_t max_size):
        # ``data`` must stay valid and unchanged for the whole call: with a large input the GIL
        # is released while zlib reads it.
        cdef z_stream* strm
        cdef PyObject* out = NULL
        cdef Py_ssize_t limit, cap, produced = 0, fed = 0, chunk, room
        cdef Py_ssize_t restarts = 0
        cdef bint in_tail = False, ended_final = False, pending = False, done = False
        cdef int ret
        # zlib's window: 8 is inflated with 9 (see the class docstring).
        cdef int bits = self.window_bits if self.window_bits > 8 else 9
        cdef bytes result
        if length < 0:
            raise ValueError("negative length")
        if max_size < 0:
            raise ValueError(f"max_size must be >= 0, not {max_size}")
        if self._busy:
            raise RuntimeError("Inflater used by two threads at once")
        if length == 0:
            # Not valid deflate (7.2.3.6 sends 0x00), but some senders flag an empty message
            # as compressed; nothing is fed, so the stream is left exactly as it was.
            return b""
        strm = self._stream
        if strm == NULL:
            if self.no_context_takeover:
                strm = _pool_take(_inflate_key(bits))
            if strm == NULL:
                strm = _new_inflate(bits)
            self._stream = strm
        # The buffer never grows past max_size + 1 bytes: producing that last byte is how an
        # overlong message is detected, without inflating the rest of it.
        limit = max_size + 1 if max_size < PY_SSIZE_T_MAX else max_size
        cap = length * 4 + 64 if length < (PY_SSIZE_T_MAX - 64) // 4 else limit
        if cap > limit:
            cap = limit
        self._busy = True
        try:
            out = _bytes_new(NULL, cap)
            while True:
                if strm.avail_in == 0 and not pending:
                    if fed < length:
                        chunk = length - fed
                        if <unsigned long long>chunk > UINT_MAX:
                            chunk = UINT_MAX
                        strm.next_in = <unsigned char*>(data + fed)
                        strm.avail_in = <unsigned int>chunk
                        fed += chunk
                    elif not in_tail:
                        # 7.2.2: append 00 00 ff ff, fed from a constant instead of a copy.
                        in_tail = True
                        strm.next_in = <unsigned char*>_TAIL
                        strm.avail_in = 4
                    else:
                        break
                if produced == cap:
                    # Only reached below the limit: at the limit produced > max_size raised.
                    cap = cap * 2 if cap < limit // 2 else limit
                    _bytes_resize(&out, cap)
                room = cap - produced
                if <unsigned long long>room > UINT_MAX:
                    room = UINT_MAX
                strm.next_out = <unsigned char*>_bytes_ptr(out) + produced
                strm.avail_out = <unsigned int>room
                if strm.avail_in >= _NOGIL_MIN or strm.avail_out >= _NOGIL_MIN:
                    with nogil:
                        ret = inflate(strm, Z_SYNC_FLUSH)
                else:
                    ret = inflate(strm, Z_SYNC_FLUSH)
                produced += room - strm.avail_out
                if produced > max_size:
                    raise OverflowError(f"decompressed message exceeds {max_size} bytes")
                # With no room left zlib may hold more output (a long match, a stored block)
                # even when all input is consumed: call again before taking more input.
                pending = strm.avail_out == 0
                if ret == Z_STREAM_END:
                    if in_tail:
                        raise ValueError(
                            "invalid compressed data: final block ends inside 00 00 ff ff")
                    restarts += 1
                    if (restarts > _FREE_RESTARTS and (restarts - _FREE_RESTARTS)
                            * _BYTES_PER_RESTART > fed - <Py_ssize_t>strm.avail_in):
                        raise ValueError("invalid compressed data: too many final blocks")
                    self._restart_keep_window()
                    if strm.avail_in == 0 and fed == length:
                        # The message ended with a BFINAL block and nothing after it: complete.
                        ended_final = True
                        break
                elif ret == Z_BUF_ERROR:
                    # No progress was possible; with input left that cannot end.
                    if strm.avail_in != 0 and not pending:
                        raise ValueError("invalid compressed data: inflate made no progress")
                elif ret == Z_DATA_ERROR or ret == Z_NEED_DICT:
                    raise ValueError(f"invalid compressed data: {_zlib_message(strm, ret)}")
                elif ret == Z_MEM_ERROR:
                    raise MemoryError("zlib could not allocate its window")
                elif ret != Z_OK:
                    raise RuntimeError(f"inflate failed: {_zlib_message(strm, ret)}")
            if not ended_final and not (strm.data_type & _AT_BLOCK_BOUNDARY):
                # The appended empty stored block did not close the message: it was truncated
                # or kept its own 00 00 ff ff; with context takeover the next message would be
                # read from the middle of a block.
                raise ValueError(
                    "invalid compressed data: message does not end at a block boundary")
            _bytes_resize(&out, produced)
            result = <bytes>out
            done = True
            return result
        finally:
            Py_XDECREF(out)
            strm.next_in = NULL
            strm.avail_in = 0
            strm.next_out = NULL
            strm.avail_out = 0
            if self.no_context_takeover:
                self._stream = NULL
                inflateReset(strm)
                _pool_give(strm, _inflate_key(bits))
            elif not done:
                # The window may hold part of a message that was never delivered: drop it.
                self._stream = NULL
                _end_stream(strm, _KIND_INFLATE)
            self._busy = False


# --- Negotiation (RFC 7692 section 7.1, grammar of RFC 6455 section 9.1) ---------------------

cdef frozenset _TCHAR = frozenset(
    "!#$%&'*+-.^_`|~0123456789"
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
cdef tuple _WINDOW_BITS = ("8", "9", "10", "11", "12", "13", "14", "15")


cdef Py_ssize_t _skip_ows(str s, Py_ssize_t i):
    cdef Py_ssize_t n = len(s)
    while i < n and (s[i] == " " or s[i] == "\t"):
        i += 1
    return i


cdef tuple _token(str s, Py_ssize_t i, str what):
    cdef Py_ssize_t n = len(s), start = i
    while i < n and s[i] in _TCHAR:
        i += 1
    if i == start:
        found = repr(s[i]) if i < n else "end of header"
        raise ValueError(f"expected {what} at position {i}, found {found}")
    return s[start:i], i


cdef bint _is_token(str s):
    cdef Py_UCS4 c
    if not s:
        return False
    for c in s:
        if c not in _TCHAR:
            return False
    return True


cdef tuple _quoted(str s, Py_ssize_t i):
    # RFC 7230 3.2.6: quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE
    cdef Py_ssize_t n = len(s), start = i
    cdef Py_UCS4 c
    cdef list chars = []
    i += 1
    while i < n:
        c = s[i]
        if c == '"':
            return "".join(chars), i + 1
        if c == "\\":
            i += 1
            if i == n:
                break
            c = s[i]
            if not (c == "\t" or 0x20 <= c <= 0x7E or 0x80 <= c <= 0xFF):
                raise ValueError(f"invalid quoted-pair at position {i}")
        elif not (c == "\t" or c == " " or c == "!" or 0x23 <= c <= 0x5B
                  or 0x5D <= c <= 0x7E or 0x80 <= c <= 0xFF):
            raise ValueError(f"invalid character {c!r} in quoted string at position {i}")
        chars.append(c)
        i += 1
    raise ValueError(f"unterminated quoted string at position {start}")


cdef void _parse_value(str s, list out) except *:
    cdef Py_ssize_t i = 0, n = len(s), before = len(out)
    cdef list params
    while True:
        i = _skip_ows(s, i)
        if i == n:
            break
        if s[i] == ",":
            # RFC 7230 section 7: empty list elements are allowed and ignored.
            i += 1
            continue
        name, i = _token(s, i, "extension name")
        params = []
        i = _skip_ows(s, i)
        while i < n and s[i] == ";":
            i = _skip_ows(s, i + 1)
            pname, i = _token(s, i, "parameter name")
            i = _skip_ows(s, i)
            pvalue = None
            if i < n and s[i] == "=":
                i = _skip_ows(s, i + 1)
                if i < n and s[i] == '"':
                    pvalue, i = _quoted(s, i)
                    # RFC 6455 9.1: an unquoted value must be a token, and so must be a
                    # quoted one once unescaped.
                    if not _is_token(pvalue):
                        raise ValueError(f"quoted value {pvalue!r} of {pname} is not a token")
                else:
                    pvalue, i = _token(s, i, f"value of {pname}")
                i = _skip_ows(s, i)
            params.append((pname, pvalue))
        if i < n:
            if s[i] != ",":
                raise ValueError(f"unexpected {s[i]!r} at position {i}")
            i += 1
        out.append((name, params))
    if len(out) == before:
        raise ValueError("no extension in header value")


def parse_extensions(header_values):
    """Parse ``Sec-WebSocket-Extensions`` values (RFC 6455 section 9.1).

    Each value (one header line; a single ``str`` is one line) is a comma-separated list of
    ``name; param; param=value; param="quoted value"``. Returns ``[(name, [(param, value or
    None), ...]), ...]`` in order, quoted values unescaped. Raises ValueError on any syntax
    error.
    """
    cdef list out = []
    if isinstance(header_values, str):
        header_values = [header_values]
    for value in header_values:
        if not isinstance(value, str):
            raise ValueError(f"header value must be str, not {type(value).__name__}")
        _parse_value(value, out)
    return out


cdef tuple _read_params(list params, bint request):
    # Returns (server_no_context_takeover, client_no_context_takeover, server_max_window_bits,
    # client_max_window_bits); the bits are None when absent, and client_max_window_bits is
    # True for the valueless form only an offer may use (7.1.2.2).
    cdef set seen = set()
    snct = cnct = False
    sbits = cbits = None
    for name, value in params:
        if name in seen:
            raise ValueError(f"duplicate parameter {name}")
        seen.add(name)
        if name == "server_no_context_takeover" or name == "client_no_context_takeover":
            if value is not None:
                raise ValueError(f"{name} takes no value")
            if name == "server_no_context_takeover":
                snct = True
            else:
                cnct = True
        elif name == "server_max_window_bits" or name == "client_max_window_bits":
            if value is None:
                if name == "client_max_window_bits" and request:
                    cbits = True
                    continue
                raise ValueError(f"{name} needs a value")
            # 7.1.2: a decimal integer from 8 to 15 without leading zeros.
            if value not in _WINDOW_BITS:
                raise ValueError(f"invalid {name} value {value!r}")
            if name == "server_max_window_bits":
                sbits = int(value)
            else:
                cbits = int(value)
        else:
            raise ValueError(f"unknown parameter {name}")
    return snct, cnct, sbits, cbits


cdef _check_bits(str name, object value, int low):
    if type(value) is not int or not low <= value <= 15:
        raise ValueError(f"{name} must be an int between {low} and 15, not {value!r}")


@dataclasses.dataclass(frozen=True)
class DeflateParams:
    """The agreed permessage-deflate parameters of one connection (RFC 7692 section 7.1).

    ``server_*`` apply to what the server compresses, ``client_*`` to what the client
    compresses. Window bits are 8..15 (a side cannot compress with 8, see :class:`Deflater`;
    the negotiation functions never agree to that). ``echo_server_max_window_bits`` records
    that the offer carried ``server_max_window_bits``, which the response must then repeat even
    at 15 (7.1.2.1); it takes no part in ``==``. Raises ValueError on out-of-range values.
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15
    # How the response is spelled, not what was agreed: left out of == and hash.
    echo_server_max_window_bits: bool = dataclasses.field(default=False, compare=False)

    def __post_init__(self):
        _check_bits("server_max_window_bits", self.server_max_window_bits, 8)
        _check_bits("client_max_window_bits", self.client_max_window_bits, 8)

    def response_header(self):
        """The ``Sec-WebSocket-Extensions`` value a server sends to accept with these values.

        ``client_max_window_bits`` is sent only below 15 (:func:`negotiate` lowers it only when
        the offer allowed it); ``server_max_window_bits`` below 15 or when echoed.
        """
        parts = [EXTENSION_NAME]
        if self.server_no_context_takeover:
            parts.append("server_no_context_takeover")
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if self.server_max_window_bits != 15 or self.echo_server_max_window_bits:
            parts.append(f"server_max_window_bits={self.server_max_window_bits}")
        if self.client_max_window_bits != 15:
            parts.append(f"client_max_window_bits={self.client_max_window_bits}")
        return "; ".join(parts)

    def server_deflater(self, level=6, mem_level=8):
        """A :class:`Deflater` for the server's outgoing messages."""
        return Deflater(self.server_max_window_bits, self.server_no_context_takeover, level,
                        mem_level)

    def server_inflater(self):
        """An :class:`Inflater` for the messages the server receives."""
        return Inflater(self.client_max_window_bits, self.client_no_context_takeover)

    def client_deflater(self, level=6, mem_level=8):
        """A :class:`Deflater` for the client's outgoing messages."""
        return Deflater(self.client_max_window_bits, self.client_no_context_takeover, level,
                        mem_level)

    def client_inflater(self):
        """An :class:`Inflater` for the messages the client receives."""
        return Inflater(self.server_max_window_bits, self.server_no_context_takeover)


def negotiate(header_values, *, server_no_context_takeover=False,
              client_no_context_takeover=False, server_max_window_bits=15,
              client_max_window_bits=15):
    """Accept the first permessage-deflate offer the server can honour (RFC 7692 7.1).

    ``header_values`` are the request's ``Sec-WebSocket-Extensions`` lines. The keyword
    arguments are the server's wishes: a ``*_no_context_takeover`` set here is always sent, a
    window below 15 is sent where the offer allows it. An offer with unknown, duplicated or
    invalid parameters, or demanding ``server_max_window_bits=8``, is skipped. Returns None when
    no offer is acceptable or the header does not parse; raises ValueError for invalid
    settings (server window 9..15, client window 8..15).
    """
    _check_bits("server_max_window_bits", server_max_window_bits, 9)
    _check_bits("client_max_window_bits", client_max_window_bits, 8)
    try:
        offers = parse_extensions(header_values)
    except ValueError:
        return None
    for name, params in offers:
        if name != EXTENSION_NAME:
            continue
        try:
            snct, cnct, sbits, cbits = _read_params(params, True)
        except ValueError:
            continue
        if sbits == 8:
            # zlib cannot compress with a 256-byte window (see Deflater).
            continue
        if cbits is None:
            # The client did not say it understands client_max_window_bits: the response must
            # not carry it, and the client may use the full window.
            cbits = 15
        elif cbits is True:
            cbits = client_max_window_bits
        else:
            cbits = min(cbits, client_max_window_bits)
        return DeflateParams(
            server_no_context_takeover=snct or bool(server_no_context_takeover),
            client_no_context_takeover=cnct or bool(client_no_context_takeover),
            server_max_window_bits=(server_max_window_bits if sbits is None
                                    else min(sbits, server_max_window_bits)),
            client_max_window_bits=cbits,
            echo_server_max_window_bits=sbits is not None,
        )
    return None


def build_offer(*, client_no_context_takeover=False, server_no_context_takeover=False,
                client_max_window_bits=True, server_max_window_bits=None):
    """The ``Sec-WebSocket-Extensions`` value a client sends to offer permessage-deflate.

    ``client_max_window_bits``: True offers the valueless parameter (the server may then
    choose a window), an int 9..15 a limit, None or False nothing. ``server_max_window_bits``:
    None, or an int 8..15 the server must stay within. Raises ValueError otherwise.
    """
    parts = [EXTENSION_NAME]
    if server_no_context_takeover:
        parts.append("server_no_context_takeover")
    if client_no_context_takeover:
        parts.append("client_no_context_takeover")
    if server_max_window_bits is not None:
        _check_bits("server_max_window_bits", server_max_window_bits, 8)
        parts.append(f"server_max_window_bits={server_max_window_bits}")
    if client_max_window_bits is True:
        parts.append("client_max_window_bits")
    elif client_max_window_bits is not None and client_max_window_bits is not False:
        _check_bits("client_max_window_bits", client_max_window_bits, 9)
        parts.append(f"client_max_window_bits={client_max_window_bits}")
    return "; ".join(parts)


cdef object _accept_one(tuple response, list offer):
    snct, cnct, sbits, cbits = response
    o_snct, o_cnct, o_sbits, o_cbits = _read_params(offer, True)
    if o_snct and not snct:
        raise ValueError("server_no_context_takeover was requested but not granted")
    if o_sbits is not None:
        if sbits is None:
            raise ValueError("server_max_window_bits was requested but not granted")
        if sbits > o_sbits:
            raise ValueError(f"server_max_window_bits={sbits} exceeds the requested {o_sbits}")
    if cbits is None:
        # Without a response value the client keeps its own hint, or the full window.
        cbits = o_cbits if o_cbits is not None and o_cbits is not True else 15
    elif o_cbits is None:
        raise ValueError("client_max_window_bits was not offered")
    elif o_cbits is not True and cbits > o_cbits:
        raise ValueError(f"client_max_window_bits={cbits} exceeds the offered {o_cbits}")
    if cbits == 8:
        raise ValueError("client_max_window_bits=8 cannot be honoured by zlib")
    return DeflateParams(
        server_no_context_takeover=snct,
        client_no_context_takeover=cnct or o_cnct,
        server_max_window_bits=15 if sbits is None else sbits,
        client_max_window_bits=cbits,
        echo_server_max_window_bits=sbits is not None,
    )


def accept_response(header_value, *, offered):
    """Check a server's ``Sec-WebSocket-Extensions`` response against the client's offer.

    ``offered`` is the value :func:`build_offer` returned (several comma-separated offers are
    allowed; the response must fit one of them). Returns the agreed :class:`DeflateParams`;
    raises ValueError when the response is malformed, names anything but one
    permessage-deflate, or grants what was not offered (the client must then fail the
    connection, RFC 7692 section 5).
    """
    response = parse_extensions(header_value)
    if len(response) != 1 or response[0][0] != EXTENSION_NAME:
        raise ValueError(f"expected one {EXTENSION_NAME} in the response, got {header_value!r}")
    granted = _read_params(response[0][1], False)
    offers = [params for name, params in parse_extensions(offered) if name == EXTENSION_NAME]
    if not offers:
        raise ValueError(f"{EXTENSION_NAME} was not offered")
    error = None
    for params in offers:
        try:
            return _accept_one(granted, params)
        except ValueError as exc:
            if error is None:
                error = exc
    raise error
