"""Local workers: ``python -m sockpool.worker`` subprocesses of the master."""

from __future__ import annotations

import collections
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import BinaryIO, NamedTuple

from ..common.checks import check_env
from ..common.config import WorkerConfig
from ..common.groups import end_lingering, ended_unreaped, note_ended
from ..common.proc import (
    REAPED_ELSEWHERE,
    descendants,
    explain_kill,
    memory_cgroup,
    note_inherited_peak,
    oom_kills,
    read_stacks,
    reap,
    show_stacks,
    stacks_beside,
    worker_output_paths,
    worker_output_tail,
)
from ..errors import LaunchError
from .base import Launcher, WorkerProcess

#: A local worker learns of its master's death at once (stdin end-of-file, the
#: parent-death signal), so by default it waits this long on a master that is
#: merely silent: one whose Python is busy, say, in a long sort holding the GIL.
LOCAL_MASTER_TIMEOUT = 60.0


class LocalWorkerProcess(WorkerProcess):
    """A worker subprocess; its stdin stays open: end-of-file tells it the master is gone."""

    same_host = True

    def __init__(self, worker_id: int, process: subprocess.Popen[bytes], command: str,
                 log_path: str, ended: dict[int, int] | None = None) -> None:
        self.worker_id = worker_id
        #: Where it notes its process group's id and when it ended (see :mod:`.groups`).
        self._ended = ended if ended is not None else {}
        self.host = "localhost"
        self.command = command
        self._process = process
        self._log_path = log_path
        #: Where the worker writes its main thread's stack when asked.
        self.stacks_path = stacks_beside(log_path)
        # Where the out-of-memory killer would act on it, how often it had, and
        # since when (the kernel's log of a reused pid's kills names another process).
        self._cgroup = memory_cgroup(process.pid)
        self._oom_kills = oom_kills(self._cgroup)
        self._started = time.monotonic()
        self._pidfd: int | None = None
        if hasattr(os, "pidfd_open"):
            try:
                self._pidfd = os.pidfd_open(process.pid)
            except OSError:
                self._pidfd = None

    @property
    def pid(self) -> int:
        return self._process.pid

    def poll(self) -> int | None:
        if self._process.returncode is None:
            ended = ended_unreaped(self.pid)
            if ended is False:
                return None  # (reaped only once seen ended, so that its group is noted)
            if ended:
                note_ended(self._ended, self.pid)  # before its pid, and its group's id, is free
        return reap(self._process)

    def exit_status(self) -> str:
        if self.poll() is not None and getattr(self._process, "reaped_elsewhere", False):
            return REAPED_ELSEWHERE
        return explain_kill(self.pid, self.poll(), getattr(self._process, "peak_bytes", None),
                            self._cgroup, self._oom_kills, self._started)

    def fileno(self) -> int | None:
        return self._pidfd

    def usage(self) -> tuple[float, int] | None:
        import psutil  # only once someone asks: 10 ms of imports

        if self._process.returncode is not None:  # reaped: its pid may be another's now
            return None
        try:
            process = psutil.Process(self.pid)
            with process.oneshot():
                times, memory = process.cpu_times(), process.memory_info()
        except psutil.Error:
            return None
        return times.user + times.system, memory.rss

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        self.released = True
        if self.poll() is None:
            # What its tasks left running, which the worker ends as it exits, unless
            # killed: found first (once it is gone they belong to init).
            left = descendants(self.pid)
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signum)
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)

    def stderr_tail(self) -> str:
        return worker_output_tail(self._log_path)

    def show_stacks(self) -> bool:
        return self.poll() is None and show_stacks(self.pid, self.stacks_path)

    def stacks(self) -> str:
        return read_stacks(self.stacks_path)

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        stdin: BinaryIO | None = self._process.stdin  # type: ignore[assignment]
        if stdin is not None:
            with contextlib.suppress(OSError):
                stdin.close()


class _StartState(NamedTuple):
    cwd: str | None
    environ: dict[str, str]
    sys_path: tuple[str, ...]


