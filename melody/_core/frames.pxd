# C types for frames.py when it is compiled (Cython's pure-Python mode): the frame builders the
# connection, the fan-out loop and the client call once per message.

import cython

# The opcodes stay Python globals here (re-exported for callers); the hot paths of the other
# modules read their own C copies.
cdef Py_ssize_t _KEY_POOL_SIZE
cdef bytes _key_pool
cdef Py_ssize_t _key_pos
cdef object _head2, _head4, _head10
cdef list _short_heads

@cython.locals(pos=Py_ssize_t)
cpdef bytes fresh_mask_key()

@cython.locals(heads=list)
cdef bytes _short_head(int first_byte, Py_ssize_t length)

@cython.locals(n=Py_ssize_t, mask_bit=int)
cpdef bytes build_frame(int first_byte, object payload, bint masked)
# One frame: ``first_byte`` is FIN|RSV|opcode; the payload is copied once into the new bytes
# object. ``masked`` frames (client to server) get a fresh random key.

cpdef bytes close_reason(object reason)
cpdef bytes build_close_frame(int code, object reason, bint masked)
# A close frame with ``code`` (0 means no status: empty payload) and a UTF-8 reason cut to fit
# the 125-byte control payload limit.

cpdef bint is_valid_close_code(object code) except -1
