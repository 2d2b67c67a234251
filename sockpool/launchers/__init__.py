"""Launchers start worker processes: locally, by hand, over ssh (and on Slurm)."""

from .base import Launcher, WorkerProcess
from .local import LocalLauncher
from .manual import ManualLauncher
from .ssh import SSHHost, SSHLauncher

__all__ = ["Launcher", "LocalLauncher", "ManualLauncher", "SSHHost", "SSHLauncher",
           "WorkerProcess"]
