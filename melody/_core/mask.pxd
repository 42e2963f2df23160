# Masking (RFC 6455 section 5.3) shared by the frame codec and the connection.

cdef void mask_inplace(unsigned char* data, Py_ssize_t length,
                       const unsigned char* key, Py_ssize_t offset) noexcept nogil
cdef void mask_copy(unsigned char* dst, const unsigned char* src, Py_ssize_t length,
                    const unsigned char* key, Py_ssize_t offset) noexcept nogil
# ``mask_copy``: ``dst`` = ``src`` XOR the key cycle from ``offset``, in one pass (a masked frame
# built from a payload, ``mask`` of a whole buffer). ``dst`` is ``src`` for masking in place
# (that is ``mask_inplace``); otherwise the two must not overlap.
# XOR ``length`` bytes at ``data`` with the 4-byte ``key``, starting at byte ``offset`` of the
# mask cycle (``offset`` is how many payload bytes before ``data`` were already masked, so a
# payload unmasked in pieces as it arrives gives the same result as unmasking it whole).
