# cython: language_level=3
"""The server connection over an asyncio (or uvloop) transport.

``ProtocolCore`` is the sans-I/O ``Connection`` plus a transport: it reads the HTTP upgrade
request, hands it to the hub (``Dispatch.on_request``), and after ``accept`` parses frames and
calls the hub's handlers directly. ``WebSocketProtocol`` adds ``asyncio.BufferedProtocol`` as a
base so that both event loops take the buffered read path (read into our buffer, no bytes object
per read).

Writes go to the transport while it is below its high-water mark: a connection's first frame of
a loop iteration at once, the frames after it together at the end of the iteration. Above the
mark (the peer is not reading) frames wait in a queue bounded by ``Dispatch.queue_limit``; a data
frame over the bound is dropped and reported, never a close frame. If the peer reads nothing for
``write_wait`` the connection is aborted as a slow reader.
"""

import asyncio
from collections import deque

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.time cimport monotonic
from libc.string cimport memchr

from melody._core.connection cimport (
    Connection, STATE_HANDSHAKE, STATE_OPEN, STATE_CLOSING, STATE_CLOSED, STATE_UPGRADING,
    SEND_OK, SEND_QUEUED, SEND_CLOSED,
    ADMIT_REFUSED, ADMIT_OK, ADMIT_DROPPED_OLDEST,
)
from melody._core.frames cimport build_frame, FIN_BIT, OP_PING, OP_PONG


cdef class Dispatch:
    """What a server's connections call into: the hub's handlers and limits, shared by all."""

    def __init__(self):
        self.write_wait = 10.0
        self.close_timeout = 5.0
        self.handshake_timeout = 10.0
        self.max_header_size = 16384
        self.max_message_size = 1 << 20
        self.queue_limit = 256
        self.write_buffer_high = 65536
        self.read_buffer_size = 16384
        self.queue_bytes_limit = 16 << 20
        self.overflow_policy = 0
        self.direct_writes = True
        # A new connection's _direct_tick is 0: never "already wrote in this iteration".
        self.tick = 1
        self._dirty = []

    def flush(self):
        """Write what every connection gathered during this loop iteration (one write each).

        Scheduled with call_soon by the first frame of an iteration: a burst of broadcasts
        then costs at most two system calls per connection (the direct first write and this
        one) instead of one per frame. It also ends the iteration for send_frame (``tick``).
        """
        cdef ProtocolCore p
        cdef list dirty = self._dirty
        self._dirty = []
        self._flush_scheduled = False
        self.tick += 1
        self._defer_shared = self._burst_seen
        self._burst_seen = False
        for obj in dirty:
            p = <ProtocolCore>obj
            try:
                p._flush()
            except Exception as exc:
                p._write_failed(exc)

    def stats(self):
        """The hub-wide counters, as a dict."""
        return {
            "messages_in": self.messages_in, "bytes_in": self.bytes_in,
            "messages_out": self.messages_out, "bytes_out": self.bytes_out,
            "frames_dropped": self.frames_dropped, "broadcasts": self.broadcasts,
            "connects": self.connects, "disconnects": self.disconnects,
            "writes": self.writes,
            "messages_rate_limited": self.messages_rate_limited,
            "requests_too_large": self.requests_too_large,
            "handshake_timeouts": self.handshake_timeouts,
        }


cdef bytes _REQUEST_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n"
    b"Connection: close\r\n\r\n")


