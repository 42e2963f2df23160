"""The typed surface holds: mypy --strict on the package, and the .pyi stubs match the modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("mypy", reason="mypy is a test dependency: pip install -e '.[test]'")

pytestmark = pytest.mark.slow


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_mypy_strict_on_the_package() -> None:
    result = _run("mypy", "--strict", "melody")
    assert result.returncode == 0, result.stdout + result.stderr


def test_stubs_match_the_compiled_modules() -> None:
    # The C kernels have .pyi stubs; the pure-mode modules are their own typed source (mypy
    # reads the .py), checked by test_mypy_strict_on_the_package.
    modules = [f"melody._core.{name}" for name in ("mask", "utf8", "deflate", "timing")]
    result = _run("mypy.stubtest", "--allowlist", "tests/core/stubtest-allowlist.txt", *modules)
    assert result.returncode == 0, result.stdout + result.stderr
