"""Checks of what users pass, done before any work starts, with messages that say what is wrong."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..cores import detect_cores
from ..launchers import Launcher, LocalLauncher, SSHHost, SSHLauncher
from ..launchers.ssh import parse_hosts

#: Variables that size the thread pools of BLAS, OpenMP and friends.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def check_callable(fn: object, method: str) -> None:
    if not callable(fn):
        raise TypeError(f"{method}() needs a callable as its function, not {type(fn).__name__}")


def check_iterables(iterables: tuple[Any, ...], method: str) -> None:
    if not iterables:
        raise TypeError(f"{method}() needs at least one iterable of arguments")
    for position, value in enumerate(iterables, start=1):
        try:
            iter(value)
        except TypeError:
            raise TypeError(f"{method}() argument {position} after the function must be "
                            f"iterable, not {type(value).__name__}") from None


def check_options(chunksize: int | None, retries: int, errors: str, timeout: float | None) -> None:
    if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
        raise ValueError(f"chunksize must be a positive integer or None, not {chunksize!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a non-negative integer, not {retries!r}")
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', not {errors!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")


def as_sequence(iterables: tuple[Any, ...]) -> Sequence[Any]:
    """The items of a map, read once; a list, tuple or range is used as it is.

    Chunks are slices of it: a slice of a range pickles as three integers.
    """
    if len(iterables) > 1:
        return list(zip(*iterables, strict=False))
    items = iterables[0]
    return items if isinstance(items, (list, tuple, range)) else list(items)


def progress_bar(total: int | None, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install 'sockpool[progress]'") from None
    return tqdm(total=total)


def check_count(n: int | None) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
        raise TypeError(f"n must be an integer, not {type(n).__name__}")
    if n is not None and n < 1:
        raise ValueError(f"n must be at least 1, not {n}")


def choose_launcher(
    n: int | None,
    hosts: Iterable[str | SSHHost] | Mapping[str, int | SSHHost] | None,
    launcher: Launcher | None,
    *,
    python: str | None,
    env: dict[str, str],
    tunnel: bool,
    listen: str | None,
) -> tuple[Launcher, int]:
    """The launcher a Cluster's arguments ask for, and how many workers it starts.

    With ``hosts=`` and no ``n`` only the hosts' workers run (``"localhost"``
    ones locally); ``n`` and ``hosts`` together add ``n`` local workers.
    """
    check_count(n)
    if launcher is not None:
        if hosts is not None:
            raise ValueError("give hosts= or launcher=, not both (an SSHLauncher takes hosts)")
        if tunnel or listen is not None:
            raise ValueError("tunnel= and listen= belong to the launcher when launcher= is given")
        if launcher.size is not None:
            if n is not None:
                raise ValueError(f"n= does not apply to {type(launcher).__name__}, "
                                 "which says how many workers it starts")
            return launcher, launcher.size
        return launcher, n if n is not None else detect_cores()
    if hosts is None:
        if tunnel or listen is not None:
            raise ValueError("tunnel= and listen= apply to remote hosts; give hosts= too")
        count = n if n is not None else detect_cores()
        return LocalLauncher(python=python, env=env), count
    parsed = parse_hosts(hosts)
    if n is not None:
        parsed.append(SSHHost("localhost", workers=n))
    if not parsed:
        raise ValueError("a cluster needs at least one worker; hosts= is empty")
    total = sum(host.workers for host in parsed)
    if all(host.is_local for host in parsed):
        if tunnel or listen is not None:
            raise ValueError("tunnel= and listen= apply to remote hosts, and hosts= names "
                             "only 'localhost'")
        return LocalLauncher(python=python, env=env), total
    ssh = SSHLauncher(parsed, python=python, env=env, tunnel=tunnel, listen=listen)
    ssh.check_hosts()
    return ssh, total


def check_min_workers(count: int | None, total: int, name: str = "min_workers") -> None:
    if count is None:
        return
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= total:
        raise ValueError(f"{name} must be an integer from 1 to the {total} workers asked "
                         f"for, not {count!r}")


def warn_if_oversubscribed(n_workers: int, launcher: Launcher, threads_per_worker: int | None,
                           chosen: bool) -> None:
    """brms's rule: local workers x threads each should not exceed the physical cores.

    Args:
        chosen: the user chose the counts (``n`` or ``threads_per_worker > 1``);
            the default ``n=detect_cores()`` that DESIGN.md picks is not warned about.
    """
    threads = threads_per_worker or 1
    if not isinstance(launcher, LocalLauncher) or not (chosen or threads > 1):
        return
    physical = detect_cores(logical=False)
    if n_workers * threads > physical:
        warnings.warn(
            f"{n_workers} worker{'s' if n_workers > 1 else ''} x {threads} "
            f"thread{'s' if threads > 1 else ''} each = {n_workers * threads} threads on "
            f"{physical} usable physical cores (hyper-threads do not count): they will slow "
            "each other down; use fewer workers or threads_per_worker", UserWarning,
            stacklevel=3)


def worker_env(env: Mapping[str, str] | None, threads: int | None) -> dict[str, str]:
    worker_env: dict[str, str] = {}
    if threads is not None:
        for name in THREAD_VARIABLES:
            if threads != 1 or name not in os.environ:
                worker_env[name] = str(threads)
    worker_env.update(env or {})
    return worker_env
