"""Workers on other machines, started through the OpenSSH client (R's ``makeCluster(hosts)``).

One ssh session per host.  It runs a small bootstrap under the host's Python
that checks, before anything else, that the host can run workers for this
master (the same Python minor version, sockpool at the same version, its
dependencies importable) and then becomes that host's agent
(:mod:`sockpool.worker.agent`).  The master writes one line per worker to the
session's stdin (configuration and CURVE keys: never a command line), and the
agent starts the workers and reports their exits.

Connection back: workers dial in to the master over TCP with CURVE, at the
address of this machine that routes to their host (or ``listen=``), or with
``tunnel=True`` through an ``ssh -R`` forward of a Unix socket on the host to
the master's loopback port, for networks where the host cannot reach the
master.  The ssh client runs as the user's own ``ssh``: ``~/.ssh/config``,
agents, ProxyJump and known_hosts work as they do on the command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from .._version import __version__
from ..common.proc import describe_exit, read_tail
from ..errors import LaunchError
from .base import Launcher, WorkerProcess
from .local import LocalLauncher

#: A remote worker gives up on a master it has not heard from for this long
#: (heartbeat_timeout= overrides it).  A cut network ends remote workers this way.
REMOTE_MASTER_TIMEOUT = 15.0
#: A host agent with no worker left exits after this long.
AGENT_IDLE_EXIT = 20.0
#: A session whose agent has not reported for this many heartbeat intervals gets
#: no new workers: less than the 5 after which its workers count as lost, so a
#: host cut off gets no replacement of them.
SESSION_SILENCE = 2.5
#: ssh's own keepalive: the client gives up on a silent server after about 15 s.
KEEPALIVE_OPTIONS = ("-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3")

_DESTINATION = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]\s]+\]|[^:@\s]+)"
                          r"(?::(?P<port>\d+))?$")

#: Runs under the host's Python, whatever its version: checks, reports, then runs the agent.
#: It travels as the first line of the session's stdin (JSON), read by LOADER.
BOOTSTRAP = """\
import json, os, socket, sys
want = %(want)s
report = {"python": ".".join(map(str, sys.version_info[:3])), "executable": sys.executable,
          "pid": os.getpid(), "host": socket.gethostname()}
problems = []
if list(sys.version_info[:2]) != want["python"]:
    problems.append("Python %%s there but %%d.%%d here: pickled functions do not travel "
                    "between Python versions" %% (report["python"], want["python"][0],
                                                  want["python"][1]))
else:
    for name in ("sockpool", "zmq", "cloudpickle", "dill", "psutil"):
        try:
            report[name] = getattr(__import__(name), "__version__", "?")
        except Exception as exc:
            problems.append("cannot import %%s (%%s: %%s)" %% (name, type(exc).__name__, exc))
    if report.get("sockpool", want["sockpool"]) != want["sockpool"]:
        problems.append("sockpool %%s there but %%s here" %% (report["sockpool"], want["sockpool"]))
report["problems"] = problems
sys.stdout.write(json.dumps({"hello": report}) + "\\n")
sys.stdout.flush()
if problems:
    sys.exit(3)
