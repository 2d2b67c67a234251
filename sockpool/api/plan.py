"""``plan()``: the backend is a setting; the module-level maps run on it.

::

    import sockpool
    sockpool.plan(n=4)                      # a local cluster, started at first use
    results = sockpool.par_map(fn, xs)      # on the plan's cluster
    with sockpool.plan("sequential"):       # scoped: the previous plan comes back after
        results = sockpool.par_map(fn, xs)  # same results, in this process

With no ``plan()`` call the plan comes from ``SOCKPOOL_PLAN`` (``sequential``,
``local``, ``local:4``, ``hosts:node1,node1,node2``), else a local cluster of
``detect_cores()`` workers.  A plan's cluster starts at first use (one
cluster, however many threads ask at once) and is closed when the plan
changes, when its ``with`` ends, or at interpreter exit (the exit hook of
:mod:`.lifetime`, as for any cluster).  The plan is one for the whole
process, shared by its threads.

Inside a task (in a worker process) the plan is sequential: a nested
``sockpool.par_map`` runs in the worker and never starts a cluster of
clusters.  An explicit ``plan(...)`` call made by the task itself is obeyed;
under the sequential plan it holds until that task ends, leaving the
script's plan untouched.

This module loads the cluster machinery only when a cluster plan is chosen or
used, so that a worker's nested sequential calls stay light.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ..common import role
from ..common.forking import fork_safe_lock
from ..errors import ClusterClosedError
from .map_options import (
    ErrorMode,
    MapOptions,
    Schedule,
    check_call_options,
    check_callable,
    check_iterables,
    check_timeout,
)
from .sequential import Sequential, choose_for_task, running_task, task_choice

if TYPE_CHECKING:
    from .cluster import Cluster
    from .profile import Profile
    from .seeding import CallSeeds

T = TypeVar("T")

#: The environment variable that chooses the plan when the program does not.
ENV_VAR = "SOCKPOOL_PLAN"
FORMS = ("'sequential', 'local', 'local:N' (N local workers) or 'hosts:NAME,NAME,...' "
         "(ssh hosts, a name repeated for each worker it runs)")


class Plan:
    """A backend choice: what :func:`plan` returns, and a context manager.

    ``with sockpool.plan(n=2): ...`` puts the plan that was in force before
    back when the block ends (closing this plan's cluster).

    Attributes:
        sequential: tasks run in this process, one after another.
    """

    def __init__(self, *, sequential: bool = False, options: dict[str, Any] | None = None,
                 given: Cluster | None = None, seed: int | None = None,
                 origin: str = "plan()") -> None:
        self.sequential = sequential
        self._options = dict(options or {})
        self._given = given
        self._origin = origin
        self._runner = Sequential(seed) if sequential else None
        self._cluster: Cluster | None = None
        self._seeds: CallSeeds | None = None  # its last cluster's: the plan's count
        self._lock = fork_safe_lock()  # (held while its cluster starts)
        # plan(...) installed it and no with has used that yet: the next with over it
        # restores _previous, the plan it replaced (None: not chosen then), on leaving.
        self._scope_pending = False
        self._previous: Plan | None = None
        self._scopes: list[_Scope] = []  # its open withs, the last opened last

    def cluster(self) -> Cluster:
        """The plan's Cluster, started now if need be.

        Raises:
            RuntimeError: the plan is sequential: there is no cluster.
            ClusterClosedError: the plan's cluster was given (``plan(cl)``) and is closed.
            LaunchError: its workers could not start.
        """
        if self._given is not None:
            try:
                self._given._check_open()
            except ClusterClosedError as exc:
                if type(exc) is not ClusterClosedError:  # broken (NoWorkersLeftError): as is
                    raise
                raise ClusterClosedError(
                    "the plan's cluster, given by sockpool.plan(cl), is closed: choose "
                    "another plan with sockpool.plan()") from exc
            return self._given
        if self._runner is not None:
            where = " (inside a task the plan is sequential)" if role.in_worker() else ""
            raise RuntimeError(f"the plan is 'sequential'{where}: tasks run in this process, "
                               "one after another, and there is no cluster; choose one with "
                               "sockpool.plan(n=...) or SOCKPOOL_PLAN")
        with self._lock:  # two threads at once start one cluster
            cluster = self._cluster
            if cluster is None or not _usable(cluster):
                from .cluster import Cluster

                cluster = self._cluster = Cluster(**self._options)
                # Its seeded calls go on counting from the plan's last cluster's, so
                # a plan put back after a with (or a cluster closed) repeats no stream.
                if self._seeds is not None:
                    cluster._seeds.go_on_from(self._seeds)
                self._seeds = cluster._seeds
            return cluster

    @property
    def runner(self) -> Sequential:
        """The in-process runner of a sequential plan."""
        assert self._runner is not None, "not a sequential plan"
        return self._runner

    def release(self, *, wait: bool = True) -> None:
        """Close the cluster this plan started (a given one stays open).  Its seeded
        calls are still counted where they were, should the plan come back.

        Args:
            wait: let submitted tasks finish first (else cancel them).
        """
        with self._lock:
            cluster, self._cluster = self._cluster, None
        if cluster is not None and cluster.owner_pid == os.getpid():
            if wait:
                cluster.shutdown(wait=True)
            else:
                cluster.close()

    def __enter__(self) -> Plan:
        if self._scope_pending or _active() is self:  # plan(...) just put it in force
            restores, previous = self._scope_pending, self._previous
        else:  # a plan made before, since replaced: in force for the block
            restores, previous = True, _install(self, wait=True)
        scope = _Scope(restores, previous, running_task())
        self._scopes.append(scope)
        self._scope_pending = False
        if restores and scope.task is None:
            with _lock:
                _open_scopes.append(scope)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        scope = self._scopes.pop()
        if not scope.restores:  # plan()'s "the plan in force", which changed nothing
            return
        if scope.task is not None:
            if running_task() is scope.task:  # (else: its task ended, and its plan with it)
                _install(scope.previous, wait=exc_type is None)
            return
        with _lock:
            at = next(i for i, open_scope in enumerate(_open_scopes) if open_scope is scope)
            del _open_scopes[at]
            if at < len(_open_scopes):  # another thread's with, opened after it, is open:
                _open_scopes[at].previous = scope.previous  # that one puts back this one's
                return
        _install(scope.previous, wait=exc_type is None)

    def __repr__(self) -> str:
        if self.sequential:
            return "<sockpool plan: sequential>"
        if self._given is not None:
            return f"<sockpool plan: the given {self._given!r}>"
        options = ", ".join(f"{k}={v!r}" for k, v in self._options.items())
        started = self._cluster
        state = repr(started) if started is not None else "not started"
        return f"<sockpool plan: Cluster({options}), {state}>"


@dataclass(eq=False)
class _Scope:
    """One open ``with`` over a plan: whether leaving it puts back the plan it
    replaced, that plan (None: none was chosen), and the task it is in, if any."""

    restores: bool
    previous: Plan | None
    task: Sequential | None


_lock = fork_safe_lock()
_current: Plan | None = None  # None: not chosen yet (SOCKPOOL_PLAN, else the default)
#: The open withs that put a plan back as they end (outside tasks), the last opened
#: last: threads share the plan, so one that ends under another's still open leaves
#: the plan to that one, which puts back what the first would have.
_open_scopes: list[_Scope] = []
_in_task: Plan | None = None  # a worker's own sequential plan


def plan(backend: str | Cluster | None = None, /, **cluster_options: Any) -> Plan:
    """Choose where the module-level maps run; returns the new plan (a context manager).

    ::

        sockpool.plan(n=4)                        # a local cluster of 4 workers
        sockpool.plan(hosts=["node1", "node2"])   # any Cluster(...) keyword arguments
        sockpool.plan(cl)                         # a Cluster you made (and keep closing)
        sockpool.plan("sequential")               # in this process, one task after another
        sockpool.plan("local:4", seed=1)          # SOCKPOOL_PLAN's forms, with options
        with sockpool.plan(n=2): ...              # the previous plan is back after

    The cluster starts at the first call that needs it.  The plan that is
    replaced has its cluster closed (after the tasks submitted to it finish);
    a Cluster given to ``plan(cl)`` is never closed here.  ``plan()`` with no
    argument changes nothing and returns the plan in force.

    Args:
        backend: ``"sequential"``, ``"local"``, ``"local:N"``, ``"hosts:A,B,..."``,
            or a :class:`Cluster`; None: a cluster of ``cluster_options``.
        cluster_options: ``Cluster(...)``'s keyword arguments; the sequential
            plan takes ``seed=`` alone (the root seed, as ``Cluster(seed=)``).

    Raises:
        ValueError: a malformed plan or a bad option (before any worker starts).
        TypeError: an unknown option, or options with a given Cluster.
    """
    if backend is None and not cluster_options:
        active = _active()
        active._scope_pending = False  # so `with plan():` changes nothing either
        return active
    new = _make(backend, cluster_options, "plan()")
    new._previous = _install(new, wait=True)
    new._scope_pending = True
    return new


def current_plan() -> Plan:
    """The plan in force (from ``SOCKPOOL_PLAN``, or the default, if none was chosen)."""
    return _active()


def current_cluster() -> Cluster:
    """The plan's Cluster, started if need be.

    Raises:
        RuntimeError: the plan is sequential (also inside a task): there is no cluster.
        ValueError: ``SOCKPOOL_PLAN`` is malformed.
    """
    return _active().cluster()


def profile() -> Profile:
    """:meth:`Cluster.profile` on the plan's cluster: ``with sockpool.profile() as prof: ...``;
    under the sequential plan, each task as run in this process, by one worker."""
    plan = _active()
    if plan._runner is not None:
        from .profile import Profile

        return Profile(plan._runner.start_profile, plan._runner.stop_profile)
    return plan.cluster().profile()


# -- the module-level calls -------------------------------------------------------------


def par_map(fn: Callable[..., T], *iterables: Iterable[Any], chunksize: int | None = None,
            ordered: bool = True, progress: bool = False, timeout: float | None = None,
            retries: int = 0, errors: ErrorMode = "raise", seed: int | None = None,
            schedule: Schedule = "dynamic") -> list[T]:
    """:meth:`Cluster.par_map` on the plan's cluster (or in this process, when sequential).

    Results in input order; a failed task raises its own exception with a note
    naming its index.  The options are Cluster's, checked before any worker starts.
    """
    __tracebackhide__ = True  # IPython: a task's error, not sockpool's
    options = MapOptions(chunksize, ordered, progress, timeout, retries, errors, seed, schedule)
    check_callable(fn, "par_map")
    check_iterables(iterables, "par_map")
    active = _active()
    if active.sequential:
        return active.runner.par_map(fn, iterables, options, star=len(iterables) > 1)
    return active.cluster().par_map(fn, *iterables, **asdict(options))


def par_starmap(fn: Callable[..., T], iterable: Iterable[Iterable[Any]], *,
                chunksize: int | None = None, ordered: bool = True, progress: bool = False,
                timeout: float | None = None, retries: int = 0, errors: ErrorMode = "raise",
                seed: int | None = None, schedule: Schedule = "dynamic") -> list[T]:
    """:meth:`Cluster.par_starmap` on the plan: ``fn(*args)`` for each tuple ``args``."""
    __tracebackhide__ = True  # IPython: a task's error, not sockpool's
    options = MapOptions(chunksize, ordered, progress, timeout, retries, errors, seed, schedule)
    check_callable(fn, "par_starmap")
    check_iterables((iterable,), "par_starmap")
    active = _active()
    if active.sequential:
        return active.runner.par_map(fn, (iterable,), options, star=True)
    return active.cluster().par_starmap(fn, iterable, **asdict(options))


def imap(fn: Callable[..., T], *iterables: Iterable[Any], ordered: bool = True,
         chunksize: int | None = None, progress: bool = False, timeout: float | None = None,
         retries: int = 0, errors: ErrorMode = "raise", seed: int | None = None) -> Iterator[T]:
    """:meth:`Cluster.imap` on the plan: results as they come, input read lazily.

    When sequential, each task runs when its result is asked for.  An input
    that raises gives, on every plan, the result of each item read before it,
    then its exception.
    """
    options = MapOptions(chunksize, ordered, progress, timeout, retries, errors, seed)
    check_callable(fn, "imap")
    check_iterables(iterables, "imap")
    active = _active()
    if active.sequential:
        return active.runner.imap(fn, iterables, options)
    keywords = asdict(options)
    del keywords["schedule"]  # imap has none
    return active.cluster().imap(fn, *iterables, **keywords)


def submit(fn: Callable[..., T], /, *args: Any, timeout: float | None = None,
           seed: int | None = None, **kwargs: Any) -> Future[T]:
    """:meth:`Cluster.submit` on the plan: a ``concurrent.futures.Future``.

    When sequential, the call runs now and the Future comes back done.
    ``timeout`` and ``seed`` are sockpool's; every other keyword goes to ``fn``.
    """
    timeout = check_timeout(timeout)  # (as a float)
    check_callable(fn, "submit")
    if seed is not None:
        MapOptions(seed=seed)  # checked as a map's
    active = _active()
    if active.sequential:  # (a cluster's submit warns as this does)
        check_call_options(fn, timeout, seed)
        return active.runner.submit(fn, args, kwargs, timeout, seed)
    return active.cluster().submit(fn, *args, timeout=timeout, seed=seed, **kwargs)


def run_on_all(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> list[T]:
    """:meth:`Cluster.run_on_all` on the plan: once on every worker, one result each.

    When sequential, this process is the one worker: a list of one result.
    """
    __tracebackhide__ = True  # IPython: a task's error, not sockpool's
    check_callable(fn, "run_on_all")
    active = _active()
    if active.sequential:
        return active.runner.run_on_all(fn, args, kwargs)
    return active.cluster().run_on_all(fn, *args, **kwargs)


# -- choosing and switching plans -------------------------------------------------------


def _active() -> Plan:
    """The plan in force; chosen from the environment at first need."""
    global _current
    # A task of a sequential plan sees what a worker's task would, unless it chose a
    # plan of its own.
    if running_task() is not None:
        chosen = task_choice()
        return cast(Plan, chosen) if chosen is not None else _task_plan()
    current = _current
    if current is not None:
        return current
    with _lock:
        if _current is not None:
            return _current
        if role.in_worker():  # inside a task; SOCKPOOL_PLAN, inherited, is the master's
            return _task_plan()
        _current = _from_environment()
        return _current


def _task_plan() -> Plan:
    """The plan inside a task: sequential, unseeded (a nested call's tasks draw from
    the enclosing task's streams), the same in a worker and in this process."""
    global _in_task
    if _in_task is None:
        _in_task = Plan(sequential=True, origin="a task")
    return _in_task


def _from_environment() -> Plan:
    text = os.environ.get(ENV_VAR, "").strip()
    if not text:
        return Plan(origin="the default")
    try:
        return _make(text, {}, ENV_VAR)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        if not message.startswith(ENV_VAR):
            message = f"{ENV_VAR}={text!r}: {message}"
        raise ValueError(message) from None


def _install(new: Plan | None, *, wait: bool) -> Plan | None:
    """Make ``new`` the plan in force (None: not chosen); close the one it replaced,
    and return that.  Chosen by a task of the sequential plan, it is that task's own,
    as it would be in a worker (the script's plan is untouched)."""
    global _current
    if running_task() is not None:
        old = cast("Plan | None", choose_for_task(new))
    else:
        with _lock:
            old, _current = _current, new
    if old is not None and old is not new:
        # A with over it later puts it in force; let go of the one it replaced (or all stay).
        old._scope_pending, old._previous = False, None
        old.release(wait=wait)
    return old


def _make(backend: str | Cluster | None, options: dict[str, Any], origin: str) -> Plan:
    """A checked Plan (no worker starts here)."""
    if isinstance(backend, str):
        sequential, parsed = _parse(backend, origin)
        if sequential:
            extra = sorted(set(options) - {"seed"})
            if extra:
                raise TypeError(f"the sequential plan takes seed= alone, not {', '.join(extra)}")
            seed = options.get("seed")
            if seed is not None:
                MapOptions(seed=seed)  # the check of a seed
            return Plan(sequential=True, seed=seed, origin=origin)
        both = sorted(set(parsed) & set(options))
        if both:
            raise ValueError(f"plan({backend!r}) already says {both[0]}=; do not give it again")
        options = {**parsed, **options}
    elif backend is not None:
        from .cluster import Cluster

        if not isinstance(backend, Cluster):
            raise TypeError("plan() takes a plan's name ('sequential', 'local:4', ...), a "
                            "Cluster, or Cluster's keyword arguments, not "
                            f"{type(backend).__name__}")
        if options:
            raise TypeError("plan(cl) takes no options: the Cluster is already made")
        return Plan(given=backend, origin=origin)
    try:
        _check_cluster_options(options)
    except (TypeError, ValueError) as exc:
        if isinstance(backend, str) and origin != ENV_VAR:  # (the variable is named there)
            raise type(exc)(f"plan({backend!r}): {exc}") from None
        raise
    return Plan(options=options, origin=origin)


def _parse(text: str, origin: str) -> tuple[bool, dict[str, Any]]:
    """``(sequential, Cluster options)`` of a plan's name; ValueError naming the forms."""
    name = text.strip()
    kind, colon, rest = name.partition(":")
    if name == "sequential":
        return True, {}
    if name == "local":
        return False, {}
    if colon and kind == "local" and rest.strip().isascii() and rest.strip().isdigit():
        return False, {"n": int(rest)}
    hosts = [host.strip() for host in rest.split(",")]
    if colon and kind == "hosts" and all(hosts):
        return False, {"hosts": hosts}
    where = f"{ENV_VAR}={text!r}" if origin == ENV_VAR else f"plan({text!r})"
    raise ValueError(f"{where} is not a plan: the forms are {FORMS}")


def _check_cluster_options(options: dict[str, Any]) -> None:
    """Check ``Cluster(**options)``'s arguments as its constructor does, starting nothing."""
    from . import cluster_options
    from .cluster import Cluster

    try:
        bound = inspect.signature(Cluster).bind(**options)
    except TypeError as exc:
        raise TypeError(f"plan() takes Cluster's keyword arguments: {exc}") from None
    bound.apply_defaults()
    values = dict(bound.arguments)
    for check in (cluster_options.choose_workers, cluster_options.check_cluster_options):
        parameters = inspect.signature(check).parameters
        needed = [p for p in parameters.values() if p.default is inspect.Parameter.empty]
        if all(p.name in values for p in needed):  # a check whose arguments Cluster has
            check(**{name: values[name] for name in parameters if name in values})


def _usable(cluster: Cluster) -> bool:
    """Whether the plan's cluster still takes work here (not closed by its user, by the
    exit hook, or inherited through fork from the process that started it)."""
    if cluster.owner_pid != os.getpid():
        return False
    try:
        cluster._check_open()
    except Exception:
        return False
    return True
