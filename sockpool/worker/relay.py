"""Worker output, warnings and log records, relayed home to the master.

Worker side (:class:`WorkerRelay`): while a chunk runs, ``sys.stdout`` and
``sys.stderr`` are :class:`TaskStream` objects that collect what the task
writes, ``warnings.showwarning`` records every warning (the worker's filters
say "always", so the master's filters decide) and a logging handler records
log records at or above the cluster's ``log_level``.  What a chunk produced
travels home inside its RESULT, so a chunk that writes nothing costs nothing
more.  A chunk that writes sends its first write at once and the rest ahead in
OUTPUT messages at most every :data:`FLUSH_SECONDS`, so a worker that crashes
has lost at most that much of what it wrote (the master shows it, and quotes
it in the ``WorkerLostError``).  Output written below Python (C code, child
processes) is not relayed; for local workers it lands in the worker's log,
whose tail is quoted when the worker is lost.

The master writes it out (:mod:`sockpool.dispatch.output`).

A batch keeps what was written in the order it was written: text, warnings and
log records as one list of events (:data:`sockpool.common.protocol.Batch`), so
a print, a log record and another print come out in that order, as they would
without a cluster.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable
from typing import Any, TextIO

from ..common.protocol import RECORD, WARNING, Batch

#: A chunk that keeps writing sends what it wrote at most this often.
FLUSH_SECONDS = 0.005
#: ... or as soon as this many characters wait.
FLUSH_CHARS = 64 * 1024


class TaskStream(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` in a worker: writes go to the relay."""

    def __init__(self, relay: WorkerRelay, index: int, original: TextIO) -> None:
        super().__init__()
        self._relay = relay
        self._index = index
        self._original = original
        self._bytes = _TaskBytes(self)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._relay.write(self._index, text)
        return len(text)

    def flush(self) -> None:
        self._relay.maybe_flush(force=True)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def fileno(self) -> int:
        return self._original.fileno()

    def isatty(self) -> bool:
        return False

    @property
    def buffer(self) -> _TaskBytes:
        """The binary side (``sys.stdout.buffer.write(b"...")``): UTF-8, relayed too."""
        return self._bytes


class _TaskBytes(io.RawIOBase):
    """Bytes written to a :class:`TaskStream`'s ``buffer``, decoded as UTF-8 (what is
    not UTF-8 as surrogate escapes, which the master writes back as the bytes)."""

    def __init__(self, text: TaskStream) -> None:
        super().__init__()
        self._text = text

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._text.write(bytes(view).decode("utf-8", "surrogateescape"))
        return view.nbytes

    def flush(self) -> None:
        self._text.flush()


class _RecordHandler(logging.Handler):
    def __init__(self, relay: WorkerRelay) -> None:
        super().__init__()
        self._relay = relay

    def emit(self, record: logging.LogRecord) -> None:
        self._relay.log(record)


