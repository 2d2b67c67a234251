"""Core benchmark: sockpool against the standard library's pools, side by side in one run.

    python benchmarks/bench_core.py [--workers 2] [--repeat 7] [--quick]

Workloads (each repeated, peers interleaved, medians with min-max reported):

* bulk map: 100 000 trivial tasks (``abs``), ``Cluster.par_map`` against
  ``multiprocessing.Pool.map`` (both choosing their own chunk size);
* round trip: one ``submit(abs, 1).result()``, ``Cluster.submit`` against
  ``ProcessPoolExecutor.submit`` and ``Pool.apply_async(...).get()``, median
  over many calls; and, as the floor of any design on ZeroMQ, a bare
  ROUTER/DEALER and a bare REQ/REP ping-pong between two Python processes over
  ``ipc://`` (no I/O thread, no pickling, no futures).

Ratios are sockpool's time over the peer's: below 1 means sockpool is faster.
No assertion is made on the numbers: machines are noisy; read the medians.
"""

from __future__ import annotations

import multiprocessing
import statistics
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from bench_pool import apply_round_trips
from goals import zmq_req_rep
from timing import BareZmqPeer, map_and_round_trip_arguments, round_trips, summary, timed

from sockpool import Cluster


def _echo(address: str) -> None:
    import zmq

    sock = zmq.Context().socket(zmq.DEALER)
    sock.connect(address)
    sock.send(b"ready")
    while message := sock.recv():
        sock.send(message)


class ZmqPingPong(BareZmqPeer):
    """The floor: a bare zmq round trip between this process and an echo process."""

    def __init__(self) -> None:
        super().__init__(_echo)

    def submit(self, fn: Any, arg: Any) -> ZmqPingPong:
        self.exchange(b"x" * 40)
        return self

    def result(self) -> None:
        pass


def main() -> None:
    args = map_and_round_trip_arguments(__doc__.splitlines()[0])

    items = list(range(args.tasks))
    names = ("sockpool map", "Pool.map", "sockpool rt", "PPE rt", "Pool rt", "zmq rt",
             "req/rep rt")
    results: dict[str, list[float]] = {name: [] for name in names}
    ping = ZmqPingPong()
    with Cluster(n=args.workers) as cluster, \
            multiprocessing.Pool(args.workers) as pool, \
            ProcessPoolExecutor(args.workers) as executor:
        # Warm up every pool (workers started, code paths hot).
        cluster.par_map(abs, items)
        pool.map(abs, items)
        round_trips(cluster.submit, 100)
        round_trips(executor.submit, 100)
        for _ in range(args.repeat):  # interleaved, so drift hits all alike
            results["sockpool map"].append(timed(lambda: cluster.par_map(abs, items)))
            results["Pool.map"].append(timed(lambda: pool.map(abs, items)))
            results["sockpool rt"].append(round_trips(cluster.submit, args.calls))
            results["PPE rt"].append(round_trips(executor.submit, args.calls))
            results["Pool rt"].append(apply_round_trips(pool, args.calls))
            results["zmq rt"].append(round_trips(ping.submit, args.calls))
            results["req/rep rt"].append(zmq_req_rep(args.calls))
    ping.close()

    per_task = 1e6 / args.tasks
    print(f"{args.workers} workers, {args.repeat} repetitions, medians (min, max)\n")
    print(f"bulk map of {args.tasks} trivial tasks, per task:")
    print(f"  sockpool par_map           {summary(results['sockpool map'], per_task, 'µs')}")
    print(f"  multiprocessing Pool.map   {summary(results['Pool.map'], per_task, 'µs')}")
    map_ratio = statistics.median(results["sockpool map"]) / statistics.median(results["Pool.map"])
    print(f"  ratio sockpool / Pool.map  {map_ratio:9.2f}")
    print("\nsubmit -> result round trip (median of each repetition's median):")
    print(f"  sockpool submit            {summary(results['sockpool rt'], 1e6, 'µs')}")
    print(f"  ProcessPoolExecutor        {summary(results['PPE rt'], 1e6, 'µs')}")
    rt_ratio = statistics.median(results["sockpool rt"]) / statistics.median(results["PPE rt"])
    print(f"  ratio sockpool / PPE       {rt_ratio:9.2f}")
    print(f"  Pool.apply_async (fork)    {summary(results['Pool rt'], 1e6, 'µs')}")
    print(f"  floor: bare zmq ping-pong  {summary(results['zmq rt'], 1e6, 'µs')}")
    print(f"  floor: bare zmq REQ/REP    {summary(results['req/rep rt'], 1e6, 'µs')}")
    floor = statistics.median(results["sockpool rt"]) / statistics.median(results["req/rep rt"])
    print(f"  ratio sockpool / REQ/REP   {floor:9.2f}")


if __name__ == "__main__":
    main()
