"""Reading a local worker's progress page: how far a chunk got when its worker died.

The worker notes in a page of memory (see :mod:`sockpool.worker.progress`)
which tasks of its chunk may be running; the master maps the page when the
worker says HELLO and reads it once the process is gone, so that it fails the
running task only, requeues the tasks that never started, and never runs a
task twice.
"""

from __future__ import annotations

import mmap
import os
import struct

from .jobs import Chunk

_PAGE = struct.Struct("<QQQ")
_NAME = "/memfd:sockpool.progress"


class ProgressPage:
    """A read-only mapping of one worker's progress page."""

    def __init__(self, mapping: mmap.mmap) -> None:
        self._mapping = mapping

    @classmethod
    def open(cls, description: object) -> ProgressPage | None:
        """Map the page a HELLO named (``pid:fd``); None if it is not one, or unreachable."""
        if not isinstance(description, str):
            return None
        try:
            pid, fd = (int(part) for part in description.split(":"))
            path = f"/proc/{pid}/fd/{fd}"
            handle = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (ValueError, OSError):
            return None
        try:
            if (os.readlink(path).removesuffix(" (deleted)") != _NAME
                    or os.fstat(handle).st_size != mmap.PAGESIZE):
                return None
            return cls(mmap.mmap(handle, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ))
        except OSError:
            return None
        finally:
            os.close(handle)

    def close(self) -> None:
        """Unmap it (the mapping holds a descriptor of its own)."""
        self._mapping.close()

    def where(self, chunk: Chunk) -> tuple[int, int]:
        """``(start, end)``: the chunk's tasks before start finished, from end on never started.

        Read once the worker is gone.  A page naming another chunk means this one
        never started (the worker runs its chunks in order, and starts none while
        a RESULT it sent may be unreceived).
        """
        ident, start, end = _PAGE.unpack_from(self._mapping)
        if ident != chunk.id:
            return chunk.resume, chunk.resume
        start = max(chunk.resume, min(start, chunk.count))
        return start, max(start, min(end, chunk.count))

