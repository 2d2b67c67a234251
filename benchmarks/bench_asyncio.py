"""asyncio doors: per-item cost of an awaited map, and the event loop's longest pause.

    python benchmarks/bench_asyncio.py [--workers 2] [--repeat 5] [--items 20000] [--quick]

Rows, each repetition in one fresh event loop, medians with min-max:

* ``async for x in cl.aimap(abs, items)`` beside the blocking ``cl.imap`` on the
  same cluster, which it wraps: the ratio is what ``async for`` adds;
* ``await cl.apar_map(abs, items)`` beside ``cl.par_map``;
* the asyncio way with the standard library's pool: ``asyncio.gather`` of
  ``loop.run_in_executor(ProcessPoolExecutor, abs, x)`` over a tenth as many items
  (one future each, as ``asubmit`` would be), beside ``asyncio.gather`` of
  ``cl.asubmit(abs, x)``.

Beside each awaited row: the longest gap of a 10 ms ticker during it (a blocked
loop shows as a gap far above 10 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from timing import summary

import sockpool


class LoopLag:
    """The longest gap between the 10 ms ticks of a callback the loop re-arms: a blocked
    loop shows as a gap far above 10 ms."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._last = time.monotonic()
        self.longest = 0.0
        self._handle = loop.call_later(0.01, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        self.longest = max(self.longest, now - self._last)
        self._last = now
        self._handle = self._loop.call_later(0.01, self._tick)

    def stop(self) -> float:
        self._handle.cancel()
        return max(self.longest, time.monotonic() - self._last)


async def ticking(work: Awaitable[Any]) -> tuple[float, float]:
    """Seconds ``work`` takes, and the loop's longest pause meanwhile."""
    lag = LoopLag(asyncio.get_running_loop())
    started = time.perf_counter()
    await work
    took = time.perf_counter() - started
    return took, lag.stop()


async def consume(iterator: Any) -> int:
    return sum([1 async for _ in iterator])


async def one_repetition(cl: sockpool.Cluster, pool: concurrent.futures.Executor,
                         items: int) -> dict[str, tuple[float, float]]:
    loop = asyncio.get_running_loop()
    few = max(10, items // 10)
    rows: dict[str, tuple[float, float]] = {}
    rows["aimap"] = await ticking(consume(cl.aimap(abs, range(items))))
    started = time.perf_counter()
    sum(1 for _ in cl.imap(abs, range(items)))
    rows["imap"] = (time.perf_counter() - started, 0.0)
    rows["apar_map"] = await ticking(cl.apar_map(abs, range(items)))
    started = time.perf_counter()
    cl.par_map(abs, range(items))
    rows["par_map"] = (time.perf_counter() - started, 0.0)
    rows["gather asubmit"] = await ticking(asyncio.gather(*(cl.asubmit(abs, x)
                                                           for x in range(few))))
    rows["gather run_in_executor(PPE)"] = await ticking(asyncio.gather(
        *(loop.run_in_executor(pool, abs, x) for x in range(few))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    repeat, items = (1, 500) if args.quick else (args.repeat, args.items)
    samples: dict[str, list[tuple[float, float]]] = {}
    with sockpool.Cluster(n=args.workers) as cl, \
            concurrent.futures.ProcessPoolExecutor(args.workers) as pool:
        list(pool.map(abs, range(args.workers * 4)))  # its workers started
        for _ in range(repeat):
            for name, sample in asyncio.run(one_repetition(cl, pool, items)).items():
                samples.setdefault(name, []).append(sample)

    per_item: dict[str, float] = {}
    print(f"{args.workers} workers, {items} items ({max(10, items // 10)} for the gathers), "
          f"{repeat} repetitions; per item, and the loop's longest pause:")
    for name, pairs in samples.items():
        n = max(10, items // 10) if name.startswith("gather") else items
        times = [took / n for took, _ in pairs]
        per_item[name] = statistics.median(times)
        gap = "" if name in ("imap", "par_map") else (
            f"   longest pause {summary([g for _, g in pairs], 1e3, 'ms')}")
        print(f"  {name:28} {summary(times, 1e6, 'µs')}{gap}")
    ratios: list[tuple[str, Callable[[], float]]] = [
        ("aimap / imap", lambda: per_item["aimap"] / per_item["imap"]),
        ("apar_map / par_map", lambda: per_item["apar_map"] / per_item["par_map"]),
        ("asubmit / PPE run_in_executor",
         lambda: per_item["gather asubmit"] / per_item["gather run_in_executor(PPE)"]),
    ]
    for label, value in ratios:
        print(f"  ratio {label:32} {value():6.2f}")


if __name__ == "__main__":
    main()
