"""The performance suite: sockpool against its peers on six workloads, in one run.

    python benchmarks/suite.py [--workers 2] [--repeat 5] [--peers sockpool,mp fork,...]
                               [--out benchmarks/results] [--quick] [--large-workers 256]

Peers: multiprocessing (fork and spawn), ProcessPoolExecutor, loky, joblib,
dask.distributed's LocalCluster, ipyparallel and ray, each where it is installed
(``pip install -e '.[bench]'`` installs them all).  Workloads:

1. startup: create the pool, then the first result of a trivial task;
2. bulk map: 100 000 trivial tasks, chunk size the pool's own choice, per task;
   and tasks that each spin 1 ms, as a multiple of the ideal ``tasks x 1 ms / workers``;
3. round trip: one ``submit(abs, 1)`` and its result, median over many;
4. data: a 100 MB NumPy array as the argument, and as the result (GB/s), read
   once by its receiver (a value in every page, so lazy mappings pay their way),
   and the master's peak memory over a round trip of it, in multiples of the array;
5. captured data: a 50 MB global read by ``g``, mapped over 200 items with chunk
   size 1, against ``h`` that captures nothing (time of map(g) / map(h));
6. CPU-bound: 4 tasks per worker of 0.5 s each, speedup over running them one
   after the other in this process, and parallel efficiency (speedup / workers).

Every peer runs each repetition in a fresh process of its own (the suite runs
itself with ``--child``; every child keeps compiled bytecode, as an installed
package does, even where ``PYTHONDONTWRITEBYTECODE`` is set), so no peer's
leftovers slow another; repetitions
interleave the peers, so drift on a noisy machine hits all alike.  The table of
medians (min-max) and the ratio sockpool / best peer is printed and saved with
a plot to ``--out``.  ``--quick`` is a smoke run of small sizes (fast peers only
unless ``--peers`` names others); its numbers mean nothing.

Then the goals of issue 22, each beside its peer with the ratio and a verdict
(``goals.py``): every repetition also times a fresh interpreter from start to the
first result of ``Cluster(n=2)`` and of multiprocessing's spawn and fork pools,
a bare ZeroMQ REQ/REP ping-pong over ipc and one NumPy pass over the captured
array (rows of their own), and with ``--large-workers N`` a cluster of N local
workers against one of 2 (master's CPU per task, start, close, idle CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import goals
import numpy as np
import psutil
from peers import PEERS, Peer, parse_peers
from report import Result, write_report
from timing import burn, cached_array, calibrate_burn

HERE = Path(__file__).resolve().parent
QUICK_PEERS = ("sockpool", "mp fork", "mp spawn", "PPE", "loky", "joblib")

# -- the tasks: defined in __main__, as a user's script would -----------------------
# (but burn and cached_array, which other benchmarks share from timing.py)

# The captured global exists only in the processes measuring the capture workload,
# so that no other workload pays for creating it in spawned workers.
BIG = (np.random.default_rng(0).random(int(os.environ["SP_BENCH_BIG_MB"]) * 125_000)
       if os.environ.get("SP_BENCH_BIG_MB") else None)


def g(i: int) -> float:
    """Reads the captured global."""
    return float(BIG[i])  # type: ignore[index]


def h(i: int) -> float:
    """Captures nothing."""
    return float(i)


def spin(seconds: float) -> float:
    """Busy for ``seconds`` of wall time."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def touch_pages(array: np.ndarray) -> float:
    """Read one value in every 4 KiB page: the data is really there, for every peer.

    A peer that maps data lazily (joblib's memmap) pays for it here, as a task
    that uses its argument would.
    """
    return float(array.reshape(-1)[::512].sum())


def identity(array: np.ndarray) -> np.ndarray:
    return array


# -- one peer, one process: the measurements ---------------------------------------


def _cap(peer: Peer, workload: str, wanted: int) -> int:
    return min(wanted, peer.caps.get(workload, wanted))


def _seconds(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _peak_rss_during(fn: Any) -> tuple[int, Any]:
    """Peak resident memory of this process over ``fn()``, sampled every 0.5 ms."""
    process = psutil.Process()
    peak = [process.memory_info().rss]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = fn()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], process.memory_info().rss), result


