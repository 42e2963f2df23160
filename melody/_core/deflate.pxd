# permessage-deflate (RFC 7692 section 7.2) over zlib's C API: a C kernel of the engine.

cdef extern from "zlib.h":
    ctypedef struct z_stream:
        const unsigned char* next_in
        unsigned int avail_in
        unsigned long total_in
        unsigned char* next_out
        unsigned int avail_out
        unsigned long total_out
        const char* msg
        void* zalloc
        void* zfree
        void* opaque
        int data_type
        unsigned long adler
        unsigned long reserved


cdef class Deflater:
    # NULL until the first non-empty message, and between messages without context takeover.
    cdef z_stream* _stream
    cdef readonly int window_bits
    cdef readonly bint no_context_takeover
    cdef readonly int level
    cdef readonly int mem_level
    cdef bint _busy     # set while deflate() may run without the GIL: refuses a second thread

    cpdef bytes compress(self, object data)
    cdef bytes compress_ptr(self, const unsigned char* data, Py_ssize_t length)


cdef class Inflater:
    # NULL until the first non-empty message, and between messages without context takeover.
    cdef z_stream* _stream
    cdef readonly int window_bits
    cdef readonly bint no_context_takeover
    cdef bint _busy     # set while inflate() may run without the GIL: refuses a second thread

    cpdef bytes decompress(self, object data, Py_ssize_t max_size)
    cpdef bytes decompress_region(self, bytearray buf, Py_ssize_t start, Py_ssize_t length,
                                  Py_ssize_t max_size)
    cdef bytes decompress_ptr(self, const unsigned char* data, Py_ssize_t length,
                              Py_ssize_t max_size)
    cdef int _restart_keep_window(self) except -1
