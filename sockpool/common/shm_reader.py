"""Mapping a peer's segments: the reader's side of :mod:`sockpool.common.shm`.

A reader opens a segment as ``/proc/<owner pid>/fd/<fd>``, checks it is the
memfd its descriptor names (name and seals), and maps it.  A segment the owner
reuses is mapped once and kept (see :class:`_Mappings`); a kept segment (sealed
against writing, see ``kept_segments.py``) is mapped privately, copy-on-write,
so that what a task writes stays its own: a mapping no task wrote to serves
the next transfer of that segment, one a task wrote to is dropped.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import resource
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable

from .shm import (
    CACHE_BYTES,
    IDLE_SECONDS,
    RESIZE_SEALS,
    SEGMENT_NAME,
    UNTRACKED,
    WRITE_SEAL,
    SharedMemoryError,
    apply_when_free,
    parse_descriptor,
    read_all,
)

#: A segment's owner pid, pool and serial.
Key = tuple[int, int, int]
#: Clean private mappings kept of one kept segment, at most (one per task at once).
MAX_CLEAN_COPIES = 4


class _Mappings:
    """This process's mappings of peers' segments, kept while they are in use or fresh.

    Mapping a segment (and faulting its pages in) costs more than copying a few
    megabytes, and a sender reuses its segments, so a reader keeps its mapping
    of each: the next transfer through the same segment costs nothing here.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: (owner pid, pool, serial) -> (mapping, last use)
        self._maps: dict[Key, tuple[mmap.mmap, float]] = {}
        #: Private mappings of kept segments that no transfer uses and no task wrote
        #: to: the next transfer of the segment takes one, its pages mapped already.
        self._clean: dict[Key, list[tuple[mmap.mmap, float]]] = {}
        self._returned: deque[tuple[Key, mmap.mmap, float]] = deque()  # (see give_back)

    def get(self, frame: bytes) -> tuple[mmap.mmap, Key, list[tuple[int, int]], bool]:
        """A frame's segment mapped, its key, spans, and whether privately (see _map)."""
        pid, fd, pool, serial, size, spans = parse_descriptor(frame)
        key = (pid, pool, serial)
        with self._lock:
            self._take_returned()
            found = self._maps.get(key)
            if found is not None:
                self._maps[key] = (found[0], time.monotonic())
                return found[0], key, spans, False
            if clean := self._clean.get(key):
                return clean.pop()[0], key, spans, True
        mapping, private = _map(pid, fd, pool, serial, size)
        if not private:  # (a private one is its transfer's own: what a task wrote stays)
            with self._lock:
                self._maps[key] = (mapping, time.monotonic())
                self._evict(CACHE_BYTES)
        return mapping, key, spans, private

    def give_back(self, key: Key, mapping: mmap.mmap) -> None:
        """A transfer through a private mapping ended: kept for the next one unless a
        task wrote to it (a page of its own) or it cannot be told.  Called when the
        transfer's arrays die, which a garbage collection may make happen anywhere,
        code holding this lock included: then its holder takes it at its next turn."""
        if not _written(mapping):
            apply_when_free(self._lock, self._returned, (key, mapping, time.monotonic()),
                            self._take_returned)

    def _take_returned(self) -> None:
        """With the lock held: keep the clean mappings given back."""
        while self._returned:
            key, mapping, when = self._returned.popleft()
            clean = self._clean.setdefault(key, [])
            clean.append((mapping, when))
            del clean[:-MAX_CLEAN_COPIES]

    def trim(self, now: float | None = None) -> None:
        """Forget mappings unused for :data:`IDLE_SECONDS` (live arrays keep theirs)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._take_returned()
            for key, (_, used) in list(self._maps.items()):
                if now - used >= IDLE_SECONDS:
                    del self._maps[key]
            for key, clean in list(self._clean.items()):
                clean[:] = [(mapping, used) for mapping, used in clean
                            if now - used < IDLE_SECONDS]
                if not clean:
                    del self._clean[key]

    def forget_owner(self, pid: int) -> None:
        """Forget a gone process's segments, never sent through again (arrays keep theirs)."""
        with self._lock:
            for key in [key for key in self._maps if key[0] == pid]:
                del self._maps[key]
            for key in [key for key in self._clean if key[0] == pid]:
                del self._clean[key]

    def _evict(self, limit: int) -> None:
        by_age = sorted(self._maps.items(), key=lambda item: item[1][1])
        total = sum(len(mapping) for mapping, _ in self._maps.values())
        for key, (mapping, _) in by_age:
            if total <= limit:
                break
            del self._maps[key]
            total -= len(mapping)


def _why(error: OSError) -> str:
    """What an error mapping a segment says of this process, where it is its own."""
    if error.errno != errno.EMFILE:
        return ""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = " (each array of 1 MB or more received and kept holds one)" if not UNTRACKED else ""
    return f"; this process has the most files open that its limit allows ({soft}){held}"


