"""detect_cores counts what this process may use; oversubscription is warned about."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from helpers import ROOT

import sockpool
from sockpool import Cluster, detect_cores

pytestmark = pytest.mark.timeout(60)

PRINT_CORES = ("import sockpool; "
               "print(sockpool.detect_cores(), sockpool.detect_cores(logical=False))")


def cores_in_child(code: str = PRINT_CORES, python: str = sys.executable, *options: str,
                   **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE", "NSLOTS", "PBS_NUM_PPN",
                          "PYTHON_CPU_COUNT")}
    out = subprocess.run([python, *options, "-c", code], capture_output=True, text=True,
                         check=True, timeout=30, env={**clean, **env}).stdout
    return out.split()


def interpreters() -> list[str]:
    """This interpreter, and CI's 3.13 venv (.ci/run) where it exists: 3.13 reads
    PYTHON_CPU_COUNT itself, older versions through sockpool."""
    found = [sys.executable]
    other = ROOT / ".ci" / "venvs" / "py3.13" / "bin" / "python"
    if other.exists() and sys.version_info[:2] != (3, 13):
        found.append(str(other))
    return found


PIN_TO_ONE_CPU = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "


def test_counts_are_positive_and_consistent() -> None:
    logical = detect_cores()
    physical = detect_cores(logical=False)
    assert 1 <= physical <= logical <= (os.cpu_count() or 1)


def test_affinity_restricts_the_count() -> None:
    code = ("import os, sockpool\n"
            "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
            "print(sockpool.detect_cores(), sockpool.detect_cores(logical=False))\n")
    assert cores_in_child(code) == ["1", "1"]


@pytest.mark.parametrize(("variable", "value"), [
    ("SLURM_CPUS_PER_TASK", "1"), ("SLURM_CPUS_ON_NODE", "1(x2)"), ("NSLOTS", "1"),
    ("PBS_NUM_PPN", "1"),
])
def test_scheduler_allocations_are_honoured(variable: str, value: str) -> None:
    assert cores_in_child(**{variable: value}) == ["1", "1"]


def test_the_first_scheduler_variable_set_counts_and_never_raises_the_count() -> None:
    assert cores_in_child(SLURM_CPUS_PER_TASK="1", NSLOTS="64") == ["1", "1"]
    big = cores_in_child(SLURM_CPUS_PER_TASK="4096")
    assert big == cores_in_child()  # an allocation never adds cores the process lacks


@pytest.mark.parametrize("python", interpreters())
def test_python_cpu_count_replaces_the_affinity_count(python: str) -> None:
    if detect_cores() < 2:
        pytest.skip("needs 2 usable cores to tell an override from the machine's count")
    assert cores_in_child(PRINT_CORES, python, PYTHON_CPU_COUNT="1") == ["1", "1"]
    # As os.process_cpu_count(): the override stands for the affinity mask, so it
    # counts even where the mask is narrower; "default" means no override.
    logical = cores_in_child(PIN_TO_ONE_CPU + PRINT_CORES, python, PYTHON_CPU_COUNT="2")
    assert logical[0] == "2"
    pinned = cores_in_child(PIN_TO_ONE_CPU + PRINT_CORES, python, PYTHON_CPU_COUNT="default")
    assert pinned == ["1", "1"]


def test_an_invalid_python_cpu_count_is_ignored_before_3_13() -> None:
    if sys.version_info >= (3, 13):
        pytest.skip("Python 3.13+ refuses to start with an invalid PYTHON_CPU_COUNT")
    assert cores_in_child(PYTHON_CPU_COUNT="lots") == cores_in_child()
    assert cores_in_child(PYTHON_CPU_COUNT="0") == cores_in_child()


@pytest.mark.parametrize("python", interpreters())
def test_x_cpu_count_is_honoured_on_3_13(python: str) -> None:
    version = cores_in_child("import sys; print(sys.version_info >= (3, 13))", python)
    if version != ["True"]:
        pytest.skip("-X cpu_count exists from Python 3.13")
    if detect_cores() < 2:
        pytest.skip("needs 2 usable cores to tell an override from the machine's count")
    assert cores_in_child(PRINT_CORES, python, "-X", "cpu_count=1") == ["1", "1"]


def test_a_cgroup_cpu_quota_restricts_the_count(tmp_path: Path) -> None:
    group = Path(f"/sys/fs/cgroup/cpu/sockpool-test-{os.getpid()}")
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup v1 cpu group here ({exc})")
    child = subprocess.Popen([sys.executable, "-c", "input(); " + PRINT_CORES],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("50000")  # half a CPU: rounds up to 1
        (group / "cgroup.procs").write_text(str(child.pid))
        out, _ = child.communicate("\n", timeout=30)
        assert out.split() == ["1", "1"]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        group.rmdir()


def test_oversubscription_is_warned_about() -> None:
    cores = detect_cores(logical=False)
    with pytest.warns(UserWarning, match="threads on .* usable physical cores"), \
            Cluster(n=1, threads_per_worker=cores + 1):
        pass
    with pytest.warns(UserWarning, match="hyper-threads do not count"), \
            Cluster(n=cores + 1):
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Cluster(n=1, threads_per_worker=1):
            pass
        with Cluster():  # the default size, detect_cores(), is not warned about
            pass
        # Nor a multiprocessing.Pool drop-in larger than the machine (I/O-bound work),
        # as multiprocessing does not warn: under -W error it did not even start.
        with sockpool.Pool(cores + 1) as pool:
            assert pool.apply(abs, (-1,)) == 1


def test_threads_the_workers_inherit_from_omp_num_threads_count_as_chosen(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # OMP_NUM_THREADS=4 set in the master reaches every worker's pools (the default
    # threads_per_worker keeps it), but the check counted 1 thread a worker.
    cores = detect_cores(logical=False)
    monkeypatch.setenv("OMP_NUM_THREADS", str(cores))
    with pytest.warns(UserWarning, match=f"2 workers x {cores} threads? each"), \
            Cluster(n=2):
        pass
    with pytest.warns(UserWarning, match=f"2 workers x {cores} threads? each"), \
            Cluster(n=2, threads_per_worker=None):  # the libraries' own: they inherit it
        pass
    with warnings.catch_warnings():  # one given overrides it, as does env=
        warnings.simplefilter("error")
        with Cluster(n=1, threads_per_worker=1) as cl:
            assert cl.run_on_all(lambda: os.environ["OMP_NUM_THREADS"]) == ["1"]
        with Cluster(n=2, env={"OMP_NUM_THREADS": "1"}) as cl:
            assert cl.run_on_all(lambda: os.environ["OMP_NUM_THREADS"]) == ["1", "1"]


def test_clusters_left_open_count_toward_the_cores_of_the_next() -> None:
    # A notebook cell `cl = Cluster(n=2)`, run three times, left the last clusters open
    # (IPython's Out[] holds them): six workers on two cores, and nothing said so.
    # Two clusters used in turn (a comparison) are not warned about.
    cores = detect_cores(logical=False)
    first = Cluster(n=cores)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            second = Cluster(n=cores)
        try:
            with pytest.warns(UserWarning, match=(
                    f"this process has 2 other open clusters with {2 * cores} local workers: "
                    f"with these 1, {2 * cores + 1} workers on {cores} usable physical cores, "
                    "more than twice as many; close the clusters you are done with")):
                Cluster(n=1).close()
        finally:
            second.close()
    finally:
        first.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # closed: they count no more
        Cluster(n=cores).close()


def test_the_physical_count_read_from_sysfs_is_psutils() -> None:
    import psutil

    from sockpool.cores import _physical_and_logical

    assert _physical_and_logical() == (psutil.cpu_count(logical=False),
                                       psutil.cpu_count(logical=True))
