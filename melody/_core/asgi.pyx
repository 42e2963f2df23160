# cython: language_level=3
"""A hub connection served by an ASGI server (uvicorn, hypercorn, ...) instead of melody's own.

``AsgiConnection`` is a ``ProtocolCore``: the hub keeps it in the same groups as the native
connections and the fan-out loop calls the same two C methods on it, ``admit`` and
``send_frame``. What differs is the far side. Its bytes belong to the ASGI server, so:

* outgoing frames are turned back into ASGI messages. The fan-out hands every recipient one
  built, unmasked, uncompressed server frame (an ASGI server compresses on its own, so
  ``deflater`` stays None); its 2-10 byte header gives the opcode and the payload, decoded once
  per broadcast however many ASGI sessions receive it;
* each message goes to the ASGI ``send`` at once: its coroutine is stepped right here, and an
  ASGI server that is below its write-buffer mark completes it without suspending (uvicorn
  does). Only when it suspends (the peer stopped reading) is it finished by a writer task, and
  later messages wait in a queue bounded by ``Dispatch.queue_limit`` with the hub's overflow
  policy, as frames wait on the native path while the transport is paused;
* incoming messages arrive through ``run()``, a loop over the ASGI ``receive`` that calls the
  hub's handlers exactly as the frame parser does;
* there is no ping in ASGI: the hub's heartbeat never pings these connections nor takes them
  for dead. Liveness is the ASGI server's job (uvicorn's ``ws_ping_interval``).
"""

import asyncio
from collections import deque

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.unicode cimport (
    PyUnicode_DecodeUTF8, PyUnicode_GET_LENGTH, PyUnicode_KIND, PyUnicode_DATA, PyUnicode_READ,
)

from melody._core.connection cimport (
    STATE_OPEN, STATE_CLOSED, SEND_OK, SEND_QUEUED, SEND_DROPPED, SEND_CLOSED,
    SEND_DROPPED_OLDEST, ADMIT_REFUSED, ADMIT_OK, ADMIT_DROPPED_OLDEST,
)
from melody._core.frames cimport OP_TEXT, OP_BINARY, OP_CLOSE
from melody._core.protocol cimport Dispatch, ProtocolCore


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)


cdef double _NEVER = float("inf")


cdef Py_ssize_t _utf8_length(str text) except -1:
    # The UTF-8 size of ``text`` without encoding it (a str caches its UTF-8 form once asked).
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text)
    cdef Py_ssize_t i
    cdef Py_ssize_t total = 0
    cdef unsigned int kind
    cdef void* data
    cdef Py_UCS4 c
    if PyUnicode_IS_ASCII(text):
        return n
    kind = PyUnicode_KIND(text)
    data = PyUnicode_DATA(text)
    for i in range(n):
        c = PyUnicode_READ(kind, data, i)
        if c < 0x80:
            total += 1
        elif c < 0x800:
            total += 2
        elif c < 0x10000:
            total += 3
        else:
            total += 4
    return total


# The last data frame turned back into a payload. A broadcast hands the same frame object to
# every recipient, so the ASGI ones decode it once; holding the frame keeps its id from being
# reused, and the entry is dropped when the loop iteration ends.
cdef object _last_frame = None
cdef object _last_payload = None
cdef int _last_opcode = 0
cdef bint _clear_scheduled = False


def _clear_last_frame():
    global _last_frame, _last_payload, _clear_scheduled
    _last_frame = None
    _last_payload = None
    _clear_scheduled = False


cdef int _frame_header(bytes frame, int* opcode) except -1:
    # The header length of one whole server frame (RFC 6455 5.2): 2, 4 or 10 bytes. Server
    # frames are never masked, and on this path never compressed (RSV1).
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(frame)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(frame)
    cdef Py_ssize_t header = 2
    if n < 2:
        raise ValueError("truncated frame")
    if p[0] & 0x70 or p[1] & 0x80:
        raise ValueError("ASGI connections take unmasked frames without RSV bits")
    if (p[1] & 0x7F) == 126:
        header = 4
    elif (p[1] & 0x7F) == 127:
        header = 10
    if n < header:
        raise ValueError("truncated frame header")
    opcode[0] = p[0] & 0x0F
    return header


