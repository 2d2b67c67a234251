"""The worker processes: starting them, noticing them end, replacing them, stopping them.

The I/O thread's :class:`~sockpool.dispatch.dispatcher.Dispatcher` owns one
:class:`WorkerPool` and calls it from its loop; every method runs on the I/O
thread, except :meth:`WorkerPool.wait_for_workers` (:mod:`.readiness`), which the
caller's thread runs while the cluster starts.  The pool tells the scheduler which workers take
tasks, and hands what a lost worker held to :mod:`.settling`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Collection

from ..common.config import WorkerConfig
from ..common.protocol import Kind, header
from ..errors import LaunchError, NoWorkersLeftError, SockpoolError
from ..launchers.base import Launcher, release
from . import readiness
from .exits import ExitWatch
from .jobs import Chunk
from .lifecycle import Lifecycle
from .profiling import Profiler
from .records import (
    WorkerRecord,
    WorkerState,
    launch_error,
    lost_error,
)
from .scheduler import Scheduler
from .settling import fail_for_good, settle_lost, wait_for_end
from .sharing import SharedTransfers
from .transport import MasterSocket

#: How long a worker whose connection broke gets to be seen ended (its process closes
#: its sockets a moment before it can be reaped) before it counts as cut off.
DYING_SECONDS = 0.1
#: The states of a worker the master sends heartbeats to.
_BEATING = (WorkerState.SETUP, WorkerState.READY, WorkerState.RETIRING)
#: How often processes are polled when no pidfd tells us they ended.
PROCESS_POLL_INTERVAL = 0.25
#: How often workers are checked while each one's pidfd will say when it ends
#: (time limits of tasks are checked on time all the same).
QUIET_CHECK_INTERVAL = 1.0
#: After a worker process ends, how long its last messages (a result sent just
#: before it crashed on the next task) may take to arrive before what it held is
#: written off: the pidfd can fire before libzmq has delivered them.
EXIT_GRACE = 0.1
#: After SHUTDOWN, how long workers get to exit before SIGTERM, then SIGKILL.
STOP_GRACE = (2.0, 1.0, 1.0)
#: Replacement workers that fail to start this many times in a row stop the replacing.
MAX_FAILED_REPLACEMENTS = 3

logger = logging.getLogger("sockpool")


class WorkerPool:
    """The records of a cluster's workers and the steps that start, replace and stop them."""

    def __init__(
        self,
        *,
        launcher: Launcher,
        master: MasterSocket,
        scheduler: Scheduler,
        lifecycle: Lifecycle,
        config: WorkerConfig,
        shared: SharedTransfers,
        workers: dict[int, WorkerRecord],
        target: int,
        connect_timeout: float,
        heartbeat_timeout: float,
        profiler: Profiler,
        max_tasks: int | None = None,
    ) -> None:
        """
        Args:
            config: what every worker is told; the pool fills in each one's id and keys.
            shared: the master's shared-memory transfers with its workers.
            workers: the records of the workers, by id (empty; the pool fills it).
            target: how many workers the cluster wants.
            heartbeat_timeout: silence after which a worker whose process the
                launcher cannot watch counts as lost.
            profiler: the profiles recording, told of results read back from a
                lost worker's log.
            max_tasks: tasks after which a worker is retired and replaced.
        """
        self.launcher = launcher
        self.master = master
        self.scheduler = scheduler
        self.lifecycle = lifecycle
        self.config = config
        self.shared = shared
        self.target = target
        self.connect_timeout = connect_timeout
        self.heartbeat_timeout = heartbeat_timeout
        self.max_tasks = max_tasks
        self.profiler = profiler
        self.workers = workers
        self.exits = ExitWatch()  # their pidfds: the I/O loop polls its one descriptor
        self._next_worker_id = 0
        self._failed_replacements = 0
        self.stop_started: float | None = None  # when SHUTDOWN went out
        # What the caller's thread waits on while the cluster starts:
        self.state_changed = threading.Condition()
        self.n_ready = 0
        self.startup_errors: list[LaunchError] = []
        self.serving = False  # started: a start that fails now is a replacement's, told by log
        self.loop_error: BaseException | None = None  # the I/O thread itself failed

    # -- starting ------------------------------------------------------------------------

    def launch(self) -> WorkerRecord | None:
        """Start one worker; None when the launcher has nowhere to start one or failed."""
        worker_id = self._next_worker_id
        self._next_worker_id += 1
        keys = self.master.issue_keys()  # CURVE: a fresh keypair for this worker alone
        config = self.config.replace(worker_id=worker_id, curve=keys)
        try:
            process = self.launcher.spawn(worker_id, config)
        except LaunchError as exc:
            self.master.revoke(keys)  # (a launch that failed may still have handed them out)
            self._failed_replacements += 1
            self._startup_failed(exc)
            return None
        if process is None:  # nowhere to start one
            self.master.revoke(keys)
            return None
        record = WorkerRecord(worker_id, process, watched=self.launcher.watches_processes)
        record.keys = keys
        self.workers[worker_id] = record
        fd = process.fileno()
        if fd is not None:
            self.exits.add(fd)
        return record

    def mark_ready(self, record: WorkerRecord) -> None:
        """A worker connected (and ran the setup, and loaded the exports): it takes
        tasks from now on."""
        record.state = WorkerState.READY
        record.ready_at = time.monotonic()
        self._failed_replacements = 0
        self.scheduler.add_worker(record.id, quota=self.max_tasks)
        with self.state_changed:
            self.n_ready += 1
            self.state_changed.notify_all()

    def _startup_failed(self, error: LaunchError) -> None:
        with self.state_changed:
            self.startup_errors.append(error)
            self.state_changed.notify_all()
        if self.serving and self.lifecycle.wants_workers:  # no caller waits to be told
            logger.warning("sockpool: a worker could not be started to replace one (%d of %d "
                           "workers left): %s", self.n_ready, self.target, error)

    def wait_for_workers(self, count: int, timeout: float, minimum: int | None = None) -> None:
        """On the caller's thread: block until ``count`` workers are ready (see
        :func:`.readiness.wait_for_workers`)."""
        readiness.wait_for_workers(self, count, timeout, minimum)

    # -- watching ------------------------------------------------------------------------

    def check_processes(self, now: float, ended: Collection[int] = ()) -> float:
        """Notice workers that ended, never connected or fell silent; seconds to the next check.

        ``ended``: the pidfds the loop saw become readable.  A working process
        whose pidfd is watched and not among them is still running: it is not
        asked, and while every worker is such, checks come less often (an idle
        master with hundreds of workers would ask each process 4 times a second).
        """
        wait = QUIET_CHECK_INTERVAL if self.lifecycle.wants_workers else PROCESS_POLL_INTERVAL
        for record in list(self.workers.values()):
            if not record.alive:
                if record.process.poll() is not None:  # reap what was killed, then forget it
                    record.process.close()
                    del self.workers[record.id]
                continue
            running = (record.state is WorkerState.READY and record.retired_at is None
                       and (fd := record.process.fileno()) in self.exits and fd not in ended)
            if not running:
                wait = min(wait, PROCESS_POLL_INTERVAL)
            if not running and record.process.poll() is not None:
                if record.exited_at is None:
                    record.exited_at = now
                    self._unwatch(record)
                if not self.lifecycle.wants_workers or record.retired_at is not None:
                    self._forget(record, WorkerState.STOPPED)
                    if record.retired_at is not None and self.lifecycle.wants_workers:
                        self._top_up()  # a host's slot it held is free for its replacement
                        if (self._failed_replacements  # (not "nowhere to start one")
                                and not any(other.alive for other in self.workers.values())):
                            self._replace(f"worker {record.id} retired", "",  # none started
                                          self.startup_errors[-1] if self.startup_errors else None)
                elif now - record.exited_at >= EXIT_GRACE:
                    self.lost(record, record.process.exit_status())
                else:
                    wait = min(wait, EXIT_GRACE)
            elif record.retired_at is not None:
                if now - record.retired_at > sum(STOP_GRACE):
                    record.process.kill()  # told to stop and still there
            elif record.state is WorkerState.STARTING and record.process.queued():
                record.started_at = now  # waiting in a batch queue is not a failure to connect
            elif (record.state is WorkerState.STARTING
                  and now - record.started_at > self.connect_timeout):
                record.process.kill()
                self.lost(record, f"did not connect within {self.connect_timeout:g} s")
            elif (not self.launcher.watches_processes  # (its setup or exports loading too)
                  and record.state in (WorkerState.SETUP, WorkerState.READY)
                  and now - record.last_heard > self.heartbeat_timeout):
                record.process.kill()
                self.lost(record, f"silent for {now - record.last_heard:.1f} s (heartbeat lost)")
            elif (deadline := self._deadline(record)) is not None:
                if now >= deadline or record.stacks_asked is not None:
                    wait = min(wait, self._stop_overrun(record, now))
                else:
                    wait = min(wait, deadline - now)
        return wait

    def _stop_overrun(self, record: WorkerRecord, now: float) -> float:
        """Stop a worker whose chunk ran past its time limit (a task that overran cannot
        be trusted to stop): first it writes where the task is, which its error quotes,
        given at most its process's ``stacks_wait``; seconds to the next check."""
        asked = record.stacks_asked
        if asked is None:
            chunk = next(iter(self.scheduler.in_flight[record.id].values()))
            if (writing := self._writing_results(record, chunk, now)) is not None:
                return writing
            if record.process.show_stacks():
                record.stacks_asked = (chunk, now)  # (its RESULT from now on is too late)
                return record.process.stacks_wait
        else:
            # The worker ends itself as its stack is written (the check of its exit
            # comes first); it is killed where a task put a handler of its own on the
            # signal.
            chunk, asked_at = asked
            if now < asked_at + record.process.stacks_wait:
                return asked_at + record.process.stacks_wait - now
        record.timed_out = chunk
        record.process.kill()
        self.lost(record, "stopped: its task ran past its time limit")
        return PROCESS_POLL_INTERVAL

    def _writing_results(self, record: WorkerRecord, chunk: Chunk, now: float) -> float | None:
        """Seconds to the next check where a chunk past its deadline ran all its tasks in
        time and its worker writes their results (a large list takes its time to
        pickle): that gets the limit once more, and is no timeout.  Else None (and
        the record notes whether it is the writing that overran)."""
        deadline, limit = chunk.job.deadline(chunk), (chunk.job.timeout or 0) * chunk.count
        record.overran_writing = (chunk.started_at is not None and record.progress is not None
                                  and record.progress.ran_all(chunk))
        if deadline is None or not record.overran_writing or now >= deadline + limit:
            return None
        return min(PROCESS_POLL_INTERVAL, deadline + limit - now)

    def _deadline(self, record: WorkerRecord) -> float | None:
        """When the chunk a worker runs overruns its job's time limit, if it has one."""
        held = self.scheduler.in_flight.get(record.id)
        if not held:
            return None
        chunk = next(iter(held.values()))
        return chunk.job.deadline(chunk)

    def _unwatch(self, record: WorkerRecord) -> None:
        """Stop polling a worker's pidfd (once it fired, it stays readable)."""
        fd = record.process.fileno()
        if fd is not None:
            self.exits.discard(fd)

    def _forget(self, record: WorkerRecord, state: WorkerState) -> None:
        was_ready = record.state is WorkerState.READY
        record.state = state
        record.left_at = record.left_at or time.monotonic()
        if state is not WorkerState.LOST:  # (lost() reads it first, then closes it)
            self._close_progress(record)
        self._unwatch(record)
        self.master.revoke(record.keys)  # its key connects no more
        self.shared.forget(record.id)  # its mappings of our segments went with it
        if was_ready:
            with self.state_changed:
                self.n_ready -= 1
                self.state_changed.notify_all()

    def _top_up(self) -> None:
        """Start workers until the cluster has as many as it wants, or none can start."""
        while sum(record.alive for record in self.workers.values()) < self.target:
            if self.launch() is None:
                return

    # -- recycling -----------------------------------------------------------------------

    def after_result(self, record: WorkerRecord, now: float, over_memory: bool) -> None:
        """A worker returned a chunk: retire it once it did its quota or grew too large
        (``over_memory``: it said so, see ``max_worker_memory``), and stop it once it holds
        nothing more (its replacement starts then)."""
        if record.state is WorkerState.READY:
            if over_memory:
                self.scheduler.retire(record.id)
            if not self.scheduler.retiring(record.id):
                return
            record.state = WorkerState.RETIRING  # it takes no new chunks from here on
            with self.state_changed:
                self.n_ready -= 1
                self.state_changed.notify_all()
        if (record.state is WorkerState.RETIRING and record.retired_at is None
                and not self.scheduler.load(record.id)
                and not self.scheduler.pinned.get(record.id)):
            self.scheduler.remove_worker(record.id)  # it holds nothing: nothing to lose
            shutdown = [header(Kind.SHUTDOWN)]
            self.master.send(record.data_identity, shutdown)
            if record.control_ready:
                self.master.send(record.control_identity, shutdown)
            record.retired_at = now
            record.process.released = True  # its launcher's slot may take the replacement
            if self.lifecycle.wants_workers:
                self.launch()

    def restart(self) -> None:
        """Replace every worker by a fresh process: what runs is lost (or retried), what
        is queued runs on the new workers."""
        with self.state_changed:
            self.startup_errors.clear()  # they were about the workers being replaced
            self.serving = False  # a start that fails now, restart() raises
        self._failed_replacements = 0
        replaced = [record for record in self.workers.values()
                    if record.alive and record.retired_at is None]  # (not replaced already)
        for record in replaced:  # all at once: they end while the first are settled
            record.process.kill()
        for record in replaced:
            if not record.state.starting:
                self.lost(record, "stopped by restart()")
                continue
            # Not connected yet: nothing ran, but what was pinned to it cannot move.
            _, pinned = self.scheduler.remove_worker(record.id)
            self._forget(record, WorkerState.STOPPED)
            for chunk in pinned:
                chunk.job.fail(chunk, lost_error(record, "stopped by restart()", "", chunk))
            self.launch()

    # -- losing and replacing ------------------------------------------------------------

    def lost(self, record: WorkerRecord, how: str) -> None:
        """A worker ended or went silent: write off or retry what it held, replace it."""
        starting = record.state.starting
        if record.stacks_asked is not None:  # ended as it was stopped for its time limit
            record.timed_out = record.stacks_asked[0]
        held, pinned = self.scheduler.remove_worker(record.id)
        tail = record.process.stderr_tail()
        # At once for wait_for_workers (a reentrant lock): a worker that stops
        # starting and its error, never one without the other.
        failure = None
        with self.state_changed:
            self._forget(record, WorkerState.LOST)
            if starting:
                self._failed_replacements += 1
                failure = (record.failure or record.process.failure()
                           or launch_error(record, how, tail))
                self._startup_failed(failure)
        settle_lost(record, held, pinned, how, tail, self.scheduler, self.profiler)
        # A setup that failed says more than the kill that ended its worker.
        last = (str(record.failure).splitlines()[0] if record.failure
                else f"{record.label} was lost ({how})")
        self._replace(last, tail, failure)

    @staticmethod
    def unreachable(record: WorkerRecord) -> str:
        """Why a worker's connection refused a message: how its process ended, where it
        is ending (a worker that died drops its connection first); else it is killed."""
        pidfd = record.process.fileno()
        if pidfd is not None and record.process.poll() is None:
            wait_for_end(pidfd, DYING_SECONDS)
        if record.process.poll() is not None:
            return record.process.exit_status()
        record.process.kill()
        return "its connection is gone"

    @staticmethod
    def _close_progress(record: WorkerRecord) -> None:
        if record.progress is not None:
            record.progress.close()
            record.progress = None

    def _replace(self, last_loss: str, tail: str, cause: BaseException | None = None) -> None:
        """Start a replacement, unless starting them keeps failing; give up with no worker
        left (``cause``: the last loss, a start that failed)."""
        if not self.lifecycle.wants_workers:
            return
        gave_up = self._failed_replacements >= MAX_FAILED_REPLACEMENTS
        if not gave_up and self.launch() is not None:
            return
        if not any(record.alive for record in self.workers.values()):
            why = ("replacements failed to start" if gave_up or self._failed_replacements
                   else f"{self.launcher.describe()} has nowhere left to start one")
            error = NoWorkersLeftError(f"no worker is left and {why}; last: {last_loss}",
                                       stderr_tail=tail)
            error.__cause__ = cause
            self.lifecycle.break_down(error)
            self.fail_all(error)

    def fail_all(self, error: SockpoolError) -> None:
        """Fail every chunk, waiting or running (the cluster cannot go on)."""
        for chunk in self.scheduler.drain():  # (one queued to run again: see fail_for_good)
            fail_for_good(chunk, error)
        for worker_id in self.scheduler.workers:
            for chunk in self.scheduler.remove_worker(worker_id)[0]:
                chunk.job.fail(chunk, error)
        with self.state_changed:
            self.state_changed.notify_all()

    # -- telling and stopping ------------------------------------------------------------

    def tell_all(self, kind: Kind, job: int = 0, *, data: bool = False) -> None:
        """Send a bodiless message to every live worker's control (and data) connection."""
        message = [header(kind, 0, job)]
        for record in self.workers.values():
            if record.alive:
                if record.control_ready:
                    self.master.send(record.control_identity, message)
                if data:
                    self.master.send(record.data_identity, message)

    def send_heartbeats(self) -> None:
        """Beat to every worker that listens for it."""
        for record in self.workers.values():
            if record.control_ready and record.state in _BEATING:
                self.master.send(record.control_identity, [record.heartbeat()])

    def begin_stop(self, now: float) -> None:
        """Tell every worker to stop (those not connected yet are terminated)."""
        self.tell_all(Kind.SHUTDOWN, data=True)
        self.stop_started = now
        for record in self.workers.values():
            if record.state is WorkerState.STARTING:  # nothing to tell, nothing to lose
                record.process.terminate()

    def stop_step(self, now: float) -> bool:
        """One turn of stopping after :meth:`begin_stop`; True once every worker is gone.

        Workers get ``STOP_GRACE`` seconds to exit, then SIGTERM, then SIGKILL.
        """
        assert self.stop_started is not None
        for record in self.workers.values():
            if record.alive and record.process.poll() is not None:
                self._forget(record, WorkerState.STOPPED)
        alive = [r for r in self.workers.values() if r.alive]
        if not alive:
            return True
        elapsed = now - self.stop_started
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

    def teardown(self) -> None:
        """Kill what is left, reap it (no zombie), and release the launcher's resources."""
        for record in self.workers.values():
            record.process.kill()  # a no-op for those that ended
        deadline = time.monotonic() + 1.0
        while (any(r.process.poll() is None for r in self.workers.values())
               and time.monotonic() < deadline):
            time.sleep(0.01)
        for record in self.workers.values():
            self._unwatch(record)
            record.process.close()
            self._close_progress(record)
            if record.alive:
                record.state = WorkerState.STOPPED
        self.exits.close()
        self.n_ready = 0
        with contextlib.suppress(Exception):  # a launcher's cleanup must not stop ours
            self.launcher.stop_early()  # what it started early that no spawn took
        with contextlib.suppress(Exception):
            self.launcher.close()
        release(self.launcher)  # it may serve the next cluster
        with self.state_changed:
            self.state_changed.notify_all()

    # -- questions -------------------------------------------------------------------------

    def live_ids(self) -> list[int]:
        """Ids of the workers alive (ready or starting), in order; not those told to stop
        (a recycled worker's replacement is among them already)."""
        return sorted(r.id for r in self.workers.values() if r.alive and r.retired_at is None)
