"""Launchers start worker processes: locally, and (later) over ssh or Slurm."""

from .base import Launcher, WorkerProcess
from .local import LocalLauncher
from .manual import ManualLauncher

__all__ = ["Launcher", "LocalLauncher", "ManualLauncher", "WorkerProcess"]
