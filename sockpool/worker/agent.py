"""The host agent: one per remote host, started over ssh, it runs that host's workers.

One ssh session per host starts this agent (its bootstrap,
``sockpool/launchers/ssh_bootstrap.py``, calls :func:`main` once the host
passed its checks); the master then writes one JSON line per command to the
agent's stdin:

* ``{"start": config}``, ``config`` a worker's
  :class:`~sockpool.common.config.WorkerConfig` as JSON text (its CURVE keys
  included): the agent starts ``python -m sockpool.worker`` and hands it the
  config through the worker's own stdin.  Nothing secret is ever on a command line;
* ``{"signal": id, "signum": n}``: signal that worker;
* ``{"stacks": id}``: have that worker write its main thread's stack (its task ran
  past its time limit); it ends as it does, and its exit report carries the stack.

The agent reports on its stdout, one JSON line per event:

* ``{"alive": n}`` every heartbeat interval: the session is healthy, n workers run;
* ``{"exit": id, "status": code, "tail": "...", "stacks": "...", "page": ..., "log": ...}``
  when a worker ends, with the end of its stderr, so a remote crash is known at once
  and explained, the stack it wrote if it was asked, and (base64) its progress page
  and result log, which this agent
  made and held (:mod:`.progress`), so that the results of the tasks it
  finished in the chunk it died in reach the master as a local worker's do.

Remote workers never outlive the master (docs/ssh.md states the bounds):

* stdin end-of-file (the master died, or its ssh client did): the agent stops
  its workers (SIGTERM, then SIGKILL) and exits;
* each worker is tied to the agent (stdin and the parent-death signal) and
  gives up on a silent master by itself (heartbeats), so a cut network ends it;
* an agent left with no worker for ``idle_exit`` seconds exits too.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, NamedTuple

from ..common.config import WorkerConfig
from ..common.groups import end_lingering, ended_unreaped, note_ended
from ..common.proc import (
    explain_kill,
    memory_cgroup,
    note_inherited_peak,
    oom_kills,
    read_stacks,
    reap,
    show_stacks,
    stacks_beside,
    worker_output_paths,
    worker_output_tail,
)
from . import progress

#: After SIGTERM, how long workers get before SIGKILL when the agent stops.
STOP_GRACE = 2.0
#: How long a worker asked for its stack is waited for, to report its exit at once
#: (one that does not end by then is reported by the loop: it blocks no longer).
STACKS_WAIT = 0.02


@dataclass(frozen=True)
class AgentOptions:
    """How an agent runs, as the ssh launcher asks (through its bootstrap, as JSON)."""

    idle_exit: float = 30.0  #: with no worker left for this long, exit
    report_interval: float = 1.0  #: seconds between ``{"alive": n}`` reports
    cleanup: tuple[str, ...] = ()  #: files to remove on exit (a tunnel's socket)

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> AgentOptions:
        """Read the launcher's JSON object; a missing key keeps its default."""
        return cls(**{**options, "cleanup": tuple(options.get("cleanup", ()))})


class AgentWorker(NamedTuple):
    """A worker this agent started, and where the out-of-memory killer would act on it."""

    process: subprocess.Popen[bytes]
    log_path: str
    cgroup: str | None
    oom_kills: int | None
    progress_fd: int | None  #: its progress page and result log, read once it ended
    started: float  #: time.monotonic() when it started
    stacks_path: str  #: where it writes its stack when asked


