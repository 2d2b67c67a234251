"""The master's I/O thread: the only code that touches the master's zmq socket.

One loop polls the ROUTER socket, the :class:`~.mailbox.Mailbox`'s wake-up pipe and
the local workers' pidfds (:mod:`.exits`).  Each turn it runs the commands posted
to it, reads every waiting message, lets the :class:`~.pool.WorkerPool` deal with
workers that ended, hands chunks to workers with room, sends heartbeats, and takes
the next step of closing; then it sends the ACKs no TASK carried and hands the
turn's results (a map's, a future's) to their callers, one wake-up each.

Every public method of :class:`Dispatcher` may be called from any thread: it
posts its work to the I/O thread (or only reads).  Every ``_private`` method
runs on the I/O thread alone.
"""

from __future__ import annotations

import logging
import math
import secrets
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from ..common import codec, protocol, shm
from ..common.config import WorkerConfig
from ..common.protocol import Flag, Kind, TaskTimes
from ..common.shm import SharedFrame
from ..errors import ClusterClosedError, SockpoolError
from ..launchers.base import Launcher
from . import IO_THREAD_NAME
from . import output as relay
from .admission import Admission, Exports
from .jobs import Chunk, HeldResults, Job
from .lifecycle import ClusterState, Lifecycle
from .mailbox import Mailbox
from .pool import WorkerPool
from .profiling import Profiler, Recording
from .reclaims import Reclaims
from .records import WorkerInfo, WorkerRecord, WorkerState, WorkerUsage, snapshot
from .scheduler import Scheduler
from .sending import ChunkSender
from .settling import write_off_everything
from .sharing import SharedTransfers
from .transport import MasterSocket

logger = logging.getLogger("sockpool")

#: Messages read per loop turn before commands get a look-in again.
RECV_BATCH = 512


