# A ProtocolCore whose peer is an ASGI server's send/receive pair instead of a transport.

from melody._core.protocol cimport ProtocolCore


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

    cdef int _submit(self, object message, Py_ssize_t nbytes, bint control) except -1
    cdef int _send_now(self, object message, bint control) except -1
    cdef int _send_failed(self, object exc) except -1
    cdef int _arm_write_timer(self) except -1
    cdef int _wake_reader(self) except -1
    cdef int _too_big(self, Py_ssize_t nbytes) except -1
    cdef int _peer_closed(self, object message) except -1
    cdef int _finish(self) except -1


cdef class AsgiTransport:
    # What ``ProtocolCore.transport`` holds on the ASGI path: addresses and read pausing.
    cdef AsgiConnection _conn
    cdef dict _extra
