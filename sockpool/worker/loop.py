"""The data connection and its loop (main thread): TASK, EXPORT and FORGET in, RESULT out.

The loop is the data socket's only user: it sends HELLO, then answers each
TASK with its RESULT (and, while the chunk runs, its OUTPUT), takes EXPORT,
FORGET and RELEASE, and ends on SHUTDOWN, by this connection or by the
control one (the watchdog sets the state to STOPPING).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from ..common import protocol, shm, wire
from ..common.protocol import Flag, Kind
from . import link
from .functions import FunctionCache
from .results import MASTER
from .runner import ChunkRunner
from .state import WorkerState


class DataLoop:
    """Serves the data connection until SHUTDOWN (main thread).

    Args:
        data: the data connection (a DEALER dialed to the master).
        preload: what to do on a thread of its own while the master waits for the
            other workers (imports a first task would wait for), done before
            anything of the master's runs; or None.
        state: the phase shared with the watchdog.
        runner: runs the chunks of TASK messages.
        functions: the task functions and exports, which EXPORT and FORGET change.
        shared: this worker's segments the master can map, or None.
        released: serials of the master's segments whose mappings here are
            gone (any thread appends), told to the master before each RESULT.
    """

    def __init__(self, data: zmq.Socket[bytes], preload: Callable[[], None] | None,
                 state: WorkerState, runner: ChunkRunner, functions: FunctionCache,
                 shared: shm.SegmentPool | None, released: deque[int]) -> None:
        self.data = data
        self.preload = preload
        self.state = state
        self.runner = runner
        self.functions = functions
        self.shared = shared
        self.released = released
        # RESULTs sent, and how many of them the master said it received: no task
        # starts while one may still sit in libzmq's queue here, to die with us,
        # unless it is the last one and the progress log keeps it (_may_start_unacked).
        self.sent = 0
        self.acked = 0
        self._held: deque[list[Any]] = deque()  # what came while waiting for an ACK

    def serve(self, hello: bytes) -> None:
        """Say HELLO, then run what comes until SHUTDOWN."""
        self.data.send(hello)
        preload: threading.Thread | None = None
        if self.preload is not None:
            preload = threading.Thread(target=self.preload, name="sockpool-preload",
                                       daemon=True)
            preload.start()
        while not self.state.stopping:
            frames = self._held.popleft() if self._held else wire.recv_message(self.data)
            try:
                head, body = protocol.parse(frames[0])
            except protocol.ProtocolError:
                continue
            if preload is not None and head.kind in (Kind.TASK, Kind.EXPORT):
                # Never import it from two threads at once: dill's circular imports
                # then hand one of them a half-made module ("no attribute '_dill'").
                preload.join()
                preload = None
            buffers = [frame.buffer for frame in frames[1:]]
            if head.kind is Kind.TASK:
                self.acked = max(self.acked, protocol.task_acked(body))
                if (self.acked < self.sent and not self._may_start_unacked(head.flags)
                        and not self._wait_for_ack()):
                    break  # SHUTDOWN came meanwhile
                reply = self.runner.run(head, body, buffers,
                                        keep_last_result=self.acked < self.sent)
                if self.released:  # first, so the master may reuse them once it has the result
                    self._send_releases()
                self.runner.keep_result(reply)
                link.send(self.data, reply)
                self.sent += 1
                # Not kept while idle: the segment a large result went out in is
                # freed once the master lets go of it, and its arguments now.
                del reply, frames, buffers, body
            elif head.kind is Kind.ACK:
                self.acked = max(self.acked, head.ident)
            elif head.kind is Kind.RELEASE and self.shared is not None:
                self.shared.release(protocol.parse_release(body), MASTER)
            elif head.kind is Kind.EXPORT:
                self.functions.load_export(*protocol.parse_export(body), buffers)
            elif head.kind is Kind.FORGET:
                self.functions.forget(bytes(body))
            elif head.kind is Kind.SHUTDOWN:
                self.state.shutdown()
                break

    def _may_start_unacked(self, flags: int) -> bool:
        """Whether a chunk may start before the master has every RESULT sent: only
        the last one is missing, and it stays in the progress log, which the master
        reads should this process die (``PAGE_READ``).  Then no round trip stalls
        a worker between the chunks of a map."""
        return (self.sent - self.acked == 1 and bool(flags & Flag.PAGE_READ)
                and self.runner.holds_last_result())

    def _wait_for_ack(self) -> bool:
        """Wait until the master has every RESULT sent; False if SHUTDOWN came meanwhile.

        RELEASE is handled at once; anything else waits its turn, in order.
        """
        while self.acked < self.sent:
            frames = wire.recv_message(self.data)
            try:
                head, body = protocol.parse(frames[0])
            except protocol.ProtocolError:
                continue
            if head.kind is Kind.ACK:
                self.acked = max(self.acked, head.ident)
            elif head.kind is Kind.SHUTDOWN:
                self.state.shutdown()
                return False
            elif head.kind is Kind.RELEASE and self.shared is not None:
                self.shared.release(protocol.parse_release(body), MASTER)
            else:
                if head.kind is Kind.TASK:  # sent after the master had what it counts
                    self.acked = max(self.acked, protocol.task_acked(body))
                self._held.append(frames)
        return True

    def _send_releases(self) -> None:
        serials = []
        while self.released:
            serials.append(self.released.popleft())
        self.data.send(protocol.release_message(serials))
