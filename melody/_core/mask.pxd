# Masking (RFC 6455 section 5.3) and the frame reader's byte-region primitives: a C kernel.

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

cpdef int unmask_region(bytearray buf, Py_ssize_t start, Py_ssize_t length, Py_ssize_t key_at,
                        Py_ssize_t phase) except -1
cpdef bytes region_bytes(bytearray buf, Py_ssize_t start, Py_ssize_t length)
cpdef bytearray new_buffer(Py_ssize_t size)
# The two calls connection.py makes on its read buffer; mask.py holds their Python versions.
