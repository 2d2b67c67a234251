"""How many CPU cores this process may really use."""

from __future__ import annotations

import math
import os

import psutil


def _affinity_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cgroup_quota() -> float | None:
    """CPUs allowed by a cgroup v2 (``cpu.max``) or v1 (``cfs_quota_us``) quota, if any."""
    candidates = [
        ("/sys/fs/cgroup/cpu.max", None),
        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
    ]
    for quota_path, period_path in candidates:
        try:
            with open(quota_path) as stream:
                fields = stream.read().split()
            if period_path is not None:
                with open(period_path) as stream:
                    fields.append(stream.read().strip())
        except OSError:
            continue
        if len(fields) < 2 or fields[0] in ("max", "-1"):
            return None
        try:
            return int(fields[0]) / int(fields[1])
        except (ValueError, ZeroDivisionError):
            return None
    return None


def detect_cores(logical: bool = True) -> int:
    """The number of cores this process may use: at least 1.

    Consulted in order, the smallest wins: the CPU affinity mask of this
    process, a cgroup CPU quota (containers), and, with ``logical=False``, the
    number of physical cores (hyper-threads not counted).

    Args:
        logical: count hardware threads (True) or physical cores (False).
    """
    count = _affinity_count()
    quota = _cgroup_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    if not logical:
        physical = psutil.cpu_count(logical=False) or count
        threads = psutil.cpu_count(logical=True) or count
        per_core = max(1, threads // max(1, physical))
        count = max(1, count // per_core)
    return max(1, count)
