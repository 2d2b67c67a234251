"""Clusters on a real Slurm: munge, slurmctld and slurmd stood up for the session.

Workers are elements of a job array that dial back to the master; the leak
check after each test also sees what slurmd runs (its daemons are children of
this process), and each test checks that squeue lists no job of ours after.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import ROOT, check_only_the_task_it_died_in_was_lost, dying_mid_chunk, master_program
from testbed import SlurmTestbed

from sockpool import (
    Cluster,
    LaunchError,
    SlurmLauncher,
    TaskTimeoutError,
    WorkerLostError,
    detect_cores,
)
from sockpool.launchers import render_batch_script

pytestmark = pytest.mark.timeout(120)


def _launcher(**options: object) -> SlurmLauncher:
    return SlurmLauncher(listen="127.0.0.1", **options)  # type: ignore[arg-type]


def _no_jobs_left(bed: SlurmTestbed, timeout: float = 15) -> list[str]:
    deadline = time.monotonic() + timeout
    while (jobs := bed.jobs()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return jobs


def test_the_batch_script_is_data() -> None:
    script = render_batch_script(
        workers=4, command="/venv/bin/python -m sockpool.worker --config-file /d/w-${X}.json",
        log_dir="/d", partition="short", time="01:00:00", memory="4G", cpus_per_worker=4,
        account="lab", max_running=2, extra_sbatch=["--exclusive"],
        setup_lines=["module load python/3.11", "source ~/venv/bin/activate"],
        env={"MY_VAR": "a b"})
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for directive in ("--job-name=sockpool", "--array=0-3%2", "--ntasks=1",
                      "--cpus-per-task=4", "--output=/d/worker-%a.log", "--partition=short",
                      "--time=01:00:00", "--mem=4G", "--account=lab", "--exclusive"):
        assert f"#SBATCH {directive}" in lines
    assert lines.index("module load python/3.11") < lines.index("source ~/venv/bin/activate")
    assert "export OMP_NUM_THREADS=4" in lines and "export MY_VAR='a b'" in lines
    assert lines[-1] == "exec /venv/bin/python -m sockpool.worker --config-file /d/w-${X}.json"
    custom = render_batch_script(workers=1, command="run", log_dir="/d",
                                 template="#!/bin/sh\n{directives}\n# mine\n{setup}\n{command}\n")
    assert "# mine" in custom and custom.startswith("#!/bin/sh\n#SBATCH --job-name=")


def test_bad_launcher_options_fail_at_once() -> None:
    with pytest.raises(ValueError, match="cpus_per_worker must be a positive integer"):
        SlurmLauncher(cpus_per_worker=0)
    with pytest.raises(TypeError, match="setup_lines must be a list of lines"):
        SlurmLauncher(setup_lines="module load python")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"template= must contain \{command\}"):
        SlurmLauncher(template="{directives}")
    # These rendered --array=0-1%-1 (which Slurm took), dropped the throttle, or
    # rendered --array=0--1:
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_running must be a positive integer"):
            SlurmLauncher(max_running=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_script needs a positive number of workers"):
        SlurmLauncher().batch_script(0)


def test_batch_script_previews_before_any_cluster_and_creates_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    launcher = SlurmLauncher(directory=str(root), listen="127.0.0.1")
    script = launcher.batch_script(64)
    assert f"#SBATCH --output={root}/slurm-XXXXXXXX/worker-%a.log" in script.splitlines()
    assert script.rstrip().endswith(
        f"--config-file {root}/slurm-XXXXXXXX/worker-${{SLURM_ARRAY_TASK_ID}}.json "
        f"--exit-report {root}/slurm-XXXXXXXX/worker-${{SLURM_ARRAY_TASK_ID}}.exit.json")
    assert not root.exists()  # a launcher never used leaves nothing behind
    launcher.close()  # closing one that never served a cluster is harmless too
    assert not root.exists()


def test_the_docs_preview_is_what_batch_script_renders() -> None:
    page = (ROOT / "docs" / "slurm.md").read_text()
    example = re.search(r"```python\n(.*?)\nwith Cluster", page, re.DOTALL)
    shown = re.search(r"```bash\n(#!/bin/bash\n.*?)```", page, re.DOTALL)
    assert example and shown
    names: dict[str, object] = {}
    exec(example.group(1), names)  # the launcher, exactly as the page builds it
    launcher = names["launcher"]
    assert isinstance(launcher, SlurmLauncher)
    home = os.path.expanduser("~")
    expected = (shown.group(1)
                .replace("/home/alice/venvs/lab/bin/python", shlex.quote(sys.executable))
                .replace("/home/alice", home))
    assert launcher.batch_script(64) == expected


def _reaper(tmp_path: Path, orders: bytes) -> Path:
    """Run the reaper with a fake scancel (it records its argument); return the directory."""
    directory = tmp_path / "slurm-private"
    directory.mkdir()
    (directory / "worker-0.log").write_text("a log\n")
    scancel = tmp_path / "scancel"
    scancel.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/cancelled\n")
    scancel.chmod(0o755)
    source = (ROOT / "sockpool" / "launchers" / "slurm_reaper.py").read_text()
    subprocess.run([sys.executable, "-c", source, str(scancel), str(directory)],
                   input=orders, timeout=30, check=True)
    return directory


def test_the_reaper_cancels_and_removes_only_when_the_master_did_not(tmp_path: Path) -> None:
    directory = _reaper(tmp_path, b"job 4211\n")  # stdin ends without "done": the master died
    assert (tmp_path / "cancelled").read_text() == "4211\n"
    assert not directory.exists()
    (tmp_path / "cancelled").unlink()
    directory = _reaper(tmp_path, b"")  # died before any job: only the directory goes
    assert not (tmp_path / "cancelled").exists() and not directory.exists()
    directory = _reaper(tmp_path, b"job 4212\ndone\n")  # closed by the master itself
    assert not (tmp_path / "cancelled").exists() and directory.exists()


def test_par_map_with_closures_through_slurm(slurm: SlurmTestbed) -> None:
    launcher = _launcher(cpus_per_worker=2)
    scale = 10

    def task(x: int) -> tuple[int, str | None, int, str | None]:
        return (x * scale, os.environ.get("SLURM_ARRAY_JOB_ID"), detect_cores(),
                os.environ.get("OMP_NUM_THREADS"))

    with Cluster(n=3, launcher=launcher, wait_for=3) as cl:
        assert launcher.job_id is not None
        assert {w.host for w in cl.workers} == {os.uname().nodename}  # the node's name
        assert all(w.pid > 0 for w in cl.workers)
        out = cl.par_map(task, range(9))
        assert [value for value, *_ in out] == [x * 10 for x in range(9)]
        # detect_cores() inside the allocation honors SLURM_CPUS_PER_TASK
        assert {row[1:] for row in out} == {(launcher.job_id, 2, "2")}
        directory = launcher.directory
        assert directory is not None and not any(  # each key file was read once and removed
            name.endswith(".json") for name in os.listdir(directory))
    assert _no_jobs_left(slurm) == []
    assert not os.path.exists(directory)


def test_one_launcher_serves_clusters_in_a_row(slurm: SlurmTestbed, tmp_path: Path) -> None:
    # A notebook cell `with Cluster(n=2, launcher=launcher)` run twice.
    launcher = _launcher(directory=str(tmp_path))
    jobs, directories = [], []
    for offset in (0, 100):
        started = time.monotonic()
        with Cluster(n=2, launcher=launcher, wait_for=2, connect_timeout=30) as cl:
            assert time.monotonic() - started < 15  # a new job: nothing waits out a timeout
            assert cl.par_map(lambda x, o=offset: x + o, range(4)) == [o + offset for o in
                                                                       range(4)]
            jobs.append(launcher.job_id)
            directories.append(launcher.directory)
        assert os.listdir(tmp_path) == []  # its private directory went with it
    assert None not in jobs and jobs[0] != jobs[1] and directories[0] != directories[1]
    launcher.close()
    launcher.close()  # closing again, after the clusters closed it, is harmless
    assert _no_jobs_left(slurm) == []


def test_a_launcher_serving_an_open_cluster_refuses_a_second_at_once(
        slurm: SlurmTestbed, tmp_path: Path) -> None:
    launcher = _launcher(directory=str(tmp_path))
    with Cluster(n=1, launcher=launcher) as cl:  # never closed before the cell runs again
        started = time.monotonic()
        with pytest.raises(LaunchError, match=rf"still serves an open cluster \(slurm job "
                                              rf"{launcher.job_id}\).*Close that cluster"):
            Cluster(n=1, launcher=launcher, connect_timeout=30)
        assert time.monotonic() - started < 5
        assert cl.par_map(lambda x: x * 3, range(3)) == [0, 3, 6]  # the first one is untouched
        assert len(os.listdir(tmp_path)) == 1
    assert os.listdir(tmp_path) == []
    with Cluster(n=1, launcher=launcher) as cl:  # once it is closed, the launcher serves again
        assert cl.par_map(abs, [-1]) == [1]
    assert _no_jobs_left(slurm) == []


def test_queued_workers_are_not_an_error_and_join_later(slurm: SlurmTestbed) -> None:
    launcher = _launcher(max_running=1)  # the second worker waits for the first to end
    with Cluster(n=2, launcher=launcher) as cl:  # wait_for defaults to 1 on Slurm
        assert cl.n_workers == 1
        assert [w.state for w in cl.workers].count("starting") == 1
        assert cl.par_map(lambda x: x + 1, range(5)) == [1, 2, 3, 4, 5]
        assert [w.id for w in cl.workers if w.state != "starting"] == [0]
        subprocess.run(["scancel", f"{launcher.job_id}_0"], check=True)  # from outside

        def running() -> list[int]:
            return [w.id for w in cl.workers if w.state in ("idle", "busy")]

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and running() != [1]:
            time.sleep(0.1)
        assert running() == [1]  # the queued worker started and joined
        assert cl.par_map(lambda x: -x, range(3)) == [0, -1, -2]
    assert _no_jobs_left(slurm) == []


def test_a_worker_dying_mid_chunk_loses_only_that_task(slurm: SlurmTestbed,
                                                       tmp_path: Path) -> None:
    # Chunks of 10: tasks 10..14 finished (12 by raising) before 15 segfaulted.
    # The element's supervisor wrote how the worker ended and what it finished
    # to its exit report; the master delivers those, and nothing reruns.  (Kept
    # off shared memory, the worker is as remote as on another node: the master
    # cannot read its memory itself.)
    log = tmp_path / "ran"
    log.write_text("")
    launcher = _launcher(env={"SOCKPOOL_SHARED_MEMORY": "0"})
    with Cluster(n=2, launcher=launcher, wait_for=2) as cl:  # (an array is not refilled)
        results = cl.par_map(dying_mid_chunk(str(log), raises=12, dies=15, how="segfault"),
                             range(20), chunksize=10, errors="return")
        job = launcher.job_id
    check_only_the_task_it_died_in_was_lost(results, log, raises=12, dies=15)
    assert re.search(rf"Slurm job {job}_[01] ended: FAILED .*; its worker: killed by SIGSEGV",
                     str(results[15])), results[15]
    assert _no_jobs_left(slurm) == []


def _stuck(seconds: float) -> None:
    while True:
        time.sleep(seconds)


def test_a_task_past_its_time_limit_says_where_it_was(slurm: SlurmTestbed) -> None:
    # A Slurm worker was cancelled without a stack, and the error said it "is
    # replaced", which a Slurm worker never is.  scancel --signal asks it now (the
    # supervisor above it survives that signal: the worker's death would not wait).
    with Cluster(n=2, launcher=_launcher(), wait_for=2) as cl:
        with pytest.raises(TaskTimeoutError) as raised:
            cl.submit(_stuck, 0.05, timeout=0.5).result(timeout=60)
        error = raised.value
        line = _stuck.__code__.co_firstlineno + 2
        assert error.stack.splitlines()[-1] == f'  File "{__file__}", line {line} in _stuck'
        assert str(error).startswith(
            "the call to _stuck ran longer than 0.5 s (timeout=) on worker ")
        assert ("the worker was stopped (its launcher starts no replacement)\n"
                f"where it was when stopped:\n{error.stack}") in str(error)
        assert cl.submit(abs, -3).result(timeout=30) == 3  # the other worker goes on
        assert cl.n_workers == 1
        # The signal, sent to the whole element, ended the supervisor too: the worker
        # died of its parent's death, with no exit report ("FAILED (JobLaunchFailure)").
        job = cl._dispatcher.launcher.job_id  # type: ignore[attr-defined]
        running = cl.submit(time.sleep, 30)
        while not any(worker.state == "busy" for worker in cl.workers):
            time.sleep(0.05)
        assert error.worker_id is not None
        index = 1 - error.worker_id  # (worker N is element N: the other one)
        subprocess.run(["scancel", f"--signal={int(signal.SIGRTMIN) + 2}", "--full",
                        f"{job}_{index}"], check=True, timeout=30)
        with pytest.raises(WorkerLostError, match=rf"Slurm job {job}_{index} ended: \w+.*; "
                                                  "its worker: killed by"):
            running.result(timeout=30)
    assert _no_jobs_left(slurm) == []


def test_scancel_from_outside_mid_map(slurm: SlurmTestbed) -> None:
    launcher = _launcher()
    with Cluster(n=2, launcher=launcher, wait_for=2) as cl:
        timer = threading.Timer(1.0, subprocess.run, (["scancel", f"{launcher.job_id}_1"],))
        timer.start()
        out = cl.par_map(lambda x: (time.sleep(0.3), x)[1], range(16), chunksize=1, retries=1)
        timer.join()
        assert out == list(range(16))  # the cancelled worker's task ran again on the other
        assert cl.n_workers == 1
    with Cluster(n=2, launcher=_launcher(), wait_for=2) as cl:
        job = cl._dispatcher.launcher.job_id  # type: ignore[attr-defined]
        timer = threading.Timer(1.0, subprocess.run, (["scancel", f"{job}_0"],))
        timer.start()
        with pytest.raises(WorkerLostError, match=rf"Slurm job {job}_0 ended: CANCELLED"):
            cl.par_map(time.sleep, [30, 30])
        timer.join()
    assert _no_jobs_left(slurm) == []


@pytest.mark.timeout(180)
def test_a_time_limit_is_a_lost_worker_with_its_state(slurm: SlurmTestbed) -> None:
    launcher = _launcher(time="1")  # one minute: Slurm's smallest limit
    with Cluster(n=1, launcher=launcher) as cl, pytest.raises(
            WorkerLostError, match=r"ended: TIMEOUT") as caught:
        cl.par_map(time.sleep, [150])
    assert "DUE TO TIME LIMIT" in str(caught.value)  # slurmstepd's own line, from the log
    assert _no_jobs_left(slurm) == []


def test_workers_that_never_start_name_the_job_and_its_state(
        slurm: SlurmTestbed, tmp_path: Path) -> None:
    # a partition that is down: pending forever
    launcher = _launcher(partition="closed", directory=str(tmp_path))
    started = time.monotonic()
    with pytest.raises(LaunchError, match=r"Slurm job \d+_0 is PENDING \(PartitionDown\)"):
        Cluster(n=1, launcher=launcher, connect_timeout=4)
    # Not 5 s more: stopping waited for the cancelled element, which never ran, to end.
    assert time.monotonic() - started < 4 + 3
    assert _no_jobs_left(slurm) == []
    assert os.listdir(tmp_path) == []


def test_sbatch_refusing_the_job_is_a_launch_error(slurm: SlurmTestbed, tmp_path: Path) -> None:
    launcher = _launcher(partition="no-such-partition", directory=str(tmp_path))
    with pytest.raises(LaunchError, match=r"sbatch refused the job.*invalid partition"):
        Cluster(n=1, launcher=launcher)
    assert os.listdir(tmp_path) == []  # no empty private directory left behind
    launcher.close()  # harmless after the cluster closed it


def test_master_killed_cancels_the_job_and_removes_its_directory(
        slurm: SlurmTestbed, tmp_path: Path) -> None:
    root = tmp_path / "root"
    source = f"""
        import json, time
        from sockpool import Cluster, SlurmLauncher
        launcher = SlurmLauncher(listen="127.0.0.1", directory={str(root)!r})
        cl = Cluster(n=2, launcher=launcher, wait_for=2)
        print(json.dumps([launcher.job_id, launcher.directory]), flush=True)
        cl.submit(time.sleep, 60)
        time.sleep(60)
    """
    with master_program(tmp_path / "master.py", source) as (master, (job, directory)):
        assert any(line.startswith(f"{job}_") for line in slurm.jobs())
        assert os.path.dirname(str(directory)) == str(root)
        assert [name for name in os.listdir(directory) if name.endswith(".log")]
        master.send_signal(signal.SIGKILL)
        master.wait()
        assert _no_jobs_left(slurm, 10) == []  # the reaper ran scancel
        deadline = time.monotonic() + 10
        while os.listdir(root) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert os.listdir(root) == []  # and removed the private directory, logs and all


def test_interpreter_exit_cancels_the_job(slurm: SlurmTestbed, tmp_path: Path) -> None:
    script = tmp_path / "forgets.py"
    root = tmp_path / "root"
    script.write_text(
        "import json\nfrom sockpool import Cluster, SlurmLauncher\n"
        f"launcher = SlurmLauncher(listen='127.0.0.1', directory={str(root)!r})\n"
        "cl = Cluster(n=1, launcher=launcher)\n"
        "print(json.dumps(launcher.job_id))\n")  # never closed
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, check=True)
    job = json.loads(done.stdout)
    assert not any(line.startswith(f"{job}_") for line in _no_jobs_left(slurm))
    assert os.listdir(root) == []