def _inherited_flags() -> list[str]:
    """The flags of this interpreter that a worker running it takes too, as
    ``multiprocessing``'s spawned children do: ``-O``/``-OO``, ``-B``, ``-I`` or
    ``-E`` and ``-s`` (not those its environment sets, which the worker inherits),
    and ``-X`` options;
    and ``-P`` always (Python 3.11+): a worker imports its own modules before it
    takes this process's import path, and a module in the working directory (a
    ``random.py``) must not shadow one of them."""
    flags = []
    if sys.flags.optimize and not os.environ.get("PYTHONOPTIMIZE"):
        flags.append("-" + "O" * sys.flags.optimize)
    if sys.flags.dont_write_bytecode and not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        flags.append("-B")
    if sys.flags.isolated:
        return [*flags, "-I", *_x_options()]  # (-E, -s and -P)
    if sys.flags.ignore_environment:
        flags.append("-E")
    if sys.flags.no_user_site and not os.environ.get("PYTHONNOUSERSITE"):
        flags.append("-s")
    if sys.version_info >= (3, 11):
        flags.append("-P")
    return flags + _x_options()


def _x_options() -> list[str]:
    """The ``-X`` options (``-X dev``, ``-X faulthandler``, ``-X utf8``...) that
    ``multiprocessing`` passes to its spawned children, by the function it uses.  Not
    the ``-W`` options: a worker records every warning, and yours decide here."""
    args = iter(subprocess._args_from_interpreter_flags())  # type: ignore[attr-defined]
    return [option for arg in args if arg == "-X" for option in (arg, next(args))]


def _resource_tracker() -> tuple[str, int] | None:
    """Where a local worker opens this process's end of multiprocessing's resource
    tracker (started if need be), and that pipe's inode, which the worker checks;
    None if it cannot start (each worker then starts its own).

    Local workers share it, as a spawn Pool's children do: a ``SharedMemory`` a task
    attaches to is registered there, so it lives until this process unlinks it or
    ends, rather than being unlinked when that worker exits (recycled, replaced,
    closed).  Opened by path, once the worker has started: the tracker is started
    here after the workers, never before them (a process, and 10 ms of imports)."""
    from multiprocessing import resource_tracker

    try:
        fd = resource_tracker.getfd()
        if fd is None:
            return None
        inode = os.fstat(fd).st_ino
    except Exception:
        return None
    return f"/proc/{os.getpid()}/fd/{fd}", inode


