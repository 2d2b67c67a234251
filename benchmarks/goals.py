"""The suite's goal rows (issue 22): what the peer table does not measure, and the verdicts.

Measured here, each beside the figure its goal compares it with:

* fresh-process startup: a new interpreter that imports the pool, creates it with
  2 workers and gets the first result of a trivial task (``Cluster(n=2)``, and
  multiprocessing's spawn and fork pools), timed from ``Popen`` to that result;
* the floor of a round trip: a bare ZeroMQ REQ/REP ping-pong over ``ipc://``
  between this process and a spawned one (no pickling, no I/O thread);
* one NumPy pass over the captured array (``G.sum()``), the yardstick of what a
  warm map capturing it may cost;
* a large cluster (``--large-workers N``): the master's CPU time per task, start
  and close, and the idle master's CPU (heartbeats) at ``N`` workers against 2.

:func:`goal_table` turns the samples of a run into the table of goals, each
with its ratio and "met" or "missed".
"""

from __future__ import annotations

import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

# -- fresh-process startup -------------------------------------------------------------

_FRESH = {
    "sockpool": """
from sockpool import Cluster
cluster = Cluster(n=2)
cluster.submit(abs, 1).result()
""",
    "mp spawn": """
import multiprocessing
pool = multiprocessing.get_context("spawn").Pool(2)
pool.apply_async(abs, (1,)).get()
""",
    "mp fork": """
import multiprocessing
pool = multiprocessing.get_context("fork").Pool(2)
pool.apply_async(abs, (1,)).get()
""",
}
_FRESH_END = {
    "sockpool": "cluster.close()",
    "mp spawn": "pool.terminate(); pool.join()",
    "mp fork": "pool.terminate(); pool.join()",
}
FRESH_PEERS = tuple(_FRESH)


def fresh_startup(peer: str) -> float:
    """Seconds from starting a new interpreter to the first result of its fresh pool.

    The child prints ``time.perf_counter()`` (CLOCK_MONOTONIC, the same clock in
    every process) at that result, then closes its pool; closing is not timed.
    """
    script = ("if __name__ == '__main__':\n" + _indent(_FRESH[peer])
              + "    import time; print('AT', time.perf_counter(), flush=True)\n"
              + "    " + _FRESH_END[peer] + "\n")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("AT "):
            return float(line.split()[1]) - started
    raise RuntimeError(f"{peer} fresh startup failed: {done.stderr.strip()[-300:]}")


def _indent(code: str) -> str:
    return "".join(f"    {line}\n" for line in code.strip().splitlines())


# -- the floors: a bare ZeroMQ REQ/REP ping-pong, one NumPy pass -------------------------


def _reply(address: str) -> None:
    """Answer every request with its own bytes until an empty one."""
    import zmq

    sock = zmq.Context().socket(zmq.REP)
    sock.connect(address)
    while True:
        message = sock.recv()
        sock.send(message)
        if not message:
            return


def zmq_req_rep(calls: int) -> float:
    """Median seconds of one REQ/REP exchange of 40 bytes over ipc with a spawned process."""
    import zmq

    with tempfile.TemporaryDirectory() as folder:
        address = f"ipc://{folder}/rep"
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.bind(address)
        process = multiprocessing.get_context("spawn").Process(target=_reply, args=(address,))
        process.start()
        try:
            message = b"x" * 40
            for _ in range(100):  # warm: connected, both sides' code paths hot
                sock.send(message)
                sock.recv()
            samples = []
            for _ in range(calls):
                started = time.perf_counter()
                sock.send(message)
                sock.recv()
                samples.append(time.perf_counter() - started)
            sock.send(b"")
            sock.recv()
        finally:
            process.join(10)
            if process.is_alive():
                process.kill()
            sock.close(linger=0)
    return statistics.median(samples)


