"""Build the compiled core: every ``melody/_core/*.pyx`` becomes one extension module.

All metadata lives in pyproject.toml; this file only describes the extensions.
Set ``MELODY_DEBUG_BUILD=1`` for a build with bounds checks and line tracing on.
"""

import os
import sys
from glob import glob

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("MELODY_DEBUG_BUILD") == "1"

if sys.platform == "win32":
    compile_args = ["/O2"]
    libraries: list[str] = []
else:
    compile_args = ["-O3", "-fno-strict-aliasing"] if not DEBUG else ["-O0", "-g"]
    libraries = ["z"]

macros = [("CYTHON_TRACE_NOGIL", "1")] if DEBUG else []

extensions = [
    Extension(
        "melody._core." + os.path.splitext(os.path.basename(path))[0],
        [path],
        extra_compile_args=compile_args,
        libraries=libraries if path.endswith("deflate.pyx") else [],
        define_macros=macros,
    )
    for path in sorted(glob("melody/_core/*.pyx"))
]

directives = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "cdivision": True,
    "initializedcheck": DEBUG,
    "embedsignature": True,
    "linetrace": DEBUG,
}

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        # Warnings are errors: an unused or shadowed name in the core is a bug waiting.
        show_all_warnings=False,
        annotate=False,
    ),
)
