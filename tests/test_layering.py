"""The package's structure, checked against the one map of it in docs/architecture.md.

That page's "Layers" table says, for each part of the package (a sub-package or
a top-level module), what it may import.  These tests read the table and hold
the code to it: every import (at module level or inside a function), the
sub-packages' docstrings, the absence of import cycles, the size of modules,
and what a worker process loads.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

pytestmark = pytest.mark.timeout(60)

PACKAGE = ROOT / "sockpool"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
#: The parts a worker process must never load (they only run in the master).
HOST_ONLY = ("capture", "launchers", "dispatch", "api")
MAX_LINES = 500
MAX_TOP_LEVEL_MODULES = 12


def _layer_map() -> dict[str, set[str]]:
    """``{part: parts it may import}`` from the "Layers" table of docs/architecture.md."""
    text = ARCHITECTURE.read_text()
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    allowed: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].isdigit():
            continue
        may_import = set(re.findall(r"`([\w.]+)`", cells[3]))
        for part in re.findall(r"`([\w.]+)`", cells[1]):
            allowed[part] = may_import
    return allowed


LAYERS = _layer_map()
MODULES = sorted(PACKAGE.rglob("*.py"))


def _dotted(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str:
    """The part of the package a module belongs to: ``sockpool.dispatch.pool`` -> ``dispatch``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    """Every sockpool module ``path`` imports, anywhere in it, as dotted names."""
    package = _dotted(path) if path.name == "__init__.py" else _dotted(path).rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sockpool"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("sockpool"):
                continue
            found.add(module)
            for alias in node.names:  # "from . import codec" imports a module
                candidate = f"{module}.{alias.name}"
                if _path_of(candidate) is not None:
                    found.add(candidate)
    return found


def _path_of(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def test_the_map_names_every_part_of_the_package() -> None:
    parts = {_part(_dotted(path)) for path in MODULES}
    assert parts == set(LAYERS), (
        f"parts without a row in docs/architecture.md: {parts - set(LAYERS)}; "
        f"rows for no part: {set(LAYERS) - parts}")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_map(path: Path) -> None:
    part = _part(_dotted(path))
    for module in _imports(path):
        imported = _part(module)
        if imported == part or (imported == "__init__" and module == "sockpool"):
            continue
        assert imported in LAYERS[part], (
            f"{path.relative_to(ROOT)} imports {module}, but docs/architecture.md lets "
            f"{part} import only {sorted(LAYERS[part]) or 'nothing of sockpool'}")


@pytest.mark.parametrize("part", sorted(p for p in LAYERS if (PACKAGE / p).is_dir()))
def test_each_subpackage_states_its_role_and_what_it_may_import(part: str) -> None:
    docstring = ast.get_docstring(ast.parse((PACKAGE / part / "__init__.py").read_text()))
    assert docstring, f"sockpool/{part}/__init__.py has no docstring"
    paragraph = re.search(r"^May import: (.*?)(?:\n\n|\Z)", docstring, re.MULTILINE | re.DOTALL)
    assert paragraph, f"sockpool/{part}/__init__.py does not say what it may import"
    stated = set(re.findall(r"``([\w.]+)``", paragraph.group(1)))
    assert stated == LAYERS[part], (
        f"sockpool/{part}/__init__.py says it may import {sorted(stated)}, "
        f"docs/architecture.md says {sorted(LAYERS[part])}")


def test_no_import_cycles() -> None:
    graph = {_dotted(path): _imports(path) for path in MODULES}
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            cycle = [*trail[trail.index(module):], module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            if imported != "sockpool":  # every module's parent package: not an edge
                visit(imported, [*trail, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_modules_stay_small_and_the_top_level_short() -> None:
    long = {str(p.relative_to(ROOT)): n for p in MODULES
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
    top_level = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top_level) <= MAX_TOP_LEVEL_MODULES, top_level


def test_worker_process_loads_no_host_code() -> None:
    code = (
        "import sys, sockpool.worker.runner\n"
        f"host_only = {HOST_ONLY!r}\n"
        "loaded = sorted(m for m in sys.modules for part in host_only\n"
        "                if m == 'sockpool.' + part or m.startswith('sockpool.' + part + '.'))\n"
        "assert not loaded, loaded\n"
        "assert 'cloudpickle' not in sys.modules and 'dill' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_importing_sockpool_is_cheap_and_side_effect_free() -> None:
    code = (
        "import sys, atexit, threading, sockpool\n"
        "assert 'sockpool.api.cluster' not in sys.modules\n"
        "assert 'zmq' not in sys.modules\n"
        "assert threading.active_count() == 1\n"
        "assert sockpool.Cluster.__name__ == 'Cluster'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
