"""One ssh session per host: the ssh client, what its agent reports, and its workers' handles.

The session's stdin carries the bootstrap, then one line per command to the
host's agent (start a worker, signal one); its stdout carries the agent's
reports (``hello``, ``alive``, ``exit``), read by one thread per session.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import shlex
import subprocess
import threading
import time
from typing import Any, BinaryIO

from ..common.proc import describe_exit, read_tail
from ..errors import LaunchError
from .base import WorkerProcess
from .ssh_hosts import SSHHost

#: A session whose agent has not reported for this many heartbeat intervals gets
#: no new workers: less than the 5 after which its workers count as lost, so a
#: host cut off gets no replacement of them.
SESSION_SILENCE = 2.5
#: Seconds a session whose agent has fallen silent gets to end before its client is killed.
SILENT_HOST_GRACE = 0.2


class HostSession:
    """The ssh session to one host: its client process and what its agent reports.

    Args:
        host: the host it runs on.
        argv: the ssh command line (no secret in it).
        preamble: what the session's stdin carries first (the bootstrap and its data).
        log_path: where the ssh client's stderr goes.
        heartbeat_interval: the cluster's; the agent reports this often.
    """

    def __init__(self, host: SSHHost, argv: list[str], preamble: bytes, log_path: str,
                 heartbeat_interval: float) -> None:
        self.host = host
        self.silence = SESSION_SILENCE * heartbeat_interval
        self.command = shlex.join(argv)
        self.log_path = log_path
        self.hello: dict[str, Any] | None = None
        self.exits: dict[int, tuple[int, str, str]] = {}  # id: (status, stderr tail, how)
        self.progress: dict[int, tuple[bytes, bytes]] = {}  # id: (page words, result log)
        self.stacks: dict[int, str] = {}  # id: the stack it wrote when asked (a timeout)
        self.last_report = time.monotonic()
        self.returncode: int | None = None
        with open(log_path, "wb") as log:
            try:
                self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
                    argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                    start_new_session=True)  # Ctrl-C is the master's to handle
            except OSError as exc:
                self.process = None
                self.returncode = 127
                log.write(f"cannot run ssh: {exc}\n".encode())
                return
        self._lock = threading.Lock()
        self._write(preamble)
        self._reader = threading.Thread(target=self._read, name=f"sockpool-ssh-{host.destination}",
                                        daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        """The ssh client's process id (0 when it could not be started)."""
        return self.process.pid if self.process is not None else 0

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a login banner or a shell's chatter
            if not isinstance(event, dict):
                continue  # chatter that happens to read as JSON: "2024", say
            self.last_report = time.monotonic()
            if "hello" in event:
                self.hello = event["hello"]
            elif "exit" in event:
                status = int(event["status"])
                with contextlib.suppress(KeyError, TypeError, binascii.Error):
                    # before its exit shows: the master reads it once the worker is gone
                    self.progress[int(event["exit"])] = (base64.b64decode(event["page"]),
                                                         base64.b64decode(event["log"]))
                if event.get("stacks"):  # (before its exit shows, as the page)
                    self.stacks[int(event["exit"])] = str(event["stacks"])
                self.exits[int(event["exit"])] = (status, str(event.get("tail", "")),
                                                  str(event.get("how") or describe_exit(status)))
        self.returncode = self.process.wait()

    @property
    def finished(self) -> bool:
        """The ssh client ended."""
        return self.returncode is not None

    @property
    def healthy(self) -> bool:
        """Running, and its agent reported lately: new workers may go there."""
        problems = self.hello.get("problems") if self.hello else None
        return (not self.finished and not problems
                and time.monotonic() - self.last_report < self.silence)

    def send(self, message: dict[str, Any]) -> None:
        """One line to the agent (dropped when the session is over)."""
        if self.process is not None and not self.finished:
            self._write(json.dumps(message).encode() + b"\n")

    def _write(self, data: bytes) -> None:
        assert self.process is not None
        stdin: BinaryIO | None = self.process.stdin  # type: ignore[assignment]
        assert stdin is not None
        with self._lock, contextlib.suppress(OSError, ValueError):
            stdin.write(data)
            stdin.flush()

    def ssh_stderr(self) -> str:
        """The last lines the ssh client (and the bootstrap, the agent) wrote to stderr."""
        return read_tail(self.log_path)

    def failure(self) -> LaunchError | None:
        """Why this host cannot run workers, once that is known."""
        problems = self.hello.get("problems") if self.hello else None
        if problems:
            where = f"{self.hello['executable']} on {self.host.destination}"  # type: ignore[index]
            return LaunchError(f"cannot start workers on {self.host.destination}: "
                               f"{'; '.join(problems)} (Python: {where}; another is chosen "
                               "with python= or SOCKPOOL_REMOTE_PYTHON)",
                               command=self.command, returncode=self.returncode,
                               stderr_tail=self.ssh_stderr())
        if not self.finished or self.hello is not None:
            return None
        stderr = self.ssh_stderr()
        hint = {255: "ssh could not connect or log in",
                127: "the interpreter (python= or SOCKPOOL_REMOTE_PYTHON) was not found there",
                126: "the interpreter (python= or SOCKPOOL_REMOTE_PYTHON) cannot be run there"
                }.get(
                    self.returncode or 0, f"ssh ended with {describe_exit(self.returncode)}")
        message = f"cannot start workers on {self.host.destination}: {hint}"
        message += f"\ncommand: {self.command}"
        if stderr:
            message += f"\nssh said:\n{stderr}"
        return LaunchError(message, command=self.command, returncode=self.returncode,
                           stderr_tail=stderr)

    def close(self, grace: float) -> None:
        """End the session: stdin EOF stops the agent and its workers; then the client,
        after ``grace`` seconds at most, or at once if its agent has fallen silent (a
        host cut off: the client would wait for it in vain)."""
        if self.process is None:
            return
        with contextlib.suppress(OSError, ValueError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        if time.monotonic() - self.last_report >= self.silence:
            grace = min(grace, SILENT_HOST_GRACE)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(1.0)
        if self.process.stdout is not None:
            self.process.stdout.close()


class SSHWorkerProcess(WorkerProcess):
    """A worker run by a host agent; it is watched through the agent's reports."""

    stacks_wait = 1.0  # (the stack comes with the agent's exit report, over ssh)

    def __init__(self, worker_id: int, session: HostSession) -> None:
        self.worker_id = worker_id
        self.host = session.host.destination
        self.command = session.command
        self.session = session
        self.released = False  # asked to stop: its slot may take a replacement

    @property
    def pid(self) -> int:
        """0: unknown until the worker's HELLO names its own (the ssh client's pid, shown
        for a starting worker, invited a kill that would end every worker of the host)."""
        return 0

    def poll(self) -> int | None:
        reported = self.session.exits.get(self.worker_id)
        if reported is not None:
            return reported[0]
        return self.session.returncode

    def exit_status(self) -> str:
        reported = self.session.exits.get(self.worker_id)
        if reported is not None:  # as the host's agent saw it: the OOM killer, peak memory
            return reported[2]
        return (f"its ssh session to {self.host} ended "
                f"({describe_exit(self.session.returncode)})")

    def progress_report(self) -> tuple[bytes, bytes] | None:
        return self.session.progress.get(self.worker_id)

    def show_stacks(self) -> bool:
        if self.poll() is not None:
            return False
        self.session.send({"stacks": self.worker_id})  # (its agent reports it with its exit)
        return True

    def stacks(self) -> str:
        return self.session.stacks.get(self.worker_id, "")

    def terminate(self) -> None:
        self._signal(15)

    def kill(self) -> None:
        self._signal(9)

    def _signal(self, signum: int) -> None:
        self.released = True
        if self.poll() is None:
            self.session.send({"signal": self.worker_id, "signum": signum})

    def stderr_tail(self) -> str:
        reported = self.session.exits.get(self.worker_id)
        if reported is not None:
            return reported[1]
        return self.session.ssh_stderr()

    def failure(self) -> LaunchError | None:
        return self.session.failure()
