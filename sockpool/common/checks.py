"""Arguments as every layer's checks take them: integers, numbers and yes/no values
(Python's and NumPy's, never a bool for a number nor a number for a bool), and
environment variables for workers."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Mapping


def _is_numpy_bool(kind: type) -> bool:
    """NumPy's bool type (``numpy.bool_`` before NumPy 2, ``numpy.bool`` since)."""
    return kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_")


def as_int(value: object) -> int | None:
    """``value`` as an ``int`` if it is an integer (``numpy.int64(2)`` too: whatever
    has ``__index__``), else None; a bool (``True`` for a count) is not one, nor is
    NumPy's (``numpy.bool_`` before NumPy 2, ``numpy.bool`` since, whose ``__index__``
    some releases still answer)."""
    if isinstance(value, bool) or _is_numpy_bool(type(value)):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except Exception:  # TypeError, or whatever an odd __index__ raises
        return None


def as_real(value: object) -> float | None:
    """``value`` as a float if it is a real number (NumPy's too), else None (a bool too)."""
    if isinstance(value, bool) or _is_numpy_bool(type(value)):
        return None
    if not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except OverflowError:  # an int past any float: as good as infinite
        return math.inf if value > 0 else -math.inf  # type: ignore[operator]  # (an int)


def as_bool(value: object) -> bool | None:
    """``value`` as a bool if it is one (NumPy's too), else None: ``1`` or ``"no"`` given
    for a yes/no option is a mistake to name, not a yes."""
    if isinstance(value, bool) or _is_numpy_bool(type(value)):
        return bool(value)
    return None


def check_env(env: object, name: str = "env") -> dict[str, str]:
    """``env`` (a mapping of variable names to strings, or None) as a new dict;
    ``TypeError``/``ValueError`` naming ``name`` and the variable otherwise."""
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise TypeError(f"{name} must be a dict of variable names to strings, "
                        f"not {type(env).__name__}")
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"{name} must map variable names to strings; {name}[{key!r}] is "
                            f"{value!r} ({type(value).__name__})")
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ValueError(f"{name}[{key!r}]: a variable's name must be non-empty without "
                             "'=', and neither name nor value may hold a NUL character")
    return dict(env)
