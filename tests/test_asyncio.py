"""asyncio: awaited calls on a cluster never block the event loop, and cancelling one stops it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import warnings
from collections.abc import Awaitable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import run_script

from sockpool import Cluster

pytestmark = pytest.mark.timeout(120)

#: The longest pause between two ticks of a 10 ms ticker that still counts as
#: "never blocked" on a loaded 2-core machine: each step below would block the
#: loop for 0.5 s or more if it ran on the loop's thread.
MAX_GAP = 0.3


async def _ticking(work: Awaitable[object]) -> tuple[object, float]:
    """Run ``work`` beside a 10 ms ticker; its outcome and the longest gap between ticks."""
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticks = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # the ticker starts its clock before the work's first step
    try:
        outcome = await work
    finally:
        stop.set()
        await ticks
    return outcome, max(gaps, default=0.0)


def _square(x: int) -> int:
    return x * x


def _slow_setup() -> None:
    time.sleep(0.5)


def _slow_square(x: int) -> int:
    time.sleep(0.0001)  # 10 000 of them: 0.5 s on 2 workers
    return x * x


def test_the_loop_keeps_ticking_through_start_long_tasks_and_a_big_map() -> None:
    async def main() -> None:
        async def everything() -> list[object]:
            async with Cluster(n=2, setup=_slow_setup) as cl:
                slept = await cl.asubmit(time.sleep, 0.5)
                squares = await cl.apar_map(_slow_square, range(10_000))
                streamed = [x async for x in cl.aimap(_square, range(200))]
            return [slept, squares, streamed]

        (slept, squares, streamed), gap = await _ticking(everything())
        assert slept is None
        assert squares == [x * x for x in range(10_000)]
        assert streamed == [x * x for x in range(200)]
        assert gap < MAX_GAP, f"the event loop was blocked for {gap:.3f} s"

    asyncio.run(main())


def _plus_seed(x: int, seed: int = 0) -> int:
    return x + seed


def test_results_and_errors_come_back_as_from_the_blocking_calls() -> None:
    async def main() -> None:
        async with Cluster(n=2) as cl:
            assert await cl.asubmit(pow, 2, 10) == 1024
            with pytest.raises(ZeroDivisionError) as raised:
                await cl.apar_map(lambda x: 1 / x, [1, 0, 2])
            assert any("task 1" in note for note in getattr(raised.value, "__notes__", []))
            out = await cl.apar_map(lambda x: 1 / x, [1, 0], errors="return")
            assert out[0] == 1.0 and isinstance(out[1], ZeroDivisionError)
            with pytest.raises(ValueError, match="chunksize"):
                await cl.apar_map(abs, [1], chunksize=0)
            # These named MapOptions, and aimap took imap's missing schedule=.
            with pytest.raises(TypeError, match=r"^Cluster.apar_map\(\) got an unexpected "
                                                r"keyword argument 'chunk_size'$"):
                await cl.apar_map(abs, [1], chunk_size=2)
            with pytest.raises(TypeError, match=r"^Cluster.aimap\(\) got an unexpected "
                                                r"keyword argument 'schedule'$"):
                cl.aimap(abs, [1], schedule="static")
            assert [x async for x in cl.aimap(abs, [-1], chunksize=1)] == [1]
            with pytest.warns(UserWarning, match=r"submit's seed= is sockpool's"):
                assert await cl.asubmit(_plus_seed, 1, seed=7) == 1
        assert "closed" in repr(cl)

    asyncio.run(main())


def _stop_on_one(x: int) -> int:
    if x == 1:
        raise StopIteration("task one")
    return x


def test_a_task_raising_stop_iteration_raises_in_the_coroutine_never_hangs() -> None:
    # asyncio refuses a StopIteration in its futures: the await never ended.  In a
    # coroutine, Python makes it a RuntimeError (PEP 479), the task's as its cause.
    async def main() -> None:
        async with Cluster(n=1) as cl:
            for call in (cl.asubmit(_stop_on_one, 1), cl.apar_map(_stop_on_one, range(3))):
                with pytest.raises(RuntimeError, match="raised StopIteration") as raised:
                    await asyncio.wait_for(call, 30)
                assert isinstance(raised.value.__cause__, StopIteration)
            assert await cl.apar_map(_stop_on_one, [0, 2]) == [0, 2]

    asyncio.run(main())


def _sleep_then_mark(path: str, seconds: float) -> int:
    time.sleep(seconds)
    Path(path).write_text("finished")
    return os.getpid()


def test_cancelling_the_awaiting_task_interrupts_the_running_sockpool_task(
        tmp_path: Path) -> None:
    marker = tmp_path / "finished"

    async def main() -> None:
        async with Cluster(n=1) as cl:
            task = asyncio.create_task(cl.asubmit(_sleep_then_mark, str(marker), 20))
            await asyncio.sleep(1.0)  # it runs on the only worker
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            started = time.monotonic()
            assert await cl.asubmit(abs, -5) == 5  # the worker was freed, not 20 s later
            assert time.monotonic() - started < 5
            assert not marker.exists()

    asyncio.run(main())


def test_cancelling_an_awaited_map_cancels_its_tasks(tmp_path: Path) -> None:
    async def main() -> None:
        async with Cluster(n=1) as cl:
            paths = [str(tmp_path / f"t{i}") for i in range(5)]
            task = asyncio.create_task(
                cl.apar_map(_sleep_then_mark, paths, [10] * 5, chunksize=1))
            await asyncio.sleep(1.0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            started = time.monotonic()
            assert await cl.asubmit(abs, -2) == 2
            assert time.monotonic() - started < 5
            assert not any(Path(p).exists() for p in paths)

    asyncio.run(main())


def test_leaving_an_async_for_early_cancels_the_rest(tmp_path: Path) -> None:
    async def main() -> None:
        async with Cluster(n=1) as cl:
            paths = [str(tmp_path / f"t{i}") for i in range(6)]
            seconds = [0.0] + [10.0] * 5
            async for pid in cl.aimap(_sleep_then_mark, paths, seconds, chunksize=1):
                assert pid == cl.workers[0].pid
                break
            started = time.monotonic()
            assert await cl.asubmit(abs, -3) == 3
            assert time.monotonic() - started < 5
            assert [Path(p).exists() for p in paths] == [True] + [False] * 5

    asyncio.run(main())


class InputBroke(Exception):
    pass


def _input_that_breaks() -> Iterator[int]:
    yield from range(6)
    raise InputBroke("the input broke")


def test_aimap_gives_every_result_before_an_input_that_raises_then_its_error() -> None:
    async def main() -> None:
        async with Cluster(n=2) as cl:
            seen = []
            with pytest.raises(InputBroke, match="the input broke"):
                async for value in cl.aimap(_square, _input_that_breaks(), chunksize=4):
                    seen.append(value)
            assert seen == [x * x for x in range(6)]

    asyncio.run(main())


def test_cancelling_asubmit_while_its_arguments_are_serialized_cancels_the_task(
        tmp_path: Path) -> None:
    big = [str(i) for i in range(1_000_000)]  # tenths of a second to serialize

    async def main() -> None:
        async with Cluster(n=1) as cl:
            for attempt in range(3):
                marker = tmp_path / f"finished{attempt}"
                task = asyncio.create_task(
                    cl.asubmit(_sleep_then_mark_with, str(marker), 1.0, big))
                await asyncio.sleep(0.02)  # still serializing, in a thread
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert await cl.asubmit(abs, -1) == 1  # after whatever the cancelled one sent
                await asyncio.sleep(1.5)  # it would have finished by now
                assert not marker.exists(), f"attempt {attempt}: the cancelled task ran"

    asyncio.run(main())


def _sleep_then_mark_with(path: str, seconds: float, payload: object) -> int:
    return _sleep_then_mark(path, seconds)


def test_waiting_maps_leave_the_default_executor_free() -> None:
    # More waiting calls than the default executor has threads (min(32, cores + 4)),
    # each on a worker of its own, and one worker free.
    calls = (os.cpu_count() or 1) + 5

    async def main() -> None:
        async with Cluster(n=calls + 1) as cl:
            async def consume(k: int) -> int:
                async for _ in cl.aimap(time.sleep, [3], chunksize=1):
                    return k
                return -1

            waiting = [asyncio.create_task(consume(k)) for k in range(calls // 2)]
            waiting += [asyncio.create_task(cl.apar_map(time.sleep, [3]))
                        for _ in range(calls - calls // 2)]
            await asyncio.sleep(0.5)
            started = time.monotonic()
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, abs, -7) == 7
            assert await cl.asubmit(abs, -3) == 3  # on the free worker, at once
            assert time.monotonic() - started < 1.0
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # more workers than cores: they sleep
        asyncio.run(main())


class _SlowToSend:
    """An argument that takes a second to serialize."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        time.sleep(1.0)
        return (_SlowToSend, ())


