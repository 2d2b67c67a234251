"""Maps on the caller's thread: chunks out through a feed (:mod:`.feeds`), results back
into order.

:func:`stream_blocks` keeps the window full, decodes results as they arrive
and yields them a chunk at a time, in order (or as they come);
:func:`collect_list` and :func:`iterate` turn blocks into what the caller gets.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FuturesTimeoutError
from dataclasses import dataclass
from typing import Any, Protocol

from ..common.protocol import Flag
from ..dispatch import output as relay
from ..dispatch.jobs import Chunk, Event, Job, Outcome, StreamJob, TaskFailure, decode_outcome
from ..errors import ClusterClosedError
from .carried import CarriedStopIteration
from .feeds import Feed

#: How often a waiting caller wakes up (to stay responsive to Ctrl-C).
POLL_SECONDS = 0.25
#: Longest a map stopped by Ctrl-C or by a task's error waits for its chunks still
#: out (cancelled, they come back at once), to write what their tasks printed; and
#: a profile's block, for the records of a call cancelled in it.
SETTLE_SECONDS = 0.5
#: Finished chunks an ordered stream may hold for an earlier one still running, in
#: windows, before it sends no more: a long task at the head of the line leaves the
#: other workers busy (multiprocessing's imap reads its whole input), and an endless
#: input behind a stuck task still costs bounded memory.
BACKLOG_WINDOWS = 8
#: Reading a chunk's input that took longer than this (a producer that waits for its
#: items) lets the results that came meanwhile out before the next read: they would
#: otherwise wait for the window to fill, a few items per worker.
SLOW_INPUT_SECONDS = 0.005




def _next_events(job: StreamJob, deadline: float | None) -> list[Event]:
    while True:
        wait = POLL_SECONDS
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:  # a result already in never times out (Executor.map's contract)
                try:
                    return job.events.get_nowait()
                except queue.Empty:
                    raise FuturesTimeoutError("the map did not finish before its timeout"
                                              ) from None
        try:
            return job.events.get(timeout=wait)
        except queue.Empty:
            continue


def _timed_tasks(chunk: Chunk, failures: list[TaskFailure]) -> int:
    """How many tasks a RESULT's seconds cover: those from ``chunk.resume`` on, up to
    its first failure when a failure stops the chunk."""
    if failures and chunk.job.flags & Flag.STOP_ON_ERROR:
        stopped = min(failure.task_index for failure in failures) - chunk.first_index
        return max(0, stopped + 1 - chunk.resume)
    return chunk.count - chunk.resume


def _payload_bytes(label: Any, payload: Any) -> int:
    """The bytes of a RESULT as it came (0 for an event that carries none)."""
    if label is None or payload is None:
        return 0
    body, buffers = payload
    return int(body.nbytes) + sum(memoryview(buffer).nbytes for buffer in buffers)


def _outcome(chunk: Chunk, label: Any, payload: Any) -> Outcome:
    """Decode one queue event (a chunk that failed whole or was dropped comes with
    what it wrote: on a worker lost running it, or as it was cancelled)."""
    if label is None:  # failed whole, or dropped
        error = payload if payload is not None else ClusterClosedError(
            "the cluster was closed before these tasks ran")
        failures = [TaskFailure(chunk.first_index + i, error) for i in range(chunk.count)]
        return Outcome([None] * chunk.count, failures, 0.0, chunk.output)
    return decode_outcome(chunk, label, payload)


class _OutputInOrder:
    """Emits chunks' output in input order, as the code would print run sequentially.

    Output is written here, on the caller's thread, so that a notebook shows it
    in the cell that ran the map.
    """

    def __init__(self, ordered: bool) -> None:
        self._ordered = ordered
        self._waiting: dict[int, tuple[int, list[Any]]] = {}
        self._next = 0

    def add(self, chunk: Chunk, output: list[Any]) -> None:
        if not self._ordered:
            relay.emit(output)
            return
        self._waiting[chunk.first_index] = (chunk.count, output)
        while self._next in self._waiting:
            count, ready = self._waiting.pop(self._next)
            relay.emit(ready)
            self._next += count

    def flush(self) -> None:
        """Emit whatever waits for earlier chunks (the map stopped: they will not come)."""
        for first in sorted(self._waiting):
            relay.emit(self._waiting.pop(first)[1])


#: A run of consecutive results: index of the first, the values, failures by index.
Block = tuple[int, list[Any], dict[int, BaseException]]


@dataclass(frozen=True)
class Delivery:
    """How a map's results and output reach its caller."""

    blocks_in_order: bool  #: yield blocks in input order (else as they arrive)
    output_in_order: bool  #: write the tasks' output in input order (else as chunks arrive)
    errors: str = "raise"  #: "raise" a failure, or "return" it in place
    #: with errors="raise": raise the first failure as soon as it arrives (par_map),
    #: rather than when its turn comes (an ordered imap yields what comes before it).
    fail_fast: bool = False
    #: left early (past a deadline, at an error, closed; not by Ctrl-C), the chunks
    #: running finish and their output is written, as ``Executor.map``'s running calls'.
    finish_running: bool = False


