"""The ssh launcher: workers on other machines through OpenSSH (R's ``makeCluster(hosts)``).

One ssh session per host (:mod:`.ssh_session`).  Its remote command
(:data:`LOADER`) runs the bootstrap (:mod:`.ssh_bootstrap`, sent as source on
the session's stdin) under the host's Python; that checks, before anything
else, that the host can run workers for this master (the same Python minor
version, sockpool at the same version, its dependencies importable) and then
becomes that host's agent (:mod:`sockpool.worker.agent`).  The master writes
one line per worker to the session's stdin (configuration and CURVE keys:
never a command line), and the agent starts the workers and reports their exits.

Connection back: workers dial in to the master over TCP with CURVE, at the
address of this machine that routes to their host (or ``listen=``), or with
``tunnel=True`` through an ``ssh -R`` forward of a Unix socket on the host to
the master's loopback port, for networks where the host cannot reach the
master.  The ssh client runs as the user's own ``ssh``: ``~/.ssh/config``,
agents, ProxyJump and known_hosts work as they do on the command line.
"""

from __future__ import annotations

import functools
import json
import math
import os
import secrets
import shlex
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._version import __version__
from ..common.checks import as_real, check_env
from ..common.config import WorkerConfig
from .base import Launcher, WorkerProcess
from .local import LocalLauncher
from .ssh_hosts import SSHHost, host_address, parse_hosts, route_source, ssh_settings
from .ssh_session import HostSession, SSHWorkerProcess

#: A remote worker gives up on a master it has not heard from for this long
#: (heartbeat_timeout= overrides it).  A cut network ends remote workers this way.
REMOTE_MASTER_TIMEOUT = 15.0
#: A host agent with no worker left exits after this long.
AGENT_IDLE_EXIT = 20.0
#: The environment variable naming the hosts' interpreter when ``python=`` does not:
#: a script run with ``SOCKPOOL_PLAN=hosts:...`` reaches a venv without an edit.
REMOTE_PYTHON_VAR = "SOCKPOOL_REMOTE_PYTHON"
#: ssh's own keepalive: the client gives up on a silent server after about 15 s.
KEEPALIVE_OPTIONS = ("-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3")

#: The remote command's program: read the bootstrap's line from stdin byte by byte
#: (no buffering, so the lines behind it stay for the bootstrap and the agent) and run it.
LOADER = 'import json, os; exec(json.loads(b"".join(iter(lambda: os.read(0, 1), b"\\n"))))'


@functools.cache
def bootstrap_source() -> str:
    """The bootstrap's program text, as the session's first line carries it.

    Read as a file, not imported: the master never runs it.
    """
    return Path(__file__).with_name("ssh_bootstrap.py").read_text(encoding="utf-8")


def bootstrap_preamble(want: dict[str, Any]) -> bytes:
    """What a session's stdin carries before any worker: the bootstrap, then its data."""
    return (json.dumps(bootstrap_source()) + "\n" + json.dumps(want) + "\n").encode()


class SSHLauncher(Launcher):
    """Start workers on other machines over ssh (and on this one for ``"localhost"``).

    Args:
        hosts: a list where a repeated name means several workers there
            (``["node1", "node1", "node2"]``), or a dict of name to count or
            to :class:`SSHHost` (per-host options); ``"localhost"`` entries are
            local workers, started without ssh.
        python: the interpreter on the hosts (default ``$SOCKPOOL_REMOTE_PYTHON``,
            else ``python3``; this Python for local workers).
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
    default_master_timeout = REMOTE_MASTER_TIMEOUT

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
        seconds = as_real(connect_timeout)
        if seconds is None or not 0 < seconds < math.inf:
            raise ValueError(f"connect_timeout must be a positive number of seconds, "
                             f"not {connect_timeout!r}")
        self.python = python
        self.env = check_env(env)
        self.ssh = ssh
        self.ssh_options = list(ssh_options)
        self.tunnel = tunnel
        self.listen = "127.0.0.1"
        self.remote_listen = listen
        self.connect_timeout = seconds
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
                    ) -> tuple[list[str], dict[str, Any]]:
        """The ssh command line that starts a host's agent, and what its bootstrap is told.

        The second is the bootstrap's data (:mod:`.ssh_bootstrap`): the Python
        minor version and sockpool version the host must have, and the agent's
        options.  Neither holds a secret: the workers' keys follow on stdin.
        """
        python = host.python or self.python or os.environ.get(REMOTE_PYTHON_VAR) or "python3"
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
        # The environment is set for the bootstrap too (PYTHONPATH, LD_LIBRARY_PATH
        # decide what it finds); it is not secret, the keys go over stdin.
        env = {**self.env, **host.env}
        assignments = [shlex.quote(f"{name}={value}") for name, value in env.items()]
        prefix = f"exec env {' '.join(assignments)} " if assignments else "exec "
        remote = f"{prefix}{shlex.quote(python)} -c {shlex.quote(LOADER)}"
        return [*argv, *self.ssh_options, *host.ssh_target(), remote], want

    def _session(self, host: SSHHost, loopback: str, heartbeat_interval: float) -> HostSession:
        session = self.sessions.get(host.destination)
        if session is None:
            assert self._workdir is not None
            self._address_for(host, loopback)  # before the tunnel's path is needed
            log_path = os.path.join(self._workdir, f"ssh-{len(self.sessions)}.log")
            argv, want = self.ssh_command(host, loopback, heartbeat_interval)
            session = HostSession(host, argv, bootstrap_preamble(want), log_path,
                                  heartbeat_interval)
            self.sessions[host.destination] = session
        return session

    def spawn(self, worker_id: int, config: WorkerConfig) -> WorkerProcess | None:
        for index, (host, handle) in enumerate(self.slots):
            if handle is not None and not _slot_free(handle):
                continue
            if host.is_local:
                local = self._local.spawn(worker_id, config)
                self.slots[index] = (host, local)
                return local
            fresh = host.destination not in self.sessions
            session = self._session(host, config.address, config.heartbeat_interval)
            if not fresh and not session.healthy:
                continue  # a host that failed, or fell silent, gets no replacement
            remote = config.replace(address=self._address_for(host, config.address))
            session.send({"start": remote.to_json()})  # the agent hands it to the worker
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
        self._local.close()  # its local workers' process groups; its start state
        # The next cluster on this launcher starts afresh: its own sessions and addresses.
        self.sessions.clear()
        self.slots = [(host, None) for host, _ in self.slots]
        self._addresses.clear()
        self._tunnels.clear()

    def describe(self) -> str:
        names = ", ".join(host.destination for host in self.hosts)
        return f"ssh to {names}" + (" (tunnelled)" if self.tunnel else "")


def _slot_free(handle: WorkerProcess) -> bool:
    """Its worker ended, or was told to stop: the slot may take a replacement."""
    return handle.released or handle.poll() is not None