def test_an_asubmit_cancelled_as_its_loop_ends_is_cancelled_once_sent(tmp_path: Path) -> None:
    marker = tmp_path / "finished"
    with Cluster(n=1) as cl:
        async def main() -> None:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(
                    cl.asubmit(_sleep_then_mark_with, str(marker), 1.0, _SlowToSend()), 0.2)
        asyncio.run(main())  # ends while the call is still being serialized
        time.sleep(1.5)  # sent by now, and cancelled
        assert cl.submit(abs, -1).result(timeout=10) == 1
        time.sleep(1.0)  # it would have finished by now
        assert not marker.exists(), "the cancelled task ran"


def _long_setup() -> None:
    time.sleep(8)


def _worker_children() -> list[psutil.Process]:
    """This process's sockpool workers still running."""
    workers = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "sockpool.worker" in " ".join(child.cmdline()):
                workers.append(child)
    return workers


@pytest.mark.parametrize("call", ["asubmit", "apar_map", "aimap"])
def test_a_cluster_made_in_a_loop_and_never_entered_starts_without_blocking_it(
        call: str) -> None:
    # Its first awaited call waited for the workers on the loop's thread: a 0.5 s
    # setup was a 0.5 s stall (1.5 s with a 1.5 s one).
    async def main() -> None:
        cl = Cluster(n=2, setup=_slow_setup)

        async def first_call() -> object:
            if call == "asubmit":
                return await cl.asubmit(_square, 3)
            if call == "apar_map":
                return await cl.apar_map(_square, [3])
            return [item async for item in cl.aimap(_square, [3])]

        try:
            outcome, gap = await _ticking(first_call())
            assert outcome in (9, [9])
            assert gap < MAX_GAP, f"the event loop was blocked for {gap:.3f} s"
        finally:
            await asyncio.get_running_loop().run_in_executor(None, cl.close)

    asyncio.run(main())


