"""A worker's way in: its HELLO proves it holds the cluster's token, then it is set up.

On the data connection the HELLO says who the worker is (pid, host, whether it
shares this machine's memory); it then gets every export and, with
``Cluster(setup=)``, runs the setup function before it takes tasks (without one,
a call of nothing, where there are exports: it takes tasks once they are loaded).  On the
control connection the HELLO opens heartbeats (clock probes, for a worker on
another machine).
Runs on the I/O thread only.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from ..common import codec, protocol
from . import output as relay
from .jobs import Chunk, Job, TaskFailure, decode_outcome
from .pool import WorkerPool
from .records import WorkerRecord, WorkerState, setup_error
from .sharing import SharedTransfers
from .task_progress import ProgressPage
from .transport import MasterSocket


class Admission:
    """Takes workers from STARTING to READY (through SETUP when there is a setup job)."""

    def __init__(self, token: str, master: MasterSocket, shared: SharedTransfers,
                 pool: WorkerPool, exports: list[list[Any]], setup_jobs: tuple[Job | None, Job],
                 send_chunk: Callable[[WorkerRecord, Chunk], bool]) -> None:
        """
        Args:
            setup_jobs: the job of ``Cluster(setup=)`` if given, and a call of nothing,
                which a worker answers once it has loaded what it was sent before.
        """
        self.token = token
        self.master = master
        self.shared = shared
        self.pool = pool
        self.exports = exports  # the dispatcher's list: exports added later count too
        self.setup_job, self.loaded_job = setup_jobs
        self.send_chunk = send_chunk

    def hello(self, record: WorkerRecord, prefix: bytes, body: memoryview) -> None:
        """A HELLO on either connection: check its token, then set the worker up."""
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
            self.master.send(record.control_identity, [record.heartbeat()])
            return
        if record.state is not WorkerState.STARTING:
            return
        record.pid = int(info.get("pid", record.pid))
        self.shared.check_hello(record, info.get("shared_memory"))
        if record.shared_memory:  # same host, same user: its progress page is ours to read
            record.progress = ProgressPage.open(info.get("progress"))
        if not record.process.host_known:
            record.host = str(info.get("host", record.host))
        for frames in self.exports:
            self.master.send(record.data_identity, frames)
        # Ready once set up, or once it has loaded the exports (it answers a call of
        # nothing after them): its first timed task is not charged for them.
        job = self.setup_job or (self.loaded_job if self.exports else None)
        if job is not None:
            record.state = WorkerState.SETUP
            record.setup_chunk = job.chunk(0, 1, codec.dumps(((), {})))
            self.send_chunk(record, record.setup_chunk)
        else:
            self.pool.mark_ready(record)

    def setup_result(self, record: WorkerRecord, payload: tuple[memoryview, list[Any]]
                     ) -> None:
        """The setup function's RESULT: the worker is ready, or fails to start."""
        chunk = record.setup_chunk
        assert chunk is not None
        record.setup_chunk = None
        _, failures, _, output = decode_outcome(chunk, record.label, payload)
        try:
            relay.emit(output)
        except Exception as exc:  # a warning under an "error" filter fails the setup
            failures = [TaskFailure(0, exc)]
        if not failures:
            self.pool.mark_ready(record)
            return
        record.failure = setup_error(record, chunk, failures[0].error)
        record.process.kill()  # its exit reports the failure, once
