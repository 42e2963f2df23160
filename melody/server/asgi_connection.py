"""A hub connection served by an ASGI server (uvicorn, hypercorn, ...) instead of melody's own.

``AsgiConnection`` is a ``ForeignConnection``: the hub keeps it in the same groups as the
native connections and the fan-out loop calls the same C hooks on it, which that compiled base
hands to the plain-Python methods here (``admit_message``, ``write_message``, ``write_close``).
What differs is the far side. Its bytes belong to the ASGI server, so:

* outgoing messages go out as ASGI messages. The fan-out hands every recipient the message's
  opcode and payload beside the shared frame; this class takes the payload as it is and never
  parses a frame (an ASGI server frames and compresses on its own, so ``deflater`` stays None);
* each message goes to the ASGI ``send`` at once: its coroutine is stepped right here, and an
  ASGI server that is below its write-buffer mark completes it without suspending (uvicorn
  does). Only when it suspends (the peer stopped reading) is it finished by a writer task, and
  later messages wait in an outbox bounded by ``Dispatch.queue_limit`` with the hub's overflow
  policy, as frames wait on the native path while the transport is paused;
* incoming messages arrive through ``run()``, a loop over the ASGI ``receive`` that hands each
  to ``receive_message``, which calls the hub's handlers exactly as the frame parser does;
* there is no ping in ASGI: the hub's heartbeat never pings these connections nor takes them
  for dead. Liveness is the ASGI server's job (uvicorn's ``ws_ping_interval``).

Plain Python in every build: this runs once per ASGI message, behind an ASGI server's own
Python per-message cost, so compiling it bought little and kept adapter code in the engine.
"""

from __future__ import annotations

import asyncio
import operator
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from melody._core.constants import (
    ADMIT_DROPPED_OLDEST,
    ADMIT_OK,
    ADMIT_REFUSED,
    OP_BINARY,
    OP_TEXT,
    SEND_CLOSED,
    SEND_OK,
    SEND_QUEUED,
    STATE_CLOSED,
    STATE_OPEN,
)
from melody._core.frames import close_reason
from melody._core.protocol import Dispatch, ForeignConnection

__all__ = ["AsgiConnection", "AsgiTransport"]

_Message = MutableMapping[str, Any]

_NEVER = float("inf")


def _utf8_length(text: str) -> int:
    # The UTF-8 size of ``text`` (a lone surrogate counts 3 bytes, as the compiled count does).
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _is_disconnect(exc: BaseException) -> bool:
    # What ASGI servers raise from send() once the peer is gone: uvicorn's ClientDisconnected
    # is an OSError, Starlette's WebSocket wrapper turns that into WebSocketDisconnect.
    return isinstance(exc, OSError) or type(exc).__name__ == "WebSocketDisconnect"


async def _resume(it: Any, step: Any) -> None:
    # Finish an ASGI send whose first step ran outside any task (AsgiConnection._send_now) and
    # suspended on ``step``: wait for what it waits for, resume it, until it returns.
    try:
        while True:
            if step is None:
                await asyncio.sleep(0)  # a bare yield: it only gave the loop a turn
            elif asyncio.isfuture(step):
                # The future's "blocking" mark is the Task protocol's; this is not a Task, so
                # it is left alone: Future.__await__ checks done() when resumed, not the mark.
                await asyncio.wait((step,))
            else:
                raise RuntimeError(f"ASGI send yielded {step!r}: not an asyncio awaitable")
            step = it.send(None)
    except StopIteration:
        return
    except BaseException:
        it.close()
        raise


