"""A worker process: ``python -m sockpool.worker``.

It reads one JSON line from stdin (the master's address, the cluster token,
its worker id and timings; never on the command line), dials in to the master
and runs what it is sent until told to stop or until the master is gone.

Two threads, each the only user of its own zmq socket:

* the main thread owns the *data* connection: TASK, EXPORT and FORGET come
  in, RESULT goes out; it runs the tasks;
* the watchdog thread owns the *control* connection: it sends and checks
  heartbeats, takes CANCEL and SHUTDOWN, and, for local workers, watches stdin,
  whose end-of-file means the master process is gone.  It ends the process
  when the master falls silent, so a worker never outlives its master.

This module imports nothing host-only (no cluster, scheduler or launcher code).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import faulthandler
import importlib
import itertools
import json
import os
import signal
import socket
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from .._version import __version__
from ..common import codec, protocol, rng, shm
from ..common.protocol import Flag, Kind
from ..errors import RemoteError
from .relay import WorkerRelay

#: How long after SHUTDOWN the watchdog waits for the main thread before it
#: ends the process itself.
SHUTDOWN_GRACE = 1.0
#: Cancelled job ids remembered (a chunk of one may still be queued here).
CANCELLED_MEMORY = 1024
#: The holder of this worker's segments that the master maps.
MASTER = "master"


class _Interrupted(BaseException):
    """Raised in a running task when its job is cancelled or the worker stops."""


class _CachedFunction:
    """A task function loaded once per digest, and how exports reach its globals."""

    __slots__ = ("export_version", "fn", "namespace", "own_names")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.namespace = _dynamic_namespace(fn)
        # Names the function captured itself win over exported ones.
        self.own_names = frozenset(self.namespace) if self.namespace is not None else frozenset()
        self.export_version = -1


def _dynamic_namespace(fn: Any) -> dict[str, Any] | None:
    """The globals dict of a function shipped by value, or None.

    Exports go into the namespaces that cloudpickle rebuilt for functions
    shipped by value (those from ``__main__`` or a notebook), never into the
    namespace of a real, imported module.
    """
    target = getattr(fn, "func", fn)  # functools.partial
    namespace = getattr(target, "__globals__", None)
    if not isinstance(namespace, dict):
        return None
    module = sys.modules.get(str(namespace.get("__name__")))
    if module is not None and getattr(module, "__dict__", None) is namespace:
        return None
    return namespace


class Worker:
    """The state of one worker process; :func:`main` builds and runs it."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.worker_id: int = config["worker_id"]
        self.token: str = config["token"]
        self.heartbeat_interval: float = config["heartbeat_interval"]
        self.master_timeout: float = config["master_timeout"]
        self.serializer: str = config.get("serializer", "cloudpickle")
        self.watch_stdin: bool = config.get("watch_stdin", False)
        # The master disconnects a peer that sends a larger frame: refuse to send one.
        self.max_frame_bytes: int = config.get("max_frame_bytes", 1 << 62)
        self.relay: WorkerRelay | None = None
        if config.get("relay", "task") != "off":
            prefix = f"[worker {self.worker_id}] " if config.get("relay_prefix") else ""
            self.relay = WorkerRelay(self._send_output, int(config.get("log_level", 30)),
                                     live=config.get("relay") == "live", prefix=prefix)
        self._current: protocol.Header | None = None  # the chunk running now
        # Shared memory with the master, where we can map its probe segment (same machine).
        self.shared: shm.SegmentPool | None = None
        probe = config.get("shm_probe")
        if (probe and shm.available() and not shm.disabled_by_environment()
                and shm.check_probe(probe)):
            self.shared = shm.SegmentPool()
        # Serials of the master's segments whose mappings here are gone (any thread appends).
        self.released: deque[int] = deque()

        self.functions: dict[bytes, _CachedFunction] = {}
        self.exports: dict[str, Any] = {}
        self.export_version = 0
        self.main_module = types.ModuleType("__main__")
        self.main_module.__dict__["__builtins__"] = __builtins__

        # Shared between the threads; plain attributes are enough under the GIL.
        self.cancelled_jobs: dict[int, None] = {}  # an ordered set, oldest first
        self.running_job: int | None = None
        self.in_task = False
        self.stopping = False
        self.main_thread_id = threading.get_ident()

        self.context = zmq.Context()
        names = ("curve_server_key", "curve_public_key", "curve_secret_key")
        self._curve = {name: config[name].encode() for name in names if name in config}
        self.data = self._connect(config["address"], protocol.data_identity(self.worker_id))
        self.control = self._connect(config["address"], protocol.control_identity(self.worker_id))

    def _connect(self, address: str, identity: bytes) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, identity)
        if self._curve:  # CURVE: the keys this worker was issued, over its stdin
            sock.curve_serverkey = self._curve["curve_server_key"]
            sock.curve_publickey = self._curve["curve_public_key"]
            sock.curve_secretkey = self._curve["curve_secret_key"]
        sock.setsockopt(zmq.LINGER, 1000)
        if address.startswith("tcp://["):  # an IPv6 master
            sock.setsockopt(zmq.IPV6, 1)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(address)
        return sock

    def hello(self) -> bytes:
        info = {
            "token": self.token,
            "worker_id": self.worker_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "python": ".".join(map(str, sys.version_info[:3])),
            "version": __version__,
            "shared_memory": self.shared.probe() if self.shared is not None else None,
        }
        return protocol.header(Kind.HELLO) + json.dumps(info).encode()

    # -- main thread -------------------------------------------------------------

    def serve(self) -> None:
        """Run tasks until SHUTDOWN (the main thread's loop)."""
        self.data.send(self.hello())
        if self.serializer in ("cloudpickle", "dill"):
            # Functions from a script arrive pickled by it; loading the first one
            # would import it (about 10 ms).  Import it now, while the master
            # waits for the other workers, instead of during the first map.
            threading.Thread(target=_preload, args=(self.serializer,), name="sockpool-preload",
                             daemon=True).start()
        while not self.stopping:
            frames = protocol.recv_message(self.data)
            try:
                head, body = protocol.parse(frames[0])
            except protocol.ProtocolError:
                continue
            buffers = [frame.buffer for frame in frames[1:]]
            if head.kind is Kind.TASK:
                reply = self.run_chunk(head, body, buffers)
                if self.released:  # first, so the master may reuse them once it has the result
                    self._send_releases()
                self.data.send_multipart(reply, copy=protocol.send_copies(reply))
            elif head.kind is Kind.RELEASE and self.shared is not None:
                self.shared.release(protocol.parse_release(body), MASTER)
            elif head.kind is Kind.EXPORT:
                self.set_exports(codec.loads(body, buffers))
            elif head.kind is Kind.FORGET:
                self.functions.pop(bytes(body), None)
            elif head.kind is Kind.SHUTDOWN:
                break

    def _send_releases(self) -> None:
        serials = []
        while self.released:
            serials.append(self.released.popleft())
        self.data.send(protocol.release_message(serials))

    def set_exports(self, values: dict[str, Any]) -> None:
        self.exports.update(values)
        self.main_module.__dict__.update(values)
        self.export_version += 1

    def load_function(self, digest: bytes, payload: Any, buffers: list[Any]) -> _CachedFunction:
        if len(payload):
            self.functions[digest] = _CachedFunction(codec.loads(payload, buffers))
        entry = self.functions[digest]
        if entry.namespace is not None and entry.export_version != self.export_version:
            for name, value in self.exports.items():
                if name not in entry.own_names:
                    entry.namespace[name] = value
            entry.export_version = self.export_version
        return entry

    def run_chunk(self, head: protocol.Header, body: memoryview, buffers: list[Any]) -> list[Any]:
        """Run one chunk of tasks and build its RESULT message."""
        values: list[Any] = []
        errors: list[tuple[int, bytes]] = []
        flags = head.flags
        try:
            task = protocol.parse_task(body)
            split = task.fn_buffers
            fn = self.load_function(task.digest, task.fn_inband, buffers[:split]).fn
            arguments = buffers[split:]
            if flags & Flag.SHARED:
                arguments = shm.open_shared(bytes(arguments[0]), self.released.append)
            items = codec.loads(task.arguments, arguments)
            del arguments
        except BaseException as exc:  # a payload that cannot be loaded here
            errors.append((0, codec.pack_exception(exc, self.serializer)))
            return self._result(head, Flag.NONE, [], errors)

        if head.job in self.cancelled_jobs:
            return self._result(head, Flag.CANCELLED, [], [])
        self._current = head
        if self.relay is not None:
            self.relay.start()
        self.running_job = head.job
        self.in_task = True
        started = time.perf_counter()
        try:
            if task.seed is not None:
                self._run_seeded(fn, items, values, errors, flags, task)
            elif flags & Flag.CALL:
                self._run_call(fn, items, values, errors)
            else:
                self._run_map(fn, items, values, errors, bool(flags & Flag.MAP_STAR),
                              bool(flags & Flag.STOP_ON_ERROR))
        except _Interrupted:
            self.in_task = False
            return self._result(head, Flag.CANCELLED, [], [])
        finally:
            self.in_task = False
            self.running_job = None
        return self._result(head, Flag.NONE, values, errors, time.perf_counter() - started)

    def _run_call(self, fn: Callable[..., Any], call: Any, values: list[Any],
                  errors: list[tuple[int, bytes]]) -> None:
        args, kwargs = call
        try:
            values.append(fn(*args, **kwargs))
        except _Interrupted:
            raise
        except BaseException as exc:
            values.append(None)
            errors.append((0, codec.pack_exception(exc, self.serializer, skip_frames=1)))

    def _run_map(self, fn: Callable[..., Any], items: list[Any], values: list[Any],
                 errors: list[tuple[int, bytes]], star: bool, stop_on_error: bool) -> None:
        # list.extend keeps what map() produced before an exception, so the
        # failing index is len(values); the loop resumes after it.
        call_all = itertools.starmap if star else map
        while len(values) < len(items):
            try:
                values.extend(call_all(fn, itertools.islice(items, len(values), None)))
            except _Interrupted:
                raise
            except BaseException as exc:
                errors.append((len(values), codec.pack_exception(exc, self.serializer, 1)))
                values.append(None)
                if stop_on_error:
                    return

    def _send_output(self, batch: Any) -> None:
        """Send what the running chunk wrote so far (main thread, from a task's write)."""
        head = self._current
        if head is None:
            return
        prefix = protocol.header(Kind.OUTPUT, 0, head.job, head.ident)
        frames = codec.dumps(batch, self.serializer, prefix=prefix, master=False)
        self.data.send_multipart(frames, copy=protocol.send_copies(frames))

    def _run_seeded(self, fn: Callable[..., Any], items: Any, values: list[Any],
                    errors: list[tuple[int, bytes]], flags: int, task: protocol.Task) -> None:
        """Run tasks one by one, each from its own stream (see rng.py)."""
        assert task.seed is not None
        entropy, key = task.seed
        calls = [items] if flags & Flag.CALL else items
        try:
            for offset, item in enumerate(calls):
                rng.seed_task(entropy, (*key, task.first_index + offset))
                try:
                    if flags & Flag.CALL:
                        values.append(fn(*item[0], **item[1]))
                    else:
                        values.append(fn(*item) if flags & Flag.MAP_STAR else fn(item))
                except _Interrupted:
                    raise
                except BaseException as exc:
                    errors.append((offset, codec.pack_exception(exc, self.serializer, 1)))
                    values.append(None)
                    if flags & (Flag.STOP_ON_ERROR | Flag.CALL):
                        return
        finally:
            rng.clear()

    def _result(self, head: protocol.Header, flags: Flag, values: list[Any],
                errors: list[tuple[int, bytes]], seconds: float = 0.0) -> list[Any]:
        prefix = protocol.header(Kind.RESULT, flags, head.job, head.ident)
        batch = self.relay.finish() if self.relay is not None else None
        self._current = None
        outcome = (values, errors, seconds, batch)
        store = self.shared.store if self.shared is not None else None
        try:
            frames = codec.dumps(outcome, self.serializer, prefix=prefix, master=False,
                                         store=store)
        except Exception:
            outcome = (*self._replace_unpicklable(values, errors), seconds, batch)
            frames = codec.dumps(outcome, self.serializer, prefix=prefix, master=False,
                                         store=store)
        if self.shared is not None and isinstance(frames[-1], shm.SharedFrame):
            frames[0] = protocol.with_flags(frames[0], Flag.SHARED)
            self.shared.lend(frames[-1], MASTER)
        largest = max(memoryview(frame).nbytes for frame in frames)
        if largest > self.max_frame_bytes:
            problem = RemoteError("ValueError", f"the results of this chunk need a frame of "
                                  f"{largest} bytes, more than the cluster's max_message_size "
                                  f"({self.max_frame_bytes} bytes)")
            errors = [(0, codec.pack_exception(problem, self.serializer))]
            frames = codec.dumps(([], errors, seconds, batch), self.serializer,
                                         prefix=prefix, master=False)
        return frames

    def _replace_unpicklable(self, values: list[Any], errors: list[tuple[int, bytes]]
                             ) -> tuple[list[Any], list[tuple[int, bytes]]]:
        """Fail each task whose result cannot be serialized, keep the others."""
        values = list(values)
        errors = list(errors)
        while (found := codec.first_unpicklable(values, self.serializer)) is not None:
            index, error = found
            problem = RemoteError(
                codec.describe(error),
                f"the result of this task, a {codec.describe(values[index])}, "
                f"cannot be serialized: {error}",
            )
            values[index] = None
            errors.append((index, codec.pack_exception(problem, self.serializer)))
        return values, errors

    # -- watchdog thread ---------------------------------------------------------

    def watch(self) -> None:
        """Heartbeats, cancellation and the master-gone check (the watchdog loop)."""
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        if self.watch_stdin:
            poller.register(sys.stdin.fileno(), zmq.POLLIN)
        self.control.send(self.hello())
        heartbeat = protocol.header(Kind.HEARTBEAT)
        last_heard = last_sent = time.monotonic()
        shutdown_at: float | None = None
        while True:
            timeout = max(0.0, min(last_sent + self.heartbeat_interval,
                                   shutdown_at or float("inf")) - time.monotonic())
            for source, _ in poller.poll(int(timeout * 1000)):
                if source is self.control:
                    while self.control.poll(0):
                        last_heard = time.monotonic()
                        if self._on_control(self.control.recv()) and shutdown_at is None:
                            shutdown_at = time.monotonic() + SHUTDOWN_GRACE
                elif not os.read(sys.stdin.fileno(), 4096):
                    _die("the master process is gone (stdin closed)")
            now = time.monotonic()
            if now - last_sent >= self.heartbeat_interval:
                self.control.send(heartbeat)
                last_sent = now
                if self.shared is not None:
                    self.shared.trim(now)
                    shm.trim_mappings(now)
            if now - last_heard > self.master_timeout:
                _die(f"no word from the master for {now - last_heard:.1f} s")
            if shutdown_at is not None and now >= shutdown_at:
                _die(None)

    def _on_control(self, frame: bytes) -> bool:
        """Handle one control message; True when it asks the worker to stop."""
        try:
            head, _ = protocol.parse(frame)
        except protocol.ProtocolError:
            return False
        if head.kind is Kind.CANCEL:
            self.cancelled_jobs[head.job] = None
            if len(self.cancelled_jobs) > CANCELLED_MEMORY:
                del self.cancelled_jobs[next(iter(self.cancelled_jobs))]
            if self.in_task and self.running_job == head.job:
                signal.pthread_kill(self.main_thread_id, signal.SIGINT)
        elif head.kind is Kind.SHUTDOWN:
            self.stopping = True
            if self.in_task:
                signal.pthread_kill(self.main_thread_id, signal.SIGINT)
            return True
        return False

    def on_sigint(self, signum: int, frame: types.FrameType | None) -> None:
        """SIGINT from the watchdog interrupts a cancelled task; otherwise ignored."""
        if self.in_task and (self.stopping or self.running_job in self.cancelled_jobs):
            raise _Interrupted


