"""The seed tutorial's job in Python: one-vs-rest classifiers on iris, in parallel.

R's socket-cluster tutorial (``parallel::parLapply``) fails here with "could not
find function fitOneTargetModel": the worker function needs the script's data,
its settings and a helper, and a plain socket cluster ships none of them.  With
sockpool the worker function simply works: it travels with what it uses.

Run it with:  python examples/quickstart.py
(examples/bind_to_env.py does the same with the tutorial's explicit bindToEnv.)
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import pathlib
import time

import numpy as np

from sockpool import Cluster, detect_cores, inspect_capture

# -- the script's globals: data and settings (R: d, vars, yName) --------------------
HERE = pathlib.Path(__file__).parent
with open(HERE / "iris.csv", newline="") as stream:
    rows = list(csv.DictReader(stream))

VARS = ["Sepal.Length", "Sepal.Width", "Petal.Length"]
Y_NAME = "Species"
X = np.array([[float(row[v]) for v in VARS] for row in rows])
Y = np.array([row[Y_NAME] for row in rows])
Y_LEVELS = sorted(set(Y))


# -- a helper the worker calls (R: fitOneTargetModel) ---------------------------------
def fit_one_target_model(x: np.ndarray, target: np.ndarray, iterations: int = 25) -> np.ndarray:
    """Logistic regression of ``target`` (0/1) on ``x`` by Newton's method (IRLS)."""
    design = np.column_stack([np.ones(len(x)), x])
    beta = np.zeros(design.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-design @ beta))
        weights = p * (1.0 - p) + 1e-9  # IRLS weights
        hessian = design.T @ (design * weights[:, None]) + 1e-6 * np.eye(design.shape[1])
        beta += np.linalg.solve(hessian, design.T @ (target - p))
    return beta


# -- the worker: one model per class level, using the globals and the helper ----------
def worker(y_level: str) -> dict[str, object]:
    target = np.equal(Y, y_level).astype(float)
    beta = fit_one_target_model(X, target)
    design = np.column_stack([np.ones(len(X)), X])
    accuracy = float((((design @ beta) > 0) == (target > 0.5)).mean())
    print(f"[pid {os.getpid()}] fitted {y_level} vs rest: accuracy {accuracy:.3f}")
    return {"level": y_level, "coefficients": np.round(beta, 3).tolist(), "accuracy": accuracy}


def main() -> None:
    # What travels with the worker: the helper and the globals it uses, found
    # automatically (R's socket cluster shipped none of them).
    print(inspect_capture(worker), end="\n\n")
    started = time.perf_counter()
    with Cluster(n=detect_cores()) as cl:
        print(f"{cl!r}")
        models = cl.par_map(worker, Y_LEVELS)
    elapsed = time.perf_counter() - started
    for model in models:
        print(f"{model['level']:>10}  accuracy {model['accuracy']:.3f}  "
              f"coefficients (intercept, {', '.join(VARS)}) = {model['coefficients']}")
    with contextlib.redirect_stdout(io.StringIO()):  # quiet: only to check the results
        sequential = [worker(level) for level in Y_LEVELS]
    assert [m["accuracy"] for m in models] == [m["accuracy"] for m in sequential]
    print(f"fitted {len(models)} one-vs-rest models in parallel in {elapsed:.2f} s "
          "(cluster start, fits and shutdown); same results as sequential")


if __name__ == "__main__":
    main()
