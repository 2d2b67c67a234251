"""Work stealing: a chunk queued on a busy worker is taken back for an idle one.

A worker holds up to ``prefetch`` chunks, so that it never waits a round trip
between short ones (:mod:`.scheduler`).  A chunk queued behind one that turns
out long would wait for it while another worker has nothing to do: the master
asks the busy worker, on its control connection, for the queued chunk back
(RECLAIM), when nothing else waits for a worker, or when what waits came
after it -- then the idle worker is kept for the answer, so that it starts
before them, as from one queue.  (A later chunk already queued on another
worker may still start first: only ``prefetch=1`` queues none.)  Its
watchdog gives it back if the main thread has not taken it yet, and the main
thread then skips it (keeping its function, which the master counts as cached
there), with a RESULT flagged GIVEN_BACK that delivers nothing; otherwise the
chunk runs there as sent.  A chunk given back goes first in line, to the idle
worker.  Exactly one worker runs it either way: the master requeues it only
on the worker's word that it will not run there.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..common import protocol
from ..common.protocol import Flag, Kind
from .jobs import Chunk
from .profiling import Profiler
from .records import WorkerRecord
from .scheduler import Scheduler
from .transport import MasterSocket

#: Given-back chunks remembered until their worker's RESULT for them comes.
GIVEN_BACK_MEMORY = 1024


class Reclaims:
    """The chunks asked back from workers, and those given back (on the I/O thread)."""

    def __init__(self, scheduler: Scheduler, master: MasterSocket, profiler: Profiler) -> None:
        self.scheduler = scheduler
        self.master = master
        self.profiler = profiler
        #: Workers a RESULT came from since the last look: they may have nothing left to run.
        self.freed: set[int] = set()
        self._workers_seen = 0
        self._asked: dict[int, int] = {}  # chunk id -> the worker asked for it
        self._given: dict[int, bytes] = {}  # chunk id -> its function's digest

    def ask(self, workers: dict[int, WorkerRecord], now: float) -> float | None:
        """Ask back a queued chunk for each worker freed since the last look (each
        worker when workers came or went); return until when a worker is kept for
        one, the earliest, if one is."""
        scheduler = self.scheduler
        changed = len(scheduler.in_flight) != self._workers_seen
        if self.freed or changed:
            among, self.freed = (scheduler.workers if changed else self.freed), set()
            self._workers_seen = len(scheduler.in_flight)
            # An ask whose chunk its worker no longer holds was answered by a RESULT
            # (or the worker is gone): it no longer serves an idle worker.
            self._asked = {chunk_id: worker_id for chunk_id, worker_id in self._asked.items()
                           if chunk_id in scheduler.in_flight.get(worker_id, {})}
            scheduler.kept = {worker_id: kept for worker_id, kept in scheduler.kept.items()
                              if kept[0] in self._asked and kept[1] > now
                              and not scheduler.load(worker_id)}
            self._ask_for_the_free(workers, now, among, changed)
        return min((until for _, until in scheduler.kept.values() if until > now), default=None)

    def _ask_for_the_free(self, workers: dict[int, WorkerRecord], now: float,
                          among: Iterable[int], recount: bool) -> None:
        """A chunk for each idle worker ``among`` these: when chunks wait here, only one
        queued behind a long chunk that came before them, the idle worker kept for it
        meanwhile; else any queued chunk (``recount``: asks still out count as served)."""
        scheduler = self.scheduler
        free = scheduler.free_for_the_queue(among)
        if not free:
            return
        if scheduler.has_waiting():
            for worker_id, chunk in scheduler.queued_behind(stuck_at=now):
                if chunk.id not in self._asked and scheduler.came_before_the_queue(chunk):
                    scheduler.keep(free.pop(), chunk.id, now)
                    self._ask(workers, worker_id, chunk)
                    if not free:
                        return
            return
        kept = {chunk_id for chunk_id, _ in scheduler.kept.values()}
        wanted = len(free) - (len(self._asked.keys() - kept) if recount else 0)
        for worker_id, chunk in scheduler.queued_behind():
            if wanted <= 0:
                return
            if chunk.id not in self._asked:
                self._ask(workers, worker_id, chunk)
                wanted -= 1

    def _ask(self, workers: dict[int, WorkerRecord], worker_id: int, chunk: Chunk) -> None:
        self._asked[chunk.id] = worker_id
        self.master.send(workers[worker_id].control_identity,
                         [protocol.header(Kind.RECLAIM, 0, chunk.job.id, chunk.id)])

    def answered(self, record: WorkerRecord, head: protocol.Header) -> bool:
        """A worker's answer: a chunk it gave back goes first in line again (True).
        Either way, a worker kept for it may take what waits."""
        self._asked.pop(head.ident, None)
        self.scheduler.release(head.ident)
        if not head.flags & Flag.GIVEN_BACK:
            return False  # it had started it: its RESULT will come
        chunk = self.scheduler.take_back(record.id, head.ident)
        if chunk is None:
            return False
        self.profiler.taken_back(chunk)
        self._given[chunk.id] = chunk.job.function.digest
        if len(self._given) > GIVEN_BACK_MEMORY:
            del self._given[next(iter(self._given))]
        return True

    def skipped(self, record: WorkerRecord, head: protocol.Header) -> None:
        """A worker's RESULT for a chunk it skipped as given back (which may come
        before its answer, on the other connection): nothing to deliver; a
        function it found stale is sent anew next time."""
        digest = self._given.pop(head.ident, None)
        if digest is None:  # its answer is still on the way: the chunk is still held
            held = self.scheduler.in_flight.get(record.id, {}).get(head.ident)
            digest = held.job.function.digest if held is not None else None
        if digest is not None and head.flags & Flag.STALE_FUNCTION:
            self.master.send(record.data_identity, record.functions.uncache(digest))
