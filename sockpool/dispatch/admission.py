"""A worker's way in: its HELLO proves it holds the cluster's token, then it is set up.

On the data connection the HELLO says who the worker is (pid, host, whether it
shares this machine's memory); with ``Cluster(setup=)`` it runs the setup
function, then gets every export, as the first workers did (their setup ran
before any ``export()``), and answers a call of nothing after them: it takes
tasks once they are loaded.  On the
control connection the HELLO opens heartbeats (clock probes, for a worker on
another machine).
Runs on the I/O thread only.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..common import codec, protocol
from . import output as relay
from .jobs import Chunk, Job, TaskFailure, decode_outcome
from .pool import WorkerPool
from .records import WorkerRecord, WorkerState, setup_error
from .sharing import SharedTransfers
from .task_progress import ProgressPage
from .transport import MasterSocket


class Exports:
    """What ``export()`` sent, in order, for the workers that start later; an export
    whose every name a later one gave again is dropped, and its memory with it."""

    def __init__(self) -> None:
        self._sent: list[tuple[set[str], list[Any]]] = []  # its names not given again

    def add(self, names: list[str], frames: list[Any]) -> None:
        """An EXPORT message of values by ``names``."""
        for live, _ in self._sent:
            live.difference_update(names)
        self._sent = [sent for sent in self._sent if sent[0]]
        self._sent.append((set(names), frames))

    def __iter__(self) -> Iterator[list[Any]]:
        return (frames for _, frames in self._sent)

    def __bool__(self) -> bool:
        return bool(self._sent)


class Admission:
    """Takes workers from STARTING to READY, through SETUP (its setup function, then
    the exports and the call of nothing after them; none of it if there is none)."""

    def __init__(self, token: str, master: MasterSocket, shared: SharedTransfers,
                 pool: WorkerPool, exports: Exports, setup_jobs: tuple[Job | None, Job],
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
        self.exports = exports  # the dispatcher's: exports added later count too
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
        record.state = WorkerState.SETUP
        if self.setup_job is not None:
            self._run(record, self.setup_job)
        else:
            self._export(record)

    def _export(self, record: WorkerRecord) -> None:
        """Send a worker the exports; it is ready once it has loaded them (it answers
        a call of nothing after them): its first timed task is not charged for them."""
        record.has_exports = True
        for frames in self.exports:
            self.master.send(record.data_identity, frames)
        if self.exports:
            self._run(record, self.loaded_job)
        else:
            self.pool.mark_ready(record)

    def _run(self, record: WorkerRecord, job: Job) -> None:
        record.setup_chunk = job.chunk(0, 1, codec.dumps(((), {})))
        self.send_chunk(record, record.setup_chunk)

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
            if chunk.job is self.setup_job:
                self._export(record)
            else:
                self.pool.mark_ready(record)
            return
        record.failure = setup_error(record, chunk, failures[0].error)
        record.process.kill()  # its exit reports the failure, once
