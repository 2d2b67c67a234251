"""Launchers start worker processes: locally, by hand, over ssh (and on Slurm)."""

from .base import Launcher, WorkerProcess
from .local import LocalLauncher
from .manual import ManualLauncher
from .slurm import SlurmLauncher, render_batch_script
from .ssh import SSHLauncher
from .ssh_hosts import SSHHost

__all__ = ["Launcher", "LocalLauncher", "ManualLauncher", "SSHHost", "SSHLauncher",
           "SlurmLauncher", "WorkerProcess", "render_batch_script"]
