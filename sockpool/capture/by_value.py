"""Which loaded modules a worker may not be able to import, so must travel by value.

A module is *local* when it is neither part of Python (built in, or under the
standard library's directories), nor installed (under a site-packages
directory, or belonging to an installed distribution, editable installs
included).  That is a ``.py`` file or a package folder next to the user's
script or notebook.  The decision rests on where the module lives, not on
whether this machine's workers happen to share its file system, so it holds
for workers on other hosts too.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import site
import sys
import sysconfig
import threading
from collections.abc import Iterator


@functools.cache
def _python_and_installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    roots.update(getattr(site, "getsitepackages", list)())
    user_site = getattr(site, "getusersitepackages", lambda: None)()
    if user_site:
        roots.add(user_site)
    return tuple(os.path.realpath(root) + os.sep for root in roots if root)


_installed_lock = threading.Lock()
_installed: frozenset[str] | None = None


def _installed_top_level_names() -> frozenset[str]:
    """Top-level names the installed distributions provide (editable installs too)."""
    global _installed
    with _installed_lock:
        if _installed is None:
            try:
                _installed = frozenset(_top_level_names())
            except Exception:  # a broken distribution's metadata must not break capture
                _installed = frozenset()
        return _installed


def _top_level_names() -> Iterator[str]:
    # What importlib.metadata.packages_distributions() finds, without parsing every
    # distribution's METADATA for its name: a third of the time.
    for distribution in importlib.metadata.distributions():
        declared = distribution.read_text("top_level.txt")
        if declared:
            yield from declared.split()
            continue
        for file in distribution.files or ():
            top = file.parts[0]
            if len(file.parts) == 1:
                if top.endswith(".py"):
                    yield top[:-3]
            elif top != ".." and not top.endswith((".dist-info", ".egg-info")):
                yield top


def warm_up() -> None:
    """Find the installed names in the background while workers start (50-150 ms)."""
    threading.Thread(target=_installed_top_level_names, name="sockpool-modules",
                     daemon=True).start()


def _is_local(name: str, module: object) -> bool:
    if name in sys.builtin_module_names or name == "__main__":
        return False
    filename = getattr(module, "__file__", None)
    if not filename:
        return False
    path = os.path.realpath(filename)
    if path.startswith(_python_and_installed_roots()):
        return False
    return name not in _installed_top_level_names()


_known: tuple[int, frozenset[str]] = (-1, frozenset())


def local_modules() -> frozenset[str]:
    """Top-level names of the loaded modules and packages that are local (see above)."""
    global _known
    if _known[0] == len(sys.modules):  # cheap: recomputed only when imports happened
        return _known[1]
    names = frozenset(
        name for name, module in list(sys.modules.items())
        if "." not in name and module is not None and _is_local(name, module))
    _known = (len(sys.modules), names)
    return names
