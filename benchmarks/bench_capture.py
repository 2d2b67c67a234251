"""Captured data crosses the wire once per worker: a 50 MB global against none.

    python benchmarks/bench_capture.py [--workers 2] [--repeat 7] [--quick]

``g`` reads a 50 MB NumPy array captured from this script's globals; ``h``
captures nothing.  Each is mapped over 200 items with ``chunksize=1``, in the
same cluster, interleaved.  The first map of ``g`` ships the array to each
worker ("cold"); every later map finds it cached there by digest ("warm"), and
pays only for pickling the function (the array out of band, not copied) and
checksumming it, which is how a changed global is still noticed.

Reports medians (min-max) and the ratio warm g / h: the target is at most 1.3 (issue 9: 1.1).
No assertion is made on the numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from sockpool import Cluster

BIG = np.random.default_rng(0).random(6_250_000)  # 50 MB


def g(i: int) -> float:
    return float(BIG[i])


def h(i: int) -> float:
    return float(i)


def timed(cluster: Cluster, fn: object, items: int) -> float:
    started = time.perf_counter()
    cluster.par_map(fn, range(items), chunksize=1)  # type: ignore[arg-type]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.items = 2, 50

    with Cluster(n=args.workers) as cluster:
        timed(cluster, h, args.items)  # warm up the cluster itself
        cold = timed(cluster, g, args.items)
        warm: list[float] = []
        plain: list[float] = []
        for _ in range(args.repeat):
            warm.append(timed(cluster, g, args.items))
            plain.append(timed(cluster, h, args.items))

    def show(samples: list[float]) -> str:
        return (f"{statistics.median(samples) * 1e3:8.1f} ms "
                f"(min {min(samples) * 1e3:.1f}, max {max(samples) * 1e3:.1f})")

    print(f"{args.workers} workers, {args.items} tasks with chunksize=1, "
          f"{args.repeat} repetitions, medians (min, max)\n")
    print(f"  h: captures nothing          {show(plain)}")
    print(f"  g: captures 50 MB, warm      {show(warm)}")
    print(f"  g: captures 50 MB, first map {cold * 1e3:8.1f} ms (ships it to each worker)")
    ratio = statistics.median(warm) / statistics.median(plain)
    print(f"  ratio warm g / h             {ratio:8.2f}   (target <= 1.3)")


if __name__ == "__main__":
    main()
