# cython: language_level=3
"""The broadcast loop: one message to many connections, framed once.

A server frame is never masked, so the frame built for the first recipient is the very bytes
object written to every other one. With permessage-deflate the same holds for connections that
agreed to ``server_no_context_takeover`` (each message is compressed on its own): one compressed
frame per window size. Only connections with context takeover need a compression each.

Nothing here waits: a recipient whose queue is full has the message dropped and is returned to
the caller, which reports it (Go melody's ErrMessageBufferFull), so a slow reader never slows
the others.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize

from melody._core.connection cimport STATE_OPEN, SEND_DROPPED, SEND_CLOSED
from melody._core.deflate cimport Deflater
from melody._core.frames cimport build_frame, FIN_BIT, OP_TEXT, OP_BINARY
from melody._core.protocol cimport ProtocolCore


cdef object _send_all(object protocols, int opcode, const unsigned char* data,
                      Py_ssize_t length, object exclude, object predicate, list recipients):
    cdef ProtocolCore p
    cdef Deflater deflater
    cdef bytes plain = None
    cdef bytes frame
    cdef dict shared = None
    cdef list dropped = None
    cdef Py_ssize_t sent = 0
    cdef int status
    for obj in protocols:
        p = <ProtocolCore?>obj
        if p.state != STATE_OPEN or obj is exclude:
            continue
        if predicate is not None and not predicate(p.session):
            continue
        if not p.admit():
            if dropped is None:
                dropped = []
            dropped.append(p)
            continue
        deflater = p.deflater
        if deflater is None or length < p.compress_min_size:
            if plain is None:
                plain = build_frame(FIN_BIT | opcode, data, length, False)
            frame = plain
        elif deflater.no_context_takeover:
            if shared is None:
                shared = {}
            frame = shared.get(deflater.window_bits)
            if frame is None:
                frame = p.frame_message(opcode, data, length)
                shared[deflater.window_bits] = frame
        else:
            frame = p.frame_message(opcode, data, length)
        status = p.send_frame(frame, False)
        if status == SEND_DROPPED:
            if dropped is None:
                dropped = []
            dropped.append(p)
        elif status != SEND_CLOSED:
            sent += 1
            if recipients is not None:
                recipients.append(p)
    return sent, dropped


def broadcast_text(object protocols, str text, object exclude=None, object predicate=None,
                   list recipients=None):
    """Send ``text`` to every open protocol in ``protocols`` (an iterable, snapshot it first).

    ``exclude`` is one protocol to skip; ``predicate(session)`` filters. Returns
    ``(sent, dropped)`` where dropped is None or the list of protocols whose queue was full.
    When ``recipients`` is a list, the protocols the message was handed to are appended to it.
    """
    cdef Py_ssize_t n
    cdef const char* utf8 = PyUnicode_AsUTF8AndSize(text, &n)
    return _send_all(protocols, OP_TEXT, <const unsigned char*>utf8, n, exclude, predicate,
                     recipients)


def broadcast_binary(object protocols, object data, object exclude=None, object predicate=None,
                     list recipients=None):
    """``broadcast_text`` for a binary message (any bytes-like object)."""
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return _send_all(protocols, OP_BINARY, <const unsigned char*>view.buf, view.len,
                         exclude, predicate, recipients)
    finally:
        PyBuffer_Release(&view)
