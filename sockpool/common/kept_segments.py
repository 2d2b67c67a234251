"""Large arguments sent again: one sealed copy, named by every transfer of it.

joblib sends scikit-learn's ``X`` with every batch, and ``submit(f, X)`` in a
loop sends ``X`` with every call.  Each transfer copied ``X`` into a segment of
its own: a 1 GB ``X`` passed to 40 tasks was copied 40 times, and the master
held a copy for each batch in flight.  Here a buffer of 8 MiB or more
(:data:`KEEP_MIN_BYTES`) that comes from the same object as at least twice
before, with the same contents as the time before (by XXH3-128 digest), is
copied once into a segment sealed against writing, a *kept* segment, and every
later transfer of those contents names it.

What a task sees does not change.  It gets the contents as they were when its
call was made: changed contents have another digest, and travel anew.  And it
gets an array of its own: a reader maps a kept segment privately, copy-on-write,
so that a task writing to its argument changes its own copy only.  An object
whose contents change between transfers (a state updated between calls) stops
being hashed after :data:`CHANGES_TOLERATED` changes, and travels as before.
A copy is hashed again once made (another thread may write to the array), and
at most :data:`MAX_KEPT` kept segments exist at once (each holds a descriptor).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import time
import weakref
from collections import deque
from typing import Any

from .arrays import ndarray_type
from .digest import buffer_digest
from .shm import (
    CACHE_BYTES,
    IDLE_SECONDS,
    SegmentPool,
    SharedFrame,
    apply_when_free,
    raw_view,
    read_all,
    releasing_frame,
    serial_of,
)

#: Buffers this large are kept when sent again (a smaller one costs little to copy,
#: and each kept segment holds one of the master's descriptors).
KEEP_MIN_BYTES = 8 * 1024 * 1024
#: Kept segments at once, named by frames or idle, at most.
MAX_KEPT = 32
#: Objects whose last transfer is remembered, at most (the oldest are forgotten).
SIGHTINGS = 64
#: Changes of an object's contents between its transfers before it is no longer hashed.
CHANGES_TOLERATED = 3


class _Sighting:
    """An object whose large buffer was sent: its contents' digest when last hashed."""

    __slots__ = ("changes", "digest", "owner")

    def __init__(self, owner: weakref.ref[Any]) -> None:
        self.owner = owner
        self.digest: bytes | None = None
        self.changes = 0


class _Kept:
    """A kept segment: its fd, descriptor, contents' digest and the frames naming it."""

    __slots__ = ("descriptor", "digest", "fd", "idle_since", "serial", "size", "users")

    def __init__(self, fd: int, serial: int, descriptor: bytes, digest: bytes,
                 size: int) -> None:
        self.fd = fd
        self.serial = serial
        self.descriptor = descriptor
        self.digest = digest
        self.size = size
        self.users = 0
        self.idle_since = 0.0


