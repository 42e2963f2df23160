# C types for protocol.py when it is compiled (Cython's pure-Python mode): the asyncio glue, a
# Connection that reads from and writes to a transport. The fan-out loop (fanout.py) cimports
# these classes and calls send_shared and admit in C; ForeignConnection hands those calls to a
# plain-Python subclass (the ASGI adapter, melody/server/asgi_connection.py).

import cython

from melody._core.connection cimport Connection
from melody._core.frames cimport build_frame
from melody._core.mask cimport region_bytes

cdef int ADMIT_DROPPED_OLDEST, ADMIT_OK, ADMIT_REFUSED, FIN_BIT, OP_PING, OP_PONG, OP_TEXT
cdef int SEND_CLOSED, SEND_OK, SEND_QUEUED
cdef int STATE_CLOSED, STATE_CLOSING, STATE_HANDSHAKE, STATE_OPEN, STATE_UPGRADING
cdef bytes _REQUEST_TOO_LARGE


cdef class ProtocolCore


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
    cdef public Py_ssize_t queue_bytes_limit
    # 0: drop the newest message (Go melody), 1: drop the oldest, 2: close the session (1008).
    cdef public int overflow_policy

    # Per-session inbound rate limit (token buckets); off unless rate_limited is set.
    cdef public bint rate_limited
    cdef public double rate_messages
    cdef public double burst_messages
    cdef public double rate_bytes
    cdef public double burst_bytes
    cdef public bint rate_close
    cdef public object on_rate_limit

    # Connections with frames waiting for the end of this loop iteration (see send_frame).
    cdef list _dirty
    cdef bint _flush_scheduled
    # Write a session's first frame of an iteration at once (see send_frame); off: every frame
    # waits for the end of the iteration. A switch so that both can be measured on one build.
    cdef public bint direct_writes
    # Loop iterations that wrote something, counted by flush: "this iteration" for send_frame.
    cdef unsigned long long tick
    # Some connection got two frames of broadcasts in this iteration (a burst), and whether
    # the last iteration that wrote was such a burst: broadcast frames then wait for the
    # iteration's end instead of going out at once (see ProtocolCore.send_shared).
    cdef bint _burst_seen
    cdef bint _defer_shared

    # Counters, kept here so that the hot paths pay one C increment each.
    cdef public unsigned long long messages_in
    cdef public unsigned long long bytes_in
    cdef public unsigned long long messages_out
    cdef public unsigned long long bytes_out
    cdef public unsigned long long frames_dropped
    cdef public unsigned long long broadcasts
    cdef public unsigned long long connects
    cdef public unsigned long long disconnects
    cdef public unsigned long long writes
    cdef public unsigned long long messages_rate_limited
    cdef public unsigned long long requests_too_large
    cdef public unsigned long long handshake_timeouts


cdef class ProtocolCore(Connection):
    cdef public object transport
    cdef public Dispatch dispatch
    cdef public object session
    cdef object _queue
    cdef Py_ssize_t _queued_bytes
    cdef object _pending
    cdef list _queued_pong
    cdef Py_ssize_t _pending_bytes
    # Dispatch.tick when this connection last wrote a frame straight to the transport.
    cdef unsigned long long _direct_tick
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
    cdef public double opened_at
    cdef public Py_ssize_t dropped
    cdef double _bucket_messages
    cdef double _bucket_bytes
    cdef double _bucket_stamp
    # A plain request's body being read (read_body): its size and who gets it.
    cdef Py_ssize_t _body_size
    cdef object _on_body

    cdef _process(self, Py_ssize_t nbytes)
    @cython.locals(buf=bytearray, live=Py_ssize_t, head=Py_ssize_t)
    cdef _handshake(self)
    cdef _take_body(self)
    @cython.locals(d=Dispatch, now=double, elapsed=double)
    cdef bint _within_rate(self, Py_ssize_t size) except -1
    cdef _close_transport(self)
    cdef _flush(self)
    @cython.locals(d=Dispatch)
    cdef int send_shared(self, bytes frame, int opcode, object payload) except -1
    cdef _write_failed(self, exc)
    @cython.locals(frames=list)
    cdef _drain_queue(self)
    @cython.locals(i=Py_ssize_t)
    cdef bint _drop_oldest(self) except -1
    cdef _cancel_timer(self)
    cdef _reject_now(self, bytes response)
    @cython.locals(kept_bytes=Py_ssize_t)
    cdef _discard_queued_data(self)
    cdef int admit(self) except -1
    @cython.locals(d=Dispatch, n=Py_ssize_t)
    cdef int send_frame(self, bytes frame, bint control) except -1
    cdef _on_text(self, object text)
    cdef _on_binary(self, object data)
    cdef bint _admit_frame(self, Py_ssize_t length) except -1
    cdef _on_ping(self, object payload)
    cdef _on_pong(self, object payload)
    cdef _on_close(self, int code, object reason)
    cdef _on_fail(self, int code, object reason)


cdef class ForeignConnection(ProtocolCore):
    cdef public bint send_waiting
    # The hooks the fan-out and Connection call, handed to Python methods of a subclass.
    cdef int admit(self) except -1
    cdef int send_shared(self, bytes frame, int opcode, object payload) except -1
    cdef int _send_admitted(self, int opcode, object message) except -1
    cdef int _send_close(self, int code, object reason) except -1
    cdef int send_frame(self, bytes frame, bint control) except -1


@cython.locals(p=ProtocolCore)
cdef _flush_all(list dirty)

@cython.locals(p=ProtocolCore, dead=list, ping=bytes)
cpdef list heartbeat(list protocols, double now, double ping_period, double pong_wait)
