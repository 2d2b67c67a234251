"""The cost of encryption: the ipc transport against loopback TCP with CURVE.

    python benchmarks/bench_transport.py [--repeat 5] [--quick]

Both transports are equally safe for local clusters (docs/security.md); this
measures which is faster, interleaved, medians (min-max):

* a 100 MB NumPy array as the argument of one task (in), and as its result (out);
* 100 000 tiny tasks (``par_map(abs, ...)``, automatic chunks);
* ``submit(abs, 1).result()`` round trips.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
from timing import round_trips, timed

from sockpool import Cluster


def send_in(a: np.ndarray) -> int:
    return int(a.nbytes)


def make(nbytes: int) -> np.ndarray:
    return np.ones(nbytes // 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    nbytes, tiny, calls = 100_000_000, 100_000, 1000
    if args.quick:
        args.repeat, nbytes, tiny, calls = 2, 10_000_000, 10_000, 100
    array = make(nbytes)
    results: dict[tuple[str, str], list[float]] = {}
    with Cluster(n=2, transport="ipc") as ipc, Cluster(n=2, transport="tcp") as tcp:
        clusters = {"ipc": ipc, "tcp+CURVE": tcp}
        for cl in clusters.values():  # warm up
            cl.par_map(send_in, [array])
        for _ in range(args.repeat):
            for name, cl in clusters.items():
                add = results.setdefault
                add((name, "in"), []).append(timed(lambda c=cl: c.par_map(send_in, [array])))
                add((name, "out"), []).append(timed(lambda c=cl: c.par_map(make, [nbytes])))
                add((name, "tiny"), []).append(
                    timed(lambda c=cl: c.par_map(abs, range(tiny))) / tiny)
                add((name, "rt"), []).append(round_trips(cl.submit, calls))

    def med(key: tuple[str, str]) -> float:
        return statistics.median(results[key])

    print(f"2 workers, {args.repeat} repetitions, medians\n")
    print(f"{'':12} {'100 MB in':>12} {'100 MB out':>12} {'tiny task':>12} {'round trip':>12}")
    for name in ("ipc", "tcp+CURVE"):
        print(f"{name:12} {nbytes / med((name, 'in')) / 1e9:9.2f} GB/s "
              f"{nbytes / med((name, 'out')) / 1e9:9.2f} GB/s "
              f"{med((name, 'tiny')) * 1e6:9.2f} µs {med((name, 'rt')) * 1e6:9.1f} µs")
    print("\nratio tcp+CURVE / ipc (time): "
          + ", ".join(f"{kind} {med(('tcp+CURVE', kind)) / med(('ipc', kind)):.2f}"
                      for kind in ("in", "out", "tiny", "rt")))


if __name__ == "__main__":
    main()
