"""Where a warning about the user's call should point: the first frame outside sockpool."""

from __future__ import annotations

import os
import sys

#: Where sockpool's own modules are (their frames are not the user's).
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning issued by the caller of this function
    name the first frame outside sockpool (the user's ``Cluster(...)``, ``submit``,
    or map under a plan), however many sockpool frames lie between."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level
