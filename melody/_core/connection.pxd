# C types for connection.py when it is compiled (Cython's pure-Python mode). The fields are the
# object's C struct; the cdef methods are called through the C vtable by the server protocol
# (protocol.py), which overrides the hooks; the kernels are cimported so that the parser calls
# them in C.

import cython

from melody._core.deflate cimport Deflater, Inflater
from melody._core.mask cimport new_buffer, region_bytes, unmask_region
from melody._core.utf8 cimport Utf8Validator, decode_region
from melody._core.frames cimport build_close_frame, build_frame, is_valid_close_code

cdef int OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, FIN_BIT, RSV1_BIT
cdef int STATE_OPEN, STATE_CLOSING, STATE_CLOSED
cdef int SEND_OK, SEND_DROPPED, SEND_CLOSED, SEND_DROPPED_OLDEST
cdef int ADMIT_REFUSED, ADMIT_OK, ADMIT_DROPPED_OLDEST
cdef Py_ssize_t _SCRATCH_SIZE
cdef bytearray _scratch
cdef Py_ssize_t _SSIZE_MAX


cdef class Connection:
    cdef readonly bint is_server
    cdef public Py_ssize_t max_message_size
    cdef public int state

    # The read buffer: the unparsed bytes are _cur[_start:_end] (see get_buffer).
    cdef bytearray _cur
    cdef bytearray _priv
    cdef Py_ssize_t _start
    cdef Py_ssize_t _end
    cdef Py_ssize_t _need
    cdef Py_ssize_t _base_cap
    cdef bint _read_into_scratch

    cdef Py_ssize_t _frame_done

    cdef bytearray _msg
    cdef int _msg_opcode
    cdef bint _msg_compressed
    cdef bint _msg_refused
    cdef Utf8Validator _utf8

    cdef public Deflater deflater
    cdef public Inflater inflater
    cdef public Py_ssize_t compress_min_size

    cdef list _events
    cdef list _outgoing

    cdef public Py_ssize_t message_size
    cdef public int close_code
    cdef public object close_reason
    # How many more data messages may be delivered (-1: no limit); see connection.py.
    cdef public Py_ssize_t message_budget
    cdef readonly bint stalled

    cdef Py_ssize_t _priv_room(self) except -1
    @cython.locals(live=Py_ssize_t, want=Py_ssize_t, cap=Py_ssize_t, fresh_cap=Py_ssize_t,
                   priv=bytearray, cur=bytearray, fresh=bytearray)
    cdef _reserve(self, Py_ssize_t extra)
    @cython.locals(live=Py_ssize_t, missing=Py_ssize_t)
    cdef Py_ssize_t _growth(self) noexcept
    @cython.locals(live=Py_ssize_t)
    cdef _settle(self)
    cdef _process(self, Py_ssize_t nbytes)
    @cython.locals(avail=Py_ssize_t, buf=bytearray, at=Py_ssize_t, b0=cython.uchar,
                   b1=cython.uchar, fin=bint, opcode=int, masked=bint, compressed=bint,
                   length=Py_ssize_t, hlen=Py_ssize_t, i=int, room=Py_ssize_t, got=Py_ssize_t,
                   done=Py_ssize_t, payload=Py_ssize_t, msg=bytearray, whole=bint,
                   stall=bint)
    cdef _parse(self)
    @cython.locals(msg=bytearray, opcode=int)
    cdef _deliver_reassembled(self)
    @cython.locals(inflated=bytes)
    cdef _inflated(self, int opcode, bytearray buf, Py_ssize_t start, Py_ssize_t length)
    cdef Py_ssize_t _msg_len(self) except -1
    cdef Utf8Validator _validator(self)
    cdef _event(self, tuple event)
    cdef _msg_reset(self)
    cdef _deliver(self, int opcode, object data)
    @cython.locals(length=Py_ssize_t, code=int, was_open=bint)
    cdef _close_frame(self, bytes payload)
    @cython.locals(was_open=bint)
    cdef _fail(self, int code, object reason)

    cdef bytes frame_message(self, int opcode, object data)
    cpdef int send_text(self, str text) except -1
    @cython.locals(admitted=int)
    cdef int _send_message(self, int opcode, object message) except -1
    cdef int _send_admitted(self, int opcode, object message) except -1
    cdef int admit(self) except -1
    cdef int send_frame(self, bytes frame, bint control) except -1
    cdef int send_close_frame(self, int code, object reason) except -1
    cdef int _send_close(self, int code, object reason) except -1

    cdef _on_text(self, object text)
    cdef _on_binary(self, object data)
    cdef bint _admit_frame(self, Py_ssize_t length) except -1
    cdef _on_ping(self, object payload)
    cdef _on_pong(self, object payload)
    cdef _on_close(self, int code, object reason)
    cdef _on_fail(self, int code, object reason)
