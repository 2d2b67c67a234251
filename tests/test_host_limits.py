"""What the machine allows: a long TMPDIR, the open-file limit, memory files refused.

Each either works or says what is wrong before any worker starts, and leaves no
descriptor or process behind.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import psutil
import pytest
import zmq

from sockpool import Cluster
from sockpool.common import workdir
from sockpool.dispatch import transport

pytestmark = pytest.mark.timeout(60)


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def _children() -> set[int]:
    return {child.pid for child in psutil.Process().children()}


@pytest.fixture
def long_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TMPDIR whose socket path would pass the kernel's 107 bytes (an HPC scratch path)."""
    long = tmp_path / ("scratch-" + "d" * 70)
    long.mkdir()
    monkeypatch.setenv("TMPDIR", str(long))
    monkeypatch.setattr(tempfile, "tempdir", None)  # (gettempdir() caches its answer)
    return long


def test_a_tmpdir_too_long_for_a_socket_puts_the_cluster_in_tmp(long_tmpdir: Path) -> None:
    # Every local cluster failed: "ipc path ... is longer than 107 characters".
    with Cluster(n=1) as cl:
        assert cl.par_map(abs, [-1, -2]) == [1, 2]
        where = cl._dispatcher.master.workdir
        assert os.path.dirname(where) == "/tmp"
    assert not os.path.exists(where)
    with Cluster(n=1, transport="tcp") as cl:  # no socket file: TMPDIR it is
        assert os.path.dirname(cl._dispatcher.master.workdir) == str(long_tmpdir)


def test_what_a_killed_master_left_in_the_fallback_is_swept(long_tmpdir: Path) -> None:
    # Directories that went to /tmp were never swept: only TMPDIR was.
    namespace = os.stat("/proc/self/ns/pid").st_ino
    with open("/proc/sys/kernel/pid_max") as limit:
        no_such_pid = int(limit.read()) + 1
    left = Path("/tmp") / f"sockpool-{namespace}-{no_such_pid}-123-fallback"
    left.mkdir()
    try:
        assert str(left) in workdir.sweep_orphans()
    finally:
        if left.exists():
            left.rmdir()


def test_no_directory_where_the_socket_fits_says_so_before_anything_starts(
        long_tmpdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workdir, "FALLBACK_PARENTS", ())
    files, children = _open_files(), _children()
    with pytest.raises(OSError, match=r"must be UTF-8 and fit in 107 bytes, and where it can be "
                                      r"made: tried '.*scratch-d+' \(a socket path of 1\d\d "
                                      r"bytes\).  Set TMPDIR to a shorter, writable directory, "
                                      r"or use Cluster\(transport='tcp'\)"):
        Cluster(n=1)
    assert _open_files() == files and _children() == children


