"""Running one chunk of tasks: load its function and arguments, call, collect, reply.

A chunk is a ``run_on_all``/``submit`` call (``Flag.CALL``), or a slice of a
map, its items called as ``fn(item)`` or ``fn(*item)`` (``Flag.MAP_STAR``).
A seeded chunk runs its tasks one by one, each from its own stream
(:mod:`sockpool.common.rng`).  A task's exception fails that task only, unless
the map stops at the first error (``Flag.STOP_ON_ERROR``).  While the tasks
run, what they write is relayed (:mod:`.relay`), and the watchdog may
interrupt them (:mod:`.state`): the chunk then answers "cancelled".
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any

from ..common import codec, protocol, rng, shm, shm_reader
from ..common.config import WorkerConfig
from ..common.progress_log import TO_THE_END, WHOLE_RESULT
from ..common.protocol import Batch, Flag, Kind, TaskTimes
from ..errors import add_note
from . import forks
from .functions import FunctionCache
from .held_buffers import MissingBuffer
from .progress import Progress
from .relay import WorkerRelay
from .results import Errors, Kept, ResultPacker
from .state import Interrupted, WorkerState
from .usage import resident_bytes

#: Sends a message's frames on the data connection (its owner, the main thread).
Send = Callable[[list[Any]], None]

#: A map's tasks run in slices, the progress page marked before each: a slice
#: doubles while the last one took less than this (seconds), so slow tasks run
#: one per slice (their progress is exact) and trivial ones pay almost nothing.
#: Finished results are kept in the page's log once at least this long has
#: passed since they last were (and tasks follow): a slow task's at once.
SLICE_SECONDS = 0.001
#: Profiled, tasks that take this long (seconds, on average over a slice) run one
#: per slice, so each is timed on its own: a straggler among them is named, at a
#: cost of a few microseconds a task (2-4% on tasks of 100 us).  Shorter ones share
#: their slice's time.
TIMED_ALONE_SECONDS = 100e-6


def add_span(times: TaskTimes, start: float, count: int) -> None:
    """Note that ``count`` tasks ran from ``start`` until now (``time.time()``)."""
    times.spans.append(start)
    times.spans.append(time.time())
    times.counts.append(count)


def add_interrupted(times: TaskTimes, start: float, finished: int, offset: int) -> None:
    """Note a span whose ``finished`` tasks ran, then the one at ``offset`` (in the
    chunk's run) was interrupted: that one is the span's last, and failed."""
    add_span(times, start, finished + 1)
    times.failed.append(offset)


def _not_as_named(digest: bytes, inband: Any, buffers: list[Any], digests: list[bytes]) -> bool:
    """Whether a function payload received with large buffers is not what its digest
    names: a buffer the master's caller changed in place between the digest and the
    send (the master then sends it anew, rather than let it be cached stale here)."""
    from ..common.digest import function_digest  # only for payloads that carry buffers

    return function_digest(inband, buffers, digests) != digest


def stop_iteration_of_a_task() -> StopIteration:
    """What a map reports for a task that raised StopIteration: ``map()`` took it for
    the end of its items and dropped it (a loop in Python that kept it would add
    10-20 ns to every task of every map)."""
    exc = StopIteration()
    add_note(exc, "sockpool: the task raised StopIteration (or a subclass of it), which "
                  "ended Python's map() over its chunk: its arguments and traceback are lost")
    return exc


class ChunkRunner:
    """Runs the chunks of TASK messages and builds their RESULT (main thread).

    Args:
        config: the worker's configuration (serializer, relay, frame limit).
        state: the phase shared with the watchdog, which may interrupt a chunk.
        functions: the task functions and exports.
        shared: this worker's segments the master can map, or None.
        released: where the serials of the master's segments whose mappings
            here are gone are queued (any thread appends).
        send: sends a message's frames ahead of the RESULT (STARTED).
        progress: the page that tells the master how far a chunk got, and keeps
            what it finished, or None.
        send_frame: sends one OUTPUT frame with no Python code between the call and
            libzmq (see :func:`.link.frame_sender`); by default through ``send``
            (a runner of tests, with no socket).
    """

    def __init__(self, config: WorkerConfig, state: WorkerState, functions: FunctionCache,
                 shared: shm.SegmentPool | None, released: deque[int], send: Send,
                 progress: Progress | None = None,
                 send_frame: Callable[[Any], None] | None = None) -> None:
        self.state = state
        self.progress = progress
        self._skip = 0  # tasks of the running chunk settled before it came here
        self._stale = False  # its function arrived unlike its digest (Flag.STALE_FUNCTION)
        # Its results kept in the progress log so far: tasks and errors, and the
        # pickled slices, which its RESULT carries as they are (see _keep).
        self._kept = self._kept_errors = 0
        self._kept_slices: list[tuple[int, int, list[Any]]] = []
        self._kept_at = 0.0  # perf_counter() when they last were
        self._keeping = False
        self._careful_until = 0  # the chunk's tasks before it run one at a time, each kept
        self._cancelled = False  # the last RESULT says its chunk was cancelled
        self._times: TaskTimes | None = None  # when its tasks ran, if it is profiled
        self.functions = functions
        self.serializer = config.serializer
        self.max_memory = config.max_memory
        self.results = ResultPacker(config.serializer, config.max_frame_bytes, shared)
        self.results.explain = functions.explain  # (a NameError for an export not loaded)
        self._released = released
        self._send = send
        self._chunk: protocol.Header | None = None  # the chunk running now, for its OUTPUT
        self._outputs_sent = 0  # its OUTPUT messages so far
        self.relay: WorkerRelay | None = None
        if config.relay != "off":
            prefix = f"[worker {config.worker_id}] " if config.relay_prefix else ""
            self.relay = WorkerRelay(self._pack_output,
                                     send_frame or (lambda frame: send([frame])),
                                     config.log_level,
                                     live=config.relay == "live", prefix=prefix)

    def run(self, head: protocol.Header, body: memoryview, buffers: list[Any],
            keep_last_result: bool = False) -> list[Any]:
        """Run one chunk of tasks and build its RESULT message.

        ``keep_last_result``: the master may not have the last RESULT yet; it
        stays in the progress log (see :meth:`Progress.begin`).
        """
        values: list[Any] = []
        errors: Errors = []
        flags = head.flags
        given_back = not self.state.take(head.ident)  # then only its function is kept
        # Given back: loaded (its function stays cached, its shared arguments are let
        # go), never begun in the page, never run.
        progress = self.progress if not given_back else None
        if progress is not None:  # loading may run code: count it as the tasks' own
            progress.begin(head.ident, keep_last_result)
        loading = "the chunk"  # what a failure to load names: the tasks never ran
        try:
            task = protocol.parse_task(body)
            rng.before_chunk(seeded=task.seed is not None)
            self._skip = task.skip
            self._kept = self._kept_errors = 0
            self._kept_slices = []
            self._kept_at = perf_counter()
            self._keeping = progress is not None and not flags & Flag.CALL
            self._careful_until = task.careful_until
            if progress is not None and task.skip:  # settled elsewhere before it came here
                progress.mark(head.ident, task.skip, TO_THE_END)
            split = task.fn_buffers
            fn_buffers: list[Any] = []
            digests: list[bytes] = []
            try:
                if split:
                    fn_buffers, digests = self.functions.held.resolve(buffers[:split])
            except MissingBuffer:
                self.functions.refuse(task.digest)
                raise
            loading = "the task's function"
            try:
                fn = self.functions.load(task.digest, task.fn_inband, fn_buffers, digests)
            except MissingBuffer:  # (refused, not failed: see below)
                raise
            except BaseException:  # not cached here: the master is to send it again
                self._stale = True
                raise
            self._stale = bool(split and len(task.fn_inband)) and _not_as_named(
                task.digest, task.fn_inband, fn_buffers, digests)
            loading, arguments = "the tasks' arguments", buffers[split:]
            if flags & Flag.SHARED:  # descriptors of segments: the buffers in them
                release = self._released.append
                arguments = [view for frame in arguments
                             for view in shm_reader.open_shared(bytes(frame), release)]
            items = self.functions.shared.loads_arguments(task.arguments, arguments)
            del arguments
            if task.skip and not flags & Flag.CALL:
                items = items[task.skip:]
            if given_back:
                return self._result(head, Flag.CANCELLED | Flag.GIVEN_BACK, [], [])
        except MissingBuffer:  # nothing runs: it comes again with the buffer
            if flags & Flag.SHARED:  # (lent to this worker, never mapped: the master's again)
                self._released.extend(shm.serial_of(bytes(frame))
                                      for frame in buffers[task.fn_buffers:])
            flags = Flag.CANCELLED | Flag.MISSING_BUFFERS
            return self._result(head, flags | (Flag.GIVEN_BACK if given_back else 0), [], [])
        except BaseException as exc:  # a payload that cannot be loaded here
            if given_back:  # (its copy sent elsewhere says so)
                return self._result(head, Flag.CANCELLED | Flag.GIVEN_BACK, [], [])
            add_note(exc, f"sockpool: raised while the worker loaded {loading}; no task "
                          "sent with them ran, and each fails with this error")
            errors.append((0, self.results.failure(exc)))
            return self._result(head, Flag.NONE, [], errors)
        # Profiled: tasks are timed in spans (see TaskTimes): the map's slices, or one task.
        self._times = TaskTimes.empty() if flags & Flag.PROFILE else None

        # The watchdog's SIGINT may land anywhere from start_chunk until end_chunk
        # is through, so all of that is inside the handler of Interrupted.
        self.state.keep_interruptible()
        try:
            if not self.state.start_chunk(head.job):  # cancelled already, or stopping
                return self._result(head, Flag.CANCELLED, [], [])
            if flags & Flag.TIMED:  # loaded: the master starts its tasks' clock now
                self._send([protocol.header(Kind.STARTED, 0, head.job, head.ident)])
            try:
                self._chunk, self._outputs_sent = head, 0
                if self.relay is not None:
                    self.relay.start()
                started = time.perf_counter()
                if task.seed is not None:
                    self._run_seeded(fn, items, values, errors, flags, task)
                elif flags & Flag.CALL:
                    self._run_call(fn, items, values, errors)
                else:
                    self._run_map(fn, items, values, errors, bool(flags & Flag.MAP_STAR),
                                  bool(flags & Flag.STOP_ON_ERROR))
                seconds = time.perf_counter() - started
                if progress is not None:  # all of it ran: the RESULT is all that can be lost
                    progress.mark(head.ident, task.skip + len(values), task.skip + len(values))
            finally:
                self.state.end_chunk()
        except Interrupted as interrupted:
            if forks.forked:  # (see _run_call)
                forks.leave(interrupted)
            self.state.end_chunk()  # again: the interruption may have cut the first one short
            if self._times is not None:  # a cancelled RESULT carries no errors: keep them
                self._times.failed.extend(offset for offset, _ in errors)
            return self._result(head, Flag.CANCELLED, [], [])
        kept = Kept(self._kept_slices, self._kept, self._kept_errors)
        return self._result(head, Flag.NONE, values, errors, seconds, kept)

    def _run_call(self, fn: Callable[..., Any], call: Any, values: list[Any],
                  errors: Errors) -> None:
        args, kwargs = call
        began = time.time()
        try:
            values.append(fn(*args, **kwargs))
        except Interrupted:
            if self._times is not None:
                add_interrupted(self._times, began, 0, 0)
            raise
        except BaseException as exc:
            if forks.forked:  # a process the task forked left it: it ends here
                forks.leave(exc)
            values.append(None)
            errors.append((0, self.results.failure(exc, skip_frames=1)))
        if forks.forked:
            forks.leave()
        if self._times is not None:
            add_span(self._times, began, 1)

    def _run_map(self, fn: Callable[..., Any], items: list[Any], values: list[Any],
                 errors: Errors, star: bool, stop_on_error: bool) -> None:
        # list.extend keeps what map() produced before an exception, so the
        # failing index is len(values); the loop resumes after it.  Slices: see
        # SLICE_SECONDS; the page names the slice that runs.
        call_all = itertools.starmap if star else map
        progress, chunk, skip, times = self.progress, self._chunk_id(), self._skip, self._times
        total = len(items)
        size = 1
        while (start := len(values)) < total:
            if self.state.interrupting():  # a task caught its KeyboardInterrupt: the rest go
                raise Interrupted
            careful = skip + start < self._careful_until  # (see protocol.task_frame)
            end = start + 1 if careful else min(total, start + size)
            wall = time.time() if times is not None else 0.0
            if progress is not None:
                progress.mark(chunk, skip + start, skip + end, wall)
            began = perf_counter()
            failed = False
            try:
                forks.running_slice = running = iter(items[start:end])  # (see forks)
                values.extend(call_all(fn, running))  # (islice would skip from 0)
                if forks.forked:  # a child forked in a task: the slice stopped after it
                    forks.leave()
                if len(values) < end:  # map() took a task's StopIteration for its end
                    raise stop_iteration_of_a_task()
            except Interrupted:
                if times is not None and len(values) < end:  # a task of the slice ran
                    add_interrupted(times, wall, len(values) - start, len(values))
                    times = None  # (its span is noted)
                raise
            except BaseException as exc:
                if forks.forked:  # (see _run_call)
                    forks.leave(exc)
                errors.append((len(values), self.results.failure(exc, 1)))
                values.append(None)
                if stop_on_error:
                    return
                failed = True
            finally:  # the slice's span: what ran of it, the failing task included
                forks.running_slice = None  # (it holds the slice's arguments)
                if times is not None:
                    add_span(times, wall, len(values) - start)
            if len(values) < total:  # (the RESULT carries the last slice)
                self._keep(values, errors)
            if not failed and not careful:
                took = perf_counter() - began
                if times is not None and took >= (end - start) * TIMED_ALONE_SECONDS:
                    size = 1
                else:
                    size = size * 2 if took < SLICE_SECONDS else max(1, size // 2)

    def holds_last_result(self) -> bool:
        """Whether the last RESULT is in the progress log, to stay there while the
        next chunk runs (see :meth:`Progress.begin`)."""
        return self.progress is not None and self.progress.holds_last_result

    def keep_result(self, frames: list[Any]) -> None:
        """Keep a RESULT about to be sent in the progress log: should this process die
        while it waits in libzmq's queue, the master reads it from there.  Not one in
        shared memory (the segment would die with this process too), nor a cancelled
        chunk's (it carries nothing to deliver)."""
        if (self.progress is not None and not self._cancelled
                and not isinstance(frames[-1], shm.SharedFrame)):
            self.progress.keep(WHOLE_RESULT, 0, frames)

    def _keep(self, values: list[Any], errors: Errors) -> None:
        """Keep the results finished since they last were in the progress log, so that
        they reach the master even if this process dies before the RESULT is out
        (once :data:`SLICE_SECONDS` passed since then: trivial tasks pay little).

        Stops keeping for the rest of the chunk once a value cannot be pickled
        or the log is full: the log stays one run of tasks from the chunk's start.
        """
        if (not self._keeping or self._kept == len(values)
                or (perf_counter() - self._kept_at < SLICE_SECONDS
                    and self._skip + len(values) > self._careful_until)):
            return
        assert self.progress is not None
        start, stop = self._kept, len(values)
        failed = [(offset - start, packed) for offset, packed in errors[self._kept_errors:]]
        try:
            frames = codec.dumps((values[start:stop], failed, 0.0, None), self.serializer)
        except Interrupted:
            raise
        except BaseException:  # its own task fails in the RESULT, if it comes to that
            self._keeping = False
            return
        if not self.progress.keep(self._skip + start, stop - start, frames):
            self._keeping = False
            return
        self._kept_slices.append((start, stop - start, frames))
        self._kept, self._kept_errors = stop, len(errors)
        self._kept_at = perf_counter()

    def _own_bytes(self) -> int:
        """Resident memory less the segments results travel in, which the worker keeps
        mapped for reuse: a limit on it is meant for what the tasks hold."""
        shared = self.results.shared
        return resident_bytes() - (shared.mapped_bytes() if shared is not None else 0)

    def _chunk_id(self) -> int:
        return self._chunk.ident if self._chunk is not None else 0

    def _run_seeded(self, fn: Callable[..., Any], items: Any, values: list[Any],
                    errors: Errors, flags: int, task: protocol.Task) -> None:
        """Run tasks one by one, each from its own stream (see rng.py)."""
        assert task.seed is not None
        entropy, key = task.seed
        calls = [items] if flags & Flag.CALL else items
        progress, chunk, skip = self.progress, self._chunk_id(), task.skip
        try:
            for offset, item in enumerate(calls):
                if self.state.interrupting():  # (see _run_map)
                    raise Interrupted
                self._keep(values, errors)
                began = time.time()
                if progress is not None:
                    progress.mark(chunk, skip + offset, skip + offset + 1,
                                  began if self._times is not None else 0.0)
                rng.seed_task(entropy, (*key, task.first_index + skip + offset))
                try:
                    if flags & Flag.CALL:
                        values.append(fn(*item[0], **item[1]))
                    else:
                        values.append(fn(*item) if flags & Flag.MAP_STAR else fn(item))
                except Interrupted:
                    if self._times is not None:
                        add_interrupted(self._times, began, 0, offset)
                    raise
                except BaseException as exc:
                    if forks.forked:  # (see _run_call)
                        forks.leave(exc)
                    errors.append((offset, self.results.failure(exc, 1)))
                    values.append(None)
                    if flags & (Flag.STOP_ON_ERROR | Flag.CALL):
                        return
                finally:
                    if self._times is not None and len(values) > offset:
                        add_span(self._times, began, 1)
                if forks.forked:
                    forks.leave()
        finally:
            rng.clear()

    def _pack_output(self, batch: Batch) -> Any:
        """The OUTPUT message of what the running chunk wrote so far, one frame (text
        and plain values: no buffer out of band), kept in the progress log should this
        process die before it is out; None once no chunk runs."""
        head = self._chunk
        if head is None:
            return None
        prefix = protocol.header(Kind.OUTPUT, 0, head.job, head.ident)
        (frame,) = codec.dumps(batch, self.serializer, prefix=prefix, plain=True)
        if self.progress is not None:
            self.progress.keep_output(self._outputs_sent, [frame])
        self._outputs_sent += 1
        return frame

    def _result(self, head: protocol.Header, flags: int, values: list[Any], errors: Errors,
                seconds: float = 0.0, kept: Kept | None = None) -> list[Any]:
        batch = self.relay.finish() if self.relay is not None else None
        self._chunk = None
        self._cancelled = bool(flags & Flag.CANCELLED)
        self._kept_slices = []
        times, self._times = self._times, None
        if self.max_memory is not None and self._own_bytes() > self.max_memory:
            flags |= Flag.OVER_MEMORY  # the master replaces this worker (max_worker_memory)
        if self._stale:
            flags |= Flag.STALE_FUNCTION
            self._stale = False
        return self.results.pack(head, flags, values, errors, seconds, batch, times, kept)
