"""What a local worker's tasks left running in its process group ends with it.

A local worker leads a session of its own, so every process its tasks start
is in its process group unless it moves to another.  A worker that ends
cleanly sends SIGTERM to what it finds below it (``worker/children.py``); one
that dies (``os._exit``, a segfault, a kill) cannot, and its children pass to
init, out of the tree's reach, but still in its group.  So the master sends
the group SIGTERM as it reaps the worker -- first, while the worker is a
zombie, whose pid no other process can have, nor so the group's id -- and,
as the cluster closes, SIGKILL to any member that outlived a second of it,
as a batch system ends a job's processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping

#: Seconds the processes left in a worker's group get after SIGTERM at the close.
KILL_GRACE = 1.0


def ended_unreaped(pid: int) -> bool:
    """Whether our child ``pid`` has ended and is not reaped yet (a zombie)."""
    if not hasattr(os, "waitid"):  # (not on every Unix): left to the worker itself
        return False
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return False


def terminate_group(leader: int) -> float:
    """SIGTERM the process group of ``leader``, a zombie; return when (``time.time()``)."""
    with contextlib.suppress(OSError):
        os.killpg(leader, signal.SIGTERM)
    return time.time()


def end_lingering(groups: Mapping[int, float], grace: float = KILL_GRACE) -> None:
    """SIGTERM, then after ``grace`` SIGKILL, what is left of the process groups
    whose leaders ended: ``groups`` maps a group's id to when its leader ended.
    A process counts only if it started before then (the id is free since)."""
    if not any(_exists(group) for group in groups):
        return
    import psutil  # only when something was left: 10 ms of imports

    members = []
    for process in psutil.process_iter(["create_time"]):
        with contextlib.suppress(OSError, psutil.Error):
            ended = groups.get(os.getpgid(process.pid))
            if ended is not None and process.info["create_time"] <= ended:
                process.terminate()
                members.append(process)
    _, left = psutil.wait_procs(members, timeout=grace)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()


def _exists(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
