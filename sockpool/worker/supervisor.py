"""A batch job's worker, supervised: ``python -m sockpool.worker --config-file C --exit-report R``.

A Slurm worker has no host agent to read its progress page once it ends (as
:mod:`.agent` does on ssh hosts), and no way to the master but its own
sockets.  So the batch script runs this small parent instead: it makes the
page, starts the worker with it (the worker dies with it), waits, and writes
how the worker ended, with what its page and result log hold, to ``R`` in the
cluster's private directory, on a file system both ends see.  The master reads
it when the job element ends (:func:`sockpool.common.progress_log.read_exit_report`),
as it reads an ssh agent's exit report.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

from ..common.config import WorkerConfig
from ..common.proc import (
    STACKS_SIGNAL,
    explain_kill,
    memory_cgroup,
    note_inherited_peak,
    oom_kills,
    reap,
)
from . import progress


def supervise(config: WorkerConfig, report_path: str) -> int:
    """Run the worker as a child, then write its exit report; the worker's exit code."""
    try:
        page: int | None = progress.make_page()
    except (AttributeError, OSError):  # no memfd here: the report says how it ended only
        page = None
    config = config.replace(watch_stdin=True, parent_pid=os.getpid(), progress_fd=page)
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "sockpool.worker"], stdin=subprocess.PIPE,
                               pass_fds=() if page is None else (page,))
    note_inherited_peak(process)
    assert process.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        process.stdin.write(config.to_json().encode() + b"\n")
        process.stdin.flush()
    # scancel signals every process of the step; the worker's own handling decides.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The signal for the worker's stack (a task past its time limit), which ends the
    # worker as it is written: it must not end this process first, whose death would
    # kill the worker before it wrote (a handler, not SIG_IGN, which the worker would
    # inherit: it would write its stack and not end).
    signal.signal(STACKS_SIGNAL, lambda *_: None)
    cgroup = memory_cgroup(process.pid)
    kills = oom_kills(cgroup)
    while (status := reap(process)) is None:
        time.sleep(0.05)
    report = {"status": status, "how": explain_kill(process.pid, status,
                                                    getattr(process, "peak_bytes", None),
                                                    cgroup, kills, started)}
    if page is not None:
        report.update(progress.report_fields(page))
        os.close(page)
    _write_report(report_path, report)
    return status if status >= 0 else 128 - status


def _write_report(path: str, report: dict[str, object]) -> None:
    """Write the report whole or not at all (the master may look at any moment)."""
    partial = f"{path}.partial"
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as stream:
            json.dump(report, stream)
        os.replace(partial, path)
    except OSError as exc:
        print(f"sockpool worker: cannot write its exit report: {exc}", file=sys.stderr)

