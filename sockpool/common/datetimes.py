"""NumPy datetime64 and timedelta64 arrays out of band.

NumPy pickles an array's data as an out-of-band buffer (shared memory, kept
segments, the workers' checksum cache) unless its dtype is one the buffer
protocol cannot describe: datetime64 and timedelta64 data go inside the pickle,
copied, a pandas DataFrame's datetime columns included (30x loky's time for a
160 MB frame sent to 10 tasks).  Such an array travels as the int64 array it
is in memory, and is viewed as its own dtype again on the other side.  That
view is a new object at every pickle: what tells a large argument sent again
is the array it views (:func:`whole_array_base`).
"""

from __future__ import annotations

import sys
from typing import Any


def ndarray_type() -> type | None:
    """``numpy.ndarray``, where the caller has imported NumPy (never imported here)."""
    numpy = sys.modules.get("numpy")
    return getattr(numpy, "ndarray", None)


def is_datetime_array(obj: Any) -> bool:
    """An ndarray (not a subclass) of datetime64 or timedelta64 values."""
    array: Any = obj  # (not narrowed by the type test below)
    return type(obj) is ndarray_type() and array.dtype.kind in "Mm"


def reduce_datetime_array(array: Any) -> tuple[Any, ...]:
    """The reduction of a datetime64/timedelta64 array: its int64 view, and its dtype."""
    numpy = sys.modules["numpy"]
    return as_dtype, (array.view(numpy.int64), array.dtype)


def as_dtype(values: Any, dtype: Any) -> Any:
    """``values`` (an int64 array) viewed as ``dtype`` (see :func:`reduce_datetime_array`)."""
    return values.view(dtype)


def reduce_ndarray(array: Any) -> Any:
    """A plain ndarray's reduction for the standard pickler's dispatch table: a
    datetime one's as above, any other's NumPy's own."""
    if array.dtype.kind in "Mm":
        return reduce_datetime_array(array)
    return array.__reduce_ex__(5)


def whole_array_base(obj: Any) -> Any:
    """The array ``obj`` is a view of, where it views all of it and nothing else (as a
    datetime array's int64 view, made anew at every pickle, does); else ``obj``.  What
    tells a large argument sent again (see :mod:`.kept_segments`)."""
    ndarray: Any = ndarray_type()
    while ndarray is not None and isinstance(obj, ndarray):
        array: Any = obj
        base: Any = array.base
        if not isinstance(base, ndarray) or base.nbytes != array.nbytes or (
                base.__array_interface__["data"][0] != array.__array_interface__["data"][0]):
            break
        obj = base
    return obj
