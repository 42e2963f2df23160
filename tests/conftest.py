"""Suite-wide: say which core is under test, and skip what only the compiled core can pass.

The whole suite runs twice in CI: against the compiled core and with ``MELODY_NO_EXTENSIONS=1``
against the pure-Python one. Tests about the extension modules themselves are marked
``compiled_only`` (here, for files that cannot carry the marker) and skipped in the second run
only: if the compiled core failed to load without being asked to, they run and fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import melody

TESTS = Path(__file__).resolve().parent

#: ``MELODY_NO_EXTENSIONS=1``: the pure-Python core was asked for.
PURE_REQUESTED = os.environ.get("MELODY_NO_EXTENSIONS", "") == "1"

# (file, test function or None for the whole file) about the compiled artefacts.
COMPILED_ONLY = {
    (TESTS / "test_compiled.py", None),
    (TESTS / "test_typing.py", "test_stubs_match_the_compiled_modules"),
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "compiled_only: about the compiled extension modules themselves (skipped under "
        "MELODY_NO_EXTENSIONS=1)",
    )


def pytest_report_header(config: pytest.Config) -> str:
    core = "compiled (Cython)" if melody.COMPILED else "pure Python"
    return f"melody core: {core}" + (" (MELODY_NO_EXTENSIONS=1)" if PURE_REQUESTED else "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        name = getattr(item, "originalname", item.name)
        if (item.path, None) in COMPILED_ONLY or (item.path, name) in COMPILED_ONLY:
            item.add_marker(pytest.mark.compiled_only)
        if PURE_REQUESTED and item.get_closest_marker("compiled_only"):
            item.add_marker(pytest.mark.skip(
                reason="checks the compiled extension modules; MELODY_NO_EXTENSIONS=1 runs "
                       "the pure-Python core"))