class Dispatch(Protocol):
    """What a map needs of the I/O thread: send chunks, cancel a job."""

    def submit(self, chunks: list[Chunk], *, wait: bool = False) -> None:
        """Queue chunks for the workers (``wait``: until the I/O thread has them)."""

    def cancel(self, job: Job, *, interrupt: bool = True) -> None:
        """Drop a job's waiting chunks and interrupt its running ones (or let them finish)."""

    @property
    def relay_mode(self) -> str:
        """How workers relay output: "off" sends none home."""


def stream_blocks(
    job: StreamJob,
    feed: Feed,
    delivery: Delivery,
    dispatch: Dispatch,
    *,
    window: int,
    in_flight: int = 0,
    deadline: float | None = None,
    progress: Any = None,
) -> Iterator[Block]:
    """Yield a job's results a chunk at a time, keeping ``window`` chunks in flight.

    Args:
        window: chunks in flight; when ordered, finished chunks waiting for an
            earlier one count against it beyond :data:`BACKLOG_WINDOWS` windows of them.
        in_flight: chunks the caller already submitted itself.
        deadline: ``time.monotonic()`` past which waiting raises ``TimeoutError``.
        progress: a tqdm bar to advance, or None.
    """
    __tracebackhide__ = True  # IPython: a task's error, not sockpool's
    waiting: dict[int, Block] = {}
    arrived: deque[Event] = deque()  # told, not yet taken
    next_first = 0
    finished = let_finish = False
    output = _OutputInOrder(delivery.output_in_order)
    sent = 0  # items in chunks the cluster took
    refused: ClusterClosedError | None = None  # closed before the input was all sent
    aborted = False  # by Ctrl-C, sys.exit() or a task's error: what ran still writes its output
    try:
        while True:
            room = window - in_flight - max(0, len(waiting) - BACKLOG_WINDOWS * window)
            while room > 0 and not feed.exhausted and refused is None:
                reading = time.monotonic()
                chunks = feed.take()  # (one at a time, but an eager feed's all at once)
                if not chunks:
                    break
                try:
                    dispatch.submit(chunks, wait=feed.hand_over)
                except ClusterClosedError as exc:
                    refused = exc  # what was sent before still comes back: deliver it
                    break
                in_flight += len(chunks)
                room -= len(chunks)
                sent += sum(chunk.count for chunk in chunks)
                if (time.monotonic() - reading > SLOW_INPUT_SECONDS
                        and (arrived or not job.events.empty())):
                    break  # a slow input: results that came meanwhile go out before it
            if in_flight == 0 and not waiting and (feed.exhausted or refused is not None):
                finished = True
                if refused is not None:
                    raise _closed_midway(refused, sent)
                if feed.error is not None:  # after every result of the items read before it
                    raise feed.error
                return
            if not arrived:
                arrived.extend(_next_events(job, deadline))
            chunk, label, payload = arrived.popleft()
            in_flight -= 1
            values, failures, seconds, written = _outcome(chunk, label, payload)
            feed.measured(chunk, seconds, _timed_tasks(chunk, failures),
                          _payload_bytes(label, payload))
            if progress is not None:
                progress.update(chunk.count)
            if failures and delivery.errors == "raise" and delivery.fail_fast:
                output.add(chunk, written)  # written, in order, before its error
                aborted = True
                error = failures[0].error
                raise CarriedStopIteration(error) if isinstance(error, StopIteration) else error
            output.add(chunk, written)
            block = (chunk.first_index, values, {f.task_index: f.error for f in failures})
            del failures  # the block alone holds the errors: iterate() lets them go
            if not delivery.blocks_in_order:
                yield block
                continue
            waiting[chunk.first_index] = block
            while next_first in waiting:
                block = waiting.pop(next_first)
                next_first += len(block[1])
                yield block
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or a signal handler's sys.exit()
        aborted = True
        raise
    finally:
        try:
            if not finished:
                let_finish = delivery.finish_running and not aborted
                with contextlib.suppress(ClusterClosedError):
                    dispatch.cancel(job, interrupt=not let_finish)
                if let_finish:
                    _write_as_they_end(job, arrived, in_flight, output)
                elif aborted and dispatch.relay_mode != "off":
                    _write_what_ran(job, arrived, in_flight, output)
        finally:  # (a second Ctrl-C, a warning raised as an error: still let go)
            job.keep = None  # nobody waits for it any more: its cluster may go now
            if progress is not None:
                progress.close()
            # A raised error's traceback holds this frame, and a notebook keeps the
            # last one: not the results (shared memory, often) with it, nor those
            # still to come (a task that ignored the cancel).
            if not let_finish:  # (else its thread reads them: _write_as_they_end)
                job.abandon()
            waiting.clear()
            arrived.clear()
            values, payload, block = [], None, (0, [], {})


