"""The pure-Python core: the same modules as the compiled ``melody._core``, slower.

Used where no wheel was built (``melody._core`` falls back to it, with a warning) and when
``MELODY_NO_EXTENSIONS=1`` asks for it. Each module here mirrors the compiled module of the same
name: its Python-visible API (names, signatures, constants, return values, exceptions, events)
and the cdef-level methods the compiled modules call on one another (``Connection.admit``,
``frame_message``, ``send_frame``, the ``_on_*`` hooks, ...), with a bytes-like object where the
compiled method takes a pointer and a length. Nothing here imports a compiled module, so this
package works on an interpreter that cannot load the extensions at all.
"""
