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

One source for both builds: ``protocol.pxd`` gives the compiled classes their C fields and
makes the hooks that ``connection.py`` calls C methods; interpreted, this file runs as it is.
"""

from __future__ import annotations

import asyncio
from collections import deque
from time import monotonic, time
from typing import Any

from .connection import Connection
from .constants import (
    ADMIT_DROPPED_OLDEST,
    ADMIT_OK,
    ADMIT_REFUSED,
    FIN_BIT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    SEND_CLOSED,
    SEND_OK,
    SEND_QUEUED,
    STATE_CLOSED,
    STATE_CLOSING,
    STATE_HANDSHAKE,
    STATE_OPEN,
    STATE_UPGRADING,
)
from .frames import build_frame
from .mask import region_bytes

__all__ = ["Dispatch", "ForeignConnection", "ProtocolCore", "WebSocketProtocol", "heartbeat"]


class Dispatch:
    """What a server's connections call into: the hub's handlers and limits, shared by all."""

    # The fields (compiled: the C struct in protocol.pxd).
    loop: Any
    on_request: Any
    on_text: Any
    on_binary: Any
    on_pong: Any
    on_close: Any
    on_protocol_error: Any
    on_disconnect: Any
    on_timeout: Any
    on_handler_error: Any
    on_rate_limit: Any
    write_wait: float
    close_timeout: float
    handshake_timeout: float
    max_header_size: int
    max_message_size: int
    queue_limit: int
    write_buffer_high: int
    read_buffer_size: int
    queue_bytes_limit: int
    overflow_policy: int
    rate_limited: bool
    rate_messages: float
    burst_messages: float
    rate_bytes: float
    burst_bytes: float
    rate_close: bool
    _dirty: list[Any]
    _flush_scheduled: bool
    direct_writes: bool
    tick: int
    _burst_seen: bool
    _defer_shared: bool
    messages_in: int
    bytes_in: int
    messages_out: int
    bytes_out: int
    frames_dropped: int
    broadcasts: int
    connects: int
    disconnects: int
    writes: int
    messages_rate_limited: int
    requests_too_large: int
    handshake_timeouts: int

    def __init__(self) -> None:
        self.loop = None
        self.on_request = None
        self.on_text = None
        self.on_binary = None
        self.on_pong = None
        self.on_close = None
        self.on_protocol_error = None
        self.on_disconnect = None
        self.on_timeout = None
        self.on_handler_error = None
        self.rate_limited = False
        self.rate_messages = 0.0
        self.burst_messages = 0.0
        self.rate_bytes = 0.0
        self.burst_bytes = 0.0
        self.rate_close = False
        self.on_rate_limit = None
        self._flush_scheduled = False
        self._burst_seen = False
        self._defer_shared = False
        self.messages_in = 0
        self.bytes_in = 0
        self.messages_out = 0
        self.bytes_out = 0
        self.frames_dropped = 0
        self.broadcasts = 0
        self.connects = 0
        self.disconnects = 0
        self.writes = 0
        self.messages_rate_limited = 0
        self.requests_too_large = 0
        self.handshake_timeouts = 0
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

    def flush(self) -> None:
        """Write what every connection gathered during this loop iteration (one write each).

        Scheduled with call_soon by the first frame of an iteration: a burst of broadcasts
        then costs at most two system calls per connection (the direct first write and this
        one) instead of one per frame. It also ends the iteration for send_frame (``tick``).
        """
        dirty = self._dirty
        self._dirty = []
        self._flush_scheduled = False
        self.tick += 1
        self._defer_shared = self._burst_seen
        self._burst_seen = False
        _flush_all(dirty)

    def stats(self) -> dict[str, int]:
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


_REQUEST_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n"
    b"Connection: close\r\n\r\n")


class ProtocolCore(Connection):
    """One server connection. Created by the server's protocol factory, one per socket."""

    # The fields (compiled: the C struct in protocol.pxd).
    transport: Any
    dispatch: Dispatch
    session: Any
    _queue: Any  # a deque once writing paused, else None
    _queued_bytes: int
    _pending: Any  # None, one frame, or a list of frames
    _queued_pong: Any
    _pending_bytes: int
    _direct_tick: int
    _writing_paused: bool
    _close_after_flush: bool
    _in_handshake: bool
    _opened: bool
    _timer: Any
    _write_timer: Any
    reads: int
    reads_seen: int
    last_active: float
    last_ping: float
    # Wall-clock time (Unix seconds) the session opened: a C double, no object per connection.
    opened_at: float
    dropped: int
    _bucket_messages: float
    _bucket_bytes: float
    _bucket_stamp: float
    _body_size: int
    _on_body: Any

    def __init__(self, dispatch: Dispatch) -> None:
        if not isinstance(dispatch, Dispatch):
            raise TypeError(f"Argument 'dispatch' has incorrect type (expected "
                            f"{Dispatch.__module__}.Dispatch, got {type(dispatch).__name__})")
        Connection.__init__(self, True, dispatch.max_message_size, dispatch.read_buffer_size)
        self.dispatch = dispatch
        self.state = STATE_HANDSHAKE
        self.transport = None
        self.session = None
        self._queue = None
        self._queued_bytes = 0
        self._queued_pong = None
        self._pending = None
        self._pending_bytes = 0
        # Dispatch.tick when this connection last wrote a frame straight to the transport.
        self._direct_tick = 0
        self._writing_paused = False
        self._close_after_flush = False
        self._in_handshake = False
        self._opened = False
        self._timer = None
        self._write_timer = None
        self.reads = 0
        self.reads_seen = 0
        self.last_active = 0.0
        self.last_ping = 0.0
        self.opened_at = 0.0
        self.dropped = 0
        self._bucket_messages = 0.0
        self._bucket_bytes = 0.0
        self._bucket_stamp = 0.0
        # A plain request's body being read (read_body): its size and who gets it.
        self._body_size = 0
        self._on_body = None

    # -- asyncio.BaseProtocol ------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=self.dispatch.write_buffer_high)
        self._timer = self.dispatch.loop.call_later(
            self.dispatch.handshake_timeout, self._handshake_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
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

    def eof_received(self) -> bool:
        # The peer half-closed without a close frame: nothing more will come, close our side.
        return False

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._queue is None:
            self._queue = deque()
        if self._write_timer is None and self.dispatch.loop is not None:
            self._write_timer = self.dispatch.loop.call_later(
                self.dispatch.write_wait, self._write_timeout)

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._drain_queue()

    def _drain_queue(self) -> None:
        # Hand the whole queue to the transport in one call: the peer reads again.
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

    # -- timers ----------------------------------------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self.state == STATE_HANDSHAKE or self.state == STATE_UPGRADING:
            self.state = STATE_CLOSED
            self.dispatch.handshake_timeouts += 1
            if self.transport is not None:
                self.transport.abort()

    def _write_timeout(self) -> None:
        self._write_timer = None
        if self.transport is not None and self._writing_paused:
            if self._opened and self.dispatch.on_timeout is not None:
                self.dispatch.on_timeout(self.session, "write")
            if self.transport is not None:
                self.transport.abort()

    def _close_timeout(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.abort()

    # -- reading -------------------------------------------------------------------------------

    def _process(self, nbytes: int) -> None:
        self.reads += 1
        self.dispatch.bytes_in += nbytes
        if self.state == STATE_OPEN or self.state == STATE_CLOSING:
            self._parse()
        elif self.state == STATE_HANDSHAKE:
            self._handshake()
        elif self.state == STATE_CLOSED:
            self._start = self._end
        elif self._on_body is not None:
            self._take_body()
        # STATE_UPGRADING otherwise: the hub is deciding; keep the bytes until it has.

    def _handshake(self) -> None:
        buf = self._cur
        live = self._end - self._start
        head = buf.find(b"\r\n\r\n", self._start, self._end)
        if head < 0:
            if live > self.dispatch.max_header_size:
                self.dispatch.requests_too_large += 1
                self._reject_now(_REQUEST_TOO_LARGE)
            return
        head += 4 - self._start
        if head > self.dispatch.max_header_size:
            self.dispatch.requests_too_large += 1
            self._reject_now(_REQUEST_TOO_LARGE)
            return
        block = region_bytes(buf, self._start, head)
        self._start += head
        self.state = STATE_UPGRADING
        self._in_handshake = True
        try:
            self.dispatch.on_request(self, block)
        finally:
            self._in_handshake = False
        if self.state == STATE_OPEN:
            self._parse()
        elif self._on_body is not None:
            # A plain request whose body the hub wants: it may be here already; if not,
            # reading goes on, bounded in time by the handshake timer still running.
            self._take_body()
        elif self.state == STATE_UPGRADING and self.transport is not None:
            # An async upgrade hook is running: stop reading until it decides. The hub bounds
            # that decision by handshake_timeout from now and answers 504 at its deadline; this
            # timer becomes the backstop a second after it, so that the client gets that answer
            # rather than a reset from the clock its request started.
            self.transport.pause_reading()
            self._cancel_timer()
            self._timer = self.dispatch.loop.call_later(
                self.dispatch.handshake_timeout + 1.0, self._handshake_timeout)

    def read_body(self, size: int, callback: Any) -> None:
        """Read the ``size`` bytes that follow the request head (a plain request's body,
        ``Content-Length``), then call ``callback(self, body)``.

        Only while the request is being decided, from ``Dispatch.on_request``: the head
        parser reads no body by itself. The caller bounds ``size`` (the buffer grows to hold
        it); the request's handshake timer bounds the time the client takes to send it. Once
        the body is in, reading stops (the answer, ``reject``, closes the connection) and the
        timer is re-armed as for an async upgrade decision. Raises RuntimeError outside
        ``on_request``, ValueError for a negative size.
        """
        if not self._in_handshake or self.state != STATE_UPGRADING:
            raise RuntimeError("read_body is called from Dispatch.on_request")
        if size < 0:
            raise ValueError("a body size is >= 0")
        self._body_size = size
        self._on_body = callback

    def _take_body(self) -> None:
        size = self._body_size
        if self._end - self._start < size:
            self._need = size  # the buffer grows for the rest (see Connection._growth)
            return
        body = region_bytes(self._cur, self._start, size)
        # Bytes after the body (a pipelined request) are dropped: the answer closes.
        self._start = self._end
        self._need = 0
        callback = self._on_body
        self._on_body = None
        if self.transport is not None:
            self.transport.pause_reading()
            self._cancel_timer()
            self._timer = self.dispatch.loop.call_later(
                self.dispatch.handshake_timeout + 1.0, self._handshake_timeout)
        callback(self, body)

    def _reject_now(self, response: bytes) -> None:
        self.state = STATE_CLOSED
        self._start = self._end
        self._cancel_timer()
        if self.transport is not None:
            self.transport.write(response)
            self.transport.close()

    def accept(self, response: bytes, session: Any, inflater: Any = None, deflater: Any = None,
               compress_min_size: int = 0) -> bool:
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
        self.opened_at = time()
        return True

    def start(self) -> None:
        """Begin delivering frames, once the hub has registered the session.

        When the upgrade was decided inside the read callback the frames that followed the
        request are parsed right after it returns; when an async hook decided later, reading
        was paused meanwhile: resume it and parse what was buffered. A session that
        ``handle_connect`` closed already is started too: its closing handshake needs the
        peer's close reply, which only reading brings (else it waits out close_timeout).
        """
        if (self._in_handshake or self.transport is None
                or (self.state != STATE_OPEN and self.state != STATE_CLOSING)):
            return
        self.transport.resume_reading()
        try:
            self._parse()
        finally:
            self._settle()

    def reject(self, response: bytes) -> None:
        """Refuse the upgrade with ``response`` (an HTTP error) and close the connection."""
        if self.state != STATE_UPGRADING:
            return
        self._reject_now(response)

    # -- writing -------------------------------------------------------------------------------

    def admit(self) -> int:
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

    def _drop_oldest(self) -> bool:
        i = 0
        queue = self._queue
        for item in queue:
            if type(item) is bytes:
                del queue[i]
                self._queued_bytes -= len(item)
                return True
            i += 1
        return False

    def _discard_queued_data(self) -> None:
        kept_bytes = 0
        queue = self._queue
        kept = [item for item in queue if type(item) is not bytes]
        dropped = len(queue) - len(kept)
        self.dropped += dropped
        self.dispatch.frames_dropped += dropped
        queue.clear()
        for item in kept:
            queue.append(item)
            kept_bytes += len(item[0])
        self._queued_bytes = kept_bytes

    def send_frame(self, frame: bytes, control: bool) -> int:
        # A connection's first frame of a loop iteration is written at once: the transport
        # tries send() right away, so a lone reply (an echo) leaves now rather than one
        # iteration later. The frames after it, and broadcast frames during bursts
        # (send_shared), gather in _pending and leave in one write at the end of the
        # iteration (Dispatch.flush), or at once when they pass the write-buffer mark: a burst
        # of broadcasts costs one system call per connection, not one per frame. Only a frame
        # with nothing pending or queued before it goes direct, so none overtakes another. A
        # peer that has stopped reading (pause_writing) gets a bounded queue instead; control
        # frames are marked in it (a 1-tuple) so that no overflow policy ever drops them.
        d = self.dispatch
        n = len(frame)
        if self.transport is None:
            return SEND_CLOSED
        if not control:
            d.messages_out += 1
        d.bytes_out += n
        if self._writing_paused:
            if control and frame[0] == (FIN_BIT | OP_PONG):
                # 5.5.3: answering only the latest ping is allowed. A peer that floods pings
                # and reads nothing keeps one pong queued, not one per ping.
                if self._queued_pong is not None:
                    self._queued_bytes += n - len(self._queued_pong[0])
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
            pending.append(frame)
        else:
            self._pending = [pending, frame]
        self._pending_bytes += n
        if self._pending_bytes >= d.write_buffer_high:
            self._flush()
        return SEND_OK

    def _write_failed(self, exc: BaseException) -> None:
        # One connection's failing write must not reach the caller (a broadcast would stop
        # half way, a flush would skip the other connections): it is reported to the loop's
        # exception handler and the connection dropped.
        self.dispatch.loop.call_exception_handler({
            "message": "melody: writing to a connection failed",
            "exception": exc, "protocol": self})
        self.abort()

    def send_shared(self, frame: bytes, opcode: int, payload: Any) -> int:
        # A broadcast's frame (the fan-out loop; ``opcode`` and ``payload`` are the message itself,
        # for connections that are not sockets: see ForeignConnection). A lone broadcast goes out at
        # once like any first frame of an iteration: each recipient's send() happens while the loop
        # walks the recipients, not after it (measured: ~7% lower latency at N = 10,000). But when
        # broadcasts come in bursts (a publisher's read holding several), writing the first at once
        # costs a second write per connection for the rest: so once an iteration has seen a burst,
        # the next ones gather every broadcast frame for one write at their end, until an iteration
        # passes without a burst. Marking the connection as having written directly sends the frame
        # down the gathering path.
        d = self.dispatch
        if self._direct_tick == d.tick or self._pending is not None:
            d._burst_seen = True
        if d._defer_shared:
            self._direct_tick = d.tick
        return self.send_frame(frame, False)

    def _flush(self) -> None:
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        self._pending_bytes = 0
        if self.transport is None:
            return
        self.dispatch.writes += 1
        if type(pending) is list:
            self.transport.writelines(pending)
        else:
            self.transport.write(pending)

    def _close_transport(self) -> None:
        self._cancel_timer()
        if self.transport is None:
            return
        self._flush()
        if self._writing_paused and self._queue:
            # The close frame is queued behind data: close once it is flushed (write_wait
            # bounds how long that may take).
            self._close_after_flush = True
        else:
            self.transport.close()

    def close(self, code: int = 1000, reason: str = "") -> None:
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

    def abort(self) -> None:
        """Drop the TCP connection at once, without a close handshake."""
        self.state = STATE_CLOSED
        if self.transport is not None:
            self.transport.abort()

    @property
    def queued(self) -> int:
        """Frames waiting for the peer to read (beyond the transport's own buffer)."""
        return len(self._queue) if self._queue is not None else 0

    @property
    def queued_bytes(self) -> int:
        """Bytes of the frames in :attr:`queued`."""
        return self._queued_bytes

    @property
    def writing_paused(self) -> bool:
        return self._writing_paused

    # -- events to the hub -----------------------------------------------------------------------

    # A handler's exception must not unwind into the event loop's read callback (it would kill
    # the connection with a bare traceback): it goes to the hub, which reports it.

    def _within_rate(self, size: int) -> bool:
        # Token buckets, refilled from the monotonic clock on each message or frame charged (a
        # C call, no timer): ``burst`` tokens at most, ``rate`` per second. One message token
        # and ``size`` byte tokens per message; control frames and non-final fragments take a
        # message token each (see Connection._admit_frame).
        d = self.dispatch
        now = monotonic()
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

    def _admit_frame(self, length: int) -> bool:
        # Frame bytes are charged with the message they belong to (control frames carry at
        # most 125): here only the message token.
        return not self.dispatch.rate_limited or self._within_rate(0)

    def _on_text(self, text: str) -> None:
        self.dispatch.messages_in += 1
        if self.dispatch.rate_limited and not self._within_rate(self.message_size):
            return
        try:
            self.dispatch.on_text(self.session, text)
        except Exception as exc:
            self.dispatch.on_handler_error(self.session, exc)

    def _on_binary(self, data: bytes) -> None:
        self.dispatch.messages_in += 1
        if self.dispatch.rate_limited and not self._within_rate(self.message_size):
            return
        try:
            self.dispatch.on_binary(self.session, data)
        except Exception as exc:
            self.dispatch.on_handler_error(self.session, exc)

    def _on_ping(self, payload: bytes) -> None:
        pass

    def _on_pong(self, payload: bytes) -> None:
        if self.dispatch.on_pong is not None:
            try:
                self.dispatch.on_pong(self.session)
            except Exception as exc:
                self.dispatch.on_handler_error(self.session, exc)

    def _on_close(self, code: int, reason: str) -> None:
        # Section 7.1.1: the server closes TCP first, once its close reply is written.
        self._close_transport()
        if self.dispatch.on_close is not None:
            try:
                self.dispatch.on_close(self.session, code, reason)
            except Exception as exc:
                self.dispatch.on_handler_error(self.session, exc)

    def _on_fail(self, code: int, reason: str) -> None:
        self._close_transport()
        if self.dispatch.on_protocol_error is not None:
            self.dispatch.on_protocol_error(self.session, code, reason)


def _flush_all(dirty: list[Any]) -> None:
    # Dispatch.flush's loop, typed in protocol.pxd (after ProtocolCore is declared).
    for p in dirty:
        try:
            p._flush()
        except Exception as exc:
            p._write_failed(exc)


class ForeignConnection(ProtocolCore):
    """A connection whose far side is not a transport but Python code (the ASGI adapter).

    The fan-out loop and ``Connection`` reach every connection through the C hooks ``admit``,
    ``send_shared``, ``_send_admitted`` and ``_send_close``. Here they hand the *message*
    (opcode and payload, never a frame) to plain Python methods that a subclass defines:

    * ``admit_message() -> int``: an ADMIT_* value, as ``admit`` returns (asked only while
      ``send_waiting`` is true: otherwise every message is admitted);
    * ``write_message(opcode, message) -> int``: one admitted data message (a ``str`` for
      OP_TEXT, a bytes-like object for OP_BINARY); a SEND_* value;
    * ``write_close(code, reason) -> int``: the closing handshake (code 0: no status).

    The subclass is ordinary Python, so the adapter stays out of the compiled core, and the
    native path pays nothing for it: its hooks stay C calls through the vtable (``cpdef``
    hooks would add an override lookup per recipient on heap-type protocols). Inbound, the
    subclass hands each message it read to ``receive_message``. Such a connection has no
    frames of its own: pings and pongs are dropped (its server keeps the peer alive) and a
    data frame is an error.
    """

    # True while the far side holds a send up (its peer is not reading): only then can a
    # message be refused, so only then is the subclass asked (a Python call per recipient
    # saved on every broadcast to a peer that keeps up).
    send_waiting: bool

    def __init__(self, dispatch: Dispatch) -> None:
        ProtocolCore.__init__(self, dispatch)
        self.send_waiting = False

    def admit(self) -> int:
        if not self.send_waiting:
            return ADMIT_OK
        return self.admit_message()  # type: ignore[attr-defined,no-any-return]

    def send_shared(self, frame: bytes, opcode: int, payload: Any) -> int:
        # A broadcast: the message as the publisher gave it, shared by every such recipient.
        if self.state != STATE_OPEN:
            return SEND_CLOSED
        return self.write_message(opcode, payload)  # type: ignore[attr-defined,no-any-return]

    def _send_admitted(self, opcode: int, message: Any) -> int:
        return self.write_message(opcode, message)  # type: ignore[attr-defined,no-any-return]

    def _send_close(self, code: int, reason: Any) -> int:
        return self.write_close(code, reason)  # type: ignore[attr-defined,no-any-return]

    def send_frame(self, frame: bytes, control: bool) -> int:
        if not control:
            raise ValueError(f"{type(self).__name__} takes messages, not data frames")
        return SEND_CLOSED if self.state == STATE_CLOSED else SEND_OK

    def receive_message(self, opcode: int, data: Any, size: int) -> None:
        """Deliver one whole message the far side read (``size``: its length in bytes, already
        checked against ``max_message_size``): counted, rate-limited and handed to the hub's
        handlers exactly as a parsed one."""
        self.dispatch.bytes_in += size
        self.message_size = size  # what the rate limit's byte bucket charges
        if opcode == OP_TEXT:
            self._on_text(data)
        else:
            self._on_binary(data)


class WebSocketProtocol(ProtocolCore, asyncio.BufferedProtocol):
    """``ProtocolCore`` seen by asyncio and uvloop as a BufferedProtocol (no ``__dict__``)."""

    __slots__ = ()


def heartbeat(protocols: list[Any], now: float, ping_period: float,
              pong_wait: float) -> list[Any]:
    """Ping the connections due for it; return the ones silent for longer than ``pong_wait``.

    Any inbound bytes count as a sign of life (a pong, a message), read from the per-connection
    read counter, so the read path pays one increment and no clock call.
    """
    dead = []
    ping = build_frame(FIN_BIT | OP_PING, b"", False)
    for p in protocols:
        if not isinstance(p, ProtocolCore):
            raise TypeError(f"Cannot convert {type(p).__name__} to ProtocolCore")
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
