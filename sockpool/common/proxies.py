"""multiprocessing's manager proxies, pickled with their authkey.

A proxy (``Manager().Queue()``, ``.dict()``, ``.Namespace()``) connects to its
manager with an authkey.  multiprocessing pickles the key along only into a
process it spawns, whose children otherwise inherit it; a worker inherited
nothing, so a proxy travels with its key, as into a spawned process.
"""

from __future__ import annotations

import sys
from typing import Any


def proxy_types() -> list[type]:
    """Every proxy class there is (none until multiprocessing.managers is loaded)."""
    managers = sys.modules.get("multiprocessing.managers")
    if managers is None:
        return []
    found, todo = [managers.BaseProxy], [managers.BaseProxy]
    while todo:
        subclasses = todo.pop().__subclasses__()
        found += subclasses
        todo += subclasses
    return found


def reduce_proxy(proxy: Any) -> Any:
    """``BaseProxy.__reduce__``, its keywords given the key (a proxy class that
    reduces itself some other way is left as it does)."""
    reduced: Any = proxy.__reduce__()
    rebuild = sys.modules["multiprocessing.managers"].RebuildProxy
    if (not isinstance(reduced, tuple) or len(reduced) != 2 or reduced[0] is not rebuild
            or len(reduced[1]) != 4 or not isinstance(reduced[1][3], dict)):
        return reduced
    kind, token, serializer, keywords = reduced[1]
    return rebuild, (kind, token, serializer, {**keywords, "authkey": bytes(proxy._authkey)})