def test_cancelling_async_with_while_its_workers_start_stops_them() -> None:
    # The timeout came at once, but the workers lived on until their 8 s setup ended.
    async def enter() -> None:
        async with Cluster(n=2, setup=_long_setup):
            pytest.fail("the cluster started")

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(enter(), 1.0)

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started < 6.0
    assert _worker_children() == []


def test_cancelling_async_with_as_it_waits_for_its_tasks_closes_the_cluster(
        tmp_path: Path) -> None:
    # The exit went on waiting for the 6 s task in its thread, unobserved.
    marker = tmp_path / "finished"
    submitted: list[Future[int]] = []

    async def block() -> None:
        async with Cluster(n=1) as cl:
            submitted.append(cl.submit(_sleep_then_mark, str(marker), 6.0))

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(block(), 1.0)

    asyncio.run(main())
    assert submitted[0].done()  # interrupted by the close, not left running
    assert _worker_children() == []
    assert not marker.exists()


def _one_ms(x: int) -> int:
    time.sleep(0.001)
    return x


def test_aimap_reads_ahead_of_a_slow_async_for_only_a_bounded_way() -> None:
    # aimap reads its imap in a thread, ahead of the loop (one thread hop per item
    # cost 85 µs); a slow consumer of an endless input must still hold it back.
    read = [0]

    def endless() -> Iterator[int]:
        while True:
            read[0] += 1
            yield read[0]

    async def main() -> list[int]:
        async with Cluster(n=2) as cl:
            taken = []
            async for x in cl.aimap(_one_ms, endless()):
                taken.append(x)
                await asyncio.sleep(0.2)  # 2 s: the tasks alone would get through ~4000
                if len(taken) == 10:
                    break
            return taken

    assert asyncio.run(main()) == list(range(1, 11))
    assert read[0] < 1000, f"{read[0]} items read for 10 taken"


