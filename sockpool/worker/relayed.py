"""What a task's log records and warnings travel home as: plain values.

The master rebuilds a log record from its values and hands it to its logger
of the same name, and re-issues a warning under its own filters
(:mod:`sockpool.dispatch.output`); so nothing here may need the worker's
objects to be pickled: arguments are resolved, tracebacks are text.
"""

from __future__ import annotations

import logging
import sys
import types
from typing import Any


def record_values(record: logging.LogRecord) -> dict[str, Any]:
    """A log record as a dict of plain values the master rebuilds it from."""
    return {
        "name": record.name, "levelno": record.levelno, "levelname": record.levelname,
        "msg": record.getMessage(), "args": None, "pathname": record.pathname,
        "filename": record.filename, "module": record.module, "lineno": record.lineno,
        "funcName": record.funcName, "created": record.created, "msecs": record.msecs,
        "exc_text": _exception_text(record), "stack_info": record.stack_info,
        "process": record.process, "processName": record.processName,
        "thread": record.thread, "threadName": record.threadName,
        **_extra_fields(record),
    }


def module_of(filename: str) -> str | None:
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
