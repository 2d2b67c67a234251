"""The ``"sequential"`` plan: a cluster's calls run in this process, one task after another.

It keeps what a user of a cluster sees: the same results in the same order,
the same exceptions (their own type, with a note naming the task index, "in
this process"), the same seeded random streams (task i of a seeded call is
seeded exactly as a worker seeds it, by :func:`sockpool.common.rng.seed_task`),
``errors="return"``, ``retries=`` and ``timeout=``.  What the tasks print
comes out as they run, so in input order, as a cluster relays it.

What it cannot do as a cluster does:

* ``timeout=``: there is no process to stop.  In the main thread a task past
  its limit is interrupted by a timer signal (``SIGALRM``; a timer already
  set is put back after); a task in C code that does not return to Python,
  or one in another thread, runs to its end.  Either way a task that took longer than
  its limit fails with ``TaskTimeoutError`` (or, with ``retries=``, runs again),
  and whatever it changed in this process stays changed.
* Tasks work on the caller's own objects, not on copies: a task that changes
  its argument or a global changes it here too (on a cluster it would change a
  worker's copy), and a function that could not travel to a worker still runs.
* ``chunksize``, ``schedule`` and ``ordered=False`` change nothing: there is
  one task at a time, in input order.
* ``profile()`` records each task (and attempt) as run by one worker, 0, on
  ``localhost``, with no bytes moved.

A seeded task's streams are set up around the task and the caller's own
``random`` and NumPy global state, and the enclosing task's ``task_rng()``,
are put back after it, as a cluster leaves them untouched.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from types import FrameType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from ..common import rng
from ..common.naming import function_name
from ..common.protocol import TIMEOUT_SLACK
from ..errors import RemoteError, TaskTimeoutError, add_note
from .map_options import MapOptions, as_sequence, known_length, progress_bar
from .seeding import CallSeeds

if TYPE_CHECKING:
    from ..dispatch.profiling import Recording

T = TypeVar("T")

#: A call's seed as :class:`CallSeeds` gives it: ``(entropy, call number or None)``.
CallSeed = tuple[int, int | None] | None


class _Call(NamedTuple):
    """A call as a profile records it: its number, its function's name, when it came."""

    number: int
    function: str
    submitted: float


class _TimeLimit(BaseException):
    """Raised into a task by the timer signal (a BaseException: ``except Exception``
    in the task does not swallow it); its argument is the timer's owner."""


#: Never a task's own failure: the user's Ctrl-C, and an enclosing task's time limit.
_PASS_THROUGH = (KeyboardInterrupt, _TimeLimit)


