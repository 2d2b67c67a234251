"""Workers you start yourself, on any machine: the launcher prints what to run.

R's ``makeCluster(..., manual = TRUE)``.  The master listens on loopback TCP
with CURVE, or on the address you give it (an interface of this machine the
workers can reach; never 0.0.0.0 unless you say so).  For each worker it
prints the command to run and one line to paste into that command's stdin:
the address, the cluster's token and the worker's own keys.  They go over
stdin, never a command line.  Such workers are judged by heartbeat, and end
themselves when the master falls silent.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from ..common.config import WorkerConfig
from .base import Launcher, WorkerProcess


class ManualWorkerProcess(WorkerProcess):
    """A worker started by hand elsewhere: no process here to watch or signal."""

    def __init__(self, worker_id: int, command: str) -> None:
        self.worker_id = worker_id
        self.host = "manual"
        self.host_known = False  # its HELLO names the machine
        self.command = command

    @property
    def pid(self) -> int:
        return 0  # unknown until its HELLO says

    def poll(self) -> int | None:
        # Asked to stop (SHUTDOWN was sent first), it is gone as far as we can know.
        return 0 if self.released else None

    def terminate(self) -> None:
        self.released = True

    def kill(self) -> None:
        self.released = True


class ManualLauncher(Launcher):
    """Print how to start each worker by hand (R's ``manual = TRUE``).

    Args:
        listen: the address the master listens on, an interface of this machine
            the workers can reach (default: loopback only).
        python: an interpreter to name in the printed command
            (``PYTHON -m sockpool worker``); by default the command is the
            ``sockpool worker`` script that installing sockpool provides.
        output: a function given the instructions' text (default: written to this
            process's stderr); for a file, its ``write``.
    """

    watches_processes = False
    transport = "tcp"

    def __init__(self, listen: str = "127.0.0.1", python: str | None = None,
                 output: Callable[[str], Any] | None = None) -> None:
        if output is not None and not callable(output):
            raise TypeError(f"ManualLauncher(output=...) takes a function given the text "
                            f"(for a file, its write), not {type(output).__name__}")
        self.listen = listen
        self.python = python
        self._output = output

    def spawn(self, worker_id: int, config: WorkerConfig) -> ManualWorkerProcess:
        command = f"{self.python} -m sockpool worker" if self.python else "sockpool worker"
        line = config.to_json()
        text = (f"sockpool: start worker {worker_id} by hand: on the worker's machine run\n"
                f"    {command}\n"
                f"and paste this one line into it (it holds that worker's keys; keep it "
                f"private):\n{line}\n")
        if self._output is not None:
            self._output(text)
        else:
            print(text, file=sys.stderr, flush=True)
        return ManualWorkerProcess(worker_id, command)

    def describe(self) -> str:
        return f"manual, listening on {self.listen}"
