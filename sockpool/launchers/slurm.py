"""Workers as a Slurm job array (clustermq's and future.batchtools' setting, for sockpool).

One ``sbatch --parsable`` submits a job array with one element per worker.
An array rather than one job of n tasks, because its elements are scheduled
one by one: workers start as soon as resources free up (the cluster grows as
they connect), and a node that fails or an element cancelled from outside
takes only its own worker with it.  ``scancel JOBID`` ends them all.

The batch script is rendered first, as data (:func:`render_batch_script`), so
it can be read, tested and templated.  Batch jobs have no stdin from the
master, so each worker's configuration (its CURVE keys) waits in a file of
mode 0600 in a private directory on a file system the nodes share; the worker
reads it once and deletes it.  The job is cancelled on ``close()``, at
interpreter exit and, through a small reaper process that outlives nothing,
when the master dies.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..common.config import WorkerConfig
from ..common.proc import read_tail
from ..errors import LaunchError
from .base import Launcher, WorkerProcess

#: A Slurm worker gives up on a master silent this long (heartbeat_timeout= overrides).
SLURM_MASTER_TIMEOUT = 15.0
#: How often the job's state is read with squeue.
STATE_POLL_INTERVAL = 0.5
#: States after which an array element runs no more.
FINAL_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT"})

DEFAULT_TEMPLATE = """\
#!/bin/bash
{directives}
{setup}
{command}
"""

#: Cancels the job if the master dies: it waits on its stdin, a pipe from the master.
REAPER = """\
import subprocess, sys
if sys.stdin.buffer.read() != b"done":
    subprocess.run(sys.argv[1:], check=False, timeout=60)
