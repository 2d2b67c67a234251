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
reads it once and deletes it.  The job is cancelled, and that directory
removed, on ``close()``, at interpreter exit and, through a small reaper
process (:mod:`.slurm_reaper`), when the master dies.

Each cluster gets a job of its own (:class:`~.slurm_job.SlurmJob`: a new
directory, a new job array), so one launcher serves clusters one after
another, as a notebook cell run again does; two open at once are refused.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..common.checks import check_env
from ..common.config import WorkerConfig
from ..errors import LaunchError
from .base import Launcher, WorkerProcess
from .slurm_job import SlurmJob

#: A Slurm worker gives up on a master silent this long (heartbeat_timeout= overrides).
SLURM_MASTER_TIMEOUT = 15.0
#: What a batch script names in place of the private directory while no cluster
#: is open: each cluster makes its own, ``slurm-`` and 8 random characters.
DIRECTORY_PLACEHOLDER = "slurm-XXXXXXXX"
#: A cluster closing on another thread may take this long before the next one starts.
CLOSE_WAIT = 30.0

DEFAULT_TEMPLATE = """\
#!/bin/bash
{directives}
{setup}
{command}
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


class SlurmLauncher(Launcher):
    """Start the workers as one Slurm job array.

    One launcher serves one cluster at a time, and any number one after
    another: each cluster gets a new private directory and a new job.

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
        directory: where, on a file system the nodes share, each cluster
            makes its private directory (``slurm-`` and 8 random characters,
            mode 0700) for the workers' configuration files and logs
            (default: ``~/.sockpool``); that directory is removed on close.
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
        if max_running is not None and (isinstance(max_running, bool) or not isinstance(
                max_running, int) or max_running < 1):
            raise ValueError(f"max_running must be a positive integer or None, "
                             f"not {max_running!r}")
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
            "env": check_env(env), "template": template}
        self.python = python or sys.executable
        self.listen = listen or _host_address()
        #: Where each cluster's private directory is made.
        self.root = directory or os.path.join(os.path.expanduser("~"), ".sockpool")
        self.commands = {"sbatch": sbatch, "squeue": squeue, "scancel": scancel}
        self._job: SlurmJob | None = None  # the current (or last) cluster's job
        self._lock = threading.Lock()

    # -- the current cluster's job (None before the first) --------------------------------

    @property
    def directory(self) -> str | None:
        """The private directory of the current (or last) cluster's job."""
        return self._job.directory if self._job is not None else None

    @property
    def job_id(self) -> str | None:
        """The Slurm job id of the current (or last) cluster, once submitted."""
        return self._job.job_id if self._job is not None else None

    @property
    def submit_error(self) -> LaunchError | None:
        """Why sbatch did not take the current cluster's job, if it did not."""
        return self._job.submit_error if self._job is not None else None

    @property
    def states(self) -> dict[int, tuple[str, str]]:
        """Each array element's Slurm state and reason, by index, as squeue last said."""
        return self._job.states if self._job is not None else {}

    def _open_job(self) -> SlurmJob | None:
        job = self._job
        return job if job is not None and not job.closed.is_set() else None

    # -- the batch script ---------------------------------------------------------------

    def _script_directory(self) -> str:
        job = self._open_job()
        return job.directory if job is not None else os.path.join(self.root,
                                                                   DIRECTORY_PLACEHOLDER)

    def worker_command(self, directory: str | None = None) -> str:
        """What each array element runs (its configuration file named by its index).

        ``directory``: the private directory (default: as :meth:`batch_script` names it).
        """
        directory = shlex.quote(directory or self._script_directory())
        config = directory + "/worker-${SLURM_ARRAY_TASK_ID}.json"
        report = directory + "/worker-${SLURM_ARRAY_TASK_ID}.exit.json"
        return (f"{shlex.quote(self.python)} -m sockpool.worker --config-file {config} "
                f"--exit-report {report}")

    def batch_script(self, workers: int) -> str:
        """The batch script this launcher submits for ``workers`` workers.

        It works before any cluster exists, as a preview: while a cluster is
        open it names that cluster's private directory; otherwise it names a
        placeholder, ``slurm-XXXXXXXX`` under the root (``directory=``, by
        default ``~/.sockpool``), for the directory each cluster makes anew.
        Nothing is created.
        """
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"batch_script needs a positive number of workers, not {workers!r}")
        return self._render(workers, self._script_directory())

    def _render(self, workers: int, directory: str) -> str:
        return render_batch_script(workers=workers, command=self.worker_command(directory),
                                   log_dir=directory, **self.options)

    # -- serving a cluster ----------------------------------------------------------------

    def prepare(self, workdir: str, bind: Callable[[str], str]) -> None:
        """Start a fresh job for a new cluster: a new private directory and its reaper.

        Raises:
            LaunchError: the launcher still serves an open cluster (one job at
                a time), or the directory or the reaper cannot be made.
        """
        with self._lock:
            job = self._job
            if job is not None and not job.closed.is_set() and not (
                    job.closing and job.closed.wait(CLOSE_WAIT)):
                raise LaunchError(
                    f"this SlurmLauncher still serves an open cluster ({self.describe()}); "
                    "it runs one cluster at a time. Close that cluster first (cl.close(), or "
                    "the end of its with block), or give this one a SlurmLauncher of its own")
            self._job = SlurmJob(self.root, self.commands)

    def spawn(self, worker_id: int, config: WorkerConfig) -> WorkerProcess | None:
        if self._job is None:
            raise RuntimeError("SlurmLauncher.prepare() was not called")
        return self._job.add_worker(worker_id, config)  # None once submitted or closed

    def launched(self) -> None:
        """Submit the job array for the workers spawned so far."""
        job = self._open_job()
        if job is None or job.submitted or job.closing or not job.workers:
            return
        job.submit(self._render(len(job.workers), job.directory))

    def cancel(self, index: int | None = None) -> None:
        """scancel one element, or the whole job, of the current cluster."""
        job = self._open_job()
        if job is not None:
            job.cancel(index)

    def close(self) -> None:
        """Cancel the job, stop watching it, dismiss the reaper, remove the directory.

        Calling it again is harmless; the launcher can then serve a new cluster.
        """
        if self._job is not None:
            self._job.close()

    def describe(self) -> str:
        return f"slurm job {self.job_id}" if self.job_id else "slurm"


def _host_address() -> str:
    """This host name's address: what nodes of an HPC cluster dial to reach the login node."""
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
    return "127.0.0.1" if address.startswith("127.") else address
