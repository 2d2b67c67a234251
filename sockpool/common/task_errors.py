"""A task's exception on its way from a worker to the master.

It travels as a plain pickle of strings plus, when it can be pickled *and*
unpickled again, the exception object itself.  R's parallel worker sends only
the message for the same reason: the condition's class may not exist on the
other side.  Here the master gets the real type whenever it can, and
RemoteError with the same text when it cannot.
"""

from __future__ import annotations

import io
import pickle
import threading
import traceback
from typing import Any

from ..errors import RemoteError, RemoteFrame, RemoteTraceback, add_note
from .caller import PACKAGE_DIR
from .codec import dumps_in_band, loads, pickler_class

#: The largest exception object sent as itself (its message and traceback travel
#: in any case): one holding more, a large array say, arrives as a RemoteError.
MAX_EXCEPTION_BYTES = 256 * 1024 * 1024


def pack_exception(exc: BaseException, serializer: str = "cloudpickle",
                   skip_frames: int = 0, max_bytes: int = MAX_EXCEPTION_BYTES) -> bytes:
    """Serialize a task's exception on the worker (never raises).

    The formatted traceback leaves out sockpool's own frames, except the
    innermost (where sockpool itself raised), as IPython leaves out frames that
    set ``__tracebackhide__``.  Its frames also travel as
    :data:`~sockpool.errors.RemoteFrame` tuples, so that the master can name
    notebook cells and show their lines.  The exception object itself goes along
    where it loads again and pickles to at most ``max_bytes``.
    """
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    frames: list[RemoteFrame] = []
    try:
        summary = traceback.TracebackException(type(exc), exc, tb)
        frames = _hide_own_frames(summary)
        tb_text = "".join(summary.format())
    except BaseException:  # formatting itself failed (a __str__ raising SystemExit, say)
        tb_text = f"{type(exc).__qualname__}: <unprintable>\n"
    try:
        message = str(exc)
    except BaseException:
        message = "<unprintable message>"
    blob = _exception_blob(exc, serializer)
    if blob is False:  # it pickles, but an exception in it cannot be made again from its args
        blob = _exception_blob(exc, serializer, rebuilt=True)
    if isinstance(blob, bytes) and len(blob) > max_bytes:
        blob = None  # (its RESULT must fit the master's frames, with the chunk's other values)
    type_name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return pickle.dumps((type_name, message, tb_text, blob or None, frames), protocol=5)


def _exception_blob(exc: BaseException, serializer: str, *, rebuilt: bool = False
                    ) -> bytes | bool | None:
    """``exc`` pickled (``rebuilt``: every exception in it, see :func:`_rebuilt`),
    where it unpickles again (the master will); False where it pickles but does not
    unpickle; None where it does not pickle (the master then raises a RemoteError)."""
    try:
        blob = _dumps_rebuilt(exc, serializer) if rebuilt else dumps_in_band(exc, serializer)
    except BaseException:  # (a __reduce__ raising SystemExit too: "never raises")
        return None
    try:
        pickle.loads(blob)  # only send what will rebuild on the other side
    except BaseException:
        return False
    return blob


def _rebuilt(exc: BaseException) -> tuple[Any, ...]:
    """An exception's reduction as its class, ``args`` and attributes, rebuilt without
    calling its ``__init__``: pickle calls it with ``args``, which fails for a class
    like ``Error(a, b)`` whose ``__init__`` passes ``f"{a}-{b}"`` on as its one arg."""
    # An OSError keeps these outside args and __dict__ (filename is never in args).
    os_fields = ((exc.errno, exc.strerror, exc.filename, exc.filename2)
                 if isinstance(exc, OSError) else None)
    return rebuild_exception, (type(exc), exc.args, vars(exc), os_fields)


