# cython: language_level=3
# distutils: libraries = z
"""permessage-deflate (RFC 7692 section 7.2) over zlib's C API: one of the engine's C kernels.

:class:`Deflater` and :class:`Inflater` turn one whole message into its compressed payload and
back. Each needs a zlib stream only while it works: the stream is made for the
  first message, not with the object, so a session that never sends or receives a compressed
  message holds none. With context takeover the stream then stays (its window is what later
  messages refer to); with ``no_context_takeover`` it is reset after every message and lent
  to the next one through a small shared pool (see ``_POOL_SIZE``), so an idle session holds
none either.

The negotiation of the extension (section 7.1) runs once per connection and lives in
``extensions.py``, plain Python in every build. ``deflate.py`` is this kernel's interpreted
version, over Python's ``zlib`` module.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.ref cimport Py_XDECREF
from libc.limits cimport UINT_MAX
from libc.string cimport memcmp

from melody._core.zlib_params import check_deflater, check_inflater

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


__all__ = ["Deflater", "Inflater"]

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
        check_deflater(window_bits, level, mem_level)
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
        check_inflater(window_bits)
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

    cpdef bytes decompress_region(self, bytearray buf, Py_ssize_t start, Py_ssize_t length,
                                  Py_ssize_t max_size):
        """``decompress`` of ``buf[start:start + length]`` (ValueError if outside ``buf``)."""
        if start < 0 or length < 0 or length > PyByteArray_GET_SIZE(buf) - start:
            raise ValueError(f"region [{start}, {start}+{length}) outside a buffer of "
                             f"{PyByteArray_GET_SIZE(buf)} bytes")
        return self.decompress_ptr(<const unsigned char*>PyByteArray_AS_STRING(buf) + start,
                                   length, max_size)

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
