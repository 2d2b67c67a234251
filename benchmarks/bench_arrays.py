"""Arrays NumPy pickles inside the pickle, sent again and again: sockpool beside loky.

    python benchmarks/bench_arrays.py [--repeat 3] [--mb 50] [--quick]

NumPy hands pickle a plain contiguous array's data as an out-of-band buffer,
which sockpool sends through shared memory (and keeps, when the same array is
sent again: ``common/kept_segments.py``).  Every other array NumPy copies into
the pickle: datetime64 data, a structured dtype holding it, a ``recarray``,
a strided slice.  Each row sends one such array of ``--mb`` MB to 10
``submit`` calls on 2 workers (all in flight at once) and times them to the
last result, interleaved with loky's reusable executor (``submit`` pickles
its arguments with cloudpickle, in band) doing the same; medians of
``--repeat`` repetitions, and their ratio.  A contiguous float64 array is the
first row, the case NumPy itself sends out of band.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
from timing import timed

from sockpool import Cluster

CALLS = 10


def rows(nbytes: int) -> dict[str, np.ndarray]:
    """One array of about ``nbytes`` bytes of each kind."""
    items = nbytes // 16  # of 16 bytes: the structured ones
    matrix = np.arange(4 * items, dtype=np.float64).reshape(-1, 8)  # half of it viewed
    events = np.zeros(items, dtype=[("at", "M8[ns]"), ("value", "f8")])
    events["at"] = np.datetime64("2026-01-01", "ns") + np.arange(items).astype("m8[s]")
    return {
        "float64, contiguous": np.ones(2 * items),
        "datetime64[ns]": np.datetime64("2026-01-01", "ns") + np.arange(2 * items),
        "structured, with datetime64": events,
        "recarray": events.view(np.recarray),
        "every other column": matrix[:, ::2],
    }


def length(array: np.ndarray) -> int:
    return len(array)


def ten_calls(submit: Callable[..., Any], array: np.ndarray) -> float:
    """Seconds for ``CALLS`` submits of ``array``, all in flight, to their last result."""
    return timed(lambda: [f.result() for f in [submit(length, array) for _ in range(CALLS)]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.mb = 1, 4
    from joblib.externals import loky

    arrays = rows(args.mb * 1_000_000)
    times: dict[tuple[str, str], list[float]] = {}
    executor = loky.get_reusable_executor(max_workers=2)
    with Cluster(n=2) as cluster:
        peers: dict[str, Callable[..., Any]] = {"sockpool": cluster.submit,
                                                "loky": executor.submit}
        for submit in peers.values():  # warm: workers started, functions cached
            [f.result() for f in [submit(length, a) for a in arrays.values()]]
        for _ in range(args.repeat):
            for kind, array in arrays.items():
                for peer, submit in peers.items():
                    times.setdefault((kind, peer), []).append(ten_calls(submit, array))
    executor.shutdown(wait=True, kill_workers=True)

    print(f"{CALLS} submits of one {args.mb} MB array, 2 workers, medians of "
          f"{args.repeat} (s)\n")
    print(f"{'array':30} {'sockpool':>10} {'loky':>10} {'ratio sockpool / loky':>23}")
    for kind in arrays:
        ours, theirs = (statistics.median(times[(kind, peer)]) for peer in peers)
        print(f"{kind:30} {ours:10.3f} {theirs:10.3f} {ours / theirs:23.2f}")


if __name__ == "__main__":
    main()
