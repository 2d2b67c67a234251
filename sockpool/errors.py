"""Every exception sockpool raises, in one place.

The tree::

    SockpoolError          base of everything below
    ├── CaptureError       a function or value cannot be serialized (also pickle.PicklingError)
    ├── ClusterClosedError you closed the cluster (also RuntimeError: the Executor contract)
    ├── LaunchError        a worker could not start: command, exit status, stderr tail
    │   └── NoWorkersLeftError  no worker is left and none could be started: the
    │                           cluster takes no more work (also a ClusterClosedError)
    ├── WorkerLostError    the worker running a task died or went silent
    ├── TaskTimeoutError   a task ran past its ``timeout=`` (also TimeoutError)
    └── RemoteError        a task raised an exception that cannot be rebuilt here

An exception raised by a task travels home as itself (same type), with the
worker's traceback attached as ``__cause__`` (a :class:`RemoteTraceback`) and a
note naming the task index and the worker.  Only when the original cannot be
unpickled in the master does it arrive as :class:`RemoteError`.
"""

from __future__ import annotations

import contextlib
import linecache
import pickle
import re
import sys
from collections.abc import Sequence
from typing import Any

__all__ = [
    "CaptureError",
    "ClusterClosedError",
    "LaunchError",
    "NoWorkersLeftError",
    "RemoteError",
    "RemoteTraceback",
    "SockpoolError",
    "TaskTimeoutError",
    "WorkerLostError",
]


class SockpoolError(Exception):
    """Base class of every sockpool error."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions with keyword-only attributes do not survive pickling by
        # default; keep the message and the attribute dict.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[SockpoolError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class CaptureError(SockpoolError, pickle.PicklingError):
    """A function, argument or value cannot be serialized for the workers.

    Raised before anything is sent.  The message names what failed and why.
    """


class ClusterClosedError(SockpoolError, RuntimeError):
    """The cluster was closed (by ``close()``, ``shutdown()`` or leaving ``with``)."""


class LaunchError(SockpoolError):
    """A worker could not be started, or did not connect before the deadline.

    Attributes:
        command: the command line that was run, when there is one.
        returncode: its exit status, when it exited.
        stderr_tail: the last lines it wrote to stderr.
    """

    def __init__(
        self,
        message: str,
        *,
        command: str | None = None,
        returncode: int | None = None,
        stderr_tail: str = "",
    ) -> None:
        super().__init__(message)
        self.command = command
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class NoWorkersLeftError(LaunchError, ClusterClosedError):
    """No worker is left and none can replace them (replacements failed to start, or the
    launcher has nowhere left to start one): the cluster takes no more work.

    Raised by every call made after that (and by the tasks that were waiting),
    whichever path noticed it.  It is a :class:`LaunchError` (workers could not
    be started) and a :class:`ClusterClosedError` (the cluster is unusable), so
    code that catches either catches it.
    """


class WorkerLostError(SockpoolError):
    """The worker running a task died, was killed or went silent.

    Attributes:
        worker_id: the lost worker's id.
        host: where it ran.
        pid: its process id.
        exit_status: how it ended, in the message's words: ``"exit code 3"``,
            ``"killed by SIGKILL (peak memory 1.1 GB)"``, ``"killed by SIGSEGV"``,
            or what else its launcher knew (an out-of-memory kill, say).
        stderr_tail: the last lines the task wrote (stdout and stderr, as relayed),
            then those of the worker's own stderr.
    """

    def __init__(
        self,
        message: str,
        *,
        worker_id: int | None = None,
        host: str | None = None,
        pid: int | None = None,
        exit_status: str | None = None,
        stderr_tail: str = "",
    ) -> None:
        super().__init__(message)
        self.worker_id = worker_id
        self.host = host
        self.pid = pid
        self.exit_status = exit_status
        self.stderr_tail = stderr_tail


class TaskTimeoutError(SockpoolError, TimeoutError):
    """A task ran longer than the ``timeout=`` its call allowed.

    Attributes:
        timeout: the limit it overran, in seconds.
        worker_id: the worker that ran it, stopped for it (None in this process:
            the sequential plan).
        host: where that worker ran.
        pid: its process id.
        stack: where the task was when its worker was stopped, as the message
            quotes it ("" where the worker could not say).
    """

    def __init__(
        self,
        message: str = "",
        *,
        timeout: float | None = None,
        worker_id: int | None = None,
        host: str | None = None,
        pid: int | None = None,
        stack: str = "",
    ) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.worker_id = worker_id
        self.host = host
        self.pid = pid
        self.stack = stack


#: A frame of a worker's traceback: file, line number, function and source line, the
#: line None where the worker could not read it (a notebook cell's code is in the master).
RemoteFrame = tuple[str, int | None, str, str | None]


class RemoteError(SockpoolError):
    """A task raised an exception that could not be rebuilt in the master.

    Attributes:
        type_name: qualified name of the original exception type.
        message: ``str()`` of the original exception.
        traceback_text: the worker's formatted traceback.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str = "", *,
                 frames: Sequence[RemoteFrame] = ()) -> None:
        super().__init__(type_name, message, traceback_text)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        self.frames = list(frames)

    def __str__(self) -> str:
        text = f"{self.type_name}: {self.message}"
        if self.traceback_text:
            shown = render_remote_traceback(self.traceback_text, self.frames)
            text += "\n\nRemote traceback:\n" + shown.rstrip()
        return text