class WorkerRelay:
    """Collects a chunk's output, warnings and log records in a worker.

    Args:
        send: sends an OUTPUT batch ahead of the RESULT (the data socket's owner,
            the main thread, is the only caller).
        log_level: the lowest level of log records relayed.
        live: send each complete line at once (the master writes it as it
            comes) rather than batches it holds until the chunk ends.
        prefix: put this before every line (``"[worker 3] "``), or "".
    """

    def __init__(self, send: Callable[[Batch], None], log_level: int, live: bool = False,
                 prefix: str = "") -> None:
        self._live = live
        self._prefix = prefix
        self._partial = ["", ""]  # the unfinished last line of each stream
        self._send = send
        self._events: Batch = []
        self._run: list[str] = []  # the latest writes to one stream, joined when it ends
        self._run_stream = -1
        self._lock = threading.Lock()  # a task's threads write, warn and log too
        self._chars = 0
        self._last_flush = time.monotonic()
        self._active = False
        self._main = threading.get_ident()
        self._log_level = log_level

    def install(self) -> None:
        """Redirect this process's output, warnings and logging to the relay."""
        sys.stdout = TaskStream(self, 0, sys.__stdout__ or sys.stdout)
        sys.stderr = TaskStream(self, 1, sys.__stderr__ or sys.stderr)
        warnings.simplefilter("always")
        warnings.showwarning = self._warning
        root = logging.getLogger()
        root.addHandler(_RecordHandler(self))
        root.setLevel(self._log_level)

    def start(self) -> None:
        """A chunk starts: what is written from now on belongs to it."""
        self._active = True
        self._last_flush = 0.0  # its first write goes out at once: a crash loses nothing

    def finish(self) -> Batch | None:
        """The chunk ended: its batch (None when it wrote nothing)."""
        self._active = False
        for index, rest in enumerate(self._partial):
            if rest:  # a last line without its newline still belongs to this chunk
                self._partial[index] = ""
                self._add_text(index, self._prefix + rest)
        return self._take()

    def write(self, index: int, text: str) -> None:
        """Take what a task wrote to stdout (``index`` 0) or stderr (1)."""
        if not text:
            return
        if not self._active:  # between chunks (a background thread, say): not a task's
            original = (sys.__stdout__, sys.__stderr__)[index]
            if original is not None:
                original.write(text)
                original.flush()
            return
        if self._prefix or self._live:
            # Keep whole lines only: the unfinished one waits for its end.
            text = self._partial[index] + text
            cut = text.rfind("\n") + 1
            self._partial[index] = text[cut:]
            text = text[:cut]
            if self._prefix and text:
                text = "".join(self._prefix + line for line in text.splitlines(keepends=True))
            if not text:
                return
        self._add_text(index, text)
        self.maybe_flush(force=self._live)

    def _add_text(self, index: int, text: str) -> None:
        with self._lock:
            if index != self._run_stream:
                self._end_run()
                self._run_stream = index
            self._run.append(text)
            self._chars += len(text)

    def _end_run(self) -> None:
        """Close the run of writes to one stream as an event (the lock held)."""
        if self._run:
            self._events.append((self._run_stream, "".join(self._run)))
            self._run = []
        self._run_stream = -1

    def _add(self, kind: int, value: Any) -> None:
        with self._lock:
            self._end_run()
            self._events.append((kind, value))

    def log(self, record: logging.LogRecord) -> None:
        """Take a log record, as a dict of plain values the master rebuilds it from."""
        if record.levelno < self._log_level:
            return
        self._add(RECORD, {
            "name": record.name, "levelno": record.levelno, "levelname": record.levelname,
            "msg": record.getMessage(), "args": None, "pathname": record.pathname,
            "filename": record.filename, "module": record.module, "lineno": record.lineno,
            "funcName": record.funcName, "created": record.created, "msecs": record.msecs,
            "exc_text": _exception_text(record), "stack_info": record.stack_info,
            "process": record.process, "processName": record.processName,
            "thread": record.thread, "threadName": record.threadName,
            **_extra_fields(record),
        })
        self.maybe_flush()

    def _warning(self, message: Any, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
        self._add(WARNING, (str(message), category, filename, lineno, _module_of(filename)))
        self.maybe_flush()

    def maybe_flush(self, force: bool = False) -> None:
        """Send what waits ahead of the RESULT when it is time (main thread only)."""
        if not self._active or threading.get_ident() != self._main:
            return
        now = time.monotonic()
        if force or now - self._last_flush >= FLUSH_SECONDS or self._chars >= FLUSH_CHARS:
            self._last_flush = now
            batch = self._take()
            if batch is not None:
                self._send(batch)

    def _take(self) -> Batch | None:
        with self._lock:
            self._end_run()
            if not self._events:
                return None
            batch, self._events = self._events, []
            self._chars = 0
            return batch


def _module_of(filename: str) -> str | None:
    """The module the warning came from, as ``warnings.warn`` named it for the filters
    (the ``__name__`` of the innermost caller in ``filename``: ``"__main__"`` for a
    function from your script or a notebook's cell); None if no frame is in that file."""
    frame: types.FrameType | None = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename == filename:
            name = frame.f_globals.get("__name__")
            return name if isinstance(name, str) else None
        frame = frame.f_back
    return None


def _exception_text(record: logging.LogRecord) -> str | None:
    if record.exc_info and not record.exc_text:
        return logging.Formatter().formatException(record.exc_info)
    return record.exc_text


#: A LogRecord's own attributes; any other was given as ``extra=``.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """A record's ``extra=`` fields (a master's format may name them), as plain values:
    anything else as its ``str``, so that the batch always pickles."""
    return {key: value if value is None or isinstance(value, (str, int, float, bool))
            else str(value)
            for key, value in vars(record).items() if key not in _RECORD_FIELDS}