def _worker_module(python: str) -> list[str]:
    """How a worker of ``python`` runs its module: ``-m sockpool.worker``, where this
    is that interpreter and sockpool is in its site-packages; else a bootstrap that
    first puts last on its path the place this process imported sockpool from (a
    checkout, a directory the script added, a zipapp), which a new interpreter
    would not search.  Last: nothing there shadows what the worker finds first."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if python != sys.executable or root in _site_directories():
        return ["-m", "sockpool.worker"]
    return ["-c", f"import sys; {root!r} in sys.path or sys.path.append({root!r}); "
                  "import runpy; runpy.run_module('sockpool.worker', run_name='__main__', "
                  "alter_sys=True)"]


def _site_directories() -> set[str]:
    import site

    user = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    return {os.path.abspath(path) for path in [*site.getsitepackages(), user] if path}


class LocalLauncher(Launcher):
    """Start workers as subprocesses on this machine.

    Args:
        python: the interpreter the workers run (default: this one).
        env: extra environment variables for the workers.
    """

    watches_processes = True
    default_master_timeout = LOCAL_MASTER_TIMEOUT

    def __init__(self, python: str | None = None, env: Mapping[str, str] | None = None) -> None:
        self.python = python or sys.executable
        self.env = check_env(env)
        self._workdir: str | None = None
        # Started by start_early, waiting for their configuration: (process, log path).
        self._early: collections.deque[tuple[subprocess.Popen[bytes], str]] = collections.deque()
        self._ended: dict[int, int] = {}  # its workers' process groups, when their leaders ended
        self._start_state: _StartState | None = None

    def _state(self) -> _StartState:
        """The directory, environment and import path every worker starts with: the
        master's when the first one started, so that a replacement never differs."""
        if self._start_state is None:
            try:
                cwd: str | None = os.getcwd()
            except OSError:  # removed, say: a worker starts in it all the same
                cwd = None
            # ('' is the working directory, for a master run by -c or interactively:
            # a worker runs with -P, which leaves it off its own path.)
            path = tuple(entry for entry in (entry or cwd for entry in sys.path) if entry)
            self._start_state = _StartState(cwd, {**os.environ, **self.env}, path)
        return self._start_state

    def prepare(self, workdir: str, bind: Callable[[str], str]) -> None:
        self._workdir = workdir
        self._state()

    def command(self) -> list[str]:
        """The command line of a worker (its configuration goes over stdin)."""
        flags = _inherited_flags() if self.python == sys.executable else []
        return [self.python, *flags, *_worker_module(self.python)]

    def start_early(self, count: int, workdir: str, *, relay: bool) -> None:
        self._start_state = None  # a new cluster: not what a start that failed took
        # A worker's parent-death signal follows the *thread* that started it
        # (prctl(2)): only the main thread surely outlives the cluster.  From
        # another thread, spawn() starts them on the I/O thread, which does.
        if threading.current_thread() is not threading.main_thread():
            return
        self.stop_early()  # what a start that failed before its spawns may have left
        for worker_id in range(count):  # the ids the cluster's first spawns will have
            try:
                self._early.append(self._start(worker_id, workdir, relay))
            except LaunchError:
                break  # spawn() tries again, and the cluster reports its error

    def stop_early(self) -> None:
        ended = []
        while True:
            try:
                process, _ = self._early.popleft()
            except IndexError:  # (another thread may empty it too)
                break
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            ended.append(process)
        deadline = time.monotonic() + 1.0  # as the pool's teardown: reaped later if stuck
        for process in ended:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))
            if process.stdin is not None:
                process.stdin.close()

    def spawn(self, worker_id: int, config: WorkerConfig) -> LocalWorkerProcess:
        if self._workdir is None:
            raise RuntimeError("LocalLauncher.prepare() was not called")
        if self._early:
            process, log_path = self._early.popleft()
        else:
            process, log_path = self._start(worker_id, self._workdir, config.relay != "off")
        config = config.replace(
            watch_stdin=True, parent_pid=os.getpid(), master_pid=os.getpid(),
            # The master's import path, so a module next to the script imports here too.
            sys_path=self._state().sys_path)
        if (tracker := _resource_tracker()) is not None:
            path, inode = tracker
            config = config.replace(resource_tracker=path, resource_tracker_inode=inode)
        handle = LocalWorkerProcess(worker_id, process, shlex.join(self.command()), log_path,
                                    self._ended)
        config = config.replace(stacks_path=handle.stacks_path)
        assert process.stdin is not None
        try:
            process.stdin.write(config.to_json().encode() + b"\n")
            process.stdin.flush()
        except BrokenPipeError:
            pass  # it died at once; the I/O thread reports it with its stderr
        return handle

    def _start(self, worker_id: int, workdir: str, relay: bool
               ) -> tuple[subprocess.Popen[bytes], str]:
        """A worker's process, which waits on stdin for its configuration; and its log."""
        argv = self.command()
        log_path, out_path = worker_output_paths(workdir, worker_id)
        try:
            with open(log_path, "wb") as log, open(out_path, "wb") as out:
                # The worker's own stderr and stdout (C-level writes included) go to its
                # log, whose tail errors quote, and to a file of their own: what tasks
                # print is relayed over zmq, and what they write there read back
                # (worker/below_python.py).  With the relay off, both stay the
                # master's, as a multiprocessing pool's: all a task writes goes there.
                state = self._state()
                # (A directory since removed: the master's own, as a worker would have.)
                cwd = state.cwd if state.cwd is not None and os.path.isdir(state.cwd) else None
                process = subprocess.Popen(
                    argv, stdin=subprocess.PIPE, stdout=out if relay else None,
                    stderr=log if relay else None,
                    cwd=cwd, env=state.environ,
                    start_new_session=True,  # the terminal's Ctrl-C is the master's to handle
                )
                note_inherited_peak(process)
        except OSError as exc:
            raise LaunchError(f"could not start a local worker: {exc}",
                              command=shlex.join(argv)) from exc
        return process, log_path

    def close(self) -> None:
        ended, self._ended = self._ended, {}  # (a handle still held notes into the old one)
        self._start_state = None  # a cluster that reuses this launcher starts afresh
        end_lingering(ended)

    def describe(self) -> str:
        return "local"
