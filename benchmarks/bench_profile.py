"""What profiling costs: the same maps with and without ``Cluster.profile()``, in one run.

    python benchmarks/bench_profile.py [--workers 2] [--repeat 7] [--quick]

Workloads, on one cluster, profiled and unprofiled runs interleaved:

* 1 ms tasks: a map of CPU-bound tasks of about 1 ms each (goal: at most 3%);
* bulk map: 100 000 trivial tasks (``abs``) (goal: at most 5%).

Reported as the ratio of medians, profiled over unprofiled: 1.00 is free.
Profiling off costs nothing by construction (no task is timed, nothing is
recorded), so it has no row of its own.  No assertion on the numbers.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from timing import burn, calibrate_burn, map_and_round_trip_arguments, summary, timed

from sockpool import Cluster


def main() -> None:
    args = map_and_round_trip_arguments(__doc__.splitlines()[0])
    repeat, tasks, short = args.repeat, args.tasks, args.tasks // 100
    iterations, one = calibrate_burn(0.001)
    print(f"{args.workers} workers; 1 ms task = burn({iterations}) measured {one * 1e3:.2f} ms; "
          f"{repeat} runs each, interleaved")
    with Cluster(n=args.workers) as cl:
        rows: list[tuple[str, float, Callable[[], Any]]] = [
            (f"{short} tasks of 1 ms", 0.03,
             lambda: cl.par_map(burn, [iterations] * short)),
            (f"bulk map of {tasks} trivial tasks", 0.05, lambda: cl.par_map(abs, range(tasks))),
        ]
        for name, goal, work in rows:
            work()  # warm: the function is cached on the workers
            plain, profiled = [], []
            for _ in range(repeat):
                plain.append(timed(work))
                with cl.profile() as prof:
                    profiled.append(timed(work))
            assert len(prof.tasks) == (short if "1 ms" in name else tasks)
            ratio = statistics.median(profiled) / statistics.median(plain)
            verdict = "met" if ratio <= 1 + goal else "missed"
            print(f"{name}:\n  off {summary(plain, 1e3, 'ms')}"
                  f"\n  on  {summary(profiled, 1e3, 'ms')}"
                  f"\n  ratio profiled / unprofiled {ratio:.3f} "
                  f"(goal <= {1 + goal:.2f}: {verdict})")


if __name__ == "__main__":
    main()
