"""The brms threading vignette's grainsize experiment, in Python.

A Poisson regression's log likelihood is a sum over N observations; like
Stan's ``reduce_sum`` it is computed as partial sums over slices of the data
("grainsize" observations each), one task per slice.  Each "iteration" (a
leapfrog step, in Stan) evaluates it once at new parameters: one map.  The data
are sent to the workers once, with ``export()``, so a task carries only the
bounds of its slice.

Two experiments, as in the vignette:

1. chunking: one worker, static schedule, the job cut into 1, 4, 16, 64, 256
   chunks: runtime and slowdown against one chunk (the cost of more, smaller
   tasks);
2. scaling: 1 to ``detect_cores()`` workers and three grainsizes: runtime and
   speedup against one worker.

It saves ``chunking.png``, ``scaling.png`` and ``chunking.md`` (the tables) in
``--out`` (default: ``docs/img``), and prints the tables.

Run it with:  python examples/chunking.py [--quick] [--out DIR]
(needs matplotlib: pip install matplotlib)
"""

from __future__ import annotations

import argparse
import math
import pathlib
import statistics
import time

import numpy as np

from sockpool import Cluster, detect_cores

ROOT = pathlib.Path(__file__).resolve().parent.parent


def partial_log_likelihood(bounds: tuple[int, int], beta: tuple[float, ...]) -> float:
    """Poisson log likelihood of observations ``start:stop``, and its gradient's norm,
    as Stan evaluates both at every leapfrog step (X and Y are exported)."""
    start, stop = bounds
    x, y = X[start:stop], Y[start:stop]  # noqa: F821 (globals exported to the workers)
    eta = beta[0] + x @ np.asarray(beta[1:])
    mu = np.exp(eta)
    gradient = x.T @ (y - mu)
    return float(np.sum(y * eta - mu)) + 0.0 * float(gradient @ gradient)


def slices(n: int, grainsize: int) -> list[tuple[int, int]]:
    return [(start, min(n, start + grainsize)) for start in range(0, n, grainsize)]


def run_iterations(cl: Cluster, n: int, grainsize: int, iterations: int) -> float:
    """Seconds for ``iterations`` evaluations of the full log likelihood."""
    rng = np.random.default_rng(1)
    parts = slices(n, grainsize)
    started = time.perf_counter()
    for _ in range(iterations):
        beta = tuple(float(b) for b in rng.normal(0.1, 0.01, 5))
        total = sum(cl.par_map(partial_log_likelihood, parts, [beta] * len(parts),
                               schedule="static", chunksize=1))
        assert math.isfinite(total)
    return time.perf_counter() - started


def make_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4))
    y = rng.poisson(np.exp(0.5 + x @ np.array([0.3, -0.2, 0.1, 0.05])))
    return x, y.astype(float)


def median_time(cl: Cluster, n: int, grainsize: int, iterations: int, repeat: int) -> float:
    return statistics.median(run_iterations(cl, n, grainsize, iterations) for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small, fast run")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    n, iterations, repeat = (20_000, 5, 1) if args.quick else (1_000_000, 10, 3)
    x, y = make_data(n)
    args.out.mkdir(parents=True, exist_ok=True)

    # 1. chunking: one worker, more and more chunks.
    chunk_counts = [1, 4, 16, 64, 256]
    with Cluster(n=1) as cl:
        cl.export(X=x, Y=y)
        run_iterations(cl, n, n, 1)  # warm up: the workers import NumPy once
        chunking = {c: median_time(cl, n, math.ceil(n / c), iterations, repeat)
                    for c in chunk_counts}
    base = chunking[1]

    # 2. scaling: 1 .. detect_cores() workers, three grainsizes.
    cores = sorted({1, *(2**k for k in range(int(math.log2(detect_cores())) + 1)),
                    detect_cores(logical=False), detect_cores()})
    default = math.ceil(n / (2 * detect_cores(logical=False)))
    grainsizes = [default, default // 2, default // 4]
    scaling: dict[tuple[int, int], float] = {}
    for workers in cores:
        with Cluster(n=workers) as cl:
            cl.export(X=x, Y=y)
            run_iterations(cl, n, grainsizes[-1], 1)  # warm up every worker
            for grainsize in grainsizes:
                scaling[(workers, grainsize)] = median_time(cl, n, grainsize, iterations, repeat)

    lines = [f"N = {n} observations, {iterations} iterations, median of {repeat}", "",
             "| chunks | grainsize | runtime (s) | slowdown vs 1 chunk |", "|---|---|---|---|"]
    lines += [f"| {c} | {math.ceil(n / c)} | {t:.3f} | {t / base:.2f} |"
              for c, t in chunking.items()]
    lines += ["", "| workers | grainsize | runtime (s) | speedup vs 1 worker |",
              "|---|---|---|---|"]
    lines += [f"| {w} | {g} | {t:.3f} | {scaling[(1, g)] / t:.2f} |"
              for (w, g), t in sorted(scaling.items())]
    table = "\n".join(lines) + "\n"
    (args.out / "chunking.md").write_text(table)
    print(table)
    plot(chunking, scaling, cores, grainsizes, args.out)
    print(f"plots saved in {args.out}: chunking.png, scaling.png")


def plot(chunking: dict[int, float], scaling: dict[tuple[int, int], float], cores: list[int],
         grainsizes: list[int], out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    counts = list(chunking)
    ax.plot(counts, [chunking[c] / chunking[1] for c in counts], marker="o")
    ax.set_xscale("log", base=4)
    ax.set_xlabel("number of chunks (1 worker, static)")
    ax.set_ylabel("slowdown vs 1 chunk")
    ax.set_title("Cost of smaller tasks")
    fig.tight_layout()
    fig.savefig(out / "chunking.png", dpi=100)

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for grainsize in grainsizes:
        runtimes = [scaling[(w, grainsize)] for w in cores]
        left.plot(cores, runtimes, marker="o", label=f"grainsize {grainsize}")
        right.plot(cores, [runtimes[0] / t for t in runtimes], marker="o",
                   label=f"grainsize {grainsize}")
    right.plot(cores, cores, linestyle="--", color="grey", label="ideal")
    left.set(xlabel="workers", ylabel="runtime (s)", title="Runtime")
    right.set(xlabel="workers", ylabel="speedup vs 1 worker", title="Speedup")
    for axis in (left, right):
        axis.set_xticks(cores)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=100)


if __name__ == "__main__":
    main()
