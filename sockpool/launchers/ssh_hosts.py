"""The hosts of an ssh cluster: parsing them, and asking ssh and the routing table about them.

Nothing here starts a session: :func:`ssh_settings` runs ``ssh -G``, which
only prints what ssh would do, and :func:`route_source` sends no packet.
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..common.checks import as_int, check_env

_DESTINATION = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]\s]+\]|[^:@\s]+)"
                          r"(?::(?P<port>\d+))?$")


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
        workers = as_int(self.workers)  # (NumPy's integers too, as Cluster(n=) takes them)
        if workers is None or workers < 1:
            raise ValueError(f"host {self.destination!r} needs a positive number of workers, "
                             f"not {self.workers!r}")
        port = None if self.port is None else as_int(self.port)
        if self.port is not None and (port is None or not 0 < port < 65536):
            raise ValueError(f"port of {self.destination!r} must be a port number from 1 to "
                             f"65535, not {self.port!r}")
        object.__setattr__(self, "workers", workers)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "env", check_env(self.env, f"env of {self.destination!r}"))
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
    try:
        iter(hosts)
    except TypeError:
        raise TypeError(f"hosts must be a list or a dict of host names, "
                        f"not {type(hosts).__name__}") from None
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
            if entry.destination in found:
                raise ValueError(f"host {entry.destination!r} is given as an SSHHost twice; "
                                 "give it once, with all its workers (workers=)")
            found[entry.destination] = entry
            continue
        if not isinstance(entry, str):
            raise TypeError(f"a host must be a name, not {type(entry).__name__}")
        counts[entry] = counts.get(entry, 0) + 1
    for name, count in counts.items():  # a name also given as an SSHHost adds workers to it
        found[name] = add_workers(found[name], count) if name in found else SSHHost(
            name, workers=count)
    return list(found.values())


def add_workers(host: SSHHost, count: int) -> SSHHost:
    """``host`` with ``count`` more workers."""
    return replace(host, workers=host.workers + count)


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
