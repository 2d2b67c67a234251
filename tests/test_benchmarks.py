"""Every benchmark still runs (a --quick smoke run; numbers are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT
from testbed import Testbed

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize(("script", "expected"), [
    ("bench_core.py", "ratio sockpool / Pool.map"),
    ("bench_pool.py", "ratio sockpool / mp map"),
    ("bench_capture.py", "ratio warm g / h"),
    ("bench_relay.py", "relay off"),
    ("bench_transport.py", "ratio tcp+CURVE / ipc, socket only"),
    ("bench_scaling.py", "ratio sockpool / best peer"),
    ("bench_joblib.py", "ratio sockpool / loky"),
    ("bench_profile.py", "ratio profiled / unprofiled"),
    ("bench_hops.py", "ratio plain / ZeroMQ"),
    ("bench_uneven.py", "head     mp Pool.imap_unordered"),
    ("bench_asyncio.py", "ratio aimap / imap"),
    ("bench_arrays.py", "ratio sockpool / loky"),
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


def test_the_suite_measures_sockpool_and_its_peers_and_saves_a_table_and_a_plot(
        tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "suite.py"), "--quick",
         "--peers", "sockpool,mp fork,loky,joblib", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=170, cwd=ROOT / "benchmarks")
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "results.md").read_text()
    assert table in result.stdout
    header, _rule, *rows = table.split("\n\n")[0].splitlines()
    assert header.split(" | ")[3:8] == ["sockpool", "mp fork", "loky", "joblib", "best peer"]
    assert len(rows) == 10  # every workload has its row ...
    for row in rows:  # ... and a figure from every peer, none failed
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert all(cell not in ("", "—") for cell in cells), row
    samples = json.loads((tmp_path / "results.json").read_text())["samples"]
    assert samples["capture"]["sockpool"][0] > 0
    goals = table.split("### Goals (issue 22)")[1]  # each goal beside its peer, a verdict
    for row in ("bare ZeroMQ REQ/REP ping-pong", "`submit(f, 1).result()` round trip",
                "`G.sum()`", "fresh process: `Cluster(n=2)`", "CPU-bound tasks, fraction"):
        assert row in goals
    assert goals.count("**met**") + goals.count("**missed**") == 7
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_the_suite_names_an_unknown_peer_before_measuring_anything() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "suite.py"), "--peers", "sockpool,celery"],
        capture_output=True, text=True, timeout=60, cwd=ROOT / "benchmarks")
    assert result.returncode == 2
    assert "unknown peer 'celery'" in result.stderr
