"""A chunk's RESULT message: its values and exceptions, packed so that it always reaches the master.

A result that cannot be pickled fails its own task only; results too large
for one frame the master accepts fail the chunk with a message that says so;
large buffers go through shared memory when the master can map it.  The slices
of a chunk whose results were pickled already, into the worker's progress log
(:mod:`.progress`), travel as those pickles, after the others: each result is
pickled once.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any, NamedTuple

from ..common import codec, protocol, shm, task_errors
from ..common.protocol import Batch, Flag, Kind, TaskTimes
from ..errors import RemoteError

#: The holder of this worker's segments that the master maps.
MASTER = "master"

#: A chunk's failures: (index of the task in the chunk, its packed exception).
Errors = list[tuple[int, bytes]]


class Kept(NamedTuple):
    """The first results of a chunk, pickled already: ``(start, count, frames)`` per
    slice, covering its first ``tasks`` values and first ``errors`` failures."""

    slices: list[tuple[int, int, list[Any]]]
    tasks: int
    errors: int


class ResultPacker:
    """Builds RESULT messages (main thread).

    Args:
        serializer: how values and exceptions are pickled.
        max_frame_bytes: the largest frame the master accepts.
        shared: this worker's segments the master can map, or None.
    """

    def __init__(self, serializer: str, max_frame_bytes: int,
                 shared: shm.SegmentPool | None) -> None:
        self.serializer = serializer
        # The master disconnects a peer that sends a larger frame: refuse to send one.
        self.max_frame_bytes = max_frame_bytes
        self.shared = shared
        #: Adds what this worker knows of a task's exception to it, before it is packed.
        self.explain: Callable[[BaseException], None] | None = None

    def failure(self, exc: BaseException, skip_frames: int = 0) -> bytes:
        """A task's exception, packed for the master (never raises)."""
        try:
            if self.explain is not None:
                self.explain(exc)
            return task_errors.pack_exception(exc, self.serializer, skip_frames, min(
                task_errors.MAX_EXCEPTION_BYTES, self.max_frame_bytes // 4))
        except BaseException as error:  # its __str__ raised SystemExit, say
            problem = RemoteError(codec.describe(exc), f"an exception of type "
                                  f"{codec.describe(exc)} that could not be described: "
                                  f"{codec.describe(error)} while describing it")
            return task_errors.pack_exception(problem, self.serializer)

    def pack(self, head: protocol.Header, flags: int, values: list[Any], errors: Errors,
             seconds: float, batch: Batch | None, times: TaskTimes | None = None,
             kept: Kept | None = None) -> list[Any]:
        """The RESULT frames for the chunk ``head``: ``(values, errors, seconds, batch)``,
        after its task ``times`` when the chunk was profiled.  With slices ``kept``
        already pickled, ``values`` and ``errors`` are the rest, and the slices follow:
        ``(values, errors, seconds, batch, [(start, count, frames), ...])``."""
        def prefix_for(failed: list[int]) -> bytes:
            if times is None:
                return protocol.header(Kind.RESULT, flags, head.job, head.ident)
            # (times.failed holds a task interrupted when its chunk was cancelled)
            return (protocol.header(Kind.RESULT, flags | Flag.PROFILE, head.job, head.ident)
                    + protocol.stamp_block(times._replace(failed=sorted({*times.failed,
                                                                          *failed}))))

        first, first_errors = 0, []
        slices: tuple[list[tuple[int, int, list[pickle.PickleBuffer]]], ...] = ()
        if kept is not None and kept.slices:
            first, first_errors = kept.tasks, errors[:kept.errors]
            values, errors = values[first:], errors[kept.errors:]
            slices = ([(start, count, [pickle.PickleBuffer(frame) for frame in frames])
                       for start, count, frames in kept.slices],)
        store = self.shared.frames_for if self.shared is not None else None
        try:
            frames = codec.dumps((values, errors, seconds, batch, *slices), self.serializer,
                                 prefix=prefix_for([i for i, _ in first_errors + errors]),
                                 store=store)
        except BaseException:  # a result's __reduce__ may raise anything, SystemExit too
            values, errors = self._replace_unpicklable(values, errors, first)
            frames = codec.dumps((values, errors, seconds, batch, *slices), self.serializer,
                                 prefix=prefix_for([i for i, _ in first_errors + errors]),
                                 store=store)
        # The limit is the same whichever way the buffers go: a buffer in shared
        # memory counts as the frame it would be on the socket.
        largest = max(shm.largest_buffer(frame) if isinstance(frame, shm.SharedFrame)
                      else memoryview(frame).nbytes for frame in frames)
        if largest <= self.max_frame_bytes:
            if self.shared is not None and isinstance(frames[-1], shm.SharedFrame):
                frames[0] = protocol.with_flags(frames[0], Flag.SHARED)
                self.shared.lend(frames[-1], MASTER)
        else:
            problem = RemoteError("ValueError", f"the results of this chunk need a frame of "
                                  f"{largest} bytes, more than the cluster's max_message_size "
                                  f"({self.max_frame_bytes} bytes)")
            errors = [(0, self.failure(problem))]
            every = list(range(sum(times.counts))) if times is not None else []
            frames = codec.dumps(([], errors, seconds, batch), self.serializer,
                                 prefix=prefix_for(every))
        return frames

    def _replace_unpicklable(self, values: list[Any], errors: Errors, first: int = 0
                             ) -> tuple[list[Any], Errors]:
        """Fail each task whose result cannot be serialized, keep the others
        (``values`` are the chunk's from ``first`` on)."""
        values = list(values)
        errors = list(errors)
        while (found := _first_unpicklable(values, self.serializer)) is not None:
            index, error = found
            problem = RemoteError(
                codec.describe(error),
                f"the result of this task, a {codec.describe(values[index])}, "
                f"cannot be serialized: {error}",
            )
            values[index] = None
            errors.append((first + index, self.failure(problem)))
        return values, errors


def _first_unpicklable(values: list[Any], serializer: str) -> tuple[int, BaseException] | None:
    """The first value that fails to pickle and why, whatever it raised; None if all pickle."""
    for index, value in enumerate(values):
        try:
            codec.dumps(value, serializer)
        except BaseException as exc:
            return index, exc
    return None
