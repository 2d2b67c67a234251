"""What every launcher provides: start a worker process, and a handle to watch and stop it.

A launcher renders the command that starts a worker and runs it, handing the
worker its :class:`~sockpool.common.config.WorkerConfig` (the master's
address, the cluster token, its id) as one JSON line over the process's stdin
(or another channel only that worker reads), never on the command line.  The
handle it returns lets the I/O thread notice the process ending and end it.
"""

from __future__ import annotations

import abc
import weakref
from collections.abc import Callable

from ..common.config import WorkerConfig
from ..common.forking import fork_safe_lock
from ..common.proc import describe_exit
from ..errors import LaunchError


class WorkerProcess(abc.ABC):
    """A started worker process (or the local end of the session that runs it)."""

    worker_id: int
    host: str
    command: str
    #: Stopped on the master's request: its place may take a replacement.
    released: bool = False
    #: False where only the worker's HELLO can say which machine it is on.
    host_known: bool = True
    #: It runs on the master's machine: its clock is the master's, and
    #: :meth:`usage` reads its CPU and memory, so where its launcher watches
    #: the process too, its heartbeats need no answer.
    same_host: bool = False

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

    def usage(self) -> tuple[float, int] | None:
        """Its CPU seconds and resident bytes, read by the master itself; None where
        only the worker can say (another machine) or the process has ended."""
        return None

    def stderr_tail(self) -> str:
        """The last lines the process wrote to stderr."""
        return ""

    #: Whether a replacement can take its place once it is lost (not a Slurm job's
    #: element: the job's allocation is what it was).
    replaceable = True

    #: How long, at most, the worker is given after :meth:`show_stacks` to write its
    #: stack and end before it is killed (a signal to its faulthandler: microseconds,
    #: once scheduled; a remote one's agent reports it over the network).
    stacks_wait = 0.2

    def show_stacks(self) -> bool:
        """Have the worker write its main thread's Python stack, which :meth:`stacks`
        reads back once it ended; False where it cannot (its launcher has no way to
        ask it, or it ended)."""
        return False

    def stacks(self) -> str:
        """The stack the worker wrote since :meth:`show_stacks` ("" if none)."""
        return ""

    def queued(self) -> bool:
        """Still waiting for a batch scheduler to start it (its connect clock not running)."""
        return False

    def status_note(self) -> str:
        """Where it stands, in words, for messages about a worker that never connected."""
        return ""

    def failure(self) -> LaunchError | None:
        """Why the worker could not start, when its launcher knows better than its exit."""
        return None

    def exit_status(self) -> str:
        """How the process ended, in words."""
        return describe_exit(self.poll())

    def progress_report(self) -> tuple[bytes, bytes] | None:
        """What the worker's host read of its progress page and result log once it
        ended: ``(page words, log)``; None where the master reads them itself (a
        local worker) or nobody could (see :mod:`sockpool.common.progress_log`)."""
        return None

    def close(self) -> None:
        """Release the handle's resources (after the process ended)."""


class Launcher(abc.ABC):
    """Starts workers for one cluster at a time (:func:`claim`), any number one after another."""

    #: True when the handle's ending is the authoritative sign of a lost worker,
    #: so heartbeat silence alone (a task holding the GIL) does not count.
    watches_processes: bool = True
    #: The transport its workers need (None: the cluster's choice) and, for
    #: TCP, the address the master listens on.
    transport: str | None = None
    listen: str = "127.0.0.1"
    #: How many workers it starts, when it decides (an SSHLauncher's hosts); None: ``n``.
    size: int | None = None
    #: Workers wait in a batch queue: the cluster starts once one is up, not all.
    queues: bool = False
    #: Seconds of silence after which its workers give up on the master, unless the
    #: cluster has a ``heartbeat_timeout``: the worker pool puts one or the other in
    #: each worker's config.  Long where a worker sees the master die by other means.
    default_master_timeout: float = 60.0

    def start_early(self, count: int, workdir: str, *, relay: bool) -> None:
        """Start the processes of the first ``count`` workers before the master listens.

        A cluster calls this first, so that the workers' interpreters import
        their side while the master imports its own.  Each then waits for its
        configuration: the cluster's first ``count`` spawns take them, in
        order, and hand it over.  The default starts nothing (a launcher whose
        workers start elsewhere); a launcher may also decline (a local one, on
        a thread other than the main thread).  What no spawn took, the cluster
        ends with :meth:`stop_early` when it fails to start or closes.

        Args:
            workdir: the cluster's private directory (mode 0700), as in :meth:`prepare`.
            relay: whether the workers' stdout goes to their logs (relayed
                output), not to the master's stdout.
        """

    def stop_early(self) -> None:
        """End, by process id, what :meth:`start_early` started that no spawn took."""

    def prepare(self, workdir: str, bind: Callable[[str], str]) -> None:
        """Called once before the first spawn.

        Args:
            workdir: the cluster's private directory (mode 0700).
            bind: ``bind(interface)`` makes the master listen on one more
                interface (TCP with CURVE) and returns the address to dial there.
        """

    @abc.abstractmethod
    def spawn(self, worker_id: int, config: WorkerConfig) -> WorkerProcess | None:
        """Start one worker, handing it ``config.to_json()`` over its launch channel.

        ``config`` arrives with every default resolved; a launcher adds only
        what it alone knows (:meth:`WorkerConfig.replace`: the address its
        host dials, the parent to watch).

        Returns:
            The worker's handle, or None when the launcher has nowhere to start
            one (a replacement for a host that is gone).

        Raises:
            LaunchError: starting it failed.
        """

    def launched(self) -> None:
        """Called after the first workers were spawned (a batch launcher submits them here)."""

    def close(self) -> None:
        """Release what the launcher holds once every worker is gone (sessions, jobs)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A short description for the cluster's repr."""


#: The launchers serving an open cluster: from its start until its workers are gone.
_serving: weakref.WeakSet[Launcher] = weakref.WeakSet()
_serving_lock = fork_safe_lock()


def claim(launcher: Launcher) -> None:
    """Take ``launcher`` for a cluster about to start; :func:`release` gives it back.

    One launcher serves one cluster at a time: its private directory, early
    processes, sessions or job are that cluster's.

    Raises:
        LaunchError: it serves another cluster that is still open.
    """
    with _serving_lock:
        if launcher in _serving:
            name = type(launcher).__name__
            raise LaunchError(
                f"this {name} still serves an open cluster ({launcher.describe()}); it runs "
                "one cluster at a time. Close that cluster first (cl.close(), or the end of "
                f"its with block), or give this one a {name} of its own")
        _serving.add(launcher)


def release(launcher: Launcher) -> None:
    """The cluster ``launcher`` served has closed (or failed to start)."""
    with _serving_lock:
        _serving.discard(launcher)