def _is_disconnect(exc):
    # What ASGI servers raise from send() once the peer is gone: uvicorn's ClientDisconnected
    # is an OSError, Starlette's WebSocket wrapper turns that into WebSocketDisconnect.
    return isinstance(exc, OSError) or type(exc).__name__ == "WebSocketDisconnect"


async def _resume(object it, object step):
    # Finish an ASGI send whose first step ran outside any task (AsgiConnection._send_now) and
    # suspended on ``step``: wait for what it waits for, resume it, until it returns. This is
    # what an asyncio Task does with a coroutine, minus the result it has none of.
    try:
        while True:
            if step is None:
                await asyncio.sleep(0)  # a bare yield: it only gave the loop a turn
            elif asyncio.isfuture(step):
                step._asyncio_future_blocking = False
                await asyncio.wait((step,))
            else:
                raise RuntimeError(f"ASGI send yielded {step!r}: not an asyncio awaitable")
            step = it.send(None)
    except StopIteration:
        return
    except BaseException:
        it.close()
        raise


cdef class AsgiConnection(ProtocolCore):
    """One WebSocket connection accepted by an ASGI server, registered in a melody hub."""

    def __init__(self, Dispatch dispatch, object send, dict scope):
        ProtocolCore.__init__(self, dispatch)
        self._send = send
        self._queue = deque()
        self.transport = AsgiTransport(self, scope)

    def open(self, object session):
        """The ASGI server accepted the connection: attach ``session`` and start taking frames."""
        self.session = session
        self.state = STATE_OPEN
        self._opened = True
        # The heartbeat never pings this connection nor finds it silent: ASGI has no ping, and
        # liveness belongs to the ASGI server.
        self.last_active = _NEVER
        self.last_ping = _NEVER

    # -- reading ---------------------------------------------------------------------------------

    async def run(self, object receive):
        """Deliver the ASGI server's messages to the hub until the connection ends.

        Returns after ``websocket.disconnect`` or :meth:`abort`; the hub's ``on_disconnect``
        has run by then (once).
        """
        cdef Dispatch d = self.dispatch
        cdef Py_ssize_t n
        self._reader = asyncio.current_task()
        try:
            while self.state != STATE_CLOSED:
                try:
                    if self._read_paused:
                        self._read_waiter = d.loop.create_future()
                        await self._read_waiter
                        continue
                    message = await receive()
                except asyncio.CancelledError:
                    if not self._reader_cancelled:
                        raise
                    # abort() ended us: not a cancellation of the ASGI app by its server.
                    self._reader_cancelled = False
                    uncancel = getattr(self._reader, "uncancel", None)
                    if uncancel is not None:
                        uncancel()
                    break
                kind = message["type"]
                if kind == "websocket.receive":
                    if self.state != STATE_OPEN:
                        continue  # after our close frame nothing is delivered (section 1.4)
                    text = message.get("text")
                    if text is not None:
                        n = _utf8_length(text)
                        if n > self.max_message_size:
                            self._too_big(n)
                            continue
                        d.bytes_in += n
                        self.message_size = n  # what the rate limit's byte bucket counts
                        self._on_text(text)
                    else:
                        data = message.get("bytes")
                        if data is None:
                            data = b""
                        n = len(data)
                        if n > self.max_message_size:
                            self._too_big(n)
                            continue
                        d.bytes_in += n
                        self.message_size = n
                        self._on_binary(data)
                elif kind == "websocket.disconnect":
                    self._peer_closed(message)
                    break
        finally:
            self._finish()

    cdef int _too_big(self, Py_ssize_t nbytes) except -1:
        # The native path decides this from the frame header; here the ASGI server has read the
        # message already (its own limit, e.g. uvicorn's ws_max_size, bounds that).
        reason = f"message over max_message_size ({self.max_message_size} bytes)"
        self.close(1009, reason)
        if self.dispatch.on_protocol_error is not None:
            self.dispatch.on_protocol_error(self.session, 1009, reason)
        return 0

    cdef int _peer_closed(self, object message) except -1:
        cdef int code = message.get("code") or 1005  # ASGI's default: no status given
        reason = message.get("reason") or ""
        was_open = self.state == STATE_OPEN
        self.state = STATE_CLOSED
        if not was_open:
            return 0  # we closed first: close_code holds what we sent
        self.close_code = code
        self.close_reason = reason
        # 1005/1006 is all some servers say when TCP dropped without a close frame; only a
        # close the peer gave a code for is reported to handle_close.
        if code != 1005 and code != 1006 and self.dispatch.on_close is not None:
            try:
                self.dispatch.on_close(self.session, code, reason)
            except Exception as exc:
                self.dispatch.on_handler_error(self.session, exc)
        return 0

    cdef int _finish(self) except -1:
        self.state = STATE_CLOSED
        if self.close_code == 0:
            self.close_code = 1006
        self._cancel_timer()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        self._queue.clear()
        self._queued_bytes = 0
        self._reader = None
        self.transport = None
        if self._opened:
            self._opened = False
            self.dispatch.on_disconnect(self)
        return 0

    cdef int _wake_reader(self) except -1:
        self._read_paused = False
        waiter = self._read_waiter
        if waiter is not None:
            self._read_waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return 0

    # -- writing ---------------------------------------------------------------------------------

    cdef int admit(self) except -1:
        # A peer keeping up takes everything; only while a send is suspended do messages queue.
        cdef Dispatch d = self.dispatch
        if not self._writing_paused:
            return ADMIT_OK
        if len(self._queue) < d.queue_limit and self._queued_bytes < d.queue_bytes_limit:
            return ADMIT_OK
        self.dropped += 1
        d.frames_dropped += 1
        if d.overflow_policy == 1:
            if self._drop_oldest():
                return ADMIT_DROPPED_OLDEST
        elif d.overflow_policy == 2:
            self._discard_queued_data()
            self.close(1008, "message buffer full: reading too slowly")
        return ADMIT_REFUSED

    # Queue items: (message, size) for data, (message,) for the close, which is never dropped.

    cdef int _drop_oldest(self) except -1:
        cdef Py_ssize_t i = 0
        queue = self._queue
        for item in queue:
            if len(<tuple>item) == 2:
                del queue[i]
                self._queued_bytes -= <Py_ssize_t>(<tuple>item)[1]
                return 1
            i += 1
        return 0

    cdef _discard_queued_data(self):
        queue = self._queue
        kept = [item for item in queue if len(<tuple>item) == 1]
        dropped = len(queue) - len(kept)
        self.dropped += dropped
        self.dispatch.frames_dropped += dropped
        queue.clear()
        queue.extend(kept)
        self._queued_bytes = 0

    cdef int send_frame(self, bytes frame, bint control) except -1:
        # What the fan-out loop, the heartbeat and send_close_frame hand over: one whole frame.
        global _last_frame, _last_payload, _last_opcode, _clear_scheduled
        cdef Dispatch d = self.dispatch
        cdef int opcode
        cdef Py_ssize_t header, n
        cdef const unsigned char* p
        cdef int code = 1000
        if self.state == STATE_CLOSED:
            return SEND_CLOSED
        if frame is _last_frame:
            opcode = _last_opcode
            payload = _last_payload
        else:
            header = _frame_header(frame, &opcode)
            p = <const unsigned char*>PyBytes_AS_STRING(frame) + header
            n = PyBytes_GET_SIZE(frame) - header
            if opcode == OP_CLOSE:
                reason = ""
                if n >= 2:
                    code = (p[0] << 8) | p[1]
                    reason = PyUnicode_DecodeUTF8(<const char*>p + 2, n - 2, NULL)
                return self._submit({"type": "websocket.close", "code": code, "reason": reason},
                                    0, True)
            if control:
                return SEND_OK  # a ping or pong: ASGI has none (the server keeps the peer alive)
            if opcode == OP_TEXT:
                payload = PyUnicode_DecodeUTF8(<const char*>p, n, NULL)
            elif opcode == OP_BINARY:
                payload = PyBytes_FromStringAndSize(<const char*>p, n)
            else:
                raise ValueError(f"unexpected opcode {opcode} for an ASGI connection")
            _last_frame = frame
            _last_payload = payload
            _last_opcode = opcode
            if not _clear_scheduled:
                _clear_scheduled = True
                d.loop.call_soon(_clear_last_frame)
        if self.state != STATE_OPEN:
            return SEND_CLOSED
        if opcode == OP_TEXT:
            n = _utf8_length(payload)
            message = {"type": "websocket.send", "text": payload}
        else:
            n = PyBytes_GET_SIZE(payload)
            message = {"type": "websocket.send", "bytes": payload}
        d.messages_out += 1
        d.bytes_out += n
        return self._submit(message, n, False)

    def send_text(self, str text):
        """Send a text message; returns a SEND_* status (SEND_CLOSED once closing)."""
        cdef Dispatch d = self.dispatch
        cdef Py_ssize_t n
        cdef int admitted
        if self.state != STATE_OPEN:
            return SEND_CLOSED
        admitted = self.admit()
        if admitted == ADMIT_REFUSED:
            return SEND_DROPPED
        n = _utf8_length(text)
        d.messages_out += 1
        d.bytes_out += n
        status = self._submit({"type": "websocket.send", "text": text}, n, False)
        return SEND_DROPPED_OLDEST if admitted == ADMIT_DROPPED_OLDEST else status

    def send_binary(self, object data):
        """Send a binary message (any bytes-like object, copied); returns a SEND_* status."""
        cdef Dispatch d = self.dispatch
        cdef int admitted
        if self.state != STATE_OPEN:
            return SEND_CLOSED
        admitted = self.admit()
        if admitted == ADMIT_REFUSED:
            return SEND_DROPPED
        payload = data if type(data) is bytes else bytes(data)
        d.messages_out += 1
        d.bytes_out += PyBytes_GET_SIZE(payload)
        status = self._submit({"type": "websocket.send", "bytes": payload},
                              PyBytes_GET_SIZE(payload), False)
        return SEND_DROPPED_OLDEST if admitted == ADMIT_DROPPED_OLDEST else status

    cdef int _submit(self, object message, Py_ssize_t nbytes, bint control) except -1:
        if self._writing_paused:
            if control:
                self._queue.append((message,))
            else:
                self._queue.append((message, nbytes))
                self._queued_bytes += nbytes
            return SEND_QUEUED
        return self._send_now(message, control)

    cdef int _send_now(self, object message, bint control) except -1:
        # Step the send coroutine here instead of in a task: a server under its write-buffer
        # mark finishes it in this one step, and the message is written before this returns,
        # like a native write, at no task switch per message and recipient.
        try:
            it = self._send(message).__await__()
            step = it.send(None)
        except StopIteration:
            self._progress += 1
            self.dispatch.writes += 1
            return SEND_OK
        except Exception as exc:
            self._send_failed(exc)
            return SEND_CLOSED
        # The server made it wait (its transport is paused): a task finishes it, and what
        # follows queues behind it, bounded by admit().
        self._writing_paused = True
        self._writer = self.dispatch.loop.create_task(self._drain(it, step, control))
        self._arm_write_timer()
        return SEND_QUEUED

    async def _drain(self, object it, object step, bint closing):
        """Finish the suspended send, then send what queued behind it, in order."""
        queue = self._queue
        try:
            await _resume(it, step)
            self._progress += 1
            self.dispatch.writes += 1
            while queue and not closing:
                item = queue.popleft()
                if len(<tuple>item) == 2:
                    self._queued_bytes -= <Py_ssize_t>(<tuple>item)[1]
                else:
                    closing = True  # the close is the last thing ever sent
                await self._send((<tuple>item)[0])
                self._progress += 1
                self.dispatch.writes += 1
        except asyncio.CancelledError:
            task = asyncio.current_task()
            cancelling = getattr(task, "cancelling", None)
            if self.state == STATE_CLOSED or cancelling is None or cancelling():
                raise  # abort(), or the loop shutting down
            # What the send waited for was cancelled, not this task: the send failed.
            self._send_failed(RuntimeError("an ASGI send was cancelled"))
        except Exception as exc:
            self._send_failed(exc)
        finally:
            self._writing_paused = False
            self._writer = None
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None

    cdef int _send_failed(self, object exc) except -1:
        # The server refused a message. Once the peer is gone that is expected (the disconnect
        # reaches run() next); anything else is reported, and the connection dropped.
        self._queue.clear()
        self._queued_bytes = 0
        if _is_disconnect(exc):
            self.state = STATE_CLOSED
            self._wake_reader()
            return 0
        if self.dispatch.on_handler_error is not None:
            self.dispatch.on_handler_error(self.session, exc)
        self.abort()
        return 0

    cdef int _arm_write_timer(self) except -1:
        if self._write_timer is None:
            self._progress_mark = self._progress
            self._write_timer = self.dispatch.loop.call_later(
                self.dispatch.write_wait, self._write_timeout)
        return 0

    def _write_timeout(self):
        """Timer callback: drop a peer whose pending send made no progress for write_wait."""
        self._write_timer = None
        if not self._writing_paused or self.state == STATE_CLOSED:
            return
        if self._progress != self._progress_mark:
            self._arm_write_timer()
            return
        if self._opened and self.dispatch.on_timeout is not None:
            self.dispatch.on_timeout(self.session, "write")
        self.abort()

    def _close_timeout(self):
        """Timer callback: the ASGI server did not report the end of the closing handshake."""
        self._timer = None
        self.abort()

    def close(self, int code=1000, object reason=""):
        """Send ``websocket.close`` after what is queued; abort if the connection has not ended
        ``close_timeout`` seconds later."""
        if self.state != STATE_OPEN:
            return
        if self.send_close_frame(code, reason) == SEND_CLOSED:
            return
        self._wake_reader()  # so that it sees the disconnect that follows
        self._cancel_timer()
        if self.state != STATE_CLOSED:
            self._timer = self.dispatch.loop.call_later(
                self.dispatch.close_timeout, self._close_timeout)

    def abort(self):
        """End the connection at once: nothing more is sent and ``run()`` returns, after which
        the ASGI server drops the connection without a close frame."""
        self.state = STATE_CLOSED
        if self.close_code == 0:
            self.close_code = 1006
        self._queue.clear()
        self._queued_bytes = 0
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        self._wake_reader()
        reader = self._reader
        if reader is not None and not reader.done() and not self._reader_cancelled:
            if reader is not asyncio.current_task(self.dispatch.loop):
                self._reader_cancelled = True
                reader.cancel()


