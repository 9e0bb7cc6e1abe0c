"""The package keeps the shape of its architecture (issue 21): small modules and functions (its tests and benchmarks
too), imports in one direction (no cycles, nothing importing a room above it) whatever their form, and the command
line light until a model is needed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "bridgetower_cli"
NAME = PACKAGE.name
MODULE_LINES, FUNCTION_LINES = 400, 80
# Rooms from the bottom up: a module may import its own room and the rooms below, never one above.
LAYERS = [
    {"errors", "records", "cancel", "durations"},
    {"images", "reading", "pictures"},
    {"sources", "walker", "model.catalog", "model.hub"},
    {"model.loading", "model.runtime", "model"},
    {"index"},
    {"tasks"},
    {"engines"},
    {"operations"},
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


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """The package's modules by dotted name relative to it (its own ``__init__`` as "__init__")."""
    found = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name or "__init__"] = path
    return found


# -- what a module imports ---------------------------------------------------------------------------------------


def relative(anchor: list[str], level: int, module: str) -> list[str] | None:
    """``module`` (dotted, "" for none) imported ``level`` dots up from the package ``anchor``: its parts."""
    if level > len(anchor) + 1:
        return None  # (above the package: not one of its modules)
    return [*anchor[: len(anchor) - level + 1], *filter(None, module.split("."))]


def absolute(module: str) -> list[str] | None:
    """An absolute module name's parts inside the package, None for another package's."""
    top, _, rest = module.partition(".")
    return [*filter(None, rest.split("."))] if top == NAME else None


