# C types for fanout.py when it is compiled (Cython's pure-Python mode): the broadcast loop walks
# a list of ProtocolCore and calls admit, frame_message and send_shared through the C vtable.

import cython

from melody._core.deflate cimport Deflater
from melody._core.frames cimport build_frame
from melody._core.protocol cimport ProtocolCore

cdef int ADMIT_OK, ADMIT_REFUSED, FIN_BIT, OP_BINARY, OP_TEXT, SEND_CLOSED, STATE_OPEN

@cython.locals(p=ProtocolCore, deflater=Deflater, plain=bytes, frame=bytes, shared=dict,
               dropped=list, sent=Py_ssize_t, length=Py_ssize_t, i=Py_ssize_t, admitted=int)
cdef tuple _send_all(list protocols, int opcode, object data, object payload, object exclude,
                     object predicate, list recipients)
cdef tuple _send_text(list protocols, object text, object exclude, object predicate,
                      list recipients)
cdef tuple _send_binary(list protocols, object data, object exclude, object predicate,
                        list recipients)


cdef class Group:
    cdef list _members
    cdef dict _index
