"""How many CPU cores this process may really use (R's ``parallelly::availableCores()``).

Consulted in this order, the smallest count wins:

1. the CPUs this process may run on: Python's own override when it is set
   (``PYTHON_CPU_COUNT=n``, and ``-X cpu_count=n`` on 3.13+, as
   ``os.process_cpu_count()`` reports it), else the CPU affinity mask
   (``os.sched_getaffinity``: taskset, cpusets, a container's CPU list);
2. a cgroup CPU quota (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` /
   ``cpu.cfs_period_us`` in v1), rounded up: Docker's ``--cpus``, Kubernetes
   limits;
3. a scheduler's allocation, from the first of these variables that is set:
   ``SLURM_CPUS_PER_TASK``, ``SLURM_CPUS_ON_NODE`` (Slurm), ``NSLOTS`` (Grid
   Engine), ``PBS_NUM_PPN`` (PBS/Torque).

With ``logical=False`` the result is then divided by the number of hardware
threads per core (hyper-threads do not count), and it is never below 1.

``PYTHON_CPU_COUNT`` is read the same way on every version: on Python 3.13+
through ``os.process_cpu_count()`` (where an invalid value stops the
interpreter at start-up), on 3.10-3.12 here, by 3.13's rule: a positive integer
replaces the affinity count (it may be larger, as it is for
``os.process_cpu_count()``), ``default`` or anything else is ignored.  The
quota and scheduler limits still apply after it.
"""

from __future__ import annotations

import math
import os
import sys

#: Scheduler variables, in the order they are consulted (the first set one counts).
SCHEDULER_VARIABLES = ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE", "NSLOTS", "PBS_NUM_PPN")


def _affinity_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_count_override() -> int | None:
    """``PYTHON_CPU_COUNT`` as Python 3.13 reads it: a positive integer, else no override."""
    try:
        count = int(os.environ.get("PYTHON_CPU_COUNT", ""))
    except ValueError:  # unset, "default", or not a number
        return None
    return count if count > 0 else None


def _process_count() -> int:
    """The CPUs this process may run on: Python's override if set, else its affinity."""
    if sys.version_info >= (3, 13):
        # Honours PYTHON_CPU_COUNT and -X cpu_count; else the affinity mask.
        return os.process_cpu_count() or 1
    override = _cpu_count_override()
    return override if override is not None else _affinity_count()


def _quota_files() -> list[tuple[str, str | None]]:
    """Where this process's CPU quota may be written: its own cgroup first, then the root."""
    try:
        with open("/proc/self/cgroup") as stream:
            lines = stream.read().splitlines()
    except OSError:
        lines = []
    files: list[tuple[str, str | None]] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        path = path.lstrip("/")
        if controllers == "":  # cgroup v2
            for directory in (os.path.join("/sys/fs/cgroup", path), "/sys/fs/cgroup"):
                files.append((os.path.join(directory, "cpu.max"), None))
        elif "cpu" in controllers.split(","):  # cgroup v1, cpu controller
            for mount in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"):
                for directory in (os.path.join(mount, path), mount):
                    files.append((os.path.join(directory, "cpu.cfs_quota_us"),
                                  os.path.join(directory, "cpu.cfs_period_us")))
    return files or [("/sys/fs/cgroup/cpu.max", None)]


def _cgroup_quota() -> float | None:
    """CPUs allowed by the cgroup CPU quota of this process (v2 ``cpu.max``, v1 CFS), if any."""
    for quota_path, period_path in _quota_files():
        try:
            with open(quota_path) as stream:
                fields = stream.read().split()
            if period_path is not None:
                with open(period_path) as stream:
                    fields.append(stream.read().strip())
        except OSError:
            continue
        if len(fields) < 2 or fields[0] in ("max", "-1"):
            continue  # no quota at this level: a parent may still have one
        try:
            return int(fields[0]) / int(fields[1])
        except (ValueError, ZeroDivisionError):
            continue
    return None


def _scheduler_allocation() -> int | None:
    """CPUs a batch scheduler gave this job, from the first variable that is set."""
    for name in SCHEDULER_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                count = int(value.split("(")[0])  # SLURM_CPUS_ON_NODE may read "8(x2)"
            except ValueError:
                continue
            if count > 0:
                return count
    return None


def _sysfs_physical_cores() -> int | None:
    """Distinct cores listed in sysfs, as psutil counts them on Linux (no import needed)."""
    root = "/sys/devices/system/cpu"
    try:
        cpus = [name for name in os.listdir(root) if name[:3] == "cpu" and name[3:].isdigit()]
    except OSError:
        return None
    for leaf in ("core_cpus_list", "thread_siblings_list"):
        cores = set()
        for cpu in cpus:
            try:
                with open(os.path.join(root, cpu, "topology", leaf), "rb") as stream:
                    cores.add(stream.read().strip())
            except OSError:
                continue
        if cores:
            return len(cores)
    return None


def _physical_and_logical() -> tuple[int | None, int | None]:
    """Physical cores and hardware threads of the machine: sysfs, else psutil."""
    physical = _sysfs_physical_cores()
    if physical is not None:
        return physical, os.cpu_count()
    import psutil  # 10 ms of imports, where sysfs does not say

    return psutil.cpu_count(logical=False), psutil.cpu_count(logical=True)


def detect_cores(logical: bool = True) -> int:
    """The number of cores this process may use: at least 1 (see the module docstring).

    Args:
        logical: count hardware threads (True) or physical cores (False).
    """
    count = _process_count()
    quota = _cgroup_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    allocation = _scheduler_allocation()
    if allocation is not None:
        count = min(count, allocation)
    if not logical:
        physical, threads = _physical_and_logical()
        physical, threads = physical or count, threads or count
        per_core = max(1, threads // max(1, physical))
        count = max(1, count // per_core)
    return max(1, count)
