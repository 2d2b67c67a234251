"""NumPy datetime64 and timedelta64 arrays out of band.

NumPy pickles an array's data as an out-of-band buffer (shared memory, kept
segments, the workers' checksum cache) unless its dtype is one the buffer
protocol cannot describe: datetime64 and timedelta64 data go inside the pickle,
copied, a pandas DataFrame's datetime columns included (30x loky's time for a
160 MB frame sent to 10 tasks).  Such an array travels as the int64 array it
is in memory, and is viewed as its own dtype again on the other side.  What
tells a large argument sent again is the object its buffer comes from: the
int64 view of a datetime array is made once while the array lives and stays
as it is (:func:`int64_view`).  A small one (under 64 KiB: it would go inside
the pickle all the same) travels as NumPy pickles it.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

#: The smallest datetime array sent as its int64 view (``codec.OOB_THRESHOLD``: below
#: it, a buffer goes inside the pickle anyway).
VIEWED_FROM_BYTES = 64 * 1024
#: The int64 view of each large datetime array pickled, by the array's id (no lock:
#: a race costs one view made twice, and a lock taken in a weakref callback, which a
#: garbage collection may run anywhere, could deadlock).
_views: dict[int, tuple[weakref.ref[Any], Any]] = {}


def ndarray_type() -> type | None:
    """``numpy.ndarray``, where the caller has imported NumPy (never imported here)."""
    numpy = sys.modules.get("numpy")
    return getattr(numpy, "ndarray", None)


def is_datetime_array(obj: Any) -> bool:
    """An ndarray (not a subclass) of datetime64 or timedelta64 values, large enough
    to travel as its int64 view."""
    return type(obj) is ndarray_type() and _viewed(obj)


def _viewed(array: Any) -> bool:
    """Whether an ndarray's data travel as its int64 view."""
    return array.dtype.kind in "Mm" and array.nbytes >= VIEWED_FROM_BYTES


def reduce_datetime_array(array: Any) -> tuple[Any, ...]:
    """The reduction of a datetime64/timedelta64 array: its int64 view, and its dtype."""
    return as_dtype, (int64_view(array), array.dtype)


def int64_view(array: Any) -> Any:
    """``array.view(int64)``, the same object each time while ``array`` lives and its
    shape, strides and data stay (NumPy bases a view of a view on the array that owns
    the memory: a datetime slice's view would otherwise be new at every pickle)."""
    key = id(array)
    found = _views.get(key)
    same = found is not None and found[0]() is array  # (a bool: mypy narrows no array)
    if found is not None and same:
        view: Any = found[1]
        if (view.shape, view.strides, view.__array_interface__["data"]) == (
                array.shape, array.strides, array.__array_interface__["data"]):
            return view
    view = array.view(sys.modules["numpy"].int64)

    def forget(ref: weakref.ref[Any], views: dict[int, Any] = _views) -> None:
        # (the dict bound here: at interpreter exit the module's globals may be None)
        if views.get(key, (None,))[0] is ref:
            views.pop(key, None)

    _views[key] = (weakref.ref(array, forget), view)
    return view


def as_dtype(values: Any, dtype: Any) -> Any:
    """``values`` (an int64 array) viewed as ``dtype`` (see :func:`reduce_datetime_array`)."""
    return values.view(dtype)


def reduce_ndarray(array: Any) -> Any:
    """A plain ndarray's reduction for the standard pickler's dispatch table: a
    datetime one's as above, any other's NumPy's own."""
    if _viewed(array):
        return reduce_datetime_array(array)
    return array.__reduce_ex__(5)
