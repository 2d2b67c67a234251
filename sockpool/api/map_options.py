"""A map's options as one value, checked once, and the checks of a call's function and input."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..common.caller import user_stacklevel
from ..common.checks import as_bool, as_int, as_real
from ..common.naming import function_name
from ..common.protocol import Flag
from ..common.rng import check_seed

#: What a map does with a failed task: raise the first failure, or return exceptions in place.
ErrorMode = Literal["raise", "return"]
#: How a map's chunks reach the workers: pulled as they free up, or assigned up front.
Schedule = Literal["dynamic", "static"]


@dataclass(frozen=True)
class MapOptions:
    """How one map runs: ``par_map``'s keyword arguments, checked when made.

    Raises:
        ValueError: an option is out of range (the message names it).
    """

    chunksize: int | None = None  #: tasks per chunk (None: chosen for the call)
    ordered: bool = True  #: results (and output) in input order
    progress: bool = False  #: draw a progress bar
    timeout: float | None = None  #: each task's time limit, seconds
    retries: int = 0  #: re-runs of a task whose worker was lost
    errors: ErrorMode = "raise"  #: "raise" the first failure, or "return" exceptions in place
    seed: int | None = None  #: this call's own seed
    schedule: Schedule = "dynamic"  #: "dynamic" (workers pull) or "static" (assigned up front)

    def __post_init__(self) -> None:
        chunksize, timeout, retries = self.chunksize, self.timeout, as_int(self.retries)
        if chunksize is not None:  # (NumPy integers are taken, as ints)
            chunksize = as_int(chunksize)
            if chunksize is None or chunksize < 1:
                raise ValueError(f"chunksize must be a positive integer or None, "
                                 f"not {self.chunksize!r}")
            object.__setattr__(self, "chunksize", chunksize)
        if retries is None or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, not {self.retries!r}")
        object.__setattr__(self, "retries", retries)
        for name in ("ordered", "progress"):
            if (flag := as_bool(getattr(self, name))) is None:
                raise ValueError(f"{name} must be True or False, not {getattr(self, name)!r}")
            object.__setattr__(self, name, flag)
        if self.errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', not {self.errors!r}")
        object.__setattr__(self, "timeout", timeout := check_timeout(timeout))
        if timeout is not None and chunksize not in (None, 1):
            raise ValueError(
                f"chunksize={chunksize} cannot be given with timeout=: a time limit applies "
                "to each task, and a timed task runs in a chunk of its own (leave chunksize out)")
        if self.schedule not in ("dynamic", "static"):
            raise ValueError(f"schedule must be 'dynamic' or 'static', not {self.schedule!r}")
        if self.seed is not None:
            object.__setattr__(self, "seed", check_seed(self.seed))

    def flags(self, star: bool) -> int:
        """The TASK flags: how items become arguments, and whether a failure stops a chunk."""
        flags = Flag.MAP_STAR if star else Flag.MAP_ONE
        return flags | Flag.STOP_ON_ERROR if self.errors == "raise" else flags

    def chunk_size(self, n_items: int, n_workers: int) -> int:
        """Tasks per chunk of a list: one with a time limit; as given; else about four
        chunks per worker (``multiprocessing.Pool``'s rule)."""
        if self.timeout:
            return 1
        if self.chunksize is not None:
            return self.chunksize
        return max(1, math.ceil(n_items / (4 * max(1, n_workers))))

    @property
    def lazy_chunk_size(self) -> int | None:
        """imap's chunk size: as given, one with a time limit, else None (grown from timings)."""
        return self.chunksize or (1 if self.timeout else None)


def options_of(method: str, options: dict[str, Any]) -> MapOptions:
    """The keyword options of ``Cluster.<method>`` (``apar_map``: ``par_map``'s;
    ``aimap``: ``imap``'s, which take no ``schedule``), checked.

    Raises:
        TypeError: an option the method does not take (named as Python would).
    """
    allowed = set(MapOptions.__dataclass_fields__) - ({"schedule"} if method == "aimap" else set())
    for name in options:
        if name not in allowed:
            raise TypeError(f"Cluster.{method}() got an unexpected keyword argument {name!r}")
    return MapOptions(**options)


def check_timeout(timeout: object) -> float | None:
    """``timeout`` as a float of seconds (NumPy's numbers too), or None; ``ValueError``
    unless it is None or a positive number."""
    if timeout is None:
        return None
    seconds = as_real(timeout)
    if seconds is None or not seconds > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
    return seconds


def check_deadline(timeout: object) -> float | None:
    """``Executor.map``'s ``timeout`` (a deadline for the whole iteration: zero or less
    has passed already) as a float, or None; ``TypeError``/``ValueError`` naming it."""
    if timeout is None:
        return None
    seconds = as_real(timeout)
    if seconds is None:
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    if math.isnan(seconds):
        raise ValueError("timeout must be a number of seconds or None, not nan")
    return seconds


#: ``co_flags`` of generator, coroutine and async generator functions (``inspect``'s
#: CO_GENERATOR, CO_COROUTINE, CO_ASYNC_GENERATOR; not imported for three numbers),
#: what such a function returns, and how a task would consume it.
_GENERATOR_FLAGS = {
    0x20: ("a generator", "lambda x: list(f(x))"),
    0x80: ("a coroutine", "lambda x: asyncio.run(f(x))"),
    0x200: ("an async generator", "a function that runs an async for over it in asyncio.run"),
}


def check_callable(fn: object, method: str, *, returns: bool = True) -> None:
    """Raise ``TypeError`` unless ``fn`` is callable and (``returns``) returns what can
    travel back: a generator or coroutine function's result cannot.  (``Pool`` checks
    no more than callability: multiprocessing fails such a map when it returns.)"""
    if not callable(fn):
        raise TypeError(f"{method}() needs a callable as its function, not {type(fn).__name__}")
    if not returns:
        return
    inner: Any = fn
    while isinstance(inner, functools.partial):
        inner = inner.func
    code = getattr(getattr(inner, "__func__", inner), "__code__", None)
    for flag, (what, instead) in _GENERATOR_FLAGS.items():
        if code is not None and code.co_flags & flag:
            name = getattr(inner, "__qualname__", type(inner).__name__)
            raise TypeError(f"{method}() runs {name}() on a worker and sends back what it "
                            f"returns: {what}, which cannot travel; consume it in the task "
                            f"instead ({instead})")


def check_call_options(fn: Callable[..., Any], timeout: float | None, seed: int | None
                       ) -> float | None:
    """``submit``'s own ``timeout`` and ``seed``: the timeout checked (returned as a
    float), and a warning where ``fn`` has a parameter of the name given
    (``train(x, seed=0)``): the value goes to sockpool, not to ``fn``, which a reader
    of the call would not guess."""
    seconds = check_timeout(timeout)
    given = [name for name, value in (("timeout", timeout), ("seed", seed)) if value is not None]
    if not given:
        return seconds
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: nothing to tell
        return seconds
    bound = fn.keywords if isinstance(fn, functools.partial) else {}
    named = function_name(fn)
    for name in given:
        parameter = parameters.get(name)
        if name not in bound and parameter is not None and parameter.kind in (
                parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            meaning = "the task's time limit" if name == "timeout" else "its random stream"
            warnings.warn(
                f"submit's {name}= is sockpool's ({meaning}), not an argument of "
                f"{named}(), which has a parameter of that name; to pass it to "
                f"{named}(), bind it: submit(functools.partial({named}, {name}=...), ...)",
                UserWarning, stacklevel=user_stacklevel())
    return seconds


def check_iterables(iterables: tuple[Any, ...], method: str) -> None:
    """Raise ``TypeError`` unless there is at least one argument and each is iterable."""
    if not iterables:
        raise TypeError(f"{method}() needs at least one iterable of arguments")
    for position, value in enumerate(iterables, start=1):
        try:
            iter(value)
        except TypeError:
            raise TypeError(f"{method}() argument {position} after the function must be "
                            f"iterable, not {type(value).__name__}") from None


def as_sequence(iterables: tuple[Any, ...]) -> Sequence[Any]:
    """The items of a map, read once; a list, tuple or range is used as it is.

    Chunks are slices of it: a slice of a range pickles as three integers.
    """
    if len(iterables) > 1:
        return list(zip(*iterables, strict=False))
    items = iterables[0]
    return items if isinstance(items, (list, tuple, range)) else list(items)


def known_length(iterables: tuple[Any, ...], wanted: bool) -> int | None:
    """How many tasks a lazy map's input holds, for a progress bar (``wanted``), when
    every iterable says; None otherwise (a generator, or a ``__len__`` that raises).
    Not asked without a bar: a lazy input's ``__len__`` may have to compute it."""
    if not wanted:
        return None
    try:
        return min(len(iterable) for iterable in iterables)
    except Exception:
        return None


def progress_bar(total: int | None, enabled: bool) -> Any:
    """A tqdm bar, or None when not asked for.

    In a notebook with ipywidgets the bar is a widget; anywhere else it is tqdm's
    text bar (``tqdm.auto`` would warn in red, "IProgress not found", in a
    notebook without ipywidgets).  Relayed output clears it and draws it again
    below (:func:`sockpool.dispatch.output.emit`).  A terminal shows it on
    stderr; a notebook on stdout, where the relayed prints go: a notebook shows
    each stream as blocks of its own, so a bar on stderr would leave a block
    (a copy, or a blank line once cleared) between every two chunks' output.
    """
    if not enabled:
        return None
    in_notebook = _in_notebook()
    if in_notebook and _importable("ipywidgets"):
        from tqdm.notebook import tqdm as widget_bar

        with contextlib.suppress(ImportError):  # ipywidgets too old for tqdm: text it is
            return widget_bar(total=total)
    from tqdm.std import tqdm as text_bar

    return text_bar(total=total, file=sys.stdout if in_notebook else sys.stderr)


def _in_notebook() -> bool:
    """Whether this is a Jupyter kernel (what ``tqdm.autonotebook`` checks)."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken install, or sys.modules[name] = None
        return False
