# The sans-I/O WebSocket connection: bytes in, events and frames out.

from melody._core.utf8 cimport Utf8Validator
from melody._core.deflate cimport Deflater, Inflater

cpdef enum:
    STATE_HANDSHAKE = 0
    STATE_OPEN = 1
    STATE_CLOSING = 2
    STATE_CLOSED = 3
    STATE_UPGRADING = 4

cpdef enum:
    SEND_OK = 0
    SEND_QUEUED = 1
    SEND_DROPPED = 2
    SEND_CLOSED = 3
    SEND_DROPPED_OLDEST = 4

cpdef enum:
    ADMIT_REFUSED = 0
    ADMIT_OK = 1
    ADMIT_DROPPED_OLDEST = 2


cdef class Connection:
    cdef readonly bint is_server
    cdef public Py_ssize_t max_message_size
    cdef public int state

    # Read buffer. Reads land in a scratch buffer shared by every connection of the process
    # (parsing is synchronous, so it is free again when buffer_updated returns); only bytes of
    # an incomplete frame are copied to a private buffer, so an idle connection holds none.
    cdef unsigned char* _cur
    cdef unsigned char* _priv
    cdef Py_ssize_t _priv_cap
    cdef Py_ssize_t _start
    cdef Py_ssize_t _end
    cdef Py_ssize_t _need
    cdef Py_ssize_t _base_cap
    cdef unsigned char* _read_ptr
    cdef Py_ssize_t _read_len

    # The frame being received: how many payload bytes were already unmasked and checked.
    cdef Py_ssize_t _frame_done

    # The fragmented message being reassembled.
    cdef int _msg_opcode
    # A fragment of the message being reassembled was refused by _admit_frame.
    cdef bint _msg_refused
    cdef bint _msg_compressed
    cdef unsigned char* _msg
    cdef Py_ssize_t _msg_len
    cdef Py_ssize_t _msg_cap
    cdef Utf8Validator _utf8

    cdef public Deflater deflater
    cdef public Inflater inflater
    cdef public Py_ssize_t compress_min_size

    cdef list _events
    cdef list _outgoing

    # Bytes of the message being delivered (after reassembly and decompression).
    cdef public Py_ssize_t message_size

    cdef public int close_code
    cdef public object close_reason

    cdef int _process(self, Py_ssize_t nbytes) except -1
    cdef int _parse(self) except -1
    cdef int _settle(self) except -1
    cdef Py_ssize_t _growth(self) noexcept
    cdef int _reserve(self, Py_ssize_t extra) except -1
    cdef Utf8Validator _validator(self)
    cdef int _event(self, tuple event) except -1
    cdef int _msg_append(self, const unsigned char* data, Py_ssize_t length) except -1
    cdef void _msg_reset(self) noexcept
    cdef int _fail(self, int code, object reason) except -1
    cdef int _close_frame(self, const unsigned char* payload, Py_ssize_t length) except -1
    cdef int _deliver(self, int opcode, object data) except -1
    cdef bytes frame_message(self, int opcode, const unsigned char* data, Py_ssize_t length)

    cdef int _on_text(self, object text) except -1
    cdef int _on_binary(self, object data) except -1
    cdef bint _admit_frame(self, Py_ssize_t length) except -1
    cdef int _on_ping(self, object payload) except -1
    cdef int _on_pong(self, object payload) except -1
    cdef int _on_close(self, int code, object reason) except -1
    cdef int _on_fail(self, int code, object reason) except -1
    cdef int admit(self) except -1
    cdef int send_frame(self, bytes frame, bint control) except -1
    cdef int send_close_frame(self, int code, object reason) except -1
