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


@functools.cache
def _python_and_installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    roots.update(getattr(site, "getsitepackages", list)())
    user_site = getattr(site, "getusersitepackages", lambda: None)()
    if user_site:
        roots.add(user_site)
    return tuple(os.path.realpath(root) + os.sep for root in roots if root)


@functools.cache
def _installed_top_level_names() -> frozenset[str]:
    try:
        return frozenset(importlib.metadata.packages_distributions())
    except Exception:  # a broken distribution's metadata must not break capture
        return frozenset()


def _is_local(name: str, module: object) -> bool:
    if name in sys.builtin_module_names or name == "__main__":
        return False
    filename = getattr(module, "__file__", None)
    if not filename or name in _installed_top_level_names():
        return False
    path = os.path.realpath(filename)
    return not path.startswith(_python_and_installed_roots())


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