class HostAgent:
    """Starts, watches and stops the workers of one host."""

    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.workdir = tempfile.mkdtemp(prefix="sockpool-agent-")
        self.workers: dict[int, AgentWorker] = {}
        #: the process groups of workers that ended, and when (:mod:`..common.groups`)
        self.ended_groups: dict[int, int] = {}
        self.idle_since = time.monotonic()

    def start_worker(self, line: str) -> None:
        """Start a worker with ``line``, its config as the master sent it.

        The worker is tied to this agent: it watches its stdin, a pipe from
        here, and dies with it (the parent-death signal).
        """
        try:
            page: int | None = progress.make_page()
        except (AttributeError, OSError):  # no memfd here: the master knows less
            page = None
        config = WorkerConfig.from_json(line).replace(watch_stdin=True, parent_pid=os.getpid(),
                                                      progress_fd=page)
        worker_id = config.worker_id
        log_path, out_path = worker_output_paths(self.workdir, worker_id)
        stacks_path = stacks_beside(log_path)
        config = config.replace(stacks_path=stacks_path)
        # (stdout apart: what a chunk writes to either is read back: below_python.py)
        with open(log_path, "wb") as log, open(out_path, "wb") as out:
            try:
                process = subprocess.Popen(
                    [sys.executable, "-m", "sockpool.worker"], stdin=subprocess.PIPE,
                    stdout=out, stderr=log, start_new_session=True,
                    pass_fds=() if page is None else (page,))
                note_inherited_peak(process)
            except OSError as exc:
                if page is not None:
                    os.close(page)
                self.report({"exit": worker_id, "status": 127, "tail": str(exc)})
                return
        assert process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            process.stdin.write(config.to_json().encode() + b"\n")
            process.stdin.flush()
        cgroup = memory_cgroup(process.pid)
        self.workers[worker_id] = AgentWorker(process, log_path, cgroup, oom_kills(cgroup), page,
                                              time.monotonic(), stacks_path)

    def signal_worker(self, worker_id: int, signum: int) -> None:
        """Send ``signum`` to a worker still running (a master's terminate or kill)."""
        entry = self.workers.get(worker_id)
        if entry is not None and reap(entry.process) is None:
            with contextlib.suppress(ProcessLookupError):
                entry.process.send_signal(signum)

    def show_stacks(self, worker_id: int) -> None:
        """Have a worker write its stack (it ends as it does), and report it at once."""
        entry = self.workers.get(worker_id)
        if entry is None or reap(entry.process) is not None:
            return
        if show_stacks(entry.process.pid, entry.stacks_path):
            deadline = time.monotonic() + STACKS_WAIT  # (microseconds, once scheduled)
            while ended_unreaped(entry.process.pid) is False and time.monotonic() < deadline:
                time.sleep(0.002)  # (not reaped here: reap() notes its group first)
            self.reap()

    def reap(self) -> None:
        """Report every worker that ended since the last look (and SIGTERM what its
        tasks left running in its process group)."""
        for worker_id, worker in list(self.workers.items()):
            process = worker.process
            ended = ended_unreaped(process.pid)
            if ended is False:
                continue
            if ended:  # (before its pid, and its group's id, is free)
                note_ended(self.ended_groups, process.pid)
            status = reap(process)
            if status is None:
                continue
            del self.workers[worker_id]
            stdin: BinaryIO | None = process.stdin  # type: ignore[assignment]
            if stdin is not None:
                with contextlib.suppress(OSError):
                    stdin.close()
            how = explain_kill(process.pid, status, getattr(process, "peak_bytes", None),
                               worker.cgroup, worker.oom_kills, worker.started)
            event = {"exit": worker_id, "status": status, "how": how,
                     "tail": worker_output_tail(worker.log_path),
                     "stacks": read_stacks(worker.stacks_path)}
            if worker.progress_fd is not None:
                event.update(progress.report_fields(worker.progress_fd))
                os.close(worker.progress_fd)
            self.report(event)
        if self.workers:
            self.idle_since = time.monotonic()

    def report(self, event: dict[str, Any]) -> None:
        """One JSON line to the master; a session gone means stopping."""
        try:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            self.stop("the master's ssh session is gone")

    def handle(self, line: bytes) -> None:
        """Carry out one command line from the master (a line that is not JSON is ignored)."""
        try:
            command = json.loads(line)
        except ValueError:
            return
        if "start" in command:
            self.start_worker(command["start"])
        elif "stacks" in command:
            self.show_stacks(int(command["stacks"]))
        elif "signal" in command:
            self.signal_worker(int(command["signal"]), int(command.get("signum", signal.SIGTERM)))

    def run(self) -> None:
        """Read commands, reap and report workers, until stdin ends or idleness (never returns)."""
        selector = selectors.DefaultSelector()
        stdin = sys.stdin.buffer
        selector.register(stdin, selectors.EVENT_READ)
        pending = b""
        next_alive = 0.0
        while True:
            for _ in selector.select(timeout=0.1):
                data = os.read(stdin.fileno(), 65536)
                if not data:
                    self.stop(None)
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    self.handle(line)
            self.reap()
            now = time.monotonic()
            if now >= next_alive:
                self.report({"alive": len(self.workers)})
                next_alive = now + self.options.report_interval
            if not self.workers and now - self.idle_since > self.options.idle_exit:
                self.stop(f"no worker left for {self.options.idle_exit:g} s")

    def stop(self, reason: str | None) -> None:
        """Stop every worker, remove the agent's files and exit."""
        for process, *_ in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for process, *_ in self.workers.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))
            if process.poll() is None:
                process.kill()
                process.wait()
        end_lingering(self.ended_groups)  # what their tasks left running
        shutil.rmtree(self.workdir, ignore_errors=True)
        for path in self.options.cleanup:
            with contextlib.suppress(OSError):
                os.unlink(path)
        if reason:
            os.write(2, f"sockpool agent {os.getpid()}: exiting: {reason}\n".encode())
        os._exit(0)


def main(options: Mapping[str, Any]) -> None:
    """Run the agent (the ssh bootstrap calls this once its checks passed).

    Args:
        options: the :class:`AgentOptions` the launcher sent, as a JSON object.
    """
    agent = HostAgent(AgentOptions.from_dict(options))
    signal.signal(signal.SIGTERM, lambda *_: agent.stop("SIGTERM"))
    signal.signal(signal.SIGHUP, lambda *_: agent.stop("SIGHUP"))
    agent.run()