class Sequential:
    """Runs a plan's calls in this process with a cluster's semantics.

    Args:
        seed: the root seed, as ``Cluster(seed=)``: the k-th seeded call gives
            its task i the stream ``SeedSequence(seed, spawn_key=(k, i))``.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seeds = CallSeeds(seed)
        self.recordings: list[Recording] = []  # the profiles recording now
        self._calls = itertools.count(1)

    def start_profile(self) -> Recording:
        """Begin recording every task run here (``sockpool.profile()``)."""
        from ..dispatch.profiling import Recording

        recording = Recording(time.time())
        recording.workers[0] = "localhost"
        self.recordings.append(recording)
        return recording

    def stop_profile(self, recording: Recording) -> None:
        """End a recording."""
        recording.stopped = time.time()
        recording.windows[0] = (recording.started, recording.stopped)
        recording.clock_errors[0] = 0.0
        self.recordings.remove(recording)

    def _call(self, fn: Callable[..., Any]) -> _Call | None:
        """What a profile records of a call about to run (None when none records)."""
        if not self.recordings:
            return None
        return _Call(next(self._calls), function_name(fn), time.time())

    def record(self, call: _Call, index: int, attempt: int, started: float, ok: bool) -> None:
        """One attempt of task ``index`` of ``call`` ran from ``started`` until now."""
        import array

        from ..dispatch.profiling import ChunkRun

        finished = time.time()
        run = ChunkRun(call.number, call.function, index, 1, 0, "localhost", attempt,
                       call.submitted, started, 0, finished, 0,
                       array.array("d", (started, finished)), array.array("I", [1]),
                       frozenset() if ok else frozenset({0}))
        for recording in self.recordings:
            recording.runs.append(run)

    def par_map(self, fn: Callable[..., T], iterables: tuple[Iterable[Any], ...],
                options: MapOptions, *, star: bool) -> list[T]:
        """``par_map``/``par_starmap``: every task in input order; the results as a list."""
        __tracebackhide__ = True  # IPython: a task's error, not sockpool's
        seed = self.seeds.for_call(options.seed)
        items = as_sequence(iterables)
        bar = progress_bar(len(items), options.progress)
        call = self._call(fn)
        try:
            results = []
            for index, item in enumerate(items):
                results.append(_map_task(fn, item, star, index, seed, options, self, call))
                if bar is not None:
                    bar.update(1)
            return results
        finally:
            if bar is not None:
                bar.close()

    def imap(self, fn: Callable[..., T], iterables: tuple[Iterable[Any], ...],
             options: MapOptions) -> Iterator[T]:
        """``imap``: each task runs when its result is asked for."""
        seed = self.seeds.for_call(options.seed)  # now, as a cluster counts the call
        star = len(iterables) > 1
        items = zip(*iterables, strict=False) if star else iter(iterables[0])
        return _lazily(fn, items, star, seed, options, self, self._call(fn),
                       known_length(iterables, options.progress))

    def submit(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any],
               timeout: float | None, seed: int | None) -> Future[T]:
        """``submit``: runs the call now; returns its finished ``Future``."""
        call_seed = self.seeds.for_call(seed)
        future: Future[T] = Future()
        future.set_running_or_notify_cancel()
        try:
            value = run_task(lambda: fn(*args, **kwargs), 0, call_seed, timeout, 0, self,
                             self._call(fn), f"the call to {function_name(fn)}")
        except _PASS_THROUGH:
            raise
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(value)
        return future

    def run_on_all(self, fn: Callable[..., T], args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> list[T]:
        """``run_on_all``: this process is the only worker: one result."""
        __tracebackhide__ = True  # IPython: a task's error, not sockpool's
        return [run_task(lambda: fn(*args, **kwargs), 0, None, None, 0, self, self._call(fn))]


def _map_task(fn: Callable[..., Any], item: Any, star: bool, index: int, seed: CallSeed,
              options: MapOptions, owner: Sequential, profiled: _Call | None) -> Any:
    """One task of a map: its value, or with ``errors="return"`` its exception."""
    __tracebackhide__ = True  # IPython: a task's error, not sockpool's
    call = (lambda: fn(*item)) if star else (lambda: fn(item))
    try:
        return run_task(call, index, seed, options.timeout, options.retries, owner, profiled)
    except _PASS_THROUGH:
        raise
    except BaseException as exc:
        if options.errors == "raise":
            raise
        return exc


def _lazily(fn: Callable[..., Any], items: Iterator[Any], star: bool, seed: CallSeed,
            options: MapOptions, owner: Sequential, profiled: _Call | None,
            total: int | None) -> Iterator[Any]:
    __tracebackhide__ = True  # IPython: a task's error, not sockpool's
    bar = progress_bar(total, options.progress)
    try:
        for index, item in enumerate(items):
            yield _map_task(fn, item, star, index, seed, options, owner, profiled)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def run_task(call: Callable[[], T], index: int, seed: CallSeed, timeout: float | None,
             retries: int, owner: Sequential | None = None, profiled: _Call | None = None,
             named: str | None = None) -> T:
    """Run task ``index`` as a worker would: seeded, timed, retried past its time limit;
    ``owner``, the runner it belongs to, is :func:`running_task`'s while it runs, and
    records each attempt for its profiles (``profiled``: the call, when one records).
    Messages name it ``named`` (a submit: "the call to f"), or by its index.

    Raises:
        TaskTimeoutError: it ran longer than ``timeout`` (``retries + 1`` times).
        BaseException: what the task raised, noted with its index (a task's
            ``SystemExit`` arrives as :class:`RemoteError`, as from a worker).
    """
    __tracebackhide__ = True  # IPython: a task's error, not sockpool's
    named = named or f"task {index}"
    for attempt in range(1, retries + 2):
        started = time.time()
        try:
            with _seeded(seed, index), _in_task(owner) as ended_well:
                timed_out, value = _timed(call, named, timeout)
                ended_well[0] = not timed_out
        except BaseException:
            if profiled is not None and owner is not None:
                owner.record(profiled, index, attempt, started, ok=False)
            raise
        if profiled is not None and owner is not None:
            owner.record(profiled, index, attempt, started, ok=not timed_out)
        if not timed_out:
            return value  # type: ignore[no-any-return]
    raise TaskTimeoutError(f"{named} ran longer than {timeout:g} s (timeout=) in this "
                           "process" + (f", {retries + 1} times" if retries else ""),
                           timeout=timeout)


def _timed(call: Callable[[], T], named: str, timeout: float | None) -> tuple[bool, Any]:
    """``(timed out, value)`` of one attempt; a task's own exception is raised, noted.
    It has the slack a cluster's task has (``TIMEOUT_SLACK``)."""
    __tracebackhide__ = True  # IPython: a task's error, not sockpool's
    if timeout is not None:
        timeout += TIMEOUT_SLACK
    started = time.perf_counter()
    mine = object()
    try:
        with _alarm(timeout, mine):
            value = call()
    except _TimeLimit as limit:
        if limit.args[0] is not mine:  # an enclosing task's limit (a nested sequential call)
            raise
        return True, None
    except KeyboardInterrupt:
        raise
    except (SystemExit, GeneratorExit) as exc:
        # A worker turns these into RemoteError so that they cannot end the master.
        remote = RemoteError(f"builtins.{type(exc).__qualname__}", str(exc),
                             "".join(traceback.format_exception(exc)))
        add_note(remote, f"sockpool: {named} failed in this process")
        raise remote from None
    except BaseException as exc:
        add_note(exc, f"sockpool: {named} failed in this process")
        raise
    return timeout is not None and time.perf_counter() - started > timeout, value


