# C types for asgi.py when it is compiled (Cython's pure-Python mode): a ProtocolCore whose peer
# is an ASGI server's send/receive pair instead of a transport. It overrides the C methods the
# fan-out loop and the heartbeat call (admit, send_frame, send_shared, send_close_frame).

import cython

from melody._core.frames cimport close_reason
from melody._core.protocol cimport Dispatch, ProtocolCore

cdef int ADMIT_DROPPED_OLDEST, ADMIT_OK, ADMIT_REFUSED, OP_TEXT
cdef int SEND_CLOSED, SEND_OK, SEND_QUEUED
cdef int STATE_CLOSED, STATE_OPEN
cdef double _NEVER

cpdef Py_ssize_t _utf8_length(str text) except -1


cdef class AsgiConnection(ProtocolCore):
    # The ASGI ``send`` callable; every outgoing message is one awaitable call to it.
    cdef object _send
    # The task finishing a send that did not complete at once, then draining _queue.
    cdef object _writer
    # The task running run(): cancelled by abort() to end a connection from outside.
    cdef object _reader
    cdef bint _reader_cancelled
    # Set while the hub asks the reader to wait (async handlers lagging behind).
    cdef bint _read_paused
    cdef object _read_waiter
    # Sends completed: the write timer's sign that the peer still reads.
    cdef unsigned long long _progress
    cdef unsigned long long _progress_mark

    cdef _too_big(self, Py_ssize_t nbytes)
    @cython.locals(code=int, was_open=bint)
    cdef _peer_closed(self, object message)
    cdef _finish(self)
    cdef _wake_reader(self)
    @cython.locals(d=Dispatch)
    cdef int admit(self) except -1
    cdef bint _drop_oldest(self) except -1
    cdef _discard_queued_data(self)
    cdef int send_frame(self, bytes frame, bint control) except -1
    cdef int send_shared(self, bytes frame, int opcode, object payload) except -1
    @cython.locals(d=Dispatch, n=Py_ssize_t)
    cdef int _send_admitted(self, int opcode, object message) except -1
    cdef int _send_close(self, int code, object reason) except -1
    cdef int _submit(self, object message, Py_ssize_t nbytes, bint control) except -1
    cdef int _send_now(self, object message, bint control) except -1
    cdef _send_failed(self, object exc)
    cdef _arm_write_timer(self)


cdef class AsgiTransport:
    # What ``ProtocolCore.transport`` holds on the ASGI path: addresses and read pausing.
    cdef AsgiConnection _conn
    cdef dict _extra