def _dumps_rebuilt(exc: BaseException, serializer: str) -> bytes:
    """``exc`` pickled in band with each exception in it -- itself, an exception
    group's members, one it holds as an attribute -- whose own pickle does not load
    again :func:`_rebuilt` (the others, a SyntaxError's line number say, as themselves)."""
    base: Any = pickler_class(serializer)

    class RebuildingPickler(base):  # type: ignore[misc]
        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, BaseException) and not _loads_again(obj, serializer):
                return _rebuilt(obj)
            inherited = getattr(super(), "reducer_override", None)
            return NotImplemented if inherited is None else inherited(obj)

    stream = io.BytesIO()
    RebuildingPickler(stream, protocol=5).dump(exc)
    return stream.getvalue()


def _loads_again(exc: BaseException, serializer: str) -> bool:
    """Whether ``exc``'s own pickle loads again."""
    try:
        pickle.loads(dumps_in_band(exc, serializer))
    except BaseException:
        return False
    return True


def rebuild_exception(cls: type[BaseException], args: tuple[Any, ...],
                      attributes: dict[str, Any],
                      os_fields: tuple[Any, ...] | None = None) -> BaseException:
    """An exception of class ``cls`` with ``args`` and ``attributes`` (and an OSError's
    errno, strerror, filename and filename2), its ``__init__`` not called (see
    :func:`_rebuilt`)."""
    try:  # the class's own __new__ (OSError's derives errno and the rest from args)
        exc = cls.__new__(cls, *args)
    except Exception:
        exc = BaseException.__new__(cls)
    if os_fields is not None and isinstance(exc, OSError):
        for name, value in zip(("errno", "strerror", "filename", "filename2"), os_fields,
                               strict=True):
            if value is not None:  # None set is not "unset": str() would name it
                setattr(exc, name, value)
    exc.args = args
    exc.__dict__.update(attributes)
    return exc


def _hide_own_frames(summary: traceback.TracebackException) -> list[RemoteFrame]:
    """Drop sockpool's frames from each traceback of the chain but its innermost; the
    frames left, in every traceback of the chain."""
    frames: list[RemoteFrame] = []
    seen: set[int] = set()
    todo = [summary]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        stack = current.stack
        last = len(stack) - 1
        stack[:] = [frame for i, frame in enumerate(stack)
                    if i == last or not frame.filename.startswith(PACKAGE_DIR)]
        frames += [(frame.filename, frame.lineno, frame.name, frame.line or None)
                   for frame in stack]
        todo += [c for c in (current.__cause__, current.__context__) if c is not None]
        todo += getattr(current, "exceptions", None) or []  # an exception group's
    return frames


def raise_if_the_users(error: BaseException) -> None:
    """Raise ``error`` again if it is a KeyboardInterrupt or SystemExit raised in the
    main thread: the user's Ctrl-C, or a signal handler's ``sys.exit()``, landing while
    results were unpickled there (any other thread's is the unpickling's own)."""
    if isinstance(error, (KeyboardInterrupt, SystemExit)) and (
            threading.current_thread() is threading.main_thread()):
        raise error


def unpack_exception(packed: bytes | memoryview, note: str) -> BaseException:
    """Rebuild a task's exception in the master, with traceback and note attached."""
    type_name, message, tb_text, blob, *rest = pickle.loads(packed)
    frames: list[RemoteFrame] = rest[0] if rest else []
    exc: BaseException | None = None
    if blob is not None:
        try:
            candidate = loads(blob)
            if isinstance(candidate, BaseException):
                exc = candidate
        except BaseException as error:  # SystemExit from a class's unpickling too
            raise_if_the_users(error)
            exc = None
    if exc is None or isinstance(exc, (SystemExit, KeyboardInterrupt, GeneratorExit)):
        # A task's own SystemExit/KeyboardInterrupt must not stop the master.
        exc = RemoteError(type_name, message, tb_text, frames=frames)
    else:
        exc.__cause__ = RemoteTraceback(tb_text, frames=frames)
    add_note(exc, note)
    return exc
