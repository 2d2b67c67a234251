"""The package's structure: imports flow from lower layers to higher ones only.

Layers (a module may import only from its own layer's allowed set or lower):

    L0  errors, protocol, _proc, _version, _shm
    L1  serialization, transport, cores
    L2  capture, _jobs, scheduler, worker, launchers/*
    L3  _mapping, _dispatch
    L4  cluster
    L5  __init__

The worker, which runs on every host, must never import host-only code.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

pytestmark = pytest.mark.timeout(60)

PACKAGE = ROOT / "sockpool"
LAYER = {
    "errors": 0, "_version": 0,
    "common": 1, "cores": 1,
    "worker": 2, "capture": 2, "launchers": 2,
    "dispatch": 3,
    "api": 4,
    "__init__": 5, "__main__": 5,
}
HOST_ONLY = {"capture", "launchers", "dispatch", "api"}


def _module_key(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _internal_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            depth_into_subpackage = len(path.relative_to(PACKAGE).parts) - 1
            if node.level > depth_into_subpackage + 1:
                continue
            if node.level == depth_into_subpackage + 1:  # relative to sockpool/
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
            else:  # within the subpackage itself
                found.add(_module_key(path))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sockpool"):
            parts = (node.module or "").split(".")
            found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "sockpool" and len(parts) > 1:
                    found.add(parts[1])
    return found


def test_every_module_has_a_layer() -> None:
    keys = {_module_key(p) for p in PACKAGE.rglob("*.py")}
    assert keys <= set(LAYER), f"modules without a layer: {keys - set(LAYER)}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_imports_only_go_down(path: Path) -> None:
    key = _module_key(path)
    for imported in _internal_imports(path):
        if imported == key:
            continue
        assert LAYER[imported] <= LAYER[key], (
            f"{path.name} (layer {LAYER[key]}) imports {imported} (layer {LAYER[imported]})")
        if key == "worker":
            assert imported not in HOST_ONLY, f"the worker imports host-only {imported}"


def test_worker_process_loads_no_host_code() -> None:
    code = (
        "import sys, sockpool.worker\n"
        f"host_only = {sorted(HOST_ONLY)!r}\n"
        "loaded = [m for m in sys.modules for h in host_only if m.startswith('sockpool.' + h)]\n"
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
