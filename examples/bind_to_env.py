"""The tutorial's explicit pattern: ``mkWorker`` + ``bindToEnv``, in Python.

R's tutorial wraps the worker in ``mkWorker()`` and calls ``bindToEnv`` so that
exactly the named values travel with it.  sockpool captures what a function
names automatically (see quickstart.py); ``bind_to_env`` is for the two cases
where that is not what you want:

* names looked up dynamically, which no automatic capture can see (here the
  model family is chosen by name with ``globals()[...]``);
* controlling exactly what travels (here: not the big unrelated table).

Run it with:  python examples/bind_to_env.py
"""

from __future__ import annotations

import csv
import pathlib

import numpy as np

from sockpool import Cluster, bind_to_env, detect_cores, inspect_capture

HERE = pathlib.Path(__file__).parent
with open(HERE / "iris.csv", newline="") as stream:
    ROWS = list(csv.DictReader(stream))

UNRELATED_TABLE = np.zeros((2_000, 1_000))  # 16 MB this job does not need


def fit_logistic(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Logistic regression by Newton's method (IRLS)."""
    design = np.column_stack([np.ones(len(x)), x])
    beta = np.zeros(design.shape[1])
    for _ in range(25):
        p = 1.0 / (1.0 + np.exp(-design @ beta))
        hessian = design.T @ (design * (p * (1 - p) + 1e-9)[:, None])
        beta += np.linalg.solve(hessian + 1e-6 * np.eye(len(beta)), design.T @ (target - p))
    return beta


def fit_centroid(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Distance-to-centroid classifier: the class mean of each variable."""
    return x[target > 0.5].mean(axis=0)


def worker(y_level: str) -> tuple[str, list[float]]:
    fit = globals()[f"fit_{MODEL}"]  # a dynamic lookup: automatic capture cannot see it
    x = np.array([[float(row[v]) for v in VARS] for row in D])
    target = np.array([row[Y_NAME] == y_level for row in D], dtype=float)
    return y_level, np.round(fit(x, target), 3).tolist()


def mk_worker(model: str):  # type: ignore[no-untyped-def]  (R: mkWorker)
    """Bind exactly what the worker needs, as the tutorial's bindToEnv does.

    ``fit_<model>`` and ``np`` are looked up by name here (R: ``objNames``);
    the data and settings are given as values.
    """
    return bind_to_env(worker, f"fit_{model}", "np", D=ROWS, Y_NAME="Species", MODEL=model,
                       VARS=["Sepal.Length", "Sepal.Width", "Petal.Length"])


def main() -> None:
    y_levels = sorted({row["Species"] for row in ROWS})
    bound = mk_worker("logistic")
    print(inspect_capture(bound), end="\n\n")  # no UNRELATED_TABLE in there
    with Cluster(n=detect_cores()) as cl:
        for model in ("logistic", "centroid"):
            for level, params in cl.par_map(mk_worker(model), y_levels):
                print(f"{model:>9} {level:>10}: {params}")


if __name__ == "__main__":
    main()
