"""A cluster's private directory, and removing those whose master was killed.

The directory holds the master's ipc socket and the local workers' logs; the
cluster removes it when it closes.  A master killed by SIGKILL (the kernel's
OOM killer, a batch system's time limit after SIGTERM) cannot, and its workers
die with it by their parent-death signal, so its directory would stay in the
temporary directory for good.  So its name says whose it is: the master's pid
namespace, pid and start time.  The next cluster started in the same pid
namespace removes, in the background, every such directory of its own user
whose master no longer runs (:func:`sweep_orphans`).  A directory whose name
does not say (one made elsewhere than Linux) is never touched.

The directory is made in the temporary directory (``TMPDIR``), unless the
socket's path there would be too long for the kernel (107 bytes: an HPC
scratch path) or not UTF-8, as ZeroMQ names it, or the directory cannot be
made there (made read-only or full since Python chose it): then in ``/tmp`` or
``/var/tmp``, else it says so before anything starts.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading

from .proc import stat_fields

PREFIX = "sockpool-"
#: ``sockpool-<pid namespace inode>-<pid>-<start time in clock ticks>-<random>``.
_OWNED = re.compile(PREFIX + r"(\d+)-(\d+)-(\d+)-[^-/]+\Z")


#: The master's ipc socket, in its cluster's directory.
SOCKET_NAME = "master.sock"
#: The longest socket path the kernel takes: ``sockaddr_un.sun_path`` less its NUL.
MAX_SOCKET_PATH = 107
#: Where cluster directories go when the temporary directory will not do.
FALLBACK_PARENTS = ("/tmp", "/var/tmp")


def socket_path(directory: str) -> str:
    """The master's ipc socket in its cluster's ``directory``."""
    return os.path.join(directory, SOCKET_NAME)


def private_directory(for_socket: bool = True) -> str:
    """A fresh directory only this user can enter (mode 0700), named after its master
    (``for_socket``: where the master's ipc socket will be).

    Raises:
        OSError: no temporary directory where its socket's path would do, or where
            it could be made (naming them).
    """
    owner = _owner(os.getpid())
    prefix = f"{PREFIX}{owner}-" if owner else PREFIX
    path = _made_in_a_parent(prefix) if for_socket else tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o700)
    return path


def _made_in_a_parent(prefix: str) -> str:
    """A directory named ``prefix`` and 8 more characters, made in the temporary
    directory, else in the first fallback where a socket's path fits and it can be
    made (a TMPDIR made read-only or full since Python chose it: see the module
    docstring)."""
    tried = []
    for parent in dict.fromkeys((tempfile.gettempdir(), *FALLBACK_PARENTS)):
        path = socket_path(os.path.join(parent, prefix + "x" * 8))
        if not _socket_path_fits(path):
            tried.append(f"{parent!r} (a socket path of {len(os.fsencode(path))} bytes)")
            continue
        try:
            return tempfile.mkdtemp(prefix=prefix, dir=parent)
        except OSError as exc:
            tried.append(f"{parent!r} ({exc.strerror or exc})")
    raise OSError(f"no directory for the cluster's local socket, whose path must be UTF-8 "
                  f"and fit in {MAX_SOCKET_PATH} bytes, and where it can be made: tried "
                  f"{', '.join(tried)}.  Set TMPDIR to a shorter, writable directory, or use "
                  "Cluster(transport='tcp')")


def _socket_path_fits(path: str) -> bool:
    try:
        encoded = path.encode()  # (ZeroMQ's encoding of it)
    except UnicodeEncodeError:  # (a file name not in the locale's encoding)
        return False
    return encoded == os.fsencode(path) and len(encoded) <= MAX_SOCKET_PATH


def sweep_orphans(parent: str | None = None) -> list[str]:
    """Remove this user's cluster directories in ``parent`` (by default the temporary
    directory and the fallbacks) whose master is gone: no process with its pid in
    this pid namespace, or one started at another time (the pid was reused).
    Returns those removed."""
    if parent is None:
        parents = dict.fromkeys((tempfile.gettempdir(), *FALLBACK_PARENTS))
        return [path for place in parents for path in sweep_orphans(place)]
    namespace = _pid_namespace()
    if namespace is None:
        return []
    removed = []
    uid = os.getuid()
    with contextlib.suppress(OSError), os.scandir(parent) as entries:
        for entry in entries:
            match = _OWNED.match(entry.name)
            if match is None or int(match[1]) != namespace:
                continue  # not a cluster's, or a master this namespace cannot see
            with contextlib.suppress(OSError):
                if not entry.is_dir(follow_symlinks=False) or entry.stat().st_uid != uid:
                    continue
                if _start_time(int(match[2])) != int(match[3]):
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed.append(entry.path)
    return removed


def sweep_orphans_in_background() -> None:
    """:func:`sweep_orphans` on a thread of its own: a cluster's start does not wait."""
    threading.Thread(target=sweep_orphans, name="sockpool-sweep", daemon=True).start()


def _owner(pid: int) -> str | None:
    """``<pid namespace>-<pid>-<start time>`` of a running process; None without /proc."""
    namespace, started = _pid_namespace(), _start_time(pid)
    if namespace is None or started is None:
        return None
    return f"{namespace}-{pid}-{started}"


def _pid_namespace() -> int | None:
    """The inode of this process's pid namespace; None without a /proc that shows it
    (one mounted for another pid namespace, after ``unshare -p`` say, names other
    processes by these pids: nothing could be told from it)."""
    try:
        if os.readlink("/proc/self") != str(os.getpid()):
            return None
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot; None if there is none."""
    fields = stat_fields(pid)  # (the state is field 3 of the file, starttime field 22)
    return int(fields[19]) if fields is not None and len(fields) > 19 else None
