"""The by-value rule: what a worker cannot import by name, so must receive by value.

A function or class travels by value when a worker could not find it by its
module and qualified name: it lives in ``__main__`` (the user's script or
notebook) or in a *local* module, it is a lambda or defined inside a function,
or ``bind_to_env`` made it.  Everything else travels as a reference and is
imported on the worker.

A module is *local* when it is neither part of Python (built in, or under the
standard library's directories), nor installed (under a site-packages
directory, or belonging to an installed distribution, editable installs
included).  That is a ``.py`` file or a package folder next to the user's
script or notebook.  The decision rests on where the module lives, not on
whether this machine's workers happen to share its file system, so it holds
for workers on other hosts too.

cloudpickle applies the rule once :func:`register_local_modules` has told it
about the local modules; :func:`names_by_value_module` checks a standard
pickle for a reference that would not load on a worker.
"""

from __future__ import annotations

import functools
import os
import re
import site
import sys
import sysconfig
import threading
from collections.abc import Iterator
from typing import Any

from ..common import namespace
from ..common.forking import fork_safe_lock


@functools.cache
def _python_and_installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    roots.update(getattr(site, "getsitepackages", list)())
    user_site = getattr(site, "getusersitepackages", lambda: None)()
    if user_site:
        roots.add(user_site)
    # As given and resolved: most modules' paths start with a root as given, and
    # resolving a path (an lstat per component) costs ~0.2 ms a module.
    return tuple({os.path.join(f(root), "") for root in roots if root
                  for f in (os.path.abspath, os.path.realpath)})


_installed_lock = fork_safe_lock()
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
    import importlib.metadata  # here: 20-30 ms of imports, needed only for this

    for distribution in importlib.metadata.distributions():
        declared = distribution.read_text("top_level.txt")
        if declared:
            yield from declared.split()
        else:
            yield from _installed_tops(distribution)


#: A RECORD line's first path component, and what follows it: "/" in a folder,
#: "," for a file at the top (the line's hash and size come next).
_RECORD_TOP = re.compile(r"^([^/,\r\n]+)([/,])", re.MULTILINE)


def _installed_tops(distribution: Any) -> Iterator[str]:
    """The top-level modules and folders a distribution installed and that are still
    there (as Python 3.12's ``distribution.files`` keeps only files that exist)."""
    record = distribution.read_text("RECORD")
    if record is not None and '"' not in record:
        # Searched as text: distribution.files builds a path object for each line
        # (and from 3.12 looks each one up), 5x the time; a large one lists 10^4.
        tops = set(_RECORD_TOP.findall(record))
    else:  # quoted paths (a comma in a name), or an egg's list of files
        tops = {(file.parts[0], "/" if len(file.parts) > 1 else ",")
                for file in distribution.files or ()}
    for top, follows in tops:
        if follows == ",":
            name = top[:-3] if top.endswith(".py") else None
        else:
            name = None if top == ".." or top.endswith((".dist-info", ".egg-info")) else top
        if name is not None and _still_there(distribution, top):
            yield name


def _still_there(distribution: Any, top: str) -> bool:
    try:
        return os.path.exists(distribution.locate_file(top))
    except Exception:  # a distribution not on a file system: take its word
        return True


def warm_up() -> None:
    """Find the installed names in the background while workers start (50-150 ms).

    Only when a loaded module may need them: a script importing only what is
    installed under site-packages or is part of Python never reads the metadata.
    """
    if any(_outside_roots(name, module) for name, module in list(sys.modules.items())
           if "." not in name and module is not None):
        threading.Thread(target=_installed_top_level_names, name="sockpool-modules",
                         daemon=True).start()


#: This package: a worker imports it by name, wherever it lives (an editable install).
_OWN_PACKAGE = __name__.partition(".")[0]


def _outside_roots(name: str, module: object) -> bool:
    """Whether a top-level module lives outside Python and site-packages (a candidate)."""
    if name in sys.builtin_module_names or name in ("__main__", _OWN_PACKAGE):
        return False
    filename = getattr(module, "__file__", None)
    if not filename:
        return False
    roots = _python_and_installed_roots()
    return not (filename.startswith(roots) or os.path.realpath(filename).startswith(roots))


def _is_local(name: str, module: object) -> bool:
    return _outside_roots(name, module) and name not in _installed_top_level_names()


_known: tuple[int, frozenset[str]] = (-1, frozenset())


def local_modules() -> frozenset[str]:
    """Top-level names of the loaded modules and packages that are local (see above);
    and the dotted names of local ones loaded without their package (a plugin a
    script registered as ``sys.modules["plugins.x"]``, with no ``plugins``)."""
    global _known
    if _known[0] == len(sys.modules):  # cheap: recomputed only when imports happened
        return _known[1]
    loaded = dict(sys.modules)
    names = frozenset(
        name for name, module in loaded.items()
        if module is not None and ("." not in name or name.partition(".")[0] not in loaded)
        and _is_local(name, module))
    _known = (len(loaded), names)
    return names


def is_local_module(name: str) -> bool:
    """Whether the module ``name`` (dotted or not) belongs to a local module or package."""
    local = local_modules()
    return name.partition(".")[0] in local or name in local


def module_name(obj: Any) -> str:
    """The module an object says it was defined in (``""`` if none)."""
    return str(getattr(obj, "__module__", None) or "")


def travels_by_value(obj: Any) -> bool:
    """Whether a function or class is shipped by value (not importable by name on a worker)."""
    module = module_name(obj)
    if module == "__main__" or is_local_module(module) or namespace.is_bound(obj):
        return True
    qualname = getattr(obj, "__qualname__", "")
    if "<locals>" in qualname or "<lambda>" in qualname:
        return True
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found is not obj


def _reference_pattern(names: set[str]) -> re.Pattern[bytes]:
    # A by-reference pickle spells the module name out as a short string,
    # \x8c<length><name>, followed by a memo mark or a dot.
    alternatives = b"|".join(re.escape(name.encode()) for name in sorted(names))
    return re.compile(rb"\x8c.(?:" + alternatives + rb")[.\x94]", re.DOTALL)


#: Top-level modules whose objects cloudpickle ships by value; a pickle that
#: names one of them by reference would not load on a worker.
_by_value_modules: set[str] = {"__main__"}
_by_value_pattern = _reference_pattern(_by_value_modules)
#: Local modules already looked at (registered, or gone from ``sys.modules``).
_registered: set[str] = set()
#: Callers' threads register at once; the pattern must end up naming every module.
_register_lock = fork_safe_lock()


def register_local_modules(serializer: str) -> None:
    """Make every local module travel by value (cloudpickle), before anything is pickled."""
    global _by_value_pattern
    if serializer != "cloudpickle" or not local_modules() - _registered:
        return
    import cloudpickle

    with _register_lock:
        for name in sorted(local_modules() - _registered):
            module = sys.modules.get(name)
            if module is not None:
                cloudpickle.register_pickle_by_value(module)
                _by_value_modules.add(name)
            _registered.add(name)
        _by_value_pattern = _reference_pattern(_by_value_modules)


def names_by_value_module(pickled: Any) -> bool:
    """Whether a standard pickle may name a by-value module (searched in place, no copy).

    A false positive (the same bytes inside some data) only costs a second,
    cloudpickle, pass.
    """
    return _by_value_pattern.search(pickled) is not None