def _preload(module: str) -> None:
    """Import a module ahead of need; a failure is left to the import that needs it."""
    with contextlib.suppress(Exception):
        importlib.import_module(module)


def _die(reason: str | None) -> None:
    """End the process now, from any thread."""
    if reason:  # straight to the process's stderr: the relay may be holding sys.stderr
        os.write(2, f"sockpool worker {os.getpid()}: exiting: {reason}\n".encode())
    os._exit(0 if reason is None else 1)


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
        _die("the master process is gone")


def _read_config(argv: list[str]) -> str:
    """The configuration line: from stdin, or ``--config-file PATH`` (read once, then removed).

    A batch job has no stdin from the master: its launcher leaves the line in a
    private file (mode 0600) that only this worker reads.
    """
    if len(argv) == 2 and argv[0] == "--config-file":
        try:
            with open(argv[1]) as stream:
                line = stream.readline()
        except OSError as exc:
            print(f"sockpool worker: cannot read its configuration: {exc}", file=sys.stderr)
            return ""
        with contextlib.suppress(OSError):
            os.unlink(argv[1])  # its keys are for this worker alone
        return line
    return sys.stdin.readline()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m sockpool.worker [--config-file PATH]``."""
    line = _read_config(sys.argv[1:] if argv is None else argv)
    if not line:
        print("sockpool worker: no configuration on stdin", file=sys.stderr)
        return 2
    config = json.loads(line)
    # A task that crashes the interpreter (a segfault in C code) still leaves its
    # Python traceback in the worker's stderr, which the master quotes.
    faulthandler.enable(all_threads=False)
    if config.get("parent_pid"):
        _set_parent_death_signal(config["parent_pid"])
    for entry in reversed(config.get("sys_path", [])):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    worker = Worker(config)
    # Tasks see a clean __main__ (exports land there), not this module.
    sys.modules["__main__"] = worker.main_module
    if worker.relay is not None:
        worker.relay.install()
    signal.signal(signal.SIGINT, worker.on_sigint)
    threading.Thread(target=worker.watch, name="sockpool-watchdog", daemon=True).start()
    worker.serve()
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(0)


