"""Sending chunks to workers (I/O thread only): their TASK messages, and the ACKs
that no TASK carried.

A worker keeps the last RESULT it sent until it hears that the master has it; each
TASK says how many RESULTs came, so an ACK of its own goes only to a worker that
got no TASK in the turn its RESULT came.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..common import protocol, shm
from ..common.protocol import Kind, ack_message
from .function_mirror import forget_message
from .jobs import Chunk
from .pool import WorkerPool
from .profiling import Profiler
from .records import WorkerRecord, WorkerState
from .scheduler import Scheduler
from .sharing import SharedTransfers
from .transport import MasterSocket


class ChunkSender:
    """Hands the scheduler's chunks to their workers.

    Args:
        check_by: told the time by which the I/O loop must check deadlines again
            (a timed chunk's, as it is sent).
    """

    def __init__(self, master: MasterSocket, scheduler: Scheduler, pool: WorkerPool,
                 shared: SharedTransfers, profiler: Profiler,
                 check_by: Callable[[float], None]) -> None:
        self.master = master
        self.scheduler = scheduler
        self.pool = pool
        self.shared = shared
        self.profiler = profiler
        self.check_by = check_by
        self._acks_owed: dict[int, WorkerRecord] = {}  # workers to tell of RESULTs come

    def assign(self) -> None:
        """Send each worker with room the chunks the scheduler gives it."""
        failed: list[tuple[int, Chunk]] = []
        for worker_id, chunk in self.scheduler.assignments(time.monotonic()):
            if not self.send(self.pool.workers[worker_id], chunk):
                failed.append((worker_id, chunk))
        # All back to the front, in order, before a worker is lost: settling it
        # requeues what it holds, so a chunk still held then was queued twice.
        for worker_id, chunk in reversed(failed):
            self.scheduler.unassign(worker_id, chunk)
            self.scheduler.requeue(chunk)
        for worker_id in dict.fromkeys(worker_id for worker_id, _ in failed):
            record = self.pool.workers[worker_id]
            if record.state is WorkerState.READY:
                self.pool.lost(record, self.pool.unreachable(record))

    def send(self, record: WorkerRecord, chunk: Chunk) -> bool:
        """Send one chunk's TASK (and the FORGETs its function's cache needs);
        False if it could not be sent."""
        job = chunk.job
        function = job.function
        fn_inband, fn_buffers, forget_before, forget_after = record.functions.frames(function)
        for old in forget_before:
            self.master.send(record.data_identity, forget_message(old))
        chunk.started_at = None
        if (deadline := job.deadline(chunk)) is not None:  # checked on time, not periodically
            self.check_by(deadline)
        arguments, flags = self.shared.share(record, chunk, chunk.frames[1:], job.flags)
        if record.page_read:  # its page outlives it: its last RESULT is safe there
            flags |= protocol.Flag.PAGE_READ
        if self.profiler.active and chunk is not record.setup_chunk:
            flags |= protocol.Flag.PROFILE
            size = len(fn_inband) + sum(map(shm.carried_bytes, [*fn_buffers, *chunk.frames]))
            self.profiler.sent(chunk, record, size, function.name)
        head = protocol.header(Kind.TASK, flags, job.id, chunk.id)
        first = protocol.task_frame(head, function.digest, chunk.first_index, fn_inband,
                                    len(fn_buffers), chunk.frames[0], job.seed,
                                    record.results_received, chunk.resume, chunk.died_until)
        if sent := self.master.send(record.data_identity, [first, *fn_buffers, *arguments]):
            self._acks_owed.pop(record.id, None)  # this TASK says how many RESULTs came
        for old in forget_after:  # (it uses their buffers)
            self.master.send(record.data_identity, forget_message(old))
        return sent

    def owe_ack(self, record: WorkerRecord) -> None:
        """A RESULT came from a worker that holds a chunk sent before it: it waits
        for word of that RESULT, which its next TASK carries, if one goes out this turn."""
        self._acks_owed[record.id] = record

    def send_acks(self) -> None:
        """ACK the RESULTs no TASK acknowledged this turn (one message less per chunk
        in a stream of short ones: an ACK, then the TASK that says the same)."""
        for record in self._acks_owed.values():
            if record.alive:
                self.master.send(record.data_identity, [ack_message(record.results_received)])
        self._acks_owed.clear()
