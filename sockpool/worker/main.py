"""A worker process: ``python -m sockpool.worker [--config-file PATH]``.

It reads one JSON line, its :class:`~sockpool.common.config.WorkerConfig` (the
master's address, the cluster token, its worker id, keys and timings; never on
the command line), dials in to the master and runs what it is sent until told
to stop or until the master is gone.

Two threads, each the only user of its own zmq socket:

* the main thread owns the *data* connection (:mod:`.loop`): TASK, EXPORT and
  FORGET come in, RESULT and OUTPUT go out; it runs the tasks (:mod:`.runner`);
* the watchdog thread owns the *control* connection (:mod:`.watchdog`): it
  sends and checks heartbeats, takes CANCEL and SHUTDOWN, and, for local
  workers, watches stdin, whose end-of-file means the master process is gone.
  It ends the process when the master falls silent, so a worker never
  outlives its master.

They share one :class:`~.state.WorkerState`: its phase says whether a chunk
runs, and of which job, so that the watchdog knows when to interrupt it.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import faulthandler
import functools
import importlib
import os
import signal
import stat
import sys
import threading
from collections import deque
from typing import Any

import zmq

from ..common import protocol, role, shm, shm_reader
from ..common.config import WorkerConfig
from ..common.proc import STACKS_SIGNAL
from . import forks, link, progress
from .children import end_descendants
from .functions import FunctionCache
from .loop import DataLoop
from .runner import ChunkRunner
from .state import WorkerState
from .watchdog import Watchdog, die


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m sockpool.worker [--config-file PATH [--exit-report PATH]]``.

    Returns 2, with a message on stderr, when there is no configuration or it
    does not parse; otherwise it serves until SHUTDOWN and ends the process.
    With ``--exit-report`` (a batch job), it runs the worker as its child and
    reports how it ended (:mod:`.supervisor`).
    """
    args = sys.argv[1:] if argv is None else argv
    options = dict(zip(args[::2], args[1::2], strict=False))  # an odd one out fails below
    if len(args) % 2 or not set(options) <= {"--config-file", "--exit-report"}:
        print("usage: python -m sockpool.worker [--config-file PATH [--exit-report PATH]]",
              file=sys.stderr)
        return 2
    line = _read_config(options.get("--config-file"))
    if not line:
        print("sockpool worker: no configuration on stdin", file=sys.stderr)
        return 2
    try:
        config = WorkerConfig.from_json(line)
    except ValueError as exc:
        print(f"sockpool worker: {exc}", file=sys.stderr)
        return 2
    if "--exit-report" in options:
        from .supervisor import supervise

        return supervise(config, options["--exit-report"])
    # A task that crashes the interpreter (a segfault in C code) still leaves its
    # Python traceback in the worker's stderr, which the master quotes.
    faulthandler.enable(all_threads=False)
    if config.stacks_path is not None:  # where a task stopped for its time limit was
        # The stack written, the signal's default action ends the process (chain=):
        # the task goes no further than where the stack says it was.
        with contextlib.suppress(OSError):  # (the file is kept open by faulthandler)
            faulthandler.register(STACKS_SIGNAL, open(config.stacks_path, "wb"),  # noqa: SIM115
                                  all_threads=False, chain=True)
    role.mark_worker(config.worker_id)  # inside a task the plan is sequential (api/plan.py)
    if config.parent_pid is not None:
        _set_parent_death_signal(config.parent_pid)
    for entry in reversed(config.sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    if config.argv:
        sys.argv = list(config.argv)
    lifeline = _detach_stdin(keep=config.watch_stdin)

    forks.watch()  # (before any task runs: a process one forks ends with its task)
    state = WorkerState()
    functions = FunctionCache()
    shared = _shared_memory(config.shm_probe)
    # Serials of the master's segments whose mappings here are gone (any thread appends).
    released: deque[int] = deque()
    context = zmq.Context()
    data = link.dial(context, config, protocol.data_identity(config.worker_id))
    control = link.dial(context, config, protocol.control_identity(config.worker_id))
    page = progress.create(config.progress_fd)
    runner = ChunkRunner(config, state, functions, shared, released,
                         send=functools.partial(link.send, data), progress=page,
                         send_frame=link.frame_sender(data))
    loop = DataLoop(data, functools.partial(_preload, config), state, runner, functions,
                    shared, released)
    watchdog = Watchdog(control, state, threading.get_ident(), config, shared, lifeline)
    hello = link.hello(config, shared, page.describe() if page is not None else None)

    # Tasks see a clean __main__ (exports land there), not this module.
    sys.modules["__main__"] = functions.main_module
    if runner.relay is not None:
        runner.relay.install()
    state.keep_interruptible()
    threading.Thread(target=watchdog.run, args=(hello,), name="sockpool-watchdog",
                     daemon=True).start()
    loop.serve(hello)
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    end_descendants()
    os._exit(0)


def _preload(config: WorkerConfig) -> None:
    """What the worker does while the master waits for the others (a thread of its
    own; done before any task): import the serializer functions from a script
    arrive pickled by (about 10 ms at the first map otherwise), and take the
    master's resource tracker (``launchers.local``: imported here, not at start)."""
    if config.resource_tracker is not None and config.resource_tracker_inode is not None:
        _share_resource_tracker(config.resource_tracker, config.resource_tracker_inode)
    if config.serializer in ("cloudpickle", "dill"):
        with contextlib.suppress(Exception):  # a failure is left to the import that needs it
            importlib.import_module(config.serializer)


def _share_resource_tracker(path: str, inode: int) -> None:
    """Register what tasks make or attach to (``SharedMemory``, named semaphores)
    with the master's resource tracker, as multiprocessing's spawned children do:
    with a tracker of its own, this worker's exit unlinked them.  Where the
    master's pipe cannot be opened at ``path`` (its pid namespace is not this
    ``/proc``'s; the tracker was started again and its number reused), the worker
    starts its own as before."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return
    opened = os.fstat(fd)
    if not stat.S_ISFIFO(opened.st_mode) or opened.st_ino != inode:
        os.close(fd)
        return
    os.set_blocking(fd, True)  # (as the tracker's own pipe: a write waits for room)
    from multiprocessing import resource_tracker

    tracker: Any = resource_tracker._resource_tracker
    tracker._fd = fd  # as multiprocessing's spawn_main does with the one it inherits


def _read_config(path: str | None) -> str:
    """The configuration line: from stdin, or the file at ``path`` (read once, then removed).

    A batch job has no stdin from the master: its launcher leaves the line in a
    private file (mode 0600) that only this worker reads.
    """
    if path is not None:
        try:
            with open(path) as stream:
                line = stream.readline()
        except OSError as exc:
            print(f"sockpool worker: cannot read its configuration: {exc}", file=sys.stderr)
            return ""
        with contextlib.suppress(OSError):
            os.unlink(path)  # its keys are for this worker alone
        return line
    return sys.stdin.readline()


def _detach_stdin(*, keep: bool) -> int | None:
    """Point stdin at /dev/null, as multiprocessing does, so that a task reading it
    gets end-of-file rather than waiting forever on the master's pipe; return
    that pipe on a descriptor of its own (not inherited) when it is to be watched."""
    lifeline = os.dup(0) if keep else None
    devnull = os.open(os.devnull, os.O_RDONLY)
    if devnull != 0:  # (0 itself, where stdin was closed)
        os.dup2(devnull, 0)
        os.close(devnull)
    return lifeline


def _set_parent_death_signal(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when the master dies (a backstop to stdin EOF)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the master died before prctl took effect
        die("the master process is gone")


def _shared_memory(probe: str | None) -> shm.SegmentPool | None:
    """Shared memory with the master, where this worker can map its probe segment (same host)."""
    if (probe and shm.available() and not shm.disabled_by_environment()
            and shm_reader.check_probe(probe)):
        return shm.SegmentPool()
    return None
