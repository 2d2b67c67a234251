"""The Slurm reaper: if the master dies, it cancels the cluster's job and removes its directory.

Not imported by the master: :mod:`sockpool.launchers.slurm_job` runs this
file's source with ``python -c`` as a process of its own, in a session of its
own (the terminal's Ctrl-C is the master's), with the arguments ``SCANCEL
DIRECTORY``.  Its stdin is a pipe from the master, which writes one order a line::

    job 4211    sbatch accepted the job array 4211
    done        the master cancelled the job and removed the directory itself

When stdin ends without ``done`` the master is gone (the kernel closes a dead
process's end of the pipe, even after SIGKILL): the reaper runs ``scancel``
on the job, if one was submitted, and removes the private directory (the
workers' configuration files and logs).  It imports only the standard library,
so it starts in a few milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable

#: How long the directory may resist removal: on NFS, a log slurmstepd still
#: holds open lingers as a ``.nfs*`` file until the job's processes have ended.
REMOVE_FOR = 60.0


def read_orders(lines: Iterable[bytes]) -> tuple[str | None, bool]:
    """The job id the master reported (if any), and whether it said ``done``."""
    job = None
    for line in lines:
        word, _, value = line.decode("utf-8", "replace").strip().partition(" ")
        if word == "job" and value:
            job = value
        elif word == "done":
            return job, True
    return job, False


def reap(scancel: str, job: str | None, directory: str) -> None:
    """Cancel the job, then remove the directory (retrying while files are still held)."""
    if job is not None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):  # the directory goes anyway
            subprocess.run([scancel, job], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60, check=False)
    deadline = time.monotonic() + REMOVE_FOR
    while True:
        shutil.rmtree(directory, ignore_errors=True)
        if not os.path.lexists(directory) or time.monotonic() > deadline:
            return
        time.sleep(1.0)


def main(argv: list[str]) -> None:
    """``SCANCEL DIRECTORY``: wait on stdin for the master's orders, reap if it dies."""
    scancel, directory = argv
    job, done = read_orders(sys.stdin.buffer)
    if not done:
        reap(scancel, job, directory)


if __name__ == "__main__":
    main(sys.argv[1:])