def _write_as_they_end(job: StreamJob, arrived: deque[Event], in_flight: int,
                       output: _OutputInOrder) -> None:
    """After an ``Executor.map`` was left early, its running chunks let finish: write,
    in order, what the chunks taken but not handed out printed and what the others
    print as they end, on a thread of its own.  Decoding a finished chunk unpickles
    its values, which may take long: neither the caller nor the I/O thread waits."""
    taken = list(arrived)  # (the caller lets go of its own)

    def write() -> None:
        left, events = in_flight, taken
        while True:
            for chunk, label, payload in events:
                left -= 1
                with contextlib.suppress(Exception):  # nobody to raise it to
                    output.add(chunk, _outcome(chunk, label, payload).output)
            if left <= 0:
                break
            events = job.events.get()  # every chunk out comes back (dropped, failed, done)
        with contextlib.suppress(Exception):
            output.flush()

    threading.Thread(target=write, name="sockpool-map-output", daemon=True).start()


def _write_what_ran(job: StreamJob, arrived: deque[Event], in_flight: int,
                    output: _OutputInOrder) -> None:
    """After a map was cancelled: write what its tasks printed, in order, as their
    chunks come back (at most :data:`SETTLE_SECONDS`): those cancelled as they ran,
    and those that finished before the cancellation reached them (see
    :class:`_DecodedAside`)."""
    until = time.monotonic() + SETTLE_SECONDS
    finished = _DecodedAside()
    try:
        while True:
            for event in arrived:
                in_flight -= 1
                if event[1] is None:  # failed whole, or dropped: the output it kept
                    output.add(event[0], event[0].output)
                else:
                    finished.add(event)
            arrived.clear()
            if in_flight <= 0 or (left := until - time.monotonic()) <= 0:
                break
            with contextlib.suppress(queue.Empty):
                arrived.extend(job.events.get(timeout=left))
        finished.write_into(output, until)
    finally:  # (a second Ctrl-C too: what is not written here, its thread writes)
        finished.let_go()
    output.flush()