def literal_start(node: ast.expr) -> str | None:
    """A string literal's value; of an f-string, its fixed start up to the last dot (leading dots kept): a prefix of
    the module it names, so at least the package that module is in. None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if not (isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant)):
        return None
    start = str(node.values[0].value)
    dots = len(start) - len(start.lstrip("."))
    fixed = start[dots : start.rfind(".")] if start.rfind(".") >= dots else ""
    return start[:dots] + fixed or None


def dynamic(node: ast.Call, name: str, package: list[str]) -> list[str] | None:
    """The module an ``importlib.import_module(...)`` (or ``import_module``, ``__import__``) call names, when it is
    a literal: absolute, or relative to a ``package`` argument that is ``__name__``, ``__package__`` or a literal."""
    function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
    if function not in ("import_module", "__import__") or not node.args:
        return None
    target = literal_start(node.args[0])
    if target is None:
        return None
    level = len(target) - len(target.lstrip("."))
    if not level:
        return absolute(target)
    keywords = [k.value for k in node.keywords if k.arg == "package"]
    anchor = ([*node.args[1:], *keywords] or [None])[0] if function == "import_module" else None
    if isinstance(anchor, ast.Name) and anchor.id in ("__name__", "__package__"):
        base = package if anchor.id == "__package__" else [] if name == "__init__" else name.split(".")
    elif anchor is not None and (text := literal_start(anchor)) is not None:
        base = absolute(text)
    else:
        return None
    return None if base is None else relative(base, level, target[level:])


def imports_in(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules that the code ``source`` of module ``name`` imports, at any depth of it (lazy imports
    too) and in any form: relative or absolute ``import``/``from`` statements, and ``importlib.import_module`` calls
    with a literal name. A name that is no module (``from x import function``) counts as the nearest module above."""
    here = [] if name == "__init__" else name.split(".")
    package = here if is_package else here[:-1]
    found: list[list[str] | None] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [absolute(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = relative(package, node.level, node.module or "") if node.level else absolute(node.module or "")
            found += [None if base is None else [*base, alias.name] for alias in node.names]
        elif isinstance(node, ast.Call):
            found.append(dynamic(node, name, package))
    return {nearest(parts, known) for parts in found if parts is not None} - {None}


def nearest(parts: list[str], known: set[str]) -> str | None:
    """The longest leading part of ``parts`` that is a module of the package ("__init__" for none)."""
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return "__init__" if "__init__" in known else None


def imports(name: str, path: Path, known: set[str] | None = None) -> set[str]:
    """The package's modules ``name`` (at ``path``) imports."""
    known = set(modules()) if known is None else known
    return imports_in(path.read_text(), name, path.name == "__init__.py", known)


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    found = modules(package)
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Every import of a room above the importer's."""
    return [
        f"{name} (room {room(name)}) imports {target} (room {room(target)})"
        for name, targets in sorted(edges.items())
        if name != "__init__"  # (the public API's lazy names)
        for target in sorted(targets)
        if target != "__init__" and room(target) > room(name)
    ]


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """An import cycle (the modules around it), None if there is none."""
    seen, stack = set(), []

    def visit(node: str) -> list[str] | None:  # a depth-first walk
        if node in stack:
            return [*stack[stack.index(node) :], node]
        if node in seen:
            return None
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if target not in ("__init__", node) and (found := visit(target)):
                return found
        stack.pop()
        seen.add(node)
        return None

    return next((found for node in sorted(edges) if (found := visit(node))), None)


# -- the rules ---------------------------------------------------------------------------------------------------


def too_large(path: Path) -> list[str]:
    """What in one Python file is past the size rule: the module's lines, each function's."""
    source = path.read_text()
    name = path.relative_to(ROOT).as_posix()
    found = [f"{name}: {source.count(chr(10))} lines"] if source.count("\n") > MODULE_LINES else []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > FUNCTION_LINES:
                found.append(f"{name}: {node.name} is {length} lines")
    return found


@pytest.mark.parametrize("folder", ["src/bridgetower_cli", "tests", "benchmarks"])
def test_modules_and_functions_stay_small(folder):
    """At most 400 lines a module and 80 a function: the package, its tests and its benchmarks alike."""
    assert [line for path in sorted((ROOT / folder).rglob("*.py")) for line in too_large(path)] == []


def test_imports_go_one_way():
    edges = graph()
    assert upward(edges) == []
    found = cycle(edges)
    assert found is None, f"import cycle: {' -> '.join(found)}"


def test_every_form_of_import_is_followed():
    """An upward import is caught whatever its form: absolute or relative statements, at the top or in a function,
    importlib.import_module with an absolute or relative literal, an f-string's fixed start."""
    known = set(modules())
    lines = {
        "import bridgetower_cli.cli.app": "cli.app",
        "from bridgetower_cli.server import routes": "server.routes",
        "from bridgetower_cli.backend.local import Local": "backend.local",
        "from bridgetower_cli import api": "api",
        "def lazy():\n    import bridgetower_cli.autoserver as auto": "autoserver",
        "from ..tasks import indexing": "tasks.indexing",
        "importlib.import_module('bridgetower_cli.client')": "client",
        "import_module('.testing', 'bridgetower_cli')": "testing",
        "importlib.import_module('..engines', __package__)": "engines",
        "importlib.import_module(f'bridgetower_cli.tasks.{name}')": "tasks",
        "importlib.import_module(f'..tasks.{name}', package=__package__)": "tasks",
        "__import__('bridgetower_cli.cli')": "cli",
    }
    for line, target in lines.items():
        found = imports_in(line, "model.runtime", False, known)
        assert found == {target}, line
        assert upward({"model.runtime": found}), line
    assert imports_in("import os\nfrom json import loads\nimport_module(name)", "errors", False, known) == set()
    assert cycle({"errors": {"cli.app"}, "cli.app": {"errors"}}) == ["cli.app", "errors", "cli.app"]


def test_no_test_module_imports_another():
    """Shared test code lives in conftest.py, helpers.py and reference.py: a test module imported from another runs
    only where pytest happened to put its folder on sys.path first."""
    tests = Path(__file__).resolve().parent
    for path in tests.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.split(".")[0].startswith("test_") for n in names), f"{path.name} imports {names}"


def test_every_test_file_the_docs_name_exists():
    """The README and the benchmarks' README name test files as evidence: each must be there (one was renamed)."""
    import re

    root = Path(__file__).resolve().parent.parent
    for doc in (root / "README.md", root / "benchmarks" / "README.md"):
        for named in set(re.findall(r"tests/[\w/]+\.py", doc.read_text())):
            assert (root / named).is_file(), f"{doc.name} names {named}, which does not exist"
