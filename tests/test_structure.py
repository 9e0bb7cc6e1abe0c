"""The package keeps the shape of its architecture (issue 21): small modules and functions, imports in one
direction (no cycles, nothing importing a room above it), and the command line light until a model is needed."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "bridgetower_cli"
# Rooms from the bottom up: a module may import its own room and the rooms below, never one above.
LAYERS = [
    {"errors", "records", "cancel"},
    {"images", "reading", "pictures"},
    {"sources", "model.catalog", "model.hub"},
    {"model.loading", "model.runtime", "model"},
    {"index"},
    {"tasks"},
    {"engines"},
    {"client", "autoserver", "backend"},
    {"api", "server", "testing"},
    {"cli", "__main__"},
]


def room(module: str) -> int:
    """The layer of a module (dotted, relative to the package)."""
    for depth, members in enumerate(LAYERS):
        if module in members or module.split(".")[0] in members:
            return depth
    raise AssertionError(f"{module} is in no room: add it to LAYERS")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name or "__init__"] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """The package's modules ``name`` imports (at any depth of its code, lazy imports too)."""
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1] if node.level > 1 else package
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            for alias in node.names:  # `from . import x` names a module
                candidate = f"{target}.{alias.name}".strip(".")
                found.add(candidate if candidate in modules() else target)
    return {m for m in found if m and m in modules()}


def test_modules_and_functions_stay_small():
    for name, path in modules().items():
        source = path.read_text()
        assert source.count("\n") <= 400, f"{name}: {source.count(chr(10))} lines"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 80, f"{name}.{node.name}: {length} lines"


def test_imports_go_one_way():
    graph = {name: imports(name, path) for name, path in modules().items()}
    for name, targets in graph.items():
        if name == "__init__":
            continue  # (the public API's lazy names)
        for target in targets:
            if target == "__init__":
                continue
            assert room(target) <= room(name), f"{name} (room {room(name)}) imports {target} (room {room(target)})"
    seen, stack = set(), []

    def visit(node: str) -> None:  # a depth-first walk that fails on a cycle
        assert node not in stack, f"import cycle: {' -> '.join([*stack, node])}"
        if node in seen:
            return
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in ("__init__", node):
                visit(target)
        stack.pop()
        seen.add(node)

    for node in graph:
        visit(node)


def test_no_test_module_imports_another():
    """Shared test code lives in conftest.py, helpers.py and reference.py: a test module imported from another runs
    only where pytest happened to put its folder on sys.path first."""
    tests = Path(__file__).resolve().parent
    for path in tests.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.split(".")[0].startswith("test_") for n in names), f"{path.name} imports {names}"