class _DecodedAside:
    """The output of chunks that finished, which is in their RESULTs with their
    values (one pickle): decoded on a thread of its own, so that values slow to
    unpickle never hold up the map's error.  The caller writes what is decoded in
    time; what is not, that thread writes once it is, after the error."""

    def __init__(self) -> None:
        self._todo: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        self._done: deque[tuple[Chunk, list[Any]]] = deque()
        self._changed = threading.Condition()
        self._waiting = 0  # added, not yet written by the caller
        self._late = False
        self._thread: threading.Thread | None = None

    def add(self, event: Event) -> None:
        self._waiting += 1
        self._todo.put(event)
        if self._thread is None:
            self._thread = threading.Thread(target=self._decode, name="sockpool-map-output",
                                            daemon=True)
            self._thread.start()

    def _decode(self) -> None:
        while (event := self._todo.get()) is not None:
            try:
                written = _outcome(*event).output
            except Exception:  # (nobody to raise it to)
                written = []
            with self._changed:
                if not self._late:
                    self._done.append((event[0], written))
                    self._changed.notify()
                    continue
            with contextlib.suppress(Exception):
                relay.emit(written)

    def write_into(self, output: _OutputInOrder, until: float | None = None) -> None:
        """Write what is decoded; with ``until``, wait until then for the rest."""
        while True:
            with self._changed:
                while not self._done and self._waiting and until is not None and (
                        left := until - time.monotonic()) > 0:
                    self._changed.wait(left)
                taken, self._done = list(self._done), deque()
            self._waiting -= len(taken)
            for chunk, written in taken:
                output.add(chunk, written)
            if not taken or not self._waiting:
                return

    def let_go(self) -> None:
        """The caller is done: the thread writes the rest itself, then ends."""
        with self._changed:
            self._late = True
            left, self._done = list(self._done), deque()
        if self._thread is not None:
            self._todo.put(None)
        for _, written in left:
            with contextlib.suppress(Exception):
                relay.emit(written)


def _closed_midway(refused: ClusterClosedError, sent: int) -> ClusterClosedError:
    """The error of a call whose cluster closed before it had sent all its input."""
    if type(refused) is not ClusterClosedError:  # broken (NoWorkersLeftError): as is
        return refused
    error = ClusterClosedError(
        "the cluster was closed (close(), shutdown(), or a new sockpool.plan()) before this "
        f"call had sent all its input: the results of the {sent} items it sent came first, "
        "the rest was not run")
    error.__cause__ = refused
    return error


def collect_list(blocks: Iterator[Block], n_items: int, ordered: bool, errors: str
                 ) -> list[Any]:
    """par_map's result list: blocks placed by index (or appended as they come).

    With ``errors="raise"``, a failure that reaches here (the map does not fail
    fast) is raised once every block is in: the first to arrive.
    """
    __tracebackhide__ = True  # IPython: a task's error, not sockpool's
    results: list[Any] = [None] * n_items if ordered else []
    first_failure: BaseException | None = None
    try:
        for first, values, failed in blocks:
            if failed and errors == "raise":
                if first_failure is None:
                    first_failure = failed[min(failed)]
                continue
            if ordered:
                results[first:first + len(values)] = values
                for index, error in failed.items():
                    results[index] = error
            else:
                results += [failed.get(first + i, value) for i, value in enumerate(values)
                            ] if failed else values
    except CarriedStopIteration as carried:
        first_failure = carried.error  # raised below, out of this handler: no context
    except BaseException:
        results.clear()  # (the traceback holds this frame: not the results with it)
        values = []
        raise
    if first_failure is not None:
        results.clear()
        values = []
        raise first_failure
    return results


def _hand_over(values: list[Any], offset: int) -> Any:
    """Take a value out of its block, so that only the caller holds it once yielded."""
    value, values[offset] = values[offset], None
    return value


def iterate(blocks: Iterator[Block], errors: str) -> Iterator[Any]:
    """Results one by one; a failed task raises (or is yielded, with errors="return").

    A result yielded is no longer referenced here (nor by the block that
    ``stream_blocks`` still holds): a caller that drops it frees it, as
    ``Executor.map``'s contract requires (CPython's ``test_free_reference``).
    """
    __tracebackhide__ = True  # IPython: a task's error, not sockpool's
    for first, values, failed in blocks:
        for offset in range(len(values)):
            # Yield expressions, never a local: a suspended frame keeps its locals alive.
            if first + offset not in failed:
                yield _hand_over(values, offset)
            elif errors == "raise":
                error = failed.pop(first + offset)
                # The rest of the map stops now, not once the error is freed: one the
                # cluster made (a lost worker's) may be held elsewhere too, and its
                # traceback would keep this frame, and so the map, going.
                closing = getattr(blocks, "close", None)
                if closing is not None:
                    closing()
                raise error
            else:
                yield failed.pop(first + offset)
