"""How much a task function may carry: the default limit and its check.

Apart from :mod:`.payload` (which imports the picklers) so that ``Cluster``
checks the option before it starts anything.
"""

from __future__ import annotations

from ..common.checks import as_int

#: Default limit on what one function may carry (R future's globals.maxSize is 500 MiB).
DEFAULT_MAX_CAPTURE_SIZE = 500 * 1024 * 1024


def check_max_capture_size(limit: int | None) -> None:
    """Raise ``ValueError`` unless ``limit`` is a positive number of bytes (not a
    bool: ``True`` is no size) or None."""
    size = as_int(limit)
    if limit is not None and (size is None or size < 1):
        raise ValueError(f"max_capture_size must be a positive number of bytes or None, "
                         f"not {limit!r}")
