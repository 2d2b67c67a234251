"""Workers that stay healthy: why one was lost, restart(), recycling by task count and memory."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from sockpool import Cluster, WorkerLostError
from sockpool.common import proc
from sockpool.common.proc import explain_kill, format_bytes

pytestmark = pytest.mark.timeout(120)


def _eat(megabytes: int) -> int:
    block = bytearray(megabytes * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    return len(block)


def _memory_group(name: str) -> Path:
    group = Path(f"/sys/fs/cgroup/memory/sockpool-{name}-{os.getpid()}")
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup v1 memory group here ({exc})")
    return group


def _remove_group(group: Path) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            group.rmdir()
            return
        except OSError:  # the killed worker is still leaving
            time.sleep(0.05)


def test_a_worker_killed_by_the_out_of_memory_killer_says_so_with_its_peak_memory() -> None:
    group = _memory_group("oom")
    try:
        (group / "memory.limit_in_bytes").write_text(str(200 * 1024 * 1024))
        with Cluster(n=1) as cl:
            (group / "cgroup.procs").write_text(str(cl.workers[0].pid))
            with pytest.raises(WorkerLostError) as lost:
                cl.par_map(_eat, [1024])
            message = str(lost.value)
            assert "killed by SIGKILL (by the kernel's out-of-memory killer, peak memory" in message
            peak = message.split("peak memory ", 1)[1].split(")", 1)[0]
            assert peak.endswith("MB") and 150 <= float(peak.split()[0]) <= 260, message
            assert lost.value.exit_status is not None
            assert "out-of-memory" in lost.value.exit_status
            assert cl.par_map(_eat, [8]) == [8 * 1024 * 1024]  # the replacement is fine
    finally:
        _remove_group(group)


def _sleep_and_report(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_a_worker_killed_from_outside_is_not_blamed_on_memory() -> None:
    with Cluster(n=1) as cl:
        pid = cl.workers[0].pid
        future = cl.submit(_sleep_and_report, 30)
        time.sleep(0.5)  # it runs now
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerLostError) as lost:
            future.result(timeout=30)
        assert "killed by SIGKILL (peak memory" in str(lost.value)
        assert "out-of-memory" not in str(lost.value)


def test_other_endings_are_described_plainly() -> None:
    assert explain_kill(1, 3, 10**8) == "exit code 3"
    assert explain_kill(1, -signal.SIGSEGV, 12_300_000) == "killed by SIGSEGV (peak memory 12.3 MB)"
    assert explain_kill(1, -signal.SIGTERM, None) == "killed by SIGTERM"
    assert format_bytes(999) == "999 B" and format_bytes(1_500_000_000) == "1.5 GB"


def test_without_the_kernel_log_a_grown_oom_count_of_its_cgroup_is_the_evidence(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proc, "KERNEL_LOG", str(tmp_path / "no-such-log"))
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n")
    killed = explain_kill(4242, -signal.SIGKILL, None, str(tmp_path), oom_kills_before=1)
    assert killed == "killed by SIGKILL (by the kernel's out-of-memory killer)"
    unchanged = explain_kill(4242, -signal.SIGKILL, None, str(tmp_path), oom_kills_before=2)
    assert unchanged == "killed by SIGKILL"
