# The binary Packet layout (melody.codecs.Packet): a 14-byte big-endian header, then the payload.
#
#   offset  size  field
#   0       2     magic     the sender's protocol tag (rejects strangers at the first frame)
#   2       1     version   PACKET_VERSION
#   3       1     flags     FLAG_REPLY, FLAG_ERROR
#   4       2     command   what the payload is (the routing key)
#   6       4     id        request id; 0: no reply wanted
#   10      4     length    payload length: must equal the frame length minus the header
#   14      n     payload

cpdef enum:
    HEADER_SIZE = 14
    PACKET_VERSION = 1
    DEFAULT_MAGIC = 0x4D45
    FLAG_REPLY = 0x01
    FLAG_ERROR = 0x02

cpdef enum:
    PACKET_TRUNCATED = 1
    PACKET_BAD_MAGIC = 2
    PACKET_BAD_VERSION = 3
    PACKET_LENGTH_MISMATCH = 4

cdef bytes build_packet(unsigned int magic, unsigned int flags, unsigned int command,
                        unsigned long long msg_id, const unsigned char* payload,
                        Py_ssize_t length)
# One packet as new bytes; the caller has checked every field's range.

cdef int check_packet(const unsigned char* data, Py_ssize_t length,
                      unsigned int magic) noexcept
# 0 when ``data[:length]`` is a whole packet with this magic and a known version, else one of
# the PACKET_* failures (the first that applies, in header order).