cdef class AsgiTransport:
    """Stands where a transport would for the hub and the ``Session``: addresses, read pausing.

    ``get_extra_info`` knows ``"peername"`` and ``"sockname"`` (the scope's ``client`` and
    ``server``) and ``"asgi_scope"``. Pausing reading makes the connection stop calling
    ``receive`` (the ASGI server then stops reading the socket): the hub does so while a
    session's async handlers lag behind.
    """

    def __init__(self, AsgiConnection conn, dict scope):
        self._conn = conn
        client = scope.get("client")
        server = scope.get("server")
        self._extra = {
            "peername": tuple(client) if client is not None else None,
            "sockname": tuple(server) if server is not None else None,
            "asgi_scope": scope,
        }

    def get_extra_info(self, name, default=None):
        """``"peername"``, ``"sockname"`` or ``"asgi_scope"``; ``default`` for anything else."""
        value = self._extra.get(name)
        return default if value is None else value

    def pause_reading(self):
        """Stop taking messages from the ASGI server until :meth:`resume_reading`."""
        self._conn._read_paused = True

    def resume_reading(self):
        """Take messages again."""
        self._conn._wake_reader()

    def is_reading(self):
        """False while reading is paused."""
        return not self._conn._read_paused

    def is_closing(self):
        """True once the connection is closing or closed."""
        return self._conn.state != STATE_OPEN

    def close(self):
        """Close the connection with 1000."""
        self._conn.close()

    def abort(self):
        """Abort the connection (see ``AsgiConnection.abort``)."""
        self._conn.abort()
