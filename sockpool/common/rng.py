"""Reproducible random streams, one per task: ``task_rng()`` and the seeding of a task.

DESIGN's rule: with ``Cluster(seed=s)``, the k-th seeded call since the seed
was set gives its task i the stream ``SeedSequence(s, spawn_key=(k, i))``; an
explicit ``seed=`` on a call gives task i ``SeedSequence(seed, spawn_key=(i,))``.
The stream depends on the task's index only, never on the worker or the chunk
that ran it, so results are identical for any number of workers, chunk size,
order or retry.  Before a seeded task runs, its stream seeds ``random``,
NumPy's legacy global state, and the Generator that :func:`task_rng` returns;
before an unseeded chunk that follows seeded ones the global streams are put
back (:func:`before_chunk`), so it draws as if no seeded one had run.

This module runs in workers and imports NumPy only when a task is seeded.
"""

from __future__ import annotations

import random
import sys
from typing import TYPE_CHECKING, Any

from .checks import as_int

if TYPE_CHECKING:
    import numpy as np

#: The running task's Generator (None outside a seeded task).
_current: np.random.Generator | None = None
#: ``random``'s and NumPy's global streams before the seeded chunks since (None: no
#: seeded chunk ran since the last unseeded one): see before_chunk.
_streams: tuple[Any, Any] | None = None

#: Seeds must fit the TASK header's 16-byte field.
MAX_SEED = 2**128


def check_seed(seed: object) -> int:
    """Validate a seed: a non-negative integer below 2**128 (a NumPy one too); as an int."""
    number = as_int(seed)
    if number is None or not 0 <= number < MAX_SEED:
        hint = ("; a task's own seeded Generator is sockpool.task_rng()"
                if type(seed).__name__ in ("Generator", "SeedSequence", "RandomState") else "")
        raise ValueError(
            f"seed must be a non-negative integer below 2**128, not {seed!r}{hint}")
    return number


def task_rng() -> np.random.Generator:
    """The running task's own ``numpy.random.Generator``.

    In a seeded task it is the task's reproducible stream; anywhere else a
    fresh Generator seeded from OS entropy.
    """
    if _current is not None:
        return _current
    import numpy as np

    return np.random.default_rng()


def seed_task(entropy: int, key: tuple[int, ...]) -> None:
    """Seed ``random``, NumPy's legacy state and ``task_rng()`` for one task (worker side)."""
    global _current
    try:
        import numpy as np
    except ImportError:  # without NumPy, random alone gets a stream from the same key
        import hashlib  # here: every worker would pay 3 ms at startup for this rare path

        digest = hashlib.blake2b(repr((entropy, key)).encode(), digest_size=32).digest()
        random.seed(int.from_bytes(digest, "little"))
        _current = None
        return
    sequence = np.random.SeedSequence(entropy, spawn_key=key)
    state = sequence.generate_state(8)
    random.seed(int.from_bytes(state.tobytes(), "little"))
    np.random.seed(state[:4])
    _current = np.random.default_rng(sequence)


def clear() -> None:
    """The seeded task ended."""
    global _current
    _current = None


def before_chunk(seeded: bool) -> None:
    """A chunk is about to run (worker side, outside the time a cancel may
    interrupt): before the first seeded one, note ``random``'s and NumPy's
    global streams; before the next unseeded one, put them back.

    Were they left seeded, every unseeded task after a seeded chunk would draw
    the same numbers on that worker, run after run.  Noted and put back only
    where seeded and unseeded chunks meet (``Cluster(seed=)`` seeds them all):
    NumPy's state takes 70 µs to note and put back.  NumPy's, if a seeded task
    is what imported it, gets fresh entropy, as a new process's would."""
    global _streams
    if seeded:
        if _streams is None:
            numpy = sys.modules.get("numpy")
            _streams = (random.getstate(),
                        numpy.random.get_state(legacy=False) if numpy is not None else None)
        return
    if _streams is None:
        return
    (state, numpy_state), _streams = _streams, None
    random.setstate(state)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        if numpy_state is not None:
            numpy.random.set_state(numpy_state)
        else:
            numpy.random.seed()
