# cython: language_level=3
"""The binary Packet (``melody.codecs.Packet``): parse and build, bytes in and bytes out.

A classic length-prefixed header (layout in ``packet.pxd``) inside one WebSocket binary message.
The WebSocket frame already delimits the message, so the length field is not needed to find the
end: it is a check. A length that disagrees with the frame means the sender's framing is broken
(or the bytes are not a Packet at all), and is refused rather than trusted.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.string cimport memcpy

__all__ = [
    "HEADER_SIZE", "PACKET_VERSION", "DEFAULT_MAGIC", "FLAG_REPLY", "FLAG_ERROR",
    "PACKET_TRUNCATED", "PACKET_BAD_MAGIC", "PACKET_BAD_VERSION", "PACKET_LENGTH_MISMATCH",
    "PacketError", "build", "parse",
]

cdef unsigned long long MAX_LENGTH = 0xFFFFFFFF


class PacketError(ValueError):
    """Bytes that are not a valid packet; ``status`` is one of the ``PACKET_*`` failures."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


cdef inline void put16(unsigned char* out, unsigned int value) noexcept:
    out[0] = <unsigned char>(value >> 8)
    out[1] = <unsigned char>(value & 0xFF)


cdef inline void put32(unsigned char* out, unsigned long long value) noexcept:
    out[0] = <unsigned char>((value >> 24) & 0xFF)
    out[1] = <unsigned char>((value >> 16) & 0xFF)
    out[2] = <unsigned char>((value >> 8) & 0xFF)
    out[3] = <unsigned char>(value & 0xFF)


cdef inline unsigned int get16(const unsigned char* data) noexcept:
    return (<unsigned int>data[0] << 8) | data[1]


cdef inline unsigned long long get32(const unsigned char* data) noexcept:
    return ((<unsigned long long>data[0] << 24) | (<unsigned long long>data[1] << 16)
            | (<unsigned long long>data[2] << 8) | data[3])


cdef bytes build_packet(unsigned int magic, unsigned int flags, unsigned int command,
                        unsigned long long msg_id, const unsigned char* payload,
                        Py_ssize_t length):
    cdef bytes packet = PyBytes_FromStringAndSize(NULL, HEADER_SIZE + length)
    cdef unsigned char* out = <unsigned char*>PyBytes_AS_STRING(packet)
    put16(out, magic)
    out[2] = PACKET_VERSION
    out[3] = <unsigned char>flags
    put16(out + 4, command)
    put32(out + 6, msg_id)
    put32(out + 10, <unsigned long long>length)
    if length:
        memcpy(out + HEADER_SIZE, payload, length)
    return packet


cdef int check_packet(const unsigned char* data, Py_ssize_t length,
                      unsigned int magic) noexcept:
    # Every read below is inside the first HEADER_SIZE bytes, checked here once.
    if length < HEADER_SIZE:
        return PACKET_TRUNCATED
    if get16(data) != magic:
        return PACKET_BAD_MAGIC
    if data[2] != PACKET_VERSION:
        return PACKET_BAD_VERSION
    if get32(data + 10) != <unsigned long long>(length - HEADER_SIZE):
        return PACKET_LENGTH_MISMATCH
    return 0


cdef object _check_range(str name, object value, unsigned long long limit):
    if not 0 <= value <= limit:
        raise ValueError(f"{name} must be in 0..{limit:#x}, not {value!r}")


def build(object command, object payload=b"", object msg_id=0, object flags=0,
          object magic=DEFAULT_MAGIC):
    """One packet as ``bytes``: the header, then ``payload`` (any bytes-like object).

    Copies the payload once. Raises ValueError for a field out of its range (command and
    magic: 16 bits; flags: 8; msg_id: 32; the payload at most 4 GiB - 1), TypeError for a
    payload that is not bytes-like.
    """
    cdef Py_buffer view
    cdef unsigned long long ident
    _check_range("command", command, 0xFFFF)
    _check_range("flags", flags, 0xFF)
    _check_range("magic", magic, 0xFFFF)
    _check_range("msg_id", msg_id, MAX_LENGTH)
    ident = msg_id
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        if <unsigned long long>view.len > MAX_LENGTH:
            raise ValueError("payload longer than 4 GiB - 1")
        return build_packet(magic, flags, command, ident,
                            <const unsigned char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


_REASONS = {
    PACKET_TRUNCATED: "truncated packet: shorter than its 14-byte header",
    PACKET_BAD_MAGIC: "wrong magic number",
    PACKET_BAD_VERSION: "unknown packet version",
    PACKET_LENGTH_MISMATCH: "payload length field disagrees with the message length",
}


def parse(object data, int magic=DEFAULT_MAGIC):
    """Split one packet: ``(command, msg_id, flags, payload)``, the payload as new ``bytes``.

    Raises PacketError (its ``status`` one of ``PACKET_*``) for a packet shorter than its
    header, with another magic, an unknown version, or a length field that disagrees with
    ``len(data)``; TypeError for data that is not bytes-like.
    """
    cdef Py_buffer view
    cdef const unsigned char* buf
    cdef int status
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        buf = <const unsigned char*>view.buf
        status = check_packet(buf, view.len, <unsigned int>magic)
        if status:
            detail = ""
            if status == PACKET_BAD_MAGIC:
                detail = f" ({get16(buf):#06x}, expected {magic:#06x})"
            elif status == PACKET_BAD_VERSION:
                detail = f" ({buf[2]})"
            elif status == PACKET_LENGTH_MISMATCH:
                detail = (f" (header says {get32(buf + 10)}, message holds "
                          f"{view.len - HEADER_SIZE})")
            raise PacketError(status, _REASONS[status] + detail)
        return (get16(buf + 4), get32(buf + 6), buf[3],
                PyBytes_FromStringAndSize(<const char*>buf + HEADER_SIZE,
                                          view.len - HEADER_SIZE))
    finally:
        PyBuffer_Release(&view)
