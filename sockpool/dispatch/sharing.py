"""Large buffers between the master and the workers on its machine, through shared memory.

The master stores a chunk's large argument buffers in one of its segments and
lends it to the worker; a worker's large results arrive as a descriptor of its
segment, which the master maps.  Whoever maps a peer's segment tells it when
the arrays using it are gone (RELEASE), so the segment can be reused.  See
:mod:`sockpool.common.shm` for the segments themselves.  Everything here runs
on the I/O thread, except the releases, which any thread may queue.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from ..common import codec, protocol, shm, shm_reader
from ..common.kept_segments import KeptSegments
from ..common.protocol import Flag
from ..common.shm import SegmentPool, SharedFrame
from ..errors import ClusterClosedError
from .jobs import Chunk, Payload
from .mailbox import Mailbox
from .records import WorkerRecord
from .transport import MasterSocket


class SharedTransfers:
    """The master's side of shared-memory transfers with the workers that qualify."""

    def __init__(self, master: MasterSocket, mailbox: Mailbox,
                 workers: dict[int, WorkerRecord]) -> None:
        self.segments = (SegmentPool() if shm.available() and not shm.disabled_by_environment()
                         else None)
        self.kept = KeptSegments(self.segments) if self.segments is not None else None
        self.any_shared = False  # some worker maps our segments
        self._master = master
        self._mailbox = mailbox
        self._workers = workers
        self._releases: deque[tuple[int, int]] = deque()  # (worker id, serial), any thread
        self.io_thread: threading.Thread | None = None

    def probe(self) -> str | None:
        """The descriptor a worker maps to prove it shares our memory (None: no shared memory,
        as where the system refuses anonymous memory files: old kernels, seccomp filters)."""
        if self.segments is not None:
            try:
                return self.segments.probe()
            except OSError:
                self.segments = self.kept = None
        return None

    def check_hello(self, record: WorkerRecord, probe: object) -> None:
        """A worker's HELLO named its own probe: both ways mapped, it shares our memory."""
        if self.segments is not None and isinstance(probe, str) and shm_reader.check_probe(probe):
            record.shared_memory = self.any_shared = True

    @property
    def store(self) -> Callable[[list[Any]], list[SharedFrame]] | None:
        """Where calls that copy their arguments put large buffers (None: the socket)."""
        return self.kept.frames_for if self.kept is not None and self.any_shared else None

    # -- results from workers --------------------------------------------------------------

    def payload(self, record: WorkerRecord, head: protocol.Header, body: memoryview,
                frames: list[Any]) -> Payload:
        """A RESULT's body and buffers: its frames, or views of the worker's segment.

        Raises:
            SharedMemoryError: the worker's segment cannot be mapped.
        """
        if not head.flags & Flag.SHARED:
            return body, [frame.buffer for frame in frames[2:]]
        if not record.shared_memory or len(frames) != 3:
            raise protocol.ProtocolError("a shared-memory RESULT from a worker without it")
        return body, shm_reader.open_shared(bytes(frames[2].buffer), self._releaser(record.id))

    def _releaser(self, worker_id: int) -> Callable[[int], None]:
        """What a transfer from a worker's segment calls when its arrays die: RELEASE it.

        Releases are queued and sent before the I/O thread runs any command, so
        a worker hears of a result the caller dropped before it gets the
        caller's next task, and can reuse the segment for that task's result.
        """
        transfers = weakref.ref(self)  # a result kept for long must not keep the cluster

        def release(serial: int) -> None:
            this = transfers()
            if this is None:
                return
            this._releases.append((worker_id, serial))
            if threading.current_thread() is not this.io_thread:
                # (a cluster that is gone took its workers and their segments along)
                with contextlib.suppress(ClusterClosedError):
                    this._mailbox.post(this.send_releases)

        return release

    @property
    def releases_waiting(self) -> bool:
        """Whether RELEASEs are queued."""
        return bool(self._releases)

    def send_releases(self) -> None:
        """Tell each worker which of its segments we no longer map."""
        by_worker: dict[int, list[int]] = {}
        while self._releases:
            worker_id, serial = self._releases.popleft()
            by_worker.setdefault(worker_id, []).append(serial)
        for worker_id, serials in by_worker.items():
            record = self._workers.get(worker_id)
            if record is not None and record.alive:
                self._master.send(record.data_identity, [protocol.release_message(serials)])

    def released(self, record: WorkerRecord, body: memoryview) -> None:
        """A worker's RELEASE: it no longer maps those of our segments."""
        if self.segments is not None:
            self.segments.release(protocol.parse_release(body), record.id)

    # -- tasks to workers ------------------------------------------------------------------

    def share(self, record: WorkerRecord, chunk: Chunk, arguments: list[Any], flags: int
              ) -> tuple[list[Any], int]:
        """A chunk's argument buffers for this worker: in shared memory where it maps ours."""
        if self.segments is None or self.kept is None or not arguments:
            return arguments, flags
        if isinstance(arguments[0], SharedFrame):  # stored when the call was made
            if not record.shared_memory:
                return [copy for frame in arguments for copy in self._copies(frame)], flags
        elif record.shared_memory and (
                sum(memoryview(a).nbytes for a in arguments) >= codec.SHARED_MIN_BYTES):
            try:
                arguments = self.kept.frames_for(arguments)
            except OSError:  # out of shared memory: the socket it is
                return arguments, flags
            chunk.frames = [chunk.frames[0], *arguments]  # a retry reuses the segments
        else:
            return arguments, flags
        for frame in arguments:  # (lending a kept segment does nothing: never rewritten)
            self.segments.lend(frame, record.id)
        return arguments, flags | Flag.SHARED

    def _copies(self, frame: SharedFrame) -> list[bytes]:
        assert self.segments is not None and self.kept is not None
        return (self.kept if self.kept.owns(frame) else self.segments).copies(frame)

    def finished(self, chunk: Chunk) -> None:
        """A chunk is done: its segments are free once the worker lets go of them."""
        if len(chunk.frames) > 1 and isinstance(chunk.frames[1], SharedFrame):
            chunk.frames = chunk.frames[:1]

    def forget(self, worker_id: int) -> None:
        """A worker is gone, and its mappings of our segments with it (and ours of its)."""
        if self.segments is not None:
            self.segments.forget(worker_id)
            shm_reader.forget_mappings_of(self._workers[worker_id].pid)

    def trim(self, now: float) -> None:
        """Close segments idle for long, ours and our mappings of the workers'."""
        if self.segments is not None and self.kept is not None:
            self.segments.trim(now)
            self.kept.trim(now)
            shm_reader.trim_mappings(now)

    def close(self) -> None:
        """Close every segment of ours, and forget our mappings of the workers' (no
        I/O thread trims them any more)."""
        if self.segments is not None and self.kept is not None:
            self.segments.close()
            self.kept.close()
            for record in self._workers.values():
                shm_reader.forget_mappings_of(record.pid)
