"""Where a ``submit(abs, 1).result()`` round trip's time goes, hop by hop.

    python benchmarks/bench_hops.py [--calls 2000] [--repeat 3] [--quick]

Stamps (``time.perf_counter``: CLOCK_MONOTONIC, one clock for every process on
Linux) are taken by wrapping the functions each hop runs, in the master and,
through ``run_on_all``, in each worker:

1. caller: ``Calls.submit`` (the function and arguments packed, the chunk made),
   then ``Mailbox.post`` (queued, the wake-up byte written);
2. the I/O thread wakes (``Mailbox.clear_wake``) and sends the TASK
   (``MasterSocket.send``);
3. the worker's main thread gets it (``recv_message``), runs it
   (``ChunkRunner.run``: decode, call, encode), sends the RESULT (``link.send``);
4. the I/O thread reads it (``MasterSocket.receive``) and resolves the future
   (``FutureJob.deliver``);
5. the caller's ``result()`` returns.

The gaps between stamps of two threads or processes are wake-ups and libzmq's
own hand-offs.  The wrapping costs a little per stamp, so the table prints the
instrumented total beside a plain round trip and two floors: a bare ZeroMQ
REQ/REP ping-pong between two processes (``goals.zmq_req_rep``), and the same
design as sockpool's with none of its code (:func:`design_floor`: a caller
thread hands a message to an I/O thread, which alone owns a ROUTER socket,
through a list and a pipe; a DEALER in another process echoes it; the I/O
thread wakes the caller through an ``Event``).  A burst row times 1 000
``submit`` calls made at once, then their results, per call.

Then the CPU time each thread of both processes spends per round trip
(``/proc``'s ``schedstat``), sockpool's beside the design floor's: where the time above the
floor goes, since on a machine with as many cores as busy threads a round
trip is the sum of its threads' CPU time.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import goals
import zmq

import sockpool.api.calls
import sockpool.dispatch.jobs
import sockpool.dispatch.mailbox
import sockpool.dispatch.transport
from sockpool import Cluster

HOPS = (
    ("submit: pack the call, make the chunk", "submit_in", "post_in"),
    ("post: queue it, write the wake-up byte", "post_in", "post_out"),
    ("wake-up of the I/O thread", "post_out", "io_wake"),
    ("I/O thread: wake-up to TASK sent", "io_wake", "send_out"),
    ("libzmq: master -> worker, worker wakes", "send_out", "w_recv"),
    ("worker: received to run started", "w_recv", "w_run_in"),
    ("worker: run the chunk (decode, call, encode)", "w_run_in", "w_run_out"),
    ("worker: send the RESULT", "w_run_out", "w_send_out"),
    ("libzmq: worker -> master, I/O thread wakes", "w_send_out", "io_recv"),
    ("I/O thread: RESULT read to future resolved", "io_recv", "deliver_out"),
    ("wake-up of the caller, result() returns", "deliver_out", "end"),
)

_stamps: dict[str, float] = {}


def _wrap(owner: Any, name: str, before: str | None, after: str | None,
          when: Callable[[Any], bool] = lambda result: True) -> None:
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if before:
            _stamps[before] = time.perf_counter()
        result = original(*args, **kwargs)
        if after and when(result):
            _stamps[after] = time.perf_counter()
        return result

    setattr(owner, name, wrapped)


def instrument_master() -> None:
    """Wrap the master's hops (the caller's and the I/O thread's)."""
    _wrap(sockpool.api.calls.Calls, "submit", "submit_in", None)
    _wrap(sockpool.dispatch.mailbox.Mailbox, "post", "post_in", "post_out")
    _wrap(sockpool.dispatch.mailbox.Mailbox, "clear_wake", None, "io_wake")
    _wrap(sockpool.dispatch.transport.MasterSocket, "send", None, "send_out")
    _wrap(sockpool.dispatch.transport.MasterSocket, "receive", None, "io_recv",
          when=lambda frames: frames is not None)
    _wrap(sockpool.dispatch.jobs.FutureJob, "deliver", None, "deliver_out")


