# Frame building (RFC 6455 section 5.2) shared by the connection, the fan-out loop and the client.

cpdef enum:
    OP_CONT = 0x0
    OP_TEXT = 0x1
    OP_BINARY = 0x2
    OP_CLOSE = 0x8
    OP_PING = 0x9
    OP_PONG = 0xA

cdef enum:
    FIN_BIT = 0x80
    RSV1_BIT = 0x40

cdef bytes build_frame(unsigned char first_byte, const unsigned char* payload,
                       Py_ssize_t length, bint masked)
# One frame: ``first_byte`` is FIN|RSV|opcode; the payload is copied once into the new bytes
# object. ``masked`` frames (client to server) get a fresh random key.

cdef bytes build_close_frame(int code, object reason, bint masked)
# A close frame with ``code`` (0 means no status: empty payload) and a UTF-8 reason cut to fit
# the 125-byte control payload limit.

cdef void fresh_mask_key(unsigned char* out) noexcept
