"""What a worker's tasks left running in its process group ends with it.

A worker leads a session of its own, so every process its tasks start is in
its process group unless it moves to another.  A worker that ends cleanly
sends SIGTERM to what it finds below it (``worker/children.py``); one that
dies (``os._exit``, a segfault, a kill, its time limit) cannot, and its
children pass to init, out of the tree's reach, but still in its group.  So
its parent -- the master for a local worker, the host's agent for an ssh one
(``worker/agent.py``) -- sends the group SIGTERM as it reaps the worker --
first, while the worker is a zombie, whose pid no other process can have, nor
so the group's id -- and, as the cluster closes, SIGKILL to any member that
outlived a second of it, as a batch system ends a job's processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping

from .proc import stat_fields

#: Seconds the processes left in a worker's group get after SIGTERM at the close.
KILL_GRACE = 1.0

#: Groups noted before those of which nothing is left are forgotten.
GROUPS_KEPT = 256

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def ended_unreaped(pid: int) -> bool | None:
    """Whether our child ``pid`` has ended and is not reaped yet (a zombie); None
    where that cannot be told (no ``waitid``, or reaped elsewhere already)."""
    if not hasattr(os, "waitid"):  # (not on every Unix): left to the worker itself
        return None
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return None


def terminate_group(leader: int) -> int:
    """SIGTERM the process group of ``leader``, a zombie; return when, in clock
    ticks since boot (as ``/proc`` gives a process's start)."""
    with contextlib.suppress(OSError):
        os.killpg(leader, signal.SIGTERM)
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * _TICKS)


def note_ended(groups: dict[int, int], leader: int) -> None:
    """SIGTERM the group of ``leader``, a zombie, and note when in ``groups``
    (forgetting, once there are many, those of which nothing is left)."""
    groups[leader] = terminate_group(leader)
    if len(groups) > GROUPS_KEPT:  # a long-lived cluster that recycles its workers
        for group in [group for group in groups if not _exists(group)]:
            del groups[group]


def end_lingering(groups: Mapping[int, int], grace: float = KILL_GRACE) -> None:
    """SIGTERM, then after ``grace`` SIGKILL, what is left of the process groups
    whose leaders ended: ``groups`` maps a group's id to when its leader ended
    (:func:`terminate_group`).  A group is still the worker's if a member started
    by then (its id is not free while it has members); then every member goes,
    those forked since too.  One that ended (a zombie init has not reaped) is gone."""
    if not any(_exists(group) for group in groups):
        return
    running = _processes()
    original = {group for group, start in running.values() if start <= groups.get(group, -1)}
    members = {pid: start for pid, (group, start) in running.items() if group in original}
    for pid in members:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while members and time.monotonic() < deadline:
        time.sleep(0.02)
        members = {pid: start for pid, start in members.items() if _started(pid) == start}
    for pid, start in members.items():
        if _started(pid) == start:  # (still the same process)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _processes() -> dict[int, tuple[int, int]]:
    """Each running process (zombies left out): pid -> (its group, its start in ticks)."""
    found: dict[int, tuple[int, int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if name.isdigit() and (read := _stat(int(name))) is not None:
            found[int(name)] = read
    return found


def _started(pid: int) -> int | None:
    """When process ``pid`` started, in ticks since boot; None if it is not running."""
    read = _stat(pid)
    return None if read is None else read[1]


def _stat(pid: int) -> tuple[int, int] | None:
    """(group, start in ticks) of a running process, from ``/proc/<pid>/stat``."""
    fields = stat_fields(pid)
    if fields is None or len(fields) < 20 or fields[0] == b"Z":  # state, ppid, pgrp, ..., start
        return None
    return int(fields[2]), int(fields[19])


def _exists(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