class Dispatcher:
    """Owns the socket, the scheduler and the worker pool; runs the I/O thread."""

    def __init__(
        self,
        *,
        n_workers: int, launcher: Launcher, serializer: str,
        heartbeat_interval: float, heartbeat_timeout: float | None,
        connect_timeout: float, prefetch: int, setup_jobs: tuple[Job | None, Job],
        relay_mode: str, relay_prefix: bool,
        log_level: int,
        transport: str,
        max_frame_bytes: int,
        max_tasks_per_worker: int | None = None, max_worker_memory: int | None = None,
        workdir: str | None = None,
    ) -> None:
        """
        Args:
            heartbeat_timeout: the silence after which a peer counts as lost (None: 5
                heartbeats for the master's view, the launcher's default for the workers').
            setup_jobs: the job every worker runs before it takes tasks (``setup=``), if
                any, and the call of nothing that tells it has loaded the exports.
            relay_mode: ``"task"``, ``"live"`` or ``"off"`` (see Cluster's ``relay``).
            max_tasks_per_worker, max_worker_memory: when a worker is recycled (see WorkerPool).
            workdir: the cluster's private directory, if made already (see MasterSocket).
        """
        self.launcher = launcher
        self.heartbeat_interval = heartbeat_interval
        self.relay_mode = relay_mode  # ("off": a stopped map waits for no output)
        self.scheduler = Scheduler(prefetch)
        self.lifecycle = Lifecycle()
        self.token = secrets.token_hex(32)
        self.master = MasterSocket(launcher.transport or transport, max_frame_bytes,
                                   launcher.listen, workdir)
        try:
            self.launcher.prepare(self.master.workdir, self.master.bind_tcp)
        except BaseException:  # refused (a launcher still in use): release what is bound
            self.master.close()
            raise
        self.mailbox = Mailbox()  # (its pipe, once nothing above can fail and leave it)
        self._poller = zmq.Poller()
        self._poller.register(self.master.socket, zmq.POLLIN)
        self._poller.register(self.mailbox.fileno(), zmq.POLLIN)
        workers: dict[int, WorkerRecord] = {}
        self.shared = SharedTransfers(self.master, self.mailbox, workers)
        config = WorkerConfig(
            address=self.master.address, token=self.token, worker_id=-1,
            heartbeat_interval=heartbeat_interval,
            master_timeout=heartbeat_timeout or launcher.default_master_timeout,
            serializer=serializer, max_frame_bytes=max_frame_bytes, relay=relay_mode,
            relay_prefix=bool(relay_prefix), log_level=log_level, shm_probe=self.shared.probe(),
            max_memory=max_worker_memory,
            argv=tuple(map(str, getattr(sys, "argv", ()))))  # (a Path put there too)
        self.profiler = Profiler()
        self.pool = WorkerPool(
            launcher=launcher, master=self.master, scheduler=self.scheduler,
            lifecycle=self.lifecycle, config=config, shared=self.shared,
            workers=workers, target=n_workers, connect_timeout=connect_timeout,
            heartbeat_timeout=heartbeat_timeout or 5 * heartbeat_interval,
            profiler=self.profiler, max_tasks=max_tasks_per_worker)
        self._poller.register(self.pool.exits.fileno(), zmq.POLLIN)
        self._next_check = 0.0  # when the I/O loop next checks processes and deadlines
        self.sender = ChunkSender(self.master, self.scheduler, self.pool, self.shared,
                                  self.profiler, self._check_by)
        self.exports = Exports()
        self.admission = Admission(self.token, self.master, self.shared, self.pool, self.exports,
                                   setup_jobs, self.sender.send)
        self._held = HeldResults()  # what the turn read, told once it ends
        self.reclaims = Reclaims(self.scheduler, self.master, self.profiler)
        self._thread = threading.Thread(target=self._run, name=IO_THREAD_NAME, daemon=True)
        self.shared.io_thread = self._thread

    # -- any thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the I/O thread; it launches the workers."""
        self._thread.start()

    @property
    def n_ready(self) -> int:
        """Workers connected and taking tasks."""
        return self.pool.n_ready

    @property
    def target(self) -> int:
        """Workers the cluster wants."""
        return self.pool.target

    @property
    def store(self) -> Callable[[list[Any]], list[SharedFrame]] | None:
        """Where calls that copy their arguments put large buffers (None: the socket)."""
        return self.shared.store

    def close(self, *, cancel: bool, wait: bool, timeout: float | None = 10.0) -> None:
        """Take no more work; stop now (``cancel``) or once what was submitted is done.

        With ``wait``, return once every worker is gone (or ``timeout`` passed).
        """
        moved = self.lifecycle.move(ClusterState.STOPPING if cancel else ClusterState.DRAINING)
        self.lifecycle.drain_at_exit = not (cancel or wait)
        if not moved and self.lifecycle.state is ClusterState.BROKEN:
            self.lifecycle.move(ClusterState.STOPPING)  # nothing can run: nothing to finish
        try:
            self.mailbox.post(lambda: None)  # wake the I/O thread, to act on the new state
        except ClusterClosedError:
            return
        if wait and self._thread.is_alive() and threading.current_thread() is not self._thread:
            self.lifecycle.closed.wait(timeout)
            self._thread.join(1.0)  # its last steps after closed is set: then it is gone

    def submit(self, chunks: list[Chunk], *, wait: bool = False) -> None:
        """Queue chunks for the workers (failed at once if the cluster cannot run them);
        with ``wait``, return once the I/O thread has them (and sent what workers have room for)."""
        if not self.lifecycle.takes_work:  # after shutdown(): an imap's next chunk is new work
            raise self.lifecycle.refusal()
        if self.profiler.active:
            for chunk in chunks:
                chunk.submitted = time.time()
        (self.mailbox.post_and_wait if wait else self.mailbox.post)(self._submit, chunks, wait)

    def cancel(self, job: Job, *, interrupt: bool = True) -> None:
        """Drop a job's waiting chunks and interrupt its running ones (or, not
        ``interrupt``, let them finish: ``Executor.map`` left early)."""
        self.mailbox.post(self._cancel, job, interrupt)

    def cancel_futures(self) -> None:
        """Cancel every submitted future that has not started (shutdown(cancel_futures=True))."""
        self.mailbox.post(self._cancel_futures)

    def broadcast(self, job: Job, frames: list[Any]) -> list[Chunk]:
        """Queue one call for every live worker; its chunks, by worker id.

        A worker still starting (a replacement, say) runs it once it is ready.
        """
        return self.mailbox.ask(self._broadcast, job, frames)

    def add_export(self, names: list[str], frames: list[Any]) -> None:
        """Send an EXPORT message (values by ``names``) to every worker now, and to every
        worker that starts later."""
        self.mailbox.post(self._add_export, names, frames)

    def restart(self) -> None:
        """Replace every worker by a fresh one; return once they are ready (or LaunchError)."""
        self.mailbox.ask(self.pool.restart)
        try:
            self.pool.wait_for_workers(self.pool.target, self.pool.connect_timeout)
        finally:
            self.pool.serving = True  # (failed: the cluster goes on with what it has)

    def start_profile(self) -> Recording:
        """Begin recording every chunk's tasks (see profiling.py)."""
        return self.mailbox.ask(lambda: self.profiler.start(
            [record for record in self.pool.workers.values() if record.alive]))

    def stop_profile(self, recording: Recording) -> None:
        """End a recording: what it holds is complete once this returns."""
        self.mailbox.ask(self.profiler.stop, recording, self.pool.workers)

    def usage(self) -> dict[int, WorkerUsage]:
        """Each live worker's tasks done, CPU time and resident memory, by id."""
        return self.mailbox.ask(lambda: {
            record.id: record.usage() for record in self.pool.workers.values() if record.alive})

    def live_worker_ids(self) -> list[int]:
        """Ids of the workers alive (ready or starting), in order."""
        return self.mailbox.ask(self.pool.live_ids)

    def snapshot(self) -> list[WorkerInfo]:
        """Each worker that is not gone: id, host, pid, state."""
        return self.mailbox.ask(snapshot, self.pool.workers.values(), self.scheduler.load)

    # -- the I/O thread: the loop ----------------------------------------------------------

    def _run(self) -> None:
        try:
            for _ in range(self.pool.target):
                self.pool.launch()
            self.launcher.launched()
            sock, wake, exits = self.master.socket, self.mailbox.fileno(), self.pool.exits
            next_heartbeat = time.monotonic() + self.heartbeat_interval
            while True:
                timeout = min(next_heartbeat, self._next_check) - time.monotonic()
                ended = []
                for source, _ in self._poller.poll(max(0, math.ceil(timeout * 1000))):
                    if source is sock:
                        self._receive()
                    elif source == wake:
                        self.mailbox.clear_wake()
                    elif source == exits.fileno():
                        ended = exits.ended()  # pidfds: those worker processes ended
                if self.mailbox:
                    if self.shared.releases_waiting:
                        self.shared.send_releases()
                    self.mailbox.run_all()
                now = time.monotonic()
                if ended or now >= self._next_check:
                    self._receive()  # what came meanwhile first: a RESULT in is not late
                    self._next_check = now + self.pool.check_processes(now, ended)
                if now >= next_heartbeat:
                    self.shared.trim(now)
                    self.pool.send_heartbeats()
                    next_heartbeat = now + self.heartbeat_interval
                if self._step(now):
                    break
                self._end_turn()
        except BaseException as exc:  # the loop itself failed: nothing may hang on it
            self.pool.loop_error = self.lifecycle.loop_error = exc
            self.pool.fail_all(SockpoolError(f"the cluster's I/O thread failed: {exc!r}"))
        finally:
            self._teardown()

    def _step(self, now: float) -> bool:
        """Hand out work, or take the next step of closing; True once every worker is gone."""
        state = self.lifecycle.state
        if state is ClusterState.OPEN or state is ClusterState.DRAINING:
            if (kept_until := self.reclaims.ask(self.pool.workers, now)) is not None:
                self._check_by(kept_until)  # assign then, at the latest
            if state is ClusterState.DRAINING or self.scheduler.has_waiting():
                self.sender.assign()
            # A command still in the mailbox may be a submit made before shutdown().
            if state is ClusterState.OPEN or not self.scheduler.idle() or self.mailbox:
                return False
            self.lifecycle.move(ClusterState.STOPPING)
        if self.lifecycle.state is not ClusterState.STOPPING:
            return False  # broken: nothing to run until the user closes it
        if self.pool.stop_started is None:
            write_off_everything(self.scheduler)  # begin_stop then sends them SHUTDOWN
            self.pool.begin_stop(now)
        return self.pool.stop_step(now)

    def _check_by(self, when: float) -> None:
        """Check processes and deadlines (and assign) again at ``when`` at the latest."""
        self._next_check = min(self._next_check, when)

    def _teardown(self) -> None:
        self._held.release()
        self.lifecycle.move(ClusterState.STOPPING)
        self.pool.teardown()
        self.master.close()
        self.shared.close()
        self.lifecycle.move(ClusterState.CLOSED)
        self.mailbox.close()  # what was posted meanwhile still runs: no caller waits forever
        with self.pool.state_changed:
            self.pool.state_changed.notify_all()

    # -- the I/O thread: messages ----------------------------------------------------------

    def _receive(self) -> None:
        # The poller said a message is waiting.  After it, often none is: ask first
        # then; a third message makes a burst, where an empty read ends it cheaper.
        for turn in range(RECV_BATCH):
            frames = self.master.receive(check=turn == 1)
            if frames is None:
                return
            self._on_message_safely(frames)
            del frames
            if self.shared.releases_waiting:  # a result decoded here may be dropped already
                self.shared.send_releases()

    def _on_message_safely(self, frames: list[Any]) -> None:
        """Handle one message; whatever is wrong with it, drop it and go on."""
        try:
            self._on_message(frames)
        except protocol.ProtocolError as exc:  # malformed: dropped, never acted on
            logger.debug("sockpool: dropped a malformed message: %s", exc)
        except BaseException:  # one bad message must not take the cluster down (SystemExit too)
            logger.exception("sockpool: dropped a message that could not be handled")

    def _on_message(self, frames: list[Any]) -> None:
        if len(frames) < 2:
            raise protocol.ProtocolError("message without a header")
        prefix, worker_id = protocol.parse_identity(frames[0])
        record = self.pool.workers.get(worker_id)
        if record is None or not record.alive:
            return
        head, body = protocol.parse(frames[1])
        if head.kind is Kind.HELLO:
            self.admission.hello(record, prefix, body)
            return
        if record.state is WorkerState.STARTING and not (
                prefix == protocol.CONTROL_PREFIX and record.control_ready):
            return  # nothing counts before the worker proved it holds the token (there:
            # the answer to the probe its control HELLO got may beat its data HELLO)
        record.last_heard = time.monotonic()
        if prefix != protocol.DATA_PREFIX:
            if head.kind is Kind.HEARTBEAT:
                record.heard_beat(head, body)
            elif head.kind is Kind.RECLAIM and self.reclaims.answered(record, head):
                self.pool.after_result(record, time.monotonic(), False)  # it may retire
            return
        if head.kind is Kind.RESULT:
            if (asked := record.stacks_asked) is not None and asked[0].id == head.ident:
                return  # past its time limit, being stopped: too late (pool._stop_overrun)
            record.results_received += 1
            times = None
            if head.flags & protocol.Flag.PROFILE:
                times, body = protocol.split_stamps(body)
            try:
                payload = self.shared.payload(record, head, body, frames)
            except shm.SharedMemoryError as exc:  # it ended just after sending, say
                record.process.kill()
                self.pool.lost(record, f"its result could not be read from shared memory: {exc}")
                return
            self._on_result(record, head, payload, times)
            if record.alive and (self.scheduler.load(record.id) or record.setup_chunk):
                self.sender.owe_ack(record)
        elif head.kind is Kind.STARTED:  # a timed chunk's tasks start, and their clock
            chunk = self.scheduler.in_flight.get(record.id, {}).get(head.ident)
            # (not one being stopped already: for loading past twice its limit)
            if chunk is not None and record.stacks_asked is None:
                chunk.started_at = record.last_heard
                if (deadline := chunk.job.deadline(chunk)) is not None:
                    self._check_by(deadline)
        elif head.kind is Kind.OUTPUT:
            self._on_output(record, head, (body, [frame.buffer for frame in frames[2:]]))
        elif head.kind is Kind.RELEASE:
            self.shared.released(record, body)

    def _on_result(self, record: WorkerRecord, head: protocol.Header,
                   payload: tuple[memoryview, list[Any]], times: TaskTimes | None) -> None:
        if record.setup_chunk is not None and head.ident == record.setup_chunk.id:
            self.admission.setup_result(record, payload)
            return
        # Refused for a buffer it lacked, nothing ran: it goes again, first, in full.
        missing = head.flags & Flag.MISSING_BUFFERS
        if head.flags & Flag.GIVEN_BACK:  # skipped there: a copy runs elsewhere
            if missing:
                self._forget_buffers(record, None)
            self.reclaims.skipped(record, head)
            return
        chunk = (self.scheduler.take_back(record.id, head.ident) if missing
                 else self.scheduler.complete(record.id, head.ident, time.monotonic()))
        if chunk is None:
            return
        if missing:
            self._forget_buffers(record, chunk.sent_at)
        self.reclaims.freed.add(record.id)
        cancelled = bool(head.flags & protocol.Flag.CANCELLED)
        if self.profiler.active:
            size = payload[0].nbytes + sum(memoryview(b).nbytes for b in payload[1])
            self.profiler.returned(chunk, record, times, size, cancelled)
        if not missing:
            self.shared.finished(chunk)
            if cancelled:
                chunk.job.dropped(chunk, payload)
            else:
                record.tasks_done += chunk.count - chunk.resume
                self._held.hold(chunk, record.label, payload)
        if head.flags & Flag.STALE_FUNCTION:  # its payload changed as it was sent: resend it
            self.master.send(record.data_identity,
                             record.functions.uncache(chunk.job.function.digest))
        self.pool.after_result(record, time.monotonic(), bool(head.flags & Flag.OVER_MEMORY))

    def _forget_buffers(self, record: WorkerRecord, sent_at: float | None) -> None:
        """A TASK sent at ``sent_at`` was refused: see ``FunctionMirror.forget_buffers``."""
        for forget in record.functions.forget_buffers(sent_at):
            self.master.send(record.data_identity, forget)

    def _on_output(self, record: WorkerRecord, head: protocol.Header,
                   payload: tuple[memoryview, list[Any]]) -> None:
        """What a running chunk wrote so far: write it now (live) or hold it for its end."""
        chunk = self.scheduler.in_flight.get(record.id, {}).get(head.ident)
        if chunk is None and record.setup_chunk is not None and head.ident == record.setup_chunk.id:
            chunk = record.setup_chunk
        if chunk is None:
            return
        relay.hold(chunk.output, codec.loads(*payload), self.relay_mode == "live")

    def _end_turn(self) -> None:
        """Send the ACKs no TASK carried, then deliver the results held this turn:
        their callers wake once for them all."""
        self.sender.send_acks()
        self._held.release()
        if self.shared.releases_waiting:  # segments of the futures' results just decoded
            self.shared.send_releases()

    # -- the I/O thread: commands posted by the public methods ----------------------------

    def _submit(self, chunks: list[Chunk], waited: bool = False) -> None:
        # Work made before shutdown() still runs while the cluster drains.
        state = self.lifecycle.state
        if state not in (ClusterState.OPEN, ClusterState.DRAINING):
            for chunk in chunks:  # close() cancels a submit's that came just before it
                if state is not ClusterState.STOPPING or not chunk.job.cancel_waiting(chunk):
                    chunk.job.fail(chunk, self.lifecycle.refusal())
            return
        self.scheduler.submit(chunks)
        # Now, not once every queued command ran (a cancel_futures): an idle worker's,
        # or a waiting caller's (it holds the GIL again at once) to any with room.
        if waited or any(not held for held in self.scheduler.in_flight.values()):
            self.sender.assign()

    def _broadcast(self, job: Job, frames: list[Any]) -> list[Chunk]:
        chunks = [job.chunk(position, 1, frames, pinned=worker_id)
                  for position, worker_id in enumerate(self.pool.live_ids())]
        self._submit(chunks)
        return chunks

    def _cancel(self, job: Job, interrupt: bool) -> None:
        dropped, running = self.scheduler.cancel(job)
        for chunk in dropped:
            job.dropped(chunk)
        for record in (self.pool.workers[worker_id] for worker_id in running if interrupt):
            if record.control_ready:
                self.master.send(record.control_identity, [protocol.header(Kind.CANCEL, 0, job.id)])

    def _cancel_futures(self) -> None:
        for chunk in self.scheduler.drain():
            if not chunk.job.cancel_waiting(chunk):
                self.scheduler.submit([chunk])

    def _add_export(self, names: list[str], frames: list[Any]) -> None:
        self.exports.add(names, frames)
        for record in self.pool.workers.values():
            if record.alive and record.has_exports:  # (a worker in setup gets it after)
                self.master.send(record.data_identity, frames)
