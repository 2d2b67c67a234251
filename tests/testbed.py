"""Real hosts for the ssh tests, on this one machine (../shared/TESTBED.md, in Python).

* a private, key-only sshd on 127.0.0.1-3:2222 (aliases ``node0``..``node2``);
* test hosts ``sp-n1``.. in network namespaces, each with its own hostname,
  address (10.213.0.11..) and sshd, on a bridge where this machine is 10.213.0.1;
* ``~/.ssh/config`` aliases for all of them, through one ``Include`` line that
  is removed again afterwards.

Everything started here is stopped by its pid, and every link and namespace
made here is deleted by the name it was made with.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

SSH_PORT = 2222
NET = "10.213.0"
BRIDGE = "br-sp"
SSHD = "/usr/sbin/sshd"
SSH_CONFIG = Path.home() / ".ssh" / "config"


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def _wait_port(host: str, port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {host}:{port} after {timeout} s")
        time.sleep(0.05)


def ssh_missing() -> str | None:
    """Why the ssh tests cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return "the ssh testbed needs Linux"
    if os.geteuid() != 0:
        return "the ssh testbed runs sshd as root (CI does); not root here"
    for tool in (SSHD, shutil.which("ssh"), shutil.which("ssh-keygen")):
        if not tool or not os.path.exists(tool):
            return "OpenSSH is not installed (apt-get install openssh-server openssh-client)"
    return None


@contextlib.contextmanager
def machine_lock(name: str) -> Iterator[str | None]:
    """Hold this machine's lock on a testbed for the ``with`` block; yields None, or
    why another test session holds it.  A testbed's ports and namespace hosts are one
    per machine: a second session that started its own killed the first one's
    servers (its start clears what a killed run left, by name), and that session's
    connections then timed out.  The kernel lets go of the lock of a killed session."""
    path = Path(tempfile.gettempdir()) / f"sockpool-{name}.lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            yield (f"another test session (pid {handle.read().strip() or '?'}) is using "
                   f"this machine's {name}, which there is one of per machine")
            return
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        yield None


def netns_missing() -> str | None:
    """Why the namespace hosts cannot be made here, or None."""
    reason = ssh_missing()
    if reason:
        return reason
    if not shutil.which("ip") or not shutil.which("unshare"):
        return "iproute2 and util-linux (ip, unshare) are needed for namespace hosts"
    probe = "sp-probe"
    made = _run("ip", "netns", "add", probe, check=False)
    _run("ip", "netns", "del", probe, check=False)
    if made.returncode != 0:
        return f"cannot create network namespaces here: {made.stderr.strip()}"
    return None


