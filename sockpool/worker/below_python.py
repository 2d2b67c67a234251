"""What a chunk writes below Python, read back for the relay: C code's output, child
processes', ``os.write(1, ...)``, ``sys.__stdout__``.

Such writes go to the worker's own file descriptors 1 and 2, which a local or an
ssh worker has on files of its own (its logs).  Where they are regular files, the
relay reads back what a chunk added to them while it ran, and sends it with the
chunk's output, after what its tasks wrote through ``sys.stdout`` and
``sys.stderr`` (live: line by line as it comes, :meth:`BelowPython.new_lines`).
The logs keep it too, and so a crash's last words still reach the
``WorkerLostError`` message.  Where descriptor 1 or 2 is a terminal or a pipe (a
worker started by hand), what is written there is not read back.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading

from .state import raised_by_a_handler, system_errors_ignored

#: The most a chunk's read-back carries of each stream: its end, which holds the last
#: words; a note says how much was left out (400 MB from a chatty child process took
#: the master's memory from 30 MB to 800 MB).
READ_BACK_BYTES = 1024 * 1024
#: A live look's ``checked`` once a stream's MiB is spent: nothing grows past it.
_SPENT = 2**63


class BelowFile:
    """One stream's file, and where the running chunk's writes to it stand."""

    __slots__ = ("checked", "reader", "sent", "start", "stream")

    def __init__(self, stream: int, reader: int) -> None:
        self.stream = stream  # 0 stdout, 1 stderr
        self.reader = reader  # a descriptor that reads the file
        self.start = 0  # where what is not read back yet starts
        self.checked = 0  # from start to here: no line's end (live: an unfinished line)
        self.sent = 0  # bytes of it streamed while the chunk ran (live)


class BelowPython:
    """The growth of the files behind descriptors 1 and 2 while a chunk runs."""

    def __init__(self) -> None:
        #: A file behind both descriptors is stdout's.
        self._files: list[BelowFile] = []
        self._running = False  # between start() and written()
        # (the live relay's flusher reads too; re-entrant: the collector may run a
        # __del__ that prints while it is held, and a look then finds nothing)
        self._lock = threading.RLock()
        seen: set[tuple[int, int]] = set()
        for stream, fd in ((0, 1), (1, 2)):
            try:
                status = os.fstat(fd)
                if not stat.S_ISREG(status.st_mode) or (status.st_dev, status.st_ino) in seen:
                    continue
                reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:  # closed, or no /proc: nothing to read back
                continue
            seen.add((status.st_dev, status.st_ino))
            self._files.append(BelowFile(stream, reader))

    @property
    def watched(self) -> bool:
        """Whether there is anything to read back (a file behind 1 or 2)."""
        return bool(self._files)

    def start(self) -> None:
        """A chunk starts: what is written from now on is its."""
        with self._lock:
            for file in self._files:
                file.start = file.checked = _size(file.reader)
                file.sent = 0
            self._running = True

    def file_of(self, stream: int) -> BelowFile | None:
        """The file behind ``stream`` (0 stdout, 1 stderr), if it is read back."""
        return next((file for file in self._files if file.stream == stream), None)

    def grew(self) -> bool:
        """Whether either file grew past what was looked at (a hint, without the lock)."""
        return any(grew(file) for file in self._files)

    def new_lines(self) -> list[tuple[int, str]]:
        """Live: the whole lines the running chunk wrote to each stream since the last
        look (an unfinished one waits for its end, and is not read again meanwhile),
        up to :data:`READ_BACK_BYTES` of each; past that, what :meth:`written` gives
        at the end."""
        found = []
        with self._lock:
            if not self._running:
                return []
            for file in self._files:
                limit = file.start + READ_BACK_BYTES - file.sent
                end = min(_size(file.reader, in_task=True), limit)
                if end <= file.checked:
                    continue
                with system_errors_ignored():  # (not a task's signal handler's: its own)
                    data = _read(file.reader, file.checked, end)
                    cut = data.rfind(b"\n") + 1
                    if cut:
                        head = _read(file.reader, file.start, file.checked)  # (its start)
                        found.append((file.stream, (head + data[:cut]).decode(
                            "utf-8", "surrogateescape")))
                        file.sent += len(head) + cut
                        file.start = file.checked = file.checked + cut
                    else:
                        file.checked = end
                    if end == limit and (file.sent >= READ_BACK_BYTES or not cut):
                        file.checked = _SPENT  # its MiB streamed: the rest at the end
        return found

    def written(self) -> list[tuple[int, str]]:
        """What the chunk wrote to each stream since :meth:`start` (or since
        :meth:`new_lines` took it), as text (bytes that are not UTF-8 as surrogate
        escapes, which the master writes back as bytes); nothing for a chunk that
        never started (given back, or one whose payload failed to load), so nothing
        is read back twice."""
        with self._lock:
            if not self._running:
                return []
            self._running = False
            found = []
            for file in self._files:
                end = _size(file.reader)
                start, file.start = file.start, max(file.start, end)
                file.checked = file.start  # (read: nothing grew past it)
                if end <= start:
                    continue
                # (its end: the last words)
                skipped = max(0, end - start - READ_BACK_BYTES)
                with contextlib.suppress(OSError):
                    data = _read(file.reader, start + skipped, end)
                    which = "next" if file.sent else "first"
                    note = (f"[sockpool: the {which} {skipped} bytes the chunk wrote below "
                            "Python are left out]\n" if skipped else "")
                    found.append((file.stream, note + data.decode("utf-8", "surrogateescape")))
            return found


def grew(file: BelowFile) -> bool:
    """Whether ``file`` grew past what was looked at: a hint, without the lock (an
    ``lseek``: a live relay asks before each line a task prints)."""
    try:
        return os.lseek(file.reader, 0, os.SEEK_END) > file.checked
    except OSError as error:
        if raised_by_a_handler(error):  # (in a task's print: the task's own)
            raise
        return False


def _read(reader: int, start: int, end: int) -> bytes:
    """The file's bytes from ``start`` to ``end`` (fewer if it was cut meanwhile)."""
    parts = []
    while start < end and (part := os.pread(reader, end - start, start)):
        parts.append(part)
        start += len(part)
    return b"".join(parts)


def _size(reader: int, in_task: bool = False) -> int:
    """The file's size now (its end, where the next write lands); 0 if it cannot be told.

    ``in_task``: asked from within a task's print, where an error a task's signal
    handler raised is the task's (not between tasks, where it would end the worker).
    """
    try:
        return os.lseek(reader, 0, os.SEEK_END)
    except OSError as error:
        if in_task and raised_by_a_handler(error):
            raise
        return 0