cdef class ProtocolCore(Connection):
    """One server connection. Created by the server's protocol factory, one per socket."""

    def __init__(self, Dispatch dispatch):
        Connection.__init__(self, True, dispatch.max_message_size, dispatch.read_buffer_size)
        self.dispatch = dispatch
        self.state = STATE_HANDSHAKE

    # -- asyncio.BaseProtocol ------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=self.dispatch.write_buffer_high)
        self._timer = self.dispatch.loop.call_later(
            self.dispatch.handshake_timeout, self._handshake_timeout)

    def connection_lost(self, exc):
        self.state = STATE_CLOSED
        self._cancel_timer()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._queue = None
        self._queued_bytes = 0
        self._queued_pong = None
        self._pending = None
        self._pending_bytes = 0
        self.transport = None
        if self.close_code == 0:
            self.close_code = 1006
        if self._opened:
            self._opened = False
            self.dispatch.on_disconnect(self)

    def eof_received(self):
        # The peer half-closed without a close frame: nothing more will come, close our side.
        return False

    def pause_writing(self):
        self._writing_paused = True
        if self._queue is None:
            self._queue = deque()
        if self._write_timer is None and self.dispatch.loop is not None:
            self._write_timer = self.dispatch.loop.call_later(
                self.dispatch.write_wait, self._write_timeout)

    def resume_writing(self):
        self._writing_paused = False
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._drain_queue()

    cdef int _drain_queue(self) except -1:
        # Hand the whole queue to the transport in one call: the peer reads again.
        cdef list frames
        queue = self._queue
        self._queued_pong = None
        if queue:
            frames = [item if type(item) is bytes else item[0] for item in queue]
            queue.clear()
            self._queued_bytes = 0
            if self.transport is not None:
                self.dispatch.writes += 1
                self.transport.writelines(frames)
        if self._close_after_flush and not self._queue and self.transport is not None:
            self.transport.close()
        return 0

    # -- timers ----------------------------------------------------------------------------------

    cdef int _cancel_timer(self) except -1:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return 0

    def _handshake_timeout(self):
        self._timer = None
        if self.state == STATE_HANDSHAKE or self.state == STATE_UPGRADING:
            self.state = STATE_CLOSED
            self.dispatch.handshake_timeouts += 1
            if self.transport is not None:
                self.transport.abort()

    def _write_timeout(self):
        self._write_timer = None
        if self.transport is not None and self._writing_paused:
            if self._opened and self.dispatch.on_timeout is not None:
                self.dispatch.on_timeout(self.session, "write")
            if self.transport is not None:
                self.transport.abort()

    def _close_timeout(self):
        self._timer = None
        if self.transport is not None:
            self.transport.abort()

    # -- reading -------------------------------------------------------------------------------

    cdef int _process(self, Py_ssize_t nbytes) except -1:
        self.reads += 1
        self.dispatch.bytes_in += nbytes
        if self.state == STATE_OPEN or self.state == STATE_CLOSING:
            return self._parse()
        if self.state == STATE_HANDSHAKE:
            return self._handshake()
        if self.state == STATE_CLOSED:
            self._start = self._end
        # STATE_UPGRADING: the hub is deciding; keep the bytes until it has.
        return 0

    cdef int _handshake(self) except -1:
        cdef unsigned char* p = self._cur + self._start
        cdef Py_ssize_t live = self._end - self._start
        cdef Py_ssize_t i = 0
        cdef Py_ssize_t head = -1
        cdef void* hit
        while i + 3 < live:
            hit = memchr(p + i, b'\r', live - i - 3)
            if hit == NULL:
                break
            i = <unsigned char*>hit - p
            if p[i + 1] == b'\n' and p[i + 2] == b'\r' and p[i + 3] == b'\n':
                head = i + 4
                break
            i += 1
        if head < 0:
            if live > self.dispatch.max_header_size:
                self.dispatch.requests_too_large += 1
                self._reject_now(_REQUEST_TOO_LARGE)
            return 0
        if head > self.dispatch.max_header_size:
            self.dispatch.requests_too_large += 1
            self._reject_now(_REQUEST_TOO_LARGE)
            return 0
        block = PyBytes_FromStringAndSize(<char*>p, head)
        self._start += head
        self.state = STATE_UPGRADING
        self._in_handshake = True
        try:
            self.dispatch.on_request(self, block)
        finally:
            self._in_handshake = False
        if self.state == STATE_OPEN:
            return self._parse()
        if self.state == STATE_UPGRADING and self.transport is not None:
            # An async upgrade hook is running: stop reading until it decides. The hub bounds
            # that decision by handshake_timeout from now and answers 504 at its deadline; this
            # timer becomes the backstop a second after it, so that the client gets that answer
            # rather than a reset from the clock its request started.
            self.transport.pause_reading()
            self._cancel_timer()
            self._timer = self.dispatch.loop.call_later(
                self.dispatch.handshake_timeout + 1.0, self._handshake_timeout)
        return 0

    cdef _reject_now(self, bytes response):
        self.state = STATE_CLOSED
        self._start = self._end
        self._cancel_timer()
        if self.transport is not None:
            self.transport.write(response)
            self.transport.close()

    def accept(self, bytes response, object session, object inflater=None,
               object deflater=None, Py_ssize_t compress_min_size=0):
        """Finish the upgrade: send the 101 ``response`` and start the session."""
        if self.state != STATE_UPGRADING or self.transport is None:
            return False
        self._cancel_timer()
        self.session = session
        self.inflater = inflater
        self.deflater = deflater
        self.compress_min_size = compress_min_size
        self.transport.write(response)
        self.state = STATE_OPEN
        self._opened = True
        self.reads_seen = self.reads
        now = self.dispatch.loop.time()
        self.last_active = now
        self.last_ping = now
        return True

    def start(self):
        """Begin delivering frames, once the hub has registered the session.

        When the upgrade was decided inside the read callback the frames that followed the
        request are parsed right after it returns; when an async hook decided later, reading
        was paused meanwhile: resume it and parse what was buffered.
        """
        if self._in_handshake or self.state != STATE_OPEN or self.transport is None:
            return
        self.transport.resume_reading()
        try:
            self._parse()
        finally:
            self._settle()

    def reject(self, bytes response):
        """Refuse the upgrade with ``response`` (an HTTP error) and close the connection."""
        if self.state != STATE_UPGRADING:
            return
        self._reject_now(response)

    # -- writing -------------------------------------------------------------------------------

    cdef int admit(self) except -1:
        # Only a peer that stopped reading has a queue; a reading peer takes everything.
        if not self._writing_paused:
            return ADMIT_OK
        if (len(self._queue) < self.dispatch.queue_limit
                and self._queued_bytes < self.dispatch.queue_bytes_limit):
            return ADMIT_OK
        self.dropped += 1
        self.dispatch.frames_dropped += 1
        if self.dispatch.overflow_policy == 1 and (
                self.deflater is None or self.deflater.no_context_takeover):
            # Dropping a frame compressed with context takeover would desynchronise the peer's
            # inflater: such sessions fall through to the newest-dropping policy.
            if self._drop_oldest():
                return ADMIT_DROPPED_OLDEST
        elif self.dispatch.overflow_policy == 2:
            # The gorilla chat hub's answer to a slow consumer: give up on it. Its queued data
            # is discarded so that the close frame is next in line.
            self._discard_queued_data()
            self.close(1008, "message buffer full: reading too slowly")
        return ADMIT_REFUSED

    cdef int _drop_oldest(self) except -1:
        cdef Py_ssize_t i = 0
        queue = self._queue
        for item in queue:
            if type(item) is bytes:
                del queue[i]
                self._queued_bytes -= len(<bytes>item)
                return 1
            i += 1
        return 0

    cdef _discard_queued_data(self):
        cdef Py_ssize_t kept_bytes = 0
        queue = self._queue
        kept = [item for item in queue if type(item) is not bytes]
        dropped = len(queue) - len(kept)
        self.dropped += dropped
        self.dispatch.frames_dropped += dropped
        queue.clear()
        for item in kept:
            queue.append(item)
            kept_bytes += len(<bytes>item[0])
        self._queued_bytes = kept_bytes

    cdef int send_frame(self, bytes frame, bint control) except -1:
        # A connection's first frame of a loop iteration is written at once: the transport
        # tries send() right away, so a lone reply (an echo) leaves now rather than one
        # iteration later. The frames after it, and broadcast frames during bursts
        # (send_shared), gather in _pending and leave in one write at the end of the
        # iteration (Dispatch.flush), or at once when they pass the write-buffer mark: a burst
        # of broadcasts costs one system call per connection, not one per frame. Only a frame
        # with nothing pending or queued before it goes direct, so none overtakes another. A
        # peer that has stopped reading (pause_writing) gets a bounded queue instead; control
        # frames are marked in it (a 1-tuple) so that no overflow policy ever drops them.
        cdef Dispatch d = self.dispatch
        cdef Py_ssize_t n = len(frame)
        if self.transport is None:
            return SEND_CLOSED
        if not control:
            d.messages_out += 1
        d.bytes_out += n
        if self._writing_paused:
            if control and (<unsigned char*>frame)[0] == (FIN_BIT | OP_PONG):
                # 5.5.3: answering only the latest ping is allowed. A peer that floods pings
                # and reads nothing keeps one pong queued, not one per ping.
                if self._queued_pong is not None:
                    self._queued_bytes += n - len(<bytes>self._queued_pong[0])
                    self._queued_pong[0] = frame
                    return SEND_QUEUED
                self._queued_pong = [frame]
                self._queue.append(self._queued_pong)
            else:
                self._queue.append((frame,) if control else frame)
            self._queued_bytes += n
            return SEND_QUEUED
        pending = self._pending
        if pending is None:
            # Not paused means an empty queue (resume_writing drains all of it), so with
            # nothing pending every earlier frame is already in the transport.
            if d.direct_writes and self._direct_tick != d.tick:
                self._direct_tick = d.tick
                if not d._flush_scheduled:
                    # Even with nothing pending: the flush is what ends the iteration (tick).
                    d._flush_scheduled = True
                    d.loop.call_soon(d.flush)
                d.writes += 1
                try:
                    self.transport.write(frame)
                except Exception as exc:
                    self._write_failed(exc)
                    return SEND_CLOSED
                return SEND_OK
            self._pending = frame
            d._dirty.append(self)
            if not d._flush_scheduled:
                d._flush_scheduled = True
                d.loop.call_soon(d.flush)
        elif type(pending) is list:
            (<list>pending).append(frame)
        else:
            self._pending = [pending, frame]
        self._pending_bytes += n
        if self._pending_bytes >= d.write_buffer_high:
            self._flush()
        return SEND_OK

    cdef int _write_failed(self, exc) except -1:
        # One connection's failing write must not reach the caller (a broadcast would stop
        # half way, a flush would skip the other connections): it is reported to the loop's
        # exception handler and the connection dropped.
        self.dispatch.loop.call_exception_handler({
            "message": "melody: writing to a connection failed",
            "exception": exc, "protocol": self})
        self.abort()
        return 0

    cdef int send_shared(self, bytes frame) except -1:
        # A broadcast's frame (the fan-out loop). A lone broadcast goes out at once like any
        # first frame of an iteration: each recipient's send() happens while the loop walks
        # the recipients, not after it (measured: ~7% lower latency at N = 10,000). But when
        # broadcasts come in bursts (a publisher's read holding several), writing the first at
        # once costs a second write per connection for the rest: so once an iteration has seen
        # a burst, the next ones gather every broadcast frame for one write at their end, until
        # an iteration passes without a burst. Marking the connection as having written
        # directly sends the frame down the gathering path.
        cdef Dispatch d = self.dispatch
        if self._direct_tick == d.tick or self._pending is not None:
            d._burst_seen = True
        if d._defer_shared:
            self._direct_tick = d.tick
        return self.send_frame(frame, False)

    cdef int _flush(self) except -1:
        pending = self._pending
        if pending is None:
            return 0
        self._pending = None
        self._pending_bytes = 0
        if self.transport is None:
            return 0
        self.dispatch.writes += 1
        if type(pending) is list:
            self.transport.writelines(pending)
        else:
            self.transport.write(pending)
        return 0

    cdef int _close_transport(self) except -1:
        self._cancel_timer()
        if self.transport is None:
            return 0
        self._flush()
        if self._writing_paused and self._queue:
            # The close frame is queued behind data: close once it is flushed (write_wait
            # bounds how long that may take).
            self._close_after_flush = True
        else:
            self.transport.close()
        return 0

    def close(self, int code=1000, object reason=""):
        """Start the closing handshake; drop TCP if the peer does not answer in close_timeout."""
        if self.state == STATE_UPGRADING or self.state == STATE_HANDSHAKE:
            self.state = STATE_CLOSED
            if self.transport is not None:
                self.transport.close()
            return
        if self.send_close_frame(code, reason) == SEND_CLOSED:
            return
        self._cancel_timer()
        if self.transport is not None:
            self._timer = self.dispatch.loop.call_later(
                self.dispatch.close_timeout, self._close_timeout)

    def abort(self):
        """Drop the TCP connection at once, without a close handshake."""
        self.state = STATE_CLOSED
        if self.transport is not None:
            self.transport.abort()

    @property
    def queued(self):
        """Frames waiting for the peer to read (beyond the transport's own buffer)."""
        return len(self._queue) if self._queue is not None else 0

    @property
    def queued_bytes(self):
        """Bytes of the frames in :attr:`queued`."""
        return self._queued_bytes

    @property
    def writing_paused(self):
        return self._writing_paused

    # -- events to the hub -----------------------------------------------------------------------

    # A handler's exception must not unwind into the event loop's read callback (it would kill
    # the connection with a bare traceback): it goes to the hub, which reports it.

    cdef bint _within_rate(self, Py_ssize_t size) except -1:
        # Token buckets, refilled from the monotonic clock on each message or frame charged (a
        # C call, no timer): ``burst`` tokens at most, ``rate`` per second. One message token
        # and ``size`` byte tokens per message; control frames and non-final fragments take a
        # message token each (see Connection._admit_frame).
        cdef Dispatch d = self.dispatch
        cdef double now = monotonic()
        cdef double elapsed
        if self._bucket_stamp == 0:
            self._bucket_messages = d.burst_messages
            self._bucket_bytes = d.burst_bytes
        else:
            elapsed = now - self._bucket_stamp
            self._bucket_messages = min(d.burst_messages,
                                        self._bucket_messages + elapsed * d.rate_messages)
            self._bucket_bytes = min(d.burst_bytes, self._bucket_bytes + elapsed * d.rate_bytes)
        self._bucket_stamp = now
        if self._bucket_messages >= 1 and self._bucket_bytes >= size:
            self._bucket_messages -= 1
            self._bucket_bytes -= size
            return True
        d.messages_rate_limited += 1
        if d.rate_close:
            self.close(1008, "rate limit exceeded")
        if d.on_rate_limit is not None:
            d.on_rate_limit(self.session, size)
        return False

    cdef bint _admit_frame(self, Py_ssize_t length) except -1:
        # Frame bytes are charged with the message they belong to (control frames carry at
        # most 125): here only the message token.
        return not self.dispatch.rate_limited or self._within_rate(0)

    cdef int _on_text(self, object text) except -1:
        self.dispatch.messages_in += 1
        if self.dispatch.rate_limited and not self._within_rate(self.message_size):
            return 0
        try:
            self.dispatch.on_text(self.session, text)
        except Exception as exc:
            self.dispatch.on_handler_error(self.session, exc)
        return 0

    cdef int _on_binary(self, object data) except -1:
        self.dispatch.messages_in += 1
        if self.dispatch.rate_limited and not self._within_rate(self.message_size):
            return 0
        try:
            self.dispatch.on_binary(self.session, data)
        except Exception as exc:
            self.dispatch.on_handler_error(self.session, exc)
        return 0

    cdef int _on_ping(self, object payload) except -1:
        return 0

    cdef int _on_pong(self, object payload) except -1:
        if self.dispatch.on_pong is not None:
            try:
                self.dispatch.on_pong(self.session)
            except Exception as exc:
                self.dispatch.on_handler_error(self.session, exc)
        return 0

    cdef int _on_close(self, int code, object reason) except -1:
        # Section 7.1.1: the server closes TCP first, once its close reply is written.
        self._close_transport()
        if self.dispatch.on_close is not None:
            try:
                self.dispatch.on_close(self.session, code, reason)
            except Exception as exc:
                self.dispatch.on_handler_error(self.session, exc)
        return 0

    cdef int _on_fail(self, int code, object reason) except -1:
        self._close_transport()
        if self.dispatch.on_protocol_error is not None:
            self.dispatch.on_protocol_error(self.session, code, reason)
        return 0


class WebSocketProtocol(ProtocolCore, asyncio.BufferedProtocol):
    """``ProtocolCore`` seen by asyncio and uvloop as a BufferedProtocol (no ``__dict__``)."""

    __slots__ = ()


def heartbeat(list protocols, double now, double ping_period, double pong_wait):
    """Ping the connections due for it; return the ones silent for longer than ``pong_wait``.

    Any inbound bytes count as a sign of life (a pong, a message), read from the per-connection
    read counter, so the read path pays one increment and no clock call.
    """
    cdef ProtocolCore p
    cdef list dead = []
    cdef bytes ping = build_frame(FIN_BIT | OP_PING, NULL, 0, False)
    for obj in protocols:
        p = <ProtocolCore?>obj
        if p.state != STATE_OPEN:
            continue
        if p.reads != p.reads_seen:
            p.reads_seen = p.reads
            p.last_active = now
        elif now - p.last_active > pong_wait:
            dead.append(p)
            continue
        if now - p.last_ping >= ping_period:
            p.last_ping = now
            p.send_frame(ping, True)
    return dead
