"""Integers as the checks of arguments take them: Python's and NumPy's, never a bool."""

from __future__ import annotations

import operator


def as_int(value: object) -> int | None:
    """``value`` as an ``int`` if it is an integer (``numpy.int64(2)`` too: whatever
    has ``__index__``), else None; a bool (``True`` for a count) is not one, nor is
    NumPy's (``numpy.bool_`` before NumPy 2, ``numpy.bool`` since, whose ``__index__``
    some releases still answer)."""
    kind = type(value)
    if isinstance(value, bool) or (kind.__module__ == "numpy"
                                   and kind.__name__ in ("bool", "bool_")):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except Exception:  # TypeError, or whatever an odd __index__ raises
        return None
