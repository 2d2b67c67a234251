"""The watchdog thread: the control connection, and the end of a worker whose master is gone.

It owns the *control* connection: it sends and checks heartbeats, takes
CANCEL and SHUTDOWN (interrupting the running chunk through the shared
:class:`~.state.WorkerState`), and, for local workers, watches stdin, whose
end-of-file means the master process is gone.  It ends the process when the
master falls silent, so a worker never outlives its master, and when the main
thread has not finished within :data:`SHUTDOWN_GRACE` of a SHUTDOWN.
It keeps answering while a task holds the main thread.  It answers the
master's clock probes at once, with its own clock and the process's memory
and CPU use, so that the master can align task times and show every worker's
use on remote hosts.  A worker on the master's machine gets plain heartbeats
instead, which want no answer: the master watches its process and reads its
use itself.
"""

from __future__ import annotations

import os
import signal
import time
from typing import NoReturn

import zmq

from ..common import protocol, shm, shm_reader
from ..common.config import WorkerConfig
from ..common.protocol import Kind
from .children import end_descendants
from .state import WorkerState
from .usage import cpu_seconds, cpu_ticks, is_stopped, resident_bytes

#: How long after SHUTDOWN the watchdog waits for the main thread before it
#: ends the process itself.
SHUTDOWN_GRACE = 1.0
#: After a heartbeat from the master, a worker sends one of its own only if the
#: master's next one is this many intervals late: while the master beats every
#: interval, the answers to its probes are the worker's heartbeats (one message
#: a second each way, not two), and a worker it only tells it is there (one on
#: its own machine) says nothing.
MASTER_BEAT_SLACK = 1.5


class Watchdog:
    """Heartbeats, cancellation and the master-gone check (its own thread).

    Args:
        control: the control connection (a DEALER dialed to the master).
        state: the phase shared with the main thread.
        main_thread: the id of the thread that runs tasks, which SIGINT interrupts.
        config: its heartbeat interval and the master's timeout.
        shared: this worker's segments, trimmed at each heartbeat, or None.
        lifeline: the pipe that was stdin, whose end-of-file means the master is
            gone, or None.
    """

    def __init__(self, control: zmq.Socket[bytes], state: WorkerState, main_thread: int,
                 config: WorkerConfig, shared: shm.SegmentPool | None,
                 lifeline: int | None = None) -> None:
        self.control = control
        self.state = state
        self.main_thread = main_thread
        self.heartbeat_interval = config.heartbeat_interval
        self.master_timeout = config.master_timeout
        self.lifeline = lifeline
        self.shared = shared
        self.master_beat = False  # a heartbeat from the master just came
        self.master = MasterPulse(config.master_pid)

    def run(self, hello: bytes) -> None:
        """Say HELLO, then watch until the process ends (the watchdog thread's loop)."""
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        if self.lifeline is not None:
            poller.register(self.lifeline, zmq.POLLIN)
        self.control.send(hello)
        heartbeat = protocol.header(Kind.HEARTBEAT)
        last_heard = time.monotonic()
        due = last_heard + self.heartbeat_interval  # this worker's own next heartbeat
        # (within half the master's patience, where a heartbeat_timeout set it short)
        beat_wait = min(MASTER_BEAT_SLACK * self.heartbeat_interval, self.master_timeout / 2)
        trim_at = due if self.shared is not None else float("inf")  # of idle shared memory
        shutdown_at: float | None = None
        busy_at = 0.0  # when the silent master was last found busy, not frozen
        while True:
            timeout = max(0.0, min(due, trim_at, shutdown_at or float("inf")) - time.monotonic())
            for source, _ in poller.poll(int(timeout * 1000)):
                if source is self.control:
                    while self.control.poll(0):
                        last_heard = time.monotonic()
                        if self._on_control(self.control.recv()) and shutdown_at is None:
                            shutdown_at = time.monotonic() + SHUTDOWN_GRACE
                        if self.master_beat:  # the master's next one is due first
                            due = last_heard + beat_wait
                            self.master_beat = False
                    self.master.heard()
                elif self.lifeline is not None and not os.read(self.lifeline, 4096):
                    die("the master process is gone (stdin closed)")
            now = time.monotonic()
            if now >= due:
                self.control.send(heartbeat)
                due = now + self.heartbeat_interval
            if now >= trim_at and self.shared is not None:
                self.shared.trim(now)
                shm_reader.trim_mappings(now)
                trim_at = now + self.heartbeat_interval
            # Not if a word came while a task held the GIL (the poll above timed out
            # before), nor while a master on this machine is busy, not frozen.
            if (now - max(last_heard, busy_at) > self.master_timeout
                    and not self.control.poll(0)):
                if not self.master.alive():
                    die(f"no word from the master for {now - last_heard:.1f} s")
                busy_at = now
            if shutdown_at is not None and now >= shutdown_at:
                die(None)

    def _on_control(self, frame: bytes) -> bool:
        """Handle one control message; True when it asks the worker to stop."""
        try:
            head, _ = protocol.parse(frame)
        except protocol.ProtocolError:
            return False
        if head.kind is Kind.HEARTBEAT:
            if head.ident:  # a clock probe: answer now (it counts as this turn's heartbeat)
                self.control.send(protocol.clock_reply(head.ident, resident_bytes(),
                                                       cpu_seconds()))
            self.master_beat = True
        elif head.kind is Kind.CANCEL:
            if self.state.cancel(head.job):
                self._interrupt()
        elif head.kind is Kind.RECLAIM:
            given = protocol.Flag.GIVEN_BACK if self.state.reclaim(head.ident) else 0
            self.control.send(protocol.header(Kind.RECLAIM, given, head.job, head.ident))
        elif head.kind is Kind.SHUTDOWN:
            if self.state.shutdown():
                self._interrupt()
            return True
        return False

    def _interrupt(self) -> None:
        """SIGINT to the main thread, whose handler interrupts the running chunk."""
        signal.pthread_kill(self.main_thread, signal.SIGINT)


