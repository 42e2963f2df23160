"""Build the compiled core: every ``melody/_core/*.pyx`` becomes one extension module.

All metadata lives in pyproject.toml; this file only describes the extensions.
Set ``MELODY_DEBUG_BUILD=1`` for a build with bounds checks and line tracing on, and
``ZLIB_ROOT`` to build against a zlib outside the compiler's default paths (needed on Windows;
see zlib_paths).
"""

import os
import sys

from Cython.Build import cythonize
from Cython.Compiler import Options
from setuptools import Extension, setup

DEBUG = os.environ.get("MELODY_DEBUG_BUILD") == "1"

# Cython warnings are errors: an unused or shadowed name in the core is a bug waiting.
Options.warning_errors = True

if sys.platform == "win32":
    # MSVC's spellings; it does no type-based alias analysis, so -fno-strict-aliasing has no twin.
    compile_args = ["/O2"] if not DEBUG else ["/Od", "/Zi"]
    link_args = [] if not DEBUG else ["/DEBUG"]
else:
    compile_args = ["-O3", "-fno-strict-aliasing"] if not DEBUG else ["-O0", "-g"]
    link_args = []


def zlib_paths() -> dict[str, list[str]]:
    """Where the compiler finds zlib's header and the linker its library.

    Linux and macOS use the system zlib (Debian's zlib1g-dev, the manylinux images' zlib-devel,
    Alpine's zlib-dev, the macOS SDK's own libz). Windows has no system zlib: ZLIB_ROOT names an
    install holding include/zlib.h and lib/zlib.lib. The Windows wheels use vcpkg's
    zlib:x64-windows-static-md (static zlib, dynamic CRT like CPython itself), so the .pyd needs
    no zlib DLL beside it. Without ZLIB_ROOT, MSVC searches its INCLUDE and LIB paths. ZLIB_ROOT
    also points a Linux or macOS build at a zlib of one's own.
    """
    root = os.environ.get("ZLIB_ROOT")
    if not root:
        return {}
    include, lib = os.path.join(root, "include"), os.path.join(root, "lib")
    if not os.path.isfile(os.path.join(include, "zlib.h")):
        sys.exit(f"setup.py: ZLIB_ROOT={root!r} has no include/zlib.h")
    return {"include_dirs": [include], "library_dirs": [lib]}


ZLIB = ["zlib"] if sys.platform == "win32" else ["z"]

macros = [("CYTHON_TRACE_NOGIL", "1")] if DEBUG else []

# The C kernels are .pyx; the rest of the engine is Python in Cython's pure-Python mode, each
# .py compiled with the .pxd beside it (see melody/_core/__init__.py). Plain-Python modules of
# the engine (constants, views, extensions) and the kernels' interpreted .py are not compiled.
KERNELS = ("mask", "utf8", "deflate", "timing")
PURE_MODE = ("frames", "connection", "protocol", "fanout", "packet")


def engine_source(name: str) -> str:
    return f"melody/_core/{name}.pyx" if name in KERNELS else f"melody/_core/{name}.py"


extensions = [
    Extension(
        "melody._core." + name,
        [engine_source(name)],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=macros,
        # Every module that cimports deflate's .pxd includes zlib.h (for z_stream); only
        # deflate calls into zlib and links it.
        libraries=ZLIB if name == "deflate" else [],
        **zlib_paths(),
    )
    for name in KERNELS + PURE_MODE
]

directives = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "cdivision": True,
    "initializedcheck": DEBUG,
    "embedsignature": True,
    "linetrace": DEBUG,
    # The pure-mode sources carry annotations for mypy; their C types come from the .pxd only
    # (an annotation such as ``data: bytes`` must not make the compiled function refuse a
    # memoryview that the interpreted one takes).
    "annotation_typing": False,
}

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=os.environ.get("MELODY_ANNOTATE") == "1",
    ),
)
