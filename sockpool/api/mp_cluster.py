"""The cluster a :class:`~sockpool.Pool` runs on: ``multiprocessing``'s arguments
checked, then the cluster they describe, its workers named as multiprocessing's."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from ..capture.inspection import describe_unpicklable
from ..common import role
from ..common.checks import as_int
from ..errors import CaptureError
from .cluster import Cluster
from .cluster_options import as_pool


def start_cluster(processes: int | None, initializer: Callable[..., object] | None,
                   initargs: Iterable[Any], maxtasksperchild: int | None,
                   cluster_kwargs: dict[str, Any]) -> Cluster:
    """Check ``multiprocessing``'s arguments, then start the cluster they describe."""
    if processes is not None:
        if (count := as_int(processes)) is None:
            raise TypeError(f"processes must be an int or None, not {type(processes).__name__}")
        if count < 1:
            raise ValueError(f"Number of processes must be at least 1, not {count}")
        processes = count
    if maxtasksperchild is not None:
        if (most := as_int(maxtasksperchild)) is None or most <= 0:
            raise ValueError(f"maxtasksperchild must be a positive int or None, not "
                             f"{maxtasksperchild!r}")
        maxtasksperchild = most
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be a callable")
    try:
        initargs = tuple(initargs)
    except TypeError:
        raise TypeError(f"initargs must be a tuple of arguments, not "
                        f"{type(initargs).__name__}") from None
    for keyword, ours in (("n", "processes"), ("setup", "initializer"),
                          ("max_tasks_per_worker", "maxtasksperchild")):
        if keyword in cluster_kwargs:
            raise ValueError(f"sockpool.Pool takes {ours}=, not Cluster's {keyword}=")
    if "context" in cluster_kwargs:
        raise ValueError("sockpool.Pool has no context=: its workers are sockpool's own "
                         "processes, which start the same way everywhere; leave it out")
    options = dict(cluster_kwargs, max_tasks_per_worker=maxtasksperchild)
    if initializer is not None and initargs:
        initializer = functools.partial(initializer, *initargs)
    options["setup"] = functools.partial(_as_pool_worker, initializer)
    quiet = as_pool.set(True)  # no warning about a pool larger than the machine
    try:
        cluster = Cluster(processes, **options)
    except CaptureError as exc:
        better = _initargs_error(initargs, options.get("serializer", "cloudpickle"))
        if better is None:
            raise
        raise better from exc
    finally:
        as_pool.reset(quiet)
    cluster._dispatcher.scheduler.quota_counts_chunks = True  # multiprocessing's "tasks"
    return cluster


def _as_pool_worker(initializer: Callable[[], object] | None) -> None:
    """A pool's worker setup: named as ``multiprocessing`` names them (``.name``, ``._identity``
    from 1: code telling workers apart by them works); then the initializer."""
    import multiprocessing

    number = (role.worker_id() or 0) + 1
    process = multiprocessing.current_process()
    process.name = f"SockpoolPoolWorker-{number}"
    process._identity = (number,)
    if initializer is not None:
        initializer()


def check_given_cluster(cluster: object, processes: int | None,
                         initializer: Callable[..., object] | None,
                         maxtasksperchild: int | None, cluster_kwargs: dict[str, Any]) -> None:
    """Check ``Pool(cluster=...)``: a sockpool Cluster, and none of the arguments that
    would start workers of the pool's own (raise ``TypeError`` or ``ValueError``)."""
    if not isinstance(cluster, Cluster):
        raise TypeError(f"cluster must be a sockpool Cluster, not {type(cluster).__name__}")
    given = [name for name, value in (("processes", processes), ("initializer", initializer),
                                      ("maxtasksperchild", maxtasksperchild)) if value is not None]
    given += sorted(cluster_kwargs)
    if given:
        raise ValueError(f"Pool(cluster=...) runs on a cluster already started: "
                         f"{', '.join(given)} cannot apply to it (set them on the Cluster)")




def _initargs_error(initargs: tuple[Any, ...], serializer: str) -> CaptureError | None:
    """What to raise where an initializer's argument cannot travel to the workers (the
    setup's own message names a private partial), or None where it is not one of them."""
    for position, value in enumerate(initargs):
        where = describe_unpicklable(value, f"initargs[{position}]", serializer)
        if where is None:
            continue
        message = f"initargs cannot be sent to the pool's workers: {where}"
        if type(value).__module__.startswith("multiprocessing."):
            message += (".  sockpool starts its workers fresh (no fork), so they cannot "
                        "inherit a multiprocessing lock, Value or Array: make it with a "
                        "multiprocessing.Manager() instead (manager.RLock(), "
                        "manager.Value('i', 0)), whose proxies travel")
        return CaptureError(message)
    return None
