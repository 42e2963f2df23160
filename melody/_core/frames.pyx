# cython: language_level=3
"""Building WebSocket frames (RFC 6455 section 5.2).

Server frames are unmasked, so one built frame is the same bytes for every recipient: the hub
builds a broadcast once and hands the same object to every transport. Client frames are masked
with a fresh key each (section 5.3), drawn from the OS's CSPRNG in batches because
``os.urandom`` per frame would cost a syscall per message.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.string cimport memcpy

from melody._core.mask cimport mask_copy

import os

__all__ = [
    "OP_CONT", "OP_TEXT", "OP_BINARY", "OP_CLOSE", "OP_PING", "OP_PONG",
    "encode_frame", "encode_close", "parse_close", "is_valid_close_code",
]


# 4 KiB of key material: 1024 masked frames per os.urandom call.
DEF KEY_POOL_SIZE = 4096
cdef unsigned char _key_pool[KEY_POOL_SIZE]
cdef Py_ssize_t _key_pos = KEY_POOL_SIZE


cdef void fresh_mask_key(unsigned char* out) noexcept:
    global _key_pos
    cdef bytes fresh
    if _key_pos + 4 > KEY_POOL_SIZE:
        fresh = os.urandom(KEY_POOL_SIZE)
        memcpy(_key_pool, PyBytes_AS_STRING(fresh), KEY_POOL_SIZE)
        _key_pos = 0
    memcpy(out, _key_pool + _key_pos, 4)
    _key_pos += 4


cdef bytes build_frame(unsigned char first_byte, const unsigned char* payload,
                       Py_ssize_t length, bint masked):
    cdef Py_ssize_t header = 2
    if length > 65535:
        header = 10
    elif length > 125:
        header = 4
    if masked:
        header += 4
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, header + length)
    cdef unsigned char* out = <unsigned char*>PyBytes_AS_STRING(frame)
    cdef unsigned char mask_bit = 0x80 if masked else 0
    cdef unsigned long long n = <unsigned long long>length
    cdef int i
    out[0] = first_byte
    if length > 65535:
        out[1] = mask_bit | 127
        for i in range(8):
            out[2 + i] = <unsigned char>((n >> (56 - 8 * i)) & 0xFF)
    elif length > 125:
        out[1] = mask_bit | 126
        out[2] = <unsigned char>(n >> 8)
        out[3] = <unsigned char>(n & 0xFF)
    else:
        out[1] = mask_bit | <unsigned char>length
    if masked:
        fresh_mask_key(out + header - 4)
        mask_copy(out + header, payload, length, out + header - 4, 0)
    elif length:
        memcpy(out + header, payload, length)
    return frame


cdef bytes build_close_frame(int code, object reason, bint masked):
    cdef bytes encoded
    cdef unsigned char payload[125]
    cdef Py_ssize_t n = 0
    if code:
        payload[0] = <unsigned char>(code >> 8)
        payload[1] = <unsigned char>(code & 0xFF)
        n = 2
        if reason:
            encoded = reason.encode("utf-8") if isinstance(reason, str) else bytes(reason)
            # Cut on a code point boundary so the peer does not see invalid UTF-8 (1007).
            if len(encoded) > 123:
                encoded = encoded[:123].decode("utf-8", "ignore").encode("utf-8")
            memcpy(payload + 2, PyBytes_AS_STRING(encoded), len(encoded))
            n += len(encoded)
    return build_frame(FIN_BIT | OP_CLOSE, payload, n, masked)


def encode_frame(int opcode, object payload=b"", *, bint fin=True, bint rsv1=False,
                 bint mask=False):
    """Build one frame. ``payload`` is any bytes-like object; ``mask`` picks a fresh key."""
    if opcode < 0 or opcode > 15:
        raise ValueError("opcode must be 0..15")
    cdef Py_buffer view
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    cdef unsigned char first = <unsigned char>opcode
    if fin:
        first |= FIN_BIT
    if rsv1:
        first |= RSV1_BIT
    try:
        return build_frame(first, <const unsigned char*>view.buf, view.len, mask)
    finally:
        PyBuffer_Release(&view)


def encode_close(int code=1000, object reason="", *, bint mask=False):
    """Build a close frame; ``code=0`` sends none (an empty close payload)."""
    if code and not (0 <= code <= 65535):
        raise ValueError("close code out of range")
    return build_close_frame(code, reason, mask)


def is_valid_close_code(int code):
    """True for the codes a peer may send in a close frame (RFC 6455 7.4, IANA registry)."""
    return (1000 <= code <= 1003) or (1007 <= code <= 1014) or (3000 <= code <= 4999)


def parse_close(object payload):
    """Split a close payload into ``(code, reason)``; ``(1005, "")`` when it carries none.

    Raises ValueError for a 1-byte payload, an invalid code or a reason that is not UTF-8.
    """
    cdef bytes data = bytes(payload)
    if len(data) == 0:
        return 1005, ""
    if len(data) == 1:
        raise ValueError("close payload of 1 byte")
    code = (data[0] << 8) | data[1]
    if not is_valid_close_code(code):
        raise ValueError(f"invalid close code {code}")
    return code, data[2:].decode("utf-8")
