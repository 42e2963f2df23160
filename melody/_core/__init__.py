"""The engine: frame codec, masking, UTF-8 validation, deflate, connection, fan-out.

It knows nothing of the public API (``melody.Melody``, ``melody.Session``); those are built
over it in ``melody/``. Every engine module is written once:

* ``frames``, ``connection``, ``protocol``, ``fanout`` and ``packet`` are Python
  files in Cython's pure-Python mode: the build compiles each ``.py`` with the ``.pxd`` beside
  it (C fields, C method calls, C types for the hot locals), and the same file runs as it is
  where no compiled module exists.
* ``mask``, ``utf8``, ``deflate`` and ``timing`` are the C kernels (pointer loops, zlib's C
  API, the monotonic clock for handler metrics), written
  as ``.pyx``; each has a short interpreted version, the ``.py`` of the same name.
* ``constants``, ``views``, ``zlib_params`` and ``extensions`` (permessage-deflate
  negotiation, once per connection) are plain Python in every build.

Which build runs:

* The compiled modules, when the wheel or an in-place build provides them: a compiled module
  sits beside its ``.py`` and Python's importer prefers it.
* ``MELODY_NO_EXTENSIONS=1`` asks for the interpreted engine: every engine module is then
  loaded from its ``.py`` (the compiled ones are not imported).
* If the compiled engine cannot be imported, the interpreted one is used with a
  ``RuntimeWarning`` naming the import error: never silently.
* ``MELODY_EXPECT_COMPILED=1`` turns that fallback into an ImportError (CI sets it, so a broken
  build cannot hide behind the fallback).

``COMPILED`` says which engine is in use; ``IMPORT_ERROR`` holds the error that caused a
fallback. ``interpreted()`` loads the interpreted engine beside the compiled one under another
package name, for the tests that run the same bytes through both.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
import warnings
from importlib.machinery import EXTENSION_SUFFIXES

#: The engine's modules, in import order (each imports only those before it).
MODULES = ("constants", "views", "zlib_params", "mask", "utf8", "deflate", "extensions",
           "frames", "connection", "protocol", "fanout", "packet", "timing")

#: The modules a build compiles (the others are plain Python in every build).
COMPILED_MODULES = ("mask", "utf8", "deflate", "frames", "connection", "protocol", "fanout",
                    "packet", "timing")

#: ``MELODY_NO_EXTENSIONS=1``: the interpreted engine was asked for.
NO_EXTENSIONS: bool = os.environ.get("MELODY_NO_EXTENSIONS", "") == "1"

#: Why the compiled engine could not be imported (None if it was, or was not tried).
IMPORT_ERROR: ImportError | None = None

_HERE = os.path.dirname(os.path.abspath(__file__))


def _import_compiled() -> None:
    for name in MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        path = module.__file__ or ""
        if name in COMPILED_MODULES and not path.endswith(tuple(EXTENSION_SUFFIXES)):
            # The .py beside a missing (or unloadable) compiled module.
            raise ImportError(f"{module.__name__} is not an extension module: {path!r}",
                              name=module.__name__, path=path)


def _forget(package: str) -> None:
    # A partial import (one extension loaded, a later one failed) must leave nothing behind
    # that a later import could pick up next to the interpreted modules.
    parent = sys.modules.get(package)
    for name in MODULES:
        sys.modules.pop(f"{package}.{name}", None)
        if parent is not None:
            parent.__dict__.pop(name, None)


def _load_sources(package: types.ModuleType) -> None:
    # Each engine module from its .py file, as ``package.<name>``: their imports of one
    # another are relative, so they find the modules loaded here before them.
    for name in MODULES:
        qualified = f"{package.__name__}.{name}"
        spec = importlib.util.spec_from_file_location(qualified,
                                                      os.path.join(_HERE, f"{name}.py"))
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {qualified} from {_HERE}", name=qualified)
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[qualified]
            raise
        setattr(package, name, module)


_interpreted: types.ModuleType | None = None


def interpreted() -> types.ModuleType:
    """The interpreted engine, loaded from the ``.py`` sources as ``melody._core_interpreted``.

    Its modules are attributes of the returned package (``interpreted().connection``). In a
    process whose engine is the interpreted one this is that engine's package; otherwise the
    interpreted modules are loaded once beside the compiled ones, for differential tests.
    """
    global _interpreted
    if not COMPILED:
        return sys.modules[__name__]
    if _interpreted is None:
        package = types.ModuleType(f"{__name__}_interpreted", "The interpreted melody engine.")
        package.__path__ = []
        package.__package__ = package.__name__
        sys.modules[package.__name__] = package
        _load_sources(package)
        _interpreted = package
    return _interpreted


if not NO_EXTENSIONS:
    try:
        _import_compiled()
    except ImportError as exc:
        IMPORT_ERROR = exc
        _forget(__name__)

#: True when the compiled (Cython) engine is the one in use.
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
            "interpreted core (the same source, run by Python), which behaves the same but is "
            "several times slower. Build it with `pip install .`, or set "
            "MELODY_NO_EXTENSIONS=1 to choose the interpreted core without this warning "
            "(MELODY_EXPECT_COMPILED=1 makes this an error).",
            RuntimeWarning,
            stacklevel=2,
        )
    _load_sources(sys.modules[__name__])
