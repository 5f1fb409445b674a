"""No import cycle among the product's modules, and no product module over the size a reader can hold.

The import map is read with ``ast`` from every module of ``hokusai_registry/``, ``producers/``,
``worker/`` and ``hokusai_app/`` (and ``celeryconfig.py``): imports at module level, inside
functions and under ``if TYPE_CHECKING:`` (a cycle in type hints is still a cycle for a reader),
``import x`` and ``from x import y``, relative ones resolved, ``from pkg import module`` counted as
an import of ``pkg.module``. A cycle is reported file -> file.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hokusai_registry", "producers", "worker", "hokusai_app")
#: Longest product module, in lines.
MAX_LINES = 450


def product_modules(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``packages`` (and ``celeryconfig.py`` when present)."""
    files = [path for package in packages for path in sorted((root / package).rglob("*.py"))]
    if (root / "celeryconfig.py").is_file():
        files.append(root / "celeryconfig.py")
    return {module_name(path, root): path for path in files}


def module_name(path: Path, root: Path = ROOT) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The module a ``from ... import`` names, relative levels resolved against ``importer``."""
    if node.level == 0:
        return node.module or ""
    parts = importer.split(".")
    base = parts if is_package else parts[:-1]  # a package's own name is its first level
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(name: str, path: Path, modules: Iterable[str]) -> set[str]:
    """The project modules ``name`` (the file ``path``) imports, anywhere in it."""
    known = set(modules)
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def nearest(dotted: str) -> str | None:  # "a.b.C" (a class of a.b) -> "a.b"
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: list[str | None] = []
        if isinstance(node, ast.Import):
            targets = [nearest(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, name, is_package)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                targets.append(submodule if submodule in known else nearest(source))
        found.update(target for target in targets if target is not None and target != name)
    return found


def import_map(modules: dict[str, Path]) -> dict[str, set[str]]:
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Every group of two or more modules that import each other (directly or through one another)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups, key=min)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (first module repeated at the end) through each circle of ``circles``."""
    return [_cycle_through(group, graph) for group in circles(graph)]


def _cycle_through(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest path from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    pending = [start]
    while pending:
        current = pending.pop(0)
        for target in sorted(graph[current] & group):
            if target == start:
                return [*paths[current], start]
            if target not in paths:
                paths[target] = [*paths[current], target]
                pending.append(target)
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")  # a component always has one


def describe(cycle: list[str], modules: dict[str, Path], root: Path = ROOT) -> str:
    return " -> ".join(str(modules[name].relative_to(root)) for name in cycle)


def test_no_product_module_imports_itself_through_others() -> None:
    modules = product_modules()
    graph = import_map(modules)
    found = []
    for circle, cycle in zip(circles(graph), cycles(graph), strict=True):
        line = describe(cycle, modules)
        if len(circle) > len(cycle) - 1:
            line += " (the circle: " + ", ".join(str(modules[n].relative_to(ROOT)) for n in sorted(circle)) + ")"
        found.append(line)
    assert found == [], "import cycles:\n" + "\n".join(found)


def test_no_product_module_is_over_the_size_limit() -> None:
    sizes = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in product_modules().values()}
    big = [f"{path.relative_to(ROOT)}: {lines} lines" for path, lines in sorted(sizes.items()) if lines > MAX_LINES]
    assert big == [], f"modules over {MAX_LINES} lines:\n" + "\n".join(big)


# ------------------------------------------------------------------ the reader itself
def _write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return product_modules(root, ["pkg"])


def test_the_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    modules = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": (
                "from typing import TYPE_CHECKING\n"
                "import pkg.b\n"
                "from pkg.c import thing\n"
                "from . import d\n"
                "from .sub import e\n"
                "if TYPE_CHECKING:\n"
                "    from pkg.f import F\n"
                "def later():\n"
                "    from pkg import g\n"
            ),
            **{f"pkg/{n}.py": "thing = F = 1\n" for n in "bcdfg"},
            "pkg/sub/__init__.py": "",
            "pkg/sub/e.py": "from .. import a\nfrom ..sub import __name__ as _\n",
        },
    )
    graph = import_map(modules)
    assert graph["pkg.a"] == {"pkg.b", "pkg.c", "pkg.d", "pkg.sub.e", "pkg.f", "pkg.g"}
    assert graph["pkg.sub.e"] == {"pkg.a", "pkg.sub"}


def test_a_cycle_is_found_and_shown_file_by_file(tmp_path: Path) -> None:
    modules = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/one.py": "from pkg import two\n",
            "pkg/two.py": "def f():\n    from pkg.three import x\n",
            "pkg/three.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.one import y\nx = 1\n",
            "pkg/four.py": "import pkg.one\n",
        },
    )
    (cycle,) = cycles(import_map(modules))
    assert describe(cycle, modules, tmp_path) == "pkg/one.py -> pkg/two.py -> pkg/three.py -> pkg/one.py"
    assert cycles(import_map({k: v for k, v in modules.items() if k != "pkg.three"})) == []
