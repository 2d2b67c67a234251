"""NumPy memmaps on their way to a worker.

A memmap (``np.load(..., mmap_mode="r")``, ``joblib.load``) is an ndarray
subclass, and NumPy pickles a subclass's data in band: copied into the pickle,
20x slower than an ndarray's out-of-band buffer.  A read-only or copy-on-write
one travels as the ndarray it views (the worker gets the same data).

One opened for writing (``mode="r+"`` or ``"w+"``: joblib's way of collecting
results in shared memory), sent by the master, travels as its file's path and
the place of its data in it: the worker maps the same file, so what the task
writes lands in the file, as with joblib's loky.  A worker that cannot open
that path, or finds a shorter file there (another machine), fails the task,
saying so.  What a worker sends back (a task's result) is always the data: the
file may be a task's scratch, gone by then, or on another machine.
"""

from __future__ import annotations

import mmap
import os
import sys
from typing import Any

from . import role
from .arrays import reduce_ndarray


def memmap_type() -> type | None:
    """``numpy.memmap``, where the caller has imported NumPy (never imported here)."""
    numpy = sys.modules.get("numpy")
    return getattr(numpy, "memmap", None)


def reduce_memmap(array: Any) -> Any:
    """The pickle reduction of a memmap: its file's place if writable, else its data."""
    numpy = sys.modules["numpy"]
    place = (_place_in_file(array) if array.mode in ("r+", "w+") and not role.in_worker()
             else None)
    if place is not None:
        return open_in_file, place
    return reduce_ndarray(array.view(numpy.ndarray))  # (see .arrays)


def _place_in_file(array: Any) -> tuple[Any, ...] | None:
    """``(path, position, shape, strides, dtype)`` of a memmap's data in its file, or
    None where that cannot be told (no file, or no mapping of its own)."""
    mapping = getattr(array, "_mmap", None)
    if array.filename is None or mapping is None or getattr(mapping, "closed", False):
        return None
    numpy = sys.modules["numpy"]
    # np.memmap maps from the offset rounded down to the allocation granularity.
    start = array.offset - array.offset % mmap.ALLOCATIONGRANULARITY
    mapped_at = numpy.frombuffer(mapping, dtype=numpy.uint8).ctypes.data
    position = start + (array.ctypes.data - mapped_at)
    return os.fspath(array.filename), position, array.shape, array.strides, array.dtype


def open_in_file(path: str, position: int, shape: tuple[int, ...],
                 strides: tuple[int, ...], dtype: Any) -> Any:
    """A writable memmap's data, mapped from its file on this worker."""
    import numpy

    try:
        whole = numpy.memmap(path, dtype=numpy.uint8, mode="r+")
        return numpy.ndarray(shape, dtype, buffer=whole, offset=position, strides=strides)
    except (OSError, ValueError) as exc:  # (ValueError: a shorter file of that name)
        raise OSError(f"a writable np.memmap argument is shared through its file, {path!r}, "
                      f"which this worker cannot map: {exc}") from exc
