"""Checks of ``Cluster(...)``'s arguments, and the launcher they ask for, before work starts."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import numbers
import os
import re
import resource
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..capture.limits import check_max_capture_size
from ..common.caller import user_stacklevel
from ..common.checks import as_bool, as_int, as_real, check_env
from ..common.codec import check_serializer
from ..common.config import check_transport
from ..common.rng import check_seed
from ..cores import detect_cores
from ..launchers import Launcher, LocalLauncher
from .lifetime import open_engines

if TYPE_CHECKING:
    from ..launchers import SSHHost

#: The smallest max_message_size: a worker's HELLO, progress and error messages fit.
MIN_MESSAGE_SIZE = 64 * 1024
#: The most chunks a worker may hold (the scheduler looks at each depth in turn).
MAX_PREFETCH = 1024

#: Variables that size the thread pools of BLAS, OpenMP and friends, and (the last)
#: the CPUs joblib and loky count (a task's `Parallel(n_jobs=-1)`: one worker, one process).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS",
                    "LOKY_MAX_CPU_COUNT")


class _DefaultThreads(int):
    """``threads_per_worker``'s default, 1, told from a 1 given by identity: the default
    leaves the thread variables the master sets, a value given sets them all."""


DEFAULT_THREADS: int = _DefaultThreads(1)


def check_count(n: int | None) -> int | None:
    """``n`` as an int (a NumPy integer too), or None.

    Raises:
        TypeError: not an integer.
        ValueError: below 1.
    """
    if n is None:
        return None
    count = as_int(n)
    if count is None:
        raise TypeError(f"n must be an integer, not {type(n).__name__}")
    if count < 1:
        raise ValueError(f"n must be at least 1, not {count}")
    return count


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
    n = check_count(n)
    if (flag := as_bool(tunnel)) is None:  # ("no" would read as a yes)
        raise TypeError(f"tunnel must be True or False, not {tunnel!r}")
    tunnel = flag
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
    from ..launchers.ssh_hosts import (  # here: local clusters need none of them
        SSHHost,
        add_workers,
        parse_hosts,
    )

    parsed = parse_hosts(hosts)
    if n is not None:  # n more local workers, beside any "localhost" of hosts=
        local = [i for i, host in enumerate(parsed) if host.is_local]
        if local:
            parsed[local[0]] = add_workers(parsed[local[0]], n)
        else:
            parsed.append(SSHHost("localhost", workers=n))
    if not parsed:
        raise ValueError("a cluster needs at least one worker; hosts= is empty")
    total = sum(host.workers for host in parsed)
    if all(host.is_local for host in parsed):
        if tunnel or listen is not None:
            raise ValueError("tunnel= and listen= apply to remote hosts, and hosts= names "
                             "only 'localhost'")
        return LocalLauncher(python=python, env=env), total
    from ..launchers.ssh import SSHLauncher  # here: local clusters never import it

    ssh = SSHLauncher(parsed, python=python, env=env, tunnel=tunnel, listen=listen)
    ssh.check_hosts()
    return ssh, total


def choose_workers(
    n: int | None,
    hosts: Iterable[str | SSHHost] | Mapping[str, int | SSHHost] | None,
    launcher: Launcher | None,
    *,
    python: str | None,
    env: Mapping[str, str] | None,
    threads_per_worker: int | None,
    tunnel: bool,
    listen: str | None,
    min_workers: int | None,
    wait_for: int | None,
) -> tuple[Launcher, int, int, int | None]:
    """The launcher, the number of workers, how many the constructor waits for, and
    ``min_workers`` (an int, or None).

    Raises:
        RuntimeError: the interpreter is shutting down (a ``__del__`` as modules are
            torn down): the checks would fail on half-gone modules.
    """
    if sys.is_finalizing():
        raise RuntimeError("cannot start a cluster while the interpreter is shutting down "
                           "(from a __del__ or a thread still running at exit, say)")
    if launcher is not None and (python is not None or env is not None):
        raise ValueError("python= and env= belong to the launcher when launcher= is given")
    check_launcher(launcher)
    if python is not None:  # (a Path too: the launchers quote it into command lines)
        path = os.fspath(python) if isinstance(python, (str, os.PathLike)) else None
        if not isinstance(path, str) or not path:
            raise TypeError(f"python must be the path of a Python interpreter (a non-empty str "
                            f"or Path) or None for this one, not {python!r}")
        python = path
    launcher, n_workers = choose_launcher(
        n, hosts, launcher, python=python, tunnel=tunnel, listen=listen,
        env=worker_env(env, check_threads(threads_per_worker),
                       given=threads_per_worker is not DEFAULT_THREADS))
    if isinstance(launcher, LocalLauncher):
        make_room_for_files(n_workers)
    least = check_min_workers(min_workers, n_workers)
    wait_for = check_min_workers(wait_for, n_workers, "wait_for")
    if wait_for is None:  # a batch queue may hold workers back: start with the first
        wait_for = 1 if launcher.queues else n_workers
    return launcher, n_workers, min(wait_for, n_workers), least


#: Descriptors the master may hold per local worker (its stdin, its pidfd, two
#: connections, its progress page, shared-memory segments both ways: 10 measured),
#: and a few more while the cluster starts.
FILES_PER_WORKER = 10
FILES_SPARE = 16
#: What a local cluster raises the soft limit on open files to, where the hard one allows.
FILES_RAISED_TO = 65536


def make_room_for_files(n_workers: int) -> None:
    """Raise the soft limit on open files (``ulimit -n``) to the hard one (up to
    :data:`FILES_RAISED_TO`, or what the workers need): ``n_workers``
    more local workers need room beside what the process has open (past the limit,
    libzmq aborts the whole process), and so do the results the program keeps that
    came through shared memory (before Python 3.13, each holds a descriptor).  The
    workers inherit it.

    Raises:
        ValueError: the workers would not fit under the hard limit (naming it).
    """
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:  # (no /proc): only the limit's plain use is checked
        open_now = FILES_SPARE
    needed = open_now + FILES_SPARE + FILES_PER_WORKER * n_workers
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise ValueError(
            f"{n_workers} local workers need about {needed} open files in this process "
            f"({open_now} open now), more than its limit of {hard} (ulimit -n, whose hard "
            "limit only root can raise): start fewer workers")
    # Up to FILES_RAISED_TO: a limit of millions (some containers) changes how other
    # code behaves (a loop closing every descriptor), and no cluster needs it.
    wanted = FILES_RAISED_TO if hard == resource.RLIM_INFINITY else min(hard, FILES_RAISED_TO)
    if soft != resource.RLIM_INFINITY and soft < max(wanted, needed):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(wanted, needed), hard))


def check_launcher(launcher: object) -> None:
    """Raise ``TypeError`` unless ``launcher`` is None or a Launcher instance."""
    if launcher is None or isinstance(launcher, Launcher):
        return
    if isinstance(launcher, type) and issubclass(launcher, Launcher):
        raise TypeError(f"launcher must be a Launcher instance, not the class "
                        f"{launcher.__name__}: call it, {launcher.__name__}(...)")
    raise TypeError(f"launcher must be a Launcher such as LocalLauncher(), "
                    f"SSHLauncher(hosts) or SlurmLauncher(...), not {launcher!r}")


def check_min_workers(count: int | None, total: int, name: str = "min_workers") -> int | None:
    """``count`` as an int, or None; raise ``ValueError`` unless it is from 1 to ``total``."""
    if count is None:
        return None
    number = as_int(count)
    if number is None or not 1 <= number <= total:
        raise ValueError(f"{name} must be an integer from 1 to the {total} workers asked "
                         f"for, not {count!r}")
    return number


def check_threads(threads_per_worker: int | None) -> int | None:
    """``threads_per_worker`` as an int, or None; raise ``ValueError`` unless positive."""
    if threads_per_worker is None:
        return None
    threads = as_int(threads_per_worker)
    if threads is None or threads < 1:
        raise ValueError(f"threads_per_worker must be a positive integer or None, "
                         f"not {threads_per_worker!r}")
    return threads


#: True while a ``sockpool.Pool`` starts its cluster: multiprocessing never warns about
#: a pool larger than the machine (common for I/O-bound work), nor does its drop-in.
as_pool: contextvars.ContextVar[bool] = contextvars.ContextVar("as_pool", default=False)


def warn_if_oversubscribed(n_workers: int, launcher: Launcher, chosen: bool) -> None:
    """brms's rule: local workers x threads each should not exceed the physical cores;
    and the process's open clusters should not have twice as many workers as there are
    cores (a notebook cell that makes a cluster, run again, leaves the last one open).

    The threads are those the workers get: ``OMP_NUM_THREADS`` as the launcher sets it
    (``threads_per_worker``, or ``env=``), else as they inherit it; 1 if neither sets it.

    Args:
        chosen: the user chose the counts (``n`` or ``threads_per_worker > 1``);
            the default ``n=detect_cores()`` that DESIGN.md picks is not warned about
            on its own.
    """
    if not isinstance(launcher, LocalLauncher) or as_pool.get():
        return
    threads = _threads_set(launcher.env) or _threads_set(os.environ) or 1
    physical = detect_cores(logical=False)
    others = [engine.target for engine in open_engines()
              if isinstance(engine.launcher, LocalLauncher)]
    if (chosen or threads > 1) and n_workers * threads > physical:
        warnings.warn(
            f"{n_workers} worker{'s' if n_workers > 1 else ''} x {threads} "
            f"thread{'s' if threads > 1 else ''} each = {n_workers * threads} threads on "
            f"{physical} usable physical cores (hyper-threads do not count): they will slow "
            "each other down; use fewer workers or threads_per_worker", UserWarning,
            stacklevel=user_stacklevel())
    elif others and n_workers + sum(others) > 2 * physical:  # (two used in turn are fine)
        total = n_workers + sum(others)
        warnings.warn(
            f"this process has {len(others)} other open cluster{'s' if len(others) > 1 else ''}"
            f" with {sum(others)} local worker{'s' if sum(others) > 1 else ''}: with these "
            f"{n_workers}, {total} workers on {physical} usable physical cores, more than "
            "twice as many; close the clusters you are done with (cl.close(), or "
            "`with Cluster(...) as cl:`)", UserWarning, stacklevel=user_stacklevel())


def worker_env(env: Mapping[str, str] | None, threads: int | None, *, given: bool = True
               ) -> dict[str, str]:
    """The workers' extra environment: ``threads`` for the thread pools' variables (unless
    ``given``, the default's: not those the master sets), then ``env`` (checked: names and
    values must be strings)."""
    extra = check_env(env)
    worker_env: dict[str, str] = {}
    if threads is not None:
        value = str(threads)
        if not given and (inherited := _threads_set(os.environ)):
            # OMP_NUM_THREADS=2 is meant for every pool: OpenBLAS reads its own
            # variable first, so setting it to 1 beside would undo yours.
            value = str(inherited)
        for name in THREAD_VARIABLES:
            if given or name not in os.environ:
                worker_env[name] = value if name != "LOKY_MAX_CPU_COUNT" else str(threads)
    worker_env.update(extra)
    return worker_env


def _threads_set(environment: Mapping[str, str]) -> int | None:
    """The threads per pool ``OMP_NUM_THREADS`` sets in ``environment``, if it sets some."""
    chosen = environment.get("OMP_NUM_THREADS", "").strip()
    return int(chosen) if chosen.isdigit() and int(chosen) > 0 else None


_MEMORY = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*", re.IGNORECASE)


def memory_bytes(value: float | str | None, name: str = "max_worker_memory") -> int | None:
    """``"2GB"``, ``"512 MiB"``, ``"1.5g"`` or a number of bytes, as bytes (None stays None).

    Raises:
        ValueError: not a positive amount of memory (the message names ``name``).
    """
    if value is None:
        return None
    count, real = as_int(value), as_real(value)  # (NumPy's numbers, and 1e9, too)
    if count is None and real is not None and math.isfinite(real) and real.is_integer():
        count = int(real)
    if count is not None and count > 0:
        return count
    found = _MEMORY.fullmatch(value) if isinstance(value, str) else None
    number, unit, binary = found.groups() if found is not None else ("0", "", "")
    base = 1024 if binary else 1000
    size = float(number) * base ** " kmgt".index(unit.lower() or " ")
    if size < 1 or (not unit and not number.isdigit()):  # "0.5": half a byte is no limit
        raise ValueError(f"{name} must be a positive number of bytes or a size such as "
                         f"'2GB' or '512MiB', not {value!r}")
    return int(size)


def log_level_number(level: int | str | None) -> int | None:
    """``log_level`` as a number (``"INFO"`` -> 20); None stays None.

    Raises:
        ValueError: not a logging level.
    """
    if level is None or (isinstance(level, int) and not isinstance(level, bool)):
        return level
    number = logging.getLevelName(level.upper()) if isinstance(level, str) else None
    if not isinstance(number, int):
        raise ValueError(f"log_level must be a logging level such as logging.INFO or 'INFO', "
                         f"not {level!r}")
    return number


def _seconds(name: str, value: object) -> float:
    """``value`` as a float of seconds (NumPy's numbers too); ``ValueError`` naming
    ``name`` unless it is a positive number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) > 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


