"""The large buffers of the functions cached here, kept by digest, and given out as copies.

The master sends a new function's large buffer (a captured array) as its 16-byte
digest where this worker holds it (``dispatch/function_mirror.py`` mirrors what
is held: the buffers of the functions cached here).  Each function still gets
data of its own, as when the buffer came whole: what one function's tasks
change in place, no other function sees.  So a buffer reused is first copied
once into an anonymous memory file, which nothing writes to; each function
then gets a private (copy-on-write) mapping of it, which costs no copy until a
task writes, and then only the pages written.  Where memory files are refused,
each function gets a copy of the buffer, read again first against its digest
(the tasks of the function it came with may have changed it).
"""

from __future__ import annotations

import mmap
import os
from typing import Any


class MissingBuffer(Exception):
    """A TASK named by digest a buffer not held here as named (a task changed it in
    place, or a race on the master's side): nothing runs; the master sends it again."""


class _Pristine:
    """A buffer copied into a memory file that nothing writes to."""

    __slots__ = ("fd", "size")

    def __init__(self, buffer: Any) -> None:
        view = memoryview(buffer).cast("B")
        self.size = view.nbytes
        self.fd = os.memfd_create("held-capture", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.size)
            with mmap.mmap(self.fd, self.size) as shared:
                shared[:] = view
        except BaseException:
            os.close(self.fd)
            raise

    def private_copy(self) -> mmap.mmap:
        """A copy-on-write mapping: this buffer's bytes, written to apart from it."""
        return mmap.mmap(self.fd, self.size, flags=mmap.MAP_PRIVATE,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE)

    def close(self) -> None:
        os.close(self.fd)  # (its mappings stay, as long as their arrays)


class HeldBuffers:
    """The buffers of the functions cached here, by digest, while one of them is."""

    def __init__(self) -> None:
        self._held: dict[bytes, Any] = {}  # digest -> a frame, or a _Pristine copy
        self._users: dict[bytes, int] = {}  # digest -> functions here that came with it
        self._of: dict[bytes, list[bytes]] = {}  # function digest -> its buffers' digests

    def resolve(self, frames: list[Any]) -> tuple[list[Any], list[bytes]]:
        """A function's buffers as its TASK sent them, each sent by digest given as a
        copy of the one held here; and the digest of each.

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
        if isinstance(held, _Pristine):
            return held.private_copy()
        # The frame it came in: its function's tasks may have changed it in place.
        if held is None or buffer_digest(held) != digest:
            raise MissingBuffer
        try:
            pristine = _Pristine(held)
        except OSError:  # no memory files here: a copy of its own for each function
            return bytearray(memoryview(held).cast("B"))
        self._held[digest] = pristine
        return pristine.private_copy()

    def hold(self, function: bytes, buffers: list[Any], digests: list[bytes]) -> None:
        """Keep the buffers of the function ``function`` while it is cached here."""
        self.let_go(function)  # (sent in full again: counted once)
        self._of[function] = digests
        for buffer, digest in zip(buffers, digests, strict=True):
            if not isinstance(self._held.get(digest), _Pristine):
                self._held[digest] = buffer  # (the frame sent last: the likeliest unchanged)
            self._users[digest] = self._users.get(digest, 0) + 1

    def let_go(self, function: bytes) -> None:
        """The function ``function`` is dropped: so are the buffers only it held."""
        for digest in self._of.pop(function, ()):
            self._users[digest] -= 1
            if not self._users[digest]:
                del self._users[digest]
                held = self._held.pop(digest)
                if isinstance(held, _Pristine):
                    held.close()
