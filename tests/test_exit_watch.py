"""The I/O loop learns which worker processes ended from one epoll set of their pidfds."""

from __future__ import annotations

import os
import select
import subprocess
import sys

import pytest

from sockpool.dispatch.exits import ExitWatch

pytestmark = pytest.mark.timeout(30)


def test_the_set_is_readable_once_a_process_ended_and_names_its_pidfd() -> None:
    watch = ExitWatch()
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
             for _ in range(3)]
    fds = [os.pidfd_open(proc.pid) for proc in procs]
    try:
        for fd in fds:
            watch.add(fd)
        assert select.select([watch.fileno()], [], [], 0.2)[0] == []  # all running
        assert watch.ended() == []
        procs[1].kill()
        procs[1].wait()
        assert select.select([watch.fileno()], [], [], 5)[0] == [watch.fileno()]
        assert watch.ended() == [fds[1]]
        watch.discard(fds[1])  # noticed: no longer watched, the set is quiet again
        assert fds[1] not in watch and fds[0] in watch
        assert select.select([watch.fileno()], [], [], 0.2)[0] == []
        watch.discard(fds[1])  # twice is harmless
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for fd in fds:
            os.close(fd)
        watch.close()
