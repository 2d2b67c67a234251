"""One switch: an existing sequential analysis made parallel by one line (R's futurize).

The analysis below was written to run one step after another: it picks a
ridge regression's penalty by 5-fold cross-validation on iris, then
bootstraps the chosen model's coefficients for confidence intervals.  Its
loops call ``sockpool.par_map`` where they called ``map``; nothing else in it
knows about parallelism.  Where it runs is one line, ``sockpool.plan(...)``:

    python examples/one_switch.py                    # a local cluster (detect_cores() workers)
    python examples/one_switch.py sequential         # in this process, one task after another
    python examples/one_switch.py local:4            # 4 local workers
    python examples/one_switch.py hosts:node1,node2  # workers on two machines over ssh

Every plan prints the same numbers: the bootstrap is seeded (``seed=``), and
each replicate draws from its own stream (``task_rng()``), whichever worker,
or none, runs it.  (With ``hosts:``, the hosts run this same Python, so they
share its file system.)
"""

from __future__ import annotations

import csv
import pathlib
import sys
import time

import numpy as np

import sockpool

HERE = pathlib.Path(__file__).parent
with open(HERE / "iris.csv", newline="") as stream:
    ROWS = list(csv.DictReader(stream))

FEATURES = ["Sepal.Length", "Sepal.Width", "Petal.Length"]
X = np.array([[float(row[name]) for name in FEATURES] for row in ROWS])
Y = np.array([float(row["Petal.Width"]) for row in ROWS])
PENALTIES = [0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]
FOLDS = 5
REPLICATES = 400


# -- the analysis, as it was written: plain functions -------------------------------------
def fit_ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> np.ndarray:
    """Ridge regression on standardized features: intercept, then one coefficient each."""
    mean, scale = x.mean(axis=0), x.std(axis=0)
    z = (x - mean) / scale
    design = np.column_stack([np.ones(len(z)), z])
    identity = np.eye(design.shape[1])
    identity[0, 0] = 0.0  # the intercept is not penalized
    beta = np.linalg.solve(design.T @ design + penalty * identity, design.T @ y)
    return np.concatenate([[beta[0] - (beta[1:] * mean / scale).sum()], beta[1:] / scale])


def predict(beta: np.ndarray, x: np.ndarray) -> np.ndarray:
    return beta[0] + x @ beta[1:]


def cv_error(penalty: float) -> float:
    """Mean squared error of 5-fold cross-validation (fixed folds) for one penalty."""
    fold = np.arange(len(Y)) % FOLDS
    errors = []
    for k in range(FOLDS):
        train, test = fold != k, fold == k
        beta = fit_ridge(X[train], Y[train], penalty)
        errors.append(float(np.mean((predict(beta, X[test]) - Y[test]) ** 2)))
    return float(np.mean(errors))


def bootstrap_once(penalty: float) -> np.ndarray:
    """The coefficients refitted on one resample of the rows (drawn from the task's stream)."""
    rows = sockpool.task_rng().integers(0, len(Y), len(Y))
    return fit_ridge(X[rows], Y[rows], penalty)


def analysis() -> list[str]:
    """Model selection, then the bootstrap; the report's lines."""
    errors = sockpool.par_map(cv_error, PENALTIES)  # was: list(map(cv_error, PENALTIES))
    best = PENALTIES[int(np.argmin(errors))]
    lines = [f"penalty {p:>6g}: cv mse {e:.5f}" for p, e in zip(PENALTIES, errors, strict=True)]
    lines.append(f"chosen penalty: {best:g}")
    # was: [bootstrap_once(best) for _ in range(REPLICATES)], with np.random.seed(2024)
    draws = np.array(sockpool.par_map(bootstrap_once, [best] * REPLICATES, seed=2024))
    beta = fit_ridge(X, Y, best)
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    for name, b, lo, hi in zip(["intercept", *FEATURES], beta, low, high, strict=True):
        lines.append(f"{name:>12}: {b:+.4f}  95% bootstrap interval [{lo:+.4f}, {hi:+.4f}]")
    return lines


def main() -> None:
    choice = sys.argv[1] if len(sys.argv) > 1 else "local"
    # The one switch.  (Remote hosts run this same Python: python= names it for them.)
    remote = {"python": sys.executable} if choice.startswith("hosts:") else {}
    sockpool.plan(choice, **remote)

    started = time.perf_counter()
    report = analysis()
    seconds = time.perf_counter() - started
    print("\n".join(report))
    print(f"plan {choice!r}: {len(PENALTIES)} cross-validations and {REPLICATES} bootstrap "
          f"fits in {seconds:.2f} s, starting the cluster included")


if __name__ == "__main__":
    main()