class Testbed:
    """The sshd, the namespace hosts and the ssh aliases, with their teardown."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.sshd: list[subprocess.Popen[bytes]] = []
        self.namespaces: list[str] = []
        self.include = f"Include {self.dir / 'ssh_config'}"

    # -- keys and the loopback sshd -----------------------------------------------------

    def make_keys(self) -> None:
        for name in ("host_ed25519", "id_ed25519", "stranger_ed25519"):
            if not (self.dir / name).exists():
                _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / name))
        shutil.copy(self.dir / "id_ed25519.pub", self.dir / "authorized_keys")
        os.chmod(self.dir / "authorized_keys", 0o600)

    def _sshd_config(self, path: Path, port: int, addresses: list[str], extra: str = "") -> None:
        listen = "".join(f"ListenAddress {address}\n" for address in addresses)
        path.write_text(
            f"Port {port}\n{listen}HostKey {self.dir / 'host_ed25519'}\n"
            f"PidFile {path.parent / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nAllowTcpForwarding yes\nAllowStreamLocalForwarding yes\n"
            "X11Forwarding no\nPrintMotd no\nMaxStartups 200\nMaxSessions 200\n"
            "LogLevel INFO\n" + extra)

    def start_sshd(self) -> None:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        config = self.dir / "sshd_config"
        self._sshd_config(config, SSH_PORT, ["127.0.0.1", "127.0.0.2", "127.0.0.3"])
        _run(SSHD, "-t", "-f", str(config))
        with open(self.dir / "sshd.log", "wb") as log:
            self.sshd.append(subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                                              stdout=log, stderr=log))
        _wait_port("127.0.0.1", SSH_PORT)

    # -- namespace hosts ----------------------------------------------------------------

    def start_namespaces(self, count: int) -> None:
        self.stop_namespaces(count)  # whatever a killed earlier run left, by its names
        _run("ip", "route", "replace", "blackhole", f"{NET}.0/16", "metric", "4000")
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "replace", f"{NET}.1/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        for i in range(1, count + 1):
            name, address = f"sp-n{i}", f"{NET}.{10 + i}"
            _run("ip", "netns", "add", name)
            self.namespaces.append(name)
            _run("ip", "link", "add", f"vh-n{i}", "type", "veth", "peer", "name", "eth0",
                 "netns", name)
            _run("ip", "link", "set", f"vh-n{i}", "master", BRIDGE, "up")
            _run("ip", "-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
            _run("ip", "-n", name, "link", "set", "lo", "up")
            _run("ip", "-n", name, "link", "set", "eth0", "up")
            directory = self.dir / f"ns-{name}"
            directory.mkdir(exist_ok=True)
            config = directory / "sshd_config"
            self._sshd_config(config, 22, [address, "127.0.0.1"],
                              "ClientAliveInterval 5\nClientAliveCountMax 3\n")
            with open(directory / "sshd.log", "wb") as log:
                # Its own UTS namespace too: socket.gethostname() there says sp-nI.
                # `ip netns exec`, unshare and sh all exec: the pid is sshd's.
                self.sshd.append(subprocess.Popen(
                    ["ip", "netns", "exec", name, "unshare", "--uts", "sh", "-c",
                     f"hostname {name}; exec {SSHD} -D -e -f {config}"],
                    stdout=log, stderr=log))
        for i in range(1, count + 1):
            _wait_port(f"{NET}.{10 + i}", 22)

    def stop_namespaces(self, count: int) -> None:
        for i in range(1, count + 1):
            name = f"sp-n{i}"
            pids = _run("ip", "netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            _run("ip", "link", "del", f"vh-n{i}", check=False)
            _run("ip", "netns", "del", name, check=False)
        _run("ip", "link", "del", BRIDGE, check=False)
        _run("ip", "route", "del", "blackhole", f"{NET}.0/16", check=False)

    def log_tails(self, lines: int = 30) -> dict[str, str]:
        """The last lines of each sshd's log, by file (for a failed test's report)."""
        tails = {}
        for log in sorted(self.dir.glob("**/sshd.log")):
            with contextlib.suppress(OSError):
                text = log.read_text(errors="replace").splitlines()[-lines:]
                tails[str(log.relative_to(self.dir))] = "\n".join(text)
        return tails

    def set_link(self, host_index: int, up: bool) -> None:
        """Cut (or restore) a namespace host's link silently: packets just vanish."""
        _run("ip", "link", "set", "dev", f"vh-n{host_index}", "up" if up else "down")

    # -- ssh aliases --------------------------------------------------------------------

    def write_ssh_config(self, namespaces: int) -> None:
        hosts = [("node0", "127.0.0.1", SSH_PORT), ("node1", "127.0.0.2", SSH_PORT),
                 ("node2", "127.0.0.3", SSH_PORT), ("nowhere", "127.0.0.4", SSH_PORT)]
        hosts += [(f"sp-n{i}", f"{NET}.{10 + i}", 22) for i in range(1, namespaces + 1)]
        lines = []
        for alias, address, port in hosts:
            lines += [f"Host {alias}", f"    HostName {address}", f"    Port {port}"]
        # A client key the servers do not know (IdentityFile lines add up: it gets only this).
        lines += ["Host stranger", "    HostName 127.0.0.2", f"    Port {SSH_PORT}",
                  f"    IdentityFile {self.dir / 'stranger_ed25519'}"]
        names = " ".join(alias for alias, _, _ in hosts)
        lines += [f"Host {names}", f"    IdentityFile {self.dir / 'id_ed25519'}"]
        lines += [
            f"Host {names} stranger", "    User root", "    IdentitiesOnly yes",
            "    BatchMode yes", "    StrictHostKeyChecking no",
            "    UserKnownHostsFile /dev/null", "    LogLevel ERROR", "    ConnectTimeout 5"]
        path = self.dir / "ssh_config"
        path.write_text("\n".join(lines) + "\n")
        os.chmod(path, 0o600)
        SSH_CONFIG.parent.mkdir(mode=0o700, exist_ok=True)
        existing = SSH_CONFIG.read_text() if SSH_CONFIG.exists() else ""
        if self.include not in existing.splitlines():
            # At the top: an Include after a Host block would belong to that block.
            SSH_CONFIG.write_text(f"{self.include}\n{existing}")
            os.chmod(SSH_CONFIG, 0o600)

    def remove_ssh_config(self) -> None:
        if SSH_CONFIG.exists():
            kept = [line for line in SSH_CONFIG.read_text().splitlines() if line != self.include]
            SSH_CONFIG.write_text("".join(f"{line}\n" for line in kept))

    # -- what runs on the hosts -----------------------------------------------------------

    def remote_processes(self) -> list[psutil.Process]:
        """Everything the testbed's sshds run now: sessions and what they started."""
        found = []
        for server in self.sshd:
            with contextlib.suppress(psutil.Error):
                found += psutil.Process(server.pid).children(recursive=True)
        listeners = {server.pid for server in self.sshd}
        for name in self.namespaces:  # also what left its session (reparented to init)
            for pid in _run("ip", "netns", "pids", name, check=False).stdout.split():
                if int(pid) not in listeners:
                    with contextlib.suppress(psutil.Error):
                        found.append(psutil.Process(int(pid)))
        alive = []
        for process in {p.pid: p for p in found}.values():
            with contextlib.suppress(psutil.Error):
                if process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
        return alive

    def stop(self, namespaces: int) -> None:
        for process in self.remote_processes():
            with contextlib.suppress(psutil.Error):
                process.kill()
        for server in self.sshd:
            if server.poll() is None:
                server.kill()
            server.wait()
        self.sshd.clear()
        if self.namespaces:
            self.stop_namespaces(namespaces)
        self.remove_ssh_config()


