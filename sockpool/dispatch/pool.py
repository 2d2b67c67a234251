"""Tending the workers: starting them, noticing them end, replacing them, stopping them.

The I/O thread's :class:`~sockpool.dispatch.dispatcher.Dispatcher` inherits this: these
are the steps of its loop that deal with worker processes rather than with
messages.  Everything here runs on the I/O thread.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import zmq

from ..common.protocol import Kind
from ..common.shm import SegmentPool
from ..errors import ClusterClosedError, LaunchError, SockpoolError
from ..launchers.base import Launcher
from . import output as relay
from .records import (
    LOST,
    READY,
    SETUP,
    STARTING,
    STOPPED,
    WorkerRecord,
    launch_error,
    lost_error,
    timeout_error,
)
from .scheduler import Scheduler
from .transport import MasterSocket

#: How often processes are polled when no pidfd tells us they ended.
PROCESS_POLL_INTERVAL = 0.25
#: After a worker process ends, how long its last messages (a result sent just
#: before it crashed on the next task) may take to arrive before what it held is
#: written off: the pidfd can fire before libzmq has delivered them.
EXIT_GRACE = 0.1
#: After SHUTDOWN, how long workers get to exit before SIGTERM, then SIGKILL.
STOP_GRACE = (2.0, 1.0, 1.0)
#: Added to a task's time limit for the trip to the worker and back.
TIMEOUT_SLACK = 0.05
#: Replacement workers that fail to start this many times in a row stop the replacing.
MAX_FAILED_REPLACEMENTS = 3


class WorkerTending:
    """The worker-process half of the I/O thread (see the module docstring)."""

    # State shared with the Dispatcher, which sets it up.
    workers: dict[int, WorkerRecord]
    scheduler: Scheduler
    launcher: Launcher
    master: MasterSocket
    target: int
    token: str
    serializer: str
    heartbeat_interval: float
    heartbeat_timeout: float
    master_timeout: float | None
    connect_timeout: float
    state_changed: threading.Condition
    n_ready: int
    startup_errors: list[LaunchError]
    broken: BaseException | None
    closing: bool
    _poller: zmq.Poller
    _exit_fds: set[int]
    _next_worker_id: int
    _failed_replacements: int
    _finish_then_close: bool
    _stop_started: float | None
    _relay_config: dict[str, Any]
    max_frame_bytes: int
    shared: SegmentPool | None

    def _assign(self) -> None:
        raise NotImplementedError  # the Dispatcher's

    def _tell_all(self, kind: Kind, job: int = 0, *, data: bool = False) -> None:
        raise NotImplementedError  # the Dispatcher's

    def _launch(self) -> WorkerRecord | None:
        worker_id = self._next_worker_id
        self._next_worker_id += 1
        keys = self.master.issue_keys()  # CURVE: a fresh keypair for this worker alone
        config = {
            **keys,
            "address": self.master.address,
            "token": self.token,
            "worker_id": worker_id,
            "heartbeat_interval": self.heartbeat_interval,
            "master_timeout": self.master_timeout,  # None: the launcher's default
            "serializer": self.serializer,
            "max_frame_bytes": self.max_frame_bytes,
            **self._relay_config,
        }
        if self.shared is not None:  # a worker that can map this segment shares our memory
            config["shm_probe"] = self.shared.probe()
        try:
            process = self.launcher.spawn(worker_id, config)
        except LaunchError as exc:
            self._failed_replacements += 1
            self._startup_failed(exc)
            return None
        if process is None:  # nowhere to start one
            self.master.revoke(keys)
            return None
        record = WorkerRecord(worker_id, process)
        record.keys = keys
        self.workers[worker_id] = record
        fd = process.fileno()
        if fd is not None:
            self._poller.register(fd, zmq.POLLIN)
            self._exit_fds.add(fd)
        return record

    def _startup_failed(self, error: LaunchError) -> None:
        with self.state_changed:
            self.startup_errors.append(error)
            self.state_changed.notify_all()

    def _check_processes(self, now: float) -> float:
        """Notice workers that ended, never connected or fell silent; seconds to the next check."""
        wait = PROCESS_POLL_INTERVAL
        for record in list(self.workers.values()):
            if not record.alive:
                if record.process.poll() is not None:  # reap what was killed, then forget it
                    record.process.close()
                    del self.workers[record.id]
                continue
            if record.process.poll() is not None:
                if record.exited_at is None:
                    record.exited_at = now
                    self._unwatch(record)
                if not self._workers_wanted:
                    self._forget(record, STOPPED)
                elif now - record.exited_at >= EXIT_GRACE:
                    self._lost(record, record.process.exit_status())
                else:
                    wait = min(wait, EXIT_GRACE)
            elif record.state == STARTING and record.process.queued():
                record.started_at = now  # waiting in a batch queue is not a failure to connect
            elif record.state == STARTING and now - record.started_at > self.connect_timeout:
                record.process.kill()
                self._lost(record, f"did not connect within {self.connect_timeout:g} s")
            elif (not self.launcher.watches_processes and record.state == READY
                  and now - record.last_heard > self.heartbeat_timeout):
                record.process.kill()
                self._lost(record, f"silent for {now - record.last_heard:.1f} s (heartbeat lost)")
            elif (deadline := self._deadline(record)) is not None:
                if now >= deadline:
                    record.timed_out = next(iter(self.scheduler.in_flight[record.id].values()))
                    record.process.kill()  # a task past its time limit cannot be trusted
                    self._lost(record, "stopped: its task ran past its time limit")
                else:
                    wait = min(wait, deadline - now)
        return wait

    def _deadline(self, record: WorkerRecord) -> float | None:
        """When the chunk a worker runs overruns its job's time limit, if it has one."""
        held = self.scheduler.in_flight.get(record.id)
        if not held:
            return None
        chunk = next(iter(held.values()))
        if not chunk.job.timeout:
            return None
        return chunk.sent_at + chunk.job.timeout * chunk.count + TIMEOUT_SLACK

    def _unwatch(self, record: WorkerRecord) -> None:
        """Stop polling a worker's pidfd (once it fired, it stays readable)."""
        fd = record.process.fileno()
        if fd is not None and fd in self._exit_fds:
            self._exit_fds.discard(fd)
            self._poller.unregister(fd)

    def _forget(self, record: WorkerRecord, state: str) -> None:
        was_ready = record.state == READY
        record.state = state
        self._unwatch(record)
        self.master.revoke(record.keys)  # its key connects no more
        if self.shared is not None:  # its mappings of our segments went with it
            self.shared.forget(record.id)
        if was_ready:
            with self.state_changed:
                self.n_ready -= 1
                self.state_changed.notify_all()

    def _lost(self, record: WorkerRecord, how: str) -> None:
        """A worker ended or went silent: write off or retry what it held, replace it."""
        starting = record.state in (STARTING, SETUP)
        held, pinned = self.scheduler.remove_worker(record.id)
        self._forget(record, LOST)
        tail = record.process.stderr_tail()
        if starting:
            self._failed_replacements += 1
            self._startup_failed(record.failure or record.process.failure()
                                 or launch_error(record, how, tail))
        # A worker runs its chunks in order: the oldest was running, those
        # behind it never started.  A static map's chunks may move elsewhere.
        running, queued = held[:1], held[1:]
        for chunk in held + pinned:
            if chunk.job.movable:
                chunk.pinned = None
        never_started = queued + pinned
        for chunk in reversed(never_started):  # back to the front of the queue, untouched
            if chunk.pinned is None:
                self.scheduler.requeue(chunk)
        stranded = [chunk for chunk in never_started if chunk.pinned is not None]
        for chunk in running:  # what it wrote before it was lost still reaches the user
            with contextlib.suppress(Exception):  # (a warning under -W error: the loss wins)
                relay.emit(chunk.output)
            output_tail = relay.tail(chunk.output)
            if output_tail:
                tail = f"{output_tail}\n{tail}" if tail else output_tail
            chunk.output = []
        for chunk in running + stranded:
            if chunk.pinned is None and chunk.attempts < chunk.job.retries:
                chunk.attempts += 1
                self.scheduler.requeue(chunk)
            elif chunk is record.timed_out:
                chunk.job.fail(chunk, timeout_error(record, chunk))
            else:
                chunk.job.fail(chunk, lost_error(record, how, tail, chunk))
        self._replace(f"worker {record.id} {how}", tail)

    @property
    def _workers_wanted(self) -> bool:
        """Open, or shutting down but still finishing queued work."""
        return not self.closing or (self._finish_then_close and self._stop_started is None)

    def _replace(self, last_loss: str, tail: str) -> None:
        """Start a replacement, unless starting them keeps failing; give up with no worker left."""
        if not self._workers_wanted:
            return
        if self._failed_replacements < MAX_FAILED_REPLACEMENTS and self._launch() is not None:
            return
        if not any(record.alive for record in self.workers.values()):
            self._abandon_all(LaunchError(
                f"no worker is left and replacements failed to start; last: {last_loss}",
                stderr_tail=tail))

    def _abandon_all(self, error: SockpoolError) -> None:
        """Fail every chunk, waiting or running (the cluster cannot go on)."""
        chunks = self.scheduler.drain()
        for worker_id in self.scheduler.workers:
            chunks += self.scheduler.remove_worker(worker_id)[0]
        for chunk in chunks:
            chunk.job.fail(chunk, error)
        with self.state_changed:
            if self.broken is None:
                self.broken = error
            self.state_changed.notify_all()

    # -- stopping ------------------------------------------------------------------------

    def _begin_close(self, cancel: bool) -> None:
        if self.closing and not (cancel and self._finish_then_close):
            return
        if not cancel:
            self._finish_then_close = True
            self.closing = True  # refuse new work; _stop_step waits for the rest
            return
        self._finish_then_close = False
        self.closing = True
        for chunk in self.scheduler.drain():
            chunk.job.fail(chunk, ClusterClosedError("the cluster was closed before this task ran"))
        for worker_id in self.scheduler.workers:  # _stop_step then sends them SHUTDOWN
            for chunk in self.scheduler.remove_worker(worker_id)[0]:
                chunk.job.fail(chunk, ClusterClosedError(
                    "the cluster was closed while this task ran"))

    def _stop_step(self, now: float) -> bool:
        """One turn of closing; True once every worker is gone."""
        if self._stop_started is None:
            if self._finish_then_close:
                self._assign()
                if not self.scheduler.idle():
                    return False
            self._tell_all(Kind.SHUTDOWN, data=True)
            self._stop_started = now
            for record in self.workers.values():
                if record.state == STARTING:  # not connected: nothing to tell, nothing to lose
                    record.process.terminate()
        for record in self.workers.values():
            if record.alive and record.process.poll() is not None:
                self._forget(record, STOPPED)
        alive = [r for r in self.workers.values() if r.alive]
        if not alive:
            return True
        elapsed = now - self._stop_started
        term_at, kill_at, give_up_at = (sum(STOP_GRACE[: i + 1]) for i in range(3))
        if elapsed >= give_up_at:
            return True
        if elapsed >= kill_at:
            for record in alive:
                record.process.kill()
        elif elapsed >= term_at:
            for record in alive:
                record.process.terminate()
        return False
