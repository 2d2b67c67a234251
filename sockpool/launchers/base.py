"""What every launcher provides: start a worker process, and a handle to watch and stop it.

A launcher renders the command that starts a worker and runs it, handing the
worker its configuration (the master's address, the cluster token, its id)
over the process's stdin, never on the command line.  The handle it returns
lets the I/O thread notice the process ending and end it.
"""

from __future__ import annotations

import abc
from typing import Any

from .._proc import describe_exit


class WorkerProcess(abc.ABC):
    """A started worker process (or the local end of the session that runs it)."""

    worker_id: int
    host: str
    command: str

    @property
    @abc.abstractmethod
    def pid(self) -> int:
        """Process id of the worker (of its launch channel for remote ones)."""

    @abc.abstractmethod
    def poll(self) -> int | None:
        """The exit status once the process ended, else None (never blocks)."""

    def fileno(self) -> int | None:
        """A file descriptor that becomes readable when the process ends, if any."""
        return None

    @abc.abstractmethod
    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM)."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Stop the process now (SIGKILL)."""

    def stderr_tail(self) -> str:
        """The last lines the process wrote to stderr."""
        return ""

    def exit_status(self) -> str:
        """How the process ended, in words."""
        return describe_exit(self.poll())

    def close(self) -> None:
        """Release the handle's resources (after the process ended)."""


class Launcher(abc.ABC):
    """Starts workers for one cluster."""

    #: True when the handle's ending is the authoritative sign of a lost worker,
    #: so heartbeat silence alone (a task holding the GIL) does not count.
    watches_processes: bool = True
    #: The transport its workers need (None: the cluster's choice) and, for
    #: TCP, the address the master listens on.
    transport: str | None = None
    listen: str = "127.0.0.1"

    def prepare(self, workdir: str) -> None:
        """Called once before the first spawn with the cluster's private directory."""

    @abc.abstractmethod
    def spawn(self, worker_id: int, config: dict[str, Any]) -> WorkerProcess:
        """Start one worker, handing it ``config`` over its launch channel.

        ``config["master_timeout"]`` is the silence after which the worker gives
        up on the master; None asks the launcher for its default.
        """

    @abc.abstractmethod
    def describe(self) -> str:
        """A short description for the cluster's repr."""
