"""The processes a worker's tasks started and left running end with the worker.

A task may start processes that outlive it: a ``subprocess.Popen`` never waited
for, or an executor that keeps its workers (loky's, behind a ``joblib.Parallel``
inside the task), whose own exit hooks the worker's ``os._exit`` skips.  The
worker sends each of them SIGTERM as it ends, by pid, as a batch system ends a
job's processes; it does not wait for them (multiprocessing's resource tracker,
which ignores SIGTERM, ends by itself once the worker is gone).  A local worker
the master kills (a time limit, ``restart()``, a close that waited long enough)
cannot: its master does it (``LocalWorkerProcess``), and ends what is left in
the worker's process group however it ended (``common/groups.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal

from ..common.proc import descendants


def end_descendants() -> None:
    """SIGTERM every process below this one (none found: nothing to do)."""
    for pid in descendants(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
