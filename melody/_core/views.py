"""The buffer protocol as the engine asks for it: a flat view of any bytes-like object.

Plain Python in every build. The compiled kernels take any C-contiguous bytes-like object
(``PyObject_GetBuffer(obj, PyBUF_SIMPLE)``); the engine's Python code and the kernels'
interpreted versions call ``flat`` for the same objects and raise the same errors.
"""

from __future__ import annotations

from typing import Any

__all__ = ["flat"]


def flat(obj: Any) -> Any:
    """``obj`` itself if it is ``bytes``, else a one-dimensional byte view of it.

    Raises TypeError if ``obj`` is not bytes-like and BufferError if it is not C-contiguous;
    the view's ``len`` is the byte count whatever the exporter's item format.
    """
    if type(obj) is bytes:
        return obj
    view = memoryview(obj)
    if not view.c_contiguous:
        view.release()
        raise BufferError("memoryview: underlying buffer is not C-contiguous")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")