def numpy_pass(array: Any, repeat: int = 11) -> float:
    """Median seconds of ``array.sum()``: one pass over its memory."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        array.sum()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


# -- a large cluster --------------------------------------------------------------------


def large_cluster(workers: int, tasks_per_worker: int, idle_seconds: float
                  ) -> dict[str, float]:
    """Start, per-task master CPU, idle master CPU and close of ``Cluster(n=workers)``.

    ``start``: the constructor (it waits for every worker) and one task on each;
    ``cpu_per_task``: this process's CPU time (every thread) over a map of
    ``tasks_per_worker * workers`` trivial tasks, one per chunk, per task;
    ``idle_cpu``: its CPU time over ``idle_seconds`` of an idle cluster (heartbeats,
    timers), in % of one core; ``close``: ``close()``.
    """
    from sockpool import Cluster

    out: dict[str, float] = {}
    started = time.perf_counter()
    with warnings.catch_warnings():  # more workers than cores: the point of this row
        warnings.simplefilter("ignore", UserWarning)
        cluster = Cluster(n=workers, connect_timeout=600)
    try:
        cluster.par_map(abs, range(workers), chunksize=1)
        out["start"] = time.perf_counter() - started
        items = list(range(tasks_per_worker * workers))
        cluster.par_map(abs, items, chunksize=1)  # warm
        cpu = time.process_time()
        cluster.par_map(abs, items, chunksize=1)
        out["cpu_per_task"] = (time.process_time() - cpu) / len(items)
        cpu, wall = time.process_time(), time.perf_counter()
        time.sleep(idle_seconds)
        out["idle_cpu"] = 100 * (time.process_time() - cpu) / (time.perf_counter() - wall)
    finally:
        started = time.perf_counter()
        cluster.close()
        out["close"] = time.perf_counter() - started
    return out


def measure_large(workers: int, tasks_per_worker: int, idle_seconds: float
                  ) -> dict[str, float]:
    """:func:`large_cluster` at 2 workers, then at ``workers``; keys suffixed ``_2``/``_n``."""
    large_cluster(1, 1, 0.0)  # the first cluster of a process pays for its imports: not counted
    out = {}
    for suffix, count in (("_2", 2), ("_n", workers)):
        for key, value in large_cluster(count, tasks_per_worker, idle_seconds).items():
            out[key + suffix] = value
    return out


# -- the verdicts -------------------------------------------------------------------------

Samples = dict[str, dict[str, list[float]]]


def _median(samples: Samples, metric: str, peer: str) -> float | None:
    values = samples.get(metric, {}).get(peer)
    return statistics.median(values) if values else None


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "µs":
        return f"{value:.0f} µs"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "%":
        return f"{value:.1f}%"
    return f"{value:.2f} {unit}"


def _spread(samples: Samples, metric: str, peer: str, unit: str, scale: float = 1) -> str:
    values = samples.get(metric, {}).get(peer)
    if not values:
        return "—"
    med = _fmt(statistics.median(values) * scale, unit)
    if len(values) == 1:
        return med
    return f"{med} ({min(values) * scale:.3g}-{max(values) * scale:.3g})"


Row = tuple[str, str, str, str, str, str]


def _row(workload: str, ours: str, beside: str, ratio: float | None, goal: str,
         ok: Callable[[float], bool]) -> Row:
    verdict = "—" if ratio is None else ("met" if ok(ratio) else "missed")
    return (workload, ours, beside, "—" if ratio is None else f"{ratio:.2f}", goal,
            f"**{verdict}**")


def _over(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def goal_rows(samples: Samples, sizes: dict[str, Any], workers: int, large: int | None
              ) -> list[Row]:
    """One row per goal of issue 22: sockpool, what it is measured beside, ratio, verdict."""
    m = lambda metric, peer="sockpool": _median(samples, metric, peer)  # noqa: E731
    s = lambda metric, peer, unit, scale=1.0: _spread(samples, metric, peer, unit, scale)  # noqa: E731
    rows = [
        _row("fresh process: `Cluster(n=2)` -> first `submit` result",
             s("fresh_startup", "sockpool", "s"),
             f"mp spawn Pool {s('fresh_startup', 'mp spawn', 's')}; "
             f"fork Pool {s('fresh_startup', 'mp fork', 's')}",
             _over(m("fresh_startup"), m("fresh_startup", "mp spawn")),
             "<= 1.0x spawn Pool", lambda r: r <= 1.0),
        _row("bare ZeroMQ REQ/REP ping-pong over ipc (the floor)",
             "", s("zmq_req_rep", "floor", "µs"), None, "(reference row)", lambda r: True),
        _row("`submit(f, 1).result()` round trip", s("round_trip", "sockpool", "µs"),
             f"ZeroMQ REQ/REP {_fmt(m('zmq_req_rep', 'floor'), 'µs')}; "
             f"fork `Pool.apply_async` {s('round_trip', 'mp fork', 'µs')}",
             _over(m("round_trip"), m("zmq_req_rep", "floor")),
             "<= 1.5x ZeroMQ ping-pong", lambda r: r <= 1.5),
        _row(f"one NumPy pass over the {sizes['capture_mb']} MB array (`G.sum()`)",
             "", s("numpy_pass", "floor", "ms"), None, "(reference row)", lambda r: True),
        _row(f"warm `par_map` over {sizes['capture_items']} items capturing "
             f"{sizes['capture_mb']} MB, minus capturing nothing",
             s("capture_extra_ms", "sockpool", "ms"),
             f"`G.sum()` {_fmt(m('numpy_pass', 'floor'), 'ms')}",
             _over(m("capture_extra_ms"), m("numpy_pass", "floor")),
             "<= 0.5x one NumPy pass", lambda r: r <= 0.5),
        _row(f"{sizes['cpu_tasks_per_worker'] * workers} CPU-bound tasks, fraction of ideal",
             s("cpu_efficiency", "sockpool", "%"),
             f"fork Pool {s('cpu_efficiency', 'mp fork', '%')}",
             _over(m("cpu_efficiency"), m("cpu_efficiency", "mp fork")),
             ">= 0.97x Pool's", lambda r: r >= 0.97),
        _row(f"bulk map of {sizes['bulk']} trivial tasks, per task",
             s("bulk", "sockpool", "µs", 1000) .replace(" µs", " ns"),
             f"fork `Pool.map` {s('bulk', 'mp fork', 'µs', 1000).replace(' µs', ' ns')}",
             _over(m("bulk"), m("bulk", "mp fork")), "<= 1.0x `Pool.map`", lambda r: r <= 1.0),
    ]
    for way, metric in (("argument", "data_in"), ("result", "data_out")):
        rows.append(_row(
            f"{sizes['data_mb']} MB array as {way}", s(metric, "sockpool", "GB/s"),
            f"joblib {s(metric, 'joblib', 'GB/s')}; fork Pool {s(metric, 'mp fork', 'GB/s')}",
            m(metric), ">= 3 GB/s (the ratio column: GB/s)", lambda r: r >= 3))
    if large:
        rows += _large_rows(samples, large)
    return rows


def _large_rows(samples: Samples, large: int) -> list[Row]:
    m = lambda metric: _median(samples, metric, "sockpool")  # noqa: E731
    s = lambda metric, unit, scale=1.0: _spread(samples, metric, "sockpool", unit, scale)  # noqa: E731
    rows = [_row(f"master's CPU per task at {large} workers",
                 s("cpu_per_task_n", "µs", 1e6), f"at 2: {s('cpu_per_task_2', 'µs', 1e6)}",
                 _over(m("cpu_per_task_n"), m("cpu_per_task_2")), "<= 1.5x at 2",
                 lambda r: r <= 1.5)]
    for what in ("start", "close"):
        per_n = _over(m(f"{what}_n"), large)
        per_2 = _over(m(f"{what}_2"), 2)
        rows.append(_row(f"{what} at {large} workers, per worker",
                         _fmt(per_n and per_n * 1e3, "ms"),
                         f"at 2: {_fmt(per_2 and per_2 * 1e3, 'ms')}", _over(per_n, per_2),
                         "at most linear (<= 1x per worker)", lambda r: r <= 1.0))
    rows.append(_row(f"idle master's CPU at {large} workers (heartbeats)",
                     s("idle_cpu_n", "%"), f"at 2: {s('idle_cpu_2', '%')}", m("idle_cpu_n"),
                     "< 1% of a core (the ratio column: %)", lambda r: r < 1.0))
    return rows


def goal_table(samples: Samples, sizes: dict[str, Any], workers: int, large: int | None
               ) -> str:
    """The goals of issue 22 as a markdown table."""
    header = ("workload", "sockpool", "measured beside it", "ratio", "goal", "verdict")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in goal_rows(samples, sizes, workers, large)]
    return "\n".join(lines) + "\n"

