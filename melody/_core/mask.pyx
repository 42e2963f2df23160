# cython: language_level=3
"""Masking (RFC 6455 section 5.3) and the byte-region primitives of the frame reader, in C.

One of the engine's three C kernels (with ``utf8`` and ``deflate``): the connection, written
once in Python (``connection.py``), keeps unparsed bytes in a ``bytearray`` and calls
``unmask_region`` and ``region_bytes`` on it; compiled, those calls are direct C calls (see
``mask.pxd``), interpreted they go to ``mask.py``, the short Python version of this file.
``mask`` and ``mask_into`` expose the same loop to Python callers and the tests.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport (
    PyByteArray_AS_STRING, PyByteArray_FromStringAndSize, PyByteArray_GET_SIZE,
)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

# Below this size the cost of dropping and re-taking the GIL is a visible share of the call;
# above it the loop runs long enough that other threads should get to run meanwhile.
cdef Py_ssize_t _NOGIL_THRESHOLD = 64 * 1024


cdef void mask_inplace(unsigned char* data, Py_ssize_t length,
                       const unsigned char* key, Py_ssize_t offset) noexcept nogil:
    mask_copy(data, data, length, key, offset)


cdef void mask_copy(unsigned char* dst, const unsigned char* src, Py_ssize_t length,
                    const unsigned char* key, Py_ssize_t offset) noexcept nogil:
    # One pass, reading the source and writing the target: a copy followed by an in-place
    # pass would walk a large payload twice. Each block is read whole before it is written,
    # so ``dst == src`` (in place) is safe.
    cdef unsigned char cycle[8]
    cdef unsigned char cycle16[16]
    cdef unsigned char block[16]
    cdef int j
    cdef uint64_t key64 = 0
    cdef uint64_t word = 0
    cdef Py_ssize_t i
    cdef Py_ssize_t bulk
    # Casting to size_t first makes ``& 3`` a true modulo for any offset (C's ``%`` of a
    # negative value is negative), and keeps the build independent of the cdivision directive.
    cdef size_t start = (<size_t>offset) & 3

    if length <= 0:
        return
    # The key rotated to the payload's place in the mask cycle, repeated to 8 and 16 bytes.
    # Building the 64-bit word through memory (not by shifts) makes it right on either byte
    # order.
    for i in range(8):
        cycle[i] = key[(start + <size_t>i) & 3]
    for i in range(16):
        cycle16[i] = cycle[i & 7]
    memcpy(&key64, cycle, 8)

    # 16 bytes a step through a local block: memcpy is how portable C spells an unaligned
    # load or store (GCC, Clang and MSVC lower a 16-byte one to a single vector move), and the
    # XOR of two local arrays has no aliasing to prove, so the compilers turn it into one
    # vector XOR (SSE2 / NEON). Free of the alignment and aliasing traps of casting pointers.
    bulk = length - (length & 15)
    i = 0
    while i < bulk:
        memcpy(block, src + i, 16)
        for j in range(16):
            block[j] ^= cycle16[j]
        memcpy(dst + i, block, 16)
        i += 16
    if length - i >= 8:
        memcpy(&word, src + i, 8)
        word ^= key64
        memcpy(dst + i, &word, 8)
        i += 8
    # ``i`` is a multiple of 8, hence of 4, so the tail is still in phase with ``cycle``.
    while i < length:
        dst[i] = src[i] ^ cycle[i & 3]
        i += 1


cdef int _get_key(object key, unsigned char* out) except -1:
    cdef Py_buffer view
    PyObject_GetBuffer(key, &view, PyBUF_SIMPLE)
    try:
        if view.len != 4:
            raise ValueError(f"a masking key is 4 bytes, got {view.len}")
        memcpy(out, view.buf, 4)
    finally:
        PyBuffer_Release(&view)
    return 0


def mask(data, key):
    """Return ``data`` XOR-ed with the repeating 4-byte ``key`` as new ``bytes``.

    ``data`` and ``key`` are any C-contiguous bytes-like objects; ``data`` is left unchanged.
    Masking is its own inverse, so this both masks and unmasks. Raises ``ValueError`` if
    ``key`` is not exactly 4 bytes, ``TypeError`` if either argument is not bytes-like and
    ``BufferError`` if ``data`` is not contiguous. Costs one pass over the data, into the copy.
    """
    cdef unsigned char k[4]
    cdef Py_buffer view
    cdef bytes out
    cdef unsigned char* dst
    _get_key(key, k)
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        out = PyBytes_FromStringAndSize(NULL, view.len)
        dst = <unsigned char*>PyBytes_AS_STRING(out)
        if view.len >= _NOGIL_THRESHOLD:
            with nogil:
                mask_copy(dst, <const unsigned char*>view.buf, view.len, k, 0)
        else:
            mask_copy(dst, <const unsigned char*>view.buf, view.len, k, 0)
    finally:
        PyBuffer_Release(&view)
    return out


def mask_into(buffer, key, Py_ssize_t offset=0):
    """XOR the writable, C-contiguous ``buffer`` in place with the repeating 4-byte ``key``.

    ``offset`` is how many bytes of the same payload were masked before ``buffer`` (so a
    payload masked in pieces equals the payload masked whole); it must not be negative.
    Raises ``TypeError`` if ``buffer`` is read-only or not bytes-like, ``ValueError`` for a
    key that is not 4 bytes or a negative offset, ``BufferError`` if ``buffer`` is not
    contiguous. Costs one pass over the data and no allocation.
    """
    cdef unsigned char k[4]
    cdef Py_buffer view
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    _get_key(key, k)
    # Ask for a plain buffer and check ``readonly`` ourselves: requesting PyBUF_WRITABLE would
    # make a read-only object raise BufferError, and a read-only target is a type mistake.
    PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
    try:
        if view.readonly:
            raise TypeError(
                f"mask_into needs a writable buffer, got read-only {type(buffer).__name__}"
            )
        if view.len >= _NOGIL_THRESHOLD:
            with nogil:
                mask_inplace(<unsigned char*>view.buf, view.len, k, offset)
        else:
            mask_inplace(<unsigned char*>view.buf, view.len, k, offset)
    finally:
        PyBuffer_Release(&view)


cdef inline int _check_region(bytearray buf, Py_ssize_t start, Py_ssize_t length) except -1:
    # The one bound check of every region call: what follows indexes the buffer unchecked.
    if start < 0 or length < 0 or length > PyByteArray_GET_SIZE(buf) - start:
        raise ValueError(f"region [{start}, {start}+{length}) outside a buffer of "
                         f"{PyByteArray_GET_SIZE(buf)} bytes")
    return 0


cpdef int unmask_region(bytearray buf, Py_ssize_t start, Py_ssize_t length, Py_ssize_t key_at,
                        Py_ssize_t phase) except -1:
    """XOR ``buf[start:start + length]`` in place with the 4-byte key at ``buf[key_at:]``.

    ``phase`` is how many bytes of the same payload were unmasked before ``start`` (a frame
    unmasked as it arrives equals the frame unmasked whole). Raises ValueError for a region
    outside ``buf``. Costs one pass over the region.
    """
    cdef unsigned char key[4]
    cdef unsigned char* base
    _check_region(buf, start, length)
    _check_region(buf, key_at, 4)
    if phase < 0:
        raise ValueError(f"phase must be >= 0, got {phase}")
    base = <unsigned char*>PyByteArray_AS_STRING(buf)
    memcpy(key, base + key_at, 4)
    if length >= _NOGIL_THRESHOLD:
        with nogil:
            mask_inplace(base + start, length, key, phase)
    else:
        mask_inplace(base + start, length, key, phase)
    return 0


cpdef bytes region_bytes(bytearray buf, Py_ssize_t start, Py_ssize_t length):
    """``buf[start:start + length]`` as new ``bytes``, in one copy (ValueError if outside)."""
    _check_region(buf, start, length)
    return PyBytes_FromStringAndSize(PyByteArray_AS_STRING(buf) + start, length)


cpdef bytearray new_buffer(Py_ssize_t size):
    """A ``bytearray`` of ``size`` bytes whose content is left as it is (not zeroed): room for
    bytes about to be written over it. ``bytearray(size)`` would first write ``size`` zeros."""
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    return PyByteArray_FromStringAndSize(NULL, size)
