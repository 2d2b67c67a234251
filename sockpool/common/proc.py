"""Small process helpers: exit statuses in words, the tail of a worker's log."""

from __future__ import annotations

import os
import signal

#: How much of a worker's stderr error messages quote.
TAIL_LINES = 20
TAIL_BYTES = 4096


def describe_exit(returncode: int | None) -> str:
    """``-9`` -> ``"killed by SIGKILL"``, ``3`` -> ``"exit code 3"``."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit code {returncode}"


def read_tail(path: str | os.PathLike[str], max_lines: int = TAIL_LINES) -> str:
    """The last lines of a file ("" when it is missing or empty)."""
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            size = stream.tell()
            stream.seek(max(0, size - TAIL_BYTES))
            data = stream.read()
    except OSError:
        return ""
    lines = data.decode(errors="replace").splitlines()
    return "\n".join(lines[-max_lines:])