class KeptSegments:
    """The master's kept segments of argument buffers sent again.  Thread-safe."""

    def __init__(self, segments: SegmentPool) -> None:
        self._segments = segments
        self._lock = threading.Lock()
        self._sightings: dict[int, _Sighting] = {}  # id(owner) -> sighting, oldest first
        self._by_digest: dict[bytes, _Kept] = {}
        self._by_serial: dict[int, _Kept] = {}
        self._unframed: deque[int] = deque()  # serials whose frames died (see unframe)
        self._closed = False

    def frames_for(self, buffers: list[Any]) -> list[SharedFrame]:
        """The frames that carry ``buffers`` in one message: a kept segment's for each
        buffer sent again, one new segment for each run of the others, in order."""
        frames: list[SharedFrame] = []
        run: list[Any] = []
        for buffer in buffers:
            kept = self._frame_for(buffer)
            if kept is None:
                run.append(buffer)
                continue
            if run:
                frames.append(self._segments.store(run))
                run = []
            frames.append(kept)
        if run:
            frames.append(self._segments.store(run))
        return frames

    def _frame_for(self, buffer: Any) -> SharedFrame | None:
        """A kept segment's frame for ``buffer``, or None: it goes the usual way."""
        view = raw_view(buffer)
        if view.nbytes < KEEP_MIN_BYTES or self._closed:
            return None
        # (a PickleBuffer's: the array it was made of, or the array a view of it all is of)
        owner = whole_array_base(memoryview(buffer).obj)
        try:
            ref = weakref.ref(owner)
        except TypeError:  # bytes: nothing tells the same object from a new one
            return None
        with self._lock:
            seen = self._sightings.pop(id(owner), None)
            fresh = seen is None or seen.owner() is not owner  # (or its id reused)
            if seen is None or fresh:
                seen = _Sighting(ref)
            self._sightings[id(owner)] = seen  # (the newest last)
            while len(self._sightings) > SIGHTINGS:
                del self._sightings[next(iter(self._sightings))]
            if fresh or seen.changes >= CHANGES_TOLERATED:
                return None  # most buffers are sent once: they cost no digest
        digest = buffer_digest(view)
        with self._lock:
            self._apply_unframed()
            kept = self._by_digest.get(digest)
            if kept is not None:
                return self._use(kept)
            if digest != seen.digest:  # not yet sent twice alike: not known to stay
                seen.changes += seen.digest is not None
                seen.digest = digest
                return None
            if not self._room_for_one():
                return None
        kept = self._sealed_copy(view, digest)
        if kept is None:
            return None
        with self._lock:
            existing = self._by_digest.get(digest)  # (another thread kept it meanwhile)
            if existing is not None or self._closed:
                os.close(kept.fd)
                return None if existing is None else self._use(existing)
            self._by_digest[digest] = self._by_serial[kept.serial] = kept
            return self._use(kept)

    def _sealed_copy(self, view: memoryview, digest: bytes) -> _Kept | None:
        """``view`` copied into a sealed segment, checked against ``digest`` (another
        thread writing to the array meanwhile would leave other bytes under it, for
        every later transfer of those contents), or None."""
        try:
            fd, serial, descriptor = self._segments.sealed_copy(view)
        except OSError:  # out of memory files or memory: the usual way
            return None
        try:
            with mmap.mmap(fd, view.nbytes, mmap.MAP_SHARED, mmap.PROT_READ) as copy:
                if buffer_digest(copy) == digest:
                    return _Kept(fd, serial, descriptor, digest, view.nbytes)
        except OSError:
            pass
        os.close(fd)
        return None

    def _room_for_one(self) -> bool:
        """With the lock held: whether one more kept segment fits under
        :data:`MAX_KEPT`, once the oldest idle one is closed if need be."""
        if len(self._by_serial) < MAX_KEPT:
            return True
        idle = [kept for kept in self._by_serial.values() if not kept.users]
        if not idle:
            return False
        self._close(min(idle, key=lambda kept: kept.idle_since))
        return True

    def _use(self, kept: _Kept) -> SharedFrame:
        """With the lock held: one more frame names ``kept``."""
        kept.users += 1
        return releasing_frame(kept.descriptor, self, kept.serial)

    def owns(self, frame: bytes) -> bool:
        """Whether ``frame`` names a kept segment."""
        with self._lock:
            return serial_of(frame) in self._by_serial

    def copies(self, frame: bytes) -> list[bytes]:
        """The buffer a kept segment's frame names, copied out (for the socket)."""
        with self._lock:
            kept = self._by_serial[serial_of(frame)]
        return [read_all(kept.fd, kept.size, 0)]

    def unframe(self, serial: int) -> None:
        """A frame naming a kept segment is gone (its chunk finished)."""
        apply_when_free(self._lock, self._unframed, serial, self._apply_unframed)

    def _apply_unframed(self) -> None:
        """With the lock held: count the frames that died; close the oldest idle kept
        segments past :data:`CACHE_BYTES` (but the newest, which a loop sends next)."""
        now = time.monotonic()
        while self._unframed:
            kept = self._by_serial.get(self._unframed.popleft())
            if kept is not None:
                kept.users -= 1
                if not kept.users:
                    kept.idle_since = now
                    idle = sorted((k for k in self._by_serial.values() if not k.users),
                                  key=lambda k: k.idle_since)
                    while len(idle) > 1 and sum(k.size for k in idle) > CACHE_BYTES:
                        self._close(idle.pop(0))

    def trim(self, now: float) -> None:
        """Close the kept segments no frame has named for :data:`IDLE_SECONDS`."""
        with self._lock:
            self._apply_unframed()
            for kept in list(self._by_serial.values()):
                if not kept.users and now - kept.idle_since >= IDLE_SECONDS:
                    self._close(kept)

    def close(self) -> None:
        """Close every kept segment (readers' mappings stay valid); keep no more."""
        with self._lock:
            self._closed = True
            for kept in list(self._by_serial.values()):
                self._close(kept)
            self._sightings.clear()

    def _close(self, kept: _Kept) -> None:
        """With the lock held: forget a kept segment; its pages go with the last mapping."""
        del self._by_serial[kept.serial], self._by_digest[kept.digest]
        with contextlib.suppress(OSError):
            os.close(kept.fd)


def whole_array_base(obj: Any) -> Any:
    """The array ``obj`` is a view of, where it views all of it and nothing else (a
    Fortran-ordered array's transpose, made anew at each call); else ``obj``: the
    object that tells a buffer sent again."""
    ndarray: Any = ndarray_type()
    while ndarray is not None and isinstance(obj, ndarray):
        array: Any = obj
        base: Any = array.base
        if not isinstance(base, ndarray) or base.nbytes != array.nbytes or (
                base.__array_interface__["data"][0] != array.__array_interface__["data"][0]):
            break
        obj = base
    return obj
