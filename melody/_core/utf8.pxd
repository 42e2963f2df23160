# Incremental UTF-8 validation (RFC 3629) for text messages that arrive in pieces.

cdef class Utf8Validator:
    cdef unsigned int _state
    cdef Py_ssize_t _consumed

    cdef int feed_ptr(self, const unsigned char* data, Py_ssize_t length) noexcept nogil
    # Validate the next ``length`` bytes. Returns 0 while the text so far is valid or a valid
    # prefix (a code point may still be open), -1 as soon as it can no longer be valid UTF-8.
    # Once -1 was returned every later call returns -1 until ``reset``.
    cdef bint is_complete(self) noexcept nogil
    # True when no code point is left open (the text fed so far is complete, valid UTF-8).
    cdef void reset_state(self) noexcept nogil
    cpdef bint feed_region(self, bytearray buf, Py_ssize_t start, Py_ssize_t length) except -1
    # ``feed_ptr`` for a region of a bytearray (the call connection.py makes): True while valid.


cpdef str decode_region(bytearray buf, Py_ssize_t start, Py_ssize_t length)
# Strict UTF-8 decoding of a region of the connection's read buffer (UnicodeDecodeError if bad).
