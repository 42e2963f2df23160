"""The package's layers hold: no import cycle, no reaching into another object's privates.

Both read the source with ``ast``, so that a deferred import inside a function counts as
much as one at the top of a module (only ``if TYPE_CHECKING:`` blocks are left out: they
never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import melody

PACKAGE = Path(melody.__file__).parent

#: Where the private-attribute rule does not apply: the compiled engine and its pure twin, and
#: the benchmark tool.
NOT_CHECKED = ("_core", "bench")

#: (module, expression) pairs allowed to read a private attribute of another object, each
#: with its reason. Add an entry only when no public name can do.
ALLOWED_PRIVATE: dict[tuple[str, str], str] = {
    ("melody.http_api", "named._asdict"): "a named tuple's documented public method "
    "(collections.namedtuple): the underscore only keeps it apart from the field names",
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk_runtime(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``node`` except the bodies of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield other
                yield from _walk_runtime(other)
            continue
        yield child
        yield from _walk_runtime(child)


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imports(name: str, path: Path) -> set[str]:
    """The melody modules that importing ``name`` runs, directly: what it imports (at any
    depth in the module) and the packages those live in, except its own parent packages,
    which are being imported already when it runs."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in _walk_runtime(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                targets.add(submodule if submodule in MODULES else module)
    own = set(_ancestors(name))
    edges = set()
    for target in targets:
        for module in (*_ancestors(target), target):
            if module in MODULES and module != name and module not in own:
                edges.add(module)
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    cycles = _cycles(graph)
    detail = [[(a, b) for a in cycle for b in sorted(graph[a]) if b in cycle]
              for cycle in cycles]
    assert cycles == [], f"import cycles (edges inside each): {detail}"


def test_the_graph_sees_deferred_imports() -> None:
    # A function-level import is an edge: cli imports the workers inside main().
    assert "melody.workers" in _imports("melody.cli", MODULES["melody.cli"])
    # An import under TYPE_CHECKING is not: session names the hub only for annotations.
    assert "melody.hub" not in _imports("melody.session", MODULES["melody.session"])


def test_a_cycle_is_found() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _checked_modules() -> list[str]:
    return [name for name in MODULES
            if not set(name.split(".")[1:]) & set(NOT_CHECKED)]


def _private_reads(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        attr = node.attr
        if not attr.startswith("_") or attr.startswith("__"):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue
        yield node.lineno, ast.unparse(node)


@pytest.mark.parametrize("module", _checked_modules())
def test_no_private_attribute_of_another_object(module: str) -> None:
    found = [f"{module}:{line}: {expr}" for line, expr in _private_reads(MODULES[module])
             if (module, expr) not in ALLOWED_PRIVATE]
    assert found == [], "private attributes read from outside their object:\n" + "\n".join(
        found)


def test_the_private_attribute_check_finds_one(tmp_path: Path) -> None:
    path = tmp_path / "sample.py"
    path.write_text("def f(self, hub):\n    self._ok = hub._bad + self._hub._worse\n"
                    "    return hub.fine, hub.__class__\n", encoding="utf-8")
    assert [expr for _, expr in _private_reads(path)] == ["hub._bad", "self._hub._worse"]
