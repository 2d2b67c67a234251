"""sockpool: closure-safe parallel apply over a ZeroMQ socket cluster of Python workers.

::

    from sockpool import Cluster, detect_cores, bind_to_env

    with Cluster(n=detect_cores()) as cl:
        models = cl.par_map(worker, levels)

Importing ``sockpool`` is cheap and has no side effects: the host-side parts
(``Cluster`` and its launchers) load on first use, so that a worker process,
which imports this package too, never pulls them in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    CaptureError,
    ClusterClosedError,
    LaunchError,
    RemoteError,
    SockpoolError,
    TaskTimeoutError,
    WorkerLostError,
)

if TYPE_CHECKING:
    from .binding import bind_to_env
    from .cluster import Cluster, WorkerInfo
    from .cores import detect_cores
    from .inspection import CaptureEntry, CaptureReport, inspect_capture
    from .launchers import LocalLauncher, ManualLauncher, SlurmLauncher, SSHHost, SSHLauncher
    from .rng import task_rng

__all__ = [
    "CaptureEntry",
    "CaptureError",
    "CaptureReport",
    "Cluster",
    "ClusterClosedError",
    "LaunchError",
    "LocalLauncher",
    "ManualLauncher",
    "RemoteError",
    "SSHHost",
    "SSHLauncher",
    "SlurmLauncher",
    "SockpoolError",
    "TaskTimeoutError",
    "WorkerInfo",
    "WorkerLostError",
    "__version__",
    "bind_to_env",
    "detect_cores",
    "inspect_capture",
    "task_rng",
]

_LAZY = {
    "bind_to_env": ".binding",
    "CaptureEntry": ".inspection",
    "CaptureReport": ".inspection",
    "inspect_capture": ".inspection",
    "Cluster": ".cluster",
    "WorkerInfo": ".cluster",
    "detect_cores": ".cores",
    "LocalLauncher": ".launchers",
    "ManualLauncher": ".launchers",
    "SSHHost": ".launchers",
    "SSHLauncher": ".launchers",
    "SlurmLauncher": ".launchers",
    "task_rng": ".rng",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sockpool' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