"""


def render_batch_script(
    *,
    workers: int,
    command: str,
    log_dir: str,
    job_name: str = "sockpool",
    partition: str | None = None,
    time: str | None = None,
    memory: str | None = None,
    cpus_per_worker: int = 1,
    account: str | None = None,
    max_running: int | None = None,
    extra_sbatch: Sequence[str] = (),
    setup_lines: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    template: str = DEFAULT_TEMPLATE,
) -> str:
    """The batch script of a job array of ``workers`` workers (a pure function).

    ``command`` runs once per element; ``${SLURM_ARRAY_TASK_ID}`` in it names
    the element.  ``template`` may place ``{directives}`` (the ``#SBATCH``
    lines), ``{setup}`` (module loads, venv activation, exports) and
    ``{command}`` as it likes.
    """
    throttle = f"%{max_running}" if max_running else ""
    directives = [f"--job-name={job_name}", f"--array=0-{workers - 1}{throttle}", "--ntasks=1",
                  f"--cpus-per-task={cpus_per_worker}",
                  f"--output={log_dir}/worker-%a.log"]
    for flag, value in (("partition", partition), ("time", time), ("mem", memory),
                        ("account", account)):
        if value is not None:
            directives.append(f"--{flag}={value}")
    lines = [f"#SBATCH {d}" for d in directives]
    lines += [line if line.startswith("#SBATCH") else f"#SBATCH {line}" for line in extra_sbatch]
    exports = {**{name: str(cpus_per_worker) for name in (
        "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}, **(env or {})}
    setup = [*setup_lines, *(f"export {name}={shlex.quote(value)}"
                             for name, value in exports.items())]
    return template.format(directives="\n".join(lines), setup="\n".join(setup),
                           command=f"exec {command}")


class SlurmWorkerProcess(WorkerProcess):
    """One element of the job array: watched through squeue, stopped with scancel."""

    host_known = False  # the node is known once its HELLO names it

    def __init__(self, launcher: SlurmLauncher, worker_id: int, index: int) -> None:
        self.worker_id = worker_id
        self.index = index
        self.host = "slurm"
        self._launcher = launcher
        self.command = "sbatch --parsable (job array, see SlurmLauncher.batch_script())"

    @property
    def pid(self) -> int:
        return 0  # its HELLO names it

    @property
    def element(self) -> str:
        return f"{self._launcher.job_id or '(not submitted)'}_{self.index}"

    def _state(self) -> tuple[str, str]:
        return self._launcher.states.get(self.index, ("PENDING", ""))

    def poll(self) -> int | None:
        if self._launcher.submit_error is not None:
            return 1
        state, _ = self._state()
        if state not in FINAL_STATES:
            return None
        return 0 if state == "COMPLETED" else 1

    def queued(self) -> bool:
        return self._launcher.submit_error is None and self._state()[0] == "PENDING"

    def exit_status(self) -> str:
        if self._launcher.submit_error is not None:
            return "its job was not submitted"
        return f"Slurm job {self.element} ended: {self.status_note()}"

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
            self._launcher.cancel(self.index)

    def stderr_tail(self) -> str:
        return read_tail(os.path.join(self._launcher.directory or "", f"worker-{self.index}.log"))

    def failure(self) -> LaunchError | None:
        return self._launcher.submit_error


class SlurmLauncher(Launcher):
    """Start the workers as one Slurm job array.

    Args:
        partition: ``--partition``.
        time: ``--time`` (the job's time limit, e.g. ``"01:00:00"``).
        memory: ``--mem`` per worker (``"4G"``).
        cpus_per_worker: ``--cpus-per-task``; also each worker's
            ``OMP_NUM_THREADS`` and friends (brms's threads per chain).
        account: ``--account``.
        max_running: at most this many workers run at once (``--array=0-N%k``).
        extra_sbatch: more ``#SBATCH`` lines (``["--exclusive"]``).
        setup_lines: shell lines run before the worker (``module load``,
            ``source venv/bin/activate``).
        template: a batch script template with ``{directives}``, ``{setup}``
            and ``{command}`` (see :func:`render_batch_script`).
        python: the interpreter on the nodes (default: this one; jobs share
            the file system and inherit the submitter's environment).
        env: extra environment variables for the workers.
        listen: the address of this machine the nodes dial (default: this
            host name's address).
        directory: a private directory on a file system the nodes share, for
            the workers' configuration files and logs (default: under
            ``~/.sockpool/``); removed on close.
        job_name: ``--job-name``.
    """

    watches_processes = False  # a node can vanish silently
    transport = "tcp"
    queues = True
    default_master_timeout = SLURM_MASTER_TIMEOUT

    def __init__(
        self,
        *,
        partition: str | None = None,
        time: str | None = None,
        memory: str | None = None,
        cpus_per_worker: int = 1,
        account: str | None = None,
        max_running: int | None = None,
        extra_sbatch: Sequence[str] = (),
        setup_lines: Sequence[str] = (),
        template: str = DEFAULT_TEMPLATE,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        listen: str | None = None,
        directory: str | None = None,
        job_name: str = "sockpool",
        sbatch: str = "sbatch",
        squeue: str = "squeue",
        scancel: str = "scancel",
    ) -> None:
        if isinstance(cpus_per_worker, bool) or not isinstance(cpus_per_worker, int) or (
                cpus_per_worker < 1):
            raise ValueError(f"cpus_per_worker must be a positive integer, "
                             f"not {cpus_per_worker!r}")
        for name, lines in (("extra_sbatch", extra_sbatch), ("setup_lines", setup_lines)):
            if isinstance(lines, str):
                raise TypeError(f"{name} must be a list of lines, not a string")
        for key in ("{directives}", "{command}"):
            if key not in template:
                raise ValueError(f"template= must contain {key}")
        self.options: dict[str, Any] = {
            "job_name": job_name, "partition": partition, "time": time, "memory": memory,
            "cpus_per_worker": cpus_per_worker, "account": account, "max_running": max_running,
            "extra_sbatch": list(extra_sbatch), "setup_lines": list(setup_lines),
            "env": dict(env or {}), "template": template}
        self.python = python or sys.executable
        self.listen = listen or _host_address()
        self._root = directory
        self.commands = {"sbatch": sbatch, "squeue": squeue, "scancel": scancel}
        self.directory: str | None = None
        self.job_id: str | None = None
        self.submit_error: LaunchError | None = None
        self.states: dict[int, tuple[str, str]] = {}
        self._pending: list[SlurmWorkerProcess] = []
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._reaper: subprocess.Popen[bytes] | None = None

    def prepare(self, workdir: str, bind: Callable[[str], str]) -> None:
        root = self._root or os.path.join(os.path.expanduser("~"), ".sockpool")
        os.makedirs(root, mode=0o700, exist_ok=True)
        self.directory = tempfile.mkdtemp(prefix="slurm-", dir=root)
        os.chmod(self.directory, 0o700)

    def worker_command(self) -> str:
        """What each array element runs (its configuration file named by its index)."""
        assert self.directory is not None
        config = shlex.quote(self.directory) + "/worker-${SLURM_ARRAY_TASK_ID}.json"
        return f"{shlex.quote(self.python)} -m sockpool.worker --config-file {config}"

    def batch_script(self, workers: int) -> str:
        """The batch script this launcher submits for ``workers`` workers."""
        assert self.directory is not None
        return render_batch_script(workers=workers, command=self.worker_command(),
                                   log_dir=self.directory, **self.options)

    def spawn(self, worker_id: int, config: WorkerConfig) -> WorkerProcess | None:
        if self.job_id is not None or self.submit_error is not None or self.directory is None:
            return None  # a lost Slurm worker is not replaced: its tasks retry elsewhere
        index = len(self._pending)
        path = os.path.join(self.directory, f"worker-{index}.json")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            stream.write(config.to_json() + "\n")
        worker = SlurmWorkerProcess(self, worker_id, index)
        self._pending.append(worker)
        return worker

    def launched(self) -> None:
        """Submit the job array for the workers spawned so far."""
        if self.job_id is not None or self.submit_error is not None or not self._pending:
            return
        script = self.batch_script(len(self._pending))
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
        self._reaper = subprocess.Popen(
            [sys.executable, "-c", REAPER, self.commands["scancel"], self.job_id],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
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

    def cancel(self, index: int | None = None) -> None:
        """scancel one element, or the whole job."""
        if self.job_id is None:
            return
        target = self.job_id if index is None else f"{self.job_id}_{index}"
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run([self.commands["scancel"], target], capture_output=True,
                           timeout=30, check=False)

    def close(self) -> None:
        """Cancel the job, stop watching it, dismiss the reaper, remove the files."""
        self.cancel()
        self._stop.set()
        if self._poller is not None:
            self._poller.join(5)
        if self._reaper is not None:
            with contextlib.suppress(OSError):
                assert self._reaper.stdin is not None
                self._reaper.stdin.write(b"done")
                self._reaper.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._reaper.wait(5)
            if self._reaper.poll() is None:
                self._reaper.kill()
                self._reaper.wait()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def describe(self) -> str:
        return f"slurm job {self.job_id}" if self.job_id else "slurm"


def _host_address() -> str:
    """This host name's address: what nodes of an HPC cluster dial to reach the login node."""
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
    return "127.0.0.1" if address.startswith("127.") else address
