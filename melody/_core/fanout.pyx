# cython: language_level=3
"""The broadcast loop: one message to many connections, framed once.

A server frame is never masked, so the frame built for the first recipient is the very bytes
object handed to every other one. With permessage-deflate the same holds for connections that
agreed to ``server_no_context_takeover`` (each message is compressed on its own): one compressed
frame per window size. Only connections with context takeover need a compression each.

Recipients live in a ``Group``: an array of connections with an index for O(1) add and remove
(swap with the last). The hub keeps one group for all its sessions and one per topic, so a
broadcast or a publish walks exactly its recipients, in C, with no Python call per recipient
unless a Python filter was given.

Nothing here waits: a recipient whose queue is full has the message dropped (or its oldest
queued message, or is closed, by the hub's overflow policy) and is returned to the caller,
which reports it (Go melody's ErrMessageBufferFull); a slow reader never slows the others.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.list cimport PyList_GET_SIZE, PyList_GET_ITEM
from cpython.unicode cimport PyUnicode_AsUTF8AndSize

from melody._core.connection cimport (
    STATE_OPEN, SEND_CLOSED, ADMIT_REFUSED,
)
from melody._core.deflate cimport Deflater
from melody._core.frames cimport build_frame, FIN_BIT, OP_TEXT, OP_BINARY
from melody._core.protocol cimport ProtocolCore


cdef object _send_all(list protocols, int opcode, const unsigned char* data,
                      Py_ssize_t length, object exclude, object predicate, list recipients):
    cdef ProtocolCore p
    cdef Deflater deflater
    cdef bytes plain = None
    cdef bytes frame
    cdef dict shared = None
    cdef list dropped = None
    cdef Py_ssize_t sent = 0
    cdef Py_ssize_t i = 0
    cdef int admitted
    # The size is read on every step: nothing in this loop runs user code when no predicate is
    # given, but a list that shrank must never be read past its end.
    while i < PyList_GET_SIZE(protocols):
        p = <ProtocolCore?><object>PyList_GET_ITEM(protocols, i)
        i += 1
        if p.state != STATE_OPEN or p is exclude:
            continue
        if predicate is not None and not predicate(p.session):
            continue
        admitted = p.admit()
        if admitted != 1:
            if dropped is None:
                dropped = []
            dropped.append(p)
            if admitted == ADMIT_REFUSED:
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
        if p.send_shared(frame) != SEND_CLOSED:
            sent += 1
            if recipients is not None:
                recipients.append(p)
    return sent, dropped


cdef object _send_text(list protocols, str text, object exclude, object predicate,
                       list recipients):
    cdef Py_ssize_t n
    cdef const char* utf8 = PyUnicode_AsUTF8AndSize(text, &n)
    return _send_all(protocols, OP_TEXT, <const unsigned char*>utf8, n, exclude, predicate,
                     recipients)


cdef object _send_binary(list protocols, object data, object exclude, object predicate,
                         list recipients):
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return _send_all(protocols, OP_BINARY, <const unsigned char*>view.buf, view.len,
                         exclude, predicate, recipients)
    finally:
        PyBuffer_Release(&view)


def broadcast_text(list protocols, str text, object exclude=None, object predicate=None,
                   list recipients=None):
    """Send ``text`` to every open protocol in the list ``protocols``.

    ``exclude`` is one protocol to skip; ``predicate(session)`` filters. Returns
    ``(sent, dropped)``: how many took the frame, and None or the protocols whose queue
    overflowed (the message, or their oldest one, was dropped). When ``recipients`` is a list,
    the protocols that took the frame are appended to it.
    """
    if predicate is not None:
        protocols = list(protocols)  # the filter is user code: it may change the list
    return _send_text(protocols, text, exclude, predicate, recipients)


def broadcast_binary(list protocols, object data, object exclude=None, object predicate=None,
                     list recipients=None):
    """``broadcast_text`` for a binary message (any bytes-like object)."""
    if predicate is not None:
        protocols = list(protocols)
    return _send_binary(protocols, data, exclude, predicate, recipients)


cdef class Group:
    """A set of connections kept as an array: O(1) add and remove, a C loop to send to all.

    The hub has one for all its sessions and one per topic. Iterating gives a snapshot.
    """

    cdef list _members
    cdef dict _index

    def __cinit__(self):
        self._members = []
        self._index = {}

    def add(self, ProtocolCore p not None):
        """Add ``p``; False if it was already a member."""
        if p in self._index:
            return False
        self._index[p] = len(self._members)
        self._members.append(p)
        return True

    def discard(self, ProtocolCore p not None):
        """Remove ``p`` (the last member takes its place); False if it was not a member."""
        cdef Py_ssize_t at
        cdef object last
        position = self._index.pop(p, None)
        if position is None:
            return False
        at = position
        last = self._members.pop()
        if last is not p:
            self._members[at] = last
            self._index[last] = at
        return True

    def __contains__(self, object p):
        return p in self._index

    def __len__(self):
        return len(self._members)

    def __iter__(self):
        return iter(list(self._members))

    def members(self):
        """A snapshot list of the members."""
        return list(self._members)

    def broadcast_text(self, str text, object exclude=None, object predicate=None,
                       list recipients=None):
        """:func:`broadcast_text` to the members."""
        members = self._members if predicate is None else list(self._members)
        return _send_text(members, text, exclude, predicate, recipients)

    def broadcast_binary(self, object data, object exclude=None, object predicate=None,
                         list recipients=None):
        """:func:`broadcast_binary` to the members."""
        members = self._members if predicate is None else list(self._members)
        return _send_binary(members, data, exclude, predicate, recipients)