def _written(mapping: mmap.mmap) -> bool:
    """Whether a private mapping has a page of its own (written: copied on write) or
    swapped out, by its entries in ``/proc/self/pagemap`` (True where unreadable, or
    where it does not tell a written page: a sandbox may show zeros)."""
    global _pagemap_tells
    if _pagemap_tells is None:
        _pagemap_tells = _pagemap_tells_a_written_page()
    return not _pagemap_tells or _written_by_pagemap(mapping)


def _pagemap_tells_a_written_page() -> bool:
    """Whether pagemap tells a clean private mapping of a memory file from a written one."""
    try:
        handle = os.memfd_create("sockpool-pagemap-check", os.MFD_CLOEXEC)
        try:
            os.ftruncate(handle, mmap.PAGESIZE)
            with mmap.mmap(handle, mmap.PAGESIZE, mmap.MAP_PRIVATE) as probe:
                probe[0]  # (read: the file's page)
                clean = not _written_by_pagemap(probe)
                probe[0] = 1
                return clean and _written_by_pagemap(probe)
        finally:
            os.close(handle)
    except (OSError, AttributeError):
        return False


_pagemap_tells: bool | None = None


def _written_by_pagemap(mapping: mmap.mmap) -> bool:
    address = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
    pages = -(-len(mapping) // mmap.PAGESIZE)
    try:
        handle = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        try:
            entries = read_all(handle, pages * 8, address // mmap.PAGESIZE * 8)
        finally:
            os.close(handle)
    except OSError:
        return True
    # Each entry's top byte: bit 7 present, 6 swapped, 5 a page of the file (shared).
    return b"\x01" in entries[7::8].translate(_WRITTEN_PAGE)


_WRITTEN_PAGE = bytes((flags & 0xA0) == 0x80 or bool(flags & 0x40) for flags in range(256))
_mappings = _Mappings()
trim_mappings = _mappings.trim
forget_mappings_of = _mappings.forget_owner


def open_shared(frame: bytes, on_release: Callable[[int], None]) -> list[memoryview]:
    """The buffers a descriptor names, as writable views into this process's mapping.

    ``on_release(serial)`` is called once the views and everything made from
    them (arrays) are gone, from whichever thread drops the last one; not for a
    kept segment, which this process maps privately and its owner never rewrites
    (its mapping is then kept for the next transfer, if no task wrote to it).

    Raises:
        SharedMemoryError: the descriptor is malformed or its segment cannot be used.
    """
    mapping, key, spans, private = _mappings.get(frame)
    start = min((offset for offset, _ in spans), default=0)
    end = max((offset + length for offset, length in spans), default=0)
    # One exporter for this transfer: every view (and array) made from it keeps it
    # alive, and its end is the transfer's end.  ctypes objects take weak references.
    used = (ctypes.c_char * max(end - start, 1)).from_buffer(mapping, start)
    if private:
        weakref.finalize(used, _mappings.give_back, key, mapping).atexit = False
    else:
        weakref.finalize(used, on_release, key[2]).atexit = False
    whole = memoryview(used).cast("B")
    return [whole[offset - start:offset - start + length] for offset, length in spans]


def check_probe(hex_frame: str) -> bool:
    """Whether this process can map a peer's segments (its :meth:`SegmentPool.probe`)."""
    try:
        pid, fd, pool, serial, size, _ = parse_descriptor(bytes.fromhex(hex_frame))
        _map(pid, fd, pool, serial, size)[0].close()
    except (SharedMemoryError, ValueError, OSError):
        return False
    return True


def _map(pid: int, fd: int, pool: int, serial: int, size: int) -> tuple[mmap.mmap, bool]:
    """A peer's segment mapped, and whether privately: one sealed against writing (see
    kept_segments.py) copy-on-write, unpopulated (that would copy every page)."""
    path = f"/proc/{pid}/fd/{fd}"
    try:
        handle = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise SharedMemoryError(
            f"cannot open the segment {path}: {exc.strerror}{_why(exc)}") from None
    try:
        name = os.readlink(path)
        expected = "/memfd:" + SEGMENT_NAME.format(pool=pool, serial=serial)
        if name.removesuffix(" (deleted)") != expected:
            raise SharedMemoryError(f"{path} is not the segment named (it is {name!r})")
        seals = fcntl.fcntl(handle, fcntl.F_GET_SEALS)
        if seals & RESIZE_SEALS != RESIZE_SEALS:
            raise SharedMemoryError(f"the segment {path} is not sealed against resizing")
        if os.fstat(handle).st_size != size:
            raise SharedMemoryError(f"the segment {path} has the wrong size")
        if WRITE_SEAL and seals & WRITE_SEAL:
            return mmap.mmap(handle, size, mmap.MAP_PRIVATE, **UNTRACKED), True
        return mmap.mmap(handle, size, mmap.MAP_SHARED | mmap.MAP_POPULATE, **UNTRACKED), False
    except OSError as exc:
        if isinstance(exc, SharedMemoryError):
            raise
        raise SharedMemoryError(f"cannot map the segment {path}: {exc}{_why(exc)}") from None
    finally:
        os.close(handle)