#: The shortest heartbeat_interval: a tighter beat only spends the master's CPU.
MIN_HEARTBEAT = 0.01


def check_heartbeats(interval: float, timeout: float | None) -> None:
    """Raise ``ValueError`` unless heartbeats come at least every ``MIN_HEARTBEAT``
    seconds and at most finitely often, and ``timeout`` (where given) is finite and
    spans at least two of them: a peer silent for less than that may just be busy."""
    if not MIN_HEARTBEAT <= interval < math.inf:
        raise ValueError(f"heartbeat_interval must be a finite number of seconds, at least "
                         f"{MIN_HEARTBEAT}, not {interval!r}")
    if timeout is not None and not 2 * interval <= timeout < math.inf:
        raise ValueError(f"heartbeat_timeout must be finite and at least two heartbeat "
                         f"intervals ({2 * interval:g} s), or None for the default, not "
                         f"{timeout!r}: a peer that misses one heartbeat is not lost, and "
                         "a worker must give up on a master that is gone")


def check_cluster_options(
    *,
    setup: Callable[[], Any] | None,
    threads_per_worker: int | None,
    connect_timeout: float,
    heartbeat_interval: float,
    heartbeat_timeout: float | None,
    seed: int | None,
    max_message_size: int,
    relay: bool | str,
    prefetch: int,
    max_tasks_per_worker: int | None,
    serializer: str,
    max_capture_size: int | None,
    transport: str,
    max_worker_memory: int | str | None = None,
    log_level: int | str | None = None,
    relay_prefix: bool = False,
) -> dict[str, Any]:
    """Raise ``ValueError`` (or ``TypeError``) naming the first bad ``Cluster`` option;
    return the engine's options as it takes them (integers as ``int``, NumPy's too;
    ``max_worker_memory`` in bytes, ``log_level`` as a number: by default, the root
    logger's level now; None where not given).
    """
    tasks = as_int(max_tasks_per_worker)
    if max_tasks_per_worker is not None and (tasks is None or tasks < 1):
        raise ValueError(f"max_tasks_per_worker must be a positive integer or None, "
                         f"not {max_tasks_per_worker!r}")
    if setup is not None and not callable(setup):
        raise TypeError(f"Cluster(setup=...) needs a callable as its function, "
                        f"not {type(setup).__name__}")
    check_threads(threads_per_worker)
    connect_timeout = _seconds("connect_timeout", connect_timeout)
    heartbeat_interval = _seconds("heartbeat_interval", heartbeat_interval)
    if heartbeat_timeout is not None:
        heartbeat_timeout = _seconds("heartbeat_timeout", heartbeat_timeout)
    check_heartbeats(heartbeat_interval, heartbeat_timeout)
    if seed is not None:
        check_seed(seed)
    max_frame_bytes = as_int(max_message_size)
    if max_frame_bytes is None or max_frame_bytes < MIN_MESSAGE_SIZE:
        raise ValueError(f"max_message_size must be a number of bytes, at least "
                         f"{MIN_MESSAGE_SIZE} (the workers' own messages need that much), "
                         f"not {max_message_size!r}")
    if as_bool(relay) is None and relay != "live":
        raise ValueError(f"relay must be True, False or 'live', not {relay!r}")
    if as_bool(relay_prefix) is None:
        raise ValueError(f"relay_prefix must be True or False, not {relay_prefix!r}")
    depth = as_int(prefetch)
    if depth is None or not 1 <= depth <= MAX_PREFETCH:
        raise ValueError(f"prefetch must be an integer from 1 to {MAX_PREFETCH}, "
                         f"not {prefetch!r}")
    check_serializer(serializer)
    check_max_capture_size(max_capture_size)
    check_transport(transport)
    return dict(connect_timeout=connect_timeout, heartbeat_interval=heartbeat_interval,
                heartbeat_timeout=heartbeat_timeout, max_frame_bytes=max_frame_bytes,
                prefetch=depth, max_tasks_per_worker=tasks,
                max_worker_memory=memory_bytes(max_worker_memory),
                log_level=(log_level_number(log_level) if log_level is not None
                           else logging.getLogger().getEffectiveLevel()))
