"""Every benchmark still runs (a --quick smoke run; numbers are not asserted)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import ROOT
from testbed import Testbed

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize(("script", "expected"), [
    ("bench_core.py", "ratio sockpool / Pool.map"),
    ("bench_capture.py", "ratio warm g / h"),
    ("bench_relay.py", "relay off"),
    ("bench_transport.py", "ratio tcp+CURVE / ipc"),
])
def test_benchmark_runs_quickly(script: str, expected: str) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
                            capture_output=True, text=True, timeout=170, cwd=ROOT / "benchmarks")
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_ssh_startup_benchmark_runs_quickly(namespace_hosts: Testbed) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_ssh.py"), "--quick",
         "--hosts", "sp-n1,sp-n2,sp-n3"],
        capture_output=True, text=True, timeout=170, cwd=ROOT / "benchmarks")
    assert result.returncode == 0, result.stderr
    assert "ratio sockpool / parallel ssh floor" in result.stdout
