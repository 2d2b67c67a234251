"""The large buffers of the functions cached here, kept by digest, and given out as copies.

The master sends a new function's large buffer (a captured array, 1 MiB or
more: ``digest.HELD_MIN_BYTES``) as its 16-byte digest where this worker holds
it (``dispatch/function_mirror.py`` mirrors what is held: the large buffers of
the functions cached here).  Each function still gets data of its own, as when
the buffer came whole: what one function's tasks change in place, no other
function sees.  The first function uses the frame the buffer came in, as
always; the first time another function needs it, the frame is checked against
its digest (the first function's tasks may have changed it in place: then the
TASK is refused, ``MissingBuffer``, and the master sends the buffer again) and
copied into an anonymous memory file that nothing writes to.  Each function
from then on gets a private (copy-on-write) mapping of that file: no copy
until a task writes, and then only of the pages written.  Where memory files
or mappings are refused (an old kernel, out of descriptors), each function
gets a copy of its own.
"""

from __future__ import annotations

import mmap
import os
from typing import Any


class MissingBuffer(Exception):
    """A TASK named by digest a buffer not held here as named (the first function's
    tasks changed its frame in place, or the master's caller changed it as it was
    sent): nothing runs; the master sends it again."""


class _Pristine:
    """A buffer's bytes where nothing writes to them: a memory file, else ``bytes``."""

    __slots__ = ("data", "fd", "size")

    def __init__(self, buffer: Any) -> None:
        view = memoryview(buffer).cast("B")
        self.size, self.fd, self.data = view.nbytes, -1, None
        try:
            fd = os.memfd_create("held-capture", os.MFD_CLOEXEC)
        except OSError:  # refused, or out of descriptors
            self.data = bytes(view)
            return
        try:
            os.ftruncate(fd, self.size)
            done = 0
            while done < self.size:  # (writing beats faulting in a fresh mapping)
                done += os.pwrite(fd, view[done:], done)
        except OSError:
            os.close(fd)
            self.data = bytes(view)
            return
        self.fd = fd

    def private_copy(self) -> Any:
        """This buffer's bytes for one function: a copy-on-write mapping, or a copy."""
        if self.data is not None:
            return memoryview(bytearray(self.data))
        try:  # (a memoryview, as the frame it came in is given: it keeps the mapping)
            return memoryview(mmap.mmap(self.fd, self.size, flags=mmap.MAP_PRIVATE,
                                        prot=mmap.PROT_READ | mmap.PROT_WRITE))
        except OSError:  # (each mapping holds a descriptor: out of them, a copy)
            view, done = memoryview(bytearray(self.size)), 0
            while done < self.size:
                done += os.preadv(self.fd, [view[done:]], done)
            return view

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # (its mappings stay, as long as their arrays)


class HeldBuffers:
    """The large buffers of the functions cached here, by digest, while one of them is."""

    def __init__(self) -> None:
        self._held: dict[bytes, Any] = {}  # digest -> the frame it came in, or a _Pristine
        self._users: dict[bytes, int] = {}  # digest -> functions here that came with it
        self._of: dict[bytes, list[bytes]] = {}  # function digest -> its held buffers'

    def resolve(self, frames: list[Any]) -> tuple[list[Any], list[bytes]]:
        """A function's buffers from the frames of its TASK, one sent by digest as a
        private copy of the one held here; and the digest of each.

        Raises:
            MissingBuffer: one sent by digest is not held here as named.
        """
        # (Here: xxhash is 0.6 ms of the start of a worker that may never need it.)
        from ..common.digest import BUFFER_DIGEST_BYTES, buffer_digest

        buffers, digests = [], []
        for frame in frames:
            if memoryview(frame).nbytes == BUFFER_DIGEST_BYTES:
                digest = bytes(frame)
                frame = self._copy(digest)
            else:
                digest = buffer_digest(frame)
            buffers.append(frame)
            digests.append(digest)
        return buffers, digests

    def _copy(self, digest: bytes) -> Any:
        from ..common.digest import buffer_digest

        held = self._held.get(digest)
        if not isinstance(held, _Pristine):
            # The frame it came in: its function's tasks may have changed it in place.
            if held is None or buffer_digest(held) != digest:
                raise MissingBuffer
            held = self._held[digest] = _Pristine(held)
        return held.private_copy()

    def hold(self, function: bytes, buffers: list[Any], digests: list[bytes]) -> None:
        """Keep the large buffers of the function ``function`` while it is cached here."""
        from ..common.digest import HELD_MIN_BYTES

        self.let_go(function)  # (sent in full again: counted once)
        held = self._of[function] = []
        for buffer, digest in zip(buffers, digests, strict=True):
            if memoryview(buffer).nbytes >= HELD_MIN_BYTES:
                if not isinstance(self._held.get(digest), _Pristine):
                    self._held[digest] = buffer  # (the frame sent last: the likeliest unchanged)
                self._users[digest] = self._users.get(digest, 0) + 1
                held.append(digest)

    def let_go(self, function: bytes) -> None:
        """The function ``function`` is dropped: so are the buffers only it held."""
        for digest in self._of.pop(function, ()):
            self._users[digest] -= 1
            if not self._users[digest]:
                del self._users[digest]
                held = self._held.pop(digest, None)
                if isinstance(held, _Pristine):
                    held.close()
