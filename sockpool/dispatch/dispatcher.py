"""The master's I/O thread: the only code that touches the master's zmq socket.

One loop polls the ROUTER socket, a wake-up pipe that API threads write to
after queueing a command, and a pidfd per local worker (readable when it
exits).  Each turn it runs queued commands, reads every waiting message, deals
with workers that ended, hands chunks to workers with free credit and sends
heartbeats.  API threads reach it only through :meth:`Dispatcher.call_soon`.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import os
import secrets
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import zmq

from ..common import codec, protocol, shm
from ..common.protocol import Flag, Kind
from ..common.shm import SegmentPool, SharedFrame
from ..errors import ClusterClosedError, LaunchError, SockpoolError
from ..launchers.base import Launcher
from . import output as relay
from .jobs import Chunk, FutureJob, Job, Payload, TaskFailure, decode_outcome
from .pool import TIMEOUT_SLACK, WorkerTending
from .records import (
    READY,
    SETUP,
    STARTING,
    STOPPED,
    WorkerRecord,
)
from .scheduler import Scheduler
from .transport import DEFAULT_MAX_FRAME_BYTES, MasterSocket

logger = logging.getLogger("sockpool")

#: Bytes of function payloads a worker may cache before the oldest are dropped.
FUNCTION_CACHE_BYTES = 512 * 1024 * 1024
#: Messages read per loop turn before commands get a look-in again.
RECV_BATCH = 512


class Dispatcher(WorkerTending):
    """Owns the socket, the scheduler and the worker records; runs the I/O thread."""

    def __init__(
        self,
        *,
        n_workers: int,
        launcher: Launcher,
        serializer: str,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        master_timeout: float | None,
        connect_timeout: float,
        prefetch: int,
        setup_job: Job | None,
        relay_mode: str,
        relay_prefix: bool,
        log_level: int,
        transport: str = "ipc",
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self.target = n_workers
        self.launcher = launcher
        self.serializer = serializer
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.master_timeout = master_timeout
        self.connect_timeout = connect_timeout
        self.setup_job = setup_job
        self.relay_live = relay_mode == "live"
        self._relay_config = {"relay": relay_mode, "relay_prefix": relay_prefix,
                              "log_level": log_level}
        self.scheduler = Scheduler(prefetch)
        self.token = secrets.token_hex(32)

        self.max_frame_bytes = max_frame_bytes
        self.master = MasterSocket(launcher.transport or transport, max_frame_bytes,
                                   launcher.listen)
        self.launcher.prepare(self.master.workdir, self.master.bind_tcp)
        # Large buffers to and from workers on this machine go through shared memory.
        self.shared = SegmentPool() if shm.available() else None
        self.any_shared = False  # some worker maps our segments
        self._releases: deque[tuple[int, int]] = deque()  # (worker id, serial), any thread
        self.workers: dict[int, WorkerRecord] = {}
        self.exports: list[list[Any]] = []
        self._next_worker_id = 0
        self._failed_replacements = 0

        self._commands: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_pending = False
        # Held while queueing a command and while closing, so no command is
        # queued (or wake-up byte written) once the pipe is closed.
        self._wake_lock = threading.Lock()
        self._exit_fds: set[int] = set()  # pidfds: readable when a worker process ends
        self._next_check = 0.0  # when the I/O loop next checks processes and deadlines

        self.state_changed = threading.Condition()
        self.n_ready = 0
        self.startup_errors: list[LaunchError] = []
        self.broken: BaseException | None = None
        self.closing = False
        self._stop_started: float | None = None
        self._finish_then_close = False
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sockpool-io", daemon=True)

    # -- API side (any thread) -------------------------------------------------------

    def start(self) -> None:
        """Start the I/O thread; it launches the workers."""
        self._thread.start()

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the I/O thread.

        Raises:
            ClusterClosedError: the I/O thread has ended.
        """
        with self._wake_lock:
            if self.closed.is_set():
                raise ClusterClosedError("the cluster is closed")
            self._commands.append((fn, args))
            if not self._wake_pending:
                self._wake_pending = True
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_w, b"\0")

    def ask(self, fn: Callable[..., Any], *args: Any, timeout: float = 10.0) -> Any:
        """Run ``fn(*args)`` on the I/O thread and return its result."""
        answer: Future[Any] = Future()

        def run() -> None:
            try:
                answer.set_result(fn(*args))
            except BaseException as exc:
                answer.set_exception(exc)

        self.call_soon(run)
        return answer.result(timeout)

    def wait_for_workers(self, count: int, timeout: float, minimum: int | None = None) -> None:
        """Block until ``count`` workers are ready; raise LaunchError on failure.

        With ``minimum``, failures are accepted once every worker has either
        started or failed (or the time is up) and at least ``minimum`` are ready;
        a warning then names what failed.
        """
        deadline = time.monotonic() + timeout
        with self.state_changed:
            while self.n_ready < count:
                if self.broken is not None and not self.startup_errors:
                    raise LaunchError(f"the cluster failed while starting: {self.broken}")
                remaining = deadline - time.monotonic()
                settled = remaining <= 0 or self.broken is not None or not any(
                    r.state in (STARTING, SETUP) for r in self.workers.values())
                if self.startup_errors and (minimum is None or settled):
                    if minimum is not None and self.n_ready >= minimum:
                        self._warn_partial(count)
                        return
                    raise self.startup_errors[0]
                if remaining <= 0:
                    if minimum is not None and self.n_ready >= minimum:
                        self._warn_partial(count)
                        return
                    waiting = [r for r in self.workers.values() if r.state in (STARTING, SETUP)]
                    detail = "; ".join(
                        f"worker {r.id} (pid {r.pid} on {r.host}): "
                        + (r.process.status_note() or r.state)
                        + (f", stderr: {tail}" if (tail := r.process.stderr_tail()) else "")
                        for r in waiting)
                    raise LaunchError(
                        f"only {self.n_ready} of {count} workers connected within "
                        f"{timeout:g} s (connect_timeout); still waiting for: {detail}",
                        command=waiting[0].process.command if waiting else None)
                self.state_changed.wait(min(remaining, 0.5))

    def _warn_partial(self, count: int) -> None:
        reasons = list(dict.fromkeys(str(error).split("\n", 1)[0]
                                     for error in self.startup_errors))
        reasons = reasons or ["some workers did not connect in time"]
        warnings.warn(f"the cluster started with {self.n_ready} of {count} workers "
                      f"(min_workers=): {'; '.join(reasons)}", UserWarning, stacklevel=4)

    def close(self, *, cancel: bool, wait: bool, timeout: float | None = 10.0) -> None:
        """Stop: cancel what is pending (or finish it first), then end every worker."""
        if not self.closed.is_set():
            with contextlib.suppress(ClusterClosedError):
                self.call_soon(self._begin_close, cancel)
        if wait and self._thread.is_alive() and threading.current_thread() is not self._thread:
            self.closed.wait(timeout)
            self._thread.join(1.0)  # its last steps after closed is set: then it is gone

    # -- the I/O thread --------------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.master.socket, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        self._poller = poller
        try:
            for _ in range(self.target):
                self._launch()
            self.launcher.launched()
            sock, wake = self.master.socket, self._wake_r
            self._next_check = 0.0
            next_heartbeat = time.monotonic() + self.heartbeat_interval
            while True:
                timeout = min(next_heartbeat, self._next_check) - time.monotonic()
                exited = False
                for source, _ in poller.poll(max(0, math.ceil(timeout * 1000))):
                    if source is sock:
                        self._receive()
                    elif source == wake:
                        self._drain_wake()
                    else:
                        exited = True  # a pidfd: a worker process ended
                if self._commands:
                    self._run_commands()
                now = time.monotonic()
                if exited or now >= self._next_check:
                    self._next_check = now + self._check_processes(now)
                if now >= next_heartbeat:
                    self._heartbeat(now)
                    next_heartbeat = now + self.heartbeat_interval
                if self.closing:
                    if self._stop_step(now):
                        break
                elif self.scheduler.has_waiting():
                    self._assign()
        except BaseException as exc:  # the loop itself failed: nothing may hang on it
            self.broken = exc
            self._abandon_all(SockpoolError(f"the cluster's I/O thread failed: {exc!r}"))
        finally:
            self._teardown()

    def _drain_wake(self) -> None:
        # Cleared before the commands are read: a command queued after this
        # point writes a new wake-up byte, so none is missed.
        self._wake_pending = False
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)

    def _run_commands(self) -> None:
        if self._releases:
            self._send_releases()
        while self._commands:
            fn, args = self._commands.popleft()
            fn(*args)

    # -- messages ------------------------------------------------------------------------

    def _receive(self) -> None:
        # The poller said a message is waiting, so the first read skips the check.
        for turn in range(RECV_BATCH):
            frames = self.master.receive(check=turn > 0)
            if frames is None:
                return
            self._on_message_safely(frames)
            del frames
            if self._releases:  # a result decoded here may have been dropped already
                self._send_releases()

    def _on_message_safely(self, frames: list[Any]) -> None:
        """Handle one message; whatever is wrong with it, drop it and go on."""
        try:
            self._on_message(frames)
        except protocol.ProtocolError as exc:  # malformed: dropped, never acted on
            logger.debug("sockpool: dropped a malformed message: %s", exc)
        except Exception:  # one bad message must not take the cluster down
            logger.exception("sockpool: dropped a message that could not be handled")

    def _on_message(self, frames: list[Any]) -> None:
        if len(frames) < 2:
            raise protocol.ProtocolError("message without a header")
        prefix, worker_id = protocol.parse_identity(frames[0])
        record = self.workers.get(worker_id)
        if record is None or not record.alive:
            return
        head, body = protocol.parse(frames[1])
        if head.kind is Kind.HELLO:
            self._on_hello(record, prefix, body)
            return
        if record.state == STARTING:
            return  # nothing counts before the worker proved it holds the token
        record.last_heard = time.monotonic()
        if prefix != protocol.DATA_PREFIX:
            return
        if head.kind is Kind.RESULT:
            try:
                payload = self._payload(record, head, body, frames)
            except shm.SharedMemoryError as exc:  # it ended just after sending, say
                record.process.kill()
                self._lost(record, f"its result could not be read from shared memory: {exc}")
                return
            self._on_result(record, head, payload)
        elif head.kind is Kind.OUTPUT:
            self._on_output(record, head, (body, [frame.buffer for frame in frames[2:]]))
        elif head.kind is Kind.RELEASE and self.shared is not None:
            self.shared.release(protocol.parse_release(body), record.id)

    def _payload(self, record: WorkerRecord, head: protocol.Header, body: memoryview,
                 frames: list[Any]) -> Payload:
        """A RESULT's body and buffers: its frames, or views of the worker's segment."""
        if not head.flags & Flag.SHARED:
            return body, [frame.buffer for frame in frames[2:]]
        if not record.shared_memory or len(frames) != 3:
            raise protocol.ProtocolError("a shared-memory RESULT from a worker without it")
        return body, shm.open_shared(bytes(frames[2].buffer), self._releaser(record.id))

    def _releaser(self, worker_id: int) -> Callable[[int], None]:
        """What a transfer from a worker's segment calls when its arrays die: RELEASE it.

        Releases are queued and sent before the I/O thread runs any command, so
        a worker hears of a result the caller dropped before it gets the
        caller's next task, and can reuse the segment for that task's result.
        """
        dispatcher = weakref.ref(self)  # a result kept for long must not keep the cluster

        def release(serial: int) -> None:
            this = dispatcher()
            if this is None:
                return
            this._releases.append((worker_id, serial))
            if threading.current_thread() is not this._thread:
                with contextlib.suppress(ClusterClosedError):
                    this.call_soon(this._send_releases)

        return release

    def _send_releases(self) -> None:
        by_worker: dict[int, list[int]] = {}
        while self._releases:
            worker_id, serial = self._releases.popleft()
            by_worker.setdefault(worker_id, []).append(serial)
        for worker_id, serials in by_worker.items():
            record = self.workers.get(worker_id)
            if record is not None and record.alive:
                self.master.send(record.data_identity, [protocol.release_message(serials)])

    def _on_hello(self, record: WorkerRecord, prefix: bytes, body: memoryview) -> None:
        try:
            info = json.loads(bytes(body))
            token_ok = hmac.compare_digest(str(info["token"]), self.token)
        except (ValueError, KeyError, TypeError) as exc:
            raise protocol.ProtocolError("malformed HELLO") from exc
        if not token_ok or info.get("worker_id") != record.id:
            return
        record.last_heard = time.monotonic()
        if prefix == protocol.CONTROL_PREFIX:
            record.control_ready = True
            return
        if record.state != STARTING:
            return
        record.pid = int(info.get("pid", record.pid))
        probe = info.get("shared_memory")
        if self.shared is not None and isinstance(probe, str) and shm.check_probe(probe):
            record.shared_memory = self.any_shared = True
        if not record.process.host_known:
            record.host = str(info.get("host", record.host))
        for frames in self.exports:
            self.master.send(record.data_identity, frames)
        if self.setup_job is not None:
            record.state = SETUP
            record.setup_chunk = self.setup_job.chunk(0, 1, codec.dumps(((), {})))
            self._send_chunk(record, record.setup_chunk)
        else:
            self._ready(record)

    def _ready(self, record: WorkerRecord) -> None:
        record.state = READY
        self._failed_replacements = 0
        self.scheduler.add_worker(record.id)
        with self.state_changed:
            self.n_ready += 1
            self.state_changed.notify_all()

    def _on_result(self, record: WorkerRecord, head: protocol.Header,
                   payload: tuple[memoryview, list[Any]]) -> None:
        if record.setup_chunk is not None and head.ident == record.setup_chunk.id:
            self._on_setup_result(record, payload)
            return
        chunk = self.scheduler.complete(record.id, head.ident)
        if chunk is None:
            return
        if len(chunk.frames) == 2 and isinstance(chunk.frames[1], SharedFrame):
            chunk.frames = chunk.frames[:1]  # done: its segment is free once the worker let go
        if head.flags & Flag.CANCELLED:
            chunk.job.dropped(chunk)
        else:
            chunk.job.deliver(chunk, record.label, payload)

    def _on_output(self, record: WorkerRecord, head: protocol.Header,
                   payload: tuple[memoryview, list[Any]]) -> None:
        """What a running chunk wrote so far: write it now (live) or hold it for its end."""
        chunk = self.scheduler.in_flight.get(record.id, {}).get(head.ident)
        if chunk is None and record.setup_chunk is not None and head.ident == record.setup_chunk.id:
            chunk = record.setup_chunk
        if chunk is None:
            return
        batch = codec.loads(*payload)
        if self.relay_live:
            text, rest = relay.split_text(batch)
            relay.emit([text])
            chunk.output.append(rest)
        else:
            chunk.output.append(batch)

    def _on_setup_result(self, record: WorkerRecord, payload: tuple[memoryview, list[Any]]
                         ) -> None:
        chunk = record.setup_chunk
        assert chunk is not None
        record.setup_chunk = None
        _, failures, _, output = decode_outcome(chunk, record.label, payload)
        try:
            relay.emit(output)
        except Exception as exc:  # a warning under an "error" filter fails the setup
            failures = [TaskFailure(0, exc)]
        if not failures:
            self._ready(record)
            return
        cause = failures[0].error
        record.failure = LaunchError(f"setup failed on {record.label}: "
                                     f"{type(cause).__name__}: {cause}")
        record.failure.__cause__ = cause
        record.process.kill()  # its exit reports the failure, once

    # -- sending ---------------------------------------------------------------------------

    def _assign(self) -> None:
        failed: list[tuple[int, Chunk]] = []
        for worker_id, chunk in self.scheduler.assignments(time.monotonic()):
            if not self._send_chunk(self.workers[worker_id], chunk):
                failed.append((worker_id, chunk))
        for worker_id, chunk in failed:
            self.scheduler.unassign(worker_id, chunk)
            self.scheduler.requeue(chunk)
            record = self.workers[worker_id]
            if record.state == READY:
                record.process.kill()
                self._lost(record, "its connection is gone")

    def _send_chunk(self, record: WorkerRecord, chunk: Chunk) -> bool:
        job = chunk.job
        function = job.function
        if function.digest in record.cached:
            record.cached.move_to_end(function.digest)
            fn_inband, fn_buffers = b"", []
        else:
            fn_inband, fn_buffers = function.inband, function.buffers
            self._cache(record, function.digest, function.nbytes)
        if job.timeout:  # check its deadline on time, not at the next periodic check
            deadline = time.monotonic() + job.timeout * chunk.count + TIMEOUT_SLACK
            self._next_check = min(self._next_check, deadline)
        arguments, flags = chunk.frames[1:], int(job.flags)
        if self.shared is not None and arguments:
            arguments, flags = self._share(record, chunk, arguments, flags)
        head = protocol.header(Kind.TASK, flags, job.id, chunk.id)
        first = protocol.task_frame(head, function.digest, chunk.first_index, fn_inband,
                                    len(fn_buffers), chunk.frames[0], job.seed)
        return self.master.send(record.data_identity, [first, *fn_buffers, *arguments])

    def _share(self, record: WorkerRecord, chunk: Chunk, arguments: list[Any], flags: int
               ) -> tuple[list[Any], int]:
        """A chunk's argument buffers for this worker: in shared memory where it maps ours."""
        assert self.shared is not None
        if isinstance(arguments[0], SharedFrame):  # stored when the call was made
            if not record.shared_memory:
                return self.shared.copies(arguments[0]), flags
        elif record.shared_memory and (
                sum(memoryview(a).nbytes for a in arguments) >= codec.SHARED_MIN_BYTES):
            try:
                arguments = [self.shared.store(arguments)]
            except OSError:  # out of shared memory: the socket it is
                return arguments, flags
            chunk.frames = [chunk.frames[0], *arguments]  # a retry reuses the segment
        else:
            return arguments, flags
        self.shared.lend(arguments[0], record.id)
        return arguments, flags | Flag.SHARED

    def _cache(self, record: WorkerRecord, digest: bytes, size: int) -> None:
        """Mirror the worker's function cache; tell it to drop the oldest past the budget."""
        record.cached[digest] = size
        record.cached_bytes += size
        while record.cached_bytes > FUNCTION_CACHE_BYTES and len(record.cached) > 1:
            old, old_size = record.cached.popitem(last=False)
            record.cached_bytes -= old_size
            self.master.send(record.data_identity, [protocol.header(Kind.FORGET) + old])

    def _heartbeat(self, now: float) -> None:
        if self.shared is not None:
            self.shared.trim(now)
            shm.trim_mappings(now)
        beat = [protocol.header(Kind.HEARTBEAT)]
        for record in self.workers.values():
            if record.control_ready and record.state in (SETUP, READY):
                self.master.send(record.control_identity, beat)

    def _tell_all(self, kind: Kind, job: int = 0, *, data: bool = False) -> None:
        for record in self.workers.values():
            if record.alive:
                if record.control_ready:
                    self.master.send(record.control_identity, [protocol.header(kind, 0, job)])
                if data:
                    self.master.send(record.data_identity, [protocol.header(kind, 0, job)])

    # -- commands (run on the I/O thread via call_soon) ----------------------------------

    def submit(self, chunks: list[Chunk]) -> None:
        """Queue chunks; fail them at once when the cluster cannot run them."""
        if self.closing or self.broken is not None:
            error: SockpoolError = (ClusterClosedError("the cluster is closed") if self.closing
                                    else SockpoolError(f"the cluster is broken: {self.broken}"))
            for chunk in chunks:
                chunk.job.fail(chunk, error)
            return
        self.scheduler.submit(chunks)

    def broadcast(self, job: Job, frames: list[Any], future: Future[list[Chunk]]) -> None:
        """Pin one call to every live worker; the future gets the chunks, by worker id.

        A worker still starting (a replacement, say) runs it once it is ready.
        """
        workers = sorted(r.id for r in self.workers.values() if r.alive)
        chunks = [job.chunk(position, 1, frames, pinned=worker_id)
                  for position, worker_id in enumerate(workers)]
        self.submit(chunks)
        future.set_result(chunks)

    def cancel(self, job: Job) -> None:
        """Drop a job's waiting chunks and interrupt its running ones."""
        dropped, running = self.scheduler.cancel(job)
        for chunk in dropped:
            job.dropped(chunk)
        for worker_id in running:
            record = self.workers[worker_id]
            if record.control_ready:
                self.master.send(record.control_identity,
                                 [protocol.header(Kind.CANCEL, 0, job.id)])

    def cancel_futures(self) -> None:
        """Cancel every submitted future that has not started (shutdown(cancel_futures=True))."""
        for chunk in self.scheduler.drain():
            if isinstance(chunk.job, FutureJob):
                chunk.job.future.cancel()
                chunk.job.dropped(chunk)
            else:
                self.scheduler.submit([chunk])

    def add_export(self, frames: list[Any]) -> None:
        """Send an EXPORT message to every worker now, and to every worker that starts later."""
        self.exports.append(frames)
        for record in self.workers.values():
            if record.state in (SETUP, READY):
                self.master.send(record.data_identity, frames)

    @property
    def store(self) -> Callable[[list[Any]], SharedFrame] | None:
        """Where calls that copy their arguments put large buffers (None: the socket)."""
        return self.shared.store if self.shared is not None and self.any_shared else None

    def live_worker_ids(self) -> list[int]:
        """Ids of the workers alive (ready or starting), in order."""
        return sorted(r.id for r in self.workers.values() if r.alive)

    def snapshot(self) -> list[tuple[int, str, int, str]]:
        """(id, host, pid, state) of each worker that is not gone."""
        rows = []
        for record in self.workers.values():
            if not record.alive:
                continue
            state = record.state
            if state == READY:
                state = "busy" if self.scheduler.load(record.id) else "idle"
            rows.append((record.id, record.host, record.pid, state))
        return rows

    def _teardown(self) -> None:
        for record in self.workers.values():
            record.process.kill()  # a no-op for those that ended
        deadline = time.monotonic() + 1.0  # reap them, so none is left a zombie
        while (any(r.process.poll() is None for r in self.workers.values())
               and time.monotonic() < deadline):
            time.sleep(0.01)
        for record in self.workers.values():
            record.process.close()
            if record.alive:
                record.state = STOPPED
        self.n_ready = 0
        with contextlib.suppress(Exception):  # a launcher's cleanup must not stop ours
            self.launcher.close()
        self.master.close()
        if self.shared is not None:
            self.shared.close()
        self.closing = True
        with self._wake_lock:
            self.closed.set()
            os.close(self._wake_r)
            os.close(self._wake_w)
        with self.state_changed:
            self.state_changed.notify_all()
        # Commands queued while the loop was ending still run, so no caller waits forever.
        while self._commands:
            fn, args = self._commands.popleft()
            with contextlib.suppress(Exception):
                fn(*args)
