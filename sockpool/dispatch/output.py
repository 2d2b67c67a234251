"""Worker output written out in the master: the master's half of the relay.

Output is written to the master's ``sys.stdout`` and ``sys.stderr`` as they are
when it is emitted (a notebook's cell, pytest's capture, a redirect), warnings
are re-issued with ``warnings.warn_explicit`` (category, message, file, line)
so the master's filters apply, and log records go to the master's logger of the
same name, whose level and handlers decide.  The worker's half, which collects
what a task writes, is :mod:`sockpool.worker.relay`.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import sys
import warnings
from typing import Any, TextIO

from ..common.forking import fork_safe_lock
from ..common.protocol import RECORD, STDERR, STDOUT, WARNING, Batch
from ..errors import add_note

_registries: dict[str, dict[Any, Any]] = {}
_emit_lock = fork_safe_lock()


def emit(batches: list[Batch]) -> None:
    """Write batches out in the master, each event in the order the task made it
    (see the module docstring).

    A tqdm progress bar drawn on the terminal is cleared first and drawn again
    after, below the output, so that no line is shared by the two.
    """
    if not any(batches):
        return  # the common case: the chunk wrote nothing
    raised: Exception | None = None
    # One block at a time, never interleaved with another's.  The bars' lock is
    # taken second: a bar's update never waits for _emit_lock.
    with _emit_lock, _bars_set_aside():
        for batch in batches:
            for kind, value in batch:
                if kind == STDOUT:
                    _write(sys.stdout, value)
                elif kind == STDERR:
                    _write(sys.stderr, value)
                elif kind == WARNING:
                    try:
                        _warn(*value)
                    except Exception as exc:  # an "error" filter: raised once all is out
                        raised = raised or exc
                elif kind == RECORD:
                    logger = logging.getLogger(value["name"])
                    if logger.isEnabledFor(value["levelno"]):
                        logger.handle(logging.makeLogRecord(value))
    if raised is not None:
        add_note(raised, "sockpool: a task's warning, which this process's warning filters "
                         "made an error as it was issued here, after the task ran (a worker "
                         "records every warning, and your filters decide here)")
        raise raised


def _warn(message: Any, category: type[Warning], filename: str, lineno: int,
          module: str | None) -> None:
    # A registry per file makes "default"/"once" filters behave as they would if
    # the code had run here.
    registry = _registries.setdefault(filename, {})
    warnings.warn_explicit(message, category, filename, lineno,
                           module=module or _module_of(filename), registry=registry)


def _bars_set_aside() -> contextlib.AbstractContextManager[Any]:
    """tqdm's own "write around the bars" mode while any tqdm bar exists (any bar,
    a user's own too); nothing to do, and tqdm not even imported, otherwise."""
    std = sys.modules.get("tqdm.std")
    bar_class = getattr(std, "tqdm", None)
    if bar_class is None or not getattr(bar_class, "_instances", None):
        return contextlib.nullcontext()
    manager: contextlib.AbstractContextManager[Any] = bar_class.external_write_mode()
    return manager


def hold(held: list[Batch], batch: Batch, live: bool) -> None:
    """Keep what a running chunk wrote in ``held``, for its end; ``live``: write its
    text and log records now (the I/O thread), in the order the task made them.

    Its warnings wait for the caller, where your filters and ``catch_warnings``
    (``pytest.warns``) apply and ``-W error`` raises.  So does what the I/O thread
    cannot write (text to a closed pipe, ``| head``; a log handler that raises),
    and all that comes after it: the caller's writing raises as the task's own
    line would have.
    """
    if live and not any(kind != WARNING for earlier in held for kind, _ in earlier):
        waiting: Batch = []
        for written, event in enumerate(batch):
            if event[0] == WARNING:
                waiting.append(event)
                continue
            try:
                emit([[event]])
            except Exception:  # (ValueError: a stream the user closed)
                waiting += batch[written:]
                break
        batch = waiting
    held.append(batch)


def _write(stream: TextIO | None, text: str) -> None:
    if stream is None:  # sys.stdout = None (pythonw, fd 1 closed): print() writes nothing
        return
    try:
        stream.write(text)
    except UnicodeEncodeError:
        _write_encoded(stream, text)
    stream.flush()


def _bytes_or_escapes(error: UnicodeError) -> tuple[bytes, int]:
    """The encoding error handler of :func:`_write_encoded`: a surrogate escape (a
    byte a task wrote that was not UTF-8) as that byte, any other character the
    encoding refuses as a backslash escape; each character on its own, so that one
    of the second kind leaves the bytes beside it as they were."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    out = bytearray()
    for char in error.object[error.start:error.end]:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(code - 0xDC00)
        else:
            out += char.encode("ascii", "backslashreplace")
    return bytes(out), error.end


_BYTES_OR_ESCAPES = "sockpool.bytes-or-escapes"
codecs.register_error(_BYTES_OR_ESCAPES, _bytes_or_escapes)


def _write_encoded(stream: TextIO, text: str) -> None:
    """Text the stream's encoding refused: bytes a task wrote that were not UTF-8
    (``sys.stdout.buffer.write``, which reach here as surrogate escapes) go to its
    binary side as those bytes; a character it cannot encode, as an escape."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    buffer = getattr(stream, "buffer", None)
    try:
        data = text.encode(encoding, _BYTES_OR_ESCAPES)
    except UnicodeEncodeError:  # (UTF-16 and -32 take no bytes from a handler)
        data = text.encode(encoding, "backslashreplace")
    if buffer is None:
        stream.write(data.decode(encoding, "backslashreplace"))
        return
    stream.flush()
    buffer.write(data)


def lines_ended(batches: list[Batch]) -> list[Batch]:
    """``batches``, with a newline after the last text of each stream that lacks one:
    the output of a task cut short by its worker's death (``print`` writes its text
    and its newline apart) must not run into the next task's line."""
    last: dict[int, tuple[int, int]] = {}  # stream: where its last text is
    for at, batch in enumerate(batches):
        for position, (kind, value) in enumerate(batch):
            if kind in (STDOUT, STDERR) and value:
                last[kind] = (at, position)
    ended = list(batches)
    for at, position in last.values():
        kind, text = ended[at][position]
        if not text.endswith("\n"):
            ended[at] = [*ended[at][:position], (kind, text + "\n"), *ended[at][position + 1:]]
    return ended


def tail(batches: list[Batch], max_lines: int = 20) -> str:
    """The last lines of output in ``batches`` (for a lost worker's error message)."""
    text = "".join(value for batch in batches for kind, value in batch
                   if kind in (STDOUT, STDERR))
    return "\n".join(text.splitlines()[-max_lines:])


#: Module names found by _module_of, by file (a warning in a loop looks up one file).
_module_names: dict[str, str] = {}


def _module_of(filename: str) -> str:
    """The name of the module loaded here from ``filename`` (``"__main__"`` for your
    script), as a warning raised here would carry for ``module=`` filters; else the
    name ``warn_explicit`` itself derives."""
    if filename in _module_names:
        return _module_names[filename]
    for name, module in list(sys.modules.items()):
        if getattr(module, "__file__", None) == filename:
            _module_names[filename] = name
            return name
    return filename[:-3] if filename.endswith(".py") else filename or "<unknown>"