def _array_of(megabytes: float) -> Any:
    import numpy as np

    return np.zeros(int(megabytes * 1e6) // 8)


class _Holder:
    """Arrays as attributes, no nbytes of its own (as a SciPy sparse matrix)."""

    def __init__(self, data: Any, indices: Any) -> None:
        self.data, self.indices = data, indices


@pytest.mark.parametrize("kind", ["array", "dict", "holder"])
def test_aimap_holds_back_a_slow_async_for_by_the_bytes_of_arrays_too(
        tmp_path: Path, kind: str) -> None:
    # Arrays from workers do not own their memory: sys.getsizeof said 112 bytes for
    # 1.6 MB, so only the 256-item bound held: 264 tasks ran ahead (+550 MB).
    pytest.importorskip("numpy")
    started = tmp_path / "started"

    def array_task(i: int) -> Any:
        with open(started, "a") as out:
            out.write(f"{i}\n")
        if kind == "array":
            return _array_of(1.6)
        if kind == "dict":
            return {"a": _array_of(0.8), "b": _array_of(0.8)}
        return _Holder(_array_of(0.8), _array_of(0.8))

    async def main() -> None:
        async with Cluster(n=2) as cl:
            results = cl.aimap(array_task, range(1000))
            await results.__anext__()
            await asyncio.sleep(2)  # the tasks alone would get through hundreds
            await results.aclose()

    asyncio.run(main())
    ran = len(started.read_text().splitlines())
    assert ran < 40, f"{ran} tasks ran for 1 taken"


def test_an_aimap_never_closed_does_not_hold_the_interpreter_at_exit(tmp_path: Path) -> None:
    # Its reading thread waited for room forever, and the interpreter joined it at
    # exit: the script hung after its last line.
    result = run_script("""
        import asyncio
        from sockpool import Cluster

        cl = Cluster(n=2)
        kept = []

        async def main():
            agen = cl.aimap(abs, range(5000))
            kept.append(agen)  # kept, never closed
            async for x in agen:
                break
            await asyncio.sleep(1.0)  # the reader fills its buffer and waits for room

        loop = asyncio.new_event_loop()
        loop.run_until_complete(main())
        loop.close()  # without shutdown_asyncgens: nothing closes the async generator
        cl.close()
        print("end of script")
    """, tmp_path, timeout=30)
    assert result.stdout == "end of script\n"


class _LazyCount:
    """An input whose ``__len__`` would have to evaluate it (and here cannot)."""

    def __iter__(self) -> Iterator[int]:
        return iter(range(5))

    def __len__(self) -> int:
        raise ValueError("the length is not known until it is computed")


def test_imap_asks_no_length_of_its_input_unless_a_bar_needs_one() -> None:
    async def main() -> list[int]:
        async with Cluster(n=1) as cl:
            assert list(cl.imap(abs, _LazyCount())) == [0, 1, 2, 3, 4]
            assert list(cl.imap(abs, _LazyCount(), progress=True)) == [0, 1, 2, 3, 4]
            return [x async for x in cl.aimap(abs, _LazyCount())]

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]


class _SlowInput:
    """A generator's stand-in that takes 0.2 s an item, and counts what was read."""

    def __init__(self, items: int) -> None:
        self.read = 0
        self._items = items

    def __iter__(self) -> Iterator[int]:
        for i in range(self._items):
            time.sleep(0.2)
            self.read += 1
            yield i


class _SlowToPickle:
    """Takes 1 s to serialize: a map of a function holding it is cancelled meanwhile."""

    def __reduce__(self) -> tuple[type, tuple[()]]:
        time.sleep(1.0)
        return (_SlowToPickle, ())


@pytest.mark.parametrize("where", ["reading its input", "serializing its function"])
def test_cancelling_apar_map_before_its_job_is_made_stops_it_at_once(
        tmp_path: Path, where: str) -> None:
    slow_input = _SlowInput(20)
    heavy = _SlowToPickle()

    def mark(path: str) -> int:
        assert heavy is not None  # captured: the function takes 1 s to serialize
        return _sleep_then_mark(path, 0)

    async def main() -> None:
        async with Cluster(n=2) as cl:
            paths = [str(tmp_path / f"t{i}") for i in range(20)]
            if where == "reading its input":
                call = cl.apar_map(_sleep_then_mark, (paths[i] for i in slow_input),
                                   [0] * 20)
            else:
                call = cl.apar_map(mark, paths)
            task = asyncio.create_task(call)
            await asyncio.sleep(0.5)
            cancelled = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - cancelled < 1.5  # not the 4 s of the whole input
            read = slow_input.read
            assert await cl.asubmit(abs, -4) == 4
            await asyncio.sleep(0.5)
            assert slow_input.read == read  # reading stopped with the cancellation
            assert not any(Path(p).exists() for p in paths)  # and no task ran

    asyncio.run(main())


def test_cancelling_an_async_for_stops_reading_a_slow_input(tmp_path: Path) -> None:
    slow_input = _SlowInput(20)

    async def main() -> None:
        async with Cluster(n=1) as cl:
            seen: list[int] = []

            async def consume() -> None:
                async for value in cl.aimap(_square, slow_input, chunksize=1):
                    seen.append(value)

            task = asyncio.create_task(consume())
            await asyncio.sleep(1.0)
            cancelled = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - cancelled < 1.0
            read = slow_input.read
            await asyncio.sleep(0.6)
            assert slow_input.read == read < 20
            assert seen == [x * x for x in range(len(seen))]

    asyncio.run(main())


def test_aimap_over_a_sized_input_that_is_not_a_list_shows_its_total(
        capsys: pytest.CaptureFixture[str]) -> None:
    # The input is read only until a cancellation; reading it that way kept its length.
    async def main() -> None:
        async with Cluster(n=1) as cl:
            squares = [x async for x in cl.aimap(_square, dict.fromkeys(range(30)),
                                                 progress=True)]
            assert squares == [x * x for x in range(30)]

    asyncio.run(main())
    assert "30/30" in capsys.readouterr().err
