"""Sphinx configuration for melody's documentation.

Build (warnings are errors): ``bash .ci/docs.sh``, or ``python -m sphinx -W -E -b html docs
docs/_build/html`` with ``pip install -e ".[docs]"`` done.

The API reference (``api.rst``) is generated from the package as it is at build time by the
``melody-api`` directive below: every public module of ``melody`` and every name in its
``__all__`` is documented from its docstring, so a module that is added (or needs an optional
dependency that is not installed) never leaves the reference stale or breaks the build.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import sys
from types import ModuleType
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.ext.autodoc.mock import mock
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective, SphinxRole
from sphinx.util.nodes import nested_parse_with_titles, split_explicit_title

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    # The installed melody: an editable install (as in CI) is this tree, compiled.
    import melody
except ImportError:
    sys.path.insert(0, ROOT)
    import melody

project = "melody"
author = "melody developers"
copyright = "melody developers"
version = release = melody.__version__

extensions = ["sphinx.ext.autodoc"]
# No intersphinx: the build must work offline.
root_doc = "index"
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {
    "description": "A fast WebSocket hub: Go melody's API in Python",
    "page_width": "1160px",
    "body_max_width": "none",
}
html_static_path = ["_static"]
html_css_files = ["melody.css"]
pygments_style = "sphinx"

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_inherit_docstrings = False
# Filled in while the API page is generated: optional dependencies found missing.
autodoc_mock_imports: list[str] = []

# Modules that are not API: the command line, the demo, the benchmark tool.
SKIP_MODULES = {"melody.cli", "melody.demo", "melody.bench", "melody.__main__"}
#: Modules still importable at their old path (thin re-exports), documented where the code is.
MOVED = {"melody.asgi": "melody.server.asgi", "melody.redis_backplane": "melody.backplane.redis"}
#: Modules documented though not top-level (a backplane that has no old path to move from).
EXTRA_MODULES = ["melody.backplane.nats"]
# Sections in reading order; any other public module follows, in name order.
TITLES = {
    "melody.hub": "The hub",
    "melody.session": "Sessions",
    "melody.config": "Configuration",
    "melody.limits": "Bounds on settings",
    "melody.server": "Serving",
    "melody.errors": "Errors and close codes",
    "melody.client": "Client",
    "melody.handshake": "HTTP requests and the handshake",
    "melody.middleware": "Handshake middleware",
    "melody.server.asgi": "ASGI",
    "melody.backplane": "Backplanes",
    "melody.backplane.redis": "Redis backplane",
    "melody.backplane.nats": "NATS backplane",
    "melody.workers": "Worker processes",
    "melody.logs": "Structured logs",
    "melody.metrics": "Prometheus metrics",
    "melody.tracing": "OpenTelemetry traces",
}


def _import(name: str) -> ModuleType | None:
    """Import a module, mocking any optional third-party package it needs and lacks."""
    for _ in range(5):
        try:
            with mock(autodoc_mock_imports):
                return importlib.import_module(name)
        except ImportError as exc:
            cause: BaseException | None = exc
            while cause is not None and not isinstance(cause, ModuleNotFoundError):
                cause = cause.__cause__ or cause.__context__
            missing = getattr(cause, "name", None) or ""
            top = missing.split(".")[0]
            if not top or top == "melody" or top in autodoc_mock_imports:
                raise
            autodoc_mock_imports.append(top)
            sys.modules.pop(name, None)
    return None


def _public_modules() -> list[str]:
    found = [f"melody.{info.name}" for info in pkgutil.iter_modules(melody.__path__)
             if not info.name.startswith("_")]
    found = [MOVED.get(name, name) for name in found if name not in SKIP_MODULES]
    found += EXTRA_MODULES
    order = list(TITLES)
    return sorted(found, key=lambda n: (order.index(n) if n in order else len(order), n))


def _directive(obj: Any) -> tuple[str, list[str]]:
    if inspect.isclass(obj):
        kind = "autoexception" if issubclass(obj, BaseException) else "autoclass"
        inherits = obj.__bases__ != (object,)
        return kind, [":members:"] + ([":show-inheritance:"] if inherits else [])
    if inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.ismethod(obj):
        return "autofunction", []
    if inspect.ismodule(obj):
        return "", []
    return "autodata", [":no-value:"] if not isinstance(obj, (bool, int, str)) else []


def _entry(lines: list[str], full_name: str, obj: Any) -> None:
    kind, options = _directive(obj)
    if not kind:
        return
    lines.append(f".. {kind}:: {full_name}")
    lines.extend(f"   {option}" for option in options)
    lines.append("")


def api_lines() -> list[str]:
    """reStructuredText for the whole API reference, from what the package holds now."""
    top = {name: getattr(melody, name) for name in melody.__all__}
    placed: set[str] = set()
    lines: list[str] = []
    for module_name in _public_modules():
        module = _import(module_name)
        if module is None:
            continue
        names = getattr(module, "__all__", None)
        if names is None:
            names = [n for n, v in vars(module).items() if not n.startswith("_")
                     and getattr(v, "__module__", None) == module_name]
        entries: list[str] = []
        shortcuts: list[str] = []
        for name in names:
            obj = getattr(module, name)
            if name in top and top[name] is obj:
                # Re-exported: documented under the name users import.
                shortcuts.append(name)
                placed.add(name)
                _entry(entries, f"melody.{name}", obj)
            else:
                _entry(entries, f"{module_name}.{name}", obj)
        title = TITLES.get(module_name) or module_name
        lines += [title, "-" * len(title), "", f".. automodule:: {module_name}", ""]
        if shortcuts:
            listed = ", ".join(f"``{n}``" for n in shortcuts)
            lines += [f"Importable from ``melody`` itself: {listed}.", ""]
        lines += entries
    rest = [name for name in melody.__all__ if name not in placed]
    if rest:
        lines += ["The package", "-----------", "",
                  "Names of ``melody`` not documented in a section above.", ""]
        for name in rest:
            _entry(lines, f"melody.{name}", top[name])
    return lines


class MelodyApi(SphinxDirective):
    """``.. melody-api::`` expands to the generated reference (see :func:`api_lines`)."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        source = StringList(api_lines(), source="<melody-api>")
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, source, container)
        return list(container.children)