from sockpool.worker.agent import main
main(want["agent"])
"""
#: The remote command's program: read the bootstrap's line from stdin byte by byte
#: (no buffering, so the worker lines behind it stay for the agent) and run it.
LOADER = 'import json, os; exec(json.loads(b"".join(iter(lambda: os.read(0, 1), b"\\n"))))'


@dataclass(frozen=True)
class SSHHost:
    """One host of an ssh cluster and its own options.

    Args:
        destination: what you would type after ``ssh``: an alias from
            ``~/.ssh/config``, ``host``, ``user@host`` or ``user@host:port``.
        workers: how many workers run there.
        python: the interpreter on that host (default: the launcher's).
        env: extra environment variables for its workers.
        ssh_options: extra arguments for ``ssh`` to this host (``["-J", "gateway"]``).
        user: log in as this user (or put it in ``destination``).
        port: ssh port (or put it in ``destination``).
    """

    destination: str
    workers: int = 1
    python: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    ssh_options: Sequence[str] = ()
    user: str | None = None
    port: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.destination, str) or not _DESTINATION.match(self.destination):
            raise ValueError(f"{self.destination!r} is not an ssh destination "
                             "(host, user@host or user@host:port)")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or (
                self.workers < 1):
            raise ValueError(f"host {self.destination!r} needs a positive number of workers, "
                             f"not {self.workers!r}")
        if isinstance(self.ssh_options, str):
            raise TypeError(f"ssh_options of {self.destination!r} must be a list of "
                            "arguments, not a string")

    @property
    def is_local(self) -> bool:
        """``"localhost"``: a local worker, started without ssh."""
        return self.destination == "localhost"

    def ssh_target(self) -> list[str]:
        """The ssh arguments naming this host: options, then the destination."""
        found = _DESTINATION.match(self.destination)
        assert found is not None
        user = self.user or found["user"]
        port = self.port or found["port"]
        args = list(self.ssh_options)
        if port:
            args += ["-p", str(port)]
        if user:
            args += ["-l", user]
        return [*args, found["host"].strip("[]")]


def parse_hosts(hosts: Iterable[str | SSHHost] | Mapping[str, int | SSHHost]) -> list[SSHHost]:
    """``["a", "a", "b"]`` or ``{"a": 2, "b": 1}`` (or SSHHost values) -> one SSHHost per host."""
    if isinstance(hosts, str):
        raise TypeError(f"hosts must be a list or a dict of host names, not a string; "
                        f"did you mean hosts=[{hosts!r}]?")
    found: dict[str, SSHHost] = {}
    if isinstance(hosts, Mapping):
        for name, spec in hosts.items():
            if isinstance(spec, SSHHost):
                found[name] = spec
            else:
                found[name] = SSHHost(name, workers=spec)
        return list(found.values())
    counts: dict[str, int] = {}
    for entry in hosts:
        if isinstance(entry, SSHHost):
            found[entry.destination] = entry
            continue
        if not isinstance(entry, str):
            raise TypeError(f"a host must be a name, not {type(entry).__name__}")
        counts[entry] = counts.get(entry, 0) + 1
    for name, count in counts.items():
        found[name] = SSHHost(name, workers=count)
    return list(found.values())


def ssh_settings(ssh: str, ssh_args: Sequence[str]) -> dict[str, str]:
    """What ssh would do for these arguments (``ssh -G``: aliases resolved, nothing sent)."""
    try:
        shown = subprocess.run([ssh, "-G", *ssh_args], capture_output=True, text=True,
                               timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split(" ", 1) for line in shown.splitlines() if " " in line)


def host_address(settings: dict[str, str], fallback: str) -> tuple[Any, ...] | None:
    """The socket address ssh would connect to, or None when the name does not resolve."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            settings.get("hostname", fallback), int(settings.get("port", 22)),
            type=socket.SOCK_STREAM)[0]
    except (OSError, ValueError):
        return None
    return (family, address)


def route_source(target: tuple[Any, ...]) -> str | None:
    """The address of this machine that packets to ``target`` leave from.

    The routing table picks it; a UDP ``connect`` sends nothing.
    """
    family, address = target
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
            source: str = probe.getsockname()[0]
    except OSError:
        return None
    return "127.0.0.1" if source.startswith("127.") else source