class RemoteTraceback(Exception):
    """The worker's traceback, attached as ``__cause__`` of a re-raised task error.

    Its ``str()`` is the formatted traceback, so Python's "The above exception
    was the direct cause of ..." display shows where the task failed.  In
    IPython (a notebook), frames of its cells are named as IPython names them,
    ``Cell In[5], line 2``, with their source line.
    """

    def __init__(self, traceback_text: str, *, frames: Sequence[RemoteFrame] = ()) -> None:
        super().__init__(traceback_text)
        self.traceback_text = traceback_text
        self.frames = list(frames)

    def __str__(self) -> str:
        shown = render_remote_traceback(self.traceback_text, self.frames)
        return "\n\nRemote traceback (in the worker):\n" + shown.rstrip()

    @property
    def tb(self) -> str:
        """The traceback as shown: ``multiprocessing.pool.RemoteTraceback``'s attribute."""
        return str(self)


def render_remote_traceback(text: str, frames: Sequence[RemoteFrame]) -> str:
    """A worker's traceback as shown here: as the worker wrote it, but in IPython the
    frames of its cells (whose code the worker could not read) read ``Cell In[5],
    line 2, in f`` followed by the line, from this process's ``linecache``."""
    ipython = sys.modules.get("IPython")  # never imported here: only where it runs already
    shell = getattr(ipython, "get_ipython", lambda: None)()
    cells = getattr(getattr(shell, "compile", None), "_filename_map", None)
    if not cells or not isinstance(cells, dict):
        return text
    done = set()
    for filename, lineno, name, line in frames:
        if line or filename not in cells or (filename, lineno, name) in done:
            continue
        done.add((filename, lineno, name))
        source = linecache.getline(filename, lineno).strip() if lineno else ""
        header = f"Cell In[{cells[filename]}], line {lineno}, in {name}\n"
        pattern = re.compile("^( *)" + re.escape(f'File "{filename}", line {lineno}, in {name}\n'),
                             re.MULTILINE)
        text = pattern.sub(_cell_frame(header, source), text)
    return text


def _cell_frame(header: str, source: str) -> Any:
    """The replacement of one frame's header: the cell's name, then its line indented
    as Python indents source lines (the header's indent and two spaces more)."""
    def replace(found: re.Match[str]) -> str:
        indent = found[1]
        return indent + header + (f"{indent}  {source}\n" if source else "")
    return replace


def add_note(exc: BaseException, note: str) -> None:
    """Attach ``note`` to ``exc`` (PEP 678; stored by hand on Python 3.10)."""
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        notes.append(note)
    else:
        # An exception type with __slots__ and no __dict__ cannot take a note.
        with contextlib.suppress(AttributeError):
            setattr(exc, "__notes__", [note])  # noqa: B010 (absent from 3.10 stubs)
