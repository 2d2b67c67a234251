"""NumPy arrays out of band where NumPy would copy them into the pickle.

NumPy pickles an array's data as an out-of-band buffer (shared memory, kept
segments, the workers' checksum cache) only for a plain ndarray, contiguous,
whose dtype the buffer protocol can describe.  Any other goes inside the
pickle, copied: a datetime64 or timedelta64 array (a pandas DataFrame's
datetime columns: 30x loky's time for a 160 MB frame sent to 10 tasks), a
structured one with such a field, a column or other strided slice (``X[:, 3]``),
a ``recarray`` (``DataFrame.to_records()``).  Here, from 64 KiB on:

* a strided array travels as a contiguous copy of itself (one copy, as NumPy's
  own ``tobytes`` makes, but out of band);
* an array of such a dtype travels as its bytes, an array of the same shape whose
  items are opaque (``V8`` for a datetime64), viewed as its own dtype again on
  the other side;
* a ``recarray`` travels as the plain ndarray it views, a ``recarray`` again there.

What tells a large argument sent again is the array its buffer views all of: a
slice's bytes view is made once while the slice lives (:func:`bytes_view`).  A
small array (under 64 KiB: it would go inside the pickle all the same) travels
as NumPy pickles it.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

#: The smallest array helped here (``codec.OOB_THRESHOLD``: below it, a buffer goes
#: inside the pickle anyway).
LARGE_ARRAY_BYTES = 64 * 1024
#: The bytes view of each large slice pickled, by the slice's id (no lock: a race
#: costs one view made twice, and a lock taken in a weakref callback, which a
#: garbage collection may run anywhere, could deadlock).
_views: dict[int, tuple[weakref.ref[Any], Any]] = {}


def ndarray_type() -> type | None:
    """``numpy.ndarray``, where the caller has imported NumPy (never imported here)."""
    numpy = sys.modules.get("numpy")
    return getattr(numpy, "ndarray", None)


def recarray_type() -> type | None:
    """``numpy.recarray``, where the caller has imported NumPy."""
    numpy = sys.modules.get("numpy")
    return getattr(numpy, "recarray", None)


def reduce_ndarray(array: Any) -> Any:
    """A plain ndarray's reduction for the standard pickler's dispatch table: out of
    band where NumPy's own would copy its data into the pickle (see above)."""
    return _helped(array) or array.__reduce_ex__(5)


def _helped(array: Any) -> tuple[Any, ...] | None:
    """The reduction of a plain ndarray that NumPy would pickle in band; else None."""
    if array.nbytes < LARGE_ARRAY_BYTES or array.dtype.hasobject:
        return None
    flags = array.flags
    strided = not (flags.c_contiguous or flags.f_contiguous)
    if not strided and not _opaque(array.dtype):
        return None  # NumPy's own is out of band
    if strided:
        copy = sys.modules["numpy"].ascontiguousarray(array)
        copy.flags.writeable = flags.writeable  # (a read-only one arrives read-only)
        array = copy
    if _opaque(array.dtype):
        return as_dtype, (bytes_view(array), array.dtype)
    return array.__reduce_ex__(5)  # type: ignore[no-any-return]


def reduce_recarray(array: Any) -> Any:
    """A ``recarray``'s reduction: the plain ndarray it views (out of band, as
    :func:`reduce_ndarray` says), made a ``recarray`` again."""
    if array.nbytes < LARGE_ARRAY_BYTES:
        return array.__reduce_ex__(5)
    return as_type, (array.view(sys.modules["numpy"].ndarray), type(array))


def special_reduction(obj: Any) -> Any:
    """For picklers without a dispatch table (cloudpickle's ``reducer_override``):
    the reduction of an ndarray or ``recarray`` that NumPy would pickle in band, or
    None where NumPy's own will do."""
    kind = type(obj)
    if kind is ndarray_type():
        return _helped(obj)
    if kind is recarray_type() and obj.nbytes >= LARGE_ARRAY_BYTES:
        return reduce_recarray(obj)
    return None


def _opaque(dtype: Any) -> bool:
    """Whether the buffer protocol cannot describe ``dtype``: datetime64 and
    timedelta64, and structured dtypes holding them."""
    if dtype.kind in "Mm":
        return True
    if dtype.kind != "V":
        return False
    if dtype.subdtype is not None:
        return _opaque(dtype.subdtype[0])
    return any(_opaque(field[0]) for field in (dtype.fields or {}).values())


def bytes_view(array: Any) -> Any:
    """``array`` viewed as opaque items of its size.

    What tells a buffer sent again is the array it views all of
    (``kept_segments.whole_array_base``): for an array that owns its memory, the
    array itself.  A view of a view is based on the owner, though, so for a slice
    the view is made once and kept while the slice lives and its shape, strides and
    data stay (made anew at every pickle, it would never be told as sent again).
    Only then: a view kept of an owner would keep the owner alive for ever.
    """
    key = id(array)
    found = _views.get(key)
    same = found is not None and found[0]() is array  # (a bool: mypy narrows no array)
    if found is not None and same:
        view: Any = found[1]
        if (view.shape, view.strides, view.__array_interface__["data"]) == (
                array.shape, array.strides, array.__array_interface__["data"]):
            return view
    numpy = sys.modules["numpy"]
    view = array.view(numpy.dtype((numpy.void, array.dtype.itemsize)))
    if view.base is array:
        return view

    def forget(ref: weakref.ref[Any], views: dict[int, Any] = _views) -> None:
        # (the dict bound here: at interpreter exit the module's globals may be None)
        if views.get(key, (None,))[0] is ref:
            views.pop(key, None)

    _views[key] = (weakref.ref(array, forget), view)
    return view


def as_dtype(values: Any, dtype: Any) -> Any:
    """``values`` (opaque items) viewed as ``dtype`` (see :func:`reduce_ndarray`)."""
    return values.view(dtype)


def as_type(values: Any, cls: type) -> Any:
    """``values`` viewed as the ndarray subclass ``cls`` (see :func:`reduce_recarray`)."""
    return values.view(cls)
