"""Which chunk goes to which worker: pure bookkeeping, no I/O, no threads.

Workers pull: each may hold up to ``prefetch`` chunks (the one it runs and the
ones queued behind it), so a worker never waits on a round trip between two
short chunks, and a fast worker comes back for more sooner than a slow one,
which balances the load.  A worker whose current chunk has run longer than
:data:`PREFETCH_HORIZON`, or whose job's last chunk took longer than that
to run, gets nothing queued behind it: the next chunk waits here for whichever
worker frees up first, rather than behind a long task (queued pairs of long
chunks would leave one worker idle at the end of a map while the other runs
both).
Chunks pinned to a worker (``run_on_all``, ``setup``) go only there, first.
A chunk with a time limit goes only to an idle worker, and nothing is queued
behind it, so that its clock never runs behind another task; so does a chunk of
a job that asks for no prefetch (``Job.prefetch``).  A worker with a quota
(``max_tasks_per_worker``) is given chunks until they add up to it, then only
what is pinned to it: it is retiring.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

from ..common.protocol import RECLAIM_MEMORY
from .jobs import Chunk, Job

#: Prefetch only onto a worker whose oldest chunk was sent less than this long
#: ago (seconds): a round trip is then a negligible gap, and a long task never
#: holds queued work hostage.
PREFETCH_HORIZON = 0.05

#: How long an idle worker is kept for a chunk asked back for it (seconds): the
#: answer takes a round trip, unless a task holding the GIL keeps its worker mute.
KEEP_SECONDS = 0.1


class Scheduler:
    """The queue of chunks waiting for a worker, and what each worker holds."""

    def __init__(self, prefetch: int = 2) -> None:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self.prefetch = prefetch
        self.pending: deque[Chunk] = deque()
        self.pinned: dict[int, deque[Chunk]] = {}
        self.in_flight: dict[int, dict[int, Chunk]] = {}
        self.quota: dict[int, int] = {}  # tasks a worker may still be given, where limited
        #: A quota counts chunks rather than tasks (multiprocessing's maxtasksperchild).
        self.quota_counts_chunks = False
        self._running_since: dict[int, float] = {}  # when a worker's oldest chunk began
        #: Idle workers kept for a chunk asked back for them, which came before what
        #: waits here (:mod:`.reclaims`): worker -> (chunk id, until when).  They take
        #: nothing else meanwhile.
        self.kept: dict[int, tuple[int, float]] = {}

    # -- workers ---------------------------------------------------------------------

    def add_worker(self, worker_id: int, quota: int | None = None) -> None:
        """A worker is ready to take chunks (``quota`` tasks of them, if given)."""
        self.in_flight.setdefault(worker_id, {})
        self.pinned.setdefault(worker_id, deque())
        if quota is not None:
            self.quota[worker_id] = quota

    def retire(self, worker_id: int) -> None:
        """Give a worker no more chunks but those pinned to it."""
        self.quota[worker_id] = 0

    def retiring(self, worker_id: int) -> bool:
        """Whether a worker's quota is used up."""
        return self.quota.get(worker_id, 1) <= 0

    def remove_worker(self, worker_id: int) -> tuple[list[Chunk], list[Chunk]]:
        """Forget a worker; return (chunks it held, chunks pinned to it and not sent)."""
        held = list(self.in_flight.pop(worker_id, {}).values())
        waiting = list(self.pinned.pop(worker_id, ()))
        self.quota.pop(worker_id, None)
        self._running_since.pop(worker_id, None)
        self.kept.pop(worker_id, None)
        return held, waiting

    @property
    def workers(self) -> list[int]:
        """Ids of the workers taking chunks."""
        return list(self.in_flight)

    def load(self, worker_id: int) -> int:
        """How many chunks a worker holds."""
        return len(self.in_flight.get(worker_id, ()))

    # -- chunks ----------------------------------------------------------------------

    def submit(self, chunks: list[Chunk]) -> None:
        """Queue chunks after everything already waiting."""
        for chunk in chunks:
            if chunk.pinned is None:
                self.pending.append(chunk)
            else:
                self.pinned.setdefault(chunk.pinned, deque()).append(chunk)

    def requeue(self, chunk: Chunk) -> None:
        """Put a chunk back at the front of its queue (a retry after its worker was lost,
        a chunk its worker could not run as sent); a pinned one stays its worker's."""
        if chunk.pinned is None:
            self.pending.appendleft(chunk)
        else:
            self.pinned.setdefault(chunk.pinned, deque()).appendleft(chunk)

    def assignments(self, now: float) -> Iterator[tuple[int, Chunk]]:
        """Hand out chunks: every worker gets one before any gets two.

        Args:
            now: the current ``time.monotonic()``, stamped on each chunk sent.

        The caller sends each chunk as it is yielded and must call
        :meth:`unassign` for one it could not send.
        """
        for depth in range(self.prefetch):
            for worker_id, held in self.in_flight.items():
                if len(held) != depth or not (self.pending or self.pinned.get(worker_id)):
                    continue  # (the second: nothing left for it, as _next_for would find)
                if (worker_id in self.kept and not self.pinned.get(worker_id)
                        and now < self.kept[worker_id][1]):
                    continue  # it waits for a chunk asked back for it
                if depth:
                    oldest = next(iter(held.values()))
                    if (now - oldest.sent_at > PREFETCH_HORIZON
                            or _waits_for_an_idle_worker(oldest.job)
                            or oldest.job.chunk_seconds > PREFETCH_HORIZON):
                        continue  # busy with something long or timed: nothing behind it
                chunk = self._next_for(worker_id, queued=depth > 0)
                if chunk is None:
                    continue
                chunk.sent_at = now
                if not held:
                    self._running_since[worker_id] = now
                held[chunk.id] = chunk
                yield worker_id, chunk

    def _next_for(self, worker_id: int, queued: bool) -> Chunk | None:
        """The next chunk for a worker (``queued``: behind the one it runs), or None."""
        # A timed (or unprefetched) chunk waits for an idle worker: its time never
        # runs behind another task.  Looked at for each chunk, after those dropped.
        own = self.pinned.get(worker_id)
        while own:
            if queued and _waits_for_an_idle_worker(own[0].job):
                return None  # (a static map's, with timeout=: what is pinned goes first)
            chunk = own.popleft()
            if chunk.job.start(chunk):
                return chunk
            chunk.job.dropped(chunk)
        if self.retiring(worker_id):
            return None
        while self.pending:
            if queued and _waits_for_an_idle_worker(self.pending[0].job):
                return None
            chunk = self.pending.popleft()
            if chunk.job.start(chunk):
                if worker_id in self.quota:
                    self.quota[worker_id] -= self._cost(chunk)
                return chunk
            chunk.job.dropped(chunk)
        return None

    def _cost(self, chunk: Chunk) -> int:
        """What ``chunk`` takes of a worker's quota."""
        return 1 if self.quota_counts_chunks else chunk.count

    def take_back(self, worker_id: int, chunk_id: int) -> Chunk | None:
        """A worker gave back a chunk it held but had not started (or refused it: see
        ``Flag.MISSING_BUFFERS``): first in line again, and its cost back in the
        worker's quota (None if it no longer holds it)."""
        chunk = self.in_flight.get(worker_id, {}).pop(chunk_id, None)
        if chunk is not None:
            if worker_id in self.quota and chunk.pinned is None:
                self.quota[worker_id] += self._cost(chunk)
            self.requeue(chunk)
        return chunk

    def keep(self, worker_id: int, chunk_id: int, now: float) -> None:
        """Keep an idle worker for a chunk asked back for it, a while."""
        self.kept[worker_id] = (chunk_id, now + KEEP_SECONDS)

    def release(self, chunk_id: int) -> None:
        """The chunk asked back was answered for: its worker may take what waits."""
        self.kept = {worker_id: kept for worker_id, kept in self.kept.items()
                     if kept[0] != chunk_id}

    def free_for_the_queue(self, among: Iterable[int] | None = None) -> list[int]:
        """Idle workers (of ``among``, if given) that would take the next waiting chunk:
        neither kept for a chunk asked back, nor retiring, nor holding a pinned chunk."""
        return [worker_id for worker_id in (self.in_flight if among is None else among)
                if worker_id in self.in_flight and not self.in_flight[worker_id]
                and worker_id not in self.kept and not self.retiring(worker_id)
                and not self.pinned.get(worker_id)]

    def came_before_the_queue(self, chunk: Chunk) -> bool:
        """Whether ``chunk`` came before the next chunk waiting here (if any)."""
        return not self.pending or chunk.id < self.pending[0].id

    def queued_behind(self, stuck_at: float | None = None) -> Iterator[tuple[int, Chunk]]:
        """``(worker, chunk)`` for each chunk queued on a worker behind the one it runs
        and not pinned there, those behind the longest-running chunk first; given
        ``stuck_at`` (a ``time.monotonic()``), only behind one that ran longer than
        :data:`PREFETCH_HORIZON` by then."""
        holders = sorted((worker_id for worker_id, held in self.in_flight.items()
                          if 1 < len(held) < RECLAIM_MEMORY),
                         key=lambda w: self._running_since.get(w, 0.0))
        if stuck_at is not None:
            holders = [worker_id for worker_id in holders
                       if stuck_at - self._running_since.get(worker_id, stuck_at)
                       > PREFETCH_HORIZON]
        for worker_id in holders:
            for chunk in list(self.in_flight[worker_id].values())[1:]:
                if chunk.pinned is None and not chunk.job.cancelled:
                    yield worker_id, chunk

    def has_waiting(self) -> bool:
        """Whether any chunk waits for a worker."""
        return bool(self.pending) or any(self.pinned.values())

    def unassign(self, worker_id: int, chunk: Chunk) -> None:
        """Undo one assignment (the send failed)."""
        self.in_flight.get(worker_id, {}).pop(chunk.id, None)

    def complete(self, worker_id: int, chunk_id: int, now: float | None = None
                 ) -> Chunk | None:
        """A worker returned a chunk (at ``now``, when given: then its job learns how long
        its chunks run); None if it was not held (already written off)."""
        held = self.in_flight.get(worker_id, {})
        chunk = held.pop(chunk_id, None)
        if chunk is not None and now is not None:
            began = self._running_since.get(worker_id, chunk.sent_at)
            chunk.job.chunk_seconds = now - max(began, chunk.sent_at)
            self._running_since[worker_id] = now  # the next one it holds runs from now
        return chunk

    def cancel(self, job: Job) -> tuple[list[Chunk], set[int]]:
        """Drop a job's waiting chunks; return them and the workers running the others."""
        job.cancelled = True
        dropped = [c for c in self.pending if c.job is job]
        self.pending = deque(c for c in self.pending if c.job is not job)
        for worker_id, own in self.pinned.items():
            dropped += [c for c in own if c.job is job]
            self.pinned[worker_id] = deque(c for c in own if c.job is not job)
        running = {worker_id for worker_id, held in self.in_flight.items()
                   if any(c.job is job for c in held.values())}
        return dropped, running

    def drain(self) -> list[Chunk]:
        """Remove and return every chunk not yet sent."""
        chunks = list(self.pending)
        self.pending.clear()
        for own in self.pinned.values():
            chunks += own
            own.clear()
        return chunks

    def idle(self) -> bool:
        """Nothing waiting and nothing running."""
        return (not self.pending and not any(self.pinned.values())
                and not any(self.in_flight.values()))


def _waits_for_an_idle_worker(job: Job) -> bool:
    """A job whose chunks are sent only to a worker running nothing, and have nothing
    queued behind them: one with a time limit, or not to be prefetched."""
    return bool(job.timeout) or not job.prefetch