#: Seconds past which setitimer overflows (time_t): about 31 years.
_LONGEST_ALARM = 1e9


@contextlib.contextmanager
def _alarm(timeout: float | None, owner: object) -> Iterator[None]:
    """Interrupt the task with ``_TimeLimit(owner)`` after ``timeout`` seconds, where
    this thread may (the main thread).  (It may fire before the task starts: a
    timeout of a microsecond.)

    A timer already running (pytest-timeout's, an enclosing task's) is put back
    after, with the time it had left; one due first is left to fire.
    """
    if (timeout is None or timeout > _LONGEST_ALARM
            or threading.current_thread() is not threading.main_thread()):
        yield  # (a timeout of years, or inf, never fires: setitimer refuses it)
        return
    previous = signal.getsignal(signal.SIGALRM)
    left, interval = signal.getitimer(signal.ITIMER_REAL)
    if previous is None or (left and left <= timeout):  # set outside Python; due first
        yield
        return
    armed = True

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        if armed:
            raise _TimeLimit(owner)

    started = time.monotonic()
    try:
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        yield
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if left:
            signal.setitimer(signal.ITIMER_REAL,
                             max(left - (time.monotonic() - started), 1e-3), interval)


_running = threading.local()


def running_task() -> Sequential | None:
    """The runner whose task this thread runs now (the innermost), or None.

    Its module-level calls then get the plan of a task, as they would in a
    worker (``plan.py``), so that they neither count as the plan's seeded calls
    nor reseed the task's streams.
    """
    stack = getattr(_running, "owners", None)
    return stack[-1] if stack else None


def task_choice() -> Any:
    """The plan the task this thread runs chose for itself (``plan(...)`` inside it),
    or None: it holds until the task ends, as a worker's would for that task."""
    chosen = getattr(_running, "chosen", None)
    return chosen[-1] if chosen else None


def choose_for_task(plan: Any) -> Any:
    """Make ``plan`` the running task's own (see :func:`task_choice`); return the one
    it replaces."""
    chosen = _running.chosen
    old, chosen[-1] = chosen[-1], plan
    return old


@contextlib.contextmanager
def _in_task(owner: Sequential | None) -> Iterator[list[bool]]:
    """The task's run; its caller sets the flag it yields once the task ended well."""
    ended_well = [False]
    if owner is None:
        yield ended_well
        return
    stack = _running.__dict__.setdefault("owners", [])
    chosen = _running.__dict__.setdefault("chosen", [])
    stack.append(owner)
    chosen.append(None)
    try:
        yield ended_well
    finally:
        stack.pop()
        plan = chosen.pop()
        if plan is not None:  # the plan the task chose ends with it (its cluster closes,
            with contextlib.suppress(Exception):  # its work cancelled unless it ended well)
                plan.release(wait=ended_well[0])


@contextlib.contextmanager
def _seeded(seed: CallSeed, index: int) -> Iterator[None]:
    """Seed ``random``, NumPy and ``task_rng()`` for task ``index`` as a worker does,
    and put the caller's state back after it."""
    if seed is None:
        yield
        return
    entropy, call = seed
    numpy = _numpy()
    saved = (random.getstate(), numpy.random.get_state() if numpy is not None else None,
             rng._current)
    rng.seed_task(entropy, (index,) if call is None else (call, index))
    try:
        yield
    finally:
        random.setstate(saved[0])
        if numpy is not None:
            numpy.random.set_state(saved[1])
        rng._current = saved[2]


def _numpy() -> Any:
    """NumPy, imported (seeding imports it anyway), or None where it is not installed."""
    if "numpy" not in sys.modules:
        try:
            import numpy  # noqa: F401
        except ImportError:
            return None
    return sys.modules["numpy"]
