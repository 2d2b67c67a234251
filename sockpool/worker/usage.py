"""What this worker process uses: resident memory and CPU time, read cheaply.

The watchdog reports both with each heartbeat (so the master shows them for
remote workers too); the runner checks memory after a chunk when the cluster
has a ``max_worker_memory``.
"""

from __future__ import annotations

import os
import sys

from ..common.proc import stat_fields

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """This process's resident memory now (Linux), else its peak, in bytes; -1 if unknown."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return -1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def cpu_ticks(pid: int) -> int | None:
    """User and system CPU time of process ``pid``, in clock ticks (Linux), or None."""
    fields = stat_fields(pid)  # (utime and stime are fields 14 and 15 of the file)
    return int(fields[11]) + int(fields[12]) if fields is not None and len(fields) > 12 else None


def is_stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (Ctrl-Z, SIGSTOP, a debugger's breakpoint)."""
    fields = stat_fields(pid)
    return fields is not None and fields[:1] in ([b"T"], [b"t"])


def cpu_seconds() -> float:
    """User and system CPU time of this process."""
    times = os.times()
    return times.user + times.system