def _release_free_memory() -> None:
    """Give freed heap memory back, so the baseline counts only what is in use."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure_main(peer: Peer, workers: int, sizes: dict[str, Any]) -> dict[str, float]:
    """Every workload but the captured global, in one pool."""
    out: dict[str, float] = {}
    peer.load()
    out["startup"] = _seconds(lambda: (peer.open(workers), peer.submit(abs, -1)))

    items = list(range(_cap(peer, "bulk", sizes["bulk"])))
    peer.map(abs, items[:1000])
    elapsed = _seconds(lambda: _check(peer.map(abs, items) == items, "bulk map"))
    out["bulk"] = elapsed / len(items) * 1e6

    tasks = _cap(peer, "ms_tasks", sizes["ms_tasks_per_worker"] * workers)
    elapsed = _seconds(lambda: peer.map(spin, [0.001] * tasks))
    out["ms_tasks"] = elapsed / (tasks * 0.001 / workers)

    calls = _cap(peer, "round_trip", sizes["round_trips"])
    for _ in range(10):
        peer.submit(abs, 1)
    samples = [_seconds(lambda: peer.submit(abs, 1)) for _ in range(calls)]
    out["round_trip"] = statistics.median(samples) * 1e6

    array = np.random.default_rng(2).random(sizes["data_mb"] * 125_000)
    peer.submit(identity, array[:1000])  # the code path warm, no large buffer freed yet
    _release_free_memory()
    baseline = psutil.Process().memory_info().rss
    peak, back = _peak_rss_during(lambda: peer.submit(identity, array))
    _check(np.array_equal(back, array), "round trip of the array")
    out["peak_memory"] = (peak - baseline) / array.nbytes
    del back
    # Warm: one transfer per worker each way (the peers that keep buffers keep them per worker).
    for _ in range(workers):
        peer.submit(touch_pages, array)
    out["data_in"] = array.nbytes / statistics.median(
        _seconds(lambda: peer.submit(touch_pages, array)) for _ in range(5)) / 1e9
    expected = touch_pages(cached_array(array.nbytes))
    for _ in range(workers):
        peer.submit(cached_array, array.nbytes)
    out["data_out"] = array.nbytes / statistics.median(
        _seconds(lambda: _check(touch_pages(peer.submit(cached_array, array.nbytes)) == expected,
                                "data out")) for _ in range(5)) / 1e9

    tasks = sizes["cpu_tasks_per_worker"] * workers
    out["cpu_elapsed"] = _seconds(lambda: peer.map(burn, [sizes["burn"]] * tasks, chunksize=1))
    return out


def measure_capture(peer: Peer, workers: int, sizes: dict[str, Any]) -> dict[str, float]:
    """map(g) / map(h): what a 50 MB captured global costs once it has been sent."""
    peer.load()
    peer.open(workers)
    items = list(range(_cap(peer, "capture", sizes["capture_items"])))
    peer.map(h, items, chunksize=1)
    _check(peer.map(g, items, chunksize=1) == [float(BIG[i]) for i in items],  # type: ignore[index]
           "map of g")
    with_capture, without = [], []
    for _ in range(5):
        with_capture.append(_seconds(lambda: peer.map(g, items, chunksize=1)))
        without.append(_seconds(lambda: peer.map(h, items, chunksize=1)))
    return {"capture": statistics.median(with_capture) / statistics.median(without),
            "capture_extra_ms": (statistics.median(with_capture)
                                 - statistics.median(without)) * 1e3}


def measure_floors(sizes: dict[str, Any]) -> dict[str, float]:
    """The reference rows: a bare ZeroMQ REQ/REP ping-pong, one NumPy pass over BIG."""
    return {"zmq_req_rep": goals.zmq_req_rep(sizes["round_trips"]) * 1e6,
            "numpy_pass": goals.numpy_pass(BIG) * 1e3}


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(f"wrong results from {what}")


def run_child(name: str, group: str, workers: int, sizes: dict[str, Any]) -> None:
    """Measure one peer in this process and print the figures as JSON."""
    if group == "floors":
        print("FIGURES " + json.dumps(measure_floors(sizes)), flush=True)
        return
    if group == "large":
        print("FIGURES " + json.dumps(goals.measure_large(
            workers, sizes["large_tasks_per_worker"], sizes["large_idle"])), flush=True)
        return
    peer = PEERS[name]()
    try:
        measure = measure_capture if group == "capture" else measure_main
        figures: dict[str, Any] = measure(peer, workers, sizes)
    finally:
        try:
            peer.close()
        except Exception as error:  # the figures stand; say what did not close
            print(f"closing {name}: {error!r}", file=sys.stderr)
    print("FIGURES " + json.dumps(figures), flush=True)


# -- the run: calibrate, run the children interleaved, report ----------------------


def sizes_for(args: argparse.Namespace, burn_iterations: int) -> dict[str, Any]:
    quick = args.quick
    return {
        "bulk": 10_000 if quick else 100_000,
        "ms_tasks_per_worker": 25 if quick else 250,
        "round_trips": 50 if quick else 300,
        "data_mb": 10 if quick else args.data_mb,
        "capture_mb": 5 if quick else 50,
        "capture_items": 20 if quick else 200,
        "cpu_tasks_per_worker": 1 if quick else 4,
        "burn": burn_iterations,
        "large_tasks_per_worker": 5 if quick else 20,
        "large_idle": 1.0 if quick else 5.0,
    }


def run_peer(name: str, group: str, args: argparse.Namespace, sizes: dict[str, Any]
             ) -> dict[str, Any]:
    """One child process; its figures, or {"error": why}."""
    env = dict(os.environ)
    if group in ("capture", "floors"):
        env["SP_BENCH_BIG_MB"] = str(sizes["capture_mb"])
    command = [sys.executable, str(HERE / "suite.py"), "--child", name, "--group", group,
               "--workers", str(args.large_workers if group == "large" else args.workers),
               "--sizes", json.dumps(sizes)]
    child = subprocess.Popen(command, cwd=HERE, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = child.communicate(timeout=args.child_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # its session: the pool it started too
        child.communicate()
        return {"error": f"timed out after {args.child_timeout} s"}
    finally:
        _end_session(child.pid)
    for line in stdout.splitlines():
        if line.startswith("FIGURES "):
            return dict(json.loads(line[len("FIGURES "):]))
    last = (stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
    return {"error": last[:200]}


def _end_session(session: int) -> None:
    """Anything a peer left running in the child's session (its id is the child's pid)."""
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getsid(process.pid) == session:
                os.kill(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--peers", help="comma-separated names (default: all installed)")
    parser.add_argument("--data-mb", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None,
                        help="where results.md/.json/.png go (default benchmarks/results)")
    parser.add_argument("--child-timeout", type=float, default=600)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--large-workers", type=int, default=0, metavar="N",
                        help="also measure a cluster of N local workers against 2 (issue 22's "
                             "large-cluster row; 256 needs about 20 GB of memory)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--group", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.group, args.workers, json.loads(args.sizes))
        return
    if args.workers < 1 or args.repeat < 1:
        parser.error("--workers and --repeat must be at least 1")
    names = _choose_peers(parser, args)
    if args.quick:
        args.repeat = 1
    out = args.out or HERE / "results" / ("quick" if args.quick else "")

    keep_bytecode()
    burn_iterations, burn_seconds = calibrate_burn(0.05 if args.quick else 0.5)
    sizes = sizes_for(args, burn_iterations)
    samples: dict[str, dict[str, list[float]]] = {}
    errors: dict[str, str] = {}
    started = time.perf_counter()
    for repetition in range(args.repeat):
        for name in goals.FRESH_PEERS:
            samples.setdefault("fresh_startup", {}).setdefault(name, []).append(
                goals.fresh_startup(name))
        extra = [("floor", "floors")]
        if args.large_workers:
            extra.append(("sockpool", "large"))
        for name, group in extra:
            figures = run_peer(name, group, args, sizes)
            if "error" in figures:
                errors[f"{name} ({group})"] = figures["error"]
                print(f"  {name} {group}: {figures['error']}", file=sys.stderr)
                continue
            for metric, value in figures.items():
                samples.setdefault(metric, {}).setdefault(name, []).append(value)
        for name in names:
            for group in ("main", "capture"):
                figures = run_peer(name, group, args, sizes)
                if "error" in figures:
                    errors[f"{name} ({group})"] = figures["error"]
                    print(f"  {name} {group}: {figures['error']}", file=sys.stderr)
                    continue
                if "cpu_elapsed" in figures:
                    tasks = sizes["cpu_tasks_per_worker"] * args.workers
                    speedup = tasks * burn_seconds / figures.pop("cpu_elapsed")
                    figures["cpu_speedup"] = speedup
                    figures["cpu_efficiency"] = speedup / args.workers * 100
                for metric, value in figures.items():
                    samples.setdefault(metric, {}).setdefault(name, []).append(value)
        print(f"repetition {repetition + 1}/{args.repeat} done "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    result = Result(samples=samples, errors=errors, peers=names, setup={
        "workers": args.workers, "repeat": args.repeat, "cores": os.cpu_count(),
        "python": platform.python_version(), "machine": platform.machine(),
        "quick": args.quick, "sizes": sizes, "burn_seconds": burn_seconds,
        "date": time.strftime("%Y-%m-%d"),
    })
    goal_table = goals.goal_table(samples, sizes, args.workers, args.large_workers)
    print(write_report(result, out, goal_table))


def keep_bytecode() -> None:
    """Let every child keep compiled bytecode (``__pycache__``), and compile sockpool's now.

    An installed package has its ``.pyc`` files; with ``PYTHONDONTWRITEBYTECODE``
    set (as on some CI machines) every fresh interpreter would compile sockpool's
    modules again, about 40 ms that no user pays, while the standard library's
    and the peers' are compiled already.
    """
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-c", "import sockpool.api.cluster, sockpool.worker.main"],
                   check=True)


def _choose_peers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    if args.peers:
        return parse_peers(parser, args.peers)
    wanted = QUICK_PEERS if args.quick else tuple(PEERS)
    return [name for name in wanted if PEERS[name].available()]


if __name__ == "__main__":
    main()