def instrument_worker() -> None:
    """In a worker (sent by ``run_on_all``): wrap its receive, run and send."""
    import sockpool.common.wire
    import sockpool.worker.link
    import sockpool.worker.runner

    stamps: dict[str, float] = {}
    import sys

    sys.__dict__["_sockpool_hops"] = stamps
    history: list[dict[str, float]] = []
    sys.__dict__["_sockpool_hop_history"] = history

    def wrap(owner: Any, name: str, before: str | None, after: str | None) -> None:
        original = getattr(owner, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if before:
                stamps[before] = time.perf_counter()
            result = original(*args, **kwargs)
            if after:
                stamps[after] = time.perf_counter()
            if after == "w_send_out":
                history.append(dict(stamps))
            return result

        setattr(owner, name, wrapped)

    wrap(sockpool.common.wire, "recv_message", None, "w_recv")
    wrap(sockpool.worker.runner.ChunkRunner, "run", "w_run_in", "w_run_out")
    wrap(sockpool.worker.link, "send", None, "w_send_out")


def worker_history() -> list[dict[str, float]]:
    import sys

    history: list[dict[str, float]] = sys.__dict__["_sockpool_hop_history"]
    out = list(history)
    history.clear()
    return out


def measure(cluster: Cluster, calls: int) -> tuple[dict[str, list[float]], float]:
    """Hop durations (µs) of ``calls`` round trips, and their median total (µs)."""
    hops: dict[str, list[float]] = {label: [] for label, _, _ in HOPS}
    masters = []
    for _ in range(calls):
        _stamps.clear()
        cluster.submit(abs, 1).result()
        _stamps["end"] = time.perf_counter()
        masters.append(dict(_stamps))
    workers = [stamp for history in cluster.run_on_all(worker_history) for stamp in history
               if {"w_recv", "w_run_in", "w_run_out"} <= stamp.keys()]
    workers.sort(key=lambda stamp: stamp["w_recv"])
    totals = []
    for master in masters:
        # This round trip's worker stamps: the first received after the TASK went out.
        mine = next((w for w in workers if master["send_out"] <= w["w_recv"] <= master["end"]),
                    None)
        if mine is None or "io_wake" not in master:
            continue
        both = {**master, **mine}
        for label, start, stop in HOPS:
            hops[label].append((both[stop] - both[start]) * 1e6)
        totals.append((master["end"] - master["submit_in"]) * 1e6)
    return hops, statistics.median(totals)


def plain_round_trip(cluster: Cluster, calls: int) -> float:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        cluster.submit(abs, 1).result()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def burst(cluster: Cluster, calls: int) -> float:
    """µs per call of ``calls`` submits made at once, then their results."""
    started = time.perf_counter()
    futures = [cluster.submit(abs, 1) for _ in range(calls)]
    for future in futures:
        future.result()
    return (time.perf_counter() - started) / calls * 1e6


def _echo(address: str) -> None:
    """The design floor's worker: a DEALER that echoes each message until an empty one."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(address)
    sock.send(b"ready")
    while message := sock.recv():
        sock.send(message)


#: CPU seconds per thread, by role: the master's caller, I/O thread and libzmq's
#: thread, and the worker's main thread and libzmq's.
ThreadTimes = dict[str, float]


def thread_times(master: int, io_thread: int, worker: int) -> ThreadTimes:
    """CPU seconds so far of each thread that does a round trip's work
    (``/proc/<pid>/task/<tid>/schedstat``: nanoseconds, where ``stat`` counts ticks)."""
    roles: ThreadTimes = collections.defaultdict(float)
    for pid, side in ((master, "master"), (worker, "worker")):
        for tid in map(int, os.listdir(f"/proc/{pid}/task")):
            with open(f"/proc/{pid}/task/{tid}/comm") as comm:
                name = comm.read().strip()
            if name.startswith("ZMQbg/IO"):
                role = f"{side}: libzmq's I/O thread"
            elif tid == pid:
                role = "master: caller (main thread)" if side == "master" else "worker: main thread"
            elif tid == io_thread:
                role = "master: the I/O thread"
            else:
                continue  # libzmq's reaper, the worker's watchdog: idle here
            with open(f"/proc/{pid}/task/{tid}/schedstat") as schedstat:
                roles[role] += int(schedstat.read().split()[0]) / 1e9
    return roles


def per_call(before: ThreadTimes, after: ThreadTimes, calls: int) -> ThreadTimes:
    """Each role's CPU µs per call between two readings."""
    return {role: (after[role] - before.get(role, 0.0)) / calls * 1e6 for role in after}


def design_floor(calls: int) -> tuple[float, ThreadTimes]:
    """Median µs of a round trip through sockpool's design with none of its code, and
    its threads' CPU µs per round trip: caller -> list and pipe -> I/O thread (the
    only user of the ROUTER, woken by ``zmq.Poller``) -> a DEALER in a spawned
    process, which echoes -> I/O thread -> ``Event`` -> caller."""
    folder = tempfile.TemporaryDirectory()
    address = f"ipc://{folder.name}/floor"
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.bind(address)
    process = multiprocessing.get_context("spawn").Process(target=_echo, args=(address,))
    process.start()
    peer, _ = router.recv_multipart()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    outbox: collections.deque[bytes | None] = collections.deque()
    waiting: dict[bytes, threading.Event] = {}
    io_thread_id: list[int] = []

    def io() -> None:
        io_thread_id.append(threading.get_native_id())
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(wake_r, zmq.POLLIN)
        while True:
            for source, _ in poller.poll():
                if source is router:
                    while True:
                        try:
                            _, message = router.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        waiting.pop(message).set()
                    continue
                os.read(wake_r, 4096)
                while outbox:
                    message = outbox.popleft()
                    router.send_multipart([peer, message or b""])
                    if message is None:
                        return

    def round_trip(i: int) -> None:
        message = i.to_bytes(8, "little")
        done = waiting[message] = threading.Event()
        outbox.append(message)
        os.write(wake_w, b"\0")
        done.wait()

    thread = threading.Thread(target=io, daemon=True)
    thread.start()
    try:
        for i in range(200):  # warm
            round_trip(i)
        samples = []
        before = thread_times(os.getpid(), io_thread_id[0], process.pid)
        for i in range(calls):
            started = time.perf_counter()
            round_trip(i)
            samples.append(time.perf_counter() - started)
        cpu = per_call(before, thread_times(os.getpid(), io_thread_id[0], process.pid), calls)
    finally:
        outbox.append(None)
        os.write(wake_w, b"\0")
        thread.join(10)
        process.join(10)
        if process.is_alive():
            process.kill()
        router.close(linger=0)
        os.close(wake_r)
        os.close(wake_w)
        folder.cleanup()
    return statistics.median(samples) * 1e6, cpu


def sockpool_threads(cluster: Cluster, calls: int) -> ThreadTimes:
    """CPU µs per round trip of each thread of the master and of the worker that ran them."""
    worker = cluster.submit(os.getpid).result()
    io_thread = cluster._dispatcher.mailbox.ask(threading.get_native_id)
    before = thread_times(os.getpid(), io_thread, worker)
    for _ in range(calls):
        cluster.submit(abs, 1).result()
    return per_call(before, thread_times(os.getpid(), io_thread, worker), calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.repeat = 200, 1

    plain: list[float] = []
    bursts: list[float] = []
    floor: list[float] = []
    design: list[float] = []
    cpu: dict[str, list[ThreadTimes]] = {"sockpool": [], "design floor": []}
    for _ in range(args.repeat):  # before any cluster: no libzmq thread but its own
        cpu["design floor"].append(design_floor(args.calls)[1])
    with Cluster(n=1) as single:  # one worker: every round trip's CPU is on its threads
        for _ in range(args.repeat):
            cpu["sockpool"].append(sockpool_threads(single, args.calls))
    with Cluster(n=2) as cluster:
        for _ in range(args.repeat):  # uninstrumented first: interleaved with the floors
            plain_round_trip(cluster, 100)
            plain.append(plain_round_trip(cluster, args.calls))
            bursts.append(burst(cluster, 1000))
            floor.append(goals.zmq_req_rep(args.calls) * 1e6)
            design.append(design_floor(args.calls)[0])
        instrument_master()
        cluster.run_on_all(instrument_worker)
        measure(cluster, 100)  # warm
        hops: dict[str, list[float]] = {label: [] for label, _, _ in HOPS}
        totals = []
        for _ in range(args.repeat):
            found, total = measure(cluster, args.calls)
            totals.append(total)
            for label, values in found.items():
                hops[label].append(statistics.median(values))

    print(f"2 workers, {args.calls} round trips x {args.repeat}, medians of the "
          "repetitions' medians (µs)\n")
    for label, values in hops.items():
        print(f"  {label:46s} {statistics.median(values):8.1f}")
    hop_sum = sum(statistics.median(values) for values in hops.values())
    print(f"  {'sum of the hops':46s} {hop_sum:8.1f}")
    print(f"  {'instrumented round trip':46s} {statistics.median(totals):8.1f}")
    print(f"\n  {'plain round trip':46s} {statistics.median(plain):8.1f}")
    print(f"  {'bare ZeroMQ REQ/REP ping-pong (floor)':46s} {statistics.median(floor):8.1f}")
    print(f"  {'the same design, none of its code (floor)':46s} "
          f"{statistics.median(design):8.1f}")
    print(f"  {'ratio plain / ZeroMQ':46s} "
          f"{statistics.median(plain) / statistics.median(floor):8.2f}")
    print(f"  {'ratio plain / the same design':46s} "
          f"{statistics.median(plain) / statistics.median(design):8.2f}")
    print(f"  {'ratio the same design / ZeroMQ':46s} "
          f"{statistics.median(design) / statistics.median(floor):8.2f}")
    print(f"  {'burst of 1000 submits, per call':46s} {statistics.median(bursts):8.1f}")

    print("\nCPU time per round trip by thread (µs; sockpool with one worker)\n")
    print(f"  {'thread':38s} {'sockpool':>9s} {'design floor':>13s} {'above it':>9s}")
    roles = sorted(set().union(*cpu["sockpool"], *cpu["design floor"]))
    totals = {"sockpool": 0.0, "design floor": 0.0}
    for role in roles:
        ours, floors = (statistics.median(run.get(role, 0.0) for run in cpu[name])
                        for name in ("sockpool", "design floor"))
        totals["sockpool"] += ours
        totals["design floor"] += floors
        print(f"  {role:38s} {ours:9.1f} {floors:13.1f} {ours - floors:9.1f}")
    print(f"  {'all of them':38s} {totals['sockpool']:9.1f} {totals['design floor']:13.1f} "
          f"{totals['sockpool'] - totals['design floor']:9.1f}")


if __name__ == "__main__":
    main()
