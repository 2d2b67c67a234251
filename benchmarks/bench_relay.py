"""What relaying worker output costs per task: relay on, live, and off, side by side.

    python benchmarks/bench_relay.py [--workers 2] [--repeat 7] [--quick]

Three clusters (``relay=True``, the default; ``relay="live"``; ``relay=False``),
measured interleaved on the same workloads:

* 100 000 trivial tasks that print nothing (``par_map``, automatic chunks);
* ``submit(abs, 1).result()`` round trips;
* 2 000 tasks that each print one line, one task per chunk.

Prints medians (min-max) per task and the overhead against ``relay=False``.
No assertion is made on the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics

from timing import round_trips, timed

from sockpool import Cluster


def say(x: int) -> int:
    print("task", x, "done")
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    silent_tasks, printing_tasks, calls = 100_000, 2_000, 1_000
    if args.quick:
        args.repeat, silent_tasks, printing_tasks, calls = 2, 10_000, 200, 100

    modes: dict[str, bool | str] = {"on": True, "live": "live", "off": False}
    results: dict[tuple[str, str], list[float]] = {}
    sink = io.StringIO()
    with contextlib.ExitStack() as stack:
        clusters = {name: stack.enter_context(Cluster(n=args.workers, relay=mode))
                    for name, mode in modes.items()}
        for _ in range(args.repeat):
            for name, cluster in clusters.items():
                with contextlib.redirect_stdout(sink):  # the printed lines go nowhere
                    results.setdefault((name, "silent"), []).append(timed(
                        lambda c=cluster: c.par_map(abs, range(silent_tasks))) / silent_tasks)
                    results.setdefault((name, "round trip"), []).append(
                        round_trips(cluster.submit, calls))
                    results.setdefault((name, "printing"), []).append(timed(
                        lambda c=cluster: c.par_map(say, range(printing_tasks), chunksize=1))
                        / printing_tasks)
                sink.seek(0)
                sink.truncate()

    print(f"{args.workers} workers, {args.repeat} repetitions, medians per task (min, max)\n")
    for workload in ("silent", "round trip", "printing"):
        off = statistics.median(results[("off", workload)])
        print(f"{workload}:")
        for name in modes:
            samples = results[(name, workload)]
            med = statistics.median(samples)
            print(f"  relay {name:<4} {med * 1e6:9.2f} µs (min {min(samples) * 1e6:.2f}, "
                  f"max {max(samples) * 1e6:.2f})   {med / off:5.2f}x off")


if __name__ == "__main__":
    main()
