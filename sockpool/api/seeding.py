"""The caller's half of the seeding rule: which stream each call's tasks draw from.

With ``Cluster(seed=s)`` the k-th seeded call since the seed was set gives its
task i the stream ``SeedSequence(s, spawn_key=(k, i))``; a call's own
``seed=`` gives task i ``SeedSequence(seed, spawn_key=(i,))``.  The worker's
half, which seeds ``random``, NumPy and ``task_rng()``, is
:mod:`sockpool.common.rng`.
"""

from __future__ import annotations

import itertools

from ..common.rng import check_seed


class CallSeeds:
    """A cluster's root seed and the count of seeded calls made since it was set."""

    def __init__(self, root: int | None) -> None:
        self.reset(root)

    def reset(self, root: int | None) -> None:
        """Set (or with None, clear) the root seed; calls are counted afresh from it.

        Raises:
            ValueError: ``root`` is not a non-negative integer.
        """
        if root is not None:
            root = check_seed(root)
        self._root = root
        self._calls = itertools.count()

    def go_on_from(self, other: CallSeeds) -> None:
        """Take ``other``'s root and count on from where it is, with it (a plan's
        clusters, one after another, as one: a root set by ``set_seed`` too)."""
        self._root, self._calls = other._root, other._calls

    def for_call(self, seed: int | None) -> tuple[int, int | None] | None:
        """A call's seed: ``(entropy, call number or None)``, or None when it is unseeded."""
        if seed is not None:
            return check_seed(seed), None
        if self._root is not None:
            return self._root, next(self._calls)
        return None
