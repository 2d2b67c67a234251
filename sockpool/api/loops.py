"""Whether the caller runs an event loop, and so whether it may block.

asyncio is imported only by code that already runs in an event loop, so that
``import sockpool`` and ``Cluster(...)`` in plain scripts never pay for it.
"""

from __future__ import annotations

import sys


def in_event_loop() -> bool:
    """Whether this thread runs an asyncio event loop."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:  # not imported: no loop can run
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def may_block() -> bool:
    """Whether a blocking wait is right here: no event loop runs in this thread, or it is
    a Jupyter kernel's, on which a cell's plain code runs as a script's would (a notebook's
    ``cl = Cluster(n=2)`` returns with its workers started, or raises LaunchError)."""
    if not in_event_loop():
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"
