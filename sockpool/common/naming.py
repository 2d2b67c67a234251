"""How sockpool names a task function in profiles and messages (light: no pickler)."""

from __future__ import annotations

import functools
from typing import Any


def function_name(fn: Any) -> str:
    """A task function's name as a profile shows it (a partial: its function's)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
               or type(fn).__name__)
