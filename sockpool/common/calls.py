"""A task function wrapped so that ``sockpool.Pool.imap`` tells failures from values.

The master wraps the user's function in a :class:`BoxedCall`; the worker unpickles
and calls it, so both sides need the class: it lives here, where a worker may
import it.  Its frames are sockpool's, so they are left out of a task's traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Returned:
    """A task's return value that is itself an exception, boxed on the worker.

    With ``errors="return"`` a failed task comes back as its exception, in place;
    boxing a returned exception keeps the two apart, so that ``Pool.imap`` raises
    only what a task raised.
    """

    __slots__ = ("value",)

    def __init__(self, value: BaseException) -> None:
        self.value = value

    def __reduce__(self) -> tuple[type[Returned], tuple[BaseException]]:
        return Returned, (self.value,)


class BoxedCall:
    """``fn(item)``, with a returned exception boxed as :class:`Returned`.

    Its ``__name__`` is the wrapped function's, so that errors about it (a
    function that cannot be serialized) name the user's function.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, item: Any) -> Any:
        value = self.fn(item)
        return Returned(value) if isinstance(value, BaseException) else value

    @property
    def __name__(self) -> str:
        return str(getattr(self.fn, "__qualname__", None) or getattr(self.fn, "__name__", None)
                   or type(self.fn).__name__)

    def __reduce__(self) -> tuple[type[BoxedCall], tuple[Callable[..., Any]]]:
        return BoxedCall, (self.fn,)
