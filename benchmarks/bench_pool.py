"""sockpool.Pool against multiprocessing.Pool, the drop-in and the original, in one run.

    python benchmarks/bench_pool.py [--workers 2] [--repeat 7] [--quick]

Workloads (each repeated, the two pools interleaved, medians with min-max):

* ``Pool.map(abs, range(100_000))``: 100 000 trivial tasks, both pools choosing
  their chunk size (the same rule: about four chunks per worker);
* ``Pool.map_async(...).get()``: the same, through the asynchronous path;
* ``Pool.map(abs, items, chunksize=1)`` over a twentieth as many items: each
  task a chunk of its own, so the per-chunk cost of dispatch shows;
* ``Pool.map(abs, range(8))``: a small map, median over many calls, as a sampler
  or an optimizer makes thousands of (emcee, ``differential_evolution``); once
  ``abs`` was timed, sockpool cuts it into one chunk per worker
  (``sockpool/api/pace.py``), multiprocessing into 8;
* ``list(Pool.imap(abs, range(8)))``: the same, lazily (multiprocessing's imap
  sends chunks of one task; sockpool's, over a list, as its map cuts it);
* ``apply_async(abs, (1,)).get()`` round trip, median over many calls, beside
  ``Cluster.submit(abs, 1).result()`` on the pool's own cluster: the difference
  is the drop-in's own cost (its ``AsyncResult`` and result thread).

``multiprocessing.Pool`` is the default context's (fork, on Linux: its fastest).
Ratios are sockpool's time over multiprocessing's: below 1 means sockpool is faster.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from typing import Any

from timing import map_and_round_trip_arguments, round_trips, summary, timed

import sockpool


def apply_round_trips(pool: Any, calls: int) -> float:
    """Median seconds of ``pool.apply_async(abs, (1,)).get()`` over ``calls`` calls."""
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        pool.apply_async(abs, (1,)).get()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def small_maps(pool: Any, calls: int, lazily: bool = False) -> float:
    """Median seconds of ``pool.map(abs, range(8))`` (``list(pool.imap(...))``: lazily)
    over ``calls`` calls."""
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        if lazily:
            list(pool.imap(abs, range(8)))
        else:
            pool.map(abs, range(8))
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def ratio(results: dict[str, list[float]], ours: str, theirs: str) -> float:
    return statistics.median(results[ours]) / statistics.median(results[theirs])


def main() -> None:
    args = map_and_round_trip_arguments(__doc__.splitlines()[0])

    items = list(range(args.tasks))
    small = items[:max(1, args.tasks // 20)]
    names = ("sp map", "mp map", "sp map_async", "mp map_async", "sp map 1", "mp map 1",
             "sp map 8", "mp map 8", "sp imap 8", "mp imap 8", "sp rt", "mp rt", "cl rt")
    results: dict[str, list[float]] = {name: [] for name in names}
    with sockpool.Pool(args.workers) as ours, multiprocessing.Pool(args.workers) as theirs:
        for pool in (ours, theirs):  # warm up: workers started, code paths hot
            pool.map(abs, items)
            apply_round_trips(pool, 100)
        for _ in range(args.repeat):  # interleaved, so drift hits both alike
            for prefix, pool in (("sp", ours), ("mp", theirs)):
                results[f"{prefix} map"].append(timed(lambda p=pool: p.map(abs, items)))
                results[f"{prefix} map_async"].append(
                    timed(lambda p=pool: p.map_async(abs, items).get()))
                results[f"{prefix} map 1"].append(
                    timed(lambda p=pool: p.map(abs, small, chunksize=1)))
                results[f"{prefix} map 8"].append(small_maps(pool, args.calls))
                results[f"{prefix} imap 8"].append(small_maps(pool, args.calls, lazily=True))
                results[f"{prefix} rt"].append(apply_round_trips(pool, args.calls))
            results["cl rt"].append(round_trips(ours.cluster.submit, args.calls))

    per_task = 1e6 / args.tasks
    print(f"{args.workers} workers, {args.repeat} repetitions, medians (min, max)\n")
    print(f"Pool.map of {args.tasks} trivial tasks, per task:")
    print(f"  sockpool.Pool.map              {summary(results['sp map'], per_task, 'µs')}")
    print(f"  multiprocessing Pool.map       {summary(results['mp map'], per_task, 'µs')}")
    print(f"  ratio sockpool / mp map        {ratio(results, 'sp map', 'mp map'):9.2f}")
    print(f"\nPool.map_async(...).get() of {args.tasks} trivial tasks, per task:")
    print(f"  sockpool.Pool.map_async        {summary(results['sp map_async'], per_task, 'µs')}")
    print(f"  multiprocessing map_async      {summary(results['mp map_async'], per_task, 'µs')}")
    print(f"  ratio sockpool / mp map_async  "
          f"{ratio(results, 'sp map_async', 'mp map_async'):9.2f}")
    per_small_task = 1e6 / len(small)
    print(f"\nPool.map of {len(small)} trivial tasks with chunksize=1, per task:")
    print(f"  sockpool.Pool.map              {summary(results['sp map 1'], per_small_task, 'µs')}")
    print(f"  multiprocessing Pool.map       {summary(results['mp map 1'], per_small_task, 'µs')}")
    print(f"  ratio sockpool / mp chunksize=1 {ratio(results, 'sp map 1', 'mp map 1'):8.2f}")
    print("\nPool.map(abs, range(8)), per map (median of each repetition's median):")
    print(f"  sockpool.Pool.map              {summary(results['sp map 8'], 1e6, 'µs')}")
    print(f"  multiprocessing Pool.map       {summary(results['mp map 8'], 1e6, 'µs')}")
    print(f"  ratio sockpool / mp small map  {ratio(results, 'sp map 8', 'mp map 8'):9.2f}")
    print("\nlist(Pool.imap(abs, range(8))), per call (median of each repetition's median):")
    print(f"  sockpool.Pool.imap             {summary(results['sp imap 8'], 1e6, 'µs')}")
    print(f"  multiprocessing Pool.imap      {summary(results['mp imap 8'], 1e6, 'µs')}")
    print(f"  ratio sockpool / mp small imap {ratio(results, 'sp imap 8', 'mp imap 8'):9.2f}")
    print("\napply_async(abs, (1,)).get() round trip (median of each repetition's median):")
    print(f"  sockpool.Pool                  {summary(results['sp rt'], 1e6, 'µs')}")
    print(f"  multiprocessing Pool           {summary(results['mp rt'], 1e6, 'µs')}")
    print(f"  ratio sockpool / mp round trip {ratio(results, 'sp rt', 'mp rt'):9.2f}")
    print(f"  sockpool Cluster.submit        {summary(results['cl rt'], 1e6, 'µs')}")
    print(f"  ratio Pool / Cluster.submit    {ratio(results, 'sp rt', 'cl rt'):9.2f}")


if __name__ == "__main__":
    main()