class HostSession:
    """The ssh session to one host: its client process and what its agent reports."""

    def __init__(self, host: SSHHost, argv: list[str], bootstrap: str, log_path: str,
                 heartbeat_interval: float) -> None:
        self.host = host
        self.silence = SESSION_SILENCE * heartbeat_interval
        self.command = shlex.join(argv)
        self.log_path = log_path
        self.hello: dict[str, Any] | None = None
        self.exits: dict[int, tuple[int, str]] = {}
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
        self._write(json.dumps(bootstrap).encode() + b"\n")
        self._reader = threading.Thread(target=self._read, name=f"sockpool-ssh-{host.destination}",
                                        daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a login banner or a shell's chatter
            self.last_report = time.monotonic()
            if "hello" in event:
                self.hello = event["hello"]
            elif "exit" in event:
                self.exits[int(event["exit"])] = (int(event["status"]), str(event.get("tail", "")))
        self.returncode = self.process.wait()

    @property
    def finished(self) -> bool:
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
        return read_tail(self.log_path)

    def failure(self) -> LaunchError | None:
        """Why this host cannot run workers, once that is known."""
        problems = self.hello.get("problems") if self.hello else None
        if problems:
            where = f"{self.hello['executable']} on {self.host.destination}"  # type: ignore[index]
            return LaunchError(f"cannot start workers on {self.host.destination}: "
                               f"{'; '.join(problems)} (Python: {where})",
                               command=self.command, returncode=self.returncode,
                               stderr_tail=self.ssh_stderr())
        if not self.finished or self.hello is not None:
            return None
        stderr = self.ssh_stderr()
        hint = {255: "ssh could not connect or log in",
                127: "the interpreter (python=) was not found there",
                126: "the interpreter (python=) cannot be run there"}.get(
                    self.returncode or 0, f"ssh ended with {describe_exit(self.returncode)}")
        message = f"cannot start workers on {self.host.destination}: {hint}"
        message += f"\ncommand: {self.command}"
        if stderr:
            message += f"\nssh said:\n{stderr}"
        return LaunchError(message, command=self.command, returncode=self.returncode,
                           stderr_tail=stderr)

    def close(self, grace: float) -> None:
        """End the session: stdin EOF stops the agent and its workers; then the client."""
        if self.process is None:
            return
        with contextlib.suppress(OSError, ValueError):
            assert self.process.stdin is not None
            self.process.stdin.close()
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

    def __init__(self, worker_id: int, session: HostSession) -> None:
        self.worker_id = worker_id
        self.host = session.host.destination
        self.command = session.command
        self.session = session
        self.released = False  # asked to stop: its slot may take a replacement

    @property
    def pid(self) -> int:
        return self.session.pid  # the ssh client's, until the worker's HELLO names its own

    def poll(self) -> int | None:
        reported = self.session.exits.get(self.worker_id)
        if reported is not None:
            return reported[0]
        return self.session.returncode

    def exit_status(self) -> str:
        if self.worker_id in self.session.exits:
            return describe_exit(self.poll())
        return (f"its ssh session to {self.host} ended "
                f"({describe_exit(self.session.returncode)})")

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


class SSHLauncher(Launcher):
    """Start workers on other machines over ssh (and on this one for ``"localhost"``).

    Args:
        hosts: a list where a repeated name means several workers there
            (``["node1", "node1", "node2"]``), or a dict of name to count or
            to :class:`SSHHost` (per-host options); ``"localhost"`` entries are
            local workers, started without ssh.
        python: the interpreter on the hosts (default ``python3``; this
            Python for local workers).
        env: extra environment variables for every worker.
        ssh: the ssh client to run.
        ssh_options: extra ssh arguments for every host.
        tunnel: workers connect back through an ``ssh -R`` forward instead of
            directly, for hosts that cannot reach this machine.
        listen: the address of this machine workers connect to (default:
            for each host, the local address that routes to it).
        connect_timeout: ssh's own ``ConnectTimeout`` (seconds).
    """

    watches_processes = False  # a cut network is silence, not an exit
    transport = "tcp"

    def __init__(
        self,
        hosts: Iterable[str | SSHHost] | Mapping[str, int | SSHHost],
        *,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        ssh: str = "ssh",
        ssh_options: Sequence[str] = (),
        tunnel: bool = False,
        listen: str | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.hosts = parse_hosts(hosts)
        if not self.hosts:
            raise ValueError("SSHLauncher needs at least one host")
        if isinstance(ssh_options, str):
            raise TypeError("ssh_options must be a list of arguments, not a string")
        if not isinstance(tunnel, bool):
            raise TypeError(f"tunnel must be True or False, not {tunnel!r}")
        self.python = python
        self.env = dict(env or {})
        self.ssh = ssh
        self.ssh_options = list(ssh_options)
        self.tunnel = tunnel
        self.listen = "127.0.0.1"
        self.remote_listen = listen
        self.connect_timeout = connect_timeout
        self.size = sum(host.workers for host in self.hosts)
        #: One slot per worker: the host it belongs to and the handle filling it.
        self.slots: list[tuple[SSHHost, WorkerProcess | None]] = [
            (host, None) for host in self.hosts for _ in range(host.workers)]
        self.sessions: dict[str, HostSession] = {}
        self._local = LocalLauncher(python=python, env=self.env)
        self._addresses: dict[str, str] = {}
        self._ssh_settings: dict[str, dict[str, str]] = {}
        self._tunnels: dict[str, str] = {}
        self._workdir: str | None = None
        self._bind: Callable[[str], str] | None = None

    def _settings(self, host: SSHHost) -> dict[str, str]:
        if host.destination not in self._ssh_settings:
            self._ssh_settings[host.destination] = ssh_settings(
                self.ssh, [*self.ssh_options, *host.ssh_target()])
        return self._ssh_settings[host.destination]

    def check_hosts(self) -> None:
        """Raise ValueError for a host whose name resolves to no address.

        Hosts reached through a ProxyJump or ProxyCommand are left to ssh: their
        names may resolve only on the far side.
        """
        unknown = []
        for host in self.hosts:
            if host.is_local:
                continue
            settings = self._settings(host)
            proxied = any(settings.get(key, "none") != "none"
                          for key in ("proxyjump", "proxycommand"))
            if not proxied and host_address(settings, host.ssh_target()[-1]) is None:
                unknown.append(f"{host.destination!r} (ssh would connect to "
                               f"{settings.get('hostname', host.ssh_target()[-1])!r})")
        if unknown:
            raise ValueError(f"unknown host{'s' if len(unknown) > 1 else ''}: "
                             f"{', '.join(unknown)}: the name has no address; check it, "
                             "or add a Host entry to ~/.ssh/config")

    def prepare(self, workdir: str, bind: Callable[[str], str]) -> None:
        self._workdir = workdir
        self._bind = bind
        self._local.prepare(workdir, bind)

    def _address_for(self, host: SSHHost, loopback: str) -> str:
        """The address this host's workers dial (and bind it here)."""
        if self.tunnel:
            path = self._tunnels.setdefault(
                host.destination, f"/tmp/sockpool-{secrets.token_hex(8)}.sock")
            return f"ipc://{path}"
        if host.destination not in self._addresses:
            assert self._bind is not None
            target = host_address(self._settings(host), host.ssh_target()[-1])
            interface = self.remote_listen or (route_source(target) if target else None)
            self._addresses[host.destination] = (
                self._bind(interface) if interface and interface != "127.0.0.1" else loopback)
        return self._addresses[host.destination]

    def ssh_command(self, host: SSHHost, loopback: str, heartbeat_interval: float = 1.0
                    ) -> tuple[list[str], str]:
        """The ssh command line that starts a host's agent, and the bootstrap it reads.

        Neither holds a secret: the workers' keys follow on stdin.
        """
        python = host.python or self.python or "python3"
        agent_options: dict[str, Any] = {"idle_exit": AGENT_IDLE_EXIT,
                                         "report_interval": heartbeat_interval}
        argv = [self.ssh, "-T", "-o", "BatchMode=yes",
                "-o", f"ConnectTimeout={max(1, round(self.connect_timeout))}",
                *KEEPALIVE_OPTIONS]
        if self.tunnel:
            path = self._tunnels[host.destination]
            port = loopback.rsplit(":", 1)[1]
            argv += ["-o", "ExitOnForwardFailure=yes", "-R", f"{path}:127.0.0.1:{port}"]
            agent_options["cleanup"] = [path]
        want = {"python": list(sys.version_info[:2]), "sockpool": __version__,
                "agent": agent_options}
        script = BOOTSTRAP % {"want": repr(want)}
        # The environment is set for the bootstrap too (PYTHONPATH, LD_LIBRARY_PATH
        # decide what it finds); it is not secret, the keys go over stdin.
        env = {**self.env, **host.env}
        assignments = [shlex.quote(f"{name}={value}") for name, value in env.items()]
        prefix = f"exec env {' '.join(assignments)} " if assignments else "exec "
        remote = f"{prefix}{shlex.quote(python)} -c {shlex.quote(LOADER)}"
        return [*argv, *self.ssh_options, *host.ssh_target(), remote], script

    def _session(self, host: SSHHost, loopback: str, heartbeat_interval: float) -> HostSession:
        session = self.sessions.get(host.destination)
        if session is None:
            assert self._workdir is not None
            self._address_for(host, loopback)  # before the tunnel's path is needed
            log_path = os.path.join(self._workdir, f"ssh-{len(self.sessions)}.log")
            argv, bootstrap = self.ssh_command(host, loopback, heartbeat_interval)
            session = HostSession(host, argv, bootstrap, log_path, heartbeat_interval)
            self.sessions[host.destination] = session
        return session

    def spawn(self, worker_id: int, config: dict[str, Any]) -> WorkerProcess | None:
        for index, (host, handle) in enumerate(self.slots):
            if handle is not None and not _slot_free(handle):
                continue
            if host.is_local:
                local = self._local.spawn(worker_id, config)
                self.slots[index] = (host, local)
                return local
            fresh = host.destination not in self.sessions
            session = self._session(host, config["address"], config["heartbeat_interval"])
            if not fresh and not session.healthy:
                continue  # a host that failed, or fell silent, gets no replacement
            remote_config = {
                **config,
                "address": self._address_for(host, config["address"]),
                "master_timeout": config.get("master_timeout") or REMOTE_MASTER_TIMEOUT,
            }
            session.send({"start": remote_config})
            worker = SSHWorkerProcess(worker_id, session)
            self.slots[index] = (host, worker)
            return worker
        return None

    def close(self) -> None:
        """End every ssh session (their agents stop what still runs), in parallel."""
        closers = [threading.Thread(target=session.close, args=(5.0,))
                   for session in self.sessions.values()]
        for closer in closers:
            closer.start()
        for closer in closers:
            closer.join()

    def describe(self) -> str:
        names = ", ".join(host.destination for host in self.hosts)
        return f"ssh to {names}" + (" (tunnelled)" if self.tunnel else "")


def _slot_free(handle: WorkerProcess) -> bool:
    """Its worker ended, or was told to stop: the slot may take a replacement."""
    return handle.released or handle.poll() is not None