class AsgiConnection(ForeignConnection):
    """One WebSocket connection accepted by an ASGI server, registered in a melody hub."""

    # Its own state: the engine's fields of the same purpose (the native queue, timers) are C
    # fields of ProtocolCore that Python code does not reach.
    __slots__ = ("_send", "_writer", "_reader", "_reader_cancelled", "_read_paused",
                 "_read_waiter", "_progress", "_progress_mark", "_outbox", "_outbox_bytes",
                 "_accepted", "_close_timer", "_stall_timer")

    def __init__(self, dispatch: Dispatch, send: Callable[[_Message], Awaitable[None]],
                 scope: dict[str, Any]) -> None:
        if type(scope) is not dict:
            raise TypeError(f"scope must be a dict, not {type(scope).__name__}")
        ForeignConnection.__init__(self, dispatch)
        # The ASGI ``send`` callable; every outgoing message is one awaitable call to it.
        self._send = send
        # The task finishing a send that did not complete at once, then draining _outbox.
        self._writer: asyncio.Task[None] | None = None
        # The task running run(): cancelled by abort() to end a connection from outside.
        self._reader: asyncio.Task[Any] | None = None
        self._reader_cancelled = False
        # Set while the hub asks the reader to wait (async handlers lagging behind).
        self._read_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        # Sends completed: the write timer's sign that the peer still reads.
        self._progress = 0
        self._progress_mark = 0
        # Messages behind a suspended send: (message, size) for data, (message,) for the
        # close, which no overflow policy drops.
        self._outbox: deque[tuple[Any, ...]] = deque()
        self._outbox_bytes = 0
        # True from open() until the hub has been told of the disconnect.
        self._accepted = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self.transport = AsgiTransport(self, scope)

    def open(self, session: Any) -> None:
        """The ASGI server accepted the connection: attach ``session`` and start taking frames."""
        self.session = session
        self.state = STATE_OPEN
        self._accepted = True
        self.opened_at = time.time()
        # The heartbeat never pings this connection nor finds it silent: ASGI has no ping, and
        # liveness belongs to the ASGI server.
        self.last_active = _NEVER
        self.last_ping = _NEVER

    # -- reading ---------------------------------------------------------------------------------

    async def run(self, receive: Callable[[], Awaitable[_Message]]) -> None:
        """Deliver the ASGI server's messages to the hub until the connection ends.

        Returns after ``websocket.disconnect`` or :meth:`abort`; the hub's ``on_disconnect``
        has run by then (once).
        """
        loop = self.dispatch.loop
        self._reader = asyncio.current_task()
        try:
            while self.state != STATE_CLOSED:
                try:
                    if self._read_paused:
                        self._read_waiter = loop.create_future()
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
                        if type(text) is not str:
                            raise TypeError(f"Argument 'text' has incorrect type (expected "
                                            f"str, got {type(text).__name__})")
                        n = _utf8_length(text)
                        if n > self.max_message_size:
                            self._too_big(n)
                            continue
                        self.receive_message(OP_TEXT, text, n)
                    else:
                        data = message.get("bytes")
                        if data is None:
                            data = b""
                        n = len(data)
                        if n > self.max_message_size:
                            self._too_big(n)
                            continue
                        self.receive_message(OP_BINARY, data, n)
                elif kind == "websocket.disconnect":
                    self._peer_closed(message)
                    break
        finally:
            self._finish()

    def _too_big(self, nbytes: int) -> None:
        # The native path decides this from the frame header; here the ASGI server has read the
        # message already (its own limit, e.g. uvicorn's ws_max_size, bounds that).
        reason = f"message over max_message_size ({self.max_message_size} bytes)"
        self.close(1009, reason)
        if self.dispatch.on_protocol_error is not None:
            self.dispatch.on_protocol_error(self.session, 1009, reason)

    def _peer_closed(self, message: _Message) -> None:
        code = operator.index(message.get("code") or 1005)  # ASGI's default: no status given
        reason = message.get("reason") or ""
        was_open = self.state == STATE_OPEN
        self.state = STATE_CLOSED
        if not was_open:
            return  # we closed first: close_code holds what we sent
        self.close_code = code
        self.close_reason = reason
        # 1005/1006 is all some servers say when TCP dropped without a close frame; only a
        # close the peer gave a code for is reported to handle_close.
        if code != 1005 and code != 1006 and self.dispatch.on_close is not None:
            try:
                self.dispatch.on_close(self.session, code, reason)
            except Exception as exc:
                self.dispatch.on_handler_error(self.session, exc)

    def _finish(self) -> None:
        self.state = STATE_CLOSED
        if self.close_code == 0:
            self.close_code = 1006
        self._cancel_close_timer()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        self._outbox.clear()
        self._outbox_bytes = 0
        self._reader = None
        self.transport = None
        if self._accepted:
            self._accepted = False
            self.dispatch.on_disconnect(self)

    def _cancel_close_timer(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None

    def pause_reading(self) -> None:
        """Stop taking messages from the ASGI server until :meth:`resume_reading`."""
        self._read_paused = True

    def resume_reading(self) -> None:
        """Take messages again."""
        self._wake_reader()

    @property
    def reading(self) -> bool:
        """False while reading is paused."""
        return not self._read_paused

    def _wake_reader(self) -> None:
        self._read_paused = False
        waiter = self._read_waiter
        if waiter is not None:
            self._read_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- what the hub reads (ProtocolCore's are the native queue's) -------------------------------

    @property
    def queued(self) -> int:
        """Messages waiting behind a send the ASGI server holds up."""
        return len(self._outbox)

    @property
    def queued_bytes(self) -> int:
        """Bytes of the messages in :attr:`queued`."""
        return self._outbox_bytes

    @property
    def writing_paused(self) -> bool:
        """True while a send is held up (the peer is not reading)."""
        return self.send_waiting

    # -- writing ---------------------------------------------------------------------------------

    def admit_message(self) -> int:
        """ForeignConnection's ``admit`` while a send is suspended (``send_waiting``): whether
        one more data message may queue behind it (ADMIT_*)."""
        d = self.dispatch
        if len(self._outbox) < d.queue_limit and self._outbox_bytes < d.queue_bytes_limit:
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

    def _drop_oldest(self) -> bool:
        outbox = self._outbox
        for i, item in enumerate(outbox):
            if len(item) == 2:
                del outbox[i]
                self._outbox_bytes -= item[1]
                return True
        return False

    def _discard_queued_data(self) -> None:
        outbox = self._outbox
        kept = [item for item in outbox if len(item) == 1]
        dropped = len(outbox) - len(kept)
        self.dropped += dropped
        self.dispatch.frames_dropped += dropped
        outbox.clear()
        outbox.extend(kept)
        self._outbox_bytes = 0

    def write_message(self, opcode: int, message: Any) -> int:
        """ForeignConnection's send hook: one admitted message (``session.write``, a broadcast)
        as an ASGI message; a SEND_* value."""
        d = self.dispatch
        if opcode == OP_TEXT:
            n = _utf8_length(message)
            event = {"type": "websocket.send", "text": message}
        else:
            if type(message) is not bytes:
                message = bytes(message)
            n = len(message)
            event = {"type": "websocket.send", "bytes": message}
        d.messages_out += 1
        d.bytes_out += n
        if self.send_waiting:
            self._outbox.append((event, n))
            self._outbox_bytes += n
            return SEND_QUEUED
        # _send_now, inlined: this is every message's path to a peer that keeps up.
        try:
            it = self._send(event).__await__()
            step = it.send(None)
        except StopIteration:
            self._progress += 1
            d.writes += 1
            return SEND_OK
        except Exception as exc:
            self._send_failed(exc)
            return SEND_CLOSED
        self._suspended(it, step, False)
        return SEND_QUEUED

    def write_close(self, code: int, reason: Any) -> int:
        """ForeignConnection's close hook: the closing handshake as an ASGI message, with the
        code and reason a close frame would carry (no code: 1000, ASGI's default), sent after
        what is queued."""
        return self._submit({"type": "websocket.close", "code": code or 1000,
                             "reason": close_reason(reason).decode("utf-8") if code else ""},
                            0, True)

    def _submit(self, message: _Message, nbytes: int, control: bool) -> int:
        if self.send_waiting:
            if control:
                self._outbox.append((message,))
            else:
                self._outbox.append((message, nbytes))
                self._outbox_bytes += nbytes
            return SEND_QUEUED
        return self._send_now(message, control)

    def _send_now(self, message: _Message, control: bool) -> int:
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
        self._suspended(it, step, control)
        return SEND_QUEUED

    def _suspended(self, it: Any, step: Any, control: bool) -> None:
        # The server made a send wait (its transport is paused): a task finishes it, and what
        # follows queues behind it, bounded by admit_message().
        self.send_waiting = True
        self._writer = self.dispatch.loop.create_task(self._drain(it, step, control))
        self._arm_write_timer()

    async def _drain(self, it: Any, step: Any, closing: bool) -> None:
        """Finish the suspended send, then send what queued behind it, in order."""
        outbox = self._outbox
        try:
            await _resume(it, step)
            self._progress += 1
            self.dispatch.writes += 1
            while outbox and not closing:
                item = outbox.popleft()
                if len(item) == 2:
                    self._outbox_bytes -= item[1]
                else:
                    closing = True  # the close is the last thing ever sent
                await self._send(item[0])
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
            self.send_waiting = False
            self._writer = None
            if self._stall_timer is not None:
                self._stall_timer.cancel()
                self._stall_timer = None

    def _send_failed(self, exc: BaseException) -> None:
        # The server refused a message. Once the peer is gone that is expected (the disconnect
        # reaches run() next); anything else is reported, and the connection dropped.
        self._outbox.clear()
        self._outbox_bytes = 0
        if _is_disconnect(exc):
            self.state = STATE_CLOSED
            self._wake_reader()
            return
        if self.dispatch.on_handler_error is not None:
            self.dispatch.on_handler_error(self.session, exc)
        self.abort()

    def _arm_write_timer(self) -> None:
        if self._stall_timer is None:
            self._progress_mark = self._progress
            self._stall_timer = self.dispatch.loop.call_later(
                self.dispatch.write_wait, self._write_timeout)

    def _write_timeout(self) -> None:
        """Timer callback: drop a peer whose pending send made no progress for write_wait."""
        self._stall_timer = None
        if not self.send_waiting or self.state == STATE_CLOSED:
            return
        if self._progress != self._progress_mark:
            self._arm_write_timer()
            return
        if self._accepted and self.dispatch.on_timeout is not None:
            self.dispatch.on_timeout(self.session, "write")
        self.abort()

    def _close_timeout(self) -> None:
        """Timer callback: the ASGI server did not report the end of the closing handshake."""
        self._close_timer = None
        self.abort()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send ``websocket.close`` after what is queued; abort if the connection has not ended
        ``close_timeout`` seconds later."""
        code = operator.index(code)
        if self.state != STATE_OPEN:
            return
        if self.send_close(code, reason) == SEND_CLOSED:
            return
        self._wake_reader()  # so that it sees the disconnect that follows
        self._cancel_close_timer()
        if self.state != STATE_CLOSED:
            self._close_timer = self.dispatch.loop.call_later(
                self.dispatch.close_timeout, self._close_timeout)

    def abort(self) -> None:
        """End the connection at once: nothing more is sent and ``run()`` returns, after which
        the ASGI server drops the connection without a close frame."""
        self.state = STATE_CLOSED
        if self.close_code == 0:
            self.close_code = 1006
        self._outbox.clear()
        self._outbox_bytes = 0
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        self._wake_reader()
        reader = self._reader
        if reader is not None and not reader.done() and not self._reader_cancelled:
            if reader is not asyncio.current_task(self.dispatch.loop):
                self._reader_cancelled = True
                reader.cancel()


class AsgiTransport:
    """Stands where a transport would for the hub and the ``Session``: addresses, read pausing.

    ``get_extra_info`` knows ``"peername"`` and ``"sockname"`` (the scope's ``client`` and
    ``server``) and ``"asgi_scope"``. Pausing reading makes the connection stop calling
    ``receive`` (the ASGI server then stops reading the socket): the hub does so while a
    session's async handlers lag behind.
    """

    __slots__ = ("_conn", "_extra")

    def __init__(self, conn: AsgiConnection, scope: dict[str, Any]) -> None:
        self._conn = conn
        client = scope.get("client")
        server = scope.get("server")
        self._extra: dict[str, Any] = {
            "peername": tuple(client) if client is not None else None,
            "sockname": tuple(server) if server is not None else None,
            "asgi_scope": scope,
        }

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``"peername"``, ``"sockname"`` or ``"asgi_scope"``; ``default`` for anything else."""
        value = self._extra.get(name)
        return default if value is None else value

    def pause_reading(self) -> None:
        """Stop taking messages from the ASGI server until :meth:`resume_reading`."""
        self._conn.pause_reading()

    def resume_reading(self) -> None:
        """Take messages again."""
        self._conn.resume_reading()

    def is_reading(self) -> bool:
        """False while reading is paused."""
        return self._conn.reading

    def is_closing(self) -> bool:
        """True once the connection is closing or closed."""
        return self._conn.state != STATE_OPEN

    def close(self) -> None:
        """Close the connection with 1000."""
        self._conn.close()

    def abort(self) -> None:
        """Abort the connection (see ``AsgiConnection.abort``)."""
        self._conn.abort()
