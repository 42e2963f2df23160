# The asyncio glue: a Connection that reads from and writes to a transport.

from melody._core.connection cimport Connection


cdef class Dispatch:
    cdef public object loop
    cdef public object on_request
    cdef public object on_text
    cdef public object on_binary
    cdef public object on_pong
    cdef public object on_close
    cdef public object on_protocol_error
    cdef public object on_disconnect
    cdef public object on_timeout
    cdef public object on_handler_error
    cdef public double write_wait
    cdef public double close_timeout
    cdef public double handshake_timeout
    cdef public Py_ssize_t max_header_size
    cdef public Py_ssize_t max_message_size
    cdef public Py_ssize_t queue_limit
    cdef public Py_ssize_t write_buffer_high
    cdef public Py_ssize_t read_buffer_size


cdef class ProtocolCore(Connection):
    cdef public object transport
    cdef public Dispatch dispatch
    cdef public object session
    cdef object _queue
    cdef bint _writing_paused
    cdef bint _close_after_flush
    cdef bint _in_handshake
    cdef bint _opened
    cdef object _timer
    cdef object _write_timer
    cdef public Py_ssize_t reads
    cdef public Py_ssize_t reads_seen
    cdef public double last_active
    cdef public double last_ping
    cdef public Py_ssize_t dropped

    cdef int _handshake(self) except -1
    cdef int _close_transport(self) except -1
    cdef int _cancel_timer(self) except -1
    cdef _reject_now(self, bytes response)
