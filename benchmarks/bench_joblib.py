"""joblib's Parallel on the "sockpool" backend against the same on "loky", in one run.

    python benchmarks/bench_joblib.py [--workers 2] [--repeat 7] [--quick]

Workloads (each repeated, the two backends interleaved, medians with min-max):

* ``Parallel(n_jobs=2)(delayed(f)(i) for i in range(100_000))``: trivial tasks,
  joblib's automatic batching on both backends;
* 2 000 tasks of 1 ms of pure-Python CPU work each;
* 40 tasks each given the same large array (scikit-learn's ``X``, 256 MB by
  default), each reading one value in every 4 KiB page of it: loky writes it to
  a memory-mapped file once per call, sockpool copies it into shared memory once
  and names that copy from then on (``sockpool/common/kept_segments.py``).

Both pools are started and warmed up (one call each) before anything is timed:
loky keeps its workers between calls, and the sockpool cluster lives for the
whole run.  Ratios are sockpool's time over loky's: below 1 means sockpool is faster.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from timing import burn, calibrate_burn, summary, timed

from sockpool import Cluster
from sockpool.joblib import SockpoolBackend


def f(x: int) -> int:
    """The trivial task."""
    return x + 1


def every_page(x: Any, i: int) -> float:
    """Read one value in every 4 KiB page of ``x``, as a task using it would."""
    return float(x.reshape(-1)[::512].sum()) + i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--large-mb", type=int, default=256, help="the large array's size")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    trivial, cpu_tasks = 100_000, 2_000
    if args.quick:
        args.repeat, trivial, cpu_tasks, args.large_mb = 2, 10_000, 200, 8
    large = np.random.default_rng(0).random(args.large_mb * 1024 * 1024 // 8)
    iterations, one_ms = calibrate_burn(0.001)
    n = args.workers

    workloads: dict[str, Callable[[Any], object]] = {
        f"{trivial} trivial tasks": lambda backend: Parallel(n_jobs=n, backend=backend)(
            delayed(f)(i) for i in range(trivial)),
        f"{cpu_tasks} tasks of 1 ms": lambda backend: Parallel(n_jobs=n, backend=backend)(
            delayed(burn)(iterations) for _ in range(cpu_tasks)),
        f"40 tasks given one {args.large_mb} MB array": lambda backend: Parallel(
            n_jobs=n, backend=backend)(delayed(every_page)(large, i) for i in range(40)),
    }
    results: dict[tuple[str, str], list[float]] = {}
    with Cluster(n=n) as cluster:
        backends = {"sockpool": SockpoolBackend(cluster=cluster), "loky": "loky"}
        for backend in backends.values():  # start and warm up both
            Parallel(n_jobs=n, backend=backend)(delayed(f)(i) for i in range(1000))
        for _ in range(args.repeat):
            for name, run in workloads.items():
                for peer, backend in backends.items():
                    results.setdefault((name, peer), []).append(
                        timed(lambda run=run, backend=backend: run(backend)))

    print(f"{n} workers, {args.repeat} repetitions, medians (min, max); "
          f"a 1 ms task measures {one_ms * 1e3:.2f} ms here\n")
    for name in workloads:
        print(f"{name}:")
        for backend in ("sockpool", "loky"):
            print(f"  {backend:<9} {summary(results[(name, backend)], 1e3, 'ms')}")
        ratio = (statistics.median(results[(name, "sockpool")])
                 / statistics.median(results[(name, "loky")]))
        print(f"  ratio sockpool / loky: {ratio:.2f}x\n")


if __name__ == "__main__":
    main()
