"""Launchers start worker processes, in the master: locally, by hand, over ssh and on Slurm.

:mod:`.base` is what every launcher provides (:class:`Launcher`, and the
:class:`WorkerProcess` handle the I/O thread watches); each launcher renders
the command that starts a worker as data and hands the worker its
:class:`~sockpool.common.config.WorkerConfig` as one JSON line.
:mod:`.local` (with :mod:`.groups`, which ends what its workers' tasks left
in their process groups) and :mod:`.manual` are one module each; Slurm is :mod:`.slurm`
(the launcher and its batch script), :mod:`.slurm_job` (one cluster's job
array) and :mod:`.slurm_reaper` (cancels it if the master dies, run as
source); ssh is
:mod:`.ssh` (the launcher), :mod:`.ssh_hosts` (hosts and routes),
:mod:`.ssh_session` (one ssh client per host) and :mod:`.ssh_bootstrap` (the
program a host runs first, sent as source; it names the worker side's agent
but never imports it here).

Launchers never import the worker side, the capture or the I/O thread.

May import: ``common``, ``errors``, ``_version``, ``cores``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .base import Launcher, WorkerProcess
from .local import LocalLauncher

if TYPE_CHECKING:
    from .manual import ManualLauncher
    from .slurm import SlurmLauncher, render_batch_script
    from .ssh import SSHLauncher
    from .ssh_hosts import SSHHost

# Loaded on first use: a local cluster's startup need not import them (about 20 ms).
_LAZY = {"ManualLauncher": ".manual", "SlurmLauncher": ".slurm",
         "render_batch_script": ".slurm", "SSHLauncher": ".ssh", "SSHHost": ".ssh_hosts"}

__all__ = ["Launcher", "LocalLauncher", "ManualLauncher", "SSHHost", "SSHLauncher",
           "SlurmLauncher", "WorkerProcess", "render_batch_script"]


if not TYPE_CHECKING:  # (to a type checker, a misspelled name is an error, not Any)
    def __getattr__(name: str) -> Any:
        """The launchers a local cluster does not need, imported when first named."""
        if name in _LAZY:
            return getattr(importlib.import_module(_LAZY[name], __name__), name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
