"""Run one command with real ssh hosts and a real Slurm up, then take them down.

For the docs build (``docs/notebooks/07-beyond-one-machine.ipynb`` runs its
ssh and Slurm cells for real where it finds them)::

    sudo .venv/bin/python tests/with_testbed.py -- .venv/bin/mkdocs build --strict

It starts what the test suite's fixtures start (``testbed.py``): a private
sshd on 127.0.0.1-3:2222 with the aliases ``node1`` and ``node2`` in
``~/.ssh/config``, and a single-node Slurm whose config the command finds
through ``SLURM_CONF``.  The command also gets ``SOCKPOOL_DOCS_SSH_HOSTS=node1,node2``.
Whatever cannot be stood up here (no root, OpenSSH or Slurm not installed,
the ports taken) is left out with a line saying why, and the command runs
anyway.  Everything started is stopped by its pid when the command ends; the
command's exit status is this script's.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from testbed import SSH_PORT, SlurmTestbed, Testbed, slurm_missing, ssh_missing

#: The ssh aliases the notebook is told about (loopback addresses of the one sshd).
DOCS_HOSTS = "node1,node2"
SLURM_PORTS = (6817, 6818)


def _port_taken(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def main(argv: list[str]) -> int:
    """Stand up what can be, run ``argv`` with the variables set, stop everything."""
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: with_testbed.py -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="sockpool-docs-testbed-") as scratch, \
            contextlib.ExitStack() as stack:
        reason = ssh_missing() or (f"port {SSH_PORT} is taken" if _port_taken(SSH_PORT) else None)
        if reason:
            print(f"with_testbed: no ssh hosts: {reason}", file=sys.stderr)
        else:
            bed = Testbed(Path(scratch) / "ssh")
            stack.callback(bed.stop, 0)
            bed.make_keys()
            bed.start_sshd()
            bed.write_ssh_config(0)
            env["SOCKPOOL_DOCS_SSH_HOSTS"] = DOCS_HOSTS
            print(f"with_testbed: ssh hosts {DOCS_HOSTS} up", file=sys.stderr)
        taken = [port for port in SLURM_PORTS if _port_taken(port)]
        reason = slurm_missing() or (f"port {taken[0]} is taken" if taken else None)
        if reason:
            print(f"with_testbed: no Slurm: {reason}", file=sys.stderr)
        else:
            slurm = SlurmTestbed(Path(scratch) / "slurm")
            stack.callback(slurm.stop)
            slurm.start()  # sets SLURM_CONF in os.environ
            env["SLURM_CONF"] = os.environ["SLURM_CONF"]
            print("with_testbed: Slurm up", file=sys.stderr)
        return subprocess.run(argv, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
