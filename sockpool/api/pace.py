"""How long each function's tasks took lately, so that a map of tasks known to be
short is cut into fewer, larger chunks.

Without a chunksize, a list map makes about four chunks per worker
(``multiprocessing.Pool``'s rule), which balances tasks of unknown length.
Each chunk costs a round trip's worth of work on the master, 100-200 µs here:
a map of eight 1 µs tasks on two workers spends almost all of its time on its
eight chunks.  Optimizers and samplers make thousands of such maps of the same
function (``differential_evolution(workers=pool.map)``, emcee).  Once a
function's tasks were timed, a map of it gets chunks of at least
:data:`MIN_CHUNK_SECONDS` of work each, and no chunk larger than a worker's share.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

#: A chunk of tasks known to be short holds at least this much work (seconds):
#: its dispatch then costs a few percent of it.
MIN_CHUNK_SECONDS = 0.002
#: Functions remembered (the least recently timed are forgotten first).
REMEMBERED = 256


class MapTimes:
    """Adds up the times of one map's chunks, and tells its function's pace once
    every chunk was timed (a lock and a dict per chunk would cost the master
    microseconds it spends per chunk)."""

    def __init__(self, pace: TaskPace, digest: bytes, chunks: int) -> None:
        self._pace = pace
        self._digest = digest
        self._chunks = chunks
        self._seconds = 0.0
        self._tasks = 0

    def add(self, seconds: float, tasks: int) -> None:
        """One chunk of ``tasks`` ran in ``seconds`` (0: it failed whole, untimed; no
        tasks: every one of it was settled as its worker died)."""
        if seconds > 0 and tasks > 0:
            self._seconds += seconds
            self._tasks += tasks
        self._chunks -= 1
        if self._chunks == 0:
            self._pace.record(self._digest, self._seconds, self._tasks)


class TaskPace:
    """Per function digest, the seconds a task took, as the workers timed them."""

    def __init__(self) -> None:
        self._seconds: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()  # maps record from their callers' threads

    def record(self, digest: bytes, seconds: float, tasks: int) -> None:
        """A map ran ``tasks`` of the function in ``seconds`` on its workers.

        A slower map counts at once, a faster one only halfway: a function whose
        tasks grew slow is not cut coarsely on the strength of its old pace.
        """
        if tasks < 1 or not seconds > 0:
            return  # failed whole, or not timed
        per_task = seconds / tasks
        with self._lock:
            known = self._seconds.pop(digest, None)
            if known is not None and per_task < known:
                per_task = (per_task + known) / 2
            self._seconds[digest] = per_task
            if len(self._seconds) > REMEMBERED:
                self._seconds.popitem(last=False)

    def chunk_size(self, digest: bytes, items: int, workers: int, usual: int) -> int:
        """Tasks per chunk for a map of ``items`` on ``workers``: ``usual`` unless the
        function's tasks are known to be short enough that chunks of
        :data:`MIN_CHUNK_SECONDS` would be larger (at most one chunk per worker)."""
        with self._lock:
            per_task = self._seconds.get(digest)
        if per_task is None:
            return usual
        filled = math.floor(MIN_CHUNK_SECONDS / max(per_task, 1e-9))
        return max(usual, min(filled, math.ceil(items / max(1, workers))))
