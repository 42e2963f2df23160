"""The compiled core is the one loaded: no silent fallback hides a broken build.

Every compiled engine module has a ``.py`` beside it (its source in Cython's pure-Python mode,
or a C kernel's interpreted version). If that ``.py`` were ever imported instead of the
extension, these fail instead of the suite quietly testing something slower than what ships.
"""

from __future__ import annotations

import importlib
import importlib.machinery
from types import ModuleType

import pytest

import melody
import melody._core

Py_TPFLAGS_HEAPTYPE = 1 << 9
CORE_MODULES = list(melody._core.COMPILED_MODULES)


@pytest.mark.parametrize("name", CORE_MODULES)
def test_core_module_is_an_extension_module(name: str) -> None:
    module = importlib.import_module(f"melody._core.{name}")
    path = module.__file__
    assert path is not None
    assert path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), path
    assert isinstance(module.__loader__, importlib.machinery.ExtensionFileLoader)
    assert module.__spec__ is not None
    assert isinstance(module.__spec__.loader, importlib.machinery.ExtensionFileLoader)


@pytest.mark.parametrize("name", CORE_MODULES)
def test_core_module_is_cython_compiled(name: str) -> None:
    module: ModuleType = importlib.import_module(f"melody._core.{name}")
    # Cython's functions and cdef classes, not Python ones: nothing was interpreted.
    public = [getattr(module, attr) for attr in dir(module) if not attr.startswith("_")]
    callables = [
        obj
        for obj in public
        if callable(obj) and getattr(obj, "__module__", None) == module.__name__
    ]
    assert callables, f"melody._core.{name} exports nothing callable"
    for obj in callables:
        if isinstance(obj, type):
            # A cdef class is a static C type. A Python-level class in a compiled module
            # (WebSocketProtocol mixing asyncio.BufferedProtocol into ProtocolCore, the
            # PacketError exception) is a heap type: its own methods, or its base's, are
            # compiled.
            if obj.__flags__ & Py_TPFLAGS_HEAPTYPE:
                methods = [m for c in obj.__mro__[:2] for m in vars(c).values()]
                assert (
                    any(type(m).__name__ == "cython_function_or_method" for m in methods)
                    or not obj.__mro__[1].__flags__ & Py_TPFLAGS_HEAPTYPE
                ), obj
        else:
            assert type(obj).__name__ == "cython_function_or_method", obj


def test_melody_compiled_flag_is_true() -> None:
    assert melody.COMPILED is True
    assert melody._core.COMPILED is True


def test_session_and_hub_use_the_compiled_classes() -> None:
    from melody._core.connection import Connection
    from melody._core.protocol import ProtocolCore, WebSocketProtocol

    assert issubclass(WebSocketProtocol, ProtocolCore)
    assert issubclass(ProtocolCore, Connection)
    # A cdef class cannot take new attributes: it is a C type, not a Python class.
    conn = Connection()
    with pytest.raises(AttributeError):
        conn.not_an_attribute = 1  # type: ignore[attr-defined]


def test_the_asgi_adapter_is_plain_python_over_the_compiled_base() -> None:
    # The adapter is not engine code: it is interpreted in every build, and only the hooks it
    # answers (ForeignConnection's C overrides of admit, send_shared, ...) are compiled.
    from melody._core.protocol import ForeignConnection, ProtocolCore
    from melody.server import asgi_connection

    assert (asgi_connection.__file__ or "").endswith(".py")
    adapter = asgi_connection.AsgiConnection
    assert adapter.__flags__ & Py_TPFLAGS_HEAPTYPE
    assert adapter.__mro__[1] is ForeignConnection
    assert not ForeignConnection.__flags__ & Py_TPFLAGS_HEAPTYPE  # a cdef class
    assert issubclass(ForeignConnection, ProtocolCore)
    assert type(vars(adapter)["write_message"]).__name__ == "function"
