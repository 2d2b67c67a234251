"""What one worker caches of the task functions, as the master mirrors it.

A worker keeps each function payload it is sent in full (:mod:`sockpool.worker.functions`)
until the master says FORGET, and keeps the large buffers of those functions (1
MiB or more) by their own digest for as long as one of them is cached.  The master applies the
same rules to the same messages, so it knows, without asking, which functions it
may send by digest alone and which buffers by their digest in their place: the
sweep that maps ``lambda fold: fit(X, alpha, fold)`` for each ``alpha`` sends X
to each worker once, not once per ``alpha``.  What the master believes a worker
holds, that worker holds; where a race left it otherwise (a buffer changed in
place as it was sent), the worker says so and both drop their buffers
(:meth:`FunctionMirror.forget_buffers`).
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict
from typing import NamedTuple

from ..capture.lineage import lineage_alive
from ..capture.pickling import FunctionPayload
from ..common import protocol
from ..common.digest import HELD_MIN_BYTES, buffer_digest


class FunctionFrames(NamedTuple):
    """A function as one TASK sends it in full, and the FORGETs that go with it."""

    inband: bytes
    #: Its large buffers, each the buffer or, where the worker holds it, its digest.
    buffers: list[object]
    #: Digests of functions to drop before the TASK (freeing their data first) ...
    forget_before: list[bytes]
    #: ... and after it: those that share buffers with it, which it needs there.
    forget_after: list[bytes]


#: What a TASK carries of a function its worker has cached.
_CACHED = FunctionFrames(b"", [], [], [])


def forget_message(digest: bytes) -> list[bytes]:
    """The FORGET that drops the function ``digest`` from a worker's cache."""
    return [protocol.header(protocol.Kind.FORGET) + digest]


class FunctionMirror:
    """The functions one worker caches (by digest, least recently used first), and
    their large buffers, as the master tracks them.

    Args:
        budget: bytes of payloads the worker may cache; the least recently used
            go beyond it (one always stays).
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._cached: OrderedDict[bytes, int] = OrderedDict()  # digest -> bytes
        self._cached_bytes = 0
        #: A function's lineage -> its version used last, and where it was defined.
        self._latest: dict[int, tuple[bytes, int]] = {}
        self._buffers_of: dict[bytes, tuple[bytes, ...]] = {}  # function -> its buffers'
        self._buffer_users: Counter[bytes] = Counter()  # buffer digest -> functions
        self._forgot_at = -math.inf  # when forget_buffers last dropped them all

    def _holds(self, function: FunctionPayload) -> bool:
        """Whether the worker has ``function`` cached (then it counts as used now)."""
        if function.digest not in self._cached:
            return False
        self._cached.move_to_end(function.digest)
        if function.lineage:
            self._latest[function.lineage] = (function.digest, function.site)
        return True

    def frames(self, function: FunctionPayload) -> FunctionFrames:
        """``function`` goes to the worker: what its TASK carries (nothing, where the
        worker has it cached), and which functions the worker drops to stay in
        budget or as superseded.

        A payload whose large buffers no longer match its digest (the caller changed
        them in place since) is not counted as cached there: the next chunk that
        needs it carries it again, rather than run on bytes the digest does not name.
        """
        if self._holds(function):
            return _CACHED
        held, named = self._buffer_users, function.buffer_digests
        buffers = [digest if held[digest] else buffer
                   for buffer, digest in zip(function.buffers, named, strict=True)]
        digest = function.digest
        # Those sent in full are read again (those sent by digest, the worker reads).
        now = [sent if sent is was else buffer_digest(sent)
               for sent, was in zip(buffers, named, strict=True)]
        if now != list(named):
            return FunctionFrames(function.inband, buffers, [], [])
        dropped = self._drop_superseded(function) if function.lineage else []
        self._cached[digest] = function.nbytes
        self._cached_bytes += function.nbytes
        large = tuple(was for buffer, was in zip(function.buffers, named, strict=True)
                      if memoryview(buffer).nbytes >= HELD_MIN_BYTES)
        if large:
            self._buffers_of[digest] = large
            held.update(large)
        while self._cached_bytes > self.budget and len(self._cached) > 1:
            dropped.append(next(iter(self._cached)))
            self._drop(dropped[-1])
        needed = set(large)
        before = [old for old in dropped if needed.isdisjoint(self._buffers_of.get(old, ()))]
        after = [old for old in dropped if not needed.isdisjoint(self._buffers_of.get(old, ()))]
        for old in dropped:
            self._buffers_of.pop(old, None)
        return FunctionFrames(function.inband, buffers, before, after)

    def _drop(self, digest: bytes) -> None:
        """Stop counting on the worker caching ``digest`` (it is sent a FORGET)."""
        self._cached_bytes -= self._cached.pop(digest, 0)
        for buffer in self._buffers_of.get(digest, ()):
            self._buffer_users[buffer] -= 1
            if not self._buffer_users[buffer]:
                del self._buffer_users[buffer]

    def _drop_superseded(self, function: FunctionPayload) -> list[bytes]:
        """Stop caching the versions ``function`` supersedes (see
        :mod:`sockpool.capture.lineage`) that no function here still uses;
        return their digests."""
        digest, site = function.digest, function.site
        older = {number: kept for number, (kept, where) in self._latest.items()
                 if where == site and kept != digest
                 and (number == function.lineage or not lineage_alive(number))}
        for number in older:
            del self._latest[number]
        self._latest[function.lineage] = (digest, site)
        live = {kept for number, (kept, _) in self._latest.items() if lineage_alive(number)}
        superseded = set(older.values()) - live
        dropped = [old for old in self._cached if old in superseded]  # (oldest first)
        for old in dropped:
            self._drop(old)
        if len(self._latest) > 2 * len(self._cached) + 16:
            self._latest = {number: used for number, used in self._latest.items()
                            if used[0] in self._cached or used[0] == digest}
        return dropped

    def uncache(self, digest: bytes) -> list[bytes]:
        """Stop counting on the worker caching ``digest``: the FORGET that drops it there."""
        self._drop(digest)
        self._buffers_of.pop(digest, None)
        return forget_message(digest)

    def forget_buffers(self, sent_at: float | None) -> list[list[bytes]]:
        """The worker lacked a buffer that a TASK sent at ``sent_at`` (monotonic; None:
        not known) named by digest: the FORGETs that drop every function with large
        buffers there, which leaves it, as here, holding none.  None for a TASK sent
        before the last such forget: the chunks queued behind a refused one are
        refused too, and forgetting again would drop what was sent anew since."""
        if sent_at is not None and sent_at < self._forgot_at:
            return []
        self._forgot_at = time.monotonic()
        return [self.uncache(digest) for digest in list(self._buffers_of)]