# -- Slurm ----------------------------------------------------------------------------------


def slurm_missing() -> str | None:
    """Why a real Slurm cannot be stood up here, or None."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "the Slurm testbed runs slurmctld, slurmd and munged as root (CI does)"
    for tool in ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "munged", "setpriv"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            return (f"{tool} is not installed (apt-get install slurmctld slurmd slurm-client "
                    "munge)")
    return None


class SlurmTestbed:
    """A single-node Slurm (munge, slurmctld, slurmd) with its own config, via SLURM_CONF."""

    __test__ = False

    def __init__(self, directory: Path, cpus: int = 8) -> None:
        self.dir = directory
        self.cpus = cpus
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.conf = self.dir / "slurm.conf"
        self._old_conf = os.environ.get("SLURM_CONF")

    def _daemon(self, argv: list[str], log_name: str) -> None:
        with open(self.dir / log_name, "wb") as log:
            self.daemons.append(subprocess.Popen(argv, stdout=log, stderr=log))

    def start(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        if _run("munge", "-n", check=False).returncode != 0:
            os.makedirs("/run/munge", exist_ok=True)
            shutil.chown("/run/munge", "munge", "munge")
            # setpriv execs: the pid we hold is munged's (-F: in the foreground).
            self._daemon(["setpriv", "--reuid=munge", "--regid=munge", "--clear-groups",
                          "/usr/sbin/munged", "-F"], "munged.log")
            deadline = time.monotonic() + 10
            while _run("munge", "-n", check=False).returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("munged did not start: "
                                       + (self.dir / "munged.log").read_text())
                time.sleep(0.1)
        host = socket.gethostname().split(".")[0]
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 - 512
        s = self.dir
        self.conf.write_text(f"""\
ClusterName=sockpool
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation={s}/state
SlurmdSpoolDir={s}/spool
SlurmctldPidFile={s}/slurmctld.pid
SlurmdPidFile={s}/slurmd.pid
SlurmctldLogFile={s}/log/slurmctld.log
SlurmdLogFile={s}/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
KillWait=2
Waittime=0
OverTimeLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
PartitionName=closed Nodes=ALL Default=NO MaxTime=INFINITE State=DOWN
""")
        os.environ["SLURM_CONF"] = str(self.conf)
        self._daemon(["slurmctld", "-D", "-i", "-f", str(self.conf)], "slurmctld.out")
        self._daemon(["slurmd", "-D", "-f", str(self.conf)], "slurmd.out")
        deadline = time.monotonic() + 30
        while True:
            states = _run("sinfo", "-h", "-p", "debug", "-o", "%T", check=False).stdout.split()
            if any(state in ("idle", "mixed", "allocated") for state in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Slurm did not come up: sinfo says {states}")
            time.sleep(0.2)

    def jobs(self) -> list[str]:
        """Job ids squeue lists as pending or running."""
        out = _run("squeue", "-h", "-r", "-o", "%i %T", check=False).stdout
        return [line for line in out.splitlines()
                if line.split()[-1] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")]

    def stop(self) -> None:
        for line in self.jobs():
            _run("scancel", line.split()[0].split("_")[0], check=False)
        for daemon in reversed(self.daemons):
            if daemon.poll() is None:
                daemon.terminate()
            try:
                daemon.wait(10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        self.daemons.clear()
        if self._old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = self._old_conf
