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
    NoWorkersLeftError,
    RemoteError,
    RemoteTraceback,
    SockpoolError,
    TaskTimeoutError,
    WorkerLostError,
)

if TYPE_CHECKING:
    from .api.cluster import Cluster
    from .api.mp_pool import Pool
    from .api.plan import (
        current_cluster,
        imap,
        par_map,
        par_starmap,
        plan,
        profile,
        run_on_all,
        submit,
    )
    from .api.profile import Profile, TaskRecord
    from .capture.binding import bind_to_env
    from .capture.inspection import CaptureEntry, CaptureReport, inspect_capture
    from .common.rng import task_rng
    from .cores import detect_cores
    from .dispatch.records import WorkerInfo
    from .launchers import LocalLauncher, ManualLauncher, SlurmLauncher, SSHHost, SSHLauncher

__all__ = [
    "CaptureEntry",
    "CaptureError",
    "CaptureReport",
    "Cluster",
    "ClusterClosedError",
    "LaunchError",
    "LocalLauncher",
    "ManualLauncher",
    "NoWorkersLeftError",
    "Pool",
    "Profile",
    "RemoteError",
    "RemoteTraceback",
    "SSHHost",
    "SSHLauncher",
    "SlurmLauncher",
    "SockpoolError",
    "TaskRecord",
    "TaskTimeoutError",
    "WorkerInfo",
    "WorkerLostError",
    "__version__",
    "bind_to_env",
    "current_cluster",
    "detect_cores",
    "imap",
    "inspect_capture",
    "par_map",
    "par_starmap",
    "plan",
    "profile",
    "run_on_all",
    "submit",
    "task_rng",
]

_LAZY = {
    "bind_to_env": ".capture.binding",
    "CaptureEntry": ".capture.inspection",
    "CaptureReport": ".capture.inspection",
    "inspect_capture": ".capture.inspection",
    "Cluster": ".api.cluster",
    "Pool": ".api.mp_pool",
    "plan": ".api.plan",
    "current_cluster": ".api.plan",
    "par_map": ".api.plan",
    "par_starmap": ".api.plan",
    "imap": ".api.plan",
    "submit": ".api.plan",
    "run_on_all": ".api.plan",
    "profile": ".api.plan",
    "Profile": ".api.profile",
    "TaskRecord": ".api.profile",
    "WorkerInfo": ".dispatch.records",
    "detect_cores": ".cores",
    "LocalLauncher": ".launchers",
    "ManualLauncher": ".launchers",
    "SSHHost": ".launchers",
    "SSHLauncher": ".launchers",
    "SlurmLauncher": ".launchers",
    "task_rng": ".common.rng",
}


if not TYPE_CHECKING:  # (to a type checker, a misspelled name is an error, not Any)
    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'sockpool' has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    # What a user may reach: the public names (loaded or not), the submodules
    # loaded, the dunders; not this module's own imports (Any, importlib, ...).
    modules = {name for name, value in globals().items()
               if not name.startswith("_") and getattr(value, "__name__", "") == f"sockpool.{name}"}
    return sorted({*__all__, *modules, *(name for name in globals() if name.startswith("__"))})
