"""Worker output, warnings and log records, relayed home to the master.

Worker side (:class:`WorkerRelay`): while a chunk runs, ``sys.stdout`` and
``sys.stderr`` are :class:`TaskStream` objects that collect what the task
writes, ``warnings.showwarning`` records every warning (the worker's filters
say "always", so the master's filters decide) and a logging handler records
log records at or above the cluster's ``log_level``.  What a chunk produced
travels home inside its RESULT, so a chunk that writes nothing costs nothing
more.  A chunk that writes sends its first write at once and the rest ahead in
OUTPUT messages within :data:`FLUSH_SECONDS`, so a worker that crashes has lost
at most that much of what it wrote (the master shows it, and quotes it in the
``WorkerLostError``).  The main thread sends what a task writes as it writes; a
flusher thread sends what would otherwise wait: the last lines of a task that
then hangs or sleeps, and what the task's own threads write.  Output written
below Python (C code, child processes) goes to the worker's own stdout and stderr,
files whose tails are quoted when the worker is lost; what a chunk added to them
is read back as it ends and sent with its output (:mod:`.below_python`), and,
live, line by line while it runs (the flusher looks every
:data:`BELOW_POLL_SECONDS`).

The master writes it out (:mod:`sockpool.dispatch.output`).

A batch keeps what was written in the order it was written: text, warnings and
log records as one list of events (:data:`sockpool.common.protocol.Batch`), so
a print, a log record and another print come out in that order, as they would
without a cluster.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, TextIO

from ..common.protocol import RECORD, WARNING, Batch
from .below_python import BelowFile, BelowPython, grew
from .relayed import module_of, record_values

#: A chunk that keeps writing sends what it wrote at most this often.
FLUSH_SECONDS = 0.005
#: ... or as soon as this many characters wait.
FLUSH_CHARS = 64 * 1024
#: Live: a line goes at once, unless one went less than this ago; then within it.
#: (A task printing in a tight loop sent a message a line, faster than the master
#: could write them: its memory grew by gigabytes.)
LIVE_SECONDS = 0.001
#: Live: how often the flusher looks for lines a running chunk wrote below Python.
BELOW_POLL_SECONDS = 0.05
#: What shows a warning in a process the relay has not taken over (a forked child).
_ORIGINAL_SHOWWARNING = warnings.showwarning


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

    @property
    def name(self) -> str:
        return ("<stdout>", "<stderr>")[self._index]

    @property
    def line_buffering(self) -> bool:
        return False

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "strict"  # (as a pipe's; what a task writes is never refused here)

    def reconfigure(self, *, encoding: str | None = None, errors: str | None = None,
                    newline: str | None = None, line_buffering: bool | None = None,
                    write_through: bool | None = None) -> None:
        """Accepted as ``io.TextIOWrapper.reconfigure`` is (a script's
        ``sys.stdout.reconfigure(encoding="utf-8")``), and changes nothing: what a
        task writes travels as text, and the master's stream encodes it."""

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

    @property
    def raw(self) -> _TaskBytes:
        """Itself: unbuffered already (a ``BufferedWriter``'s ``raw``, which code reaches for)."""
        return self


class _RecordHandler(logging.Handler):
    def __init__(self, relay: WorkerRelay) -> None:
        super().__init__()
        self._relay = relay

    def emit(self, record: logging.LogRecord) -> None:
        self._relay.log(record)


