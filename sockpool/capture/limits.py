"""How much a task function may carry: the default limit and its check.

Apart from :mod:`.payload` (which imports the picklers) so that ``Cluster``
checks the option before it starts anything.
"""

from __future__ import annotations

#: Default limit on what one function may carry (R future's globals.maxSize is 500 MiB).
DEFAULT_MAX_CAPTURE_SIZE = 500 * 1024 * 1024


def check_max_capture_size(limit: int | None) -> None:
    """Raise ``ValueError`` unless ``limit`` is a positive number of bytes or None."""
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"max_capture_size must be a positive number of bytes or None, "
                         f"not {limit!r}")
