"""Timing helpers shared by the benchmarks (run as scripts from this folder)."""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any


def timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` takes."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def round_trips(submit: Callable[..., Any], calls: int) -> float:
    """Median seconds of ``submit(abs, 1).result()`` over ``calls`` calls."""
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        submit(abs, 1).result()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def burn(iterations: int) -> int:
    """Pure-Python CPU work, the same on every worker: the CPU-bound task."""
    total = 0
    for i in range(iterations):
        total += i & 7
    return total


def calibrate_burn(seconds: float) -> tuple[int, float]:
    """Iterations of :func:`burn` that take about ``seconds`` here, and their measured time."""
    trial = 200_000
    iterations = int(trial / timed(lambda: burn(trial)) * seconds)
    return iterations, statistics.median(timed(lambda: burn(iterations)) for _ in range(3))


def cached_array(nbytes: int) -> Any:
    """A NumPy array of ``nbytes`` made once per process, so that returning it times no making."""
    import numpy as np

    cache: dict[int, Any] = sys.__dict__.setdefault("_sockpool_bench_arrays", {})
    if nbytes not in cache:
        cache[nbytes] = np.random.default_rng(1).random(nbytes // 8)
    return cache[nbytes]


class BareZmqPeer:
    """The floor of any design on ZeroMQ: a ROUTER here and one process dialing it over ipc.

    ``serve(address)`` runs in a spawned process: it connects a DEALER to
    ``address``, sends one frame, then answers each message until it gets an
    empty frame.  No pickling, no I/O thread, no futures.
    """

    def __init__(self, serve: Callable[[str], None]) -> None:
        import zmq

        self._dir = tempfile.TemporaryDirectory()
        address = f"ipc://{self._dir.name}/peer"
        self._sock = zmq.Context.instance().socket(zmq.ROUTER)
        self._sock.bind(address)
        self._process = multiprocessing.get_context("spawn").Process(target=serve,
                                                                       args=(address,))
        self._process.start()
        self._peer, _ = self._sock.recv_multipart()

    def exchange(self, frame: Any, copy: bool = True) -> None:
        """Send one frame and wait for the answer."""
        self._sock.send_multipart([self._peer, frame], copy=copy)
        self._sock.recv_multipart()

    def close(self) -> None:
        self._sock.send_multipart([self._peer, b""])
        self._process.join(10)
        self._sock.close(linger=0)
        self._dir.cleanup()


def summary(samples: list[float], scale: float, unit: str) -> str:
    """``median unit (min, max)`` of samples scaled to ``unit``."""
    med = statistics.median(samples) * scale
    return f"{med:9.2f} {unit} (min {min(samples) * scale:.2f}, max {max(samples) * scale:.2f})"


def map_and_round_trip_arguments(description: str) -> argparse.Namespace:
    """The options of the bulk-map and round-trip benchmarks (``--quick``: a smoke run)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=2000, help="round trips per repetition")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.tasks, args.calls = 2, 10_000, 200
    return args
