"""One adapter per pool the suite measures, all behind the same four calls.

Each adapter opens its pool for ``workers`` processes, runs ``submit`` (one call,
blocking for its result) and ``map`` (a list of results in order), and closes
everything it started.  ``available()`` says whether the peer is installed.
``caps`` bounds how many tasks a slow peer is given in a workload, so that one
run of the suite stays within minutes; per-task figures are unaffected.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import multiprocessing
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any


class Peer:
    """A pool of worker processes as the suite sees it."""

    name = ""
    requires: tuple[str, ...] = ()
    #: workload -> most tasks this peer is given there (None: no cap)
    caps: dict[str, int] = {}

    @classmethod
    def available(cls) -> bool:
        return all(importlib.util.find_spec(module) is not None for module in cls.requires)

    def load(self) -> None:
        """Import the peer's modules, so that startup times the pool and not its imports."""
        for module in self.requires:
            importlib.import_module(module)

    def open(self, workers: int) -> None:
        raise NotImplementedError

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any],
            chunksize: int | None = None) -> list[Any]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Sockpool(Peer):
    name = "sockpool"
    requires = ("sockpool",)

    def load(self) -> None:
        from sockpool import Cluster  # what a script imports before it starts the clock

        self.cluster_class = Cluster

    def open(self, workers: int) -> None:
        self.cluster = self.cluster_class(n=workers)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.cluster.submit(fn, *args).result()

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any],
            chunksize: int | None = None) -> list[Any]:
        return self.cluster.par_map(fn, items, chunksize=chunksize)

    def close(self) -> None:
        self.cluster.close()


class _MultiprocessingPool(Peer):
    context = ""

    def open(self, workers: int) -> None:
        self.pool = multiprocessing.get_context(self.context).Pool(workers)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.apply_async(fn, args).get()

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any],
            chunksize: int | None = None) -> list[Any]:
        return self.pool.map(fn, items, chunksize)

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


class PoolFork(_MultiprocessingPool):
    name = "mp fork"
    context = "fork"


class PoolSpawn(_MultiprocessingPool):
    name = "mp spawn"
    context = "spawn"


class Executor(Peer):
    """``concurrent.futures.ProcessPoolExecutor`` as most users call it: defaults."""

    name = "PPE"
    caps = {"bulk": 5_000}

    def open(self, workers: int) -> None:
        self.executor = ProcessPoolExecutor(workers)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.executor.submit(fn, *args).result()

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any],
            chunksize: int | None = None) -> list[Any]:
        return list(self.executor.map(fn, items, chunksize=chunksize or 1))

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class Loky(Executor):
    name = "loky"
    requires = ("loky",)
    caps = {"bulk": 5_000, "capture": 20}

    def open(self, workers: int) -> None:
        import loky

        self.executor = loky.get_reusable_executor(max_workers=workers)

    def close(self) -> None:
        self.executor.shutdown(wait=True, kill_workers=True)


class Joblib(Peer):
    name = "joblib"
    requires = ("joblib",)
    caps = {"bulk": 20_000, "capture": 20}

    def open(self, workers: int) -> None:
        import joblib

        self.workers = workers
        self.parallel = joblib.Parallel(n_jobs=workers)
        self.parallel.__enter__()  # one pool (and memmap folder) for all calls

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        import joblib

        return self.parallel([joblib.delayed(fn)(*args)])[0]

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any],
            chunksize: int | None = None) -> list[Any]:
        import joblib

        calls = (joblib.delayed(fn)(item) for item in items)
        if chunksize is None:
            return list(self.parallel(calls))
        return list(joblib.Parallel(n_jobs=self.workers, batch_size=chunksize)(calls))

    def close(self) -> None:
        from joblib.externals.loky import get_reusable_executor

        self.parallel.__exit__(None, None, None)
        get_reusable_executor().shutdown(wait=True, kill_workers=True)


class Dask(Peer):
    name = "dask"
    requires = ("distributed",)
    caps = {"bulk": 1_000, "round_trip": 50, "ms_tasks": 200, "capture": 20}

    def open(self, workers: int) -> None:
        from distributed import Client, LocalCluster

        warnings.filterwarnings("ignore", module="distributed")
        self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                    dashboard_address=None)
        self.client = Client(self.cluster)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.client.submit(fn, *args, pure=False).result()

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any],
            chunksize: int | None = None) -> list[Any]:
        return list(self.client.gather(self.client.map(fn, items, pure=False)))

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


class IPyParallel(Peer):
    name = "ipyparallel"
    requires = ("ipyparallel",)
    caps = {"bulk": 1_000, "round_trip": 50, "ms_tasks": 200, "capture": 20}

    def open(self, workers: int) -> None:
        import ipyparallel

        self.workers = workers
        self.cluster = ipyparallel.Cluster(n=workers, log_level=40)
        self.client = self.cluster.start_and_connect_sync()
        self.client.wait_for_engines(workers)
        self.client[:].use_cloudpickle()  # functions of __main__ with their globals
        self.view = self.client.load_balanced_view()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.view.apply_sync(fn, *args)

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any],
            chunksize: int | None = None) -> list[Any]:
        chunksize = chunksize or max(1, math.ceil(len(items) / (4 * self.workers)))
        return list(self.view.map_sync(fn, items, chunksize=chunksize))

    def close(self) -> None:
        self.client.close()
        self.cluster.stop_cluster_sync()


class Ray(Peer):
    name = "ray"
    requires = ("ray",)
    caps = {"bulk": 2_000, "round_trip": 100}

    def open(self, workers: int) -> None:
        import ray

        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
        self.remotes: dict[Callable[..., Any], Any] = {}

    def _remote(self, fn: Callable[..., Any]) -> Any:
        import ray

        if fn not in self.remotes:
            # ray.remote takes Python functions only, not builtins such as abs
            function = fn if inspect.isfunction(fn) else (lambda *args: fn(*args))
            self.remotes[fn] = ray.remote(function)
        return self.remotes[fn]

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        import ray

        return ray.get(self._remote(fn).remote(*args))

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any],
            chunksize: int | None = None) -> list[Any]:
        import ray

        remote = self._remote(fn)
        return list(ray.get([remote.remote(item) for item in items]))

    def close(self) -> None:
        import ray

        ray.shutdown()


PEERS: dict[str, type[Peer]] = {peer.name: peer for peer in (
    Sockpool, PoolFork, PoolSpawn, Executor, Loky, Joblib, Dask, IPyParallel, Ray)}


def parse_peers(parser: argparse.ArgumentParser, spec: str) -> list[str]:
    """The peers a comma-separated ``--peers`` names; a parser error for an unknown one."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in PEERS]
    if unknown:
        parser.error(f"unknown peer {unknown[0]!r}; known: {', '.join(PEERS)}")
    missing = [name for name in names if not PEERS[name].available()]
    if missing:
        parser.error(f"{missing[0]} is not installed (pip install -e '.[bench]')")
    return names
