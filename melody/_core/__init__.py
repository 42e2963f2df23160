"""The engine: frame codec, masking, UTF-8 validation, deflate, connection, fan-out.

It knows nothing of the public API (``melody.Melody``, ``melody.Session``); those are built
over it in ``melody/``. The engine is compiled (Cython) where a wheel or a build provided the
extension modules; otherwise its pure-Python twin (``melody._core._pure``, same behaviour, slower)
is installed under the same names, so ``from melody._core.fanout import Group`` works either way.

* ``MELODY_NO_EXTENSIONS=1`` asks for the pure-Python core (the compiled one is not imported).
* If the compiled core cannot be imported, the pure one is used with a ``RuntimeWarning``
  naming the import error: never silently.
* ``MELODY_EXPECT_COMPILED=1`` turns that fallback into an ImportError (CI sets it, so a broken
  build cannot hide behind the fallback).

``COMPILED`` says which core is in use; ``IMPORT_ERROR`` holds the error that caused a fallback.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from importlib.machinery import EXTENSION_SUFFIXES
from types import ModuleType

#: The engine's modules, in import order (each imports only those before it).
MODULES = ("mask", "utf8", "frames", "deflate", "connection", "protocol", "fanout", "asgi",
           "packet")

#: ``MELODY_NO_EXTENSIONS=1``: the pure-Python core was asked for.
NO_EXTENSIONS: bool = os.environ.get("MELODY_NO_EXTENSIONS", "") == "1"

#: Why the compiled core could not be imported (None if it was, or was not tried).
IMPORT_ERROR: ImportError | None = None


def _import_compiled() -> list[ModuleType]:
    modules = [importlib.import_module(f"{__name__}.{name}") for name in MODULES]
    for module in modules:
        path = module.__file__ or ""
        if not path.endswith(tuple(EXTENSION_SUFFIXES)):
            # A stray .py (or a namespace package) under a compiled module's name.
            raise ImportError(f"{module.__name__} is not an extension module: {path!r}",
                              name=module.__name__, path=path)
    return modules


def _forget_compiled() -> None:
    # A partial import (one extension loaded, a later one failed) must leave nothing behind
    # that a later import could pick up next to the pure modules.
    package = sys.modules[__name__]
    for name in MODULES:
        sys.modules.pop(f"{__name__}.{name}", None)
        package.__dict__.pop(name, None)


def _install_pure() -> None:
    package = sys.modules[__name__]
    for name in MODULES:
        module = importlib.import_module(f"{__name__}._pure.{name}")
        sys.modules[f"{__name__}.{name}"] = module
        setattr(package, name, module)


if not NO_EXTENSIONS:
    try:
        _import_compiled()
    except ImportError as exc:
        IMPORT_ERROR = exc
        _forget_compiled()

#: True when the compiled (Cython) core is the one in use.
COMPILED: bool = not NO_EXTENSIONS and IMPORT_ERROR is None

if not COMPILED:
    if os.environ.get("MELODY_EXPECT_COMPILED", "") == "1":
        why = ("MELODY_NO_EXTENSIONS=1 is set" if NO_EXTENSIONS
               else f"importing it failed: {IMPORT_ERROR!r}")
        raise ImportError(
            f"MELODY_EXPECT_COMPILED=1 but melody's compiled core is not loaded ({why}); "
            "build it with `pip install .` (or `python setup.py build_ext --inplace` in a "
            "source tree)"
        ) from IMPORT_ERROR
    if IMPORT_ERROR is not None:
        warnings.warn(
            f"melody's compiled core could not be imported ({IMPORT_ERROR!r}); using the "
            "pure-Python core, which behaves the same but is several times slower. Build it "
            "with `pip install .`, or set MELODY_NO_EXTENSIONS=1 to choose the pure core "
            "without this warning (MELODY_EXPECT_COMPILED=1 makes this an error).",
            RuntimeWarning,
            stacklevel=2,
        )
    _install_pure()