def test_a_tmpdir_gone_since_python_chose_it_puts_the_cluster_in_tmp(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Python caches its choice of temporary directory; a TMPDIR removed (a job's
    # scratch cleaned) or made read-only since failed every Cluster() with a bare
    # FileNotFoundError or PermissionError.
    monkeypatch.setattr(tempfile, "tempdir", f"/tmp/no-such-scratch-{os.getpid()}-gone")
    with Cluster(n=1) as cl:
        assert cl.par_map(abs, [-1]) == [1]
        assert os.path.dirname(cl._dispatcher.master.workdir) == "/tmp"
    monkeypatch.setattr(workdir, "FALLBACK_PARENTS", ())
    with pytest.raises(OSError, match=r"tried '.*gone' \(No such file or directory\)"):
        Cluster(n=1)


def test_a_socket_that_cannot_listen_leaves_no_descriptor_open(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The master's zmq context and socket stayed open: 2 descriptors per attempt.
    monkeypatch.setattr(transport, "socket_path", lambda _: "/nonexistent-sockpool/x.sock")
    files, children = _open_files(), _children()
    for _ in range(3):
        with pytest.raises(zmq.ZMQError):
            Cluster(n=1)
    assert _open_files() == files
    assert psutil.wait_procs([psutil.Process(pid) for pid in _children() - children],
                             timeout=10)[1] == []


def test_memory_files_refused_keep_the_data_on_the_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    # memfd_create refused (an old kernel under a new container, a seccomp filter):
    # every Cluster() failed with ENOSYS, SOCKPOOL_SHARED_MEMORY=0 or not.
    def refused(*args: object) -> int:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(os, "memfd_create", refused)
    data = np.arange(1_000_000, dtype=np.float64)  # 8 MB: shared memory, where there is any
    with Cluster(n=1) as cl:
        np.testing.assert_array_equal(cl.submit(np.negative, data).result(timeout=30), -data)
        assert cl._dispatcher.shared.segments is None


def test_shared_memory_turned_off_in_the_masters_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOCKPOOL_SHARED_MEMORY", "0")
    data = np.arange(1_000_000, dtype=np.float64)
    with Cluster(n=1) as cl:
        np.testing.assert_array_equal(cl.submit(np.negative, data).result(timeout=30), -data)
        assert cl._dispatcher.shared.segments is None


_ULIMITED = """
import resource, sys
from sockpool import Cluster
resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))
try:
    with Cluster(n={n}) as cl:
        print(cl.par_map(abs, range(-3, 0)), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
except ValueError as exc:
    print("ValueError:", exc)
"""


def _run_limited(n: int, soft: int, hard: int) -> str:
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _ULIMITED.format(n=n, soft=soft, hard=hard)],
        capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_open_file_limit_is_raised_for_many_workers_or_named() -> None:
    # Past the limit libzmq aborted the master (SIGABRT, no traceback): ulimit -n 64
    # and 16 workers, or the default 1024 and 165 workers.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 256:
        pytest.skip(f"this machine's hard limit on open files is {hard}")
    assert _run_limited(16, 64, 256) == "[3, 2, 1] 256"  # raised to the hard limit
    assert _run_limited(16, 64, 64).startswith(
        "ValueError: 16 local workers need about 1")
    assert "more than its limit of 64 (ulimit -n" in _run_limited(16, 64, 64)


_KEPT = """
import resource
import numpy as np
from sockpool import Cluster
resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
with Cluster(n=2) as cl:  # each result past 1 MB: through shared memory
    kept = cl.par_map(np.ones, [(1 << 17) + i for i in range(300)], chunksize=1)
    print(len(kept), all(a.size == (1 << 17) + i for i, a in enumerate(kept)))
"""


def test_results_kept_from_shared_memory_do_not_run_the_master_out_of_files() -> None:
    # Before Python 3.13 each mapping holds a descriptor: 300 arrays of 1 MB kept,
    # under the common soft limit (1024, here 128), a healthy worker was killed as
    # lost ("cannot map the segment ...: Too many open files"), or libzmq aborted
    # the whole program.  A cluster now raises the soft limit to the hard one.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip(f"this machine's hard limit on open files is {hard}")
    result = subprocess.run([sys.executable, "-c", _KEPT], capture_output=True, text=True,
                            timeout=90)
    assert result.stdout.strip() == "300 True", result.stderr[-2000:]


_FLAGS = """
import sys
from sockpool import Cluster

def flags(x):
    return sys.flags.optimize, sys.flags.dont_write_bytecode, __debug__

with Cluster(n=1) as cl:
    print(cl.par_map(flags, [0])[0], flags(0))
"""


def test_workers_run_with_the_masters_optimize_and_bytecode_flags(tmp_path: Path) -> None:
    script = tmp_path / "flags.py"
    script.write_text(_FLAGS)
    result = subprocess.run([sys.executable, "-O", "-B", str(script)], capture_output=True,
                            text=True, timeout=50, cwd=tmp_path)
    here = f"(1, {sys.flags.dont_write_bytecode or 1}, False)"
    assert result.stdout.strip() == f"{here} {here}", result.stderr


@pytest.mark.skipif(sys.version_info < (3, 11), reason="-P (safe_path) is Python 3.11's")
@pytest.mark.parametrize("flags", [["-P"], []], ids=["master run with -P", "without"])
def test_a_module_in_the_working_directory_shadows_nothing_a_worker_imports(
        tmp_path: Path, flags: list[str]) -> None:
    # A worker's path began with the working directory (python -m), the script's
    # with its own (or none, with -P): a zmq.py there broke every worker, not the
    # script.  Workers of this interpreter run with -P (multiprocessing passes it on).
    script = tmp_path / "flags.py"
    script.write_text(_FLAGS)
    shadowing = tmp_path / "elsewhere"
    shadowing.mkdir()
    (shadowing / "zmq.py").write_text("raise RuntimeError('a shadowing zmq.py')\n")
    result = subprocess.run([sys.executable, *flags, str(script)], capture_output=True,
                            text=True, timeout=50, cwd=shadowing)
    here = f"(0, {sys.flags.dont_write_bytecode}, True)"
    assert result.stdout.strip() == f"{here} {here}", result.stderr


def test_workers_of_an_isolated_master_are_isolated_too(tmp_path: Path) -> None:
    script = tmp_path / "isolated.py"
    script.write_text("import sys\nfrom sockpool import Cluster\n"
                      "def flags(_):\n    return sys.flags.isolated, sys.flags.ignore_environment\n"
                      "with Cluster(n=1) as cl:\n    print(cl.par_map(flags, [0])[0], flags(0))\n")
    result = subprocess.run([sys.executable, "-I", str(script)], capture_output=True,
                            text=True, timeout=50, cwd=tmp_path)
    assert result.stdout.strip() == "(1, 1) (1, 1)", result.stderr


def test_a_master_run_by_dash_c_gives_its_workers_its_working_directory(
        tmp_path: Path) -> None:
    # Its path holds '' for the working directory, which a worker run with -P lacks.
    (tmp_path / "helper_here.py").write_text("def twice(x):\n    return 2 * x\n")
    source = ("from sockpool import Cluster\n"
              "def call(x):\n    import helper_here\n    return helper_here.twice(x)\n"
              "with Cluster(n=1) as cl:\n    print(cl.par_map(call, [21]))\n")
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                            timeout=50, cwd=tmp_path)
    assert result.stdout.strip() == "[42]", result.stderr


@pytest.mark.parametrize("flags", [[], ["-E"]])
def test_sockpool_found_where_a_new_interpreter_would_not_look_still_starts_workers(
        tmp_path: Path, flags: list[str]) -> None:
    # sockpool next to a script run from elsewhere (or put on sys.path by the script,
    # or inside a zipapp): `python -m sockpool.worker` found no sockpool.
    venv = tmp_path / "venv"  # its dependencies, not sockpool itself
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    site_dirs = {os.path.dirname(os.path.dirname(module.__file__))
                 for module in (zmq, psutil, np)}
    site_packages = next((venv / "lib").glob("python3*")) / "site-packages"
    (site_packages / "dependencies.pth").write_text("\n".join(sorted(site_dirs)) + "\n")
    vendored = tmp_path / "app"
    shutil.copytree(Path(workdir.__file__).parents[1], vendored / "sockpool",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (vendored / "main.py").write_text(
        "from sockpool import Cluster\n"
        "with Cluster(n=1) as cl:\n    print(cl.par_map(lambda x: x * 2, [21]))\n")
    result = subprocess.run([str(venv / "bin" / "python"), *flags, str(vendored / "main.py")],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.stdout.strip() == "[42]", result.stderr
