"""The digest that names a task function's payload in the workers' caches.

Both sides compute it: the master when it pickles the function, a worker over
the bytes it received, so that a large captured buffer changed in place while
its payload waited to be sent is never cached under the digest of its old
content (see ``worker/runner.py``).
"""

from __future__ import annotations

import hashlib
from typing import Any

from xxhash import xxh3_128_digest


def function_digest(inband: bytes | memoryview, buffers: list[Any]) -> bytes:
    """blake2b of the pickle, extended by length and XXH3-128 of each large buffer.

    A cryptographic hash of 50 MB of captured data costs more than many maps;
    XXH3 reads it at memory speed (about 30 GB/s) and is enough to tell a buffer
    changed in place since the last call from one that did not.
    """
    hasher = hashlib.blake2b(inband, digest_size=16)
    for buffer in buffers:
        view = memoryview(buffer).cast("B")
        hasher.update(view.nbytes.to_bytes(8, "little"))
        hasher.update(xxh3_128_digest(view))
    return hasher.digest()
