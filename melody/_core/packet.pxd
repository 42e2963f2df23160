# C types for packet.py when it is compiled (Cython's pure-Python mode). The layout of a Packet
# (melody.codecs.Packet): a 14-byte big-endian header, then the payload.
#
#   offset  size  field
#   0       2     magic     the sender's protocol tag (rejects strangers at the first frame)
#   2       1     version   PACKET_VERSION
#   3       1     flags     FLAG_REPLY, FLAG_ERROR
#   4       2     command   what the payload is (the routing key)
#   6       4     id        request id; 0: no reply wanted
#   10      4     length    payload length: must equal the frame length minus the header
#   14      n     payload

import cython

cdef object _header

@cython.locals(length=Py_ssize_t, declared=Py_ssize_t)
cpdef int check_packet(object data, Py_ssize_t magic) except -1
