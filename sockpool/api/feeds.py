"""Cutting a map's input into chunks: all at once, as each is sent, or as the input comes.

``par_map`` and ``Executor.map`` serialize every chunk before sending any
(:class:`EagerFeed`); ``Pool.map`` sends each chunk as soon as it is serialized
(:class:`SlicedFeed`); ``imap`` reads its input lazily, while the window has room,
sending each chunk before it reads on and sizing chunks from the measured task
time, the items' size and how fast the input comes (:class:`LazyFeed`).
:func:`~.mapping.stream_blocks` takes chunks from a feed while its window has room.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ..capture.payload import Packer, Store
from ..common import codec
from ..common.shm import carried_bytes
from ..dispatch.jobs import Chunk, StreamJob
from .pace import MapTimes, TaskPace

#: imap sizes chunks so that one takes about this long to compute.
TARGET_CHUNK_SECONDS = 0.02
#: A chunk that took longer to read and serialize is handed to the I/O thread
#: before the next is made (Pool.map, imap); handing over wakes each thread once.
HAND_OVER_AFTER_SECONDS = 0.0001
MAX_CHUNKSIZE = 100_000
#: ... and holds at most about this many bytes of arguments or of results, so that
#: the window of chunks in flight (and an ordered stream's backlog) bounds memory
#: whatever the items' size.
MAX_CHUNK_BYTES = 1 << 20
#: ... and waits at most about this long for its input: a slow producer's items
#: go out as they come, not once a chunk sized for fast tasks has filled.
MAX_INPUT_SECONDS = 0.01


def eager_chunks(job: StreamJob, items: Sequence[Any], chunksize: int, packer: Packer
                 ) -> list[Chunk]:
    """Serialize every chunk of a list now (CaptureError names the first bad item)."""
    return [
        job.chunk(start, len(part), packer.arguments(part, start))
        for start in range(0, len(items), chunksize)
        for part in (items[start:start + chunksize],)
    ]


def static_chunks(job: StreamJob, items: Sequence[Any], workers: list[int],
                  chunksize: int | None, packer: Packer) -> list[Chunk]:
    """Contiguous equal chunks (one per worker unless ``chunksize``; one per task with
    a time limit) pinned round-robin to the workers, in id order, as R's ``parLapply``
    does: the assignment itself is deterministic.  A chunk whose worker is lost may
    move to another."""
    size = chunksize or (1 if job.timeout else math.ceil(len(items) / len(workers)))
    chunks = eager_chunks(job, items, size, packer)
    for position, chunk in enumerate(chunks):
        chunk.pinned = workers[position % len(workers)]
    job.movable = True
    return chunks


class EagerFeed:
    """All chunks are ready; the first call hands them all out."""

    #: The input was read whole before any chunk was cut: reading it cannot fail here.
    error: Exception | None = None
    #: Whether the caller should hand the chunks over before it goes on (see SlicedFeed).
    hand_over = False

    def __init__(self, chunks: list[Chunk], times: MapTimes | None = None) -> None:
        self._chunks = chunks
        self.exhausted = not chunks
        self._times = times

    def take(self) -> list[Chunk]:
        """Every chunk: they were all made before the map began."""
        chunks, self._chunks = self._chunks, []
        self.exhausted = True
        return chunks

    def measured(self, chunk: Chunk, seconds: float, tasks: int, result_bytes: int = 0
                 ) -> None:
        """Eager chunks are already cut: the time of its ``tasks`` is kept for the next map."""
        if self._times is not None:
            self._times.add(seconds, tasks)


class SlicedFeed:
    """A list cut and serialized one chunk at a time, each sent before the next is
    made, so that workers start while the master still serializes.

    ``Pool.map``'s way, as multiprocessing's task thread pickles while it feeds:
    an argument that cannot travel raises when its chunk is reached, after the
    chunks before it were sent (the map's job is then cancelled).
    """

    #: The input is a list: reading it cannot fail here.
    error: Exception | None = None

    def __init__(self, job: StreamJob, items: Sequence[Any], chunksize: int, packer: Packer,
                 times: MapTimes | None = None) -> None:
        self._job = job
        self._times = times
        self._items = items
        self._size = chunksize
        self._packer = packer
        self._next_index = 0
        self.exhausted = not items
        self.hand_over = False

    def take(self) -> list[Chunk]:
        """The next chunk: it is sent before the one after is made."""
        began = time.perf_counter()
        start = self._next_index
        part = self._items[start:start + self._size]
        self._next_index += len(part)
        self.exhausted = self._next_index >= len(self._items)
        chunk = self._job.chunk(start, len(part), self._packer.arguments(part, start))
        # Serializing the next chunk will hold the GIL about as long, which keeps the
        # I/O thread from sending this one: hand it over first, where that costs less.
        self.hand_over = (not self.exhausted
                          and time.perf_counter() - began > HAND_OVER_AFTER_SECONDS)
        return [chunk]

    def measured(self, chunk: Chunk, seconds: float, tasks: int, result_bytes: int = 0
                 ) -> None:
        """The chunk size is fixed: the time of its ``tasks`` is kept for the next map."""
        if self._times is not None:
            self._times.add(seconds, tasks)


def _until_error(items: Iterator[Any], errors: list[Exception]) -> Iterator[Any]:
    """``items``, ending (the error kept in ``errors``) where reading them raises."""
    try:
        for item in items:  # noqa: UP028 (yield from would close the caller's iterator)
            yield item
    except Exception as exc:  # KeyboardInterrupt and the like still stop the map at once
        errors.append(exc)
        del errors  # no cycle: the exception's traceback holds this frame


class LazyFeed:
    """Reads input only when the window has room; sizes chunks from measured task times.

    When reading the input raises, or an item cannot be serialized, the items
    before it (a partial chunk included) still run; ``error`` is then that
    exception, for :func:`stream_blocks` to raise once their results are out.
    """

    def __init__(self, job: StreamJob, items: Iterator[Any], chunksize: int | None,
                 packer: Packer, store: Store | None = None, first_size: int = 1,
                 pace: TaskPace | None = None, most: int | None = None) -> None:
        """``first_size``: the first chunk's (as :mod:`.pace` knows the function's
        tasks); ``pace``: where each chunk's time is told, for the next map;
        ``most``: the most tasks a chunk sized here may hold."""
        self._job = job
        self._store = store
        self._errors: list[Exception] = []
        self._items = _until_error(items, self._errors)
        self._fixed = chunksize
        self._size = chunksize or first_size
        self._most = most
        self._pace = pace
        self._packer = packer
        self._next_index = 0
        self._stopped = False  # at an item that cannot be serialized
        self._item_bytes = 0.0  # an item's pickled size, lately
        self._result_bytes = 0.0  # a result's, lately
        self._item_wait = 0.0  # seconds the input took to give an item, lately
        self.exhausted = False
        self.hand_over = False

    @property
    def error(self) -> Exception | None:
        """The exception reading the input raised, if it did."""
        return self._errors[0] if self._errors else None

    def _next_size(self) -> int:
        """The next chunk's size: as timed, within the byte and input-wait bounds."""
        size = self._size
        if self._fixed is None:
            if largest := max(self._item_bytes, self._result_bytes):
                size = min(size, int(MAX_CHUNK_BYTES / largest))
            if self._item_wait:
                size = min(size, int(MAX_INPUT_SECONDS / self._item_wait))
            if self._most is not None:
                size = min(size, self._most)
        return max(1, size)

    def take(self) -> list[Chunk]:
        """The next chunk: it is sent before the input is read on, as the input may
        wait for it (none once the input is exhausted)."""
        began = time.perf_counter()
        part = [] if self._stopped else list(itertools.islice(self._items, self._next_size()))
        if part:
            self._item_wait = (time.perf_counter() - began) / len(part)
        try:
            frames = self._packer.arguments(part, self._next_index, copy_buffers=True,
                                            store=self._store) if part else None
        except Exception as exc:
            self._errors.insert(0, exc)  # before an input error further on, if any
            self._stopped = True
            bad = codec.first_unpicklable(part, self._packer.serializer)
            part = part[:bad[0]] if bad is not None else []
            try:
                frames = self._packer.arguments(part, self._next_index, copy_buffers=True,
                                                store=self._store) if part else None
            except Exception:  # they travel alone, not together: none of them runs
                frames = None
        if frames is None:
            self.exhausted = True
            return []
        chunk = self._job.chunk(self._next_index, len(part), frames)
        self._next_index += len(part)
        self._item_bytes = sum(map(carried_bytes, frames)) / len(part)
        self.hand_over = time.perf_counter() - began > HAND_OVER_AFTER_SECONDS
        return [chunk]

    def measured(self, chunk: Chunk, seconds: float, tasks: int, result_bytes: int = 0
                 ) -> None:
        """Grow (at most doubling) or shrink the chunk size toward the target duration,
        ``seconds`` being the time of ``tasks`` of it (and note how large its results
        were, per task: see :meth:`_next_size`)."""
        if result_bytes:  # (a chunk that failed whole carries none)
            self._result_bytes = result_bytes / chunk.count
        if seconds <= 0 or tasks < 1:  # failed whole
            return
        if self._pace is not None:
            self._pace.record(self._job.function.digest, seconds, tasks)
        if self._fixed is not None:
            return
        per_task = seconds / tasks
        ideal = int(TARGET_CHUNK_SECONDS / per_task)
        self._size = max(1, min(ideal, 2 * self._size, MAX_CHUNKSIZE))


Feed = EagerFeed | SlicedFeed | LazyFeed
