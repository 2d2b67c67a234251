"""Tasks of very uneven length: wall time over the ideal, sockpool beside multiprocessing.

    python benchmarks/bench_uneven.py [--workers 2] [--repeat 5] [--long 1.0] [--quick]

Each workload runs two patterns of durations with ``chunksize=1``, as a grid
search whose few slow fits would run (the tasks sleep, so a busy machine does
not skew them): "spread", ``[long, short x 20, long, short x 20]`` (short =
``long / 100``), and "head", ``[long, 0, long / 2]``, where the third task is
dealt before anything is known of how long the first runs. The ideal is the
total over the workers, or the longest task if that is more; a scheduler that
leaves a worker idle while work waits behind a long task shows up as a ratio
of 1.5 to 2. The pools alternate in each repetition; medians.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import statistics
import time
from collections.abc import Callable
from typing import Any

from timing import timed

import sockpool


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def patterns(long: float) -> dict[str, list[float]]:
    short = long / 100
    return {"spread": [long, *[short] * 20, long, *[short] * 20],
            "head": [long, 0.0, long / 2]}


def ideal(tasks: list[float], workers: int) -> float:
    return max(max(tasks), sum(tasks) / workers)


def workloads(cluster: sockpool.Cluster, ours: Any, theirs: Any, executor: Any,
              tasks: list[float]) -> dict[str, Callable[[], Any]]:
    def submit_all(pool: Any) -> list[Any]:
        return [f.result() for f in [pool.submit(sleep_for, t) for t in tasks]]

    return {
        "Cluster.par_map": lambda: cluster.par_map(sleep_for, tasks, chunksize=1),
        "Cluster.imap": lambda: list(cluster.imap(sleep_for, tasks, chunksize=1)),
        "Cluster.imap unordered": lambda: list(cluster.imap(sleep_for, tasks, chunksize=1,
                                                            ordered=False)),
        "Cluster.submit": lambda: submit_all(cluster),
        "sockpool.Pool.map": lambda: ours.map(sleep_for, tasks, chunksize=1),
        "sockpool.Pool.imap": lambda: list(ours.imap(sleep_for, tasks, chunksize=1)),
        "mp Pool.map": lambda: theirs.map(sleep_for, tasks, chunksize=1),
        "mp Pool.imap": lambda: list(theirs.imap(sleep_for, tasks, chunksize=1)),
        "mp Pool.imap_unordered": lambda: list(theirs.imap_unordered(sleep_for, tasks,
                                                                     chunksize=1)),
        "ProcessPoolExecutor.submit": lambda: submit_all(executor),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--long", type=float, default=1.0, help="the long tasks' seconds")
    parser.add_argument("--quick", action="store_true", help="a smoke run: numbers mean nothing")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.long = 1, 0.05
    samples: dict[tuple[str, str], list[float]] = {}
    with sockpool.Cluster(n=args.workers) as cluster, sockpool.Pool(args.workers) as ours, \
            multiprocessing.Pool(args.workers) as theirs, \
            concurrent.futures.ProcessPoolExecutor(args.workers) as executor:
        runs = {(pattern, name): run
                for pattern, tasks in patterns(args.long).items()
                for name, run in workloads(cluster, ours, theirs, executor, tasks).items()}
        for run in runs.values():  # warm up: workers started, code paths hot
            run()
        for _ in range(args.repeat):
            for key, run in runs.items():
                samples.setdefault(key, []).append(timed(run))
    print(f"{args.workers} workers, {args.repeat} repetitions, chunksize=1, long tasks "
          f"{args.long} s\n")
    print(f"{'pattern':8} {'workload':30} {'median s':>9} {'min':>7} {'max':>7} {'/ ideal':>8}")
    for (pattern, name), values in samples.items():
        median = statistics.median(values)
        best = ideal(patterns(args.long)[pattern], args.workers)
        print(f"{pattern:8} {name:30} {median:9.3f} {min(values):7.3f} {max(values):7.3f} "
              f"{median / best:8.2f}")

if __name__ == "__main__":
    main()
