"""The digests that name a task function's payload, and its large buffers, in the
workers' caches.

Both sides compute them: the master when it pickles the function, a worker over
the bytes it received, so that a large captured buffer changed in place while
its payload waited to be sent is never cached under the digest of its old
content (see ``worker/runner.py``).  A worker keeps a function's large buffers
by their own digest, so that another function carrying the same data (a sweep's
next ``lambda fold: fit(X, alpha, fold)``) is sent with their digests alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xxhash import xxh3_128, xxh3_128_digest

#: The bytes of one buffer's digest, which a TASK sends in its place when the
#: worker holds it (out-of-band buffers are never this small: ``codec.OOB_THRESHOLD``).
BUFFER_DIGEST_BYTES = 16
#: Workers hold a function's buffers this large (each costs a worker a descriptor,
#: and a smaller one costs little to send again).
HELD_MIN_BYTES = 1024 * 1024


def buffer_digest(buffer: Any) -> bytes:
    """XXH3-128 of a buffer's bytes: it reads memory at about 30 GB/s, and is enough
    to tell a buffer changed in place since the last call from one that did not."""
    return xxh3_128_digest(memoryview(buffer).cast("B"))


def function_digest(inband: bytes | memoryview, buffers: Sequence[Any],
                    buffer_digests: Sequence[bytes] | None = None) -> bytes:
    """XXH3-128 of the pickle, extended by length and digest of each large buffer
    (``buffer_digests``: those digests, when already known).

    A cryptographic hash of captured data costs more than many maps (blake2b read
    a 16 MB pickle of small arrays in 32-56 ms, XXH3 in 0.5), and only the master
    makes payloads: a worker takes TASKs from the master alone (authenticated).
    """
    if buffer_digests is None:
        buffer_digests = [buffer_digest(buffer) for buffer in buffers]
    hasher = xxh3_128(inband)
    for buffer, digest in zip(buffers, buffer_digests, strict=True):
        hasher.update(memoryview(buffer).nbytes.to_bytes(8, "little"))
        hasher.update(digest)
    return hasher.digest()