# -- :api: checked references to melody names -------------------------------------------------

logger = logging.getLogger("melody-docs")

#: How the prose spells the objects it talks about.
ALIASES = {
    "hub": "melody.Melody",
    "session": "melody.Session",
    "request": "melody.Request",
    "Config": "melody.Config",
    "Compression": "melody.Compression",
    "errors": "melody.errors",
}
_instances: dict[type, Any] = {}


def _has_attribute(cls: type, name: str) -> bool:
    """Class attribute, dataclass field, slot, annotation, or set on an instance by __init__."""
    if hasattr(cls, name) or name in getattr(cls, "__dataclass_fields__", {}):
        return True
    for klass in cls.__mro__:
        if name in getattr(klass, "__annotations__", {}) or name in getattr(klass, "__slots__", ()):
            return True
    if cls is melody.Melody:  # cheap to make, and sets its public attributes in __init__
        hub = _instances.setdefault(cls, melody.Melody())
        return hasattr(hub, name)
    return False


_MISSING = object()


def _getattr(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name)
    except Exception:  # AttributeError, or an ImportError from a lazy module __getattr__
        return _MISSING


def _submodules(package: ModuleType) -> set[str]:
    path = getattr(package, "__path__", None)
    return {f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(path)} if path else set()


def resolve(target: str) -> str | None:
    """The full dotted name ``target`` refers to, or None when melody has no such thing."""
    target = target.strip().removeprefix("@").removeprefix("await ")
    for stop in "([ ":
        target = target.split(stop, 1)[0]
    head, _, rest = target.partition(".")
    full = ALIASES.get(head, head) + ("." + rest if rest else "")
    parts = full.split(".")
    if parts[0] != "melody":
        return None
    obj: Any = melody
    for i, part in enumerate(parts[1:], start=1):
        if inspect.ismodule(obj) and f"{obj.__name__}.{part}" in _submodules(obj):
            obj = _import(f"{obj.__name__}.{part}")  # mocking what it needs and lacks
            if obj is None:
                return None
        elif _getattr(obj, part) is not _MISSING:
            obj = _getattr(obj, part)
        elif inspect.isclass(obj) and i == len(parts) - 1 and _has_attribute(obj, part):
            return full
        else:
            return None
    return full


class ApiRole(SphinxRole):
    """``:api:`hub.broadcast(msg)``` or ``:api:`len(hub) <hub.__len__>```: a literal that links
    to the API reference, and a build warning (an error under ``-W``) when the name it refers
    to is not in melody. Keeps the migration tables true to the code.
    """

    def run(self) -> tuple[list[nodes.Node], list[nodes.system_message]]:
        _explicit, title, target = split_explicit_title(self.text)
        full = resolve(target)
        if full is None:
            logger.warning("no such melody name in :api:`%s`", self.text,
                           location=self.get_location())
            return [nodes.literal(title, title)], []
        ref = addnodes.pending_xref("", nodes.literal(title, title), refdomain="py",
                                    reftype="obj", reftarget=full, refexplicit=True,
                                    refwarn=False)
        return [ref], []


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("melody-api", MelodyApi)
    app.add_role("api", ApiRole())
    return {"parallel_read_safe": True}
