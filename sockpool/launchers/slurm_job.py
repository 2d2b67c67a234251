"""One cluster's Slurm job array: its private directory, reaper, job id and elements' states.

A :class:`~sockpool.launchers.slurm.SlurmLauncher` makes a fresh
:class:`SlurmJob` for each cluster it serves, so one launcher runs clusters
one after another (a notebook cell run again).  The job's private directory
(mode 0700, on a file system the nodes share) holds each worker's
configuration file until the worker reads and deletes it, and the workers'
logs.  The directory and the reaper (:mod:`.slurm_reaper`) come first, so
that whatever happens after — sbatch refusing the job, the master killed —
nothing is left behind: :meth:`SlurmJob.close` removes the directory, and the
reaper does if the master dies first.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

from ..common.config import WorkerConfig
from ..common.proc import STACKS_SIGNAL, read_stacks, read_tail, stacks_beside
from ..common.progress_log import ExitReport, read_exit_report
from ..errors import LaunchError
from .base import WorkerProcess

#: How often the job's state is read with squeue.
STATE_POLL_INTERVAL = 0.5
#: States after which an array element runs no more.
FINAL_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT"})


@functools.cache
def reaper_source() -> str:
    """The reaper's program text, run with ``python -c``.

    Read as a file, not imported: the master never runs it.
    """
    return Path(__file__).with_name("slurm_reaper.py").read_text(encoding="utf-8")


class SlurmWorkerProcess(WorkerProcess):
    """One element of the job array: watched through squeue, stopped with scancel."""

    host_known = False  # the node is known once its HELLO names it
    replaceable = False  # (SlurmJob.add_worker: none once the job is submitted)
    #: (scancel's signal travels through slurmctld and slurmd: milliseconds; the file
    #: is read whether or not squeue, read every STATE_POLL_INTERVAL, says it ended)
    stacks_wait = 0.3

    def __init__(self, job: SlurmJob, worker_id: int, index: int) -> None:
        self.worker_id = worker_id
        self.index = index
        self.host = "slurm"
        self._job = job
        self.command = "sbatch --parsable (job array, see SlurmLauncher.batch_script())"
        self._cancelled_pending = False  # cancelled before it ever ran: nothing to wait for

    @property
    def pid(self) -> int:
        return 0  # its HELLO names it

    @property
    def element(self) -> str:
        return f"{self._job.job_id or '(not submitted)'}_{self.index}"

    def _state(self) -> tuple[str, str]:
        return self._job.states.get(self.index, ("PENDING", ""))

    def poll(self) -> int | None:
        if self._job.submit_error is not None:
            return 1
        state, _ = self._state()
        if state not in FINAL_STATES:
            return 1 if self._cancelled_pending else None
        return 0 if state == "COMPLETED" else 1

    def queued(self) -> bool:
        return self._job.submit_error is None and self._state()[0] == "PENDING"

    def exit_status(self) -> str:
        if self._job.submit_error is not None:
            return "its job was not submitted"
        ended = f"Slurm job {self.element} ended: {self.status_note()}"
        report = self._exit_report()
        if report is not None:  # as its supervisor on the node saw it: a signal, say
            return f"{ended}; its worker: {report.how}"
        return ended

    def progress_report(self) -> tuple[bytes, bytes] | None:
        report = self._exit_report()
        return (report.page, report.log) if report is not None and report.page else None

    def _exit_report(self) -> ExitReport | None:
        """What the worker's supervisor wrote when it ended (see sockpool.worker.supervisor)."""
        return read_exit_report(os.path.join(self._job.directory,
                                             f"worker-{self.index}.exit.json"))

    def status_note(self) -> str:
        state, reason = self._state()
        described = state + (f" ({reason})" if reason and reason not in ("None", "(null)")
                             else "")
        return described if state in FINAL_STATES else f"Slurm job {self.element} is {described}"

    def terminate(self) -> None:
        self._cancel()

    def kill(self) -> None:
        self._cancel()

    def _cancel(self) -> None:
        if not self.released:
            self.released = True
            self._cancelled_pending = self._state()[0] == "PENDING"
            self._job.cancel(self.index)

    def stderr_tail(self) -> str:
        return read_tail(self._job.log_path(self.index))

    @property
    def _stacks_path(self) -> str:
        return stacks_beside(self._job.log_path(self.index))

    def show_stacks(self) -> bool:
        if self.poll() is not None or not os.path.exists(self._stacks_path):
            return False  # (no file: the worker has not put its handler in place yet)
        self._job.cancel(self.index, STACKS_SIGNAL)
        return True

    def stacks(self) -> str:
        return read_stacks(self._stacks_path)

    def failure(self) -> LaunchError | None:
        return self._job.submit_error