class WorkerRelay:
    """Collects a chunk's output, warnings and log records in a worker.

    Args:
        pack: makes the OUTPUT frame of a batch (None once no chunk runs); a task's
            signal handler may raise in it, in the main thread's flush.
        send: sends an OUTPUT frame ahead of the RESULT, from the main thread (the
            data socket's owner) or, while the main thread runs the chunk, from the
            flusher; ``_sending`` keeps the two apart and the frames in order.  No
            Python code of its own (see :func:`..link.frame_sender`).
        log_level: the lowest level of log records relayed.
        live: send each complete line at once (the master writes it as it
            comes; lines faster than :data:`LIVE_SECONDS` go together) rather
            than batches it holds until the chunk ends.
        prefix: put this before every line (``"[worker 3] "``), or "".
    """

    def __init__(self, pack: Callable[[Batch], Any], send: Callable[[Any], None],
                 log_level: int, live: bool = False,
                 prefix: str = "") -> None:
        self._live = live
        self._every = LIVE_SECONDS if live else FLUSH_SECONDS  # the longest a write waits
        self._prefix = prefix
        self._partial = ["", ""]  # the unfinished last line of each stream
        self._pack = pack
        self._send = send
        self._events: Batch = []
        self._run: list[str] = []  # the latest writes to one stream, joined when it ends
        self._run_stream = -1
        # A task's threads write, warn and log too; re-entrant: the collector may run a
        # __del__ that prints (tqdm's) in a thread that holds it.
        self._lock = threading.RLock()
        self._held = threading.Condition(self._lock)  # the flusher waits for output on it
        # Held across taking a batch and sending it, by either sender, so that batches
        # leave in the order they were taken, and none after the chunk's RESULT.
        # (Re-entrant: a warning raised while a batch is pickled is added and sent too.)
        self._sending = threading.RLock()
        self._chars = 0
        self._last_flush = time.monotonic()
        self._armed = False  # the flusher was told of output that waits
        self._urgent = False  # live: a line from a task's thread, to send at once
        self._active = False
        self._main = threading.get_ident()
        self._log_level = log_level
        self._below: BelowPython | None = None  # (once installed)
        self._watch_below = False  # live, with files below Python to read as they grow
        self._below_reader: int | None = None  # the thread reading them, while it does
        self._below_files: list[BelowFile | None] = [None, None]  # (live) stdout's, stderr's
        self._always: Any = None  # the warning filter the relay puts first (install)
        self._taken: Batch | None = None  # the batch a flush is making its frame of

    def install(self) -> None:
        """Redirect this process's output, warnings and logging to the relay."""
        sys.stdout = TaskStream(self, 0, sys.__stdout__ or sys.stdout)
        sys.stderr = TaskStream(self, 1, sys.__stderr__ or sys.stderr)
        warnings.simplefilter("always")
        self._always = warnings.filters[0]  # (taken out again in a forked child)
        warnings.showwarning = self._warning
        root = logging.getLogger()
        root.addHandler(_RecordHandler(self))
        root.setLevel(self._log_level)
        self._below = BelowPython()
        self._watch_below = self._live and self._below.watched
        if self._live:
            self._below_files = [self._below.file_of(0), self._below.file_of(1)]
        threading.Thread(target=self._flush_held, name="sockpool-relay", daemon=True).start()
        os.register_at_fork(after_in_child=self._leave_to_forked_child)

    def _leave_to_forked_child(self) -> None:
        """In a process a task forked (``os.fork``, a ``multiprocessing`` fork pool):
        write straight to the worker's own stdout and stderr, below Python.

        The child cannot send on its parent's socket (libzmq drops what a forked
        child sends: its prints were lost), and the relay's locks may have been
        held by the flusher, which the child has not.  What it writes there is
        read back with the rest written below Python, as a spawned child's is.
        """
        self._active = False  # a TaskStream kept by the task writes through too
        self._lock = threading.RLock()
        self._held = threading.Condition(self._lock)
        self._sending = threading.RLock()
        for name in ("stdout", "stderr"):
            original = getattr(sys, f"__{name}__")
            if isinstance(getattr(sys, name), TaskStream) and original is not None:
                # Line by line, as on a terminal; a stream of its own, since what the
                # parent left in the original's buffer is the parent's to write.
                stream = open(original.fileno(), "w", buffering=1,  # noqa: SIM115  (sys's)
                              encoding=original.encoding, errors=original.errors,
                              closefd=False)
                setattr(sys, name, stream)
        warnings.showwarning = _ORIGINAL_SHOWWARNING
        # "always" is there for the master's filters to decide; the task's own stay.
        warnings.filters[:] = [  # type: ignore[index]
            entry for entry in warnings.filters if entry is not self._always]
        warnings._filters_mutated()  # type: ignore[attr-defined]
        root = logging.getLogger()
        for handler in root.handlers[:]:
            if isinstance(handler, _RecordHandler):
                root.removeHandler(handler)
                text = logging.StreamHandler()  # (sys.stderr, as set above)
                text.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
                root.addHandler(text)

    def start(self) -> None:
        """A chunk starts: what is written from now on belongs to it."""
        if self._below is not None:
            self._below.start()
        with self._lock:
            self._active = True
            self._last_flush = 0.0  # its first write goes out at once: a crash loses nothing
            if self._run or self._events:  # (a log record from a thread between chunks)
                self._armed = True
            if self._armed or self._live:  # (live: the flusher looks below Python too)
                self._held.notify()

    def finish(self) -> Batch | None:
        """The chunk ended: its batch (None when it wrote nothing)."""
        if self._below is not None:  # (after what it wrote through sys.stdout and stderr)
            for stream in (sys.__stdout__, sys.__stderr__):  # (print(file=sys.__stdout__))
                with contextlib.suppress(Exception):
                    stream.flush()  # type: ignore[union-attr]
            with self._sending:  # (after the flusher's last look, if it is looking)
                self._below_reader = threading.get_ident()  # (a __del__'s print: no look)
                try:
                    for index, text in self._below.written():
                        cut = text.rfind("\n") + 1  # whole lines: before an unfinished
                        if cut:  # printed line, as live; what is left ends with it
                            self._add_lines(index, text[:cut])
                        if text[cut:]:
                            self.write(index, text[cut:])
                finally:
                    self._below_reader = None
        with self._sending:  # once the flusher's batch, if any, has gone
            self._active = False
        for index in range(2):
            with self._lock:
                rest, self._partial[index] = self._partial[index], ""
            if rest:  # a last line without its newline still belongs to this chunk,
                # and, prefixed, ends: the next has a prefix too
                self._add_text(index, self._prefix + rest + ("\n" if self._prefix else ""))
        return self._take()

    def write(self, index: int, text: str) -> None:
        """Take what a task wrote to stdout (``index`` 0) or stderr (1)."""
        # Live, a line starts: what a child wrote to the same stream before it goes
        # first (across the two streams, order is not kept anyway).  Another thread
        # reading may have looked past lines it has not added yet: wait for those.
        below = self._below_files[index]
        if (below is not None and self._active and not self._partial[index]
                and (grew(below) or self._below_reader is not None)):
            self._read_below()
        if not text:
            return
        if not self._active:  # between chunks (a background thread, say): not a task's
            original = (sys.__stdout__, sys.__stderr__)[index]
            if original is not None:
                original.write(text)
                original.flush()
            return
        if self._prefix or self._live:
            # Keep whole lines only: the unfinished one waits for its end (locked: a
            # task's threads print at once, and each must find the other's part).
            with self._lock:
                text = self._partial[index] + text
                cut = text.rfind("\n") + 1
                self._partial[index] = text[cut:]
            text = text[:cut]
            if self._prefix and text:  # (lines end at "\n" alone: a "\r" redraws one)
                text = self._prefix + text[:-1].replace("\n", "\n" + self._prefix) + "\n"
            if not text:
                return
        self._add_text(index, text)
        self.maybe_flush()

    def _add_text(self, index: int, text: str) -> None:
        with self._lock:
            while index != self._run_stream:
                self._end_run()  # (may run a __del__ that writes: a run of its own)
                if not self._run:
                    self._run_stream = index
            self._run.append(text)
            self._chars += len(text)

    def _end_run(self) -> None:
        """Close the run of writes to one stream as an event (the lock held; a write
        made while the run is joined, by a __del__, starts a run after it)."""
        empty: list[str] = []  # (made first: an allocation may run the collector)
        run, self._run = self._run, empty
        stream, self._run_stream = self._run_stream, -1
        if run:
            self._events.append((stream, "".join(run)))

    def _add(self, kind: int, value: Any) -> None:
        with self._lock:
            self._end_run()
            self._events.append((kind, value))

    def log(self, record: logging.LogRecord) -> None:
        """Take a log record, as a dict of plain values the master rebuilds it from."""
        if record.levelno < self._log_level:
            return
        self._add(RECORD, record_values(record))
        self.maybe_flush()

    def _warning(self, message: Any, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
        self._add(WARNING, (str(message), category, filename, lineno, module_of(filename)))
        self.maybe_flush()

    def maybe_flush(self, force: bool = False) -> None:
        """Send what waits ahead of the RESULT when it is time (from the main thread;
        another thread's forced flush is the flusher's, at once)."""
        if not self._active:
            return
        if threading.get_ident() != self._main or self._lock._is_owned():  # type: ignore[attr-defined]
            # (another thread; or this one within the relay, where the collector ran a
            # __del__ that prints: taking _sending here, after _lock, could deadlock)
            self._wake_flusher(urgent=force or self._live)
            return
        now = time.monotonic()
        if force or now - self._last_flush >= self._every or self._chars >= FLUSH_CHARS:
            self._flush(now)
        else:
            self._wake_flusher(urgent=False)

    def _wake_flusher(self, urgent: bool) -> None:
        """Tell the flusher that output waits (once until it is taken: a task
        printing in a loop wakes it at most every :data:`FLUSH_SECONDS`, or
        :data:`LIVE_SECONDS` live)."""
        if self._armed and not urgent:
            return
        with self._lock:
            self._urgent = self._urgent or urgent
            self._armed = True
            self._held.notify()

    def _flush(self, now: float) -> None:
        """Send what waits, if the chunk still runs (either sender)."""
        with self._sending:
            if not self._active:
                return
            try:
                batch = self._take()
                if batch is None:  # (a flush of nothing leaves the next write's turn)
                    return
                self._last_flush = now
                message = self._pack(batch)
            except BaseException:
                # A task's signal handler (its time limit), run in the main thread's
                # flush: what was taken and not sent goes with the next one.
                if self._taken is not None and threading.get_ident() == self._main:
                    with self._lock:
                        self._events[:0] = self._taken
                raise
            self._taken = None
            if message is not None:  # (a handler raises in this C call only as it returns)
                self._send(message)

    def _flush_held(self) -> None:
        """The flusher thread: what a chunk wrote and nobody sent goes within
        :data:`FLUSH_SECONDS` (live: :data:`LIVE_SECONDS`) of the last send, while
        the main thread is busy in a task (a sleep, a C call, a wait for the task's
        own threads)."""
        while True:
            with self._lock:
                while not (self._active and (self._armed or self._watch_below)):
                    self._held.wait()
                if not self._armed:  # live, a chunk runs: look below Python now and then
                    self._held.wait(BELOW_POLL_SECONDS)  # (at once if a line comes)
                wait = self._last_flush + self._every - time.monotonic()
                delay = 0.0 if self._urgent else wait
                self._urgent = False
            if delay > 0:
                time.sleep(delay)
            try:
                if self._watch_below and self._below is not None and self._below.grew():
                    self._read_below()
                self._flush(time.monotonic())
            except Exception as exc:  # a batch that cannot be sent: the next ones still go
                original = sys.__stderr__
                if original is not None:
                    original.write(f"sockpool worker: output dropped, it could not be sent: "
                                   f"{type(exc).__name__}: {exc}\n")

    def _read_below(self) -> None:
        """Live: take the lines the running chunk wrote below Python since the last
        look (a child process's, C code's), as they come rather than at its end."""
        assert self._below is not None
        if (self._below_reader == threading.get_ident()
                or self._lock._is_owned()):  # type: ignore[attr-defined]
            return  # (a print from a __del__ the collector ran in this thread, in the relay)
        with self._sending:  # (not once the chunk ended: finish() reads the rest)
            if self._active:
                self._below_reader = threading.get_ident()
                try:
                    for index, text in self._below.new_lines():
                        self._add_lines(index, text)
                finally:
                    self._below_reader = None
        self.maybe_flush()

    def _add_lines(self, index: int, text: str) -> None:
        """Whole lines written below Python, taken live: before, not into, a line the
        task has begun to print and not ended (it ends after them)."""
        if self._prefix:
            text = self._prefix + text[:-1].replace("\n", "\n" + self._prefix) + "\n"
        self._add_text(index, text)

    def _take(self) -> Batch | None:
        self._taken = None
        with self._lock:
            self._armed = self._urgent = False
            self._end_run()
            if not self._events:
                return None
            batch, self._events, self._taken = self._events, [], self._events  # (one step)
            self._chars = 0
            return batch