class MasterPulse:
    """Whether a silent master on this machine is alive, though it says nothing.

    It is, while it uses CPU (it holds its GIL in a long call, say, and its I/O
    thread cannot run; a frozen master uses none), and while it is stopped (Ctrl-Z,
    a debugger): paused by someone who may continue it, as the workers of a
    multiprocessing pool, stopped with it, wait for.

    Args:
        pid: the master's process id, where it runs on this machine, else None
            (then only its words count).
    """

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        # Its CPU time when last heard, or found alive; from the start: under load the
        # master may answer nothing before a long call holds its GIL.
        self.ticks = cpu_ticks(pid) if pid is not None else None
        self.stopped = False  # when last looked at

    def heard(self) -> None:
        """It spoke: the next check counts the CPU it uses from now on."""
        self.stopped = False
        if self.pid is not None:
            self.ticks = cpu_ticks(self.pid)

    def alive(self) -> bool:
        """Whether it used CPU or was stopped since it was last heard or found alive.

        A master continued since the last look counts as alive once more, with no
        CPU used: its first heartbeat may be on its way (its clock tick, 10 ms,
        may not have turned yet).
        """
        if self.pid is None:
            return False
        was_stopped, self.stopped = self.stopped, is_stopped(self.pid)
        before, self.ticks = self.ticks, cpu_ticks(self.pid)
        return (self.stopped or was_stopped
                or (before is not None and self.ticks is not None and self.ticks > before))


def die(reason: str | None) -> NoReturn:
    """End the process now, from any thread."""
    if reason:  # straight to the process's stderr: the relay may be holding sys.stderr
        os.write(2, f"sockpool worker {os.getpid()}: exiting: {reason}\n".encode())
    end_descendants()
    os._exit(0 if reason is None else 1)
