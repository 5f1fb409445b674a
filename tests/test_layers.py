"""Imports go one way: core <- producers / worker <- app; development tooling is not installed.

The static check reads every module's imports, including those inside functions; the dynamic one
imports each module in a fresh interpreter and looks at ``sys.modules``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE, PRODUCERS, WORKER, APP = "hokusai_registry", "producers", "worker", "hokusai_app"
PROJECT = {CORE, PRODUCERS, WORKER, APP, "devtools", "celeryconfig", "tests", "bench", "examples"}
#: layer -> the project packages its modules may import
ALLOWED = {
    CORE: {CORE},
    PRODUCERS: {CORE, PRODUCERS},
    WORKER: {CORE, WORKER, "celeryconfig"},
    "celeryconfig": {CORE},
    APP: {CORE, PRODUCERS, WORKER, APP},
}
#: The one sanctioned step outside: the demo command uses the checkout's devtools (it says so when absent).
EXCEPTIONS = {("hokusai_app/demo.py", "devtools")}


def product_modules() -> list[Path]:
    files = [p for package in (CORE, PRODUCERS, WORKER, APP) for p in (ROOT / package).rglob("*.py")]
    return sorted([*files, ROOT / "celeryconfig.py"])


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):  # every import, at module level or inside a function
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & PROJECT


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def test_every_module_imports_only_its_own_layer_and_below() -> None:
    broken = []
    for path in product_modules():
        layer = path.relative_to(ROOT).parts[0].removesuffix(".py")
        for target in sorted(imported_packages(path) - ALLOWED[layer]):
            if (str(path.relative_to(ROOT)), target) not in EXCEPTIONS:
                broken.append(
                    f"{path.relative_to(ROOT)} imports {target} ({layer} may import {sorted(ALLOWED[layer])})"
                )
    assert broken == [], "\n".join(broken)


def test_the_static_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from worker.tasks import app\n    import producers.enqueue\n")
    assert imported_packages(module) == {"worker", "producers"}


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [(CORE, {PRODUCERS, WORKER, APP}), (PRODUCERS, {WORKER, APP}), (WORKER, {PRODUCERS, APP})],
)
def test_importing_each_module_in_a_fresh_interpreter_loads_no_other_side(package: str, forbidden: set[str]) -> None:
    modules = [module_name(p) for p in product_modules() if p.relative_to(ROOT).parts[0] == package]
    code = (
        "import importlib, sys\n"
        f"forbidden = {sorted(forbidden)!r}\n"
        f"for name in {modules!r}:\n"
        "    before = set(sys.modules)\n"
        "    importlib.import_module(name)\n"
        "    loaded = {m.split('.')[0] for m in set(sys.modules) - before} & set(forbidden)\n"
        "    assert not loaded, f'{name} loaded {sorted(loaded)}'\n"
        "print('ok', len(" + repr(modules) + "))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("ok"), run.stdout


def test_the_wheel_ships_the_product_and_no_development_tooling(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = tmp_path.glob("hokusai_registry-*.whl")
    top_level = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {CORE, PRODUCERS, WORKER, APP, "celeryconfig.py"} <= top_level
    assert not top_level & {"devtools", "tests", "bench", "examples", "scripts"}, sorted(top_level)