class SlurmJob:
    """The job array of one cluster, from its private directory to its cancellation.

    Args:
        root: where the private directory is made (created 0700 if missing).
        commands: the ``sbatch``, ``squeue`` and ``scancel`` to run.

    Raises:
        LaunchError: the directory or the reaper cannot be made.
    """

    def __init__(self, root: str, commands: Mapping[str, str]) -> None:
        self.commands = dict(commands)
        try:
            os.makedirs(root, mode=0o700, exist_ok=True)
            self.directory = tempfile.mkdtemp(prefix="slurm-", dir=root)  # mode 0700
        except OSError as exc:
            raise LaunchError(
                f"cannot make the job's private directory in {root}: {exc}") from exc
        self.job_id: str | None = None
        self.submit_error: LaunchError | None = None
        self.states: dict[int, tuple[str, str]] = {}
        self.workers: list[SlurmWorkerProcess] = []
        #: Set once :meth:`close` has finished: the launcher may serve another cluster.
        self.closed = threading.Event()
        self.closing = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        argv = [sys.executable, "-c", reaper_source(), self.commands["scancel"], self.directory]
        try:
            # A session of its own: the terminal's Ctrl-C is the master's, not the reaper's.
            self._reaper = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                            stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise LaunchError(f"cannot start the Slurm job's reaper: {exc}",
                              command=" ".join(argv[:2])) from exc

    @property
    def submitted(self) -> bool:
        """sbatch was run (whether or not it accepted the job)."""
        return self.job_id is not None or self.submit_error is not None

    def add_worker(self, worker_id: int, config: WorkerConfig) -> SlurmWorkerProcess | None:
        """Write one more worker's configuration file (mode 0600); None once submitted."""
        if self.submitted or self.closing:
            return None  # a lost Slurm worker is not replaced: its tasks retry elsewhere
        index = len(self.workers)
        config = config.replace(  # (the directory is on a file system both ends see)
            stacks_path=stacks_beside(self.log_path(index)))
        path = os.path.join(self.directory, f"worker-{index}.json")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            stream.write(config.to_json() + "\n")
        worker = SlurmWorkerProcess(self, worker_id, index)
        self.workers.append(worker)
        return worker

    def log_path(self, index: int) -> str:
        """Where the array's element ``index`` writes its output (``--output``)."""
        return os.path.join(self.directory, f"worker-{index}.log")

    def submit(self, script: str) -> None:
        """Hand the batch script to ``sbatch --parsable``; a refusal is :attr:`submit_error`."""
        argv = [self.commands["sbatch"], "--parsable"]
        try:
            done = subprocess.run(argv, input=script, capture_output=True, text=True,
                                  timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.submit_error = LaunchError(f"cannot run sbatch: {exc}", command=" ".join(argv))
            return
        if done.returncode != 0:
            self.submit_error = LaunchError(
                f"sbatch refused the job (exit {done.returncode}): {done.stderr.strip()}",
                command=" ".join(argv), returncode=done.returncode,
                stderr_tail=done.stderr.strip())
            return
        self.job_id = done.stdout.strip().split(";")[0]
        self._tell_reaper(f"job {self.job_id}\n")
        self._poller = threading.Thread(target=self._watch, name="sockpool-squeue", daemon=True)
        self._poller.start()

    def _watch(self) -> None:
        """Keep :attr:`states` current from squeue (the I/O thread reads it)."""
        seen: set[int] = set()
        while not self._stop.wait(STATE_POLL_INTERVAL):
            assert self.job_id is not None
            try:
                listing = subprocess.run(
                    [self.commands["squeue"], "-h", "-r", "-t", "all", "-j", self.job_id,
                     "-o", "%K|%T|%r|%N"], capture_output=True, text=True, timeout=30,
                    check=False)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if listing.returncode != 0:
                continue
            states: dict[int, tuple[str, str]] = {}
            for line in listing.stdout.splitlines():
                parts = line.split("|")
                if len(parts) >= 3 and parts[0].isdigit():
                    states[int(parts[0])] = (parts[1], parts[2])
            for index in seen - set(states):  # gone from squeue: it ended long ago
                previous = self.states.get(index, ("", ""))[0]
                if previous not in FINAL_STATES:
                    states[index] = ("COMPLETED" if previous == "COMPLETING" else "ENDED",
                                     "no longer listed by squeue")
                else:
                    states[index] = self.states[index]
            seen |= set(states)
            self.states = {**self.states, **states}

    def cancel(self, index: int | None = None, signum: int | None = None) -> None:
        """scancel one element, or the whole job; or send one element's processes
        ``signum`` (``--full``: not only the batch step's first, the supervisor)."""
        if self.job_id is None:
            return
        target = self.job_id if index is None else f"{self.job_id}_{index}"
        options = [] if signum is None else [f"--signal={int(signum)}", "--full"]
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run([self.commands["scancel"], *options, target], capture_output=True,
                           timeout=30, check=False)

    def close(self) -> None:
        """Cancel the job, stop watching it, remove the directory, dismiss the reaper.

        Calling it again is harmless.  Where the directory cannot be removed
        yet (a log still held open on NFS), the reaper is left to finish that.
        """
        with self._lock:
            if self.closing:
                return
            self.closing = True
        try:
            self.cancel()
            self._stop.set()
            if self._poller is not None:
                self._poller.join(5)
            shutil.rmtree(self.directory, ignore_errors=True)
            self._dismiss_reaper(done=not os.path.lexists(self.directory))
        finally:
            self.closed.set()

    def _tell_reaper(self, order: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # a reaper gone: nothing to tell
            assert self._reaper.stdin is not None
            self._reaper.stdin.write(order.encode())
            self._reaper.stdin.flush()

    def _dismiss_reaper(self, *, done: bool) -> None:
        """End the reaper: told ``done``, or (not done) left to cancel and remove on its own."""
        if done:
            self._tell_reaper("done\n")
        with contextlib.suppress(OSError, ValueError):
            assert self._reaper.stdin is not None
            self._reaper.stdin.close()
        if not done:
            return  # it retries the removal for a while: not ours to wait for
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._reaper.wait(5)
        if self._reaper.poll() is None:
            self._reaper.kill()
            self._reaper.wait()
