"""A cluster's private directory: named after its master, and removed by the next
cluster when that master was killed before it could remove it itself."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from helpers import master_program, wait_gone

from sockpool import Cluster
from sockpool.common import workdir
from sockpool.common.workdir import private_directory, sweep_orphans

pytestmark = pytest.mark.timeout(60)


def owned_by(pid: int) -> list[str]:
    """The cluster directories in the temporary directory named after ``pid``."""
    return [entry.path for entry in os.scandir(tempfile.gettempdir())
            if entry.name.startswith("sockpool-") and f"-{pid}-" in entry.name]


def test_the_directory_is_private_and_named_after_its_master() -> None:
    path = private_directory()
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
        assert Path(path).name.startswith(f"sockpool-{namespace}-{os.getpid()}-")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
        assert path not in sweep_orphans()  # its master runs
        assert os.path.isdir(path)
    finally:
        os.rmdir(path)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_masters_directory_goes_when_the_next_cluster_starts(
        tmp_path: Path, signum: int) -> None:
    with master_program(tmp_path / "master.py", """
        import json, time
        from sockpool import Cluster
        cl = Cluster(n=1)
        print(json.dumps([w.pid for w in cl.workers]), flush=True)
        time.sleep(60)
    """) as (master, pids):
        left = owned_by(master.pid)
        assert len(left) == 1 and os.path.exists(os.path.join(left[0], "master.sock"))
        os.kill(master.pid, signum)
        master.wait(10)
        assert wait_gone(pids, 5) == []
    assert os.path.isdir(left[0])  # nothing could remove it: master and workers died at once
    with Cluster(n=1) as cl:
        assert cl.submit(abs, -3).result() == 3
        deadline = time.monotonic() + 10
        while os.path.exists(left[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(left[0])
        assert len(owned_by(os.getpid())) >= 1  # its own stays while it runs


def test_the_sweep_removes_only_what_a_gone_master_left(tmp_path: Path) -> None:
    namespace = os.stat("/proc/self/ns/pid").st_ino
    me, started = os.getpid(), workdir._start_time(os.getpid())
    with open("/proc/sys/kernel/pid_max") as limit:
        no_such_pid = int(limit.read()) + 1  # above any pid the kernel hands out

    def make(name: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "worker-0.log").write_text("a log\n")
        return path

    live = make(f"sockpool-{namespace}-{me}-{started}-live1234")
    reused = make(f"sockpool-{namespace}-{me}-{started + 1}-reused12")  # same pid, other start
    dead = make(f"sockpool-{namespace}-{no_such_pid}-123-dead1234")
    other_namespace = make(f"sockpool-{namespace + 1}-{no_such_pid}-123-ns123456")
    unnamed = make("sockpool-old_form")  # made before names said whose they are
    (tmp_path / f"sockpool-{namespace}-{no_such_pid}-7-file1234").write_text("a file")
    (tmp_path / f"sockpool-{namespace}-{no_such_pid}-8-link1234").symlink_to(unnamed)

    removed = sweep_orphans(str(tmp_path))

    assert sorted(removed) == sorted(str(path) for path in (reused, dead))
    assert not reused.exists() and not dead.exists()
    assert live.is_dir() and other_namespace.is_dir() and unnamed.is_dir()
    assert (unnamed / "worker-0.log").exists()  # the link was not followed
    assert (tmp_path / f"sockpool-{namespace}-{no_such_pid}-7-file1234").is_file()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_the_sweep_leaves_other_users_directories(tmp_path: Path) -> None:
    namespace = os.stat("/proc/self/ns/pid").st_ino
    theirs = tmp_path / f"sockpool-{namespace}-{os.getpid()}-1-theirs12"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    assert sweep_orphans(str(tmp_path)) == []
    assert theirs.is_dir()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="a pid namespace of its own needs root and unshare")
def test_a_proc_of_another_pid_namespace_turns_naming_and_sweeping_off(tmp_path: Path) -> None:
    # unshare -p without --mount-proc: /proc still shows the outer namespace's pids, so
    # a pid from inside could name some other process there.
    script = tmp_path / "inner.py"
    script.write_text(textwrap.dedent(f"""
        import os
        from sockpool.common.workdir import private_directory, sweep_orphans
        namespace = os.stat("/proc/self/ns/pid").st_ino
        orphan = os.path.join({str(tmp_path)!r}, f"sockpool-{{namespace}}-{2**22 + 1}-5-orphan12")
        os.mkdir(orphan)  # as if its master were gone: no such pid
        path = private_directory()
        print(os.path.basename(path), sweep_orphans({str(tmp_path)!r}), os.path.isdir(orphan))
        os.rmdir(path)
    """))
    result = subprocess.run(["unshare", "--pid", "--fork", sys.executable, str(script)],
                            capture_output=True, text=True, timeout=60, check=True)
    name, removed, kept = result.stdout.split()
    assert name.startswith("sockpool-") and name.count("-") == 1  # no owner in its name
    assert (removed, kept) == ("[]", "True")  # nothing can be told: nothing is removed
