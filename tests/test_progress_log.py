"""The progress page and result log, read back by the master as the worker wrote them.

The deaths themselves are in test_exactness.py (local), test_ssh.py and
test_slurm.py; here, what they rely on, on a real memfd, without a process
dying: a RESULT kept just before it was sent (a worker that dies while it waits
in libzmq's queue) reads back as the RESULT itself, large buffers included; a
torn record is left out.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from sockpool.common import codec, protocol, task_errors
from sockpool.common.progress_log import WHOLE_RESULT, Page, parse_records, record_header
from sockpool.common.protocol import Flag, Kind
from sockpool.dispatch.jobs import Chunk, StreamJob, WorkerLabel, decode_outcome
from sockpool.dispatch.task_progress import ProgressPage
from sockpool.worker.progress import Progress
from sockpool.worker.results import ResultPacker

pytestmark = pytest.mark.timeout(30)

LABEL = WorkerLabel(0, "localhost", 1)

#: The job the chunks here belong to (messages name its tasks); never sent.
_JOB = StreamJob(None, Flag.MAP_ONE)  # type: ignore[arg-type]


def page_and_chunk(count: int) -> tuple[Progress, ProgressPage, Chunk]:
    progress = Progress()
    page = ProgressPage.open(progress.describe())
    assert page is not None
    chunk = Chunk(job=_JOB, first_index=10, count=count, frames=[])  # type: ignore[arg-type]
    return progress, page, chunk


def result_frames(chunk: Chunk, values: list[Any], errors: list[tuple[int, bytes]]
                  ) -> list[Any]:
    head, _ = protocol.parse(protocol.header(Kind.TASK, 0, 1, chunk.id))
    return ResultPacker("cloudpickle", 1 << 30, None).pack(head, Flag.NONE, values, errors,
                                                           0.25, None)


def test_a_result_kept_before_it_was_sent_reads_back_as_that_result() -> None:
    progress, page, chunk = page_and_chunk(3)
    progress.begin(chunk.id)
    array = np.arange(100_000)  # 800 kB: a frame of its own
    failure = task_errors.pack_exception(KeyError("k"))
    frames = result_frames(chunk, [1, array, None], [(2, failure)])
    assert len(frames) == 2
    progress.mark(chunk.id, 3, 3)  # all of it ran; then, as the worker does before sending:
    assert progress.keep(WHOLE_RESULT, 0, frames)

    where = page.where(chunk)
    assert where.result is not None and where.records == []
    sent = where.sent_result(chunk)
    assert sent is not None
    values, failures, seconds, _ = decode_outcome(chunk, LABEL, sent.payload)
    assert values[0] == 1 and np.array_equal(values[1], array) and seconds == 0.25
    assert [f.task_index for f in failures] == [12] and isinstance(failures[0].error, KeyError)
    page.close()


def test_kept_slices_and_a_torn_record_after_them() -> None:
    progress, page, chunk = page_and_chunk(6)
    progress.begin(chunk.id)
    for first, values in ((0, [0, 10]), (2, [20])):
        assert progress.keep(first, len(values), codec.dumps((values, [], 0.0, None)))
    progress.mark(chunk.id, 3, 4)  # task 3 was running when it died
    where = page.where(chunk)
    assert (where.kept, where.start, where.end, where.result) == (3, 3, 4, None)
    assert [(r.first, r.tasks) for r in where.records] == [(0, 2), (2, 1)]

    # A record cut short (the process died inside its write) is not read.
    whole = record_header(0, 1, [b"abcdef"]) + b"abcdef"
    assert [r.frames for r in parse_records(whole)] == [[b"abcdef"]]
    assert parse_records(whole[:-1]) == [] and parse_records(whole[:5]) == []
    page.close()


def test_a_page_that_names_another_chunk_means_this_one_never_started() -> None:
    progress, page, chunk = page_and_chunk(4)
    progress.begin(chunk.id + 1000)
    assert progress.keep(0, 1, codec.dumps(([5], [], 0.0, None)))
    where = page.where(chunk)
    assert (where.records, where.kept, where.start, where.end) == ([], 0, 0, 0)
    page.close()


def test_a_result_kept_while_the_next_chunks_run_reads_back_chunk_after_chunk() -> None:
    # A local worker starts its next chunk before the master has its last RESULT
    # (PAGE_READ): that RESULT stays in the log while the next chunk's log goes
    # beside it, before or after it in turn.  Whenever the worker dies, the last
    # RESULT and the running chunk's slices both read back whole.
    progress, page, _ = page_and_chunk(1)
    previous: Chunk | None = None
    previous_values: list[str] = []
    for n, size in enumerate([3, 1, 200, 5, 5, 4000, 2, 2, 3000, 1]):
        chunk = Chunk(job=_JOB, first_index=0, count=size + 1, frames=[])  # type: ignore[arg-type]
        progress.begin(chunk.id, keep_last_result=previous is not None)
        values = [f"{n}:{i}" for i in range(size)]
        assert progress.keep(0, size, codec.dumps((values, [], 0.0, None)))
        progress.mark(chunk.id, size, size + 1)  # its last task was running
        if previous is not None:  # the worker dies here: both read back
            sent = page.previous_result(previous)
            assert sent is not None
            assert decode_outcome(previous, LABEL, sent.payload)[0] == previous_values
        where = page.where(chunk)
        assert (where.kept, where.start, where.end, where.result) == (size, size, size + 1, None)
        assert codec.loads(where.records[0].frames[0])[0] == values
        # It finished: its RESULT is kept just before it is sent.
        progress.mark(chunk.id, size + 1, size + 1)
        previous_values = [*values, "last"]
        assert progress.keep(WHOLE_RESULT, 0, result_frames(chunk, previous_values, []))
        assert progress.holds_last_result
        previous = Chunk(job=_JOB, first_index=0, count=size + 1, frames=[])  # type: ignore[arg-type]
        previous.id = chunk.id
    page.close()


def test_without_a_kept_result_or_with_every_result_received_there_is_no_previous_chunk(
        ) -> None:
    progress, page, chunk = page_and_chunk(2)
    progress.begin(chunk.id)
    assert progress.keep(0, 1, codec.dumps(([1], [], 0.0, None)))
    assert not progress.holds_last_result  # slices only: the worker waits for the ACK
    assert progress.keep(WHOLE_RESULT, 0, result_frames(chunk, [1, 2], []))
    assert progress.holds_last_result
    progress.begin(chunk.id + 1)  # the master had it: the logs start over
    assert page.previous_result(chunk) is None
    assert not progress.holds_last_result
    page.close()


def test_a_cancelled_chunks_result_is_not_kept_so_the_next_chunk_waits_for_the_ack() -> None:
    # A cancelled chunk's RESULT carries nothing to deliver: were it kept as the
    # previous chunk's, the master could not use it, and would take the chunk
    # after it for one that never started.
    from collections import deque

    from sockpool.common.config import WorkerConfig
    from sockpool.worker.functions import FunctionCache
    from sockpool.worker.runner import ChunkRunner
    from sockpool.worker.state import WorkerState

    config = WorkerConfig(address="ipc:///unused", token="t", worker_id=0,
                          heartbeat_interval=1.0, master_timeout=5.0, serializer="cloudpickle",
                          max_frame_bytes=1 << 30, relay="off")
    state = WorkerState()
    progress = Progress()
    runner = ChunkRunner(config, state, FunctionCache(), None, deque(), send=lambda _: None,
                         progress=progress)
    fn = codec.dumps(abs, "pickle")[0]
    for job, cancelled in ((1, False), (2, True)):
        if cancelled:
            state.cancel(job)
        frame = protocol.task_frame(protocol.header(Kind.TASK, Flag.MAP_ONE, job, job),
                                    b"d" * 16, 0, bytes(fn), 0, codec.dumps([-1, -2])[0])
        head, body = protocol.parse(frame)
        reply = runner.run(head, body, [])
        assert bool(protocol.parse(reply[0])[0].flags & Flag.CANCELLED) is cancelled
        runner.keep_result(reply)
        assert runner.holds_last_result() is not cancelled


def test_a_result_of_more_buffers_than_one_write_takes_reads_back_whole() -> None:
    # 1500 out-of-band frames: more than one pwritev may write (IOV_MAX, 1024).
    progress, page, chunk = page_and_chunk(1)
    progress.begin(chunk.id)
    arrays = [np.full(70_000 // 8, i, dtype=np.int64) for i in range(1500)]
    frames = result_frames(chunk, [arrays], [])
    assert len(frames) == 1501
    progress.mark(chunk.id, 1, 1)
    assert progress.keep(WHOLE_RESULT, 0, frames)
    sent = page.where(chunk).sent_result(chunk)
    assert sent is not None
    [values] = decode_outcome(chunk, LABEL, sent.payload)[0]
    assert all(np.array_equal(a, b) for a, b in zip(values, arrays, strict=True))
    page.close()


def output_frames(chunk: Chunk, text: str) -> list[Any]:
    """An OUTPUT message of ``chunk`` that wrote ``text``, as the worker sends it."""
    prefix = protocol.header(Kind.OUTPUT, 0, 1, chunk.id)
    return codec.dumps([(0, text)], prefix=prefix)


def test_output_messages_kept_read_back_from_the_first_not_received() -> None:
    progress, page, chunk = page_and_chunk(2)
    progress.begin(chunk.id)
    for n in range(3):
        progress.keep_output(n, output_frames(chunk, f"line {n}\n"))
    assert page.output_after(chunk, 1) == [[(0, "line 1\n")], [(0, "line 2\n")]]
    # The next chunk starts before the master has this one's RESULT: its output
    # stays beside the new chunk's, as its results do.
    progress.mark(chunk.id, 2, 2)
    assert progress.keep(WHOLE_RESULT, 0, result_frames(chunk, ["a", "b"], []))
    following = Chunk(job=_JOB, first_index=12, count=1, frames=[])  # type: ignore[arg-type]
    progress.begin(following.id, keep_last_result=True)
    progress.keep_output(0, output_frames(following, "its own\n"))
    assert page.previous_output_after(chunk, 2) == [[(0, "line 2\n")]]
    assert page.output_after(following, 0) == [[(0, "its own\n")]]
    assert page.output_after(chunk, 0) == []  # (not the chunk it ran last)
    page.close()


def test_output_past_the_limit_is_not_kept_nor_anything_after_it() -> None:
    from sockpool.worker.progress import OUTPUT_LIMIT

    progress, page, chunk = page_and_chunk(1)
    progress.begin(chunk.id)
    progress.keep_output(0, output_frames(chunk, "first\n"))
    progress.keep_output(1, output_frames(chunk, "x" * OUTPUT_LIMIT))
    progress.keep_output(2, output_frames(chunk, "small, but after a hole\n"))
    assert page.output_after(chunk, 0) == [[(0, "first\n")]]
    page.close()


def test_a_large_output_log_gives_its_memory_back_when_the_next_chunk_starts() -> None:
    import os

    progress, page, chunk = page_and_chunk(1)
    progress.begin(chunk.id)
    for n in range(3):  # 3 MB of output
        progress.keep_output(n, output_frames(chunk, "x" * 1_000_000))
    assert os.fstat(progress.fd).st_blocks * 512 > 2_000_000
    progress.begin(chunk.id + 1)
    assert os.fstat(progress.fd).st_blocks * 512 < 100_000
    page.close()


def test_a_page_as_an_earlier_worker_writes_it_still_reads() -> None:
    # A fourteenth word (when the running stretch began) came with profiling of lost
    # chunks; a remote host with the earlier worker reports 13, which read as no page.
    words = struct.pack("<13Q", 7, 2, 3, 4096, 0, 0, 0, 0, 7, 0, 0, 0, 0)
    page = Page.read(words)
    assert page is not None and (page.chunk, page.start, page.end) == (7, 2, 3)
    assert page.started_us == 0
    assert Page.read(words[:-8]) is None
