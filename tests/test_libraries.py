"""Libraries that take an executor or a map callable, given a sockpool door.

Real dask and scipy, used as their documentation says, with a ``Cluster`` where
they expect a ``concurrent.futures`` executor or a ``map`` (docs/one-switch.md).
"""

from __future__ import annotations

import os
import time
import warnings

import dask
import numpy as np
import pytest
from scipy.optimize import differential_evolution

from sockpool import Cluster

pytestmark = pytest.mark.timeout(120)


def timed_increment(x: int) -> tuple[int, float, float, int]:
    """``x + 1``, with when it ran and where."""
    began = time.time()
    time.sleep(0.3)
    return x + 1, began, time.time(), os.getpid()


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of ``(start, end)`` spans that overlap at one moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


@pytest.fixture(scope="module")
def three_workers() -> Cluster:
    # More workers than CI's two cores, on purpose: dask must size its work by the
    # cluster, not by this machine (the tasks sleep, so they do not compete).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # oversubscription
        cluster = Cluster(n=3)
    with cluster:
        yield cluster


def test_dask_compute_with_a_cluster_as_scheduler_uses_every_worker(
        three_workers: Cluster) -> None:
    # dask sizes an executor's work by its _max_workers, else by this machine's
    # cores: with no such attribute, 2 of the 3 workers ran at a time.
    tasks = [dask.delayed(timed_increment)(i) for i in range(6)]
    results = dask.compute(*tasks, scheduler=three_workers)
    assert [value for value, *_ in results] == [1, 2, 3, 4, 5, 6]
    assert most_at_once([(began, ended) for _, began, ended, _ in results]) == 3
    assert len({pid for *_, pid in results}) == 3


@pytest.mark.parametrize("scheduler", ["processes", "threads"])
def test_dask_config_pool_accepts_a_cluster(three_workers: Cluster, scheduler: str) -> None:
    # dask.config.set(pool=...) read pool._max_workers: AttributeError before.
    with dask.config.set(pool=three_workers, scheduler=scheduler):
        total = dask.delayed(sum)([dask.delayed(timed_increment)(i)[0] for i in range(4)])
        assert total.compute() == 10


def rosenbrock(x: np.ndarray) -> float:
    return float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))


@pytest.mark.parametrize("door", ["par_map", "map"])
def test_scipy_differential_evolution_takes_a_clusters_map(three_workers: Cluster,
                                                           door: str) -> None:
    bounds = [(-2, 2)] * 3
    options = {"seed": 7, "maxiter": 30, "updating": "deferred", "polish": False}
    here = differential_evolution(rosenbrock, bounds, **options)
    there = differential_evolution(rosenbrock, bounds, workers=getattr(three_workers, door),
                                   **options)
    assert there.x.tolist() == here.x.tolist() and there.fun == here.fun
    assert there.nfev == here.nfev


def _joblib_pids(x: int) -> tuple[int, set[int]]:
    from joblib import Parallel, delayed

    pids = Parallel(n_jobs=-1)(delayed(os.getpid)() for _ in range(8))
    return os.getpid(), set(pids)


def test_a_joblib_parallel_inside_a_task_runs_in_its_worker(three_workers: Cluster) -> None:
    # scikit-learn's n_jobs=-1 in a task started a loky pool of every core in every
    # worker (a multiprocessing.Pool's daemonic workers run it in the worker).
    assert "LOKY_MAX_CPU_COUNT" not in os.environ  # (else the workers keep its value)
    for worker, pids in three_workers.par_map(_joblib_pids, range(3), chunksize=1):
        assert pids == {worker}
