"""The ways data crosses: shared memory, the ipc socket, loopback TCP with CURVE.

    python benchmarks/bench_transport.py [--repeat 5] [--quick]

Three clusters of 2 workers, interleaved, medians (min-max):

* ``ipc + shared memory``: a local cluster as it starts by default; large
  buffers go through shared memory, everything else through an ``ipc://`` socket;
* ``ipc socket only``: the same with ``SOCKPOOL_SHARED_MEMORY=0`` in the
  workers' environment, so every byte crosses the socket;
* ``tcp+CURVE socket only``: what workers on other machines use (here over
  loopback): encrypted, every byte on the socket.

Each runs a 100 MB NumPy array as the argument of one task (in) and as its
result (out; each worker makes it once, so only its return is timed), the
receiver reading a value in every page; 100 000 tiny tasks
(``par_map(abs, ...)``, automatic chunks); and ``submit(abs, 1).result()``
round trips.  The floor of any design on ZeroMQ is measured beside them: the
same 100 MB sent zero-copy by a bare ROUTER to an echo process that reads every
page and answers (no pickling, no copy, no I/O thread).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import numpy as np
from timing import BareZmqPeer, cached_array, round_trips, timed

from sockpool import Cluster

PAGE_VALUES = 4096 // 8  # float64 values in a 4 KiB page


def send_in(a: np.ndarray) -> float:
    """Reads a value in every page of its argument."""
    return float(a[::PAGE_VALUES].sum())


def _reader(address: str) -> None:
    """The floor's far end: reads a value in every page of each array it gets."""
    import zmq

    sock = zmq.Context().socket(zmq.DEALER)
    sock.connect(address)
    sock.send(b"ready")
    while len(frame := sock.recv(copy=False)):
        np.frombuffer(frame.buffer, dtype=np.float64)[::PAGE_VALUES].sum()
        del frame
        sock.send(b"ok")


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    nbytes, tiny, calls = 100_000_000, 100_000, 1000
    if args.quick:
        args.repeat, nbytes, tiny, calls = 2, 10_000_000, 10_000, 100
    array = cached_array(nbytes)
    socket_only = {"SOCKPOOL_SHARED_MEMORY": "0"}
    results: dict[tuple[str, str], list[float]] = {}
    floor = BareZmqPeer(_reader)  # the array sent zero-copy, its pages read there
    with Cluster(n=2) as shared, Cluster(n=2, env=socket_only) as ipc, \
            Cluster(n=2, transport="tcp", env=socket_only) as tcp:
        clusters: dict[str, Any] = {"ipc + shared memory": shared, "ipc socket only": ipc,
                                    "tcp+CURVE socket only": tcp}
        for cl in clusters.values():  # warm up: workers, code paths, buffers each way
            cl.par_map(send_in, [array, array])
            cl.par_map(cached_array, [nbytes, nbytes])
        floor.exchange(array, copy=False)
        for _ in range(args.repeat):  # interleaved, so drift hits all alike
            for name, cl in clusters.items():
                add = results.setdefault
                add((name, "in"), []).append(timed(lambda c=cl: c.par_map(send_in, [array])))
                add((name, "out"), []).append(
                    timed(lambda c=cl: send_in(c.par_map(cached_array, [nbytes])[0])))
                add((name, "tiny"), []).append(
                    timed(lambda c=cl: c.par_map(abs, range(tiny))) / tiny)
                add((name, "rt"), []).append(round_trips(cl.submit, calls))
            results.setdefault(("floor", "in"), []).append(
                timed(lambda: floor.exchange(array, copy=False)))
    floor.close()

    def rate(name: str, kind: str) -> str:  # GB/s
        return summary([nbytes / seconds / 1e9 for seconds in results[(name, kind)]])

    def micro(name: str, kind: str) -> str:
        return summary([seconds * 1e6 for seconds in results[(name, kind)]])

    def ratio(name: str, other: str, kind: str) -> float:  # of times: above 1 is slower
        return statistics.median(results[(name, kind)]) / statistics.median(results[(other, kind)])

    mb = nbytes // 1_000_000
    print(f"2 workers, {args.repeat} repetitions, medians (min-max)\n")
    print(f"{'':22} {f'{mb} MB in, GB/s':>19} {f'{mb} MB out, GB/s':>19} "
          f"{'tiny task, µs':>19} {'round trip, µs':>21}")
    for name in clusters:
        print(f"{name:22} {rate(name, 'in'):>19} {rate(name, 'out'):>19} "
              f"{micro(name, 'tiny'):>19} {micro(name, 'rt'):>21}")
    print(f"{'floor: bare zmq ipc':22} {rate('floor', 'in'):>19}")
    print("\nratio tcp+CURVE / ipc, socket only (time): " + ", ".join(
        f"{kind} {ratio('tcp+CURVE socket only', 'ipc socket only', kind):.2f}"
        for kind in ("in", "out", "tiny", "rt")))
    print(f"ratio ipc socket only / bare zmq floor (time, in): "
          f"{ratio('ipc socket only', 'floor', 'in'):.2f}")


if __name__ == "__main__":
    main()
