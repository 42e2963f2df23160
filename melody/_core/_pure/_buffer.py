"""The buffer protocol as the compiled core asks for it (``PyBUF_SIMPLE``)."""

from __future__ import annotations

from typing import Any


def simple_view(obj: Any) -> memoryview:
    """A flat view of ``obj``'s bytes, as ``PyObject_GetBuffer(obj, PyBUF_SIMPLE)`` gives.

    Raises TypeError if ``obj`` is not bytes-like and BufferError if it is not C-contiguous,
    the errors the compiled modules raise for the same objects. The view's ``len`` is the
    byte count whatever the exporter's item format.
    """
    view = memoryview(obj)
    if not view.c_contiguous:
        view.release()
        raise BufferError("memoryview: underlying buffer is not C-contiguous")
    if view.ndim != 1 or view.itemsize != 1 or view.format != "B":
        view = view.cast("B")
    return view


def as_bytes(obj: Any) -> bytes:
    """``obj``'s bytes as a ``bytes`` object: ``obj`` itself when it is one (no copy)."""
    if type(obj) is bytes:
        return obj
    return bytes(simple_view(obj))
